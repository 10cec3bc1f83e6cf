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
