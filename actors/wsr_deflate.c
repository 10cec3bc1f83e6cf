//  wsr_deflate — permessage-deflate (RFC 7692): negotiation, compress once, bounded inflate
//
//  We answer every acceptable offer the same way (WSR_DEFLATE_RESPONSE):
//  server_no_context_takeover and client_no_context_takeover. With no
//  context kept on either side a compressed message depends on nothing
//  before it, so
//    - a worker compresses a broadcast once and links the one frame into
//      every deflate recipient's queue, as wsr_outframe does for plain
//      frames (raw and deflate sessions: two variants at most);
//    - one inflater per worker serves all its sessions, reset per message:
//      no zlib state (~44 KB with a 32 KB window) per session.
//  Inflating stops as soon as the output would pass max_message, so a zip
//  bomb costs at most max_message bytes of memory and is closed with 1009.
//
//  One instance belongs to one session worker thread (not thread-safe).

#include "wsr_classes.h"
#include <zlib.h>

#define S_WINDOW_BITS       15      //  raw deflate, 32 KB window (RFC 7692 default)
#define S_MEM_LEVEL         8       //  zlib's default
#define S_TAIL_SIZE         4       //  00 00 ff ff, removed after a sync flush

struct _wsr_deflate_t {
    z_stream deflater;              //  raw deflate, reset per message
    z_stream inflater;              //  raw inflate, reset per message
    bool deflater_ok, inflater_ok;  //  initialised (zlib out of memory otherwise)
    size_t threshold;               //  smaller payloads go out plain
    size_t max_message;             //  inflated size bound
    uint8_t *out;                   //  compression buffer (owned)
    size_t out_cap;
    uint8_t *in;                    //  inflation buffer (owned), up to max_message + 1
    size_t in_cap;
    wsr_metrics_t *metrics;         //  shared counters (not owned), may be NULL
};

//  --------------------------------------------------------------------------
//  Negotiation

//  One parameter of an offer: name, and value (quotes removed) or "".
typedef struct {
    char name [32];
    char value [8];
    bool has_value;
} s_param_t;

//  Parse "name[=value]" between start and end; false if malformed.
static bool
s_param_parse (const char *start, const char *end, s_param_t *param)
{
    while (start < end && (*start == ' ' || *start == '\t'))
        start++;
    while (end > start && (end [-1] == ' ' || end [-1] == '\t'))
        end--;
    const char *equals = memchr (start, '=', (size_t) (end - start));
    const char *name_end = equals? equals: end;
    while (name_end > start && (name_end [-1] == ' ' || name_end [-1] == '\t'))
        name_end--;
    size_t name_len = (size_t) (name_end - start);
    if (name_len == 0 || name_len >= sizeof param->name)
        return false;
    memcpy (param->name, start, name_len);
    param->name [name_len] = 0;
    param->has_value = equals != NULL;
    param->value [0] = 0;
    if (equals) {
        const char *value = equals + 1;
        while (value < end && (*value == ' ' || *value == '\t'))
            value++;
        size_t value_len = (size_t) (end - value);
        if (value_len >= 2 && *value == '"' && value [value_len - 1] == '"') {
            value++;
            value_len -= 2;
        }
        if (value_len == 0 || value_len >= sizeof param->value)
            return false;
        memcpy (param->value, value, value_len);
        param->value [value_len] = 0;
    }
    return true;
}

//  Window bits: 8..15, digits only.
static int
s_window_bits (const char *value)
{
    if (!*value || strlen (value) > 2 || strspn (value, "0123456789") != strlen (value))
        return -1;
    int bits = atoi (value);
    return bits >= 8 && bits <= 15? bits: -1;
}

