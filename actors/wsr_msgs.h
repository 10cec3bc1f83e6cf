//  wsr_msgs — the message catalogue in code: commands, endpoints, pictures
//
//  Mirrors the "Message catalogue" section of ARCHITECTURE.md. Change both in
//  the same commit, with a selftest that exercises the change.

#ifndef WSR_MSGS_H_INCLUDED
#define WSR_MSGS_H_INCLUDED

//  Pipe commands (actor API class → actor), upper-case verbs in frame 1
#define WSR_CMD_START       "START"     //  → "i" status (0 ok)
#define WSR_CMD_DRAIN       "DRAIN"     //  → "i" 0; stop accepting / close with 1001
#define WSR_CMD_SESSIONS    "SESSIONS"  //  → "8" open sessions (session worker)
#define WSR_CMD_PORT        "PORT"      //  → "i" bound TCP port (listener)
#define WSR_CMD_TLS_PORT    "TLSPORT"   //  → "i" bound TLS port, -1 if none (listener)
#define WSR_CMD_RELOAD      "RELOAD"    //  → "i" certificates allowed (bridge, SIGHUP);
                                        //  listener: 0 TLS certificate reloaded, -1 not
#define WSR_CMD_PEERS       "PEERS"     //  → "88" peers, topics (bridge)
//  Handover (session worker): EXPORT "si" max → [8 still open][f SESSION frame,
//  i fd]*; IMPORT [f SESSION frame, i fd]* → "i" sessions taken; RESTART → "i"
//  sessions closed with 1012
#define WSR_CMD_EXPORT      "EXPORT"
#define WSR_CMD_PAUSE       "PAUSE"     //  → "i" dup of the listening fd (listener)
#define WSR_CMD_RESUME      "RESUME"    //  → "i" 0; accept again (listener)
#define WSR_CMD_IMPORT      "IMPORT"
#define WSR_CMD_RESTART     "RESTART"
#define WSR_CMD_TOPICS      "TOPICS"    //  → topic keys (handover, old worker)
#define WSR_CMD_PRESUB      "PRESUB"    //  keys... → "i" 0 once subscribed and synced
#define WSR_CMD_SYNC        "SYNC"      //  → "i" 0 once every bridge answered SYNCED
#define WSR_CMD_PREEND      "PREEND"    //  → "i" 0; the handover rings go

//  Data messages between actors of one node (see ARCHITECTURE.md)
#define WSR_MSG_AUTH        "AUTH"      //  listener → auth
#define WSR_MSG_ADOPT       "ADOPT"     //  auth → session worker N
#define WSR_MSG_PUBLISH     "PUBLISH"   //  listener (HTTP API) → router
#define WSR_MSG_QUERY       "QUERY"     //  listener (GET /api/presence) → router

//  Pictures
//  AUTH:  s "AUTH", 8 conn id, i fd, i per-IP slot, i flags (WSR_ADOPT_*),
//         s ws-accept, s peer address, f token, f early bytes,
//         p TLS session (wsr_tlsconn_t *, NULL on plain TCP): owned with the fd, see below
#define WSR_PIC_AUTH        "s8iiissffp"
//  ADOPT: s "ADOPT", 8 conn id, i fd, i close code (0 = ok), i per-IP slot,
//         8 token expiry (Unix seconds, 0 = none), i flags (WSR_ADOPT_*; 0: raw protocol),
//         s reason, s user, s channels (comma-joined), s HTTP response head
//         (the whole 101 response, blank line included), f early bytes,
//         p TLS session (wsr_tlsconn_t *, NULL on plain TCP)
#define WSR_PIC_ADOPT       "s8iii8issssfp"
//  The TLS session travels with its descriptor, in-process only: whoever owns
//  the fd owns the TLS session; whoever fails to send frees it
//  (wsr_tls_free) before closing the fd. Early bytes are already decrypted.
#define WSR_ADOPT_V1        0x01        //  flag: the client speaks wsrouter.v1
#define WSR_ADOPT_DEFLATE   0x02        //  flag: permessage-deflate negotiated (RFC 7692)
//  Our one answer to an acceptable permessage-deflate offer: no context kept
//  on either side, so one compressed frame serves every recipient and one
//  inflater per worker serves every session (RFC 7692 §7.1.1).
#define WSR_DEFLATE_RESPONSE \
    "Sec-WebSocket-Extensions: permessage-deflate; server_no_context_takeover; " \
    "client_no_context_takeover\r\n"
