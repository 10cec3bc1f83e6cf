//  wsr_rcluster — Redis Cluster link for sharded Pub/Sub: slot routing on the owner's poll loop
//
//  Debian's hiredis 0.14 has no cluster support and its async API only knows
//  classic pub/sub (an `smessage` push would be taken for the reply of a
//  queued callback), so this class drives its own sockets: non-blocking TCP,
//  commands formatted with redisFormatCommandArgv, replies and pushes parsed
//  with a redisReader per connection. Like wsr_redis it has no thread: the
//  owner's zmq_poll watches the fds (wsr_rcluster_pollitems, _timeout,
//  _process).
//
//  The slot map (slot → master) comes from CLUSTER SHARDS (CLUSTER SLOTS on
//  servers without it), read from any node that answers: seeds in the order
//  given, then the nodes the map lists. It is read again every 10 s, every
//  250 ms while a wanted channel is not subscribed, and at once (at most
//  every 100 ms) after a MOVED, a server-pushed sunsubscribe or a lost
//  subscriber connection.
//
//  Per cluster node at most two connections: `sub` (SSUBSCRIBE, only on
//  masters that own a wanted channel's slot: one per shard) and `cmd`
//  (SPUBLISH and keyed commands, made on demand, also used to read the map).
//  Each connection keeps its commands in one queue, in order, until their
//  reply: the head of the queue is what the next reply answers; pushes
//  (smessage, a server's sunsubscribe) are told apart by their first element.
//  A written command unanswered for 3 s, a connect that takes 2 s, or a
//  subscriber's PING (every second) unanswered for 3 s resets the connection,
//  which is made again with backoff (100 ms doubling to 1 s).
//
//  The link remembers what is wanted, not what was sent. Each wanted channel
//  is assigned to at most one node's subscriber connection at a time; a
//  channel whose node refused it (MOVED), dropped it (the slot migrated:
//  Redis pushes sunsubscribe) or was lost (failover) goes back to the
//  `unplaced` list and is subscribed again at the slot's owner in the newest
//  map. When the map moves a slot, its channels are unsubscribed at the old
//  node before they are subscribed at the new one. So no channel is ever
//  subscribed on two connections, and a channel's messages arrive once.
//
//  Commands follow MOVED (the slot's owner is updated at once and the map
//  read again) and ASK (ASKING + the command at the given node), at most 3
//  redirections. Output per connection is bounded (WSR_RCLUSTER_MAX_OUTPUT
//  bytes queued or awaiting a reply): past it the connection is reset and
//  counted. Placement stops filling a subscriber connection at half that
//  bound and goes on when it drained, so resubscribing many channels never
//  trips it.
//
//  Connection and node objects are only freed at the end of
//  wsr_rcluster_process (nodes gone from the map), never while a reply of
//  theirs is being handled.

#include "wsr_classes.h"
#include <hiredis/hiredis.h>
#include <netdb.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <sys/uio.h>

#define S_SLOTS                 16384
#define S_MAX_SEEDS             16
#define S_MAX_HOST              256     //  bytes of a host name or address
#define S_MAX_CHANNEL_LEN       1024    //  bytes of a channel name we subscribe
#define S_BACKOFF_MIN_MS        100
#define S_BACKOFF_MAX_MS        1000
#define S_CONNECT_TIMEOUT_MS    2000    //  connect must complete by then
#define S_REPLY_TIMEOUT_MS      3000    //  a written command unanswered: connection dead
#define S_PING_EVERY_MS         1000    //  subscriber liveness
#define S_REFRESH_EVERY_MS      10000   //  slot map read again when all is well
#define S_REFRESH_DEGRADED_MS   250     //  ... while a wanted channel is not subscribed
#define S_REFRESH_GAP_MS        100     //  at least this between two reads
#define S_REPLACE_DELAY_MS      50      //  a channel a node refused or dropped waits this
#define S_PLACE_BUDGET          4096    //  channels placed per turn
#define S_MAX_REDIRECTS         3
#define S_READ_CHUNK            65536
#define S_READ_BUDGET           16      //  reads per connection per turn
#define S_WRITE_IOV             64      //  commands per writev
#define S_WRITE_BUDGET          16      //  writevs per connection per turn
#define S_REQ_OVERHEAD          96      //  bytes counted per queued command besides its text
#define S_MAX_TIMEOUT_MS        500
#define S_MAPPED_FAILURES       3       //  map reads failed in a row before "not mapped"

typedef enum { S_IDLE, S_DOWN, S_CONNECTING, S_UP } s_state_t;

typedef enum {
    S_REQ_AUTH,                     //  first command of every connection, if a password
    S_REQ_ASKING,                   //  before a command redirected by ASK
    S_REQ_PING,                     //  subscriber liveness
    S_REQ_SSUB,                     //  SSUBSCRIBE one channel
    S_REQ_SUNSUB,                   //  SUNSUBSCRIBE one channel
    S_REQ_CALL                      //  a command with a reply: map, publish, user command
} s_kind_t;

typedef struct _s_req_t s_req_t;
typedef struct _s_node_t s_node_t;

//  One command in a connection's queue, from queued until answered.
struct _s_req_t {
    s_req_t *next;                  //  next in the queue
    s_kind_t kind;                  //  what the reply means
    char *cmd;                      //  RESP text, from redisFormatCommandArgv
    size_t len;                     //  its length
    int64_t sent;                   //  mono ms it was fully written; 0 before
    char *channel;                  //  SSUB / SUNSUB: the channel (owned)
    int redirects;                  //  CALL: MOVED / ASK followed so far
    wsr_rcluster_reply_fn *callback;    //  CALL: NULL for a publish
    void *arg;                      //  for callback
};

//  One TCP connection to a node.
typedef struct {
    s_node_t *node;                 //  the node it belongs to
    bool subscriber;                //  the node's sub connection (else cmd)
    s_state_t state;                //  IDLE: no socket; DOWN: waiting for backoff
    int fd;                         //  socket or -1
    redisReader *reader;            //  reply parser, while there is a socket
    s_req_t *head;                  //  oldest unanswered command
    s_req_t *tail;                  //  newest
    s_req_t *wcur;                  //  first command not yet fully written
    size_t woff;                    //  bytes of wcur written
    size_t queued;                  //  text + S_REQ_OVERHEAD of every queued command
    int64_t started;                //  mono ms the connect began
    int64_t next_attempt;           //  mono ms the DOWN state ends
    int backoff;                    //  next backoff, ms
    int64_t last_ping;              //  mono ms of the last PING queued
    bool ping_out;                  //  a PING awaits its reply
    uint32_t generation;            //  bumped by every reset
} s_conn_t;

//  A cluster node, by address.
struct _s_node_t {
    struct _wsr_rcluster_t *owner;  //  the link
    char *addr;                     //  "host:port" ("[v6]:port"), the table key
    char *host;                     //  for connect
    int port;
    bool seed;                      //  given in the seeds: kept forever
    bool in_map;                    //  listed in the last map
    bool doomed;                    //  gone from the map: freed at the end of the turn
    bool no_shards;                 //  CLUSTER SHARDS refused: read CLUSTER SLOTS
    bool auth_logged;               //  AUTH refusal logged (once until accepted)
    size_t owned;                   //  slots it owns in the map
    zhashx_t *channels;             //  channels assigned to sub: name → s_chan_t
    s_conn_t sub;                   //  subscriber connection
    s_conn_t cmd;                   //  command connection
};

//  A wanted channel.
typedef struct {
    char *name;                     //  channel (owned; key of both tables)
    uint16_t slot;                  //  its slot
    s_node_t *node;                 //  node it is assigned to, or NULL
    bool confirmed;                 //  ssubscribe reply seen there
    void *handle;                   //  in self->unplaced, or NULL
} s_chan_t;

struct _wsr_rcluster_t {
    char *user;                     //  AUTH user or NULL
    char *password;                 //  AUTH password or NULL (never logged)
    s_node_t *nodes [WSR_RCLUSTER_MAX_NODES];   //  seeds first, in the order given
    int node_count;                 //  entries used in nodes
    zhashx_t *by_addr;              //  addr → s_node_t (not owned)
    s_node_t *slots [S_SLOTS];      //  slot → master, NULL if unknown
    s_node_t *next_slots [S_SLOTS]; //  map being parsed
    bool map_known;                 //  a map has been read
    size_t shards;                  //  masters owning slots
    zhashx_t *wanted;               //  channel → s_chan_t (owned)
    size_t confirmed;               //  wanted channels with confirmed set
    zlistx_t *unplaced;             //  s_chan_t waiting for a node
    int64_t place_after;            //  mono ms before which placement waits
    bool refreshing;                //  a map request is queued
    bool refresh_now;               //  read the map as soon as the gap allows
    s_node_t *refresh_node;         //  node asked last (NULL: pick anew)
    int refresh_rotor;              //  next candidate index in nodes
    int64_t refresh_last;           //  mono ms of the last request
    int refresh_failures;           //  failed reads since the last good one
    bool closing;                   //  in destroy: no new calls
    wsr_rcluster_message_fn *on_message;    //  delivery
    void *arg;                      //  for on_message
    wsr_rcluster_subscribed_fn *on_subscribed;  //  confirmations, or NULL
    void *subscribed_arg;           //  for on_subscribed
    char inbuf [S_READ_CHUNK];      //  read buffer
    uint64_t lost;                  //  established connections lost (taken)
    uint64_t resets;                //  connections reset by the output/input bounds (taken)
    uint64_t failed;                //  publishes lost after queueing, refused channels (taken)
    uint64_t moved;                 //  MOVED seen (selftest)
    uint64_t asked;                 //  ASK seen (selftest)
    uint64_t pushed;                //  server-pushed sunsubscribes (selftest)
};

static void s_conn_reset (s_conn_t *conn, bool lost);
static void s_placement (wsr_rcluster_t *self, int64_t now);

//  --------------------------------------------------------------------------
//  CRC16-XMODEM as in the Redis Cluster spec

static uint16_t
s_crc16 (const char *buf, size_t len)
{
    uint16_t crc = 0;
    for (size_t i = 0; i < len; i++) {
        crc ^= (uint16_t) ((uint8_t) buf [i] << 8);
        for (int bit = 0; bit < 8; bit++)
            crc = (crc & 0x8000)? (uint16_t) ((crc << 1) ^ 0x1021): (uint16_t) (crc << 1);
    }
    return crc;
}

//  --------------------------------------------------------------------------
//  Slot of a key: only the first {...} with something inside counts.
uint16_t
wsr_rcluster_slot (const char *key, size_t len)
{
    assert (key);
    const char *open = memchr (key, '{', len);
    if (open) {
        size_t rest = len - (size_t) (open - key) - 1;
        const char *close = memchr (open + 1, '}', rest);
        if (close && close > open + 1)
            return s_crc16 (open + 1, (size_t) (close - open - 1)) % S_SLOTS;
    }
    return s_crc16 (key, len) % S_SLOTS;
}

//  --------------------------------------------------------------------------
//  Requests

static s_req_t *
s_req_new (s_kind_t kind, int argc, const char **argv, const size_t *argvlen)
{
    s_req_t *req = (s_req_t *) zmalloc (sizeof (s_req_t));
    req->kind = kind;
    int len = redisFormatCommandArgv (&req->cmd, argc, argv, argvlen);
    assert (len > 0);               //  fails only out of memory
    req->len = (size_t) len;
    return req;
}

static void
s_req_destroy (s_req_t **req_p)
{
    s_req_t *req = *req_p;
    if (req) {
        redisFreeCommand (req->cmd);
        free (req->channel);
        free (req);
        *req_p = NULL;
    }
}

//  A CALL is over: hand the reply (or NULL) to its callback, or count a
//  publish that did not make it. Frees the request.
static void
s_req_finish (wsr_rcluster_t *self, s_req_t *req, const redisReply *reply)
{
    if (req->callback)
        req->callback (req->arg, reply);
    else
    if (!reply || reply->type == REDIS_REPLY_ERROR)
        self->failed++;
    s_req_destroy (&req);
}

//  --------------------------------------------------------------------------
//  Connection queue

//  Queue a command. Returns -1 (the request not queued, still the caller's)
//  if that would pass the output bound: the connection is then reset and
//  counted, failing what it had queued.
static int
s_conn_push (s_conn_t *conn, s_req_t *req)
{
    size_t cost = req->len + S_REQ_OVERHEAD;
    if (conn->queued + cost > WSR_RCLUSTER_MAX_OUTPUT) {
        zsys_warning ("rcluster: %s: %s output over %d bytes; resetting", conn->node->addr,
                      conn->subscriber? "subscriber": "command", WSR_RCLUSTER_MAX_OUTPUT);
        conn->node->owner->resets++;
        s_conn_reset (conn, false);
        return -1;
    }
    req->next = NULL;
    req->sent = 0;
    if (conn->tail)
        conn->tail->next = req;
    else
        conn->head = req;
    conn->tail = req;
    if (!conn->wcur) {
        conn->wcur = req;
        conn->woff = 0;
    }
    conn->queued += cost;
    return 0;
}

