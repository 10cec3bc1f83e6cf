//  fuzz_tlsrec — libFuzzer harness for wsr_tlsrec, the TLS 1.3 record layer
//
//  After the handshake every byte a client sends goes through wsr_tlsrec
//  before anything else sees it. Random bytes alone would stop at the first
//  tag check, so the harness plays the client with a second record layer
//  holding the mirrored secrets: most inputs are records that decrypt, and
//  the parser behind the AEAD (content type, padding, alerts, KeyUpdate) is
//  what gets fuzzed. Input layout: byte 0 picks the suite, then operations:
//
//    op % 5 == 0  sealed record: type byte, length (2 bytes), padding byte,
//                 then that many content bytes from the input
//    op % 5 == 1  raw bytes: length byte, then the bytes, unencrypted
//    op % 5 == 2  the server reads, its buffer size from the next byte
//    op % 5 == 3  the server writes (length byte) and the client reads it
//    op % 5 == 4  the client sends a KeyUpdate (next byte & 1: requested)
//
//  Checks: recv never returns more than asked; while only sealed
//  application data and KeyUpdates were sent, what the server reads is a
//  prefix of what the client sent; what the server writes (KeyUpdates
//  included) always opens on the client; a session that ends stays ended.

#include "wsr_classes.h"
#include <sys/socket.h>

#define S_STREAM_MAX    (256 * 1024)

static uint8_t s_sent [S_STREAM_MAX];   //  application data the client sealed
static uint8_t s_read [S_STREAM_MAX];   //  what the server read
static size_t s_sent_size, s_read_size;
static bool s_exact;                    //  only well-formed input so far

static void
s_server_read (wsr_tlsrec_t *server, int fd, size_t chunk, bool *ended)
{
    uint8_t buf [256];
    for (int i = 0; i < 1000 && !*ended; i++) {
        ssize_t n = wsr_tlsrec_recv (server, fd, buf, chunk);
        if (n > 0) {
            assert ((size_t) n <= chunk);
            if (s_read_size + (size_t) n <= S_STREAM_MAX)
                memcpy (s_read + s_read_size, buf, (size_t) n);
            s_read_size += (size_t) n;
            continue;
        }
        if (n == -1 && errno == EAGAIN)
            return;
        *ended = true;                  //  0 or a fatal error: stays so
        assert (wsr_tlsrec_recv (server, fd, buf, chunk) == n);
    }
}

int
LLVMFuzzerTestOneInput (const uint8_t *data, size_t size)
{
    if (size < 1)
        return 0;
    static const uint16_t suites [3] = { 0x1301, 0x1302, 0x1303 };
    uint16_t suite = suites [data [0] % 3];
    size_t hash = suite == 0x1302? 48: 32;
    uint8_t a [48], b [48];
    memset (a, 0x11, sizeof a);
    memset (b, 0x22, sizeof b);
    wsr_tlsrec_t *server = wsr_tlsrec_new (suite, a, b, hash);
    wsr_tlsrec_t *client = wsr_tlsrec_new (suite, b, a, hash);
    assert (server && client);
    int pair [2];
    assert (socketpair (AF_UNIX, SOCK_STREAM | SOCK_NONBLOCK, 0, pair) == 0);
    s_sent_size = s_read_size = 0;
    s_exact = true;
    bool ended = false;
    static uint8_t record [WSR_TLSREC_RECORD_MAX];
    size_t at = 1;
    while (at < size && !ended) {
        uint8_t op = data [at++] % 5;
        if (op == 0 && at + 4 <= size) {
            uint8_t type = data [at];
            size_t len = (size_t) data [at + 1] << 8 | data [at + 2];
            size_t padding = data [at + 3];
            at += 4;
            if (len > size - at)
                len = size - at;
            int n = wsr_tlsrec_seal (client, type, data + at, len, padding, record,
                                     sizeof record);
            if (n < 0)
                continue;
            at += len;
            bool good = type == 23 && len <= 16384;
            if (good && s_sent_size + len <= S_STREAM_MAX) {
                memcpy (s_sent + s_sent_size, data + at - len, len);
                s_sent_size += len;
            }
            else
                s_exact = false;
            if (write (pair [1], record, (size_t) n) != n)
                break;                  //  socket full: enough
        }
        else
        if (op == 1 && at < size) {
            size_t len = data [at++];
            if (len > size - at)
                len = size - at;
            s_exact = false;
            if (write (pair [1], data + at, len) != (ssize_t) len)
                break;
            at += len;
        }
        else
        if (op == 2 && at < size)
            s_server_read (server, pair [0], (size_t) data [at++] % 256 + 1, &ended);
        else
        if (op == 3 && at < size) {
            size_t len = data [at++];
            uint8_t out [256], in [256];
            memset (out, 'w', len);
            uint32_t retry = 0;
            struct iovec iov = { out, len };
            ssize_t n = wsr_tlsrec_writev (server, pair [0], &iov, 1, &retry);
            if (n < 0)
                continue;               //  the session failed: writes refused
            assert ((size_t) n == len);
            size_t got = 0;
            for (int i = 0; i < 100 && got < len; i++) {
                ssize_t m = wsr_tlsrec_recv (client, pair [1], in + got, len - got);
                //  The client sees our alerts only if the session failed
                assert (m > 0 || (m == -1 && errno == EAGAIN));
                if (m > 0)
                    got += (size_t) m;
            }
            assert (got == len && memcmp (in, out, len) == 0);
        }
        else
        if (op == 4 && at < size) {
            wsr_tlsrec_update (client, data [at++] & 1);
            uint32_t retry = 0;
            if (wsr_tlsrec_writev (client, pair [1], NULL, 0, &retry) != 0)
                break;
        }
    }
    s_server_read (server, pair [0], 256, &ended);
    if (s_exact) {
        //  Well-formed input: every byte read is the client's, in order
        size_t n = s_read_size < S_STREAM_MAX? s_read_size: S_STREAM_MAX;
        assert (s_read_size <= s_sent_size && memcmp (s_read, s_sent, n) == 0);
    }
    if (!ended) {
        uint8_t saved [WSR_TLSREC_SAVED_MAX];
        int n = wsr_tlsrec_save (server, saved, sizeof saved);
        if (n > 0) {
            wsr_tlsrec_t *copy = wsr_tlsrec_load (saved, (size_t) n);
            assert (copy);
            wsr_tlsrec_destroy (&copy);
        }
    }
    wsr_tlsrec_destroy (&server);
    wsr_tlsrec_destroy (&client);
    close (pair [0]);
    close (pair [1]);
    return 0;
}
