//  wsr_bench_ident — who each bench session is: its user and its token

#ifndef WSR_BENCH_IDENT_H_INCLUDED
#define WSR_BENCH_IDENT_H_INCLUDED

#ifdef __cplusplus
extern "C" {
#endif

typedef struct _wsr_bench_ident_t wsr_bench_ident_t;

//  Build the user table from opts: minted users (--jwt-secret) or the
//  tokens file (--tokens), read here. Returns NULL, with a message on stderr,
//  if a user id is invalid or the file cannot be read or holds no token.
//  opts must outlive the result.
wsr_bench_ident_t *
    wsr_bench_ident_new (const wsr_bench_opts_t *opts);

//  Destroy it; safe on NULL.
void
    wsr_bench_ident_destroy (wsr_bench_ident_t **self_p);

//  Number of distinct users (the publisher's targets in user mode).
uint32_t
    wsr_bench_ident_user_count (wsr_bench_ident_t *self);

//  User id of user index (owned by ident).
const char *
    wsr_bench_ident_user (wsr_bench_ident_t *self, uint32_t index);

//  User index of session g (global numbering: normal sessions 0..N-1, then
//  slow ones N..N+S-1; slow session j shares the identity of session j).
uint32_t
    wsr_bench_ident_session_user (wsr_bench_ident_t *self, uint32_t g);

//  Token of session g: minted now (HS256, exp = now + --token-ttl, with the
//  --channel claim) or the tokens file's line. Caller frees; NULL if it
//  cannot be made.
char *
    wsr_bench_ident_token (wsr_bench_ident_t *self, uint32_t g);

//  Self test
void
    wsr_bench_ident_test (bool verbose);

#ifdef __cplusplus
}
#endif
#endif
