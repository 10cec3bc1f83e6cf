//  wsr_nats — a NATS backplane link on libnats, forwarding messages into a ZeroMQ socket

#ifndef WSR_NATS_H_INCLUDED
#define WSR_NATS_H_INCLUDED

#ifdef __cplusplus
extern "C" {
#endif

typedef struct _wsr_nats_t wsr_nats_t;

//  How to reach and log in to NATS (plain values, borrowed for wsr_nats_new).
typedef struct {
    const char *url;                //  NATS_URL: nats://[USER:PASSWORD@|TOKEN@]HOST[:PORT]
                                    //  or tls://..., several comma-separated
    const char *creds;              //  NATS_CREDS: .creds file (user JWT + seed) or NULL
    const char *nkey_seed;          //  NATS_NKEY_SEED: a seed file, or the seed (SU...)
    const char *ca_file;            //  NATS_CA_FILE: PEM CAs to trust; turns TLS on
    const char *cert_file;          //  NATS_CERT_FILE: client certificate chain (PEM)
    const char *key_file;           //  NATS_KEY_FILE: its private key (PEM)
} wsr_nats_opts_t;

//  Create a link. Messages received on subscribed subjects are sent as
//  [subject][data] to a PUSH socket connected to `forward` (an inproc
//  endpoint the owner has bound a PULL on). libnats connects and reconnects
//  in the background; a connection libnats gives up on (it does after
//  refused credentials or a failed TLS handshake) is started over by
//  wsr_nats_process with backoff. Returns NULL if the URL or the options
//  are refused (logged, secrets hidden).
wsr_nats_t *
    wsr_nats_new (const wsr_nats_opts_t *opts, const char *forward);

//  Close the connection and free the link.
void
    wsr_nats_destroy (wsr_nats_t **self_p);

//  Call regularly (every heartbeat) from the owner's thread: starts over a
//  connection libnats gave up on, when its backoff is due.
void
    wsr_nats_process (wsr_nats_t *self);

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

//  Refusals since the last call: authorization or permission violations
//  reported by the server, and connections libnats gave up on. Thread-safe.
uint64_t
    wsr_nats_take_refusals (wsr_nats_t *self);

//  Subjects subscribed.
size_t
    wsr_nats_wanted (wsr_nats_t *self);

//  Tear libnats down at the end of main, after every link is destroyed:
//  waits (up to 2 s) for libnats' own threads, which may still be freeing
//  TLS state; nats_Close alone returns at once, and OpenSSL's cleanup at
//  exit then races them (a crash at exit after a TLS connection).
void
    wsr_nats_shutdown (void);

//  The libnats connection, for JetStream (wsr_jetstream); owned by the link.
typedef struct __natsConnection natsConnection;
natsConnection *
    wsr_nats_connection (wsr_nats_t *self);

//  Free what libnats keeps for the calling thread (its error stack); call
//  from a thread that used libnats before it ends.
void
    wsr_nats_release_thread (void);

//  Self test
void
    wsr_nats_test (bool verbose);

#ifdef __cplusplus
}
#endif
#endif
