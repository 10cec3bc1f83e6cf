//  wsr_tlsrec — TLS 1.3 record layer after the handshake ("user-space kTLS")

#ifndef WSR_TLSREC_H_INCLUDED
#define WSR_TLSREC_H_INCLUDED

#include <sys/uio.h>

#ifdef __cplusplus
extern "C" {
#endif

typedef struct _wsr_tlsrec_t wsr_tlsrec_t;

//  Bytes of the saved form of a session (wsr_tlsrec_save); at most this many
#define WSR_TLSREC_SAVED_MAX    256
//  Largest TLS 1.3 hash (SHA-384): the length of a traffic secret
#define WSR_TLSREC_SECRET_MAX   48
//  Largest record on the wire: header, 2^14 + 256 bytes of ciphertext
#define WSR_TLSREC_RECORD_MAX   (5 + 16384 + 256)

//  True if suite (IANA number, e.g. 0x1301) is one this record layer runs:
//  TLS_AES_128_GCM_SHA256, TLS_AES_256_GCM_SHA384, TLS_CHACHA20_POLY1305_SHA256.
bool
    wsr_tlsrec_supported (uint16_t suite);

//  A record layer for one connection whose TLS 1.3 handshake is complete:
//  rx_secret decrypts what the peer sends, tx_secret encrypts what we send
//  (for a server: the client's and the server's application traffic secret
//  _0), secret_len bytes each (the suite's hash length). Sequence numbers
//  start at 0. The secrets are copied; the caller wipes its own. Returns NULL
//  for an unsupported suite, a wrong length or out of memory.
wsr_tlsrec_t *
    wsr_tlsrec_new (uint16_t suite, const uint8_t *rx_secret, const uint8_t *tx_secret,
                    size_t secret_len);

//  Wipe the keys and any buffered bytes, free, null the pointer. Sends
//  nothing (see wsr_tlsrec_close). Safe on NULL.
void
    wsr_tlsrec_destroy (wsr_tlsrec_t **self_p);

//  Like recv on fd, through TLS: plaintext bytes, 0 at close_notify or TCP
//  EOF between records, -1 with errno EAGAIN (wait for input) or ECONNRESET
//  (bad record, fatal alert, EOF inside a record: the session is dead, an
//  alert was sent if the socket took it). Handles KeyUpdate on its own.
ssize_t
    wsr_tlsrec_recv (wsr_tlsrec_t *self, int fd, void *buf, size_t len);

//  Like writev on fd, through TLS: one record of at most 16 KiB of the
//  iovecs' bytes. Returns the bytes taken, or -1 with errno EAGAIN or EPIPE.
//  A record the socket did not take whole is kept and sent first by the next
//  call, which returns its length: *retry holds that length meanwhile (0 when
//  none) and the next call must offer at least as many bytes (their content
//  is unused). Sequence numbers are never reused.
ssize_t
    wsr_tlsrec_writev (wsr_tlsrec_t *self, int fd, const struct iovec *iov, int count,
                       uint32_t *retry);

//  True if recv would return without the socket: plaintext or a whole
//  record is buffered, or the session has ended.
bool
    wsr_tlsrec_pending (wsr_tlsrec_t *self);

//  Send close_notify if the socket takes it at once (best effort, once).
void
    wsr_tlsrec_close (wsr_tlsrec_t *self, int fd);

//  Send a KeyUpdate before the next application data (requesting the
//  peer's own if request is true). Done by itself every 2^24 records.
void
    wsr_tlsrec_update (wsr_tlsrec_t *self, bool request);

//  The alert that ended the session (sent or received), -1 if none.
int
    wsr_tlsrec_alert (wsr_tlsrec_t *self);

//  Serialise the session's state (suite, secrets, keys, sequence numbers)
//  into out (size bytes): returns the length, or -1 if bytes are buffered in
//  either direction or out is too small. The result is key material.
int
    wsr_tlsrec_save (wsr_tlsrec_t *self, uint8_t *out, size_t size);

//  A record layer from wsr_tlsrec_save's bytes; NULL if they are not valid.
wsr_tlsrec_t *
    wsr_tlsrec_load (const uint8_t *data, size_t size);

//  Tests and the fuzzer: encrypt one record of content type type with
//  plaintext data and padding zero bytes into out (size bytes) with the
//  send keys, as the peer would. Returns the record's length or -1.
int
    wsr_tlsrec_seal (wsr_tlsrec_t *self, uint8_t type, const void *data, size_t len,
                     size_t padding, uint8_t *out, size_t size);

//  Self test
void
    wsr_tlsrec_test (bool verbose);

#ifdef __cplusplus
}
#endif
#endif
