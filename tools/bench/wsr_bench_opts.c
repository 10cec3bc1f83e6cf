//  wsr_bench_opts — `wsrouter bench` options: parsing, checks, usage, the report's params
//
//  getopt_long over argv, each value checked on its own (ranges, URLs
//  resolved once here), then the options against each other. Defaults are
//  named in wsr_bench_classes.h. Source addresses default to 127.0.0.2-254
//  when every URL is a loopback address, so that a loopback run does not run
//  out of ephemeral ports (about 28k per source address).

#include "wsr_bench_classes.h"
#include <getopt.h>

//  --------------------------------------------------------------------------
//  Fill opts with the defaults.
void
wsr_bench_opts_defaults (wsr_bench_opts_t *opts)
{
    memset (opts, 0, sizeof *opts);
    opts->sessions = 1;
    opts->procs = 1;
    opts->ramp = WSR_BENCH_DEFAULT_RAMP;
    opts->inflight = WSR_BENCH_DEFAULT_INFLIGHT;
    opts->handshake_timeout_ns = WSR_BENCH_DEFAULT_HS_TIMEOUT_NS;
    opts->user_prefix = "bench";
    opts->token_ttl_s = WSR_BENCH_DEFAULT_TOKEN_TTL_S;
    opts->redis_user_tpl = "ws:{user_id}";
    opts->redis_channel_tpl = "ws:channel:{channel}";
    opts->nats_user_tpl = "world.updates.user.{user_id}";
    opts->nats_channel_tpl = "world.updates.channel.{channel}";
    opts->size = WSR_BENCH_DEFAULT_SIZE;
    opts->pipeline = WSR_BENCH_DEFAULT_PIPELINE;
    opts->warmup_ns = WSR_BENCH_DEFAULT_WARMUP_NS;
    opts->drain_ns = WSR_BENCH_DEFAULT_DRAIN_NS;
    opts->api_key = getenv ("WEBSOCKET_API_KEY");
}

//  Seconds (decimals allowed) to ns; -1 if invalid.
static int64_t
s_seconds (const char *text)
{
    char *end = NULL;
    errno = 0;
    double value = strtod (text, &end);
    if (errno || end == text || *end || value < 0 || value > WSR_BENCH_MAX_SECONDS)
        return -1;
    return (int64_t) (value * 1e9);
}

//  A decimal count up to max; false if invalid.
static bool
s_count (const char *text, uint64_t *value, uint64_t max)
{
    char *end = NULL;
    errno = 0;
    unsigned long long parsed = strtoull (text, &end, 10);
    if (errno || end == text || *end || parsed > max || text [0] == '-')
        return false;
    *value = parsed;
    return true;
}

//  Parse "A.B.C.D-A.B.C.E" (or one address); -1 if invalid.
static int
s_source_range (const char *text, uint32_t *first, uint32_t *count)
{
    char low [32], high [32];
    const char *dash = strchr (text, '-');
    snprintf (low, sizeof low, "%.*s", dash? (int) (dash - text): (int) strlen (text), text);
    snprintf (high, sizeof high, "%s", dash? dash + 1: low);
    struct in_addr a, b;
    if (inet_pton (AF_INET, low, &a) != 1 || inet_pton (AF_INET, high, &b) != 1
    ||  ntohl (b.s_addr) < ntohl (a.s_addr))
        return -1;
    *first = ntohl (a.s_addr);
    *count = ntohl (b.s_addr) - ntohl (a.s_addr) + 1;
    return 0;
}

//  Parse "ws://HOST[:PORT][/PATH]" (path /ws by default); -1 if invalid or
//  if HOST does not resolve.
static int
s_url_parse (const char *text, wsr_bench_url_t *url)
{
    if (strncmp (text, "ws://", 5))
        return -1;
    const char *authority = text + 5;
    size_t len = strcspn (authority, "/?");
    snprintf (url->host, sizeof url->host, "%.*s", (int) len, authority);
    snprintf (url->path, sizeof url->path, "%s", authority [len] == '/'? authority + len: "/ws");
    char host [256];
    int port = 80;
    wsr_bench_hostport (url->host, host, sizeof host, &port);
    if (port < 1 || port > 65535 || wsr_bench_resolve (host, port, &url->addr))
        return -1;
    return 0;
}

