//  wsr_v1 — the wsrouter.v1 client protocol: server messages built, client messages parsed
//
//  docs/PROTOCOL.md is the specification. Server messages are written by
//  hand into one buffer (a publication is encoded once per message per
//  session worker and shared by all its v1 recipients, so this is on the
//  delivery path: no JSON library, one escape pass over the payload).
//  Client messages are small and untrusted: parsed with jansson, every
//  field type-checked, anything unexpected an INVALID with a reason.

#include "wsr_classes.h"
#include <jansson.h>

typedef struct {
    char *buf;                      //  text so far (owned)
    size_t len, cap;
} s_text_t;

static void
s_reserve (s_text_t *text, size_t more)
{
    if (text->len + more + 1 > text->cap) {
        while (text->len + more + 1 > text->cap)
            text->cap = text->cap? text->cap * 2: 256;
        text->buf = (char *) realloc (text->buf, text->cap);
        assert (text->buf);
    }
}

static void
s_put (s_text_t *text, const char *bytes, size_t len)
{
    s_reserve (text, len);
    memcpy (text->buf + text->len, bytes, len);
    text->len += len;
    text->buf [text->len] = 0;
}

static void
s_puts (s_text_t *text, const char *str)
{
    s_put (text, str, strlen (str));
}

//  A JSON string of valid UTF-8 bytes: quotes, backslash and control
//  characters escaped, the rest as is.
static void
s_put_string (s_text_t *text, const uint8_t *data, size_t size)
{
    s_reserve (text, size + 2);
    text->buf [text->len++] = '"';
    size_t start = 0;
    for (size_t i = 0; i < size; i++) {
        uint8_t c = data [i];
        if (c >= 0x20 && c != '"' && c != '\\')
            continue;
        s_put (text, (const char *) data + start, i - start);
        char escaped [8];
        if (c == '"' || c == '\\')
            snprintf (escaped, sizeof escaped, "\\%c", c);
        else
        if (c == '\n')
            snprintf (escaped, sizeof escaped, "\\n");
        else
        if (c == '\r')
            snprintf (escaped, sizeof escaped, "\\r");
        else
        if (c == '\t')
            snprintf (escaped, sizeof escaped, "\\t");
        else
            snprintf (escaped, sizeof escaped, "\\u%04x", c);
        s_puts (text, escaped);
        start = i + 1;
    }
    s_put (text, (const char *) data + start, size - start);
    s_put (text, "\"", 1);
}

//  "data":"…" for text, "data_base64":"…" for bytes.
static void
s_put_data (s_text_t *text, int kind, const uint8_t *data, size_t size)
{
    if (kind == WSR_KIND_TEXT) {
        s_puts (text, "\"data\":");
        s_put_string (text, data, size);
    }
    else {
        size_t b64 = sodium_base64_ENCODED_LEN (size, sodium_base64_VARIANT_ORIGINAL);
        s_puts (text, "\"data_base64\":\"");
        s_reserve (text, b64);
        sodium_bin2base64 (text->buf + text->len, b64, data, size,
                           sodium_base64_VARIANT_ORIGINAL);
        text->len += b64 - 1;           //  without its NUL
        s_put (text, "\"", 1);
    }
}

static char *
s_done (s_text_t *text, size_t *len)
{
    *len = text->len;
    return text->buf;
}

//  --------------------------------------------------------------------------
//  A publication.
char *
wsr_v1_pub (const char *topic, uint64_t offset, const char *epoch, int kind,
            const uint8_t *data, size_t size, size_t *len)
{
    assert (topic && len);
    s_text_t text = { 0 };
    s_reserve (&text, size + 96);
    s_puts (&text, "{\"type\":\"pub\",\"topic\":");
    s_put_string (&text, (const uint8_t *) topic, strlen (topic));
    if (offset) {
        char position [96];
        snprintf (position, sizeof position, ",\"epoch\":\"%s\",\"offset\":%" PRIu64,
                  epoch? epoch: "", offset);
        s_puts (&text, position);
    }
    s_put (&text, ",", 1);
    s_put_data (&text, kind, data, size);
    s_put (&text, "}", 1);
    return s_done (&text, len);
}

