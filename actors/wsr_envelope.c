//  wsr_envelope — msgpack envelopes for messages that can cross processes
//
//  Downstream (backplane → sessions): map {v:1, k:kind, ts:µs, d:bin}.
//  Upstream (session → backends):     map {v:1, u:user, s:session, n:node,
//                                          ts:µs, k:kind, d:bin}.
//  Keys are short strings; unknown keys are ignored so that later versions
//  can add fields; a different "v" is refused. Encoding packs twice, first to
//  count, then into a frame of the exact size, so the payload is copied once.
//  Decoding borrows the payload from the buffer (no copy).

#include "wsr_classes.h"
#include <msgpack.h>

typedef struct {
    uint8_t *buf;               //  destination, NULL while counting
    size_t used;                //  bytes written or counted so far
} s_writer_t;

static int
s_write (void *data, const char *buf, size_t len)
{
    s_writer_t *writer = (s_writer_t *) data;
    if (writer->buf && len)             //  empty payloads come as NULL, 0
        memcpy (writer->buf + writer->used, buf, len);
    writer->used += len;
    return 0;
}

static void
s_pack_str (msgpack_packer *pk, const char *str, size_t len)
{
    msgpack_pack_str (pk, len);
    msgpack_pack_str_body (pk, str, len);
}

typedef struct {
    const char *user;           //  NULL for downstream
    uint64_t session;
    const char *node;
    int64_t ts_us;
    int kind;
    const uint8_t *data;
    size_t size;
    uint64_t offset;            //  downstream: history position, 0 = none
    uint64_t prev;              //  the topic's offset before this one
    const char *epoch;          //  and its epoch
} s_fields_t;

static void
s_pack (s_writer_t *writer, const s_fields_t *f)
{
    msgpack_packer pk;
    msgpack_packer_init (&pk, writer, s_write);
    msgpack_pack_map (&pk, (f->user? 7: 4) + (f->offset? 3: 0));
    s_pack_str (&pk, "v", 1);
    msgpack_pack_int (&pk, WSR_ENVELOPE_VERSION);
    if (f->user) {
        s_pack_str (&pk, "u", 1);
        s_pack_str (&pk, f->user, strlen (f->user));
        s_pack_str (&pk, "s", 1);
        msgpack_pack_uint64 (&pk, f->session);
        s_pack_str (&pk, "n", 1);
        s_pack_str (&pk, f->node, strlen (f->node));
    }
    s_pack_str (&pk, "ts", 2);
    msgpack_pack_int64 (&pk, f->ts_us);
    s_pack_str (&pk, "k", 1);
    msgpack_pack_int (&pk, f->kind);
    if (f->offset) {
        s_pack_str (&pk, "o", 1);
        msgpack_pack_uint64 (&pk, f->offset);
        s_pack_str (&pk, "p", 1);
        msgpack_pack_uint64 (&pk, f->prev);
        s_pack_str (&pk, "e", 1);
        s_pack_str (&pk, f->epoch, strlen (f->epoch));
    }
    s_pack_str (&pk, "d", 1);
    msgpack_pack_bin (&pk, f->size);
    msgpack_pack_bin_body (&pk, f->data, f->size);
}

static zframe_t *
s_encode (const s_fields_t *fields)
{
    s_writer_t counter = { NULL, 0 };
    s_pack (&counter, fields);
    zframe_t *frame = zframe_new (NULL, counter.used);
    assert (frame);
    s_writer_t writer = { zframe_data (frame), 0 };
    s_pack (&writer, fields);
    assert (writer.used == counter.used);
    return frame;
}

//  --------------------------------------------------------------------------
//  Encode a downstream envelope; kind 0 decides text/binary from the bytes.
zframe_t *
wsr_envelope_encode_down (const uint8_t *data, size_t size, int kind, int64_t ts_us)
{
    if (kind == 0)
        kind = wsr_util_utf8_valid (data, size)? WSR_KIND_TEXT: WSR_KIND_BINARY;
    s_fields_t fields = { NULL, 0, NULL, ts_us, kind, data, size, 0, 0, NULL };
    return s_encode (&fields);
}

