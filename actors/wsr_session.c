//  wsr_session — a session worker actor: thousands of WebSocket sessions on one epoll loop
//
//  Each session is a small state machine (open → closing → closed) driven by
//  one message at a time, but sessions are not threads: a worker (one per
//  core by default) owns an epoll set with all its client sockets and its
//  ZeroMQ sockets (through ZMQ_FD, edge-triggered, drained with a budget).
//
//  Input: wslay's event API parses client frames (masking, fragmentation,
//  control frames, close codes, length limit). Its context holds ~8.8 KB of
//  buffers, so a session only has one while it is reading or closing: the
//  context is created when bytes arrive and released as soon as every byte
//  fed to it belongs to a completed frame and no message is half-received.
//  Text messages are checked for UTF-8 (→ 1007).
//
//  Output: one ordered queue of shared, already-framed wsr_outframe_t per
//  session. A delivery frames the message once per worker and links it into
//  every recipient's queue; dirty sessions are flushed with writev after
//  each batch. wslay's own output (pong, close) is appended to the same queue
//  from its send callback, so frames never interleave.
//
//  Sockets (owned):
//    pipe                          PAIR  commands: START, DRAIN, SESSIONS, $TERM
//    inproc://wsr-adopt-NAME-N     PULL  bind; ADOPT from the auth actor
//    the bridge's endpoint         DEALER (wsr_link) connect; SUB/UNSUB and UP
//                                  to the bridge, D (deliveries) and REPLY from it
//  A session's first member of a topic subscribes it at the bridge, the
//  last one leaving unsubscribes: the bridge sends this worker exactly what
//  its sessions want, once per worker, with no relay thread in between.
//  Descriptors (owned): the epoll set and every adopted client socket.

#include "wsr_classes.h"
#include <malloc.h>
#include <poll.h>
#include <sys/epoll.h>
#include <sys/socket.h>
#include <wslay/wslay.h>

#define S_TAG_PIPE          1       //  epoll data for the ZeroMQ sockets
#define S_TAG_ADOPT         2
#define S_TAG_LINK          3
#define S_TAG_MAX           16      //  below any heap pointer
#define S_MAX_EVENTS        256     //  epoll_wait batch
#define S_MAX_IOV           64      //  iovecs per writev
#define S_READ_BUDGET       (64 * 1024)     //  bytes per session per turn
#define S_FRAME_BUDGET      64              //  frames per session per turn
#define S_TRIM_BYTES        (4 * 1024 * 1024)   //  freed output before malloc_trim
#define S_REPLAY_MAX        (64 * 1024)     //  unparsed bytes a session keeps for a
                                            //  handover (beyond: not transferable)
#define S_SCRATCH_SIZE      (2 * S_READ_BUDGET) //  bytes fed to wslay in one read

//  Close reason for slow consumers; compared by address to tell it apart
static const char s_slow [] = "slow consumer: output queue full";
#define S_SYNC_TIMEOUT_MS   5000    //  a handover barrier (SYNC) answered by then
#define S_QUEUE_ENTRY_COST  64      //  bytes a queued frame costs beyond its wire bytes
static const char s_rate [] = "rate limit exceeded";
static const char s_expired [] = "token expired";
static const char s_no_hello [] = "hello expected";

typedef enum {
    S_OPEN,                         //  authenticated, receiving deliveries
    S_CLOSING,                      //  our close frame queued or sent
    S_DEAD                          //  fd closed, freed at end of the turn
} s_state_t;

typedef struct _s_qnode_t {
    wsr_outframe_t *frame;          //  one reference (owned)
    struct _s_qnode_t *next;
} s_qnode_t;

typedef struct _s_conn_t s_conn_t;

//  A timer list: every entry has the same delay, so appending keeps it sorted
//  by deadline and only the head is ever checked. A session is on at most one
//  (active → ping due, pinged → pong due, closing → close reply due).
typedef struct {
    s_conn_t *head, *tail;
} s_list_t;

struct _s_conn_t {
    uint64_t id;                    //  session id (from the listener)
    int fd;                         //  client socket (owned)
    s_state_t state;                //  lifecycle
    bool dirty;                     //  on the worker's flush list
    uint32_t events;                //  epoll mask registered for fd
    bool in_frame;                  //  wslay saw a frame start, not its end
    bool in_msg;                    //  fragmented message in progress
    bool doomed;                    //  on the worker's close list
    uint16_t doom_code;             //  close code to send when doomed
    const char *doom_reason;        //  its reason (static string)
    bool io_error;                  //  our recv callback saw EOF or an error
    bool in_close;                  //  the frame being read is a close frame
    uint16_t close_echo;            //  our answer to a close wslay gets wrong:
                                    //  1012-1014 echoed, 1-byte payload → 1002
    uint8_t close_payload [125];    //  peer's close frame, for the echo
    uint8_t close_len;
    int ip_slot;                    //  per-IP counter slot, -1 if none
    float msg_tokens;               //  inbound rate limit buckets
    float byte_tokens;
    int64_t rate_last;              //  mono ms of the last refill
    wslay_event_context_ptr ws;     //  lazily created wslay context (owned)
    uint64_t fed;                   //  bytes given to wslay
    uint64_t framed;                //  bytes of frames wslay has started
    char *user;                     //  user id (owned), NULL if rejected
    wsr_topic_member_t *member;     //  user topic membership
    wsr_topic_member_t **channels;  //  channel memberships (owned array)
    size_t channel_count;
    s_qnode_t *qhead, *qtail;       //  output queue
    size_t qbytes;                  //  wire bytes queued
    uint32_t qcount;                //  frames queued (each costs memory however small)
    size_t qoffset;                 //  bytes of qhead already written
    uint8_t *early;                 //  bytes read by the listener (owned)
    size_t early_size, early_used;
    int64_t deadline;               //  mono ms when its timer list acts on it
    s_list_t *tlist;                //  timer list it is on, or NULL
    s_conn_t *tprev, *tnext;        //  neighbours on that list
    s_conn_t *prev, *next;          //  all connections of the worker
    s_conn_t *dirty_next;           //  flush list
    s_conn_t *delay_next;           //  delayed-flush list (WEBSOCKET_WRITE_DELAY)
    bool delayed;                   //  on it (a dead session stays until it drains)
    s_conn_t *doom_next;            //  close list
    bool read_off;                  //  wslay reads no more (close or error)
    bool hs_pending;                //  the 101 response is still queued (head)
    int64_t expiry;                 //  Unix s when the token runs out (+ leeway), 0 never
    bool v1;                        //  speaks wsrouter.v1 (JSON) rather than raw
    wsr_v1sess_t *opening;          //  v1: hello, recovery, welcome; NULL once live
    void *opening_handle;           //  its entry in the worker's opening list
    uint32_t expiry_slot;           //  its index in the worker's expiry heap + 1, 0 = none
    int64_t since_ms;               //  wall-clock ms when it opened (lifecycle events)
    //  Handover: the bytes fed to wslay that a new context would need again
    uint8_t *replay;                //  bytes from replay_base up to fed (owned)
    size_t replay_size, replay_cap;
    uint64_t replay_base;           //  offset (in fed) of replay [0]
    uint64_t keep_from;             //  offset where the incomplete message starts
    bool replay_lost;               //  over S_REPLAY_MAX: not exportable yet
    wsr_tlsconn_t *ssl;             //  TLS session (owned with fd), NULL on plain TCP
    uint32_t tls_retry;             //  bytes of a TLS write OpenSSL must finish (wsr_tls)
    bool deflate;                   //  permessage-deflate negotiated
};

struct _wsr_session_t {
    zactor_t *actor;                //  the worker thread
};

typedef struct {
    char *name;                     //  node instance name
    int index;                      //  worker index
    wsr_session_opts_t opts;        //  limits
    wsr_metrics_t *metrics;         //  shared counters (not owned)
    wsr_ipcount_t *ipcount;         //  per-IP counters (not owned)
} s_args_t;

typedef struct {
    zsock_t *pipe;                  //  actor pipe (not owned)
    zsock_t *adopt;                 //  PULL ADOPT
    wsr_link_t *link;               //  DEALER to the bridge: topics, deliveries, upstream
    int epoll_fd;                   //  epoll set (owned)
    char *node;                     //  node id for envelopes
    int index;                      //  worker index for logs
    wsr_session_opts_t opts;        //  limits
    wsr_metrics_t *metrics;         //  shared counters
    wsr_topic_t *topics;            //  topic → sessions
    bool census_walking;            //  a count for the console (wsr_census) is under way
    zhashx_t *by_id;                //  session id → s_conn_t (not owned), for REPLY
    s_conn_t *all;                  //  every connection
    size_t count;                   //  connections in all
    size_t open;                    //  sessions in S_OPEN
    s_conn_t *dirty;                //  sessions to flush
    s_conn_t *delayed;              //  sessions whose deliveries wait for flush_at
    int64_t flush_at;               //  mono ms when the delayed list is flushed
    s_conn_t *doomed;               //  sessions to close after the current batch
    s_list_t active;                //  open sessions by last input (ping due)
    s_list_t pinged;                //  pinged sessions (pong due)
    s_list_t closing;               //  closing sessions (close reply due)
    zlistx_t *opening;              //  s_opening_t: v1 sessions before their welcome,
                                    //  oldest first (one fixed delay: sorted)
    zhashx_t *reads;                //  history read id → s_read_t (owned)
    uint64_t next_read;             //  read ids
    wsr_history_entry_t *entries;   //  scratch for decoding read results (owned)
    int64_t reads_swept;            //  mono ms of the last sweep of old reads
    s_conn_t **expiries;            //  min-heap by expiry: sessions whose token runs out
    size_t expiry_count, expiry_cap;
    wsr_outframe_t *ping;           //  the ping frame, shared by all sessions
    wsr_ipcount_t *ipcount;         //  per-IP connection counters (not owned)
    s_conn_t *dead;                 //  freed at the end of the turn
    s_conn_t *current;              //  session wslay is working for
    size_t read_budget;             //  bytes left for current in this turn
    int frame_budget;               //  frames left for current in this turn
    size_t freed_output;            //  output bytes dropped since the last trim
    int64_t count_in, bytes_in;     //  per-message counters, added to the shared
    int64_t count_out, bytes_out;   //  metrics once per turn (s_after_batch), not
    int64_t count_up;               //  once per message
    wsr_jwt_t *verifier;            //  v1 refresh tokens (owned), NULL: none configured
    bool draining;                  //  DRAIN received
    bool terminated;                //  $TERM received
    int status;                     //  init result for START
    uint8_t *scratch;               //  bytes fed to wslay in this read (owned, lazy)
    size_t scratch_size;
    bool scratch_over;              //  more than S_SCRATCH_SIZE: not kept
    wsr_deflate_t *deflate;         //  permessage-deflate codec, made on first use (owned)
    //  Handover (new process): deliveries held per topic until its sessions come
    wsr_hring_t *hring;             //  rings (owned), NULL outside a handover
    //  Handover barrier (PRESUB, SYNC): the pipe is owed an answer
    bool sync_owed;
    uint64_t sync_token;            //  of the SYNC under way
    int sync_waiting;               //  bridges yet to answer SYNCED
    int64_t sync_deadline;          //  mono ms: answered -1 then
} s_worker_t;

static void s_conn_flush (s_worker_t *self, s_conn_t *conn);
static void s_conn_kill (s_worker_t *self, s_conn_t *conn);
static void s_conn_unlink (s_worker_t *self, s_conn_t *conn);
static void s_conn_read (s_worker_t *self, s_conn_t *conn);

//  --------------------------------------------------------------------------
//  Output queue

//  Queue nodes are recycled per worker thread (one per queued message per
//  recipient: the hottest allocation); the free list is bounded.
#define S_FREE_NODES_MAX    4096
static __thread s_qnode_t *s_free_nodes = NULL;
static __thread size_t s_free_count = 0;

static s_qnode_t *
s_node_alloc (void)
{
    s_qnode_t *node = s_free_nodes;
    if (node) {
        s_free_nodes = node->next;
        s_free_count--;
        return node;
    }
    node = (s_qnode_t *) malloc (sizeof (s_qnode_t));
    assert (node);
    return node;
}

static void
s_node_free (s_qnode_t *node)
{
    if (s_free_count < S_FREE_NODES_MAX) {
        node->next = s_free_nodes;
        s_free_nodes = node;
        s_free_count++;
    }
    else
        free (node);
}

//  Release this thread's free list (when the worker ends).
static void
s_node_purge (void)
{
    while (s_free_nodes) {
        s_qnode_t *node = s_free_nodes;
        s_free_nodes = node->next;
        free (node);
    }
    s_free_count = 0;
}

static void
s_queue_push (s_conn_t *conn, wsr_outframe_t **frame_p)
{
    s_qnode_t *node = s_node_alloc ();
    node->frame = *frame_p;
    *frame_p = NULL;
    node->next = NULL;
    conn->qbytes += wsr_outframe_size (node->frame);
    conn->qcount++;
    if (conn->qtail)
        conn->qtail->next = node;
    else
        conn->qhead = node;
    conn->qtail = node;
}

//  Drop queued frames; keep the head if it is partly written so the stream
//  stays well-formed for the close frame that follows.
//  On TLS, the frames a started record covers (tls_retry) are kept too: the
//  record is encrypted already and will go out whole.
static void
s_queue_clear (s_conn_t *conn, bool keep_partial)
{
    s_qnode_t *node = conn->qhead;
    s_qnode_t *kept = NULL, *kept_tail = NULL;
    size_t covered = 0, kept_bytes = 0;
    uint32_t kept_count = 0;
    bool keep_head = keep_partial && (conn->qoffset > 0 || conn->hs_pending);
    while (node && keep_partial && (keep_head || covered < conn->qoffset + conn->tls_retry)) {
        keep_head = false;
        covered += wsr_outframe_size (node->frame);
        kept_bytes = covered;
        kept_count++;
        if (kept_tail)
            kept_tail->next = node;
        else
            kept = node;
        kept_tail = node;
        node = node->next;
        kept_tail->next = NULL;
    }
    while (node) {
        s_qnode_t *next = node->next;
        wsr_outframe_unlink (&node->frame);
        s_node_free (node);
        node = next;
    }
    conn->qhead = kept;
    conn->qtail = kept_tail;
    conn->qbytes = kept? kept_bytes - conn->qoffset: 0;
    conn->qcount = kept_count;
    if (!kept)
        conn->qoffset = 0;
}

//  A session's queue is over its limit by wire bytes, or by what its
//  entries cost: compressed or tiny frames take few wire bytes each but
//  a queue node and a frame header each (a slow consumer with
//  permessage-deflate would otherwise hold tens of thousands of them).
static bool
s_queue_over (s_worker_t *self, s_conn_t *conn)
{
    return conn->qbytes + (size_t) conn->qcount * S_QUEUE_ENTRY_COST > self->opts.max_queue;
}

static void
s_mark_dirty (s_worker_t *self, s_conn_t *conn)
{
    if (!conn->dirty && conn->state != S_DEAD) {
        conn->dirty = true;
        conn->dirty_next = self->dirty;
        self->dirty = conn;
    }
}

//  A delivery waits up to WEBSOCKET_WRITE_DELAY, so a session's messages in
//  that window leave in one writev; the window opens with the first delayed
//  delivery and every session on the list is flushed when it ends. Control
//  frames, replies and closes are not delayed (and take what is queued).
static void
s_mark_delayed (s_worker_t *self, s_conn_t *conn)
{
    if (self->opts.write_delay_ms <= 0) {
        s_mark_dirty (self, conn);
        return;
    }
    if (conn->delayed || conn->dirty || conn->state == S_DEAD)
        return;
    if (!self->delayed)
        self->flush_at = wsr_util_mono_ms () + self->opts.write_delay_ms;
    conn->delayed = true;
    conn->delay_next = self->delayed;
    self->delayed = conn;
}

static void s_conn_free (s_conn_t *conn);

//  The window ended (or the worker stops): every delayed session is flushed;
//  one that died meanwhile is freed now.
static void
s_delayed_release (s_worker_t *self)
{
    while (self->delayed) {
        s_conn_t *conn = self->delayed;
        self->delayed = conn->delay_next;
        conn->delayed = false;
        if (conn->state == S_DEAD) {
            self->freed_output += conn->qbytes + (size_t) conn->qcount * S_QUEUE_ENTRY_COST;
            s_conn_free (conn);
        }
        else
            s_mark_dirty (self, conn);
    }
}

//  --------------------------------------------------------------------------
//  Timer lists

static void
s_timer_clear (s_conn_t *conn)
{
    s_list_t *list = conn->tlist;
    if (!list)
        return;
    if (conn->tprev)
        conn->tprev->tnext = conn->tnext;
    else
        list->head = conn->tnext;
    if (conn->tnext)
        conn->tnext->tprev = conn->tprev;
    else
        list->tail = conn->tprev;
    conn->tprev = conn->tnext = NULL;
    conn->tlist = NULL;
}

static void
s_timer_set (s_conn_t *conn, s_list_t *list, int64_t deadline)
{
    s_timer_clear (conn);
    conn->deadline = deadline;
    conn->tlist = list;
    conn->tprev = list->tail;
    if (list->tail)
        list->tail->tnext = conn;
    else
        list->head = conn;
    list->tail = conn;
}

//  Input from the peer: it is alive; the next ping is due an interval later.
static void
s_touch (s_worker_t *self, s_conn_t *conn)
{
    if (conn->state == S_OPEN && self->opts.ping_interval_ms > 0)
        s_timer_set (conn, &self->active, wsr_util_mono_ms () + self->opts.ping_interval_ms);
}

//  --------------------------------------------------------------------------
//  Token expiry: a binary min-heap of sessions by the instant their token
//  runs out (exp plus the leeway). Deadlines differ per session, so a list
//  with one delay does not fit; the heap costs O(log n) to add, remove or
//  move a session (a token refresh only moves its deadline) and the
//  earliest deadline is always at the top.

static void
s_heap_place (s_worker_t *self, size_t slot, s_conn_t *conn)
{
    self->expiries [slot] = conn;
    conn->expiry_slot = (uint32_t) slot + 1;
}

static void
s_heap_up (s_worker_t *self, size_t slot)
{
    s_conn_t *conn = self->expiries [slot];
    while (slot > 0) {
        size_t parent = (slot - 1) / 2;
        if (self->expiries [parent]->expiry <= conn->expiry)
            break;
        s_heap_place (self, slot, self->expiries [parent]);
        slot = parent;
    }
    s_heap_place (self, slot, conn);
}

static void
s_heap_down (s_worker_t *self, size_t slot)
{
    s_conn_t *conn = self->expiries [slot];
    while (true) {
        size_t child = 2 * slot + 1;
        if (child >= self->expiry_count)
            break;
        if (child + 1 < self->expiry_count
        &&  self->expiries [child + 1]->expiry < self->expiries [child]->expiry)
            child++;
        if (self->expiries [child]->expiry >= conn->expiry)
            break;
        s_heap_place (self, slot, self->expiries [child]);
        slot = child;
    }
    s_heap_place (self, slot, conn);
}

static void
s_expiry_clear (s_worker_t *self, s_conn_t *conn)
{
    if (!conn->expiry_slot)
        return;
    size_t slot = conn->expiry_slot - 1;
    conn->expiry_slot = 0;
    s_conn_t *last = self->expiries [--self->expiry_count];
    if (last != conn) {
        s_heap_place (self, slot, last);
        s_heap_down (self, slot);
        s_heap_up (self, last->expiry_slot - 1);
    }
}

//  Set (or move, or with 0 remove) a session's expiry.
static void
s_expiry_set (s_worker_t *self, s_conn_t *conn, int64_t expiry)
{
    s_expiry_clear (self, conn);
    conn->expiry = expiry;
    if (expiry <= 0)
        return;
    if (self->expiry_count == self->expiry_cap) {
        self->expiry_cap = self->expiry_cap? self->expiry_cap * 2: 1024;
        self->expiries = (s_conn_t **) realloc (self->expiries,
                                                self->expiry_cap * sizeof (s_conn_t *));
        assert (self->expiries);
    }
    s_heap_place (self, self->expiry_count++, conn);
    s_heap_up (self, self->expiry_count - 1);
}