//  Take the head (answered) off the queue; NULL if there is none that was
//  written (a reply nobody asked for).
static s_req_t *
s_conn_pop (s_conn_t *conn)
{
    s_req_t *req = conn->head;
    if (!req || req == conn->wcur)
        return NULL;
    conn->head = req->next;
    if (!conn->head)
        conn->tail = NULL;
    conn->queued -= req->len + S_REQ_OVERHEAD;
    req->next = NULL;
    return req;
}

//  --------------------------------------------------------------------------
//  Channels

static void
s_chan_destroy (void **item_p)
{
    s_chan_t *chan = (s_chan_t *) *item_p;
    if (chan) {
        free (chan->name);
        free (chan);
        *item_p = NULL;
    }
}

static void
s_unplaced_add (wsr_rcluster_t *self, s_chan_t *chan)
{
    if (!chan->handle)
        chan->handle = zlistx_add_end (self->unplaced, chan);
}

static void
s_unconfirm (wsr_rcluster_t *self, s_chan_t *chan)
{
    if (chan->confirmed) {
        chan->confirmed = false;
        self->confirmed--;
    }
}

//  Queue a one-channel (S)SUBSCRIBE / SUNSUBSCRIBE on a subscriber connection.
static int
s_sub_command (s_conn_t *conn, s_kind_t kind, const char *channel)
{
    const char *argv [2] = { kind == S_REQ_SSUB? "SSUBSCRIBE": "SUNSUBSCRIBE", channel };
    s_req_t *req = s_req_new (kind, 2, argv, NULL);
    req->channel = strdup (channel);
    if (s_conn_push (conn, req)) {
        s_req_destroy (&req);
        return -1;
    }
    return 0;
}

//  Assign a channel to a node's subscriber connection and queue its
//  SSUBSCRIBE (sent when the connection is up).
static void
s_assign (wsr_rcluster_t *self, s_chan_t *chan, s_node_t *node)
{
    (void) self;
    assert (!chan->node && !chan->handle);
    chan->node = node;
    zhashx_insert (node->channels, chan->name, chan);
    //  On overflow the reset unassigns every channel of the node, this one too
    s_sub_command (&node->sub, S_REQ_SSUB, chan->name);
}

//  Take a channel off its node. sunsubscribe: the node may still hold the
//  subscription (we move it or drop it), so queue SUNSUBSCRIBE behind any
//  SSUBSCRIBE still on the way.
static void
s_unassign (wsr_rcluster_t *self, s_chan_t *chan, bool sunsubscribe)
{
    s_node_t *node = chan->node;
    if (!node)
        return;
    zhashx_delete (node->channels, chan->name);
    chan->node = NULL;
    s_unconfirm (self, chan);
    if (sunsubscribe && (node->sub.state == S_UP || node->sub.state == S_CONNECTING
                     ||  node->sub.head))
        s_sub_command (&node->sub, S_REQ_SUNSUB, chan->name);
}

//  Place a channel at its slot's owner; false if there is none yet, or its
//  subscriber connection is half full (placement goes on when it drained).
static bool
s_place (wsr_rcluster_t *self, s_chan_t *chan)
{
    s_node_t *node = self->slots [chan->slot];
    if (!node || node->doomed || node->sub.queued > WSR_RCLUSTER_MAX_OUTPUT / 2)
        return false;
    s_assign (self, chan, node);
    return true;
}

//  --------------------------------------------------------------------------
//  Connections

static void
s_conn_init (s_conn_t *conn, s_node_t *node, bool subscriber)
{
    conn->node = node;
    conn->subscriber = subscriber;
    conn->state = S_IDLE;
    conn->fd = -1;
    conn->backoff = S_BACKOFF_MIN_MS;
}

//  Drop the socket and everything queued: calls fail (callbacks get NULL),
//  a subscriber's channels go back to placement and the map is read again.
//  The connection then waits out its backoff (DOWN), so a dead node is not
//  hammered. lost: count it if it was established.
static void
s_conn_reset (s_conn_t *conn, bool lost)
{
    s_node_t *node = conn->node;
    wsr_rcluster_t *self = node->owner;
    int64_t now = wsr_util_mono_ms ();
    if (lost && conn->state == S_UP)
        self->lost++;
    if (conn->fd >= 0) {
        close (conn->fd);
        conn->fd = -1;
    }
    if (conn->reader) {
        redisReaderFree (conn->reader);
        conn->reader = NULL;
    }
    conn->generation++;
    conn->state = S_DOWN;
    conn->next_attempt = now + conn->backoff;
    conn->backoff = conn->backoff * 2 > S_BACKOFF_MAX_MS? S_BACKOFF_MAX_MS: conn->backoff * 2;
    conn->ping_out = false;
    //  Detach the queue first: callbacks may queue new commands elsewhere
    s_req_t *req = conn->head;
    conn->head = conn->tail = conn->wcur = NULL;
    conn->woff = 0;
    conn->queued = 0;
    if (conn->subscriber && zhashx_size (node->channels)) {
        zhashx_t *channels = node->channels;
        for (s_chan_t *chan = (s_chan_t *) zhashx_first (channels); chan;
             chan = (s_chan_t *) zhashx_next (channels)) {
            chan->node = NULL;
            s_unconfirm (self, chan);
            s_unplaced_add (self, chan);
        }
        zhashx_purge (channels);
        self->refresh_now = true;
        self->place_after = now + S_REPLACE_DELAY_MS;
    }
    while (req) {
        s_req_t *next = req->next;
        if (req->kind == S_REQ_CALL)
            s_req_finish (self, req, NULL);
        else
            s_req_destroy (&req);
        req = next;
    }
}

//  Close a connection nobody needs (no backoff, nothing counted).
static void
s_conn_close (s_conn_t *conn)
{
    s_conn_reset (conn, false);
    conn->state = S_IDLE;
    conn->backoff = S_BACKOFF_MIN_MS;
}

static void
s_conn_up (s_conn_t *conn)
{
    conn->state = S_UP;
    conn->backoff = S_BACKOFF_MIN_MS;
    conn->last_ping = wsr_util_mono_ms ();
    wsr_debug ("rcluster: %s: %s connection up", conn->node->addr,
               conn->subscriber? "subscriber": "command");
}

