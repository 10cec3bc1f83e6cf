//  wsr_upstream_http — non-blocking HTTP POSTs to the upstream backend (libcurl multi)

#ifndef WSR_UPSTREAM_HTTP_H_INCLUDED
#define WSR_UPSTREAM_HTTP_H_INCLUDED

#ifdef __cplusplus
extern "C" {
#endif

#define WSR_UPSTREAM_HTTP_USER_AGENT    "wsrouter"
//  Poll timeout cap while curl watches more sockets than the caller gave
//  pollitem slots for: the unwatched ones get their turn this soon.
#define WSR_UPSTREAM_HTTP_TRUNCATED_MS  10
//  Pollitem slots that always suffice: happy eyeballs may open two sockets per
//  transfer, plus the resolver's wake-up socket.
#define WSR_UPSTREAM_HTTP_POLLITEMS(max_inflight)   (2 * (max_inflight) + 2)
//  First allocation of a response buffer; it doubles up to max_response.
#define WSR_UPSTREAM_HTTP_FIRST_BUFFER  4096

typedef struct _wsr_upstream_http_t wsr_upstream_http_t;

//  Called once per finished request (success or failure), from inside
//  wsr_upstream_http_process. status: HTTP status, or 0 with error set
//  ("timeout", "backend unreachable", "response too large", "backend error").
//  body/body_size: response body (borrowed, valid during the call; may be
//  NULL/0, always NULL/0 when status is 0). tag and reply_to (borrowed) are
//  what the caller gave to submit. The callback may call submit, but must not
//  destroy the instance.
typedef void (wsr_upstream_http_done_fn) (void *arg, uint64_t tag, const char *reply_to,
                                          int status, const char *error,
                                          const uint8_t *body, size_t body_size);

//  Counters since creation (a snapshot; the caller owns the struct it passes).
typedef struct {
    uint64_t submitted;         //  accepted by submit
    uint64_t rejected;          //  submit refused: queue full
    uint64_t completed;         //  finished with an HTTP status (any status)
    uint64_t failed;            //  finished with status 0 (all of the below and others)
    uint64_t timeouts;          //  "timeout"
    uint64_t unreachable;       //  "backend unreachable"
    uint64_t too_large;         //  "response too large"
    uint64_t aborted;           //  dropped without done by destroy
} wsr_upstream_http_stats_t;

//  Create a client that POSTs to url (http:// or https://, copied). At most
//  max_inflight (>= 1) transfers run at once, at most max_queued more wait in
//  a FIFO; each transfer has timeout_ms (>= 1) from its start; bodies over
//  max_response bytes are refused. done (not NULL) gets every result, with
//  arg (not owned). Returns NULL on invalid arguments or if curl fails.
wsr_upstream_http_t *
    wsr_upstream_http_new (const char *url, int max_inflight, size_t max_queued,
                           int timeout_ms, size_t max_response,
                           wsr_upstream_http_done_fn *done, void *arg);

//  Destroy the client; aborts in-flight and queued requests without calling
//  done. Safe on NULL.
void
    wsr_upstream_http_destroy (wsr_upstream_http_t **self_p);

//  Queue a POST of body (copied; may be NULL if size is 0) with Content-Type
//  content_type (copied; no CR/LF); reply_to is copied (may be NULL). Starts it
//  at once if under max_inflight and nobody waits, else it waits in the FIFO.
//  Returns 0, or -1 if the queue is full (then done is NOT called).
int
    wsr_upstream_http_submit (wsr_upstream_http_t *self, uint64_t tag, const char *reply_to,
                              const char *content_type, const uint8_t *body, size_t size);

//  Fill up to max items (socket NULL, fd, events) with the sockets curl wants
//  watched; returns how many were written. Call before wsr_upstream_http_timeout.
//  With fewer than WSR_UPSTREAM_HTTP_POLLITEMS (max_inflight) slots the
//  sockets take turns (and the timeout is capped), so nothing starves.
int
    wsr_upstream_http_pollitems (wsr_upstream_http_t *self, zmq_pollitem_t *items, int max);

//  Milliseconds until curl's next timeout (-1 = none, 0 = now), for the poll timeout.
long
    wsr_upstream_http_timeout (wsr_upstream_http_t *self);

//  After zmq_poll: pass back exactly the items pollitems wrote (with revents)
//  so curl does its work; finished requests call done. Call it also when the
//  poll timed out (count may be 0).
void
    wsr_upstream_http_process (wsr_upstream_http_t *self, zmq_pollitem_t *items, int count);

//  Transfers running now.
size_t
    wsr_upstream_http_inflight (wsr_upstream_http_t *self);

//  Requests waiting for a transfer slot.
size_t
    wsr_upstream_http_queued (wsr_upstream_http_t *self);

//  Copy the counters into *stats.
void
    wsr_upstream_http_stats (wsr_upstream_http_t *self, wsr_upstream_http_stats_t *stats);

//  Self test
void
    wsr_upstream_http_test (bool verbose);

#ifdef __cplusplus
}
#endif
#endif
