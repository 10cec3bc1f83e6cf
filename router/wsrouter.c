//  wsrouter — command line: serve, bridge, token, keygen, publish, bench
//
//  `serve` reads its configuration from the environment (README,
//  Configuration) with a flag for each, starts one node, and waits for SIGINT
//  or SIGTERM, which it handles synchronously (signals are blocked in every
//  thread; main takes them with sigtimedwait), then drains and exits 0.
//  `bridge` runs the backplane bridge as its own process the same way;
//  `bench` is the load generator, which lives in tools/bench.

#include "wsr_classes.h"
#include "wsr_bench.h"
#include <curl/curl.h>
#include <getopt.h>
#include <malloc.h>
#include <jansson.h>
#include <nats/nats.h>
#include <signal.h>

//  --------------------------------------------------------------------------
//  Small helpers

static const char *
s_env (const char *name, const char *fallback)
{
    const char *value = getenv (name);
    return value && *value? value: fallback;
}

//  Parse a positive size with an optional K/M/G suffix; -1 if invalid.
static long long
s_parse_size (const char *text)
{
    char *end = NULL;
    errno = 0;
    long long value = strtoll (text, &end, 10);
    if (errno || end == text || value < 0)
        return -1;
    if (*end == 'K' || *end == 'k')
        value *= 1024, end++;
    else
    if (*end == 'M' || *end == 'm')
        value *= 1024 * 1024, end++;
    else
    if (*end == 'G' || *end == 'g')
        value *= 1024LL * 1024 * 1024, end++;
    return *end? -1: value;
}

//  Parse a duration: "25" or "25s" seconds, "500ms", "2m"; returns ms or -1.
static long long
s_parse_duration (const char *text)
{
    char *end = NULL;
    errno = 0;
    double value = strtod (text, &end);
    if (errno || end == text || value < 0)
        return -1;
    if (streq (end, "") || streq (end, "s"))
        return (long long) (value * 1000);
    if (streq (end, "ms"))
        return (long long) value;
    if (streq (end, "m"))
        return (long long) (value * 60000);
    return -1;
}

static char *
s_random_hex (size_t bytes)
{
    uint8_t raw [64];
    assert (bytes <= sizeof raw);
    randombytes_buf (raw, bytes);
    char *hex = (char *) malloc (bytes * 2 + 1);
    sodium_bin2hex (hex, bytes * 2 + 1, raw, bytes);
    return hex;
}

//  Decode standard or url-safe base64 into out; returns bytes or -1.
static int
s_base64_decode (const char *text, uint8_t *out, size_t out_size)
{
    size_t len = 0;
    if (sodium_base642bin (out, out_size, text, strlen (text), NULL, &len, NULL,
                           sodium_base64_VARIANT_ORIGINAL) == 0
    ||  sodium_base642bin (out, out_size, text, strlen (text), NULL, &len, NULL,
                           sodium_base64_VARIANT_URLSAFE_NO_PADDING) == 0)
        return (int) len;
    return -1;
}

//  --------------------------------------------------------------------------
//  Signals: blocked in every thread, taken synchronously by main

static char **s_argv = NULL;        //  main's argv, for an upgrade's exec

//  upgrade: SIGUSR2 is taken too (a node; the bridge leaves it pending)
static int
s_wait_signal_for (bool upgrade)
{
    sigset_t signals;
    sigemptyset (&signals);
    sigaddset (&signals, SIGINT);
    sigaddset (&signals, SIGTERM);
    sigaddset (&signals, SIGHUP);
    if (upgrade)
        sigaddset (&signals, SIGUSR2);
    int sig = 0;
    while (sig <= 0) {
        struct timespec wait = { 1, 0 };
        sig = sigtimedwait (&signals, NULL, &wait);
    }
    return sig;
}

static int
s_wait_signal (void)
{
    return s_wait_signal_for (false);
}

static void
s_block_signals (void)
{
    sigset_t signals;
    sigemptyset (&signals);
    sigaddset (&signals, SIGINT);
    sigaddset (&signals, SIGTERM);
    sigaddset (&signals, SIGHUP);
    sigaddset (&signals, SIGUSR2);
    pthread_sigmask (SIG_BLOCK, &signals, NULL);        //  inherited by every actor
    signal (SIGPIPE, SIG_IGN);
}

//  --------------------------------------------------------------------------
//  History settings from text (checked by s_backplane_check).
static void
s_history_size (wsr_bridge_opts_t *bp, const char *text)
{
    if (text) {
        long long size = s_parse_size (text);
        bp->history_size = size < 0? SIZE_MAX: (size_t) size;
    }
}

static void
s_history_ttl (wsr_bridge_opts_t *bp, const char *text)
{
    if (text) {
        long long ms = s_parse_duration (text);
        bp->history_ttl_s = ms < 1000 || ms > 365LL * 86400 * 1000? -1: (int) (ms / 1000);
    }
}

//  Backplane settings shared by serve (in-process bridge) and bridge

static void
s_backplane_env (wsr_bridge_opts_t *bp)
{
    bp->redis_url = s_env ("WEBSOCKET_REDIS_URL", NULL);
    bp->nats_url = s_env ("NATS_URL", NULL);
    bp->nats_creds = s_env ("NATS_CREDS", NULL);
    bp->nats_nkey_seed = s_env ("NATS_NKEY_SEED", NULL);
    bp->nats_ca_file = s_env ("NATS_CA_FILE", NULL);
    bp->nats_cert_file = s_env ("NATS_CERT_FILE", NULL);
    bp->nats_key_file = s_env ("NATS_KEY_FILE", NULL);
    bp->upstream_url = s_env ("WEBSOCKET_UPSTREAM_URL", NULL);
    bp->firehose = streq (s_env ("WEBSOCKET_BRIDGE_MODE", "topics"), "firehose");
    bp->redis_user = s_env ("WEBSOCKET_REDIS_USER_CHANNEL", bp->redis_user);
    bp->redis_channel = s_env ("WEBSOCKET_REDIS_CHANNEL_CHANNEL", bp->redis_channel);
    bp->redis_actions = s_env ("WEBSOCKET_REDIS_ACTIONS_CHANNEL", bp->redis_actions);
    bp->nats_user = s_env ("NATS_USER_SUBJECT", bp->nats_user);
    bp->nats_channel = s_env ("NATS_CHANNEL_SUBJECT", bp->nats_channel);
    bp->nats_actions = s_env ("NATS_ACTIONS_SUBJECT", bp->nats_actions);
    bp->redis_events = s_env ("WEBSOCKET_REDIS_EVENTS_CHANNEL", bp->redis_events);
    bp->nats_events = s_env ("NATS_EVENTS_SUBJECT", bp->nats_events);
    bp->events = !streq (s_env ("WEBSOCKET_EVENTS", "1"), "0");
    const char *timeout = s_env ("WEBSOCKET_UPSTREAM_TIMEOUT", NULL);
    if (timeout)
        bp->upstream_timeout_ms = atoi (timeout);
    const char *concurrency = s_env ("WEBSOCKET_UPSTREAM_CONCURRENCY", NULL);
    if (concurrency)
        bp->upstream_concurrency = atoi (concurrency);
    s_history_size (bp, s_env ("WEBSOCKET_HISTORY_SIZE", NULL));
    s_history_ttl (bp, s_env ("WEBSOCKET_HISTORY_TTL", NULL));
    bp->nats_history_stream = s_env ("NATS_HISTORY_STREAM", NULL);
    const char *replicas = s_env ("NATS_HISTORY_REPLICAS", NULL);
    if (replicas)
        bp->nats_history_replicas = atoi (replicas);
}

