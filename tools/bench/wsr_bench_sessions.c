//  wsr_bench_sessions — the bench's WebSocket client: one process's sessions in one epoll set
//
//  Each process opens its share of the sessions at --ramp per second with
//  at most --inflight handshakes in progress, binding every socket to the
//  next address of a source range (IP_BIND_ADDRESS_NO_PORT) so that loopback
//  runs do not run out of ephemeral ports. The client checks the 101 answer
//  (Upgrade, Connection, Sec-WebSocket-Accept), parses server frames as they
//  come (wsr_bench_ws), answers ping with pong and close with close. A
//  session costs about 250 bytes; a handshake's buffers exist only while it
//  is in progress.
//
//  Slow sessions (--slow) never read until publishing is over, with a small
//  receive buffer: they are the server's slow consumers. Then they are read
//  (or their TCP state looked at) to see whether the server closed them.
//
//  Of a message only its first WSR_BENCH_HDR_LEN bytes are kept: the header
//  says what it is (wsr_bench_payload), the counting is wsr_bench_rx's.
//
//  Owns: its sockets (added to the caller's epoll set), handshake buffers,
//  the counters and a read buffer.

#include "wsr_bench_classes.h"
#include <netinet/tcp.h>
#include <sys/epoll.h>

#ifndef IP_BIND_ADDRESS_NO_PORT
#   define IP_BIND_ADDRESS_NO_PORT 24
#endif

//  Connection states
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
#define S_FLAG_WARM         0x04    //  saw a warm-up message
#define S_FLAG_FINAL        0x08    //  saw its final message
#define S_FLAG_UP           0x10    //  was established
#define S_FLAG_RESOLVED     0x20    //  slow session: end check done

typedef struct _s_hs_t s_hs_t;

//  One session: kept small, there may be a million
typedef struct {
    int fd;                         //  socket, -1 when closed or not started
    uint32_t user;                  //  user index
    wsr_bench_seq_t seq;            //  measured sequences seen
    s_hs_t *hs;                     //  handshake in progress, else NULL
    uint8_t state;                  //  s_conn_state_t
    uint8_t flags;                  //  S_FLAG_*
    wsr_bench_ws_t ws;              //  frame parser
} s_conn_t;

//  A handshake in progress: the request to send and the answer so far.
struct _s_hs_t {
    s_hs_t *prev, *next;            //  in start order: the oldest times out first
    uint32_t conn;                  //  index of its connection
    int64_t started;                //  socket created, mono ns
    char accept [32];               //  expected Sec-WebSocket-Accept
    size_t response_len;            //  bytes gathered in response
    char response [WSR_BENCH_HS_RESPONSE_MAX + 1];
    size_t request_len;             //  bytes of request
    size_t request_sent;            //  of which sent
    char request [];                //  the GET request
};

struct _wsr_bench_sessions_t {
    const wsr_bench_opts_t *opts;   //  settings (not owned)
    wsr_bench_ident_t *ident;       //  users and tokens (not owned)
    int epoll_fd;                   //  the run's epoll set (not owned)
    int64_t now;                    //  mono ns, set by each tick and read
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
    wsr_bench_rx_t *rx;             //  counts (owned)
    uint8_t *scratch;               //  read buffer (owned)
    bool ending;                    //  publishing is over: drain
    bool done;                      //  drain finished, counts final
    int64_t end_deadline;           //  drain limit
    int64_t slow_deadline;          //  slow-session reading limit
    uint32_t slow_pending;          //  slow sessions still being read
    uint64_t published;             //  measured messages sent (all targets)
    uint64_t key_seed [2];          //  Sec-WebSocket-Key = seed mixed with a counter
    uint64_t key_count;
};

//  --------------------------------------------------------------------------
//  Create receiver k's share of the sessions.
wsr_bench_sessions_t *
wsr_bench_sessions_new (const wsr_bench_opts_t *opts, wsr_bench_ident_t *ident, int epoll_fd,
                        int k, int procs)
{
    assert (opts && ident);
    assert (procs >= 1 && k >= 0 && k < procs);
    wsr_bench_sessions_t *self =
        (wsr_bench_sessions_t *) zmalloc (sizeof (wsr_bench_sessions_t));
    assert (self);
    randombytes_buf (self->key_seed, sizeof self->key_seed);
    self->opts = opts;
    self->ident = ident;
    self->epoll_fd = epoll_fd;
    self->now = wsr_bench_now ();
    self->rx = wsr_bench_rx_new ();
    uint64_t share = (uint64_t) procs;
    uint32_t normal_lo = (uint32_t) ((uint64_t) opts->sessions * (uint64_t) k / share);
    uint32_t normal_hi = (uint32_t) ((uint64_t) opts->sessions * (uint64_t) (k + 1) / share);
    uint32_t slow_lo = (uint32_t) ((uint64_t) opts->slow * (uint64_t) k / share);
    uint32_t slow_hi = (uint32_t) ((uint64_t) opts->slow * (uint64_t) (k + 1) / share);
    self->normal_count = normal_hi - normal_lo;
    self->conn_count = self->normal_count + (slow_hi - slow_lo);
    self->first_normal = normal_lo;
    self->first_slow = opts->sessions + slow_lo;
    self->ramp = opts->ramp / procs;
    self->inflight_max = (opts->inflight + (uint32_t) procs - 1) / (uint32_t) procs;
    self->src_next = opts->src_count / (uint32_t) procs * (uint32_t) k;
    if (self->conn_count) {
        self->conns = (s_conn_t *) zmalloc (self->conn_count * sizeof (s_conn_t));
        assert (self->conns);
        for (uint32_t i = 0; i < self->conn_count; i++) {
            s_conn_t *conn = &self->conns [i];
            conn->fd = -1;
            uint32_t g = i < self->normal_count? self->first_normal + i
                                               : self->first_slow + (i - self->normal_count);
            conn->user = wsr_bench_ident_session_user (ident, g);
            if (i >= self->normal_count)
                conn->flags = S_FLAG_SLOW;
        }
        self->scratch = (uint8_t *) malloc (WSR_BENCH_READ_CHUNK);
        assert (self->scratch);
    }
    return self;
}