//  Parse --publish: http://HOST:PORT, redis://[[user]:password@]HOST:PORT or
//  nats://HOST:PORT; -1 if invalid or if HOST does not resolve.
static int
s_publish_parse (wsr_bench_opts_t *opts, const char *text)
{
    opts->pub_url = text;
    const char *rest = NULL;
    if (strncmp (text, "http://", 7) == 0) {
        opts->pub_kind = WSR_BENCH_PUB_HTTP;
        opts->pub_port = 80;
        rest = text + 7;
    }
    else
    if (strncmp (text, "redis://", 8) == 0) {
        opts->pub_kind = WSR_BENCH_PUB_REDIS;
        opts->pub_port = 6379;
        rest = text + 8;
        const char *at = strchr (rest, '@');
        if (at) {
            //  [user]:password@
            const char *colon = memchr (rest, ':', (size_t) (at - rest));
            if (colon) {
                snprintf (opts->redis_user, sizeof opts->redis_user, "%.*s",
                          (int) (colon - rest), rest);
                snprintf (opts->redis_password, sizeof opts->redis_password, "%.*s",
                          (int) (at - colon - 1), colon + 1);
            }
            else
                snprintf (opts->redis_password, sizeof opts->redis_password, "%.*s",
                          (int) (at - rest), rest);
            rest = at + 1;
        }
    }
    else
    if (strncmp (text, "nats://", 7) == 0) {
        opts->pub_kind = WSR_BENCH_PUB_NATS;
        opts->pub_port = 4222;
        rest = text + 7;
    }
    else
        return -1;
    //  pub_host keeps the port, as a Host header wants it
    snprintf (opts->pub_host, sizeof opts->pub_host, "%.*s", (int) strcspn (rest, "/?"), rest);
    char host [256];
    wsr_bench_hostport (opts->pub_host, host, sizeof host, &opts->pub_port);
    if (opts->pub_port < 1 || opts->pub_port > 65535
    ||  wsr_bench_resolve (host, opts->pub_port, &opts->pub_addr))
        return -1;
    return 0;
}

//  Cross-option checks and derived values; -1 with a message if inconsistent.
static int
s_opts_check (wsr_bench_opts_t *opts, const char *source_ips)
{
    const char *problem = NULL;
    if (opts->url_count == 0)
        problem = "give at least one --url ws://HOST:PORT/ws";
    else
    if (!opts->jwt_secret == !opts->tokens_file)
        problem = "give exactly one of --jwt-secret and --tokens";
    else
    if (opts->sessions < 1)
        problem = "--sessions must be at least 1";
    else
    if (opts->procs < 1 || opts->procs > WSR_BENCH_MAX_PROCS
    ||  (uint32_t) opts->procs > opts->sessions)
        problem = "--procs must be 1..64 and at most --sessions";
    else
    if (opts->channel_mode && !opts->channel)
        problem = "--mode channel needs --channel";
    else
    if (opts->channel && !wsr_util_id_valid (opts->channel, strlen (opts->channel)))
        problem = "--channel is not a valid channel name";
    else
    if (opts->size < WSR_BENCH_HDR_LEN || opts->size > WSR_BENCH_MAX_SIZE)
        problem = "--size must be 46..1048512";
    else
    if (opts->pub_kind == WSR_BENCH_PUB_HTTP && !opts->api_key)
        problem = "--publish http:// needs --api-key (or WEBSOCKET_API_KEY)";
    else
    if (opts->pub_kind != WSR_BENCH_PUB_NONE && opts->messages && opts->duration_ns)
        problem = "give --duration or --messages, not both";
    else
    if (opts->pub_kind == WSR_BENCH_PUB_NONE
    &&  (opts->messages || opts->duration_ns || opts->final_publish))
        problem = "--messages, --duration and --final-publish need --publish";
    else
    if (opts->ramp <= 0 || opts->inflight < 1 || opts->pipeline < 1)
        problem = "--ramp, --inflight and --pipeline must be positive";
    if (problem) {
        fprintf (stderr, "wsrouter bench: %s\n", problem);
        return -1;
    }
    bool loopback = true;
    for (int i = 0; i < opts->url_count; i++)
        loopback = loopback && (ntohl (opts->urls [i].addr.sin_addr.s_addr) >> 24) == 127;
    if (!source_ips)
        source_ips = loopback? "127.0.0.2-127.0.0.254": "none";
    if (streq (source_ips, "none"))
        opts->src_count = 0;
    else
    if (s_source_range (source_ips, &opts->src_first, &opts->src_count)) {
        fprintf (stderr, "wsrouter bench: bad --source-ips '%s'\n", source_ips);
        return -1;
    }
    snprintf (opts->source_ips, sizeof opts->source_ips, "%s", source_ips);
    return 0;
}