//  The backplane settings that can be wrong; 0, or -1 with a message.
static int
s_backplane_check (const char *who, const wsr_bridge_opts_t *bp)
{
    if (bp->history_size == SIZE_MAX || bp->history_size > 1000000) {
        fprintf (stderr, "%s: bad history size (0..1000000)\n", who);
        return -1;
    }
    if (bp->history_ttl_s < 1) {
        fprintf (stderr, "%s: bad history TTL (a duration of at least 1 s)\n", who);
        return -1;
    }
    if (bp->nats_history_replicas < 1 || bp->nats_history_replicas > 5) {
        fprintf (stderr, "%s: bad NATS_HISTORY_REPLICAS (1..5)\n", who);
        return -1;
    }
    return 0;
}

//  Backplane flags; returns true if the option was one of them.
static bool
s_backplane_flag (wsr_bridge_opts_t *bp, int c)
{
    switch (c) {
        case 'R': bp->redis_url = optarg; return true;
        case 'N': bp->nats_url = optarg; return true;
        case 'H': bp->upstream_url = optarg; return true;
        case 'F': bp->firehose = true; return true;
        case 1700: bp->nats_creds = optarg; return true;
        case 1701: bp->nats_nkey_seed = optarg; return true;
        case 1702: bp->nats_ca_file = optarg; return true;
        case 1703: bp->nats_cert_file = optarg; return true;
        case 1704: bp->nats_key_file = optarg; return true;
        case 1710: s_history_size (bp, optarg); return true;
        case 1711: s_history_ttl (bp, optarg); return true;
        case 1712: bp->nats_history_stream = optarg; return true;
        default: return false;
    }
}

#define S_BACKPLANE_OPTIONS \
    { "redis-url", required_argument, 0, 'R' }, { "nats-url", required_argument, 0, 'N' }, \
    { "upstream-url", required_argument, 0, 'H' }, { "firehose", no_argument, 0, 'F' }, \
    { "nats-creds", required_argument, 0, 1700 }, \
    { "nats-nkey-seed", required_argument, 0, 1701 }, \
    { "nats-ca-file", required_argument, 0, 1702 }, \
    { "nats-cert-file", required_argument, 0, 1703 }, \
    { "nats-key-file", required_argument, 0, 1704 }, \
    { "history-size", required_argument, 0, 1710 }, \
    { "history-ttl", required_argument, 0, 1711 }, \
    { "nats-history-stream", required_argument, 0, 1712 }

#define S_BACKPLANE_HELP \
"  --redis-url URL       redis://[[user]:password@]host:port[/db], user and password\n" \
"                        %%-encoded [WEBSOCKET_REDIS_URL; prefer the variable: a\n" \
"                        flag is visible in ps]\n" \
"  --nats-url URL        nats://[user:password@|token@]host:port or tls://...,\n" \
"                        several comma-separated [NATS_URL]\n" \
"  --nats-creds FILE     NATS .creds file (user JWT and nkey seed) [NATS_CREDS]\n" \
"  --nats-nkey-seed FILE file with a NATS user nkey seed [NATS_NKEY_SEED: the\n" \
"                        file, or the seed itself]\n" \
"  --nats-ca-file FILE   CAs (PEM) that sign the NATS servers' certificates;\n" \
"                        turns TLS on [NATS_CA_FILE]\n" \
"  --nats-cert-file FILE client certificate for NATS TLS [NATS_CERT_FILE]\n" \
"  --nats-key-file FILE  its private key [NATS_KEY_FILE]\n" \
"  --upstream-url URL    POST client messages to this HTTP backend; its reply\n" \
"                        goes back to the session [WEBSOCKET_UPSTREAM_URL]\n" \
"  --firehose            one pattern subscription per kind instead of one per\n" \
"                        topic [WEBSOCKET_BRIDGE_MODE=firehose]\n" \
"  --history-size N      keep the last N publications of each topic for\n" \
"                        wsrouter.v1 recovery [WEBSOCKET_HISTORY_SIZE, 0 = off]\n" \
"  --history-ttl T       and for at most T [WEBSOCKET_HISTORY_TTL, 5m]\n" \
"  --nats-history-stream S  JetStream stream holding NATS history (made if\n" \
"                        missing) [NATS_HISTORY_STREAM; NATS_HISTORY_REPLICAS, 1]\n" \
"  names: WEBSOCKET_REDIS_USER_CHANNEL (ws:{user_id}), WEBSOCKET_REDIS_CHANNEL_CHANNEL\n" \
"  (ws:channel:{channel}), WEBSOCKET_REDIS_ACTIONS_CHANNEL (ws:actions:{user_id}),\n" \
"  NATS_USER_SUBJECT (world.updates.user.{user_id}), NATS_CHANNEL_SUBJECT\n" \
"  (world.updates.channel.{channel}), NATS_ACTIONS_SUBJECT (client.actions.{user_id});\n" \
"  WEBSOCKET_UPSTREAM_TIMEOUT (ms, 5000), WEBSOCKET_UPSTREAM_CONCURRENCY (64)\n"

//  --------------------------------------------------------------------------
//  serve

static void
s_serve_usage (void)
{
    printf (
"usage: wsrouter [serve] [options]\n"
"\n"
"Runs one wsrouter node: WebSocket sessions on GET /ws?token=JWT, the publish\n"
"API on POST /api/publish, /healthz, /readyz and /metrics, all on one port.\n"
"\n"
"options (environment variable in brackets):\n"
"  --port N              listen port [WEBSOCKET_SERVICE_PORT, 8080; 0 = any]\n"
"  --bind ADDR           listen address [WEBSOCKET_BIND, 0.0.0.0]\n"
"  --jwt-secret S        HS256 secret [JWT_SECRET_KEY]\n"
"  --jwt-alg A           HS256 or EdDSA [JWT_ALGORITHM, HS256]\n"
"  --jwt-public-key B64  Ed25519 public key for EdDSA [JWT_PUBLIC_KEY]\n"
"  --api-key K           key for POST /api/publish [WEBSOCKET_API_KEY]\n"
"  --workers N           session worker threads [WEBSOCKET_WORKERS, one per core]\n"
"  --upstream-endpoint E ZeroMQ PUB endpoint for client messages\n"
"                        [WEBSOCKET_UPSTREAM_ENDPOINT, e.g. tcp://127.0.0.1:5560]\n"
"  --max-message N       largest message, bytes [WEBSOCKET_MAX_MESSAGE, 1M]\n"
"  --max-queue N         output queued per session [WEBSOCKET_MAX_QUEUE, 8M]\n"
"  --max-connections N   sessions per node [WEBSOCKET_MAX_CONNECTIONS, 1000000]\n"
"  --drain-timeout T     SIGTERM drain limit [WEBSOCKET_DRAIN_TIMEOUT, 5s]\n"
"  --ping-interval T     ping a silent session after T [WEBSOCKET_PING_INTERVAL, 25s; 0 off]\n"
"  --ping-timeout T      close it if still silent T later [WEBSOCKET_PING_TIMEOUT, 10s]\n"
"  --handshake-timeout T request must arrive within T [WEBSOCKET_HANDSHAKE_TIMEOUT, 10s]\n"
"  --write-delay T       hold deliveries up to T so a session's messages leave in one\n"
"                        write [WEBSOCKET_WRITE_DELAY, 0 = off; e.g. 5ms]\n"
"  --hello-timeout T     a wsrouter.v1 client's hello is due within T (1008 after)\n"
"                        [WEBSOCKET_HELLO_TIMEOUT, 10s]\n"
"  --max-per-ip N        sessions per client address [WEBSOCKET_MAX_PER_IP, 10000; 0 off]\n"
"  --max-pending-per-ip N  connections per client address in their handshake, idle in\n"
"                        keep-alive or closing [WEBSOCKET_MAX_PENDING_PER_IP, 64; 0 off]\n"
"  --keepalive-lifetime T  keep-alive connection lifetime [WEBSOCKET_KEEPALIVE_LIFETIME,\n"
"                        60s; 0 off]\n"
"  --keepalive-requests N  requests per keep-alive connection\n"
"                        [WEBSOCKET_KEEPALIVE_REQUESTS, 1000; 0 off]\n"
"  --jwt-leeway T        clock skew allowed on exp/nbf/iat [WEBSOCKET_JWT_LEEWAY, 30s]\n"
"  --require-exp 0|1     refuse tokens without exp [WEBSOCKET_REQUIRE_EXP, 1]\n"
"  --rate-messages N     inbound frames per session per second [WEBSOCKET_RATE_MESSAGES, 100]\n"
"  --rate-bytes N        inbound bytes per session per second [WEBSOCKET_RATE_BYTES, 1M]\n"
"  --handshake-rate N    new connections per second [WEBSOCKET_HANDSHAKE_RATE, 20000; 0 off]\n"
"  --allowed-origins L   comma list of allowed Origin values [WEBSOCKET_ALLOWED_ORIGINS, any]\n"
"  --tls-cert FILE       PEM certificate chain: serve wss:// [WEBSOCKET_TLS_CERT]\n"
"  --tls-key FILE        its PEM private key [WEBSOCKET_TLS_KEY]; SIGHUP reloads both\n"
"  --tls-port P          TLS on a second port, plain stays on --port [WEBSOCKET_TLS_PORT;\n"
"                        unset: --port itself speaks TLS]\n"
"  --deflate 0|1         accept permessage-deflate [WEBSOCKET_DEFLATE, 1]\n"
"  --deflate-level N     zlib level 1-9 [WEBSOCKET_DEFLATE_LEVEL, 6]\n"
"  --deflate-threshold B smaller messages go out plain [WEBSOCKET_DEFLATE_THRESHOLD, 128]\n"
"  --console-key KEY     a key for the web console (/console) only: figures, topics,\n"
"                        presence, dev tokens; not publishing [WEBSOCKET_CONSOLE_KEY]\n"
"  (T: seconds, or with a unit: 500ms, 25s, 2m; N: a count, K/M/G suffixes allowed)\n"
"  --node-id ID          node id in envelopes [WEBSOCKET_NODE_ID, host-pid]\n"
"  --reuseport           share the port with other nodes (SO_REUSEPORT)\n"
"  --bridge tcp://H:P    use a bridge process [WEBSOCKET_BRIDGE]\n"
"  --cert FILE           this node's secret certificate for a CURVE link to the\n"
"                        bridge [WEBSOCKET_NODE_CERT]\n"
"  --bridge-key FILE     the bridge's public certificate [WEBSOCKET_BRIDGE_SERVER_KEY]\n"
"  --insecure-plaintext  allow a plaintext link to a bridge that is not on a\n"
"                        loopback address [WEBSOCKET_INSECURE_PLAINTEXT=1]\n"
"  --dev                 development mode: random secret and API key, printed;\n"
"                        binds 127.0.0.1 unless --bind / WEBSOCKET_BIND is given\n"
"  --verbose             debug logging\n"
"\nbackplane (in-process bridge; without any, the embedded one):\n"
S_BACKPLANE_HELP);
}