//  Sessions are never closed from inside a walk or a wslay callback: they
//  are put on the close list and closed after the batch.
static void
s_doom (s_worker_t *self, s_conn_t *conn, uint16_t code, const char *reason)
{
    if (!conn->doomed && conn->state == S_OPEN) {
        conn->doomed = true;
        conn->doom_code = code;
        conn->doom_reason = reason;
        conn->doom_next = self->doomed;
        self->doomed = conn;
    }
}

//  --------------------------------------------------------------------------
//  A server message of our own (an error, a v1 message) for one session.
static void
s_queue_text (s_worker_t *self, s_conn_t *conn, const char *text, size_t len)
{
    wsr_outframe_t *frame = wsr_outframe_new (WSR_KIND_TEXT, (const uint8_t *) text, len, NULL);
    s_queue_push (conn, &frame);
    s_mark_dirty (self, conn);
}

//  --------------------------------------------------------------------------
//  A client message upstream.
static void
s_send_up (s_worker_t *self, s_conn_t *conn, int kind, const uint8_t *data, size_t size)
{
    zframe_t *env = wsr_envelope_encode_up (conn->user, conn->id, self->node,
                                            wsr_util_now_us (), kind, data, size);
    if (wsr_link_send_up (self->link, &env) == 0)
        self->count_up++;
    else {
        //  Never block on a full or unreachable bridge: drop, count, and
        //  tell the client
        wsr_metrics_add (self->metrics, WSR_M_UPSTREAM_DROPS, 1);
        s_queue_text (self, conn, WSR_ERROR_UPSTREAM_BUSY, strlen (WSR_ERROR_UPSTREAM_BUSY));
    }
}

static void s_v1_error (s_worker_t *self, s_conn_t *conn, const char *error);

//  A token refresh (v1): the same sub; the expiry moves.
static void
s_v1_refresh (s_worker_t *self, s_conn_t *conn, const char *token)
{
    if (!self->verifier) {
        s_v1_error (self, conn, "refresh is not available");
        return;
    }
    wsr_claims_t claims;
    const char *reason = NULL;
    int rc = wsr_jwt_verify (self->verifier, token, strnlen (token, WSR_MAX_TOKEN_LEN + 1),
                             wsr_util_now_us () / 1000000, &claims, &reason);
    if (rc == 0 && !streq (claims.sub, conn->user)) {
        rc = -1;
        reason = "refresh for another user";
    }
    if (rc) {
        //  The session's identity is in doubt: it ends (the spec's 1008)
        wsr_metrics_add (self->metrics, WSR_M_V1_REFRESH_REFUSED, 1);
        s_doom (self, conn, WSLAY_CODE_POLICY_VIOLATION, reason? reason: "token invalid");
    }
    else {
        //  Channels stay those of the connecting token: a refresh moves the
        //  expiry only (docs/PROTOCOL.md)
        s_expiry_set (self, conn, claims.exp > 0? claims.exp + wsr_jwt_leeway (self->verifier): 0);
        size_t len = 0;
        char *text = wsr_v1_refreshed (claims.exp, &len);
        s_queue_text (self, conn, text, len);
        free (text);
        wsr_metrics_add (self->metrics, WSR_M_V1_REFRESHED, 1);
    }
    sodium_memzero (&claims, sizeof claims);
}

//  --------------------------------------------------------------------------
//  wsrouter.v1 sessions: their opening (wsr_v1sess) and their messages

//  The worker of this thread, for the v1 opening's callbacks
static __thread s_worker_t *s_worker = NULL;

typedef struct {
    s_conn_t *conn;                 //  not owned
    int64_t deadline;               //  mono ms: hello, or the reads, due
} s_opening_t;

typedef struct {
    uint64_t conn_id;               //  who asked (the session may be gone)
    int64_t asked_at;               //  mono ms
    char topic [WSR_TOPIC_MAX];
} s_read_t;

static void
s_v1_error (s_worker_t *self, s_conn_t *conn, const char *error)
{
    size_t len = 0;
    char *text = wsr_v1_error (error, &len);
    s_queue_text (self, conn, text, len);
    free (text);
    wsr_metrics_add (self->metrics, WSR_M_V1_ERRORS, 1);
}

static void
s_v1_io_queue (void *arg, wsr_outframe_t **frame_p)
{
    s_conn_t *conn = (s_conn_t *) arg;
    s_queue_push (conn, frame_p);
    s_mark_dirty (s_worker, conn);
}

static int
s_v1_io_read (void *arg, const char *topic, const char *epoch, uint64_t since, size_t max)
{
    s_conn_t *conn = (s_conn_t *) arg;
    s_worker_t *self = s_worker;
    if (zhashx_size (self->reads) >= WSR_V1_MAX_READS)
        return -1;
    uint64_t id = ++self->next_read;
    s_read_t *read = (s_read_t *) zmalloc (sizeof (s_read_t));
    read->conn_id = conn->id;
    read->asked_at = wsr_util_mono_ms ();
    snprintf (read->topic, sizeof read->topic, "%s", topic);
    if (wsr_link_read (self->link, id, topic, epoch, since, max)) {
        free (read);
        return -1;
    }
    zhashx_insert (self->reads, (void *) (uintptr_t) id, read);
    return 0;
}

static const wsr_v1sess_io_t
s_v1_io = { s_v1_io_queue, s_v1_io_read };

static void
s_read_free (void **item_p)
{
    free (*item_p);
    *item_p = NULL;
}

//  On the opening list with a fresh deadline (the delay is fixed: sorted).
static void
s_opening_arm (s_worker_t *self, s_conn_t *conn)
{
    if (conn->opening_handle) {
        s_opening_t *entry = (s_opening_t *) zlistx_detach (self->opening, conn->opening_handle);
        free (entry);
    }
    s_opening_t *entry = (s_opening_t *) zmalloc (sizeof (s_opening_t));
    entry->conn = conn;
    entry->deadline = wsr_util_mono_ms () + self->opts.hello_timeout_ms;
    conn->opening_handle = zlistx_add_end (self->opening, entry);
}

//  The opening is over (live, or the session leaves): free it.
static void
s_opening_end (s_worker_t *self, s_conn_t *conn)
{
    wsr_v1sess_destroy (&conn->opening);
    if (conn->opening_handle) {
        s_opening_t *entry = (s_opening_t *) zlistx_detach (self->opening, conn->opening_handle);
        free (entry);
        conn->opening_handle = NULL;
    }
}

//  A v1 session starts its opening: its topics are its user and channels.
static void
s_opening_start (s_worker_t *self, s_conn_t *conn)
{
    const char *topics [WSR_MAX_CHANNELS + 1];
    size_t count = 0;
    if (conn->member)
        topics [count++] = wsr_topic_member_key (conn->member);
    for (size_t i = 0; i < conn->channel_count; i++)
        if (conn->channels [i])
            topics [count++] = wsr_topic_member_key (conn->channels [i]);
    conn->opening = wsr_v1sess_new (conn->id, self->node, topics, count, conn->expiry,
                                    &s_v1_io, conn);
    s_opening_arm (self, conn);
}

//  A message from a v1 client.
static void
s_v1_message (s_worker_t *self, s_conn_t *conn, const struct wslay_event_on_msg_recv_arg *arg)
{
    if (arg->opcode != WSLAY_TEXT_FRAME) {
        s_v1_error (self, conn, "wsrouter.v1 takes JSON text messages");
        return;
    }
    wsr_v1_msg_t msg;
    wsr_v1_parse (arg->msg, arg->msg_length, self->opts.max_message, &msg);
    bool waiting_hello = conn->opening && !wsr_v1sess_greeted (conn->opening);
    if (msg.type == WSR_V1_INVALID)
        s_v1_error (self, conn, msg.error);
    else
    if (msg.type == WSR_V1_HELLO) {
        if (!waiting_hello)
            s_v1_error (self, conn, "hello already received");
        else {
            wsr_v1sess_hello (conn->opening, msg.recover, msg.recover_count);
            if (wsr_v1sess_live (conn->opening))
                s_opening_end (self, conn);
            else
                s_opening_arm (self, conn);     //  the reads get their own time
        }
    }
    else
    if (waiting_hello)
        s_v1_error (self, conn, "hello expected");
    else
    if (msg.type == WSR_V1_SEND)
        s_send_up (self, conn, msg.kind, msg.data, msg.size);
    else {
        assert (msg.type == WSR_V1_REFRESH);
        s_v1_refresh (self, conn, msg.token);
    }
    wsr_v1_msg_reset (&msg);
}

//  A history read's result, for the session that asked.
static void
s_handle_history (s_worker_t *self, uint64_t request, zframe_t *body)
{
    s_read_t *read = (s_read_t *) zhashx_lookup (self->reads, (void *) (uintptr_t) request);
    if (!read)
        return;                     //  given up on already
    s_conn_t *conn = (s_conn_t *) zhashx_lookup (self->by_id, (void *) (uintptr_t) read->conn_id);
    wsr_history_result_t result;
    char epoch [WSR_HISTORY_EPOCH_MAX + 1];
    if (conn && conn->opening) {
        if (!body || wsr_envelope_decode_history (zframe_data (body), zframe_size (body),
                                                  &result, self->entries,
                                                  WSR_HISTORY_MAX_READ, epoch)) {
            zsys_warning ("session-%d: malformed history result dropped", self->index);
            result = (wsr_history_result_t) { -1, "", 0, false, NULL, 0 };
        }
        wsr_v1sess_history (conn->opening, read->topic, &result);
        if (wsr_v1sess_live (conn->opening))
            s_opening_end (self, conn);
    }
    zhashx_delete (self->reads, (void *) (uintptr_t) request);
}

//  Openings past their deadline: no hello (1008), or reads that did not
//  come (the welcome goes, recovered false). Reads older than twice that
//  are forgotten.
static void
s_openings_expire (s_worker_t *self, int64_t now)
{
    s_opening_t *entry;
    while ((entry = (s_opening_t *) zlistx_first (self->opening)) && entry->deadline <= now) {
        s_conn_t *conn = entry->conn;
        if (!wsr_v1sess_greeted (conn->opening)) {
            s_opening_end (self, conn);
            s_doom (self, conn, WSLAY_CODE_POLICY_VIOLATION, s_no_hello);
        }
        else {
            wsr_v1sess_give_up (conn->opening);
            s_opening_end (self, conn);
        }
    }
    if (zhashx_size (self->reads) && now >= self->reads_swept + self->opts.hello_timeout_ms) {
        self->reads_swept = now;
        zlistx_t *old = zlistx_new ();
        for (s_read_t *read = (s_read_t *) zhashx_first (self->reads); read;
             read = (s_read_t *) zhashx_next (self->reads))
            if (now - read->asked_at > 2 * self->opts.hello_timeout_ms)
                zlistx_add_end (old, (void *) zhashx_cursor (self->reads));
        for (void *key = zlistx_first (old); key; key = zlistx_next (old))
            zhashx_delete (self->reads, key);
        zlistx_destroy (&old);
    }
}

//  --------------------------------------------------------------------------
//  Replay bytes (handover). wslay's parser state cannot leave the process,
//  so a session keeps a copy of what it fed to wslay since the start of the
//  message (or frame header) not yet complete; a new process replays them
//  into a fresh context. What one read feeds goes to the worker's scratch
//  first; only the incomplete tail is copied into the session afterwards,
//  so a read that ends on a message boundary allocates nothing.

static void
s_replay_add (s_worker_t *self, const uint8_t *data, size_t size)
{
    if (!self->scratch) {
        self->scratch = (uint8_t *) malloc (S_SCRATCH_SIZE);
        assert (self->scratch);
    }
    if (self->scratch_over || self->scratch_size + size > S_SCRATCH_SIZE) {
        self->scratch_over = true;
        return;
    }
    memcpy (self->scratch + self->scratch_size, data, size);
    self->scratch_size += size;
}

//  Where the bytes a new context needs start: the incomplete message (or
//  frame), else the partial header after the last complete frame.
static uint64_t
s_replay_start (s_conn_t *conn)
{
    return conn->in_msg || conn->in_frame? conn->keep_from: conn->framed;
}

static void
s_replay_drop (s_conn_t *conn)
{
    free (conn->replay);
    conn->replay = NULL;
    conn->replay_size = 0;
    conn->replay_base = conn->fed;
}

//  After a read that fed bytes from fed_before on: keep what a fresh context
//  would need, from the session's copy and the scratch.
static void
s_replay_keep (s_worker_t *self, s_conn_t *conn, uint64_t fed_before)
{
    uint64_t start = s_replay_start (conn);
    if (start >= conn->fed) {
        s_replay_drop (conn);               //  the usual case: nothing pending
        conn->replay_lost = false;
        return;
    }
    if (start >= fed_before)
        conn->replay_lost = false;          //  all it needs came in this read
    if (conn->replay_lost || self->scratch_over || conn->fed - start > S_REPLAY_MAX
    ||  start < conn->replay_base) {
        s_replay_drop (conn);
        conn->replay_lost = true;
        return;
    }
    size_t size = (size_t) (conn->fed - start);
    uint8_t *kept = (uint8_t *) malloc (size);
    assert (kept);
    size_t used = 0;
    if (start < fed_before) {
        size_t skip = (size_t) (start - conn->replay_base);
        used = (size_t) (fed_before - start);
        assert (skip + used <= conn->replay_size);
        memcpy (kept, conn->replay + skip, used);
    }
    size_t from = start > fed_before? (size_t) (start - fed_before): 0;
    assert (from + size - used == self->scratch_size);
    memcpy (kept + used, self->scratch + from, size - used);
    free (conn->replay);
    conn->replay = kept;
    conn->replay_size = conn->replay_cap = size;
    conn->replay_base = start;
}

//  --------------------------------------------------------------------------
//  wslay callbacks; user_data is the worker, self->current the session.

static ssize_t
s_recv_cb (wslay_event_context_ptr ctx, uint8_t *buf, size_t len, int flags, void *user_data)
{
    (void) flags;
    s_worker_t *self = (s_worker_t *) user_data;
    s_conn_t *conn = self->current;
    if (conn->early) {
        size_t n = conn->early_size - conn->early_used;
        if (n > len)
            n = len;
        memcpy (buf, conn->early + conn->early_used, n);
        conn->early_used += n;
        if (conn->early_used == conn->early_size) {
            free (conn->early);
            conn->early = NULL;
        }
        conn->fed += n;
        s_replay_add (self, buf, n);
        return (ssize_t) n;
    }
    //  Bytes the TLS session holds already (decrypted, or whole records)
    //  are read past the budget: the socket may never wake us for them again
    bool pending = wsr_tls_pending (conn->ssl);
    if (self->read_budget == 0 && !pending) {
        wslay_event_set_error (ctx, WSLAY_ERR_WOULDBLOCK);
        return -1;
    }
    if (len > self->read_budget && !pending)
        len = self->read_budget;
    ssize_t n;
    do
        n = conn->ssl? wsr_tls_recv (conn->ssl, buf, len): recv (conn->fd, buf, len, 0);
    while (n < 0 && errno == EINTR);
    if (n > 0) {
        conn->fed += (size_t) n;
        self->read_budget -= (size_t) n < self->read_budget? (size_t) n: self->read_budget;
        s_replay_add (self, buf, (size_t) n);
        return n;
    }
    if (n < 0 && (errno == EAGAIN || errno == EWOULDBLOCK))
        wslay_event_set_error (ctx, WSLAY_ERR_WOULDBLOCK);
    else {
        conn->io_error = true;      //  EOF or reset: not a protocol error
        wslay_event_set_error (ctx, WSLAY_ERR_CALLBACK_FAILURE);
    }
    return -1;
}

//  wslay's frames join our queue so that they follow data already queued.
static ssize_t
s_send_cb (wslay_event_context_ptr ctx, const uint8_t *data, size_t len, int flags,
           void *user_data)
{
    (void) ctx;
    (void) flags;
    s_worker_t *self = (s_worker_t *) user_data;
    wsr_outframe_t *frame = wsr_outframe_new_raw (data, len);
    s_queue_push (self->current, &frame);
    s_mark_dirty (self, self->current);
    return (ssize_t) len;
}

static void
s_frame_start_cb (wslay_event_context_ptr ctx,
                  const struct wslay_event_on_frame_recv_start_arg *arg, void *user_data)
{
    (void) ctx;
    s_worker_t *self = (s_worker_t *) user_data;
    s_conn_t *conn = self->current;
    uint64_t len = arg->payload_length;
    uint64_t header = 2 + 4 + (len < 126? 0: len <= 0xFFFF? 2: 8);
    if (!conn->in_msg)
        conn->keep_from = conn->framed;     //  an incomplete message starts here
    conn->framed += header + len;
    conn->in_frame = true;
    //  Fairness: a flood of small frames (pings) yields the worker after a
    //  few; what wslay has buffered is finished, nothing more is read
    if (--self->frame_budget <= 0)
        self->read_budget = 0;
    bool control = arg->opcode & 0x8;
    if (!control)
        conn->in_msg = !arg->fin;
    conn->close_len = 0;
    conn->in_close = arg->opcode == WSLAY_CONNECTION_CLOSE;
    //  Token buckets, refilled on use: frames/s (pings and fragments count)
    //  and bytes/s; a burst of one second's worth (plus one max-size frame)
    const wsr_session_opts_t *opts = &self->opts;
    if (opts->rate_messages > 0) {
        int64_t now = wsr_util_mono_ms ();
        float elapsed = (float) (now - conn->rate_last) / 1000.0f;
        conn->rate_last = now;
        float msg_cap = (float) opts->rate_messages;
        float byte_cap = (float) (opts->rate_bytes + opts->max_message + 14);
        conn->msg_tokens += elapsed * (float) opts->rate_messages;
        if (conn->msg_tokens > msg_cap)
            conn->msg_tokens = msg_cap;
        conn->byte_tokens += elapsed * (float) opts->rate_bytes;
        if (conn->byte_tokens > byte_cap)
            conn->byte_tokens = byte_cap;
        conn->msg_tokens -= 1.0f;
        conn->byte_tokens -= (float) (header + len);
        if (conn->msg_tokens < 0 || conn->byte_tokens < 0)
            s_doom (self, conn, WSLAY_CODE_POLICY_VIOLATION, s_rate);
    }
}

//  Close frames: keep the payload so codes wslay does not know yet
//  (1012-1014, registered after RFC 6455) can be echoed properly.
static void
s_frame_chunk_cb (wslay_event_context_ptr ctx,
                  const struct wslay_event_on_frame_recv_chunk_arg *arg, void *user_data)
{
    (void) ctx;
    s_worker_t *self = (s_worker_t *) user_data;
    s_conn_t *conn = self->current;
    if (!conn->in_close)
        return;
    size_t room = sizeof conn->close_payload - conn->close_len;
    size_t n = arg->data_length < room? arg->data_length: room;
    memcpy (conn->close_payload + conn->close_len, arg->data, n);
    conn->close_len += (uint8_t) n;
}

static void
s_frame_end_cb (wslay_event_context_ptr ctx, void *user_data)
{
    (void) ctx;
    s_worker_t *self = (s_worker_t *) user_data;
    s_conn_t *conn = self->current;
    conn->in_frame = false;
    if (conn->in_close && conn->close_len == 1)
        conn->close_echo = WSLAY_CODE_PROTOCOL_ERROR;   //  wslay takes it as "no code"
    else
    if (conn->in_close && conn->close_len >= 2) {
        uint16_t code = (uint16_t) (conn->close_payload [0] << 8 | conn->close_payload [1]);
        if (code >= 1012 && code <= 1014)
            conn->close_echo = code;
    }
}

//  The worker's permessage-deflate codec, made when first needed.
static wsr_deflate_t *
s_deflater (s_worker_t *self)
{
    if (!self->deflate) {
        int level = self->opts.deflate_level? self->opts.deflate_level
                                            : WSR_DEFAULT_DEFLATE_LEVEL;
        self->deflate = wsr_deflate_new (level, self->opts.deflate_threshold,
                                         self->opts.max_message, self->metrics);
        assert (self->deflate);         //  zlib out of memory: fatal, as any OOM
    }
    return self->deflate;
}

