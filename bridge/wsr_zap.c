//  wsr_zap — the bridge's ZAP handler: which node certificates may connect
//
//  libzmq asks the process's ZAP handler (RFC 27, inproc://zeromq.zap.01)
//  about every CURVE peer of a socket that has a ZAP domain. This handler
//  runs inside the bridge's loop (no thread of its own): it allows a client
//  whose public key is one of the certificates in the clients directory
//  (czmq zcert files, `wsrouter keygen --curve`; files ending in _secret are
//  skipped) and denies everything else. The directory is read at start and
//  again on wsr_zap_reload (the bridge process calls it on SIGHUP), so a node
//  is added or revoked without a restart; connections already admitted stay.
//  Denials are counted (wsrouter_bridge_peers_denied_total) and logged once
//  per peer address, not once per attempt; a bounded set remembers which
//  addresses were logged.
//
//  Socket (owned): REP bound to inproc://zeromq.zap.01.

#include "wsr_classes.h"
#include <dirent.h>

#define S_ZAP_ENDPOINT      "inproc://zeromq.zap.01"
#define S_MAX_KEYS          65536   //  certificates read from the directory
#define S_MAX_LOGGED        4096    //  addresses remembered for "log once"

struct _wsr_zap_t {
    zsock_t *handler;               //  REP on the ZAP endpoint (owned)
    char *dir;                      //  clients directory (owned)
    zhashx_t *keys;                 //  Z85 public key → "" (owned)
    zhashx_t *logged;               //  addresses already logged (owned)
    bool logged_full;               //  said once that logging stops
    uint64_t denied;                //  denials
    wsr_metrics_t *metrics;         //  shared counters or NULL (not owned)
};

//  Read every public certificate in the directory into a new set.
static zhashx_t *
s_load (const char *dir)
{
    DIR *handle = opendir (dir);
    if (!handle) {
        zsys_error ("zap: cannot read the clients directory %s: %s", dir, strerror (errno));
        return NULL;
    }
    zhashx_t *keys = zhashx_new ();
    assert (keys);
    struct dirent *entry;
    while ((entry = readdir (handle)) && zhashx_size (keys) < S_MAX_KEYS) {
        size_t len = strlen (entry->d_name);
        if (entry->d_name [0] == '.'
        ||  (len >= 7 && streq (entry->d_name + len - 7, "_secret")))
            continue;
        char path [PATH_MAX];
        snprintf (path, sizeof path, "%s/%s", dir, entry->d_name);
        zcert_t *cert = zcert_load (path);
        if (cert) {
            zhashx_update (keys, zcert_public_txt (cert), (void *) "");
            zcert_destroy (&cert);
        }
        else
            zsys_warning ("zap: %s is not a certificate, skipped", path);
    }
    closedir (handle);
    zhashx_set_destructor (keys, NULL);
    return keys;
}

//  --------------------------------------------------------------------------
//  Start the handler.
wsr_zap_t *
wsr_zap_new (const char *clients_dir, wsr_metrics_t *metrics)
{
    assert (clients_dir);
    zhashx_t *keys = s_load (clients_dir);
    if (!keys)
        return NULL;
    wsr_zap_t *self = (wsr_zap_t *) zmalloc (sizeof (wsr_zap_t));
    self->keys = keys;
    self->dir = strdup (clients_dir);
    self->metrics = metrics;
    self->logged = zhashx_new ();
    zhashx_set_destructor (self->logged, NULL);
    self->handler = zsock_new (ZMQ_REP);
    assert (self->handler);
    if (zsock_bind (self->handler, S_ZAP_ENDPOINT) == -1) {
        zsys_error ("zap: cannot bind %s (another handler in this process?)", S_ZAP_ENDPOINT);
        wsr_zap_destroy (&self);
        return NULL;
    }
    zsys_info ("zap: %zu node certificates allowed from %s", zhashx_size (keys), clients_dir);
    return self;
}

//  --------------------------------------------------------------------------
//  Stop.
void
wsr_zap_destroy (wsr_zap_t **self_p)
{
    assert (self_p);
    if (*self_p) {
        wsr_zap_t *self = *self_p;
        zsock_destroy (&self->handler);
        zhashx_destroy (&self->keys);
        zhashx_destroy (&self->logged);
        free (self->dir);
        free (self);
        *self_p = NULL;
    }
}

//  --------------------------------------------------------------------------
//  The socket to poll.
zsock_t *
wsr_zap_socket (wsr_zap_t *self)
{
    assert (self);
    return self->handler;
}