//  --------------------------------------------------------------------------
//  Parse argv into opts; returns 0, 1 (help shown) or 2 (bad arguments).
int
wsr_bench_opts_parse (wsr_bench_opts_t *opts, int argc, char *argv [])
{
    wsr_bench_opts_defaults (opts);
    const char *source_ips = NULL;
    static struct option options [] = {
        { "url", required_argument, 0, 'u' }, { "sessions", required_argument, 0, 'n' },
        { "procs", required_argument, 0, 'P' }, { "source-ips", required_argument, 0, 'S' },
        { "ramp", required_argument, 0, 'r' }, { "inflight", required_argument, 0, 'i' },
        { "handshake-timeout", required_argument, 0, 'T' },
        { "jwt-secret", required_argument, 0, 'j' }, { "tokens", required_argument, 0, 'f' },
        { "user-prefix", required_argument, 0, 'x' }, { "channel", required_argument, 0, 'c' },
        { "token-ttl", required_argument, 0, 'l' }, { "publish", required_argument, 0, 'p' },
        { "api-key", required_argument, 0, 'k' }, { "mode", required_argument, 0, 'm' },
        { "rate", required_argument, 0, 'R' }, { "duration", required_argument, 0, 'd' },
        { "messages", required_argument, 0, 'M' }, { "size", required_argument, 0, 'b' },
        { "pipeline", required_argument, 0, 'q' }, { "warmup", required_argument, 0, 'w' },
        { "drain", required_argument, 0, 'D' }, { "hold", required_argument, 0, 'H' },
        { "final-publish", no_argument, 0, 'F' }, { "server-pids", required_argument, 0, 's' },
        { "slow", required_argument, 0, 'W' }, { "quiet", no_argument, 0, 'Q' },
        { "redis-user-channel", required_argument, 0, 1000 },
        { "redis-channel-channel", required_argument, 0, 1001 },
        { "nats-user-subject", required_argument, 0, 1002 },
        { "nats-channel-subject", required_argument, 0, 1003 },
        { "verbose", no_argument, 0, 'v' }, { "help", no_argument, 0, 'h' }, { 0, 0, 0, 0 }
    };
    optind = 0;                         //  full reset: argv may be anyone's
    int c;
    uint64_t value;
    int64_t ns;
    int which = 0;
    while ((c = getopt_long (argc, argv, "", options, &which)) != -1) {
        bool ok = true;
        switch (c) {
            case 'u':
                ok = opts->url_count < WSR_BENCH_MAX_URLS
                  && s_url_parse (optarg, &opts->urls [opts->url_count]) == 0;
                if (ok)
                    opts->url_count++;
                break;
            case 'n':
                ok = s_count (optarg, &value, WSR_BENCH_MAX_SESSIONS);
                opts->sessions = (uint32_t) value;
                break;
            case 'P':
                ok = s_count (optarg, &value, WSR_BENCH_MAX_PROCS);
                opts->procs = (int) value;
                break;
            case 'S': source_ips = optarg; break;
            case 'r':
                opts->ramp = atof (optarg);
                ok = opts->ramp > 0;
                break;
            case 'i':
                ok = s_count (optarg, &value, WSR_BENCH_MAX_SESSIONS);
                opts->inflight = (uint32_t) value;
                break;
            case 'T':
                ok = (ns = s_seconds (optarg)) > 0;
                opts->handshake_timeout_ns = ns;
                break;
            case 'j': opts->jwt_secret = optarg; break;
            case 'f': opts->tokens_file = optarg; break;
            case 'x': opts->user_prefix = optarg; break;
            case 'c': opts->channel = optarg; break;
            case 'l':
                ok = s_count (optarg, &value, WSR_BENCH_MAX_TOKEN_TTL_S);
                opts->token_ttl_s = (int64_t) value;
                break;
            case 'p': ok = s_publish_parse (opts, optarg) == 0; break;
            case 'k': opts->api_key = optarg; break;
            case 'm':
                ok = streq (optarg, "user") || streq (optarg, "channel");
                opts->channel_mode = streq (optarg, "channel");
                break;
            case 'R':
                if (streq (optarg, "max"))
                    opts->rate = 0;
                else {
                    opts->rate = atof (optarg);
                    ok = opts->rate > 0;
                }
                break;
            case 'd':
                ok = (ns = s_seconds (optarg)) > 0;
                opts->duration_ns = ns;
                break;
            case 'M':
                ok = s_count (optarg, &value, UINT32_MAX) && value > 0;
                opts->messages = value;
                break;
            case 'b':
                ok = s_count (optarg, &value, WSR_BENCH_MAX_SIZE);
                opts->size = (size_t) value;
                break;
            case 'q':
                ok = s_count (optarg, &value, WSR_BENCH_MAX_PIPELINE);
                opts->pipeline = (uint32_t) value;
                break;
            case 'w':
                ok = (ns = s_seconds (optarg)) >= 0;
                opts->warmup_ns = ns;
                break;
            case 'D':
                ok = (ns = s_seconds (optarg)) >= 0;
                opts->drain_ns = ns;
                break;
            case 'H':
                ok = (ns = s_seconds (optarg)) >= 0;
                opts->hold_ns = ns;
                break;
            case 'F': opts->final_publish = true; break;
            case 's': {
                char *copy = strdup (optarg);
                char *save = NULL;
                for (char *pid = strtok_r (copy, ",", &save); pid && ok;
                     pid = strtok_r (NULL, ",", &save)) {
                    ok = opts->server_pid_count < WSR_BENCH_MAX_PIDS
                      && s_count (pid, &value, INT32_MAX) && value > 0;
                    if (ok)
                        opts->server_pids [opts->server_pid_count++] = (pid_t) value;
                }
                free (copy);
                break;
            }
            case 'W':
                ok = s_count (optarg, &value, WSR_BENCH_MAX_SLOW);
                opts->slow = (uint32_t) value;
                break;
            case 'Q': opts->quiet = true; break;
            case 'v': wsr_verbose = true; break;
            case 1000: opts->redis_user_tpl = optarg; break;
            case 1001: opts->redis_channel_tpl = optarg; break;
            case 1002: opts->nats_user_tpl = optarg; break;
            case 1003: opts->nats_channel_tpl = optarg; break;
            case 'h': wsr_bench_opts_usage (); return 1;
            default: return 2;
        }
        if (!ok) {
            fprintf (stderr, "wsrouter bench: bad value for --%s: '%s'\n",
                     options [which].name, optarg? optarg: "");
            return 2;
        }
    }
    if (optind < argc) {
        fprintf (stderr, "wsrouter bench: unexpected argument '%s'\n", argv [optind]);
        return 2;
    }
    return s_opts_check (opts, source_ips)? 2: 0;
}