//  --------------------------------------------------------------------------
//  An HTTP backend's reply.
char *
wsr_v1_reply (int kind, const uint8_t *data, size_t size, size_t *len)
{
    s_text_t text = { 0 };
    s_puts (&text, "{\"type\":\"reply\",");
    s_put_data (&text, kind, data, size);
    s_put (&text, "}", 1);
    return s_done (&text, len);
}

//  --------------------------------------------------------------------------
//  An error.
char *
wsr_v1_error (const char *error, size_t *len)
{
    assert (error);
    s_text_t text = { 0 };
    s_puts (&text, "{\"type\":\"error\",\"error\":");
    s_put_string (&text, (const uint8_t *) error, strlen (error));
    s_put (&text, "}", 1);
    return s_done (&text, len);
}

static void
s_put_expires (s_text_t *text, int64_t expires)
{
    if (expires > 0) {
        char number [24];
        snprintf (number, sizeof number, "%" PRId64, expires);
        s_puts (text, number);
    }
    else
        s_puts (text, "null");
}

//  --------------------------------------------------------------------------
//  A refresh taken.
char *
wsr_v1_refreshed (int64_t expires, size_t *len)
{
    s_text_t text = { 0 };
    s_puts (&text, "{\"type\":\"refreshed\",\"expires\":");
    s_put_expires (&text, expires);
    s_put (&text, "}", 1);
    return s_done (&text, len);
}

//  --------------------------------------------------------------------------
//  The welcome.
char *
wsr_v1_welcome (uint64_t session, const char *node, int64_t expires,
                const wsr_v1_position_t *topics, size_t count, size_t *len)
{
    assert (node && (topics || count == 0));
    s_text_t text = { 0 };
    char number [96];
    snprintf (number, sizeof number, "{\"type\":\"welcome\",\"session\":\"%" PRIu64 "\",", session);
    s_puts (&text, number);
    s_puts (&text, "\"node\":");
    s_put_string (&text, (const uint8_t *) node, strlen (node));
    s_puts (&text, ",\"expires\":");
    s_put_expires (&text, expires);
    s_puts (&text, ",\"topics\":{");
    for (size_t i = 0; i < count; i++) {
        if (i)
            s_put (&text, ",", 1);
        s_put_string (&text, (const uint8_t *) topics [i].topic, strlen (topics [i].topic));
        s_puts (&text, ":{\"epoch\":");
        s_put_string (&text, (const uint8_t *) topics [i].epoch, strlen (topics [i].epoch));
        snprintf (number, sizeof number, ",\"offset\":%" PRIu64, topics [i].offset);
        s_puts (&text, number);
        if (topics [i].recovered >= 0)
            s_puts (&text, topics [i].recovered? ",\"recovered\":true": ",\"recovered\":false");
        s_put (&text, "}", 1);
    }
    s_puts (&text, "}}");
    return s_done (&text, len);
}

//  --------------------------------------------------------------------------
//  Client messages

static int
s_invalid (wsr_v1_msg_t *msg, const char *why)
{
    wsr_v1_msg_reset (msg);
    msg->type = WSR_V1_INVALID;
    msg->error = why;
    return -1;
}

//  A topic key in recover: "user:" or "channel:" and a valid id.
static bool
s_topic_ok (const char *key)
{
    const char *id = NULL;
    if (strncmp (key, WSR_TOPIC_USER, strlen (WSR_TOPIC_USER)) == 0)
        id = key + strlen (WSR_TOPIC_USER);
    else
    if (strncmp (key, WSR_TOPIC_CHANNEL, strlen (WSR_TOPIC_CHANNEL)) == 0)
        id = key + strlen (WSR_TOPIC_CHANNEL);
    return id && wsr_util_id_valid (id, strlen (id));
}

