//  wsr_presence — who is connected where: presence kept in Redis by the bridges

#ifndef WSR_PRESENCE_H_INCLUDED
#define WSR_PRESENCE_H_INCLUDED

#ifdef __cplusplus
extern "C" {
#endif

#define WSR_PRESENCE_PREFIX     "{wsp}"     //  key prefix and cluster hash tag
#define WSR_PRESENCE_BEAT_MS    250         //  bridges beat their live nodes this often
#define WSR_PRESENCE_ALIVE_MS   750         //  a node beaten this recently is alive
#define WSR_PRESENCE_STALE_MS   1500        //  one silent this long is reaped
#define WSR_PRESENCE_MAX_INFLIGHT 20000     //  commands waiting for Redis

typedef struct _wsr_presence_t wsr_presence_t;

//  A session of a node that stopped: what the reap removed.
typedef void (wsr_presence_lost_fn) (void *arg, const char *node, uint64_t session,
                                     const char *user, const char *channels, int64_t since_ms);

//  A query's answer: status 0 or -1 (Redis failed); total (channel: every
//  live member; user: the sessions), and up to count session infos (JSON
//  texts, borrowed for the call).
typedef void (wsr_presence_query_fn) (void *arg, int status, size_t total,
                                      const char *const *infos, size_t count);

//  Create on a Redis link (borrowed; destroy this first).
wsr_presence_t *
    wsr_presence_new (wsr_redis_t *redis);

//  Destroy; callbacks of commands in flight are not called.
void
    wsr_presence_destroy (wsr_presence_t **self_p);

//  A session started / ended on node (channels comma-joined, since in ms of
//  the wall clock). info is the session's JSON for queries. Return 0, or -1
//  if Redis is down or too much is waiting (the caller counts it).
int
    wsr_presence_connect (wsr_presence_t *self, const char *node, uint64_t session,
                          const char *user, const char *channels, int64_t since_ms,
                          const char *info);
int
    wsr_presence_disconnect (wsr_presence_t *self, const char *node, uint64_t session,
                             const char *user, const char *channels, int64_t since_ms);

//  These nodes are alive now.
int
    wsr_presence_beat (wsr_presence_t *self, const char *const *nodes, size_t count);

//  Forget nodes not beaten for WSR_PRESENCE_STALE_MS; lost is called for
//  each of their sessions (only one bridge gets them: the script is atomic).
int
    wsr_presence_reap (wsr_presence_t *self, wsr_presence_lost_fn *lost, void *arg);

//  The sessions of a user, and the members of a channel (at most limit).
int
    wsr_presence_user (wsr_presence_t *self, const char *user, wsr_presence_query_fn *cb,
                       void *arg);
int
    wsr_presence_channel (wsr_presence_t *self, const char *channel, size_t limit,
                          wsr_presence_query_fn *cb, void *arg);

//  Self test
void
    wsr_presence_test (bool verbose);

#ifdef __cplusplus
}
#endif
#endif