static void s_hs_unlink (wsr_bench_sessions_t *self, s_hs_t *hs);

//  --------------------------------------------------------------------------
//  Close every socket and free the sessions.
void
wsr_bench_sessions_destroy (wsr_bench_sessions_t **self_p)
{
    assert (self_p);
    if (*self_p) {
        wsr_bench_sessions_t *self = *self_p;
        for (uint32_t i = 0; i < self->conn_count; i++) {
            if (self->conns [i].hs) {
                s_hs_unlink (self, self->conns [i].hs);
                free (self->conns [i].hs);
            }
            if (self->conns [i].fd >= 0)
                close (self->conns [i].fd);
        }
        free (self->conns);
        free (self->scratch);
        wsr_bench_rx_destroy (&self->rx);
        free (self);
        *self_p = NULL;
    }
}

//  --------------------------------------------------------------------------
//  Handshake

static void
s_hs_unlink (wsr_bench_sessions_t *self, s_hs_t *hs)
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
s_hs_end (wsr_bench_sessions_t *self, s_conn_t *conn)
{
    s_hs_unlink (self, conn->hs);
    free (conn->hs);
    conn->hs = NULL;
    self->inflight--;
}

//  Handshake failed: count it under its cause and close the socket.
static void
s_hs_fail (wsr_bench_sessions_t *self, s_conn_t *conn, uint64_t *cause)
{
    s_hs_end (self, conn);
    if (conn->fd >= 0)
        close (conn->fd);
    conn->fd = -1;
    conn->state = S_CONN_FAILED;
    self->rx->failed++;
    (*cause)++;
}

//  Global number of the session in slot index (what its identity follows).
static uint32_t
s_global_index (wsr_bench_sessions_t *self, uint32_t index)
{
    return index < self->normal_count? self->first_normal + index
                                     : self->first_slow + (index - self->normal_count);
}

