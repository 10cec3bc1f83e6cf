//  wsr_http — bounded incremental HTTP/1.1 request parser (libhttp-parser)

#ifndef WSR_HTTP_H_INCLUDED
#define WSR_HTTP_H_INCLUDED

#ifdef __cplusplus
extern "C" {
#endif

typedef struct _wsr_http_t wsr_http_t;

#define WSR_HTTP_MORE       0       //  need more bytes
#define WSR_HTTP_DONE       1       //  one complete request parsed (or upgrade headers complete)
#define WSR_HTTP_ERROR      -1      //  bad request: see wsr_http_status / wsr_http_error
#define WSR_HTTP_HEADERS    2       //  stop-at-headers mode: header section complete

//  Limits of the class (the configurable ones are arguments of wsr_http_new).
#define WSR_HTTP_ACCEPT_SIZE    29      //  Sec-WebSocket-Accept: 28 chars + NUL
#define WSR_HTTP_MAX_METHOD     24      //  longer unknown method token: 400, not 501
#define WSR_HTTP_MAX_NAME       32      //  longest kept header name we buffer, + 1
#define WSR_HTTP_BODY_MIN       4096    //  first allocation of a chunked body

//  Create a parser. max_header_bytes (> 0) bounds request line + headers and
//  is allocated once; max_body_bytes bounds the body, allocated lazily. Caller
//  owns the result (wsr_http_destroy).
wsr_http_t *
    wsr_http_new (size_t max_header_bytes, size_t max_body_bytes);

//  Destroy the parser and everything it holds; nulls *self_p; safe on NULL.
void
    wsr_http_destroy (wsr_http_t **self_p);

//  Forget the current request (frees the body): ready for the next request on
//  a keep-alive connection. Every borrowed pointer from before becomes invalid.
void
    wsr_http_reset (wsr_http_t *self);

//  Feed bytes (borrowed, not kept). Returns MORE, DONE or ERROR. *consumed =
//  bytes of data used; on DONE the rest of data (data + *consumed .. len)
//  belongs to what follows: for an upgrade, the first WebSocket frames
//  pipelined in the same packet; for keep-alive, the next request. The result
//  is sticky: after DONE or ERROR, further feeds consume nothing until reset.
int
    wsr_http_feed (wsr_http_t *self, const char *data, size_t len, size_t *consumed);

//  Stop-at-headers mode (off by default): feed returns HEADERS once per
//  request, as soon as the header section is complete and before any body
//  byte is taken, so the caller can judge the request (method, path,
//  headers) before the body is buffered. *consumed then stops short of the
//  end of the header section: feed the rest of the same data again to go on
//  to DONE. Results and consumed totals are the same as without the mode.
void
    wsr_http_set_stop_at_headers (wsr_http_t *self, bool stop);

//  True if the request announces a body (Content-Length > 0 or chunked);
//  valid once the header section is complete.
bool
    wsr_http_has_body (wsr_http_t *self);

//  HTTP status to answer on ERROR (0 otherwise): 400 bad syntax, 431 headers
//  too large, 413 body too large, 414 URI too long, 505 version not supported,
//  501 method not implemented.
int
    wsr_http_status (wsr_http_t *self);

//  Short static reason of the error, for logs and response body ("ok" if
//  none). Static: never freed.
const char *
    wsr_http_error (wsr_http_t *self);

//  Request method, "GET", "POST"... Static string; NULL before the header
//  section is complete.
const char *
    wsr_http_method (wsr_http_t *self);

//  Path without query or fragment, not percent-decoded; "" if the target has
//  none (authority-form). Borrowed until reset; NULL before headers complete.
const char *
    wsr_http_path (wsr_http_t *self);

//  Query parameter value, percent-decoded ('+' as space), NULL if absent.
//  The first occurrence of a repeated name wins. A value with an invalid
//  escape (%ZZ, truncated %4) or that decodes to contain NUL (%00) is rejected:
//  NULL, never a later occurrence. Keys are decoded the same way before
//  comparing (exact, case-sensitive). Caller owns the result (free ()).
char *
    wsr_http_query (wsr_http_t *self, const char *name);

//  Header value by case-insensitive name, trimmed of OWS; borrowed until
//  reset, NULL if absent or not kept. Kept: host, upgrade, connection,
//  sec-websocket-key, sec-websocket-version, sec-websocket-protocol, origin,
//  authorization, content-length, content-type, x-forwarded-for. A repeated
//  header is joined with ", " (RFC 7230 §3.2.2), except Host: a second Host
//  is an ERROR 400 (RFC 7230 §5.4). Headers in a chunked trailer are ignored.
const char *
    wsr_http_header (wsr_http_t *self, const char *name);

//  Request body (decoded, if chunked) and its size in *size; NULL and 0 if
//  none. Borrowed until reset.
const uint8_t *
    wsr_http_body (wsr_http_t *self, size_t *size);

//  True if the connection may carry another request (http_should_keep_alive),
//  valid after DONE.
bool
    wsr_http_keep_alive (wsr_http_t *self);

//  True if the parser saw an upgrade (Upgrade header with Connection: upgrade,
//  or CONNECT); valid once the header section is complete.
bool
    wsr_http_is_upgrade (wsr_http_t *self);

//  Validate a WebSocket opening handshake (RFC 6455 §4.2.1); call after DONE.
//  Returns 0 if valid, else the HTTP status to send: 405 not GET; 400 for
//  HTTP/1.0 (505 for other versions, which feed already rejects); 400 missing
//  Host; 400 Upgrade lacks token "websocket"; 400 Connection lacks token
//  "upgrade"; 426 Sec-WebSocket-Version not exactly "13" (caller then sends
//  "Sec-WebSocket-Version: 13"); 400 Sec-WebSocket-Key missing or not the
//  canonical base64 of exactly 16 bytes. *reason (optional): static text.
int
    wsr_http_ws_check (wsr_http_t *self, const char **reason);

//  Compute Sec-WebSocket-Accept = base64 (SHA-1 (key + RFC 6455 GUID)) into
//  out, which must hold WSR_HTTP_ACCEPT_SIZE (29) bytes; key is borrowed.
void
    wsr_http_ws_accept (const char *key, char *out);

//  Self test
void
    wsr_http_test (bool verbose);

#ifdef __cplusplus
}
#endif
#endif
