//  wsr_tls — server TLS (OpenSSL 3): reloadable context, non-blocking I/O on one session

#ifndef WSR_TLS_H_INCLUDED
#define WSR_TLS_H_INCLUDED

#include <sys/uio.h>
#include <openssl/ssl.h>

#ifdef __cplusplus
extern "C" {
#endif

typedef struct _wsr_tls_t wsr_tls_t;
//  One TLS connection: OpenSSL during the handshake (and for TLS 1.2), our
//  own record layer (wsr_tlsrec) after a TLS 1.3 handshake
typedef struct _wsr_tlsconn_t wsr_tlsconn_t;

//  Load a PEM certificate chain and its private key into a server context:
//  TLS 1.2 and 1.3, ALPN http/1.1, SSL_MODE_RELEASE_BUFFERS, partial writes,
//  no TLS 1.3 session tickets.
//  Returns NULL (having logged the file that failed, never key material) if
//  either file cannot be read or they do not match. Paths are copied.
wsr_tls_t *
    wsr_tls_new (const char *cert_path, const char *key_path);

//  Destroy the context holder. Sessions created from it keep their own
//  reference to the OpenSSL context and stay valid.
void
    wsr_tls_destroy (wsr_tls_t **self_p);

//  Read the files again (SIGHUP): new connections get a fresh context,
//  established ones keep theirs. Returns 0, or -1 and keeps the old context.
int
    wsr_tls_reload (wsr_tls_t *self);

//  A new server-side session on a connected non-blocking socket. The caller
//  owns the result (free with wsr_tls_free) and still owns the socket.
wsr_tlsconn_t *
    wsr_tls_session (wsr_tls_t *self, int fd);

//  Drive the handshake. Returns 1 when complete, 0 to wait (then *want_write
//  says whether to wait for EPOLLOUT rather than EPOLLIN), -1 on failure.
//  At completion a TLS 1.3 session leaves OpenSSL for wsr_tlsrec.
int
    wsr_tls_handshake (wsr_tlsconn_t *conn, bool *want_write);

//  Like recv: bytes read, 0 at the peer's close, -1 with errno EAGAIN (wait
//  for input) or ECONNRESET (protocol error or reset).
ssize_t
    wsr_tls_recv (wsr_tlsconn_t *conn, void *buf, size_t len);

//  Like writev, through TLS: writes at most one TLS record (16 KiB) of the
//  iovecs' bytes. Returns the bytes taken, or -1 with errno EAGAIN or EPIPE.
//  *retry holds the length of a write OpenSSL has started and must finish
//  (0 when none; the caller keeps it per session): the next call offers at
//  least that many bytes, padding if the queue shrank meanwhile.
ssize_t
    wsr_tls_writev (wsr_tlsconn_t *conn, const struct iovec *iov, int count, uint32_t *retry);

//  True if recv would return without the socket: decrypted bytes or a whole
//  record wait inside the session (the socket may be quiet). False on NULL.
bool
    wsr_tls_pending (wsr_tlsconn_t *conn);

//  True if the session runs on wsr_tlsrec (TLS 1.3, no OpenSSL object left).
bool
    wsr_tls_offloaded (wsr_tlsconn_t *conn);

//  Send close_notify if the socket takes it at once, free the session and
//  null the caller's pointer. Safe on NULL. Does not close the socket.
void
    wsr_tls_free (wsr_tlsconn_t **conn_p);

//  Write a fresh self-signed P-256 certificate for common name cn and its
//  key as PEM files (tests). Returns 0 or -1.
int
    wsr_tls_make_test_cert (const char *cert_path, const char *key_path, const char *cn);

//  Self test
void
    wsr_tls_test (bool verbose);

#ifdef __cplusplus
}
#endif
#endif