//  Socket options, source bind and a non-blocking connect; -1 if one fails.
static int
s_conn_socket (wsr_bench_sessions_t *self, s_conn_t *conn, const wsr_bench_url_t *url)
{
    const wsr_bench_opts_t *opts = self->opts;
    conn->fd = socket (AF_INET, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
    if (conn->fd < 0)
        return -1;              //  no descriptor left (EMFILE): a failed session
    //  No TCP_NODELAY: a session writes its request once, then only pongs
    //  and its close, and nothing it sends is timed
    int one = 1;
    if (conn->flags & S_FLAG_SLOW) {
        //  Before connect, so that the advertised window stays small
        int small = WSR_BENCH_SLOW_RCVBUF;
        if (setsockopt (conn->fd, SOL_SOCKET, SO_RCVBUF, &small, sizeof small))
            return -1;
    }
    if (opts->src_count) {
        struct sockaddr_in source = { .sin_family = AF_INET };
        source.sin_addr.s_addr = htonl (opts->src_first + self->src_next++ % opts->src_count);
        if (setsockopt (conn->fd, IPPROTO_IP, IP_BIND_ADDRESS_NO_PORT, &one, sizeof one)
        ||  bind (conn->fd, (struct sockaddr *) &source, sizeof source))
            return -1;
    }
    if (connect (conn->fd, (const struct sockaddr *) &url->addr, sizeof url->addr)
    &&  errno != EINPROGRESS)
        return -1;
    return 0;
}

//  Start connection index: the request, then the socket.
static void
s_conn_start (wsr_bench_sessions_t *self, uint32_t index)
{
    const wsr_bench_opts_t *opts = self->opts;
    s_conn_t *conn = &self->conns [index];
    uint32_t g = s_global_index (self, index);
    const wsr_bench_url_t *url = &opts->urls [g % (uint32_t) opts->url_count];
    self->rx->attempted++;
    if (!self->rx->t_first_start)
        self->rx->t_first_start = self->now;

    //  Request first: a token that cannot be made is a failed session
    char *token = wsr_bench_ident_token (self->ident, g);
    //  The key only has to be fresh, not secret: a random seed from the
    //  start mixed with a counter (splitmix64), no getrandom() per session
    uint8_t raw_key [16];
    for (int half = 0; half < 2; half++) {
        uint64_t z = self->key_seed [half] + ++self->key_count * 0x9e3779b97f4a7c15ULL;
        z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ULL;
        z = (z ^ (z >> 27)) * 0x94d049bb133111ebULL;
        z ^= z >> 31;
        memcpy (raw_key + 8 * half, &z, 8);
    }
    char key [32];
    sodium_bin2base64 (key, sizeof key, raw_key, sizeof raw_key,
                       sodium_base64_VARIANT_ORIGINAL);
    size_t room = strlen (url->path) + strlen (url->host) + (token? strlen (token): 0) + 256;
    s_hs_t *hs = (s_hs_t *) zmalloc (sizeof (s_hs_t) + room);
    assert (hs);
    hs->conn = index;
    hs->started = wsr_bench_now ();
    wsr_bench_ws_accept_key (key, hs->accept, sizeof hs->accept);
    int n = snprintf (hs->request, room,
                      "GET %s%ctoken=%s HTTP/1.1\r\nHost: %s\r\nUpgrade: websocket\r\n"
                      "Connection: Upgrade\r\nSec-WebSocket-Key: %s\r\n"
                      "Sec-WebSocket-Version: 13\r\n\r\n",
                      url->path, strchr (url->path, '?')? '&': '?', token? token: "",
                      url->host, key);
    assert (n > 0 && (size_t) n < room);
    hs->request_len = (size_t) n;
    bool have_token = token != NULL;
    free (token);
    conn->hs = hs;
    hs->prev = self->hs_tail;
    if (self->hs_tail)
        self->hs_tail->next = hs;
    else
        self->hs_head = hs;
    self->hs_tail = hs;
    self->inflight++;
    conn->state = S_CONN_CONNECTING;
    if (!have_token || s_conn_socket (self, conn, url)) {
        s_hs_fail (self, conn, &self->rx->fail_socket);
        return;
    }
    //  On loopback the connection is usually established when connect()
    //  returns: send the request at once and wait only for the answer (no
    //  EPOLLOUT turn, SO_ERROR look and epoll change); otherwise (not yet
    //  connected, or a partial send) wait until the socket is writable
    ssize_t sent = send (conn->fd, hs->request, hs->request_len, MSG_NOSIGNAL);
    if (sent == (ssize_t) hs->request_len) {
        hs->request_sent = hs->request_len;
        conn->state = S_CONN_HANDSHAKE;
        wsr_bench_epoll_set (self->epoll_fd, EPOLL_CTL_ADD, conn->fd, EPOLLIN,
                             WSR_BENCH_TAG_CONN, index);
        return;
    }
    if (sent > 0)
        hs->request_sent = (size_t) sent;
    else
    if (errno != EAGAIN && errno != ENOTCONN && errno != EINTR) {
        s_hs_fail (self, conn, &self->rx->fail_socket);
        return;
    }
    wsr_bench_epoll_set (self->epoll_fd, EPOLL_CTL_ADD, conn->fd, EPOLLOUT,
                         WSR_BENCH_TAG_CONN, index);
}

//  Connected (or failed to): send what is left of the request.
static void
s_hs_write (wsr_bench_sessions_t *self, s_conn_t *conn)
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
        wsr_bench_epoll_set (self->epoll_fd, EPOLL_CTL_MOD, conn->fd, EPOLLIN,
                             WSR_BENCH_TAG_CONN, hs->conn);
    }
}

static int s_conn_feed (wsr_bench_sessions_t *self, s_conn_t *conn, const uint8_t *data,
                        size_t len);

