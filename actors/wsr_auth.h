//  wsr_auth — the auth actor: verifies tokens, hands sessions to workers

#ifndef WSR_AUTH_H_INCLUDED
#define WSR_AUTH_H_INCLUDED

#ifdef __cplusplus
extern "C" {
#endif

typedef struct _wsr_auth_t wsr_auth_t;

//  Start the auth actor of node `name`, handing connections to `workers`
//  session workers (inproc://wsr-adopt-NAME-0 ... N-1, which must exist). It
//  takes the verifier (the caller's pointer is nulled, always). Binds
//  inproc://wsr-auth-NAME. A connection it must drop gives its per-IP slot
//  back to ipcount. Returns NULL on failure.
wsr_auth_t *
    wsr_auth_new (const char *name, int workers, wsr_jwt_t **verifier_p,
                  wsr_metrics_t *metrics, wsr_ipcount_t *ipcount);

//  Judge the token of a complete upgrade request (HS256 or EdDSA, the
//  verifier's; at time(NULL)) and send ADOPT to the session worker `out`:
//  code 0 with the user and channels, or 1008 and the reason (counted in the
//  handshake-failure metrics). flags, accept, peer, early and tls are those of
//  AUTH. Used by the auth actor, and by the listener itself when it verifies
//  HS256 tokens (no thread hop). Returns 0 if sent (the worker owns fd and
//  tls now), -1 if the worker's queue refused it (the caller still owns them).
int
    wsr_auth_judge (wsr_jwt_t *verifier, wsr_metrics_t *metrics, zsock_t *out, uint64_t id,
                    int fd, int ip_slot, int flags, const char *accept, const char *peer,
                    const char *token, size_t token_len, zframe_t *early, void *tls);

//  Stop the actor and free it.
void
    wsr_auth_destroy (wsr_auth_t **self_p);

//  Self test
void
    wsr_auth_test (bool verbose);

#ifdef __cplusplus
}
#endif
#endif
