//  wsr_nats — a NATS backplane link on libnats, forwarding messages into a ZeroMQ socket
//
//  libnats owns its threads: it connects, reconnects (every 100 ms, forever,
//  with PINGs every second to notice a dead server within ~3 s) and
//  re-subscribes by itself. We use global message delivery, so messages for
//  all subscriptions arrive on libnats' small delivery pool, never a thread per
//  subscription. A callback touches no bridge state: under a mutex it sends
//  [subject][data] into one PUSH socket, which the bridge actor reads like any
//  other socket (the mutex is the full memory barrier ZeroMQ asks for when a
//  socket is used by more than one thread).

#include "wsr_classes.h"
#include <nats/nats.h>

struct _wsr_nats_t {
    natsConnection *conn;           //  the connection (owned)
    natsOptions *opts;              //  its options (owned)
    zhashx_t *subs;                 //  subject → natsSubscription (owned)
    zsock_t *forward;               //  PUSH to the owner, used under lock
    pthread_mutex_t lock;           //  guards forward and closed
    bool closed;                    //  no more forwarding
    char *url;                      //  for logs
    pthread_cond_t closed_cond;     //  signalled by libnats' closed callback
    bool closed_done;               //  libnats will call nothing more (under lock)
    _Atomic uint64_t dropped;       //  forward queue full (libnats threads add)
    _Atomic uint64_t slow;          //  slow-consumer errors reported by libnats
};

static void
s_on_message (natsConnection *nc, natsSubscription *sub, natsMsg *msg, void *closure)
{
    (void) nc;
    (void) sub;
    wsr_nats_t *self = (wsr_nats_t *) closure;
    const char *subject = natsMsg_GetSubject (msg);
    pthread_mutex_lock (&self->lock);
    if (!self->closed) {
        zmsg_t *out = zmsg_new ();
        zmsg_addmem (out, subject, strlen (subject));
        zmsg_addmem (out, natsMsg_GetData (msg), (size_t) natsMsg_GetDataLength (msg));
        if (zmsg_send (&out, self->forward)) {
            zmsg_destroy (&out);    //  owner saturated: at-most-once, dropped, counted
            atomic_fetch_add (&self->dropped, 1);
        }
    }
    pthread_mutex_unlock (&self->lock);
    natsMsg_Destroy (msg);
}

//  libnats reports its own drops (pending limits) as slow-consumer errors
static void
s_on_error (natsConnection *nc, natsSubscription *sub, natsStatus err, void *closure)
{
    (void) nc;
    (void) sub;
    if (err == NATS_SLOW_CONSUMER)
        atomic_fetch_add (&((wsr_nats_t *) closure)->slow, 1);
}

//  The last callback libnats makes for a connection: destroy waits for it
static void
s_on_closed (natsConnection *nc, void *closure)
{
    (void) nc;
    wsr_nats_t *self = (wsr_nats_t *) closure;
    pthread_mutex_lock (&self->lock);
    self->closed_done = true;
    pthread_cond_signal (&self->closed_cond);
    pthread_mutex_unlock (&self->lock);
}

static void
s_on_disconnected (natsConnection *nc, void *closure)
{
    (void) nc;
    zsys_warning ("nats: connection to %s lost", ((wsr_nats_t *) closure)->url);
}

static void
s_on_connected (natsConnection *nc, void *closure)
{
    (void) nc;
    zsys_info ("nats: connected to %s", ((wsr_nats_t *) closure)->url);
}

static void
s_free_sub (void **item_p)
{
    natsSubscription *sub = (natsSubscription *) *item_p;
    natsSubscription_Unsubscribe (sub);
    natsSubscription_Destroy (sub);
    *item_p = NULL;
}