static const char s_too_big [] = "message too big";
static const char s_bad_deflate [] = "invalid compressed data";

static void
s_msg_cb (wslay_event_context_ptr ctx, const struct wslay_event_on_msg_recv_arg *arg,
          void *user_data)
{
    (void) ctx;
    s_worker_t *self = (s_worker_t *) user_data;
    s_conn_t *conn = self->current;
    if (arg->opcode != WSLAY_TEXT_FRAME && arg->opcode != WSLAY_BINARY_FRAME)
        return;                     //  ping, pong, close: wslay answers them
    if (conn->state != S_OPEN)
        return;                     //  data after our close is ignored
    struct wslay_event_on_msg_recv_arg inflated;
    if (arg->rsv & WSLAY_RSV1_BIT) {
        //  Only a deflate session's wslay lets RSV1 through; the message is
        //  inflated within max_message (1009 above: a zip bomb stops there)
        int rc = wsr_deflate_inflate (s_deflater (self), arg->msg, arg->msg_length,
                                      &inflated.msg, &inflated.msg_length);
        if (rc == 0 && arg->opcode == WSLAY_TEXT_FRAME
        &&  !wsr_util_utf8_valid (inflated.msg, inflated.msg_length))
            rc = WSR_DEFLATE_CORRUPT;
        if (rc) {
            wsr_metrics_add (self->metrics, WSR_M_CLOSED_PROTOCOL, 1);
            s_doom (self, conn, rc == WSR_DEFLATE_TOO_BIG? WSLAY_CODE_MESSAGE_TOO_BIG
                                                         : WSLAY_CODE_INVALID_FRAME_PAYLOAD_DATA,
                    rc == WSR_DEFLATE_TOO_BIG? s_too_big: s_bad_deflate);
            return;
        }
        inflated.opcode = arg->opcode;
        inflated.rsv = 0;
        inflated.status_code = arg->status_code;
        arg = &inflated;
    }
    //  wslay has checked text for UTF-8 as it arrived (→ 1007)
    self->count_in++;
    self->bytes_in += (int64_t) arg->msg_length;
    if (conn->v1)
        s_v1_message (self, conn, arg);
    else
        s_send_up (self, conn,
                   arg->opcode == WSLAY_TEXT_FRAME? WSR_KIND_TEXT: WSR_KIND_BINARY,
                   arg->msg, arg->msg_length);
}

static const struct wslay_event_callbacks
s_callbacks = {
    s_recv_cb, s_send_cb, NULL, s_frame_start_cb, s_frame_chunk_cb, s_frame_end_cb, s_msg_cb
};

static void
s_conn_ws (s_worker_t *self, s_conn_t *conn)
{
    if (!conn->ws) {
        int rc = wslay_event_context_server_init (&conn->ws, &s_callbacks, self);
        assert (rc == 0);
        wslay_event_config_set_max_recv_msg_length (conn->ws, self->opts.max_message);
        if (conn->deflate) {        //  else RSV1 fails the connection with 1002
            wslay_event_config_set_allowed_rsv_bits (conn->ws, WSLAY_RSV1_BIT);
            //  A compressed message of max_message bytes may be slightly
            //  larger on the wire (stored blocks, wsr_deflate_wire_max); the
            //  inflated size is bounded by max_message itself
            wslay_event_config_set_max_recv_msg_length (
                conn->ws, wsr_deflate_wire_max (self->opts.max_message));
        }
        conn->fed = conn->framed = 0;
        s_replay_drop (conn);
        conn->keep_from = 0;
        conn->replay_lost = false;
    }
}

//  Release the wslay context of an open session that is between messages:
//  every byte wslay read belongs to a frame it has finished.
static void
s_conn_trim (s_conn_t *conn)
{
    if (conn->ws && conn->state == S_OPEN && !conn->doomed
    &&  !conn->in_frame && !conn->in_msg && conn->fed == conn->framed
    &&  !wslay_event_want_write (conn->ws)
    &&  !wslay_event_get_close_received (conn->ws)
    &&  !wslay_event_get_close_sent (conn->ws)
    &&  wslay_event_get_read_enabled (conn->ws)) {
        wslay_event_context_free (conn->ws);
        conn->ws = NULL;
        s_replay_drop (conn);
    }
}

//  --------------------------------------------------------------------------
//  Session lifecycle

static void
s_conn_leave_topics (s_worker_t *self, s_conn_t *conn)
{
    wsr_topic_member_t **members [WSR_MAX_CHANNELS + 1];
    size_t n = 0;
    if (conn->member)
        members [n++] = &conn->member;
    for (size_t i = 0; i < conn->channel_count; i++)
        if (conn->channels [i])
            members [n++] = &conn->channels [i];
    for (size_t i = 0; i < n; i++) {
        char key [WSR_TOPIC_MAX];
        snprintf (key, sizeof key, "%s", wsr_topic_member_key (*members [i]));
        //  A topic the handover rings hold stays subscribed until they go
        if (wsr_topic_leave (self->topics, members [i])
        &&  !(self->hring && wsr_hring_watched (self->hring, key)))
            wsr_link_subscribe (self->link, key, strlen (key) + 1, false);
    }
}

static bool
s_conn_join (s_worker_t *self, s_conn_t *conn, const char *kind, const char *id,
             wsr_topic_member_t **member_p)
{
    char key [WSR_TOPIC_MAX];
    int size = wsr_topic_key (key, sizeof key, kind, id);
    if (size < 0)
        return false;
    bool first = false;
    *member_p = wsr_topic_join (self->topics, key, conn, &first);
    if (!*member_p)
        return false;
    if (first && !(self->hring && wsr_hring_watched (self->hring, key)))
        wsr_link_subscribe (self->link, key, (size_t) size, true);
    return true;
}

//  Report a session's connect or disconnect to the bridge, which publishes
//  it and keeps presence. Only sessions that were admitted (have a user)
//  have a lifecycle; a refused handshake has none.
static void
s_event (s_worker_t *self, s_conn_t *conn, bool connect, int code, const char *reason)
{
    if (!self->opts.events || !conn->user)
        return;
    char channels [WSR_MAX_CHANNELS * (WSR_MAX_ID_LEN + 1) + 1] = "";
    size_t used = 0;
    size_t prefix = strlen (WSR_TOPIC_CHANNEL);
    for (size_t i = 0; i < conn->channel_count; i++)
        if (conn->channels [i] && used < sizeof channels)
            used += (size_t) snprintf (channels + used, sizeof channels - used, "%s%s",
                                       used? ",": "",
                                       wsr_topic_member_key (conn->channels [i]) + prefix);
    int64_t now_ms = wsr_util_now_us () / 1000;
    wsr_link_event_t event = {
        .connect = connect, .session = conn->id, .user = conn->user, .channels = channels,
        .since_ms = conn->since_ms, .code = code, .reason = reason? reason: "",
        .duration_ms = connect? 0: now_ms - conn->since_ms
    };
    wsr_link_event (self->link, &event);
}

//  The code and reason a session ended with, once wslay has exchanged or
//  failed its close: what the peer said (it closed first), else what we
//  sent (we failed the connection), else 1005 (a close without a code).
static uint16_t
s_conn_end_code (s_conn_t *conn)
{
    if (!conn->ws)
        return 1006;
    if (wslay_event_get_close_received (conn->ws))
        return wslay_event_get_status_code_received (conn->ws);
    if (wslay_event_get_close_sent (conn->ws))
        return wslay_event_get_status_code_sent (conn->ws);
    return 1006;
}

//  Why a session ended when wslay closed it (code from s_conn_end_code).
static const char *
s_end_reason (s_conn_t *conn, uint16_t code)
{
    if (conn->ws && wslay_event_get_close_received (conn->ws))
        return "closed by the client";
    switch (code) {
        case WSLAY_CODE_PROTOCOL_ERROR: return "protocol error";
        case WSLAY_CODE_INVALID_FRAME_PAYLOAD_DATA: return "invalid payload";
        case WSLAY_CODE_MESSAGE_TOO_BIG: return "message too big";
        default: return "closed by the client";     //  our echo of the client's close
    }
}

//  Start the closing handshake: queue our close frame behind what is being
//  written, stop deliveries, wait for the peer's close until the deadline.
static void
s_conn_close (s_worker_t *self, s_conn_t *conn, uint16_t code, const char *reason)
{
    if (conn->state != S_OPEN)
        return;
    if (conn->user) {
        //  code 0: wslay has already answered or failed the close
        uint16_t end = code? code: s_conn_end_code (conn);
        s_event (self, conn, false, end, code? reason: s_end_reason (conn, end));
        s_conn_leave_topics (self, conn);
        wsr_metrics_add (self->metrics, WSR_M_SESSIONS_OPEN, -1);
        self->open--;
    }
    conn->state = S_CLOSING;
    s_expiry_clear (self, conn);
    s_opening_end (self, conn);
    s_conn_ws (self, conn);
    self->current = conn;
    if (!wslay_event_get_close_sent (conn->ws)) {
        //  Undelivered data is dropped: the close goes right after the frame
        //  being written. (If wslay already sent a close, it is queued.)
        self->freed_output += conn->qbytes + (size_t) conn->qcount * S_QUEUE_ENTRY_COST;
        s_queue_clear (conn, true);
        int rc = wslay_event_queue_close (conn->ws, code, (const uint8_t *) reason,
                                          strlen (reason));
        if (rc == 0)
            rc = wslay_event_send (conn->ws);
        if (rc != 0) {
            //  Out of memory in wslay: nothing more can be said to the peer
            wsr_debug ("session-%d: conn %" PRIu64 ": close not queued (wslay %d)",
                       self->index, conn->id, rc);
            s_conn_kill (self, conn);
            return;
        }
    }
    s_timer_set (conn, &self->closing, wsr_util_mono_ms () + self->opts.close_timeout_ms);
    s_mark_dirty (self, conn);
}

//  Close the TCP connection now; memory is freed at the end of the turn.
static void
s_conn_kill (s_worker_t *self, s_conn_t *conn)
{
    if (conn->state == S_DEAD)
        return;
    if (conn->state == S_OPEN && conn->user) {
        s_event (self, conn, false, 1006, self->terminated? "node stopped": "connection lost");
        s_conn_leave_topics (self, conn);
        wsr_metrics_add (self->metrics, WSR_M_SESSIONS_OPEN, -1);
        self->open--;
    }
    epoll_ctl (self->epoll_fd, EPOLL_CTL_DEL, conn->fd, NULL);
    wsr_tls_free (&conn->ssl);
    close (conn->fd);
    s_conn_unlink (self, conn);
}

//  The worker lets go of a connection whose fd is closed or handed over;
//  memory is freed at the end of the turn.
static void
s_conn_unlink (s_worker_t *self, s_conn_t *conn)
{
    conn->state = S_DEAD;
    s_expiry_clear (self, conn);
    s_opening_end (self, conn);
    conn->fd = -1;
    wsr_metrics_add (self->metrics, WSR_M_CONNECTIONS_OPEN, -1);
    s_timer_clear (conn);
    if (conn->ip_slot >= 0)
        wsr_ipcount_release (self->ipcount, conn->ip_slot);
    zhashx_delete (self->by_id, (void *) (uintptr_t) conn->id);
    if (conn->prev)
        conn->prev->next = conn->next;
    else
        self->all = conn->next;
    if (conn->next)
        conn->next->prev = conn->prev;
    self->count--;
    conn->next = self->dead;
    self->dead = conn;
}

static void
s_conn_free (s_conn_t *conn)
{
    s_queue_clear (conn, false);
    wsr_tls_free (&conn->ssl);
    if (conn->ws)
        wslay_event_context_free (conn->ws);
    free (conn->channels);
    free (conn->user);
    free (conn->early);
    free (conn->replay);
    free (conn);
}

//  --------------------------------------------------------------------------
//  I/O

//  Write as much of the queue as the socket takes, in batches of iovecs.
static void
s_conn_flush (s_worker_t *self, s_conn_t *conn)
{
    while (conn->qhead && conn->state != S_DEAD) {
        struct iovec iov [S_MAX_IOV];
        int count = 0;
        size_t offset = conn->qoffset;
        for (s_qnode_t *node = conn->qhead; node && count <= S_MAX_IOV - 2; node = node->next) {
            count += wsr_outframe_iov (node->frame, offset, iov + count);
            offset = 0;
        }
        ssize_t n;
        do
            n = conn->ssl? wsr_tls_writev (conn->ssl, iov, count, &conn->tls_retry)
                         : writev (conn->fd, iov, count);
        while (n < 0 && errno == EINTR);
        if (n < 0) {
            if (errno == EAGAIN || errno == EWOULDBLOCK)
                break;
            s_conn_kill (self, conn);
            return;
        }
        //  Retire what was written
        size_t written = (size_t) n < conn->qbytes? (size_t) n: conn->qbytes;
        conn->qbytes -= written;
        while (written > 0) {
            size_t left = wsr_outframe_size (conn->qhead->frame) - conn->qoffset;
            if (written < left) {
                conn->qoffset += written;
                break;
            }
            written -= left;
            s_qnode_t *node = conn->qhead;
            conn->qhead = node->next;
            if (!conn->qhead)
                conn->qtail = NULL;
            wsr_outframe_unlink (&node->frame);
            s_node_free (node);
            conn->qcount--;
            conn->qoffset = 0;
            conn->hs_pending = false;
        }
    }
    if (conn->state == S_DEAD)
        return;
    //  Close handshake complete (or the peer broke the protocol) and all
    //  flushed: the server closes TCP first (RFC 6455 §7.1.1)
    if (!conn->qhead && conn->state == S_CLOSING && conn->ws
    &&  wslay_event_get_close_sent (conn->ws)
    && (wslay_event_get_close_received (conn->ws) || conn->read_off)) {
        s_conn_kill (self, conn);
        return;
    }
    //  Output while something is queued; level-triggered input stops once
    //  wslay reads no more, or it would spin
    uint32_t events = (conn->read_off? 0: EPOLLIN) | (conn->qhead? EPOLLOUT: 0);
    if (events != conn->events) {
        struct epoll_event event = { .events = events };
        event.data.ptr = conn;
        epoll_ctl (self->epoll_fd, EPOLL_CTL_MOD, conn->fd, &event);
        conn->events = events;
    }
}

//  Answer the peer ourselves with a fresh wslay context: wslay's own answer
//  to a framing error is an empty close, and it refuses close codes
//  registered after RFC 6455. Everything wslay sent is already in our queue,
//  so dropping its context loses nothing.
static void
s_conn_answer (s_worker_t *self, s_conn_t *conn, uint16_t code, const uint8_t *reason,
               size_t reason_len)
{
    wslay_event_context_free (conn->ws);
    conn->ws = NULL;
    s_conn_ws (self, conn);
    self->current = conn;
    int rc = wslay_event_queue_close (conn->ws, code, reason, reason_len);
    wslay_event_shutdown_read (conn->ws);
    if (rc == 0)
        rc = wslay_event_send (conn->ws);
    if (rc != 0) {
        wsr_debug ("session-%d: conn %" PRIu64 ": close not queued (wslay %d)",
                   self->index, conn->id, rc);
        s_conn_kill (self, conn);
        return;
    }
    conn->read_off = true;
    s_mark_dirty (self, conn);
    s_conn_close (self, conn, 0, "");       //  close already sent: keeps the queue
}

static void
s_conn_read (s_worker_t *self, s_conn_t *conn)
{
    if (conn->state == S_DEAD)
        return;
    s_conn_ws (self, conn);
    self->current = conn;
    self->read_budget = S_READ_BUDGET;
    self->frame_budget = S_FRAME_BUDGET;
    uint64_t fed = conn->fed;
    self->scratch_size = 0;
    self->scratch_over = false;
    int rc = wslay_event_recv (conn->ws);
    s_replay_keep (self, conn, fed);
    if (conn->fed > fed)
        s_touch (self, conn);
    if (rc != 0) {
        if (conn->io_error || rc == WSLAY_ERR_NOMEM) {
            //  EOF or reset: nothing more can be said to the peer
            s_conn_kill (self, conn);
            return;
        }
        //  Framing error: control frame over 125 bytes or fragmented, length
        //  with the top bit set
        wsr_metrics_add (self->metrics, WSR_M_CLOSED_PROTOCOL, 1);
        const char *reason = "protocol error";
        s_conn_answer (self, conn, WSLAY_CODE_PROTOCOL_ERROR, (const uint8_t *) reason,
                       strlen (reason));
        return;
    }
    if (conn->close_echo && wslay_event_get_close_sent (conn->ws))
        conn->close_echo = 0;               //  we closed first: nothing to answer
    if (conn->close_echo) {
        uint16_t code = conn->close_echo;
        conn->close_echo = 0;
        if (code == WSLAY_CODE_PROTOCOL_ERROR) {
            wsr_metrics_add (self->metrics, WSR_M_CLOSED_PROTOCOL, 1);
            s_conn_answer (self, conn, code, (const uint8_t *) "bad close frame", 15);
        }
        else
            s_conn_answer (self, conn, code, conn->close_payload + 2, conn->close_len - 2u);
        return;
    }
    if (wslay_event_want_write (conn->ws) && wslay_event_send (conn->ws) != 0) {
        s_conn_kill (self, conn);           //  wslay out of memory
        return;
    }
    if (!wslay_event_get_read_enabled (conn->ws) && !conn->read_off) {
        conn->read_off = true;
        s_mark_dirty (self, conn);
    }
    if (conn->state == S_OPEN && wslay_event_get_close_sent (conn->ws)) {
        //  wslay answered a close or failed the connection (1002, 1007, 1009)
        if (!wslay_event_get_close_received (conn->ws))
            wsr_metrics_add (self->metrics, WSR_M_CLOSED_PROTOCOL, 1);
        s_conn_close (self, conn, 0, "");
    }
    s_conn_trim (conn);
    if (conn->qhead)
        s_mark_dirty (self, conn);
}

//  --------------------------------------------------------------------------
//  Messages from other actors

//  REPLY: a message for one session (an HTTP backend's answer, an error).
static void
s_handle_reply (s_worker_t *self, uint64_t id, zframe_t **body_p)
{
    zframe_t *body = *body_p;
    s_conn_t *conn = (s_conn_t *) zhashx_lookup (self->by_id, (void *) (uintptr_t) id);
    wsr_envelope_t env;
    if (conn && conn->state == S_OPEN
    &&  wsr_envelope_decode (zframe_data (body), zframe_size (body), &env) == 0) {
        wsr_outframe_t *frame;
        bool error = env.size >= 15 && !memcmp (env.data, "{\"type\":\"error\"", 15);
        if (conn->v1 && !error) {
            //  v1: the backend's answer inside a reply message (our own
            //  errors are v1 error messages already)
            size_t len = 0;
            char *text = wsr_v1_reply (env.kind, env.data, env.size, &len);
            frame = wsr_outframe_new (WSR_KIND_TEXT, (const uint8_t *) text, len, NULL);
            free (text);
        }
        else
            frame = wsr_outframe_new (env.kind, env.data, env.size, body_p);
        s_queue_push (conn, &frame);
        self->count_out++;
        self->bytes_out += (int64_t) env.size;
        if (s_queue_over (self, conn))
            s_doom (self, conn, WSLAY_CODE_POLICY_VIOLATION, s_slow);
        s_mark_dirty (self, conn);
    }
}