//  --------------------------------------------------------------------------
//  Count a denial; log it once per host (ports and tcp:// are not part of it).
void
wsr_zap_deny (wsr_zap_t *self, const char *address, const char *why)
{
    assert (self && address && why);
    char host [256];
    const char *start = strncmp (address, "tcp://", 6) == 0? address + 6: address;
    snprintf (host, sizeof host, "%s", start);
    char *colon = strrchr (host, ':');
    if (colon && start != address)
        *colon = 0;
    address = host;
    self->denied++;
    if (self->metrics)
        wsr_metrics_add (self->metrics, WSR_M_BRIDGE_PEERS_DENIED, 1);
    if (zhashx_lookup (self->logged, address))
        return;
    if (zhashx_size (self->logged) < S_MAX_LOGGED) {
        zhashx_insert (self->logged, address, (void *) "");
        zsys_warning ("zap: peer %s denied: %s (logged once per address)", address, why);
    }
    else
    if (!self->logged_full) {
        self->logged_full = true;
        zsys_warning ("zap: more than %d addresses denied; further ones are only counted",
                      S_MAX_LOGGED);
    }
}

//  --------------------------------------------------------------------------
//  Answer one request: [version][request id][domain][address][identity]
//  [mechanism][credentials...].
void
wsr_zap_handle (wsr_zap_t *self)
{
    assert (self);
    zmsg_t *request = zmsg_recv (self->handler);
    if (!request)
        return;
    char *version = zmsg_popstr (request);
    char *sequence = zmsg_popstr (request);
    char *domain = zmsg_popstr (request);
    char *address = zmsg_popstr (request);
    char *identity = zmsg_popstr (request);
    char *mechanism = zmsg_popstr (request);
    zframe_t *credential = zmsg_pop (request);
    const char *status = "400", *text = "no access";
    if (!version || !streq (version, "1.0") || !mechanism || !address)
        wsr_zap_deny (self, address? address: "?", "malformed ZAP request");
    else
    if (!streq (mechanism, "CURVE"))
        wsr_zap_deny (self, address, "not CURVE");
    else
    if (!credential || zframe_size (credential) != 32)
        wsr_zap_deny (self, address, "no CURVE key");
    else {
        char key [41];
        zmq_z85_encode (key, zframe_data (credential), 32);
        if (zhashx_lookup (self->keys, key)) {
            status = "200";
            text = "OK";
        }
        else
            wsr_zap_deny (self, address, "key not in the clients directory");
    }
    zmsg_t *reply = zmsg_new ();
    zmsg_addstr (reply, "1.0");
    zmsg_addstr (reply, sequence? sequence: "");
    zmsg_addstr (reply, status);
    zmsg_addstr (reply, text);
    zmsg_addstr (reply, "");            //  user id
    zmsg_addmem (reply, NULL, 0);       //  metadata
    if (zmsg_send (&reply, self->handler))
        zmsg_destroy (&reply);
    zstr_free (&version);
    zstr_free (&sequence);
    zstr_free (&domain);
    zstr_free (&address);
    zstr_free (&identity);
    zstr_free (&mechanism);
    zframe_destroy (&credential);
    zmsg_destroy (&request);
}

//  --------------------------------------------------------------------------
//  SIGHUP: read the directory again.
int
wsr_zap_reload (wsr_zap_t *self)
{
    assert (self);
    zhashx_t *keys = s_load (self->dir);
    if (!keys)
        return -1;
    zhashx_destroy (&self->keys);
    self->keys = keys;
    zsys_info ("zap: reloaded: %zu node certificates allowed", zhashx_size (keys));
    return (int) zhashx_size (keys);
}

//  --------------------------------------------------------------------------
//  Counts.
size_t
wsr_zap_keys (wsr_zap_t *self)
{
    assert (self);
    return zhashx_size (self->keys);
}

uint64_t
wsr_zap_denied (wsr_zap_t *self)
{
    assert (self);
    return self->denied;
}

//  --------------------------------------------------------------------------
//  Selftest: a CURVE server with this handler; an allowed client, a client
//  with a key that is not in the directory, then the same key allowed after
//  a reload. The handler is served from this thread, as in the bridge.

static char *
s_recv_serving (zsock_t *server, wsr_zap_t *zap, int timeout_ms)
{
    zpoller_t *poller = zpoller_new (server, wsr_zap_socket (zap), NULL);
    char *text = NULL;
    int64_t end = zclock_mono () + timeout_ms;
    while (!text && zclock_mono () < end) {
        void *which = zpoller_wait (poller, 20);
        if (which == wsr_zap_socket (zap))
            wsr_zap_handle (zap);
        else
        if (which == server)
            text = zstr_recv (server);
    }
    zpoller_destroy (&poller);
    return text;
}