//  --------------------------------------------------------------------------
//  Create a link.
wsr_nats_t *
wsr_nats_new (const char *url, const char *forward)
{
    assert (url && forward);
    if (strncmp (url, "nats://", 7) && strncmp (url, "tls://", 6))
        return NULL;
    wsr_nats_t *self = (wsr_nats_t *) zmalloc (sizeof (wsr_nats_t));
    pthread_mutex_init (&self->lock, NULL);
    pthread_cond_init (&self->closed_cond, NULL);
    self->url = strdup (url);
    self->subs = zhashx_new ();
    zhashx_set_destructor (self->subs, s_free_sub);
    self->forward = zsock_new (ZMQ_PUSH);
    assert (self->forward);
    zsock_set_sndhwm (self->forward, WSR_HWM);
    zsock_set_sndtimeo (self->forward, 0);
    zsock_set_linger (self->forward, 0);
    natsStatus rc = zsock_connect (self->forward, "%s", forward) == 0? NATS_OK: NATS_ERR;
    if (rc == NATS_OK)
        rc = natsOptions_Create (&self->opts);
    if (rc == NATS_OK)
        rc = natsOptions_SetServers (self->opts, (const char *[]) { url }, 1);
    if (rc == NATS_OK)
        rc = natsOptions_SetMaxReconnect (self->opts, -1);
    if (rc == NATS_OK)
        rc = natsOptions_SetReconnectWait (self->opts, 100);
    if (rc == NATS_OK)
        rc = natsOptions_SetTimeout (self->opts, 2000);
    if (rc == NATS_OK)
        rc = natsOptions_SetPingInterval (self->opts, 1000);
    if (rc == NATS_OK)
        rc = natsOptions_SetMaxPingsOut (self->opts, 2);
    if (rc == NATS_OK)
        rc = natsOptions_UseGlobalMessageDelivery (self->opts, true);
    if (rc == NATS_OK)
        rc = natsOptions_SetDisconnectedCB (self->opts, s_on_disconnected, self);
    if (rc == NATS_OK)
        rc = natsOptions_SetReconnectedCB (self->opts, s_on_connected, self);
    if (rc == NATS_OK)
        rc = natsOptions_SetErrorHandler (self->opts, s_on_error, self);
    if (rc == NATS_OK)
        rc = natsOptions_SetClosedCB (self->opts, s_on_closed, self);
    if (rc == NATS_OK)
        rc = natsOptions_SetRetryOnFailedConnect (self->opts, true, s_on_connected, self);
    if (rc == NATS_OK) {
        rc = natsConnection_Connect (&self->conn, self->opts);
        if (rc == NATS_NOT_YET_CONNECTED)
            rc = NATS_OK;           //  it keeps trying in the background
    }
    if (rc != NATS_OK) {
        zsys_error ("nats: cannot use %s: %s", url, natsStatus_GetText (rc));
        wsr_nats_destroy (&self);
    }
    return self;
}

//  --------------------------------------------------------------------------
//  Close and free.
void
wsr_nats_destroy (wsr_nats_t **self_p)
{
    assert (self_p);
    if (*self_p) {
        wsr_nats_t *self = *self_p;
        pthread_mutex_lock (&self->lock);
        self->closed = true;
        pthread_mutex_unlock (&self->lock);
        zhashx_destroy (&self->subs);
        if (self->conn) {
            //  libnats may still call back on its threads until the closed
            //  callback has run: only then can self go
            natsConnection_Close (self->conn);
            struct timespec until;
            clock_gettime (CLOCK_REALTIME, &until);
            until.tv_sec += 5;
            pthread_mutex_lock (&self->lock);
            while (!self->closed_done
               &&  pthread_cond_timedwait (&self->closed_cond, &self->lock, &until) == 0)
                ;
            pthread_mutex_unlock (&self->lock);
            natsConnection_Destroy (self->conn);
        }
        natsOptions_Destroy (self->opts);
        pthread_mutex_lock (&self->lock);
        zsock_destroy (&self->forward);
        pthread_mutex_unlock (&self->lock);
        pthread_mutex_destroy (&self->lock);
        pthread_cond_destroy (&self->closed_cond);
        free (self->url);
        free (self);
        *self_p = NULL;
    }
}

//  --------------------------------------------------------------------------
//  Subscribe.
int
wsr_nats_subscribe (wsr_nats_t *self, const char *subject)
{
    assert (self && subject);
    if (zhashx_lookup (self->subs, subject))
        return 0;
    natsSubscription *sub = NULL;
    natsStatus rc = natsConnection_Subscribe (&sub, self->conn, subject, s_on_message, self);
    if (rc != NATS_OK) {
        zsys_warning ("nats: subscribe %s: %s", subject, natsStatus_GetText (rc));
        return -1;
    }
    //  Generous pending limits: the forward socket's HWM is the real bound
    natsSubscription_SetPendingLimits (sub, WSR_HWM, 256 * 1024 * 1024);
    zhashx_insert (self->subs, subject, sub);
    return 0;
}

//  --------------------------------------------------------------------------
//  Unsubscribe.
void
wsr_nats_unsubscribe (wsr_nats_t *self, const char *subject)
{
    assert (self && subject);
    zhashx_delete (self->subs, subject);
}

//  --------------------------------------------------------------------------
//  Publish.
int
wsr_nats_publish (wsr_nats_t *self, const char *subject, const uint8_t *data, size_t size)
{
    assert (self && subject);
    if (!wsr_nats_connected (self) || size > INT32_MAX)
        return -1;
    return natsConnection_Publish (self->conn, subject, data, (int) size) == NATS_OK? 0: -1;
}

