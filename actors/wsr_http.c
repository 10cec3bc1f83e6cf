//  wsr_http — bounded incremental HTTP/1.1 request parser (libhttp-parser)
//
//  Parses one request at a time for the listener: the WebSocket opening
//  handshake (GET /ws?token=..., RFC 6455 §4.2.1), the probes (/healthz,
//  /readyz, /metrics) and POST /api/publish with a JSON body. All syntax is
//  left to Debian's libhttp-parser 2.9.4; this class adds what a server facing
//  hostile clients needs on top:
//
//  - Limits. Request line + headers ≤ max_header_bytes (431, or 414 while the
//    request line is still incomplete); body ≤ max_body_bytes (413, at once
//    from the Content-Length, or as chunked data arrives); all bytes of one
//    request, chunked framing included, ≤ 2 × (max_header + max_body) (413).
//    Limits are enforced by never handing the parser more bytes than the
//    budget left, so the outcome is the same for any split of the input.
//  - Memory. One buffer of max_header_bytes, allocated once, holds the URL
//    and the kept header values (stored bytes never exceed the header bytes
//    received). The body is allocated lazily: exactly the Content-Length, or
//    doubling up to max_body_bytes for a chunked body.
//  - Exact framing. The parser is paused when the header section completes
//    (to check limits and version before any body byte) and when the message
//    completes, so *consumed stops right after the request: what follows is
//    the next pipelined request or, after an upgrade, WebSocket frames.
//  - Stop at headers (optional). feed returns HEADERS once per request when
//    the header section is complete, before any body byte is taken, so the
//    listener can refuse a request (wrong API key, unwanted body) without
//    buffering its body; feeding the rest goes on to DONE with the same
//    results and byte counts as without the mode.
//  - Strictness. Only HTTP/1.0 and 1.1 (505). Debian builds the parser with
//    HTTP_PARSER_STRICT=0, so a raw scan of the header bytes adds the checks
//    it skips: obs-fold (400, RFC 7230 §3.2.4) and whitespace in a field name
//    ("Host : x", 400, §3.2.4). A second Host is 400 (§5.4). Both
//    Content-Length and Transfer-Encoding, or a Transfer-Encoding other than
//    chunked, are rejected by the parser (400). Trailer fields are ignored.
//    An unknown method is 501 if it looks like a method token ([A-Z_-] then a
//    space), else 400. Not covered: the non-strict parser does not check the
//    CRLF after each chunk's data (it skips two bytes whatever they are).
//
//  Owns: the parser state, the header buffer and the body buffer. Borrowed
//  results stay valid until wsr_http_reset or wsr_http_destroy.

#include "wsr_classes.h"
#include <http_parser.h>

//  Headers we keep; everything else is parsed, counted and dropped.
typedef enum {
    S_HOST,
    S_UPGRADE,
    S_CONNECTION,
    S_WS_KEY,
    S_WS_VERSION,
    S_WS_PROTOCOL,
    S_ORIGIN,
    S_AUTHORIZATION,
    S_CONTENT_LENGTH,
    S_CONTENT_TYPE,
    S_FORWARDED_FOR,
    S_WS_EXTENSIONS,
    S_KEPT                          //  number of kept headers
} s_kept_t;

static const char *s_kept_names [S_KEPT] = {
    "host", "upgrade", "connection", "sec-websocket-key", "sec-websocket-version",
    "sec-websocket-protocol", "origin", "authorization", "content-length",
    "content-type", "x-forwarded-for", "sec-websocket-extensions"
};

//  Which callback the parser called last in the header section
typedef enum {
    S_LAST_NONE,
    S_LAST_FIELD,
    S_LAST_VALUE
} s_last_t;

//  A kept header's value in the header buffer. During parsing the value that
//  is receiving bytes is always last in the buffer; every value is followed by
//  one reserved byte that becomes its NUL when the header section completes.
typedef struct {
    size_t off;                     //  offset of the value in buf
    size_t len;                     //  value bytes, without the NUL
    bool present;                   //  header seen at least once
} s_value_t;

struct _wsr_http_t {
    http_parser parser;             //  libhttp-parser state; data points to self
    size_t max_header;              //  limit on request line + headers, bytes
    size_t max_body;                //  limit on the (decoded) body, bytes
    size_t max_total;               //  limit on all bytes of one request
    int result;                     //  MORE, DONE or ERROR; sticky until reset
    int status;                     //  HTTP status to answer on ERROR, else 0
    const char *reason;             //  static reason of the error, or NULL
    bool sniffing;                  //  parser rejected the method: 501 or 400?
    size_t method_len;              //  bytes of the method seen (capped)
    bool line_started;              //  a byte other than leading CR/LF was seen
    bool line_done;                 //  request line complete (its LF seen)
    bool after_lf;                  //  last header byte was LF (obs-fold check)
    bool in_name;                   //  scan is inside a header field name
    size_t header_bytes;            //  bytes of the header section so far
    size_t total_bytes;             //  bytes of this request consumed so far
    char *buf;                      //  URL and kept values, max_header bytes
    size_t used;                    //  bytes of buf in use
    size_t url_len;                 //  URL bytes at the start of buf
    bool url_done;                  //  URL complete, values may follow it
    s_last_t last;                  //  last header callback
    char name [WSR_HTTP_MAX_NAME];  //  header name being received
    size_t name_len;                //  bytes in name
    bool name_long;                 //  name longer than name: not a kept one
    int cur;                        //  kept header receiving bytes, or -1
    size_t occ_start;               //  where its current occurrence starts (in value)
    bool occ_joined;                //  current occurrence follows a ", "
    s_value_t values [S_KEPT];      //  kept headers
    bool headers_done;              //  header section complete, values final
    bool message_done;              //  request complete, parser paused
    const char *path;               //  NUL-terminated path in buf, or ""
    bool has_query;                 //  URL has a query component
    size_t query_off;               //  query offset in buf (after '?')
    size_t query_len;               //  query bytes
    bool upgrade;                   //  parser's upgrade flag at headers complete
    bool keep_alive;                //  http_should_keep_alive at message complete
    bool has_length;                //  request has a Content-Length
    size_t content_length;          //  its value (≤ max_body)
    uint8_t *body;                  //  body bytes, allocated lazily
    bool stop_at_headers;           //  report HEADERS before taking any body byte
    bool headers_reported;          //  HEADERS returned for this request
    size_t body_len;                //  body bytes received
    size_t body_cap;                //  body bytes allocated
};

//  Sum that saturates instead of wrapping, for limits given as SIZE_MAX.
static size_t
s_add (size_t a, size_t b)
{
    return a > SIZE_MAX - b? SIZE_MAX: a + b;
}

//  --------------------------------------------------------------------------
//  Create a parser. Returns NULL only if out of memory.
wsr_http_t *
wsr_http_new (size_t max_header_bytes, size_t max_body_bytes)
{
    assert (max_header_bytes > 0);
    wsr_http_t *self = (wsr_http_t *) zmalloc (sizeof (wsr_http_t));
    if (self) {
        self->max_header = max_header_bytes;
        self->max_body = max_body_bytes;
        //  Chunked framing may cost as much again as the payload, no more
        size_t payload = s_add (max_header_bytes, max_body_bytes);
        self->max_total = s_add (payload, payload);
        self->buf = (char *) zmalloc (max_header_bytes);
        if (!self->buf)
            wsr_http_destroy (&self);
        else
            wsr_http_reset (self);
    }
    return self;
}

//  --------------------------------------------------------------------------
//  Destroy the parser; safe on NULL and on an already-destroyed reference.
void
wsr_http_destroy (wsr_http_t **self_p)
{
    assert (self_p);
    if (*self_p) {
        wsr_http_t *self = *self_p;
        free (self->body);
        free (self->buf);
        free (self);
        *self_p = NULL;
    }
}

