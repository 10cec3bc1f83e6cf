//  wsr_jetstream — a topic's history on NATS JetStream: stream, reads since a sequence, live

#ifndef WSR_JETSTREAM_H_INCLUDED
#define WSR_JETSTREAM_H_INCLUDED

#ifdef __cplusplus
extern "C" {
#endif

#define WSR_JETSTREAM_TIMEOUT_MS    2000    //  per JetStream API request
#define WSR_JETSTREAM_MAX_READS     1024    //  reads in flight
#define WSR_JETSTREAM_CHECK_MS      1000    //  stream info refresh (epoch, existence)
#define WSR_JETSTREAM_CONSUMER_WAIT_MS 1000 //  live consumer create / delete, blocking
#define WSR_JETSTREAM_MAX_SUBJECTS  8       //  subjects of a stream we create
#define WSR_JETSTREAM_HEARTBEAT_MS  1000    //  live consumers' idle heartbeat

typedef struct _wsr_jetstream_t wsr_jetstream_t;
typedef struct __natsConnection natsConnection;

//  How to find or make the stream.
typedef struct {
    const char *stream;             //  NATS_HISTORY_STREAM: its name
    const char *subjects [WSR_JETSTREAM_MAX_SUBJECTS];  //  NULL-terminated; to create it
    bool create;                    //  create the stream if it does not exist
    int64_t size;                   //  max messages per subject (history size)
    int64_t ttl_s;                  //  max age in seconds (history TTL)
    int replicas;                   //  1 (more in a JetStream cluster)
    bool memory;                    //  memory storage instead of file
    //  The live consumers start after these stream sequences (per subject
    //  of subjects; 0: from new messages) if the stream's epoch is still
    //  resume_epoch: made again after a reconnect, they miss nothing
    uint64_t resume [WSR_JETSTREAM_MAX_SUBJECTS];
    char resume_epoch [WSR_HISTORY_EPOCH_MAX + 1];
} wsr_jetstream_config_t;

//  Create on a libnats connection (borrowed: it must outlive this object).
//  If live is not NULL, an ordered push consumer over the whole stream
//  delivers every stored message, with its stream sequence, as
//  [subject][payload][sequence: 8 bytes big-endian][epoch] to a PUSH socket
//  connected to live (an inproc endpoint the owner has bound a PULL on).
//  Nothing is asked of the server here: process() does it. Returns NULL if
//  the configuration is invalid.
wsr_jetstream_t *
    wsr_jetstream_new (natsConnection *conn, const wsr_jetstream_config_t *config,
                       const char *live);

//  Destroy. Callbacks of reads still in flight are not called. Deleting
//  the live consumers blocks up to WSR_JETSTREAM_CONSUMER_WAIT_MS each when
//  NATS does not answer.
void
    wsr_jetstream_destroy (wsr_jetstream_t **self_p);

//  Socket the owner polls for input (API replies from libnats' threads);
//  when readable, or when timeout() has passed, call process().
zsock_t *
    wsr_jetstream_socket (wsr_jetstream_t *self);

//  Milliseconds until process() is due without input (≤ 100).
long
    wsr_jetstream_timeout (wsr_jetstream_t *self);

//  Handle replies, advance reads, fail those that timed out, check the
//  stream (creating it, following a new epoch; starting the live consumers
//  blocks this thread for one request per stream subject, up to
//  WSR_JETSTREAM_CONSUMER_WAIT_MS, when the stream is found or made again).
void
    wsr_jetstream_process (wsr_jetstream_t *self);

//  True once the stream has been found or created.
bool
    wsr_jetstream_ready (wsr_jetstream_t *self);

//  The stream's epoch (its creation time, as [0-9A-Z]), "" until known.
const char *
    wsr_jetstream_epoch (wsr_jetstream_t *self);

//  Read the messages of subject with stream sequence > since, up to the
//  stream's last sequence now (result->last; it is the position the
//  subject is at, sequences being shared by all subjects), at most max
//  (≤ WSR_HISTORY_MAX_READ); complete is judged against epoch (NULL: the
//  current one). cb is called from process(), exactly once. Returns 0, or
//  -1 if too many reads are in flight.
int
    wsr_jetstream_read (wsr_jetstream_t *self, const char *subject, uint64_t since,
                        const char *epoch, size_t max, wsr_history_read_fn *cb, void *arg);

//  Reads in flight.
size_t
    wsr_jetstream_inflight (wsr_jetstream_t *self);

//  Self test
void
    wsr_jetstream_test (bool verbose);

#ifdef __cplusplus
}
#endif
#endif
