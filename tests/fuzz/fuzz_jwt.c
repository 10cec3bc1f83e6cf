//  fuzz_jwt — libFuzzer harness for wsr_jwt, token verification and minting
//
//  A token comes from the client (query string or Authorization header) and
//  is the only thing standing between a socket and a user's messages, so the
//  verifier must survive any bytes and never accept an id that could address
//  another topic. The harness checks:
//
//  - verify: the input as a token, against a fixed HS256 and a fixed EdDSA
//    verifier; on success the claims must be valid ids, on failure they are
//    zeroed and the reason is a short static string;
//  - mint and verify: a prefix of the input as sub (its length taken from
//    byte 0, so too-long ids are tried too), and, when the next byte is ',',
//    the bytes after it as the channels CSV. A minted token must verify with
//    its own algorithm, be refused by the other, and give back the same sub.
//
//  Time is fixed (S_NOW), so the seed token in corpus/jwt, minted with the
//  same secret and an exp one hour after S_NOW, verifies on every run.

#include "wsr_classes.h"

//  The HS256 secret; tests/fuzz/make_corpus.py mints its seed with the same
#define S_SECRET        "wsr-fuzz-secret"
//  Seed of the fixed Ed25519 key pair (32 bytes)
#define S_EDDSA_SEED    "wsr-fuzz-eddsa-seed-0123456789ab"
//  "Now" for every verification: 2023-11-14T22:13:20Z
#define S_NOW           1700000000
//  Minted tokens are valid for an hour
#define S_TTL           3600
//  Longest channels CSV taken from the input
#define S_MAX_CSV       2048

static wsr_jwt_t *s_hs256 = NULL;       //  verifier for S_SECRET
static wsr_jwt_t *s_eddsa = NULL;       //  verifier for the fixed public key
static uint8_t s_secret_key [crypto_sign_SECRETKEYBYTES];   //  for minting EdDSA

//  --------------------------------------------------------------------------
//  Called once by libFuzzer before the first input.

int
LLVMFuzzerInitialize (int *argc, char ***argv)
{
    (void) argc;
    (void) argv;
    int rc = sodium_init ();
    assert (rc >= 0);
    s_hs256 = wsr_jwt_new_hs256 ((const uint8_t *) S_SECRET, strlen (S_SECRET));
    assert (s_hs256);
    uint8_t public_key [crypto_sign_PUBLICKEYBYTES];
    assert (strlen (S_EDDSA_SEED) == crypto_sign_SEEDBYTES);
    rc = crypto_sign_seed_keypair (public_key, s_secret_key, (const uint8_t *) S_EDDSA_SEED);
    assert (rc == 0);
    s_eddsa = wsr_jwt_new_eddsa (public_key);
    assert (s_eddsa);
    return 0;
}

//  True if the claims hold only valid ids, as the session layer assumes when
//  it builds topic names from them.
static bool
s_claims_valid (const wsr_claims_t *claims)
{
    if (!wsr_util_id_valid (claims->sub, strlen (claims->sub)))
        return false;
    if (claims->channels_count > WSR_MAX_CHANNELS)
        return false;
    for (size_t index = 0; index < claims->channels_count; index++)
        if (!wsr_util_id_valid (claims->channels [index], strlen (claims->channels [index])))
            return false;
    return true;
}

//  --------------------------------------------------------------------------
//  Verify a token; returns its result after checking the contract of either.

static int
s_verify (wsr_jwt_t *verifier, const char *token, size_t len, wsr_claims_t *claims)
{
    const char *reason = "unset";
    //  Garbage in the claims must not survive a failure
    memset (claims, 0x5a, sizeof (wsr_claims_t));
    int rc = wsr_jwt_verify (verifier, token, len, S_NOW, claims, &reason);
    if (rc == 0)
        assert (s_claims_valid (claims));
    else {
        assert (rc == -1);
        assert (reason && strlen (reason) < 100);
        assert (claims->sub [0] == 0 && claims->channels_count == 0 && claims->exp == 0);
    }
    return rc;
}

//  --------------------------------------------------------------------------
//  A token minted for sub and channels: verified by its own verifier with the
//  same sub and channels, refused by the other one.

static void
s_round_trip (const char *token, wsr_jwt_t *own, wsr_jwt_t *other, const char *sub,
              const char *csv)
{
    wsr_claims_t claims;
    int rc = s_verify (own, token, strlen (token), &claims);
    if (rc != 0) {
        fprintf (stderr, "fuzz_jwt: minted token for sub '%s' does not verify\n", sub);
        abort ();
    }
    assert (streq (claims.sub, sub));
    assert (claims.exp == S_NOW + S_TTL);
    //  Every channel returned was in the CSV
    for (size_t index = 0; index < claims.channels_count; index++)
        assert (csv && strstr (csv, claims.channels [index]));
    if (!csv || !*csv)
        assert (claims.channels_count == 0);
    assert (s_verify (other, token, strlen (token), &claims) == -1);
}

//  --------------------------------------------------------------------------
//  One input.

int
LLVMFuzzerTestOneInput (const uint8_t *data, size_t size)
{
    wsr_claims_t claims;
    s_verify (s_hs256, (const char *) data, size, &claims);
    s_verify (s_eddsa, (const char *) data, size, &claims);
    if (size < 1)
        return 0;

    //  sub: 1..WSR_MAX_ID_LEN + 2 bytes (NUL-terminated, so a NUL cuts it)
    size_t sub_len = data [0] % (WSR_MAX_ID_LEN + 2) + 1;
    if (sub_len > size)
        sub_len = size;
    char sub [WSR_MAX_ID_LEN + 3];
    memcpy (sub, data, sub_len);
    sub [sub_len] = 0;

    char *csv = NULL;
    if (size > sub_len && data [sub_len] == ',') {
        size_t csv_len = size - sub_len - 1;
        if (csv_len > S_MAX_CSV)
            csv_len = S_MAX_CSV;
        csv = (char *) malloc (csv_len + 1);
        assert (csv);
        memcpy (csv, data + sub_len + 1, csv_len);
        csv [csv_len] = 0;
    }
    bool sub_valid = wsr_util_id_valid (sub, strlen (sub));

    char *token = wsr_jwt_mint_hs256 ((const uint8_t *) S_SECRET, strlen (S_SECRET),
                                      sub, S_NOW, S_NOW + S_TTL, csv);
    if (token) {
        assert (sub_valid);
        s_round_trip (token, s_hs256, s_eddsa, sub, csv);
        free (token);
    }
    else
        //  Without channels only an invalid sub can make minting fail
        assert (!sub_valid || csv);

    token = wsr_jwt_mint_eddsa (s_secret_key, sub, S_NOW, S_NOW + S_TTL, csv);
    if (token) {
        assert (sub_valid);
        s_round_trip (token, s_eddsa, s_hs256, sub, csv);
        free (token);
    }
    else
        assert (!sub_valid || csv);
    free (csv);
    return 0;
}
