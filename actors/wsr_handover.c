//  wsr_handover — the handover wire format
//
//  What an upgrading process sends its replacement over a Unix socket, one
//  frame at a time: HELLO (new → old), LISTENER and SESSION frames each with
//  one descriptor (wsr_passfd), DONE, and ACK or REFUSE. Every frame has the
//  magic "WSRH" and the protocol version, so a replacement built with another
//  version is refused at its HELLO (and the old process keeps its sessions).
//
//  A SESSION body, big-endian:
//    u64 id · u32 flags · i64 expiry · i64 since_ms · u8 timer · i64 timer_ms
//    · u32 msg_tokens (IEEE float bits) · u32 byte_tokens · i64 rate_age_ms
//    · str user · u8 channel count · str channel × count
//    · mark × (1 + count): u8 kind · u64 value (user topic first)
//    · blob output · blob input
//  A TOPICS body: u16 worker index · u16 worker count · u32 n · key × n
//  (u16 length + bytes, no NUL).
//  str = u16 length + bytes (1..WSR_MAX_ID_LEN), blob = u32 length + bytes.
//  Decoding checks every length against what is left, the ids against the
//  id rules, and that nothing follows the last field.

#include "wsr_classes.h"

static const uint8_t s_magic [4] = { 'W', 'S', 'R', 'H' };

//  --------------------------------------------------------------------------
//  Writer over a buffer sized in advance

typedef struct {
    uint8_t *data;
    size_t used;
} s_out_t;

static void
s_put (s_out_t *out, uint64_t value, int bytes)
{
    for (int i = bytes - 1; i >= 0; i--)
        out->data [out->used++] = (uint8_t) (value >> (8 * i));
}

static void
s_put_bytes (s_out_t *out, const void *data, size_t size)
{
    if (size)
        memcpy (out->data + out->used, data, size);
    out->used += size;
}

static uint32_t
s_float_bits (float value)
{
    uint32_t bits;
    memcpy (&bits, &value, sizeof bits);
    return bits;
}

//  --------------------------------------------------------------------------
//  Reader that fails once anything is missing

typedef struct {
    const uint8_t *data;
    size_t size, used;
    bool bad;
} s_in_t;

static uint64_t
s_get (s_in_t *in, int bytes)
{
    if (in->bad || in->size - in->used < (size_t) bytes) {
        in->bad = true;
        return 0;
    }
    uint64_t value = 0;
    for (int i = 0; i < bytes; i++)
        value = value << 8 | in->data [in->used++];
    return value;
}

static uint8_t *
s_get_blob (s_in_t *in, size_t *size_p)
{
    size_t size = (size_t) s_get (in, 4);
    *size_p = 0;
    if (in->bad || in->size - in->used < size) {
        in->bad = true;
        return NULL;
    }
    if (size == 0)
        return NULL;
    uint8_t *blob = (uint8_t *) malloc (size);
    assert (blob);
    memcpy (blob, in->data + in->used, size);
    in->used += size;
    *size_p = size;
    return blob;
}

static char *
s_get_id (s_in_t *in)
{
    size_t size = (size_t) s_get (in, 2);
    if (in->bad || size == 0 || size > WSR_MAX_ID_LEN || in->size - in->used < size) {
        in->bad = true;
        return NULL;
    }
    char *id = (char *) malloc (size + 1);
    assert (id);
    memcpy (id, in->data + in->used, size);
    id [size] = 0;
    in->used += size;
    if (!wsr_util_id_valid (id, size)) {
        in->bad = true;
        free (id);
        return NULL;
    }
    return id;
}

//  --------------------------------------------------------------------------
//  Free what a record owns.
void
wsr_handover_session_clear (wsr_handover_session_t *self)
{
    assert (self);
    free (self->user);
    for (size_t i = 0; i < self->channel_count; i++)
        free (self->channels [i]);
    free (self->output);
    free (self->input);
    memset (self, 0, sizeof *self);
}