//  --------------------------------------------------------------------------
//  A downstream envelope with its history position.
zframe_t *
wsr_envelope_encode_pub (const uint8_t *data, size_t size, int kind, int64_t ts_us,
                         uint64_t offset, uint64_t prev, const char *epoch)
{
    assert (offset == 0 || epoch);
    if (kind == 0)
        kind = wsr_util_utf8_valid (data, size)? WSR_KIND_TEXT: WSR_KIND_BINARY;
    s_fields_t fields = { NULL, 0, NULL, ts_us, kind, data, size, offset, prev, epoch };
    return s_encode (&fields);
}

//  --------------------------------------------------------------------------
//  Encode an upstream envelope.
zframe_t *
wsr_envelope_encode_up (const char *user, uint64_t session, const char *node,
                        int64_t ts_us, int kind, const uint8_t *data, size_t size)
{
    assert (user);
    assert (node);
    s_fields_t fields = { user, session, node, ts_us, kind, data, size, 0, 0, NULL };
    return s_encode (&fields);
}

static bool
s_key_is (const msgpack_object *key, const char *name)
{
    return key->type == MSGPACK_OBJECT_STR
        && key->via.str.size == strlen (name)
        && memcmp (key->via.str.ptr, name, key->via.str.size) == 0;
}

static bool
s_get_int (const msgpack_object *obj, int64_t *value)
{
    if (obj->type == MSGPACK_OBJECT_POSITIVE_INTEGER) {
        if (obj->via.u64 > INT64_MAX)
            return false;
        *value = (int64_t) obj->via.u64;
        return true;
    }
    if (obj->type == MSGPACK_OBJECT_NEGATIVE_INTEGER) {
        *value = obj->via.i64;
        return true;
    }
    return false;
}

//  --------------------------------------------------------------------------
//  Decode without copying; input comes from other processes, so every field
//  is type-checked and anything unexpected makes the envelope invalid.
int
wsr_envelope_decode (const uint8_t *buf, size_t len, wsr_envelope_t *env)
{
    assert (env);
    memset (env, 0, sizeof *env);
    msgpack_unpacked result;
    msgpack_unpacked_init (&result);
    size_t offset = 0;
    int rc = -1;
    if (msgpack_unpack_next (&result, (const char *) buf, len, &offset)
            != MSGPACK_UNPACK_SUCCESS
    ||  offset != len
    ||  result.data.type != MSGPACK_OBJECT_MAP)
        goto done;
    bool have_data = false;
    int64_t value;
    msgpack_object_map *map = &result.data.via.map;
    for (uint32_t i = 0; i < map->size; i++) {
        msgpack_object *key = &map->ptr [i].key;
        msgpack_object *val = &map->ptr [i].val;
        if (s_key_is (key, "v")) {
            if (!s_get_int (val, &value) || value != WSR_ENVELOPE_VERSION)
                goto done;
            env->version = (int) value;
        }
        else
        if (s_key_is (key, "k")) {
            if (!s_get_int (val, &value)
            || (value != WSR_KIND_TEXT && value != WSR_KIND_BINARY))
                goto done;
            env->kind = (int) value;
        }
        else
        if (s_key_is (key, "ts")) {
            if (!s_get_int (val, &env->ts_us))
                goto done;
        }
        else
        if (s_key_is (key, "s")) {
            if (val->type != MSGPACK_OBJECT_POSITIVE_INTEGER)
                goto done;
            env->session = val->via.u64;
        }
        else
        if (s_key_is (key, "d")) {
            if (val->type == MSGPACK_OBJECT_BIN) {
                env->data = (const uint8_t *) val->via.bin.ptr;
                env->size = val->via.bin.size;
            }
            else
            if (val->type == MSGPACK_OBJECT_STR) {
                env->data = (const uint8_t *) val->via.str.ptr;
                env->size = val->via.str.size;
            }
            else
                goto done;
            have_data = true;
        }
        else
        if (s_key_is (key, "o") || s_key_is (key, "p")) {
            if (val->type != MSGPACK_OBJECT_POSITIVE_INTEGER)
                goto done;
            if (s_key_is (key, "o"))
                env->offset = val->via.u64;
            else
                env->prev = val->via.u64;
        }
        else
        if (s_key_is (key, "e")) {
            if (val->type != MSGPACK_OBJECT_STR || val->via.str.size > WSR_HISTORY_EPOCH_MAX)
                goto done;
            env->epoch = val->via.str.ptr;
            env->epoch_len = val->via.str.size;
        }
        else
        if (s_key_is (key, "u") || s_key_is (key, "n")) {
            if (val->type != MSGPACK_OBJECT_STR)
                goto done;
            if (s_key_is (key, "u")) {
                env->user = val->via.str.ptr;
                env->user_len = val->via.str.size;
            }
            else {
                env->node = val->via.str.ptr;
                env->node_len = val->via.str.size;
            }
        }
    }
    if (env->version != WSR_ENVELOPE_VERSION || !have_data
    ||  (env->offset && (!env->epoch || env->prev >= env->offset)))
        goto done;
    if (env->kind == 0)
        env->kind = wsr_util_utf8_valid (env->data, env->size)? WSR_KIND_TEXT: WSR_KIND_BINARY;
    rc = 0;
done:
    //  The zone only holds the map array; str/bin point into buf
    msgpack_unpacked_destroy (&result);
    return rc;
}