//  --------------------------------------------------------------------------
//  Forget the request. The header buffer is kept for the next one; the body
//  is freed so that an idle keep-alive connection holds no large buffer.
void
wsr_http_reset (wsr_http_t *self)
{
    assert (self);
    http_parser_init (&self->parser, HTTP_REQUEST);
    self->parser.data = self;
    self->result = WSR_HTTP_MORE;
    self->status = 0;
    self->reason = NULL;
    self->sniffing = false;
    self->method_len = 0;
    self->line_started = false;
    self->line_done = false;
    self->after_lf = false;
    self->in_name = false;
    self->header_bytes = 0;
    self->total_bytes = 0;
    self->used = 0;
    self->url_len = 0;
    self->url_done = false;
    self->last = S_LAST_NONE;
    self->name_len = 0;
    self->name_long = false;
    self->cur = -1;
    self->occ_start = 0;
    self->occ_joined = false;
    memset (self->values, 0, sizeof (self->values));
    self->headers_done = false;
    self->message_done = false;
    self->path = NULL;
    self->has_query = false;
    self->query_off = 0;
    self->query_len = 0;
    self->upgrade = false;
    self->headers_reported = false;
    self->keep_alive = false;
    self->has_length = false;
    self->content_length = 0;
    free (self->body);
    self->body = NULL;
    self->body_len = 0;
    self->body_cap = 0;
}

//  --------------------------------------------------------------------------
//  Record the first error (later ones are consequences). Returns -1 so that
//  parser callbacks can return it and stop the parser.
static int
s_fail (wsr_http_t *self, int status, const char *reason)
{
    if (self->result != WSR_HTTP_ERROR) {
        self->result = WSR_HTTP_ERROR;
        self->status = status;
        self->reason = reason;
    }
    return -1;
}

//  True if n more bytes fit in the header buffer.
static bool
s_fits (wsr_http_t *self, size_t n)
{
    return n <= self->max_header - self->used;
}

//  The URL is complete once anything after it shows up; reserve one byte
//  after it for the path's NUL.
static void
s_url_done (wsr_http_t *self)
{
    if (!self->url_done) {
        self->url_done = true;
        self->used = self->url_len + 1;     //  s_on_url kept room for it
    }
}

static int
s_on_url (http_parser *parser, const char *at, size_t length)
{
    wsr_http_t *self = (wsr_http_t *) parser->data;
    if (length >= self->max_header - self->url_len)
        return s_fail (self, 414, "request target too long");
    memcpy (self->buf + self->url_len, at, length);
    self->url_len += length;
    return 0;
}

//  Index of a kept header name (any case), or -1.
static int
s_kept_index (const char *name, size_t len)
{
    for (int index = 0; index < S_KEPT; index++)
        if (strlen (s_kept_names [index]) == len
        &&  strncasecmp (s_kept_names [index], name, len) == 0)
            return index;
    return -1;
}

static void
s_reverse (char *buf, size_t from, size_t to)
{
    while (from + 1 < to) {
        char swap = buf [from];
        buf [from++] = buf [to - 1];
        buf [--to] = swap;
    }
}

//  A repeated header must grow at the end of the buffer: rotate its value
//  (and reserved byte) behind the values that came after it. In place, O(used),
//  at most once per interleaved repetition.
static void
s_value_to_end (wsr_http_t *self, int index)
{
    s_value_t *value = &self->values [index];
    size_t size = value->len + 1;
    size_t end = value->off + size;
    if (end == self->used)
        return;
    s_reverse (self->buf, value->off, end);
    s_reverse (self->buf, end, self->used);
    s_reverse (self->buf, value->off, self->used);
    for (int other = 0; other < S_KEPT; other++)
        if (self->values [other].present && self->values [other].off > value->off)
            self->values [other].off -= size;
    value->off = self->used - size;
}

//  A kept header's value starts: a new value, or ", " after the previous one.
static int
s_value_begin (wsr_http_t *self, int index)
{
    s_value_t *value = &self->values [index];
    if (value->present) {
        if (index == S_HOST)
            return s_fail (self, 400, "duplicate Host header");
        s_value_to_end (self, index);
        if (!s_fits (self, 2))
            return s_fail (self, 431, "header section too large");
        memcpy (self->buf + value->off + value->len, ", ", 2);
        value->len += 2;
        self->used += 2;
        self->occ_joined = true;
    }
    else {
        if (!s_fits (self, 1))
            return s_fail (self, 431, "header section too large");
        value->off = self->used;
        value->len = 0;
        value->present = true;
        self->used += 1;
        self->occ_joined = false;
    }
    self->occ_start = value->len;
    self->cur = index;
    return 0;
}

static int
s_value_append (wsr_http_t *self, const char *at, size_t length)
{
    s_value_t *value = &self->values [self->cur];
    if (!s_fits (self, length))
        return s_fail (self, 431, "header section too large");
    memcpy (self->buf + value->off + value->len, at, length);
    value->len += length;
    self->used += length;
    return 0;
}

//  The current occurrence ends: drop trailing OWS (not part of the value),
//  and drop an empty list element with its ", ".
static void
s_value_end (wsr_http_t *self)
{
    if (self->cur < 0)
        return;
    s_value_t *value = &self->values [self->cur];
    size_t len = value->len;
    while (len > self->occ_start
       && (self->buf [value->off + len - 1] == ' ' || self->buf [value->off + len - 1] == '\t'))
        len--;
    if (len == self->occ_start && self->occ_joined)
        len -= 2;
    self->used -= value->len - len;
    value->len = len;
    self->cur = -1;
}

//  Field names and values may arrive in any number of pieces; a field
//  callback after a value callback starts a new header line.
static int
s_on_header_field (http_parser *parser, const char *at, size_t length)
{
    wsr_http_t *self = (wsr_http_t *) parser->data;
    if (self->headers_done)
        return 0;                   //  chunked trailer: ignored
    s_url_done (self);
    if (self->last != S_LAST_FIELD) {
        s_value_end (self);
        self->name_len = 0;
        self->name_long = false;
        self->last = S_LAST_FIELD;
    }
    if (!self->name_long) {
        if (length > sizeof (self->name) - self->name_len)
            self->name_long = true;
        else {
            memcpy (self->name + self->name_len, at, length);
            self->name_len += length;
        }
    }
    return 0;
}

static int
s_on_header_value (http_parser *parser, const char *at, size_t length)
{
    wsr_http_t *self = (wsr_http_t *) parser->data;
    if (self->headers_done)
        return 0;                   //  chunked trailer: ignored
    if (self->last != S_LAST_VALUE) {
        self->last = S_LAST_VALUE;
        int index = self->name_long? -1: s_kept_index (self->name, self->name_len);
        if (index >= 0 && s_value_begin (self, index))
            return -1;
    }
    if (self->cur >= 0 && s_value_append (self, at, length))
        return -1;
    return 0;
}

//  Header section complete: finish the values, split the URL, check version
//  and Content-Length before any body byte, then pause so feed knows exactly
//  where the header section ended.
static int
s_on_headers_complete (http_parser *parser)
{
    wsr_http_t *self = (wsr_http_t *) parser->data;
    s_url_done (self);
    s_value_end (self);
    for (int index = 0; index < S_KEPT; index++)
        if (self->values [index].present)
            self->buf [self->values [index].off + self->values [index].len] = '\0';
    self->headers_done = true;
    self->upgrade = parser->upgrade != 0;
    self->path = "";

    //  http_parser_url offsets are 16 bits
    if (self->url_len > UINT16_MAX)
        return s_fail (self, 414, "request target too long");
    struct http_parser_url url;
    http_parser_url_init (&url);
    if (http_parser_parse_url (self->buf, self->url_len, parser->method == HTTP_CONNECT, &url))
        return s_fail (self, 400, "invalid request target");
    if (url.field_set & (1 << UF_PATH)) {
        size_t end = url.field_data [UF_PATH].off + url.field_data [UF_PATH].len;
        self->buf [end] = '\0';     //  over '?', '#' or the reserved byte
        self->path = self->buf + url.field_data [UF_PATH].off;
    }
    if (url.field_set & (1 << UF_QUERY)) {
        self->has_query = true;
        self->query_off = url.field_data [UF_QUERY].off;
        self->query_len = url.field_data [UF_QUERY].len;
    }
    if (parser->http_major != 1 || parser->http_minor > 1)
        return s_fail (self, 505, "HTTP version not supported");
    if (parser->flags & F_CONTENTLENGTH) {
        if (parser->content_length > self->max_body)
            return s_fail (self, 413, "body too large");
        self->has_length = true;
        self->content_length = (size_t) parser->content_length;
    }
    http_parser_pause (parser, 1);
    return 0;
}

