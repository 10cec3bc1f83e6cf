//  wsr_curve — CURVE keys on the node ⇄ bridge links, and the plaintext rule
//
//  Nothing crosses a host in plaintext or unauthenticated unless the
//  operator asks for it: a tcp:// link to or from a non-loopback address
//  needs certificates on both ends (the bridge admits the nodes whose
//  public certificates are in its clients directory, see wsr_zap), or
//  --insecure-plaintext. Certificates are czmq's (zcert) text files: PATH
//  holds the public key, PATH_secret both keys.

#include "wsr_classes.h"
#include <arpa/inet.h>

//  --------------------------------------------------------------------------
//  Client side.
int
wsr_curve_client (zsock_t *sock, const char *secret_file, const char *server_file)
{
    assert (sock);
    if (!secret_file && !server_file)
        return 0;
    if (!secret_file || !server_file) {
        zsys_error ("curve: a node needs both its own certificate and the bridge's "
                    "public certificate");
        return -1;
    }
    zcert_t *mine = zcert_load (secret_file);
    zcert_t *server = zcert_load (server_file);
    int rc = -1;
    if (!mine || streq (zcert_secret_txt (mine), "0000000000000000000000000000000000000000"))
        zsys_error ("curve: cannot load a secret certificate from %s", secret_file);
    else
    if (!server)
        zsys_error ("curve: cannot load the bridge's certificate from %s", server_file);
    else {
        zcert_apply (mine, zsock_resolve (sock));
        zsock_set_curve_serverkey (sock, zcert_public_txt (server));
        rc = 0;
    }
    zcert_destroy (&mine);
    zcert_destroy (&server);
    return rc;
}

//  --------------------------------------------------------------------------
//  Server side.
int
wsr_curve_server (zsock_t *sock, const char *secret_file)
{
    assert (sock && secret_file);
    zcert_t *mine = zcert_load (secret_file);
    if (!mine || streq (zcert_secret_txt (mine), "0000000000000000000000000000000000000000")) {
        zsys_error ("curve: cannot load a secret certificate from %s", secret_file);
        zcert_destroy (&mine);
        return -1;
    }
    zcert_apply (mine, zsock_resolve (sock));
    zsock_set_curve_server (sock, 1);
    zsock_set_zap_domain (sock, "wsrouter");
    zcert_destroy (&mine);
    return 0;
}

//  --------------------------------------------------------------------------
//  Does the endpoint stay on this host?
bool
wsr_curve_endpoint_local (const char *endpoint)
{
    assert (endpoint);
    if (strncmp (endpoint, "inproc://", 9) == 0 || strncmp (endpoint, "ipc://", 6) == 0)
        return true;
    if (strncmp (endpoint, "tcp://", 6))
        return false;
    const char *host = endpoint + 6;
    const char *colon = strrchr (host, ':');
    if (!colon)
        return false;
    char addr [256];
    size_t len = (size_t) (colon - host);
    if (len == 0 || len >= sizeof addr)
        return false;
    memcpy (addr, host, len);
    addr [len] = 0;
    //  tcp://[::1]:P, and an interface name or address before ';' (source)
    char *semi = strchr (addr, ';');
    if (semi)
        return false;                   //  source-bound connects: not judged here
    char *name = addr;
    if (name [0] == '[' && name [len - 1] == ']') {
        name [len - 1] = 0;
        name++;
    }
    if (streq (name, "localhost"))
        return true;
    struct in_addr in4;
    struct in6_addr in6;
    if (inet_pton (AF_INET, name, &in4) == 1)
        return (ntohl (in4.s_addr) >> 24) == 127;
    if (inet_pton (AF_INET6, name, &in6) == 1)
        return IN6_IS_ADDR_LOOPBACK (&in6);
    return false;                       //  a host name, *, 0.0.0.0: not loopback
}

//  --------------------------------------------------------------------------
//  The plaintext rule.
int
wsr_curve_check (const char *who, const char *endpoint, bool keyed, bool insecure)
{
    assert (who && endpoint);
    if (keyed || insecure || wsr_curve_endpoint_local (endpoint))
        return 0;
    zsys_error ("%s: refusing plaintext on %s, which is not a loopback address: give "
                "CURVE certificates (see README, Security) or --insecure-plaintext",
                who, endpoint);
    return -1;
}