//  PUBLISH: s "PUBLISH", f topic key, f downstream envelope
#define WSR_PIC_PUBLISH     "sff"
//  QUERY: s "QUERY", i fd (the HTTP connection, handed over: the router
//         answers and closes it), s kind ("user"|"channel"), s id, i limit
#define WSR_PIC_QUERY       "sissi"

//  N frames: numbers travel as 8 bytes, never as text.
static inline void
wsr_msgs_put_u64 (uint8_t *out, uint64_t value)
{
    for (int i = 7; i >= 0; i--, value >>= 8)
        out [i] = (uint8_t) value;
}

static inline uint64_t
wsr_msgs_get_u64 (const uint8_t *in)
{
    uint64_t value = 0;
    for (int i = 0; i < 8; i++)
        value = value << 8 | in [i];
    return value;
}

//  Which session worker owns a connection (and its session): the one rule,
//  used by whoever sends ADOPT and whoever routes a message to a session.
static inline int
wsr_msgs_worker_for (uint64_t conn_id, int workers)
{
    return (int) (conn_id % (uint64_t) workers);
}

//  Endpoint name templates; %s is the node's instance name (unique per node
//  in a process), %d the session worker index.
#define WSR_EP_AUTH         "inproc://wsr-auth-%s"
#define WSR_EP_ADOPT        "inproc://wsr-adopt-%s-%d"
#define WSR_EP_PUB          "inproc://wsr-pub-%s"
#define WSR_EP_BRIDGE       "inproc://wsr-bridge-%s"    //  the in-process bridge

//  --------------------------------------------------------------------------
//  The node ⇄ bridge protocol, WBP/1. Peers (each session worker, the node's
//  router) hold a DEALER connected to the bridge's ROUTER: inproc:// when the
//  bridge runs in the node's process, tcp:// (CURVE) across hosts. Frame 1 is
//  the command, the frames listed follow (pictures are czmq's: s string,
//  i int, 8 uint64, f frame). The bridge tracks each peer by its ZeroMQ
//  routing id: what it subscribed, when it was last heard of.

#define WSR_PROTO_VERSION   "1"
//  Peer → bridge
#define WSR_PROTO_HELLO     "HELLO"     //  s version, s node id, s role, i index
#define WSR_PROTO_SUB       "SUB"       //  f topic key × 1..WSR_PROTO_MAX_TOPICS
#define WSR_PROTO_UNSUB     "UNSUB"     //  f topic key × 1..WSR_PROTO_MAX_TOPICS
#define WSR_PROTO_UP        "UP"        //  f upstream envelope: a client message
#define WSR_PROTO_PUB       "PUB"       //  f topic key, f downstream envelope (API)
#define WSR_PROTO_HIST      "HIST"      //  N request id, f topic key, s epoch ("" none),
                                        //  N since offset, N max entries
#define WSR_PROTO_EVENT     "EVENT"     //  s "connect"|"disconnect", N session, s user,
                                        //  s channels (comma-joined), N since (wall ms),
                                        //  N close code, s reason, N duration ms
#define WSR_PROTO_PRESENCE  "PRESENCE"  //  N request id, s "user"|"channel", s id, N limit
#define WSR_PROTO_PING      "PING"      //  nothing: alive while idle
#define WSR_PROTO_BYE       "BYE"       //  nothing: leaving, forget my topics now
                                        //  (the bridge answers BYE: the end of
                                        //  what it sent for the old session)
