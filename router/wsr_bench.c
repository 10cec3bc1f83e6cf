//  wsr_bench — `wsrouter bench`: many WebSocket sessions, timed publishing, one JSON report
//
//  A load generator and latency meter for wsrouter. One process, or K forked
//  processes (--procs, because of the per-process open-files limit), each
//  with one epoll loop and no thread per connection.
//
//  Sessions. Each process opens its share of the sessions at --ramp per
//  second with at most --inflight handshakes in progress, binding every
//  socket to the next address of a source range (IP_BIND_ADDRESS_NO_PORT)
//  so that loopback runs do not run out of ephemeral ports. The client checks
//  the 101 answer (Upgrade, Connection, Sec-WebSocket-Accept = base64 of
//  SHA-1 by zdigest), parses server frames incrementally from whatever
//  bytes arrive (7/16/64-bit lengths, fragments, control frames between
//  fragments), answers ping with pong and close with close, and masks all
//  it sends (RFC 6455). A connection costs about 250 bytes; a handshake's
//  buffers exist only while it is in progress.
//
//  Identities. With --jwt-secret, normal session i is user PREFIXi (one
//  session per user) and its HS256 token is minted here (wsr_jwt_mint_hs256,
//  with the --channel claim if given); slow session j reuses user j % N.
//  With --tokens FILE, session i (slow j) uses line i (j) modulo the number
//  of lines; a line is "TOKEN" or "TOKEN USER". Without USER the user is the
//  token's sub claim (payload decoded, signature not checked). Users are
//  deduplicated; publishing goes round robin over the distinct users.
//
//  Publishing. Exactly one process publishes: the single process, or with
//  --procs K the parent, which then holds no session itself and forks K
//  receiver children. All times are CLOCK_MONOTONIC of this one machine, so
//  latency = receive time − the time the publisher embedded. A payload is
//  text, a fixed 46-byte header then 'x' up to --size:
//
//      #K:SSSSSSSSSS:TTTTTTTTTTTTTTTTTTTT:UUUUUUUUUU|xxxx...
//
//  K kind (M measured, W warm-up, F final), S sequence (per user in user
//  mode, per channel in channel mode; from 1; 0 for W and F), T publish
//  time in ns, U target index (user index; 0 for the channel).
//
//  Phases, driven by the publishing process: connect → hold (--hold) →
//  warm-up (rounds of W messages to every target, until every open session
//  has seen one or --warmup passes: subscriptions reach the router and the
//  backplane asynchronously and must exist before measuring) → publish
//  (--rate or max, --duration or --messages) → final (--final-publish: one
//  F message per user, or one to the channel) → flush (the publisher's
//  acknowledgements) → drain (receivers wait until they have what they
//  expect, at most --drain, and read their slow sessions to see whether the
//  server closed them) → report.
//
//  Counting. A session tracks its next expected sequence and a 64-bit
//  window of the ones before it: a jump ahead counts the gap as loss; a
//  sequence seen before is a duplicate; an older one not seen before is
//  reordered (and no longer lost). At the end, a session's missing tail up
//  to the last sequence its user (or the channel) was sent is loss too, so a
//  session closed by the server loses what came after. Publishes the
//  backplane refused (HTTP non-2xx, Redis errors, connection lost with
//  requests in flight) are counted in publish_errors and also show as loss.
//  Latencies go into log-linear histograms (128 sub-buckets per power of
//  two: < 0.4% error) which children send to the parent as sparse JSON
//  arrays [[bucket, count], ...] and the parent adds up.
//
//  Parent ↔ children: lines on two pipes per child. Child → parent: "S
//  done attempted established slow_established failed open warm received
//  final" every 100 ms, "R {json}" at the end. Parent → child: "E published
//  final_sent interrupted" (no more publishing: drain, then report), "X"
//  (exit: the parent has read the server's memory; until then sessions stay
//  open). A child ignores SIGINT (the parent decides) and dies with its parent.
//
//  Owns: its sockets, pipes, children and the epoll set; nothing outlives
//  the run. Every phase has a deadline, and a publisher that can hand over
//  nothing for 10 s (backplane gone) ends publishing, so every run ends by
//  itself; SIGINT (wsr_bench_main only) ends it early with a report all the same.

#include "wsr_classes.h"
#include "wsr_bench.h"
#include <getopt.h>
#include <hiredis/hiredis.h>
#include <jansson.h>
#include <nats/nats.h>
#include <netdb.h>
#include <netinet/tcp.h>
#include <poll.h>
#include <signal.h>
#include <sys/epoll.h>
#include <sys/prctl.h>
#include <sys/resource.h>
#include <sys/wait.h>

#ifndef IP_BIND_ADDRESS_NO_PORT
#   define IP_BIND_ADDRESS_NO_PORT 24
#endif

#define S_MS                    1000000LL           //  ns per ms
#define S_SEC                   1000000000LL        //  ns per s
#define S_MAX_URLS              64          //  --url entries
#define S_MAX_PROCS             64          //  --procs
#define S_MAX_PIDS              64          //  --server-pids entries
#define S_HDR_LEN               46          //  payload header bytes
#define S_MAX_SIZE              (1024 * 1024 - 64)  //  --size limit (server max 1 MiB)
#define S_HIST_SUB              128         //  histogram sub-buckets per power of two
#define S_HIST_BUCKETS          (S_HIST_SUB * 58)   //  covers every uint64_t
#define S_READ_CHUNK            65536       //  scratch read buffer
#define S_READS_PER_WAKE        4           //  reads per connection per wake-up
#define S_MAX_EVENTS            1024        //  epoll_wait batch
#define S_HS_RESPONSE_MAX       1024        //  101 response head limit
#define S_CONTROL_MAX           125         //  control frame payload limit
#define S_CLOSE_SLOTS           17          //  close codes 1000..1015, then other
#define S_STATUS_SLOTS          500         //  refused handshakes by status 100..599
#define S_STATUS_NS             (100 * S_MS)        //  child status line period
#define S_PROGRESS_NS           S_SEC       //  progress line period
#define S_WARMUP_ROUND_NS       (250 * S_MS)        //  pause between warm-up rounds
#define S_PUB_BATCH             1024        //  messages per loop turn at most
#define S_START_BATCH           1024        //  connections started per loop turn at most
#define S_NATS_MAX_BUFFERED     (8 * 1024 * 1024)   //  libnats pending bytes before waiting
#define S_NATS_FLUSH_MS         5000        //  final flush round trip limit
#define S_SLOW_RCVBUF           4096        //  receive buffer of a slow session
#define S_SLOW_CHECK_NS         (2 * S_SEC) //  reading slow sessions at the end
#define S_CHILD_GRACE_NS        (15 * S_SEC)        //  beyond --drain before children are killed
#define S_RETRY_NS              (100 * S_MS)        //  publisher reconnect backoff
#define S_CONNECT_TIMEOUT_MS    2000        //  publisher connect limit
#define S_PUBLISH_TIMEOUT_NS    (600 * S_SEC)       //  --messages without --duration, at most
#define S_FINAL_TIMEOUT_NS      (60 * S_SEC)        //  the final round, at most
#define S_PUB_STALL_NS          (10 * S_SEC)        //  publisher blocked this long: give up
#define S_DEFAULT_RAMP          5000        //  handshakes started per second
#define S_DEFAULT_INFLIGHT      1000        //  handshakes in progress
#define S_DEFAULT_HS_TIMEOUT_NS (10 * S_SEC)
#define S_DEFAULT_SIZE          100         //  payload bytes
#define S_DEFAULT_PIPELINE      128         //  HTTP requests / Redis commands unanswered
#define S_DEFAULT_WARMUP_NS     (10 * S_SEC)
#define S_DEFAULT_DRAIN_NS      (5 * S_SEC)
#define S_DEFAULT_TOKEN_TTL_S   86400
#define S_WS_GUID               "258EAFA5-E914-47DA-95CA-C5AB0DC85B11"

//  --------------------------------------------------------------------------
//  Settings (plain values, parsed once, read-only during the run)

typedef enum {
    S_PUB_NONE,
    S_PUB_HTTP,
    S_PUB_REDIS,
    S_PUB_NATS
} s_pub_kind_t;

typedef struct {
    char host [256];                //  Host header value (as given)
    char path [256];                //  request path, e.g. /ws
    struct sockaddr_in addr;        //  resolved IPv4 address
} s_url_t;

typedef struct {
    s_url_t urls [S_MAX_URLS];      //  targets; sessions go round robin
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
    s_pub_kind_t pub_kind;          //  publisher transport
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
    pid_t server_pids [S_MAX_PIDS]; //  server processes to measure
    int server_pid_count;
    uint32_t slow;                  //  extra sessions that never read
    bool quiet;                     //  no progress lines
    char source_ips [64];           //  as resolved, for params
} s_opts_t;

//  Users and tokens, built before any fork (children inherit them).
typedef struct {
    char **users;                   //  distinct user ids (owned)
    uint32_t user_count;
    char **tokens;                  //  tokens file entries (owned), NULL when minting
    uint32_t *token_user;           //  user index of each token
    uint32_t token_count;
} s_ident_t;

//  --------------------------------------------------------------------------
//  Histogram: values in ns, exact below 256, then 128 buckets per power of two

typedef struct {
    uint64_t counts [S_HIST_BUCKETS];   //  values per bucket
    uint64_t total;                 //  values recorded
    uint64_t max;                   //  largest value, exact
    double sum;                     //  for the mean
} s_hist_t;

static int
s_hist_index (uint64_t value)
{
    if (value < 2 * S_HIST_SUB)
        return (int) value;
    int msb = 63 - __builtin_clzll (value);
    int shift = msb - 7;
    return (shift << 7) + (int) (value >> shift);
}

//  Middle of a bucket: the value reported for anything in it.
static uint64_t
s_hist_value (int index)
{
    if (index < 2 * S_HIST_SUB)
        return (uint64_t) index;
    int shift = index / S_HIST_SUB - 1;
    uint64_t mantissa = (uint64_t) (index % S_HIST_SUB + S_HIST_SUB);
    return (mantissa << shift) + ((1ULL << shift) >> 1);
}

static void
s_hist_add (s_hist_t *self, uint64_t value)
{
    self->counts [s_hist_index (value)]++;
    self->total++;
    self->sum += (double) value;
    if (value > self->max)
        self->max = value;
}

//  Value at quantile q (0..1), ns; 0 when empty.
static uint64_t
s_hist_quantile (const s_hist_t *self, double q)
{
    if (self->total == 0)
        return 0;
    uint64_t rank = (uint64_t) ceil (q * (double) self->total);
    if (rank < 1)
        rank = 1;
    if (rank >= self->total)
        return self->max;
    uint64_t seen = 0;
    for (int i = 0; i < S_HIST_BUCKETS; i++) {
        seen += self->counts [i];
        if (seen >= rank) {
            uint64_t value = s_hist_value (i);
            return value > self->max? self->max: value;
        }
    }
    return self->max;
}

//  Sparse form for the pipe: [[bucket, count], ...]
static json_t *
s_hist_to_json (const s_hist_t *self)
{
    json_t *array = json_array ();
    for (int i = 0; i < S_HIST_BUCKETS; i++)
        if (self->counts [i])
            json_array_append_new (array, json_pack ("[iI]", i, (json_int_t) self->counts [i]));
    return json_pack ("{s:o, s:I, s:f}", "buckets", array, "max", (json_int_t) self->max,
                      "sum", self->sum);
}

static void
s_hist_merge_json (s_hist_t *self, json_t *json)
{
    json_t *buckets = json_object_get (json, "buckets");
    size_t i;
    json_t *pair;
    json_array_foreach (buckets, i, pair) {
        json_int_t index = json_integer_value (json_array_get (pair, 0));
        json_int_t count = json_integer_value (json_array_get (pair, 1));
        if (index >= 0 && index < S_HIST_BUCKETS && count > 0) {
            self->counts [index] += (uint64_t) count;
            self->total += (uint64_t) count;
        }
    }
    uint64_t max = (uint64_t) json_integer_value (json_object_get (json, "max"));
    if (max > self->max)
        self->max = max;
    self->sum += json_real_value (json_object_get (json, "sum"));
}

//  ns as ms, rounded to the µs (histogram buckets are coarser anyway)
static json_t *
s_ms (double ns)
{
    return json_real (round (ns / 1e3) / 1e3);
}

//  Rounded to 0.1
static json_t *
s_rate (double value)
{
    return json_real (round (value * 10) / 10);
}

//  {p50, p90, p99, [p999,] max, mean} in ms
static json_t *
s_hist_summary (const s_hist_t *self, bool p999)
{
    json_t *summary = json_object ();
    json_object_set_new (summary, "count", json_integer ((json_int_t) self->total));
    json_object_set_new (summary, "p50", s_ms ((double) s_hist_quantile (self, 0.50)));
    json_object_set_new (summary, "p90", s_ms ((double) s_hist_quantile (self, 0.90)));
    json_object_set_new (summary, "p99", s_ms ((double) s_hist_quantile (self, 0.99)));
    if (p999)
        json_object_set_new (summary, "p999", s_ms ((double) s_hist_quantile (self, 0.999)));
    json_object_set_new (summary, "max", s_ms ((double) self->max));
    json_object_set_new (summary, "mean", s_ms (self->total? self->sum / (double) self->total: 0));
    return summary;
}

//  --------------------------------------------------------------------------
//  What the receiving side counts; one per process, added up by the parent

typedef struct {
    uint64_t attempted;             //  sessions whose connect was started
    uint64_t established;           //  normal sessions that got a valid 101
    uint64_t slow_established;      //  slow sessions that got a valid 101
    uint64_t failed;                //  handshakes that failed, any cause
    uint64_t fail_socket;           //  socket, bind or connect failed
    uint64_t fail_timeout;          //  no 101 within --handshake-timeout
    uint64_t fail_status;           //  an HTTP status other than 101
    uint64_t fail_accept;           //  101 with a wrong Upgrade, Connection or Accept
    uint64_t fail_eof;              //  connection closed before the answer
    uint64_t fail_response;         //  answer head too large or malformed
    uint64_t fail_aborted;          //  still in progress when the run ended
    uint64_t open;                  //  normal sessions open now
    uint64_t warm;                  //  normal sessions that saw a warm-up message
    uint64_t received;              //  measured messages received (duplicates too)
    uint64_t expected;              //  measured messages the sessions should get
    uint64_t loss;                  //  expected but never received
    uint64_t duplicates;            //  received twice
    uint64_t reordered;             //  arrived after a later one
    uint64_t misrouted;             //  addressed to another user
    uint64_t foreign;               //  messages without a bench header
    uint64_t final_received;        //  sessions that got their final message
    uint64_t final_expected;        //  sessions that should have
    uint64_t closed_by_server;      //  normal sessions closed by the server
    uint64_t protocol_errors;       //  bad frames from the server (session dropped)
    uint64_t pongs;                 //  pings answered
    uint64_t send_errors;           //  pong / close not written whole
    uint64_t slow_closed;           //  slow sessions found closed by the server
    uint64_t close_codes [S_CLOSE_SLOTS];   //  closes by code (1006: EOF without close)
    uint64_t hs_status [S_STATUS_SLOTS];    //  refused handshakes by HTTP status
    int64_t t_first_start;          //  first connect started, mono ns (0 = never)
    int64_t t_last_established;     //  last 101 verified
    int64_t t_first_rx;             //  first measured message received
    int64_t t_last_rx;              //  last measured message received
    s_hist_t handshake;             //  connect start → 101 verified
    s_hist_t latency;               //  publish → receive, measured messages
} s_rx_t;

typedef struct {
    const char *name;               //  JSON key
    size_t offset;                  //  of a uint64_t in s_rx_t
} s_field_t;

#define S_FIELD(f) { #f, offsetof (s_rx_t, f) }
static const s_field_t s_rx_fields [] = {
    S_FIELD (attempted), S_FIELD (established), S_FIELD (slow_established), S_FIELD (failed),
    S_FIELD (fail_socket), S_FIELD (fail_timeout), S_FIELD (fail_status),
    S_FIELD (fail_accept), S_FIELD (fail_eof), S_FIELD (fail_response),
    S_FIELD (fail_aborted), S_FIELD (open), S_FIELD (warm), S_FIELD (received),
    S_FIELD (expected), S_FIELD (loss), S_FIELD (duplicates), S_FIELD (reordered),
    S_FIELD (misrouted), S_FIELD (foreign), S_FIELD (final_received),
    S_FIELD (final_expected), S_FIELD (closed_by_server), S_FIELD (protocol_errors),
    S_FIELD (pongs), S_FIELD (send_errors), S_FIELD (slow_closed)
};
#define S_RX_FIELDS (sizeof s_rx_fields / sizeof s_rx_fields [0])