static zsock_t *
s_client (const char *endpoint, const char *secret, const char *server_public)
{
    zsock_t *client = zsock_new (ZMQ_PUSH);
    zsock_set_sndtimeo (client, 0);
    zsock_set_linger (client, 0);
    assert (wsr_curve_client (client, secret, server_public) == 0);
    assert (zsock_connect (client, "%s", endpoint) == 0);
    return client;
}

void
wsr_zap_test (bool verbose)
{
    (void) verbose;
    char dir [] = "/tmp/wsr-zap-test-XXXXXX";
    assert (mkdtemp (dir));
    char clients [256], keys [256], path [PATH_MAX], path2 [PATH_MAX];
    snprintf (clients, sizeof clients, "%s/clients", dir);
    snprintf (keys, sizeof keys, "%s/keys", dir);
    assert (mkdir (clients, 0700) == 0 && mkdir (keys, 0700) == 0);
    snprintf (path, sizeof path, "%s/bridge", keys);
    assert (wsr_curve_keygen (path) == 0);
    snprintf (path, sizeof path, "%s/good", keys);
    assert (wsr_curve_keygen (path) == 0);
    snprintf (path, sizeof path, "%s/late", keys);
    assert (wsr_curve_keygen (path) == 0);
    //  Only "good" is in the directory (its public file, plus a stray secret
    //  file and a junk file that must be skipped)
    snprintf (path, sizeof path, "cp %s/good %s/good_secret %s/ && echo junk > %s/README",
              keys, keys, clients, clients);
    assert (system (path) == 0);

    assert (wsr_zap_new ("/nonexistent-wsr-dir", NULL) == NULL);
    wsr_metrics_t *metrics = wsr_metrics_new ();
    wsr_zap_t *zap = wsr_zap_new (clients, metrics);
    assert (zap && wsr_zap_keys (zap) == 1);
    zsock_t *server = zsock_new (ZMQ_PULL);
    snprintf (path, sizeof path, "%s/bridge_secret", keys);
    assert (wsr_curve_server (server, path) == 0);
    int port = zsock_bind (server, "tcp://127.0.0.1:*");
    assert (port > 0);
    char endpoint [64];
    snprintf (endpoint, sizeof endpoint, "tcp://127.0.0.1:%d", port);
    char bridge_public [PATH_MAX + 32];
    snprintf (bridge_public, sizeof bridge_public, "%s/bridge", keys);

    snprintf (path, sizeof path, "%s/good_secret", keys);
    zsock_t *good = s_client (endpoint, path, bridge_public);
    snprintf (path2, sizeof path2, "%s/late_secret", keys);
    zsock_t *late = s_client (endpoint, path2, bridge_public);
    zstr_send (late, "from-late");
    zstr_send (good, "from-good");
    char *text = s_recv_serving (server, zap, 2000);
    assert (text && streq (text, "from-good"));
    zstr_free (&text);
    assert (s_recv_serving (server, zap, 300) == NULL);     //  late never gets in
    assert (wsr_zap_denied (zap) >= 1);
    assert (wsr_metrics_get (metrics, WSR_M_BRIDGE_PEERS_DENIED) == (int64_t) wsr_zap_denied (zap));
    //  Added to the directory and reloaded: a new connection gets in
    snprintf (path, sizeof path, "cp %s/late %s/", keys, clients);
    assert (system (path) == 0);
    assert (wsr_zap_reload (zap) == 2);
    zsock_destroy (&late);
    late = s_client (endpoint, path2, bridge_public);
    zstr_send (late, "late-ok");
    text = s_recv_serving (server, zap, 2000);
    assert (text && streq (text, "late-ok"));
    zstr_free (&text);
    //  A plaintext client never gets a message through a CURVE server
    zsock_t *plain = zsock_new_push (endpoint);
    zsock_set_sndtimeo (plain, 0);
    zstr_send (plain, "plain");
    assert (s_recv_serving (server, zap, 300) == NULL);

    zsock_destroy (&plain);
    zsock_destroy (&good);
    zsock_destroy (&late);
    zsock_destroy (&server);
    wsr_zap_destroy (&zap);
    assert (zap == NULL);
    wsr_metrics_destroy (&metrics);
    snprintf (path, sizeof path, "rm -rf '%s'", dir);
    assert (system (path) == 0);
}
