//  wsr_bench_children — a run's receiver processes: fork, the pipe protocol, totals, reaping

#ifndef WSR_BENCH_CHILDREN_H_INCLUDED
#define WSR_BENCH_CHILDREN_H_INCLUDED

#ifdef __cplusplus
extern "C" {
#endif

typedef struct _wsr_bench_children_t wsr_bench_children_t;

//  Status fields a child reports (and the controller's totals)
typedef enum {
    WSR_BENCH_T_DONE,               //  every connect resolved (1/0)
    WSR_BENCH_T_ATTEMPTED,
    WSR_BENCH_T_ESTABLISHED,
    WSR_BENCH_T_SLOW,               //  slow sessions established
    WSR_BENCH_T_FAILED,
    WSR_BENCH_T_OPEN,
    WSR_BENCH_T_WARM,
    WSR_BENCH_T_RECEIVED,
    WSR_BENCH_T_FINAL,              //  final messages received
    WSR_BENCH_T_COUNT
} wsr_bench_total_t;

//  What a child does: run receiver k of opts->procs, talking over cmd_fd
//  (commands in) and status_fd (lines out), then _exit. Never returns.
typedef void (wsr_bench_child_fn) (const wsr_bench_opts_t *opts, wsr_bench_ident_t *ident,
                                   int k, int cmd_fd, int status_fd);

//  Create an empty set; status pipes join epoll_fd (not owned) with
//  WSR_BENCH_TAG_CHILD and the child's index.
wsr_bench_children_t *
    wsr_bench_children_new (int epoll_fd);

//  Close the pipes (children that are still there see EOF and leave) and
//  free the set; safe on NULL. Call wsr_bench_children_reap first.
void
    wsr_bench_children_destroy (wsr_bench_children_t **self_p);

//  Fork opts->procs children, each running body. Returns 0, or -1 (errno
//  set) if a pipe or a fork failed; the children made so far stay. SIGPIPE
//  is ignored from then on: a child may leave before the parent's last write.
int
    wsr_bench_children_fork (wsr_bench_children_t *self, const wsr_bench_opts_t *opts,
                             wsr_bench_ident_t *ident, wsr_bench_child_fn *body);

//  A child's status pipe is readable: read its lines, keep its last status,
//  merge its result into rx.
void
    wsr_bench_children_event (wsr_bench_children_t *self, uint32_t index, wsr_bench_rx_t *rx);

//  Totals over the children's last status lines (DONE: all done or gone).
void
    wsr_bench_children_totals (wsr_bench_children_t *self, uint64_t totals [WSR_BENCH_T_COUNT]);

//  Tell every child publishing is over ("E").
void
    wsr_bench_children_end (wsr_bench_children_t *self, uint64_t published,
                            uint64_t final_sent, bool interrupted);

//  True once every child's result is in (or its pipe closed without one).
bool
    wsr_bench_children_done (wsr_bench_children_t *self);

//  Children that ended without a result.
uint64_t
    wsr_bench_children_failures (wsr_bench_children_t *self);

//  Let the children go ("X") and reap them, killing any still there after
//  WSR_BENCH_REAP_NS.
void
    wsr_bench_children_reap (wsr_bench_children_t *self);

//  Child side: format the status line of a receiver (done, and its counters)
//  into line (size bytes). Returns its length.
size_t
    wsr_bench_children_status_line (char *line, size_t size, bool done, wsr_bench_rx_t *rx);

//  Child side: send the final counters ("R" line). Returns 0, or -1 if the
//  parent is gone.
int
    wsr_bench_children_result (int status_fd, wsr_bench_rx_t *rx);

//  Child side: parse one command line. Returns 'E' (published, final_sent
//  and interrupted set), 'X' (exit), or 0 if it is not a command.
char
    wsr_bench_children_command (const char *line, uint64_t *published, uint64_t *final_sent,
                                bool *interrupted);

//  Self test
void
    wsr_bench_children_test (bool verbose);

#ifdef __cplusplus
}
#endif
#endif
