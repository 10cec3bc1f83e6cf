//  wsr_bench_rx — what the receiving side of a bench process counts, mergeable across processes

#ifndef WSR_BENCH_RX_H_INCLUDED
#define WSR_BENCH_RX_H_INCLUDED

#ifdef __cplusplus
extern "C" {
#endif

//  A plain record of counters (like an options struct, deliberately not
//  opaque): the sessions of one process add to it field by field on their
//  hot path, the report reads it. Made and freed by wsr_bench_rx_new/destroy.
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
    uint64_t close_codes [WSR_BENCH_CLOSE_SLOTS];   //  closes by code (1006: EOF, no close)
    uint64_t hs_status [WSR_BENCH_STATUS_SLOTS];    //  refused handshakes by HTTP status
    int64_t t_first_start;          //  first connect started, mono ns (0 = never)
    int64_t t_last_established;     //  last 101 verified
    int64_t t_first_rx;             //  first measured message received
    int64_t t_last_rx;              //  last measured message received
    wsr_bench_hist_t *handshake;    //  connect start → 101 verified (owned)
    wsr_bench_hist_t *latency;      //  publish → receive, measured messages (owned)
} wsr_bench_rx_t;

//  Slot of a close code in close_codes: 1000..1015, else "other"
#define WSR_BENCH_CLOSE_BASE        1000
#define WSR_BENCH_CLOSE_OTHER       16
//  Slot of an HTTP status in the status arrays: 100..599
#define WSR_BENCH_STATUS_BASE       100

//  Sequence tracking of one session: the next expected measured sequence
//  (from 1) and a 64-bit window of the ones before it (bit k: next - 1 - k).
typedef struct {
    uint32_t next;
    uint64_t window;
} wsr_bench_seq_t;

//  Create zeroed counters.
wsr_bench_rx_t *
    wsr_bench_rx_new (void);

//  Destroy them; safe on NULL.
void
    wsr_bench_rx_destroy (wsr_bench_rx_t **self_p);

//  Zero every counter and histogram.
void
    wsr_bench_rx_reset (wsr_bench_rx_t *self);

//  Count measured sequence seq on a session with state seq_state: a jump
//  ahead counts the gap as loss; a sequence seen before is a duplicate; an
//  older one not seen before is reordered (and no longer lost).
void
    wsr_bench_rx_sequence (wsr_bench_rx_t *self, wsr_bench_seq_t *seq_state, uint32_t seq);

//  Everything, for the pipe to the parent. Caller owns the result.
json_t *
    wsr_bench_rx_to_json (wsr_bench_rx_t *self);

//  Add counters in the form of wsr_bench_rx_to_json (a child's).
void
    wsr_bench_rx_merge (wsr_bench_rx_t *self, json_t *json);

//  Self test
void
    wsr_bench_rx_test (bool verbose);

#ifdef __cplusplus
}
#endif
#endif
