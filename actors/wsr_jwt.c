/*  =========================================================================
    wsr_jwt - JWT verification and minting (HS256 and EdDSA/Ed25519)

    Part of wsrouter, a WebSocket session service on czmq.
    =========================================================================
*/

/*
@header
    wsr_jwt verifies the JSON Web Tokens that clients present when they open
    a WebSocket session, and mints tokens for tests and tooling. A verifier
    accepts exactly one algorithm, fixed when it is created: HS256 (HMAC-
    SHA-256, libsodium, secret of any length) or EdDSA (Ed25519, libsodium,
    32-byte public key). The algorithm named in a token's header is never
    trusted to choose the check: anything but the configured name, including
    "none", is refused.
@discuss
    Tokens are hostile input. wsr_jwt_verify works in this order and stops at
    the first failure, returning a short static reason fit for a WebSocket
    close frame:

    1. size: 1..WSR_MAX_TOKEN_LEN bytes, exactly three non-empty segments of
       the unpadded base64url alphabet, canonically encoded;
    2. header: a JSON object (no duplicate keys) whose "alg" is the
       configured name, whose "typ" if present is a string, without "crit";
    3. signature over the ASCII "header.payload" exactly as received
       (HS256: 32 bytes compared in constant time; EdDSA: 64 bytes);
    4. payload: a JSON object (no duplicate keys); exp / nbf / iat, when
       present, are JSON numbers checked against now with the leeway;
    5. "sub": a string accepted by wsr_util_id_valid;
    6. "channels" (optional): an array of strings, or one string of comma-
       separated names, each accepted by wsr_util_id_valid, at most
       WSR_MAX_CHANNELS entries; duplicates are dropped.

    Decoding uses one stack buffer bounded by WSR_MAX_TOKEN_LEN; jansson
    copies what it parses. Nothing is logged: tokens and keys are secrets.
    The verifier holds no per-call state, so one verifier may be used by one
    thread at a time without locking (it is not shared between threads).

    The minting functions build {"alg":...,"typ":"JWT"} and a payload with
    sub, iat, exp (unless 0) and channels (unless none). The caller owns the
    returned string and frees it with free ().
@end
*/

#include "wsr_classes.h"
#include <jansson.h>

//  The one base64 alphabet JWT uses: RFC 7515 forbids padding.
#define S_B64_VARIANT       sodium_base64_VARIANT_URLSAFE_NO_PADDING
//  Decoded bytes of a segment never exceed 3/4 of its encoded length.
#define S_MAX_DECODED       (WSR_MAX_TOKEN_LEN / 4 * 3 + 3)
#define S_HS256_SIG_BYTES   crypto_auth_hmacsha256_BYTES
#define S_EDDSA_SIG_BYTES   crypto_sign_BYTES
#define S_MAX_SIG_BYTES     crypto_sign_BYTES
#define S_HS256_HEADER      "{\"alg\":\"HS256\",\"typ\":\"JWT\"}"
#define S_EDDSA_HEADER      "{\"alg\":\"EdDSA\",\"typ\":\"JWT\"}"

typedef enum {
    S_ALG_HS256,
    S_ALG_EDDSA
} s_alg_t;

//  Structure of our class

struct _wsr_jwt_t {
    s_alg_t alg;                //  the one algorithm this verifier accepts
    const char *alg_name;       //  its JOSE name, "HS256" or "EdDSA" (static)
    uint8_t *key;               //  HS256 secret or Ed25519 public key; wiped on destroy
    size_t key_len;             //  bytes in key
    int leeway;                 //  clock skew allowed on exp / nbf / iat, seconds
    bool require_exp;           //  refuse tokens without an exp claim
};


//  --------------------------------------------------------------------------
//  Both constructors share this: copy the key so the caller may wipe theirs.

static wsr_jwt_t *
s_new (s_alg_t alg, const uint8_t *key, size_t key_len)
{
    wsr_jwt_t *self = (wsr_jwt_t *) zmalloc (sizeof (wsr_jwt_t));
    assert (self);
    self->alg = alg;
    self->alg_name = alg == S_ALG_HS256? "HS256": "EdDSA";
    self->key = (uint8_t *) malloc (key_len);
    assert (self->key);
    memcpy (self->key, key, key_len);
    self->key_len = key_len;
    self->leeway = WSR_JWT_LEEWAY_S;
    self->require_exp = false;
    return self;
}


//  --------------------------------------------------------------------------
//  Create an HS256 verifier. A zero-length secret is a configuration error
//  the caller reports, so it yields NULL rather than an assert.

wsr_jwt_t *
wsr_jwt_new_hs256 (const uint8_t *secret, size_t secret_len)
{
    assert (secret);
    if (secret_len == 0)
        return NULL;
    return s_new (S_ALG_HS256, secret, secret_len);
}


//  --------------------------------------------------------------------------
//  Create an EdDSA verifier for one Ed25519 public key.

wsr_jwt_t *
wsr_jwt_new_eddsa (const uint8_t public_key [32])
{
    assert (public_key);
    return s_new (S_ALG_EDDSA, public_key, crypto_sign_PUBLICKEYBYTES);
}


//  --------------------------------------------------------------------------
//  Destroy the verifier; the key is wiped before its memory is released.

void
wsr_jwt_destroy (wsr_jwt_t **self_p)
{
    assert (self_p);
    if (*self_p) {
        wsr_jwt_t *self = *self_p;
        sodium_memzero (self->key, self->key_len);
        free (self->key);
        sodium_memzero (self, sizeof (wsr_jwt_t));
        free (self);
        *self_p = NULL;
    }
}


//  --------------------------------------------------------------------------
//  A negative leeway is a caller bug: config validation happens before this.

void
wsr_jwt_set_leeway (wsr_jwt_t *self, int seconds)
{
    assert (self);
    assert (seconds >= 0);
    self->leeway = seconds;
}


//  --------------------------------------------------------------------------
//  The clock skew, for whoever turns exp into a deadline.

int
wsr_jwt_leeway (wsr_jwt_t *self)
{
    assert (self);
    return self->leeway;
}


//  --------------------------------------------------------------------------
//  Deployments that never issue eternal tokens can insist on exp.

void
wsr_jwt_set_require_exp (wsr_jwt_t *self, bool require)
{
    assert (self);
    self->require_exp = require;
}


//  --------------------------------------------------------------------------
//  True for the 64 characters of the base64url alphabet. Checked before
//  decoding so that '=', '+', '/', whitespace and NUL are refused whatever
//  the decoder would tolerate.

static bool
s_b64url_char (char c)
{
    return (c >= 'A' && c <= 'Z')
        || (c >= 'a' && c <= 'z')
        || (c >= '0' && c <= '9')
        || c == '-' || c == '_';
}


//  --------------------------------------------------------------------------
//  Decode one segment into bin (max bytes). libsodium rejects lengths that
//  cannot be base64 (len % 4 == 1) and non-zero trailing bits, so only the
//  canonical encoding of a byte string is accepted. Returns 0 or -1.

static int
s_b64url_decode (const char *text, size_t len, uint8_t *bin, size_t max, size_t *bin_len)
{
    return sodium_base642bin (bin, max, text, len, NULL, bin_len, NULL, S_B64_VARIANT);
}


//  --------------------------------------------------------------------------
//  Decode a base64url segment and parse it as one JSON object, refusing
//  duplicate keys (two "sub" claims must not let parsers disagree) and, as
//  jansson does by default, invalid UTF-8 and "\u0000". Returns a new
//  reference the caller owns, or NULL.

static json_t *
s_json_object (const char *text, size_t len, uint8_t *buffer, size_t buffer_size)
{
    size_t bin_len = 0;
    if (s_b64url_decode (text, len, buffer, buffer_size, &bin_len))
        return NULL;
    json_error_t error;
    json_t *object = json_loadb ((const char *) buffer, bin_len, JSON_REJECT_DUPLICATES, &error);
    if (object && !json_is_object (object))
        json_decref (object);
    else
        return object;
    return NULL;
}


//  --------------------------------------------------------------------------
//  True if value is a JSON string equal to expected, byte for byte: a string
//  with an embedded NUL never matches on its prefix.