static int
s_parse_hello (json_t *root, wsr_v1_msg_t *msg)
{
    json_t *recover = json_object_get (root, "recover");
    if (!recover || json_is_null (recover))
        return 0;
    if (!json_is_object (recover))
        return s_invalid (msg, "recover must be an object");
    if (json_object_size (recover) > WSR_V1_MAX_RECOVER)
        return s_invalid (msg, "too many topics in recover");
    const char *key;
    json_t *position;
    json_object_foreach (recover, key, position) {
        if (!s_topic_ok (key))
            return s_invalid (msg, "recover: not a topic");
        json_t *epoch = json_object_get (position, "epoch");
        json_t *offset = json_object_get (position, "offset");
        if (!json_is_object (position) || !json_is_string (epoch)
        ||  json_string_length (epoch) > WSR_HISTORY_EPOCH_MAX
        ||  !json_is_integer (offset) || json_integer_value (offset) < 0)
            return s_invalid (msg, "recover: each topic needs epoch (string) and offset");
        wsr_v1_position_t *p = &msg->recover [msg->recover_count++];
        snprintf (p->topic, sizeof p->topic, "%s", key);
        snprintf (p->epoch, sizeof p->epoch, "%s", json_string_value (epoch));
        p->offset = (uint64_t) json_integer_value (offset);
        p->recovered = -1;
    }
    return 0;
}

static int
s_parse_send (json_t *root, size_t max_size, wsr_v1_msg_t *msg)
{
    json_t *data = json_object_get (root, "data");
    json_t *data64 = json_object_get (root, "data_base64");
    if (!data == !data64)
        return s_invalid (msg, "send needs exactly one of data, data_base64");
    if (data64) {
        if (!json_is_string (data64))
            return s_invalid (msg, "data_base64 must be a string");
        size_t len = json_string_length (data64);
        msg->data = (uint8_t *) malloc (len / 4 * 3 + 3);
        assert (msg->data);
        if (sodium_base642bin (msg->data, len / 4 * 3 + 3, json_string_value (data64), len,
                               NULL, &msg->size, NULL, sodium_base64_VARIANT_ORIGINAL))
            return s_invalid (msg, "data_base64 is not base64");
        msg->kind = WSR_KIND_BINARY;
    }
    else
    if (json_is_string (data)) {
        msg->size = json_string_length (data);
        msg->data = (uint8_t *) malloc (msg->size + 1);
        assert (msg->data);
        memcpy (msg->data, json_string_value (data), msg->size);
        msg->kind = WSR_KIND_TEXT;
    }
    else {
        char *dumped = json_dumps (data, JSON_COMPACT | JSON_ENCODE_ANY);
        assert (dumped);
        msg->data = (uint8_t *) dumped;
        msg->size = strlen (dumped);
        msg->kind = WSR_KIND_TEXT;
    }
    if (msg->size > max_size)
        return s_invalid (msg, "data larger than the maximum message");
    return 0;
}

//  --------------------------------------------------------------------------
//  Parse.
int
wsr_v1_parse (const uint8_t *text, size_t len, size_t max_size, wsr_v1_msg_t *msg)
{
    assert (text || len == 0);
    assert (msg);
    memset (msg, 0, sizeof *msg);
    json_error_t error;
    json_t *root = json_loadb ((const char *) text, len, JSON_REJECT_DUPLICATES, &error);
    int rc;
    json_t *type = json_object_get (root, "type");
    if (!json_is_object (root))
        rc = s_invalid (msg, "not a JSON object");
    else
    if (!json_is_string (type))
        rc = s_invalid (msg, "no type");
    else
    if (streq (json_string_value (type), "hello")) {
        msg->type = WSR_V1_HELLO;
        rc = s_parse_hello (root, msg);
    }
    else
    if (streq (json_string_value (type), "send")) {
        msg->type = WSR_V1_SEND;
        rc = s_parse_send (root, max_size, msg);
    }
    else
    if (streq (json_string_value (type), "refresh")) {
        json_t *token = json_object_get (root, "token");
        if (!json_is_string (token) || json_string_length (token) > WSR_MAX_TOKEN_LEN)
            rc = s_invalid (msg, "refresh needs a token");
        else {
            msg->type = WSR_V1_REFRESH;
            msg->token = strdup (json_string_value (token));
            rc = 0;
        }
    }
    else
        rc = s_invalid (msg, "unknown type");
    json_decref (root);
    return rc;
}

