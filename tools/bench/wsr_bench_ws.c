//  wsr_bench_ws — the bench's RFC 6455 client side: accept key, frame parser, control frames
//
//  The parser works on whatever bytes arrive: a frame header may be split
//  anywhere (7-, 16- and 64-bit lengths), control frames may come between
//  the fragments of a message. It returns at the end of each frame, so that
//  the caller handles it before the next one is parsed. A server frame is
//  never masked and carries no extension bits here; anything else is a
//  protocol error. Frames the client sends are masked (RFC 6455 §5.3).

#include "wsr_bench_classes.h"

#define S_WS_GUID           "258EAFA5-E914-47DA-95CA-C5AB0DC85B11"

//  --------------------------------------------------------------------------
//  Sec-WebSocket-Accept for a Sec-WebSocket-Key.
void
wsr_bench_ws_accept_key (const char *key, char *accept, size_t size)
{
    zdigest_t *digest = zdigest_new ();
    assert (digest);
    zdigest_update (digest, (byte *) key, strlen (key));
    zdigest_update (digest, (byte *) S_WS_GUID, strlen (S_WS_GUID));
    sodium_bin2base64 (accept, size, zdigest_data (digest), zdigest_size (digest),
                       sodium_base64_VARIANT_ORIGINAL);
    zdigest_destroy (&digest);
}

//  A whole frame header is in head: check it and start the frame. Returns
//  1 if the frame (empty) has already ended, 0, or -1 on a protocol error.
static int
s_frame_start (wsr_bench_ws_t *self)
{
    uint8_t b0 = self->head [0], b1 = self->head [1];
    uint8_t opcode = b0 & 0x0f;
    uint64_t length = b1 & 0x7f;
    if (length == 126)
        length = (uint64_t) self->head [2] << 8 | self->head [3];
    else
    if (length == 127) {
        length = 0;
        for (int i = 0; i < 8; i++)
            length = length << 8 | self->head [2 + i];
        if (length >> 63)
            return -1;
    }
    self->head_len = 0;
    if ((b0 & 0x70) || (b1 & 0x80))
        return -1;
    if (opcode >= 0x8) {
        if (opcode > 0xA || !(b0 & 0x80) || length > WSR_BENCH_CONTROL_MAX)
            return -1;
        self->control_len = 0;
    }
    else
    if (opcode == 0x1 || opcode == 0x2) {
        if (self->message_op)
            return -1;
        self->message_op = opcode;
        self->prefix_len = 0;
    }
    else
    if (opcode != 0x0 || !self->message_op)
        return -1;
    self->opcode = opcode;
    self->fin = (b0 & 0x80) != 0;
    self->remaining = length;
    if (length == 0)
        return 1;
    self->in_payload = 1;
    return 0;
}

//  A frame ended: a final data frame ends its message.
static int
s_frame_end (wsr_bench_ws_t *self)
{
    self->in_payload = 0;
    if (self->opcode < 0x8 && self->fin)
        self->message_ended = 1;
    return 1;
}

//  --------------------------------------------------------------------------
//  Parse until a frame ends or the bytes run out.
int
wsr_bench_ws_feed (wsr_bench_ws_t *self, const uint8_t **data, size_t *len)
{
    assert (self && data && len);
    if (self->message_ended) {
        //  The caller has seen the message: the next one may start
        self->message_ended = 0;
        self->message_op = 0;
        self->prefix_len = 0;
    }
    const uint8_t *p = *data;
    size_t left = *len;
    int rc = 0;
    while (left > 0 && rc == 0) {
        if (!self->in_payload) {
            //  The header's size is known once its second byte is in
            size_t need = 2;
            while (true) {
                if (self->head_len >= 2) {
                    uint8_t len7 = self->head [1] & 0x7f;
                    need = 2 + (len7 == 126? 2: len7 == 127? 8: 0)
                         + ((self->head [1] & 0x80)? 4: 0);
                }
                if (self->head_len >= need || left == 0)
                    break;
                self->head [self->head_len++] = *p++;
                left--;
            }
            if (self->head_len < need)
                break;
            rc = s_frame_start (self);
            if (rc == 1)
                rc = s_frame_end (self);
        }
        else {
            size_t take = self->remaining < left? (size_t) self->remaining: left;
            if (self->opcode >= 0x8) {
                memcpy (self->control + self->control_len, p, take);
                self->control_len += (uint8_t) take;
            }
            else
            if (self->prefix_len < WSR_BENCH_HDR_LEN) {
                size_t keep = WSR_BENCH_HDR_LEN - self->prefix_len;
                if (keep > take)
                    keep = take;
                memcpy (self->prefix + self->prefix_len, p, keep);
                self->prefix_len += (uint8_t) keep;
            }
            p += take;
            left -= take;
            self->remaining -= take;
            if (self->remaining == 0)
                rc = s_frame_end (self);
        }
    }
    *data = p;
    *len = left;
    return rc;
}