//  ADOPT: take over a connection whose token has been judged. Received with
//  the picture it was sent with.
static bool
s_handle_adopt (s_worker_t *self)
{
    char *verb = NULL, *reason = NULL, *user = NULL, *channels = NULL, *response = NULL;
    uint64_t id = 0, expiry = 0;
    int fd = -1, code = 0, ip_slot = -1, flags = 0;
    zframe_t *early = NULL;
    void *tls = NULL;
    if (zsock_recv (self->adopt, WSR_PIC_ADOPT, &verb, &id, &fd, &code, &ip_slot, &expiry,
                    &flags, &reason, &user, &channels, &response, &early, &tls) == -1)
        return false;
    //  Internal message: its shape is a contract, not input
    assert (streq (verb, WSR_MSG_ADOPT) && fd >= 0
            && (flags & ~(WSR_ADOPT_V1 | WSR_ADOPT_DEFLATE)) == 0);
    zstr_free (&verb);

    s_conn_t *conn = (s_conn_t *) zmalloc (sizeof (s_conn_t));
    conn->id = id;
    conn->fd = fd;
    conn->ssl = (wsr_tlsconn_t *) tls;  //  ours now, with the fd
    conn->deflate = flags & WSR_ADOPT_DEFLATE;
    conn->state = S_OPEN;
    conn->ip_slot = ip_slot;
    conn->rate_last = wsr_util_mono_ms ();
    conn->msg_tokens = (float) self->opts.rate_messages;
    conn->byte_tokens = (float) (self->opts.rate_bytes + self->opts.max_message + 14);
    conn->next = self->all;
    if (self->all)
        self->all->prev = conn;
    self->all = conn;
    self->count++;
    zhashx_insert (self->by_id, (void *) (uintptr_t) id, conn);
    if (early && zframe_size (early) > 0) {
        conn->early_size = zframe_size (early);
        conn->early = (uint8_t *) malloc (conn->early_size);
        memcpy (conn->early, zframe_data (early), conn->early_size);
    }
    struct epoll_event event = { .events = EPOLLIN };
    event.data.ptr = conn;
    conn->events = EPOLLIN;
    if (epoll_ctl (self->epoll_fd, EPOLL_CTL_ADD, fd, &event)) {
        zsys_error ("session-%d: conn %" PRIu64 ": epoll: %s", self->index, id, strerror (errno));
        conn->state = S_CLOSING;    //  not open: nothing to leave
        s_conn_kill (self, conn);
        goto done;
    }
    wsr_outframe_t *frame = wsr_outframe_new_raw ((const uint8_t *) response, strlen (response));
    s_queue_push (conn, &frame);
    conn->hs_pending = true;

    //  The cap is node-wide: reserve a place in the shared gauge atomically
    if (code == 0
    &&  wsr_metrics_add_fetch (self->metrics, WSR_M_SESSIONS_OPEN, 1)
            >= (int64_t) self->opts.max_sessions) {
        wsr_metrics_add (self->metrics, WSR_M_SESSIONS_OPEN, -1);
        code = WSR_CLOSE_TRY_AGAIN_LATER;
        zstr_free (&reason);
        reason = strdup ("node full");
        wsr_metrics_add (self->metrics, WSR_M_HS_FAIL_CAPACITY, 1);
    }
    bool joined = code == 0;
    if (joined) {
        conn->user = user;
        user = NULL;
        joined = s_conn_join (self, conn, WSR_TOPIC_USER, conn->user, &conn->member);
        if (joined && *channels) {
            size_t wanted = 1;
            for (const char *c = channels; *c; c++)
                wanted += *c == ',';
            if (wanted > WSR_MAX_CHANNELS)
                wanted = WSR_MAX_CHANNELS;
            conn->channels = (wsr_topic_member_t **) zmalloc (
                wanted * sizeof (wsr_topic_member_t *));
            char *saveptr = NULL;
            for (char *name = strtok_r (channels, ",", &saveptr);
                 name && joined && conn->channel_count < wanted;
                 name = strtok_r (NULL, ",", &saveptr))
                joined = s_conn_join (self, conn, WSR_TOPIC_CHANNEL, name,
                                      &conn->channels [conn->channel_count++]);
        }
        if (!joined) {
            s_conn_leave_topics (self, conn);
            wsr_metrics_add (self->metrics, WSR_M_SESSIONS_OPEN, -1);
            code = WSR_CLOSE_TRY_AGAIN_LATER;
            zstr_free (&reason);
            reason = strdup ("node full");
            wsr_metrics_add (self->metrics, WSR_M_HS_FAIL_CAPACITY, 1);
            free (conn->user);
            conn->user = NULL;
        }
    }
    if (code == 0) {
        self->open++;
        conn->since_ms = wsr_util_now_us () / 1000;
        s_event (self, conn, true, 0, "");
        s_expiry_set (self, conn, (int64_t) expiry);
        wsr_metrics_add (self->metrics, WSR_M_HANDSHAKES_OK, 1);
        s_touch (self, conn);
        if (conn->deflate)
            wsr_metrics_add (self->metrics, WSR_M_DEFLATE_SESSIONS, 1);
        conn->v1 = flags & WSR_ADOPT_V1;
        if (conn->v1)
            s_opening_start (self, conn);
        if (self->draining)
            s_conn_close (self, conn, WSLAY_CODE_GOING_AWAY, "going away");
        else
        if (conn->early || wsr_tls_pending (conn->ssl))
            s_conn_read (self, conn);
    }
    else {
        //  Upgraded, then closed with the auth verdict (RFC 6455 §7.4)
        conn->state = S_OPEN;
        s_conn_close (self, conn, (uint16_t) code, reason);
    }
    s_mark_dirty (self, conn);
done:
    zstr_free (&reason);
    zstr_free (&user);
    zstr_free (&channels);
    zstr_free (&response);
    zframe_destroy (&early);
    return true;
}

//  DELIVER: [topic key][envelope]. Frame once, link to every member.
//  What the handover knows a delivery by: its history offset, else a hash
//  of its payload.
static wsr_handover_mark_t
s_mark_of (const wsr_envelope_t *env)
{
    wsr_handover_mark_t mark = { WSR_HANDOVER_MARK_OFFSET, env->offset };
    if (!env->offset) {
        mark.kind = WSR_HANDOVER_MARK_HASH;
        mark.value = wsr_handover_hash (env->kind, env->data, env->size);
    }
    return mark;
}

static void
s_handle_deliver (s_worker_t *self, const char *key, const uint8_t *data, size_t size,
                  zframe_t **body_p)
{
    wsr_envelope_t env;
    if (wsr_envelope_decode (data, size, &env)) {
        zsys_warning ("session-%d: malformed DELIVER dropped", self->index);
        return;
    }
    wsr_topic_member_t *member = wsr_topic_first (self->topics, key);
    //  The topic's mark (a session leaving in a handover carries it), and
    //  the handover ring's copy while one is held for the topic
    bool kept = false;
    if (member || self->hring) {
        wsr_handover_mark_t mark = s_mark_of (&env);
        if (member)
            wsr_topic_set_mark (member, mark.kind, mark.value);
        if (self->hring)
            kept = wsr_hring_add (self->hring, key, &mark, data, size);
    }
    if (!member) {
        if (!kept)
            wsr_metrics_add (self->metrics, WSR_M_DELIVER_NO_SESSION, 1);
        return;
    }
    //  First pass: v1 sessions still opening take their copy now (their
    //  recovery decides), and what the live ones need is counted; each kind
    //  of frame is then encoded once for all of them
    char epoch [WSR_HISTORY_EPOCH_MAX + 1] = "";
    if (env.offset) {
        memcpy (epoch, env.epoch, env.epoch_len);
        epoch [env.epoch_len] = 0;
    }
    size_t raw_count = 0, v1_count = 0, raw_deflate = 0, v1_deflate = 0;
    for (wsr_topic_member_t *m = member; m; m = wsr_topic_next (m)) {
        s_conn_t *conn = (s_conn_t *) wsr_topic_owner (m);
        if (conn->state != S_OPEN || conn->doomed)
            continue;
        if (conn->opening) {
            wsr_v1sess_deliver (conn->opening, key, env.offset, env.prev, epoch, env.kind,
                                env.data, env.size, NULL);
        }
        else
        if (conn->v1) {
            v1_count++;
            v1_deflate += conn->deflate;
        }
        else {
            raw_count++;
            raw_deflate += conn->deflate;
        }
    }
    //  Deflate sessions share one compressed frame per kind (NULL when the
    //  message is too small or does not shrink: they take the plain one)
    wsr_outframe_t *v1_frame = NULL, *v1_zframe = NULL, *zframe = NULL;
    if (v1_count) {
        size_t len = 0;
        char *text = wsr_v1_pub (key, env.offset, epoch, env.kind, env.data, env.size, &len);
        v1_frame = wsr_outframe_new (WSR_KIND_TEXT, (const uint8_t *) text, len, NULL);
        if (v1_deflate)
            v1_zframe = wsr_deflate_frame (s_deflater (self), WSR_KIND_TEXT,
                                           (const uint8_t *) text, len);
        free (text);
    }
    if (raw_deflate)
        zframe = wsr_deflate_frame (s_deflater (self), env.kind, env.data, env.size);
    //  Last: the raw frame may take the received frame (and its bytes);
    //  a delivery out of a batch has none (its bytes are copied: small)
    wsr_outframe_t *frame = raw_count? wsr_outframe_new (env.kind, env.data, env.size,
                                                         body_p && *body_p? body_p: NULL)
                                     : NULL;
    int64_t recipients = 0;
    for (; member && (raw_count || v1_count); member = wsr_topic_next (member)) {
        s_conn_t *conn = (s_conn_t *) wsr_topic_owner (member);
        if (conn->state != S_OPEN || conn->doomed || conn->opening)
            continue;
        wsr_outframe_t *pick = conn->v1? (conn->deflate && v1_zframe? v1_zframe: v1_frame)
                                       : (conn->deflate && zframe? zframe: frame);
        wsr_outframe_t *link = wsr_outframe_link (pick);
        s_queue_push (conn, &link);
        recipients++;
        if (s_queue_over (self, conn))
            s_doom (self, conn, WSLAY_CODE_POLICY_VIOLATION, s_slow);
        s_mark_delayed (self, conn);
    }
    wsr_outframe_unlink (&v1_frame);
    wsr_outframe_unlink (&v1_zframe);
    wsr_outframe_unlink (&zframe);
    self->count_out += recipients;
    self->bytes_out += recipients * (int64_t) env.size;
    wsr_outframe_unlink (&frame);
}

//  REFUSED: the bridge will not carry this topic (its node is over the
//  bridge's topic cap): its sessions would wait for nothing, so they are
//  closed with 1013 and the clients retry later, elsewhere.
static void
s_handle_refused (s_worker_t *self, zframe_t *topic)
{
    const char *key = (const char *) zframe_data (topic);
    zsys_warning ("session-%d: the bridge refused topic %s", self->index, key);
    for (wsr_topic_member_t *member = wsr_topic_first (self->topics, key); member;
         member = wsr_topic_next (member))
        s_doom (self, (s_conn_t *) wsr_topic_owner (member), WSR_CLOSE_TRY_AGAIN_LATER,
                "backplane refused the subscription");
}

//  The handover barrier's answer to the pipe: 0, or -1 (timed out).
static void
s_sync_answer (s_worker_t *self, int rc)
{
    self->sync_owed = false;
    self->sync_waiting = 0;
    int sent = zsock_send (self->pipe, "i", rc);
    assert (sent == 0);
}

//  Start a barrier at every bridge; the pipe gets its answer later.
static void
s_sync_start (s_worker_t *self)
{
    self->sync_owed = true;
    self->sync_token++;
    self->sync_deadline = wsr_util_mono_ms () + S_SYNC_TIMEOUT_MS;
    self->sync_waiting = self->link? wsr_link_sync (self->link, self->sync_token): 0;
    if (self->sync_waiting == 0)
        s_sync_answer (self, -1);
}

//  One message from the bridge.
static bool
s_handle_link (s_worker_t *self)
{
    wsr_link_msg_t msg;
    if (wsr_link_recv (self->link, &msg))
        return false;
    if (msg.kind == WSR_LINK_DELIVER)
        s_handle_deliver (self, msg.key, msg.data, msg.size, &msg.body);
    else
    if (msg.kind == WSR_LINK_REPLY)
        s_handle_reply (self, msg.session, &msg.body);
    else
    if (msg.kind == WSR_LINK_REFUSED)
        s_handle_refused (self, msg.topic);
    else
    if (msg.kind == WSR_LINK_HISTORY)
        s_handle_history (self, msg.request, msg.body);
    else
    if (msg.kind == WSR_LINK_SYNCED && self->sync_owed && msg.request == self->sync_token
    &&  --self->sync_waiting == 0)
        s_sync_answer (self, 0);
    wsr_link_msg_reset (&msg);
    return true;
}

//  The bridge lost our subscriptions (it restarted): every topic again.
static void
s_resubscribe (void *arg, wsr_link_t *link)
{
    s_worker_t *self = (s_worker_t *) arg;
    for (const char *key = wsr_topic_first_key (self->topics); key;
         key = wsr_topic_next_key (self->topics))
        wsr_link_subscribe (link, key, strlen (key) + 1, true);
    if (self->hring)
        for (const char *key = wsr_hring_first (self->hring); key;
             key = wsr_hring_next (self->hring))
            if (!wsr_topic_first (self->topics, key))
                wsr_link_subscribe (link, key, strlen (key) + 1, true);
}

static void
s_drain_all (s_worker_t *self)
{
    self->draining = true;
    for (s_conn_t *conn = self->all; conn; conn = conn->next)
        if (conn->state == S_OPEN)
            s_doom (self, conn, WSLAY_CODE_GOING_AWAY, "going away");
}

//  --------------------------------------------------------------------------
//  Handover (zero-disconnect upgrade): EXPORT lets sessions go with their
//  state and descriptor, IMPORT takes them in. The order across processes
//  is the node's business (ARCHITECTURE.md, "Zero-disconnect upgrade");
//  here a session leaves between two turns of the loop: it stops being read,
//  what is queued is written as far as the socket takes, and the rest (and
//  the bytes read but not parsed to a whole message) travel in the record.
//  No lifecycle event is sent: for the client nothing happened.

//  A session can leave when it is open and not in a state only this
//  process' wslay or opening understands.
static bool
s_exportable (s_conn_t *conn)
{
    //  A TLS session's state is not handed over yet (wsr_tlsrec_save could
    //  carry a TLS 1.3 one): it stays and is closed with 1012 (README, Upgrades)
    return conn->state == S_OPEN && conn->user && !conn->doomed && !conn->opening
        && !conn->ssl
        && !conn->replay_lost && !conn->close_echo && !conn->read_off
        && (!conn->ws || (!wslay_event_get_close_received (conn->ws)
                          && !wslay_event_get_close_sent (conn->ws)
                          && !wslay_event_want_write (conn->ws)));
}

//  Write what the socket takes, then take the session out of this worker.
//  Returns its SESSION frame (the caller owns it and *fd_p), or NULL if the
//  connection failed meanwhile (then it is closed as usual).
static zframe_t *
s_export_one (s_worker_t *self, s_conn_t *conn, int *fd_p)
{
    s_conn_flush (self, conn);
    if (conn->state != S_OPEN)
        return NULL;
    epoll_ctl (self->epoll_fd, EPOLL_CTL_DEL, conn->fd, NULL);
    int64_t now = wsr_util_mono_ms ();
    wsr_handover_session_t rec = {
        .id = conn->id, .expiry = conn->expiry, .since_ms = conn->since_ms,
        .flags = (conn->v1? WSR_HANDOVER_V1: 0) | (conn->hs_pending? WSR_HANDOVER_HS_PENDING: 0)
               | (conn->deflate? WSR_HANDOVER_DEFLATE: 0),
        .timer = conn->tlist == &self->pinged? WSR_HANDOVER_TIMER_PINGED
                                             : WSR_HANDOVER_TIMER_ACTIVE,
        .timer_ms = conn->tlist? conn->deadline - now: self->opts.ping_interval_ms,
        .msg_tokens = conn->msg_tokens, .byte_tokens = conn->byte_tokens,
        .rate_age_ms = now - conn->rate_last, .user = conn->user
    };
    //  Marks: where each topic's deliveries stopped for this session
    int kind = 0;
    if (conn->member) {
        rec.marks [0].value = wsr_topic_mark (conn->member, &kind);
        rec.marks [0].kind = (uint8_t) kind;
    }
    size_t prefix = strlen (WSR_TOPIC_CHANNEL);
    for (size_t i = 0; i < conn->channel_count; i++)
        if (conn->channels [i]) {
            rec.marks [1 + rec.channel_count].value = wsr_topic_mark (conn->channels [i], &kind);
            rec.marks [1 + rec.channel_count].kind = (uint8_t) kind;
            rec.channels [rec.channel_count++] =
                (char *) wsr_topic_member_key (conn->channels [i]) + prefix;
        }
    //  Output not yet written, from the head's offset on
    rec.output = conn->qbytes? (uint8_t *) malloc (conn->qbytes): NULL;
    size_t offset = conn->qoffset;
    for (s_qnode_t *node = conn->qhead; node; node = node->next) {
        struct iovec iov [2];
        int count = wsr_outframe_iov (node->frame, offset, iov);
        for (int i = 0; i < count; i++) {
            assert (rec.output_size + iov [i].iov_len <= conn->qbytes);
            memcpy (rec.output + rec.output_size, iov [i].iov_base, iov [i].iov_len);
            rec.output_size += iov [i].iov_len;
        }
        offset = 0;
    }
    //  Input: the incomplete message fed to wslay, then early bytes not fed
    size_t replay = 0, start = 0;
    if (conn->ws) {
        start = (size_t) (s_replay_start (conn) - conn->replay_base);
        replay = start < conn->replay_size? conn->replay_size - start: 0;
    }
    size_t early = conn->early? conn->early_size - conn->early_used: 0;
    rec.input_size = replay + early;
    rec.input = rec.input_size? (uint8_t *) malloc (rec.input_size): NULL;
    if (replay)
        memcpy (rec.input, conn->replay + start, replay);
    if (early)
        memcpy (rec.input + replay, conn->early + conn->early_used, early);
    size_t size = 0;
    uint8_t *data = wsr_handover_session_encode (&rec, &size);
    free (rec.output);
    free (rec.input);
    if (!data)
        return NULL;                //  ids come checked: cannot happen
    zframe_t *frame = zframe_new (data, size);
    free (data);
    //  Gone from here: the new owner subscribes, so the last member leaving
    //  unsubscribes at this process' bridge; deliveries for it now drop
    s_conn_leave_topics (self, conn);
    wsr_metrics_add (self->metrics, WSR_M_SESSIONS_OPEN, -1);
    self->open--;
    *fd_p = conn->fd;
    self->freed_output += conn->qbytes + (size_t) conn->qcount * S_QUEUE_ENTRY_COST;
    s_queue_clear (conn, false);
    s_conn_unlink (self, conn);
    return frame;
}

//  EXPORT: up to max sessions leave; the reply says how many open sessions
//  remain (some may not be exportable yet: a v1 opening, a close under way).
static void
s_handle_export (s_worker_t *self, int max)
{
    zmsg_t *reply = zmsg_new ();
    int exported = 0;
    s_conn_t *conn = self->all;
    while (conn && exported < max) {
        s_conn_t *next = conn->next;
        int fd = -1;
        zframe_t *frame = s_exportable (conn)? s_export_one (self, conn, &fd): NULL;
        if (frame) {
            zmsg_append (reply, &frame);
            frame = zframe_new (&fd, sizeof fd);
            zmsg_append (reply, &frame);
            exported++;
        }
        conn = next;
    }
    uint64_t remaining = self->open;
    zframe_t *count = zframe_new (&remaining, sizeof remaining);
    zmsg_prepend (reply, &count);
    if (zmsg_send (&reply, self->pipe)) {
        //  The pipe is ours and blocking: only $TERM under way gets here
        zmsg_destroy (&reply);
    }
}

//  One delivery from a handover ring for one arriving session.
typedef struct {
    s_worker_t *self;
    s_conn_t *conn;
    const char *key;                //  its topic
    size_t count;                   //  queued so far
    wsr_handover_mark_t last;       //  the mark of the last one queued
} s_replay_t;