//  --------------------------------------------------------------------------
//  Free.
void
wsr_v1_msg_reset (wsr_v1_msg_t *msg)
{
    assert (msg);
    free (msg->data);
    if (msg->token)
        sodium_memzero (msg->token, strlen (msg->token));
    free (msg->token);
    memset (msg, 0, sizeof *msg);
}

//  --------------------------------------------------------------------------
//  Selftest: every message built is parsed back by jansson.

static json_t *
s_load (char *text)
{
    json_error_t error;
    json_t *root = json_loads (text, 0, &error);
    free (text);
    assert (root);
    return root;
}

static void
s_expect_invalid (const char *text, const char *why)
{
    wsr_v1_msg_t msg;
    assert (wsr_v1_parse ((const uint8_t *) text, strlen (text), 100, &msg) == -1);
    assert (msg.type == WSR_V1_INVALID && streq (msg.error, why));
    wsr_v1_msg_reset (&msg);
}

void
wsr_v1_test (bool verbose)
{
    (void) verbose;
    size_t len = 0;
    //  A text publication with quotes, controls and UTF-8
    const char *payload = "a\"b\\c\n\x01\xc3\xa9";
    json_t *root = s_load (wsr_v1_pub ("user:u1", 18, "E1", WSR_KIND_TEXT,
                                       (const uint8_t *) payload, strlen (payload), &len));
    assert (streq (json_string_value (json_object_get (root, "type")), "pub"));
    assert (streq (json_string_value (json_object_get (root, "topic")), "user:u1"));
    assert (streq (json_string_value (json_object_get (root, "epoch")), "E1"));
    assert (json_integer_value (json_object_get (root, "offset")) == 18);
    assert (streq (json_string_value (json_object_get (root, "data")), payload));
    json_decref (root);
    //  Bytes, no position
    root = s_load (wsr_v1_pub ("channel:c", 0, NULL, WSR_KIND_BINARY,
                               (const uint8_t *) "\x00\xff\x01", 3, &len));
    assert (!json_object_get (root, "offset") && !json_object_get (root, "epoch"));
    assert (streq (json_string_value (json_object_get (root, "data_base64")), "AP8B"));
    json_decref (root);
    //  Empty payload
    root = s_load (wsr_v1_pub ("user:u1", 0, NULL, WSR_KIND_TEXT, NULL, 0, &len));
    assert (streq (json_string_value (json_object_get (root, "data")), ""));
    json_decref (root);
    root = s_load (wsr_v1_reply (WSR_KIND_TEXT, (const uint8_t *) "ok", 2, &len));
    assert (streq (json_string_value (json_object_get (root, "type")), "reply"));
    json_decref (root);
    root = s_load (wsr_v1_error ("bad \"thing\"", &len));
    assert (streq (json_string_value (json_object_get (root, "error")), "bad \"thing\""));
    json_decref (root);
    root = s_load (wsr_v1_refreshed (0, &len));
    assert (json_is_null (json_object_get (root, "expires")));
    json_decref (root);
    wsr_v1_position_t topics [2] = {
        { "user:u1", "E", 20, 1 }, { "channel:lobby", "", 0, -1 }
    };
    root = s_load (wsr_v1_welcome (18446744073709551615ULL, "node-a", 1767225600, topics, 2,
                                   &len));
    assert (streq (json_string_value (json_object_get (root, "session")),
                   "18446744073709551615"));
    assert (json_integer_value (json_object_get (root, "expires")) == 1767225600);
    json_t *positions = json_object_get (root, "topics");
    json_t *u1 = json_object_get (positions, "user:u1");
    assert (json_is_true (json_object_get (u1, "recovered")));
    assert (json_integer_value (json_object_get (u1, "offset")) == 20);
    json_t *lobby = json_object_get (positions, "channel:lobby");
    assert (lobby && !json_object_get (lobby, "recovered"));
    json_decref (root);

    //  Client messages
    wsr_v1_msg_t msg;
    const char *hello = "{\"type\":\"hello\",\"recover\":{\"user:u1\":{\"epoch\":\"E\","
                        "\"offset\":17},\"channel:lobby\":{\"epoch\":\"F\",\"offset\":3}}}";
    assert (wsr_v1_parse ((const uint8_t *) hello, strlen (hello), 100, &msg) == 0);
    assert (msg.type == WSR_V1_HELLO && msg.recover_count == 2);
    assert (streq (msg.recover [0].topic, "user:u1") && msg.recover [0].offset == 17);
    assert (streq (msg.recover [1].epoch, "F"));
    wsr_v1_msg_reset (&msg);
    assert (wsr_v1_parse ((const uint8_t *) "{\"type\":\"hello\"}", 16, 100, &msg) == 0);
    assert (msg.type == WSR_V1_HELLO && msg.recover_count == 0);
    wsr_v1_msg_reset (&msg);
    const char *send = "{\"type\":\"send\",\"data\":{\"a\":[1,2]}}";
    assert (wsr_v1_parse ((const uint8_t *) send, strlen (send), 100, &msg) == 0);
    assert (msg.type == WSR_V1_SEND && msg.kind == WSR_KIND_TEXT && msg.size == 11
         && !memcmp (msg.data, "{\"a\":[1,2]}", 11));
    wsr_v1_msg_reset (&msg);
    send = "{\"type\":\"send\",\"data_base64\":\"AP8=\"}";
    assert (wsr_v1_parse ((const uint8_t *) send, strlen (send), 100, &msg) == 0);
    assert (msg.kind == WSR_KIND_BINARY && msg.size == 2 && msg.data [1] == 0xff);
    wsr_v1_msg_reset (&msg);
    const char *refresh = "{\"type\":\"refresh\",\"token\":\"abc\"}";
    assert (wsr_v1_parse ((const uint8_t *) refresh, strlen (refresh), 100, &msg) == 0);
    assert (msg.type == WSR_V1_REFRESH && streq (msg.token, "abc"));
    wsr_v1_msg_reset (&msg);
    s_expect_invalid ("nope", "not a JSON object");
    s_expect_invalid ("[1]", "not a JSON object");
    s_expect_invalid ("{\"x\":1}", "no type");
    s_expect_invalid ("{\"type\":\"dance\"}", "unknown type");
    s_expect_invalid ("{\"type\":\"send\"}", "send needs exactly one of data, data_base64");
    s_expect_invalid ("{\"type\":\"send\",\"data_base64\":\"!!\"}", "data_base64 is not base64");
    s_expect_invalid ("{\"type\":\"refresh\"}", "refresh needs a token");
    s_expect_invalid ("{\"type\":\"hello\",\"recover\":"
                      "{\"user:>\":{\"epoch\":\"E\",\"offset\":1}}}", "recover: not a topic");
    s_expect_invalid ("{\"type\":\"hello\",\"recover\":{\"user:u\":{\"offset\":1}}}",
                      "recover: each topic needs epoch (string) and offset");
    s_expect_invalid ("{\"type\":\"type\",\"type\":\"send\"}", "not a JSON object");
    char big [300];
    int n = snprintf (big, sizeof big, "{\"type\":\"send\",\"data\":\"%0200d\"}", 0);
    assert (wsr_v1_parse ((const uint8_t *) big, (size_t) n, 100, &msg) == -1);
    assert (streq (msg.error, "data larger than the maximum message"));
    wsr_v1_msg_reset (&msg);
}