//  Read the answer; on a valid 101 the session is established.
static void
s_hs_read (wsr_bench_sessions_t *self, s_conn_t *conn)
{
    s_hs_t *hs = conn->hs;
    ssize_t n = recv (conn->fd, hs->response + hs->response_len,
                      WSR_BENCH_HS_RESPONSE_MAX - hs->response_len, 0);
    if (n < 0 && (errno == EAGAIN || errno == EINTR))
        return;
    if (n <= 0) {
        s_hs_fail (self, conn, &self->rx->fail_eof);
        return;
    }
    int64_t now = wsr_bench_now ();
    hs->response_len += (size_t) n;
    hs->response [hs->response_len] = 0;
    char *end = strstr (hs->response, "\r\n\r\n");
    if (!end) {
        if (hs->response_len == WSR_BENCH_HS_RESPONSE_MAX)
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
        if (status >= WSR_BENCH_STATUS_BASE
        &&  status < WSR_BENCH_STATUS_BASE + WSR_BENCH_STATUS_SLOTS)
            self->rx->hs_status [status - WSR_BENCH_STATUS_BASE]++;
        s_hs_fail (self, conn, &self->rx->fail_status);
        return;
    }
    size_t len = 0;
    const char *upgrade = wsr_bench_header_find (hs->response, head_len, "upgrade", &len);
    bool ok = upgrade && wsr_bench_list_has (upgrade, len, "websocket");
    const char *connection = wsr_bench_header_find (hs->response, head_len, "connection", &len);
    ok = ok && connection && wsr_bench_list_has (connection, len, "upgrade");
    const char *accept = wsr_bench_header_find (hs->response, head_len, "sec-websocket-accept",
                                                &len);
    ok = ok && accept && len == strlen (hs->accept) && memcmp (accept, hs->accept, len) == 0;
    if (!ok) {
        s_hs_fail (self, conn, &self->rx->fail_accept);
        return;
    }
    //  Established
    wsr_bench_hist_add (self->rx->handshake, (uint64_t) (now - hs->started));
    self->rx->t_last_established = now;
    conn->state = S_CONN_OPEN;
    conn->flags |= S_FLAG_UP;
    conn->seq.next = 1;
    size_t early = hs->response_len - head_len;
    if (conn->flags & S_FLAG_SLOW) {
        self->rx->slow_established++;
        wsr_bench_epoll_set (self->epoll_fd, EPOLL_CTL_MOD, conn->fd, 0,
                             WSR_BENCH_TAG_CONN, hs->conn);
        s_hs_end (self, conn);
        return;
    }
    self->rx->established++;
    self->rx->open++;
    //  Frames that came with the 101 are parsed from the handshake buffer
    uint8_t bytes [WSR_BENCH_HS_RESPONSE_MAX];
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
s_conn_control (wsr_bench_sessions_t *self, s_conn_t *conn, uint8_t opcode,
                const uint8_t *payload, size_t len)
{
    uint8_t frame [6 + WSR_BENCH_CONTROL_MAX];
    size_t size = wsr_bench_ws_control (frame, opcode, payload, len);
    ssize_t n;
    do
        n = send (conn->fd, frame, size, MSG_NOSIGNAL);
    while (n < 0 && errno == EINTR);
    if (n != (ssize_t) size)
        self->rx->send_errors++;
}

//  A measured, warm-up or final message arrived whole (its first bytes in prefix).
static void
s_conn_message (wsr_bench_sessions_t *self, s_conn_t *conn)
{
    wsr_bench_rx_t *rx = self->rx;
    char kind;
    uint32_t seq, target;
    uint64_t ts;
    if (conn->ws.prefix_len < WSR_BENCH_HDR_LEN
    ||  !wsr_bench_payload_read (conn->ws.prefix, &kind, &seq, &ts, &target)) {
        rx->foreign++;
        return;
    }
    bool right = self->opts->channel_mode? target == 0: target == conn->user;
    if (kind == WSR_BENCH_KIND_WARMUP) {
        if (!(conn->flags & S_FLAG_WARM) && right) {
            conn->flags |= S_FLAG_WARM;
            rx->warm++;
        }
        return;
    }
    if (kind == WSR_BENCH_KIND_FINAL) {
        if (!right)
            rx->misrouted++;
        else
        if (!(conn->flags & S_FLAG_FINAL)) {
            conn->flags |= S_FLAG_FINAL;
            rx->final_received++;
        }
        return;
    }
    if (kind != WSR_BENCH_KIND_MEASURED || seq == 0) {
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
    wsr_bench_hist_add (rx->latency, now > (int64_t) ts? (uint64_t) now - ts: 0);
    wsr_bench_rx_sequence (rx, &conn->seq, seq);
}

//  A frame ended. Returns 1 if the connection is closing (ignore the rest).
static int
s_conn_frame (wsr_bench_sessions_t *self, s_conn_t *conn)
{
    wsr_bench_ws_t *ws = &conn->ws;
    switch (ws->opcode) {
        case 0x8: {                                 //  close: answer with its code
            uint16_t code = ws->control_len >= 2
                          ? (uint16_t) (ws->control [0] << 8 | ws->control [1]): 0;
            s_conn_control (self, conn, 0x8, ws->control, code? 2: 0);
            int slot = code >= WSR_BENCH_CLOSE_BASE
                    && code < WSR_BENCH_CLOSE_BASE + WSR_BENCH_CLOSE_OTHER
                     ? code - WSR_BENCH_CLOSE_BASE: WSR_BENCH_CLOSE_OTHER;
            self->rx->close_codes [code? slot: 1005 - WSR_BENCH_CLOSE_BASE]++;
            self->rx->closed_by_server++;
            self->rx->open--;
            conn->state = S_CONN_CLOSING;
            return 1;
        }
        case 0x9:                                   //  ping
            s_conn_control (self, conn, 0xA, ws->control, ws->control_len);
            self->rx->pongs++;
            return 0;
        case 0xA:                                   //  pong
            return 0;
        default:                                    //  data
            if (ws->fin)
                s_conn_message (self, conn);
            return 0;
    }
}

//  Handle the server's bytes frame by frame. Returns 0, 1 if a close
//  arrived (the rest is ignored), -1 on a protocol error.
static int
s_conn_feed (wsr_bench_sessions_t *self, s_conn_t *conn, const uint8_t *data, size_t len)
{
    while (true) {
        int rc = wsr_bench_ws_feed (&conn->ws, &data, &len);
        if (rc <= 0)
            return rc;
        rc = s_conn_frame (self, conn);
        if (rc)
            return rc;
    }
}

//  The server closed the connection (EOF, reset) or broke the protocol.
static void
s_conn_gone (wsr_bench_sessions_t *self, s_conn_t *conn)
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
        self->rx->close_codes [1006 - WSR_BENCH_CLOSE_BASE]++;     //  no close frame
        self->rx->open--;
    }
    close (conn->fd);
    conn->fd = -1;
    conn->state = S_CONN_CLOSED;
}