//  --------------------------------------------------------------------------
//  Encode one session as a whole frame.
uint8_t *
wsr_handover_session_encode (const wsr_handover_session_t *self, size_t *size_p)
{
    assert (self && size_p);
    size_t user_len = self->user? strlen (self->user): 0;
    if (user_len == 0 || user_len > WSR_MAX_ID_LEN
    ||  self->channel_count > WSR_HANDOVER_MAX_CHANNELS)
        return NULL;
    size_t body = 8 + 4 + 8 + 8 + 1 + 8 + 4 + 4 + 8 + 2 + user_len + 1
                + 9 * (1 + self->channel_count)
                + 4 + self->output_size + 4 + self->input_size;
    for (size_t i = 0; i < self->channel_count; i++) {
        size_t len = strlen (self->channels [i]);
        if (len == 0 || len > WSR_MAX_ID_LEN)
            return NULL;
        body += 2 + len;
    }
    if (body > WSR_HANDOVER_MAX_BODY)
        return NULL;
    s_out_t out = { (uint8_t *) malloc (WSR_HANDOVER_HEADER + body), 0 };
    assert (out.data);
    s_put_bytes (&out, s_magic, 4);
    s_put (&out, WSR_HANDOVER_VERSION, 2);
    s_put (&out, WSR_HANDOVER_SESSION, 1);
    s_put (&out, body, 4);
    s_put (&out, self->id, 8);
    s_put (&out, self->flags, 4);
    s_put (&out, (uint64_t) self->expiry, 8);
    s_put (&out, (uint64_t) self->since_ms, 8);
    s_put (&out, self->timer, 1);
    s_put (&out, (uint64_t) self->timer_ms, 8);
    s_put (&out, s_float_bits (self->msg_tokens), 4);
    s_put (&out, s_float_bits (self->byte_tokens), 4);
    s_put (&out, (uint64_t) self->rate_age_ms, 8);
    s_put (&out, user_len, 2);
    s_put_bytes (&out, self->user, user_len);
    s_put (&out, self->channel_count, 1);
    for (size_t i = 0; i < self->channel_count; i++) {
        size_t len = strlen (self->channels [i]);
        s_put (&out, len, 2);
        s_put_bytes (&out, self->channels [i], len);
    }
    for (size_t i = 0; i <= self->channel_count; i++) {
        s_put (&out, self->marks [i].kind, 1);
        s_put (&out, self->marks [i].value, 8);
    }
    s_put (&out, self->output_size, 4);
    s_put_bytes (&out, self->output, self->output_size);
    s_put (&out, self->input_size, 4);
    s_put_bytes (&out, self->input, self->input_size);
    assert (out.used == WSR_HANDOVER_HEADER + body);
    *size_p = out.used;
    return out.data;
}