//  --------------------------------------------------------------------------
//  Connected?
bool
wsr_nats_connected (wsr_nats_t *self)
{
    assert (self);
    return self->conn && natsConnection_Status (self->conn) == NATS_CONN_STATUS_CONNECTED;
}

//  --------------------------------------------------------------------------
//  Drops since the last call.
void
wsr_nats_take_drops (wsr_nats_t *self, uint64_t *dropped, uint64_t *slow)
{
    assert (self && dropped && slow);
    *dropped = atomic_exchange (&self->dropped, 0);
    *slow = atomic_exchange (&self->slow, 0);
}

//  --------------------------------------------------------------------------
//  Subjects subscribed.
size_t
wsr_nats_wanted (wsr_nats_t *self)
{
    assert (self);
    return zhashx_size (self->subs);
}

//  --------------------------------------------------------------------------
//  The connection.
natsConnection *
wsr_nats_connection (wsr_nats_t *self)
{
    assert (self);
    return self->conn;
}

//  --------------------------------------------------------------------------
//  Selftest: a real nats-server on a free loopback port, restarted mid-test.

static const char *
s_nats_server (void)
{
    if (access ("/usr/sbin/nats-server", X_OK) == 0)
        return "/usr/sbin/nats-server";
    if (access ("/usr/bin/nats-server", X_OK) == 0)
        return "/usr/bin/nats-server";
    return NULL;
}

static pid_t
s_start_nats (int port)
{
    char port_text [16];
    snprintf (port_text, sizeof port_text, "%d", port);
    const char *argv [] = { s_nats_server (), "-a", "127.0.0.1", "-p", port_text, NULL };
    return wsr_util_spawn (argv);
}

//  Receive [subject][data] within ms; returns data (caller frees) or NULL.
static char *
s_expect (zsock_t *pull, const char *subject, int ms)
{
    zpoller_t *poller = zpoller_new (pull, NULL);
    char *data = NULL;
    if (zpoller_wait (poller, ms)) {
        char *got_subject = zstr_recv (pull);
        data = zstr_recv (pull);
        assert (streq (got_subject, subject));
        zstr_free (&got_subject);
    }
    zpoller_destroy (&poller);
    return data;
}

void
wsr_nats_test (bool verbose)
{
    (void) verbose;
    assert (wsr_nats_new ("redis://x", "inproc://x") == NULL);
    if (!s_nats_server ()) {
        printf ("SKIP (nats-server not installed) ");
        return;
    }
    int port = wsr_util_free_port ();
    pid_t server = s_start_nats (port);
    zsock_t *pull = zsock_new_pull ("inproc://wsr-nats-test");
    char url [64];
    snprintf (url, sizeof url, "nats://127.0.0.1:%d", port);
    wsr_nats_t *nats = wsr_nats_new (url, "inproc://wsr-nats-test");
    assert (nats);
    int64_t deadline = zclock_mono () + 5000;
    while (!wsr_nats_connected (nats) && zclock_mono () < deadline)
        zclock_sleep (10);
    assert (wsr_nats_connected (nats));
    assert (wsr_nats_subscribe (nats, "world.updates.user.u1") == 0);
    assert (wsr_nats_subscribe (nats, "world.updates.user.u1") == 0);
    assert (wsr_nats_wanted (nats) == 1);
    //  Our own publish comes back; another subject does not
    assert (wsr_nats_publish (nats, "world.updates.user.u10", (const uint8_t *) "x", 1) == 0);
    assert (wsr_nats_publish (nats, "world.updates.user.u1", (const uint8_t *) "m1", 2) == 0);
    char *data = s_expect (pull, "world.updates.user.u1", 2000);
    assert (data && streq (data, "m1"));
    zstr_free (&data);

    //  Restart the server: libnats reconnects and re-subscribes by itself
    wsr_util_reap (server);
    deadline = zclock_mono () + 5000;
    while (wsr_nats_connected (nats) && zclock_mono () < deadline)
        zclock_sleep (10);
    assert (!wsr_nats_connected (nats));
    server = s_start_nats (port);
    deadline = zclock_mono () + 5000;
    while (!wsr_nats_connected (nats) && zclock_mono () < deadline)
        zclock_sleep (10);
    assert (wsr_nats_connected (nats));
    for (int i = 0; i < 50 && !data; i++) {
        wsr_nats_publish (nats, "world.updates.user.u1", (const uint8_t *) "m2", 2);
        data = s_expect (pull, "world.updates.user.u1", 50);
    }
    assert (data && streq (data, "m2"));
    zstr_free (&data);
    wsr_nats_unsubscribe (nats, "world.updates.user.u1");
    assert (wsr_nats_wanted (nats) == 0);
    wsr_nats_destroy (&nats);
    zsock_destroy (&pull);
    wsr_util_reap (server);
}