typedef struct {
    wsr_node_opts_t node;           //  node settings
    char *secret;                   //  owned copies of generated values
    char *api_key;
    uint8_t public_key [32];        //  decoded EdDSA key
    int drain_ms;                   //  drain timeout
    bool dev;                       //  --dev
} s_serve_t;

static int
s_serve (int argc, char *argv [])
{
    s_serve_t serve = { 0 };
    wsr_node_opts_t *opts = &serve.node;
    wsr_node_opts_defaults (opts);
    char default_id [128];
    char host [64] = "host";
    gethostname (host, sizeof host - 1);
    snprintf (default_id, sizeof default_id, "%s-%d", host, (int) getpid ());
    opts->name = s_env ("WEBSOCKET_NODE_ID", default_id);
    const char *bind_env = s_env ("WEBSOCKET_BIND", NULL);
    bool bind_given = bind_env != NULL;
    opts->bind = bind_env? bind_env: opts->bind;
    const char *edge [][2] = {          //  edge settings: env, value (flags 1300..)
        { "WEBSOCKET_MAX_PENDING_PER_IP", NULL }, { "WEBSOCKET_KEEPALIVE_LIFETIME", NULL },
        { "WEBSOCKET_KEEPALIVE_REQUESTS", NULL }, { "WEBSOCKET_REQUIRE_EXP", NULL },
        { "WEBSOCKET_JWT_LEEWAY", NULL }
    };
    for (int i = 0; i < 5; i++)
        edge [i][1] = s_env (edge [i][0], NULL);
    const char *port = s_env ("WEBSOCKET_SERVICE_PORT", "8080");
    const char *secret = s_env ("JWT_SECRET_KEY", NULL);
    opts->jwt_alg = s_env ("JWT_ALGORITHM", "HS256");
    const char *public_key = s_env ("JWT_PUBLIC_KEY", NULL);
    opts->api_key = s_env ("WEBSOCKET_API_KEY", NULL);
    opts->console_key = s_env ("WEBSOCKET_CONSOLE_KEY", NULL);
    const char *workers = s_env ("WEBSOCKET_WORKERS", NULL);
    opts->upstream = s_env ("WEBSOCKET_UPSTREAM_ENDPOINT", NULL);
    const char *max_message = s_env ("WEBSOCKET_MAX_MESSAGE", NULL);
    const char *max_queue = s_env ("WEBSOCKET_MAX_QUEUE", NULL);
    const char *max_connections = s_env ("WEBSOCKET_MAX_CONNECTIONS", NULL);
    const char *drain = s_env ("WEBSOCKET_DRAIN_TIMEOUT", "5");
    const char *durations [][3] = {             //  env, value, flag index below
        { "WEBSOCKET_PING_INTERVAL", NULL, NULL }, { "WEBSOCKET_PING_TIMEOUT", NULL, NULL },
        { "WEBSOCKET_HANDSHAKE_TIMEOUT", NULL, NULL }, { "WEBSOCKET_WRITE_DELAY", NULL, NULL },
        { "WEBSOCKET_HELLO_TIMEOUT", NULL, NULL }
    };
    for (int i = 0; i < 5; i++)
        durations [i][1] = s_env (durations [i][0], NULL);
    const char *counts [][2] = {
        { "WEBSOCKET_MAX_PER_IP", NULL }, { "WEBSOCKET_RATE_MESSAGES", NULL },
        { "WEBSOCKET_RATE_BYTES", NULL }, { "WEBSOCKET_HANDSHAKE_RATE", NULL }
    };
    for (int i = 0; i < 4; i++)
        counts [i][1] = s_env (counts [i][0], NULL);
    opts->allowed_origins = s_env ("WEBSOCKET_ALLOWED_ORIGINS", NULL);
    opts->reuseport = streq (s_env ("WEBSOCKET_REUSEPORT", "0"), "1");
    opts->bridge = s_env ("WEBSOCKET_BRIDGE", NULL);
    opts->cert = s_env ("WEBSOCKET_NODE_CERT", NULL);
    opts->bridge_key = s_env ("WEBSOCKET_BRIDGE_SERVER_KEY", NULL);
    opts->insecure_plaintext = streq (s_env ("WEBSOCKET_INSECURE_PLAINTEXT", "0"), "1");
    s_backplane_env (&opts->backplane);
    opts->tls_cert = s_env ("WEBSOCKET_TLS_CERT", NULL);
    opts->tls_key = s_env ("WEBSOCKET_TLS_KEY", NULL);
    const char *tls_port = s_env ("WEBSOCKET_TLS_PORT", NULL);
    const char *deflate = s_env ("WEBSOCKET_DEFLATE", "1");
    const char *deflate_level = s_env ("WEBSOCKET_DEFLATE_LEVEL", NULL);
    const char *deflate_threshold = s_env ("WEBSOCKET_DEFLATE_THRESHOLD", NULL);
    bool verbose = false;

    static struct option options [] = {
        { "port", required_argument, 0, 'p' }, { "bind", required_argument, 0, 'b' },
        { "jwt-secret", required_argument, 0, 's' }, { "jwt-alg", required_argument, 0, 'a' },
        { "jwt-public-key", required_argument, 0, 'k' },
        { "api-key", required_argument, 0, 'K' }, { "workers", required_argument, 0, 'w' },
        { "upstream-endpoint", required_argument, 0, 'u' },
        { "max-message", required_argument, 0, 'm' },
        { "max-queue", required_argument, 0, 'q' },
        { "max-connections", required_argument, 0, 'c' },
        { "drain-timeout", required_argument, 0, 'd' },
        { "node-id", required_argument, 0, 'n' }, { "reuseport", no_argument, 0, 'r' },
        { "dev", no_argument, 0, 'D' }, { "verbose", no_argument, 0, 'v' },
        { "bridge", required_argument, 0, 'B' }, S_BACKPLANE_OPTIONS,
        { "cert", required_argument, 0, 1200 }, { "bridge-key", required_argument, 0, 1201 },
        { "insecure-plaintext", no_argument, 0, 1202 },
        { "ping-interval", required_argument, 0, 1000 },
        { "ping-timeout", required_argument, 0, 1001 },
        { "handshake-timeout", required_argument, 0, 1002 },
        { "write-delay", required_argument, 0, 1003 },
        { "hello-timeout", required_argument, 0, 1004 },
        { "max-per-ip", required_argument, 0, 1100 },
        { "rate-messages", required_argument, 0, 1101 },
        { "rate-bytes", required_argument, 0, 1102 },
        { "handshake-rate", required_argument, 0, 1103 },
        { "max-pending-per-ip", required_argument, 0, 1300 },
        { "keepalive-lifetime", required_argument, 0, 1301 },
        { "keepalive-requests", required_argument, 0, 1302 },
        { "require-exp", required_argument, 0, 1303 },
        { "jwt-leeway", required_argument, 0, 1304 },
        { "allowed-origins", required_argument, 0, 'O' },
        { "tls-cert", required_argument, 0, 1400 }, { "tls-key", required_argument, 0, 1401 },
        { "tls-port", required_argument, 0, 1402 }, { "deflate", required_argument, 0, 1403 },
        { "deflate-level", required_argument, 0, 1404 },
        { "deflate-threshold", required_argument, 0, 1405 },
        { "console-key", required_argument, 0, 1406 },
        { "help", no_argument, 0, 'h' }, { 0, 0, 0, 0 }
    };
    int c;
    while ((c = getopt_long (argc, argv, "", options, NULL)) != -1) {
        if (s_backplane_flag (&opts->backplane, c))
            continue;
        if (c >= 1400 && c < 1450) {
            const char **tls_values [7] = {
                &opts->tls_cert, &opts->tls_key, &tls_port, &deflate, &deflate_level,
                &deflate_threshold, &opts->console_key
            };
            if (c - 1400 >= 7) {
                s_serve_usage ();
                return 2;
            }
            *tls_values [c - 1400] = optarg;
            continue;
        }
        if (c >= 1000 && c < 1005) {
            durations [c - 1000][1] = optarg;
            continue;
        }
        if (c >= 1100 && c < 1104) {
            counts [c - 1100][1] = optarg;
            continue;
        }
        if (c >= 1300 && c < 1305) {
            edge [c - 1300][1] = optarg;
            continue;
        }
        switch (c) {
            case 1200: opts->cert = optarg; break;
            case 1201: opts->bridge_key = optarg; break;
            case 1202: opts->insecure_plaintext = true; break;
            case 'B': opts->bridge = optarg; break;
            case 'O': opts->allowed_origins = optarg; break;
            case 'p': port = optarg; break;
            case 'b': opts->bind = optarg; bind_given = true; break;
            case 's': secret = optarg; break;
            case 'a': opts->jwt_alg = optarg; break;
            case 'k': public_key = optarg; break;
            case 'K': opts->api_key = optarg; break;
            case 'w': workers = optarg; break;
            case 'u': opts->upstream = optarg; break;
            case 'm': max_message = optarg; break;
            case 'q': max_queue = optarg; break;
            case 'c': max_connections = optarg; break;
            case 'd': drain = optarg; break;
            case 'n': opts->name = optarg; break;
            case 'r': opts->reuseport = true; break;
            case 'D': serve.dev = true; break;
            case 'v': verbose = true; break;
            case 'h': s_serve_usage (); return 0;
            default: s_serve_usage (); return 2;
        }
    }
    if (s_backplane_check ("wsrouter", &opts->backplane))
        return 2;
    if (optind < argc) {
        fprintf (stderr, "wsrouter: unexpected argument '%s'\n", argv [optind]);
        return 2;
    }
    long long value;
    opts->port = atoi (port);
    if (opts->port < 0 || opts->port > 65535) {
        fprintf (stderr, "wsrouter: bad port '%s'\n", port);
        return 2;
    }
    if (workers && (opts->workers = atoi (workers)) < 1) {
        fprintf (stderr, "wsrouter: bad worker count '%s'\n", workers);
        return 2;
    }
    if (max_message) {
        if ((value = s_parse_size (max_message)) < 1) {
            fprintf (stderr, "wsrouter: bad max message '%s'\n", max_message);
            return 2;
        }
        opts->max_message = (size_t) value;
    }
    if (max_queue) {
        if ((value = s_parse_size (max_queue)) < 1024) {
            fprintf (stderr, "wsrouter: bad max queue '%s' (at least 1K)\n", max_queue);
            return 2;
        }
        opts->max_queue = (size_t) value;
    }
    if (max_connections) {
        if ((value = s_parse_size (max_connections)) < 1) {
            fprintf (stderr, "wsrouter: bad max connections '%s'\n", max_connections);
            return 2;
        }
        opts->max_connections = (size_t) value;
    }
    if ((serve.drain_ms = (int) s_parse_duration (drain)) < 0) {
        fprintf (stderr, "wsrouter: bad drain timeout '%s'\n", drain);
        return 2;
    }
    int *duration_fields [5] = {
        &opts->ping_interval_ms, &opts->ping_timeout_ms, &opts->handshake_timeout_ms,
        &opts->write_delay_ms, &opts->hello_timeout_ms
    };
    for (int i = 0; i < 5; i++)
        if (durations [i][1]) {
            long long ms = s_parse_duration (durations [i][1]);
            //  0 turns pings and the write delay off; the timeouts need a value
            if (ms < 0 || ms > INT32_MAX || ((i == 1 || i == 2 || i == 4) && ms == 0)) {
                fprintf (stderr, "wsrouter: bad %s '%s'\n", durations [i][0], durations [i][1]);
                return 2;
            }
            *duration_fields [i] = (int) ms;
        }
    for (int i = 0; i < 4; i++)
        if (counts [i][1]) {
            long long n = s_parse_size (counts [i][1]);
            if (n < 0 || n > UINT32_MAX) {
                fprintf (stderr, "wsrouter: bad %s '%s'\n", counts [i][0], counts [i][1]);
                return 2;
            }
            if (i == 0)
                opts->max_per_ip = (uint32_t) n;
            else
            if (i == 1)
                opts->rate_messages = (size_t) n;
            else
            if (i == 2)
                opts->rate_bytes = (size_t) n;
            else
                opts->handshake_rate = (size_t) n;
        }
    for (int i = 0; i < 5; i++) {
        if (!edge [i][1])
            continue;
        long long n = i == 1 || i == 4? s_parse_duration (edge [i][1])
                                      : s_parse_size (edge [i][1]);
        if (n < 0 || n > INT32_MAX || (i == 3 && n > 1)) {
            fprintf (stderr, "wsrouter: bad %s '%s'\n", edge [i][0], edge [i][1]);
            return 2;
        }
        if (i == 0)
            opts->max_pending_per_ip = (size_t) n;
        else
        if (i == 1)
            opts->keepalive_lifetime_ms = (int) n;
        else
        if (i == 2)
            opts->keepalive_requests = (size_t) n;
        else
        if (i == 3)
            opts->require_exp = n == 1;
        else
            opts->jwt_leeway = (int) (n / 1000);
    }
    //  Development mode stays on this machine unless told otherwise
    if (serve.dev && !bind_given)
        opts->bind = "127.0.0.1";
    if (!opts->tls_cert != !opts->tls_key) {
        fprintf (stderr, "wsrouter: TLS needs both WEBSOCKET_TLS_CERT and WEBSOCKET_TLS_KEY\n");
        return 2;
    }
    if (tls_port) {
        opts->tls_port = atoi (tls_port);
        if (!opts->tls_cert || opts->tls_port < 1 || opts->tls_port > 65535
        ||  opts->tls_port == opts->port) {
            fprintf (stderr, "wsrouter: bad TLS port '%s' (needs a certificate, and a port "
                             "other than the plain one)\n", tls_port);
            return 2;
        }
    }
    if (!streq (deflate, "0") && !streq (deflate, "1")) {
        fprintf (stderr, "wsrouter: WEBSOCKET_DEFLATE is 0 or 1, not '%s'\n", deflate);
        return 2;
    }
    opts->deflate = streq (deflate, "1");
    if (deflate_level) {
        opts->deflate_level = atoi (deflate_level);
        if (opts->deflate_level < 1 || opts->deflate_level > 9) {
            fprintf (stderr, "wsrouter: bad deflate level '%s' (1-9)\n", deflate_level);
            return 2;
        }
    }
    if (deflate_threshold) {
        if ((value = s_parse_size (deflate_threshold)) < 0) {
            fprintf (stderr, "wsrouter: bad deflate threshold '%s'\n", deflate_threshold);
            return 2;
        }
        opts->deflate_threshold = (size_t) value;
    }
    if (!wsr_util_id_valid (opts->name, strlen (opts->name))) {
        fprintf (stderr, "wsrouter: bad node id '%s'\n", opts->name);
        return 2;
    }
    if (streq (opts->jwt_alg, "EdDSA")) {
        if (!public_key || s_base64_decode (public_key, serve.public_key, 32) != 32) {
            fprintf (stderr, "wsrouter: EdDSA needs --jwt-public-key (base64 of 32 bytes)\n");
            return 2;
        }
        opts->jwt_public_key = serve.public_key;
    }
    else
    if (!streq (opts->jwt_alg, "HS256")) {
        fprintf (stderr, "wsrouter: unsupported JWT algorithm '%s'\n", opts->jwt_alg);
        return 2;
    }
    opts->dev = serve.dev;
    if (opts->console_key && !*opts->console_key)
        opts->console_key = NULL;
    if (serve.dev && !secret)
        secret = serve.secret = s_random_hex (32);
    if (serve.dev && !opts->api_key)
        opts->api_key = serve.api_key = s_random_hex (16);
    if (streq (opts->jwt_alg, "HS256") && !secret) {
        fprintf (stderr, "wsrouter: JWT_SECRET_KEY is not set; refusing to start "
                         "(use --dev for a throwaway secret)\n");
        return 2;
    }
    if (streq (opts->jwt_alg, "HS256") && secret && !serve.dev
    &&  strlen (secret) < WSR_MIN_HS256_SECRET) {
        fprintf (stderr, "wsrouter: JWT_SECRET_KEY is %zu bytes; HS256 needs at least %d "
                         "(e.g. openssl rand -hex 32), or use --dev\n",
                 strlen (secret), WSR_MIN_HS256_SECRET);
        return 2;
    }
    if (secret) {
        opts->jwt_secret = (const uint8_t *) secret;
        opts->jwt_secret_len = strlen (secret);
    }
    wsr_verbose = verbose;

    long nofile = wsr_util_raise_nofile ();
    s_block_signals ();
    zsys_set_io_threads (1);

    //  Started by an upgrade: the old process' listening socket first
    int handover = wsr_upgrade_begin (&opts->inherit_fd);
    if (handover == -2) {
        free (serve.secret);
        free (serve.api_key);
        return 1;
    }
    wsr_node_t *node = wsr_node_new (opts);
    if (!node) {
        if (handover >= 0)
            close (handover);           //  the old process keeps serving
        fprintf (stderr, "wsrouter: could not start (see log above)\n");
        free (serve.secret);
        free (serve.api_key);
        return 1;
    }
    int bound = wsr_node_port (node);
    const char *shown = streq (opts->bind, "0.0.0.0") || streq (opts->bind, "::")
                      ? "127.0.0.1": opts->bind;
    int tls_bound = wsr_node_tls_port (node);
    if (tls_bound > 0 && tls_bound == bound)
        printf ("wsrouter: node %s listening on wss://%s:%d/ws (%d workers, open files %ld)\n",
                opts->name, shown, bound, opts->workers, nofile);
    else
        printf ("wsrouter: node %s listening on ws://%s:%d/ws (%d workers, open files %ld)\n",
                opts->name, shown, bound, opts->workers, nofile);
    if (tls_bound > 0 && tls_bound != bound)
        printf ("wsrouter: TLS on wss://%s:%d/ws\n", shown, tls_bound);
    if (opts->upstream)
        printf ("wsrouter: client messages published on %s\n", opts->upstream);
    if (opts->bridge)
        printf ("wsrouter: backplane through bridge %s\n", opts->bridge);
    else
    if (opts->backplane.redis_url || opts->backplane.nats_url || opts->backplane.upstream_url) {
        //  Passwords and tokens stay out of the output
        char redis [WSR_URL_MAX], nats [WSR_URL_MAX], http [WSR_URL_MAX];
        const wsr_bridge_opts_t *bp = &opts->backplane;
        printf ("wsrouter: in-process bridge: redis %s, nats %s, http %s\n",
                wsr_util_redact_url (bp->redis_url? bp->redis_url: "off", redis, sizeof redis),
                wsr_util_redact_url (bp->nats_url? bp->nats_url: "off", nats, sizeof nats),
                wsr_util_redact_url (bp->upstream_url? bp->upstream_url: "off", http,
                                     sizeof http));
    }
    if (serve.dev) {
        int64_t now = (int64_t) time (NULL);
        char *token = wsr_jwt_mint_hs256 ((const uint8_t *) secret, strlen (secret), "dev",
                                          now, now + 86400, "lobby");
        printf ("\nDevelopment mode: a random secret and API key for this run only.\n"
                "  JWT_SECRET_KEY=%s\n  WEBSOCKET_API_KEY=%s\n\n"
                "Connect (user \"dev\", channel \"lobby\", valid 24 h):\n"
                "  ws://%s:%d/ws?token=%s\n\n"
                "Publish to that user:\n"
                "  curl -s -X POST http://%s:%d/api/publish "
                "-H 'Authorization: apikey %s' -d '{\"user\":\"dev\",\"data\":\"hello\"}'\n"
                "  (or: WEBSOCKET_API_KEY=%s WEBSOCKET_SERVICE_PORT=%d "
                "wsrouter publish --user dev hello)\n\n",
                secret, opts->api_key, shown, bound, token, shown, bound, opts->api_key,
                opts->api_key, bound);
        free (token);
    }
    if (opts->api_key || opts->console_key)
        printf ("wsrouter: web console on http%s://%s:%d/console (%s)\n",
                tls_bound == bound? "s": "", shown, bound,
                opts->console_key? "API key or console key": "API key");
    fflush (stdout);
    if (handover >= 0)
        wsr_upgrade_take (handover, node);
    wsr_upgrade_notify_ready ();

    int sig;
    while ((sig = s_wait_signal_for (true)) == SIGHUP || sig == SIGUSR2) {
        if (sig == SIGHUP) {
            if (opts->tls_cert)         //  new connections get the new certificate
                wsr_node_reload (node);
            continue;
        }
        zsys_info ("wsrouter: SIGUSR2 received, upgrading");
        if (wsr_upgrade_give (node, s_argv) == 0) {
            //  Every session lives on in the new process: no drain
            wsr_node_destroy (&node);
            free (serve.secret);
            free (serve.api_key);
            wsr_nats_shutdown ();
            printf ("wsrouter: handed over, stopped\n");
            return 0;
        }
    }
    zsys_info ("wsrouter: %s received, draining", sig == SIGTERM? "SIGTERM": "SIGINT");
    int64_t left = wsr_node_drain (node, serve.drain_ms);
    if (left)
        zsys_warning ("wsrouter: %" PRId64 " sessions still open at drain timeout", left);
    wsr_node_destroy (&node);
    free (serve.secret);
    free (serve.api_key);
    wsr_nats_shutdown ();
    printf ("wsrouter: stopped\n");
    return 0;
}