//  Body bytes (chunked framing already removed by the parser).
static int
s_on_body (http_parser *parser, const char *at, size_t length)
{
    wsr_http_t *self = (wsr_http_t *) parser->data;
    if (length > self->max_body - self->body_len)
        return s_fail (self, 413, "body too large");
    size_t needed = self->body_len + length;
    if (needed > self->body_cap) {
        size_t want = self->has_length? self->content_length:
                      self->body_cap? s_add (self->body_cap, self->body_cap): WSR_HTTP_BODY_MIN;
        if (want < needed)
            want = needed;
        if (want > self->max_body)
            want = self->max_body;
        uint8_t *body = (uint8_t *) realloc (self->body, want);
        assert (body);              //  out of memory is fatal
        self->body = body;
        self->body_cap = want;
    }
    memcpy (self->body + self->body_len, at, length);
    self->body_len += length;
    return 0;
}

//  Pause so that the bytes after this request stay with the caller.
static int
s_on_message_complete (http_parser *parser)
{
    wsr_http_t *self = (wsr_http_t *) parser->data;
    self->keep_alive = http_should_keep_alive (parser) != 0;
    self->message_done = true;
    http_parser_pause (parser, 1);
    return 0;
}

static const http_parser_settings s_settings = {
    .on_url = s_on_url,
    .on_header_field = s_on_header_field,
    .on_header_value = s_on_header_value,
    .on_headers_complete = s_on_headers_complete,
    .on_body = s_on_body,
    .on_message_complete = s_on_message_complete
};

//  Look at the raw bytes of the header section as the parser takes them:
//  where the request line ends (414 or 431), how long the method is (501 or
//  400), and what Debian's non-strict parser lets through: obs-fold, which it
//  would glue to the previous value, and whitespace in a field name ("Host :"),
//  which RFC 7230 §3.2.4 says to reject. Only bytes the parser accepted are
//  scanned, so problems are reported in stream order whatever the split.
//  Returns NULL, or the reason to reject the request.
static const char *
s_scan_head (wsr_http_t *self, const char *data, size_t len)
{
    for (size_t index = 0; index < len; index++) {
        char c = data [index];
        if (self->after_lf && (c == ' ' || c == '\t'))
            return "obsolete line folding";
        if (self->in_name) {
            if (c == ':')
                self->in_name = false;
            else
            if (c == ' ' || c == '\t')
                return "whitespace in header name";
        }
        self->after_lf = c == '\n';
        if (!self->line_started) {
            if (c == '\r' || c == '\n')
                continue;           //  the parser skips empty lines first
            self->line_started = true;
        }
        if (c == '\n') {
            self->line_done = true;
            self->in_name = true;   //  a field name or the final empty line
        }
        else
        if (self->method_len <= WSR_HTTP_MAX_METHOD)
            self->method_len++;
    }
    return NULL;
}

//  The parser stopped at a method it does not know. Read on until the token
//  ends: a method-like token followed by a space is 501, anything else 400.
//  The bytes before this one were a prefix of a known method.
static size_t
s_sniff (wsr_http_t *self, const char *data, size_t len)
{
    for (size_t index = 0; index < len; index++) {
        char c = data [index];
        if (c == ' ' && self->method_len > 0) {
            s_fail (self, 501, "method not implemented");
            return index + 1;
        }
        if (!((c >= 'A' && c <= 'Z') || c == '-' || c == '_')
        ||  self->method_len >= WSR_HTTP_MAX_METHOD) {
            s_fail (self, 400, "invalid method");
            return index + 1;
        }
        self->method_len++;
    }
    return len;
}

static void
s_parser_error (wsr_http_t *self, enum http_errno err)
{
    if (err == HPE_INVALID_METHOD)
        self->sniffing = true;
    else
    if (err == HPE_HEADER_OVERFLOW)
        s_fail (self, 431, "header section too large");
    else
        s_fail (self, 400, http_errno_description (err));
}

//  --------------------------------------------------------------------------
//  Feed bytes. The parser never sees more than the budget left (header
//  section, then whole request), so every limit trips at the same byte
//  whatever the split, and a full budget without completion is an error.
int
wsr_http_feed (wsr_http_t *self, const char *data, size_t len, size_t *consumed)
{
    assert (self);
    assert (consumed);
    assert (data || len == 0);
    size_t used = 0;
    while (self->result == WSR_HTTP_MORE && used < len) {
        if (self->sniffing) {
            used += s_sniff (self, data + used, len - used);
            continue;
        }
        const char *chunk = data + used;
        bool in_head = !self->headers_done;
        size_t room = in_head? self->max_header - self->header_bytes
                             : self->max_total - self->total_bytes;
        size_t size = len - used < room? len - used: room;
        assert (size > 0);
        size_t taken = http_parser_execute (&self->parser, &s_settings, chunk, size);
        enum http_errno err = HTTP_PARSER_ERRNO (&self->parser);
        if (in_head) {
            //  Paused at headers complete, the parser stands on the final LF
            //  and takes it again when resumed: it is a header byte.
            size_t scanned = err == HPE_PAUSED? taken + 1: taken;
            const char *reason = s_scan_head (self, chunk, scanned);
            if (reason) {
                //  Earlier in the stream than any error the parser or a
                //  callback found further on: report it whatever the split
                self->result = WSR_HTTP_ERROR;
                self->status = 400;
                self->reason = reason;
                used += taken;
                break;
            }
            self->header_bytes += scanned;
        }
        used += taken;
        self->total_bytes += taken;
        if (self->result == WSR_HTTP_ERROR)
            ;                       //  a callback failed
        else
        if (err == HPE_PAUSED) {
            if (self->message_done)
                self->result = WSR_HTTP_DONE;
            else {
                http_parser_pause (&self->parser, 0);
                if (self->stop_at_headers && !self->headers_reported) {
                    //  Paused at headers complete: the caller judges now
                    self->headers_reported = true;
                    *consumed = used;
                    return WSR_HTTP_HEADERS;
                }
            }
        }
        else
        if (err != HPE_OK)
            s_parser_error (self, err);
        else
        if (taken < size) {
            //  Only an upgrade stops the parser early without a callback
            if (self->headers_done && self->parser.upgrade)
                self->result = WSR_HTTP_DONE;
            else
                s_fail (self, 400, "parser stopped");
        }
        else
        if (in_head && self->header_bytes == self->max_header)
            s_fail (self, self->line_done? 431: 414, self->line_done?
                    "header section too large": "request target too long");
        else
        if (!in_head && self->total_bytes == self->max_total)
            s_fail (self, 413, "request too large");
    }
    *consumed = used;
    return self->result;
}

//  --------------------------------------------------------------------------
//  Stop-at-headers mode on or off.
void
wsr_http_set_stop_at_headers (wsr_http_t *self, bool stop)
{
    assert (self);
    self->stop_at_headers = stop;
}

//  --------------------------------------------------------------------------
//  True if the request announces a body.
bool
wsr_http_has_body (wsr_http_t *self)
{
    assert (self);
    if (!self->headers_done)
        return false;
    return (self->parser.flags & F_CHUNKED) || (self->has_length && self->content_length > 0);
}

//  --------------------------------------------------------------------------
//  HTTP status to answer on ERROR, else 0.
int
wsr_http_status (wsr_http_t *self)
{
    assert (self);
    return self->result == WSR_HTTP_ERROR? self->status: 0;
}

//  --------------------------------------------------------------------------
//  Static reason of the error, "ok" if none.
const char *
wsr_http_error (wsr_http_t *self)
{
    assert (self);
    return self->result == WSR_HTTP_ERROR? self->reason: "ok";
}

//  --------------------------------------------------------------------------
//  Method name (static), NULL before the header section is complete.
const char *
wsr_http_method (wsr_http_t *self)
{
    assert (self);
    return self->headers_done? http_method_str ((enum http_method) self->parser.method): NULL;
}

//  --------------------------------------------------------------------------
//  Path, not decoded; borrowed. NULL before the header section is complete.
const char *
wsr_http_path (wsr_http_t *self)
{
    assert (self);
    return self->headers_done? self->path: NULL;
}