//  --------------------------------------------------------------------------
//  A history read's result.
static void
s_pack_history (s_writer_t *writer, const wsr_history_result_t *r, const int *kinds)
{
    msgpack_packer pk;
    msgpack_packer_init (&pk, writer, s_write);
    msgpack_pack_map (&pk, 6);
    s_pack_str (&pk, "v", 1);
    msgpack_pack_int (&pk, WSR_ENVELOPE_VERSION);
    s_pack_str (&pk, "x", 1);
    msgpack_pack_int (&pk, r->status);
    s_pack_str (&pk, "e", 1);
    const char *epoch = r->epoch? r->epoch: "";
    s_pack_str (&pk, epoch, strlen (epoch));
    s_pack_str (&pk, "l", 1);
    msgpack_pack_uint64 (&pk, r->last);
    s_pack_str (&pk, "c", 1);
    if (r->complete)
        msgpack_pack_true (&pk);
    else
        msgpack_pack_false (&pk);
    s_pack_str (&pk, "m", 1);
    msgpack_pack_array (&pk, r->count);
    for (size_t i = 0; i < r->count; i++) {
        msgpack_pack_array (&pk, 3);
        msgpack_pack_uint64 (&pk, r->entries [i].offset);
        msgpack_pack_int (&pk, kinds [i]);
        msgpack_pack_bin (&pk, r->entries [i].size);
        msgpack_pack_bin_body (&pk, r->entries [i].data, r->entries [i].size);
    }
}

zframe_t *
wsr_envelope_encode_history (const wsr_history_result_t *result)
{
    assert (result && (result->count == 0 || result->entries));
    int *kinds = (int *) malloc ((result->count? result->count: 1) * sizeof (int));
    assert (kinds);
    for (size_t i = 0; i < result->count; i++) {
        const wsr_history_entry_t *entry = &result->entries [i];
        kinds [i] = entry->kind? entry->kind
                  : wsr_util_utf8_valid (entry->data, entry->size)? WSR_KIND_TEXT
                  : WSR_KIND_BINARY;
    }
    s_writer_t counter = { NULL, 0 };
    s_pack_history (&counter, result, kinds);
    zframe_t *frame = zframe_new (NULL, counter.used);
    assert (frame);
    s_writer_t writer = { zframe_data (frame), 0 };
    s_pack_history (&writer, result, kinds);
    free (kinds);
    return frame;
}