//  --------------------------------------------------------------------------
//  bridge: the backplane bridge as its own process

static int
s_bridge (int argc, char *argv [])
{
    wsr_bridge_opts_t opts;
    wsr_bridge_opts_defaults (&opts);
    opts.endpoint = s_env ("WEBSOCKET_BRIDGE_ENDPOINT", "tcp://0.0.0.0:7000");
    opts.readiness = true;
    opts.upstream_endpoint = s_env ("WEBSOCKET_UPSTREAM_ENDPOINT", NULL);
    opts.cert = s_env ("WEBSOCKET_BRIDGE_CERT", NULL);
    opts.clients = s_env ("WEBSOCKET_BRIDGE_CLIENTS", NULL);
    opts.insecure_plaintext = streq (s_env ("WEBSOCKET_INSECURE_PLAINTEXT", "0"), "1");
    const char *max_topics = s_env ("WEBSOCKET_BRIDGE_MAX_TOPICS", NULL);
    const char *peer_queue = s_env ("WEBSOCKET_BRIDGE_PEER_QUEUE", NULL);
    s_backplane_env (&opts);
    const char *http_port = s_env ("WEBSOCKET_BRIDGE_HTTP_PORT", NULL);
    const char *http_bind = s_env ("WEBSOCKET_BRIDGE_HTTP_BIND", "0.0.0.0");
    static struct option options [] = {
        { "endpoint", required_argument, 0, 'e' }, { "http-port", required_argument, 0, 'p' },
        { "http-bind", required_argument, 0, 'b' }, { "verbose", no_argument, 0, 'v' },
        { "cert", required_argument, 0, 'c' }, { "clients", required_argument, 0, 'C' },
        { "insecure-plaintext", no_argument, 0, 'I' },
        { "upstream-endpoint", required_argument, 0, 'u' },
        { "max-topics", required_argument, 0, 'T' },
        { "peer-queue", required_argument, 0, 'Q' },
        S_BACKPLANE_OPTIONS, { "help", no_argument, 0, 'h' }, { 0, 0, 0, 0 }
    };
    int c;
    while ((c = getopt_long (argc, argv, "", options, NULL)) != -1) {
        if (s_backplane_flag (&opts, c))
            continue;
        switch (c) {
            case 'e': opts.endpoint = optarg; break;
            case 'c': opts.cert = optarg; break;
            case 'C': opts.clients = optarg; break;
            case 'I': opts.insecure_plaintext = true; break;
            case 'u': opts.upstream_endpoint = optarg; break;
            case 'T': max_topics = optarg; break;
            case 'Q': peer_queue = optarg; break;
            case 'p': http_port = optarg; break;
            case 'b': http_bind = optarg; break;
            case 'v': wsr_verbose = true; break;
            case 'h':
                printf ("usage: wsrouter bridge [--endpoint tcp://HOST:PORT] [options]\n\n"
                        "Runs the backplane bridge as its own process. Nodes connect with\n"
                        "`wsrouter serve --bridge tcp://HOST:PORT` (ZeroMQ ROUTER on PORT).\n"
                        "A non-loopback endpoint needs CURVE certificates (or\n"
                        "--insecure-plaintext); SIGHUP re-reads the clients directory.\n\n"
                        "  --endpoint E          [WEBSOCKET_BRIDGE_ENDPOINT, tcp://0.0.0.0:7000]\n"
                        "  --cert FILE           the bridge's secret certificate\n"
                        "                        [WEBSOCKET_BRIDGE_CERT]\n"
                        "  --clients DIR         public certificates of the nodes allowed in\n"
                        "                        [WEBSOCKET_BRIDGE_CLIENTS]\n"
                        "  --insecure-plaintext  allow plaintext on a non-loopback address\n"
                        "                        [WEBSOCKET_INSECURE_PLAINTEXT=1]\n"
                        "  --upstream-endpoint E ZeroMQ PUB for client messages (observers)\n"
                        "                        [WEBSOCKET_UPSTREAM_ENDPOINT]\n"
                        "  --max-topics N        subscriptions one node may hold\n"
                        "                        [WEBSOCKET_BRIDGE_MAX_TOPICS, 4M]\n"
                        "  --peer-queue N        messages queued for one node actor before\n"
                        "                        they are dropped for it (a stalled node; a\n"
                        "                        message carries up to 16 small deliveries)\n"
                        "                        [WEBSOCKET_BRIDGE_PEER_QUEUE, 10K]\n"
                        "  --http-port P         /healthz, /readyz, /metrics on this port\n"
                        "                        [WEBSOCKET_BRIDGE_HTTP_PORT, off]\n"
                        "  --http-bind ADDR      [WEBSOCKET_BRIDGE_HTTP_BIND, 0.0.0.0]\n"
                        "  --verbose             debug logging\n"
                        S_BACKPLANE_HELP);
                return 0;
            default: return 2;
        }
    }
    if (s_backplane_check ("wsrouter bridge", &opts))
        return 2;
    if (strncmp (opts.endpoint, "tcp://", 6)) {
        fprintf (stderr, "wsrouter bridge: bad endpoint '%s' (want tcp://HOST:PORT)\n",
                 opts.endpoint);
        return 2;
    }
    if (max_topics) {
        long long n = s_parse_size (max_topics);
        if (n < 1) {
            fprintf (stderr, "wsrouter bridge: bad max topics '%s'\n", max_topics);
            return 2;
        }
        opts.max_topics = (size_t) n;
    }
    if (peer_queue) {
        long long n = s_parse_size (peer_queue);
        if (n < 1 || n > INT32_MAX) {
            fprintf (stderr, "wsrouter bridge: bad peer queue '%s'\n", peer_queue);
            return 2;
        }
        opts.peer_hwm = (int) n;
    }
    wsr_util_raise_nofile ();
    s_block_signals ();
    zsys_set_io_threads (1);
    wsr_metrics_t *metrics = wsr_metrics_new ();
    wsr_bridge_t *bridge = wsr_bridge_new (&opts, metrics);
    wsr_listener_t *listener = NULL;
    if (bridge && http_port) {
        wsr_listener_opts_t listener_opts = {
            .bind = http_bind, .port = atoi (http_port), .max_pending = 1000,
            .handshake_timeout_ms = WSR_HANDSHAKE_TIMEOUT_MS, .max_message = opts.max_message,
            .status_only = true
        };
        char name [64];
        snprintf (name, sizeof name, "bridge-%d", (int) getpid ());
        listener = wsr_listener_new (name, &listener_opts, metrics);
    }
    if (!bridge || (http_port && !listener)) {
        fprintf (stderr, "wsrouter bridge: could not start (see log above)\n");
        wsr_listener_destroy (&listener);
        wsr_bridge_destroy (&bridge);
        wsr_metrics_destroy (&metrics);
        return 1;
    }
    //  One printf: other threads log to stdout too, and a reader wants the line whole
    char status [128] = "";
    if (listener)
        snprintf (status, sizeof status, "; status on http://%s:%d/", http_bind,
                  wsr_listener_port (listener));
    printf ("wsrouter: bridge listening on %s (%s)%s\n", opts.endpoint,
            opts.cert? "CURVE": "plaintext", status);
    fflush (stdout);
    int sig;
    while ((sig = s_wait_signal ()) == SIGHUP) {
        int keys = wsr_bridge_reload (bridge);
        zsys_info ("wsrouter bridge: SIGHUP: %d node certificates allowed", keys);
    }
    zsys_info ("wsrouter bridge: %s received, stopping", sig == SIGTERM? "SIGTERM": "SIGINT");
    wsr_listener_destroy (&listener);
    wsr_bridge_destroy (&bridge);
    wsr_metrics_destroy (&metrics);
    wsr_nats_shutdown ();
    printf ("wsrouter: bridge stopped\n");
    return 0;
}

