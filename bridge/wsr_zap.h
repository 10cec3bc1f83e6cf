//  wsr_zap — the bridge's ZAP handler: which node certificates may connect

#ifndef WSR_ZAP_H_INCLUDED
#define WSR_ZAP_H_INCLUDED

#ifdef __cplusplus
extern "C" {
#endif

typedef struct _wsr_zap_t wsr_zap_t;

//  Start answering ZAP requests for this process (binds
//  inproc://zeromq.zap.01: one handler per process) with the public
//  certificates found in clients_dir. Returns NULL (logged) if the directory
//  cannot be read or another handler is bound. metrics may be NULL.
wsr_zap_t *
    wsr_zap_new (const char *clients_dir, wsr_metrics_t *metrics);

//  Stop answering; safe on NULL.
void
    wsr_zap_destroy (wsr_zap_t **self_p);

//  The socket to poll; call wsr_zap_handle when it is readable. Borrowed.
zsock_t *
    wsr_zap_socket (wsr_zap_t *self);

//  Answer one waiting request (allow a CURVE client whose key is in the
//  directory, deny anything else, count and log denials once per address).
void
    wsr_zap_handle (wsr_zap_t *self);

//  Count a denial found elsewhere (a failed CURVE handshake reported by a
//  socket monitor) and log it once per host of address ("tcp://H:P" or "H").
void
    wsr_zap_deny (wsr_zap_t *self, const char *address, const char *why);

//  Read the directory again (SIGHUP). Returns the number of keys, or -1 if
//  it cannot be read (the previous keys stay).
int
    wsr_zap_reload (wsr_zap_t *self);

//  Keys allowed now; denials since the start.
size_t
    wsr_zap_keys (wsr_zap_t *self);
uint64_t
    wsr_zap_denied (wsr_zap_t *self);

//  Self test
void
    wsr_zap_test (bool verbose);

#ifdef __cplusplus
}
#endif
#endif