static uint64_t *
s_rx_field (s_rx_t *rx, size_t i)
{
    return (uint64_t *) ((char *) rx + s_rx_fields [i].offset);
}

//  Sparse {"code": count} of a per-code array
static json_t *
s_codes_to_json (const uint64_t *counts, int slots, int base, int other_slot)
{
    json_t *object = json_object ();
    for (int i = 0; i < slots; i++)
        if (counts [i]) {
            char key [16];
            if (i == other_slot)
                snprintf (key, sizeof key, "other");
            else
                snprintf (key, sizeof key, "%d", base + i);
            json_object_set_new (object, key, json_integer ((json_int_t) counts [i]));
        }
    return object;
}

static void
s_codes_merge_json (uint64_t *counts, int slots, int base, int other_slot, json_t *object)
{
    const char *key;
    json_t *value;
    json_object_foreach (object, key, value) {
        int slot = streq (key, "other")? other_slot: atoi (key) - base;
        if (slot >= 0 && slot < slots)
            counts [slot] += (uint64_t) json_integer_value (value);
    }
}

static json_t *
s_rx_to_json (s_rx_t *rx)
{
    json_t *json = json_object ();
    for (size_t i = 0; i < S_RX_FIELDS; i++)
        json_object_set_new (json, s_rx_fields [i].name,
                             json_integer ((json_int_t) *s_rx_field (rx, i)));
    json_object_set_new (json, "close_codes",
                         s_codes_to_json (rx->close_codes, S_CLOSE_SLOTS, 1000, 16));
    json_object_set_new (json, "hs_status",
                         s_codes_to_json (rx->hs_status, S_STATUS_SLOTS, 100, -1));
    json_object_set_new (json, "times", json_pack ("[IIII]",
                         (json_int_t) rx->t_first_start, (json_int_t) rx->t_last_established,
                         (json_int_t) rx->t_first_rx, (json_int_t) rx->t_last_rx));
    json_object_set_new (json, "handshake", s_hist_to_json (&rx->handshake));
    json_object_set_new (json, "latency", s_hist_to_json (&rx->latency));
    return json;
}

//  Earliest of two times, 0 meaning unset
static int64_t
s_first (int64_t a, int64_t b)
{
    return !a? b: !b? a: a < b? a: b;
}

static void
s_rx_merge (s_rx_t *into, json_t *json)
{
    for (size_t i = 0; i < S_RX_FIELDS; i++)
        *s_rx_field (into, i) += (uint64_t) json_integer_value (
            json_object_get (json, s_rx_fields [i].name));
    s_codes_merge_json (into->close_codes, S_CLOSE_SLOTS, 1000, 16,
                        json_object_get (json, "close_codes"));
    s_codes_merge_json (into->hs_status, S_STATUS_SLOTS, 100, -1,
                        json_object_get (json, "hs_status"));
    json_t *times = json_object_get (json, "times");
    into->t_first_start = s_first (into->t_first_start,
                                   json_integer_value (json_array_get (times, 0)));
    int64_t last = json_integer_value (json_array_get (times, 1));
    if (last > into->t_last_established)
        into->t_last_established = last;
    into->t_first_rx = s_first (into->t_first_rx, json_integer_value (json_array_get (times, 2)));
    last = json_integer_value (json_array_get (times, 3));
    if (last > into->t_last_rx)
        into->t_last_rx = last;
    s_hist_merge_json (&into->handshake, json_object_get (json, "handshake"));
    s_hist_merge_json (&into->latency, json_object_get (json, "latency"));
}

//  --------------------------------------------------------------------------
//  Connections

typedef enum {
    S_CONN_IDLE,                    //  not started
    S_CONN_CONNECTING,              //  connect in progress or request not sent whole
    S_CONN_HANDSHAKE,               //  request sent, waiting for the 101
    S_CONN_OPEN,                    //  established
    S_CONN_CLOSING,                 //  server's close answered, waiting for EOF
    S_CONN_CLOSED,                  //  closed after being established
    S_CONN_FAILED                   //  handshake failed
} s_conn_state_t;

#define S_FLAG_SLOW         0x01    //  never reads (until the end check)
#define S_FLAG_PAYLOAD      0x02    //  parser is inside a frame's payload
#define S_FLAG_WARM         0x04    //  saw a warm-up message
#define S_FLAG_FINAL        0x08    //  saw its final message
#define S_FLAG_UP           0x10    //  was established
#define S_FLAG_RESOLVED     0x20    //  slow session: end check done

typedef struct _s_hs_t s_hs_t;

typedef struct {
    int fd;                         //  socket, -1 when closed or not started
    uint32_t user;                  //  user index
    uint32_t next_seq;              //  next expected measured sequence (from 1)
    uint64_t window;                //  bit k: sequence next_seq - 1 - k was received
    s_hs_t *hs;                     //  handshake in progress, else NULL
    uint64_t remaining;             //  payload bytes left in the current frame
    uint8_t state;                  //  s_conn_state_t
    uint8_t flags;                  //  S_FLAG_*
    uint8_t head_len;               //  frame header bytes gathered
    uint8_t opcode;                 //  current frame's opcode
    uint8_t fin;                    //  current frame ends its message
    uint8_t message_op;             //  opcode of the data message in progress, 0 = none
    uint8_t control_len;            //  control payload bytes gathered
    uint8_t prefix_len;             //  data message bytes gathered in prefix
    uint8_t head [14];              //  frame header being gathered
    uint8_t control [S_CONTROL_MAX];    //  ping / close payload
    uint8_t prefix [S_HDR_LEN];     //  first bytes of the data message
} s_conn_t;

//  A handshake in progress: the request to send and the answer so far.
struct _s_hs_t {
    s_hs_t *prev, *next;            //  in start order: the oldest times out first
    uint32_t conn;                  //  index of its connection
    int64_t started;                //  socket created, mono ns
    char accept [32];               //  expected Sec-WebSocket-Accept
    size_t response_len;            //  bytes gathered in response
    char response [S_HS_RESPONSE_MAX + 1];
    size_t request_len;             //  bytes of request
    size_t request_sent;            //  of which sent
    char request [];                //  the GET request
};

//  --------------------------------------------------------------------------
//  A growable byte buffer (publisher I/O, pipe lines)

typedef struct {
    char *data;                     //  heap bytes (owned)
    size_t off;                     //  consumed so far
    size_t len;                     //  filled so far
    size_t cap;                     //  allocated
} s_buf_t;

static void
s_buf_append (s_buf_t *self, const void *data, size_t len)
{
    if (self->off && self->off == self->len)
        self->off = self->len = 0;
    if (self->len + len > self->cap) {
        if (self->off) {
            memmove (self->data, self->data + self->off, self->len - self->off);
            self->len -= self->off;
            self->off = 0;
        }
        while (self->len + len > self->cap)
            self->cap = self->cap? self->cap * 2: 4096;
        self->data = (char *) realloc (self->data, self->cap + 1);
        assert (self->data);
    }
    memcpy (self->data + self->len, data, len);
    self->len += len;
}

static size_t
s_buf_size (const s_buf_t *self)
{
    return self->len - self->off;
}

static void
s_buf_reset (s_buf_t *self)
{
    self->off = self->len = 0;
}

static void
s_buf_free (s_buf_t *self)
{
    free (self->data);
    memset (self, 0, sizeof *self);
}

//  --------------------------------------------------------------------------
//  Publisher state (publishing process only)

#define S_KINDS         3           //  message kinds: measured, warm-up, final

static int
s_kind_index (char kind)
{
    return kind == 'M'? 0: kind == 'W'? 1: 2;
}

typedef struct {
    int fd;                         //  HTTP socket or Redis fd in epoll, -1 if none
    bool want_write;                //  EPOLLOUT requested
    s_buf_t out;                    //  HTTP requests not yet written
    s_buf_t in;                     //  HTTP answers not yet parsed
    redisContext *redis;            //  non-blocking hiredis context
    natsConnection *nats;           //  libnats connection
    uint32_t inflight;              //  requests / commands not yet answered
    uint8_t *ring;                  //  kind of each one, oldest at ring_head (owned)
    uint32_t ring_head;
    uint32_t auth_pending;          //  Redis AUTH replies still to come
    int64_t retry_at;               //  no reconnect before this (mono ns)
    int64_t blocked_since;          //  could not take a message since (mono ns), 0 = can
    bool stalled;                   //  blocked too long: publishing given up
    char *payload;                  //  message being built (--size bytes + NUL)
    uint64_t sent;                  //  messages handed to the transport, all kinds
    uint64_t accepted [S_KINDS];    //  acknowledged (2xx, Redis integer, NATS ok), by kind
    uint64_t errors [S_KINDS];      //  refused or lost in flight, by kind
    uint64_t lost_inflight;         //  connection lost before the answer (all kinds)
    uint64_t no_receiver;           //  Redis PUBLISH answered 0 subscribers
    uint64_t connects;              //  connections made
    uint64_t status [S_STATUS_SLOTS];   //  HTTP answers by status
    bool flushed;                   //  NATS final flush done
} s_pub_t;

//  --------------------------------------------------------------------------
//  The run: one per process

typedef enum {
    S_ROLE_LOCAL,                   //  sessions and publisher in one process
    S_ROLE_PARENT,                  //  publisher; sessions in children
    S_ROLE_CHILD                    //  sessions only
} s_role_t;

typedef enum {
    S_PHASE_CONNECT,
    S_PHASE_HOLD,
    S_PHASE_WARMUP,
    S_PHASE_PUBLISH,
    S_PHASE_FINAL,
    S_PHASE_FLUSH,
    S_PHASE_DRAIN,
    S_PHASE_END
} s_phase_t;

static const char *s_phase_names [] = {
    "connect", "hold", "warmup", "publish", "final", "flush", "drain", "end"
};

//  Status fields a child reports (and the controller's totals)
typedef enum {
    S_T_DONE, S_T_ATTEMPTED, S_T_ESTABLISHED, S_T_SLOW, S_T_FAILED, S_T_OPEN, S_T_WARM,
    S_T_RECEIVED, S_T_FINAL, S_T_COUNT
} s_total_t;

typedef struct {
    pid_t pid;                      //  child process, 0 once reaped
    int cmd_fd;                     //  parent → child commands, -1 if closed
    int status_fd;                  //  child → parent lines, -1 at EOF
    s_buf_t line;                   //  partial line
    uint64_t stat [S_T_COUNT];      //  last status line
    bool result;                    //  its result was merged
} s_child_t;

typedef struct {
    const s_opts_t *opts;           //  settings (not owned)
    const s_ident_t *ident;         //  users and tokens (not owned)
    s_role_t role;
    int epoll_fd;                   //  the one epoll set
    int64_t now;                    //  mono ns, updated after each wake-up
    char *error;                    //  why the run failed to start (owned)

    //  Receiving side (LOCAL, CHILD)
    s_conn_t *conns;                //  normal sessions, then slow ones (owned)
    uint32_t conn_count;            //  all sessions here
    uint32_t normal_count;          //  of which normal
    uint32_t first_normal;          //  global index of conns [0]
    uint32_t first_slow;            //  global index of conns [normal_count]
    uint32_t started;               //  connections started so far
    uint32_t inflight;              //  handshakes in progress
    uint32_t inflight_max;          //  this process's share of --inflight
    double ramp;                    //  this process's share of --ramp
    int64_t ramp_t0;                //  first start, mono ns
    uint32_t src_next;              //  next source address offset
    s_hs_t *hs_head, *hs_tail;      //  handshakes in progress, oldest first
    s_rx_t *rx;                     //  counts (owned; big)
    uint8_t *scratch;               //  read buffer (owned)
    bool ending;                    //  publishing is over: drain
    bool rx_done;                   //  drain finished, result final
    int64_t end_deadline;           //  drain limit
    int64_t slow_deadline;          //  slow-session reading limit
    uint32_t slow_pending;          //  slow sessions still being read
    uint64_t published;             //  measured messages sent (from "E")
    uint64_t final_sent;            //  final messages sent (from "E")

    //  Child control
    int cmd_fd;                     //  commands from the parent
    int status_fd;                  //  lines to the parent
    s_buf_t cmd_line;               //  partial command
    int64_t next_status;            //  next status line due
    bool exit_now;                  //  "X" or parent gone

    //  Publishing side (LOCAL, PARENT)
    s_pub_t pub;
    s_phase_t phase;
    int64_t phase_deadline;         //  limit of the current phase
    uint32_t target_count;          //  users (user mode) or 1 (channel mode)
    uint32_t *seq;                  //  last sequence sent per target (owned)
    uint32_t rr;                    //  next target of a measured message
    uint64_t sent_measured;         //  measured messages sent (M)
    uint32_t round_next;            //  next target of the warm-up / final round
    bool round_active;              //  a warm-up / final round is being sent
    int64_t next_round;             //  warm-up: next round not before
    uint32_t warm_rounds;           //  warm-up rounds sent
    uint64_t final_count;           //  final messages sent
    int64_t t_start;                //  run started
    int64_t t_up;                   //  all sessions resolved
    int64_t t_warm;                 //  warm-up ended
    int64_t t_pub_start, t_pub_end; //  measured publishing
    int64_t next_progress;          //  next progress line
    bool interrupted;               //  SIGINT seen
    s_child_t children [S_MAX_PROCS];   //  receiver processes
    int child_count;
    json_t *memory;                 //  RSS and sockstat readings (owned)
} s_run_t;

static volatile sig_atomic_t s_interrupted = 0;

//  --------------------------------------------------------------------------
//  Small helpers

static int64_t
s_now (void)
{
    struct timespec ts;
    clock_gettime (CLOCK_MONOTONIC, &ts);
    return (int64_t) ts.tv_sec * S_SEC + ts.tv_nsec;
}

static void
s_epoll_set (s_run_t *self, int op, int fd, uint32_t events, uint32_t tag, uint32_t index)
{
    struct epoll_event event = { .events = events };
    event.data.u64 = (uint64_t) tag << 32 | index;
    if (epoll_ctl (self->epoll_fd, op, fd, &event) && op != EPOLL_CTL_DEL)
        zsys_warning ("bench: epoll_ctl: %s", strerror (errno));
}

#define S_TAG_CONN      1
#define S_TAG_PUB       2
#define S_TAG_CHILD     3
#define S_TAG_CMD       4

//  Replace the first "{...}" placeholder of tpl with value.
static void
s_subst (char *out, size_t size, const char *tpl, const char *value)
{
    const char *open = strchr (tpl, '{');
    const char *close = open? strchr (open, '}'): NULL;
    if (!open || !close)
        snprintf (out, size, "%s", tpl);
    else
        snprintf (out, size, "%.*s%s%s", (int) (open - tpl), tpl, value, close + 1);
}

//  Resolve host (IPv4) and port into addr; -1 if it does not resolve.
static int
s_resolve (const char *host, int port, struct sockaddr_in *addr)
{
    struct addrinfo hints = { .ai_family = AF_INET, .ai_socktype = SOCK_STREAM };
    struct addrinfo *found = NULL;
    if (getaddrinfo (host, NULL, &hints, &found) || !found)
        return -1;
    *addr = *(struct sockaddr_in *) found->ai_addr;
    addr->sin_port = htons ((uint16_t) port);
    freeaddrinfo (found);
    return 0;
}

//  Split "HOST:PORT[/rest]" after a scheme; returns the rest (or "").
static const char *
s_hostport (const char *text, char *host, size_t size, int *port)
{
    const char *end = text + strcspn (text, "/?");
    const char *colon = memchr (text, ':', (size_t) (end - text));
    if (colon) {
        snprintf (host, size, "%.*s", (int) (colon - text), text);
        *port = atoi (colon + 1);
    }
    else
        snprintf (host, size, "%.*s", (int) (end - text), text);
    return end;
}

//  Sum of VmRSS (KiB) of the given processes; -1 if one cannot be read.
static long
s_rss_kib (const s_opts_t *opts)
{
    long sum = 0;
    for (int i = 0; i < opts->server_pid_count; i++) {
        char path [64];
        snprintf (path, sizeof path, "/proc/%d/status", (int) opts->server_pids [i]);
        FILE *file = fopen (path, "r");
        if (!file)
            return -1;
        char line [256];
        long rss = -1;
        while (fgets (line, sizeof line, file))
            if (sscanf (line, "VmRSS: %ld", &rss) == 1)
                break;
        fclose (file);
        if (rss < 0)
            return -1;
        sum += rss;
    }
    return sum;
}

