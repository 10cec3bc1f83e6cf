//  wsr_outframe — one encoded server→client WebSocket frame, shared by refcount
//
//  Server frames are not masked, so the bytes of a frame are the same for
//  every recipient: a worker frames a message once and links it into each
//  recipient's output queue. The payload is not copied when it arrives in a
//  ZeroMQ frame: the outframe keeps that frame alive instead.

#include "wsr_classes.h"

struct _wsr_outframe_t {
    size_t refs;                //  recipients still holding it
    zframe_t *keep;             //  frame that owns the payload, or NULL
    const uint8_t *data;        //  payload (in keep, or in copy [])
    size_t size;                //  payload bytes
    uint8_t header [10];        //  encoded frame header
    uint8_t header_size;        //  2, 4 or 10; 0 when the header is in copy []
    uint8_t copy [];            //  header and payload, when there is no keep
};

//  Encode a frame header for size bytes; returns its length (2, 4 or 10).
static uint8_t
s_header (uint8_t *header, int opcode, size_t size)
{
    header [0] = 0x80 | (uint8_t) opcode;
    if (size < 126) {
        header [1] = (uint8_t) size;
        return 2;
    }
    if (size <= 0xFFFF) {
        header [1] = 126;
        header [2] = (uint8_t) (size >> 8);
        header [3] = (uint8_t) size;
        return 4;
    }
    header [1] = 127;
    for (int i = 0; i < 8; i++)
        header [2 + i] = (uint8_t) ((uint64_t) size >> (56 - 8 * i));
    return 10;
}

//  --------------------------------------------------------------------------
//  Frame once. A small payload is copied behind its header into one buffer,
//  so a lone frame leaves in one iovec (and the ZeroMQ frame is freed at
//  once); a large one stays in the frame that brought it.
wsr_outframe_t *
wsr_outframe_new (int opcode, const uint8_t *data, size_t size, zframe_t **keep_p)
{
    int kind = opcode & ~WSR_OUTFRAME_RSV1;
    assert (kind == WSR_KIND_TEXT || kind == WSR_KIND_BINARY);
    zframe_t *keep = keep_p? *keep_p: NULL;
    if (keep_p)
        *keep_p = NULL;
    wsr_outframe_t *self;
    if (!keep || size <= WSR_OUTFRAME_INLINE) {
        uint8_t header [10];
        uint8_t header_size = s_header (header, opcode, size);
        self = (wsr_outframe_t *) malloc (sizeof (wsr_outframe_t) + header_size + size);
        assert (self);
        memcpy (self->copy, header, header_size);
        if (size)
            memcpy (self->copy + header_size, data, size);
        self->keep = NULL;
        self->data = self->copy;
        self->size = header_size + size;
        self->header_size = 0;
        zframe_destroy (&keep);
    }
    else {
        self = (wsr_outframe_t *) malloc (sizeof (wsr_outframe_t));
        assert (self);
        self->keep = keep;
        self->data = data;
        self->size = size;
        self->header_size = s_header (self->header, opcode, size);
    }
    self->refs = 1;
    return self;
}

//  --------------------------------------------------------------------------
//  Pre-encoded bytes: no header of ours.
wsr_outframe_t *
wsr_outframe_new_raw (const uint8_t *data, size_t size)
{
    wsr_outframe_t *self = (wsr_outframe_t *) malloc (sizeof (wsr_outframe_t) + size);
    assert (self);
    self->refs = 1;
    self->keep = NULL;
    self->size = size;
    memcpy (self->copy, data, size);
    self->data = self->copy;
    self->header_size = 0;
    return self;
}

//  --------------------------------------------------------------------------
//  One more holder.
wsr_outframe_t *
wsr_outframe_link (wsr_outframe_t *self)
{
    assert (self && self->refs > 0);
    self->refs++;
    return self;
}

//  --------------------------------------------------------------------------
//  One holder fewer.
void
wsr_outframe_unlink (wsr_outframe_t **self_p)
{
    assert (self_p);
    wsr_outframe_t *self = *self_p;
    if (self) {
        assert (self->refs > 0);
        if (--self->refs == 0) {
            zframe_destroy (&self->keep);
            free (self);
        }
        *self_p = NULL;
    }
}

//  --------------------------------------------------------------------------
//  Wire size.
size_t
wsr_outframe_size (wsr_outframe_t *self)
{
    assert (self);
    return self->header_size + self->size;
}

