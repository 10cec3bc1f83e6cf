//  wsr_bench_opts — `wsrouter bench` options: parsing, checks, usage, the report's params

#ifndef WSR_BENCH_OPTS_H_INCLUDED
#define WSR_BENCH_OPTS_H_INCLUDED

#ifdef __cplusplus
extern "C" {
#endif

//  Publisher transport
typedef enum {
    WSR_BENCH_PUB_NONE,
    WSR_BENCH_PUB_HTTP,
    WSR_BENCH_PUB_REDIS,
    WSR_BENCH_PUB_NATS
} wsr_bench_pub_kind_t;

//  One --url
typedef struct {
    char host [256];                //  Host header value (as given)
    char path [256];                //  request path, e.g. /ws
    struct sockaddr_in addr;        //  resolved IPv4 address
} wsr_bench_url_t;

//  Settings: plain values, parsed once, read-only during the run. Strings
//  point into argv (or the environment) and live as long as they do.
typedef struct {
    wsr_bench_url_t urls [WSR_BENCH_MAX_URLS];  //  targets; sessions go round robin
    int url_count;
    uint32_t sessions;              //  normal sessions, all processes
    int procs;                      //  receiver processes (1 = no fork)
    uint32_t src_first;             //  first source address, host order
    uint32_t src_count;             //  source addresses, 0 = no bind
    double ramp;                    //  handshakes started per second (all processes)
    uint32_t inflight;              //  handshakes in progress (all processes)
    int64_t handshake_timeout_ns;
    const char *jwt_secret;         //  mint tokens with it, or
    const char *tokens_file;        //  read them from here
    const char *user_prefix;        //  minted sub = prefix + index
    const char *channel;            //  channel claim / channel mode target
    int64_t token_ttl_s;            //  minted exp = now + ttl
    wsr_bench_pub_kind_t pub_kind;  //  publisher transport
    const char *pub_url;            //  as given
    char pub_host [256];            //  publisher host (Host header, Redis host)
    int pub_port;
    struct sockaddr_in pub_addr;    //  resolved publisher address
    char redis_user [128];          //  Redis AUTH user, empty if none
    char redis_password [256];      //  Redis AUTH password, empty if none
    const char *api_key;            //  HTTP publish API key
    const char *redis_user_tpl;     //  Redis channel template for users
    const char *redis_channel_tpl;  //  Redis channel template for channels
    const char *nats_user_tpl;      //  NATS subject template for users
    const char *nats_channel_tpl;   //  NATS subject template for channels
    bool channel_mode;              //  --mode channel
    double rate;                    //  messages per second, 0 = max
    int64_t duration_ns;            //  publish for this long, or
    uint64_t messages;              //  this many messages
    size_t size;                    //  payload bytes
    uint32_t pipeline;              //  unanswered requests / commands
    int64_t warmup_ns;              //  warm-up limit
    int64_t drain_ns;               //  receivers' wait after the last publish
    int64_t hold_ns;                //  idle time after all sessions are up
    bool final_publish;             //  one final message per user, verified
    pid_t server_pids [WSR_BENCH_MAX_PIDS];     //  server processes to measure
    int server_pid_count;
    uint32_t slow;                  //  extra sessions that never read
    bool quiet;                     //  no progress lines
    char source_ips [64];           //  as resolved, for params
} wsr_bench_opts_t;

//  Fill opts with the defaults (the API key from WEBSOCKET_API_KEY).
void
    wsr_bench_opts_defaults (wsr_bench_opts_t *opts);

//  Parse argv (argv [0] is the command name) into opts, defaults first, and
//  check the options against each other. Returns 0, 1 if --help was shown
//  (on stdout), 2 on bad arguments (said on stderr).
int
    wsr_bench_opts_parse (wsr_bench_opts_t *opts, int argc, char *argv []);

//  Print the usage text on stdout.
void
    wsr_bench_opts_usage (void);

//  The report's "params" object: what was asked, never a secret (no token,
//  JWT secret, API key or Redis password). Caller owns the result.
json_t *
    wsr_bench_opts_params (const wsr_bench_opts_t *opts);

//  Self test
void
    wsr_bench_opts_test (bool verbose);

#ifdef __cplusplus
}
#endif
#endif