//  /proc/net/sockstat's TCP line as an object (mem is in pages).
static json_t *
s_sockstat (void)
{
    FILE *file = fopen ("/proc/net/sockstat", "r");
    if (!file)
        return json_null ();
    char line [256];
    json_t *result = json_null ();
    long inuse, orphan, tw, alloc, mem;
    while (fgets (line, sizeof line, file))
        if (sscanf (line, "TCP: inuse %ld orphan %ld tw %ld alloc %ld mem %ld",
                    &inuse, &orphan, &tw, &alloc, &mem) == 5) {
            json_decref (result);
            result = json_pack ("{s:I, s:I, s:I, s:I, s:I, s:I}", "inuse", (json_int_t) inuse,
                                "orphan", (json_int_t) orphan, "tw", (json_int_t) tw,
                                "alloc", (json_int_t) alloc, "mem_pages", (json_int_t) mem,
                                "mem_kib", (json_int_t) (mem * sysconf (_SC_PAGESIZE) / 1024));
        }
    fclose (file);
    return result;
}

//  Write all of data to a blocking pipe; false if the reader is gone.
static bool
s_write_all (int fd, const char *data, size_t len)
{
    while (len) {
        ssize_t n = write (fd, data, len);
        if (n < 0 && errno == EINTR)
            continue;
        if (n <= 0)
            return false;
        data += n;
        len -= (size_t) n;
    }
    return true;
}

//  --------------------------------------------------------------------------
//  Payload header: "#K:SSSSSSSSSS:TTTTTTTTTTTTTTTTTTTT:UUUUUUUUUU|"

static void
s_header_write (char *payload, char kind, uint32_t seq, uint64_t ts, uint32_t target)
{
    char header [S_HDR_LEN + 1];
    snprintf (header, sizeof header, "#%c:%010u:%020" PRIu64 ":%010u|", kind, seq, ts, target);
    memcpy (payload, header, S_HDR_LEN);
}

static bool
s_digits (const uint8_t *text, int count, uint64_t *value)
{
    uint64_t result = 0;
    for (int i = 0; i < count; i++) {
        if (text [i] < '0' || text [i] > '9')
            return false;
        result = result * 10 + (uint64_t) (text [i] - '0');
    }
    *value = result;
    return true;
}

static bool
s_header_read (const uint8_t *p, char *kind, uint32_t *seq, uint64_t *ts, uint32_t *target)
{
    uint64_t seq64, target64;
    if (p [0] != '#' || p [2] != ':' || p [13] != ':' || p [34] != ':' || p [45] != '|'
    ||  !s_digits (p + 3, 10, &seq64) || !s_digits (p + 14, 20, ts)
    ||  !s_digits (p + 35, 10, &target64) || seq64 > UINT32_MAX || target64 > UINT32_MAX)
        return false;
    *kind = (char) p [1];
    *seq = (uint32_t) seq64;
    *target = (uint32_t) target64;
    return true;
}

//  --------------------------------------------------------------------------
//  Identities: who session g is, and its token

static uint32_t
s_session_user (const s_opts_t *opts, const s_ident_t *ident, uint32_t g)
{
    uint32_t k = g < opts->sessions? g: g - opts->sessions;
    if (ident->tokens)
        return ident->token_user [k % ident->token_count];
    return k % opts->sessions;
}

//  The user id in a token's sub claim (signature not checked). Caller frees.
static char *
s_token_sub (const char *token)
{
    const char *dot = strchr (token, '.');
    const char *dot2 = dot? strchr (dot + 1, '.'): NULL;
    if (!dot2)
        return NULL;
    size_t b64_len = (size_t) (dot2 - dot - 1);
    uint8_t *raw = (uint8_t *) malloc (b64_len + 1);
    size_t raw_len = 0;
    char *sub = NULL;
    if (sodium_base642bin (raw, b64_len + 1, dot + 1, b64_len, NULL, &raw_len, NULL,
                           sodium_base64_VARIANT_URLSAFE_NO_PADDING) == 0) {
        json_t *claims = json_loadb ((const char *) raw, raw_len, 0, NULL);
        const char *value = json_string_value (json_object_get (claims, "sub"));
        if (value)
            sub = strdup (value);
        json_decref (claims);
    }
    free (raw);
    return sub;
}

static uint32_t
s_ident_user (s_ident_t *self, zhashx_t *index, const char *user)
{
    uintptr_t known = (uintptr_t) zhashx_lookup (index, user);
    if (known)
        return (uint32_t) (known - 1);
    self->users = (char **) realloc (self->users, (self->user_count + 1) * sizeof (char *));
    self->users [self->user_count] = strdup (user);
    zhashx_insert (index, user, (void *) (uintptr_t) (self->user_count + 1));
    return self->user_count++;
}

static void
s_ident_free (s_ident_t *self)
{
    for (uint32_t i = 0; i < self->user_count; i++)
        free (self->users [i]);
    for (uint32_t i = 0; i < self->token_count; i++)
        free (self->tokens [i]);
    free (self->users);
    free (self->tokens);
    free (self->token_user);
    memset (self, 0, sizeof *self);
}

//  Build the user table (and read the tokens file). Returns 0, or -1 with
//  a message on stderr.
static int
s_ident_load (s_ident_t *self, const s_opts_t *opts)
{
    memset (self, 0, sizeof *self);
    zhashx_t *index = zhashx_new ();
    int rc = 0;
    if (!opts->tokens_file) {
        for (uint32_t i = 0; i < opts->sessions; i++) {
            char user [WSR_MAX_ID_LEN + 1];
            snprintf (user, sizeof user, "%s%u", opts->user_prefix, i);
            if (!wsr_util_id_valid (user, strlen (user))) {
                fprintf (stderr, "wsrouter bench: user id '%s' is not valid\n", user);
                rc = -1;
                break;
            }
            s_ident_user (self, index, user);
        }
    }
    else {
        FILE *file = fopen (opts->tokens_file, "r");
        if (!file) {
            fprintf (stderr, "wsrouter bench: %s: %s\n", opts->tokens_file, strerror (errno));
            zhashx_destroy (&index);
            return -1;
        }
        char *line = NULL;
        size_t cap = 0;
        ssize_t len;
        while ((len = getline (&line, &cap, file)) >= 0) {
            while (len > 0 && isspace ((unsigned char) line [len - 1]))
                line [--len] = 0;
            char *token = line + strspn (line, " \t");
            if (!*token || *token == '#')
                continue;
            char *space = token + strcspn (token, " \t");
            char *user = NULL;
            if (*space) {
                *space = 0;
                user = strdup (space + 1 + strspn (space + 1, " \t"));
            }
            else
                user = s_token_sub (token);
            if (!user || !wsr_util_id_valid (user, strlen (user))) {
                fprintf (stderr, "wsrouter bench: %s: no valid user for token %u\n",
                         opts->tokens_file, self->token_count + 1);
                free (user);
                rc = -1;
                break;
            }
            self->tokens = (char **) realloc (self->tokens,
                                              (self->token_count + 1) * sizeof (char *));
            self->token_user = (uint32_t *) realloc (self->token_user,
                                                     (self->token_count + 1) * sizeof (uint32_t));
            self->tokens [self->token_count] = strdup (token);
            self->token_user [self->token_count] = s_ident_user (self, index, user);
            self->token_count++;
            free (user);
        }
        free (line);
        fclose (file);
        if (rc == 0 && self->token_count == 0) {
            fprintf (stderr, "wsrouter bench: %s holds no token\n", opts->tokens_file);
            rc = -1;
        }
    }
    zhashx_destroy (&index);
    if (rc)
        s_ident_free (self);
    return rc;
}

//  --------------------------------------------------------------------------
//  Handshake

//  Expected Sec-WebSocket-Accept for key: base64 (SHA-1 (key + GUID)).
static void
s_accept_key (const char *key, char *accept, size_t size)
{
    zdigest_t *digest = zdigest_new ();
    assert (digest);
    zdigest_update (digest, (byte *) key, strlen (key));
    zdigest_update (digest, (byte *) S_WS_GUID, strlen (S_WS_GUID));
    sodium_bin2base64 (accept, size, zdigest_data (digest), zdigest_size (digest),
                       sodium_base64_VARIANT_ORIGINAL);
    zdigest_destroy (&digest);
}

static void
s_hs_unlink (s_run_t *self, s_hs_t *hs)
{
    if (hs->prev)
        hs->prev->next = hs->next;
    else
        self->hs_head = hs->next;
    if (hs->next)
        hs->next->prev = hs->prev;
    else
        self->hs_tail = hs->prev;
}

//  The handshake is over, one way or the other: free its buffers.
static void
s_hs_end (s_run_t *self, s_conn_t *conn)
{
    s_hs_unlink (self, conn->hs);
    free (conn->hs);
    conn->hs = NULL;
    self->inflight--;
}

//  Handshake failed: count it under its cause and close the socket.
static void
s_hs_fail (s_run_t *self, s_conn_t *conn, uint64_t *cause)
{
    s_hs_end (self, conn);
    if (conn->fd >= 0)
        close (conn->fd);
    conn->fd = -1;
    conn->state = S_CONN_FAILED;
    self->rx->failed++;
    (*cause)++;
}

static uint32_t
s_global_index (s_run_t *self, uint32_t index)
{
    return index < self->normal_count? self->first_normal + index
                                     : self->first_slow + (index - self->normal_count);
}

