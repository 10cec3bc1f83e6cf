//  wsr_jwt — JWT verification and minting (HS256 and EdDSA/Ed25519)

#ifndef WSR_JWT_H_INCLUDED
#define WSR_JWT_H_INCLUDED

#ifdef __cplusplus
extern "C" {
#endif

typedef struct _wsr_jwt_t wsr_jwt_t;

//  Claims extracted from a verified token (plain value type, caller-owned storage).
typedef struct {
    char sub [WSR_MAX_ID_LEN + 1];                          //  user id, validated
    size_t channels_count;                                  //  entries in channels
    char channels [WSR_MAX_CHANNELS][WSR_MAX_ID_LEN + 1];   //  validated channel names
    int64_t exp;                                            //  0 if absent
} wsr_claims_t;

//  Create an HS256 verifier; the secret (any length >= 1) is copied and wiped
//  on destroy. Returns NULL if secret_len is 0. Caller owns the verifier.
wsr_jwt_t *
    wsr_jwt_new_hs256 (const uint8_t *secret, size_t secret_len);

//  Create an EdDSA (Ed25519) verifier for a 32-byte public key, which is copied.
//  Caller owns the verifier.
wsr_jwt_t *
    wsr_jwt_new_eddsa (const uint8_t public_key [32]);

//  Destroy the verifier and wipe its key; safe on NULL and on a destroyed reference.
void
    wsr_jwt_destroy (wsr_jwt_t **self_p);

//  Set the clock skew allowed on exp, nbf and iat (seconds, >= 0); default
//  WSR_JWT_LEEWAY_S.
void
    wsr_jwt_set_leeway (wsr_jwt_t *self, int seconds);

//  The clock skew set (seconds).
int
    wsr_jwt_leeway (wsr_jwt_t *self);

//  Require an exp claim ("exp missing" otherwise); default false.
void
    wsr_jwt_set_require_exp (wsr_jwt_t *self, bool require);

//  Verify token at time now (seconds since epoch). Returns 0 and fills claims, or -1 and sets
//  *reason to a short static string suitable for a WebSocket close reason (< 100 bytes), e.g.
//  "token missing", "token malformed", "alg not allowed", "bad signature", "token expired",
//  "token not yet valid", "iat in future", "exp missing", "sub missing", "sub invalid",
//  "channels invalid". On failure claims is zeroed. Nothing is retained.
int
    wsr_jwt_verify (wsr_jwt_t *self, const char *token, size_t token_len, int64_t now,
                    wsr_claims_t *claims, const char **reason);

//  Mint an HS256 token: {"alg":"HS256","typ":"JWT"} . {"sub":sub,"iat":iat,"exp":exp (omitted
//  if exp==0),"channels":[...] (omitted if channels_csv NULL/empty; comma-separated input,
//  duplicates removed)}. Caller owns result (free()). NULL on invalid sub/channel or secret.
char *
    wsr_jwt_mint_hs256 (const uint8_t *secret, size_t secret_len, const char *sub,
                        int64_t iat, int64_t exp, const char *channels_csv);

//  Same with EdDSA: header {"alg":"EdDSA","typ":"JWT"}, secret_key is libsodium's 64-byte
//  Ed25519 secret key. Caller owns result (free()). NULL on invalid sub/channel.
char *
    wsr_jwt_mint_eddsa (const uint8_t secret_key [64], const char *sub,
                        int64_t iat, int64_t exp, const char *channels_csv);

//  Self test
void
    wsr_jwt_test (bool verbose);

#ifdef __cplusplus
}
#endif
#endif