//  One offer (without its commas): "permessage-deflate; p1; p2=v".
static bool
s_offer_ok (const char *start, const char *end)
{
    const char *semi = memchr (start, ';', (size_t) (end - start));
    const char *name_end = semi? semi: end;
    while (start < name_end && (*start == ' ' || *start == '\t'))
        start++;
    while (name_end > start && (name_end [-1] == ' ' || name_end [-1] == '\t'))
        name_end--;
    if ((size_t) (name_end - start) != 18 || strncasecmp (start, "permessage-deflate", 18))
        return false;
    bool seen [4] = { false };
    static const char *known [4] = {
        "server_no_context_takeover", "client_no_context_takeover",
        "server_max_window_bits", "client_max_window_bits"
    };
    while (semi) {
        const char *param_start = semi + 1;
        semi = memchr (param_start, ';', (size_t) (end - param_start));
        const char *param_end = semi? semi: end;
        s_param_t param;
        if (!s_param_parse (param_start, param_end, &param))
            return false;
        int which = -1;
        for (int i = 0; i < 4; i++)
            if (strcasecmp (param.name, known [i]) == 0)
                which = i;
        if (which < 0 || seen [which])
            return false;               //  unknown or repeated (RFC 7692 §7.1)
        seen [which] = true;
        if (which < 2 && param.has_value)
            return false;               //  the takeover flags have no value
        //  We compress with a 32 KB window: an offer that limits it declines
        if (which == 2 && s_window_bits (param.value) != 15)
            return false;
        //  The client's own window: any valid value (or none) is fine, we
        //  inflate with the largest
        if (which == 3 && param.has_value && s_window_bits (param.value) < 0)
            return false;
    }
    return true;
}

//  --------------------------------------------------------------------------
//  Is any offer acceptable?
bool
wsr_deflate_accepts (const char *offers)
{
    while (offers && *offers) {
        const char *end = strchr (offers, ',');
        if (!end)
            end = offers + strlen (offers);
        if (s_offer_ok (offers, end))
            return true;
        offers = *end? end + 1: end;
    }
    return false;
}

//  --------------------------------------------------------------------------
//  A worker's compressor and inflater.
wsr_deflate_t *
wsr_deflate_new (int level, size_t threshold, size_t max_message, wsr_metrics_t *metrics)
{
    wsr_deflate_t *self = (wsr_deflate_t *) zmalloc (sizeof (wsr_deflate_t));
    self->threshold = threshold;
    self->max_message = max_message;
    self->metrics = metrics;
    self->deflater_ok = deflateInit2 (&self->deflater, level, Z_DEFLATED, -S_WINDOW_BITS,
                                      S_MEM_LEVEL, Z_DEFAULT_STRATEGY) == Z_OK;
    self->inflater_ok = inflateInit2 (&self->inflater, -S_WINDOW_BITS) == Z_OK;
    if (!self->deflater_ok || !self->inflater_ok)
        wsr_deflate_destroy (&self);
    return self;
}

//  --------------------------------------------------------------------------
//  Destroy.
void
wsr_deflate_destroy (wsr_deflate_t **self_p)
{
    assert (self_p);
    if (*self_p) {
        wsr_deflate_t *self = *self_p;
        if (self->deflater_ok)
            deflateEnd (&self->deflater);
        if (self->inflater_ok)
            inflateEnd (&self->inflater);
        free (self->out);
        free (self->in);
        free (self);
        *self_p = NULL;
    }
}

//  --------------------------------------------------------------------------
//  Compress one message into a shared RSV1 frame.
wsr_outframe_t *
wsr_deflate_frame (wsr_deflate_t *self, int kind, const uint8_t *data, size_t size)
{
    assert (self);
    if (size < self->threshold || size > UINT32_MAX)
        return NULL;
    //  A sync flush adds at most a few bytes per block to the bound
    size_t need = deflateBound (&self->deflater, (uLong) size) + 16;
    if (need > self->out_cap) {
        free (self->out);
        self->out = (uint8_t *) malloc (need);
        assert (self->out);
        self->out_cap = need;
    }
    deflateReset (&self->deflater);
    self->deflater.next_in = (Bytef *) data;
    self->deflater.avail_in = (uInt) size;
    self->deflater.next_out = self->out;
    self->deflater.avail_out = (uInt) self->out_cap;
    int rc = deflate (&self->deflater, Z_SYNC_FLUSH);
    size_t out_size = self->out_cap - self->deflater.avail_out;
    if (rc != Z_OK || self->deflater.avail_in != 0 || out_size < S_TAIL_SIZE
    ||  memcmp (self->out + out_size - S_TAIL_SIZE, "\x00\x00\xff\xff", S_TAIL_SIZE))
        return NULL;                    //  cannot happen with the bound; go plain
    out_size -= S_TAIL_SIZE;            //  RFC 7692 §7.2.1
    if (out_size >= size)
        return NULL;                    //  incompressible: plain is smaller
    if (self->metrics) {
        wsr_metrics_add (self->metrics, WSR_M_DEFLATE_COMPRESSED, 1);
        wsr_metrics_add (self->metrics, WSR_M_DEFLATE_BYTES_IN, (int64_t) size);
        wsr_metrics_add (self->metrics, WSR_M_DEFLATE_BYTES_OUT, (int64_t) out_size);
    }
    return wsr_outframe_new (kind | WSR_OUTFRAME_RSV1, self->out, out_size, NULL);
}