//  --------------------------------------------------------------------------
//  New certificate pair.
int
wsr_curve_keygen (const char *path)
{
    assert (path);
    zcert_t *cert = zcert_new ();
    if (!cert)
        return -1;
    int rc = zcert_save (cert, path);
    if (rc == 0) {
        //  zcert_save writes the secret file 0600 only with a umask that
        //  allows it: make sure
        char secret [PATH_MAX];
        snprintf (secret, sizeof secret, "%s_secret", path);
        rc = chmod (secret, 0600);
    }
    if (rc)
        zsys_error ("curve: cannot write %s: %s", path, strerror (errno));
    zcert_destroy (&cert);
    return rc;
}

//  --------------------------------------------------------------------------
//  Selftest
void
wsr_curve_test (bool verbose)
{
    (void) verbose;
    assert (wsr_curve_endpoint_local ("inproc://x"));
    assert (wsr_curve_endpoint_local ("tcp://127.0.0.1:7000"));
    assert (wsr_curve_endpoint_local ("tcp://127.3.4.5:7000"));
    assert (wsr_curve_endpoint_local ("tcp://localhost:7000"));
    assert (wsr_curve_endpoint_local ("tcp://[::1]:7000"));
    assert (!wsr_curve_endpoint_local ("tcp://0.0.0.0:7000"));
    assert (!wsr_curve_endpoint_local ("tcp://*:7000"));
    assert (!wsr_curve_endpoint_local ("tcp://10.0.0.1:7000"));
    assert (!wsr_curve_endpoint_local ("tcp://bridge.example:7000"));
    assert (!wsr_curve_endpoint_local ("tcp://128.0.0.1:7000"));
    assert (!wsr_curve_endpoint_local ("tcp://7000"));
    assert (wsr_curve_check ("test", "tcp://127.0.0.1:1", false, false) == 0);
    assert (wsr_curve_check ("test", "tcp://10.0.0.1:1", false, false) == -1);
    assert (wsr_curve_check ("test", "tcp://10.0.0.1:1", true, false) == 0);
    assert (wsr_curve_check ("test", "tcp://10.0.0.1:1", false, true) == 0);

    //  Keys: generate two pairs, a CURVE server and client talk; a client
    //  without keys is refused by the server (no ZAP handler: CURVE alone
    //  already refuses plaintext)
    char dir [] = "/tmp/wsr-curve-test-XXXXXX";
    assert (mkdtemp (dir));
    char server_path [PATH_MAX], client_path [PATH_MAX], path [PATH_MAX + 8];
    snprintf (server_path, sizeof server_path, "%s/bridge", dir);
    snprintf (client_path, sizeof client_path, "%s/node", dir);
    assert (wsr_curve_keygen (server_path) == 0);
    assert (wsr_curve_keygen (client_path) == 0);
    struct stat st;
    snprintf (path, sizeof path, "%s_secret", server_path);
    assert (stat (path, &st) == 0 && (st.st_mode & 077) == 0);
    zsock_t *server = zsock_new (ZMQ_PULL);
    assert (wsr_curve_server (server, path) == 0);
    assert (wsr_curve_server (server, "/nonexistent/bridge_secret") == -1);
    int port = zsock_bind (server, "tcp://127.0.0.1:*");
    assert (port > 0);
    char endpoint [64];
    snprintf (endpoint, sizeof endpoint, "tcp://127.0.0.1:%d", port);
    zsock_t *client = zsock_new (ZMQ_PUSH);
    snprintf (path, sizeof path, "%s_secret", client_path);
    assert (wsr_curve_client (client, path, NULL) == -1);
    assert (wsr_curve_client (client, path, server_path) == 0);
    assert (zsock_connect (client, "%s", endpoint) == 0);
    zsock_t *plain = zsock_new_push (endpoint);
    zsock_set_sndtimeo (plain, 0);
    zstr_send (plain, "plain");
    zstr_send (client, "secured");
    zsock_set_rcvtimeo (server, 2000);
    char *text = zstr_recv (server);
    assert (text && streq (text, "secured"));
    zstr_free (&text);
    zsock_set_rcvtimeo (server, 200);
    assert (zstr_recv (server) == NULL);
    zsock_destroy (&plain);
    zsock_destroy (&client);
    zsock_destroy (&server);
    snprintf (path, sizeof path, "rm -rf '%s'", dir);
    assert (system (path) == 0);
}