//  --------------------------------------------------------------------------
//  iovecs for a (possibly partial) write resuming at offset.
int
wsr_outframe_iov (wsr_outframe_t *self, size_t offset, struct iovec *iov)
{
    assert (self && iov);
    int count = 0;
    if (offset < self->header_size) {
        iov [count].iov_base = self->header + offset;
        iov [count].iov_len = self->header_size - offset;
        count++;
        offset = 0;
    }
    else
        offset -= self->header_size;
    if (offset < self->size) {
        iov [count].iov_base = (void *) (self->data + offset);
        iov [count].iov_len = self->size - offset;
        count++;
    }
    return count;
}

//  --------------------------------------------------------------------------
//  Selftest
static void
s_flatten (wsr_outframe_t *frame, size_t offset, uint8_t *out, size_t *len)
{
    struct iovec iov [2];
    int n = wsr_outframe_iov (frame, offset, iov);
    *len = 0;
    for (int i = 0; i < n; i++) {
        memcpy (out + *len, iov [i].iov_base, iov [i].iov_len);
        *len += iov [i].iov_len;
    }
}

void
wsr_outframe_test (bool verbose)
{
    (void) verbose;
    uint8_t out [70000 + 10];
    size_t len;
    wsr_outframe_t *frame = wsr_outframe_new (WSR_KIND_TEXT, (const uint8_t *) "hi", 2, NULL);
    s_flatten (frame, 0, out, &len);
    assert (len == 4 && memcmp (out, "\x81\x02hi", 4) == 0);
    s_flatten (frame, 3, out, &len);
    assert (len == 1 && out [0] == 'i');
    s_flatten (frame, 4, out, &len);
    assert (len == 0);
    wsr_outframe_t *second = wsr_outframe_link (frame);
    assert (second == frame);
    wsr_outframe_unlink (&frame);
    assert (frame == NULL);
    wsr_outframe_unlink (&second);

    //  16-bit and 64-bit lengths; a large payload kept in its zframe, not
    //  copied; a small one copied behind its header (one iovec)
    uint8_t *big = (uint8_t *) malloc (70000);
    memset (big, 'x', 70000);
    zframe_t *keep = zframe_new (big, 300);
    frame = wsr_outframe_new (WSR_KIND_BINARY, zframe_data (keep), 300, &keep);
    assert (keep == NULL);
    struct iovec iov [2];
    assert (wsr_outframe_iov (frame, 0, iov) == 1);
    s_flatten (frame, 0, out, &len);
    assert (len == 304 && out [0] == 0x82 && out [1] == 126 && out [2] == 1 && out [3] == 44);
    wsr_outframe_unlink (&frame);
    keep = zframe_new (big, 2000);
    frame = wsr_outframe_new (WSR_KIND_BINARY, zframe_data (keep), 2000, &keep);
    assert (keep == NULL);
    assert (wsr_outframe_iov (frame, 0, iov) == 2);
    assert (iov [0].iov_len == 4 && iov [1].iov_len == 2000 && wsr_outframe_size (frame) == 2004);
    s_flatten (frame, 0, out, &len);
    assert (len == 2004 && out [1] == 126 && out [2] == 0x07 && out [3] == 0xd0);
    s_flatten (frame, 3, out, &len);
    assert (len == 2001 && out [0] == 0xd0 && out [1] == 'x');
    wsr_outframe_unlink (&frame);
    frame = wsr_outframe_new (WSR_KIND_BINARY, big, 70000, NULL);
    s_flatten (frame, 0, out, &len);
    assert (len == 70010 && out [1] == 127 && out [7] == 0x01 && out [8] == 0x11
         && out [9] == 0x70);
    wsr_outframe_unlink (&frame);
    frame = wsr_outframe_new_raw ((const uint8_t *) "\x88\x02\x03\xe9", 4);
    s_flatten (frame, 1, out, &len);
    assert (len == 3 && memcmp (out, "\x02\x03\xe9", 3) == 0);
    wsr_outframe_unlink (&frame);
    //  A compressed message carries RSV1
    frame = wsr_outframe_new (WSR_KIND_TEXT | WSR_OUTFRAME_RSV1, (const uint8_t *) "z", 1, NULL);
    s_flatten (frame, 0, out, &len);
    assert (len == 3 && memcmp (out, "\xc1\x01z", 3) == 0);
    wsr_outframe_unlink (&frame);
    free (big);
}