//  --------------------------------------------------------------------------
//  Decode a SESSION body.
int
wsr_handover_session_decode (const uint8_t *body, size_t size, wsr_handover_session_t *self)
{
    assert (self);
    memset (self, 0, sizeof *self);
    s_in_t in = { body, size, 0, false };
    self->id = s_get (&in, 8);
    self->flags = (uint32_t) s_get (&in, 4);
    self->expiry = (int64_t) s_get (&in, 8);
    self->since_ms = (int64_t) s_get (&in, 8);
    self->timer = (uint8_t) s_get (&in, 1);
    self->timer_ms = (int64_t) s_get (&in, 8);
    uint32_t bits = (uint32_t) s_get (&in, 4);
    memcpy (&self->msg_tokens, &bits, sizeof bits);
    bits = (uint32_t) s_get (&in, 4);
    memcpy (&self->byte_tokens, &bits, sizeof bits);
    self->rate_age_ms = (int64_t) s_get (&in, 8);
    self->user = s_get_id (&in);
    size_t count = (size_t) s_get (&in, 1);
    if (count > WSR_HANDOVER_MAX_CHANNELS)
        in.bad = true;
    for (size_t i = 0; i < count && !in.bad; i++) {
        char *channel = s_get_id (&in);
        if (channel)
            self->channels [self->channel_count++] = channel;
    }
    for (size_t i = 0; i <= count && !in.bad; i++) {
        self->marks [i].kind = (uint8_t) s_get (&in, 1);
        self->marks [i].value = s_get (&in, 8);
        if (self->marks [i].kind > WSR_HANDOVER_MARK_OFFSET)
            in.bad = true;
    }
    self->output = s_get_blob (&in, &self->output_size);
    self->input = s_get_blob (&in, &self->input_size);
    if (in.bad || in.used != size
    ||  (self->flags & ~(uint32_t) (WSR_HANDOVER_V1 | WSR_HANDOVER_HS_PENDING
                                    | WSR_HANDOVER_DEFLATE))
    ||  self->timer > WSR_HANDOVER_TIMER_PINGED) {
        wsr_handover_session_clear (self);
        return -1;
    }
    return 0;
}

//  --------------------------------------------------------------------------
//  A payload's fingerprint.
uint64_t
wsr_handover_hash (int kind, const uint8_t *data, size_t size)
{
    static const unsigned char key [crypto_shorthash_KEYBYTES] = "wsrouter-handovr";
    unsigned char out [crypto_shorthash_BYTES];
    uint8_t prefix = (uint8_t) kind;
    //  The payload hashed, the kind folded in after (no copy of the payload)
    crypto_shorthash (out, data, size, key);
    uint64_t value = 0;
    for (int i = 0; i < 8; i++)
        value = value << 8 | out [i];
    value ^= (uint64_t) prefix * 0x9E3779B97F4A7C15ULL;
    return value? value: 1;
}

//  --------------------------------------------------------------------------
//  TOPICS frames.
uint8_t *
wsr_handover_topics_encode (int index, int count, const char *const *keys, size_t n,
                            size_t *size_p)
{
    assert (size_p && (keys || n == 0));
    if (index < 0 || index > UINT16_MAX || count < 1 || count > UINT16_MAX
    ||  n > UINT32_MAX)
        return NULL;
    size_t body = 2 + 2 + 4;
    for (size_t i = 0; i < n; i++) {
        size_t len = strlen (keys [i]);
        if (len == 0 || len >= WSR_TOPIC_MAX)
            return NULL;
        body += 2 + len;
    }
    if (body > WSR_HANDOVER_MAX_BODY)
        return NULL;
    s_out_t out = { (uint8_t *) malloc (WSR_HANDOVER_HEADER + body), 0 };
    assert (out.data);
    s_put_bytes (&out, s_magic, 4);
    s_put (&out, WSR_HANDOVER_VERSION, 2);
    s_put (&out, WSR_HANDOVER_TOPICS, 1);
    s_put (&out, body, 4);
    s_put (&out, (uint64_t) index, 2);
    s_put (&out, (uint64_t) count, 2);
    s_put (&out, n, 4);
    for (size_t i = 0; i < n; i++) {
        size_t len = strlen (keys [i]);
        s_put (&out, len, 2);
        s_put_bytes (&out, keys [i], len);
    }
    *size_p = out.used;
    return out.data;
}

int
wsr_handover_topics_decode (const uint8_t *body, size_t size, int *index_p, int *count_p,
                            zlistx_t *list)
{
    assert (index_p && count_p && list);
    s_in_t in = { body, size, 0, false };
    *index_p = (int) s_get (&in, 2);
    *count_p = (int) s_get (&in, 2);
    size_t n = (size_t) s_get (&in, 4);
    for (size_t i = 0; i < n && !in.bad; i++) {
        size_t len = (size_t) s_get (&in, 2);
        if (in.bad || len == 0 || len >= WSR_TOPIC_MAX || in.size - in.used < len
        ||  memchr (in.data + in.used, 0, len)) {
            in.bad = true;
            break;
        }
        char *key = (char *) malloc (len + 1);
        assert (key);
        memcpy (key, in.data + in.used, len);
        key [len] = 0;
        in.used += len;
        zlistx_add_end (list, key);
    }
    if (in.bad || in.used != size || *count_p < 1 || *index_p >= *count_p)
        return -1;
    return 0;
}