//  --------------------------------------------------------------------------
//  token

static int
s_token (int argc, char *argv [])
{
    const char *sub = NULL, *channels = NULL;
    const char *secret = s_env ("JWT_SECRET_KEY", NULL);
    const char *private_key = s_env ("JWT_PRIVATE_KEY", NULL);
    const char *alg = "HS256";
    long ttl = 3600;
    static struct option options [] = {
        { "sub", required_argument, 0, 's' }, { "ttl", required_argument, 0, 't' },
        { "channels", required_argument, 0, 'c' },
        { "jwt-secret", required_argument, 0, 'k' }, { "alg", required_argument, 0, 'a' },
        { "jwt-private-key", required_argument, 0, 'p' },
        { "help", no_argument, 0, 'h' }, { 0, 0, 0, 0 }
    };
    int c;
    while ((c = getopt_long (argc, argv, "", options, NULL)) != -1) {
        switch (c) {
            case 's': sub = optarg; break;
            case 't': ttl = atol (optarg); break;
            case 'c': channels = optarg; break;
            case 'k': secret = optarg; break;
            case 'a': alg = optarg; break;
            case 'p': private_key = optarg; break;
            case 'h':
                printf ("usage: wsrouter token --sub USER [--ttl SECONDS] [--channels a,b]\n"
                        "         [--jwt-secret S | --alg EdDSA --jwt-private-key B64]\n"
                        "Mints a token (HS256 with JWT_SECRET_KEY by default; ttl 3600,\n"
                        "0 = no exp, which serve refuses unless --require-exp 0) and\n"
                        "prints it.\n");
                return 0;
            default: return 2;
        }
    }
    if (!sub) {
        fprintf (stderr, "wsrouter token: --sub is required\n");
        return 2;
    }
    int64_t now = (int64_t) time (NULL);
    int64_t exp = ttl > 0? now + ttl: 0;
    char *token = NULL;
    if (streq (alg, "EdDSA")) {
        uint8_t sk [64];
        if (!private_key || s_base64_decode (private_key, sk, sizeof sk) != 64) {
            fprintf (stderr, "wsrouter token: EdDSA needs --jwt-private-key (base64, 64 bytes)\n");
            return 2;
        }
        token = wsr_jwt_mint_eddsa (sk, sub, now, exp, channels);
        sodium_memzero (sk, sizeof sk);
    }
    else {
        if (!secret) {
            fprintf (stderr, "wsrouter token: set JWT_SECRET_KEY or --jwt-secret\n");
            return 2;
        }
        token = wsr_jwt_mint_hs256 ((const uint8_t *) secret, strlen (secret), sub, now, exp,
                                    channels);
    }
    if (!token) {
        fprintf (stderr, "wsrouter token: invalid user id or channel name\n");
        return 2;
    }
    printf ("%s\n", token);
    free (token);
    return 0;
}