//  Start connection index: socket, source bind, non-blocking connect.
static void
s_conn_start (s_run_t *self, uint32_t index)
{
    const s_opts_t *opts = self->opts;
    s_conn_t *conn = &self->conns [index];
    uint32_t g = s_global_index (self, index);
    const s_url_t *url = &opts->urls [g % (uint32_t) opts->url_count];
    self->rx->attempted++;
    if (!self->rx->t_first_start)
        self->rx->t_first_start = self->now;

    //  Request first: a token that cannot be made is a failed session
    char *minted = NULL;
    const char *token;
    if (self->ident->tokens)
        token = self->ident->tokens [(g < opts->sessions? g: g - opts->sessions)
                                     % self->ident->token_count];
    else {
        int64_t now = (int64_t) time (NULL);
        token = minted = wsr_jwt_mint_hs256 ((const uint8_t *) opts->jwt_secret,
                                             strlen (opts->jwt_secret),
                                             self->ident->users [conn->user], now,
                                             opts->token_ttl_s? now + opts->token_ttl_s: 0,
                                             opts->channel);
    }
    uint8_t raw_key [16];
    randombytes_buf (raw_key, sizeof raw_key);
    char key [32];
    sodium_bin2base64 (key, sizeof key, raw_key, sizeof raw_key,
                       sodium_base64_VARIANT_ORIGINAL);
    size_t room = strlen (url->path) + strlen (url->host) + (token? strlen (token): 0) + 256;
    s_hs_t *hs = (s_hs_t *) zmalloc (sizeof (s_hs_t) + room);
    hs->conn = index;
    hs->started = s_now ();
    s_accept_key (key, hs->accept, sizeof hs->accept);
    int n = snprintf (hs->request, room,
                      "GET %s%ctoken=%s HTTP/1.1\r\nHost: %s\r\nUpgrade: websocket\r\n"
                      "Connection: Upgrade\r\nSec-WebSocket-Key: %s\r\n"
                      "Sec-WebSocket-Version: 13\r\n\r\n",
                      url->path, strchr (url->path, '?')? '&': '?', token? token: "",
                      url->host, key);
    assert (n > 0 && (size_t) n < room);
    hs->request_len = (size_t) n;
    free (minted);
    conn->hs = hs;
    hs->prev = self->hs_tail;
    if (self->hs_tail)
        self->hs_tail->next = hs;
    else
        self->hs_head = hs;
    self->hs_tail = hs;
    self->inflight++;
    conn->state = S_CONN_CONNECTING;
    if (!token) {
        s_hs_fail (self, conn, &self->rx->fail_socket);
        return;
    }

    conn->fd = socket (AF_INET, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
    if (conn->fd < 0) {
        //  No descriptor left (EMFILE): a failed session, not a failed run
        s_hs_fail (self, conn, &self->rx->fail_socket);
        return;
    }
    int one = 1;
    setsockopt (conn->fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
    if (conn->flags & S_FLAG_SLOW) {
        //  Before connect, so that the advertised window stays small
        int small = S_SLOW_RCVBUF;
        setsockopt (conn->fd, SOL_SOCKET, SO_RCVBUF, &small, sizeof small);
    }
    if (opts->src_count) {
        struct sockaddr_in source = { .sin_family = AF_INET };
        source.sin_addr.s_addr = htonl (opts->src_first + self->src_next++ % opts->src_count);
        setsockopt (conn->fd, IPPROTO_IP, IP_BIND_ADDRESS_NO_PORT, &one, sizeof one);
        if (bind (conn->fd, (struct sockaddr *) &source, sizeof source)) {
            s_hs_fail (self, conn, &self->rx->fail_socket);
            return;
        }
    }
    if (connect (conn->fd, (const struct sockaddr *) &url->addr, sizeof url->addr)
    &&  errno != EINPROGRESS) {
        s_hs_fail (self, conn, &self->rx->fail_socket);
        return;
    }
    s_epoll_set (self, EPOLL_CTL_ADD, conn->fd, EPOLLOUT, S_TAG_CONN, index);
}

//  Connected (or failed to): send what is left of the request.
static void
s_hs_write (s_run_t *self, s_conn_t *conn)
{
    s_hs_t *hs = conn->hs;
    if (conn->state == S_CONN_CONNECTING && hs->request_sent == 0) {
        int error = 0;
        socklen_t len = sizeof error;
        if (getsockopt (conn->fd, SOL_SOCKET, SO_ERROR, &error, &len) || error) {
            s_hs_fail (self, conn, &self->rx->fail_socket);
            return;
        }
    }
    ssize_t n = send (conn->fd, hs->request + hs->request_sent,
                      hs->request_len - hs->request_sent, MSG_NOSIGNAL);
    if (n < 0 && (errno == EAGAIN || errno == EINTR))
        return;
    if (n < 0) {
        s_hs_fail (self, conn, &self->rx->fail_socket);
        return;
    }
    hs->request_sent += (size_t) n;
    if (hs->request_sent == hs->request_len) {
        conn->state = S_CONN_HANDSHAKE;
        s_epoll_set (self, EPOLL_CTL_MOD, conn->fd, EPOLLIN, S_TAG_CONN, hs->conn);
    }
}

//  Value of header name in a response head (lines after the first), or
//  NULL; *len is set to its length, trimmed.
static const char *
s_header_find (const char *head, size_t head_len, const char *name, size_t *len)
{
    size_t name_len = strlen (name);
    const char *end = head + head_len;
    const char *line = memchr (head, '\n', head_len);
    while (line && line + 1 < end) {
        line++;
        const char *eol = memchr (line, '\n', (size_t) (end - line));
        if (!eol)
            eol = end;
        if ((size_t) (eol - line) > name_len && strncasecmp (line, name, name_len) == 0
        &&  line [name_len] == ':') {
            const char *value = line + name_len + 1;
            while (value < eol && (*value == ' ' || *value == '\t'))
                value++;
            const char *value_end = eol;
            while (value_end > value && isspace ((unsigned char) value_end [-1]))
                value_end--;
            *len = (size_t) (value_end - value);
            return value;
        }
        line = eol < end? eol: NULL;
    }
    return NULL;
}

//  True if the comma list value contains token (case-insensitive).
static bool
s_list_has (const char *value, size_t len, const char *token)
{
    size_t token_len = strlen (token);
    const char *end = value + len;
    while (value < end) {
        while (value < end && (*value == ' ' || *value == ','))
            value++;
        const char *item = value;
        while (value < end && *value != ',')
            value++;
        const char *item_end = value;
        while (item_end > item && item_end [-1] == ' ')
            item_end--;
        if ((size_t) (item_end - item) == token_len && strncasecmp (item, token, token_len) == 0)
            return true;
    }
    return false;
}

static int s_conn_feed (s_run_t *self, s_conn_t *conn, const uint8_t *data, size_t len);

//  Read the answer; on a valid 101 the session is established.
static void
s_hs_read (s_run_t *self, s_conn_t *conn)
{
    s_hs_t *hs = conn->hs;
    ssize_t n = recv (conn->fd, hs->response + hs->response_len,
                      S_HS_RESPONSE_MAX - hs->response_len, 0);
    if (n < 0 && (errno == EAGAIN || errno == EINTR))
        return;
    if (n <= 0) {
        s_hs_fail (self, conn, &self->rx->fail_eof);
        return;
    }
    int64_t now = s_now ();
    hs->response_len += (size_t) n;
    hs->response [hs->response_len] = 0;
    char *end = strstr (hs->response, "\r\n\r\n");
    if (!end) {
        if (hs->response_len == S_HS_RESPONSE_MAX)
            s_hs_fail (self, conn, &self->rx->fail_response);
        return;
    }
    size_t head_len = (size_t) (end + 4 - hs->response);
    if (strncmp (hs->response, "HTTP/1.1 ", 9) || !isdigit ((unsigned char) hs->response [9])) {
        s_hs_fail (self, conn, &self->rx->fail_response);
        return;
    }
    int status = atoi (hs->response + 9);
    if (status != 101) {
        if (status >= 100 && status < 100 + S_STATUS_SLOTS)
            self->rx->hs_status [status - 100]++;
        s_hs_fail (self, conn, &self->rx->fail_status);
        return;
    }
    size_t len = 0;
    const char *upgrade = s_header_find (hs->response, head_len, "upgrade", &len);
    bool ok = upgrade && s_list_has (upgrade, len, "websocket");
    const char *connection = s_header_find (hs->response, head_len, "connection", &len);
    ok = ok && connection && s_list_has (connection, len, "upgrade");
    const char *accept = s_header_find (hs->response, head_len, "sec-websocket-accept", &len);
    ok = ok && accept && len == strlen (hs->accept) && memcmp (accept, hs->accept, len) == 0;
    if (!ok) {
        s_hs_fail (self, conn, &self->rx->fail_accept);
        return;
    }
    //  Established
    s_hist_add (&self->rx->handshake, (uint64_t) (now - hs->started));
    self->rx->t_last_established = now;
    conn->state = S_CONN_OPEN;
    conn->flags |= S_FLAG_UP;
    conn->next_seq = 1;
    size_t early = hs->response_len - head_len;
    if (conn->flags & S_FLAG_SLOW) {
        self->rx->slow_established++;
        s_epoll_set (self, EPOLL_CTL_MOD, conn->fd, 0, S_TAG_CONN, hs->conn);
        s_hs_end (self, conn);
        return;
    }
    self->rx->established++;
    self->rx->open++;
    //  Frames that came with the 101 are parsed from the handshake buffer
    uint8_t bytes [S_HS_RESPONSE_MAX];
    memcpy (bytes, hs->response + head_len, early);
    s_hs_end (self, conn);
    if (early && s_conn_feed (self, conn, bytes, early) < 0) {
        self->rx->protocol_errors++;
        close (conn->fd);
        conn->fd = -1;
        conn->state = S_CONN_CLOSED;
        self->rx->open--;
    }
}

//  --------------------------------------------------------------------------
//  Frames

//  Send one masked control frame (payload <= 125). Best effort: the socket
//  has nothing else queued, so it fits unless the kernel buffer is full.
static void
s_conn_control (s_run_t *self, s_conn_t *conn, uint8_t opcode, const uint8_t *payload,
                size_t len)
{
    assert (len <= S_CONTROL_MAX);
    uint8_t frame [2 + 4 + S_CONTROL_MAX];
    frame [0] = 0x80 | opcode;
    frame [1] = 0x80 | (uint8_t) len;
    randombytes_buf (frame + 2, 4);
    for (size_t i = 0; i < len; i++)
        frame [6 + i] = payload [i] ^ frame [2 + i % 4];
    ssize_t n;
    do
        n = send (conn->fd, frame, 6 + len, MSG_NOSIGNAL);
    while (n < 0 && errno == EINTR);
    if (n != (ssize_t) (6 + len))
        self->rx->send_errors++;
}

//  A measured, warm-up or final message arrived whole (its first bytes in prefix).
static void
s_conn_message (s_run_t *self, s_conn_t *conn)
{
    s_rx_t *rx = self->rx;
    char kind;
    uint32_t seq, target;
    uint64_t ts;
    if (conn->prefix_len < S_HDR_LEN
    ||  !s_header_read (conn->prefix, &kind, &seq, &ts, &target)) {
        rx->foreign++;
        return;
    }
    bool right = self->opts->channel_mode? target == 0: target == conn->user;
    if (kind == 'W') {
        if (!(conn->flags & S_FLAG_WARM) && right) {
            conn->flags |= S_FLAG_WARM;
            rx->warm++;
        }
        return;
    }
    if (kind == 'F') {
        if (!right)
            rx->misrouted++;
        else
        if (!(conn->flags & S_FLAG_FINAL)) {
            conn->flags |= S_FLAG_FINAL;
            rx->final_received++;
        }
        return;
    }
    if (kind != 'M' || seq == 0) {
        rx->foreign++;
        return;
    }
    if (!right) {
        rx->misrouted++;
        return;
    }
    int64_t now = self->now;
    rx->received++;
    if (!rx->t_first_rx)
        rx->t_first_rx = now;
    rx->t_last_rx = now;
    s_hist_add (&rx->latency, now > (int64_t) ts? (uint64_t) now - ts: 0);
    if (seq >= conn->next_seq) {
        uint64_t shift = (uint64_t) seq - conn->next_seq + 1;
        rx->loss += seq - conn->next_seq;
        conn->window = shift >= 64? 0: conn->window << shift;
        conn->window |= 1;
        conn->next_seq = seq + 1;
    }
    else {
        uint32_t back = conn->next_seq - 1 - seq;
        if (back < 64 && (conn->window & (1ULL << back)))
            rx->duplicates++;
        else {
            //  A gap counted as loss is filled after all (older than the
            //  window: taken as late, not as a duplicate)
            rx->reordered++;
            if (rx->loss)
                rx->loss--;
            if (back < 64)
                conn->window |= 1ULL << back;
        }
    }
}

//  A frame ended. Returns 1 if the connection is closing (ignore the rest).
static int
s_conn_frame (s_run_t *self, s_conn_t *conn)
{
    switch (conn->opcode) {
        case 0x8: {                                 //  close: answer with its code
            uint16_t code = conn->control_len >= 2
                          ? (uint16_t) (conn->control [0] << 8 | conn->control [1]): 0;
            s_conn_control (self, conn, 0x8, conn->control, code? 2: 0);
            int slot = code >= 1000 && code < 1016? code - 1000: 16;
            self->rx->close_codes [code? slot: 5]++;     //  no code: 1005
            self->rx->closed_by_server++;
            self->rx->open--;
            conn->state = S_CONN_CLOSING;
            return 1;
        }
        case 0x9:                                   //  ping
            s_conn_control (self, conn, 0xA, conn->control, conn->control_len);
            self->rx->pongs++;
            return 0;
        case 0xA:                                   //  pong
            return 0;
        default:                                    //  data
            if (conn->fin) {
                s_conn_message (self, conn);
                conn->message_op = 0;
                conn->prefix_len = 0;
            }
            return 0;
    }
}

//  Parse server frames from bytes as they come. Returns 0, 1 if a close
//  arrived (the rest is ignored), -1 on a protocol error.
static int
s_conn_feed (s_run_t *self, s_conn_t *conn, const uint8_t *data, size_t len)
{
    while (len > 0) {
        if (!(conn->flags & S_FLAG_PAYLOAD)) {
            //  The header's size is known once its second byte is in
            size_t need = 2;
            while (true) {
                if (conn->head_len >= 2) {
                    uint8_t len7 = conn->head [1] & 0x7f;
                    need = 2 + (len7 == 126? 2: len7 == 127? 8: 0)
                         + ((conn->head [1] & 0x80)? 4: 0);
                }
                if (conn->head_len >= need || len == 0)
                    break;
                conn->head [conn->head_len++] = *data++;
                len--;
            }
            if (conn->head_len < need)
                return 0;
            uint8_t b0 = conn->head [0], b1 = conn->head [1];
            uint8_t opcode = b0 & 0x0f;
            uint64_t length = b1 & 0x7f;
            if (length == 126)
                length = (uint64_t) conn->head [2] << 8 | conn->head [3];
            else
            if (length == 127) {
                length = 0;
                for (int i = 0; i < 8; i++)
                    length = length << 8 | conn->head [2 + i];
                if (length >> 63)
                    return -1;
            }
            conn->head_len = 0;
            //  A server never masks and uses no extensions here
            if ((b0 & 0x70) || (b1 & 0x80))
                return -1;
            if (opcode >= 0x8) {
                if (opcode > 0xA || !(b0 & 0x80) || length > S_CONTROL_MAX)
                    return -1;
                conn->control_len = 0;
            }
            else
            if (opcode == 0x1 || opcode == 0x2) {
                if (conn->message_op)
                    return -1;
                conn->message_op = opcode;
                conn->prefix_len = 0;
            }
            else
            if (opcode != 0x0 || !conn->message_op)
                return -1;
            conn->opcode = opcode;
            conn->fin = (b0 & 0x80) != 0;
            conn->remaining = length;
            if (length == 0) {
                int rc = s_conn_frame (self, conn);
                if (rc)
                    return rc;
            }
            else
                conn->flags |= S_FLAG_PAYLOAD;
        }
        else {
            size_t take = conn->remaining < len? (size_t) conn->remaining: len;
            if (conn->opcode >= 0x8) {
                memcpy (conn->control + conn->control_len, data, take);
                conn->control_len += (uint8_t) take;
            }
            else
            if (conn->prefix_len < S_HDR_LEN) {
                size_t keep = S_HDR_LEN - conn->prefix_len;
                if (keep > take)
                    keep = take;
                memcpy (conn->prefix + conn->prefix_len, data, keep);
                conn->prefix_len += (uint8_t) keep;
            }
            data += take;
            len -= take;
            conn->remaining -= take;
            if (conn->remaining == 0) {
                conn->flags &= ~S_FLAG_PAYLOAD;
                int rc = s_conn_frame (self, conn);
                if (rc)
                    return rc;
            }
        }
    }
    return 0;
}

//  The server closed the connection (EOF, reset) or broke the protocol.
static void
s_conn_gone (s_run_t *self, s_conn_t *conn)
{
    if (conn->flags & S_FLAG_SLOW) {
        if (!(conn->flags & S_FLAG_RESOLVED)) {
            conn->flags |= S_FLAG_RESOLVED;
            self->rx->slow_closed++;
            if (self->slow_pending)
                self->slow_pending--;
        }
    }
    else
    if (conn->state == S_CONN_OPEN) {
        self->rx->closed_by_server++;
        self->rx->close_codes [6]++;                //  1006: no close frame
        self->rx->open--;
    }
    close (conn->fd);
    conn->fd = -1;
    conn->state = S_CONN_CLOSED;
}

//  Readable established connection: read a bounded amount, parse it.
static void
s_conn_read (s_run_t *self, s_conn_t *conn)
{
    for (int i = 0; i < S_READS_PER_WAKE; i++) {
        ssize_t n = recv (conn->fd, self->scratch, S_READ_CHUNK, 0);
        if (n < 0 && errno == EINTR)
            continue;
        if (n < 0 && errno == EAGAIN)
            return;
        if (n <= 0) {
            s_conn_gone (self, conn);
            return;
        }
        self->now = s_now ();
        if (conn->state == S_CONN_OPEN && !(conn->flags & S_FLAG_SLOW)) {
            int rc = s_conn_feed (self, conn, self->scratch, (size_t) n);
            if (rc < 0) {
                self->rx->protocol_errors++;
                self->rx->open--;
                close (conn->fd);
                conn->fd = -1;
                conn->state = S_CONN_CLOSED;
                return;
            }
        }
        if (n < S_READ_CHUNK)
            return;
    }
}

static void
s_conn_event (s_run_t *self, uint32_t index, uint32_t events)
{
    if (index >= self->conn_count)
        return;
    s_conn_t *conn = &self->conns [index];
    if (conn->fd < 0)
        return;
    if (conn->state == S_CONN_CONNECTING)
        s_hs_write (self, conn);
    else
    if (conn->state == S_CONN_HANDSHAKE)
        s_hs_read (self, conn);
    else
    if ((conn->flags & S_FLAG_SLOW) && !self->ending) {
        //  Not reading yet: only an error or hang-up is reported
        if (events & (EPOLLERR | EPOLLHUP))
            s_conn_gone (self, conn);
    }
    else
        s_conn_read (self, conn);
}

//  --------------------------------------------------------------------------
//  Receiving side: ramp, timeouts, drain

static bool
s_rx_connect_done (s_run_t *self)
{
    return self->started == self->conn_count && self->inflight == 0;
}

//  Last measured sequence sent to the target of conn.
static uint64_t
s_expected_last (s_run_t *self, s_conn_t *conn)
{
    if (self->opts->channel_mode)
        return self->published;
    uint64_t users = self->ident->user_count;
    return self->published / users + (conn->user < self->published % users? 1: 0);
}

//  Publishing is over ("E"): work out what to expect, start reading slow sessions.
static void
s_rx_end (s_run_t *self, uint64_t published, uint64_t final_sent)
{
    if (self->ending)
        return;
    self->ending = true;
    self->published = published;
    self->final_sent = final_sent;
    self->end_deadline = self->now + (self->interrupted? 500 * S_MS: self->opts->drain_ns);
    self->slow_deadline = self->now + S_SLOW_CHECK_NS;
    s_rx_t *rx = self->rx;
    for (uint32_t i = 0; i < self->conn_count; i++) {
        s_conn_t *conn = &self->conns [i];
        if (!(conn->flags & S_FLAG_UP))
            continue;
        if (conn->flags & S_FLAG_SLOW) {
            if (conn->fd >= 0) {
                s_epoll_set (self, EPOLL_CTL_MOD, conn->fd, EPOLLIN, S_TAG_CONN, i);
                self->slow_pending++;
            }
            continue;
        }
        rx->expected += s_expected_last (self, conn);
        if (final_sent)
            rx->final_expected++;
    }
}

//  Drain over: missing tails become loss; unread slow sessions are judged
//  by their TCP state; handshakes still going are aborted.
static void
s_rx_finish (s_run_t *self)
{
    s_rx_t *rx = self->rx;
    for (uint32_t i = 0; i < self->conn_count; i++) {
        s_conn_t *conn = &self->conns [i];
        if (conn->hs) {
            s_hs_fail (self, conn, &rx->fail_aborted);
            continue;
        }
        if (!(conn->flags & S_FLAG_UP))
            continue;
        if (conn->flags & S_FLAG_SLOW) {
            if (conn->fd >= 0 && !(conn->flags & S_FLAG_RESOLVED)) {
                struct tcp_info info;
                socklen_t len = sizeof info;
                if (getsockopt (conn->fd, IPPROTO_TCP, TCP_INFO, &info, &len) == 0
                &&  info.tcpi_state == TCP_CLOSE_WAIT)
                    rx->slow_closed++;
                conn->flags |= S_FLAG_RESOLVED;
            }
            continue;
        }
        uint64_t last = s_expected_last (self, conn);
        if (last + 1 > conn->next_seq)
            rx->loss += last + 1 - conn->next_seq;
    }
    self->rx_done = true;
}

static void
s_rx_tick (s_run_t *self)
{
    const s_opts_t *opts = self->opts;
    if (!self->ending && self->started < self->conn_count) {
        if (!self->ramp_t0)
            self->ramp_t0 = self->now;
        double due = (double) (self->now - self->ramp_t0) * self->ramp / 1e9 + 1;
        int budget = S_START_BATCH;
        while (self->started < self->conn_count && self->inflight < self->inflight_max
           &&  (double) self->started < due && budget-- > 0)
            s_conn_start (self, self->started++);
    }
    while (self->hs_head && self->now - self->hs_head->started >= opts->handshake_timeout_ns)
        s_hs_fail (self, &self->conns [self->hs_head->conn], &self->rx->fail_timeout);
    if (self->ending && !self->rx_done) {
        bool slow_done = self->slow_pending == 0 || self->now >= self->slow_deadline;
        bool complete = self->rx->received >= self->rx->expected
                     && self->rx->final_received >= self->rx->final_expected
                     && self->inflight == 0;
        if ((complete && slow_done) || self->now >= self->end_deadline)
            s_rx_finish (self);
    }
}

//  --------------------------------------------------------------------------
//  Publisher

//  Connect a blocking-then-non-blocking TCP socket to the publisher; -1 on failure.
static int
s_tcp_connect (const struct sockaddr_in *addr)
{
    int fd = socket (AF_INET, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
    if (fd < 0)
        return -1;
    if (connect (fd, (const struct sockaddr *) addr, sizeof *addr) && errno != EINPROGRESS) {
        close (fd);
        return -1;
    }
    struct pollfd item = { .fd = fd, .events = POLLOUT };
    int error = 0;
    socklen_t len = sizeof error;
    if (poll (&item, 1, S_CONNECT_TIMEOUT_MS) != 1
    ||  getsockopt (fd, SOL_SOCKET, SO_ERROR, &error, &len) || error) {
        close (fd);
        return -1;
    }
    int one = 1;
    setsockopt (fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
    return fd;
}

static void
s_pub_want_write (s_run_t *self, bool want)
{
    s_pub_t *pub = &self->pub;
    if (pub->fd >= 0 && want != pub->want_write) {
        pub->want_write = want;
        s_epoll_set (self, EPOLL_CTL_MOD, pub->fd, EPOLLIN | (want? EPOLLOUT: 0), S_TAG_PUB, 0);
    }
}

//  The oldest request in flight was answered (ok or not).
static void
s_pub_answered (s_run_t *self, bool ok)
{
    s_pub_t *pub = &self->pub;
    if (!pub->inflight)
        return;
    int kind = pub->ring [pub->ring_head];
    pub->ring_head = (pub->ring_head + 1) % self->opts->pipeline;
    pub->inflight--;
    if (ok)
        pub->accepted [kind]++;
    else
        pub->errors [kind]++;
}

//  A request is on its way; its answer will be the last one.
static void
s_pub_pending (s_run_t *self, char kind)
{
    s_pub_t *pub = &self->pub;
    assert (pub->inflight < self->opts->pipeline);
    pub->ring [(pub->ring_head + pub->inflight) % self->opts->pipeline] =
        (uint8_t) s_kind_index (kind);
    pub->inflight++;
}

//  Connection lost: what was in flight is lost; reconnect later.
static void
s_pub_lost (s_run_t *self, const char *why)
{
    s_pub_t *pub = &self->pub;
    if (pub->inflight)
        zsys_warning ("bench: publisher connection lost (%s), %u in flight", why, pub->inflight);
    pub->lost_inflight += pub->inflight;
    while (pub->inflight)
        s_pub_answered (self, false);
    pub->auth_pending = 0;
    if (pub->fd >= 0)
        s_epoll_set (self, EPOLL_CTL_DEL, pub->fd, 0, S_TAG_PUB, 0);
    if (pub->redis)
        redisFree (pub->redis);             //  closes the fd
    else
    if (pub->fd >= 0)
        close (pub->fd);
    pub->redis = NULL;
    pub->fd = -1;
    pub->want_write = false;
    s_buf_reset (&pub->out);
    s_buf_reset (&pub->in);
    pub->retry_at = self->now + S_RETRY_NS;
}

//  Make sure there is a connection; returns false if there is none now.
static bool
s_pub_connect (s_run_t *self)
{
    const s_opts_t *opts = self->opts;
    s_pub_t *pub = &self->pub;
    if (opts->pub_kind == S_PUB_NATS)
        return pub->nats != NULL;
    if (pub->fd >= 0)
        return true;
    if (self->now < pub->retry_at)
        return false;
    if (opts->pub_kind == S_PUB_HTTP) {
        pub->fd = s_tcp_connect (&opts->pub_addr);
        if (pub->fd < 0) {
            pub->retry_at = self->now + S_RETRY_NS;
            return false;
        }
    }
    else {
        char ip [INET_ADDRSTRLEN];
        inet_ntop (AF_INET, &opts->pub_addr.sin_addr, ip, sizeof ip);
        pub->redis = redisConnectNonBlock (ip, opts->pub_port);
        if (!pub->redis || pub->redis->err) {
            if (pub->redis)
                redisFree (pub->redis);
            pub->redis = NULL;
            pub->retry_at = self->now + S_RETRY_NS;
            return false;
        }
        pub->fd = pub->redis->fd;
        if (*opts->redis_password) {
            if (*opts->redis_user)
                redisAppendCommand (pub->redis, "AUTH %s %s", opts->redis_user,
                                    opts->redis_password);
            else
                redisAppendCommand (pub->redis, "AUTH %s", opts->redis_password);
            pub->auth_pending = 1;
        }
    }
    pub->connects++;
    pub->want_write = true;
    s_epoll_set (self, EPOLL_CTL_ADD, pub->fd, EPOLLIN | EPOLLOUT, S_TAG_PUB, 0);
    return true;
}

//  True if one more message can be handed to the transport now.
static bool
s_pub_ready (s_run_t *self)
{
    s_pub_t *pub = &self->pub;
    bool ready = s_pub_connect (self);
    if (ready && self->opts->pub_kind == S_PUB_NATS)
        ready = natsConnection_Buffered (pub->nats) < S_NATS_MAX_BUFFERED;
    else
    if (ready)
        ready = pub->inflight < self->opts->pipeline;
    if (ready)
        pub->blocked_since = 0;
    else
    if (!pub->blocked_since)
        pub->blocked_since = self->now;
    return ready && !pub->stalled;
}

//  Write what is queued (HTTP bytes, hiredis' output buffer).
static void
s_pub_flush (s_run_t *self)
{
    s_pub_t *pub = &self->pub;
    if (pub->fd < 0)
        return;
    if (pub->redis) {
        int done = 0;
        if (redisBufferWrite (pub->redis, &done) != REDIS_OK) {
            s_pub_lost (self, pub->redis->errstr);
            return;
        }
        s_pub_want_write (self, !done);
        return;
    }
    while (s_buf_size (&pub->out)) {
        ssize_t n = send (pub->fd, pub->out.data + pub->out.off, s_buf_size (&pub->out),
                          MSG_NOSIGNAL);
        if (n < 0 && errno == EINTR)
            continue;
        if (n < 0 && errno == EAGAIN)
            break;
        if (n < 0) {
            s_pub_lost (self, strerror (errno));
            return;
        }
        pub->out.off += (size_t) n;
    }
    s_pub_want_write (self, s_buf_size (&pub->out) > 0);
}

//  Hand one message to the transport (s_pub_ready said yes).
static void
s_pub_send (s_run_t *self, char kind, uint32_t seq, uint32_t target)
{
    const s_opts_t *opts = self->opts;
    s_pub_t *pub = &self->pub;
    const char *id = opts->channel_mode? opts->channel: self->ident->users [target];
    s_header_write (pub->payload, kind, seq, (uint64_t) s_now (), target);
    pub->sent++;
    if (opts->pub_kind == S_PUB_HTTP) {
        char head [1024], body [WSR_MAX_ID_LEN + 64];
        int body_len = snprintf (body, sizeof body, "{\"%s\":\"%s\",\"data\":\"",
                                 opts->channel_mode? "channel": "user", id);
        int head_len = snprintf (head, sizeof head,
                                 "POST /api/publish HTTP/1.1\r\nHost: %s\r\n"
                                 "Authorization: apikey %s\r\n"
                                 "Content-Type: application/json\r\nContent-Length: %zu\r\n\r\n",
                                 opts->pub_host, opts->api_key,
                                 (size_t) body_len + opts->size + 2);
        assert (head_len > 0 && (size_t) head_len < sizeof head);
        s_buf_append (&pub->out, head, (size_t) head_len);
        s_buf_append (&pub->out, body, (size_t) body_len);
        s_buf_append (&pub->out, pub->payload, opts->size);
        s_buf_append (&pub->out, "\"}", 2);
        s_pub_pending (self, kind);
    }
    else
    if (opts->pub_kind == S_PUB_REDIS) {
        char channel [512];
        s_subst (channel, sizeof channel,
                 opts->channel_mode? opts->redis_channel_tpl: opts->redis_user_tpl, id);
        redisAppendCommand (pub->redis, "PUBLISH %b %b", channel, strlen (channel),
                            pub->payload, opts->size);
        s_pub_pending (self, kind);
    }
    else {
        char subject [512];
        s_subst (subject, sizeof subject,
                 opts->channel_mode? opts->nats_channel_tpl: opts->nats_user_tpl, id);
        natsStatus status = natsConnection_Publish (pub->nats, subject, pub->payload,
                                                    (int) opts->size);
        if (status == NATS_OK)
            pub->accepted [s_kind_index (kind)]++;
        else
            pub->errors [s_kind_index (kind)]++;
    }
}

//  Parse HTTP answers: one per request, in order (pipelining).
static void
s_pub_http_answers (s_run_t *self)
{
    s_pub_t *pub = &self->pub;
    while (s_buf_size (&pub->in)) {
        char *start = pub->in.data + pub->in.off;
        size_t avail = s_buf_size (&pub->in);
        char *end = memmem (start, avail, "\r\n\r\n", 4);
        if (!end)
            return;
        size_t head_len = (size_t) (end + 4 - start);
        size_t len = 0;
        const char *length = s_header_find (start, head_len, "content-length", &len);
        size_t body = length? (size_t) strtoul (length, NULL, 10): 0;
        if (avail < head_len + body)
            return;
        int status = strncmp (start, "HTTP/1.", 7) == 0? atoi (start + 9): 0;
        const char *connection = s_header_find (start, head_len, "connection", &len);
        bool closing = connection && s_list_has (connection, len, "close");
        pub->in.off += head_len + body;
        if (status >= 100 && status < 100 + S_STATUS_SLOTS)
            pub->status [status - 100]++;
        s_pub_answered (self, status >= 200 && status < 300);
        if (closing) {
            s_pub_lost (self, "server closes");
            return;
        }
    }
}

static void
s_pub_event (s_run_t *self, uint32_t events)
{
    s_pub_t *pub = &self->pub;
    if (pub->fd < 0)
        return;
    if (pub->redis) {
        if (events & (EPOLLIN | EPOLLERR | EPOLLHUP)) {
            if (redisBufferRead (pub->redis) != REDIS_OK) {
                s_pub_lost (self, pub->redis->errstr);
                return;
            }
            void *reply = NULL;
            while (redisGetReply (pub->redis, &reply) == REDIS_OK && reply) {
                redisReply *r = (redisReply *) reply;
                if (pub->auth_pending) {
                    pub->auth_pending--;
                    if (r->type == REDIS_REPLY_ERROR)
                        zsys_error ("bench: Redis AUTH: %s", r->str);
                }
                else {
                    s_pub_answered (self, r->type == REDIS_REPLY_INTEGER);
                    if (r->type == REDIS_REPLY_INTEGER && r->integer == 0)
                        pub->no_receiver++;
                }
                freeReplyObject (reply);
                reply = NULL;
            }
            if (pub->redis->err) {
                s_pub_lost (self, pub->redis->errstr);
                return;
            }
        }
        if (events & EPOLLOUT)
            s_pub_flush (self);
        return;
    }
    if (events & (EPOLLIN | EPOLLERR | EPOLLHUP)) {
        char buf [65536];
        ssize_t n;
        while ((n = recv (pub->fd, buf, sizeof buf, 0)) > 0) {
            s_buf_append (&pub->in, buf, (size_t) n);
            if (n < (ssize_t) sizeof buf)
                break;
        }
        if (n == 0 || (n < 0 && errno != EAGAIN && errno != EINTR)) {
            s_pub_http_answers (self);
            if (pub->fd >= 0)
                s_pub_lost (self, n == 0? "closed": strerror (errno));
            return;
        }
        s_pub_http_answers (self);
    }
    if (pub->fd >= 0 && (events & EPOLLOUT))
        s_pub_flush (self);
}

//  True when every message handed over has been answered.
static bool
s_pub_idle (s_run_t *self)
{
    s_pub_t *pub = &self->pub;
    if (self->opts->pub_kind == S_PUB_NATS) {
        if (pub->nats && !pub->flushed) {
            //  One bounded round trip: everything buffered has reached the server
            if (natsConnection_FlushTimeout (pub->nats, S_NATS_FLUSH_MS) != NATS_OK)
                zsys_warning ("bench: NATS flush did not complete");
            pub->flushed = true;
        }
        return true;
    }
    return pub->inflight == 0;
}

//  --------------------------------------------------------------------------
//  Controller (the publishing process): totals, phases, pumping

static void
s_totals (s_run_t *self, uint64_t *totals)
{
    memset (totals, 0, S_T_COUNT * sizeof (uint64_t));
    if (self->role == S_ROLE_LOCAL) {
        s_rx_t *rx = self->rx;
        totals [S_T_DONE] = s_rx_connect_done (self);
        totals [S_T_ATTEMPTED] = rx->attempted;
        totals [S_T_ESTABLISHED] = rx->established;
        totals [S_T_SLOW] = rx->slow_established;
        totals [S_T_FAILED] = rx->failed;
        totals [S_T_OPEN] = rx->open;
        totals [S_T_WARM] = rx->warm;
        totals [S_T_RECEIVED] = rx->received;
        totals [S_T_FINAL] = rx->final_received;
        return;
    }
    totals [S_T_DONE] = 1;
    for (int i = 0; i < self->child_count; i++) {
        s_child_t *child = &self->children [i];
        bool gone = child->status_fd < 0;
        for (int t = 0; t < S_T_COUNT; t++)
            if (t == S_T_DONE)
                totals [t] &= gone || child->stat [t];
            else
                totals [t] += child->stat [t];
    }
}

static void
s_memory_reading (s_run_t *self, const char *rss_key, const char *sockstat_key)
{
    long rss = self->opts->server_pid_count? s_rss_kib (self->opts): -1;
    json_object_set_new (self->memory, rss_key, rss >= 0? json_integer (rss): json_null ());
    json_object_set_new (self->memory, sockstat_key, s_sockstat ());
}

static void
s_phase (s_run_t *self, s_phase_t phase)
{
    self->phase = phase;
    wsr_debug ("bench: phase %s", s_phase_names [phase]);
}

//  Tell the receivers publishing is over.
static void
s_ctl_end (s_run_t *self)
{
    if (self->role == S_ROLE_LOCAL) {
        self->interrupted = self->interrupted || s_interrupted;
        s_rx_end (self, self->sent_measured, self->final_count);
    }
    else {
        char line [128];
        int n = snprintf (line, sizeof line, "E %" PRIu64 " %" PRIu64 " %d\n",
                          self->sent_measured, self->final_count, self->interrupted? 1: 0);
        for (int i = 0; i < self->child_count; i++)
            if (self->children [i].cmd_fd >= 0
            &&  !s_write_all (self->children [i].cmd_fd, line, (size_t) n)) {
                close (self->children [i].cmd_fd);
                self->children [i].cmd_fd = -1;
            }
    }
    self->phase_deadline = self->now + self->opts->drain_ns + S_CHILD_GRACE_NS;
    s_phase (self, S_PHASE_DRAIN);
}

//  Send a bounded batch of the current round (warm-up or final).
static void
s_ctl_round (s_run_t *self, char kind)
{
    int budget = S_PUB_BATCH;
    while (self->round_active && budget-- > 0 && s_pub_ready (self)) {
        s_pub_send (self, kind, 0, self->round_next);
        if (kind == 'F')
            self->final_count++;
        if (++self->round_next == self->target_count)
            self->round_active = false;
    }
    s_pub_flush (self);
}

//  Measured messages: as many as the rate allows now, round robin.
static void
s_ctl_measured (s_run_t *self)
{
    const s_opts_t *opts = self->opts;
    uint64_t allowed = S_PUB_BATCH;
    if (opts->rate > 0) {
        double due = (double) (self->now - self->t_pub_start) * opts->rate / 1e9 + 1;
        allowed = due > (double) self->sent_measured? (uint64_t) due - self->sent_measured: 0;
        if (allowed > S_PUB_BATCH)
            allowed = S_PUB_BATCH;
    }
    if (opts->messages && allowed > opts->messages - self->sent_measured)
        allowed = opts->messages - self->sent_measured;
    while (allowed-- > 0 && s_pub_ready (self)) {
        uint32_t target = self->rr;
        s_pub_send (self, 'M', ++self->seq [target], target);
        self->sent_measured++;
        if (++self->rr == self->target_count)
            self->rr = 0;
    }
    s_pub_flush (self);
}

static bool
s_ctl_publishing (const s_opts_t *opts)
{
    return opts->pub_kind != S_PUB_NONE
        && (opts->messages || opts->duration_ns || opts->final_publish);
}

static void
s_ctl_tick (s_run_t *self)
{
    const s_opts_t *opts = self->opts;
    uint64_t totals [S_T_COUNT];
    s_totals (self, totals);
    if (s_interrupted && !self->interrupted) {
        self->interrupted = true;
        if (self->phase < S_PHASE_FLUSH) {
            if (self->phase == S_PHASE_PUBLISH)
                self->t_pub_end = self->now;
            self->phase_deadline = self->now + 500 * S_MS;
            s_phase (self, S_PHASE_FLUSH);
        }
    }
    //  A backplane that takes nothing for this long ends publishing (the
    //  receivers still count what is missing)
    s_pub_t *pub = &self->pub;
    if (!pub->stalled && pub->blocked_since && self->now - pub->blocked_since > S_PUB_STALL_NS
    &&  self->phase >= S_PHASE_WARMUP && self->phase <= S_PHASE_FINAL) {
        zsys_warning ("bench: publisher blocked for %d s (%s): publishing stopped",
                      (int) (S_PUB_STALL_NS / S_SEC), pub->fd < 0 && !pub->nats
                      ? "no connection": "no answers");
        pub->stalled = true;
    }
    switch (self->phase) {
        case S_PHASE_CONNECT:
            if (totals [S_T_DONE]) {
                self->t_up = self->now;
                s_memory_reading (self, "rss_up_kib", "sockstat_after");
                self->phase_deadline = self->now + opts->hold_ns;
                s_phase (self, S_PHASE_HOLD);
            }
            break;
        case S_PHASE_HOLD:
            if (self->now >= self->phase_deadline) {
                if (s_ctl_publishing (opts)) {
                    self->phase_deadline = self->now + opts->warmup_ns;
                    self->next_round = self->now;
                    s_phase (self, S_PHASE_WARMUP);
                }
                else {
                    self->phase_deadline = self->now;
                    s_phase (self, S_PHASE_FLUSH);
                }
            }
            break;
        case S_PHASE_WARMUP:
            if (totals [S_T_WARM] >= totals [S_T_OPEN] || self->now >= self->phase_deadline
            ||  pub->stalled) {
                if (totals [S_T_WARM] < totals [S_T_OPEN])
                    zsys_warning ("bench: warm-up timed out: %" PRIu64 " of %" PRIu64
                                  " sessions saw a message", totals [S_T_WARM], totals [S_T_OPEN]);
                self->round_active = false;
                self->t_warm = self->now;
                self->t_pub_start = self->now;
                self->phase_deadline = self->now + (opts->duration_ns? opts->duration_ns
                                                                     : S_PUBLISH_TIMEOUT_NS);
                s_phase (self, S_PHASE_PUBLISH);
                break;
            }
            if (!self->round_active && self->now >= self->next_round) {
                self->round_active = true;
                self->round_next = 0;
                self->warm_rounds++;
            }
            if (self->round_active) {
                s_ctl_round (self, 'W');
                if (!self->round_active)
                    self->next_round = self->now + S_WARMUP_ROUND_NS;
            }
            break;
        case S_PHASE_PUBLISH:
            if ((opts->messages && self->sent_measured >= opts->messages)
            ||  (!opts->messages && !opts->duration_ns)
            ||  self->now >= self->phase_deadline || pub->stalled) {
                self->t_pub_end = self->now;
                if (opts->final_publish) {
                    self->round_active = true;
                    self->round_next = 0;
                    self->phase_deadline = self->now + S_FINAL_TIMEOUT_NS;
                    s_phase (self, S_PHASE_FINAL);
                }
                else {
                    self->phase_deadline = self->now + opts->drain_ns;
                    s_phase (self, S_PHASE_FLUSH);
                }
                break;
            }
            s_ctl_measured (self);
            break;
        case S_PHASE_FINAL:
            s_ctl_round (self, 'F');
            if (self->round_active && (pub->stalled || self->now >= self->phase_deadline)) {
                zsys_warning ("bench: final round incomplete: %" PRIu64 " of %u sent",
                              self->final_count, self->target_count);
                self->round_active = false;
            }
            if (!self->round_active) {
                self->phase_deadline = self->now + opts->drain_ns;
                s_phase (self, S_PHASE_FLUSH);
            }
            break;
        case S_PHASE_FLUSH:
            s_pub_flush (self);
            if (s_pub_idle (self) || self->now >= self->phase_deadline)
                s_ctl_end (self);
            break;
        case S_PHASE_DRAIN: {
            bool done = true;
            if (self->role == S_ROLE_LOCAL)
                done = self->rx_done;
            else
                for (int i = 0; i < self->child_count; i++)
                    done = done && (self->children [i].result
                                ||  self->children [i].status_fd < 0);
            if (done || self->now >= self->phase_deadline) {
                s_memory_reading (self, "rss_end_kib", "sockstat_end");
                s_phase (self, S_PHASE_END);
            }
            break;
        }
        case S_PHASE_END:
            break;
    }
}

static void
s_progress (s_run_t *self, bool force)
{
    if (self->opts->quiet || (!force && self->now < self->next_progress))
        return;
    self->next_progress = self->now + S_PROGRESS_NS;
    uint64_t totals [S_T_COUNT];
    s_totals (self, totals);
    uint64_t target = (uint64_t) self->opts->sessions + self->opts->slow;
    uint64_t inflight = totals [S_T_ATTEMPTED] - totals [S_T_ESTABLISHED] - totals [S_T_SLOW]
                      - totals [S_T_FAILED];
    fprintf (stderr, "bench: %6.1fs %-7s sessions %" PRIu64 "/%" PRIu64 " (%" PRIu64
             " in progress, %" PRIu64 " failed, %" PRIu64 " open)  published %" PRIu64
             " (%" PRIu64 " answered, %" PRIu64 " errors)  received %" PRIu64 "\n",
             (double) (self->now - self->t_start) / 1e9, s_phase_names [self->phase],
             totals [S_T_ESTABLISHED] + totals [S_T_SLOW], target, inflight, totals [S_T_FAILED],
             totals [S_T_OPEN], self->sent_measured, self->pub.accepted [0],
             self->pub.errors [0],
             totals [S_T_RECEIVED]);
}

//  --------------------------------------------------------------------------
//  Children (parent side)

static void
s_child_line (s_run_t *self, s_child_t *child, char *line)
{
    if (line [0] == 'S') {
        uint64_t v [S_T_COUNT];
        if (sscanf (line + 1, " %" SCNu64 " %" SCNu64 " %" SCNu64 " %" SCNu64 " %" SCNu64
                    " %" SCNu64 " %" SCNu64 " %" SCNu64 " %" SCNu64, &v [0], &v [1], &v [2],
                    &v [3], &v [4], &v [5], &v [6], &v [7], &v [8]) == S_T_COUNT)
            memcpy (child->stat, v, sizeof v);
    }
    else
    if (line [0] == 'R' && !child->result) {
        json_error_t error;
        json_t *json = json_loads (line + 2, 0, &error);
        if (json) {
            s_rx_merge (self->rx, json);
            child->result = true;
            json_decref (json);
        }
        else
            zsys_error ("bench: bad result from child %d: %s", (int) child->pid, error.text);
    }
}

static void
s_child_event (s_run_t *self, uint32_t index)
{
    if (index >= (uint32_t) self->child_count)
        return;
    s_child_t *child = &self->children [index];
    if (child->status_fd < 0)
        return;
    char buf [65536];
    ssize_t n;
    while ((n = read (child->status_fd, buf, sizeof buf)) > 0) {
        s_buf_append (&child->line, buf, (size_t) n);
        child->line.data [child->line.len] = 0;
        char *start;
        char *newline;
        while ((newline = memchr ((start = child->line.data + child->line.off), '\n',
                                  s_buf_size (&child->line)))) {
            *newline = 0;
            s_child_line (self, child, start);
            child->line.off += (size_t) (newline + 1 - start);
        }
    }
    if (n == 0 || (n < 0 && errno != EAGAIN && errno != EINTR)) {
        if (!child->result)
            zsys_error ("bench: child %d ended without a result", (int) child->pid);
        s_epoll_set (self, EPOLL_CTL_DEL, child->status_fd, 0, S_TAG_CHILD, index);
        close (child->status_fd);
        child->status_fd = -1;
    }
}

//  --------------------------------------------------------------------------
//  Child side: commands and status

static void
s_child_status (s_run_t *self)
{
    if (self->now < self->next_status || self->status_fd < 0)
        return;
    self->next_status = self->now + S_STATUS_NS;
    s_rx_t *rx = self->rx;
    char line [256];
    int n = snprintf (line, sizeof line, "S %d %" PRIu64 " %" PRIu64 " %" PRIu64 " %" PRIu64
                      " %" PRIu64 " %" PRIu64 " %" PRIu64 " %" PRIu64 "\n",
                      s_rx_connect_done (self)? 1: 0, rx->attempted, rx->established,
                      rx->slow_established, rx->failed, rx->open, rx->warm, rx->received,
                      rx->final_received);
    if (!s_write_all (self->status_fd, line, (size_t) n))
        self->exit_now = true;
}

static void
s_cmd_event (s_run_t *self)
{
    char buf [256];
    ssize_t n = read (self->cmd_fd, buf, sizeof buf);
    if (n < 0 && (errno == EAGAIN || errno == EINTR))
        return;
    if (n <= 0) {
        //  The parent is gone: finish now
        s_epoll_set (self, EPOLL_CTL_DEL, self->cmd_fd, 0, S_TAG_CMD, 0);
        close (self->cmd_fd);
        self->cmd_fd = -1;
        if (!self->ending)
            s_rx_end (self, 0, 0);
        self->exit_now = true;
        return;
    }
    s_buf_append (&self->cmd_line, buf, (size_t) n);
    self->cmd_line.data [self->cmd_line.len] = 0;
    char *start;
    char *newline;
    while ((newline = strchr ((start = self->cmd_line.data + self->cmd_line.off), '\n'))) {
        *newline = 0;
        uint64_t published = 0, final_sent = 0;
        int interrupted = 0;
        if (start [0] == 'E' && sscanf (start + 1, " %" SCNu64 " %" SCNu64 " %d", &published,
                                        &final_sent, &interrupted) == 3) {
            self->interrupted = interrupted != 0;
            s_rx_end (self, published, final_sent);
        }
        else
        if (start [0] == 'X')
            self->exit_now = true;
        self->cmd_line.off += (size_t) (newline + 1 - start);
    }
}

//  --------------------------------------------------------------------------
//  The run

static void
s_run_destroy (s_run_t **self_p)
{
    assert (self_p);
    if (*self_p) {
        s_run_t *self = *self_p;
        for (uint32_t i = 0; i < self->conn_count; i++) {
            if (self->conns [i].hs) {
                s_hs_unlink (self, self->conns [i].hs);
                free (self->conns [i].hs);
            }
            if (self->conns [i].fd >= 0)
                close (self->conns [i].fd);
        }
        free (self->conns);
        free (self->rx);
        free (self->scratch);
        s_pub_t *pub = &self->pub;
        if (pub->redis)
            redisFree (pub->redis);
        else
        if (pub->fd >= 0)
            close (pub->fd);
        if (pub->nats)
            natsConnection_Destroy (pub->nats);
        s_buf_free (&pub->out);
        s_buf_free (&pub->in);
        free (pub->payload);
        free (pub->ring);
        for (int i = 0; i < self->child_count; i++) {
            s_child_t *child = &self->children [i];
            if (child->cmd_fd >= 0)
                close (child->cmd_fd);
            if (child->status_fd >= 0)
                close (child->status_fd);
            s_buf_free (&child->line);
        }
        s_buf_free (&self->cmd_line);
        if (self->cmd_fd >= 0)
            close (self->cmd_fd);
        if (self->status_fd >= 0)
            close (self->status_fd);
        if (self->epoll_fd >= 0)
            close (self->epoll_fd);
        free (self->seq);
        free (self->error);
        json_decref (self->memory);
        free (self);
        *self_p = NULL;
    }
}

//  A run for role with sessions [normal_lo, normal_hi) and slow [slow_lo, slow_hi)
//  (global numbering), a share of the ramp and in-flight limits.
static s_run_t *
s_run_new (const s_opts_t *opts, const s_ident_t *ident, s_role_t role, uint32_t normal_lo,
           uint32_t normal_hi, uint32_t slow_lo, uint32_t slow_hi, int share)
{
    s_run_t *self = (s_run_t *) zmalloc (sizeof (s_run_t));
    self->opts = opts;
    self->ident = ident;
    self->role = role;
    self->cmd_fd = self->status_fd = -1;
    self->pub.fd = -1;
    self->now = self->t_start = s_now ();
    self->rx = (s_rx_t *) zmalloc (sizeof (s_rx_t));
    self->epoll_fd = epoll_create1 (EPOLL_CLOEXEC);
    if (self->epoll_fd < 0) {
        self->error = strdup (strerror (errno));
        return self;
    }
    self->normal_count = normal_hi - normal_lo;
    self->conn_count = self->normal_count + (slow_hi - slow_lo);
    self->first_normal = normal_lo;
    self->first_slow = opts->sessions + slow_lo;
    self->ramp = opts->ramp / share;
    self->inflight_max = (opts->inflight + (uint32_t) share - 1) / (uint32_t) share;
    if (self->conn_count) {
        self->conns = (s_conn_t *) zmalloc (self->conn_count * sizeof (s_conn_t));
        for (uint32_t i = 0; i < self->conn_count; i++) {
            s_conn_t *conn = &self->conns [i];
            conn->fd = -1;
            conn->user = s_session_user (opts, ident, s_global_index (self, i));
            if (i >= self->normal_count)
                conn->flags = S_FLAG_SLOW;
        }
        self->scratch = (uint8_t *) malloc (S_READ_CHUNK);
    }
    self->memory = json_object ();
    if (role != S_ROLE_CHILD && opts->pub_kind != S_PUB_NONE) {
        self->target_count = opts->channel_mode? 1: ident->user_count;
        self->seq = (uint32_t *) zmalloc (self->target_count * sizeof (uint32_t));
        self->pub.payload = (char *) malloc (opts->size + 1);
        memset (self->pub.payload, 'x', opts->size);
        self->pub.payload [opts->size] = 0;
        self->pub.ring = (uint8_t *) zmalloc (opts->pipeline);
    }
    return self;
}

//  Connect the publisher at the start, so that a wrong URL fails the run at once.
static int
s_run_publisher (s_run_t *self)
{
    const s_opts_t *opts = self->opts;
    if (opts->pub_kind == S_PUB_NONE)
        return 0;
    if (opts->pub_kind == S_PUB_NATS) {
        //  At a set rate every message goes out at once, so that the latency
        //  measured is the server's; at max rate libnats' flusher batches
        natsOptions *nats_opts = NULL;
        natsStatus status = natsOptions_Create (&nats_opts);
        if (status == NATS_OK)
            status = natsOptions_SetURL (nats_opts, opts->pub_url);
        if (status == NATS_OK)
            status = natsOptions_SetSendAsap (nats_opts, opts->rate > 0);
        if (status == NATS_OK)
            status = natsConnection_Connect (&self->pub.nats, nats_opts);
        natsOptions_Destroy (nats_opts);
        if (status != NATS_OK) {
            self->error = zsys_sprintf ("cannot connect to %s: %s", opts->pub_url,
                                        natsStatus_GetText (status));
            return -1;
        }
        self->pub.connects++;
        return 0;
    }
    if (!s_pub_connect (self)) {
        self->error = zsys_sprintf ("cannot connect to %s", opts->pub_url);
        return -1;
    }
    if (self->pub.redis) {
        //  hiredis connects without waiting: wait here once, bounded
        struct pollfd item = { .fd = self->pub.fd, .events = POLLOUT };
        int error = 0;
        socklen_t len = sizeof error;
        if (poll (&item, 1, S_CONNECT_TIMEOUT_MS) != 1
        ||  getsockopt (self->pub.fd, SOL_SOCKET, SO_ERROR, &error, &len) || error) {
            self->error = zsys_sprintf ("cannot connect to %s: %s", opts->pub_url,
                                        error? strerror (error): "timeout");
            return -1;
        }
        s_pub_flush (self);
    }
    return 0;
}

//  One epoll loop until the role's work is done.
static void
s_run_loop (s_run_t *self)
{
    struct epoll_event events [S_MAX_EVENTS];
    bool controller = self->role != S_ROLE_CHILD;
    while (true) {
        int timeout = 50;
        if (self->started < self->conn_count && !self->ending)
            timeout = 1;
        if (controller && self->phase >= S_PHASE_WARMUP && self->phase <= S_PHASE_FLUSH)
            timeout = 1;
        if (controller && self->phase == S_PHASE_PUBLISH && self->opts->rate <= 0
        &&  !self->pub.want_write && s_pub_ready (self))
            timeout = 0;
        int n = epoll_wait (self->epoll_fd, events, S_MAX_EVENTS, timeout);
        if (n < 0 && errno != EINTR) {
            zsys_error ("bench: epoll_wait: %s", strerror (errno));
            break;
        }
        self->now = s_now ();
        for (int i = 0; i < n; i++) {
            uint32_t tag = (uint32_t) (events [i].data.u64 >> 32);
            uint32_t index = (uint32_t) events [i].data.u64;
            if (tag == S_TAG_CONN)
                s_conn_event (self, index, events [i].events);
            else
            if (tag == S_TAG_PUB)
                s_pub_event (self, events [i].events);
            else
            if (tag == S_TAG_CHILD)
                s_child_event (self, index);
            else
            if (tag == S_TAG_CMD)
                s_cmd_event (self);
        }
        self->now = s_now ();
        if (self->conn_count)
            s_rx_tick (self);
        if (controller) {
            s_ctl_tick (self);
            s_progress (self, false);
            if (self->phase == S_PHASE_END)
                break;
        }
        else {
            s_child_status (self);
            if (self->rx_done || self->exit_now)
                break;
        }
    }
}

//  --------------------------------------------------------------------------
//  Report

static json_t *
s_params (const s_opts_t *opts)
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

static json_t *
s_per_s (uint64_t count, int64_t from, int64_t to)
{
    return s_rate (to > from? (double) count * 1e9 / (double) (to - from): 0);
}

//  object [key] = count
static void
s_put (json_t *object, const char *key, uint64_t value)
{
    json_object_set_new (object, key, json_integer ((json_int_t) value));
}

static json_t *
s_report (s_run_t *self)
{
    const s_opts_t *opts = self->opts;
    s_rx_t *rx = self->rx;
    s_pub_t *pub = &self->pub;
    json_t *report = json_object ();
    json_object_set_new (report, "sessions_target", json_integer (opts->sessions));
    s_put (report, "sessions_established", rx->established);
    s_put (report, "sessions_open_at_end", rx->open);
    s_put (report, "handshake_failures", rx->failed);
    json_object_set_new (report, "handshake_errors", json_pack (
        "{s:I, s:I, s:I, s:I, s:I, s:I, s:I, s:o}",
        "socket", (json_int_t) rx->fail_socket, "timeout", (json_int_t) rx->fail_timeout,
        "status", (json_int_t) rx->fail_status, "accept", (json_int_t) rx->fail_accept,
        "eof", (json_int_t) rx->fail_eof, "response", (json_int_t) rx->fail_response,
        "aborted", (json_int_t) rx->fail_aborted,
        "by_status", s_codes_to_json (rx->hs_status, S_STATUS_SLOTS, 100, -1)));
    json_object_set_new (report, "handshakes_per_s",
                         (s_per_s (rx->established + rx->slow_established,
                                             rx->t_first_start, rx->t_last_established)));
    json_object_set_new (report, "handshake_latency_ms", s_hist_summary (&rx->handshake, false));
    s_put (report, "sessions_closed_by_server", rx->closed_by_server);
    json_object_set_new (report, "close_codes",
                         s_codes_to_json (rx->close_codes, S_CLOSE_SLOTS, 1000, 16));
    s_put (report, "protocol_errors", rx->protocol_errors);
    s_put (report, "pongs_sent", rx->pongs);

    s_put (report, "messages_published", self->sent_measured);
    s_put (report, "publish_accepted", pub->accepted [0]);
    s_put (report, "publish_errors", pub->errors [0]);
    json_t *publisher = json_object ();
    s_put (publisher, "sent_all_kinds", pub->sent);
    for (int k = 1; k < S_KINDS; k++) {
        char key [32];
        snprintf (key, sizeof key, "%s_accepted", k == 1? "warmup": "final");
        json_object_set_new (publisher, key, json_integer ((json_int_t) pub->accepted [k]));
        snprintf (key, sizeof key, "%s_errors", k == 1? "warmup": "final");
        json_object_set_new (publisher, key, json_integer ((json_int_t) pub->errors [k]));
    }
    s_put (publisher, "lost_in_flight", pub->lost_inflight);
    s_put (publisher, "connects", pub->connects);
    json_object_set_new (publisher, "stalled", json_boolean (pub->stalled));
    if (opts->pub_kind == S_PUB_HTTP)
        json_object_set_new (publisher, "http_status",
                             s_codes_to_json (pub->status, S_STATUS_SLOTS, 100, -1));
    if (opts->pub_kind == S_PUB_REDIS)
        s_put (publisher, "redis_no_subscriber", pub->no_receiver);
    json_object_set_new (report, "publisher", publisher);
    json_object_set_new (report, "publish_per_s",
                         (s_per_s (self->sent_measured, self->t_pub_start,
                                             self->t_pub_end)));
    s_put (report, "messages_expected", rx->expected);
    s_put (report, "messages_received", rx->received);
    json_object_set_new (report, "delivered_per_s",
                         (s_per_s (rx->received, self->t_pub_start, rx->t_last_rx)));
    json_object_set_new (report, "latency_ms", s_hist_summary (&rx->latency, true));
    s_put (report, "loss", rx->loss);
    s_put (report, "duplicates", rx->duplicates);
    s_put (report, "reordered", rx->reordered);
    s_put (report, "misrouted", rx->misrouted);
    s_put (report, "foreign_messages", rx->foreign);
    json_object_set_new (report, "warmup", json_pack ("{s:i, s:I, s:f}",
                         "rounds", (int) self->warm_rounds, "sessions_warm", (json_int_t) rx->warm,
                         "ms", self->t_warm > self->t_up && self->t_up
                               ? round ((double) (self->t_warm - self->t_up - opts->hold_ns)
                                        / 1e6): 0.0));
    if (opts->final_publish)
        json_object_set_new (report, "final_publish", json_pack ("{s:I, s:I, s:I}",
                             "sent", (json_int_t) self->final_count,
                             "received", (json_int_t) rx->final_received,
                             "missing", (json_int_t) (rx->final_expected > rx->final_received
                                                      ? rx->final_expected - rx->final_received
                                                      : 0)));
    json_object_set_new (report, "slow_sessions", json_integer (opts->slow));
    s_put (report, "slow_sessions_established", rx->slow_established);
    s_put (report, "slow_sessions_closed", rx->slow_closed);

    json_t *memory = json_deep_copy (self->memory);
    json_int_t start = json_integer_value (json_object_get (memory, "rss_start_kib"));
    json_int_t up = json_integer_value (json_object_get (memory, "rss_up_kib"));
    uint64_t sessions = rx->established + rx->slow_established;
    json_object_set_new (memory, "per_session_bytes",
                         json_is_integer (json_object_get (memory, "rss_up_kib")) && sessions
                         && json_is_integer (json_object_get (memory, "rss_start_kib"))
                         ? json_real (round ((double) (up - start) * 1024 / (double) sessions))
                         : json_null ());
    json_object_set_new (report, "memory", memory);
    json_object_set_new (report, "params", s_params (opts));
    json_object_set_new (report, "procs", json_integer (opts->procs));
    uint64_t child_failures = 0;
    for (int i = 0; i < self->child_count; i++)
        child_failures += self->children [i].result? 0: 1;
    s_put (report, "child_failures", child_failures);
    json_object_set_new (report, "interrupted", json_boolean (self->interrupted));
    json_object_set_new (report, "elapsed_s",
                         json_real (round ((double) (s_now () - self->t_start) / 1e6) / 1e3));
    return report;
}

//  --------------------------------------------------------------------------
//  Child process body: sessions [lo, hi), report on the status pipe, exit.

static void
s_child_main (const s_opts_t *opts, const s_ident_t *ident, int k, int cmd_fd, int status_fd,
              pid_t parent)
{
    signal (SIGINT, SIG_IGN);
    prctl (PR_SET_PDEATHSIG, SIGKILL);
    if (getppid () != parent)
        _exit (1);                      //  the parent died before prctl
    wsr_util_raise_nofile ();
    uint32_t procs = (uint32_t) opts->procs;
    uint32_t lo = (uint32_t) ((uint64_t) opts->sessions * k / procs);
    uint32_t hi = (uint32_t) ((uint64_t) opts->sessions * (k + 1) / procs);
    uint32_t slo = (uint32_t) ((uint64_t) opts->slow * k / procs);
    uint32_t shi = (uint32_t) ((uint64_t) opts->slow * (k + 1) / procs);
    s_run_t *run = s_run_new (opts, ident, S_ROLE_CHILD, lo, hi, slo, shi, opts->procs);
    run->cmd_fd = cmd_fd;
    run->status_fd = status_fd;
    run->src_next = opts->src_count / procs * (uint32_t) k;
    int rc = 1;
    if (!run->error) {
        fcntl (cmd_fd, F_SETFL, O_NONBLOCK);
        s_epoll_set (run, EPOLL_CTL_ADD, cmd_fd, EPOLLIN, S_TAG_CMD, 0);
        s_run_loop (run);
        if (!run->rx_done)
            s_rx_finish (run);
        json_t *result = s_rx_to_json (run->rx);
        char *text = json_dumps (result, JSON_COMPACT);
        json_decref (result);
        //  Last status (connect totals) then the result line
        run->next_status = 0;
        s_child_status (run);
        if (s_write_all (status_fd, "R ", 2) && s_write_all (status_fd, text, strlen (text))
        &&  s_write_all (status_fd, "\n", 1))
            rc = 0;
        free (text);
        //  Sessions stay open until the parent has read the server's memory
        int64_t deadline = s_now () + S_CHILD_GRACE_NS;
        run->exit_now = false;
        while (!run->exit_now && run->cmd_fd >= 0 && s_now () < deadline) {
            struct pollfd item = { .fd = run->cmd_fd, .events = POLLIN };
            if (poll (&item, 1, 100) > 0)
                s_cmd_event (run);
        }
    }
    s_run_destroy (&run);
    _exit (rc);
}

//  Fork the receiver children; the parent keeps one pipe pair per child.
static int
s_fork_children (s_run_t *self)
{
    const s_opts_t *opts = self->opts;
    fflush (stdout);
    fflush (stderr);
    pid_t parent = getpid ();
    for (int k = 0; k < opts->procs; k++) {
        int cmd [2], status [2];
        if (pipe2 (cmd, O_CLOEXEC))
            return -1;
        if (pipe2 (status, O_CLOEXEC)) {
            close (cmd [0]);
            close (cmd [1]);
            return -1;
        }
        pid_t pid = fork ();
        if (pid < 0) {
            close (cmd [0]);
            close (cmd [1]);
            close (status [0]);
            close (status [1]);
            return -1;
        }
        if (pid == 0) {
            close (cmd [1]);
            close (status [0]);
            for (int i = 0; i < self->child_count; i++) {
                close (self->children [i].cmd_fd);
                close (self->children [i].status_fd);
            }
            close (self->epoll_fd);
            s_child_main (opts, self->ident, k, cmd [0], status [1], parent);
        }
        close (cmd [0]);
        close (status [1]);
        s_child_t *child = &self->children [self->child_count++];
        child->pid = pid;
        child->cmd_fd = cmd [1];
        child->status_fd = status [0];
        fcntl (child->status_fd, F_SETFL, O_NONBLOCK);
        s_epoll_set (self, EPOLL_CTL_ADD, child->status_fd, EPOLLIN, S_TAG_CHILD,
                     (uint32_t) (self->child_count - 1));
    }
    return 0;
}

//  Let the children go and reap them (killing any that do not leave).
static void
s_reap_children (s_run_t *self)
{
    for (int i = 0; i < self->child_count; i++)
        if (self->children [i].cmd_fd >= 0) {
            if (!s_write_all (self->children [i].cmd_fd, "X\n", 2))
                wsr_debug ("bench: child %d already gone", (int) self->children [i].pid);
            close (self->children [i].cmd_fd);
            self->children [i].cmd_fd = -1;
        }
    int64_t deadline = s_now () + 5 * S_SEC;
    for (int i = 0; i < self->child_count; i++) {
        s_child_t *child = &self->children [i];
        while (child->pid > 0) {
            pid_t pid = waitpid (child->pid, NULL, WNOHANG);
            if (pid == child->pid || (pid < 0 && errno != EINTR))
                child->pid = 0;
            else
            if (s_now () > deadline) {
                kill (child->pid, SIGKILL);
                waitpid (child->pid, NULL, 0);
                child->pid = 0;
            }
            else
                usleep (10000);
        }
    }
}

//  The whole bench: returns the report, or NULL with a message on stderr.
static json_t *
s_bench_run (const s_opts_t *opts, const s_ident_t *ident)
{
    json_t *start_memory = json_object ();
    long rss = opts->server_pid_count? s_rss_kib (opts): -1;
    json_object_set_new (start_memory, "rss_start_kib", rss >= 0? json_integer (rss): json_null ());
    json_object_set_new (start_memory, "sockstat_before", s_sockstat ());
    s_run_t *run;
    if (opts->procs > 1) {
        run = s_run_new (opts, ident, S_ROLE_PARENT, 0, 0, 0, 0, 1);
        if (!run->error && s_fork_children (run))
            run->error = zsys_sprintf ("fork: %s", strerror (errno));
    }
    else
        run = s_run_new (opts, ident, S_ROLE_LOCAL, 0, opts->sessions, 0, opts->slow, 1);
    json_object_update (run->memory, start_memory);
    json_decref (start_memory);
    if (!run->error)
        s_run_publisher (run);
    json_t *report = NULL;
    if (run->error)
        fprintf (stderr, "wsrouter bench: %s\n", run->error);
    else {
        s_run_loop (run);
        if (run->role == S_ROLE_LOCAL && !run->rx_done)
            s_rx_finish (run);
        s_progress (run, true);
        report = s_report (run);
    }
    s_reap_children (run);
    s_run_destroy (&run);
    return report;
}

//  --------------------------------------------------------------------------
//  Options

static void
s_usage (void)
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

//  Seconds (decimals allowed) to ns; -1 if invalid.
static int64_t
s_seconds (const char *text)
{
    char *end = NULL;
    errno = 0;
    double value = strtod (text, &end);
    if (errno || end == text || *end || value < 0 || value > 1e7)
        return -1;
    return (int64_t) (value * 1e9);
}

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

static int
s_url_parse (const char *text, s_url_t *url)
{
    if (strncmp (text, "ws://", 5))
        return -1;
    const char *authority = text + 5;
    size_t len = strcspn (authority, "/?");
    snprintf (url->host, sizeof url->host, "%.*s", (int) len, authority);
    snprintf (url->path, sizeof url->path, "%s", authority [len] == '/'? authority + len: "/ws");
    char host [256];
    int port = 80;
    s_hostport (url->host, host, sizeof host, &port);
    if (port < 1 || port > 65535 || s_resolve (host, port, &url->addr))
        return -1;
    return 0;
}

static int
s_publish_parse (s_opts_t *opts, const char *text)
{
    opts->pub_url = text;
    const char *rest = NULL;
    if (strncmp (text, "http://", 7) == 0) {
        opts->pub_kind = S_PUB_HTTP;
        opts->pub_port = 80;
        rest = text + 7;
    }
    else
    if (strncmp (text, "redis://", 8) == 0) {
        opts->pub_kind = S_PUB_REDIS;
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
        opts->pub_kind = S_PUB_NATS;
        opts->pub_port = 4222;
        rest = text + 7;
    }
    else
        return -1;
    //  pub_host keeps the port, as a Host header wants it
    snprintf (opts->pub_host, sizeof opts->pub_host, "%.*s", (int) strcspn (rest, "/?"), rest);
    char host [256];
    s_hostport (opts->pub_host, host, sizeof host, &opts->pub_port);
    if (opts->pub_port < 1 || opts->pub_port > 65535
    ||  s_resolve (host, opts->pub_port, &opts->pub_addr))
        return -1;
    return 0;
}

static void
s_opts_defaults (s_opts_t *opts)
{
    memset (opts, 0, sizeof *opts);
    opts->sessions = 1;
    opts->procs = 1;
    opts->ramp = S_DEFAULT_RAMP;
    opts->inflight = S_DEFAULT_INFLIGHT;
    opts->handshake_timeout_ns = S_DEFAULT_HS_TIMEOUT_NS;
    opts->user_prefix = "bench";
    opts->token_ttl_s = S_DEFAULT_TOKEN_TTL_S;
    opts->redis_user_tpl = "ws:{user_id}";
    opts->redis_channel_tpl = "ws:channel:{channel}";
    opts->nats_user_tpl = "world.updates.user.{user_id}";
    opts->nats_channel_tpl = "world.updates.channel.{channel}";
    opts->size = S_DEFAULT_SIZE;
    opts->pipeline = S_DEFAULT_PIPELINE;
    opts->warmup_ns = S_DEFAULT_WARMUP_NS;
    opts->drain_ns = S_DEFAULT_DRAIN_NS;
    opts->api_key = getenv ("WEBSOCKET_API_KEY");
}

//  Cross-option checks and derived values; -1 with a message if inconsistent.
static int
s_opts_check (s_opts_t *opts, const char *source_ips)
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
    if (opts->procs < 1 || opts->procs > S_MAX_PROCS || (uint32_t) opts->procs > opts->sessions)
        problem = "--procs must be 1..64 and at most --sessions";
    else
    if (opts->channel_mode && !opts->channel)
        problem = "--mode channel needs --channel";
    else
    if (opts->channel && !wsr_util_id_valid (opts->channel, strlen (opts->channel)))
        problem = "--channel is not a valid channel name";
    else
    if (opts->size < S_HDR_LEN || opts->size > S_MAX_SIZE)
        problem = "--size must be 46..1048512";
    else
    if (opts->pub_kind == S_PUB_HTTP && !opts->api_key)
        problem = "--publish http:// needs --api-key (or WEBSOCKET_API_KEY)";
    else
    if (opts->pub_kind != S_PUB_NONE && opts->messages && opts->duration_ns)
        problem = "give --duration or --messages, not both";
    else
    if (opts->pub_kind == S_PUB_NONE && (opts->messages || opts->duration_ns
                                     ||  opts->final_publish))
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

//  Parse argv into opts; returns 0, 1 (help shown) or 2 (bad arguments).
static int
s_opts_parse (s_opts_t *opts, int argc, char *argv [])
{
    s_opts_defaults (opts);
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
                ok = opts->url_count < S_MAX_URLS
                  && s_url_parse (optarg, &opts->urls [opts->url_count]) == 0;
                if (ok)
                    opts->url_count++;
                break;
            case 'n':
                ok = s_count (optarg, &value, 10000000);
                opts->sessions = (uint32_t) value;
                break;
            case 'P':
                ok = s_count (optarg, &value, S_MAX_PROCS);
                opts->procs = (int) value;
                break;
            case 'S': source_ips = optarg; break;
            case 'r':
                opts->ramp = atof (optarg);
                ok = opts->ramp > 0;
                break;
            case 'i':
                ok = s_count (optarg, &value, 10000000);
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
                ok = s_count (optarg, &value, 100000000);
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
                ok = s_count (optarg, &value, S_MAX_SIZE);
                opts->size = (size_t) value;
                break;
            case 'q':
                ok = s_count (optarg, &value, 1000000);
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
                    ok = opts->server_pid_count < S_MAX_PIDS && s_count (pid, &value, INT32_MAX)
                      && value > 0;
                    if (ok)
                        opts->server_pids [opts->server_pid_count++] = (pid_t) value;
                }
                free (copy);
                break;
            }
            case 'W':
                ok = s_count (optarg, &value, 1000000);
                opts->slow = (uint32_t) value;
                break;
            case 'Q': opts->quiet = true; break;
            case 'v': wsr_verbose = true; break;
            case 1000: opts->redis_user_tpl = optarg; break;
            case 1001: opts->redis_channel_tpl = optarg; break;
            case 1002: opts->nats_user_tpl = optarg; break;
            case 1003: opts->nats_channel_tpl = optarg; break;
            case 'h': s_usage (); return 1;
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

static void
s_on_sigint (int sig)
{
    (void) sig;
    s_interrupted = 1;
}

//  --------------------------------------------------------------------------
//  Run `wsrouter bench`.
int
wsr_bench_main (int argc, char *argv [])
{
    s_opts_t opts;
    int rc = s_opts_parse (&opts, argc, argv);
    if (rc)
        return rc == 1? 0: 2;
    if (sodium_init () < 0) {
        fprintf (stderr, "wsrouter bench: libsodium failed to initialise\n");
        return 1;
    }
    //  stdout carries the report only: czmq's log goes to stderr
    zsys_set_logstream (stderr);
    s_ident_t ident;
    if (s_ident_load (&ident, &opts))
        return 2;
    long nofile = wsr_util_raise_nofile ();
    uint64_t per_proc = ((uint64_t) opts.sessions + opts.slow + (uint64_t) opts.procs - 1)
                      / (uint64_t) opts.procs;
    if (nofile > 0 && per_proc + 64 > (uint64_t) nofile)
        fprintf (stderr, "wsrouter bench: warning: %" PRIu64 " sessions per process but only "
                 "%ld open files; use --procs\n", per_proc, nofile);
    //  SIGINT ends the run early but still reports; signals are not blocked here
    sigset_t signals;
    sigemptyset (&signals);
    sigaddset (&signals, SIGINT);
    pthread_sigmask (SIG_UNBLOCK, &signals, NULL);
    struct sigaction action = { .sa_handler = s_on_sigint };
    sigemptyset (&action.sa_mask);
    sigaction (SIGINT, &action, NULL);
    signal (SIGPIPE, SIG_IGN);

    json_t *report = s_bench_run (&opts, &ident);
    s_ident_free (&ident);
    if (opts.pub_kind == S_PUB_NATS)
        nats_Close ();
    if (!report)
        return 1;
    char *text = json_dumps (report, JSON_INDENT (2) | JSON_PRESERVE_ORDER
                                   | JSON_REAL_PRECISION (10));
    printf ("%s\n", text);
    fflush (stdout);
    free (text);
    json_decref (report);
    return 0;
}

//  --------------------------------------------------------------------------
//  Selftest

//  Feed bytes split at every point; the parser must give the same result.
static void
s_test_parser (void)
{
    s_opts_t opts;
    s_opts_defaults (&opts);
    opts.sessions = 1;
    char *users [] = { (char *) "u0" };
    s_ident_t ident = { .users = users, .user_count = 1 };
    s_run_t *run = s_run_new (&opts, &ident, S_ROLE_LOCAL, 0, 1, 0, 0, 1);
    assert (!run->error);
    int pair [2];
    assert (socketpair (AF_UNIX, SOCK_STREAM, 0, pair) == 0);

    //  Three measured messages with 7-, 16- and 64-bit lengths, a ping between
    //  two fragments of the second, then a close 1001
    size_t sizes [3] = { 100, 300, 70000 };
    size_t total = 0;
    uint8_t *stream = (uint8_t *) malloc (80000);
    for (int m = 0; m < 3; m++) {
        size_t size = sizes [m];
        char *payload = (char *) malloc (size);
        memset (payload, 'x', size);
        s_header_write (payload, 'M', (uint32_t) m + 1, (uint64_t) s_now (), 0);
        if (m == 1) {
            //  Fragment 1 (40 bytes: header split), ping "hi", fragment 2
            stream [total++] = 0x01;
            stream [total++] = 40;
            memcpy (stream + total, payload, 40);
            total += 40;
            stream [total++] = 0x89;
            stream [total++] = 2;
            memcpy (stream + total, "hi", 2);
            total += 2;
            stream [total++] = 0x80;
            stream [total++] = 126;
            stream [total++] = (uint8_t) ((size - 40) >> 8);
            stream [total++] = (uint8_t) (size - 40);
            memcpy (stream + total, payload + 40, size - 40);
            total += size - 40;
        }
        else {
            stream [total++] = 0x81;
            if (size < 126)
                stream [total++] = (uint8_t) size;
            else {
                stream [total++] = 127;
                for (int i = 7; i >= 0; i--)
                    stream [total++] = (uint8_t) (size >> (8 * i));
            }
            memcpy (stream + total, payload, size);
            total += size;
        }
        free (payload);
    }
    stream [total++] = 0x88;
    stream [total++] = 2;
    stream [total++] = 0x03;
    stream [total++] = 0xE9;
    //  Every split point through the small frames and the 64-bit header,
    //  then a few inside the long payload and the close frame
    size_t splits [600];
    size_t split_count = 0;
    for (size_t cut = 0; cut < 480; cut++)
        splits [split_count++] = cut;
    size_t tail [] = { 5000, 40000, total - 4, total - 3, total - 2, total - 1, total };
    for (size_t i = 0; i < sizeof tail / sizeof tail [0]; i++)
        splits [split_count++] = tail [i];
    for (size_t s = 0; s < split_count; s++) {
        memset (run->rx, 0, sizeof (s_rx_t));
        s_conn_t *conn = &run->conns [0];
        memset (conn, 0, sizeof *conn);
        conn->fd = pair [0];
        conn->state = S_CONN_OPEN;
        conn->next_seq = 1;
        run->rx->open = 1;
        run->now = s_now ();
        size_t cut = splits [s];
        int rc = s_conn_feed (run, conn, stream, cut);
        assert (rc == (cut == total? 1: 0));
        if (cut < total)
            rc = s_conn_feed (run, conn, stream + cut, total - cut);
        assert (rc == 1);
        assert (run->rx->received == 3 && run->rx->loss == 0 && run->rx->foreign == 0);
        assert (run->rx->latency.total == 3);
        assert (run->rx->close_codes [1] == 1 && run->rx->pongs == 1);
        assert (conn->state == S_CONN_CLOSING && run->rx->open == 0);
        //  The client sent a masked pong "hi" and a masked close 1001
        uint8_t reply [32];
        ssize_t n = recv (pair [1], reply, sizeof reply, 0);
        assert (n == 8 + 8);
        assert (reply [0] == 0x8A && reply [1] == (0x80 | 2));
        assert ((reply [6] ^ reply [2]) == 'h' && (reply [7] ^ reply [3]) == 'i');
        assert (reply [8] == 0x88 && reply [9] == (0x80 | 2));
        assert ((reply [14] ^ reply [10]) == 0x03 && (reply [15] ^ reply [11]) == 0xE9);
    }
    //  Bad frames: masked from the server, reserved bits, long control frame
    uint8_t masked [] = { 0x81, 0x81, 1, 2, 3, 4, 'a' };
    uint8_t reserved [] = { 0xC1, 0x00 };
    uint8_t long_ping [] = { 0x89, 126, 0, 200 };
    uint8_t orphan [] = { 0x80, 0x00 };
    uint8_t *bad [] = { masked, reserved, long_ping, orphan };
    size_t bad_len [] = { sizeof masked, sizeof reserved, sizeof long_ping, sizeof orphan };
    for (int i = 0; i < 4; i++) {
        s_conn_t *conn = &run->conns [0];
        memset (conn, 0, sizeof *conn);
        conn->fd = pair [0];
        conn->state = S_CONN_OPEN;
        assert (s_conn_feed (run, conn, bad [i], bad_len [i]) == -1);
    }

    //  Sequences: gap, duplicate, late arrival, tail
    memset (run->rx, 0, sizeof (s_rx_t));
    s_conn_t *conn = &run->conns [0];
    memset (conn, 0, sizeof *conn);
    conn->fd = -1;
    conn->next_seq = 1;
    conn->flags = S_FLAG_UP;
    uint32_t seqs [] = { 1, 2, 5, 5, 3, 6 };      //  4 lost, 5 twice, 3 late
    for (size_t i = 0; i < sizeof seqs / sizeof seqs [0]; i++) {
        s_header_write ((char *) conn->prefix, 'M', seqs [i], (uint64_t) s_now (), 0);
        conn->prefix_len = S_HDR_LEN;
        s_conn_message (run, conn);
    }
    assert (run->rx->received == 6 && run->rx->duplicates == 1 && run->rx->reordered == 1);
    assert (run->rx->loss == 1);
    run->ending = true;
    run->published = 8;                             //  7 and 8 never came
    s_rx_finish (run);
    assert (run->rx->loss == 3);
    conn->fd = -1;
    close (pair [0]);
    close (pair [1]);
    run->conns [0].fd = -1;
    free (stream);
    s_run_destroy (&run);
}

static void
s_test_hist (void)
{
    s_hist_t *hist = (s_hist_t *) zmalloc (sizeof (s_hist_t));
    uint64_t values [] = { 0, 1, 255, 256, 257, 1000, 123456, 99999999, 1ULL << 40,
                           UINT64_MAX / 3 };
    for (size_t i = 0; i < sizeof values / sizeof values [0]; i++) {
        int index = s_hist_index (values [i]);
        assert (index >= 0 && index < S_HIST_BUCKETS);
        double value = (double) s_hist_value (index);
        double error = values [i]? fabs (value - (double) values [i]) / (double) values [i]: value;
        assert (error <= 0.01);
    }
    for (uint64_t v = 1; v <= 1000; v++)
        s_hist_add (hist, v * 1000);
    assert (fabs ((double) s_hist_quantile (hist, 0.5) - 500000) <= 5000);
    assert (fabs ((double) s_hist_quantile (hist, 0.99) - 990000) <= 9900);
    assert (s_hist_quantile (hist, 1.0) == 1000000);
    //  Sparse JSON round trip adds up
    json_t *json = s_hist_to_json (hist);
    s_hist_t *copy = (s_hist_t *) zmalloc (sizeof (s_hist_t));
    s_hist_merge_json (copy, json);
    s_hist_merge_json (copy, json);
    json_decref (json);
    assert (copy->total == 2000 && copy->max == hist->max);
    assert (s_hist_quantile (copy, 0.5) == s_hist_quantile (hist, 0.5));
    free (copy);
    free (hist);
}

void
wsr_bench_test (bool verbose)
{
    assert (sodium_init () >= 0);
    //  RFC 6455 §1.3 example
    char accept [32];
    s_accept_key ("dGhlIHNhbXBsZSBub25jZQ==", accept, sizeof accept);
    assert (streq (accept, "s3pPLMBiTxaQ9kYGzzhZRbK+xOo="));
    s_test_hist ();
    s_test_parser ();

    //  A real node in this process, 50 sessions, 200 messages over HTTP
    const char *secret = "bench-test-secret";
    wsr_node_opts_t node_opts;
    wsr_node_opts_defaults (&node_opts);
    node_opts.name = "btest";
    node_opts.bind = "127.0.0.1";
    node_opts.port = 0;
    node_opts.api_key = "bench-key";
    node_opts.jwt_secret = (const uint8_t *) secret;
    node_opts.jwt_secret_len = strlen (secret);
    node_opts.workers = 1;
    wsr_node_t *node = wsr_node_new (&node_opts);
    assert (node);
    int port = wsr_node_port (node);

    char url [64], publish [64];
    snprintf (url, sizeof url, "ws://127.0.0.1:%d/ws", port);
    snprintf (publish, sizeof publish, "http://127.0.0.1:%d", port);
    char *argv [] = {
        (char *) "bench", (char *) "--url", url, (char *) "--sessions", (char *) "50",
        (char *) "--jwt-secret", (char *) secret, (char *) "--publish", publish,
        (char *) "--api-key", (char *) "bench-key", (char *) "--messages", (char *) "200",
        (char *) "--rate", (char *) "1000", (char *) "--size", (char *) "64",
        (char *) "--final-publish", (char *) "--slow", (char *) "2", (char *) "--quiet",
        (char *) "--server-pids", (char *) "1", NULL
    };
    int argc = (int) (sizeof argv / sizeof argv [0]) - 1;
    argv [argc - 1] = zsys_sprintf ("%d", (int) getpid ());
    s_opts_t opts;
    assert (s_opts_parse (&opts, argc, argv) == 0);
    opts.quiet = !verbose;
    s_ident_t ident;
    assert (s_ident_load (&ident, &opts) == 0);
    assert (ident.user_count == 50);
    int64_t started = s_now ();
    json_t *report = s_bench_run (&opts, &ident);
    assert (report);
    if (verbose) {
        char *text = json_dumps (report, JSON_INDENT (2) | JSON_PRESERVE_ORDER);
        printf ("%s\n", text);
        free (text);
    }
    json_int_t established = json_integer_value (json_object_get (report, "sessions_established"));
    json_int_t received = json_integer_value (json_object_get (report, "messages_received"));
    json_int_t loss = json_integer_value (json_object_get (report, "loss"));
    json_int_t duplicates = json_integer_value (json_object_get (report, "duplicates"));
    json_t *latency = json_object_get (report, "latency_ms");
    assert (established == 50);
    assert (received == 200);
    assert (json_integer_value (json_object_get (report, "messages_expected")) == 200);
    assert (loss == 0 && duplicates == 0);
    assert (json_integer_value (json_object_get (report, "reordered")) == 0);
    assert (json_integer_value (json_object_get (report, "misrouted")) == 0);
    assert (json_real_value (json_object_get (latency, "p50")) > 0);
    json_t *final = json_object_get (report, "final_publish");
    assert (json_integer_value (json_object_get (final, "missing")) == 0);
    assert (json_integer_value (json_object_get (report, "slow_sessions_established")) == 2);
    json_t *memory = json_object_get (report, "memory");
    assert (json_integer_value (json_object_get (memory, "rss_start_kib")) > 0);
    assert (s_now () - started < 10 * S_SEC);
    json_decref (report);
    s_ident_free (&ident);
    free (argv [argc - 1]);
    wsr_node_destroy (&node);
}
