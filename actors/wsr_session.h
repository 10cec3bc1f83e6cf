//  wsr_session — a session worker actor: thousands of WebSocket sessions on one epoll loop

#ifndef WSR_SESSION_H_INCLUDED
#define WSR_SESSION_H_INCLUDED

#ifdef __cplusplus
extern "C" {
#endif

typedef struct _wsr_session_t wsr_session_t;

//  Limits a worker applies to each of its sessions (plain values, copied).
typedef struct {
    size_t max_message;         //  largest client message (→ 1009 above)
    size_t max_queue;           //  output bytes queued per session (→ 1008)
    size_t max_sessions;        //  sessions the whole node accepts (→ 1013), counted
                                //  in the shared sessions_open gauge
    int close_timeout_ms;       //  wait for the peer's close reply
    int ping_interval_ms;       //  ping a session silent this long (0 = never)
    int ping_timeout_ms;        //  close it if still silent this long after
    size_t rate_messages;       //  inbound frames per second (0 = no limit)
    size_t rate_bytes;          //  inbound bytes per second
    int write_delay_ms;         //  hold deliveries this long to coalesce writes (0 = off)
    int hello_timeout_ms;       //  v1: the hello, then the recovery reads, due (0 = 10 s)
    bool events;                //  report connects and disconnects to the bridge (EVENT)
    const char *jwt_alg;        //  v1 refresh: "HS256" or "EdDSA" (NULL: refresh refused)
    const uint8_t *jwt_key;     //  its secret or 32-byte public key (borrowed until started;
    size_t jwt_key_len;         //  the worker keeps its own verifier)
    int jwt_leeway;             //  its clock skew, s (the refreshed expiry is exp + this)
    bool require_exp;           //  a refresh token without exp is refused
    const char *bridge;         //  the bridge's endpoint (borrowed until started)
    const char *curve_secret;   //  this node's secret certificate, or NULL
    const char *curve_server;   //  the bridge's public certificate, or NULL
    int deflate_level;          //  permessage-deflate: zlib level (0 = the default, 6)
    size_t deflate_threshold;   //  ... smaller payloads go out plain
    wsr_census_t *census;       //  the node's topic census (not owned), NULL = none:
                                //  the worker counts its topics when the console asks
} wsr_session_opts_t;

//  Start session worker `index` of node `name`. It binds
//  inproc://wsr-adopt-NAME-INDEX and links to the bridge at opts->bridge
//  (wsr_link; the bridge may start later). Returns NULL on failure.
//  ipcount is the node's per-IP counter table: a closing session gives its
//  slot back.
wsr_session_t *
    wsr_session_new (const char *name, int index, const wsr_session_opts_t *opts,
                     wsr_metrics_t *metrics, wsr_ipcount_t *ipcount);

//  Stop the worker: every remaining connection is closed at once.
void
    wsr_session_destroy (wsr_session_t **self_p);

//  Close every session with 1001 Going Away (graceful drain). Returns at once.
void
    wsr_session_drain (wsr_session_t *self);

//  Connections this worker holds, open or closing.
int64_t
    wsr_session_count (wsr_session_t *self);

//  Handover: let up to max open sessions go, each after writing what its
//  socket takes. Returns [SESSION frame (wsr_handover)][fd as int] pairs;
//  the caller owns the message and every fd in it. *open_p gets the open
//  sessions still in the worker (v1 openings and closes under way wait).
zmsg_t *
    wsr_session_export (wsr_session_t *self, int max, uint64_t *open_p);

//  Handover: take in sessions from [SESSION frame][fd] pairs; takes *msg_p
//  (nulled) and every fd in it, also those it refuses (closed). Returns the
//  sessions taken.
int
    wsr_session_import (wsr_session_t *self, zmsg_t **msg_p);

//  Handover: close every open session with 1012 "service restart" (those
//  that could not be handed over). Returns how many.
int
    wsr_session_restart (wsr_session_t *self);

//  Handover (old worker): its topic keys, one string frame each (caller
//  destroys), or NULL.
zmsg_t *
    wsr_session_topics (wsr_session_t *self);

//  Handover (new worker): subscribe these keys (string frames; *keys_p
//  taken, may be NULL), holding what arrives for each in a ring until the
//  handover ends, then start a barrier (SYNC at every bridge). Does not
//  wait: wsr_session_synced gives the answer. Returns 0 or -1 (not sent).
int
    wsr_session_presub (wsr_session_t *self, zmsg_t **keys_p);

//  Handover (old worker): start a barrier alone: once answered, every
//  message the backplane sent before it has been delivered (or dropped for
//  sessions gone). Returns 0 or -1; wsr_session_synced gives the answer.
int
    wsr_session_sync (wsr_session_t *self);

//  Wait for the answer of wsr_session_presub or wsr_session_sync: 0 once
//  every bridge answered, -1 if one did not within 5 s.
int
    wsr_session_synced (wsr_session_t *self);

//  Handover over (new worker): the rings go, topics without sessions are
//  unsubscribed.
void
    wsr_session_presub_end (wsr_session_t *self);

//  Fuzzing entry: run bytes from a peer through one session's input path,
//  synchronously, in this thread. Returns the bytes the session wrote back.
//  Not for use beside running actors (it keeps its own worker state);
//  wsr_session_fuzz (NULL, 0) releases that state.
size_t
    wsr_session_fuzz (const uint8_t *data, size_t size);

//  Self test
void
    wsr_session_test (bool verbose);

#ifdef __cplusplus
}
#endif
#endif