//  Start a non-blocking connect; AUTH goes first in the queue.
static void
s_connect (s_conn_t *conn)
{
    s_node_t *node = conn->node;
    wsr_rcluster_t *self = node->owner;
    assert (conn->fd < 0);
    struct addrinfo hints = { .ai_socktype = SOCK_STREAM, .ai_family = AF_UNSPEC };
    struct addrinfo *ai = NULL;
    char port [16];
    snprintf (port, sizeof port, "%d", node->port);
    int rc = getaddrinfo (node->host, port, &hints, &ai);
    if (rc != 0 || !ai) {
        zsys_warning ("rcluster: %s: cannot resolve: %s", node->addr, gai_strerror (rc));
        s_conn_reset (conn, false);
        return;
    }
    int fd = socket (ai->ai_family, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
    if (fd < 0) {
        zsys_warning ("rcluster: %s: socket: %s", node->addr, strerror (errno));
        freeaddrinfo (ai);
        s_conn_reset (conn, false);
        return;
    }
    int one = 1;
    if (setsockopt (fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one))
        wsr_debug ("rcluster: TCP_NODELAY: %s", strerror (errno));
    do
        rc = connect (fd, ai->ai_addr, ai->ai_addrlen);
    while (rc == -1 && errno == EINTR);
    int error = errno;
    freeaddrinfo (ai);
    conn->fd = fd;
    conn->reader = redisReaderCreate ();
    assert (conn->reader);
    conn->started = wsr_util_mono_ms ();
    if (rc == -1 && error != EINPROGRESS) {
        wsr_debug ("rcluster: %s: connect: %s", node->addr, strerror (error));
        s_conn_reset (conn, false);
        return;
    }
    if (self->password) {
        const char *argv [3] = { "AUTH", self->user? self->user: self->password,
                                 self->password };
        s_req_t *req = s_req_new (S_REQ_AUTH, self->user? 3: 2, argv, NULL);
        //  Goes before everything queued while the connection was down
        assert (conn->wcur == conn->head && conn->woff == 0);
        req->next = conn->head;
        conn->head = req;
        if (!conn->tail)
            conn->tail = req;
        conn->wcur = req;
        conn->queued += req->len + S_REQ_OVERHEAD;
    }
    conn->state = S_CONNECTING;
    if (rc == 0)
        s_conn_up (conn);
}

//  Write what is queued until the socket is full or the budget is spent.
static void
s_conn_write (s_conn_t *conn)
{
    for (int round = 0; round < S_WRITE_BUDGET && conn->wcur; round++) {
        struct iovec iov [S_WRITE_IOV];
        int count = 0;
        size_t off = conn->woff;
        for (s_req_t *req = conn->wcur; req && count < S_WRITE_IOV; req = req->next) {
            iov [count].iov_base = req->cmd + off;
            iov [count].iov_len = req->len - off;
            count++;
            off = 0;
        }
        ssize_t n = writev (conn->fd, iov, count);
        if (n < 0) {
            if (errno == EINTR)
                continue;
            if (errno == EAGAIN || errno == EWOULDBLOCK)
                return;
            zsys_warning ("rcluster: %s: write: %s", conn->node->addr, strerror (errno));
            s_conn_reset (conn, true);
            return;
        }
        int64_t now = wsr_util_mono_ms ();
        size_t left = (size_t) n;
        while (conn->wcur && left >= conn->wcur->len - conn->woff) {
            left -= conn->wcur->len - conn->woff;
            conn->wcur->sent = now;
            conn->wcur = conn->wcur->next;
            conn->woff = 0;
        }
        conn->woff += left;
    }
}

//  --------------------------------------------------------------------------
//  Nodes

static s_node_t *
s_node_lookup (wsr_rcluster_t *self, const char *host, int port)
{
    char addr [S_MAX_HOST + 16];
    snprintf (addr, sizeof addr, strchr (host, ':')? "[%s]:%d": "%s:%d", host, port);
    return (s_node_t *) zhashx_lookup (self->by_addr, addr);
}

//  The node at host:port, made if new. NULL if the table is full.
static s_node_t *
s_node_get (wsr_rcluster_t *self, const char *host, int port)
{
    if (!*host || strlen (host) >= S_MAX_HOST || port <= 0 || port > 65535)
        return NULL;
    s_node_t *node = s_node_lookup (self, host, port);
    if (node) {
        node->doomed = false;
        return node;
    }
    if (self->node_count == WSR_RCLUSTER_MAX_NODES) {
        zsys_warning ("rcluster: more than %d nodes; %s:%d ignored", WSR_RCLUSTER_MAX_NODES,
                      host, port);
        return NULL;
    }
    node = (s_node_t *) zmalloc (sizeof (s_node_t));
    node->owner = self;
    node->host = strdup (host);
    node->port = port;
    char addr [S_MAX_HOST + 16];
    snprintf (addr, sizeof addr, strchr (host, ':')? "[%s]:%d": "%s:%d", host, port);
    node->addr = strdup (addr);
    node->channels = zhashx_new ();
    zhashx_set_key_duplicator (node->channels, NULL);
    zhashx_set_key_destructor (node->channels, NULL);
    s_conn_init (&node->sub, node, true);
    s_conn_init (&node->cmd, node, false);
    zhashx_insert (self->by_addr, node->addr, node);
    self->nodes [self->node_count++] = node;
    return node;
}

//  "host:port" as in MOVED / ASK (IPv6 unbracketed or bracketed).
static s_node_t *
s_node_at (wsr_rcluster_t *self, const char *addr, size_t len)
{
    char text [S_MAX_HOST + 16];
    if (len == 0 || len >= sizeof text)
        return NULL;
    memcpy (text, addr, len);
    text [len] = 0;
    char *colon = strrchr (text, ':');
    if (!colon)
        return NULL;
    *colon = 0;
    int port = atoi (colon + 1);
    char *host = text;
    if (*host == '[') {
        host++;
        char *end = strchr (host, ']');
        if (end)
            *end = 0;
    }
    return s_node_get (self, host, port);
}

static void
s_node_destroy (s_node_t **node_p)
{
    s_node_t *node = *node_p;
    if (node) {
        zhashx_destroy (&node->channels);
        free (node->addr);
        free (node->host);
        free (node);
        *node_p = NULL;
    }
}

//  Parse "-MOVED 3999 127.0.0.1:6381" / "-ASK ...": slot and target node.
static s_node_t *
s_redirect (wsr_rcluster_t *self, const redisReply *reply, bool *ask, int *slot)
{
    if (reply->type != REDIS_REPLY_ERROR)
        return NULL;
    const char *text = reply->str;
    if (strncmp (text, "MOVED ", 6) == 0)
        *ask = false;
    else
    if (strncmp (text, "ASK ", 4) == 0)
        *ask = true;
    else
        return NULL;
    const char *p = strchr (text, ' ') + 1;
    char *end;
    long value = strtol (p, &end, 10);
    if (end == p || *end != ' ' || value < 0 || value >= S_SLOTS)
        return NULL;
    *slot = (int) value;
    const char *addr = end + 1;
    return s_node_at (self, addr, strlen (addr));
}

//  --------------------------------------------------------------------------
//  Calls (command connection)

//  Queue a CALL on a node's command connection; -1 if it is backing off or
//  full (the request stays the caller's).
static int
s_call (s_node_t *node, s_req_t *req)
{
    if (!node || node->doomed || node->cmd.state == S_DOWN || node->owner->closing)
        return -1;
    return s_conn_push (&node->cmd, req);
}

//  A CALL's reply: follow MOVED / ASK, else finish.
static void
s_call_reply (wsr_rcluster_t *self, s_req_t *req, const redisReply *reply)
{
    bool ask = false;
    int slot = 0;
    s_node_t *target = req->redirects < S_MAX_REDIRECTS? s_redirect (self, reply, &ask, &slot)
                                                       : NULL;
    if (target) {
        req->redirects++;
        if (ask) {
            self->asked++;
            const char *argv [1] = { "ASKING" };
            s_req_t *asking = s_req_new (S_REQ_ASKING, 1, argv, NULL);
            if (s_call (target, asking) == 0) {
                if (s_call (target, req) == 0)
                    return;
            }
            else
                s_req_destroy (&asking);
        }
        else {
            self->moved++;
            self->slots [slot] = target;
            self->refresh_now = true;
            if (s_call (target, req) == 0)
                return;
        }
        s_req_finish (self, req, NULL);
        return;
    }
    s_req_finish (self, req, reply);
}

//  --------------------------------------------------------------------------
//  Slot map

static long
s_int (const redisReply *r)
{
    if (r->type == REDIS_REPLY_INTEGER)
        return (long) r->integer;
    if (r->type == REDIS_REPLY_STRING && r->len > 0 && r->len < 20)
        return atol (r->str);
    return -1;
}

static bool
s_is (const redisReply *r, const char *text)
{
    return r->type == REDIS_REPLY_STRING && streq (r->str, text);
}

//  A flat [key, value, ...] array: the value of key, or NULL.
static const redisReply *
s_field (const redisReply *r, const char *key)
{
    if (r->type != REDIS_REPLY_ARRAY)
        return NULL;
    for (size_t i = 0; i + 1 < r->elements; i += 2)
        if (s_is (r->element [i], key))
            return r->element [i + 1];
    return NULL;
}

static void
s_map_range (wsr_rcluster_t *self, s_node_t *node, long from, long to, size_t *covered)
{
    if (from < 0 || to >= S_SLOTS || from > to)
        return;
    for (long slot = from; slot <= to; slot++) {
        if (!self->next_slots [slot])
            (*covered)++;
        self->next_slots [slot] = node;
    }
}

//  CLUSTER SHARDS: [[ "slots", [a, b, ...], "nodes", [[ "id", ..., "port", P,
//  "ip", I, "endpoint", E, "role", R, ...], ...]], ...]
static void
s_parse_shards (wsr_rcluster_t *self, const redisReply *reply, size_t *covered)
{
    for (size_t i = 0; i < reply->elements; i++) {
        const redisReply *slots = s_field (reply->element [i], "slots");
        const redisReply *nodes = s_field (reply->element [i], "nodes");
        if (!slots || !nodes || slots->type != REDIS_REPLY_ARRAY
        ||  nodes->type != REDIS_REPLY_ARRAY)
            continue;
        s_node_t *master = NULL;
        for (size_t j = 0; j < nodes->elements; j++) {
            const redisReply *n = nodes->element [j];
            const redisReply *endpoint = s_field (n, "endpoint");
            const redisReply *ip = s_field (n, "ip");
            const redisReply *port = s_field (n, "port");
            const redisReply *role = s_field (n, "role");
            const char *host = NULL;
            if (endpoint && endpoint->type == REDIS_REPLY_STRING && endpoint->len
            &&  !streq (endpoint->str, "?"))
                host = endpoint->str;
            else
            if (ip && ip->type == REDIS_REPLY_STRING && ip->len)
                host = ip->str;
            if (!host || !port || !role)
                continue;
            s_node_t *node = s_node_get (self, host, (int) s_int (port));
            if (!node)
                continue;
            node->in_map = true;
            if (s_is (role, "master"))
                master = node;
        }
        if (master)
            for (size_t k = 0; k + 1 < slots->elements; k += 2)
                s_map_range (self, master, s_int (slots->element [k]),
                             s_int (slots->element [k + 1]), covered);
    }
}

//  CLUSTER SLOTS: [[from, to, [ip, port, id, ...], [replica ...], ...], ...];
//  an empty ip means the node we asked.
static void
s_parse_slots (wsr_rcluster_t *self, const redisReply *reply, s_node_t *asked,
               size_t *covered)
{
    for (size_t i = 0; i < reply->elements; i++) {
        const redisReply *r = reply->element [i];
        if (r->type != REDIS_REPLY_ARRAY || r->elements < 3)
            continue;
        s_node_t *master = NULL;
        for (size_t j = 2; j < r->elements; j++) {
            const redisReply *n = r->element [j];
            if (n->type != REDIS_REPLY_ARRAY || n->elements < 2)
                continue;
            const redisReply *ip = n->element [0];
            const char *host = ip->type == REDIS_REPLY_STRING && ip->len && !streq (ip->str, "?")
                             ? ip->str: asked->host;
            s_node_t *node = s_node_get (self, host, (int) s_int (n->element [1]));
            if (!node)
                continue;
            node->in_map = true;
            if (j == 2)
                master = node;
        }
        if (master)
            s_map_range (self, master, s_int (r->element [0]), s_int (r->element [1]), covered);
    }
}

//  A map was read: take it, move channels whose slot changed hands, and
//  doom nodes that left the cluster.
static void
s_map_apply (wsr_rcluster_t *self)
{
    bool changed = memcmp (self->slots, self->next_slots, sizeof self->slots) != 0;
    memcpy (self->slots, self->next_slots, sizeof self->slots);
    for (int i = 0; i < self->node_count; i++)
        self->nodes [i]->owned = 0;
    for (int slot = 0; slot < S_SLOTS; slot++)
        if (self->slots [slot])
            self->slots [slot]->owned++;
    self->shards = 0;
    for (int i = 0; i < self->node_count; i++) {
        s_node_t *node = self->nodes [i];
        if (node->owned)
            self->shards++;
        if (!node->in_map && !node->seed)
            node->doomed = true;
    }
    if (!self->map_known || changed) {
        if (self->map_known)
            zsys_info ("rcluster: slot map changed: %zu shards", self->shards);
        //  Channels whose slot moved: unsubscribe there, subscribe at the owner
        for (s_chan_t *chan = (s_chan_t *) zhashx_first (self->wanted); chan;
             chan = (s_chan_t *) zhashx_next (self->wanted))
            if (chan->node && chan->node != self->slots [chan->slot]) {
                s_unassign (self, chan, true);
                s_unplaced_add (self, chan);
            }
        self->place_after = 0;
    }
    self->map_known = true;
}

//  The reply to CLUSTER SHARDS / SLOTS (or NULL).
static void
s_on_map (void *arg, const redisReply *reply)
{
    wsr_rcluster_t *self = (wsr_rcluster_t *) arg;
    s_node_t *asked = self->refresh_node;
    self->refreshing = false;
    if (reply && reply->type == REDIS_REPLY_ERROR && asked && !asked->no_shards
    &&  strstr (reply->str, "unknown")) {
        asked->no_shards = true;                //  Redis < 7: CLUSTER SLOTS
        self->refresh_now = true;
        self->refresh_last = 0;
        return;
    }
    size_t covered = 0;
    if (reply && reply->type == REDIS_REPLY_ARRAY && asked) {
        memset (self->next_slots, 0, sizeof self->next_slots);
        for (int i = 0; i < self->node_count; i++)
            self->nodes [i]->in_map = false;
        if (asked->no_shards)
            s_parse_slots (self, reply, asked, &covered);
        else
            s_parse_shards (self, reply, &covered);
    }
    if (covered == 0) {
        //  Down, refused, or not part of a cluster: ask the next node
        if (self->refresh_failures++ == 0)
            zsys_warning ("rcluster: cannot read the slot map from %s%s%s",
                          asked? asked->addr: "?", reply && reply->type == REDIS_REPLY_ERROR
                          ? ": ": "", reply && reply->type == REDIS_REPLY_ERROR
                          ? reply->str: "");
        self->refresh_node = NULL;
        self->refresh_rotor++;
        self->refresh_now = true;
        for (int i = 0; i < self->node_count; i++)
            self->nodes [i]->in_map = self->nodes [i]->owned > 0;
        return;
    }
    if (self->refresh_failures || !self->map_known)
        zsys_info ("rcluster: slot map from %s: %zu of %d slots", asked->addr, covered,
                   S_SLOTS);
    self->refresh_failures = 0;
    s_map_apply (self);
}

//  Ask a node for the map: the one that answered last, else the next that
//  is not backing off (seeds first, in their order).
static void
s_refresh (wsr_rcluster_t *self, int64_t now)
{
    s_node_t *node = self->refresh_node;
    if (!node || node->doomed || node->cmd.state == S_DOWN) {
        node = NULL;
        for (int i = 0; i < self->node_count && !node; i++) {
            s_node_t *candidate = self->nodes [(self->refresh_rotor + i) % self->node_count];
            if (!candidate->doomed && candidate->cmd.state != S_DOWN) {
                node = candidate;
                self->refresh_rotor = (self->refresh_rotor + i) % self->node_count;
            }
        }
    }
    self->refresh_last = now;
    if (!node)
        return;                         //  all backing off: try again after the gap
    const char *argv [2] = { "CLUSTER", node->no_shards? "SLOTS": "SHARDS" };
    s_req_t *req = s_req_new (S_REQ_CALL, 2, argv, NULL);
    req->redirects = S_MAX_REDIRECTS;   //  not a keyed command
    req->callback = s_on_map;
    req->arg = self;
    if (s_call (node, req)) {
        s_req_destroy (&req);
        self->refresh_rotor++;
        return;
    }
    self->refresh_node = node;
    self->refreshing = true;
    self->refresh_now = false;
}

//  --------------------------------------------------------------------------
//  Replies

//  smessage / ssubscribe / sunsubscribe / pong on a subscriber connection.
static void
s_sub_array (s_conn_t *conn, const redisReply *reply)
{
    s_node_t *node = conn->node;
    wsr_rcluster_t *self = node->owner;
    redisReply **e = reply->element;
    if (reply->elements < 2 || e [0]->type != REDIS_REPLY_STRING)
        return;
    const char *kind = e [0]->str;
    if (streq (kind, "pong")) {
        s_req_t *req = conn->head && conn->head->kind == S_REQ_PING? s_conn_pop (conn): NULL;
        if (req) {
            conn->ping_out = false;
            s_req_destroy (&req);
        }
        return;
    }
    if (e [1]->type != REDIS_REPLY_STRING)
        return;
    const char *channel = e [1]->str;
    if (streq (kind, "smessage")) {
        if (reply->elements == 3 && e [2]->type == REDIS_REPLY_STRING
        &&  zhashx_lookup (self->wanted, channel))
            self->on_message (self->arg, NULL, channel, e [1]->len,
                              (const uint8_t *) e [2]->str, e [2]->len);
        return;
    }
    s_chan_t *chan = (s_chan_t *) zhashx_lookup (self->wanted, channel);
    if (streq (kind, "ssubscribe")) {
        s_req_t *req = conn->head && conn->head->kind == S_REQ_SSUB
                     && streq (conn->head->channel, channel)? s_conn_pop (conn): NULL;
        if (!req) {
            zsys_warning ("rcluster: %s: unexpected ssubscribe reply; resetting", node->addr);
            s_conn_reset (conn, true);
            return;
        }
        s_req_destroy (&req);
        if (chan && chan->node == node && !chan->confirmed) {
            chan->confirmed = true;
            self->confirmed++;
            if (self->on_subscribed)
                self->on_subscribed (self->subscribed_arg, chan->name, strlen (chan->name));
        }
    }
    else
    if (streq (kind, "sunsubscribe")) {
        s_req_t *req = conn->head && conn->head->kind == S_REQ_SUNSUB
                     && streq (conn->head->channel, channel)? s_conn_pop (conn): NULL;
        if (req)
            s_req_destroy (&req);       //  the answer to ours
        else
        if (chan && chan->node == node) {
            //  Pushed by the server: the slot left this node (reshard, failover)
            self->pushed++;
            wsr_debug ("rcluster: %s dropped a channel of slot %u", node->addr, chan->slot);
            s_unassign (self, chan, false);
            s_unplaced_add (self, chan);
            self->refresh_now = true;
            self->place_after = wsr_util_mono_ms () + S_REPLACE_DELAY_MS;
        }
    }
}

//  An error reply on a subscriber connection answers the head command.
static void
s_sub_error (s_conn_t *conn, const redisReply *reply)
{
    s_node_t *node = conn->node;
    wsr_rcluster_t *self = node->owner;
    s_req_t *req = s_conn_pop (conn);
    if (!req) {
        zsys_warning ("rcluster: %s: unexpected error reply; resetting", node->addr);
        s_conn_reset (conn, true);
        return;
    }
    if (req->kind == S_REQ_SSUB) {
        s_chan_t *chan = (s_chan_t *) zhashx_lookup (self->wanted, req->channel);
        if (chan && chan->node == node) {
            //  Not subscribed there: no SUNSUBSCRIBE needed
            s_unassign (self, chan, false);
            s_unplaced_add (self, chan);
        }
        bool ask;
        int slot;
        s_node_t *target = s_redirect (self, reply, &ask, &slot);
        if (target && !ask) {
            self->moved++;
            self->slots [slot] = target;
        }
        else
            wsr_debug ("rcluster: %s refused SSUBSCRIBE: %s", node->addr, reply->str);
        self->refresh_now = true;
        self->place_after = wsr_util_mono_ms () + S_REPLACE_DELAY_MS;
    }
    else
    if (req->kind == S_REQ_PING)
        conn->ping_out = false;
    s_req_destroy (&req);
}

//  AUTH's answer (either connection). Returns false if the connection was reset.
static bool
s_auth_reply (s_conn_t *conn, s_req_t *req, const redisReply *reply)
{
    s_node_t *node = conn->node;
    bool refused = reply->type == REDIS_REPLY_ERROR;
    s_req_destroy (&req);
    if (!refused) {
        node->auth_logged = false;
        return true;
    }
    if (!node->auth_logged) {
        node->auth_logged = true;
        //  The server's message never contains the password
        zsys_error ("rcluster: %s: AUTH refused: %s", node->addr, reply->str);
    }
    s_conn_reset (conn, false);
    return false;
}

static void
s_dispatch (s_conn_t *conn, const redisReply *reply)
{
    wsr_rcluster_t *self = conn->node->owner;
    if (conn->head && conn->head->kind == S_REQ_AUTH && conn->head != conn->wcur) {
        s_auth_reply (conn, s_conn_pop (conn), reply);
        return;
    }
    if (conn->subscriber) {
        if (reply->type == REDIS_REPLY_ARRAY)
            s_sub_array (conn, reply);
        else
        if (reply->type == REDIS_REPLY_ERROR)
            s_sub_error (conn, reply);
        else {
            //  +PONG before the connection entered subscribe mode
            s_req_t *req = conn->head && conn->head->kind == S_REQ_PING? s_conn_pop (conn)
                                                                       : NULL;
            if (req)
                conn->ping_out = false;
            s_req_destroy (&req);
        }
        return;
    }
    s_req_t *req = s_conn_pop (conn);
    if (!req) {
        zsys_warning ("rcluster: %s: reply nobody asked for; resetting", conn->node->addr);
        s_conn_reset (conn, true);
        return;
    }
    if (req->kind == S_REQ_CALL)
        s_call_reply (self, req, reply);
    else
        s_req_destroy (&req);           //  ASKING's +OK
}

//  Read until the socket is empty or the budget is spent; dispatch replies.
static void
s_conn_read (s_conn_t *conn)
{
    wsr_rcluster_t *self = conn->node->owner;
    uint32_t generation = conn->generation;
    for (int round = 0; round < S_READ_BUDGET; round++) {
        ssize_t n = read (conn->fd, self->inbuf, sizeof self->inbuf);
        if (n == 0 || (n < 0 && errno != EINTR && errno != EAGAIN && errno != EWOULDBLOCK)) {
            zsys_warning ("rcluster: %s: %s connection lost%s%s", conn->node->addr,
                          conn->subscriber? "subscriber": "command", n? ": ": "",
                          n? strerror (errno): "");
            s_conn_reset (conn, true);
            return;
        }
        if (n < 0) {
            if (errno == EINTR)
                continue;
            return;
        }
        if (redisReaderFeed (conn->reader, self->inbuf, (size_t) n) != REDIS_OK) {
            s_conn_reset (conn, true);
            return;
        }
        while (conn->generation == generation) {
            void *reply = NULL;
            if (redisReaderGetReply (conn->reader, &reply) != REDIS_OK) {
                zsys_warning ("rcluster: %s: protocol error: %s", conn->node->addr,
                              conn->reader->errstr);
                s_conn_reset (conn, true);
                return;
            }
            if (!reply)
                break;
            s_dispatch (conn, (redisReply *) reply);
            freeReplyObject (reply);
        }
        if (conn->generation != generation)
            return;
        if (conn->reader->len - conn->reader->pos > WSR_RCLUSTER_MAX_INPUT) {
            zsys_warning ("rcluster: %s: reply over %d bytes; resetting", conn->node->addr,
                          WSR_RCLUSTER_MAX_INPUT);
            self->resets++;
            s_conn_reset (conn, true);
            return;
        }
        if ((size_t) n < sizeof self->inbuf)
            return;                     //  drained
    }
}

//  --------------------------------------------------------------------------
//  Parse [user:pass@ | :pass@ | pass@]host:port[,host:port...]
static int
s_parse_seeds (wsr_rcluster_t *self, const char *seeds)
{
    const char *at = strrchr (seeds, '@');
    const char *list = seeds;
    if (at) {
        const char *colon = memchr (seeds, ':', (size_t) (at - seeds));
        if (colon && colon > seeds)
            self->user = strndup (seeds, (size_t) (colon - seeds));
        const char *pw = colon? colon + 1: seeds;
        if (at > pw)
            self->password = strndup (pw, (size_t) (at - pw));
        list = at + 1;
    }
    if (!*list)
        return -1;
    char *copy = strdup (list);
    int count = 0;
    int rc = 0;
    char *save = NULL;
    for (char *item = strtok_r (copy, ",", &save); item && rc == 0;
         item = strtok_r (NULL, ",", &save)) {
        char *host = item;
        int port = 6379;
        char *colon = strrchr (item, ':');
        if (*item == '[') {                 //  [::1]:7000
            char *end = strchr (item, ']');
            if (!end || (end [1] && end [1] != ':')) {
                rc = -1;
                break;
            }
            *end = 0;
            host = item + 1;
            colon = end [1] == ':'? end + 1: NULL;
        }
        else
        if (colon && strchr (item, ':') != colon)
            colon = NULL;                   //  bare IPv6 without port
        if (colon) {
            *colon = 0;
            char *end;
            long value = strtol (colon + 1, &end, 10);
            if (*end || value <= 0 || value > 65535) {
                rc = -1;
                break;
            }
            port = (int) value;
        }
        if (!*host || ++count > S_MAX_SEEDS) {
            rc = -1;
            break;
        }
        s_node_t *node = s_node_get (self, host, port);
        if (!node)
            rc = -1;
        else
            node->seed = true;
    }
    free (copy);
    return rc == 0 && count > 0? 0: -1;
}

//  --------------------------------------------------------------------------
//  Create a link.
wsr_rcluster_t *
wsr_rcluster_new (const char *seeds, wsr_rcluster_message_fn *on_message, void *arg)
{
    assert (seeds && on_message);
    wsr_rcluster_t *self = (wsr_rcluster_t *) zmalloc (sizeof (wsr_rcluster_t));
    self->on_message = on_message;
    self->arg = arg;
    self->by_addr = zhashx_new ();
    self->wanted = zhashx_new ();
    zhashx_set_key_duplicator (self->wanted, NULL);
    zhashx_set_key_destructor (self->wanted, NULL);
    zhashx_set_destructor (self->wanted, s_chan_destroy);
    self->unplaced = zlistx_new ();
    self->refresh_now = true;
    if (s_parse_seeds (self, seeds))
        wsr_rcluster_destroy (&self);
    return self;
}

//  --------------------------------------------------------------------------
//  Destroy the link.
void
wsr_rcluster_destroy (wsr_rcluster_t **self_p)
{
    assert (self_p);
    if (*self_p) {
        wsr_rcluster_t *self = *self_p;
        //  Connections first (calls fail), then the tables
        self->closing = true;
        for (int i = 0; i < self->node_count; i++) {
            s_conn_close (&self->nodes [i]->sub);
            s_conn_close (&self->nodes [i]->cmd);
        }
        for (int i = 0; i < self->node_count; i++)
            s_node_destroy (&self->nodes [i]);
        zlistx_destroy (&self->unplaced);
        zhashx_destroy (&self->wanted);
        zhashx_destroy (&self->by_addr);
        free (self->user);
        free (self->password);
        free (self);
        *self_p = NULL;
    }
}

//  --------------------------------------------------------------------------
//  Want a channel.
int
wsr_rcluster_subscribe (wsr_rcluster_t *self, const char *channel)
{
    assert (self && channel);
    if (zhashx_lookup (self->wanted, channel))
        return 0;
    size_t len = strlen (channel);
    if (len == 0 || len > S_MAX_CHANNEL_LEN
    ||  zhashx_size (self->wanted) >= WSR_RCLUSTER_MAX_CHANNELS) {
        self->failed++;
        return -1;
    }
    s_chan_t *chan = (s_chan_t *) zmalloc (sizeof (s_chan_t));
    chan->name = strdup (channel);
    chan->slot = wsr_rcluster_slot (channel, len);
    zhashx_insert (self->wanted, chan->name, chan);
    if (!self->map_known || !s_place (self, chan))
        s_unplaced_add (self, chan);
    return 0;
}

//  --------------------------------------------------------------------------
//  Stop wanting a channel.
void
wsr_rcluster_unsubscribe (wsr_rcluster_t *self, const char *channel)
{
    assert (self && channel);
    s_chan_t *chan = (s_chan_t *) zhashx_lookup (self->wanted, channel);
    if (!chan)
        return;
    s_unassign (self, chan, true);
    s_unconfirm (self, chan);
    if (chan->handle)
        zlistx_delete (self->unplaced, chan->handle);
    zhashx_delete (self->wanted, channel);
}

//  --------------------------------------------------------------------------
//  Send a keyed command (also what publish uses).
int
wsr_rcluster_command (wsr_rcluster_t *self, const char *key, int argc, const char **argv,
                      const size_t *argvlen, wsr_rcluster_reply_fn *callback, void *arg)
{
    assert (self && key && argc > 0 && argv);
    s_node_t *node = self->slots [wsr_rcluster_slot (key, strlen (key))];
    if (!node)
        return -1;
    s_req_t *req = s_req_new (S_REQ_CALL, argc, argv, argvlen);
    req->callback = callback;
    req->arg = arg;
    if (s_call (node, req)) {
        s_req_destroy (&req);
        return -1;
    }
    return 0;
}

//  --------------------------------------------------------------------------
//  Publish.
int
wsr_rcluster_publish (wsr_rcluster_t *self, const char *channel, const uint8_t *data,
                      size_t size)
{
    assert (self && channel);
    const char *argv [3] = { "SPUBLISH", channel, data? (const char *) data: "" };
    size_t lens [3] = { 8, strlen (channel), size };
    return wsr_rcluster_command (self, channel, 3, argv, lens, NULL, NULL);
}

//  --------------------------------------------------------------------------
//  Map known and every wanted channel subscribed at its owner.
bool
wsr_rcluster_connected (wsr_rcluster_t *self)
{
    assert (self);
    return self->map_known && self->refresh_failures == 0
        && self->confirmed == zhashx_size (self->wanted);
}

//  --------------------------------------------------------------------------
//  Slot map known and read without failure since.
bool
wsr_rcluster_mapped (wsr_rcluster_t *self)
{
    assert (self);
    return self->map_known && self->refresh_failures < S_MAPPED_FAILURES;
}

//  --------------------------------------------------------------------------
//  Subscription confirmations.
void
wsr_rcluster_set_subscribed_fn (wsr_rcluster_t *self, wsr_rcluster_subscribed_fn *fn, void *arg)
{
    assert (self);
    self->on_subscribed = fn;
    self->subscribed_arg = arg;
}

uint64_t
wsr_rcluster_take_reconnects (wsr_rcluster_t *self)
{
    assert (self);
    uint64_t value = self->lost;
    self->lost = 0;
    return value;
}

uint64_t
wsr_rcluster_take_resets (wsr_rcluster_t *self)
{
    assert (self);
    uint64_t value = self->resets;
    self->resets = 0;
    return value;
}

uint64_t
wsr_rcluster_take_failed (wsr_rcluster_t *self)
{
    assert (self);
    uint64_t value = self->failed;
    self->failed = 0;
    return value;
}

size_t
wsr_rcluster_wanted (wsr_rcluster_t *self)
{
    assert (self);
    return zhashx_size (self->wanted);
}

size_t
wsr_rcluster_shards (wsr_rcluster_t *self)
{
    assert (self);
    return self->shards;
}

//  --------------------------------------------------------------------------
//  Poll items: every socket, read while up, write while something is queued.
int
wsr_rcluster_pollitems (wsr_rcluster_t *self, zmq_pollitem_t *items, int max)
{
    assert (self);
    int count = 0;
    for (int i = 0; i < self->node_count; i++) {
        s_conn_t *conns [2] = { &self->nodes [i]->sub, &self->nodes [i]->cmd };
        for (int j = 0; j < 2 && count < max; j++) {
            s_conn_t *conn = conns [j];
            if (conn->fd < 0)
                continue;
            items [count].socket = NULL;
            items [count].fd = conn->fd;
            items [count].events = conn->state == S_CONNECTING? ZMQ_POLLOUT
                                 : (short) (ZMQ_POLLIN | (conn->wcur? ZMQ_POLLOUT: 0));
            items [count].revents = 0;
            count++;
        }
    }
    return count;
}

static long
s_until (int64_t when, int64_t now, long timeout)
{
    long wait = (long) (when - now);
    if (wait < 0)
        wait = 0;
    return wait < timeout? wait: timeout;
}

//  --------------------------------------------------------------------------
//  Next timer.
long
wsr_rcluster_timeout (wsr_rcluster_t *self)
{
    assert (self);
    int64_t now = wsr_util_mono_ms ();
    long timeout = S_MAX_TIMEOUT_MS;
    if (self->map_known && zlistx_size (self->unplaced))
        timeout = s_until (self->place_after, now, timeout);
    if (!self->refreshing) {
        bool degraded = !self->map_known || self->confirmed < zhashx_size (self->wanted);
        int64_t due = self->refresh_last + (self->refresh_now? S_REFRESH_GAP_MS
                    : degraded? S_REFRESH_DEGRADED_MS: S_REFRESH_EVERY_MS);
        timeout = s_until (due, now, timeout);
    }
    for (int i = 0; i < self->node_count; i++) {
        s_conn_t *conns [2] = { &self->nodes [i]->sub, &self->nodes [i]->cmd };
        for (int j = 0; j < 2; j++) {
            s_conn_t *conn = conns [j];
            if (conn->state == S_DOWN)
                timeout = s_until (conn->next_attempt, now, timeout);
            else
            if (conn->state == S_IDLE && conn->head)
                timeout = 0;
            else
            if (conn->state == S_CONNECTING)
                timeout = s_until (conn->started + S_CONNECT_TIMEOUT_MS, now, timeout);
            else
            if (conn->state == S_UP) {
                if (conn->head && conn->head->sent)
                    timeout = s_until (conn->head->sent + S_REPLY_TIMEOUT_MS, now, timeout);
                if (conn->subscriber)
                    timeout = s_until (conn->last_ping + S_PING_EVERY_MS, now, timeout);
            }
        }
    }
    return timeout;
}

//  A connect finished (POLLOUT or POLLERR).
static void
s_conn_connected (s_conn_t *conn)
{
    int error = 0;
    socklen_t len = sizeof error;
    if (getsockopt (conn->fd, SOL_SOCKET, SO_ERROR, &error, &len) || error) {
        wsr_debug ("rcluster: %s: connect: %s", conn->node->addr, strerror (error));
        s_conn_reset (conn, false);
    }
    else
        s_conn_up (conn);
}

static void
s_conn_io (s_conn_t *conn, zmq_pollitem_t *items, int count)
{
    for (int i = 0; i < count && conn->fd >= 0; i++) {
        if (items [i].socket || items [i].fd != conn->fd || !items [i].revents)
            continue;
        short revents = items [i].revents;
        items [i].revents = 0;          //  fd numbers can be reused by a reconnect
        if (conn->state == S_CONNECTING) {
            s_conn_connected (conn);
            if (conn->state != S_UP)
                return;
        }
        uint32_t generation = conn->generation;
        if (revents & (ZMQ_POLLIN | ZMQ_POLLERR))
            s_conn_read (conn);
        if (conn->generation == generation && conn->state == S_UP && conn->wcur)
            s_conn_write (conn);
    }
}

//  Connection timers: backoff over, connect due or late, replies late, pings.
static void
s_conn_timers (s_conn_t *conn, int64_t now)
{
    if (conn->state == S_DOWN && now >= conn->next_attempt)
        conn->state = S_IDLE;
    if (conn->state == S_IDLE && conn->head)
        s_connect (conn);
    else
    if (conn->state == S_CONNECTING && now - conn->started > S_CONNECT_TIMEOUT_MS) {
        zsys_warning ("rcluster: %s: connect timed out", conn->node->addr);
        s_conn_reset (conn, false);
    }
    else
    if (conn->state == S_UP && conn->head && conn->head->sent
    &&  now - conn->head->sent > S_REPLY_TIMEOUT_MS) {
        zsys_warning ("rcluster: %s: no reply for %d ms; reconnecting", conn->node->addr,
                      S_REPLY_TIMEOUT_MS);
        s_conn_reset (conn, true);
    }
    else
    if (conn->state == S_UP && conn->subscriber && !conn->ping_out
    &&  now - conn->last_ping >= S_PING_EVERY_MS) {
        const char *argv [1] = { "PING" };
        s_req_t *req = s_req_new (S_REQ_PING, 1, argv, NULL);
        conn->last_ping = now;
        if (s_conn_push (conn, req))
            s_req_destroy (&req);
        else
            conn->ping_out = true;
    }
}

//  Place unplaced channels, a bounded number per turn. Those that cannot be
//  placed yet (no owner, connection half full) wait a little.
static void
s_placement (wsr_rcluster_t *self, int64_t now)
{
    size_t left = zlistx_size (self->unplaced);
    bool blocked = false;
    for (int budget = S_PLACE_BUDGET; budget > 0 && left > 0; budget--, left--) {
        s_chan_t *chan = (s_chan_t *) zlistx_first (self->unplaced);
        zlistx_delete (self->unplaced, chan->handle);
        chan->handle = NULL;
        if (!s_place (self, chan)) {
            s_unplaced_add (self, chan);
            blocked = true;
        }
    }
    self->place_after = blocked? now + S_REPLACE_DELAY_MS: now;
}

//  Free doomed nodes; close subscriber connections of nodes that own no slot.
static void
s_sweep (wsr_rcluster_t *self)
{
    int kept = 0;
    for (int i = 0; i < self->node_count; i++) {
        s_node_t *node = self->nodes [i];
        if (!node->doomed) {
            if (!node->owned && node->sub.state != S_IDLE && !zhashx_size (node->channels))
                s_conn_close (&node->sub);
            self->nodes [kept++] = node;
            continue;
        }
        wsr_debug ("rcluster: %s left the cluster", node->addr);
        s_conn_close (&node->sub);      //  its channels go back to placement
        s_conn_close (&node->cmd);
        if (self->refresh_node == node)
            self->refresh_node = NULL;
        for (int slot = 0; slot < S_SLOTS; slot++)
            if (self->slots [slot] == node)
                self->slots [slot] = NULL;
        zhashx_delete (self->by_addr, node->addr);
        s_node_destroy (&node);
    }
    for (int i = kept; i < self->node_count; i++)
        self->nodes [i] = NULL;
    if (kept < self->node_count)
        self->refresh_rotor = 0;
    self->node_count = kept;
}

//  --------------------------------------------------------------------------
//  I/O and timers.
void
wsr_rcluster_process (wsr_rcluster_t *self, zmq_pollitem_t *items, int count)
{
    assert (self);
    for (int i = 0; i < self->node_count; i++) {
        s_conn_io (&self->nodes [i]->sub, items, count);
        s_conn_io (&self->nodes [i]->cmd, items, count);
    }
    int64_t now = wsr_util_mono_ms ();
    if (!self->refreshing) {
        bool degraded = !self->map_known || self->confirmed < zhashx_size (self->wanted);
        int64_t gap = now - self->refresh_last;
        if (gap >= S_REFRESH_GAP_MS
        &&  (self->refresh_now || gap >= (degraded? S_REFRESH_DEGRADED_MS: S_REFRESH_EVERY_MS)))
            s_refresh (self, now);
    }
    if (self->map_known && zlistx_size (self->unplaced) && now >= self->place_after)
        s_placement (self, now);
    for (int i = 0; i < self->node_count; i++) {
        s_conn_timers (&self->nodes [i]->sub, now);
        s_conn_timers (&self->nodes [i]->cmd, now);
    }
    //  Write now what this turn queued, rather than after another poll
    for (int i = 0; i < self->node_count; i++) {
        s_conn_t *conns [2] = { &self->nodes [i]->sub, &self->nodes [i]->cmd };
        for (int j = 0; j < 2; j++)
            if (conns [j]->state == S_UP && conns [j]->wcur)
                s_conn_write (conns [j]);
    }
    s_sweep (self);
}

//  --------------------------------------------------------------------------
//  Test fixture: a throwaway local Redis Cluster

#include <dirent.h>
#include <sys/prctl.h>
#include <sys/wait.h>

#define S_FIX_MAX_NODES     16
#define S_FIX_START_MS      30000   //  nodes up, cluster created, ok, replicas in sync
#define S_FIX_STOP_MS       5000    //  SIGTERM to exit, then SIGKILL
#define S_FIX_PORT_LOW      20000   //  P and its bus port P+10000 both below the
#define S_FIX_PORT_SPAN     2700    //  ephemeral range (32768-) of outgoing connections
#define S_FIX_REGISTRY      64      //  children killed on abort()
#define S_FIX_POLL_MS       20      //  condition polling interval while waiting

struct _wsr_rcluster_fixture_t {
    int size;                           //  nodes
    int ports [S_FIX_MAX_NODES];        //  client ports
    pid_t pids [S_FIX_MAX_NODES];       //  redis-server pids, -1 once reaped
    char dir [64];                      //  temporary directory (mkdtemp)
    char *password;                     //  requirepass / masterauth, or NULL
};

static volatile pid_t s_fix_registry [S_FIX_REGISTRY];

//  abort() (a failed assert): kill our servers before the process dies.
static void
s_fix_on_abort (int sig)
{
    (void) sig;
    for (int i = 0; i < S_FIX_REGISTRY; i++)
        if (s_fix_registry [i] > 0)
            kill (s_fix_registry [i], SIGKILL);
}

static void
s_fix_register (pid_t pid, bool add)
{
    static bool installed = false;
    if (!installed) {
        struct sigaction action = { .sa_handler = s_fix_on_abort, .sa_flags = SA_RESETHAND };
        sigemptyset (&action.sa_mask);
        int rc = sigaction (SIGABRT, &action, NULL);
        assert (rc == 0);
        installed = true;
    }
    for (int i = 0; i < S_FIX_REGISTRY; i++)
        if (s_fix_registry [i] == (add? 0: pid)) {
            s_fix_registry [i] = add? pid: 0;
            return;
        }
    assert (!add);                      //  registry full: more fixtures than the test needs
}

//  Start argv with PR_SET_PDEATHSIG (dies with us), output to out_path or
//  /dev/null, REDISCLI_AUTH set if auth.
static pid_t
s_fix_spawn (const char *const argv [], const char *out_path, const char *auth)
{
    pid_t parent = getpid ();
    pid_t pid = fork ();
    if (pid == 0) {
        if (prctl (PR_SET_PDEATHSIG, SIGKILL) || getppid () != parent)
            _exit (126);
        int devnull = open ("/dev/null", O_RDWR);
        int out = out_path? open (out_path, O_WRONLY | O_CREAT | O_TRUNC, 0600): devnull;
        if (devnull < 0 || out < 0 || dup2 (devnull, 0) < 0 || dup2 (out, 1) < 0
        ||  dup2 (out, 2) < 0 || (auth && setenv ("REDISCLI_AUTH", auth, 1)))
            _exit (126);
        execvp (argv [0], (char *const *) argv);
        _exit (127);
    }
    if (pid > 0)
        s_fix_register (pid, true);
    return pid;
}

//  Wait for a child until deadline (mono ms); returns its status, -1 if it
//  is still running then.
static int
s_fix_wait (pid_t pid, int64_t deadline)
{
    while (true) {
        int status = 0;
        pid_t rc = waitpid (pid, &status, WNOHANG);
        if (rc == pid) {
            s_fix_register (pid, false);
            return status;
        }
        if (rc < 0 && errno != EINTR)
            return -1;
        if (wsr_util_mono_ms () >= deadline)
            return -1;
        zclock_sleep (S_FIX_POLL_MS / 2);
    }
}

static void
s_fix_stop (pid_t pid)
{
    if (pid <= 0)
        return;
    kill (pid, SIGTERM);
    if (s_fix_wait (pid, wsr_util_mono_ms () + S_FIX_STOP_MS) == -1) {
        kill (pid, SIGKILL);
        waitpid (pid, NULL, 0);
        s_fix_register (pid, false);
    }
}

static bool
s_fix_port_free (int port)
{
    int fd = socket (AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
    assert (fd >= 0);
    struct sockaddr_in addr = { .sin_family = AF_INET, .sin_port = htons ((uint16_t) port) };
    addr.sin_addr.s_addr = htonl (INADDR_LOOPBACK);
    bool free_now = bind (fd, (struct sockaddr *) &addr, sizeof addr) == 0;
    close (fd);
    return free_now;
}

//  A synchronous connection for tests (1 s timeouts), authenticated if a
//  password is given. NULL if it fails.
static redisContext *
s_sync (int port, const char *password)
{
    struct timeval timeout = { 1, 0 };
    redisContext *c = redisConnectWithTimeout ("127.0.0.1", port, timeout);
    if (!c || c->err) {
        if (c)
            redisFree (c);
        return NULL;
    }
    if (redisSetTimeout (c, timeout) != REDIS_OK) {
        redisFree (c);
        return NULL;
    }
    if (password) {
        redisReply *r = (redisReply *) redisCommand (c, "AUTH %s", password);
        bool ok = r && r->type != REDIS_REPLY_ERROR;
        if (r)
            freeReplyObject (r);
        if (!ok) {
            redisFree (c);
            return NULL;
        }
    }
    return c;
}

//  One command on a fresh connection; the reply (yours) or NULL.
static redisReply *
s_sync_command (int port, const char *password, int argc, const char **argv)
{
    redisContext *c = s_sync (port, password);
    if (!c)
        return NULL;
    redisReply *r = (redisReply *) redisCommandArgv (c, argc, argv, NULL);
    redisFree (c);
    return r;
}

//  True if a reply of type string/status contains text.
static bool
s_sync_has (int port, const char *password, int argc, const char **argv, const char *text)
{
    redisReply *r = s_sync_command (port, password, argc, argv);
    bool has = r && (r->type == REDIS_REPLY_STRING || r->type == REDIS_REPLY_STATUS)
            && strstr (r->str, text);
    if (r)
        freeReplyObject (r);
    return has;
}

static void
s_fix_rmdir (const char *dir)
{
    //  Only what we made: node files in our mkdtemp directory
    DIR *handle = opendir (dir);
    if (handle) {
        struct dirent *entry;
        while ((entry = readdir (handle)))
            if (!streq (entry->d_name, ".") && !streq (entry->d_name, "..")) {
                char path [PATH_MAX];
                snprintf (path, sizeof path, "%s/%s", dir, entry->d_name);
                if (unlink (path))
                    zsys_warning ("rcluster fixture: unlink %s: %s", path, strerror (errno));
            }
        closedir (handle);
    }
    if (rmdir (dir))
        zsys_warning ("rcluster fixture: rmdir %s: %s", dir, strerror (errno));
}

//  --------------------------------------------------------------------------
//  Start a cluster.
wsr_rcluster_fixture_t *
wsr_rcluster_fixture_new (int masters, int replicas, const char *password)
{
    assert (masters >= 3 && replicas >= 0);
    wsr_rcluster_fixture_t *self =
        (wsr_rcluster_fixture_t *) zmalloc (sizeof (wsr_rcluster_fixture_t));
    self->size = masters * (1 + replicas);
    assert (self->size <= S_FIX_MAX_NODES);
    for (int i = 0; i < self->size; i++)
        self->pids [i] = -1;
    self->password = password? strdup (password): NULL;
    snprintf (self->dir, sizeof self->dir, "/tmp/wsr-rcluster-XXXXXX");
    if (!mkdtemp (self->dir)) {
        self->dir [0] = 0;
        wsr_rcluster_fixture_destroy (&self);
        return NULL;
    }
    int64_t deadline = wsr_util_mono_ms () + S_FIX_START_MS;
    unsigned seed = (unsigned) getpid () ^ (unsigned) wsr_util_now_us ();
    for (int i = 0, tries = 0; i < self->size && tries < 10000; tries++) {
        int port = S_FIX_PORT_LOW + (int) (rand_r (&seed) % S_FIX_PORT_SPAN);
        bool taken = false;
        for (int j = 0; j < i; j++)
            taken |= abs (self->ports [j] - port) == 0 || abs (self->ports [j] - port) == 10000;
        if (!taken && s_fix_port_free (port) && s_fix_port_free (port + 10000))
            self->ports [i++] = port;
    }
    for (int i = 0; i < self->size; i++) {
        if (!self->ports [i])
            goto failed;
        char conf [PATH_MAX];
        snprintf (conf, sizeof conf, "%s/%d.conf", self->dir, self->ports [i]);
        FILE *file = fopen (conf, "w");
        if (!file)
            goto failed;
        //  In a file (mode 0600), so the password is not on a command line
        fprintf (file, "port %d\nbind 127.0.0.1\ncluster-enabled yes\n"
                 "cluster-node-timeout 1000\ncluster-config-file %s/nodes-%d.conf\n"
                 "dir %s\nlogfile %s/%d.log\nsave \"\"\nappendonly no\n"
                 "repl-diskless-sync-delay 0\ncluster-replica-validity-factor 0\n",
                 self->ports [i], self->dir, self->ports [i], self->dir, self->dir,
                 self->ports [i]);
        if (password)
            fprintf (file, "requirepass %s\nmasterauth %s\n", password, password);
        if (fclose (file))
            goto failed;
        const char *argv [] = { "redis-server", conf, NULL };
        self->pids [i] = s_fix_spawn (argv, NULL, NULL);
        if (self->pids [i] < 0)
            goto failed;
    }
    for (int i = 0; i < self->size; i++) {
        const char *ping [] = { "PING" };
        while (!s_sync_has (self->ports [i], password, 1, ping, "PONG")) {
            if (wsr_util_mono_ms () > deadline || waitpid (self->pids [i], NULL, WNOHANG)) {
                zsys_error ("rcluster fixture: redis-server on %d did not start (log in %s)",
                            self->ports [i], self->dir);
                goto failed;
            }
            zclock_sleep (S_FIX_POLL_MS);
        }
    }
    //  redis-cli --cluster create 127.0.0.1:P ... --cluster-replicas R --cluster-yes
    const char *argv [S_FIX_MAX_NODES + 8];
    char addrs [S_FIX_MAX_NODES][32];
    char replicas_text [16];
    int argc = 0;
    argv [argc++] = "redis-cli";
    argv [argc++] = "--cluster";
    argv [argc++] = "create";
    for (int i = 0; i < self->size; i++) {
        snprintf (addrs [i], sizeof addrs [i], "127.0.0.1:%d", self->ports [i]);
        argv [argc++] = addrs [i];
    }
    snprintf (replicas_text, sizeof replicas_text, "%d", replicas);
    argv [argc++] = "--cluster-replicas";
    argv [argc++] = replicas_text;
    argv [argc++] = "--cluster-yes";
    argv [argc] = NULL;
    char log [PATH_MAX];
    snprintf (log, sizeof log, "%s/create.log", self->dir);
    pid_t cli = s_fix_spawn (argv, log, password);
    int status = cli > 0? s_fix_wait (cli, deadline): -1;
    if (status == -1 && cli > 0)
        s_fix_stop (cli);
    if (status != 0) {
        zsys_error ("rcluster fixture: redis-cli --cluster create failed (see %s)", log);
        goto failed;
    }
    if (!wsr_rcluster_fixture_wait_ok (self, (int) (deadline - wsr_util_mono_ms ())))
        goto failed;
    return self;
failed:
    wsr_rcluster_fixture_destroy (&self);
    return NULL;
}

//  --------------------------------------------------------------------------
//  Stop the cluster.
void
wsr_rcluster_fixture_destroy (wsr_rcluster_fixture_t **self_p)
{
    assert (self_p);
    if (*self_p) {
        wsr_rcluster_fixture_t *self = *self_p;
        for (int i = 0; i < self->size; i++)
            if (self->pids [i] > 0)
                kill (self->pids [i], SIGTERM);
        for (int i = 0; i < self->size; i++)
            s_fix_stop (self->pids [i]);
        if (self->dir [0])
            s_fix_rmdir (self->dir);
        free (self->password);
        free (self);
        *self_p = NULL;
    }
}

int
wsr_rcluster_fixture_size (wsr_rcluster_fixture_t *self)
{
    assert (self);
    return self->size;
}

int
wsr_rcluster_fixture_port (wsr_rcluster_fixture_t *self, int index)
{
    assert (self && index >= 0 && index < self->size);
    return self->ports [index];
}

void
wsr_rcluster_fixture_kill (wsr_rcluster_fixture_t *self, int index)
{
    assert (self && index >= 0 && index < self->size);
    pid_t pid = self->pids [index];
    if (pid > 0) {
        kill (pid, SIGKILL);
        waitpid (pid, NULL, 0);
        s_fix_register (pid, false);
        self->pids [index] = -1;
    }
}

bool
wsr_rcluster_fixture_alive (wsr_rcluster_fixture_t *self, int index)
{
    assert (self && index >= 0 && index < self->size);
    return self->pids [index] > 0;
}

//  --------------------------------------------------------------------------
//  cluster_state:ok on every live node, every live replica in sync.
bool
wsr_rcluster_fixture_wait_ok (wsr_rcluster_fixture_t *self, int timeout_ms)
{
    assert (self);
    int64_t deadline = wsr_util_mono_ms () + timeout_ms;
    const char *info [] = { "CLUSTER", "INFO" };
    const char *repl [] = { "INFO", "replication" };
    for (int i = 0; i < self->size; i++) {
        while (self->pids [i] > 0
           && (!s_sync_has (self->ports [i], self->password, 2, info, "cluster_state:ok")
           ||  !(s_sync_has (self->ports [i], self->password, 2, repl, "role:master")
              || s_sync_has (self->ports [i], self->password, 2, repl,
                             "master_link_status:up")))) {
            if (wsr_util_mono_ms () > deadline) {
                zsys_error ("rcluster fixture: node %d not ok (logs in %s)", self->ports [i],
                            self->dir);
                return false;
            }
            zclock_sleep (S_FIX_POLL_MS);
        }
    }
    return true;
}

//  --------------------------------------------------------------------------
//  Selftest: offline parts, then against a real 3 x 2 cluster (MOVED, ASK,
//  reshard, failover) and a 3-master cluster with a password.

typedef struct {
    zhashx_t *got;                  //  "channel payload" received
    int count;                      //  messages received
} s_sink_t;

static void
s_sink (void *arg, const char *pattern, const char *channel, size_t channel_len,
        const uint8_t *data, size_t size)
{
    assert (pattern == NULL);
    s_sink_t *sink = (s_sink_t *) arg;
    char key [256];
    snprintf (key, sizeof key, "%.*s %.*s", (int) channel_len, channel, (int) size,
              (const char *) data);
    zhashx_insert (sink->got, key, (void *) 1);
    sink->count++;
}

static bool
s_got (s_sink_t *sink, const char *channel, const char *payload)
{
    char key [256];
    snprintf (key, sizeof key, "%s %s", channel, payload);
    return zhashx_lookup (sink->got, key) != NULL;
}

typedef struct {
    int calls;                      //  callback calls
    int type;                       //  last reply type, -1 for NULL
    char text [64];                 //  last reply string
} s_answer_t;

static void
s_on_answer (void *arg, const redisReply *reply)
{
    s_answer_t *answer = (s_answer_t *) arg;
    answer->calls++;
    answer->type = reply? reply->type: -1;
    snprintf (answer->text, sizeof answer->text, "%s", reply && reply->str? reply->str: "");
}

static void
s_run (wsr_rcluster_t *rc, int ms)
{
    int64_t end = wsr_util_mono_ms () + ms;
    do {
        zmq_pollitem_t items [WSR_RCLUSTER_MAX_POLLITEMS];
        int n = wsr_rcluster_pollitems (rc, items, WSR_RCLUSTER_MAX_POLLITEMS);
        long timeout = wsr_rcluster_timeout (rc);
        long left = (long) (end - wsr_util_mono_ms ());
        int rc_poll = zmq_poll (items, n, timeout < left? timeout: left > 0? left: 0);
        assert (rc_poll >= 0 || errno == EINTR);
        wsr_rcluster_process (rc, items, n);
    } while (wsr_util_mono_ms () < end);
}

//  Run until cond holds or ms pass.
#define S_RUN_UNTIL(rc, cond, ms) do { \
    int64_t end_ = wsr_util_mono_ms () + (ms); \
    while (!(cond) && wsr_util_mono_ms () < end_) s_run (rc, 5); } while (0)

//  A channel name with prefix whose slot is in [low, high].
static void
s_name_in (char *buf, size_t size, const char *prefix, int low, int high)
{
    for (int i = 0; i < 10000000; i++) {
        snprintf (buf, size, "%s%d", prefix, i);
        int slot = wsr_rcluster_slot (buf, strlen (buf));
        if (slot >= low && slot <= high)
            return;
    }
    assert (false);
}

//  Subscribers of channel summed over the live nodes; *where = port of one.
static int
s_numsub (wsr_rcluster_fixture_t *fix, const char *password, const char *channel, int *where)
{
    int total = 0;
    *where = 0;
    for (int i = 0; i < fix->size; i++) {
        if (!wsr_rcluster_fixture_alive (fix, i))
            continue;
        const char *argv [] = { "PUBSUB", "SHARDNUMSUB", channel };
        redisReply *r = s_sync_command (fix->ports [i], password, 3, argv);
        assert (r && r->type == REDIS_REPLY_ARRAY && r->elements == 2);
        if (r->element [1]->integer > 0) {
            total += (int) r->element [1]->integer;
            *where = fix->ports [i];
        }
        freeReplyObject (r);
    }
    return total;
}

//  Shard channels with subscribers, summed over the live nodes: equal to the
//  channels wanted iff none is subscribed twice (or missing).
static size_t
s_shardchannels (wsr_rcluster_fixture_t *fix)
{
    size_t total = 0;
    for (int i = 0; i < fix->size; i++) {
        if (!wsr_rcluster_fixture_alive (fix, i))
            continue;
        const char *argv [] = { "PUBSUB", "SHARDCHANNELS" };
        redisReply *r = s_sync_command (fix->ports [i], NULL, 2, argv);
        assert (r && r->type == REDIS_REPLY_ARRAY);
        total += r->elements;
        freeReplyObject (r);
    }
    return total;
}

//  True if exactly one subscription to channel exists, at port.
static bool
s_subscribed_once_at (wsr_rcluster_fixture_t *fix, const char *channel, int port)
{
    int where;
    return s_numsub (fix, NULL, channel, &where) == 1 && where == port;
}

static int
s_owner_port (wsr_rcluster_t *rc, const char *channel)
{
    s_node_t *node = rc->slots [wsr_rcluster_slot (channel, strlen (channel))];
    assert (node);
    return node->port;
}

static s_node_t *
s_master_other_than (wsr_rcluster_t *rc, s_node_t *node)
{
    for (int i = 0; i < rc->node_count; i++)
        if (rc->nodes [i]->owned && rc->nodes [i] != node)
            return rc->nodes [i];
    assert (false);
    return NULL;
}

static void
s_myid (int port, char *id, size_t size)
{
    const char *argv [] = { "CLUSTER", "MYID" };
    redisReply *r = s_sync_command (port, NULL, 2, argv);
    assert (r && r->type == REDIS_REPLY_STRING);
    snprintf (id, size, "%s", r->str);
    freeReplyObject (r);
}

static void
s_setslot (int port, int slot, const char *state, const char *id)
{
    char slot_text [16];
    snprintf (slot_text, sizeof slot_text, "%d", slot);
    const char *argv [] = { "CLUSTER", "SETSLOT", slot_text, state, id };
    redisReply *r = s_sync_command (port, NULL, 5, argv);
    assert (r && r->type == REDIS_REPLY_STATUS);
    freeReplyObject (r);
}

//  Port of the master a replica follows, 0 if port is a master, -1 if down.
static int
s_master_of (int port)
{
    const char *argv [] = { "ROLE" };
    redisReply *r = s_sync_command (port, NULL, 1, argv);
    if (!r)
        return -1;
    int master = 0;
    if (r->type == REDIS_REPLY_ARRAY && r->elements >= 3 && streq (r->element [0]->str, "slave"))
        master = (int) r->element [2]->integer;
    freeReplyObject (r);
    return master;
}

static int
s_index_of (wsr_rcluster_fixture_t *fix, int port)
{
    for (int i = 0; i < fix->size; i++)
        if (fix->ports [i] == port)
            return i;
    assert (false);
    return -1;
}

//  Publish through the link until the sink has it (a SSUBSCRIBE may still be
//  on its way).
static bool
s_roundtrip (wsr_rcluster_t *rc, s_sink_t *sink, const char *channel, const char *payload)
{
    S_RUN_UNTIL (rc, s_got (sink, channel, payload)
                 || (wsr_rcluster_publish (rc, channel, (const uint8_t *) payload,
                                           strlen (payload)), s_run (rc, 20), false), 3000);
    return s_got (sink, channel, payload);
}

static void
s_test_offline (void)
{
    //  Slots as in the Redis Cluster spec and CLUSTER KEYSLOT
    assert (s_crc16 ("123456789", 9) == 0x31C3);
    assert (wsr_rcluster_slot ("foo", 3) == 12182);
    assert (wsr_rcluster_slot ("{user1000}.following", 20)
            == wsr_rcluster_slot ("{user1000}.followers", 20));
    assert (wsr_rcluster_slot ("{user1000}.following", 20) == wsr_rcluster_slot ("user1000", 8));
    assert (wsr_rcluster_slot ("foo{}{bar}", 10) == s_crc16 ("foo{}{bar}", 10) % S_SLOTS);
    assert (wsr_rcluster_slot ("foo{{bar}}zap", 13) == s_crc16 ("{bar", 4) % S_SLOTS);
    assert (wsr_rcluster_slot ("foo{bar}{zap}", 13) == wsr_rcluster_slot ("bar", 3));

    //  Seeds
    assert (!wsr_rcluster_new ("", s_sink, NULL));
    assert (!wsr_rcluster_new ("pw@", s_sink, NULL));
    assert (!wsr_rcluster_new ("h:0", s_sink, NULL));
    assert (!wsr_rcluster_new ("h:70000", s_sink, NULL));
    assert (!wsr_rcluster_new ("h:12x", s_sink, NULL));
    assert (!wsr_rcluster_new ("[::1:7000", s_sink, NULL));
    assert (!wsr_rcluster_new ("a:1,b:2,c:3,d:4,e:5,f:6,g:7,h:8,i:9,j:10,k:11,l:12,m:13,"
                               "n:14,o:15,p:16,q:17", s_sink, NULL));
    wsr_rcluster_t *rc = wsr_rcluster_new ("u:p@ss@[::1]:7000,127.0.0.1:7001,host", s_sink, NULL);
    assert (rc && rc->node_count == 3);
    assert (streq (rc->user, "u") && streq (rc->password, "p@ss"));
    assert (streq (rc->nodes [0]->host, "::1") && rc->nodes [0]->port == 7000);
    assert (streq (rc->nodes [0]->addr, "[::1]:7000"));
    assert (rc->nodes [1]->port == 7001 && rc->nodes [2]->port == 6379);
    assert (!wsr_rcluster_connected (rc) && wsr_rcluster_shards (rc) == 0);
    //  No map yet: publishing is refused, subscribing waits
    assert (wsr_rcluster_publish (rc, "c", (const uint8_t *) "x", 1) == -1);
    assert (wsr_rcluster_subscribe (rc, "c") == 0);
    assert (wsr_rcluster_subscribe (rc, "c") == 0);
    assert (wsr_rcluster_wanted (rc) == 1);
    wsr_rcluster_unsubscribe (rc, "c");
    wsr_rcluster_unsubscribe (rc, "c");
    assert (wsr_rcluster_wanted (rc) == 0);
    wsr_rcluster_destroy (&rc);
    rc = wsr_rcluster_new (":pw@h:1", s_sink, NULL);
    assert (rc && !rc->user && streq (rc->password, "pw"));
    wsr_rcluster_destroy (&rc);

    //  Output bound: a node that is never connected (no process call) takes
    //  commands up to WSR_RCLUSTER_MAX_OUTPUT, then the connection is reset,
    //  counted, and what it held is failed
    rc = wsr_rcluster_new ("127.0.0.1:1", s_sink, NULL);
    assert (rc);
    for (int slot = 0; slot < S_SLOTS; slot++)
        rc->slots [slot] = rc->nodes [0];
    rc->map_known = true;
    size_t size = 4 * 1024 * 1024;
    uint8_t *big = (uint8_t *) zmalloc (size);
    int queued = 0;
    while (wsr_rcluster_publish (rc, "c", big, size) == 0)
        queued++;
    assert (queued == WSR_RCLUSTER_MAX_OUTPUT / (int) size - 1);
    assert (wsr_rcluster_take_resets (rc) == 1 && wsr_rcluster_take_resets (rc) == 0);
    assert (wsr_rcluster_take_failed (rc) == (uint64_t) queued);
    //  Backing off: refused at once
    assert (wsr_rcluster_publish (rc, "c", big, 1) == -1);
    free (big);
    s_answer_t answer = { 0 };
    rc->nodes [0]->cmd.state = S_IDLE;
    const char *argv [] = { "GET", "k" };
    assert (wsr_rcluster_command (rc, "k", 2, argv, NULL, s_on_answer, &answer) == 0);
    wsr_rcluster_destroy (&rc);         //  a queued command fails with NULL
    assert (answer.calls == 1 && answer.type == -1);
}

void
wsr_rcluster_test (bool verbose)
{
    s_test_offline ();
    if (system ("command -v redis-server >/dev/null 2>&1"
                " && command -v redis-cli >/dev/null 2>&1")) {
        printf ("SKIP (redis-server / redis-cli not installed)\n");
        fflush (stdout);
        exit (77);
    }
    int64_t t0 = wsr_util_mono_ms ();
    wsr_rcluster_fixture_t *fix = wsr_rcluster_fixture_new (3, 1, NULL);
    assert (fix);
    if (verbose)
        printf ("\n  cluster of 6 up in %" PRId64 " ms\n", wsr_util_mono_ms () - t0);

    //  Seeds in another order than the nodes, the first one dead
    char seeds [512];
    int dead = S_FIX_PORT_LOW + S_FIX_PORT_SPAN;            //  nothing listens there
    while (!s_fix_port_free (dead))
        dead++;
    int len = snprintf (seeds, sizeof seeds, "127.0.0.1:%d", dead);
    for (int i = fix->size - 1; i >= 0; i--)
        len += snprintf (seeds + len, sizeof seeds - (size_t) len, ",127.0.0.1:%d",
                         fix->ports [(i + 2) % fix->size]);
    s_sink_t sink = { zhashx_new (), 0 };
    wsr_rcluster_t *rc = wsr_rcluster_new (seeds, s_sink, &sink);
    assert (rc);

    //  One channel in each third of the slots (redis-cli gives each master one)
    char chan [3][32];
    s_name_in (chan [0], 32, "t:", 0, 5000);
    s_name_in (chan [1], 32, "t:", 5600, 10800);
    s_name_in (chan [2], 32, "t:", 11000, 16383);
    for (int i = 0; i < 3; i++) {
        assert (wsr_rcluster_subscribe (rc, chan [i]) == 0);
        assert (wsr_rcluster_subscribe (rc, chan [i]) == 0);
    }
    assert (wsr_rcluster_wanted (rc) == 3);
    S_RUN_UNTIL (rc, wsr_rcluster_connected (rc), 5000);
    assert (wsr_rcluster_connected (rc));
    assert (wsr_rcluster_shards (rc) == 3);
    int owner [3];
    for (int i = 0; i < 3; i++)
        owner [i] = s_owner_port (rc, chan [i]);
    assert (owner [0] != owner [1] && owner [1] != owner [2] && owner [0] != owner [2]);
    //  Published by the link, and by redis-cli -c sent to a node that is not the owner
    for (int i = 0; i < 3; i++) {
        assert (s_roundtrip (rc, &sink, chan [i], "by-link"));
        char command [256];
        snprintf (command, sizeof command,
                  "redis-cli -c -p %d SPUBLISH %s by-cli >/dev/null 2>&1", owner [(i + 1) % 3],
                  chan [i]);
        assert (system (command) == 0);
        S_RUN_UNTIL (rc, s_got (&sink, chan [i], "by-cli"), 3000);
        assert (s_got (&sink, chan [i], "by-cli"));
        assert (s_subscribed_once_at (fix, chan [i], owner [i]));
    }
    //  Bounded connections: one subscriber per shard, one command connection
    //  per shard published to, plus the node the map was read from
    int subs = 0, cmds = 0;
    for (int i = 0; i < rc->node_count; i++) {
        subs += rc->nodes [i]->sub.state != S_IDLE;
        cmds += rc->nodes [i]->cmd.state != S_IDLE;
    }
    assert (subs == 3 && cmds <= 4);
    assert (wsr_rcluster_take_reconnects (rc) == 0);

    //  MOVED on publish: the map points at a wrong master; the command is
    //  sent again at the owner and the map corrected
    uint16_t slot0 = wsr_rcluster_slot (chan [0], strlen (chan [0]));
    s_node_t *right = rc->slots [slot0];
    s_node_t *wrong = s_master_other_than (rc, right);
    rc->slots [slot0] = wrong;
    uint64_t moved = rc->moved;
    assert (wsr_rcluster_publish (rc, chan [0], (const uint8_t *) "moved", 5) == 0);
    S_RUN_UNTIL (rc, s_got (&sink, chan [0], "moved"), 3000);
    assert (s_got (&sink, chan [0], "moved"));
    assert (rc->moved == moved + 1 && rc->slots [slot0] == right);
    assert (wsr_rcluster_take_failed (rc) == 0);
    //  MOVED on subscribe: SSUBSCRIBE at the wrong master, refused, placed
    //  at the owner, exactly one subscription
    char chan_m [32];
    s_name_in (chan_m, 32, "m:", slot0, slot0);
    rc->slots [slot0] = wrong;
    wsr_rcluster_subscribe (rc, chan_m);
    S_RUN_UNTIL (rc, wsr_rcluster_connected (rc), 3000);
    assert (wsr_rcluster_connected (rc));
    assert (rc->moved >= moved + 2 && rc->slots [slot0] == right);
    assert (s_subscribed_once_at (fix, chan_m, right->port));
    assert (s_roundtrip (rc, &sink, chan_m, "after-moved"));

    //  Reshard one slot with redis-cli: the lowest slot of chan [2]'s master
    //  goes to chan [0]'s. The source pushes sunsubscribe; the channel is
    //  subscribed again at the target, once
    s_node_t *source = rc->slots [wsr_rcluster_slot (chan [2], strlen (chan [2]))];
    s_node_t *target = right;
    int low = 0;
    while (rc->slots [low] != source)
        low++;
    char chan_r [32];
    s_name_in (chan_r, 32, "r:", low, low);
    wsr_rcluster_subscribe (rc, chan_r);
    S_RUN_UNTIL (rc, wsr_rcluster_connected (rc), 3000);
    assert (s_subscribed_once_at (fix, chan_r, source->port));
    char source_id [64], target_id [64];
    s_myid (source->port, source_id, sizeof source_id);
    s_myid (target->port, target_id, sizeof target_id);
    char command [512];
    snprintf (command, sizeof command, "redis-cli --cluster reshard 127.0.0.1:%d "
              "--cluster-from %s --cluster-to %s --cluster-slots 1 --cluster-yes "
              ">/dev/null 2>&1", target->port, source_id, target_id);
    int64_t t_reshard = wsr_util_mono_ms ();
    assert (system (command) == 0);
    uint64_t pushed = rc->pushed;
    S_RUN_UNTIL (rc, rc->pushed > pushed && wsr_rcluster_connected (rc)
                 && rc->slots [low] == target, 5000);
    assert (rc->pushed > pushed && wsr_rcluster_connected (rc) && rc->slots [low] == target);
    assert (s_subscribed_once_at (fix, chan_r, target->port));
    assert (s_roundtrip (rc, &sink, chan_r, "after-reshard"));
    snprintf (command, sizeof command, "redis-cli -c -p %d SPUBLISH %s cli-after-reshard "
              ">/dev/null 2>&1", source->port, chan_r);
    assert (system (command) == 0);
    S_RUN_UNTIL (rc, s_got (&sink, chan_r, "cli-after-reshard"), 3000);
    assert (s_got (&sink, chan_r, "cli-after-reshard"));
    if (verbose)
        printf ("  reshard of slot %d: resubscribed and delivering %" PRId64 " ms after "
                "redis-cli started\n", low, wsr_util_mono_ms () - t_reshard);

    //  ASK during a hand-made migration of one slot (MIGRATING / IMPORTING),
    //  then the migration completed with SETSLOT NODE: sunsubscribe again
    char tag [32], key [48], chan_a [48];
    s_name_in (tag, 32, "a", 0, 5000);
    snprintf (key, sizeof key, "ask{%s}", tag);
    snprintf (chan_a, sizeof chan_a, "{%s}chan", tag);
    uint16_t slot_a = wsr_rcluster_slot (key, strlen (key));
    assert (slot_a == wsr_rcluster_slot (chan_a, strlen (chan_a)));
    s_node_t *from = rc->slots [slot_a];
    s_node_t *to = s_master_other_than (rc, from);
    wsr_rcluster_subscribe (rc, chan_a);
    S_RUN_UNTIL (rc, wsr_rcluster_connected (rc), 3000);
    assert (s_subscribed_once_at (fix, chan_a, from->port));
    char from_id [64], to_id [64];
    s_myid (from->port, from_id, sizeof from_id);
    s_myid (to->port, to_id, sizeof to_id);
    s_setslot (to->port, slot_a, "IMPORTING", from_id);
    s_setslot (from->port, slot_a, "MIGRATING", to_id);
    uint64_t asked = rc->asked;
    s_answer_t answer = { 0 };
    const char *set [] = { "SET", key, "v1" };
    assert (wsr_rcluster_command (rc, key, 3, set, NULL, s_on_answer, &answer) == 0);
    S_RUN_UNTIL (rc, answer.calls, 3000);
    assert (answer.calls == 1 && answer.type == REDIS_REPLY_STATUS && streq (answer.text, "OK"));
    assert (rc->asked == asked + 1 && rc->slots [slot_a] == from);
    const char *get [] = { "GET", key };
    assert (wsr_rcluster_command (rc, key, 2, get, NULL, s_on_answer, &answer) == 0);
    S_RUN_UNTIL (rc, answer.calls == 2, 3000);
    assert (answer.calls == 2 && answer.type == REDIS_REPLY_STRING && streq (answer.text, "v1"));
    assert (rc->asked == asked + 2);
    //  Sharded publish is still served by the source while migrating
    assert (s_roundtrip (rc, &sink, chan_a, "migrating"));
    pushed = rc->pushed;
    s_setslot (to->port, slot_a, "NODE", to_id);
    s_setslot (from->port, slot_a, "NODE", to_id);
    for (int i = 0; i < rc->node_count; i++)
        if (rc->nodes [i]->owned && rc->nodes [i] != from && rc->nodes [i] != to)
            s_setslot (rc->nodes [i]->port, slot_a, "NODE", to_id);
    S_RUN_UNTIL (rc, rc->pushed > pushed && wsr_rcluster_connected (rc)
                 && s_subscribed_once_at (fix, chan_a, to->port), 5000);
    assert (rc->pushed > pushed && wsr_rcluster_connected (rc));
    assert (s_subscribed_once_at (fix, chan_a, to->port));
    assert (s_roundtrip (rc, &sink, chan_a, "migrated"));
    assert (wsr_rcluster_take_reconnects (rc) == 0);
    assert (wsr_rcluster_take_failed (rc) == 0);

    //  Unsubscribed and subscribed again in one turn: still subscribed, once
    wsr_rcluster_unsubscribe (rc, chan [2]);
    wsr_rcluster_subscribe (rc, chan [2]);
    S_RUN_UNTIL (rc, wsr_rcluster_connected (rc), 3000);
    assert (s_roundtrip (rc, &sink, chan [2], "resubscribed"));
    assert (s_subscribed_once_at (fix, chan [2], owner [2]));

    //  Many channels over all shards: pipelined, each subscribed once
    int64_t t_bulk = wsr_util_mono_ms ();
    for (int i = 0; i < 3000; i++) {
        char name [32];
        snprintf (name, sizeof name, "bulk:%d", i);
        assert (wsr_rcluster_subscribe (rc, name) == 0);
    }
    S_RUN_UNTIL (rc, wsr_rcluster_connected (rc), 5000);
    assert (wsr_rcluster_connected (rc));
    if (verbose)
        printf ("  3000 more channels subscribed in %" PRId64 " ms\n",
                wsr_util_mono_ms () - t_bulk);
    assert (s_shardchannels (fix) == wsr_rcluster_wanted (rc));

    //  Failover: SIGKILL the master of chan [1]; its replica is promoted;
    //  delivery resumes within 2 s of the promotion, subscribed once
    int master = owner [1];
    int replica = 0;
    for (int i = 0; i < fix->size && !replica; i++)
        if (fix->ports [i] != master && s_master_of (fix->ports [i]) == master)
            replica = fix->ports [i];
    assert (replica);
    int64_t t_kill = wsr_util_mono_ms ();
    wsr_rcluster_fixture_kill (fix, s_index_of (fix, master));
    int64_t t_promoted = 0;
    int64_t t_checked = 0;
    bool degraded = false;              //  connected () went false meanwhile
    while (!t_promoted && wsr_util_mono_ms () - t_kill < 15000) {
        s_run (rc, 5);
        degraded |= !wsr_rcluster_connected (rc);
        if (wsr_util_mono_ms () - t_checked >= 20) {
            t_checked = wsr_util_mono_ms ();
            if (s_master_of (replica) == 0)
                t_promoted = wsr_util_mono_ms ();
        }
    }
    assert (t_promoted && degraded);
    //  Published straight at the new master, as a backend would
    int64_t t_delivered = 0;
    int64_t t_published = 0;
    while (!t_delivered && wsr_util_mono_ms () - t_promoted < 5000) {
        if (wsr_util_mono_ms () - t_published >= 20) {
            t_published = wsr_util_mono_ms ();
            const char *spublish [] = { "SPUBLISH", chan [1], "failover" };
            redisReply *r = s_sync_command (replica, NULL, 3, spublish);
            if (r)
                freeReplyObject (r);
        }
        s_run (rc, 5);
        if (s_got (&sink, chan [1], "failover"))
            t_delivered = wsr_util_mono_ms ();
    }
    assert (t_delivered);
    printf ("failover: promoted %" PRId64 " ms after the kill, delivery resumed %" PRId64
            " ms after the promotion; ", t_promoted - t_kill, t_delivered - t_promoted);
    fflush (stdout);
    assert (t_delivered - t_promoted < 2000);
    S_RUN_UNTIL (rc, wsr_rcluster_connected (rc), 3000);
    assert (wsr_rcluster_connected (rc));
    assert (s_owner_port (rc, chan [1]) == replica);
    assert (s_subscribed_once_at (fix, chan [1], replica));
    assert (s_shardchannels (fix) == wsr_rcluster_wanted (rc));
    assert (s_roundtrip (rc, &sink, chan [1], "after-failover"));
    assert (wsr_rcluster_take_reconnects (rc) >= 1);
    //  The other channels never moved
    for (int i = 0; i < 3; i += 2)
        assert (s_roundtrip (rc, &sink, chan [i], "still"));
    //  Unsubscribed: gone from the cluster
    wsr_rcluster_unsubscribe (rc, chan [0]);
    int where = 0;
    S_RUN_UNTIL (rc, s_numsub (fix, NULL, chan [0], &where) == 0, 3000);
    assert (s_numsub (fix, NULL, chan [0], &where) == 0);
    assert (wsr_rcluster_wanted (rc) == 3005);
    wsr_rcluster_destroy (&rc);
    wsr_rcluster_fixture_destroy (&fix);
    zhashx_purge (sink.got);

    //  AUTH: requirepass / masterauth, both seed forms; a wrong password
    //  never gets a map
    fix = wsr_rcluster_fixture_new (3, 0, "s3cret-pw");
    assert (fix);
    const char *forms [] = { ":s3cret-pw@", "default:s3cret-pw@" };
    for (int f = 0; f < 2; f++) {
        snprintf (seeds, sizeof seeds, "%s127.0.0.1:%d,127.0.0.1:%d", forms [f],
                  fix->ports [f], fix->ports [2]);
        rc = wsr_rcluster_new (seeds, s_sink, &sink);
        assert (rc);
        for (int i = 0; i < 3; i++)
            wsr_rcluster_subscribe (rc, chan [i]);
        S_RUN_UNTIL (rc, wsr_rcluster_connected (rc), 5000);
        assert (wsr_rcluster_connected (rc) && wsr_rcluster_shards (rc) == 3);
        for (int i = 0; i < 3; i++) {
            char payload [16];
            snprintf (payload, sizeof payload, "auth-%d", f);
            assert (s_roundtrip (rc, &sink, chan [i], payload));
        }
        wsr_rcluster_destroy (&rc);
    }
    snprintf (seeds, sizeof seeds, ":wrong@127.0.0.1:%d", fix->ports [0]);
    rc = wsr_rcluster_new (seeds, s_sink, &sink);
    assert (rc);
    s_run (rc, 500);
    assert (!wsr_rcluster_connected (rc) && wsr_rcluster_shards (rc) == 0);
    wsr_rcluster_destroy (&rc);
    wsr_rcluster_fixture_destroy (&fix);
    zhashx_destroy (&sink.got);
    if (verbose)
        printf ("  whole test %" PRId64 " ms\n", wsr_util_mono_ms () - t0);
}
