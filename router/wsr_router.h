//  wsr_router — the node's router actor: what is node-wide (API publishes, backplane health)

#ifndef WSR_ROUTER_H_INCLUDED
#define WSR_ROUTER_H_INCLUDED

#ifdef __cplusplus
extern "C" {
#endif

typedef struct _wsr_router_t wsr_router_t;

//  Start the router of node `name` (the inproc endpoint suffix, the node id
//  in HELLO). It binds inproc://wsr-pub-NAME for API publishes and links to
//  the bridge at bridge (inproc:// or tcp://; curve_secret and curve_server
//  are certificate files for a CURVE link, or NULL). Returns NULL if the
//  socket cannot be bound or the link refused.
wsr_router_t *
    wsr_router_new (const char *name, const char *bridge, const char *curve_secret,
                    const char *curve_server, wsr_metrics_t *metrics);

//  Stop the router and free it.
void
    wsr_router_destroy (wsr_router_t **self_p);

//  Self test
void
    wsr_router_test (bool verbose);

#ifdef __cplusplus
}
#endif
#endif