static bool
s_string_is (json_t *value, const char *expected)
{
    if (!json_is_string (value))
        return false;
    size_t len = json_string_length (value);
    return len == strlen (expected)
        && memcmp (json_string_value (value), expected, len) == 0;
}


//  --------------------------------------------------------------------------
//  HMAC-SHA-256 with a key of any length. The one-shot crypto_auth_hmacsha256
//  API wants exactly 32 key bytes; init/update/final accepts any length as
//  RFC 2104 does. Returns 0 or -1.

static int
s_hs256_mac (const uint8_t *key, size_t key_len, const char *data, size_t data_len,
             uint8_t mac [S_HS256_SIG_BYTES])
{
    crypto_auth_hmacsha256_state state;
    int rc = crypto_auth_hmacsha256_init (&state, key, key_len);
    if (rc == 0)
        rc = crypto_auth_hmacsha256_update (&state, (const uint8_t *) data, data_len);
    if (rc == 0)
        rc = crypto_auth_hmacsha256_final (&state, mac);
    sodium_memzero (&state, sizeof (state));
    return rc == 0? 0: -1;
}


//  --------------------------------------------------------------------------
//  Saturating addition so that huge claims or leeways cannot wrap around
//  and turn an expired token into a valid one.

static int64_t
s_add_sat (int64_t a, int64_t b)
{
    int64_t sum;
    if (__builtin_add_overflow (a, b, &sum))
        return b > 0? INT64_MAX: INT64_MIN;
    return sum;
}


//  --------------------------------------------------------------------------
//  Read a NumericDate claim. RFC 7519 allows non-integer values: exp is
//  rounded down and nbf / iat up, so rounding never extends a token's life;
//  values beyond int64 saturate; rounding is done by hand to keep libm out.
//  Returns 0 with *present false if absent, 0 with the value if a number,
//  -1 for any other JSON type.

static int
s_claim_time (json_t *payload, const char *name, bool round_up, bool *present,
              int64_t *value)
{
    json_t *claim = json_object_get (payload, name);
    *present = false;
    *value = 0;
    if (!claim)
        return 0;
    if (json_is_integer (claim))
        *value = (int64_t) json_integer_value (claim);
    else
    if (json_is_real (claim)) {
        double real = json_real_value (claim);
        if (real != real)           //  NaN; jansson never makes one, but be sure
            return -1;
        if (real >= 9.2e18)
            *value = INT64_MAX;
        else
        if (real <= -9.2e18)
            *value = INT64_MIN;
        else {
            int64_t whole = (int64_t) real;     //  truncates toward zero
            if (round_up && (double) whole < real)
                whole++;
            else
            if (!round_up && (double) whole > real)
                whole--;
            *value = whole;
        }
    }
    else
        return -1;
    *present = true;
    return 0;
}


//  --------------------------------------------------------------------------
//  Add one channel name unless it is already there. The caller bounds the
//  number of entries; the length check here guards the fixed-size copy
//  independently of wsr_util_id_valid. Returns 0 or -1 if invalid.

static int
s_channel_add (wsr_claims_t *claims, const char *name, size_t len)
{
    if (len == 0 || len > WSR_MAX_ID_LEN || !wsr_util_id_valid (name, len))
        return -1;
    for (size_t index = 0; index < claims->channels_count; index++) {
        if (strlen (claims->channels [index]) == len
        &&  memcmp (claims->channels [index], name, len) == 0)
            return 0;
    }
    assert (claims->channels_count < WSR_MAX_CHANNELS);
    memcpy (claims->channels [claims->channels_count], name, len);
    claims->channels [claims->channels_count][len] = 0;
    claims->channels_count++;
    return 0;
}


//  --------------------------------------------------------------------------
//  Split comma-separated names into claims->channels. An empty string means
//  no channels; an empty name ("a,,b", "a,") is invalid. More than
//  WSR_MAX_CHANNELS names, duplicates included, is refused so the work per
//  token stays bounded. Returns 0 or -1.

static int
s_channels_from_csv (wsr_claims_t *claims, const char *csv, size_t len)
{
    if (len == 0)
        return 0;
    size_t entries = 0;
    size_t start = 0;
    for (size_t index = 0; index <= len; index++) {
        if (index == len || csv [index] == ',') {
            if (++entries > WSR_MAX_CHANNELS
            ||  s_channel_add (claims, csv + start, index - start))
                return -1;
            start = index + 1;
        }
    }
    return 0;
}


//  --------------------------------------------------------------------------
//  Read the optional "channels" claim: an array of strings or one string of
//  comma-separated names. Returns 0 or -1.

static int
s_channels_from_json (wsr_claims_t *claims, json_t *channels)
{
    if (!channels)
        return 0;
    if (json_is_string (channels)) {
        const char *csv = json_string_value (channels);
        size_t len = json_string_length (channels);
        if (strlen (csv) != len)
            return -1;
        return s_channels_from_csv (claims, csv, len);
    }
    if (!json_is_array (channels) || json_array_size (channels) > WSR_MAX_CHANNELS)
        return -1;
    size_t index;
    json_t *entry;
    json_array_foreach (channels, index, entry) {
        if (!json_is_string (entry))
            return -1;
        const char *name = json_string_value (entry);
        size_t len = json_string_length (entry);
        if (strlen (name) != len || s_channel_add (claims, name, len))
            return -1;
    }
    return 0;
}


//  --------------------------------------------------------------------------
//  Verify a token; see the discussion at the top for the order of checks.
//  All exits go through one cleanup so no path leaks a JSON tree and no
//  failure leaves partial claims behind.