int
wsr_envelope_decode_history (const uint8_t *buf, size_t len, wsr_history_result_t *result,
                             wsr_history_entry_t *entries, size_t max, char *epoch)
{
    assert (result && entries && epoch);
    memset (result, 0, sizeof *result);
    epoch [0] = 0;
    result->epoch = epoch;
    result->entries = entries;
    msgpack_unpacked unpacked;
    msgpack_unpacked_init (&unpacked);
    size_t offset = 0;
    int rc = -1;
    bool have_version = false;
    int64_t value;
    if (msgpack_unpack_next (&unpacked, (const char *) buf, len, &offset)
            != MSGPACK_UNPACK_SUCCESS
    ||  offset != len || unpacked.data.type != MSGPACK_OBJECT_MAP)
        goto done;
    msgpack_object_map *map = &unpacked.data.via.map;
    for (uint32_t i = 0; i < map->size; i++) {
        msgpack_object *key = &map->ptr [i].key;
        msgpack_object *val = &map->ptr [i].val;
        if (s_key_is (key, "v")) {
            if (!s_get_int (val, &value) || value != WSR_ENVELOPE_VERSION)
                goto done;
            have_version = true;
        }
        else
        if (s_key_is (key, "x")) {
            if (!s_get_int (val, &value))
                goto done;
            result->status = value == 0? 0: -1;
        }
        else
        if (s_key_is (key, "e")) {
            if (val->type != MSGPACK_OBJECT_STR || val->via.str.size > WSR_HISTORY_EPOCH_MAX)
                goto done;
            memcpy (epoch, val->via.str.ptr, val->via.str.size);
            epoch [val->via.str.size] = 0;
        }
        else
        if (s_key_is (key, "l")) {
            if (val->type != MSGPACK_OBJECT_POSITIVE_INTEGER)
                goto done;
            result->last = val->via.u64;
        }
        else
        if (s_key_is (key, "c")) {
            if (val->type != MSGPACK_OBJECT_BOOLEAN)
                goto done;
            result->complete = val->via.boolean;
        }
        else
        if (s_key_is (key, "m")) {
            if (val->type != MSGPACK_OBJECT_ARRAY || val->via.array.size > max)
                goto done;
            for (uint32_t j = 0; j < val->via.array.size; j++) {
                msgpack_object *item = &val->via.array.ptr [j];
                if (item->type != MSGPACK_OBJECT_ARRAY || item->via.array.size != 3
                ||  item->via.array.ptr [0].type != MSGPACK_OBJECT_POSITIVE_INTEGER
                ||  !s_get_int (&item->via.array.ptr [1], &value)
                ||  (value != WSR_KIND_TEXT && value != WSR_KIND_BINARY)
                ||  item->via.array.ptr [2].type != MSGPACK_OBJECT_BIN)
                    goto done;
                entries [j].offset = item->via.array.ptr [0].via.u64;
                entries [j].kind = (int) value;
                entries [j].data = (const uint8_t *) item->via.array.ptr [2].via.bin.ptr;
                entries [j].size = item->via.array.ptr [2].via.bin.size;
            }
            result->count = val->via.array.size;
        }
    }
    rc = have_version? 0: -1;
done:
    msgpack_unpacked_destroy (&unpacked);
    if (rc)
        result->count = 0;
    return rc;
}

//  --------------------------------------------------------------------------
//  Bridge heartbeat.
zframe_t *
wsr_envelope_encode_heartbeat (int redis, int nats)
{
    msgpack_sbuffer buffer;
    msgpack_sbuffer_init (&buffer);
    msgpack_packer pk;
    msgpack_packer_init (&pk, &buffer, msgpack_sbuffer_write);
    msgpack_pack_map (&pk, 3);
    s_pack_str (&pk, "v", 1);
    msgpack_pack_int (&pk, WSR_ENVELOPE_VERSION);
    s_pack_str (&pk, "r", 1);
    msgpack_pack_int (&pk, redis);
    s_pack_str (&pk, "n", 1);
    msgpack_pack_int (&pk, nats);
    zframe_t *frame = zframe_new (buffer.data, buffer.size);
    msgpack_sbuffer_destroy (&buffer);
    return frame;
}