//  --------------------------------------------------------------------------
//  A frame of any type.
uint8_t *
wsr_handover_frame (wsr_handover_type_t type, const void *body, size_t size, size_t *size_p)
{
    assert (size_p);
    if (size > WSR_HANDOVER_MAX_BODY)
        return NULL;
    s_out_t out = { (uint8_t *) malloc (WSR_HANDOVER_HEADER + size), 0 };
    assert (out.data);
    s_put_bytes (&out, s_magic, 4);
    s_put (&out, WSR_HANDOVER_VERSION, 2);
    s_put (&out, type, 1);
    s_put (&out, size, 4);
    s_put_bytes (&out, body, size);
    *size_p = out.used;
    return out.data;
}

//  --------------------------------------------------------------------------
//  Check a header.
int64_t
wsr_handover_header (const uint8_t *header, wsr_handover_type_t *type_p)
{
    assert (header && type_p);
    if (memcmp (header, s_magic, 4))
        return -1;
    if ((header [4] << 8 | header [5]) != WSR_HANDOVER_VERSION)
        return -2;
    uint32_t size = (uint32_t) header [7] << 24 | (uint32_t) header [8] << 16
                  | (uint32_t) header [9] << 8 | header [10];
    if (size > WSR_HANDOVER_MAX_BODY || header [6] < WSR_HANDOVER_HELLO
    ||  header [6] > WSR_HANDOVER_TOPICS)
        return -3;
    *type_p = (wsr_handover_type_t) header [6];
    return size;
}

//  --------------------------------------------------------------------------
//  Read one frame.
int
wsr_handover_read (int sock, wsr_handover_type_t *type_p, uint8_t **body_p, size_t *size_p,
                   int *fd_p, int timeout_ms)
{
    assert (type_p && body_p && size_p && fd_p);
    int64_t deadline = wsr_util_mono_ms () + timeout_ms;
    *body_p = NULL;
    *size_p = 0;
    uint8_t header [WSR_HANDOVER_HEADER];
    if (wsr_passfd_recv (sock, header, sizeof header, fd_p, timeout_ms))
        return -1;
    int64_t size = wsr_handover_header (header, type_p);
    if (size < 0) {
        if (*fd_p >= 0)
            close (*fd_p);
        *fd_p = -1;
        errno = size == -2? EPROTONOSUPPORT: EPROTO;
        return -1;
    }
    if (size > 0) {
        *body_p = (uint8_t *) malloc ((size_t) size);
        assert (*body_p);
        int left = (int) (deadline - wsr_util_mono_ms ());
        if (wsr_passfd_recv (sock, *body_p, (size_t) size, NULL, left > 0? left: 0)) {
            int saved = errno;
            free (*body_p);
            *body_p = NULL;
            if (*fd_p >= 0)
                close (*fd_p);
            *fd_p = -1;
            errno = saved;
            return -1;
        }
    }
    *size_p = (size_t) size;
    return 0;
}