static void
s_replay_one (void *arg, const uint8_t *data, size_t size)
{
    s_replay_t *replay = (s_replay_t *) arg;
    s_worker_t *self = replay->self;
    s_conn_t *conn = replay->conn;
    wsr_envelope_t env;
    if (conn->state != S_OPEN || conn->doomed || wsr_envelope_decode (data, size, &env))
        return;
    wsr_outframe_t *frame = NULL;
    if (conn->v1) {
        char epoch [WSR_HISTORY_EPOCH_MAX + 1] = "";
        if (env.offset) {
            memcpy (epoch, env.epoch, env.epoch_len);
            epoch [env.epoch_len] = 0;
        }
        size_t len = 0;
        char *text = wsr_v1_pub (replay->key, env.offset, epoch, env.kind, env.data, env.size,
                                 &len);
        if (conn->deflate)
            frame = wsr_deflate_frame (s_deflater (self), WSR_KIND_TEXT,
                                       (const uint8_t *) text, len);
        if (!frame)
            frame = wsr_outframe_new (WSR_KIND_TEXT, (const uint8_t *) text, len, NULL);
        free (text);
    }
    else {
        if (conn->deflate)
            frame = wsr_deflate_frame (s_deflater (self), env.kind, env.data, env.size);
        if (!frame)
            frame = wsr_outframe_new (env.kind, env.data, env.size, NULL);
    }
    s_queue_push (conn, &frame);
    if (s_queue_over (self, conn))
        s_doom (self, conn, WSLAY_CODE_POLICY_VIOLATION, s_slow);
    replay->last = s_mark_of (&env);
    replay->count++;
    self->count_out++;
    self->bytes_out += (int64_t) env.size;
}

//  Take one session in from its record; the fd is ours from here on.
static int
s_import_one (s_worker_t *self, const uint8_t *data, size_t size, int fd)
{
    wsr_handover_type_t type;
    wsr_handover_session_t rec;
    int64_t body = size >= WSR_HANDOVER_HEADER? wsr_handover_header (data, &type): -1;
    if (body < 0 || type != WSR_HANDOVER_SESSION
    ||  (size_t) body != size - WSR_HANDOVER_HEADER
    ||  wsr_handover_session_decode (data + WSR_HANDOVER_HEADER, (size_t) body, &rec)) {
        zsys_warning ("session-%d: handover: malformed session record", self->index);
        close (fd);
        return -1;
    }
    int64_t now = wsr_util_mono_ms ();
    s_conn_t *conn = (s_conn_t *) zmalloc (sizeof (s_conn_t));
    conn->id = rec.id;
    conn->fd = fd;
    conn->state = S_OPEN;
    conn->ip_slot = -1;
    struct sockaddr_storage addr;
    socklen_t addr_len = sizeof addr;
    if (getpeername (fd, (struct sockaddr *) &addr, &addr_len) == 0)
        conn->ip_slot = wsr_ipcount_acquire (self->ipcount, (struct sockaddr *) &addr);
    conn->msg_tokens = rec.msg_tokens;
    conn->byte_tokens = rec.byte_tokens;
    conn->rate_last = now - rec.rate_age_ms;
    conn->since_ms = rec.since_ms;
    conn->v1 = rec.flags & WSR_HANDOVER_V1;
    conn->deflate = rec.flags & WSR_HANDOVER_DEFLATE;   //  before any wslay context
    conn->next = self->all;
    if (self->all)
        self->all->prev = conn;
    self->all = conn;
    self->count++;
    wsr_metrics_add (self->metrics, WSR_M_CONNECTIONS_OPEN, 1);
    zhashx_insert (self->by_id, (void *) (uintptr_t) conn->id, conn);
    struct epoll_event event = { .events = EPOLLIN };
    event.data.ptr = conn;
    conn->events = EPOLLIN;
    if (epoll_ctl (self->epoll_fd, EPOLL_CTL_ADD, fd, &event)) {
        zsys_error ("session-%d: conn %" PRIu64 ": epoll: %s", self->index, conn->id,
                    strerror (errno));
        conn->state = S_CLOSING;
        s_conn_kill (self, conn);
        wsr_handover_session_clear (&rec);
        return -1;
    }
    if (rec.output_size) {
        wsr_outframe_t *frame = wsr_outframe_new_raw (rec.output, rec.output_size);
        s_queue_push (conn, &frame);
        conn->hs_pending = rec.flags & WSR_HANDOVER_HS_PENDING;
    }
    if (rec.input_size) {
        conn->early = rec.input;            //  replayed into a fresh wslay context
        conn->early_size = rec.input_size;
        rec.input = NULL;
    }
    //  Sessions already admitted are not refused for capacity: the old
    //  process held them within the same limit
    wsr_metrics_add (self->metrics, WSR_M_SESSIONS_OPEN, 1);
    self->open++;
    conn->user = rec.user;
    rec.user = NULL;
    bool joined = s_conn_join (self, conn, WSR_TOPIC_USER, conn->user, &conn->member);
    if (rec.channel_count) {
        conn->channels = (wsr_topic_member_t **) zmalloc (
            rec.channel_count * sizeof (wsr_topic_member_t *));
        for (size_t i = 0; i < rec.channel_count && joined; i++)
            joined = s_conn_join (self, conn, WSR_TOPIC_CHANNEL, rec.channels [i],
                                  &conn->channels [conn->channel_count++]);
    }
    //  What was published while it moved: after the old worker's marks,
    //  behind the output it brought, ahead of any live delivery
    if (joined && self->hring) {
        s_replay_t replay = { self, conn, NULL, 0, { 0, 0 } };
        for (size_t i = 0; i <= conn->channel_count; i++) {
            wsr_topic_member_t *member = i? conn->channels [i - 1]: conn->member;
            replay.key = member? wsr_topic_member_key (member): NULL;
            if (!replay.key || !wsr_hring_watched (self->hring, replay.key))
                continue;
            bool gap = false;
            replay.last.kind = WSR_HANDOVER_MARK_NONE;
            wsr_hring_replay (self->hring, replay.key, &rec.marks [i], s_replay_one, &replay,
                              &gap);
            //  A topic new here has no mark yet: its last message is this
            //  one (or the old worker's), for a handover soon after this one
            int kind = 0;
            wsr_topic_mark (member, &kind);
            if (kind == WSR_HANDOVER_MARK_NONE)
                wsr_topic_set_mark (member, replay.last.kind? replay.last.kind
                                                            : rec.marks [i].kind,
                                    replay.last.kind? replay.last.value: rec.marks [i].value);
            if (gap)
                wsr_metrics_add (self->metrics, WSR_M_HANDOVER_GAPS, 1);
        }
        if (replay.count)
            wsr_metrics_add (self->metrics, WSR_M_HANDOVER_REPLAYED, (int64_t) replay.count);
    }
    s_expiry_set (self, conn, rec.expiry);
    if (self->opts.ping_interval_ms > 0)
        s_timer_set (conn, rec.timer == WSR_HANDOVER_TIMER_PINGED? &self->pinged: &self->active,
                     now + rec.timer_ms);
    wsr_handover_session_clear (&rec);
    if (!joined)
        s_doom (self, conn, WSR_CLOSE_TRY_AGAIN_LATER, "node full");
    else
    if (conn->early)
        s_conn_read (self, conn);
    s_mark_dirty (self, conn);
    return 0;
}

//  IMPORT: [record][fd] pairs; answers how many sessions were taken.
static void
s_handle_import (s_worker_t *self, zmsg_t *msg)
{
    int taken = 0;
    zframe_t *record = zmsg_pop (msg);
    while (record) {
        zframe_t *fd_frame = zmsg_pop (msg);
        assert (fd_frame && zframe_size (fd_frame) == sizeof (int));
        int fd;
        memcpy (&fd, zframe_data (fd_frame), sizeof fd);
        if (s_import_one (self, zframe_data (record), zframe_size (record), fd) == 0)
            taken++;
        zframe_destroy (&fd_frame);
        zframe_destroy (&record);
        record = zmsg_pop (msg);
    }
    int sent = zsock_send (self->pipe, "i", taken);
    assert (sent == 0);
}

//  RESTART: sessions that could not be handed over are closed with 1012.
static void
s_handle_restart (s_worker_t *self)
{
    int closed = 0;
    for (s_conn_t *conn = self->all; conn; conn = conn->next)
        if (conn->state == S_OPEN && !conn->doomed) {
            s_doom (self, conn, WSR_CLOSE_SERVICE_RESTART, "service restart");
            closed++;
        }
    int sent = zsock_send (self->pipe, "i", closed);
    assert (sent == 0);
}

static bool
s_handle_pipe (s_worker_t *self)
{
    if (!(zsock_events (self->pipe) & ZMQ_POLLIN))
        return false;
    zmsg_t *msg = zmsg_recv (self->pipe);
    if (!msg) {
        self->terminated = true;
        return false;
    }
    char *command = zmsg_popstr (msg);
    if (streq (command, "$TERM"))
        self->terminated = true;
    else
    if (streq (command, WSR_CMD_START)) {
        int sent = zsock_send (self->pipe, "i", self->status);
        assert (sent == 0);
    }
    else
    if (streq (command, WSR_CMD_DRAIN))
        s_drain_all (self);
    else
    if (streq (command, WSR_CMD_SESSIONS)) {
        int sent = zsock_send (self->pipe, "8", (uint64_t) self->count);
        assert (sent == 0);
    }
    else
    if (streq (command, WSR_CMD_EXPORT)) {
        char *max = zmsg_popstr (msg);
        assert (max);
        s_handle_export (self, atoi (max));
        zstr_free (&max);
    }
    else
    if (streq (command, WSR_CMD_IMPORT))
        s_handle_import (self, msg);
    else
    if (streq (command, WSR_CMD_RESTART))
        s_handle_restart (self);
    else
    if (streq (command, WSR_CMD_TOPICS)) {
        zmsg_t *reply = zmsg_new ();
        for (const char *key = wsr_topic_first_key (self->topics); key;
             key = wsr_topic_next_key (self->topics))
            zmsg_addstr (reply, key);
        if (zmsg_send (&reply, self->pipe))
            zmsg_destroy (&reply);
    }
    else
    if (streq (command, WSR_CMD_PRESUB)) {
        //  Every topic the old process named: subscribed (with a ring) now,
        //  then a barrier: answered once the subscriptions are in force
        if (!self->hring)
            self->hring = wsr_hring_new (WSR_HRING_MAX_COUNT, WSR_HRING_MAX_BYTES);
        char *key;
        while ((key = zmsg_popstr (msg))) {
            if (*key && strlen (key) < WSR_TOPIC_MAX && wsr_hring_watch (self->hring, key)
            &&  !wsr_topic_first (self->topics, key))
                wsr_link_subscribe (self->link, key, strlen (key) + 1, true);
            zstr_free (&key);
        }
        s_sync_start (self);
    }
    else
    if (streq (command, WSR_CMD_SYNC))
        s_sync_start (self);
    else
    if (streq (command, WSR_CMD_PREEND)) {
        if (self->hring) {
            for (const char *key = wsr_hring_first (self->hring); key;
                 key = wsr_hring_next (self->hring))
                if (!wsr_topic_first (self->topics, key))
                    wsr_link_subscribe (self->link, key, strlen (key) + 1, false);
            wsr_metrics_add (self->metrics, WSR_M_HANDOVER_RING_DROPPED,
                             (int64_t) wsr_hring_dropped (self->hring));
            wsr_hring_destroy (&self->hring);
        }
        int sent = zsock_send (self->pipe, "i", 0);
        assert (sent == 0);
    }
    else
        assert (false);
    zstr_free (&command);
    zmsg_destroy (&msg);
    return true;
}

//  Drain a ZeroMQ socket whose ZMQ_FD fired; true if the budget ran out.
static bool
s_drain_socket (s_worker_t *self, zsock_t *sock, bool (*handler) (s_worker_t *))
{
    //  Receive until nothing is waiting (non-blocking receives: no system
    //  call while messages are queued), then read ZMQ_EVENTS once: that
    //  processes ZeroMQ's pending commands and re-arms the edge-triggered
    //  ZMQ_FD. Asking ZMQ_EVENTS per message would cost two system calls each.
    int budget = WSR_WORKER_BUDGET;
    while (budget > 0 && !self->terminated && handler (self))
        budget--;
    if (budget == 0)
        return true;
    return !self->terminated && (zsock_events (sock) & ZMQ_POLLIN);
}

//  After each batch: close doomed sessions, flush dirty ones, expire closes,
//  free the dead.
static void
s_after_batch (s_worker_t *self)
{
    if (self->count_out || self->count_in || self->count_up) {
        wsr_metrics_add (self->metrics, WSR_M_MESSAGES_OUT, self->count_out);
        wsr_metrics_add (self->metrics, WSR_M_BYTES_OUT, self->bytes_out);
        wsr_metrics_add (self->metrics, WSR_M_MESSAGES_IN, self->count_in);
        wsr_metrics_add (self->metrics, WSR_M_BYTES_IN, self->bytes_in);
        wsr_metrics_add (self->metrics, WSR_M_UPSTREAM_SENT, self->count_up);
        self->count_out = self->bytes_out = self->count_in = self->bytes_in = 0;
        self->count_up = 0;
    }
    if (zlistx_size (self->opening) || zhashx_size (self->reads))
        s_openings_expire (self, wsr_util_mono_ms ());
    //  Tokens that ran out: only the heap's top is looked at
    if (self->expiry_count) {
        int64_t wall = wsr_util_now_us () / 1000000;
        while (self->expiry_count && self->expiries [0]->expiry <= wall) {
            s_conn_t *conn = self->expiries [0];
            s_expiry_clear (self, conn);
            s_doom (self, conn, WSLAY_CODE_POLICY_VIOLATION, s_expired);
        }
    }
    while (self->doomed) {
        s_conn_t *conn = self->doomed;
        self->doomed = conn->doom_next;
        conn->doomed = false;
        if (conn->doom_reason == s_slow) {
            wsr_metrics_add (self->metrics, WSR_M_QUEUE_DROPS, 1);
            wsr_debug ("session-%d: conn %" PRIu64 " closed: output limit (%zu bytes queued)",
                       self->index, conn->id, conn->qbytes);
        }
        else
        if (conn->doom_reason == s_rate)
            wsr_metrics_add (self->metrics, WSR_M_RATE_LIMITED, 1);
        else
        if (conn->doom_reason == s_expired)
            wsr_metrics_add (self->metrics, WSR_M_TOKEN_EXPIRED, 1);
        s_conn_close (self, conn, conn->doom_code, conn->doom_reason);
    }
    if (self->delayed && wsr_util_mono_ms () >= self->flush_at)
        s_delayed_release (self);
    while (self->dirty) {
        s_conn_t *conn = self->dirty;
        self->dirty = conn->dirty_next;
        conn->dirty = false;
        s_conn_flush (self, conn);
    }
    //  Timers: only list heads are looked at
    int64_t now = wsr_util_mono_ms ();
    while (self->closing.head && self->closing.head->deadline <= now)
        s_conn_kill (self, self->closing.head);
    while (self->pinged.head && self->pinged.head->deadline <= now) {
        wsr_metrics_add (self->metrics, WSR_M_PING_TIMEOUTS, 1);
        s_conn_kill (self, self->pinged.head);
    }
    while (self->active.head && self->active.head->deadline <= now) {
        s_conn_t *conn = self->active.head;
        wsr_outframe_t *ping = wsr_outframe_link (self->ping);
        s_queue_push (conn, &ping);
        s_timer_set (conn, &self->pinged, now + self->opts.ping_timeout_ms);
        s_conn_flush (self, conn);
    }
    while (self->dead) {
        s_conn_t *conn = self->dead;
        self->dead = conn->next;
        if (conn->delayed)
            continue;               //  freed when the delayed list drains
        self->freed_output += conn->qbytes + (size_t) conn->qcount * S_QUEUE_ENTRY_COST;
        s_conn_free (conn);
    }
    if (self->freed_output > S_TRIM_BYTES) {
        //  A slow consumer's megabytes went back to malloc: give them back
        //  to the system too, or RSS stays at its high-water mark (recycled
        //  queue nodes would pin their pages, so they go first)
        s_node_purge ();
        malloc_trim (0);
        self->freed_output = 0;
    }
}

static int
s_epoll_add_zmq (s_worker_t *self, zsock_t *sock, uint64_t tag)
{
    struct epoll_event event = { .events = EPOLLIN };
    event.data.u64 = tag;
    return epoll_ctl (self->epoll_fd, EPOLL_CTL_ADD, zsock_fd (sock), &event);
}

//  State shared by the actor and the fuzz entry point.
static void
s_worker_init (s_worker_t *self, s_args_t *a)
{
    self->index = a->index;
    self->opts = a->opts;
    if (self->opts.hello_timeout_ms <= 0)
        self->opts.hello_timeout_ms = WSR_V1_HELLO_MS;
    self->metrics = a->metrics;
    self->node = strdup (a->name);
    self->topics = wsr_topic_new (self->opts.max_sessions * (WSR_MAX_CHANNELS + 1));
    self->ping = wsr_outframe_new_raw ((const uint8_t *) "\x89\x00", 2);
    self->ipcount = a->ipcount;
    self->by_id = zhashx_new ();
    zhashx_set_key_hasher (self->by_id, wsr_util_id_hash);
    zhashx_set_key_comparator (self->by_id, wsr_util_id_compare);
    zhashx_set_key_destructor (self->by_id, NULL);
    zhashx_set_key_duplicator (self->by_id, NULL);
    self->opening = zlistx_new ();
    self->reads = zhashx_new ();
    zhashx_set_key_hasher (self->reads, wsr_util_id_hash);
    zhashx_set_key_comparator (self->reads, wsr_util_id_compare);
    zhashx_set_key_destructor (self->reads, NULL);
    zhashx_set_key_duplicator (self->reads, NULL);
    zhashx_set_destructor (self->reads, s_read_free);
    self->entries = (wsr_history_entry_t *) malloc (WSR_HISTORY_MAX_READ
                                                    * sizeof (wsr_history_entry_t));
    assert (self->entries);
    const wsr_session_opts_t *o = &self->opts;
    if (o->jwt_alg && o->jwt_key && streq (o->jwt_alg, "HS256") && o->jwt_key_len)
        self->verifier = wsr_jwt_new_hs256 (o->jwt_key, o->jwt_key_len);
    else
    if (o->jwt_alg && o->jwt_key && streq (o->jwt_alg, "EdDSA") && o->jwt_key_len == 32)
        self->verifier = wsr_jwt_new_eddsa (o->jwt_key);
    if (self->verifier) {
        //  The same rules as auth's verifier: a refresh cannot bring back
        //  what the connecting token could not have
        wsr_jwt_set_leeway (self->verifier, o->jwt_leeway > 0? o->jwt_leeway: 0);
        wsr_jwt_set_require_exp (self->verifier, o->require_exp);
    }
    self->opts.jwt_key = NULL;          //  borrowed only until now
    s_worker = self;
}

//  ADOPTs still queued when the worker stops: their descriptors are closed
//  and their per-address slots given back (destroying the socket would free
//  the messages and leak the descriptors).
static void
s_adopt_discard (s_worker_t *self)
{
    if (!self->adopt)
        return;
    zsock_set_rcvtimeo (self->adopt, 0);
    char *verb = NULL, *reason = NULL, *user = NULL, *channels = NULL, *response = NULL;
    uint64_t id = 0, expiry = 0;
    int fd = -1, code = 0, ip_slot = -1, flags = 0;
    zframe_t *early = NULL;
    void *tls = NULL;
    while (zsock_recv (self->adopt, WSR_PIC_ADOPT, &verb, &id, &fd, &code, &ip_slot, &expiry,
                       &flags, &reason, &user, &channels, &response, &early, &tls) == 0) {
        wsr_tlsconn_t *ssl = (wsr_tlsconn_t *) tls;
        wsr_tls_free (&ssl);
        close (fd);
        if (ip_slot >= 0)
            wsr_ipcount_release (self->ipcount, ip_slot);
        wsr_metrics_add (self->metrics, WSR_M_CONNECTIONS_OPEN, -1);
        zstr_free (&verb);
        zstr_free (&reason);
        zstr_free (&user);
        zstr_free (&channels);
        zstr_free (&response);
        zframe_destroy (&early);
    }
}

