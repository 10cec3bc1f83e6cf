//  wsr_bench_payload — the bench message header: kind, sequence, publish time, target
//
//  A payload is text: a fixed 46-byte header, then 'x' up to --size:
//
//      #K:SSSSSSSSSS:TTTTTTTTTTTTTTTTTTTT:UUUUUUUUUU|xxxx...
//
//  K kind (M measured, W warm-up, F final), S sequence (per user in user
//  mode, per channel in channel mode; from 1; 0 for W and F), T publish time
//  in ns (CLOCK_MONOTONIC: publisher and receivers share the machine), U
//  target index (user index; 0 for the channel). Fixed widths, so that a
//  receiver parses the first 46 bytes of a message wherever frames split it.

#include "wsr_bench_classes.h"

//  --------------------------------------------------------------------------
//  Stamp the header on a payload buffer.
void
wsr_bench_payload_write (char *payload, char kind, uint32_t seq, uint64_t ts, uint32_t target)
{
    char header [WSR_BENCH_HDR_LEN + 1];
    snprintf (header, sizeof header, "#%c:%010u:%020" PRIu64 ":%010u|", kind, seq, ts, target);
    memcpy (payload, header, WSR_BENCH_HDR_LEN);
}

//  count decimal digits; false if one is not a digit
static bool
s_digits (const uint8_t *text, int count, uint64_t *value)
{
    uint64_t result = 0;
    for (int i = 0; i < count; i++) {
        if (text [i] < '0' || text [i] > '9')
            return false;
        result = result * 10 + (uint64_t) (text [i] - '0');
    }
    *value = result;
    return true;
}

//  --------------------------------------------------------------------------
//  Anything else a session receives is counted as foreign.
bool
wsr_bench_payload_read (const uint8_t *p, char *kind, uint32_t *seq, uint64_t *ts,
                        uint32_t *target)
{
    uint64_t seq64, ts64, target64;
    if (p [0] != '#' || p [2] != ':' || p [13] != ':' || p [34] != ':' || p [45] != '|'
    ||  !s_digits (p + 3, 10, &seq64) || !s_digits (p + 14, 20, &ts64)
    ||  !s_digits (p + 35, 10, &target64) || seq64 > UINT32_MAX || target64 > UINT32_MAX)
        return false;
    *kind = (char) p [1];
    *seq = (uint32_t) seq64;
    *ts = ts64;
    *target = (uint32_t) target64;
    return true;
}

//  --------------------------------------------------------------------------
//  Per-kind counters are arrays of WSR_BENCH_KINDS.
int
wsr_bench_payload_kind_index (char kind)
{
    return kind == WSR_BENCH_KIND_MEASURED? 0: kind == WSR_BENCH_KIND_WARMUP? 1: 2;
}

//  --------------------------------------------------------------------------
//  Selftest

void
wsr_bench_payload_test (bool verbose)
{
    (void) verbose;
    char payload [WSR_BENCH_HDR_LEN + 8];
    memset (payload, 'x', sizeof payload);
    wsr_bench_payload_write (payload, 'M', 4294967295u, 18446744073709551615ull, 7);
    assert (memcmp (payload, "#M:4294967295:18446744073709551615:0000000007|x", 47) == 0);
    char kind = 0;
    uint32_t seq = 0, target = 0;
    uint64_t ts = 0;
    assert (wsr_bench_payload_read ((uint8_t *) payload, &kind, &seq, &ts, &target));
    assert (kind == 'M' && seq == 4294967295u && ts == 18446744073709551615ull && target == 7);
    wsr_bench_payload_write (payload, 'F', 0, 12345, 0);
    assert (wsr_bench_payload_read ((uint8_t *) payload, &kind, &seq, &ts, &target));
    assert (kind == 'F' && seq == 0 && ts == 12345 && target == 0);

    //  Not a header: each byte of structure, a non-digit, a sequence too large
    const char *bad [] = {
        "xM:0000000001:00000000000000012345:0000000000|",
        "#M;0000000001:00000000000000012345:0000000000|",
        "#M:0000000001;00000000000000012345:0000000000|",
        "#M:0000000001:00000000000000012345;0000000000|",
        "#M:0000000001:00000000000000012345:0000000000;",
        "#M:00000000a1:00000000000000012345:0000000000|",
        "#M:0000000001:0000000000000001234 :0000000000|",
        "#M:4294967296:00000000000000012345:0000000000|",
        "#M:0000000001:00000000000000012345:4294967296|"
    };
    for (size_t i = 0; i < sizeof bad / sizeof bad [0]; i++) {
        assert (strlen (bad [i]) == WSR_BENCH_HDR_LEN);
        kind = 0;
        assert (!wsr_bench_payload_read ((const uint8_t *) bad [i], &kind, &seq, &ts, &target));
        assert (kind == 0);
    }
    assert (wsr_bench_payload_kind_index ('M') == 0);
    assert (wsr_bench_payload_kind_index ('W') == 1);
    assert (wsr_bench_payload_kind_index ('F') == 2);
}
