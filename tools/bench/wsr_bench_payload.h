//  wsr_bench_payload — the bench message header: kind, sequence, publish time, target

#ifndef WSR_BENCH_PAYLOAD_H_INCLUDED
#define WSR_BENCH_PAYLOAD_H_INCLUDED

#ifdef __cplusplus
extern "C" {
#endif

//  Message kinds, and their index in per-kind counters
#define WSR_BENCH_KIND_MEASURED     'M'
#define WSR_BENCH_KIND_WARMUP       'W'
#define WSR_BENCH_KIND_FINAL        'F'

//  Write the WSR_BENCH_HDR_LEN header bytes at the start of payload (no NUL):
//  kind, sequence, publish time (ns) and target index.
void
    wsr_bench_payload_write (char *payload, char kind, uint32_t seq, uint64_t ts,
                             uint32_t target);

//  Read the header from the first WSR_BENCH_HDR_LEN bytes of p. Returns false
//  (outputs untouched) if they are not a bench header.
bool
    wsr_bench_payload_read (const uint8_t *p, char *kind, uint32_t *seq, uint64_t *ts,
                            uint32_t *target);

//  Index of kind in per-kind counters: 0 measured, 1 warm-up, 2 final.
int
    wsr_bench_payload_kind_index (char kind);

//  Self test
void
    wsr_bench_payload_test (bool verbose);

#ifdef __cplusplus
}
#endif
#endif