static void
s_worker_fini (s_worker_t *self)
{
    s_adopt_discard (self);
    while (self->all)
        s_conn_kill (self, self->all);
    s_after_batch (self);
    free (self->scratch);
    self->scratch = NULL;
    s_delayed_release (self);       //  only dead sessions are left on it
    if (self->epoll_fd >= 0)
        close (self->epoll_fd);
    zsock_destroy (&self->adopt);
    wsr_hring_destroy (&self->hring);
    wsr_link_destroy (&self->link);
    wsr_topic_destroy (&self->topics);
    free (self->expiries);
    zlistx_destroy (&self->opening);        //  emptied by the kills above
    zhashx_destroy (&self->reads);
    free (self->entries);
    wsr_jwt_destroy (&self->verifier);
    zhashx_destroy (&self->by_id);
    wsr_deflate_destroy (&self->deflate);
    wsr_outframe_unlink (&self->ping);
    free (self->node);
    s_node_purge ();
}

//  The console asks for the busiest topics (wsr_census): walk the table,
//  WSR_CENSUS_STEP topics per turn, keep the top N. Only while somebody
//  looks, and no more often than wsr_census_due says.
static void
s_census_add (const char *key, size_t members, void *arg)
{
    s_worker_t *self = (s_worker_t *) arg;
    wsr_census_add (self->opts.census, self->index, key, members);
}

//  Returns true while the count is under way (the loop comes back at once).
static bool
s_census (s_worker_t *self)
{
    if (!self->census_walking)
        wsr_census_begin (self->opts.census, self->index);
    self->census_walking = true;
    if (!wsr_topic_walk (self->topics, WSR_CENSUS_STEP, s_census_add, self))
        return true;
    wsr_census_commit (self->opts.census, self->index, wsr_topic_size (self->topics),
                       wsr_util_mono_ms ());
    self->census_walking = false;
    return false;
}

static void
s_session_actor (zsock_t *pipe, void *args)
{
    s_args_t *a = (s_args_t *) args;
    s_worker_t self_data = { 0 };
    s_worker_t *self = &self_data;
    self->pipe = pipe;
    s_worker_init (self, a);
    char thread_name [16];
    snprintf (thread_name, sizeof thread_name, "wsr-session-%d", a->index);
    pthread_setname_np (pthread_self (), thread_name);

    self->adopt = zsock_new (ZMQ_PULL);
    assert (self->adopt);
    zsock_set_rcvhwm (self->adopt, WSR_HWM);
    zsock_set_rcvtimeo (self->adopt, 0);    //  drained with non-blocking receives
    char *adopt_ep = zsys_sprintf (WSR_EP_ADOPT, a->name, a->index);
    wsr_link_opts_t link_opts = {
        .endpoint = a->opts.bridge, .node = a->name, .role = WSR_ROLE_WORKER,
        .index = a->index, .curve_secret = a->opts.curve_secret,
        .curve_server = a->opts.curve_server, .metrics = a->metrics
    };
    self->link = wsr_link_new (&link_opts, s_resubscribe, self);
    self->status = 0;
    if (zsock_bind (self->adopt, "%s", adopt_ep) == -1 || !self->link)
        self->status = -1;
    zstr_free (&adopt_ep);
    self->epoll_fd = epoll_create1 (EPOLL_CLOEXEC);
    if (self->epoll_fd < 0
    ||  s_epoll_add_zmq (self, pipe, S_TAG_PIPE)
    ||  s_epoll_add_zmq (self, self->adopt, S_TAG_ADOPT)
    ||  (self->link && s_epoll_add_zmq (self, wsr_link_socket (self->link), S_TAG_LINK)))
        self->status = -1;
    zsock_signal (pipe, 0);

    bool again = true;              //  ZMQ_FD is edge-triggered: check once at start
    struct epoll_event events [S_MAX_EVENTS];
    while (!self->terminated) {
        //  Sleep until the earliest timer-list head is due (at most 1 s)
        int64_t now = wsr_util_mono_ms ();
        int64_t wake = now + 1000;
        if (self->delayed && self->flush_at < wake)
            wake = self->flush_at;
        if (self->expiry_count) {
            //  The heap's top, in wall-clock seconds: due at its next second
            int64_t due = self->expiries [0]->expiry * 1000 - wsr_util_now_us () / 1000;
            if (now + due < wake)
                wake = now + (due > 0? due: 0);
        }
        s_list_t *lists [3] = { &self->closing, &self->pinged, &self->active };
        for (int i = 0; i < 3; i++)
            if (lists [i]->head && lists [i]->head->deadline < wake)
                wake = lists [i]->head->deadline;
        if (self->sync_owed && self->sync_deadline < wake)
            wake = self->sync_deadline;
        int timeout = again || wake <= now? 0: (int) (wake - now);
        int n = epoll_wait (self->epoll_fd, events, S_MAX_EVENTS, timeout);
        if (n < 0 && errno != EINTR) {
            zsys_error ("session-%d: epoll_wait: %s", self->index, strerror (errno));
            break;
        }
        bool fired [S_TAG_MAX] = { [S_TAG_PIPE] = again, [S_TAG_ADOPT] = again };
        again = false;
        for (int i = 0; i < n; i++) {
            if (events [i].data.u64 < S_TAG_MAX) {
                fired [events [i].data.u64] = true;
                continue;           //  ZeroMQ sockets are drained below
            }
            s_conn_t *conn = (s_conn_t *) events [i].data.ptr;
            if (conn->state == S_DEAD)
                continue;
            if (events [i].events & (EPOLLIN | EPOLLERR | EPOLLHUP))
                s_conn_read (self, conn);
            if ((events [i].events & EPOLLOUT) && conn->state != S_DEAD)
                s_conn_flush (self, conn);
        }
        //  Edge-triggered ZMQ_FD: the pipe and adopt sockets are read when
        //  theirs fired (or a budget ran out); the link every turn, since we
        //  also send on it, which can take its read signal
        if (fired [S_TAG_PIPE])
            again |= s_drain_socket (self, pipe, s_handle_pipe);
        if (fired [S_TAG_ADOPT])
            again |= s_drain_socket (self, self->adopt, s_handle_adopt);
        if (self->link)
            again |= s_drain_socket (self, wsr_link_socket (self->link), s_handle_link);
        if (self->sync_owed && wsr_util_mono_ms () >= self->sync_deadline) {
            zsys_warning ("session-%d: handover: no SYNCED from the bridge in %d ms",
                          self->index, S_SYNC_TIMEOUT_MS);
            s_sync_answer (self, -1);
        }
        uint64_t sent = self->link? wsr_link_sent (self->link): 0;
        s_after_batch (self);
        if (self->opts.census
        &&  (self->census_walking || wsr_census_due (self->opts.census, self->index, now)))
            again |= s_census (self);
        if (self->link) {
            wsr_link_flush (self->link);        //  subscriptions of this turn, PING
            //  A send after the drain (events, subscriptions, PING) makes
            //  libzmq process commands, which can take the edge-triggered
            //  read signal of messages that arrived meanwhile: without this
            //  look they would wait for the next wake-up (up to 1 s). Turns
            //  that sent nothing skip its two system calls.
            if (wsr_link_sent (self->link) != sent)
                again |= (zsock_events (wsr_link_socket (self->link)) & ZMQ_POLLIN) != 0;
        }
    }
    //  Terminated: drop every connection at once
    s_worker_fini (self);
}

//  --------------------------------------------------------------------------
//  Start a worker.
wsr_session_t *
wsr_session_new (const char *name, int index, const wsr_session_opts_t *opts,
                 wsr_metrics_t *metrics, wsr_ipcount_t *ipcount)
{
    assert (name && opts && metrics && ipcount);
    s_args_t args = { (char *) name, index, *opts, metrics, ipcount };
    wsr_session_t *self = (wsr_session_t *) zmalloc (sizeof (wsr_session_t));
    self->actor = wsr_util_actor_start (s_session_actor, &args);
    if (!self->actor)
        wsr_session_destroy (&self);
    return self;
}

//  --------------------------------------------------------------------------
//  Stop a worker.
void
wsr_session_destroy (wsr_session_t **self_p)
{
    assert (self_p);
    if (*self_p) {
        wsr_session_t *self = *self_p;
        zactor_destroy (&self->actor);
        free (self);
        *self_p = NULL;
    }
}

//  --------------------------------------------------------------------------
//  Graceful close of every session.
void
wsr_session_drain (wsr_session_t *self)
{
    assert (self);
    int sent = zsock_send (self->actor, "s", WSR_CMD_DRAIN);
    assert (sent == 0);          //  a pipe is in-process: only ETERM fails
}

//  --------------------------------------------------------------------------
//  Connections held.
int64_t
wsr_session_count (wsr_session_t *self)
{
    assert (self);
    uint64_t count = 0;
    int sent = zsock_send (self->actor, "s", WSR_CMD_SESSIONS);
    assert (sent == 0);          //  a pipe is in-process: only ETERM fails
    zsock_recv (self->actor, "8", &count);
    return (int64_t) count;
}

//  --------------------------------------------------------------------------
//  Handover: export up to max sessions.
zmsg_t *
wsr_session_export (wsr_session_t *self, int max, uint64_t *open_p)
{
    assert (self && open_p);
    char count [16];
    snprintf (count, sizeof count, "%d", max);
    if (zstr_sendx (self->actor, WSR_CMD_EXPORT, count, NULL))
        return NULL;
    zmsg_t *reply = zmsg_recv (self->actor);
    zframe_t *open = reply? zmsg_pop (reply): NULL;
    assert (!reply || (open && zframe_size (open) == sizeof (uint64_t)));
    if (open)
        memcpy (open_p, zframe_data (open), sizeof (uint64_t));
    zframe_destroy (&open);
    return reply;
}

//  Handover: import sessions.
int
wsr_session_import (wsr_session_t *self, zmsg_t **msg_p)
{
    assert (self && msg_p && *msg_p);
    zmsg_t *msg = *msg_p;
    *msg_p = NULL;
    if (zmsg_pushstr (msg, WSR_CMD_IMPORT) || zmsg_send (&msg, self->actor)) {
        //  Not sent: the descriptors are ours to close
        zframe_t *frame = zmsg_first (msg);
        if (frame && zframe_streq (frame, WSR_CMD_IMPORT))
            frame = zmsg_next (msg);
        while (frame && (frame = zmsg_next (msg))) {
            int value;
            memcpy (&value, zframe_data (frame), sizeof value);
            close (value);
            frame = zmsg_next (msg);
        }
        zmsg_destroy (&msg);
        return 0;
    }
    int taken = 0;
    if (zsock_recv (self->actor, "i", &taken))
        return 0;
    return taken;
}

//  Handover: close what is left with 1012.
int
wsr_session_restart (wsr_session_t *self)
{
    assert (self);
    int closed = 0;
    if (zstr_send (self->actor, WSR_CMD_RESTART) || zsock_recv (self->actor, "i", &closed))
        return -1;
    return closed;
}

//  --------------------------------------------------------------------------
//  Handover: the worker's topic keys.
zmsg_t *
wsr_session_topics (wsr_session_t *self)
{
    assert (self);
    if (zstr_send (self->actor, WSR_CMD_TOPICS))
        return NULL;
    return zmsg_recv (self->actor);
}

//  Handover: subscribe keys (taken; NULL: none) with rings, then a barrier.
int
wsr_session_presub (wsr_session_t *self, zmsg_t **keys_p)
{
    assert (self);
    zmsg_t *msg = keys_p && *keys_p? *keys_p: zmsg_new ();
    if (keys_p)
        *keys_p = NULL;
    zmsg_pushstr (msg, WSR_CMD_PRESUB);
    if (zmsg_send (&msg, self->actor)) {
        zmsg_destroy (&msg);
        return -1;
    }
    return 0;
}

//  Handover: a barrier alone.
int
wsr_session_sync (wsr_session_t *self)
{
    assert (self);
    return zstr_send (self->actor, WSR_CMD_SYNC);
}

//  Handover: the answer to PRESUB or SYNC.
int
wsr_session_synced (wsr_session_t *self)
{
    assert (self);
    int rc = -1;
    if (zsock_recv (self->actor, "i", &rc))
        return -1;
    return rc;
}

//  Handover over: rings go.
void
wsr_session_presub_end (wsr_session_t *self)
{
    assert (self);
    int rc = 0;
    if (zstr_send (self->actor, WSR_CMD_PREEND) == 0)
        zsock_recv (self->actor, "i", &rc);
}

//  --------------------------------------------------------------------------
//  Fuzzing: one session's whole input path (wslay, our callbacks, close and
//  error handling, output queue) run synchronously on bytes from the peer.

size_t
wsr_session_fuzz (const uint8_t *data, size_t size)
{
    static s_worker_t *self = NULL;
    static zsock_t *sink = NULL;
    static uint64_t next_id = 0;
    if (!data && self) {
        //  wsr_session_fuzz (NULL, 0): release the static state
        wsr_metrics_t *metrics = self->metrics;
        wsr_ipcount_t *ipcount = self->ipcount;
        s_worker_fini (self);
        free (self);
        self = NULL;
        zsock_destroy (&sink);
        wsr_metrics_destroy (&metrics);
        wsr_ipcount_destroy (&ipcount);
        return 0;
    }
    if (!self) {
        //  One worker for the whole run (the fuzzer calls this millions of times)
        static wsr_session_opts_t opts = {
            .max_message = 65536, .max_queue = 65536, .max_sessions = 16,
            .close_timeout_ms = 0, .ping_interval_ms = 0, .rate_messages = 1000,
            .rate_bytes = 65536
        };
        s_args_t args = { "fuzz", 0, opts, wsr_metrics_new (), wsr_ipcount_new (0) };
        self = (s_worker_t *) zmalloc (sizeof (s_worker_t));
        s_worker_init (self, &args);
        self->epoll_fd = epoll_create1 (EPOLL_CLOEXEC);
        sink = zsock_new_router ("inproc://wsr-fuzz-bridge");
        wsr_link_opts_t link_opts = {
            .endpoint = "inproc://wsr-fuzz-bridge", .node = "fuzz", .role = WSR_ROLE_WORKER
        };
        self->link = wsr_link_new (&link_opts, NULL, NULL);
        assert (sink && self->link);
    }
    int pair [2];
    int rc = socketpair (AF_UNIX, SOCK_STREAM | SOCK_NONBLOCK, 0, pair);
    assert (rc == 0);
    shutdown (pair [1], SHUT_WR);       //  after the input, the peer is silent: EOF
    s_conn_t *conn = (s_conn_t *) zmalloc (sizeof (s_conn_t));
    conn->id = ++next_id;
    conn->fd = pair [0];
    conn->state = S_OPEN;
    conn->ip_slot = -1;
    conn->rate_last = wsr_util_mono_ms ();
    conn->msg_tokens = 1000;
    conn->byte_tokens = 65536 * 2;
    conn->user = strdup ("fuzz");
    conn->next = self->all;
    if (self->all)
        self->all->prev = conn;
    self->all = conn;
    self->count++;
    self->open++;
    zhashx_insert (self->by_id, (void *) (uintptr_t) conn->id, conn);
    wsr_metrics_add (self->metrics, WSR_M_CONNECTIONS_OPEN, 1);
    wsr_metrics_add (self->metrics, WSR_M_SESSIONS_OPEN, 1);
    bool joined = s_conn_join (self, conn, WSR_TOPIC_USER, conn->user, &conn->member);
    assert (joined);
    struct epoll_event event = { .events = EPOLLIN };
    event.data.ptr = conn;
    conn->events = EPOLLIN;
    epoll_ctl (self->epoll_fd, EPOLL_CTL_ADD, conn->fd, &event);
    if (size > 0) {
        conn->early = (uint8_t *) malloc (size);
        memcpy (conn->early, data, size);
        conn->early_size = size;
    }
    //  Read until the session is done with the input (EOF ends it); a dead
    //  session is freed by s_after_batch, so look it up by id each turn
    uint64_t id = conn->id;
    for (int turn = 0; turn < 64; turn++) {
        conn = (s_conn_t *) zhashx_lookup (self->by_id, (void *) (uintptr_t) id);
        if (!conn || (conn->state == S_CLOSING && conn->read_off))
            break;
        s_conn_read (self, conn);
        s_after_batch (self);
    }
    size_t written = 0;
    uint8_t buf [4096];
    ssize_t n;
    while ((n = recv (pair [1], buf, sizeof buf, 0)) > 0)
        written += (size_t) n;
    conn = (s_conn_t *) zhashx_lookup (self->by_id, (void *) (uintptr_t) id);
    if (conn)
        s_conn_kill (self, conn);
    s_after_batch (self);
    close (pair [1]);
    zmsg_t *msg;
    while ((zsock_events (sink) & ZMQ_POLLIN) && (msg = zmsg_recv (sink)))
        zmsg_destroy (&msg);
    return written;
}

//  --------------------------------------------------------------------------
//  Selftest: a socketpair is the client; the test plays auth (ADOPT) and
//  the bridge (a ROUTER speaking WBP/1 to the worker's link).

//  Read exactly len bytes from fd within timeout_ms; returns bytes read.
static size_t
s_read_exact (int fd, uint8_t *buf, size_t len, int timeout_ms)
{
    size_t got = 0;
    int64_t end = zclock_mono () + timeout_ms;
    while (got < len && zclock_mono () < end) {
        zmq_pollitem_t item = { NULL, fd, ZMQ_POLLIN, 0 };
        if (zmq_poll (&item, 1, 50) > 0) {
            ssize_t n = recv (fd, buf + got, len - got, 0);
            if (n <= 0)
                break;
            got += (size_t) n;
        }
    }
    return got;
}

//  Read the 101 response up to the blank line.
static void
s_expect_101 (int fd)
{
    char buf [512];
    size_t got = 0;
    while (got < sizeof buf - 1) {
        if (s_read_exact (fd, (uint8_t *) buf + got, 1, 2000) != 1)
            break;
        got++;
        buf [got] = 0;
        if (got >= 4 && streq (buf + got - 4, "\r\n\r\n"))
            break;
    }
    assert (strstr (buf, "HTTP/1.1 101 Switching Protocols\r\n"));
    assert (strstr (buf, "Sec-WebSocket-Accept: ACCEPT\r\n"));
}

//  Send a masked client frame.
static void
s_client_send (int fd, int opcode, bool fin, const void *data, size_t len)
{
    uint8_t frame [256];
    assert (len < 126);
    frame [0] = (fin? 0x80: 0) | (uint8_t) opcode;
    frame [1] = 0x80 | (uint8_t) len;
    uint8_t mask [4] = { 0x11, 0x22, 0x33, 0x44 };
    memcpy (frame + 2, mask, 4);
    for (size_t i = 0; i < len; i++)
        frame [6 + i] = ((const uint8_t *) data) [i] ^ mask [i % 4];
    assert (send (fd, frame, 6 + len, 0) == (ssize_t) (6 + len));
}

//  Send a masked client frame of any length under 64 KiB.
static void
s_client_send_long (int fd, int opcode, const void *data, size_t len)
{
    uint8_t frame [4 + 4 + 65536];
    assert (len < 65536);
    size_t at = 0;
    frame [at++] = 0x80 | (uint8_t) opcode;
    if (len < 126)
        frame [at++] = 0x80 | (uint8_t) len;
    else {
        frame [at++] = 0x80 | 126;
        frame [at++] = (uint8_t) (len >> 8);
        frame [at++] = (uint8_t) len;
    }
    uint8_t mask [4] = { 0x21, 0x43, 0x65, 0x87 };
    memcpy (frame + at, mask, 4);
    at += 4;
    for (size_t i = 0; i < len; i++)
        frame [at + i] = ((const uint8_t *) data) [i] ^ mask [i % 4];
    assert (send (fd, frame, at + len, 0) == (ssize_t) (at + len));
}