static int
s_hex_value (char c)
{
    if (c >= '0' && c <= '9')
        return c - '0';
    if (c >= 'a' && c <= 'f')
        return c - 'a' + 10;
    if (c >= 'A' && c <= 'F')
        return c - 'A' + 10;
    return -1;
}

//  Decode the character at *index of a query component and advance. Returns
//  it (1..255), or -1 for an invalid escape or a NUL.
static int
s_decode_char (const char *data, size_t len, size_t *index)
{
    size_t at = *index;
    int c = (unsigned char) data [at];
    if (c == '+') {
        c = ' ';
        at++;
    }
    else
    if (c == '%') {
        if (len - at < 3)
            return -1;
        int high = s_hex_value (data [at + 1]);
        int low = s_hex_value (data [at + 2]);
        if (high < 0 || low < 0)
            return -1;
        c = high * 16 + low;
        at += 3;
    }
    else
        at++;
    if (c == 0)
        return -1;
    *index = at;
    return c;
}

//  True if the encoded key decodes to exactly name.
static bool
s_key_matches (const char *key, size_t len, const char *name)
{
    size_t index = 0;
    size_t matched = 0;
    while (index < len) {
        int c = s_decode_char (key, len, &index);
        if (c < 0 || name [matched] == '\0' || (unsigned char) name [matched] != c)
            return false;
        matched++;
    }
    return name [matched] == '\0';
}

//  Decoded copy of a query value, NULL if malformed. Decoding only shrinks.
static char *
s_decode (const char *data, size_t len)
{
    char *decoded = (char *) malloc (len + 1);
    assert (decoded);
    size_t index = 0;
    size_t size = 0;
    while (index < len) {
        int c = s_decode_char (data, len, &index);
        if (c < 0) {
            free (decoded);
            return NULL;
        }
        decoded [size++] = (char) c;
    }
    decoded [size] = '\0';
    return decoded;
}

//  --------------------------------------------------------------------------
//  Query parameter, decoded; the first occurrence wins. Caller frees.
char *
wsr_http_query (wsr_http_t *self, const char *name)
{
    assert (self);
    assert (name);
    if (!self->headers_done || !self->has_query)
        return NULL;
    const char *pair = self->buf + self->query_off;
    const char *end = pair + self->query_len;
    while (pair < end) {
        const char *amp = (const char *) memchr (pair, '&', end - pair);
        const char *pair_end = amp? amp: end;
        const char *equals = (const char *) memchr (pair, '=', pair_end - pair);
        const char *key_end = equals? equals: pair_end;
        if (s_key_matches (pair, key_end - pair, name)) {
            const char *value = equals? equals + 1: pair_end;
            return s_decode (value, pair_end - value);
        }
        if (!amp)
            break;
        pair = amp + 1;
    }
    return NULL;
}

//  --------------------------------------------------------------------------
//  Kept header by name, any case; borrowed. NULL if absent or not kept.
const char *
wsr_http_header (wsr_http_t *self, const char *name)
{
    assert (self);
    assert (name);
    if (!self->headers_done)
        return NULL;
    int index = s_kept_index (name, strlen (name));
    if (index < 0 || !self->values [index].present)
        return NULL;
    return self->buf + self->values [index].off;
}

//  --------------------------------------------------------------------------
//  Body and its size; borrowed. NULL and 0 if there is none.
const uint8_t *
wsr_http_body (wsr_http_t *self, size_t *size)
{
    assert (self);
    assert (size);
    *size = self->body_len;
    return self->body_len? self->body: NULL;
}

//  --------------------------------------------------------------------------
//  True if the connection may carry another request.
bool
wsr_http_keep_alive (wsr_http_t *self)
{
    assert (self);
    return self->keep_alive;
}

//  --------------------------------------------------------------------------
//  True if the parser saw an upgrade request.
bool
wsr_http_is_upgrade (wsr_http_t *self)
{
    assert (self);
    return self->upgrade;
}

//  True if token is in a comma-separated list (RFC 7230 #rule), any case.
static bool
s_has_token (const char *list, const char *token)
{
    size_t token_len = strlen (token);
    const char *scan = list;
    while (*scan) {
        while (*scan == ' ' || *scan == '\t' || *scan == ',')
            scan++;
        const char *start = scan;
        while (*scan && *scan != ',')
            scan++;
        const char *end = scan;
        while (end > start && (end [-1] == ' ' || end [-1] == '\t'))
            end--;
        if ((size_t) (end - start) == token_len && strncasecmp (start, token, token_len) == 0)
            return true;
    }
    return false;
}

//  RFC 6455 §4.1: the key is the base64 of 16 random bytes.
#define S_WS_KEY_BYTES  16
#define S_WS_KEY_CHARS  24

//  True if key is the canonical padded base64 of exactly 16 bytes (libsodium
//  also rejects non-zero bits after the last byte).
static bool
s_key_valid (const char *key)
{
    size_t len = strlen (key);
    if (len != S_WS_KEY_CHARS)
        return false;
    unsigned char bin [S_WS_KEY_BYTES];
    size_t bin_len = 0;
    const char *end = NULL;
    if (sodium_base642bin (bin, sizeof (bin), key, len, NULL, &bin_len, &end,
                           sodium_base64_VARIANT_ORIGINAL) != 0)
        return false;
    return bin_len == S_WS_KEY_BYTES && end == key + len;
}

//  --------------------------------------------------------------------------
//  Validate a WebSocket opening handshake. 0 if valid, else the status.
int
wsr_http_ws_check (wsr_http_t *self, const char **reason)
{
    assert (self);
    assert (self->headers_done);
    int status = 0;
    const char *why = "ok";
    const char *upgrade = wsr_http_header (self, "upgrade");
    const char *connection = wsr_http_header (self, "connection");
    const char *version = wsr_http_header (self, "sec-websocket-version");
    const char *key = wsr_http_header (self, "sec-websocket-key");
    if (self->parser.method != HTTP_GET) {
        status = 405;
        why = "WebSocket handshake must be GET";
    }
    else
    if (self->parser.http_major != 1) {
        status = 505;
        why = "HTTP version not supported";
    }
    else
    if (self->parser.http_minor < 1) {
        status = 400;
        why = "WebSocket needs HTTP/1.1";
    }
    else
    if (!wsr_http_header (self, "host")) {
        status = 400;
        why = "missing Host";
    }
    else
    if (!upgrade || !s_has_token (upgrade, "websocket")) {
        status = 400;
        why = "Upgrade lacks websocket";
    }
    else
    if (!connection || !s_has_token (connection, "upgrade")) {
        status = 400;
        why = "Connection lacks upgrade";
    }
    else
    if (!version || !streq (version, "13")) {
        status = 426;
        why = "unsupported Sec-WebSocket-Version";
    }
    else
    if (!key || !s_key_valid (key)) {
        status = 400;
        why = "invalid Sec-WebSocket-Key";
    }
    if (reason)
        *reason = why;
    return status;
}

//  RFC 6455 §1.3
static const char *s_ws_guid = "258EAFA5-E914-47DA-95CA-C5AB0DC85B11";

//  --------------------------------------------------------------------------
//  Sec-WebSocket-Accept for a key; out holds WSR_HTTP_ACCEPT_SIZE bytes.
void
wsr_http_ws_accept (const char *key, char *out)
{
    assert (key);
    assert (out);
    zdigest_t *digest = zdigest_new ();
    assert (digest);
    zdigest_update (digest, (const byte *) key, strlen (key));
    zdigest_update (digest, (const byte *) s_ws_guid, strlen (s_ws_guid));
    assert (sodium_base64_ENCODED_LEN (zdigest_size (digest), sodium_base64_VARIANT_ORIGINAL)
            == WSR_HTTP_ACCEPT_SIZE);
    char *encoded = sodium_bin2base64 (out, WSR_HTTP_ACCEPT_SIZE,
                                       zdigest_data (digest), zdigest_size (digest),
                                       sodium_base64_VARIANT_ORIGINAL);
    assert (encoded == out);
    zdigest_destroy (&digest);
}

//  --------------------------------------------------------------------------
//  Selftest