//  --------------------------------------------------------------------------
//  Inflate one message, bounded.
int
wsr_deflate_inflate (wsr_deflate_t *self, const uint8_t *data, size_t size,
                     const uint8_t **out, size_t *out_size)
{
    assert (self && out && out_size);
    if (size > UINT32_MAX)
        return WSR_DEFLATE_TOO_BIG;
    inflateReset (&self->inflater);
    //  Room for one byte past the bound: output that fills it is too big
    size_t used = 0;
    static const uint8_t tail [S_TAIL_SIZE] = { 0x00, 0x00, 0xff, 0xff };
    for (int pass = 0; pass < 2; pass++) {
        self->inflater.next_in = (Bytef *) (pass == 0? data: tail);
        self->inflater.avail_in = (uInt) (pass == 0? size: S_TAIL_SIZE);
        while (self->inflater.avail_in > 0) {
            if (used == self->in_cap) {
                if (self->in_cap > self->max_message)
                    return WSR_DEFLATE_TOO_BIG;
                size_t cap = self->in_cap? self->in_cap * 2: 4096;
                if (cap > self->max_message + 1)
                    cap = self->max_message + 1;
                self->in = (uint8_t *) realloc (self->in, cap);
                assert (self->in);
                self->in_cap = cap;
            }
            self->inflater.next_out = self->in + used;
            self->inflater.avail_out = (uInt) (self->in_cap - used);
            int rc = inflate (&self->inflater, Z_SYNC_FLUSH);
            used = self->in_cap - self->inflater.avail_out;
            if (used > self->max_message)
                return WSR_DEFLATE_TOO_BIG;
            if (rc == Z_STREAM_END)
                break;                  //  a final block: whatever follows is ignored
            if (rc != Z_OK && rc != Z_BUF_ERROR)
                return WSR_DEFLATE_CORRUPT;
            if (rc == Z_BUF_ERROR && self->inflater.avail_out > 0)
                break;                  //  no progress possible: input used up
        }
    }
    *out = self->in;
    *out_size = used;
    //  Keep a large buffer only while it is in use: idle workers shrink back
    return 0;
}

//  --------------------------------------------------------------------------
//  Worst-case compressed size: a sender with a small memLevel flushes tiny
//  blocks (128 symbols at memLevel 1), each stored with 5 bytes' overhead;
//  zlib's own conservative bound for any settings is 1/8 + 1/64 more. Only
//  the wire size is this loose: the inflated size is bounded by max_message.
size_t
wsr_deflate_wire_max (size_t max_message)
{
    return max_message + (max_message + 7) / 8 + (max_message + 63) / 64 + 64;
}

//  --------------------------------------------------------------------------
//  Selftest

//  Frame bytes of an outframe, header skipped.
static size_t
s_payload (wsr_outframe_t *frame, uint8_t *out, uint8_t *first_byte)
{
    struct iovec iov [2];
    int n = wsr_outframe_iov (frame, 0, iov);
    uint8_t all [70000];
    size_t len = 0;
    for (int i = 0; i < n; i++) {
        memcpy (all + len, iov [i].iov_base, iov [i].iov_len);
        len += iov [i].iov_len;
    }
    *first_byte = all [0];
    size_t header = (all [1] & 0x7f) < 126? 2: (all [1] & 0x7f) == 126? 4: 10;
    memcpy (out, all + header, len - header);
    return len - header;
}