//  Readable established connection: read a bounded amount, parse it.
static void
s_conn_read (wsr_bench_sessions_t *self, s_conn_t *conn)
{
    for (int i = 0; i < WSR_BENCH_READS_PER_WAKE; i++) {
        ssize_t n = recv (conn->fd, self->scratch, WSR_BENCH_READ_CHUNK, 0);
        if (n < 0 && errno == EINTR)
            continue;
        if (n < 0 && errno == EAGAIN)
            return;
        if (n <= 0) {
            s_conn_gone (self, conn);
            return;
        }
        self->now = wsr_bench_now ();
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
        if (n < WSR_BENCH_READ_CHUNK)
            return;
    }
}

//  --------------------------------------------------------------------------
//  One epoll event on a session.
void
wsr_bench_sessions_event (wsr_bench_sessions_t *self, uint32_t index, uint32_t events)
{
    assert (self);
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
//  Ramp, timeouts, end of the drain.
void
wsr_bench_sessions_tick (wsr_bench_sessions_t *self, int64_t now)
{
    assert (self);
    self->now = now;
    if (!self->ending && self->started < self->conn_count) {
        if (!self->ramp_t0)
            self->ramp_t0 = self->now;
        double due = (double) (self->now - self->ramp_t0) * self->ramp / 1e9 + 1;
        int budget = WSR_BENCH_START_BATCH;
        while (self->started < self->conn_count && self->inflight < self->inflight_max
           &&  (double) self->started < due && budget-- > 0)
            s_conn_start (self, self->started++);
    }
    while (self->hs_head
       &&  self->now - self->hs_head->started >= self->opts->handshake_timeout_ns)
        s_hs_fail (self, &self->conns [self->hs_head->conn], &self->rx->fail_timeout);
    if (self->ending && !self->done) {
        bool slow_done = self->slow_pending == 0 || self->now >= self->slow_deadline;
        bool complete = self->rx->received >= self->rx->expected
                     && self->rx->final_received >= self->rx->final_expected
                     && self->inflight == 0;
        if ((complete && slow_done) || self->now >= self->end_deadline)
            wsr_bench_sessions_finish (self);
    }
}

//  Last measured sequence sent to the target of conn.
static uint64_t
s_expected_last (wsr_bench_sessions_t *self, s_conn_t *conn)
{
    if (self->opts->channel_mode)
        return self->published;
    uint64_t users = wsr_bench_ident_user_count (self->ident);
    return self->published / users + (conn->user < self->published % users? 1: 0);
}

//  --------------------------------------------------------------------------
//  Publishing is over: work out what to expect, start reading slow sessions.
void
wsr_bench_sessions_end (wsr_bench_sessions_t *self, uint64_t published, uint64_t final_sent,
                        bool quick)
{
    assert (self);
    if (self->ending)
        return;
    self->ending = true;
    self->published = published;
    self->now = wsr_bench_now ();
    self->end_deadline = self->now + (quick? WSR_BENCH_QUICK_DRAIN_NS: self->opts->drain_ns);
    self->slow_deadline = self->now + WSR_BENCH_SLOW_CHECK_NS;
    wsr_bench_rx_t *rx = self->rx;
    for (uint32_t i = 0; i < self->conn_count; i++) {
        s_conn_t *conn = &self->conns [i];
        if (!(conn->flags & S_FLAG_UP))
            continue;
        if (conn->flags & S_FLAG_SLOW) {
            if (conn->fd >= 0) {
                wsr_bench_epoll_set (self->epoll_fd, EPOLL_CTL_MOD, conn->fd, EPOLLIN,
                                     WSR_BENCH_TAG_CONN, i);
                self->slow_pending++;
            }
            continue;
        }
        rx->expected += s_expected_last (self, conn);
        if (final_sent)
            rx->final_expected++;
    }
}

//  --------------------------------------------------------------------------
//  The drain is over: the counts become final.
void
wsr_bench_sessions_finish (wsr_bench_sessions_t *self)
{
    assert (self);
    wsr_bench_rx_t *rx = self->rx;
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
        if (last + 1 > conn->seq.next)
            rx->loss += last + 1 - conn->seq.next;
    }
    self->done = true;
}

//  --------------------------------------------------------------------------
//  Connections still to start.
bool
wsr_bench_sessions_ramping (wsr_bench_sessions_t *self)
{
    assert (self);
    return self->started < self->conn_count && !self->ending;
}

//  --------------------------------------------------------------------------
//  Every handshake resolved.
bool
wsr_bench_sessions_connected (wsr_bench_sessions_t *self)
{
    assert (self);
    return self->started == self->conn_count && self->inflight == 0;
}