//  --------------------------------------------------------------------------
//  keygen: an Ed25519 key pair for JWT_ALGORITHM=EdDSA

static int
s_keygen (int argc, char *argv [])
{
    const char *out = NULL;
    bool curve = false;
    static struct option options [] = {
        { "curve", no_argument, 0, 'c' }, { "out", required_argument, 0, 'o' },
        { "help", no_argument, 0, 'h' }, { 0, 0, 0, 0 }
    };
    int c;
    while ((c = getopt_long (argc, argv, "", options, NULL)) != -1) {
        switch (c) {
            case 'c': curve = true; break;
            case 'o': out = optarg; break;
            case 'h':
                printf ("usage: wsrouter keygen                  Ed25519 pair for EdDSA tokens\n"
                        "       wsrouter keygen --curve --out PATH\n"
                        "            CURVE certificate pair for node <-> bridge links: PATH\n"
                        "            (public: give it to the other side) and PATH_secret\n");
                return 0;
            default: return 2;
        }
    }
    if (curve) {
        if (!out) {
            fprintf (stderr, "wsrouter keygen: --curve needs --out PATH\n");
            return 2;
        }
        if (wsr_curve_keygen (out))
            return 1;
        printf ("wrote %s (public) and %s_secret (secret, mode 0600)\n", out, out);
        return 0;
    }
    uint8_t pk [crypto_sign_PUBLICKEYBYTES], sk [crypto_sign_SECRETKEYBYTES];
    crypto_sign_keypair (pk, sk);
    char pk64 [sodium_base64_ENCODED_LEN (sizeof pk, sodium_base64_VARIANT_ORIGINAL)];
    char sk64 [sodium_base64_ENCODED_LEN (sizeof sk, sodium_base64_VARIANT_ORIGINAL)];
    sodium_bin2base64 (pk64, sizeof pk64, pk, sizeof pk, sodium_base64_VARIANT_ORIGINAL);
    sodium_bin2base64 (sk64, sizeof sk64, sk, sizeof sk, sodium_base64_VARIANT_ORIGINAL);
    printf ("JWT_PUBLIC_KEY=%s\nJWT_PRIVATE_KEY=%s\n", pk64, sk64);
    sodium_memzero (sk, sizeof sk);
    sodium_memzero (sk64, sizeof sk64);
    return 0;
}