void
wsr_deflate_test (bool verbose)
{
    (void) verbose;
    //  Negotiation: what we accept, what we decline (never an error)
    assert (wsr_deflate_accepts ("permessage-deflate"));
    assert (wsr_deflate_accepts ("permessage-deflate; client_max_window_bits"));
    assert (wsr_deflate_accepts ("permessage-deflate; client_max_window_bits=10"));
    assert (wsr_deflate_accepts ("permessage-deflate;server_no_context_takeover;"
                                 "client_no_context_takeover"));
    assert (wsr_deflate_accepts ("permessage-deflate; server_max_window_bits=15"));
    assert (wsr_deflate_accepts ("permessage-deflate; server_max_window_bits=\"15\""));
    assert (wsr_deflate_accepts ("x-webkit-deflate-frame, permessage-deflate"));
    //  The first offer limits our window: the second, plain one is taken
    assert (wsr_deflate_accepts ("permessage-deflate; server_max_window_bits=10, "
                                 "permessage-deflate"));
    assert (!wsr_deflate_accepts (NULL));
    assert (!wsr_deflate_accepts (""));
    assert (!wsr_deflate_accepts ("x-webkit-deflate-frame"));
    assert (!wsr_deflate_accepts ("permessage-deflate; server_max_window_bits=10"));
    assert (!wsr_deflate_accepts ("permessage-deflate; server_max_window_bits"));
    assert (!wsr_deflate_accepts ("permessage-deflate; client_max_window_bits=7"));
    assert (!wsr_deflate_accepts ("permessage-deflate; client_max_window_bits=16"));
    assert (!wsr_deflate_accepts ("permessage-deflate; client_max_window_bits=1x"));
    assert (!wsr_deflate_accepts ("permessage-deflate; server_no_context_takeover=1"));
    assert (!wsr_deflate_accepts ("permessage-deflate; client_no_context_takeover; "
                                  "client_no_context_takeover"));
    assert (!wsr_deflate_accepts ("permessage-deflate; foo"));
    assert (!wsr_deflate_accepts ("permessage-deflate; =15"));
    assert (!wsr_deflate_accepts ("permessage-deflatex"));

    wsr_metrics_t *metrics = wsr_metrics_new ();
    wsr_deflate_t *codec = wsr_deflate_new (6, 128, 100000, metrics);
    assert (codec);
    //  Under the threshold: plain
    assert (wsr_deflate_frame (codec, WSR_KIND_TEXT, (const uint8_t *) "short", 5) == NULL);
    //  Incompressible: plain
    uint8_t noise [2048];
    randombytes_buf (noise, sizeof noise);
    assert (wsr_deflate_frame (codec, WSR_KIND_BINARY, noise, sizeof noise) == NULL);
    //  JSON: one RSV1 frame, smaller, that inflates back (with a fresh
    //  inflater each time: no context)
    char json [2048];
    size_t json_len = 0;
    while (json_len < sizeof json - 64)
        json_len += (size_t) snprintf (json + json_len, sizeof json - json_len,
                                       "{\"id\":%zu,\"type\":\"update\",\"ok\":true},", json_len);
    for (int round = 0; round < 3; round++) {
        wsr_outframe_t *frame = wsr_deflate_frame (codec, WSR_KIND_TEXT,
                                                   (const uint8_t *) json, json_len);
        assert (frame);
        uint8_t payload [70000], first;
        size_t size = s_payload (frame, payload, &first);
        assert (first == 0xc1);         //  FIN, RSV1, text
        assert (size < json_len / 2);
        const uint8_t *out;
        size_t out_size;
        assert (wsr_deflate_inflate (codec, payload, size, &out, &out_size) == 0);
        assert (out_size == json_len && memcmp (out, json, json_len) == 0);
        wsr_outframe_unlink (&frame);
    }
    assert (wsr_metrics_get (metrics, WSR_M_DEFLATE_COMPRESSED) == 3);
    assert (wsr_metrics_get (metrics, WSR_M_DEFLATE_BYTES_IN) == 3 * (int64_t) json_len);

    //  A client's message compressed by zlib with a small window: fine
    z_stream client = { 0 };
    assert (deflateInit2 (&client, 9, Z_DEFLATED, -9, 8, Z_DEFAULT_STRATEGY) == Z_OK);
    uint8_t packed [4096];
    client.next_in = (Bytef *) json;
    client.avail_in = (uInt) json_len;
    client.next_out = packed;
    client.avail_out = sizeof packed;
    assert (deflate (&client, Z_SYNC_FLUSH) == Z_OK);
    size_t packed_size = sizeof packed - client.avail_out - 4;
    deflateEnd (&client);
    const uint8_t *out;
    size_t out_size;
    assert (wsr_deflate_inflate (codec, packed, packed_size, &out, &out_size) == 0);
    assert (out_size == json_len);
    //  Empty message (a lone empty stored block, or nothing at all)
    assert (wsr_deflate_inflate (codec, (const uint8_t *) "\x00", 1, &out, &out_size) == 0);
    assert (out_size == 0);
    //  Garbage
    assert (wsr_deflate_inflate (codec, (const uint8_t *) "\xff\xff\xff\xff", 4, &out,
                                 &out_size) == WSR_DEFLATE_CORRUPT);

    //  Zip bomb: 10 MB of zeros compress to ~10 KB; inflating stops at the
    //  bound (100,000 bytes) and the buffer never grows past it
    size_t bomb_size = 10 * 1024 * 1024;
    uint8_t *zeros = (uint8_t *) zmalloc (bomb_size);
    uint8_t *bomb = (uint8_t *) malloc (bomb_size / 100);
    z_stream zb = { 0 };
    assert (deflateInit2 (&zb, 9, Z_DEFLATED, -15, 8, Z_DEFAULT_STRATEGY) == Z_OK);
    zb.next_in = zeros;
    zb.avail_in = (uInt) bomb_size;
    zb.next_out = bomb;
    zb.avail_out = (uInt) (bomb_size / 100);
    assert (deflate (&zb, Z_SYNC_FLUSH) == Z_OK && zb.avail_in == 0);
    size_t bomb_packed = bomb_size / 100 - zb.avail_out - 4;
    deflateEnd (&zb);
    assert (wsr_deflate_inflate (codec, bomb, bomb_packed, &out, &out_size)
            == WSR_DEFLATE_TOO_BIG);
    assert (codec->in_cap <= 100001);
    //  Exactly at the bound is fine
    zframe_t *exact = zframe_new (NULL, 100000);
    memset (zframe_data (exact), 'a', 100000);
    wsr_deflate_t *big = wsr_deflate_new (6, 0, 100000, NULL);
    wsr_outframe_t *frame = wsr_deflate_frame (big, WSR_KIND_BINARY, zframe_data (exact), 100000);
    uint8_t payload [70000], first;
    size_t size = s_payload (frame, payload, &first);
    assert (first == 0xc2);
    assert (wsr_deflate_inflate (codec, payload, size, &out, &out_size) == 0);
    assert (out_size == 100000);
    wsr_outframe_unlink (&frame);
    wsr_deflate_destroy (&big);
    zframe_destroy (&exact);
    free (zeros);
    free (bomb);

    //  Incompressible data at the bound fits the wire bound once compressed
    uint8_t *random = (uint8_t *) malloc (100000);
    randombytes_buf (random, 100000);
    z_stream client2 = { 0 };
    assert (deflateInit2 (&client2, 6, Z_DEFLATED, -15, 1, Z_DEFAULT_STRATEGY) == Z_OK);
    size_t packed_cap = deflateBound (&client2, 100000) + 64;
    uint8_t *packed2 = (uint8_t *) malloc (packed_cap);
    client2.next_in = random;
    client2.avail_in = 100000;
    client2.next_out = packed2;
    client2.avail_out = (uInt) packed_cap;
    assert (deflate (&client2, Z_SYNC_FLUSH) == Z_OK && client2.avail_in == 0);
    size_t packed2_size = packed_cap - client2.avail_out - 4;
    deflateEnd (&client2);
    assert (packed2_size > 100000 && packed2_size <= wsr_deflate_wire_max (100000));
    assert (wsr_deflate_inflate (codec, packed2, packed2_size, &out, &out_size) == 0);
    assert (out_size == 100000 && memcmp (out, random, 100000) == 0);
    free (random);
    free (packed2);

    wsr_deflate_destroy (&codec);
    wsr_deflate_destroy (&codec);
    wsr_metrics_destroy (&metrics);
}
