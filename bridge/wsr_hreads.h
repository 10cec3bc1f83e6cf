//  wsr_hreads — the bridge's history reads for peers: HIST in, HISTR out

#ifndef WSR_HREADS_H_INCLUDED
#define WSR_HREADS_H_INCLUDED

#ifdef __cplusplus
extern "C" {
#endif

#define WSR_HREADS_MAX      10000   //  reads held or in flight
#define WSR_HREADS_HOLD_MS  2000    //  a read waits this long for its subscription

typedef struct _wsr_hreads_t wsr_hreads_t;

//  Where a read's result goes: the peer (routing id), the request id it
//  gave, and the encoded result (wsr_envelope_encode_history; the callee
//  takes it).
typedef void (wsr_hreads_reply_fn) (void *arg, const uint8_t *rid, size_t rid_size,
                                    uint64_t request, zframe_t **result_p);

//  Serve reads from Redis history (history not NULL: topics named by
//  redis_names, reads held until the topic's channel is confirmed
//  subscribed, unless gate is false) or JetStream (jetstream not NULL:
//  subjects by nats_names), or answer "no history" when neither is given.
//  All borrowed; they must outlive this object.
wsr_hreads_t *
    wsr_hreads_new (wsr_history_t *history, wsr_naming_t *redis_names, bool gate,
                    wsr_jetstream_t *jetstream, wsr_naming_t *nats_names,
                    wsr_hreads_reply_fn *reply, void *arg);

//  Destroy; reads in flight are forgotten (their results dropped).
void
    wsr_hreads_destroy (wsr_hreads_t **self_p);

//  A peer asks for topic's messages after since in epoch ("" or NULL: none
//  known), at most max. Returns 0 (the reply follows, maybe a failure
//  result), or -1 if the request is invalid (bad topic) or too many wait.
int
    wsr_hreads_request (wsr_hreads_t *self, const uint8_t *rid, size_t rid_size,
                        uint64_t request, const char *topic, const char *epoch, uint64_t since,
                        size_t max);

//  Redis confirmed a SUBSCRIBE of channel: held reads of it go now.
void
    wsr_hreads_confirmed (wsr_hreads_t *self, const char *channel, size_t channel_len);

//  A channel is unsubscribed, or (channel NULL) every subscription was lost.
void
    wsr_hreads_unconfirmed (wsr_hreads_t *self, const char *channel);

//  A store is going away: every read sent to it gets a failed result now
//  (held reads stay held). Then give the new stores (or NULL).
void
    wsr_hreads_set_stores (wsr_hreads_t *self, wsr_history_t *history,
                           wsr_jetstream_t *jetstream);

//  Periodic: held reads older than WSR_HREADS_HOLD_MS go anyway.
void
    wsr_hreads_tick (wsr_hreads_t *self);

//  Reads held or in flight.
size_t
    wsr_hreads_pending (wsr_hreads_t *self);

//  Self test
void
    wsr_hreads_test (bool verbose);

#ifdef __cplusplus
}
#endif
#endif
