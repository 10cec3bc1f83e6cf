//  wsr_jsmerge — one delivery per NATS message that arrives twice: from the core
//  subscription and from the JetStream history stream's live consumer

#ifndef WSR_JSMERGE_H_INCLUDED
#define WSR_JSMERGE_H_INCLUDED

#ifdef __cplusplus
extern "C" {
#endif

#define WSR_JSMERGE_WAIT_MS     500     //  a core copy waits this long for its stream copy
#define WSR_JSMERGE_HOLD_MAX_MS 2000    //  ... and never longer, even with the stream alive
#define WSR_JSMERGE_HELD_MAX    65536   //  core copies held at most (then delivered at once)
#define WSR_JSMERGE_HELD_BYTES  (64 * 1024 * 1024)  //  ... and their bytes at most
#define WSR_JSMERGE_SEEN_MAX    65536   //  delivered copies remembered, per side
#define WSR_JSMERGE_SEEN_MS     30000   //  ... for this long

typedef struct _wsr_jsmerge_t wsr_jsmerge_t;

//  What to do with a copy
typedef enum {
    WSR_JSMERGE_HOLD,           //  kept here (copied): expire() gives it back if needed
    WSR_JSMERGE_DELIVER,        //  deliver it now
    WSR_JSMERGE_DROP            //  the other copy was delivered: drop it
} wsr_jsmerge_verdict_t;

//  A held core copy to deliver now (borrowed for the call).
typedef void (wsr_jsmerge_fn) (void *arg, const char *subject, size_t subject_len,
                               const uint8_t *data, size_t size);

//  Create. wait_ms: how long a core copy waits for its stream copy while
//  the stream is silent before the stream is taken to be down (≤ 0: the
//  default above). Returns NULL if out of memory.
wsr_jsmerge_t *
    wsr_jsmerge_new (int wait_ms);

//  Destroy; held copies are dropped.
void
    wsr_jsmerge_destroy (wsr_jsmerge_t **self_p);

//  A copy from the core subscription, at mono ms now.
wsr_jsmerge_verdict_t
    wsr_jsmerge_core (wsr_jsmerge_t *self, const char *subject, size_t subject_len,
                      const uint8_t *data, size_t size, int64_t now);

//  A copy from the stream's live consumer, at mono ms now. Only for
//  subjects the core subscription also covers.
wsr_jsmerge_verdict_t
    wsr_jsmerge_stream (wsr_jsmerge_t *self, const char *subject, size_t subject_len,
                        const uint8_t *data, size_t size, int64_t now);

//  Give back, in arrival order, the held core copies that waited too long:
//  all of them once the stream has been silent for wait_ms while one
//  waited (the stream is then down: later core copies are delivered at
//  once until a stream copy arrives again), a single one after
//  WSR_JSMERGE_HOLD_MAX_MS. Returns how many were given.
size_t
    wsr_jsmerge_expire (wsr_jsmerge_t *self, int64_t now, wsr_jsmerge_fn *fn, void *arg);

//  Mono ms when expire() has work next, or INT64_MAX.
int64_t
    wsr_jsmerge_due (wsr_jsmerge_t *self);

//  True while the stream is taken to be down.
bool
    wsr_jsmerge_degraded (wsr_jsmerge_t *self);

//  Core copies held now.
size_t
    wsr_jsmerge_held (wsr_jsmerge_t *self);

//  Self test
void
    wsr_jsmerge_test (bool verbose);

#ifdef __cplusplus
}
#endif
#endif