//  --------------------------------------------------------------------------
//  publish

static size_t
s_curl_write (char *data, size_t size, size_t nmemb, void *user)
{
    (void) user;
    fwrite (data, size, nmemb, stdout);
    return size * nmemb;
}

static int
s_publish (int argc, char *argv [])
{
    const char *user = NULL, *channel = NULL, *url = NULL;
    const char *api_key = s_env ("WEBSOCKET_API_KEY", NULL);
    bool json_data = false;
    static struct option options [] = {
        { "user", required_argument, 0, 'u' }, { "channel", required_argument, 0, 'c' },
        { "url", required_argument, 0, 'U' }, { "api-key", required_argument, 0, 'k' },
        { "json", no_argument, 0, 'j' }, { "help", no_argument, 0, 'h' }, { 0, 0, 0, 0 }
    };
    int c;
    while ((c = getopt_long (argc, argv, "", options, NULL)) != -1) {
        switch (c) {
            case 'u': user = optarg; break;
            case 'c': channel = optarg; break;
            case 'U': url = optarg; break;
            case 'k': api_key = optarg; break;
            case 'j': json_data = true; break;
            case 'h':
                printf ("usage: wsrouter publish (--user USER | --channel CH) DATA\n"
                        "         [--json] [--url http://HOST:PORT] [--api-key KEY]\n"
                        "Publishes DATA (a string; with --json, a JSON value) through a node's\n"
                        "HTTP API, by default http://127.0.0.1:$WEBSOCKET_SERVICE_PORT with\n"
                        "$WEBSOCKET_API_KEY. DATA '-' reads standard input.\n");
                return 0;
            default: return 2;
        }
    }
    if (!user == !channel || optind != argc - 1) {
        fprintf (stderr, "wsrouter publish: give --user or --channel, and DATA\n");
        return 2;
    }
    if (!api_key) {
        fprintf (stderr, "wsrouter publish: set WEBSOCKET_API_KEY or --api-key\n");
        return 2;
    }
    const char *data = argv [optind];
    char *input = NULL;
    if (streq (data, "-")) {
        size_t cap = 65536, len = 0;
        input = (char *) malloc (cap);
        size_t n;
        while ((n = fread (input + len, 1, cap - len - 1, stdin)) > 0) {
            len += n;
            if (len + 1 == cap)
                input = (char *) realloc (input, cap *= 2);
        }
        input [len] = 0;
        data = input;
    }
    json_t *value = json_data? json_loads (data, JSON_DECODE_ANY, NULL): json_string (data);
    if (!value) {
        fprintf (stderr, "wsrouter publish: DATA is not %s\n",
                 json_data? "valid JSON": "valid UTF-8");
        free (input);
        return 2;
    }
    json_t *body = json_object ();
    json_object_set_new (body, user? "user": "channel", json_string (user? user: channel));
    json_object_set_new (body, "data", value);
    char *text = json_dumps (body, JSON_COMPACT);
    json_decref (body);
    free (input);

    char default_url [128];
    snprintf (default_url, sizeof default_url, "http://127.0.0.1:%s",
              s_env ("WEBSOCKET_SERVICE_PORT", "8080"));
    char *endpoint = zsys_sprintf ("%s/api/publish", url? url: default_url);
    char *authz = zsys_sprintf ("Authorization: apikey %s", api_key);
    CURL *curl = curl_easy_init ();
    struct curl_slist *headers = curl_slist_append (NULL, authz);
    headers = curl_slist_append (headers, "Content-Type: application/json");
    curl_easy_setopt (curl, CURLOPT_URL, endpoint);
    curl_easy_setopt (curl, CURLOPT_HTTPHEADER, headers);
    curl_easy_setopt (curl, CURLOPT_POSTFIELDS, text);
    curl_easy_setopt (curl, CURLOPT_TIMEOUT, 10L);
    curl_easy_setopt (curl, CURLOPT_WRITEFUNCTION, s_curl_write);
    CURLcode rc = curl_easy_perform (curl);
    long status = 0;
    curl_easy_getinfo (curl, CURLINFO_RESPONSE_CODE, &status);
    if (rc != CURLE_OK)
        fprintf (stderr, "wsrouter publish: %s: %s\n", endpoint, curl_easy_strerror (rc));
    else
        printf ("\n");
    curl_slist_free_all (headers);
    curl_easy_cleanup (curl);
    zstr_free (&endpoint);
    zstr_free (&authz);
    free (text);
    return rc == CURLE_OK && status >= 200 && status < 300? 0: 1;
}