int
wsr_jwt_verify (wsr_jwt_t *self, const char *token, size_t token_len, int64_t now,
                wsr_claims_t *claims, const char **reason)
{
    assert (self);
    assert (claims);
    assert (reason);
    memset (claims, 0, sizeof (wsr_claims_t));
    *reason = NULL;

    int rc = -1;
    const char *why = "token malformed";
    json_t *header = NULL;
    json_t *payload = NULL;
    uint8_t buffer [S_MAX_DECODED];
    uint8_t signature [S_MAX_SIG_BYTES];
    uint8_t mac [S_HS256_SIG_BYTES];
    size_t signature_len = 0;
    size_t dots = 0;
    size_t dot_at [2] = { 0, 0 };
    size_t index;

    if (!token || token_len == 0) {
        why = "token missing";
        goto cleanup;
    }
    if (token_len > WSR_MAX_TOKEN_LEN)
        goto cleanup;

    //  Structure: header.payload.signature, base64url only, none empty
    for (index = 0; index < token_len; index++) {
        if (token [index] == '.') {
            if (dots == 2)
                goto cleanup;
            dot_at [dots++] = index;
        }
        else
        if (!s_b64url_char (token [index]))
            goto cleanup;
    }
    if (dots != 2
    ||  dot_at [0] == 0
    ||  dot_at [1] == dot_at [0] + 1
    ||  dot_at [1] == token_len - 1)
        goto cleanup;

    const char *header_b64 = token;
    size_t header_b64_len = dot_at [0];
    const char *payload_b64 = token + dot_at [0] + 1;
    size_t payload_b64_len = dot_at [1] - dot_at [0] - 1;
    const char *signature_b64 = token + dot_at [1] + 1;
    size_t signature_b64_len = token_len - dot_at [1] - 1;
    size_t signed_len = dot_at [1];

    //  Header: the algorithm is ours, never the token's choice
    header = s_json_object (header_b64, header_b64_len, buffer, sizeof (buffer));
    if (!header)
        goto cleanup;
    if (!s_string_is (json_object_get (header, "alg"), self->alg_name)) {
        why = "alg not allowed";
        goto cleanup;
    }
    json_t *typ = json_object_get (header, "typ");
    if ((typ && !json_is_string (typ))
    ||  json_object_get (header, "crit"))
        goto cleanup;

    //  Signature, before anything in the payload is believed
    if (s_b64url_decode (signature_b64, signature_b64_len,
                         signature, sizeof (signature), &signature_len)) {
        why = "bad signature";
        goto cleanup;
    }
    if (self->alg == S_ALG_HS256) {
        if (signature_len != S_HS256_SIG_BYTES
        ||  s_hs256_mac (self->key, self->key_len, token, signed_len, mac)
        ||  sodium_memcmp (mac, signature, S_HS256_SIG_BYTES) != 0) {
            why = "bad signature";
            goto cleanup;
        }
    }
    else {
        if (signature_len != S_EDDSA_SIG_BYTES
        ||  crypto_sign_verify_detached (signature, (const uint8_t *) token, signed_len,
                                         self->key) != 0) {
            why = "bad signature";
            goto cleanup;
        }
    }

    //  Payload: times first, then identity, then channels
    payload = s_json_object (payload_b64, payload_b64_len, buffer, sizeof (buffer));
    if (!payload)
        goto cleanup;

    bool has_exp, has_nbf, has_iat;
    int64_t exp, nbf, iat;
    if (s_claim_time (payload, "exp", false, &has_exp, &exp)
    ||  s_claim_time (payload, "nbf", true, &has_nbf, &nbf)
    ||  s_claim_time (payload, "iat", true, &has_iat, &iat))
        goto cleanup;
    if (has_exp && now > s_add_sat (exp, self->leeway)) {
        why = "token expired";
        goto cleanup;
    }
    if (has_nbf && s_add_sat (now, self->leeway) < nbf) {
        why = "token not yet valid";
        goto cleanup;
    }
    if (has_iat && iat > s_add_sat (now, self->leeway)) {
        why = "iat in future";
        goto cleanup;
    }
    if (self->require_exp && !has_exp) {
        why = "exp missing";
        goto cleanup;
    }

    json_t *sub = json_object_get (payload, "sub");
    if (!sub) {
        why = "sub missing";
        goto cleanup;
    }
    if (!json_is_string (sub)) {
        why = "sub invalid";
        goto cleanup;
    }
    const char *sub_value = json_string_value (sub);
    size_t sub_len = json_string_length (sub);
    if (strlen (sub_value) != sub_len
    ||  sub_len == 0
    ||  sub_len > WSR_MAX_ID_LEN
    ||  !wsr_util_id_valid (sub_value, sub_len)) {
        why = "sub invalid";
        goto cleanup;
    }
    memcpy (claims->sub, sub_value, sub_len);
    claims->sub [sub_len] = 0;

    if (s_channels_from_json (claims, json_object_get (payload, "channels"))) {
        why = "channels invalid";
        goto cleanup;
    }
    claims->exp = has_exp? exp: 0;
    rc = 0;

cleanup:
    json_decref (header);
    json_decref (payload);
    sodium_memzero (mac, sizeof (mac));
    if (rc) {
        memset (claims, 0, sizeof (wsr_claims_t));
        *reason = why;
    }
    return rc;
}


//  --------------------------------------------------------------------------
//  Encode header and payload JSON text, sign "header.payload" and append the
//  signature. Used by both minting functions and by the selftest to craft
//  hostile tokens. Returns a new string the caller frees, or NULL.

static char *
s_assemble (const char *header, size_t header_len, const char *payload, size_t payload_len,
            s_alg_t alg, const uint8_t *key, size_t key_len)
{
    size_t signature_bytes = alg == S_ALG_HS256? S_HS256_SIG_BYTES: S_EDDSA_SIG_BYTES;
    size_t header_b64 = sodium_base64_ENCODED_LEN (header_len, S_B64_VARIANT) - 1;
    size_t payload_b64 = sodium_base64_ENCODED_LEN (payload_len, S_B64_VARIANT) - 1;
    size_t signature_b64 = sodium_base64_ENCODED_LEN (signature_bytes, S_B64_VARIANT) - 1;
    size_t signed_len = header_b64 + 1 + payload_b64;
    char *token = (char *) malloc (signed_len + 1 + signature_b64 + 1);
    if (!token)
        return NULL;

    sodium_bin2base64 (token, header_b64 + 1,
                       (const uint8_t *) header, header_len, S_B64_VARIANT);
    token [header_b64] = '.';
    sodium_bin2base64 (token + header_b64 + 1, payload_b64 + 1,
                       (const uint8_t *) payload, payload_len, S_B64_VARIANT);
    token [signed_len] = '.';

    uint8_t signature [S_MAX_SIG_BYTES];
    int rc;
    if (alg == S_ALG_HS256)
        rc = s_hs256_mac (key, key_len, token, signed_len, signature);
    else
        rc = crypto_sign_detached (signature, NULL, (const uint8_t *) token, signed_len, key);
    if (rc) {
        free (token);
        return NULL;
    }
    sodium_bin2base64 (token + signed_len + 1, signature_b64 + 1,
                       signature, signature_bytes, S_B64_VARIANT);
    return token;
}


//  --------------------------------------------------------------------------
//  Build the claims JSON and the token. Channel names go through the same
//  validation and de-duplication as verification, so a minted token always
//  verifies. Returns a new string the caller frees, or NULL.

static char *
s_mint (const char *header, s_alg_t alg, const uint8_t *key, size_t key_len,
        const char *sub, int64_t iat, int64_t exp, const char *channels_csv)
{
    char *token = NULL;
    char *payload = NULL;
    json_t *object = NULL;
    json_t *array = NULL;
    wsr_claims_t parsed;
    memset (&parsed, 0, sizeof (parsed));

    if (!sub || strlen (sub) > WSR_MAX_ID_LEN || !wsr_util_id_valid (sub, strlen (sub)))
        goto cleanup;
    if (channels_csv && s_channels_from_csv (&parsed, channels_csv, strlen (channels_csv)))
        goto cleanup;

    object = json_pack ("{s:s, s:I}", "sub", sub, "iat", (json_int_t) iat);
    if (!object)
        goto cleanup;
    if (exp != 0
    &&  json_object_set_new (object, "exp", json_integer ((json_int_t) exp)))
        goto cleanup;
    if (parsed.channels_count > 0) {
        array = json_array ();
        if (!array)
            goto cleanup;
        for (size_t index = 0; index < parsed.channels_count; index++)
            if (json_array_append_new (array, json_string (parsed.channels [index])))
                goto cleanup;
        int set = json_object_set (object, "channels", array);
        if (set)
            goto cleanup;
    }
    payload = json_dumps (object, JSON_COMPACT);
    if (!payload)
        goto cleanup;
    token = s_assemble (header, strlen (header), payload, strlen (payload), alg, key, key_len);

cleanup:
    free (payload);
    json_decref (array);
    json_decref (object);
    return token;
}


//  --------------------------------------------------------------------------
//  Mint an HS256 token; see the header for the claims written.

char *
wsr_jwt_mint_hs256 (const uint8_t *secret, size_t secret_len, const char *sub,
                    int64_t iat, int64_t exp, const char *channels_csv)
{
    assert (secret);
    if (secret_len == 0)
        return NULL;
    return s_mint (S_HS256_HEADER, S_ALG_HS256, secret, secret_len,
                   sub, iat, exp, channels_csv);
}


//  --------------------------------------------------------------------------
//  Mint an EdDSA token with libsodium's 64-byte Ed25519 secret key.

char *
wsr_jwt_mint_eddsa (const uint8_t secret_key [64], const char *sub,
                    int64_t iat, int64_t exp, const char *channels_csv)
{
    assert (secret_key);
    return s_mint (S_EDDSA_HEADER, S_ALG_EDDSA, secret_key, crypto_sign_SECRETKEYBYTES,
                   sub, iat, exp, channels_csv);
}


//  --------------------------------------------------------------------------
//  Selftest helpers

#define S_TEST_NOW          INT64_C(1700000000)

//  Craft an HS256-signed token from raw header and payload JSON text.
static char *
s_test_craft (const char *header, const char *payload, const uint8_t *secret, size_t secret_len)
{
    char *token = s_assemble (header, strlen (header), payload, strlen (payload),
                              S_ALG_HS256, secret, secret_len);
    assert (token);
    return token;
}