//  --------------------------------------------------------------------------
//  The usage text: every option, its unit and its default.
void
wsr_bench_opts_usage (void)
{
    printf (
"usage: wsrouter bench --url ws://HOST:PORT/ws [--url ...] --sessions N\n"
"                      (--jwt-secret S | --tokens FILE) [options]\n"
"\n"
"Opens N WebSocket sessions (one epoll loop per process), optionally publishes\n"
"timestamped messages to them, and prints one JSON report on stdout (progress on\n"
"stderr). Latency = receive time - publish time, both CLOCK_MONOTONIC of this host.\n"
"\n"
"sessions:\n"
"  --url URL             ws://HOST:PORT/PATH; repeat for several nodes (round robin)\n"
"  --sessions N          sessions in all [1]\n"
"  --procs K             fork K receiver processes, N/K sessions each (open-files\n"
"                        limit per process); the parent publishes and merges [1]\n"
"  --source-ips A-B      bind sessions to source addresses A..B round robin, or\n"
"                        'none' [127.0.0.2-127.0.0.254 when every URL is 127.x]\n"
"  --ramp R              handshakes started per second [5000]\n"
"  --inflight M          handshakes in progress at most [1000]\n"
"  --handshake-timeout S seconds for a 101 answer [10]\n"
"  --slow N              N extra sessions that never read (small SO_RCVBUF); not in\n"
"                        the statistics; the report says how many the server closed\n"
"tokens:\n"
"  --jwt-secret S        mint HS256 tokens: sub = PREFIX + index\n"
"  --user-prefix P       [bench]\n"
"  --channel C           add a channels claim C (and the target of --mode channel)\n"
"  --token-ttl S         exp = now + S, 0 = none [86400]\n"
"  --tokens FILE         one token per line, optionally followed by a space and the\n"
"                        user id (otherwise the token's sub); session i uses line i\n"
"publishing (one process publishes; all others only receive):\n"
"  --publish URL         http://HOST:PORT (POST /api/publish, keep-alive, pipelined),\n"
"                        redis://[[user]:password@]HOST:PORT (PUBLISH, pipelined) or\n"
"                        nats://HOST:PORT (libnats)\n"
"  --api-key K           API key for http [WEBSOCKET_API_KEY]\n"
"  --mode user|channel   round robin over the users, or everything to --channel [user]\n"
"  --rate R|max          measured messages per second [max]\n"
"  --duration S          publish for S seconds, or\n"
"  --messages N          publish N messages\n"
"  --size B              payload bytes, at least 46 (the header) [100]\n"
"  --pipeline N          unanswered HTTP requests / Redis commands at most [128]\n"
"  --warmup S            warm-up limit: W messages until every session saw one [10]\n"
"  --drain S             wait for deliveries after the last publish at most [5]\n"
"  --final-publish       after everything, one message to every user; the report\n"
"                        counts the sessions that missed it\n"
"  --redis-user-channel T     [ws:{user_id}]    --redis-channel-channel T [ws:channel:{channel}]\n"
"  --nats-user-subject T      [world.updates.user.{user_id}]\n"
"  --nats-channel-subject T   [world.updates.channel.{channel}]\n"
"holding and memory:\n"
"  --hold S              keep the sessions open S seconds once all are up [0]\n"
"  --server-pids P1,P2   sum VmRSS of these at start, when all sessions are up and\n"
"                        at the end; per-session bytes = (up - start) / sessions\n"
"  --quiet               no progress lines\n"
"  --verbose             debug logging (phases)\n"
"\n"
"Seconds may have decimals. SIGINT stops early; the report is printed all the same.\n");
}

