//  wsr_ipcount — connections per client address, shared by the listener and the workers
//
//  A fixed array of atomic counters indexed by a keyed hash of the address
//  (SipHash via crypto_shorthash, random key per process, so a client cannot
//  pick addresses that collide with a victim's). IPv6 clients are counted by
//  their /64, which is what one subscriber usually holds; an IPv4-mapped
//  address (::ffff:a.b.c.d, what a dual-stack socket bound to :: reports for
//  an IPv4 client) is counted as its IPv4 address. The listener
//  acquires when it accepts; whoever closes the connection releases. A
//  collision can only make the cap stricter for the two addresses sharing a
//  slot, never looser; with 65,536 slots that is rare and documented.

#include "wsr_classes.h"
#include <netinet/in.h>

#define S_SLOTS     65536

struct _wsr_ipcount_t {
    uint32_t max_per_ip;                        //  cap, 0 = none
    uint8_t key [crypto_shorthash_KEYBYTES];    //  hash key
    _Atomic uint32_t count [S_SLOTS];           //  connections per slot
};

//  --------------------------------------------------------------------------
//  Create the table.
wsr_ipcount_t *
wsr_ipcount_new (uint32_t max_per_ip)
{
    wsr_ipcount_t *self = (wsr_ipcount_t *) zmalloc (sizeof (wsr_ipcount_t));
    self->max_per_ip = max_per_ip;
    crypto_shorthash_keygen (self->key);
    return self;
}

//  --------------------------------------------------------------------------
//  Destroy the table.
void
wsr_ipcount_destroy (wsr_ipcount_t **self_p)
{
    assert (self_p);
    if (*self_p) {
        free (*self_p);
        *self_p = NULL;
    }
}

static int
s_slot (wsr_ipcount_t *self, const struct sockaddr *addr)
{
    const uint8_t *bytes = NULL;
    size_t len = 0;
    if (addr->sa_family == AF_INET) {
        bytes = (const uint8_t *) &((const struct sockaddr_in *) addr)->sin_addr;
        len = 4;
    }
    else
    if (addr->sa_family == AF_INET6) {
        const struct in6_addr *in6 = &((const struct sockaddr_in6 *) addr)->sin6_addr;
        if (IN6_IS_ADDR_V4MAPPED (in6)) {
            //  ::ffff:a.b.c.d on a dual-stack socket is the IPv4 client
            bytes = in6->s6_addr + 12;
            len = 4;
        }
        else {
            bytes = in6->s6_addr;
            len = 8;                //  the /64
        }
    }
    else
        return -1;
    uint8_t hash [crypto_shorthash_BYTES];
    crypto_shorthash (hash, bytes, len, self->key);
    return (int) ((hash [0] | hash [1] << 8) % S_SLOTS);
}

//  --------------------------------------------------------------------------
//  Count one more connection.
int
wsr_ipcount_acquire (wsr_ipcount_t *self, const struct sockaddr *addr)
{
    assert (self && addr);
    int slot = s_slot (self, addr);
    if (slot < 0)
        return -1;
    uint32_t now = atomic_fetch_add_explicit (&self->count [slot], 1, memory_order_relaxed);
    if (self->max_per_ip && now >= self->max_per_ip) {
        atomic_fetch_sub_explicit (&self->count [slot], 1, memory_order_relaxed);
        return -1;
    }
    return slot;
}

//  --------------------------------------------------------------------------
//  One fewer.
void
wsr_ipcount_release (wsr_ipcount_t *self, int slot)
{
    assert (self);
    assert (slot >= 0 && slot < S_SLOTS);
    uint32_t before = atomic_fetch_sub_explicit (&self->count [slot], 1, memory_order_relaxed);
    assert (before > 0);
}

//  --------------------------------------------------------------------------
//  Selftest
void
wsr_ipcount_test (bool verbose)
{
    (void) verbose;
    wsr_ipcount_t *ipcount = wsr_ipcount_new (2);
    struct sockaddr_in a = { .sin_family = AF_INET };
    a.sin_addr.s_addr = htonl (0x7f000002);
    struct sockaddr_in b = a;
    b.sin_addr.s_addr = htonl (0x7f000003);
    int s1 = wsr_ipcount_acquire (ipcount, (struct sockaddr *) &a);
    int s2 = wsr_ipcount_acquire (ipcount, (struct sockaddr *) &a);
    assert (s1 >= 0 && s1 == s2);
    //  Third from the same address: refused; another address still fine
    assert (wsr_ipcount_acquire (ipcount, (struct sockaddr *) &a) == -1);
    int s3 = wsr_ipcount_acquire (ipcount, (struct sockaddr *) &b);
    assert (s3 >= 0);
    wsr_ipcount_release (ipcount, s1);
    assert (wsr_ipcount_acquire (ipcount, (struct sockaddr *) &a) == s1);
    //  IPv6: the same /64 shares a slot
    struct sockaddr_in6 v6 = { .sin6_family = AF_INET6 };
    v6.sin6_addr.s6_addr [0] = 0x20;
    struct sockaddr_in6 v6b = v6;
    v6b.sin6_addr.s6_addr [15] = 0x99;
    assert (wsr_ipcount_acquire (ipcount, (struct sockaddr *) &v6)
         == wsr_ipcount_acquire (ipcount, (struct sockaddr *) &v6b));
    assert (wsr_ipcount_acquire (ipcount, (struct sockaddr *) &v6) == -1);
    //  IPv4-mapped: ::ffff:127.0.0.2 is 127.0.0.2 (at its cap already), and
    //  two mapped addresses do not share one slot because of their prefix
    struct sockaddr_in6 mapped = { .sin6_family = AF_INET6 };
    mapped.sin6_addr.s6_addr [10] = 0xff;
    mapped.sin6_addr.s6_addr [11] = 0xff;
    memcpy (mapped.sin6_addr.s6_addr + 12, &a.sin_addr, 4);
    assert (wsr_ipcount_acquire (ipcount, (struct sockaddr *) &mapped) == -1);
    wsr_ipcount_release (ipcount, s1);
    assert (wsr_ipcount_acquire (ipcount, (struct sockaddr *) &mapped) == s1);
    int taken = 0;
    for (uint32_t host = 1; host <= 40; host++) {
        struct sockaddr_in6 other = mapped;
        uint32_t v4 = htonl (0x0a000000 + host);
        memcpy (other.sin6_addr.s6_addr + 12, &v4, 4);
        if (wsr_ipcount_acquire (ipcount, (struct sockaddr *) &other) >= 0)
            taken++;
    }
    assert (taken == 40);       //  40 addresses, 2 each: one shared /64 would stop at 2
    wsr_ipcount_destroy (&ipcount);
    //  No cap
    ipcount = wsr_ipcount_new (0);
    for (int i = 0; i < 1000; i++)
        assert (wsr_ipcount_acquire (ipcount, (struct sockaddr *) &a) >= 0);
    wsr_ipcount_destroy (&ipcount);
}