//  Craft a token with the given signature segment text, signed by nobody.
static char *
s_test_unsigned (const char *header, const char *payload, const char *signature_b64)
{
    char *token = s_test_craft (header, payload, (const uint8_t *) "x", 1);
    char *last_dot = strrchr (token, '.');
    assert (last_dot);
    *last_dot = 0;
    char *result = zsys_sprintf ("%s.%s", token, signature_b64);
    assert (result);
    zstr_free (&token);
    return result;
}

//  Verify token at now and assert the outcome: expected NULL means success.
//  Takes ownership of the token.
static void
s_test_expect (wsr_jwt_t *jwt, char **token_p, int64_t now, const char *expected,
               wsr_claims_t *claims, bool verbose)
{
    assert (token_p && *token_p);
    const char *reason = NULL;
    int rc = wsr_jwt_verify (jwt, *token_p, strlen (*token_p), now, claims, &reason);
    if (verbose && (expected? rc == 0 || !streq (reason, expected): rc != 0))
        printf ("\n    unexpected: rc=%d reason=%s, wanted %s\n",
                rc, reason? reason: "-", expected? expected: "success");
    if (expected) {
        assert (rc == -1);
        assert (reason && streq (reason, expected));
        assert (strlen (reason) < 100);
        assert (claims->sub [0] == 0 && claims->channels_count == 0);
    }
    else {
        assert (rc == 0);
        assert (reason == NULL);
    }
    zstr_free (token_p);
}

//  Shorthand: craft an HS256 token with header alg HS256 and this payload.
static char *
s_test_payload (const char *payload, const uint8_t *secret, size_t secret_len)
{
    return s_test_craft (S_HS256_HEADER, payload, secret, secret_len);
}


//  --------------------------------------------------------------------------
//  Selftest