//  --------------------------------------------------------------------------
//  Counts final.
bool
wsr_bench_sessions_done (wsr_bench_sessions_t *self)
{
    assert (self);
    return self->done;
}

//  --------------------------------------------------------------------------
//  The counters.
wsr_bench_rx_t *
wsr_bench_sessions_rx (wsr_bench_sessions_t *self)
{
    assert (self);
    return self->rx;
}

//  --------------------------------------------------------------------------
//  Selftest

//  Settings for a test: sessions to a local listener, tokens minted.
static void
s_test_opts (wsr_bench_opts_t *opts, uint32_t sessions, int port)
{
    wsr_bench_opts_defaults (opts);
    opts->sessions = sessions;
    opts->jwt_secret = "sessions-test";
    opts->user_prefix = "u";
    opts->url_count = 1;
    snprintf (opts->urls [0].host, sizeof opts->urls [0].host, "127.0.0.1:%d", port);
    snprintf (opts->urls [0].path, sizeof opts->urls [0].path, "/ws");
    assert (wsr_bench_resolve ("127.0.0.1", port, &opts->urls [0].addr) == 0);
}

//  Frames on an open session: what is counted, what is answered (the
//  parser itself is wsr_bench_ws's test).
static void
s_test_frames (void)
{
    wsr_bench_opts_t opts;
    s_test_opts (&opts, 1, 1);
    wsr_bench_ident_t *ident = wsr_bench_ident_new (&opts);
    assert (ident);
    wsr_bench_sessions_t *self = wsr_bench_sessions_new (&opts, ident, -1, 0, 1);
    assert (self->conn_count == 1 && self->conns [0].user == 0);
    wsr_bench_rx_t *rx = self->rx;
    s_conn_t *conn = &self->conns [0];
    int pair [2];
    assert (socketpair (AF_UNIX, SOCK_STREAM, 0, pair) == 0);

    //  Two measured messages, a ping between the fragments of the second,
    //  then a close 1001, cut in two anywhere
    uint8_t stream [512];
    size_t total = 0;
    for (uint32_t seq = 1; seq <= 2; seq++) {
        char payload [WSR_BENCH_HDR_LEN + 10];
        memset (payload, 'x', sizeof payload);
        wsr_bench_payload_write (payload, 'M', seq, (uint64_t) wsr_bench_now (), 0);
        if (seq == 2) {
            stream [total++] = 0x01;                //  fragment 1: 20 bytes
            stream [total++] = 20;
            memcpy (stream + total, payload, 20);
            total += 20;
            memcpy (stream + total, "\x89\x02hi", 4); //  ping "hi"
            total += 4;
            stream [total++] = 0x80;                //  fragment 2: the rest
            stream [total++] = sizeof payload - 20;
            memcpy (stream + total, payload + 20, sizeof payload - 20);
            total += sizeof payload - 20;
        }
        else {
            stream [total++] = 0x81;
            stream [total++] = sizeof payload;
            memcpy (stream + total, payload, sizeof payload);
            total += sizeof payload;
        }
    }
    memcpy (stream + total, "\x88\x02\x03\xE9", 4);
    total += 4;
    for (size_t cut = 0; cut <= total; cut++) {
        wsr_bench_rx_reset (rx);
        memset (conn, 0, sizeof *conn);
        conn->fd = pair [0];
        conn->state = S_CONN_OPEN;
        conn->seq.next = 1;
        rx->open = 1;
        self->now = wsr_bench_now ();
        int rc = s_conn_feed (self, conn, stream, cut);
        assert (rc == (cut == total? 1: 0));
        if (cut < total)
            rc = s_conn_feed (self, conn, stream + cut, total - cut);
        assert (rc == 1);
        assert (rx->received == 2 && rx->loss == 0 && rx->foreign == 0);
        assert (wsr_bench_hist_count (rx->latency) == 2);
        assert (rx->close_codes [1001 - WSR_BENCH_CLOSE_BASE] == 1 && rx->pongs == 1);
        assert (conn->state == S_CONN_CLOSING && rx->open == 0 && rx->closed_by_server == 1);
        //  The client sent a masked pong "hi" and a masked close 1001
        uint8_t reply [32];
        assert (recv (pair [1], reply, sizeof reply, 0) == 8 + 8);
        assert (reply [0] == 0x8A && reply [1] == (0x80 | 2));
        assert ((reply [6] ^ reply [2]) == 'h' && (reply [7] ^ reply [3]) == 'i');
        assert (reply [8] == 0x88 && reply [9] == (0x80 | 2));
        assert ((reply [14] ^ reply [10]) == 0x03 && (reply [15] ^ reply [11]) == 0xE9);
    }
    //  A protocol error is reported to the caller
    memset (conn, 0, sizeof *conn);
    conn->fd = pair [0];
    conn->state = S_CONN_OPEN;
    assert (s_conn_feed (self, conn, (const uint8_t *) "\xC1\x00", 2) == -1);

    //  Messages that are not ours: too short, a wrong target, a sequence 0;
    //  a warm-up and a final message counted once each
    wsr_bench_rx_reset (rx);
    memset (conn, 0, sizeof *conn);
    conn->fd = pair [0];
    conn->state = S_CONN_OPEN;
    conn->seq.next = 1;
    assert (s_conn_feed (self, conn, (const uint8_t *) "\x81\x03" "abc", 5) == 0);
    uint8_t frame [2 + WSR_BENCH_HDR_LEN] = { 0x81, WSR_BENCH_HDR_LEN };
    wsr_bench_payload_write ((char *) frame + 2, 'M', 1, 1, 5);
    assert (s_conn_feed (self, conn, frame, sizeof frame) == 0);
    wsr_bench_payload_write ((char *) frame + 2, 'M', 0, 1, 0);
    assert (s_conn_feed (self, conn, frame, sizeof frame) == 0);
    wsr_bench_payload_write ((char *) frame + 2, 'W', 0, 1, 0);
    assert (s_conn_feed (self, conn, frame, sizeof frame) == 0);
    assert (s_conn_feed (self, conn, frame, sizeof frame) == 0);
    wsr_bench_payload_write ((char *) frame + 2, 'F', 0, 1, 0);
    assert (s_conn_feed (self, conn, frame, sizeof frame) == 0);
    assert (s_conn_feed (self, conn, frame, sizeof frame) == 0);
    assert (rx->foreign == 2 && rx->misrouted == 1 && rx->received == 0);
    assert (rx->warm == 1 && rx->final_received == 1);

    //  The tail: 2 received of 8 published to the one user, then loss 6
    wsr_bench_rx_reset (rx);
    memset (conn, 0, sizeof *conn);
    conn->fd = -1;
    conn->seq.next = 1;
    conn->flags = S_FLAG_UP;
    for (uint32_t seq = 1; seq <= 2; seq++) {
        wsr_bench_payload_write ((char *) frame + 2, 'M', seq, 1, 0);
        assert (s_conn_feed (self, conn, frame, sizeof frame) == 0);
    }
    wsr_bench_sessions_end (self, 8, 0, false);
    assert (rx->expected == 8);
    wsr_bench_sessions_finish (self);
    assert (rx->received == 2 && rx->loss == 6 && wsr_bench_sessions_done (self));
    close (pair [0]);
    close (pair [1]);
    wsr_bench_sessions_destroy (&self);
    wsr_bench_ident_destroy (&ident);
}

