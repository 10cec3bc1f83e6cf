//  wsr_listener — the listener actor: accepts TCP, parses HTTP, routes requests

#ifndef WSR_LISTENER_H_INCLUDED
#define WSR_LISTENER_H_INCLUDED

#ifdef __cplusplus
extern "C" {
#endif

typedef struct _wsr_listener_t wsr_listener_t;

//  Listener settings (plain values; strings are copied by wsr_listener_new).
typedef struct {
    const char *bind;               //  address to bind, e.g. "0.0.0.0"
    int port;                       //  TCP port, 0 for any free port
    const char *api_key;            //  publish API key; NULL disables the API
    bool reuseport;                 //  SO_REUSEPORT: several nodes on one port
    size_t max_pending;             //  handshakes in progress at once
    int handshake_timeout_ms;       //  request must be complete by then
    size_t max_message;             //  largest payload the API accepts
    bool status_only;               //  only /healthz, /readyz, /metrics (bridge)
    const char *allowed_origins;    //  comma-separated Origin allow-list, NULL = any
    size_t handshake_rate;          //  new connections per second, 0 = no cap
    wsr_ipcount_t *ipcount;         //  per-IP session counters (not owned), NULL = none;
                                    //  acquired when an upgrade is handed over
    size_t max_pending_per_ip;      //  pending connections per address, 0 = no cap
    int keepalive_lifetime_ms;      //  keep-alive connection's lifetime, 0 = no cap
    size_t keepalive_requests;      //  requests per keep-alive connection, 0 = no cap
    int inherit_fd;                 //  > 0: a listening socket handed over by the
                                    //  process this one replaces (taken); 0: bind
    const char *tls_cert;           //  PEM certificate chain: TLS on, NULL = plain only
    const char *tls_key;            //  PEM private key
    int tls_port;                   //  0: the main port speaks TLS; > 0: a second port for
                                    //  TLS beside the plain one; WSR_LISTENER_ANY_PORT: any
    bool deflate;                   //  accept permessage-deflate offers
    const uint8_t *jwt_secret;      //  HS256 secret: the listener verifies tokens itself
                                    //  and sends ADOPT to the workers; NULL: AUTH to auth
    size_t jwt_secret_len;
    int jwt_leeway;                 //  seconds of clock skew allowed (with jwt_secret)
    bool require_exp;               //  exp claim required (with jwt_secret)
    int workers;                    //  session workers to send ADOPT to (with jwt_secret;
                                    //  0: tokens go to auth, the secret only mints)
    const char *console_key;        //  WEBSOCKET_CONSOLE_KEY: opens the console's endpoints
                                    //  only (not /api/publish); NULL = none
    bool dev;                       //  --dev: the console may mint tokens (with jwt_secret)
                                    //  without a console key configured
    wsr_census_t *census;           //  the workers' topic census (not owned), NULL = none
    const char *node_name;          //  node id shown by the console, NULL = none
} wsr_listener_opts_t;

#define WSR_LISTENER_ANY_PORT   (-1)    //  tls_port: any free port (tests)

//  Start the listener of node `name`: binds the TCP port and connects to the
//  node's auth and router endpoints. Returns NULL if the port cannot be bound.
wsr_listener_t *
    wsr_listener_new (const char *name, const wsr_listener_opts_t *opts,
                      wsr_metrics_t *metrics);

//  Stop the listener and close every connection it still holds.
void
    wsr_listener_destroy (wsr_listener_t **self_p);

//  The TCP port actually bound.
int
    wsr_listener_port (wsr_listener_t *self);

//  The TLS port actually bound, the main port if it speaks TLS, -1 without TLS.
int
    wsr_listener_tls_port (wsr_listener_t *self);

//  Read the TLS certificate and key again (SIGHUP) for new connections;
//  established ones are untouched. Returns 0, or -1 (no TLS, or the files
//  failed to load: the old certificate stays).
int
    wsr_listener_reload (wsr_listener_t *self);

//  Stop accepting and report not ready (graceful drain): /readyz answers 503
//  "draining", upgrades on connections still open get 503, keep-alive ends
//  with the next answer. Waits for the ack.
void
    wsr_listener_drain (wsr_listener_t *self);

//  Handover: stop accepting (the listening socket stays open) and return a
//  duplicate of it for the process taking over (the caller owns it), or -1.
int
    wsr_listener_pause (wsr_listener_t *self);

//  Handover failed: accept again.
void
    wsr_listener_resume (wsr_listener_t *self);

//  Self test
void
    wsr_listener_test (bool verbose);

#ifdef __cplusplus
}
#endif
#endif
