//  wsr_bench_hist — log-linear latency histogram (< 0.4 % error), mergeable across processes

#ifndef WSR_BENCH_HIST_H_INCLUDED
#define WSR_BENCH_HIST_H_INCLUDED

#ifdef __cplusplus
extern "C" {
#endif

typedef struct _wsr_bench_hist_t wsr_bench_hist_t;

//  Create an empty histogram (about 60 KB).
wsr_bench_hist_t *
    wsr_bench_hist_new (void);

//  Destroy it; safe on NULL.
void
    wsr_bench_hist_destroy (wsr_bench_hist_t **self_p);

//  Record one value (ns).
void
    wsr_bench_hist_add (wsr_bench_hist_t *self, uint64_t value);

//  Values recorded.
uint64_t
    wsr_bench_hist_count (wsr_bench_hist_t *self);

//  Largest value recorded (exact), 0 when empty.
uint64_t
    wsr_bench_hist_max (wsr_bench_hist_t *self);

//  Value at quantile q (0..1): the middle of its bucket, at most the max;
//  0 when empty.
uint64_t
    wsr_bench_hist_quantile (wsr_bench_hist_t *self, double q);

//  Forget every value.
void
    wsr_bench_hist_reset (wsr_bench_hist_t *self);

//  Sparse form for the pipe between processes: {"buckets": [[bucket, count],
//  ...], "max", "sum"}. Caller owns the result.
json_t *
    wsr_bench_hist_to_json (wsr_bench_hist_t *self);

//  Add a histogram in the form of wsr_bench_hist_to_json; entries out of
//  range are ignored.
void
    wsr_bench_hist_merge (wsr_bench_hist_t *self, json_t *json);

//  {count, p50, p90, p99, [p999,] max, mean} in ms (rounded to the µs), for
//  the report. Caller owns the result.
json_t *
    wsr_bench_hist_summary (wsr_bench_hist_t *self, bool p999);

//  Self test
void
    wsr_bench_hist_test (bool verbose);

#ifdef __cplusplus
}
#endif
#endif