//  --------------------------------------------------------------------------
//  A masked control frame: pong, close.
size_t
wsr_bench_ws_control (uint8_t *frame, uint8_t opcode, const uint8_t *payload, size_t len)
{
    assert (frame);
    assert (len <= WSR_BENCH_CONTROL_MAX);
    frame [0] = 0x80 | opcode;
    frame [1] = 0x80 | (uint8_t) len;
    randombytes_buf (frame + 2, 4);
    for (size_t i = 0; i < len; i++)
        frame [6 + i] = payload [i] ^ frame [2 + i % 4];
    return 6 + len;
}

//  --------------------------------------------------------------------------
//  Selftest

//  What a stream parsed into: a text of events
typedef struct {
    char events [256];              //  "M1 Phi M2 ...": one word per frame
    size_t events_len;
} s_seen_t;

//  Feed len bytes, noting each frame that ends; returns the last rc.
static int
s_feed (wsr_bench_ws_t *ws, const uint8_t *data, size_t len, s_seen_t *seen)
{
    while (true) {
        int rc = wsr_bench_ws_feed (ws, &data, &len);
        if (rc <= 0)
            return rc;
        char event [32] = "";
        if (ws->opcode == 0x8) {
            assert (ws->control_len == 2);
            snprintf (event, sizeof event, "C%d ", ws->control [0] << 8 | ws->control [1]);
        }
        else
        if (ws->opcode == 0x9)
            snprintf (event, sizeof event, "P%.*s ", (int) ws->control_len, ws->control);
        else
        if (ws->opcode == 0xA)
            snprintf (event, sizeof event, "p%d ", ws->control_len);
        else
        if (ws->fin) {
            char kind;
            uint32_t seq, target;
            uint64_t ts;
            assert (ws->prefix_len == WSR_BENCH_HDR_LEN);
            assert (wsr_bench_payload_read (ws->prefix, &kind, &seq, &ts, &target));
            snprintf (event, sizeof event, "%c%u ", kind, seq);
        }
        size_t event_len = strlen (event);
        assert (seen->events_len + event_len < sizeof seen->events);
        memcpy (seen->events + seen->events_len, event, event_len + 1);
        seen->events_len += event_len;
    }
}