//  Read one unmasked server frame (payload < 64 KiB); returns opcode.
static int
s_client_recv (int fd, uint8_t *payload, size_t *len)
{
    uint8_t header [4];
    if (s_read_exact (fd, header, 2, 2000) != 2)
        return -1;
    size_t size = header [1] & 0x7f;
    assert (!(header [1] & 0x80));
    if (size == 126) {
        assert (s_read_exact (fd, header + 2, 2, 2000) == 2);
        size = (size_t) header [2] << 8 | header [3];
    }
    assert (s_read_exact (fd, payload, size, 2000) == size);
    *len = size;
    return header [0] & 0x0f;
}

static int
s_test_adopt_exp (zsock_t *auth, uint64_t id, int code, const char *reason, const char *user,
                  const char *channels, const void *early, size_t early_size,
                  int64_t expiry);

static int s_test_flags = 0;        //  ADOPT flags of the sessions the test makes

static int
s_test_adopt (zsock_t *auth, uint64_t id, int code, const char *reason, const char *user,
         const char *channels, const void *early, size_t early_size)
{
    return s_test_adopt_exp (auth, id, code, reason, user, channels, early, early_size, 0);
}

static int
s_test_adopt_exp (zsock_t *auth, uint64_t id, int code, const char *reason, const char *user,
                  const char *channels, const void *early, size_t early_size,
                  int64_t expiry)
{
    int pair [2];
    assert (socketpair (AF_UNIX, SOCK_STREAM, 0, pair) == 0);
    int flags = fcntl (pair [0], F_GETFL);
    fcntl (pair [0], F_SETFL, flags | O_NONBLOCK);
    zframe_t *frame = zframe_new (early, early_size);
    const char *response = "HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\n"
                           "Connection: Upgrade\r\nSec-WebSocket-Accept: ACCEPT\r\n\r\n";
    int rc = zsock_send (auth, WSR_PIC_ADOPT, WSR_MSG_ADOPT, id, pair [0], code, -1,
                         (uint64_t) expiry, s_test_flags, reason, user, channels, response,
                         frame, (void *) NULL);
    assert (rc == 0);
    zframe_destroy (&frame);
    return pair [1];
}

//  The test plays the bridge: a ROUTER that records what the worker's link
//  sends and can deliver to it.
typedef struct {
    zsock_t *router;                //  the bridge's socket
    zframe_t *rid;                  //  the worker's routing id, from its HELLO
    zlistx_t *subs;                 //  "+topic" / "-topic", in order
    zlistx_t *ups;                  //  UP envelopes (zframe_t)
    zlistx_t *hists;                //  HIST requests (zmsg_t, after the command)
    int64_t last_hb;                //  mono ms of our last heartbeat to the worker
    int syncs;                      //  SYNCs answered (SYNCED at once)
} s_fake_t;

//  A heartbeat now and then, as a bridge does: a slow run (sanitizers, a busy
//  machine) must not look like a silent bridge to the worker's link
static void
s_fake_beat (s_fake_t *fake)
{
    if (!fake->rid || zclock_mono () - fake->last_hb < 1000)
        return;
    uint8_t epoch [8];
    wsr_msgs_put_u64 (epoch, 7);
    zframe_t *beat = wsr_envelope_encode_heartbeat (-1, -1);
    zsock_send (fake->router, "fsbf", fake->rid, WSR_PROTO_HB, epoch, (size_t) 8, beat);
    zframe_destroy (&beat);
    fake->last_hb = zclock_mono ();
}

static void
s_fake_pump (s_fake_t *fake, int ms)
{
    zpoller_t *poller = zpoller_new (fake->router, NULL);
    if (zpoller_wait (poller, ms) == fake->router) {
        zmsg_t *msg = zmsg_recv (fake->router);
        zframe_t *rid = zmsg_pop (msg);
        char *command = zmsg_popstr (msg);
        //  The latest worker to speak is the one deliveries go to
        zframe_destroy (&fake->rid);
        fake->rid = zframe_dup (rid);
        if (streq (command, WSR_PROTO_SUB) || streq (command, WSR_PROTO_UNSUB))
            for (zframe_t *frame = zmsg_first (msg); frame; frame = zmsg_next (msg))
                zlistx_add_end (fake->subs, zsys_sprintf ("%c%s",
                                streq (command, WSR_PROTO_SUB)? '+': '-', zframe_data (frame)));
        else
        if (streq (command, WSR_PROTO_UP))
            zlistx_add_end (fake->ups, zmsg_pop (msg));
        else
        if (streq (command, WSR_PROTO_HIST)) {
            zlistx_add_end (fake->hists, msg);
            msg = NULL;
        }
        else
        if (streq (command, WSR_PROTO_SYNC)) {
            zframe_t *token = zmsg_pop (msg);
            int rc = zsock_send (fake->router, "fsf", rid, WSR_PROTO_SYNCED, token);
            assert (rc == 0);
            zframe_destroy (&token);
            fake->syncs++;
        }
        zframe_destroy (&rid);
        zstr_free (&command);
        zmsg_destroy (&msg);
    }
    zpoller_destroy (&poller);
}

static void
s_publish (s_fake_t *fake, const char *topic, const char *text)
{
    while (!fake->rid)
        s_fake_pump (fake, 100);
    s_fake_beat (fake);
    zframe_t *key = zframe_new (topic, strlen (topic) + 1);
    zframe_t *env = wsr_envelope_encode_down ((const uint8_t *) text, strlen (text), 0, 0);
    int rc = zsock_send (fake->router, "fsff", fake->rid, WSR_PROTO_DELIVER, key, env);
    assert (rc == 0);
    zframe_destroy (&key);
    zframe_destroy (&env);
}

//  Wait for one subscription change ('+' or '-') of topic, skipping others.
static void
s_wait_change (s_fake_t *fake, char kind, const char *topic)
{
    int64_t end = zclock_mono () + 2000;
    bool seen = false;
    while (!seen && zclock_mono () < end) {
        char *change;
        while (!seen && (change = (char *) zlistx_detach (fake->subs, NULL))) {
            seen = change [0] == kind && streq (change + 1, topic);
            zstr_free (&change);
        }
        if (!seen)
            s_fake_pump (fake, 20);
    }
    assert (seen);
}

//  A delivery to one worker, by its routing id.
static void
s_publish_to (s_fake_t *fake, zframe_t *rid, const char *topic, const char *text)
{
    zframe_t *key = zframe_new (topic, strlen (topic) + 1);
    zframe_t *env = wsr_envelope_encode_down ((const uint8_t *) text, strlen (text), 0, 0);
    int rc = zsock_send (fake->router, "fsff", rid, WSR_PROTO_DELIVER, key, env);
    assert (rc == 0);
    zframe_destroy (&key);
    zframe_destroy (&env);
}

//  The next subscription change must be kind (1 on, 0 off) for topic.
static void
s_expect_sub (s_fake_t *fake, int kind, const char *topic)
{
    int64_t end = zclock_mono () + 2000;
    s_fake_beat (fake);
    while (zlistx_size (fake->subs) == 0 && zclock_mono () < end)
        s_fake_pump (fake, 50);
    char *seen = (char *) zlistx_detach (fake->subs, NULL);
    assert (seen && seen [0] == (kind? '+': '-') && streq (seen + 1, topic));
    zstr_free (&seen);
}

//  Wait until the worker subscribes topic, skipping other changes.
static void
s_wait_sub (s_fake_t *fake, const char *topic)
{
    int64_t end = zclock_mono () + 2000;
    bool seen = false;
    while (!seen && zclock_mono () < end) {
        s_fake_pump (fake, 50);
        char *change;
        while (!seen && (change = (char *) zlistx_detach (fake->subs, NULL))) {
            seen = change [0] == '+' && streq (change + 1, topic);
            zstr_free (&change);
        }
    }
    assert (seen);
}

//  The next client message that went upstream.
static zframe_t *
s_expect_up (s_fake_t *fake)
{
    int64_t end = zclock_mono () + 2000;
    while (zlistx_size (fake->ups) == 0 && zclock_mono () < end)
        s_fake_pump (fake, 50);
    zframe_t *up = (zframe_t *) zlistx_detach (fake->ups, NULL);
    assert (up);
    return up;
}

//  Handover between two workers of this process: a session with a
//  half-received client frame and output its socket did not take leaves
//  worker "hoa" and lives on in "hob"; the client sees no close, gets every
//  message once and in order, and its frame, completed after the move, goes
//  upstream whole.
static void
s_handover_test (s_fake_t *fake, const wsr_session_opts_t *opts, wsr_metrics_t *metrics,
                 wsr_ipcount_t *ipcount)
{
    wsr_session_opts_t small = *opts;
    small.max_queue = 1024 * 1024;
    //  b starts once the session has left a: the fake bridge delivers to
    //  the worker that spoke last
    wsr_session_t *a = wsr_session_new ("hoa", 0, &small, metrics, ipcount);
    assert (a);
    zsock_t *auth = zsock_new_push ("inproc://wsr-adopt-hoa-0");
    //  A small send buffer on the server's end keeps output queued
    int pair [2];
    assert (socketpair (AF_UNIX, SOCK_STREAM, 0, pair) == 0);
    int sndbuf = 4096;
    assert (setsockopt (pair [0], SOL_SOCKET, SO_SNDBUF, &sndbuf, sizeof sndbuf) == 0);
    fcntl (pair [0], F_SETFL, fcntl (pair [0], F_GETFL) | O_NONBLOCK);
    int c = pair [1];
    const char *response = "HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\n"
                           "Connection: Upgrade\r\nSec-WebSocket-Accept: ACCEPT\r\n\r\n";
    zframe_t *none = zframe_new (NULL, 0);
    int rc = zsock_send (auth, WSR_PIC_ADOPT, WSR_MSG_ADOPT, (uint64_t) 500, pair [0], 0, -1,
                         (uint64_t) 0, 0, "", "hu", "hch", response, none, (void *) NULL);
    assert (rc == 0);
    zframe_destroy (&none);
    s_expect_101 (c);
    s_wait_sub (fake, "user:hu");
    zframe_t *a_rid = zframe_dup (fake->rid);   //  the SUB came from a
    s_wait_sub (fake, "channel:hch");

    //  A ping and the first 7 of 17 bytes of a text frame, in one write:
    //  the pong proves the worker read both
    const char *text = "hello world";
    uint8_t frame [6 + 6 + 11];
    uint8_t mask [4] = { 9, 8, 7, 6 };
    frame [0] = 0x89; frame [1] = 0x80;
    memcpy (frame + 2, mask, 4);
    frame [6] = 0x81; frame [7] = 0x80 | 11;
    memcpy (frame + 8, mask, 4);
    for (int i = 0; i < 11; i++)
        frame [12 + i] = (uint8_t) text [i] ^ mask [i % 4];
    assert (send (c, frame, 6 + 7, 0) == 13);
    uint8_t payload [70000];
    size_t len;
    assert (s_client_recv (c, payload, &len) == 0xA && len == 0);

    //  60 numbered messages of 1 KB and a marker, not read yet: most stay
    //  queued. The worker counts them once they are queued.
    int64_t before = wsr_metrics_get (metrics, WSR_M_MESSAGES_OUT);
    char message [1024];
    for (int i = 0; i < 60; i++) {
        memset (message, 'x', sizeof message - 1);
        message [sizeof message - 1] = 0;
        snprintf (message, 8, "%04d", i);
        message [4] = '-';
        s_publish_to (fake, a_rid, "user:hu", message);
    }
    s_publish_to (fake, a_rid, "channel:hch", "marker");
    zframe_destroy (&a_rid);
    int64_t end = zclock_mono () + 2000;
    while (wsr_metrics_get (metrics, WSR_M_MESSAGES_OUT) < before + 61
    &&     zclock_mono () < end)
        s_fake_pump (fake, 10);
    assert (wsr_metrics_get (metrics, WSR_M_MESSAGES_OUT) == before + 61);
    uint64_t open = 1;
    zmsg_t *moved = wsr_session_export (a, 100, &open);
    assert (moved);
    assert (zmsg_size (moved) == 2 && open == 0);
    zframe_t *record = zmsg_first (moved);
    wsr_handover_type_t type;
    int64_t body = wsr_handover_header (zframe_data (record), &type);
    wsr_handover_session_t rec;
    assert (body > 0 && type == WSR_HANDOVER_SESSION);
    assert (wsr_handover_session_decode (zframe_data (record) + WSR_HANDOVER_HEADER,
                                         (size_t) body, &rec) == 0);
    assert (rec.id == 500 && streq (rec.user, "hu") && rec.channel_count == 1);
    assert (streq (rec.channels [0], "hch"));
    assert (rec.input_size == 7 && !memcmp (rec.input, frame + 6, 7));
    assert (rec.output_size > 0);           //  the socket took only part
    wsr_handover_session_clear (&rec);
    //  Gone from a: its subscriptions end there
    s_wait_change (fake, '-', "user:hu");
    s_wait_change (fake, '-', "channel:hch");
    //  b subscribes the topics first (PRESUB, answered after a barrier)
    wsr_session_t *b = wsr_session_new ("hob", 0, &small, metrics, ipcount);
    assert (b);
    zmsg_t *keys = zmsg_new ();
    zmsg_addstr (keys, "user:hu");
    zmsg_addstr (keys, "channel:hch");
    int syncs = fake->syncs;
    assert (wsr_session_presub (b, &keys) == 0 && keys == NULL);
    s_wait_change (fake, '+', "user:hu");
    zframe_t *b_rid = zframe_dup (fake->rid);   //  the SUB came from b
    s_wait_change (fake, '+', "channel:hch");
    end = zclock_mono () + 2000;
    while (fake->syncs == syncs && zclock_mono () < end)
        s_fake_pump (fake, 10);
    assert (wsr_session_synced (b) == 0);
    //  b's rings get what both had (the last of each topic that a queued)
    //  and what only b has; nothing of it is a session's yet
    s_publish_to (fake, b_rid, "user:hu", message);
    s_publish_to (fake, b_rid, "user:hu", "ring1");
    s_publish_to (fake, b_rid, "channel:hch", "marker");
    s_publish_to (fake, b_rid, "channel:hch", "ring2");
    syncs = fake->syncs;
    assert (wsr_session_sync (b) == 0);
    end = zclock_mono () + 2000;
    while (fake->syncs == syncs && zclock_mono () < end)
        s_fake_pump (fake, 10);
    assert (wsr_session_synced (b) == 0);
    int64_t replayed = wsr_metrics_get (metrics, WSR_M_HANDOVER_REPLAYED);
    assert (wsr_session_import (b, &moved) == 1 && moved == NULL);
    //  Only what followed each mark: ring1 and ring2, once
    assert (wsr_metrics_get (metrics, WSR_M_HANDOVER_REPLAYED) == replayed + 2);

    //  The rest of the frame goes to b, which replays the first part
    assert (send (c, frame + 13, sizeof frame - 13, 0) == (ssize_t) (sizeof frame - 13));
    zframe_t *up = s_expect_up (fake);
    wsr_envelope_t env;
    assert (wsr_envelope_decode (zframe_data (up), zframe_size (up), &env) == 0);
    assert (env.session == 500 && env.size == 11 && !memcmp (env.data, text, 11));
    zframe_destroy (&up);
    //  Deliveries now come from b
    s_publish_to (fake, b_rid, "user:hu", "after");
    zframe_destroy (&b_rid);
    for (int i = 0; i < 60; i++) {
        assert (s_client_recv (c, payload, &len) == 1 && len == sizeof message - 1);
        char number [5];
        snprintf (number, sizeof number, "%04d", i);
        assert (!memcmp (payload, number, 4));
    }
    assert (s_client_recv (c, payload, &len) == 1 && len == 6 && !memcmp (payload, "marker", 6));
    assert (s_client_recv (c, payload, &len) == 1 && len == 5 && !memcmp (payload, "ring1", 5));
    assert (s_client_recv (c, payload, &len) == 1 && len == 5 && !memcmp (payload, "ring2", 5));
    assert (s_client_recv (c, payload, &len) == 1 && len == 5 && !memcmp (payload, "after", 5));
    //  The handover ends: the rings go, the session's topics stay
    wsr_session_presub_end (b);
    //  Nothing was left in a; b closes what it holds with 1012
    assert (wsr_session_restart (a) == 0);
    assert (wsr_session_restart (b) == 1);
    assert (s_client_recv (c, payload, &len) == 0x8);
    assert (len >= 2 && (payload [0] << 8 | payload [1]) == WSR_CLOSE_SERVICE_RESTART);
    close (c);
    zsock_destroy (&auth);
    wsr_session_destroy (&a);
    wsr_session_destroy (&b);
}