//  RFC 6455 §1.3 sample handshake
static const char *s_sample =
    "GET /chat HTTP/1.1\r\n"
    "Host: server.example.com\r\n"
    "Upgrade: websocket\r\n"
    "Connection: Upgrade\r\n"
    "Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n"
    "Origin: http://example.com\r\n"
    "Sec-WebSocket-Protocol: chat, superchat\r\n"
    "Sec-WebSocket-Version: 13\r\n"
    "\r\n";

//  Checks on a parsed request; consumed is what feed reported in total.
typedef void (s_verify_fn) (wsr_http_t *http, size_t consumed);

//  Feed data[0..split) then the rest.
static int
s_feed_split (wsr_http_t *http, const char *data, size_t len, size_t split, size_t *consumed)
{
    size_t used = 0;
    int rc = wsr_http_feed (http, data, split, &used);
    if (rc == WSR_HTTP_MORE) {
        assert (used == split);
        size_t more = 0;
        rc = wsr_http_feed (http, data + split, len - split, &more);
        used += more;
    }
    *consumed = used;
    return rc;
}

//  Feed one byte at a time.
static int
s_feed_bytes (wsr_http_t *http, const char *data, size_t len, size_t *consumed)
{
    size_t used = 0;
    int rc = WSR_HTTP_MORE;
    for (size_t index = 0; index < len && rc == WSR_HTTP_MORE; index++) {
        size_t one = 0;
        rc = wsr_http_feed (http, data + index, 1, &one);
        assert (one <= 1);
        if (rc == WSR_HTTP_MORE)
            assert (one == 1);
        used += one;
    }
    *consumed = used;
    return rc;
}

//  Stop-at-headers mode: feed data[0..split) then the rest (split == 0: byte
//  by byte), going on after HEADERS. HEADERS must come at most once, before
//  any body byte is buffered, with method and path known; *headers counts it.
static int
s_feed_stop (wsr_http_t *http, const char *data, size_t len, size_t split,
             size_t *consumed, int *headers)
{
    size_t used = 0;
    int rc = WSR_HTTP_MORE;
    *headers = 0;
    while (used < len) {
        size_t end = split == 0? used + 1: used < split? split: len;
        size_t taken = 0;
        rc = wsr_http_feed (http, data + used, end - used, &taken);
        used += taken;
        if (rc == WSR_HTTP_HEADERS) {
            (*headers)++;
            assert (*headers == 1);
            assert (taken < end - used + taken);    //  the final LF is still ours
            assert (wsr_http_method (http) && wsr_http_path (http));
            size_t size = 1;
            assert (wsr_http_body (http, &size) == NULL && size == 0);
            continue;
        }
        if (rc != WSR_HTTP_MORE)
            break;
        assert (used == end);
    }
    *consumed = used;
    return rc;
}

//  Parse data whole, split at every position and byte by byte with one
//  parser (reset in between): the result, status, reason and consumed must
//  be the same every time, and verify (if any) must pass every time. The
//  same again in stop-at-headers mode, which must report HEADERS exactly
//  once for every request whose header section is complete.
static void
s_check_splits (size_t max_header, size_t max_body, const char *data, size_t len,
                int expect_rc, int expect_status, s_verify_fn *verify)
{
    wsr_http_t *http = wsr_http_new (max_header, max_body);
    assert (http);
    size_t whole = 0;
    int rc = wsr_http_feed (http, data, len, &whole);
    assert (rc == expect_rc);
    assert (wsr_http_status (http) == expect_status);
    if (rc == WSR_HTTP_MORE)
        assert (whole == len);
    const char *reason = wsr_http_error (http);
    if (verify)
        verify (http, whole);

    for (size_t split = 0; split <= len; split++) {
        wsr_http_reset (http);
        size_t consumed = 0;
        rc = s_feed_split (http, data, len, split, &consumed);
        assert (rc == expect_rc);
        assert (wsr_http_status (http) == expect_status);
        assert (streq (wsr_http_error (http), reason));
        if (rc != WSR_HTTP_ERROR)
            assert (consumed == whole);
        if (verify)
            verify (http, consumed);
    }
    wsr_http_reset (http);
    size_t consumed = 0;
    rc = s_feed_bytes (http, data, len, &consumed);
    assert (rc == expect_rc);
    assert (wsr_http_status (http) == expect_status);
    assert (streq (wsr_http_error (http), reason));
    if (rc != WSR_HTTP_ERROR)
        assert (consumed == whole);
    if (verify)
        verify (http, consumed);

    wsr_http_set_stop_at_headers (http, true);
    for (size_t split = 0; split <= len; split++) {
        wsr_http_reset (http);
        int headers = 0;
        consumed = 0;
        rc = s_feed_stop (http, data, len, split, &consumed, &headers);
        assert (rc == expect_rc);
        assert (wsr_http_status (http) == expect_status);
        assert (streq (wsr_http_error (http), reason));
        if (rc == WSR_HTTP_DONE)
            assert (headers == 1);
        if (rc != WSR_HTTP_ERROR)
            assert (consumed == whole);
        if (verify && rc == WSR_HTTP_DONE)
            verify (http, consumed);
    }
    wsr_http_destroy (&http);
}

static void
s_check_string (const char *data, int expect_rc, int expect_status, s_verify_fn *verify)
{
    s_check_splits (WSR_MAX_HEADER_BYTES, WSR_MAX_API_BODY,
                    data, strlen (data), expect_rc, expect_status, verify);
}

//  The same with the small limits of the limit tests: 256 header, 64 body bytes.
static void
s_check_small (const char *data, int expect_rc, int expect_status)
{
    s_check_splits (256, 64, data, strlen (data), expect_rc, expect_status, NULL);
}

static void
s_verify_sample (wsr_http_t *http, size_t consumed)
{
    assert (consumed == strlen (s_sample));
    assert (streq (wsr_http_method (http), "GET"));
    assert (streq (wsr_http_path (http), "/chat"));
    assert (wsr_http_query (http, "token") == NULL);
    assert (streq (wsr_http_header (http, "Host"), "server.example.com"));
    assert (streq (wsr_http_header (http, "HOST"), "server.example.com"));
    assert (streq (wsr_http_header (http, "upgrade"), "websocket"));
    assert (streq (wsr_http_header (http, "Connection"), "Upgrade"));
    assert (streq (wsr_http_header (http, "Sec-WebSocket-Key"), "dGhlIHNhbXBsZSBub25jZQ=="));
    assert (streq (wsr_http_header (http, "origin"), "http://example.com"));
    assert (streq (wsr_http_header (http, "sec-websocket-protocol"), "chat, superchat"));
    assert (wsr_http_header (http, "sec-websocket-extensions") == NULL);
    assert (streq (wsr_http_header (http, "Sec-WebSocket-Version"), "13"));
    assert (wsr_http_header (http, "Authorization") == NULL);
    assert (wsr_http_header (http, "X-Unknown") == NULL);
    assert (wsr_http_is_upgrade (http));
    assert (wsr_http_keep_alive (http));
    size_t size = 1;
    assert (wsr_http_body (http, &size) == NULL);
    assert (size == 0);
    const char *reason = NULL;
    assert (wsr_http_ws_check (http, &reason) == 0);
    assert (streq (reason, "ok"));
    char accept [WSR_HTTP_ACCEPT_SIZE];
    wsr_http_ws_accept (wsr_http_header (http, "sec-websocket-key"), accept);
    assert (streq (accept, "s3pPLMBiTxaQ9kYGzzhZRbK+xOo="));
}

static const char *s_query_request =
    "GET /ws?token=a%2Eb&x=1&token=second&empty=&flag&plus=a+b%20c&bad=%ZZ"
    "&nul=%00x&cut=%4&low=%2e%2F&k%65y=v HTTP/1.1\r\n"
    "host: h.example\r\n"
    "Upgrade: websocket\r\n"
    "Connection: keep-alive, Upgrade\r\n"
    "Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n"
    "Sec-WebSocket-Version: 13\r\n"
    "Authorization: Bearer abc.def.ghi\r\n"
    "\r\n";

static void
s_verify_query_one (wsr_http_t *http, const char *name, const char *expect)
{
    char *value = wsr_http_query (http, name);
    if (expect) {
        assert (value);
        assert (streq (value, expect));
    }
    else
        assert (value == NULL);
    free (value);
}

