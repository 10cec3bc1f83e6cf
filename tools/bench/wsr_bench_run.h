//  wsr_bench_run — one bench run: the epoll loop, the phases, the report

#ifndef WSR_BENCH_RUN_H_INCLUDED
#define WSR_BENCH_RUN_H_INCLUDED

#ifdef __cplusplus
extern "C" {
#endif

typedef struct _wsr_bench_run_t wsr_bench_run_t;

//  Set by a SIGINT handler (async-signal-safe): the run ends early, with a
//  report all the same.
extern volatile sig_atomic_t wsr_bench_interrupted;

//  Prepare a run: read the server's memory, create the sessions (one
//  process) or fork --procs receiver children, connect the publisher.
//  Returns NULL, with a message on stderr, if one of those fails. opts and
//  ident must outlive the run.
wsr_bench_run_t *
    wsr_bench_run_new (const wsr_bench_opts_t *opts, wsr_bench_ident_t *ident);

//  Reap the children (if any) and free the run; safe on NULL.
void
    wsr_bench_run_destroy (wsr_bench_run_t **self_p);

//  Run every phase to the end (each has a deadline) and return the report:
//  one JSON object (scripts/bench.d/report.py reads its keys). Caller
//  owns the result.
json_t *
    wsr_bench_run_execute (wsr_bench_run_t *self);

//  Body of receiver child k (a wsr_bench_child_fn): its sessions, commands
//  on cmd_fd, status and result on status_fd. Exits the process.
void
    wsr_bench_run_child (const wsr_bench_opts_t *opts, wsr_bench_ident_t *ident, int k,
                         int cmd_fd, int status_fd);

//  Self test
void
    wsr_bench_run_test (bool verbose);

#ifdef __cplusplus
}
#endif
#endif