void
wsr_session_test (bool verbose)
{
    (void) verbose;
    wsr_metrics_t *metrics = wsr_metrics_new ();
    //  The test plays the bridge
    s_fake_t fake_data = { zsock_new_router ("inproc://wsr-bridge-stest"), NULL,
                           zlistx_new (), zlistx_new (), zlistx_new (), 0, 0 };
    s_fake_t *fake = &fake_data;
    zlistx_set_destructor (fake->subs, (czmq_destructor *) zstr_free);
    zlistx_set_destructor (fake->ups, (czmq_destructor *) zframe_destroy);
    zlistx_set_destructor (fake->hists, (czmq_destructor *) zmsg_destroy);
    wsr_ipcount_t *ipcount = wsr_ipcount_new (0);
    wsr_session_opts_t opts = {
        .max_message = 1024 * 1024, .max_queue = 64 * 1024, .max_sessions = 1000,
        .close_timeout_ms = 500, .bridge = "inproc://wsr-bridge-stest"
    };
    wsr_session_t *worker = wsr_session_new ("stest", 0, &opts, metrics, ipcount);
    assert (worker);
    zsock_t *auth = zsock_new_push ("inproc://wsr-adopt-stest-0");

    //  A good session for u1 with channel room.7; a client frame arrives
    //  together with the handshake (early bytes) and goes upstream
    uint8_t early [6 + 5];
    early [0] = 0x81; early [1] = 0x80 | 5;
    uint8_t mask [4] = { 1, 2, 3, 4 };
    memcpy (early + 2, mask, 4);
    for (int i = 0; i < 5; i++)
        early [6 + i] = "early" [i] ^ mask [i % 4];
    int c1 = s_test_adopt (auth, 1, 0, "", "u1", "room.7", early, sizeof early);
    s_expect_101 (c1);
    s_expect_sub (fake, 1, "user:u1");
    s_expect_sub (fake, 1, "channel:room.7");
    zframe_t *env_frame = s_expect_up (fake);
    wsr_envelope_t env;
    assert (wsr_envelope_decode (zframe_data (env_frame), zframe_size (env_frame), &env) == 0);
    assert (env.size == 5 && memcmp (env.data, "early", 5) == 0 && env.session == 1);
    assert (env.kind == WSR_KIND_TEXT && env.user_len == 2 && !memcmp (env.user, "u1", 2));
    zframe_destroy (&env_frame);

    //  A second session of u1 (no new subscription) and one of u10
    int c2 = s_test_adopt (auth, 2, 0, "", "u1", "", NULL, 0);
    s_expect_101 (c2);
    int c3 = s_test_adopt (auth, 3, 0, "", "u10", "", NULL, 0);
    s_expect_101 (c3);
    s_expect_sub (fake, 1, "user:u10");

    //  Deliveries: both u1 sessions get u1's message, u10 only its own
    s_publish (fake, "user:u1", "to-u1");
    s_publish (fake, "user:u10", "to-u10");
    s_publish (fake, "channel:room.7", "to-room");
    uint8_t payload [70000];
    size_t len;
    assert (s_client_recv (c1, payload, &len) == 1 && len == 5 && !memcmp (payload, "to-u1", 5));
    assert (s_client_recv (c1, payload, &len) == 1 && len == 7 && !memcmp (payload, "to-room", 7));
    assert (s_client_recv (c2, payload, &len) == 1 && len == 5 && !memcmp (payload, "to-u1", 5));
    assert (s_client_recv (c3, payload, &len) == 1 && len == 6 && !memcmp (payload, "to-u10", 6));
    //  c2 got nothing for room.7
    assert (s_read_exact (c2, payload, 1, 100) == 0);

    //  Ping between fragments is answered; the fragmented message goes up whole
    s_client_send (c2, 0x2, false, "ab", 2);
    s_client_send (c2, 0x9, true, "pp", 2);
    s_client_send (c2, 0x0, true, "\xff", 1);
    assert (s_client_recv (c2, payload, &len) == 0xA && len == 2 && !memcmp (payload, "pp", 2));
    env_frame = s_expect_up (fake);
    assert (wsr_envelope_decode (zframe_data (env_frame), zframe_size (env_frame), &env) == 0);
    assert (env.kind == WSR_KIND_BINARY && env.size == 3 && !memcmp (env.data, "ab\xff", 3));
    zframe_destroy (&env_frame);

    //  Invalid UTF-8 text → close 1007
    s_client_send (c3, 0x1, true, "\xc0\xaf", 2);
    assert (s_client_recv (c3, payload, &len) == 0x8);
    assert (len >= 2 && (payload [0] << 8 | payload [1]) == 1007);
    s_expect_sub (fake, 0, "user:u10");         //  last u10 session left
    close (c3);

    //  A rejected token: upgraded, then closed with 1008 and the reason
    int c4 = s_test_adopt (auth, 4, 1008, "token expired", "", "", NULL, 0);
    s_expect_101 (c4);
    assert (s_client_recv (c4, payload, &len) == 0x8);
    assert ((payload [0] << 8 | payload [1]) == 1008);
    assert (len == 2 + 13 && !memcmp (payload + 2, "token expired", 13));
    //  Client answers the close; the server then closes TCP
    s_client_send (c4, 0x8, true, "\x03\xf0", 2);
    assert (s_read_exact (c4, payload, 1, 2000) == 0);
    close (c4);

    //  Slow consumer: c2 never reads; its queue overflows (64 KiB) and it is
    //  closed, while c1 keeps receiving everything in order
    char big [1000];
    memset (big, 'x', sizeof big - 1);
    big [sizeof big - 1] = 0;
    for (int i = 0; i < 1000; i++) {
        s_publish (fake, "user:u1", big);
        if (i % 10 == 9)
            for (int j = 0; j < 10; j++) {
                assert (s_client_recv (c1, payload, &len) == 1);
                assert (len == sizeof big - 1);
            }
    }
    int64_t deadline = zclock_mono () + 3000;
    while (wsr_metrics_get (metrics, WSR_M_QUEUE_DROPS) < 1 && zclock_mono () < deadline)
        zclock_sleep (10);
    assert (wsr_metrics_get (metrics, WSR_M_QUEUE_DROPS) == 1);
    //  c2 sees its queued data, then a close 1008 (after at most the frame in flight)
    int opcode;
    while ((opcode = s_client_recv (c2, payload, &len)) == 1)
        ;
    assert (opcode == 0x8 && (payload [0] << 8 | payload [1]) == 1008);
    close (c2);

    //  Drain: c1 gets 1001
    wsr_session_drain (worker);
    assert (s_client_recv (c1, payload, &len) == 0x8);
    assert ((payload [0] << 8 | payload [1]) == 1001);
    close (c1);
    deadline = zclock_mono () + 3000;
    while (wsr_session_count (worker) > 0 && zclock_mono () < deadline)
        zclock_sleep (10);
    assert (wsr_session_count (worker) == 0);
    assert (wsr_metrics_get (metrics, WSR_M_SESSIONS_OPEN) == 0);

    wsr_session_destroy (&worker);
    zsock_destroy (&auth);

    //  Protocol edges, pings and rate limits on a second worker
    opts.ping_interval_ms = 200;
    opts.ping_timeout_ms = 300;
    opts.rate_messages = 20;
    opts.rate_bytes = 100000;
    worker = wsr_session_new ("stest", 1, &opts, metrics, ipcount);
    assert (worker);
    auth = zsock_new_push ("inproc://wsr-adopt-stest-1");
    struct {
        const char *name;               //  what the client does wrong
        uint8_t bytes [140];            //  raw frame, masked with key 0
        size_t size;
        int code;                       //  close code expected
    } cases [] = {
        { "ping over 125 bytes", { 0x89, 0xfe, 0, 126, 0, 0, 0, 0 }, 8, 1002 },
        { "fragmented ping", { 0x09, 0x80, 0, 0, 0, 0 }, 6, 1002 },
        { "unmasked frame", { 0x81, 0x01, 'x' }, 3, 1002 },
        { "RSV1 without extension", { 0xc1, 0x80, 0, 0, 0, 0 }, 6, 1002 },
        { "reserved opcode 3", { 0x83, 0x80, 0, 0, 0, 0 }, 6, 1002 },
        { "continuation first", { 0x80, 0x80, 0, 0, 0, 0 }, 6, 1002 },
        { "text inside fragmented", { 0x01, 0x81, 0, 0, 0, 0, 'a', 0x81, 0x81, 0, 0, 0, 0, 'b' },
          14, 1002 },
        { "64-bit length, top bit", { 0x82, 0xff, 0x80, 0, 0, 0, 0, 0, 0, 1, 0, 0, 0, 0 },
          14, 1002 },
        { "1-byte close", { 0x88, 0x81, 0, 0, 0, 0, 0x03 }, 7, 1002 },
        { "close code 1005", { 0x88, 0x82, 0, 0, 0, 0, 0x03, 0xed }, 8, 1002 },
        { "close code 999", { 0x88, 0x82, 0, 0, 0, 0, 0x03, 0xe7 }, 8, 1002 },
        { "close code 2999", { 0x88, 0x82, 0, 0, 0, 0, 0x0b, 0xb7 }, 8, 1002 },
        { "close code 5000", { 0x88, 0x82, 0, 0, 0, 0, 0x13, 0x88 }, 8, 1002 },
        { "close code 1000 echoed", { 0x88, 0x82, 0, 0, 0, 0, 0x03, 0xe8 }, 8, 1000 },
        { "close code 1013 echoed", { 0x88, 0x84, 0, 0, 0, 0, 0x03, 0xf5, 'o', 'k' }, 10, 1013 },
        { "close code 4000 echoed", { 0x88, 0x82, 0, 0, 0, 0, 0x0f, 0xa0 }, 8, 4000 },
        { "close reason not UTF-8", { 0x88, 0x83, 0, 0, 0, 0, 0x03, 0xe8, 0xff }, 9, 1007 },
        { "text not UTF-8 split", { 0x01, 0x81, 0, 0, 0, 0, 0xf0, 0x80, 0x81, 0, 0, 0, 0, 'a' },
          14, 1007 },
    };
    uint64_t id = 100;
    for (size_t i = 0; i < sizeof cases / sizeof cases [0]; i++) {
        int c = s_test_adopt (auth, ++id, 0, "", "edge", "", NULL, 0);
        s_expect_101 (c);
        assert (send (c, cases [i].bytes, cases [i].size, 0) == (ssize_t) cases [i].size);
        int opcode;
        while ((opcode = s_client_recv (c, payload, &len)) == 0x9)
            ;                           //  a ping may come first
        if (opcode != 0x8 || len < 2 || (payload [0] << 8 | payload [1]) != cases [i].code) {
            fprintf (stderr, "\n%s: opcode %d code %d, expected close %d\n", cases [i].name,
                     opcode, len >= 2? payload [0] << 8 | payload [1]: -1, cases [i].code);
            assert (false);
        }
        //  And the server closes TCP promptly after the close
        assert (s_read_exact (c, payload, 1, 1500) == 0);
        close (c);
    }

    //  Pings: a silent client is pinged; one that answers stays; one that
    //  does not is dropped after the timeout
    int alive = s_test_adopt (auth, ++id, 0, "", "pinged", "", NULL, 0);
    int dead = s_test_adopt (auth, ++id, 0, "", "pinged", "", NULL, 0);
    s_expect_101 (alive);
    s_expect_101 (dead);
    assert (s_client_recv (alive, payload, &len) == 0x9 && len == 0);
    s_client_send (alive, 0xA, true, "", 0);
    assert (s_client_recv (dead, payload, &len) == 0x9);
    int64_t start = zclock_mono ();
    assert (s_read_exact (dead, payload, 1, 2000) == 0);         //  closed
    assert (zclock_mono () - start < 1000);
    assert (wsr_metrics_get (metrics, WSR_M_PING_TIMEOUTS) >= 1);
    assert (s_client_recv (alive, payload, &len) == 0x9);       //  pinged again, still open
    close (alive);
    close (dead);

    //  Rate limit: 20 frames/s with a burst of 20; 60 at once → 1008
    int flood = s_test_adopt (auth, ++id, 0, "", "flooder", "", NULL, 0);
    s_expect_101 (flood);
    for (int i = 0; i < 60; i++)
        s_client_send (flood, 0x9, true, "p", 1);
    while ((opcode = s_client_recv (flood, payload, &len)) == 0xA || opcode == 0x9)
        ;
    assert (opcode == 0x8 && (payload [0] << 8 | payload [1]) == 1008);
    assert (len == 2 + strlen ("rate limit exceeded"));
    close (flood);
    assert (wsr_metrics_get (metrics, WSR_M_RATE_LIMITED) == 1);

    wsr_session_destroy (&worker);
    zsock_destroy (&auth);

    //  Token expiry (a third worker, no pings): each session is closed with
    //  1008 "token expired" when its own deadline comes, in deadline order;
    //  one without expiry stays
    opts.ping_interval_ms = 0;
    opts.write_delay_ms = 100;
    worker = wsr_session_new ("stest", 2, &opts, metrics, ipcount);
    assert (worker);
    auth = zsock_new_push ("inproc://wsr-adopt-stest-2");
    int64_t wall = wsr_util_now_us () / 1000000;
    int later = s_test_adopt_exp (auth, ++id, 0, "", "exp", "", NULL, 0, wall + 2);
    int never = s_test_adopt_exp (auth, ++id, 0, "", "exp", "", NULL, 0, 0);
    int soon = s_test_adopt_exp (auth, ++id, 0, "", "exp", "", NULL, 0, wall + 1);
    s_expect_101 (later);
    s_expect_101 (never);
    s_expect_101 (soon);
    int64_t before = wsr_metrics_get (metrics, WSR_M_TOKEN_EXPIRED);
    int opcode_soon = s_client_recv (soon, payload, &len);
    assert (opcode_soon == 0x8 && (payload [0] << 8 | payload [1]) == 1008);
    assert (len == 2 + strlen (s_expired) && !memcmp (payload + 2, s_expired, len - 2));
    assert (wsr_util_now_us () / 1000000 >= wall + 1);
    assert (wsr_metrics_get (metrics, WSR_M_TOKEN_EXPIRED) == before + 1);
    opcode_soon = s_client_recv (later, payload, &len);
    assert (opcode_soon == 0x8 && (payload [0] << 8 | payload [1]) == 1008);
    assert (wsr_util_now_us () / 1000000 >= wall + 2);
    assert (wsr_metrics_get (metrics, WSR_M_TOKEN_EXPIRED) == before + 2);
    //  The one without an expiry is still open: it echoes a close
    assert (s_read_exact (never, payload, 1, 200) == 0);
    s_client_send (never, 0x8, true, "\x03\xe8", 2);
    assert (s_client_recv (never, payload, &len) == 0x8);
    assert ((payload [0] << 8 | payload [1]) == 1000);
    close (soon);
    close (later);
    close (never);

    //  Write delay (100 ms here): three deliveries in the window leave
    //  together, in one write, at its end
    int delayed = s_test_adopt (auth, ++id, 0, "", "delay", "", NULL, 0);
    s_expect_101 (delayed);
    s_wait_sub (fake, "user:delay");
    int64_t sent = zclock_mono ();
    s_publish (fake, "user:delay", "one");
    s_publish (fake, "user:delay", "two");
    s_publish (fake, "user:delay", "three");
    zmq_pollitem_t item = { NULL, delayed, ZMQ_POLLIN, 0 };
    assert (zmq_poll (&item, 1, 2000) == 1);
    int64_t waited = zclock_mono () - sent;
    assert (waited >= 90);
    //  One writev: when the socket turned readable, all of it was there
    ssize_t got = recv (delayed, payload, sizeof payload, MSG_DONTWAIT);
    assert (got == 5 + 5 + 7 && !memcmp (payload, "\x81\x03one\x81\x03two\x81\x05three", 17));
    close (delayed);

    wsr_session_destroy (&worker);
    zsock_destroy (&auth);

    //  wsrouter.v1 (a fourth worker, hello due within 300 ms)
    opts.write_delay_ms = 0;
    opts.hello_timeout_ms = 300;
    worker = wsr_session_new ("stest", 3, &opts, metrics, ipcount);
    assert (worker);
    auth = zsock_new_push ("inproc://wsr-adopt-stest-3");
    s_test_flags = WSR_ADOPT_V1;
    int v1 = s_test_adopt (auth, ++id, 0, "", "vu", "", NULL, 0);
    s_expect_101 (v1);
    s_wait_sub (fake, "user:vu");
    //  A publication before the hello is held (offset 5)
    zframe_t *key5 = zframe_new ("user:vu", 8);
    zframe_t *env5 = wsr_envelope_encode_pub ((const uint8_t *) "live-5", 6, 0, 0, 5, 4, "E");
    assert (zsock_send (fake->router, "fsff", fake->rid, WSR_PROTO_DELIVER, key5, env5) == 0);
    assert (s_read_exact (v1, payload, 1, 200) == 0);
    const char *v1_hello = "{\"type\":\"hello\",\"recover\":{\"user:vu\":"
                        "{\"epoch\":\"E\",\"offset\":3}}}";
    s_client_send_long (v1, 0x1, v1_hello, strlen (v1_hello));
    //  The read the worker asks for: after 3 in E
    int64_t end = zclock_mono () + 2000;
    while (zlistx_size (fake->hists) == 0 && zclock_mono () < end)
        s_fake_pump (fake, 50);
    zmsg_t *hist = (zmsg_t *) zlistx_detach (fake->hists, NULL);
    assert (hist && zmsg_size (hist) == 5);
    zframe_t *request = zmsg_pop (hist);
    zframe_t *hist_topic = zmsg_pop (hist);
    char *hist_epoch = zmsg_popstr (hist);
    zframe_t *hist_since = zmsg_pop (hist);
    assert (zframe_size (hist_topic) == 8 && !memcmp (zframe_data (hist_topic), "user:vu", 8));
    assert (streq (hist_epoch, "E") && wsr_msgs_get_u64 (zframe_data (hist_since)) == 3);
    wsr_history_entry_t entries [2] = {
        { 4, (const uint8_t *) "h-4", 3, 0 }, { 5, (const uint8_t *) "live-5", 6, 0 }
    };
    wsr_history_result_t result = { 0, "E", 5, true, entries, 2 };
    zframe_t *result_frame = wsr_envelope_encode_history (&result);
    assert (zsock_send (fake->router, "fsff", fake->rid, WSR_PROTO_HISTR, request,
                        result_frame) == 0);
    //  welcome, then 4 and 5 (5 once), then live 6
    assert (s_client_recv (v1, payload, &len) == 1);
    payload [len] = 0;
    assert (strstr ((char *) payload, "\"type\":\"welcome\"")
         && strstr ((char *) payload, "\"user:vu\":{\"epoch\":\"E\",\"offset\":5,"
                                      "\"recovered\":true}"));
    assert (s_client_recv (v1, payload, &len) == 1);
    payload [len] = 0;
    assert (strstr ((char *) payload, "\"offset\":4,\"data\":\"h-4\""));
    assert (s_client_recv (v1, payload, &len) == 1);
    payload [len] = 0;
    assert (strstr ((char *) payload, "\"offset\":5,\"data\":\"live-5\""));
    zframe_t *key6 = zframe_new ("user:vu", 8);
    zframe_t *env6 = wsr_envelope_encode_pub ((const uint8_t *) "live-6", 6, 0, 0, 6, 5, "E");
    assert (zsock_send (fake->router, "fsff", fake->rid, WSR_PROTO_DELIVER, key6, env6) == 0);
    assert (s_client_recv (v1, payload, &len) == 1);
    payload [len] = 0;
    assert (strstr ((char *) payload, "{\"type\":\"pub\",\"topic\":\"user:vu\","
                                      "\"epoch\":\"E\",\"offset\":6,\"data\":\"live-6\"}"));
    //  send goes up; garbage gets an error and the session stays
    const char *send = "{\"type\":\"send\",\"data\":\"up!\"}";
    s_client_send_long (v1, 0x1, send, strlen (send));
    env_frame = s_expect_up (fake);
    assert (wsr_envelope_decode (zframe_data (env_frame), zframe_size (env_frame), &env) == 0);
    assert (env.size == 3 && !memcmp (env.data, "up!", 3) && env.kind == WSR_KIND_TEXT);
    zframe_destroy (&env_frame);
    s_client_send (v1, 0x1, true, "{nope", 5);
    assert (s_client_recv (v1, payload, &len) == 1);
    payload [len] = 0;
    assert (strstr ((char *) payload, "\"type\":\"error\""));
    s_client_send (v1, 0x2, true, "\x01", 1);
    assert (s_client_recv (v1, payload, &len) == 1);
    payload [len] = 0;
    assert (strstr ((char *) payload, "JSON text"));
    //  One that never says hello is closed with 1008
    int mute = s_test_adopt (auth, ++id, 0, "", "mute", "", NULL, 0);
    s_expect_101 (mute);
    assert (s_client_recv (mute, payload, &len) == 0x8);
    assert ((payload [0] << 8 | payload [1]) == 1008 && !memcmp (payload + 2, "hello expected",
                                                               14));
    s_test_flags = 0;
    close (v1);
    close (mute);
    zframe_destroy (&request);
    zframe_destroy (&hist_topic);
    zframe_destroy (&hist_since);
    zframe_destroy (&key5);
    zframe_destroy (&env5);
    zframe_destroy (&key6);
    zframe_destroy (&env6);
    zframe_destroy (&result_frame);
    zstr_free (&hist_epoch);
    zmsg_destroy (&hist);
    wsr_session_destroy (&worker);
    zsock_destroy (&auth);

    //  A worker stopped with ADOPTs still queued closes their descriptors
    //  too: every peer reads EOF (none leaks)
    worker = wsr_session_new ("sdrop", 0, &opts, metrics, ipcount);
    assert (worker);
    auth = zsock_new_push ("inproc://wsr-adopt-sdrop-0");
    zsock_set_sndhwm (auth, 0);
    int peers [400];
    for (int i = 0; i < 400; i++)
        peers [i] = s_test_adopt (auth, 1000 + (uint64_t) i, 0, "", "u1", "", NULL, 0);
    wsr_session_destroy (&worker);
    zsock_destroy (&auth);
    for (int i = 0; i < 400; i++) {
        char sink [512];
        ssize_t n;
        struct pollfd pfd = { .fd = peers [i], .events = POLLIN };
        do
            n = poll (&pfd, 1, 2000) == 1? read (peers [i], sink, sizeof sink): -1;
        while (n > 0);
        assert (n == 0);                //  EOF, not a timeout
        close (peers [i]);
    }

    //  The fuzz entry point: a message and a close get the close echoed;
    //  garbage gets 1002 with its reason; a cut-off frame gets nothing
    uint8_t hello [] = { 0x81, 0x85, 0, 0, 0, 0, 'h', 'e', 'l', 'l', 'o',
                         0x88, 0x82, 0, 0, 0, 0, 0x03, 0xe8 };
    assert (wsr_session_fuzz (hello, sizeof hello) == 4);
    assert (wsr_session_fuzz ((const uint8_t *) "\x8f\x80\0\0\0\0", 6) == 4);
    assert (wsr_session_fuzz ((const uint8_t *) "\x89\xfe\0\x7e\0\0\0\0", 8)
            == 4 + strlen ("protocol error"));
    assert (wsr_session_fuzz (hello, 5) == 0);
    wsr_session_fuzz (NULL, 0);
    s_handover_test (fake, &opts, metrics, ipcount);
    zframe_destroy (&fake->rid);
    zlistx_destroy (&fake->subs);
    zlistx_destroy (&fake->ups);
    zlistx_destroy (&fake->hists);
    zsock_destroy (&fake->router);
    wsr_ipcount_destroy (&ipcount);
    wsr_metrics_destroy (&metrics);
}
