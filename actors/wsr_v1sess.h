//  wsr_v1sess — one wsrouter.v1 session's opening: hello, recovery, welcome

#ifndef WSR_V1SESS_H_INCLUDED
#define WSR_V1SESS_H_INCLUDED

#ifdef __cplusplus
extern "C" {
#endif

#define WSR_V1SESS_MAX_PENDING  (1024 * 1024)   //  bytes held before the hello

typedef struct _wsr_v1sess_t wsr_v1sess_t;

//  What the session worker does for it.
typedef struct {
    //  Append a frame to the session's output (takes it).
    void (*queue) (void *arg, wsr_outframe_t **frame_p);
    //  Ask the bridge for topic's history after since in epoch (NULL: none),
    //  at most max entries; the result comes back through wsr_v1sess_history.
    //  Returns 0, or -1 if it cannot be asked (then the read counts as failed).
    int (*read) (void *arg, const char *topic, const char *epoch, uint64_t since, size_t max);
} wsr_v1sess_io_t;

//  Start a v1 session's opening: session id, node id, its topics (keys,
//  copied), the token's expiry (0 none), what the worker does (io, arg).
wsr_v1sess_t *
    wsr_v1sess_new (uint64_t session, const char *node, const char *const *topics,
                    size_t count, int64_t expires, const wsr_v1sess_io_t *io, void *arg);

//  Destroy, dropping what is held.
void
    wsr_v1sess_destroy (wsr_v1sess_t **self_p);

//  The client's hello with the positions it asks to recover (those of other
//  topics are ignored). Reads every topic's position (and history after the
//  asked ones); the welcome follows when all are in.
void
    wsr_v1sess_hello (wsr_v1sess_t *self, const wsr_v1_position_t *recover, size_t count);

//  True once the hello was taken.
bool
    wsr_v1sess_greeted (wsr_v1sess_t *self);

//  A publication for one of the session's topics before it is live: held,
//  in order, until the welcome. shared (may be NULL) is the worker's
//  encoded pub frame for it, linked instead of encoding again when the
//  message goes out as it came.
void
    wsr_v1sess_deliver (wsr_v1sess_t *self, const char *topic, uint64_t offset, uint64_t prev,
                        const char *epoch, int kind, const uint8_t *data, size_t size,
                        wsr_outframe_t *shared);

//  The history read for topic is in.
void
    wsr_v1sess_history (wsr_v1sess_t *self, const char *topic, const wsr_history_result_t *result);

//  Reads not answered in time: take them as failed (the welcome then says
//  recovered:false for those topics).
void
    wsr_v1sess_give_up (wsr_v1sess_t *self);

//  The token was refreshed before the welcome: the welcome says so.
void
    wsr_v1sess_set_expires (wsr_v1sess_t *self, int64_t expires);

//  True once the welcome and everything held are queued: the session is
//  live and the worker frees this object.
bool
    wsr_v1sess_live (wsr_v1sess_t *self);

//  Self test
void
    wsr_v1sess_test (bool verbose);

#ifdef __cplusplus
}
#endif
#endif
