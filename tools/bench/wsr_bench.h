//  wsr_bench — `wsrouter bench`: many WebSocket sessions, timed publishing, one JSON report

#ifndef WSR_BENCH_H_INCLUDED
#define WSR_BENCH_H_INCLUDED

#ifdef __cplusplus
extern "C" {
#endif

//  Run `wsrouter bench` with its arguments (argv [0] is "bench"). Prints one
//  JSON object on stdout, progress on stderr. Returns the exit status (0 ok,
//  1 run failed to start, 2 bad arguments).
int
    wsr_bench_main (int argc, char *argv []);

//  Self test: a small run against a real node started in this process
void
    wsr_bench_test (bool verbose);

#ifdef __cplusplus
}
#endif
#endif
