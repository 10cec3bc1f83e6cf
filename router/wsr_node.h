//  wsr_node — one wsrouter node: metrics, bridge, router, session workers, auth, listener

#ifndef WSR_NODE_H_INCLUDED
#define WSR_NODE_H_INCLUDED

#ifdef __cplusplus
extern "C" {
#endif

typedef struct _wsr_node_t wsr_node_t;

//  Node settings (plain values; everything is copied by wsr_node_new).
typedef struct {
    const char *name;               //  node id: inproc suffix and envelope "n"
    const char *bind;               //  listen address
    int port;                       //  listen port, 0 = any
    bool reuseport;                 //  share the port with other nodes
    const char *api_key;            //  publish API key, NULL disables it
    const char *jwt_alg;            //  "HS256" or "EdDSA"
    const uint8_t *jwt_secret;      //  HS256 secret
    size_t jwt_secret_len;
    const uint8_t *jwt_public_key;  //  EdDSA public key, 32 bytes
    int workers;                    //  session worker threads
    size_t max_message;             //  WEBSOCKET_MAX_MESSAGE
    size_t max_queue;               //  WEBSOCKET_MAX_QUEUE
    size_t max_connections;         //  WEBSOCKET_MAX_CONNECTIONS (whole node)
    const char *upstream;           //  upstream PUB endpoint or NULL
    uint32_t max_per_ip;            //  WEBSOCKET_MAX_PER_IP (0 = no cap)
    int ping_interval_ms;           //  WEBSOCKET_PING_INTERVAL (0 = no pings)
    int ping_timeout_ms;            //  WEBSOCKET_PING_TIMEOUT
    size_t rate_messages;           //  WEBSOCKET_RATE_MESSAGES per session per s (0 = off)
    size_t rate_bytes;              //  WEBSOCKET_RATE_BYTES per session per s
    size_t handshake_rate;          //  WEBSOCKET_HANDSHAKE_RATE per s per node (0 = off)
    int handshake_timeout_ms;       //  WEBSOCKET_HANDSHAKE_TIMEOUT
    int write_delay_ms;             //  WEBSOCKET_WRITE_DELAY (0 = off)
    int hello_timeout_ms;           //  WEBSOCKET_HELLO_TIMEOUT: v1 hello due (0 = 10 s)
    const char *allowed_origins;    //  WEBSOCKET_ALLOWED_ORIGINS, comma list, NULL = any
    const char *bridge;             //  remote bridge endpoint (tcp://H:P) or NULL
    const char *cert;               //  this node's secret certificate (CURVE) or NULL
    const char *bridge_key;         //  the bridge's public certificate or NULL
    bool insecure_plaintext;        //  allow a plaintext link to a non-loopback bridge
    wsr_bridge_opts_t backplane;    //  the in-process bridge, used when bridge is NULL
    size_t max_pending_per_ip;      //  WEBSOCKET_MAX_PENDING_PER_IP (0 = no cap)
    int keepalive_lifetime_ms;      //  WEBSOCKET_KEEPALIVE_LIFETIME (0 = no cap)
    size_t keepalive_requests;      //  WEBSOCKET_KEEPALIVE_REQUESTS (0 = no cap)
    int jwt_leeway;                 //  WEBSOCKET_JWT_LEEWAY, seconds
    bool require_exp;               //  WEBSOCKET_REQUIRE_EXP
    int inherit_fd;                 //  > 0: listening socket handed over (taken); 0: bind
    const char *tls_cert;           //  WEBSOCKET_TLS_CERT (PEM chain), NULL = no TLS
    const char *tls_key;            //  WEBSOCKET_TLS_KEY (PEM private key)
    int tls_port;                   //  WEBSOCKET_TLS_PORT: 0 = the main port speaks TLS
    bool deflate;                   //  WEBSOCKET_DEFLATE: accept permessage-deflate
    int deflate_level;              //  WEBSOCKET_DEFLATE_LEVEL (zlib 1-9)
    size_t deflate_threshold;       //  WEBSOCKET_DEFLATE_THRESHOLD bytes
    const char *console_key;        //  WEBSOCKET_CONSOLE_KEY: the console only, NULL = none
    bool dev;                       //  --dev: the console may mint dev tokens
} wsr_node_opts_t;

//  Fill opts with the defaults (port 8080, one worker per core, ...).
void
    wsr_node_opts_defaults (wsr_node_opts_t *opts);

//  Start a node. Returns NULL (having logged why) if any part cannot start.
wsr_node_t *
    wsr_node_new (const wsr_node_opts_t *opts);

//  Stop everything, in reverse start order, and free the node.
void
    wsr_node_destroy (wsr_node_t **self_p);

//  The port the node listens on.
int
    wsr_node_port (wsr_node_t *self);

//  The TLS port (the main port if it speaks TLS), -1 without TLS.
int
    wsr_node_tls_port (wsr_node_t *self);

//  SIGHUP: reload the TLS certificate for new connections. Returns 0, or -1
//  (no TLS, or the files did not load: the old certificate stays).
int
    wsr_node_reload (wsr_node_t *self);

//  The node's counters (owned by the node).
wsr_metrics_t *
    wsr_node_metrics (wsr_node_t *self);

//  Graceful drain: stop accepting, readiness off, close every session with
//  1001 and wait up to timeout_ms for them to go. Returns sessions left.
int64_t
    wsr_node_drain (wsr_node_t *self, int timeout_ms);

//  Handover: stop accepting; returns a duplicate of the listening socket
//  (the caller owns it) or -1.
int
    wsr_node_pause (wsr_node_t *self);

//  Handover failed: accept again.
void
    wsr_node_resume (wsr_node_t *self);

//  Handover: up to max sessions leave the workers (wsr_session_export).
//  Returns [SESSION frame][fd] pairs (caller owns the message and the fds),
//  *open_p the open sessions left in the node.
zmsg_t *
    wsr_node_export (wsr_node_t *self, int max, uint64_t *open_p);

//  Handover: take [SESSION frame][fd] pairs in (*msg_p taken and nulled,
//  every fd with it), each to the worker its id maps to. Returns sessions taken.
int
    wsr_node_import (wsr_node_t *self, zmsg_t **msg_p);

//  Handover (old): the topic keys of worker index, one string frame each
//  (caller destroys), NULL past the last worker.
zmsg_t *
    wsr_node_topics (wsr_node_t *self, int index);

//  Session workers.
int
    wsr_node_workers (wsr_node_t *self);

//  Handover (new): subscribe the old workers' topics, lists [i] holding old
//  worker i's keys (strings) of count workers, each held in a ring until
//  wsr_node_presub_end; returns once the backplane has confirmed them (0),
//  or -1 if a bridge did not answer.
int
    wsr_node_presub (wsr_node_t *self, zlistx_t **lists, int count);

//  Handover (old): a barrier in every worker, after the new process has
//  subscribed: once it returns 0, everything the backplane published before
//  the new subscriptions has reached the workers. -1: a bridge did not answer.
int
    wsr_node_sync (wsr_node_t *self);

//  Handover (new): over; the rings go.
void
    wsr_node_presub_end (wsr_node_t *self);

//  Handover: close every open session with 1012. Returns how many.
int
    wsr_node_restart (wsr_node_t *self);

//  Self test
void
    wsr_node_test (bool verbose);

#ifdef __cplusplus
}
#endif
#endif