static void
s_verify_query (wsr_http_t *http, size_t consumed)
{
    assert (consumed == strlen (s_query_request));
    assert (streq (wsr_http_path (http), "/ws"));
    s_verify_query_one (http, "token", "a.b");      //  decoded, first wins
    s_verify_query_one (http, "x", "1");
    s_verify_query_one (http, "empty", "");
    s_verify_query_one (http, "flag", "");
    s_verify_query_one (http, "plus", "a b c");
    s_verify_query_one (http, "bad", NULL);         //  %ZZ rejected
    s_verify_query_one (http, "nul", NULL);         //  %00 rejected
    s_verify_query_one (http, "cut", NULL);         //  truncated escape
    s_verify_query_one (http, "low", "./");
    s_verify_query_one (http, "key", "v");          //  keys are decoded too
    s_verify_query_one (http, "tok", NULL);
    s_verify_query_one (http, "absent", NULL);
    s_verify_query_one (http, "", NULL);
    assert (streq (wsr_http_header (http, "authorization"), "Bearer abc.def.ghi"));
    assert (streq (wsr_http_header (http, "HOST"), "h.example"));
    assert (streq (wsr_http_header (http, "connection"), "keep-alive, Upgrade"));
    assert (wsr_http_is_upgrade (http));
    assert (wsr_http_ws_check (http, NULL) == 0);
}

#define S_PUBLISH_BODY  "{\"channel\":\"news\",\"data\":{\"n\":1}}"

static const char *s_publish_10 =
    "POST /api/publish HTTP/1.0\r\n"
    "Host: h\r\n"
    "Content-Type: application/json\r\n"
    "Content-Length: 33\r\n"
    "\r\n"
    S_PUBLISH_BODY;

static void
s_verify_publish (wsr_http_t *http, size_t consumed)
{
    assert (consumed == strlen (s_publish_10));
    assert (streq (wsr_http_method (http), "POST"));
    assert (streq (wsr_http_path (http), "/api/publish"));
    assert (streq (wsr_http_header (http, "content-type"), "application/json"));
    assert (streq (wsr_http_header (http, "Content-Length"), "33"));
    size_t size = 0;
    const uint8_t *body = wsr_http_body (http, &size);
    assert (size == strlen (S_PUBLISH_BODY));
    assert (memcmp (body, S_PUBLISH_BODY, size) == 0);
    assert (!wsr_http_keep_alive (http));           //  HTTP/1.0 without keep-alive
    assert (!wsr_http_is_upgrade (http));
    const char *reason = NULL;
    assert (wsr_http_ws_check (http, &reason) == 405);
}

static const char *s_chunked =
    "POST /api/publish HTTP/1.1\r\n"
    "Host: h\r\n"
    "Transfer-Encoding: chunked\r\n"
    "\r\n"
    "5\r\nhello\r\n"
    "6;ext=1\r\n world\r\n"
    "0\r\n"
    "Host: evil\r\n"                                //  trailer: ignored
    "\r\n";

static void
s_verify_chunked (wsr_http_t *http, size_t consumed)
{
    assert (consumed == strlen (s_chunked));
    size_t size = 0;
    const uint8_t *body = wsr_http_body (http, &size);
    assert (size == 11);
    assert (memcmp (body, "hello world", size) == 0);
    assert (streq (wsr_http_header (http, "host"), "h"));
    assert (wsr_http_keep_alive (http));
}

static const char *s_repeated =
    "GET /healthz HTTP/1.1\r\n"
    "X-Forwarded-For: 10.0.0.1\r\n"
    "oRiGiN: o1\r\n"
    "x-forwarded-for:10.0.0.2   \r\n"
    "X-Other: zzz\r\n"
    "hOsT: h\r\n"
    "Origin: o2\r\n"
    "X-FORWARDED-FOR: 10.0.0.3\r\n"
    "Connection: keep-alive\r\n"
    "Connection: \r\n"
    "Content-Type: text/plain\t\r\n"
    "\r\n";

static void
s_verify_repeated (wsr_http_t *http, size_t consumed)
{
    assert (consumed == strlen (s_repeated));
    assert (streq (wsr_http_header (http, "x-forwarded-for"), "10.0.0.1, 10.0.0.2, 10.0.0.3"));
    assert (streq (wsr_http_header (http, "Origin"), "o1, o2"));
    assert (streq (wsr_http_header (http, "Host"), "h"));
    assert (streq (wsr_http_header (http, "connection"), "keep-alive"));
    assert (streq (wsr_http_header (http, "content-type"), "text/plain"));
    assert (wsr_http_header (http, "x-other") == NULL);
    assert (streq (wsr_http_path (http), "/healthz"));
    assert (wsr_http_query (http, "x") == NULL);
}

static void
s_verify_absolute (wsr_http_t *http, size_t consumed)
{
    assert (consumed > 0);
    assert (streq (wsr_http_path (http), "/ws"));
    char *token = wsr_http_query (http, "token");
    assert (token && streq (token, "t"));
    free (token);
    assert (streq (wsr_http_method (http), "PATCH"));
}

//  ws_check status of a request parsed whole; the request must be DONE.
static int
s_ws_status (const char *request)
{
    wsr_http_t *http = wsr_http_new (WSR_MAX_HEADER_BYTES, WSR_MAX_API_BODY);
    assert (http);
    size_t consumed = 0;
    int rc = wsr_http_feed (http, request, strlen (request), &consumed);
    assert (rc == WSR_HTTP_DONE);
    assert (consumed == strlen (request));
    const char *reason = NULL;
    int status = wsr_http_ws_check (http, &reason);
    assert (reason);
    wsr_http_destroy (&http);
    return status;
}

//  Whole request must fail with this status and reason.
static void
s_check_reason (const char *request, int status, const char *reason)
{
    wsr_http_t *http = wsr_http_new (WSR_MAX_HEADER_BYTES, WSR_MAX_API_BODY);
    assert (http);
    size_t consumed = 0;
    assert (wsr_http_feed (http, request, strlen (request), &consumed) == WSR_HTTP_ERROR);
    assert (wsr_http_status (http) == status);
    assert (streq (wsr_http_error (http), reason));
    wsr_http_destroy (&http);
}

//  Request of exactly len bytes: padding in an X-Pad header.
static char *
s_sized_request (size_t len)
{
    const char *head = "GET / HTTP/1.1\r\nX-Pad: ";
    const char *tail = "\r\n\r\n";
    assert (len > strlen (head) + strlen (tail));
    char *request = (char *) malloc (len + 1);
    assert (request);
    size_t pad = len - strlen (head) - strlen (tail);
    memcpy (request, head, strlen (head));
    memset (request + strlen (head), 'p', pad);
    memcpy (request + strlen (head) + pad, tail, strlen (tail) + 1);
    assert (strlen (request) == len);
    return request;
}

//  Pieces of handshakes for wsr_http_ws_check
#define S_WS_HEAD       "GET /ws HTTP/1.1\r\nHost: h\r\n"
#define S_WS_UPGRADE    "Upgrade: websocket\r\nConnection: Upgrade\r\n"
#define S_WS_KEY        "Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n"
#define S_WS_V13        "Sec-WebSocket-Version: 13\r\n"

