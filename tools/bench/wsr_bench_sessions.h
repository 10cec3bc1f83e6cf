//  wsr_bench_sessions — the bench's WebSocket client: one process's sessions in one epoll set

#ifndef WSR_BENCH_SESSIONS_H_INCLUDED
#define WSR_BENCH_SESSIONS_H_INCLUDED

#ifdef __cplusplus
extern "C" {
#endif

typedef struct _wsr_bench_sessions_t wsr_bench_sessions_t;

//  Create the sessions of receiver k of procs (k = 0, procs = 1 for a
//  single process): its share of the normal and slow sessions, of --ramp and
//  of --inflight, and its own stretch of the source addresses. Nothing is
//  connected before the first tick. Sockets join epoll_fd (not owned) with
//  WSR_BENCH_TAG_CONN. opts and ident must outlive the result.
wsr_bench_sessions_t *
    wsr_bench_sessions_new (const wsr_bench_opts_t *opts, wsr_bench_ident_t *ident,
                            int epoll_fd, int k, int procs);

//  Close every socket and free the sessions; safe on NULL.
void
    wsr_bench_sessions_destroy (wsr_bench_sessions_t **self_p);

//  Handle an epoll event tagged WSR_BENCH_TAG_CONN with this index.
void
    wsr_bench_sessions_event (wsr_bench_sessions_t *self, uint32_t index, uint32_t events);

//  Timed work at time now (mono ns): start connections at the ramp's pace,
//  fail handshakes past their timeout, and once ending, finish the drain
//  when everything expected has arrived or its deadline has passed.
void
    wsr_bench_sessions_tick (wsr_bench_sessions_t *self, int64_t now);

//  Publishing is over: published measured and final_sent final messages
//  were sent in all. Works out what each session should have received and
//  starts reading the slow sessions; the drain lasts --drain at most, or
//  WSR_BENCH_QUICK_DRAIN_NS if quick (interrupted). Only the first call counts.
void
    wsr_bench_sessions_end (wsr_bench_sessions_t *self, uint64_t published,
                            uint64_t final_sent, bool quick);

//  Drain over: missing tails become loss, unread slow sessions are judged
//  by their TCP state, handshakes still in progress are aborted. The
//  counters are final afterwards.
void
    wsr_bench_sessions_finish (wsr_bench_sessions_t *self);

//  True while connections are still to be started (and publishing is not over).
bool
    wsr_bench_sessions_ramping (wsr_bench_sessions_t *self);

//  True once every connection was started and no handshake is in progress.
bool
    wsr_bench_sessions_connected (wsr_bench_sessions_t *self);

//  True once the counters are final (wsr_bench_sessions_finish ran).
bool
    wsr_bench_sessions_done (wsr_bench_sessions_t *self);

//  The counters (owned by the sessions).
wsr_bench_rx_t *
    wsr_bench_sessions_rx (wsr_bench_sessions_t *self);

//  Self test
void
    wsr_bench_sessions_test (bool verbose);

#ifdef __cplusplus
}
#endif
#endif
