//  wsr_deflate — permessage-deflate (RFC 7692): negotiation, compress once, bounded inflate

#ifndef WSR_DEFLATE_H_INCLUDED
#define WSR_DEFLATE_H_INCLUDED

#ifdef __cplusplus
extern "C" {
#endif

typedef struct _wsr_deflate_t wsr_deflate_t;

#define WSR_DEFLATE_TOO_BIG     (-2)    //  wsr_deflate_inflate: over the bound (→ 1009)
#define WSR_DEFLATE_CORRUPT     (-1)    //  wsr_deflate_inflate: not a deflate stream (→ 1007)

//  True if a Sec-WebSocket-Extensions value (offers joined by commas) holds a
//  permessage-deflate offer we accept with WSR_DEFLATE_RESPONSE: known
//  parameters, each once, with valid values, and server_max_window_bits (if
//  any) 15. Anything else declines that offer; it never fails the handshake.
bool
    wsr_deflate_accepts (const char *offers);

//  One worker's compressor and inflater. level is zlib's (1-9), threshold
//  the smallest payload worth compressing, max_message the bound on an
//  inflated message. metrics (not owned) counts what is compressed.
wsr_deflate_t *
    wsr_deflate_new (int level, size_t threshold, size_t max_message, wsr_metrics_t *metrics);

//  Destroy; safe on NULL.
void
    wsr_deflate_destroy (wsr_deflate_t **self_p);

//  Compress one message (no context takeover) into a frame with RSV1 set,
//  refcount 1, for every deflate recipient of this worker; the caller owns
//  it. Returns NULL when the payload is under the threshold or would not
//  shrink: then the plain frame serves deflate sessions too.
wsr_outframe_t *
    wsr_deflate_frame (wsr_deflate_t *self, int kind, const uint8_t *data, size_t size);

//  Inflate one received message (RSV1 set). On success *out points into the
//  worker's buffer, valid until the next call. Returns 0, WSR_DEFLATE_TOO_BIG
//  (more than max_message once inflated: work stops there) or
//  WSR_DEFLATE_CORRUPT.
int
    wsr_deflate_inflate (wsr_deflate_t *self, const uint8_t *data, size_t size,
                         const uint8_t **out, size_t *out_size);

//  Largest compressed size of a message of max_message bytes (deflate's
//  worst case: incompressible data in stored blocks).
size_t
    wsr_deflate_wire_max (size_t max_message);

//  Self test
void
    wsr_deflate_test (bool verbose);

#ifdef __cplusplus
}
#endif
#endif
