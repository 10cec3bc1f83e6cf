//  fuzz_http — libFuzzer harness for wsr_http, the HTTP/1.1 request parser
//
//  Every byte a client sends before its WebSocket upgrade goes through
//  wsr_http, so it is the first thing hostile input meets. The harness feeds
//  one input as a stream of requests, split into chunks whose sizes are also
//  fuzzed (the parser must give the same answer whatever the split), and on
//  each complete request calls every accessor the listener uses, then resets
//  and parses the rest as the next, pipelined request.
//
//  Input layout: byte 0 holds the number of chunk sizes (low 3 bits) and,
//  in bit 3, the stop-at-headers mode the listener uses; that
//  many bytes follow, each a chunk size (0 = everything left); the rest is
//  the byte stream. The sizes are used in turn, cyclically; with none the
//  stream is fed at once.

#include "wsr_classes.h"

//  Upper bound on requests per input, so one input stays cheap
#define S_MAX_REQUESTS  32

//  The body limit of the harness: small inputs stay fast (the API's is larger)
#define S_MAX_BODY      65536

//  Every header name the parser keeps (see wsr_http.h), in two spellings:
//  lookups are case-insensitive, so both must give the same pointer.
static const char *s_kept [][2] = {
    { "host", "HOST" },
    { "upgrade", "Upgrade" },
    { "connection", "Connection" },
    { "sec-websocket-key", "Sec-WebSocket-Key" },
    { "sec-websocket-version", "Sec-WebSocket-Version" },
    { "sec-websocket-protocol", "Sec-WebSocket-Protocol" },
    { "origin", "Origin" },
    { "authorization", "Authorization" },
    { "content-length", "Content-Length" },
    { "content-type", "Content-Type" },
    { "x-forwarded-for", "X-Forwarded-For" }
};

//  Touch every byte of a string the parser lends us, so ASan sees any read
//  past its buffer or of freed memory; the sum only keeps the loop alive.
static size_t
s_touch (const char *text)
{
    size_t sum = 0;
    for (const char *scan = text; *scan; scan++)
        sum += (unsigned char) *scan;
    return sum;
}

//  --------------------------------------------------------------------------
//  An ERROR must carry one of the documented statuses and a static reason.

static void
s_check_error (wsr_http_t *http)
{
    int status = wsr_http_status (http);
    assert (status == 400 || status == 413 || status == 414
        ||  status == 431 || status == 501 || status == 505);
    const char *reason = wsr_http_error (http);
    assert (reason);
    s_touch (reason);
}

//  --------------------------------------------------------------------------
//  A complete request: every accessor, with the contracts wsr_http.h states.

static void
s_check_done (wsr_http_t *http)
{
    assert (wsr_http_status (http) == 0);
    assert (streq (wsr_http_error (http), "ok"));

    //  DONE means the header section is complete: method and path exist
    const char *method = wsr_http_method (http);
    const char *path = wsr_http_path (http);
    assert (method && path);
    s_touch (method);
    s_touch (path);

    char *token = wsr_http_query (http, "token");
    if (token) {
        s_touch (token);
        free (token);
    }
    for (size_t index = 0; index < sizeof s_kept / sizeof s_kept [0]; index++) {
        const char *value = wsr_http_header (http, s_kept [index][0]);
        assert (value == wsr_http_header (http, s_kept [index][1]));
        if (value)
            s_touch (value);
    }
    //  Not a kept header: never stored, so never returned
    assert (wsr_http_header (http, "x-not-kept") == NULL);

    size_t size = 12345;
    const uint8_t *body = wsr_http_body (http, &size);
    if (body) {
        assert (size > 0 && size <= S_MAX_BODY);
        size_t sum = 0;
        for (size_t index = 0; index < size; index++)
            sum += body [index];
        (void) sum;
    }
    else
        assert (size == 0);

    (void) wsr_http_keep_alive (http);
    (void) wsr_http_is_upgrade (http);

    const char *reason = NULL;
    int status = wsr_http_ws_check (http, &reason);
    assert (status == 0 || status == 400 || status == 405 || status == 426 || status == 505);
    assert (reason);
    s_touch (reason);

    //  The listener computes the accept key only for a valid handshake, but
    //  the function takes any string: give it whatever the client sent.
    const char *key = wsr_http_header (http, "sec-websocket-key");
    if (key) {
        char accept [WSR_HTTP_ACCEPT_SIZE];
        memset (accept, 'x', sizeof accept);
        wsr_http_ws_accept (key, accept);
        assert (strlen (accept) == WSR_HTTP_ACCEPT_SIZE - 1);
    }
}

//  --------------------------------------------------------------------------
//  One input: a stream of requests fed in fuzzed chunks.

int
LLVMFuzzerTestOneInput (const uint8_t *data, size_t size)
{
    if (size == 0)
        return 0;
    size_t sizes_count = data [0] & 7;
    if (sizes_count > size - 1)
        sizes_count = size - 1;
    const uint8_t *sizes = data + 1;
    const char *stream = (const char *) data + 1 + sizes_count;
    size_t stream_len = size - 1 - sizes_count;

    wsr_http_t *http = wsr_http_new (WSR_MAX_HEADER_BYTES, S_MAX_BODY);
    assert (http);
    //  Bit 3 of byte 0: stop-at-headers mode, as the listener uses it
    bool stop = (data [0] & 8) != 0;
    wsr_http_set_stop_at_headers (http, stop);
    bool headers_seen = false;
    size_t pos = 0;
    size_t turn = 0;
    int requests = 0;
    while (pos < stream_len && requests < S_MAX_REQUESTS) {
        size_t left = stream_len - pos;
        size_t chunk = left;
        if (sizes_count > 0) {
            size_t wanted = sizes [turn++ % sizes_count];
            if (wanted > 0 && wanted < left)
                chunk = wanted;
        }
        size_t consumed = SIZE_MAX;
        int rc = wsr_http_feed (http, stream + pos, chunk, &consumed);
        assert (consumed <= chunk);
        pos += consumed;
        if (rc == WSR_HTTP_HEADERS) {
            //  Once per request, only in the mode, before any body byte,
            //  and short of the chunk (the final LF is fed again)
            assert (stop && !headers_seen);
            assert (consumed < chunk);
            headers_seen = true;
            assert (wsr_http_method (http) && wsr_http_path (http));
            size_t body_size = 1;
            assert (wsr_http_body (http, &body_size) == NULL && body_size == 0);
            (void) wsr_http_has_body (http);
            continue;
        }
        if (rc == WSR_HTTP_MORE) {
            //  MORE means every byte was taken: the caller keeps nothing back
            assert (consumed == chunk);
            continue;
        }
        if (rc == WSR_HTTP_ERROR) {
            s_check_error (http);
            //  Sticky: a later feed takes nothing
            size_t again = SIZE_MAX;
            assert (wsr_http_feed (http, stream + pos, stream_len - pos, &again)
                    == WSR_HTTP_ERROR);
            assert (again == 0);
            break;
        }
        assert (rc == WSR_HTTP_DONE);
        assert (headers_seen == stop);
        headers_seen = false;
        s_check_done (http);
        size_t again = SIZE_MAX;
        assert (wsr_http_feed (http, stream + pos, stream_len - pos, &again) == WSR_HTTP_DONE);
        assert (again == 0);
        //  Pipelining: what follows is the next request on the connection
        wsr_http_reset (http);
        requests++;
    }
    wsr_http_destroy (&http);
    assert (http == NULL);
    return 0;
}
