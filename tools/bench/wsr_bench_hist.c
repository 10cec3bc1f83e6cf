//  wsr_bench_hist — log-linear latency histogram (< 0.4 % error), mergeable across processes
//
//  Values are ns. Below 256 every value has its own bucket; above, each power
//  of two is split into 128 buckets, so a bucket's width is under 1/128 of
//  its values and the middle of a bucket is within 0.4 % of anything in it.
//  58 groups cover every uint64_t. Children of a run send theirs to the
//  parent as sparse JSON, which the parent adds up.

#include "wsr_bench_classes.h"

#define S_SUB           128                 //  sub-buckets per power of two
#define S_SUB_BITS      7                   //  log2 (S_SUB)
#define S_BUCKETS       (S_SUB * 58)        //  covers every uint64_t

struct _wsr_bench_hist_t {
    uint64_t counts [S_BUCKETS];    //  values per bucket
    uint64_t total;                 //  values recorded
    uint64_t max;                   //  largest value, exact
    double sum;                     //  for the mean
};

static int
s_index (uint64_t value)
{
    if (value < 2 * S_SUB)
        return (int) value;
    int msb = 63 - __builtin_clzll (value);
    int shift = msb - S_SUB_BITS;
    return (shift << S_SUB_BITS) + (int) (value >> shift);
}

//  Middle of a bucket: the value reported for anything in it.
static uint64_t
s_value (int index)
{
    if (index < 2 * S_SUB)
        return (uint64_t) index;
    int shift = index / S_SUB - 1;
    uint64_t mantissa = (uint64_t) (index % S_SUB + S_SUB);
    return (mantissa << shift) + ((1ULL << shift) >> 1);
}

//  --------------------------------------------------------------------------
//  Create an empty histogram.
wsr_bench_hist_t *
wsr_bench_hist_new (void)
{
    wsr_bench_hist_t *self = (wsr_bench_hist_t *) zmalloc (sizeof (wsr_bench_hist_t));
    assert (self);
    return self;
}

//  --------------------------------------------------------------------------
//  Destroy it; safe on NULL.
void
wsr_bench_hist_destroy (wsr_bench_hist_t **self_p)
{
    assert (self_p);
    if (*self_p) {
        free (*self_p);
        *self_p = NULL;
    }
}

//  --------------------------------------------------------------------------
//  Constant time: one per message received.
void
wsr_bench_hist_add (wsr_bench_hist_t *self, uint64_t value)
{
    assert (self);
    self->counts [s_index (value)]++;
    self->total++;
    self->sum += (double) value;
    if (value > self->max)
        self->max = value;
}

//  --------------------------------------------------------------------------
//  Values recorded.
uint64_t
wsr_bench_hist_count (wsr_bench_hist_t *self)
{
    assert (self);
    return self->total;
}

//  --------------------------------------------------------------------------
//  Largest value recorded.
uint64_t
wsr_bench_hist_max (wsr_bench_hist_t *self)
{
    assert (self);
    return self->max;
}

//  --------------------------------------------------------------------------
//  Rank ceil (q × count): the top value is the exact max.
uint64_t
wsr_bench_hist_quantile (wsr_bench_hist_t *self, double q)
{
    assert (self);
    if (self->total == 0)
        return 0;
    uint64_t rank = (uint64_t) ceil (q * (double) self->total);
    if (rank < 1)
        rank = 1;
    if (rank >= self->total)
        return self->max;
    uint64_t seen = 0;
    for (int i = 0; i < S_BUCKETS; i++) {
        seen += self->counts [i];
        if (seen >= rank) {
            uint64_t value = s_value (i);
            return value > self->max? self->max: value;
        }
    }
    return self->max;
}

//  --------------------------------------------------------------------------
//  Forget every value.
void
wsr_bench_hist_reset (wsr_bench_hist_t *self)
{
    assert (self);
    memset (self, 0, sizeof *self);
}

//  --------------------------------------------------------------------------
//  Only the buckets in use travel.
json_t *
wsr_bench_hist_to_json (wsr_bench_hist_t *self)
{
    assert (self);
    json_t *array = json_array ();
    for (int i = 0; i < S_BUCKETS; i++)
        if (self->counts [i])
            json_array_append_new (array, json_pack ("[iI]", i, (json_int_t) self->counts [i]));
    return json_pack ("{s:o, s:I, s:f}", "buckets", array, "max", (json_int_t) self->max,
                      "sum", self->sum);
}

//  --------------------------------------------------------------------------
//  Add what another process recorded.
void
wsr_bench_hist_merge (wsr_bench_hist_t *self, json_t *json)
{
    assert (self);
    json_t *buckets = json_object_get (json, "buckets");
    size_t i;
    json_t *pair;
    json_array_foreach (buckets, i, pair) {
        json_int_t index = json_integer_value (json_array_get (pair, 0));
        json_int_t count = json_integer_value (json_array_get (pair, 1));
        if (index >= 0 && index < S_BUCKETS && count > 0) {
            self->counts [index] += (uint64_t) count;
            self->total += (uint64_t) count;
        }
    }
    uint64_t max = (uint64_t) json_integer_value (json_object_get (json, "max"));
    if (max > self->max)
        self->max = max;
    self->sum += json_real_value (json_object_get (json, "sum"));
}