//  --------------------------------------------------------------------------
//  upgrade: SIGUSR2 to a node, then wait until that process has gone (every
//  session handed over) or give up (it failed and kept serving: see its log)

static int
s_upgrade (int argc, char *argv [])
{
    static struct option options [] = {
        { "pid", required_argument, 0, 1600 },
        { "timeout", required_argument, 0, 1601 },
        { "help", no_argument, 0, 'h' }, { 0, 0, 0, 0 }
    };
    long pid = 0, timeout_s = 120;
    int c;
    while ((c = getopt_long (argc, argv, "", options, NULL)) != -1) {
        if (c == 1600)
            pid = strtol (optarg, NULL, 10);
        else
        if (c == 1601)
            timeout_s = strtol (optarg, NULL, 10);
        else {
            printf ("usage: wsrouter upgrade --pid PID [--timeout S]\n\n"
                    "Send SIGUSR2 to the node PID: it starts its binary again (the path\n"
                    "it was started from) and hands it the listening socket and every\n"
                    "session. Exits 0 once PID has gone, 1 if it is still there after\n"
                    "the timeout (120 s: the upgrade failed; the node logged why).\n");
            return c == 'h'? 0: 2;
        }
    }
    if (pid <= 1 || timeout_s <= 0) {
        fprintf (stderr, "wsrouter upgrade: --pid PID is required\n");
        return 2;
    }
    if (kill ((pid_t) pid, SIGUSR2)) {
        fprintf (stderr, "wsrouter upgrade: %ld: %s\n", pid, strerror (errno));
        return 1;
    }
    char proc [64];
    snprintf (proc, sizeof proc, "/proc/%ld", pid);
    int64_t end = wsr_util_mono_ms () + timeout_s * 1000;
    while (wsr_util_mono_ms () < end) {
        if (access (proc, F_OK) != 0) {
            printf ("wsrouter upgrade: %ld handed over and exited\n", pid);
            return 0;
        }
        usleep (50000);
    }
    fprintf (stderr, "wsrouter upgrade: %ld still running: the upgrade failed (see its log)\n",
             pid);
    return 1;
}

//  --------------------------------------------------------------------------

static void
s_usage (void)
{
    printf ("usage: wsrouter [COMMAND] [options]\n\n"
            "commands:\n"
            "  serve     run a node (default)\n"
            "  bridge    run the Redis / NATS / HTTP backplane bridge as its own process\n"
            "  token     mint a development or test token\n"
            "  keygen    make an Ed25519 key pair for EdDSA tokens\n"
            "  publish   publish a message through a node's HTTP API\n"
            "  upgrade   hand a running node's sessions to its binary, started anew\n"
            "  bench     load generator: sessions, publishing, latency, memory\n\n"
            "'wsrouter COMMAND --help' describes each.\n");
}

int
main (int argc, char *argv [])
{
    if (sodium_init () < 0) {
        fprintf (stderr, "wsrouter: libsodium failed to initialise\n");
        return 1;
    }
    zsys_handler_set (NULL);            //  main takes signals itself
    //  glibc gives each thread's arena back to the kernel (madvise) as soon
    //  as 128 KiB are free at its top, and takes it again on the next burst:
    //  under load that is a page fault storm and TLB shootdowns across cores.
    //  Keep freed memory; a slow consumer's megabytes are still returned
    //  explicitly (malloc_trim in the session worker).
    mallopt (M_TRIM_THRESHOLD, WSR_MALLOC_TRIM_THRESHOLD);
    mallopt (M_MMAP_THRESHOLD, WSR_MALLOC_MMAP_THRESHOLD);
    //  Before any thread: libcurl's global state (and OpenSSL's) belongs to main
    curl_global_init (CURL_GLOBAL_DEFAULT);
    zsys_set_logident ("wsrouter");
    const char *command = argc > 1 && argv [1][0] != '-'? argv [1]: "serve";
    int shift = argc > 1 && argv [1][0] != '-'? 1: 0;
    if (argc > 1 && (streq (argv [1], "--help") || streq (argv [1], "-h")
                 ||  streq (argv [1], "help"))) {
        s_usage ();
        return 0;
    }
    int sub_argc = argc - shift;
    char **sub_argv = argv + shift;
    //  As started (getopt reorders argv): an upgrade execs the same
    s_argv = (char **) calloc ((size_t) argc + 1, sizeof (char *));
    assert (s_argv);
    memcpy (s_argv, argv, (size_t) argc * sizeof (char *));
    wsr_util_identify ();
    if (streq (command, "upgrade"))
        return s_upgrade (sub_argc, sub_argv);
    if (streq (command, "serve"))
        return s_serve (sub_argc, sub_argv);
    if (streq (command, "bridge"))
        return s_bridge (sub_argc, sub_argv);
    if (streq (command, "bench"))
        return wsr_bench_main (sub_argc, sub_argv);
    if (streq (command, "token"))
        return s_token (sub_argc, sub_argv);
    if (streq (command, "keygen"))
        return s_keygen (sub_argc, sub_argv);
    if (streq (command, "publish"))
        return s_publish (sub_argc, sub_argv);
    fprintf (stderr, "wsrouter: unknown command '%s'\n", command);
    s_usage ();
    return 2;
}