//  --------------------------------------------------------------------------
//  Self test: round trip of a session with a half-received frame and queued
//  output, an empty one, every truncation refused, version and magic
//  checks, trailing bytes, bad ids, and a frame with a descriptor read back
//  over a socketpair.
void
wsr_handover_test (bool verbose)
{
    printf (" * wsr_handover: ");
    if (verbose)
        printf ("\n");
    //  A text frame "hello world" masked, cut after 7 of its 17 bytes
    const uint8_t half [] = { 0x81, 0x8B, 1, 2, 3, 4, 'h' ^ 1 };
    //  The 101's tail and a queued server frame "hi"
    const uint8_t queued [] = { '\r', '\n', '\r', '\n', 0x81, 0x02, 'h', 'i' };
    wsr_handover_session_t s = {
        .id = 0x0102030405060708ULL,
        .flags = WSR_HANDOVER_V1 | WSR_HANDOVER_HS_PENDING | WSR_HANDOVER_DEFLATE,
        .expiry = 1900000000, .since_ms = 1765000000123LL, .timer = WSR_HANDOVER_TIMER_PINGED,
        .timer_ms = -5, .msg_tokens = 12.5f, .byte_tokens = -3.25f, .rate_age_ms = 250,
        .user = strdup ("u-42"), .channel_count = 2,
        .channels = { strdup ("lobby"), strdup ("room.7") },
        .marks = { { WSR_HANDOVER_MARK_HASH, 0x1122334455667788ULL },
                   { WSR_HANDOVER_MARK_OFFSET, 42 }, { WSR_HANDOVER_MARK_NONE, 0 } },
        .output = (uint8_t *) malloc (sizeof queued), .output_size = sizeof queued,
        .input = (uint8_t *) malloc (sizeof half), .input_size = sizeof half
    };
    memcpy (s.output, queued, sizeof queued);
    memcpy (s.input, half, sizeof half);
    size_t size = 0;
    uint8_t *frame = wsr_handover_session_encode (&s, &size);
    assert (frame);
    wsr_handover_type_t type;
    int64_t body = wsr_handover_header (frame, &type);
    assert (type == WSR_HANDOVER_SESSION && body == (int64_t) (size - WSR_HANDOVER_HEADER));

    wsr_handover_session_t d;
    int rc = wsr_handover_session_decode (frame + WSR_HANDOVER_HEADER, (size_t) body, &d);
    assert (rc == 0);
    assert (d.id == s.id && d.flags == s.flags && d.expiry == s.expiry);
    assert (d.since_ms == s.since_ms && d.timer == s.timer && d.timer_ms == -5);
    assert (d.msg_tokens == 12.5f && d.byte_tokens == -3.25f && d.rate_age_ms == 250);
    assert (streq (d.user, "u-42") && d.channel_count == 2);
    assert (streq (d.channels [0], "lobby") && streq (d.channels [1], "room.7"));
    assert (d.output_size == sizeof queued && !memcmp (d.output, queued, sizeof queued));
    assert (d.input_size == sizeof half && !memcmp (d.input, half, sizeof half));
    assert (d.marks [0].kind == WSR_HANDOVER_MARK_HASH
         && d.marks [0].value == 0x1122334455667788ULL);
    assert (d.marks [1].kind == WSR_HANDOVER_MARK_OFFSET && d.marks [1].value == 42);
    assert (d.marks [2].kind == WSR_HANDOVER_MARK_NONE && d.marks [2].value == 0);
    wsr_handover_session_clear (&d);
    //  An unknown mark kind is refused
    size_t mark_at = WSR_HANDOVER_HEADER + 8 + 4 + 8 + 8 + 1 + 8 + 4 + 4 + 8 + 2 + 4 + 1
                   + 2 + 5 + 2 + 6;
    assert (frame [mark_at] == WSR_HANDOVER_MARK_HASH);
    frame [mark_at] = 9;
    rc = wsr_handover_session_decode (frame + WSR_HANDOVER_HEADER, (size_t) body, &d);
    assert (rc == -1);
    frame [mark_at] = WSR_HANDOVER_MARK_HASH;

    //  Fingerprints: stable, never 0, the kind counts, the payload counts
    uint64_t h1 = wsr_handover_hash (1, (const uint8_t *) "abc", 3);
    assert (h1 && h1 == wsr_handover_hash (1, (const uint8_t *) "abc", 3));
    assert (h1 != wsr_handover_hash (2, (const uint8_t *) "abc", 3));
    assert (h1 != wsr_handover_hash (1, (const uint8_t *) "abd", 3));
    assert (wsr_handover_hash (1, NULL, 0) != 0);

    //  TOPICS: round trip, every truncation refused, bad keys refused
    const char *keys [] = { "user:a", "channel:lobby", "user:b.c" };
    size_t tsize = 0;
    uint8_t *topics = wsr_handover_topics_encode (1, 2, keys, 3, &tsize);
    assert (topics);
    int64_t tbody = wsr_handover_header (topics, &type);
    assert (type == WSR_HANDOVER_TOPICS && tbody == (int64_t) (tsize - WSR_HANDOVER_HEADER));
    zlistx_t *list = zlistx_new ();
    zlistx_set_destructor (list, (zlistx_destructor_fn *) zstr_free);
    int index = -1, count = -1;
    rc = wsr_handover_topics_decode (topics + WSR_HANDOVER_HEADER, (size_t) tbody, &index,
                                     &count, list);
    assert (rc == 0 && index == 1 && count == 2 && zlistx_size (list) == 3);
    assert (streq ((char *) zlistx_first (list), "user:a"));
    assert (streq ((char *) zlistx_next (list), "channel:lobby"));
    assert (streq ((char *) zlistx_next (list), "user:b.c"));
    for (size_t cut = 0; cut < (size_t) tbody; cut++) {
        zlistx_purge (list);
        assert (wsr_handover_topics_decode (topics + WSR_HANDOVER_HEADER, cut, &index,
                                            &count, list) == -1);
    }
    free (topics);
    const char *empty [] = { "" };
    assert (wsr_handover_topics_encode (0, 1, empty, 1, &tsize) == NULL);
    assert (wsr_handover_topics_encode (2, 0, keys, 1, &tsize) == NULL);
    topics = wsr_handover_topics_encode (0, 1, NULL, 0, &tsize);     //  a worker with none
    assert (topics);
    zlistx_purge (list);
    rc = wsr_handover_topics_decode (topics + WSR_HANDOVER_HEADER,
                                     tsize - WSR_HANDOVER_HEADER, &index, &count, list);
    assert (rc == 0 && index == 0 && count == 1 && zlistx_size (list) == 0);
    //  A version-1 peer's frame is refused at its header
    topics [5] = 1;
    assert (wsr_handover_header (topics, &type) == -2);
    free (topics);
    zlistx_destroy (&list);

    //  Every truncation of the body is refused, and so is one byte more
    for (size_t cut = 0; cut < (size_t) body; cut++) {
        rc = wsr_handover_session_decode (frame + WSR_HANDOVER_HEADER, cut, &d);
        assert (rc == -1 && d.user == NULL && d.output == NULL);
    }
    uint8_t *longer = (uint8_t *) malloc (size + 1);
    memcpy (longer, frame, size);
    longer [size] = 0;
    rc = wsr_handover_session_decode (longer + WSR_HANDOVER_HEADER, (size_t) body + 1, &d);
    assert (rc == -1);
    free (longer);

    //  Another version, a bad magic, an unknown type, an oversize body
    uint8_t header [WSR_HANDOVER_HEADER];
    memcpy (header, frame, sizeof header);
    header [5] = WSR_HANDOVER_VERSION + 1;
    assert (wsr_handover_header (header, &type) == -2);
    memcpy (header, frame, sizeof header);
    header [0] = 'X';
    assert (wsr_handover_header (header, &type) == -1);
    memcpy (header, frame, sizeof header);
    header [6] = 99;
    assert (wsr_handover_header (header, &type) == -3);
    memcpy (header, frame, sizeof header);
    header [7] = 0x7F;
    assert (wsr_handover_header (header, &type) == -3);

    //  An invalid user id in the body (a space) is refused
    size_t at = WSR_HANDOVER_HEADER + 8 + 4 + 8 + 8 + 1 + 8 + 4 + 4 + 8 + 2;
    assert (frame [at] == 'u');
    frame [at + 1] = ' ';
    rc = wsr_handover_session_decode (frame + WSR_HANDOVER_HEADER, (size_t) body, &d);
    assert (rc == -1);
    free (frame);

    //  Limits on encoding: no user, too long an id
    free (s.user);
    s.user = NULL;
    assert (wsr_handover_session_encode (&s, &size) == NULL);
    s.user = (char *) malloc (WSR_MAX_ID_LEN + 2);
    memset (s.user, 'a', WSR_MAX_ID_LEN + 1);
    s.user [WSR_MAX_ID_LEN + 1] = 0;
    assert (wsr_handover_session_encode (&s, &size) == NULL);
    wsr_handover_session_clear (&s);

    //  A minimal session: no channels, nothing queued, nothing half-read
    wsr_handover_session_t m = { .id = 7, .user = strdup ("a") };
    frame = wsr_handover_session_encode (&m, &size);
    assert (frame);
    rc = wsr_handover_session_decode (frame + WSR_HANDOVER_HEADER,
                                      size - WSR_HANDOVER_HEADER, &d);
    assert (rc == 0 && d.id == 7 && d.channel_count == 0 && !d.output && !d.input);
    wsr_handover_session_clear (&d);
    wsr_handover_session_clear (&m);

    //  Over a socketpair with a descriptor, then a HELLO, then a frame of
    //  another version: refused with EPROTONOSUPPORT
    int pair [2];
    rc = socketpair (AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0, pair);
    assert (rc == 0);
    rc = wsr_passfd_send (pair [0], frame, size, pair [0], 1000);
    assert (rc == 0);
    free (frame);
    frame = wsr_handover_frame (WSR_HANDOVER_HELLO, "build-1", 7, &size);
    rc = wsr_passfd_send (pair [0], frame, size, -1, 1000);
    assert (rc == 0);
    frame [5] = WSR_HANDOVER_VERSION + 1;
    rc = wsr_passfd_send (pair [0], frame, size, -1, 1000);
    assert (rc == 0);
    free (frame);
    uint8_t *got = NULL;
    size_t got_size = 0;
    int fd = -1;
    rc = wsr_handover_read (pair [1], &type, &got, &got_size, &fd, 1000);
    assert (rc == 0 && type == WSR_HANDOVER_SESSION && fd >= 0);
    rc = wsr_handover_session_decode (got, got_size, &d);
    assert (rc == 0 && streq (d.user, "a"));
    wsr_handover_session_clear (&d);
    free (got);
    close (fd);
    rc = wsr_handover_read (pair [1], &type, &got, &got_size, &fd, 1000);
    assert (rc == 0 && type == WSR_HANDOVER_HELLO && got_size == 7 && fd == -1);
    assert (!memcmp (got, "build-1", 7));
    free (got);
    rc = wsr_handover_read (pair [1], &type, &got, &got_size, &fd, 1000);
    assert (rc == -1 && errno == EPROTONOSUPPORT && got == NULL);
    //  A truncated frame (header promises more than comes before EOF), on
    //  a fresh pair: after a refused header the stream is abandoned
    close (pair [0]);
    close (pair [1]);
    rc = socketpair (AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0, pair);
    assert (rc == 0);
    frame = wsr_handover_frame (WSR_HANDOVER_REFUSE, "why", 3, &size);
    rc = wsr_passfd_send (pair [0], frame, size - 1, -1, 1000);
    assert (rc == 0);
    free (frame);
    close (pair [0]);
    rc = wsr_handover_read (pair [1], &type, &got, &got_size, &fd, 1000);
    assert (rc == -1 && errno == ECONNRESET && got == NULL && fd == -1);
    close (pair [1]);
    printf ("OK\n");
}
