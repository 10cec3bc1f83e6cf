//  wsr_outframe — one encoded server→client WebSocket frame, shared by refcount

#ifndef WSR_OUTFRAME_H_INCLUDED
#define WSR_OUTFRAME_H_INCLUDED

#include <sys/uio.h>

#ifdef __cplusplus
extern "C" {
#endif

typedef struct _wsr_outframe_t wsr_outframe_t;

#define WSR_OUTFRAME_RSV1   0x40    //  or'ed into opcode: a compressed message (RFC 7692)

//  Frame a payload once (FIN set, unmasked, opcode 1 text or 2 binary, with
//  WSR_OUTFRAME_RSV1 if the payload is deflated) with a
//  reference count of 1. If *keep_p is given, the payload lives in that frame,
//  which the outframe takes (the caller's pointer is nulled, always);
//  otherwise the payload is copied.
wsr_outframe_t *
    wsr_outframe_new (int opcode, const uint8_t *data, size_t size, zframe_t **keep_p);

//  Wrap bytes that are already encoded (the handshake response, wslay's
//  control frames) so they queue behind data frames in order. Copies them.
wsr_outframe_t *
    wsr_outframe_new_raw (const uint8_t *data, size_t size);

//  Take one more reference for another recipient; returns self.
wsr_outframe_t *
    wsr_outframe_link (wsr_outframe_t *self);

//  Drop a reference and null the caller's pointer; frees at zero. Not
//  thread-safe: an outframe lives in one worker thread.
void
    wsr_outframe_unlink (wsr_outframe_t **self_p);

//  Total bytes on the wire (header + payload).
size_t
    wsr_outframe_size (wsr_outframe_t *self);

//  Fill up to 2 iovecs with the bytes from offset on; returns the count.
int
    wsr_outframe_iov (wsr_outframe_t *self, size_t offset, struct iovec *iov);

//  Self test
void
    wsr_outframe_test (bool verbose);

#ifdef __cplusplus
}
#endif
#endif
