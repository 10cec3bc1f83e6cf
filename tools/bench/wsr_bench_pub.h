//  wsr_bench_pub — the bench's publisher: HTTP API, Redis or NATS, pipelined, acknowledged

#ifndef WSR_BENCH_PUB_H_INCLUDED
#define WSR_BENCH_PUB_H_INCLUDED

#ifdef __cplusplus
extern "C" {
#endif

typedef struct _wsr_bench_pub_t wsr_bench_pub_t;

//  Create the publisher for opts. Its socket joins epoll_fd (not owned)
//  with WSR_BENCH_TAG_PUB. opts and ident must outlive it. Nothing is
//  connected before wsr_bench_pub_start. Without --publish it publishes
//  nothing (never ready, always idle) and reports zeros.
wsr_bench_pub_t *
    wsr_bench_pub_new (const wsr_bench_opts_t *opts, wsr_bench_ident_t *ident, int epoll_fd);

//  Close the connection and free the publisher; safe on NULL.
void
    wsr_bench_pub_destroy (wsr_bench_pub_t **self_p);

//  Connect, waiting a bounded time, so that a wrong URL fails the run at
//  once. Returns 0, or -1 with a message on stderr (no password in it).
int
    wsr_bench_pub_start (wsr_bench_pub_t *self);

//  True if one more message can be handed over now: connected (reconnecting
//  if it is time), fewer than --pipeline unanswered, and not stalled.
bool
    wsr_bench_pub_ready (wsr_bench_pub_t *self);

//  Hand one message to the transport (after wsr_bench_pub_ready said yes):
//  kind, sequence, to target (user index, or 0 for the channel). Its publish
//  time is taken now. Call wsr_bench_pub_flush after a batch.
void
    wsr_bench_pub_send (wsr_bench_pub_t *self, char kind, uint32_t seq, uint32_t target);

//  Write what is queued, as far as the socket takes it.
void
    wsr_bench_pub_flush (wsr_bench_pub_t *self);

//  Handle an epoll event tagged WSR_BENCH_TAG_PUB: read answers, write more.
void
    wsr_bench_pub_event (wsr_bench_pub_t *self, uint32_t events);

//  True when everything handed over has been answered (NATS: after one
//  bounded flush round trip).
bool
    wsr_bench_pub_idle (wsr_bench_pub_t *self);

//  True while the publisher waits for its socket to take more bytes.
bool
    wsr_bench_pub_writing (wsr_bench_pub_t *self);

//  At time now, while publishing: give up (stalled) if no message could be
//  handed over for WSR_BENCH_PUB_STALL_NS (backplane gone), with a warning.
void
    wsr_bench_pub_watch (wsr_bench_pub_t *self, int64_t now);

//  True once publishing was given up.
bool
    wsr_bench_pub_stalled (wsr_bench_pub_t *self);

//  Messages of kind acknowledged (HTTP 2xx, Redis integer, NATS accepted).
uint64_t
    wsr_bench_pub_accepted (wsr_bench_pub_t *self, char kind);

//  Messages of kind refused or lost in flight.
uint64_t
    wsr_bench_pub_errors (wsr_bench_pub_t *self, char kind);

//  The report's "publisher" object. Caller owns the result.
json_t *
    wsr_bench_pub_report (wsr_bench_pub_t *self);

//  Self test
void
    wsr_bench_pub_test (bool verbose);

#ifdef __cplusplus
}
#endif
#endif