//  --------------------------------------------------------------------------
//  Decode a heartbeat.
int
wsr_envelope_decode_heartbeat (const uint8_t *buf, size_t len, int *redis, int *nats)
{
    assert (redis && nats);
    msgpack_unpacked result;
    msgpack_unpacked_init (&result);
    size_t offset = 0;
    int rc = -1;
    int seen = 0;
    if (msgpack_unpack_next (&result, (const char *) buf, len, &offset)
            == MSGPACK_UNPACK_SUCCESS
    &&  result.data.type == MSGPACK_OBJECT_MAP) {
        msgpack_object_map *map = &result.data.via.map;
        for (uint32_t i = 0; i < map->size; i++) {
            int64_t value;
            if (!s_get_int (&map->ptr [i].val, &value))
                continue;
            if (s_key_is (&map->ptr [i].key, "v") && value == WSR_ENVELOPE_VERSION)
                seen |= 1;
            else
            if (s_key_is (&map->ptr [i].key, "r"))
                *redis = (int) value, seen |= 2;
            else
            if (s_key_is (&map->ptr [i].key, "n"))
                *nats = (int) value, seen |= 4;
        }
        rc = seen == 7? 0: -1;
    }
    msgpack_unpacked_destroy (&result);
    return rc;
}

//  --------------------------------------------------------------------------
//  Selftest
void
wsr_envelope_test (bool verbose)
{
    (void) verbose;
    wsr_envelope_t env;
    zframe_t *frame = wsr_envelope_encode_down ((const uint8_t *) "hello", 5, 0, 42);
    assert (wsr_envelope_decode (zframe_data (frame), zframe_size (frame), &env) == 0);
    assert (env.kind == WSR_KIND_TEXT);
    assert (env.size == 5 && memcmp (env.data, "hello", 5) == 0);
    assert (env.data >= zframe_data (frame)
         && env.data < zframe_data (frame) + zframe_size (frame));     //  borrowed
    assert (env.ts_us == 42);
    assert (env.user == NULL);
    zframe_destroy (&frame);

    uint8_t binary [] = { 0xff, 0x00, 0xfe };
    frame = wsr_envelope_encode_down (binary, 3, 0, 0);
    assert (wsr_envelope_decode (zframe_data (frame), zframe_size (frame), &env) == 0);
    assert (env.kind == WSR_KIND_BINARY && env.size == 3);
    //  Every truncation is refused, never read past the end
    for (size_t cut = 0; cut < zframe_size (frame); cut++)
        assert (wsr_envelope_decode (zframe_data (frame), cut, &env) == -1);
    zframe_destroy (&frame);

    frame = wsr_envelope_encode_up ("u1", 77, "node-a", 99, WSR_KIND_BINARY, binary, 3);
    assert (wsr_envelope_decode (zframe_data (frame), zframe_size (frame), &env) == 0);
    assert (env.user_len == 2 && memcmp (env.user, "u1", 2) == 0);
    assert (env.node_len == 6 && memcmp (env.node, "node-a", 6) == 0);
    assert (env.session == 77 && env.ts_us == 99 && env.kind == WSR_KIND_BINARY);
    zframe_destroy (&frame);

    //  Wrong version, wrong types, not a map, trailing garbage
    uint8_t v2 [] = { 0x82, 0xa1, 'v', 0x02, 0xa1, 'd', 0xc4, 0x00 };
    assert (wsr_envelope_decode (v2, sizeof v2, &env) == -1);
    uint8_t ok [] = { 0x82, 0xa1, 'v', 0x01, 0xa1, 'd', 0xc4, 0x00 };
    assert (wsr_envelope_decode (ok, sizeof ok, &env) == 0 && env.size == 0);
    uint8_t badk [] = { 0x83, 0xa1, 'v', 0x01, 0xa1, 'd', 0xc4, 0x00, 0xa1, 'k', 0x09 };
    assert (wsr_envelope_decode (badk, sizeof badk, &env) == -1);
    uint8_t nodata [] = { 0x81, 0xa1, 'v', 0x01 };
    assert (wsr_envelope_decode (nodata, sizeof nodata, &env) == -1);
    uint8_t array [] = { 0x91, 0x01 };
    assert (wsr_envelope_decode (array, sizeof array, &env) == -1);
    uint8_t trailing [] = { 0x82, 0xa1, 'v', 0x01, 0xa1, 'd', 0xc4, 0x00, 0x00 };
    assert (wsr_envelope_decode (trailing, sizeof trailing, &env) == -1);

    //  An empty client message arrives as NULL, 0
    frame = wsr_envelope_encode_up ("u1", 1, "n", 0, WSR_KIND_TEXT, NULL, 0);
    assert (wsr_envelope_decode (zframe_data (frame), zframe_size (frame), &env) == 0);
    assert (env.size == 0 && env.kind == WSR_KIND_TEXT);
    zframe_destroy (&frame);

    //  Positions travel with a publication; a bad one is refused
    frame = wsr_envelope_encode_pub ((const uint8_t *) "hi", 2, 0, 5, 18, 17, "E1");
    assert (wsr_envelope_decode (zframe_data (frame), zframe_size (frame), &env) == 0);
    assert (env.offset == 18 && env.prev == 17 && env.epoch_len == 2
         && !memcmp (env.epoch, "E1", 2) && env.size == 2 && env.kind == WSR_KIND_TEXT);
    zframe_destroy (&frame);
    frame = wsr_envelope_encode_pub ((const uint8_t *) "hi", 2, 0, 5, 18, 18, "E1");
    assert (wsr_envelope_decode (zframe_data (frame), zframe_size (frame), &env) == -1);
    zframe_destroy (&frame);

    //  A history result round-trips, entries borrowed from the frame
    wsr_history_entry_t in [3] = {
        { 4, (const uint8_t *) "four", 4, 0 }, { 5, (const uint8_t *) "\xff", 1, 0 },
        { 7, (const uint8_t *) "", 0, 0 }
    };
    wsr_history_result_t result = { 0, "EP", 7, true, in, 3 };
    frame = wsr_envelope_encode_history (&result);
    wsr_history_result_t out;
    wsr_history_entry_t entries [3];
    char epoch [WSR_HISTORY_EPOCH_MAX + 1];
    assert (wsr_envelope_decode_history (zframe_data (frame), zframe_size (frame), &out,
                                         entries, 3, epoch) == 0);
    assert (out.status == 0 && streq (out.epoch, "EP") && out.last == 7 && out.complete);
    assert (out.count == 3 && entries [0].offset == 4 && entries [0].size == 4
         && !memcmp (entries [0].data, "four", 4) && entries [0].kind == WSR_KIND_TEXT);
    assert (entries [1].kind == WSR_KIND_BINARY && entries [2].size == 0);
    assert (wsr_envelope_decode_history (zframe_data (frame), zframe_size (frame), &out,
                                         entries, 2, epoch) == -1);     //  too many
    assert (wsr_envelope_decode_history (zframe_data (frame), zframe_size (frame) - 1, &out,
                                         entries, 3, epoch) == -1);
    zframe_destroy (&frame);

    int redis = 9, nats = 9;
    frame = wsr_envelope_encode_heartbeat (1, -1);
    assert (wsr_envelope_decode_heartbeat (zframe_data (frame), zframe_size (frame),
                                           &redis, &nats) == 0);
    assert (redis == 1 && nats == -1);
    assert (wsr_envelope_decode_heartbeat (zframe_data (frame), zframe_size (frame) - 1,
                                           &redis, &nats) == -1);
    zframe_destroy (&frame);
    assert (wsr_envelope_decode_heartbeat (ok, sizeof ok, &redis, &nats) == -1);
}