//  Run the sessions for ms: their events, then a tick.
static void
s_pump (wsr_bench_sessions_t *self, int epoll_fd, int ms)
{
    struct epoll_event events [16];
    int n = epoll_wait (epoll_fd, events, 16, ms);
    for (int i = 0; i < n; i++) {
        assert ((uint32_t) (events [i].data.u64 >> 32) == WSR_BENCH_TAG_CONN);
        wsr_bench_sessions_event (self, (uint32_t) events [i].data.u64, events [i].events);
    }
    wsr_bench_sessions_tick (self, wsr_bench_now ());
}

//  Handshakes against a scripted server: one good 101 with a first frame in
//  the same packet, a 403, a wrong accept key, a close, and silence.
static void
s_test_handshakes (bool verbose)
{
    int listener = socket (AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
    assert (listener >= 0);
    struct sockaddr_in addr = { .sin_family = AF_INET };
    addr.sin_addr.s_addr = htonl (INADDR_LOOPBACK);
    socklen_t addr_len = sizeof addr;
    assert (bind (listener, (struct sockaddr *) &addr, sizeof addr) == 0);
    assert (getsockname (listener, (struct sockaddr *) &addr, &addr_len) == 0);
    assert (listen (listener, 16) == 0);
    wsr_bench_opts_t opts;
    s_test_opts (&opts, 5, ntohs (addr.sin_port));
    opts.channel = "room";
    opts.channel_mode = true;                   //  every session takes target 0
    opts.ramp = 1e9;                            //  all at once
    opts.handshake_timeout_ns = 300 * WSR_BENCH_MS;
    wsr_bench_ident_t *ident = wsr_bench_ident_new (&opts);
    assert (ident);
    int epoll_fd = epoll_create1 (EPOLL_CLOEXEC);
    assert (epoll_fd >= 0);
    wsr_bench_sessions_t *self = wsr_bench_sessions_new (&opts, ident, epoll_fd, 0, 1);
    assert (wsr_bench_sessions_ramping (self) && !wsr_bench_sessions_connected (self));
    int64_t start = wsr_bench_now ();
    wsr_bench_sessions_tick (self, start);                      //  the ramp starts: one
    assert (self->started == 1);
    wsr_bench_sessions_tick (self, start + WSR_BENCH_MS);       //  then all that are due
    assert (self->started == 5 && self->inflight == 5 && !wsr_bench_sessions_ramping (self));

    //  Accept the five and read their requests whole
    int peers [5];
    char requests [5][2048];
    size_t lengths [5] = { 0 };
    for (int i = 0; i < 5; i++) {
        peers [i] = accept (listener, NULL, NULL);
        assert (peers [i] >= 0);
    }
    int64_t deadline = wsr_bench_now () + 5 * WSR_BENCH_SEC;
    int complete = 0;
    while (complete < 5 && wsr_bench_now () < deadline) {
        s_pump (self, epoll_fd, 10);
        complete = 0;
        for (int i = 0; i < 5; i++) {
            ssize_t n = recv (peers [i], requests [i] + lengths [i],
                              sizeof requests [i] - 1 - lengths [i], MSG_DONTWAIT);
            if (n > 0)
                lengths [i] += (size_t) n;
            requests [i][lengths [i]] = 0;
            complete += strstr (requests [i], "\r\n\r\n") != NULL;
        }
    }
    assert (complete == 5);
    for (int i = 0; i < 5; i++) {
        assert (strncmp (requests [i], "GET /ws?token=", 14) == 0);
        char *host = zsys_sprintf ("\r\nHost: 127.0.0.1:%d\r\n", ntohs (addr.sin_port));
        assert (strstr (requests [i], host));
        zstr_free (&host);
        assert (strstr (requests [i], "\r\nSec-WebSocket-Version: 13\r\n"));
    }
    //  The good one: the right accept key, and a measured message with it
    size_t len = 0;
    const char *key = wsr_bench_header_find (requests [0], lengths [0], "sec-websocket-key",
                                             &len);
    assert (key && len == 24);
    char key_text [32], accept [32];
    snprintf (key_text, sizeof key_text, "%.*s", (int) len, key);
    wsr_bench_ws_accept_key (key_text, accept, sizeof accept);
    char answer [512];
    int n = snprintf (answer, sizeof answer, "HTTP/1.1 101 Switching Protocols\r\n"
                      "Upgrade: websocket\r\nConnection: Upgrade\r\n"
                      "Sec-WebSocket-Accept: %s\r\n\r\n", accept);
    answer [n++] = (char) 0x81;
    answer [n++] = WSR_BENCH_HDR_LEN;
    wsr_bench_payload_write (answer + n, 'M', 1, (uint64_t) wsr_bench_now (), 0);
    n += WSR_BENCH_HDR_LEN;
    assert (send (peers [0], answer, (size_t) n, 0) == n);
    const char *refused = "HTTP/1.1 403 Forbidden\r\nContent-Length: 0\r\n\r\n";
    assert (send (peers [1], refused, strlen (refused), 0) == (ssize_t) strlen (refused));
    const char *wrong = "HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\n"
                        "Connection: Upgrade\r\nSec-WebSocket-Accept: AAAA\r\n\r\n";
    assert (send (peers [2], wrong, strlen (wrong), 0) == (ssize_t) strlen (wrong));
    close (peers [3]);
    peers [3] = -1;
    //  peers [4] stays silent: its handshake times out
    deadline = wsr_bench_now () + 5 * WSR_BENCH_SEC;
    while (!wsr_bench_sessions_connected (self) && wsr_bench_now () < deadline)
        s_pump (self, epoll_fd, 10);
    assert (wsr_bench_sessions_connected (self));
    wsr_bench_rx_t *rx = self->rx;
    if (verbose) {
        json_t *json = wsr_bench_rx_to_json (rx);
        char *text = json_dumps (json, JSON_COMPACT);
        printf ("\n%s\n", text);
        free (text);
        json_decref (json);
    }
    assert (rx->attempted == 5 && rx->established == 1 && rx->open == 1 && rx->failed == 4);
    assert (rx->fail_status == 1 && rx->hs_status [403 - WSR_BENCH_STATUS_BASE] == 1);
    assert (rx->fail_accept == 1 && rx->fail_eof == 1 && rx->fail_timeout == 1);
    assert (rx->received == 1 && wsr_bench_hist_count (rx->handshake) == 1);

    //  A server close of the open session is answered and counted
    uint8_t close_frame [] = { 0x88, 2, 0x03, 0xE8 };
    assert (send (peers [0], close_frame, sizeof close_frame, 0) == sizeof close_frame);
    deadline = wsr_bench_now () + 5 * WSR_BENCH_SEC;
    while (rx->closed_by_server == 0 && wsr_bench_now () < deadline)
        s_pump (self, epoll_fd, 10);
    assert (rx->closed_by_server == 1 && rx->close_codes [0] == 1 && rx->open == 0);
    uint8_t reply [8];
    assert (recv (peers [0], reply, sizeof reply, 0) == 8);
    assert (reply [0] == 0x88 && reply [1] == (0x80 | 2));

    //  Publishing over: one message went to the channel, it arrived
    wsr_bench_sessions_end (self, 1, 0, false);
    wsr_bench_sessions_tick (self, wsr_bench_now ());
    assert (wsr_bench_sessions_done (self));
    assert (rx->expected == 1 && rx->loss == 0);
    for (int i = 0; i < 5; i++)
        if (peers [i] >= 0)
            close (peers [i]);
    close (listener);
    wsr_bench_sessions_destroy (&self);
    close (epoll_fd);
    wsr_bench_ident_destroy (&ident);
}

void
wsr_bench_sessions_test (bool verbose)
{
    assert (sodium_init () >= 0);
    s_test_frames ();
    s_test_handshakes (verbose);
}
