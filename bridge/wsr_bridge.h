//  wsr_bridge — the backplane bridge actor: Redis / NATS / HTTP ⇄ wsrouter nodes over ZeroMQ

#ifndef WSR_BRIDGE_H_INCLUDED
#define WSR_BRIDGE_H_INCLUDED

#ifdef __cplusplus
extern "C" {
#endif

typedef struct _wsr_bridge_t wsr_bridge_t;

//  Bridge settings (plain values; strings are copied by wsr_bridge_new).
typedef struct {
    const char *endpoint;           //  tcp://HOST:PORT or inproc://NAME (nodes' side)
    const char *upstream_endpoint;  //  PUB for client messages (observers) or NULL
    const char *cert;               //  our secret certificate (CURVE) or NULL
    const char *clients;            //  directory of allowed node certificates
    bool insecure_plaintext;        //  allow plaintext on a non-loopback address
    size_t max_topics;              //  topics per node
    int peer_hwm;                   //  messages queued per peer (0 = WSR_PROTO_PEER_QUEUE)
    const char *redis_url;          //  WEBSOCKET_REDIS_URL or NULL
    const char *nats_url;           //  NATS_URL or NULL
    const char *nats_creds;         //  NATS_CREDS: .creds file, or NULL
    const char *nats_nkey_seed;     //  NATS_NKEY_SEED: seed file or seed, or NULL
    const char *nats_ca_file;       //  NATS_CA_FILE: CAs to trust (turns TLS on)
    const char *nats_cert_file;     //  NATS_CERT_FILE: client certificate, or NULL
    const char *nats_key_file;      //  NATS_KEY_FILE: its private key, or NULL
    bool firehose;                  //  one pattern subscription instead of per topic
    const char *redis_user;         //  "ws:{user_id}"
    const char *redis_channel;      //  "ws:channel:{channel}"
    const char *redis_actions;      //  "ws:actions:{user_id}"
    const char *nats_user;          //  "world.updates.user.{user_id}"
    const char *nats_channel;       //  "world.updates.channel.{channel}"
    const char *nats_actions;       //  "client.actions.{user_id}"
    const char *redis_events;       //  "ws:events:{user_id}": session lifecycle
    const char *nats_events;        //  "client.events.{user_id}"
    bool events;                    //  publish lifecycle events, keep presence
    const char *upstream_url;       //  WEBSOCKET_UPSTREAM_URL or NULL
    int upstream_timeout_ms;        //  per HTTP request
    int upstream_concurrency;       //  HTTP requests in flight
    size_t upstream_queue;          //  HTTP requests waiting
    size_t max_message;             //  largest payload forwarded
    bool readiness;                 //  own the backplane_up gauge (bridge process)
    size_t history_size;            //  WEBSOCKET_HISTORY_SIZE: entries per topic, 0 = off
    int history_ttl_s;              //  WEBSOCKET_HISTORY_TTL
    const char *nats_history_stream;    //  NATS_HISTORY_STREAM: JetStream stream or NULL
    int nats_history_replicas;      //  NATS_HISTORY_REPLICAS when the bridge creates it
} wsr_bridge_opts_t;

//  Fill opts with the defaults (the seeds' channel and subject names).
void
    wsr_bridge_opts_defaults (wsr_bridge_opts_t *opts);

//  Start a bridge; binds the nodes' endpoint (and the upstream one). Returns
//  NULL on failure (logged): a bind that fails, plaintext on a non-loopback
//  address without insecure_plaintext, certificates that do not load.
wsr_bridge_t *
    wsr_bridge_new (const wsr_bridge_opts_t *opts, wsr_metrics_t *metrics);

//  Stop the bridge and free it.
void
    wsr_bridge_destroy (wsr_bridge_t **self_p);

//  Read the clients directory again (SIGHUP). Returns the number of
//  certificates allowed, 0 without CURVE, or -1 if it cannot be read.
int
    wsr_bridge_reload (wsr_bridge_t *self);

//  Peers connected and topics they hold (for tests and operations).
void
    wsr_bridge_peers (wsr_bridge_t *self, size_t *peers, size_t *topics);

//  Self test
void
    wsr_bridge_test (bool verbose);

#ifdef __cplusplus
}
#endif
#endif
