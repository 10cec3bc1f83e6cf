//  wsr_bench_ws — the bench's RFC 6455 client side: accept key, frame parser, control frames

#ifndef WSR_BENCH_WS_H_INCLUDED
#define WSR_BENCH_WS_H_INCLUDED

#ifdef __cplusplus
extern "C" {
#endif

//  Frame parser state of one connection. A plain struct, embedded in each
//  session (there may be a million: no allocation), zeroed to start. After
//  wsr_bench_ws_feed returns 1 the fields describe the frame that ended.
typedef struct {
    uint64_t remaining;             //  payload bytes left in the current frame
    uint8_t in_payload;             //  inside a frame's payload
    uint8_t message_ended;          //  the last frame ended a data message
    uint8_t head_len;               //  frame header bytes gathered
    uint8_t opcode;                 //  the frame's opcode
    uint8_t fin;                    //  the frame ends its message
    uint8_t message_op;             //  opcode of the data message in progress, 0 = none
    uint8_t control_len;            //  control payload bytes gathered
    uint8_t prefix_len;             //  data message bytes gathered in prefix
    uint8_t head [14];              //  frame header being gathered
    uint8_t control [WSR_BENCH_CONTROL_MAX];    //  ping / pong / close payload
    uint8_t prefix [WSR_BENCH_HDR_LEN];         //  first bytes of the data message
} wsr_bench_ws_t;

//  Write into accept (size >= 29) the Sec-WebSocket-Accept a server must
//  answer to key: base64 (SHA-1 (key + the RFC 6455 GUID)).
void
    wsr_bench_ws_accept_key (const char *key, char *accept, size_t size);

//  Parse server frames from *data (*len bytes), advancing both. Returns 1
//  when a frame has ended (a data frame, with opcode and fin; a control
//  frame, with its payload in control), 0 when every byte is consumed
//  without a frame ending, -1 on a protocol error (masked or reserved bits,
//  a bad opcode, a long or fragmented control frame, a continuation without
//  a message, a message inside a message). Of a data message only its first
//  WSR_BENCH_HDR_LEN bytes are kept, in prefix.
int
    wsr_bench_ws_feed (wsr_bench_ws_t *self, const uint8_t **data, size_t *len);

//  Write a masked control frame (opcode, payload of len <= 125 bytes) into
//  frame (at least 6 + len bytes). Returns its size.
size_t
    wsr_bench_ws_control (uint8_t *frame, uint8_t opcode, const uint8_t *payload, size_t len);

//  Self test
void
    wsr_bench_ws_test (bool verbose);

#ifdef __cplusplus
}
#endif
#endif