void
wsr_jwt_test (bool verbose)
{
    //  main calls sodium_init first; calling it again is harmless
    assert (sodium_init () >= 0);

    const uint8_t secret [] = "correct horse battery staple";
    const size_t secret_len = sizeof (secret) - 1;
    wsr_jwt_t *jwt = wsr_jwt_new_hs256 (secret, secret_len);
    assert (jwt);
    wsr_claims_t claims;
    char *token;
    char *text;
    int64_t now = S_TEST_NOW;

    //  Constructor contract
    assert (wsr_jwt_new_hs256 (secret, 0) == NULL);
    wsr_jwt_t *scratch = NULL;
    wsr_jwt_destroy (&scratch);

    //  Valid HS256: channels as an array, duplicates removed, exp reported
    token = s_test_payload ("{\"sub\":\"alice\",\"iat\":1700000000,\"exp\":1700003600,"
                            "\"channels\":[\"news\",\"chat.room-1\",\"news\"]}",
                            secret, secret_len);
    s_test_expect (jwt, &token, now, NULL, &claims, verbose);
    assert (streq (claims.sub, "alice"));
    assert (claims.channels_count == 2);
    assert (streq (claims.channels [0], "news"));
    assert (streq (claims.channels [1], "chat.room-1"));
    assert (claims.exp == 1700003600);

    //  Valid HS256: channels as one comma-separated string; no exp
    token = s_test_payload ("{\"sub\":\"bob@example.org\",\"channels\":\"a,b,a,c\"}",
                            secret, secret_len);
    s_test_expect (jwt, &token, now, NULL, &claims, verbose);
    assert (streq (claims.sub, "bob@example.org"));
    assert (claims.channels_count == 3);
    assert (streq (claims.channels [2], "c"));
    assert (claims.exp == 0);

    //  Empty channels, as string or array, mean none
    token = s_test_payload ("{\"sub\":\"bob\",\"channels\":\"\"}", secret, secret_len);
    s_test_expect (jwt, &token, now, NULL, &claims, verbose);
    assert (claims.channels_count == 0);
    token = s_test_payload ("{\"sub\":\"bob\",\"channels\":[]}", secret, secret_len);
    s_test_expect (jwt, &token, now, NULL, &claims, verbose);
    assert (claims.channels_count == 0);

    //  typ may be any string; other header fields are ignored
    token = s_test_craft ("{\"typ\":\"jwt\",\"alg\":\"HS256\",\"kid\":\"k1\"}",
                          "{\"sub\":\"u\"}", secret, secret_len);
    s_test_expect (jwt, &token, now, NULL, &claims, verbose);

    //  Minted HS256 token round-trips
    token = wsr_jwt_mint_hs256 (secret, secret_len, "carol", now, now + 60, "x,y,x");
    assert (token);
    s_test_expect (jwt, &token, now, NULL, &claims, verbose);
    assert (streq (claims.sub, "carol"));
    assert (claims.channels_count == 2);
    assert (claims.exp == now + 60);
    token = wsr_jwt_mint_hs256 (secret, secret_len, "carol", now, 0, NULL);
    assert (token);
    s_test_expect (jwt, &token, now, NULL, &claims, verbose);
    assert (claims.channels_count == 0 && claims.exp == 0);

    //  The minted header and payload are exactly as documented
    token = wsr_jwt_mint_hs256 (secret, secret_len, "dave", 5, 0, "");
    assert (token);
    {
        uint8_t decoded [256];
        size_t decoded_len;
        char *dot = strchr (token, '.');
        assert (dot);
        assert (s_b64url_decode (token, dot - token, decoded, sizeof (decoded) - 1,
                                 &decoded_len) == 0);
        decoded [decoded_len] = 0;
        assert (streq ((char *) decoded, S_HS256_HEADER));
        char *dot2 = strchr (dot + 1, '.');
        assert (dot2);
        assert (s_b64url_decode (dot + 1, dot2 - dot - 1, decoded, sizeof (decoded) - 1,
                                 &decoded_len) == 0);
        decoded [decoded_len] = 0;
        assert (streq ((char *) decoded, "{\"sub\":\"dave\",\"iat\":5}"));
    }
    zstr_free (&token);

    //  Interoperability: known answers from outside this code
    {
        //  RFC 4231 test case 6: key longer than the HMAC block is hashed first
        uint8_t rfc4231_key [131];
        memset (rfc4231_key, 0xaa, sizeof (rfc4231_key));
        const char *rfc4231_data = "Test Using Larger Than Block-Size Key - Hash Key First";
        const uint8_t rfc4231_mac [S_HS256_SIG_BYTES] = {
            0x60, 0xe4, 0x31, 0x59, 0x1e, 0xe0, 0xb6, 0x7f, 0x0d, 0x8a, 0x26, 0xaa,
            0xcb, 0xf5, 0xb7, 0x7f, 0x8e, 0x0b, 0xc6, 0x21, 0x37, 0x28, 0xc5, 0x14,
            0x05, 0x46, 0x04, 0x0f, 0x0e, 0xe3, 0x7f, 0x54
        };
        uint8_t mac [S_HS256_SIG_BYTES];
        assert (s_hs256_mac (rfc4231_key, sizeof (rfc4231_key), rfc4231_data,
                             strlen (rfc4231_data), mac) == 0);
        assert (memcmp (mac, rfc4231_mac, sizeof (mac)) == 0);

        //  The jwt.io example token, secret "your-256-bit-secret"
        const char *jwtio_secret = "your-256-bit-secret";
        wsr_jwt_t *jwtio = wsr_jwt_new_hs256 ((const uint8_t *) jwtio_secret,
                                              strlen (jwtio_secret));
        assert (jwtio);
        token = strdup ("eyJhbGciOiJIUzI1NiIsInR5cCI6IkpXVCJ9."
                        "eyJzdWIiOiIxMjM0NTY3ODkwIiwibmFtZSI6IkpvaG4gRG9lIiwi"
                        "aWF0IjoxNTE2MjM5MDIyfQ."
                        "SflKxwRJSMeKKF2QT4fwpMeJf36POk6yJV_adQssw5c");
        assert (token);
        s_test_expect (jwtio, &token, now, NULL, &claims, verbose);
        assert (streq (claims.sub, "1234567890"));
        assert (claims.channels_count == 0 && claims.exp == 0);
        wsr_jwt_destroy (&jwtio);

        //  RFC 8037 appendix A.4: the signature is valid, the payload is
        //  plain text, so verification gets past the signature and stops at
        //  the payload; one flipped bit stops it at the signature
        const uint8_t rfc8037_public [crypto_sign_PUBLICKEYBYTES] = {
            0xd7, 0x5a, 0x98, 0x01, 0x82, 0xb1, 0x0a, 0xb7, 0xd5, 0x4b, 0xfe, 0xd3,
            0xc9, 0x64, 0x07, 0x3a, 0x0e, 0xe1, 0x72, 0xf3, 0xda, 0xa6, 0x23, 0x25,
            0xaf, 0x02, 0x1a, 0x68, 0xf7, 0x07, 0x51, 0x1a
        };
        wsr_jwt_t *rfc8037 = wsr_jwt_new_eddsa (rfc8037_public);
        assert (rfc8037);
        const char *rfc8037_token =
            "eyJhbGciOiJFZERTQSJ9.RXhhbXBsZSBvZiBFZDI1NTE5IHNpZ25pbmc."
            "hgyY0il_MGCjP0JzlnLWG1PPOt7-09PGcvMg3AIbQR6dWbhijcNR4ki4iylGjg5BhVsPt9g7s"
            "VvpAr_MuM0KAg";
        token = strdup (rfc8037_token);
        assert (token);
        s_test_expect (rfc8037, &token, now, "token malformed", &claims, verbose);
        token = strdup (rfc8037_token);
        assert (token);
        token [strlen (token) - 1] = 'A';
        s_test_expect (rfc8037, &token, now, "bad signature", &claims, verbose);
        wsr_jwt_destroy (&rfc8037);
    }

    //  Mint refuses invalid input
    assert (wsr_jwt_mint_hs256 (secret, secret_len, NULL, now, 0, NULL) == NULL);
    assert (wsr_jwt_mint_hs256 (secret, secret_len, "", now, 0, NULL) == NULL);
    assert (wsr_jwt_mint_hs256 (secret, secret_len, "a b", now, 0, NULL) == NULL);
    assert (wsr_jwt_mint_hs256 (secret, secret_len, "ok", now, 0, "a,*") == NULL);
    assert (wsr_jwt_mint_hs256 (secret, secret_len, "ok", now, 0, "a,,b") == NULL);
    assert (wsr_jwt_mint_hs256 (secret, secret_len, "ok", now, 0, "a,") == NULL);
    assert (wsr_jwt_mint_hs256 (secret, 0, "ok", now, 0, NULL) == NULL);

    //  Long (100-byte, hashed by HMAC) and 1-byte secrets
    {
        uint8_t long_secret [100];
        for (size_t index = 0; index < sizeof (long_secret); index++)
            long_secret [index] = (uint8_t) (index * 7 + 3);
        wsr_jwt_t *long_jwt = wsr_jwt_new_hs256 (long_secret, sizeof (long_secret));
        assert (long_jwt);
        token = wsr_jwt_mint_hs256 (long_secret, sizeof (long_secret), "long", now, 0, "c1");
        assert (token);
        s_test_expect (long_jwt, &token, now, NULL, &claims, verbose);
        assert (streq (claims.sub, "long"));
        //  Same secret, one byte short: must not verify
        token = wsr_jwt_mint_hs256 (long_secret, sizeof (long_secret) - 1, "long", now, 0, NULL);
        assert (token);
        s_test_expect (long_jwt, &token, now, "bad signature", &claims, verbose);
        wsr_jwt_destroy (&long_jwt);
        assert (long_jwt == NULL);

        const uint8_t tiny_secret [1] = { 'k' };
        wsr_jwt_t *tiny_jwt = wsr_jwt_new_hs256 (tiny_secret, 1);
        assert (tiny_jwt);
        token = wsr_jwt_mint_hs256 (tiny_secret, 1, "tiny", now, 0, NULL);
        assert (token);
        s_test_expect (tiny_jwt, &token, now, NULL, &claims, verbose);
        assert (streq (claims.sub, "tiny"));
        token = wsr_jwt_mint_hs256 (tiny_secret, 1, "tiny", now, 0, NULL);
        s_test_expect (jwt, &token, now, "bad signature", &claims, verbose);
        wsr_jwt_destroy (&tiny_jwt);
    }

    //  Wrong secret
    token = wsr_jwt_mint_hs256 ((const uint8_t *) "wrong", 5, "alice", now, 0, NULL);
    assert (token);
    s_test_expect (jwt, &token, now, "bad signature", &claims, verbose);

    //  Tampered payload: swap in another payload segment, keep the signature
    {
        char *good = s_test_payload ("{\"sub\":\"alice\"}", secret, secret_len);
        char *evil = s_test_payload ("{\"sub\":\"admin\"}", secret, secret_len);
        char *good_dot = strchr (good, '.');
        char *evil_dot = strchr (evil, '.');
        char *good_sig = strrchr (good, '.');
        *strrchr (evil, '.') = 0;
        token = zsys_sprintf ("%.*s.%s%s", (int) (good_dot - good), good, evil_dot + 1,
                              good_sig);
        assert (token);
        s_test_expect (jwt, &token, now, "bad signature", &claims, verbose);

        //  Flip one signature character
        token = strdup (good);
        assert (token);
        char *sig = strrchr (token, '.') + 1;
        sig [0] = sig [0] == 'A'? 'B': 'A';
        s_test_expect (jwt, &token, now, "bad signature", &claims, verbose);

        //  Truncated signatures (41 chars: no base64 length; 40 chars: 30
        //  bytes) and an extended one (35 bytes)
        token = strdup (good);
        assert (token);
        token [strlen (token) - 2] = 0;
        s_test_expect (jwt, &token, now, "bad signature", &claims, verbose);
        token = strdup (good);
        assert (token);
        token [strlen (token) - 3] = 0;
        s_test_expect (jwt, &token, now, "bad signature", &claims, verbose);
        token = zsys_sprintf ("%sAAAA", good);
        s_test_expect (jwt, &token, now, "bad signature", &claims, verbose);
        zstr_free (&good);
        zstr_free (&evil);
    }

    //  Expiry, not-before and issued-at around the leeway
    text = zsys_sprintf ("{\"sub\":\"a\",\"exp\":%" PRId64 "}", now - WSR_JWT_LEEWAY_S - 1);
    token = s_test_payload (text, secret, secret_len);
    s_test_expect (jwt, &token, now, "token expired", &claims, verbose);
    zstr_free (&text);
    text = zsys_sprintf ("{\"sub\":\"a\",\"exp\":%" PRId64 "}", now - WSR_JWT_LEEWAY_S);
    token = s_test_payload (text, secret, secret_len);
    s_test_expect (jwt, &token, now, NULL, &claims, verbose);
    assert (claims.exp == now - WSR_JWT_LEEWAY_S);
    zstr_free (&text);
    text = zsys_sprintf ("{\"sub\":\"a\",\"exp\":%" PRId64 ".5}", now - WSR_JWT_LEEWAY_S - 1);
    token = s_test_payload (text, secret, secret_len);
    s_test_expect (jwt, &token, now, "token expired", &claims, verbose);
    zstr_free (&text);
    text = zsys_sprintf ("{\"sub\":\"a\",\"nbf\":%" PRId64 "}", now + WSR_JWT_LEEWAY_S + 1);
    token = s_test_payload (text, secret, secret_len);
    s_test_expect (jwt, &token, now, "token not yet valid", &claims, verbose);
    zstr_free (&text);
    text = zsys_sprintf ("{\"sub\":\"a\",\"nbf\":%" PRId64 "}", now + WSR_JWT_LEEWAY_S);
    token = s_test_payload (text, secret, secret_len);
    s_test_expect (jwt, &token, now, NULL, &claims, verbose);
    zstr_free (&text);
    //  A fractional nbf rounds up: half a second past the leeway is too early
    text = zsys_sprintf ("{\"sub\":\"a\",\"nbf\":%" PRId64 ".5}", now + WSR_JWT_LEEWAY_S);
    token = s_test_payload (text, secret, secret_len);
    s_test_expect (jwt, &token, now, "token not yet valid", &claims, verbose);
    zstr_free (&text);
    text = zsys_sprintf ("{\"sub\":\"a\",\"iat\":%" PRId64 "}", now + WSR_JWT_LEEWAY_S + 1);
    token = s_test_payload (text, secret, secret_len);
    s_test_expect (jwt, &token, now, "iat in future", &claims, verbose);
    zstr_free (&text);
    text = zsys_sprintf ("{\"sub\":\"a\",\"iat\":%" PRId64 ".0}", now + WSR_JWT_LEEWAY_S);
    token = s_test_payload (text, secret, secret_len);
    s_test_expect (jwt, &token, now, NULL, &claims, verbose);
    zstr_free (&text);
    //  Huge values saturate rather than wrap
    token = s_test_payload ("{\"sub\":\"a\",\"exp\":9223372036854775807}", secret, secret_len);
    s_test_expect (jwt, &token, now, NULL, &claims, verbose);
    token = s_test_payload ("{\"sub\":\"a\",\"exp\":-9223372036854775807}", secret, secret_len);
    s_test_expect (jwt, &token, now, "token expired", &claims, verbose);
    token = s_test_payload ("{\"sub\":\"a\",\"exp\":1e300}", secret, secret_len);
    s_test_expect (jwt, &token, now, NULL, &claims, verbose);
    token = s_test_payload ("{\"sub\":\"a\",\"nbf\":1e300}", secret, secret_len);
    s_test_expect (jwt, &token, now, "token not yet valid", &claims, verbose);
    //  Times must be numbers
    token = s_test_payload ("{\"sub\":\"a\",\"exp\":\"1800000000\"}", secret, secret_len);
    s_test_expect (jwt, &token, now, "token malformed", &claims, verbose);
    token = s_test_payload ("{\"sub\":\"a\",\"nbf\":null}", secret, secret_len);
    s_test_expect (jwt, &token, now, "token malformed", &claims, verbose);
    token = s_test_payload ("{\"sub\":\"a\",\"iat\":true}", secret, secret_len);
    s_test_expect (jwt, &token, now, "token malformed", &claims, verbose);
    //  Leeway is configurable
    wsr_jwt_set_leeway (jwt, 0);
    text = zsys_sprintf ("{\"sub\":\"a\",\"exp\":%" PRId64 "}", now - 1);
    token = s_test_payload (text, secret, secret_len);
    s_test_expect (jwt, &token, now, "token expired", &claims, verbose);
    zstr_free (&text);
    wsr_jwt_set_leeway (jwt, WSR_JWT_LEEWAY_S);
    //  Required exp
    wsr_jwt_set_require_exp (jwt, true);
    token = s_test_payload ("{\"sub\":\"a\"}", secret, secret_len);
    s_test_expect (jwt, &token, now, "exp missing", &claims, verbose);
    token = wsr_jwt_mint_hs256 (secret, secret_len, "a", now, now + 10, NULL);
    s_test_expect (jwt, &token, now, NULL, &claims, verbose);
    wsr_jwt_set_require_exp (jwt, false);

    //  Algorithms other than the configured one
    token = s_test_unsigned ("{\"alg\":\"none\"}", "{\"sub\":\"a\"}", "");
    //  An empty signature is malformed structure before alg is even read
    s_test_expect (jwt, &token, now, "token malformed", &claims, verbose);
    token = s_test_unsigned ("{\"alg\":\"none\",\"typ\":\"JWT\"}", "{\"sub\":\"a\"}", "c2ln");
    s_test_expect (jwt, &token, now, "alg not allowed", &claims, verbose);
    token = s_test_craft ("{\"alg\":\"none\"}", "{\"sub\":\"a\"}", secret, secret_len);
    s_test_expect (jwt, &token, now, "alg not allowed", &claims, verbose);
    token = s_test_craft ("{\"alg\":\"HS512\"}", "{\"sub\":\"a\"}", secret, secret_len);
    s_test_expect (jwt, &token, now, "alg not allowed", &claims, verbose);
    token = s_test_craft ("{\"alg\":\"HS384\"}", "{\"sub\":\"a\"}", secret, secret_len);
    s_test_expect (jwt, &token, now, "alg not allowed", &claims, verbose);
    token = s_test_craft ("{\"alg\":\"hs256\"}", "{\"sub\":\"a\"}", secret, secret_len);
    s_test_expect (jwt, &token, now, "alg not allowed", &claims, verbose);
    token = s_test_craft ("{\"alg\":\"HS256 \"}", "{\"sub\":\"a\"}", secret, secret_len);
    s_test_expect (jwt, &token, now, "alg not allowed", &claims, verbose);
    token = s_test_craft ("{\"typ\":\"JWT\"}", "{\"sub\":\"a\"}", secret, secret_len);
    s_test_expect (jwt, &token, now, "alg not allowed", &claims, verbose);
    token = s_test_craft ("{\"alg\":256}", "{\"sub\":\"a\"}", secret, secret_len);
    s_test_expect (jwt, &token, now, "alg not allowed", &claims, verbose);
    token = s_test_craft ("{\"alg\":[\"HS256\"]}", "{\"sub\":\"a\"}", secret, secret_len);
    s_test_expect (jwt, &token, now, "alg not allowed", &claims, verbose);

    //  Header rules: typ must be a string, crit is refused
    token = s_test_craft ("{\"alg\":\"HS256\",\"typ\":1}", "{\"sub\":\"a\"}", secret, secret_len);
    s_test_expect (jwt, &token, now, "token malformed", &claims, verbose);
    token = s_test_craft ("{\"alg\":\"HS256\",\"crit\":[\"exp\"]}", "{\"sub\":\"a\"}",
                          secret, secret_len);
    s_test_expect (jwt, &token, now, "token malformed", &claims, verbose);

    //  EdDSA: valid, wrong key, tampered, and cross-algorithm confusion
    {
        uint8_t public_key [crypto_sign_PUBLICKEYBYTES];
        uint8_t secret_key [crypto_sign_SECRETKEYBYTES];
        uint8_t other_public [crypto_sign_PUBLICKEYBYTES];
        uint8_t other_secret [crypto_sign_SECRETKEYBYTES];
        assert (crypto_sign_keypair (public_key, secret_key) == 0);
        assert (crypto_sign_keypair (other_public, other_secret) == 0);
        wsr_jwt_t *ed = wsr_jwt_new_eddsa (public_key);
        assert (ed);

        token = wsr_jwt_mint_eddsa (secret_key, "erin", now, now + 300, "ops,alerts");
        assert (token);
        char *ed_token = strdup (token);
        assert (ed_token);
        s_test_expect (ed, &token, now, NULL, &claims, verbose);
        assert (streq (claims.sub, "erin"));
        assert (claims.channels_count == 2);
        assert (streq (claims.channels [1], "alerts"));
        assert (claims.exp == now + 300);

        token = wsr_jwt_mint_eddsa (other_secret, "erin", now, 0, NULL);
        assert (token);
        s_test_expect (ed, &token, now, "bad signature", &claims, verbose);

        token = strdup (ed_token);
        assert (token);
        char *sig = strrchr (token, '.') + 1;
        sig [5] = sig [5] == 'Q'? 'R': 'Q';
        s_test_expect (ed, &token, now, "bad signature", &claims, verbose);

        //  EdDSA token to the HS256 verifier and HS256 token to the EdDSA one
        token = strdup (ed_token);
        assert (token);
        s_test_expect (jwt, &token, now, "alg not allowed", &claims, verbose);
        token = wsr_jwt_mint_hs256 (secret, secret_len, "erin", now, 0, NULL);
        assert (token);
        s_test_expect (ed, &token, now, "alg not allowed", &claims, verbose);
        //  Classic confusion: HS256 keyed with the public key, sent to EdDSA
        token = wsr_jwt_mint_hs256 (public_key, sizeof (public_key), "erin", now, 0, NULL);
        assert (token);
        s_test_expect (ed, &token, now, "alg not allowed", &claims, verbose);
        //  EdDSA header with an HMAC-sized signature
        token = s_test_craft (S_EDDSA_HEADER, "{\"sub\":\"erin\"}", secret, secret_len);
        s_test_expect (ed, &token, now, "bad signature", &claims, verbose);

        zstr_free (&ed_token);
        wsr_jwt_destroy (&ed);
        assert (ed == NULL);
        sodium_memzero (secret_key, sizeof (secret_key));
        sodium_memzero (other_secret, sizeof (other_secret));
    }

    //  Missing and oversized tokens
    {
        const char *reason = NULL;
        assert (wsr_jwt_verify (jwt, NULL, 0, now, &claims, &reason) == -1);
        assert (streq (reason, "token missing"));
        assert (wsr_jwt_verify (jwt, "a.b.c", 0, now, &claims, &reason) == -1);
        assert (streq (reason, "token missing"));
        char *big = (char *) malloc (WSR_MAX_TOKEN_LEN + 2);
        assert (big);
        memset (big, 'A', WSR_MAX_TOKEN_LEN + 1);
        big [WSR_MAX_TOKEN_LEN + 1] = 0;
        assert (wsr_jwt_verify (jwt, big, WSR_MAX_TOKEN_LEN + 1, now, &claims, &reason) == -1);
        assert (streq (reason, "token malformed"));
        free (big);
        //  token_len is authoritative: bytes after it are not read
        char *good = s_test_payload ("{\"sub\":\"alice\"}", secret, secret_len);
        text = zsys_sprintf ("%s.garbage", good);
        assert (wsr_jwt_verify (jwt, text, strlen (good), now, &claims, &reason) == 0);
        assert (streq (claims.sub, "alice"));
        //  An embedded NUL inside token_len is malformed
        text [3] = 0;
        assert (wsr_jwt_verify (jwt, text, strlen (good), now, &claims, &reason) == -1);
        assert (streq (reason, "token malformed"));
        zstr_free (&text);
        zstr_free (&good);
    }

    //  Structural damage
    {
        char *good = s_test_payload ("{\"sub\":\"alice\"}", secret, secret_len);
        char *first_dot = strchr (good, '.');
        char *last_dot = strrchr (good, '.');
        int head = (int) (first_dot - good);

        //  Two segments
        token = zsys_sprintf ("%.*s", (int) (last_dot - good), good);
        s_test_expect (jwt, &token, now, "token malformed", &claims, verbose);
        //  Four segments
        token = zsys_sprintf ("%s.%s", good, last_dot + 1);
        s_test_expect (jwt, &token, now, "token malformed", &claims, verbose);
        //  Empty segments
        token = zsys_sprintf ("%s.", good);
        s_test_expect (jwt, &token, now, "token malformed", &claims, verbose);
        token = zsys_sprintf ("%s", first_dot);
        s_test_expect (jwt, &token, now, "token malformed", &claims, verbose);
        token = zsys_sprintf ("%.*s.%s", head, good, last_dot);
        s_test_expect (jwt, &token, now, "token malformed", &claims, verbose);
        token = strdup ("..");
        s_test_expect (jwt, &token, now, "token malformed", &claims, verbose);
        //  Characters outside base64url: standard alphabet, space, padding
        const char *bad_chars [] = { "+", "/", " ", "=", "==", "%", "\t" };
        for (size_t index = 0; index < sizeof (bad_chars) / sizeof (bad_chars [0]); index++) {
            token = zsys_sprintf ("%.*s%s%s", head, good, bad_chars [index], first_dot);
            s_test_expect (jwt, &token, now, "token malformed", &claims, verbose);
            token = zsys_sprintf ("%s%s", good, bad_chars [index]);
            s_test_expect (jwt, &token, now, "token malformed", &claims, verbose);
        }
        zstr_free (&good);

        //  Padded header, correctly signed over the padded text: still refused
        {
            //  {"alg":"HS256"} is 15 bytes: 20 chars, so any '=' is padding
            //  the no-padding variant forbids
            const char *header = "{\"alg\":\"HS256\"}";
            uint8_t mac [S_HS256_SIG_BYTES];
            char header_b64 [64], payload_b64 [64], sig_b64 [64];
            sodium_bin2base64 (header_b64, sizeof (header_b64),
                               (const uint8_t *) header, strlen (header), S_B64_VARIANT);
            sodium_bin2base64 (payload_b64, sizeof (payload_b64),
                               (const uint8_t *) "{\"sub\":\"a\"}", 11, S_B64_VARIANT);
            char *signed_text = zsys_sprintf ("%s=.%s", header_b64, payload_b64);
            assert (s_hs256_mac (secret, secret_len, signed_text, strlen (signed_text),
                                 mac) == 0);
            sodium_bin2base64 (sig_b64, sizeof (sig_b64), mac, sizeof (mac), S_B64_VARIANT);
            token = zsys_sprintf ("%s.%s", signed_text, sig_b64);
            s_test_expect (jwt, &token, now, "token malformed", &claims, verbose);
            zstr_free (&signed_text);
        }
        //  Non-canonical base64: trailing bits set ("e30" is "{}", "e31" is not)
        token = s_test_unsigned ("{}", "{}", "AAAA");
        *strchr (token, '.') = 0;
        text = zsys_sprintf ("e31.%s", token + strlen (token) + 1);
        zstr_free (&token);
        token = text;
        s_test_expect (jwt, &token, now, "token malformed", &claims, verbose);
        //  A length that is no base64 at all (5 chars)
        token = s_test_unsigned ("{}", "{}", "AAAA");
        *strchr (token, '.') = 0;
        text = zsys_sprintf ("e30AA.%s", token + strlen (token) + 1);
        zstr_free (&token);
        token = text;
        s_test_expect (jwt, &token, now, "token malformed", &claims, verbose);
    }

    //  JSON damage, each correctly signed so only the JSON rule can fail
    token = s_test_craft ("not json", "{\"sub\":\"a\"}", secret, secret_len);
    s_test_expect (jwt, &token, now, "token malformed", &claims, verbose);
    token = s_test_craft ("[\"alg\",\"HS256\"]", "{\"sub\":\"a\"}", secret, secret_len);
    s_test_expect (jwt, &token, now, "token malformed", &claims, verbose);
    token = s_test_craft ("\"HS256\"", "{\"sub\":\"a\"}", secret, secret_len);
    s_test_expect (jwt, &token, now, "token malformed", &claims, verbose);
    token = s_test_craft ("{\"alg\":\"HS256\"} {}", "{\"sub\":\"a\"}", secret, secret_len);
    s_test_expect (jwt, &token, now, "token malformed", &claims, verbose);
    token = s_test_payload ("{\"sub\":\"a\"", secret, secret_len);
    s_test_expect (jwt, &token, now, "token malformed", &claims, verbose);
    token = s_test_payload ("[{\"sub\":\"a\"}]", secret, secret_len);
    s_test_expect (jwt, &token, now, "token malformed", &claims, verbose);
    token = s_test_payload ("{\"sub\":\"\xff\"}", secret, secret_len);
    s_test_expect (jwt, &token, now, "token malformed", &claims, verbose);
    //  Duplicate keys, in payload and in header
    token = s_test_payload ("{\"sub\":\"alice\",\"sub\":\"admin\"}", secret, secret_len);
    s_test_expect (jwt, &token, now, "token malformed", &claims, verbose);
    token = s_test_craft ("{\"alg\":\"HS256\",\"alg\":\"none\"}", "{\"sub\":\"a\"}",
                          secret, secret_len);
    s_test_expect (jwt, &token, now, "token malformed", &claims, verbose);

    //  sub rules
    token = s_test_payload ("{\"user\":\"a\"}", secret, secret_len);
    s_test_expect (jwt, &token, now, "sub missing", &claims, verbose);
    token = s_test_payload ("{\"sub\":42}", secret, secret_len);
    s_test_expect (jwt, &token, now, "sub invalid", &claims, verbose);
    token = s_test_payload ("{\"sub\":null}", secret, secret_len);
    s_test_expect (jwt, &token, now, "sub invalid", &claims, verbose);
    token = s_test_payload ("{\"sub\":[\"a\"]}", secret, secret_len);
    s_test_expect (jwt, &token, now, "sub invalid", &claims, verbose);
    token = s_test_payload ("{\"sub\":\"\"}", secret, secret_len);
    s_test_expect (jwt, &token, now, "sub invalid", &claims, verbose);
    token = s_test_payload ("{\"sub\":\"a b\"}", secret, secret_len);
    s_test_expect (jwt, &token, now, "sub invalid", &claims, verbose);
    token = s_test_payload ("{\"sub\":\"a*\"}", secret, secret_len);
    s_test_expect (jwt, &token, now, "sub invalid", &claims, verbose);
    token = s_test_payload ("{\"sub\":\"a:b\"}", secret, secret_len);
    s_test_expect (jwt, &token, now, "sub invalid", &claims, verbose);
    token = s_test_payload ("{\"sub\":\"a\\nb\"}", secret, secret_len);
    s_test_expect (jwt, &token, now, "sub invalid", &claims, verbose);
    //  jansson refuses "\u0000" while parsing, so this never reaches the
    //  length comparison; either way it must not verify as "alice"
    token = s_test_payload ("{\"sub\":\"alice\\u0000admin\"}", secret, secret_len);
    s_test_expect (jwt, &token, now, "token malformed", &claims, verbose);
    {
        char name [WSR_MAX_ID_LEN + 2];
        memset (name, 'u', sizeof (name) - 1);
        name [WSR_MAX_ID_LEN + 1] = 0;
        text = zsys_sprintf ("{\"sub\":\"%s\"}", name);
        token = s_test_payload (text, secret, secret_len);
        s_test_expect (jwt, &token, now, "sub invalid", &claims, verbose);
        zstr_free (&text);
        name [WSR_MAX_ID_LEN] = 0;
        text = zsys_sprintf ("{\"sub\":\"%s\"}", name);
        token = s_test_payload (text, secret, secret_len);
        s_test_expect (jwt, &token, now, NULL, &claims, verbose);
        assert (strlen (claims.sub) == WSR_MAX_ID_LEN);
        zstr_free (&text);
        //  A 128-byte channel name is fine, 129 is not
        text = zsys_sprintf ("{\"sub\":\"a\",\"channels\":[\"%s\"]}", name);
        token = s_test_payload (text, secret, secret_len);
        s_test_expect (jwt, &token, now, NULL, &claims, verbose);
        assert (strlen (claims.channels [0]) == WSR_MAX_ID_LEN);
        zstr_free (&text);
        text = zsys_sprintf ("{\"sub\":\"a\",\"channels\":[\"%su\"]}", name);
        token = s_test_payload (text, secret, secret_len);
        s_test_expect (jwt, &token, now, "channels invalid", &claims, verbose);
        zstr_free (&text);
    }
    //  Every allowed punctuation character
    token = s_test_payload ("{\"sub\":\"A-z_0.9@x=y+z|w~\"}", secret, secret_len);
    s_test_expect (jwt, &token, now, NULL, &claims, verbose);
    assert (streq (claims.sub, "A-z_0.9@x=y+z|w~"));

    //  channels rules
    token = s_test_payload ("{\"sub\":\"a\",\"channels\":[\"ok\",\"no way\"]}",
                            secret, secret_len);
    s_test_expect (jwt, &token, now, "channels invalid", &claims, verbose);
    token = s_test_payload ("{\"sub\":\"a\",\"channels\":[\"ok\",\"x>\"]}", secret, secret_len);
    s_test_expect (jwt, &token, now, "channels invalid", &claims, verbose);
    token = s_test_payload ("{\"sub\":\"a\",\"channels\":[\"ok\",\"\"]}", secret, secret_len);
    s_test_expect (jwt, &token, now, "channels invalid", &claims, verbose);
    token = s_test_payload ("{\"sub\":\"a\",\"channels\":[\"ok\",7]}", secret, secret_len);
    s_test_expect (jwt, &token, now, "channels invalid", &claims, verbose);
    token = s_test_payload ("{\"sub\":\"a\",\"channels\":[[\"ok\"]]}", secret, secret_len);
    s_test_expect (jwt, &token, now, "channels invalid", &claims, verbose);
    token = s_test_payload ("{\"sub\":\"a\",\"channels\":{\"ok\":1}}", secret, secret_len);
    s_test_expect (jwt, &token, now, "channels invalid", &claims, verbose);
    token = s_test_payload ("{\"sub\":\"a\",\"channels\":null}", secret, secret_len);
    s_test_expect (jwt, &token, now, "channels invalid", &claims, verbose);
    token = s_test_payload ("{\"sub\":\"a\",\"channels\":\"ok,*\"}", secret, secret_len);
    s_test_expect (jwt, &token, now, "channels invalid", &claims, verbose);
    token = s_test_payload ("{\"sub\":\"a\",\"channels\":\"ok,\"}", secret, secret_len);
    s_test_expect (jwt, &token, now, "channels invalid", &claims, verbose);
    token = s_test_payload ("{\"sub\":\"a\",\"channels\":\"ok, b\"}", secret, secret_len);
    s_test_expect (jwt, &token, now, "channels invalid", &claims, verbose);
    {
        //  32 channels pass, 33 fail, as array and as string
        char *array_text = strdup ("");
        char *csv_text = strdup ("");
        assert (array_text && csv_text);
        for (int index = 0; index < WSR_MAX_CHANNELS + 1; index++) {
            char *next_array = zsys_sprintf ("%s%s\"ch%d\"", array_text,
                                             index? ",": "", index);
            char *next_csv = zsys_sprintf ("%s%sch%d", csv_text, index? ",": "", index);
            assert (next_array && next_csv);
            zstr_free (&array_text);
            zstr_free (&csv_text);
            array_text = next_array;
            csv_text = next_csv;
            if (index == WSR_MAX_CHANNELS - 1) {
                text = zsys_sprintf ("{\"sub\":\"a\",\"channels\":[%s]}", array_text);
                token = s_test_payload (text, secret, secret_len);
                s_test_expect (jwt, &token, now, NULL, &claims, verbose);
                assert (claims.channels_count == WSR_MAX_CHANNELS);
                assert (streq (claims.channels [WSR_MAX_CHANNELS - 1], "ch31"));
                zstr_free (&text);
                text = zsys_sprintf ("{\"sub\":\"a\",\"channels\":\"%s\"}", csv_text);
                token = s_test_payload (text, secret, secret_len);
                s_test_expect (jwt, &token, now, NULL, &claims, verbose);
                assert (claims.channels_count == WSR_MAX_CHANNELS);
                zstr_free (&text);
                token = wsr_jwt_mint_hs256 (secret, secret_len, "a", now, 0, csv_text);
                assert (token);
                s_test_expect (jwt, &token, now, NULL, &claims, verbose);
                assert (claims.channels_count == WSR_MAX_CHANNELS);
            }
        }
        text = zsys_sprintf ("{\"sub\":\"a\",\"channels\":[%s]}", array_text);
        token = s_test_payload (text, secret, secret_len);
        s_test_expect (jwt, &token, now, "channels invalid", &claims, verbose);
        zstr_free (&text);
        text = zsys_sprintf ("{\"sub\":\"a\",\"channels\":\"%s\"}", csv_text);
        token = s_test_payload (text, secret, secret_len);
        s_test_expect (jwt, &token, now, "channels invalid", &claims, verbose);
        zstr_free (&text);
        assert (wsr_jwt_mint_hs256 (secret, secret_len, "a", now, 0, csv_text) == NULL);
        zstr_free (&array_text);
        zstr_free (&csv_text);
    }

    //  A failed verify leaves no claims from an earlier success behind
    token = s_test_payload ("{\"sub\":\"alice\",\"channels\":[\"c\"]}", secret, secret_len);
    s_test_expect (jwt, &token, now, NULL, &claims, verbose);
    token = s_test_payload ("{\"sub\":\"alice\",\"channels\":[\"c d\"]}", secret, secret_len);
    s_test_expect (jwt, &token, now, "channels invalid", &claims, verbose);
    assert (claims.sub [0] == 0 && claims.channels_count == 0 && claims.exp == 0);

    wsr_jwt_destroy (&jwt);
    assert (jwt == NULL);
    wsr_jwt_destroy (&jwt);
}