void
wsr_bench_ws_test (bool verbose)
{
    (void) verbose;
    assert (sodium_init () >= 0);
    //  RFC 6455 §1.3 example
    char accept [32];
    wsr_bench_ws_accept_key ("dGhlIHNhbXBsZSBub25jZQ==", accept, sizeof accept);
    assert (streq (accept, "s3pPLMBiTxaQ9kYGzzhZRbK+xOo="));

    //  Three messages with 7-, 16- and 64-bit lengths, a ping "hi" between
    //  two fragments of the second, an empty pong, then a close 1001
    size_t sizes [3] = { 100, 300, 70000 };
    size_t total = 0;
    uint8_t *stream = (uint8_t *) malloc (80000);
    assert (stream);
    for (int m = 0; m < 3; m++) {
        size_t size = sizes [m];
        char *payload = (char *) malloc (size);
        assert (payload);
        memset (payload, 'x', size);
        wsr_bench_payload_write (payload, 'M', (uint32_t) m + 1, 1, 0);
        if (m == 1) {
            //  Fragment 1 (40 bytes: the header split), ping, fragment 2
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
    stream [total++] = 0x8A;
    stream [total++] = 0;
    stream [total++] = 0x88;
    stream [total++] = 2;
    stream [total++] = 0x03;
    stream [total++] = 0xE9;
    const char *expected = "M1 Phi M2 M3 p0 C1001 ";
    //  Every split point through the small frames and the 64-bit header,
    //  then a few inside the long payload and the last frames
    size_t splits [600];
    size_t split_count = 0;
    for (size_t cut = 0; cut < 480; cut++)
        splits [split_count++] = cut;
    size_t tail [] = { 5000, 40000, total - 6, total - 5, total - 4, total - 3, total - 2,
                       total - 1, total };
    for (size_t i = 0; i < sizeof tail / sizeof tail [0]; i++)
        splits [split_count++] = tail [i];
    for (size_t s = 0; s < split_count; s++) {
        wsr_bench_ws_t ws;
        memset (&ws, 0, sizeof ws);
        s_seen_t seen = { .events_len = 0 };
        assert (s_feed (&ws, stream, splits [s], &seen) == 0);
        assert (s_feed (&ws, stream + splits [s], total - splits [s], &seen) == 0);
        assert (streq (seen.events, expected));
    }
    //  One byte at a time
    wsr_bench_ws_t ws;
    memset (&ws, 0, sizeof ws);
    s_seen_t seen = { .events_len = 0 };
    for (size_t i = 0; i < total; i++)
        assert (s_feed (&ws, stream + i, 1, &seen) == 0);
    assert (streq (seen.events, expected));
    free (stream);

    //  Protocol errors: masked from the server, reserved bits, long control
    //  frame, fragmented control frame, a continuation without a message, a
    //  message inside a message, an unknown opcode, a 64-bit length with the
    //  top bit set
    uint8_t masked [] = { 0x81, 0x81, 1, 2, 3, 4, 'a' };
    uint8_t reserved [] = { 0xC1, 0x00 };
    uint8_t long_ping [] = { 0x89, 126, 0, 200 };
    uint8_t split_ping [] = { 0x09, 0x00 };
    uint8_t orphan [] = { 0x80, 0x00 };
    uint8_t nested [] = { 0x01, 0x01, 'a', 0x81, 0x00 };
    uint8_t unknown [] = { 0x83, 0x00 };
    uint8_t huge [] = { 0x82, 127, 0x80, 0, 0, 0, 0, 0, 0, 1 };
    uint8_t *bad [] = { masked, reserved, long_ping, split_ping, orphan, nested, unknown, huge };
    size_t bad_len [] = { sizeof masked, sizeof reserved, sizeof long_ping, sizeof split_ping,
                          sizeof orphan, sizeof nested, sizeof unknown, sizeof huge };
    for (size_t i = 0; i < sizeof bad / sizeof bad [0]; i++) {
        memset (&ws, 0, sizeof ws);
        const uint8_t *data = bad [i];
        size_t len = bad_len [i];
        int rc;
        while ((rc = wsr_bench_ws_feed (&ws, &data, &len)) == 1)
            ;
        assert (rc == -1);
    }

    //  A masked pong echoing "hi"
    uint8_t frame [6 + WSR_BENCH_CONTROL_MAX];
    assert (wsr_bench_ws_control (frame, 0xA, (const uint8_t *) "hi", 2) == 8);
    assert (frame [0] == 0x8A && frame [1] == (0x80 | 2));
    assert ((frame [6] ^ frame [2]) == 'h' && (frame [7] ^ frame [3]) == 'i');
    assert (wsr_bench_ws_control (frame, 0x8, NULL, 0) == 6 && frame [1] == 0x80);
}