//  --------------------------------------------------------------------------
//  What was asked, for the report (secrets stay out).
json_t *
wsr_bench_opts_params (const wsr_bench_opts_t *opts)
{
    json_t *urls = json_array ();
    for (int i = 0; i < opts->url_count; i++) {
        char ip [INET_ADDRSTRLEN];
        inet_ntop (AF_INET, &opts->urls [i].addr.sin_addr, ip, sizeof ip);
        json_array_append_new (urls, json_sprintf ("ws://%s:%d%s", ip,
                                                   ntohs (opts->urls [i].addr.sin_port),
                                                   opts->urls [i].path));
    }
    json_t *pids = json_array ();
    for (int i = 0; i < opts->server_pid_count; i++)
        json_array_append_new (pids, json_integer (opts->server_pids [i]));
    const char *kinds [] = { NULL, "http", "redis", "nats" };
    json_t *params = json_object ();
    json_object_set_new (params, "urls", urls);
    json_object_set_new (params, "sessions", json_integer (opts->sessions));
    json_object_set_new (params, "slow", json_integer (opts->slow));
    json_object_set_new (params, "procs", json_integer (opts->procs));
    json_object_set_new (params, "source_ips", json_string (opts->source_ips));
    json_object_set_new (params, "ramp", json_real (opts->ramp));
    json_object_set_new (params, "inflight", json_integer (opts->inflight));
    json_object_set_new (params, "handshake_timeout_s",
                         json_real ((double) opts->handshake_timeout_ns / 1e9));
    json_object_set_new (params, "tokens", json_string (opts->tokens_file? "file": "minted"));
    json_object_set_new (params, "publish", opts->pub_kind? json_string (kinds [opts->pub_kind])
                                                          : json_null ());
    json_object_set_new (params, "mode", json_string (opts->channel_mode? "channel": "user"));
    json_object_set_new (params, "channel", opts->channel? json_string (opts->channel)
                                                         : json_null ());
    json_object_set_new (params, "rate", opts->rate > 0? json_real (opts->rate)
                                                       : json_string ("max"));
    json_object_set_new (params, "duration_s", json_real ((double) opts->duration_ns / 1e9));
    json_object_set_new (params, "messages", json_integer ((json_int_t) opts->messages));
    json_object_set_new (params, "size", json_integer ((json_int_t) opts->size));
    json_object_set_new (params, "pipeline", json_integer (opts->pipeline));
    json_object_set_new (params, "hold_s", json_real ((double) opts->hold_ns / 1e9));
    json_object_set_new (params, "warmup_s", json_real ((double) opts->warmup_ns / 1e9));
    json_object_set_new (params, "drain_s", json_real ((double) opts->drain_ns / 1e9));
    json_object_set_new (params, "final_publish", json_boolean (opts->final_publish));
    json_object_set_new (params, "server_pids", pids);
    return params;
}

