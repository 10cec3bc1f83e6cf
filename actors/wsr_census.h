//  wsr_census — the node's busiest topics, counted by the session workers for the console

#ifndef WSR_CENSUS_H_INCLUDED
#define WSR_CENSUS_H_INCLUDED

#ifdef __cplusplus
extern "C" {
#endif

typedef struct _wsr_census_t wsr_census_t;

//  Create a census for `workers` session workers, each keeping its `top`
//  largest topics. Caller (the node) owns it; it outlives every actor.
wsr_census_t *
    wsr_census_new (int workers, size_t top);

//  Destroy the census.
void
    wsr_census_destroy (wsr_census_t **self_p);

//  Somebody looks (GET /api/topics): the workers count their topics for the
//  next WSR_CENSUS_WANTED_MS. Thread-safe.
void
    wsr_census_want (wsr_census_t *self);

//  Worker `worker` asks whether it should count now: wanted, and its last
//  count is at least WSR_CENSUS_PERIOD_MS old. Only that worker calls it.
bool
    wsr_census_due (wsr_census_t *self, int worker, int64_t now_ms);

//  Worker `worker` counts: begin, one add per topic (kept if among its top
//  N), commit with its number of topics. Only that worker calls these.
void
    wsr_census_begin (wsr_census_t *self, int worker);
void
    wsr_census_add (wsr_census_t *self, int worker, const char *key, size_t members);
void
    wsr_census_commit (wsr_census_t *self, int worker, size_t topics, int64_t now_ms);

//  The node's top topics (at most limit), each worker's top N summed by key
//  and sorted by subscribers, largest first, as JSON:
//  {"topics":[{"topic":K,"subscribers":N}...],"worker_topics":T,"age_ms":A}
//  (age_ms -1: no worker has counted yet). Caller owns the string.
char *
    wsr_census_json (wsr_census_t *self, size_t limit);

//  Self test
void
    wsr_census_test (bool verbose);

#ifdef __cplusplus
}
#endif
#endif
