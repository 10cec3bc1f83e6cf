//  wsr_router — the node's router actor: backplane ⇄ session workers

#ifndef WSR_ROUTER_H_INCLUDED
#define WSR_ROUTER_H_INCLUDED

#ifdef __cplusplus
extern "C" {
#endif

typedef struct _wsr_router_t wsr_router_t;

//  Start the router of node `name` (the inproc endpoint suffix and the node
//  id in reply topics). upstream is an endpoint the router binds a PUB socket
//  on for client messages (e.g. tcp://127.0.0.1:5560), or NULL for inproc
//  only. bridge is the bridge's endpoint (tcp://H:P or inproc://X, see
//  wsr_bridge_endpoints) or NULL for the embedded backplane; workers is the
//  number of session workers replies are routed to. Returns NULL if a socket
//  cannot be bound.
wsr_router_t *
    wsr_router_new (const char *name, const char *upstream, const char *bridge, int workers,
                    wsr_metrics_t *metrics);

//  Stop the router and free it.
void
    wsr_router_destroy (wsr_router_t **self_p);

//  Number of distinct topics the node's sessions are subscribed to.
int64_t
    wsr_router_topics (wsr_router_t *self);

//  The actor's pipe (for polling in tests).
zactor_t *
    wsr_router_actor (wsr_router_t *self);

//  Self test
void
    wsr_router_test (bool verbose);

#ifdef __cplusplus
}
#endif
#endif
