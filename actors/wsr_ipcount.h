//  wsr_ipcount — connections per client address, shared by the listener and the workers

#ifndef WSR_IPCOUNT_H_INCLUDED
#define WSR_IPCOUNT_H_INCLUDED

#include <sys/socket.h>

#ifdef __cplusplus
extern "C" {
#endif

typedef struct _wsr_ipcount_t wsr_ipcount_t;

//  Create the table with a cap per address (0 = no cap). Caller owns it; it
//  must outlive every actor given it.
wsr_ipcount_t *
    wsr_ipcount_new (uint32_t max_per_ip);

//  Destroy the table.
void
    wsr_ipcount_destroy (wsr_ipcount_t **self_p);

//  Count one more connection from addr. Returns its slot (give it back with
//  wsr_ipcount_release), or -1 if addr is at the cap. Thread-safe.
int
    wsr_ipcount_acquire (wsr_ipcount_t *self, const struct sockaddr *addr);

//  One connection from that slot is gone. Thread-safe.
void
    wsr_ipcount_release (wsr_ipcount_t *self, int slot);

//  Self test
void
    wsr_ipcount_test (bool verbose);

#ifdef __cplusplus
}
#endif
#endif
