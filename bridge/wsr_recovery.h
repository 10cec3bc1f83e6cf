//  wsr_recovery — one topic's switch from history to live: buffer, read, merge by offset

#ifndef WSR_RECOVERY_H_INCLUDED
#define WSR_RECOVERY_H_INCLUDED

#ifdef __cplusplus
extern "C" {
#endif

#define WSR_RECOVERY_MAX_BUFFER     10000           //  live messages held while reading
#define WSR_RECOVERY_MAX_BYTES      (8 * 1024 * 1024)   //  their bytes

typedef struct _wsr_recovery_t wsr_recovery_t;

typedef enum {
    WSR_RECOVERY_WAITING,       //  live messages are buffered until the history is in
    WSR_RECOVERY_READY,         //  history in, recovered known; output held until flush
    WSR_RECOVERY_LIVE           //  pass-through
} wsr_recovery_state_t;

typedef enum {
    WSR_RECOVERY_OK,            //  emitted, held, or dropped as a duplicate
    WSR_RECOVERY_READ           //  a gap in live delivery: read the history since
                                //  wsr_recovery_offset (in wsr_recovery_epoch) and give
                                //  it to wsr_recovery_history, then flush
} wsr_recovery_rc_t;

//  Called for each message to hand on, in order. offset 0 for a message
//  without history (a plain PUBLISH); epoch is the topic's epoch then.
typedef void (wsr_recovery_emit_fn) (void *arg, uint64_t offset, const char *epoch,
                                     const uint8_t *data, size_t size);

//  Start recovering one topic. Create it before subscribing (or, if already
//  subscribed, before reading): every live message from then on goes to
//  wsr_recovery_live. epoch/since is the client's position (epoch NULL: it
//  has none; the output then starts after the topic's current last offset).
//  At most max_messages / max_bytes live messages are held (0: the defaults
//  above). emit(arg, ...) receives the output. Returns NULL if epoch is
//  longer than WSR_HISTORY_EPOCH_MAX.
wsr_recovery_t *
    wsr_recovery_new (const char *epoch, uint64_t since, size_t max_messages, size_t max_bytes,
                      wsr_recovery_emit_fn *emit, void *arg);

//  Destroy, dropping what is held.
void
    wsr_recovery_destroy (wsr_recovery_t **self_p);

//  A live message. offset 0: no history (plain PUBLISH; passed on in
//  arrival order, never dropped as a duplicate); otherwise prev is the
//  offset of the topic's message before it (Redis: offset - 1; NATS:
//  Nats-Last-Sequence) and epoch its epoch (NULL or "": the current one, for
//  NATS, whose live messages carry none). Data is copied if held.
wsr_recovery_rc_t
    wsr_recovery_live (wsr_recovery_t *self, uint64_t offset, uint64_t prev, const char *epoch,
                       const uint8_t *data, size_t size);

//  The history read (since wsr_recovery_offset, in the epoch asked) is in:
//  merge it with what live messages were buffered. WAITING → READY.
//  Returns 0, or -1 if the read failed (result->status): the state stays
//  WAITING, read again or give up.
int
    wsr_recovery_history (wsr_recovery_t *self, const wsr_history_result_t *result);

//  Emit what is held (history, then live messages newer than it) and pass
//  live messages straight through from now on. READY → LIVE.
void
    wsr_recovery_flush (wsr_recovery_t *self);

//  State.
wsr_recovery_state_t
    wsr_recovery_state (wsr_recovery_t *self);

//  From READY on: true if the output continues the client's position with
//  nothing missing (same epoch, history complete, no live message lost
//  while buffering); false if the client must resync. Always false when no
//  position was given.
bool
    wsr_recovery_recovered (wsr_recovery_t *self);

//  While WAITING: the epoch to read in (NULL if no position: read only the
//  current epoch and last offset). Then: the topic's epoch as known now (""
//  if it has no history).
const char *
    wsr_recovery_epoch (wsr_recovery_t *self);

//  While WAITING: the offset to read since. Then: the offset of the last
//  message emitted or held (the client's position after flush).
uint64_t
    wsr_recovery_offset (wsr_recovery_t *self);

//  Live messages dropped as duplicates so far.
uint64_t
    wsr_recovery_duplicates (wsr_recovery_t *self);

//  Self test
void
    wsr_recovery_test (bool verbose);

#ifdef __cplusplus
}
#endif
#endif
