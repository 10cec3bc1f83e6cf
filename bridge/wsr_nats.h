//  wsr_nats — a NATS backplane link on libnats, forwarding messages into a ZeroMQ socket

#ifndef WSR_NATS_H_INCLUDED
#define WSR_NATS_H_INCLUDED

#ifdef __cplusplus
extern "C" {
#endif

typedef struct _wsr_nats_t wsr_nats_t;

//  Create a link to url (nats://host:port[,nats://...]). Messages received on
//  subscribed subjects are sent as [subject][data] to a PUSH socket connected
//  to `forward` (an inproc endpoint the owner has bound a PULL on). libnats
//  connects and reconnects in the background, forever. Returns NULL if the
//  URL or options are refused.
wsr_nats_t *
    wsr_nats_new (const char *url, const char *forward);

//  Close the connection and free the link.
void
    wsr_nats_destroy (wsr_nats_t **self_p);

//  Subscribe to subject (wildcards allowed); kept across reconnects by
//  libnats. Idempotent. Returns 0 or -1.
int
    wsr_nats_subscribe (wsr_nats_t *self, const char *subject);

//  Unsubscribe. Idempotent.
void
    wsr_nats_unsubscribe (wsr_nats_t *self, const char *subject);

//  Publish. Returns 0, or -1 if the link is down (the caller counts the loss).
int
    wsr_nats_publish (wsr_nats_t *self, const char *subject, const uint8_t *data, size_t size);

//  True while connected.
bool
    wsr_nats_connected (wsr_nats_t *self);

//  Messages dropped since the last call: *dropped by our forward queue,
//  *slow libnats slow-consumer events. Thread-safe.
void
    wsr_nats_take_drops (wsr_nats_t *self, uint64_t *dropped, uint64_t *slow);

//  Subjects subscribed.
size_t
    wsr_nats_wanted (wsr_nats_t *self);

//  The libnats connection, for JetStream (wsr_jetstream); owned by the link.
typedef struct __natsConnection natsConnection;
natsConnection *
    wsr_nats_connection (wsr_nats_t *self);

//  Self test
void
    wsr_nats_test (bool verbose);

#ifdef __cplusplus
}
#endif
#endif