//  --------------------------------------------------------------------------
//  Selftest

//  Parse a NULL-terminated list of arguments after "bench".
static int
s_parse (wsr_bench_opts_t *opts, const char *first, ...)
{
    char *argv [64] = { (char *) "bench" };
    int argc = 1;
    va_list args;
    va_start (args, first);
    for (const char *arg = first; arg; arg = va_arg (args, const char *)) {
        assert (argc < 63);
        argv [argc++] = (char *) arg;
    }
    va_end (args);
    argv [argc] = NULL;
    return wsr_bench_opts_parse (opts, argc, argv);
}

void
wsr_bench_opts_test (bool verbose)
{
    (void) verbose;
    wsr_bench_opts_t opts;
    const char *url = "ws://127.0.0.1:8080/ws";

    //  Everything given, as scripts/bench gives it
    assert (s_parse (&opts, "--url", url, "--url", "ws://127.0.0.1:8081", "--sessions", "100",
                     "--procs", "2", "--ramp", "2500", "--inflight", "50",
                     "--handshake-timeout", "2.5", "--jwt-secret", "topsecret",
                     "--user-prefix", "u", "--channel", "room", "--token-ttl", "60",
                     "--publish", "redis://bob:pw@127.0.0.1:6380", "--mode", "channel",
                     "--rate", "1000", "--duration", "3", "--size", "64", "--pipeline", "16",
                     "--warmup", "1", "--drain", "0.5", "--hold", "2", "--final-publish",
                     "--server-pids", "11,12", "--slow", "3", "--quiet",
                     "--redis-user-channel", "r:{u}", "--redis-channel-channel", "rc:{c}",
                     "--nats-user-subject", "n.{u}", "--nats-channel-subject", "nc.{c}",
                     NULL) == 0);
    assert (opts.url_count == 2 && streq (opts.urls [0].path, "/ws"));
    assert (streq (opts.urls [1].path, "/ws") && ntohs (opts.urls [1].addr.sin_port) == 8081);
    assert (streq (opts.urls [0].host, "127.0.0.1:8080"));
    assert (opts.sessions == 100 && opts.procs == 2 && opts.ramp == 2500);
    assert (opts.inflight == 50 && opts.handshake_timeout_ns == 2500 * WSR_BENCH_MS);
    assert (streq (opts.user_prefix, "u") && streq (opts.channel, "room"));
    assert (opts.token_ttl_s == 60 && opts.channel_mode);
    assert (opts.pub_kind == WSR_BENCH_PUB_REDIS && opts.pub_port == 6380);
    assert (streq (opts.redis_user, "bob") && streq (opts.redis_password, "pw"));
    assert (streq (opts.pub_host, "127.0.0.1:6380"));
    assert (opts.rate == 1000 && opts.duration_ns == 3 * WSR_BENCH_SEC && opts.size == 64);
    assert (opts.pipeline == 16 && opts.warmup_ns == WSR_BENCH_SEC);
    assert (opts.drain_ns == 500 * WSR_BENCH_MS && opts.hold_ns == 2 * WSR_BENCH_SEC);
    assert (opts.final_publish && opts.slow == 3 && opts.quiet);
    assert (opts.server_pid_count == 2 && opts.server_pids [1] == 12);
    assert (streq (opts.redis_user_tpl, "r:{u}") && streq (opts.nats_channel_tpl, "nc.{c}"));
    //  Loopback targets: sources spread over 127.0.0.2-254
    assert (opts.src_count == 253 && opts.src_first == 0x7f000002);
    assert (streq (opts.source_ips, "127.0.0.2-127.0.0.254"));

    //  Secrets stay out of the report's params
    json_t *params = wsr_bench_opts_params (&opts);
    char *text = json_dumps (params, JSON_COMPACT);
    assert (text && !strstr (text, "topsecret") && !strstr (text, "pw"));
    assert (strstr (text, "\"publish\":\"redis\"") && strstr (text, "\"mode\":\"channel\""));
    free (text);
    json_decref (params);

    //  Defaults, a password without a user, NATS and HTTP ports
    assert (s_parse (&opts, "--url", url, "--tokens", "/dev/null", "--source-ips", "none",
                     "--publish", "redis://:pw@127.0.0.1", NULL) == 0);
    assert (opts.sessions == 1 && opts.procs == 1 && opts.size == WSR_BENCH_DEFAULT_SIZE);
    assert (opts.rate == 0 && opts.src_count == 0 && opts.pub_port == 6379);
    assert (streq (opts.redis_user, "") && streq (opts.redis_password, "pw"));
    assert (s_parse (&opts, "--url", url, "--jwt-secret", "s", "--publish", "nats://127.0.0.1",
                     "--source-ips", "10.0.0.1-10.0.0.4", "--messages", "5", NULL) == 0);
    assert (opts.pub_kind == WSR_BENCH_PUB_NATS && opts.pub_port == 4222);
    assert (opts.src_first == 0x0a000001 && opts.src_count == 4 && opts.messages == 5);
    assert (s_parse (&opts, "--url", url, "--jwt-secret", "s", "--publish",
                     "http://127.0.0.1", "--api-key", "k", NULL) == 0);
    assert (opts.pub_kind == WSR_BENCH_PUB_HTTP && opts.pub_port == 80);
    assert (streq (opts.pub_host, "127.0.0.1"));

    //  Refused, each for one reason (messages go to stderr)
    assert (s_parse (&opts, "--jwt-secret", "s", NULL) == 2);
    assert (s_parse (&opts, "--url", url, NULL) == 2);
    assert (s_parse (&opts, "--url", url, "--jwt-secret", "s", "--tokens", "f", NULL) == 2);
    assert (s_parse (&opts, "--url", "http://127.0.0.1/ws", "--jwt-secret", "s", NULL) == 2);
    assert (s_parse (&opts, "--url", "ws://127.0.0.1:0/ws", "--jwt-secret", "s", NULL) == 2);
    assert (s_parse (&opts, "--url", url, "--jwt-secret", "s", "--size", "45", NULL) == 2);
    assert (s_parse (&opts, "--url", url, "--jwt-secret", "s", "--sessions", "2",
                     "--procs", "3", NULL) == 2);
    assert (s_parse (&opts, "--url", url, "--jwt-secret", "s", "--mode", "channel", NULL) == 2);
    assert (s_parse (&opts, "--url", url, "--jwt-secret", "s", "--channel", "a b", NULL) == 2);
    assert (s_parse (&opts, "--url", url, "--jwt-secret", "s", "--messages", "5", NULL) == 2);
    assert (s_parse (&opts, "--url", url, "--jwt-secret", "s", "--publish", "nats://127.0.0.1",
                     "--messages", "5", "--duration", "1", NULL) == 2);
    char *api_key = getenv ("WEBSOCKET_API_KEY")? strdup (getenv ("WEBSOCKET_API_KEY")): NULL;
    unsetenv ("WEBSOCKET_API_KEY");
    assert (s_parse (&opts, "--url", url, "--jwt-secret", "s", "--publish",
                     "http://127.0.0.1", NULL) == 2);
    if (api_key)
        setenv ("WEBSOCKET_API_KEY", api_key, 1);
    free (api_key);
    assert (s_parse (&opts, "--url", url, "--jwt-secret", "s", "--rate", "-1", NULL) == 2);
    assert (s_parse (&opts, "--url", url, "--jwt-secret", "s", "--duration", "x", NULL) == 2);
    assert (s_parse (&opts, "--url", url, "--jwt-secret", "s", "--sessions", "-1", NULL) == 2);
    assert (s_parse (&opts, "--url", url, "--jwt-secret", "s", "--server-pids", "1,0",
                     NULL) == 2);
    assert (s_parse (&opts, "--url", url, "--jwt-secret", "s", "--source-ips",
                     "10.0.0.9-10.0.0.1", NULL) == 2);
    assert (s_parse (&opts, "--url", url, "--jwt-secret", "s", "extra", NULL) == 2);
    assert (s_parse (&opts, "--url", url, "--jwt-secret", "s", "--no-such-option", NULL) == 2);
}