//  ns as ms, rounded to the µs (buckets are coarser anyway)
static json_t *
s_ms (double ns)
{
    return json_real (round (ns / 1e3) / 1e3);
}

//  --------------------------------------------------------------------------
//  The report's view.
json_t *
wsr_bench_hist_summary (wsr_bench_hist_t *self, bool p999)
{
    assert (self);
    json_t *summary = json_object ();
    json_object_set_new (summary, "count", json_integer ((json_int_t) self->total));
    json_object_set_new (summary, "p50", s_ms ((double) wsr_bench_hist_quantile (self, 0.50)));
    json_object_set_new (summary, "p90", s_ms ((double) wsr_bench_hist_quantile (self, 0.90)));
    json_object_set_new (summary, "p99", s_ms ((double) wsr_bench_hist_quantile (self, 0.99)));
    if (p999)
        json_object_set_new (summary, "p999",
                             s_ms ((double) wsr_bench_hist_quantile (self, 0.999)));
    json_object_set_new (summary, "max", s_ms ((double) self->max));
    json_object_set_new (summary, "mean",
                         s_ms (self->total? self->sum / (double) self->total: 0));
    return summary;
}

//  --------------------------------------------------------------------------
//  Selftest

void
wsr_bench_hist_test (bool verbose)
{
    (void) verbose;
    //  Every value lands in a bucket whose middle is within 1 %
    uint64_t values [] = { 0, 1, 255, 256, 257, 1000, 123456, 99999999, 1ULL << 40,
                           UINT64_MAX / 3, UINT64_MAX };
    for (size_t i = 0; i < sizeof values / sizeof values [0]; i++) {
        int index = s_index (values [i]);
        assert (index >= 0 && index < S_BUCKETS);
        double value = (double) s_value (index);
        double error = values [i]? fabs (value - (double) values [i]) / (double) values [i]
                                 : value;
        assert (error <= 0.01);
    }
    //  Buckets are ordered: a larger value never lands in a smaller bucket
    for (uint64_t v = 1; v < 100000; v += 7)
        assert (s_index (v) <= s_index (v + 1));

    wsr_bench_hist_t *hist = wsr_bench_hist_new ();
    assert (wsr_bench_hist_quantile (hist, 0.5) == 0 && wsr_bench_hist_count (hist) == 0);
    for (uint64_t v = 1; v <= 1000; v++)
        wsr_bench_hist_add (hist, v * 1000);
    assert (wsr_bench_hist_count (hist) == 1000 && wsr_bench_hist_max (hist) == 1000000);
    assert (fabs ((double) wsr_bench_hist_quantile (hist, 0.5) - 500000) <= 5000);
    assert (fabs ((double) wsr_bench_hist_quantile (hist, 0.99) - 990000) <= 9900);
    assert (wsr_bench_hist_quantile (hist, 1.0) == 1000000);
    assert (wsr_bench_hist_quantile (hist, 0.0) <= 1010);

    //  Sparse JSON round trip adds up
    json_t *json = wsr_bench_hist_to_json (hist);
    wsr_bench_hist_t *copy = wsr_bench_hist_new ();
    wsr_bench_hist_merge (copy, json);
    wsr_bench_hist_merge (copy, json);
    json_decref (json);
    assert (wsr_bench_hist_count (copy) == 2000);
    assert (wsr_bench_hist_max (copy) == wsr_bench_hist_max (hist));
    assert (wsr_bench_hist_quantile (copy, 0.5) == wsr_bench_hist_quantile (hist, 0.5));

    //  Summary in ms
    json_t *summary = wsr_bench_hist_summary (hist, true);
    assert (json_integer_value (json_object_get (summary, "count")) == 1000);
    assert (fabs (json_real_value (json_object_get (summary, "p50")) - 0.5) <= 0.005);
    assert (json_real_value (json_object_get (summary, "max")) == 1.0);
    assert (fabs (json_real_value (json_object_get (summary, "mean")) - 0.501) < 1e-9);
    assert (json_object_get (summary, "p999"));
    json_decref (summary);
    summary = wsr_bench_hist_summary (hist, false);
    assert (!json_object_get (summary, "p999"));
    json_decref (summary);

    wsr_bench_hist_reset (copy);
    assert (wsr_bench_hist_count (copy) == 0 && wsr_bench_hist_max (copy) == 0);
    wsr_bench_hist_destroy (&copy);
    wsr_bench_hist_destroy (&hist);
    assert (!hist);
}