void
wsr_http_test (bool verbose)
{
    printf (" * wsr_http: ");
    if (verbose)
        printf ("\n");
    int rc = sodium_init ();
    assert (rc >= 0);

    //  Accept key from RFC 6455 §1.3
    char accept [WSR_HTTP_ACCEPT_SIZE];
    wsr_http_ws_accept ("dGhlIHNhbXBsZSBub25jZQ==", accept);
    assert (streq (accept, "s3pPLMBiTxaQ9kYGzzhZRbK+xOo="));

    //  The RFC sample: whole, at every split point, one byte at a time
    if (verbose)
        zsys_debug ("wsr_http: RFC 6455 sample handshake");
    s_check_string (s_sample, WSR_HTTP_DONE, 0, s_verify_sample);

    //  The client's first frames in the same packet stay with the caller
    char pipelined [512];
    const char frame [] = "\x81\x85\x37\xfa\x21\x3d\x7f\x9f\x4d\x51\x58";   //  "Hello"
    size_t header_len = strlen (s_sample);
    memcpy (pipelined, s_sample, header_len);
    memcpy (pipelined + header_len, frame, sizeof (frame) - 1);
    size_t pipelined_len = header_len + sizeof (frame) - 1;
    s_check_splits (WSR_MAX_HEADER_BYTES, WSR_MAX_API_BODY, pipelined, pipelined_len,
                    WSR_HTTP_DONE, 0, s_verify_sample);
    {
        wsr_http_t *http = wsr_http_new (WSR_MAX_HEADER_BYTES, 0);
        size_t consumed = 0;
        assert (wsr_http_feed (http, pipelined, pipelined_len, &consumed) == WSR_HTTP_DONE);
        assert (consumed == header_len);
        assert (memcmp (pipelined + consumed, frame, sizeof (frame) - 1) == 0);
        //  DONE is sticky until reset
        assert (wsr_http_feed (http, pipelined + consumed, 3, &consumed) == WSR_HTTP_DONE);
        assert (consumed == 0);
        //  Nothing fed, nothing changes
        wsr_http_reset (http);
        assert (wsr_http_feed (http, NULL, 0, &consumed) == WSR_HTTP_MORE);
        assert (consumed == 0);
        assert (wsr_http_status (http) == 0);
        assert (streq (wsr_http_error (http), "ok"));
        assert (wsr_http_method (http) == NULL);
        assert (wsr_http_path (http) == NULL);
        assert (wsr_http_header (http, "host") == NULL);
        wsr_http_destroy (&http);
        wsr_http_destroy (&http);
    }

    //  Query decoding, Authorization, Connection token list
    if (verbose)
        zsys_debug ("wsr_http: query, Authorization, Connection list");
    s_check_string (s_query_request, WSR_HTTP_DONE, 0, s_verify_query);

    //  Handshake validation
    if (verbose)
        zsys_debug ("wsr_http: handshake validation");
    assert (s_ws_status (S_WS_HEAD S_WS_UPGRADE S_WS_KEY S_WS_V13 "\r\n") == 0);
    assert (s_ws_status (S_WS_HEAD "Upgrade: foo/2, WebSocket\r\n"
                         "Connection: keep-alive,upgrade\r\n" S_WS_KEY S_WS_V13 "\r\n") == 0);
    assert (s_ws_status (S_WS_HEAD S_WS_UPGRADE S_WS_V13 "\r\n") == 400);
    assert (s_ws_status (S_WS_HEAD S_WS_UPGRADE
                         "Sec-WebSocket-Key: dGhlIHNhbXBsZQ==\r\n" S_WS_V13 "\r\n") == 400);
    assert (s_ws_status (S_WS_HEAD S_WS_UPGRADE
                         "Sec-WebSocket-Key: AAAAAAAAAAAAAAAAAAAAAAAA\r\n" S_WS_V13 "\r\n") == 400);
    assert (s_ws_status (S_WS_HEAD S_WS_UPGRADE    //  non-zero padding bits
                         "Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZR==\r\n" S_WS_V13 "\r\n") == 400);
    assert (s_ws_status (S_WS_HEAD S_WS_UPGRADE    //  invalid character
                         "Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ!!\r\n" S_WS_V13 "\r\n") == 400);
    assert (s_ws_status (S_WS_HEAD S_WS_UPGRADE    //  24 chars, 15 bytes
                         "Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25j====\r\n" S_WS_V13 "\r\n") == 400);
    assert (s_ws_status (S_WS_HEAD S_WS_UPGRADE    //  two keys joined
                         S_WS_KEY S_WS_KEY S_WS_V13 "\r\n") == 400);
    assert (s_ws_status (S_WS_HEAD S_WS_UPGRADE S_WS_KEY
                         "Sec-WebSocket-Version: 8\r\n\r\n") == 426);
    assert (s_ws_status (S_WS_HEAD S_WS_UPGRADE S_WS_KEY "\r\n") == 426);
    assert (s_ws_status ("GET /ws HTTP/1.1\r\n" S_WS_UPGRADE S_WS_KEY S_WS_V13 "\r\n") == 400);
    assert (s_ws_status (S_WS_HEAD "Upgrade: h2c\r\nConnection: Upgrade\r\n"
                         S_WS_KEY S_WS_V13 "\r\n") == 400);
    assert (s_ws_status (S_WS_HEAD "Upgrade: websocket\r\nConnection: keep-alive\r\n"
                         S_WS_KEY S_WS_V13 "\r\n") == 400);
    assert (s_ws_status ("GET /ws HTTP/1.0\r\nHost: h\r\n" S_WS_UPGRADE S_WS_KEY S_WS_V13
                         "\r\n") == 400);
    assert (s_ws_status ("HEAD /ws HTTP/1.1\r\nHost: h\r\n" S_WS_UPGRADE S_WS_KEY S_WS_V13
                         "\r\n") == 405);

    //  POST with HTTP/1.0 and a body, in every split
    if (verbose)
        zsys_debug ("wsr_http: POST /api/publish");
    s_check_string (s_publish_10, WSR_HTTP_DONE, 0, s_verify_publish);
    s_check_string (s_chunked, WSR_HTTP_DONE, 0, s_verify_chunked);
    {
        //  Body across feeds, allocated to its Content-Length
        wsr_http_t *http = wsr_http_new (WSR_MAX_HEADER_BYTES, WSR_MAX_API_BODY);
        size_t total = strlen (s_publish_10);
        size_t first = total - 10;
        size_t consumed = 0;
        assert (wsr_http_feed (http, s_publish_10, first, &consumed) == WSR_HTTP_MORE);
        assert (consumed == first);
        size_t size = 0;
        assert (wsr_http_body (http, &size) && size == strlen (S_PUBLISH_BODY) - 10);
        assert (wsr_http_feed (http, s_publish_10 + first, 10, &consumed) == WSR_HTTP_DONE);
        assert (consumed == 10);
        s_verify_publish (http, total);
        wsr_http_destroy (&http);
    }

    //  Limits, with a small parser
    if (verbose)
        zsys_debug ("wsr_http: limits");
    char request [1024];
    char big [301];
    memset (big, 'a', 300);
    big [300] = '\0';
    snprintf (request, sizeof (request), "GET / HTTP/1.1\r\nHost: h\r\nX-Big: %s\r\n\r\n", big);
    s_check_splits (256, 64, request, strlen (request), WSR_HTTP_ERROR, 431, NULL);
    snprintf (request, sizeof (request), "GET /%s HTTP/1.1\r\nHost: h\r\n\r\n", big);
    s_check_splits (256, 64, request, strlen (request), WSR_HTTP_ERROR, 414, NULL);
    snprintf (request, sizeof (request), "GET /?token=%s HTTP/1.1\r\n\r\n", big);
    s_check_string (request, WSR_HTTP_DONE, 0, NULL);
    //  Exactly at the header limit is fine, one byte more is not
    char *sized = s_sized_request (256);
    s_check_splits (256, 64, sized, 256, WSR_HTTP_DONE, 0, NULL);
    free (sized);
    sized = s_sized_request (257);
    s_check_splits (256, 64, sized, 257, WSR_HTTP_ERROR, 431, NULL);
    free (sized);
    //  Many short headers: counted in full even though they are not kept
    char many [600] = "GET / HTTP/1.1\r\n";
    while (strlen (many) < 500)
        strcat (many, "A: b\r\n");
    strcat (many, "\r\n");
    s_check_splits (256, 64, many, strlen (many), WSR_HTTP_ERROR, 431, NULL);
    //  Body limits: at once from Content-Length, or as chunks arrive
    s_check_small ("POST /api/publish HTTP/1.1\r\nHost: h\r\nContent-Length: 65\r\n\r\n",
                   WSR_HTTP_ERROR, 413);
    snprintf (request, sizeof (request),
              "POST /api/publish HTTP/1.1\r\nContent-Length: 64\r\n\r\n%.64s", big);
    s_check_splits (256, 64, request, strlen (request), WSR_HTTP_DONE, 0, NULL);
    snprintf (request, sizeof (request),
              "POST /api/publish HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n"
              "40\r\n%.64s\r\n1\r\nb\r\n0\r\n\r\n", big);
    s_check_splits (256, 64, request, strlen (request), WSR_HTTP_ERROR, 413, NULL);
    s_check_small ("POST / HTTP/1.1\r\nContent-Length: 99999999999999999999999\r\n\r\n",
                   WSR_HTTP_ERROR, 400);
    //  Chunked framing is bounded too: 1-byte chunks with long extensions
    strcpy (request, "POST / HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n");
    while (strlen (request) < 900)
        strcat (request, "1;e=xxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxx\r\nz\r\n");
    s_check_splits (256, 64, request, strlen (request), WSR_HTTP_ERROR, 413, NULL);

    //  Bad requests
    if (verbose)
        zsys_debug ("wsr_http: bad requests");
    const char tls_hello [] = "\x16\x03\x01\x00\xa5\x01\x00\x00\xa1\x03\x03";
    s_check_splits (256, 64, tls_hello, sizeof (tls_hello) - 1, WSR_HTTP_ERROR, 400, NULL);
    const char binary [] = "\x00\x01\x02 garbage\r\n\r\n";
    s_check_splits (256, 64, binary, sizeof (binary) - 1, WSR_HTTP_ERROR, 400, NULL);
    s_check_string ("hello world\r\n\r\n", WSR_HTTP_ERROR, 400, NULL);
    s_check_string ("GET / HTTP/1.1\r\nHost: a b\r\n\r\n", WSR_HTTP_DONE, 0, NULL);
    s_check_string ("\r\n\r\nGET / HTTP/1.1\r\nHost: h\r\n\r\n", WSR_HTTP_DONE, 0, NULL);
    s_check_string ("GET / HTTP/1.1\r\nBad Name: a\r\n\r\n", WSR_HTTP_ERROR, 400, NULL);
    s_check_string ("GET / HTTP/1.1\r\nHost : a\r\n\r\n", WSR_HTTP_ERROR, 400, NULL);
    s_check_string ("GET / HTTP/1.1\r\nHost: a\rX: b\r\n\r\n", WSR_HTTP_ERROR, 400, NULL);
    s_check_string ("GET / HTTP/1.1\r\nHost: a\x01\r\n\r\n", WSR_HTTP_ERROR, 400, NULL);
    s_check_string ("GET /a b HTTP/1.1\r\n\r\n", WSR_HTTP_ERROR, 400, NULL);
    s_check_string ("GET / HTTP/1.x\r\n\r\n", WSR_HTTP_ERROR, 400, NULL);
    s_check_string ("FOO /x HTTP/1.1\r\n\r\n", WSR_HTTP_ERROR, 501, NULL);
    s_check_string ("\r\nGETS /x HTTP/1.1\r\n\r\n", WSR_HTTP_ERROR, 501, NULL);
    s_check_string ("ABCDEFGHIJKLMNOPQRSTUVWXYZ /x HTTP/1.1\r\n\r\n", WSR_HTTP_ERROR, 400, NULL);
    s_check_string ("get / HTTP/1.1\r\n\r\n", WSR_HTTP_ERROR, 400, NULL);
    s_check_string ("GET / HTTP/2.0\r\n\r\n", WSR_HTTP_ERROR, 505, NULL);
    s_check_string ("GET / HTTP/0.9\r\n\r\n", WSR_HTTP_ERROR, 505, NULL);
    s_check_string ("GET / HTTP/1.1\r\nHost: a\r\n b\r\n\r\n", WSR_HTTP_ERROR, 400, NULL);
    s_check_string ("GET / HTTP/1.1\r\nHost: a\r\nhost: b\r\n\r\n", WSR_HTTP_ERROR, 400, NULL);
    s_check_string ("POST / HTTP/1.1\r\nContent-Length: 1\r\nContent-Length: 1\r\n\r\nx",
                    WSR_HTTP_ERROR, 400, NULL);
    s_check_string ("POST / HTTP/1.1\r\nContent-Length: 3\r\n"
                    "Transfer-Encoding: chunked\r\n\r\n0\r\n\r\n", WSR_HTTP_ERROR, 400, NULL);
    s_check_string ("POST / HTTP/1.1\r\nTransfer-Encoding: gzip\r\n\r\n",
                    WSR_HTTP_ERROR, 400, NULL);
    s_check_reason ("GET / HTTP/1.1\r\nHost: a\r\n b\r\n\r\n", 400, "obsolete line folding");
    s_check_reason ("GET / HTTP/1.1\r\nHost : a\r\n\r\n", 400, "whitespace in header name");
    s_check_reason ("GET / HTTP/1.1\r\nHost: a\r\nHost: a\r\n\r\n", 400, "duplicate Host header");
    s_check_reason ("GET / HTTP/3.0\r\n\r\n", 505, "HTTP version not supported");
    //  Incomplete is not an error
    s_check_string ("GET /ws HTTP/1.1\r\nHost: a\r\n", WSR_HTTP_MORE, 0, NULL);
    s_check_string ("POST / HTTP/1.1\r\nContent-Length: 5\r\n\r\nab", WSR_HTTP_MORE, 0, NULL);
    {
        wsr_http_t *http = wsr_http_new (WSR_MAX_HEADER_BYTES, WSR_MAX_API_BODY);
        size_t consumed = 0;
        assert (wsr_http_feed (http, "BREW /pot HTTP/1.1\r\n", 20, &consumed) == WSR_HTTP_ERROR);
        assert (wsr_http_status (http) == 501);
        assert (consumed <= 20);
        //  ERROR is sticky until reset
        assert (wsr_http_feed (http, "GET / HTTP/1.1\r\n\r\n", 18, &consumed) == WSR_HTTP_ERROR);
        assert (consumed == 0);
        wsr_http_reset (http);
        assert (wsr_http_feed (http, "GET / HTTP/1.1\r\n\r\n", 18, &consumed) == WSR_HTTP_DONE);
        assert (consumed == 18);
        wsr_http_destroy (&http);
    }

    //  Repeated headers, names in any case, other forms and methods
    if (verbose)
        zsys_debug ("wsr_http: headers and request targets");
    s_check_string (s_repeated, WSR_HTTP_DONE, 0, s_verify_repeated);
    s_check_string ("PATCH http://example.com:8080/ws?token=t#frag HTTP/1.1\r\nHost: h\r\n\r\n",
                    WSR_HTTP_DONE, 0, s_verify_absolute);

    //  Keep-alive: two pipelined requests, reset between them
    if (verbose)
        zsys_debug ("wsr_http: pipelined keep-alive requests");
    {
        const char *first = "GET /healthz HTTP/1.1\r\nHost: a\r\n\r\n";
        const char *second = "GET /readyz HTTP/1.1\r\nHost: a\r\nConnection: close\r\n\r\n";
        char both [256];
        snprintf (both, sizeof (both), "%s%s", first, second);
        size_t both_len = strlen (both);
        wsr_http_t *http = wsr_http_new (WSR_MAX_HEADER_BYTES, WSR_MAX_API_BODY);
        size_t consumed = 0;
        assert (wsr_http_feed (http, both, both_len, &consumed) == WSR_HTTP_DONE);
        assert (consumed == strlen (first));
        assert (streq (wsr_http_path (http), "/healthz"));
        assert (wsr_http_keep_alive (http));
        assert (!wsr_http_is_upgrade (http));
        wsr_http_reset (http);
        size_t rest = 0;
        assert (wsr_http_feed (http, both + consumed, both_len - consumed, &rest)
                == WSR_HTTP_DONE);
        assert (rest == strlen (second));
        assert (streq (wsr_http_path (http), "/readyz"));
        assert (streq (wsr_http_header (http, "connection"), "close"));
        assert (!wsr_http_keep_alive (http));
        //  The same byte by byte: each request stops at its own end
        wsr_http_reset (http);
        size_t offset = 0;
        for (int round = 0; round < 2; round++) {
            int rc = WSR_HTTP_MORE;
            while (rc == WSR_HTTP_MORE) {
                assert (offset < both_len);
                rc = wsr_http_feed (http, both + offset, 1, &consumed);
                assert (consumed == 1);
                offset++;
            }
            assert (rc == WSR_HTTP_DONE);
            assert (offset == (round == 0? strlen (first): both_len));
            assert (streq (wsr_http_path (http), round == 0? "/healthz": "/readyz"));
            wsr_http_reset (http);
        }
        wsr_http_destroy (&http);
    }

    printf ("OK\n");
}