#define WSR_PROTO_SYNC      "SYNC"      //  N token: answer SYNCED once the backplane has
                                        //  confirmed everything before (a barrier)
//  Bridge → peer (N: an 8-byte unsigned number, network byte order)
#define WSR_PROTO_DELIVER   "D"         //  f topic key, f downstream envelope
#define WSR_PROTO_DELIVERS  "DS"        //  f deliveries in order, each [u16 key size]
                                        //  [key with its NUL][u32 envelope size][envelope]
                                        //  (sizes big-endian); envelopes of at most
                                        //  WSR_PROTO_BATCH_ENVELOPE bytes, at most
                                        //  WSR_PROTO_BATCH_RECORDS of them and
                                        //  WSR_PROTO_BATCH_BYTES in all
#define WSR_PROTO_BATCH_ENVELOPE    1024
#define WSR_PROTO_BATCH_RECORDS     16
#define WSR_PROTO_BATCH_BYTES       (16 * 1024)
//  A bridge's queue per peer, in messages (a DS carries up to 16 deliveries:
//  as many deliveries as 160K single ones, in at most 160 MB)
#define WSR_PROTO_PEER_QUEUE        10000
#define WSR_PROTO_REPLY     "REPLY"     //  N session id, f downstream envelope
#define WSR_PROTO_HB        "HB"        //  N bridge epoch, f heartbeat envelope
#define WSR_PROTO_RESYNC    "RESYNC"    //  nothing: HELLO and SUB everything again
#define WSR_PROTO_SYNCED    "SYNCED"    //  N token: every delivery before it was sent
#define WSR_PROTO_REFUSED   "REFUSED"   //  f topic key, s reason: SUB not taken
#define WSR_PROTO_HISTR     "HISTR"     //  N request id, f history result envelope
#define WSR_PROTO_PRESENCER "PRESENCER" //  N request id, N HTTP status, s JSON body
//  Roles in HELLO
#define WSR_ROLE_WORKER     "worker"    //  a session worker: SUB, UP; gets D, REPLY
#define WSR_ROLE_ROUTER     "router"    //  a node's router: PUB; gets HB

#define WSR_PROTO_MAX_TOPICS    64      //  topic frames per SUB / UNSUB message
#define WSR_PROTO_PING_MS       500     //  a peer silent this long sends PING
#define WSR_PROTO_PEER_TTL_MS   3000    //  a peer silent this long is forgotten
#define WSR_PROTO_HB_MS         500     //  bridge heartbeat period
#define WSR_PROTO_HB_DEAD_MS    2000    //  no heartbeat this long: bridge down
#define WSR_PROTO_RECONNECT_MS  5000    //  ... this long: the link connects afresh

//  Topic keys: "user:" + id or "channel:" + id, always with a NUL terminator
//  in the frame, so a key is never a prefix of another.
#define WSR_TOPIC_USER      "user:"
#define WSR_TOPIC_CHANNEL   "channel:"
#define WSR_TOPIC_UPSTREAM  "up:"         //  on the upstream PUB: "up:" + user id
#define WSR_TOPIC_MAX       (sizeof (WSR_TOPIC_CHANNEL) + WSR_MAX_ID_LEN + 1)

//  Error messages sent to a client whose message could not go upstream
#define WSR_ERROR_UPSTREAM_BUSY \
    "{\"type\":\"error\",\"error\":\"upstream: busy, message dropped\"}"
#define WSR_ERROR_BACKPLANE_DOWN \
    "{\"type\":\"error\",\"error\":\"upstream: backplane down, message dropped\"}"

//  Envelope version carried by every msgpack envelope
#define WSR_ENVELOPE_VERSION 1

//  Close codes wslay has no name for
#define WSR_CLOSE_TRY_AGAIN_LATER   1013    //  node full
#define WSR_CLOSE_SERVICE_RESTART   1012    //  not handed over at an upgrade

//  WebSocket opcodes used in envelopes ("k")
#define WSR_KIND_TEXT       1
#define WSR_KIND_BINARY     2

#endif
