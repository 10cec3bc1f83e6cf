//  wsr_tls — server TLS (OpenSSL 3): reloadable context, non-blocking I/O on one session
//
//  The listener owns one wsr_tls_t per TLS port. It makes a session per
//  accepted connection (wsr_tls_session, a wsr_tlsconn_t) and drives the
//  handshake in its own epoll loop (wsr_tls_handshake: no thread of its own).
//  The session then belongs to whoever owns the descriptor: it travels with
//  the fd in AUTH and ADOPT, as a pointer (one process); whoever closes the
//  fd frees it first.
//
//  TLS 1.3: once the handshake is complete, the session keeps no OpenSSL
//  object. The keylog callback hands us the two application traffic secrets
//  during the handshake; wsr_tls_handshake gives them to a wsr_tlsrec (our
//  own record layer, ~250 B per session) and frees the SSL object (~13.5 KB
//  with its cipher contexts, SSL_SESSION and CERT copy). For that, the
//  server sends no session tickets (nothing is written under the
//  application keys before we take over) and OpenSSL must not have read
//  past the client's Finished (no read ahead; SSL_has_pending is checked).
//  A session where either does not hold, a TLS 1.2 session, or a suite
//  wsr_tlsrec does not run keeps OpenSSL to the end.
//
//  Each SSL object holds a reference to the SSL_CTX it was made from, so a
//  reload (SIGHUP) only swaps the context for new connections; sessions that
//  are established keep the old one alive until they end.
//
//  Memory (sessions that keep OpenSSL): SSL_MODE_RELEASE_BUFFERS frees the
//  read and write buffers of a session whenever they are empty, i.e. on
//  every idle session. Without read ahead OpenSSL reads one record at a time
//  from the socket, so the only bytes it can hold back are the rest of one
//  record (wsr_tls_pending).

#include "wsr_classes.h"
#include <openssl/err.h>
#include <openssl/pem.h>
#include <openssl/x509.h>
#include <sys/socket.h>

#define S_RECORD_MAX        16384   //  plaintext bytes per TLS record

//  Application traffic secrets caught during a TLS 1.3 handshake
typedef struct {
    uint8_t client [WSR_TLSREC_SECRET_MAX];
    uint8_t server [WSR_TLSREC_SECRET_MAX];
    size_t client_len, server_len;
} s_secrets_t;

struct _wsr_tlsconn_t {
    int fd;                         //  the socket (owned by the caller)
    SSL *ssl;                       //  OpenSSL session, NULL once rec runs
    wsr_tlsrec_t *rec;              //  our TLS 1.3 record layer, or NULL
    s_secrets_t *secrets;           //  during the handshake only, then wiped
};

struct _wsr_tls_t {
    char *cert_path;                //  PEM chain (owned copy of the path)
    char *key_path;                 //  PEM private key (owned copy of the path)
    SSL_CTX *ctx;                   //  context for new connections (one reference)
};

//  ALPN: we speak HTTP/1.1 only; a client offering only h2 gets no ALPN
//  answer (RFC 7301 lets the server ignore it) rather than a failed handshake.
static int
s_alpn_select (SSL *ssl, const unsigned char **out, unsigned char *outlen,
               const unsigned char *in, unsigned int inlen, void *arg)
{
    (void) ssl;
    (void) arg;
    static const unsigned char http11 [] = { 8, 'h', 't', 't', 'p', '/', '1', '.', '1' };
    unsigned char *selected = NULL;
    if (SSL_select_next_proto (&selected, outlen, http11, sizeof http11, in, inlen)
        == OPENSSL_NPN_NEGOTIATED) {
        *out = selected;
        return SSL_TLSEXT_ERR_OK;
    }
    return SSL_TLSEXT_ERR_NOACK;
}

//  Log OpenSSL's error queue as one line (no key material is ever in it).
static void
s_log_errors (const char *what, const char *path)
{
    char text [256] = "";
    unsigned long error = ERR_get_error ();
    if (error)
        ERR_error_string_n (error, text, sizeof text);
    ERR_clear_error ();
    zsys_error ("tls: %s %s: %s", what, path, *text? text: "failed");
}

//  Keep the application traffic secrets of a session for wsr_tlsrec. The
//  line holds key material: it is parsed, never logged.
static void
s_keylog (const SSL *ssl, const char *line)
{
    wsr_tlsconn_t *conn = (wsr_tlsconn_t *) SSL_get_app_data (ssl);
    if (!conn)
        return;
    bool client = strncmp (line, "CLIENT_TRAFFIC_SECRET_0 ", 24) == 0;
    bool server = strncmp (line, "SERVER_TRAFFIC_SECRET_0 ", 24) == 0;
    const char *hex = client || server? strchr (line + 24, ' '): NULL;
    if (!hex)
        return;
    if (!conn->secrets)
        conn->secrets = (s_secrets_t *) zmalloc (sizeof (s_secrets_t));
    if (!conn->secrets)
        return;
    hex++;
    uint8_t *target = client? conn->secrets->client: conn->secrets->server;
    size_t *len = client? &conn->secrets->client_len: &conn->secrets->server_len;
    if (sodium_hex2bin (target, WSR_TLSREC_SECRET_MAX, hex, strlen (hex), NULL, len, NULL))
        *len = 0;
}

static SSL_CTX *
s_ctx_new (const char *cert_path, const char *key_path)
{
    SSL_CTX *ctx = SSL_CTX_new (TLS_server_method ());
    if (!ctx)
        return NULL;
    SSL_CTX_set_min_proto_version (ctx, TLS1_2_VERSION);
    SSL_CTX_set_options (ctx, SSL_OP_NO_COMPRESSION | SSL_OP_NO_RENEGOTIATION
                            | SSL_OP_CIPHER_SERVER_PREFERENCE);
    SSL_CTX_set_mode (ctx, SSL_MODE_RELEASE_BUFFERS | SSL_MODE_ENABLE_PARTIAL_WRITE
                         | SSL_MODE_ACCEPT_MOVING_WRITE_BUFFER);
    //  No session cache on the server: stateless tickets resume just as well
    SSL_CTX_set_session_cache_mode (ctx, SSL_SESS_CACHE_OFF);
    SSL_CTX_set_alpn_select_cb (ctx, s_alpn_select, NULL);
    //  TLS 1.3: no tickets, so that nothing is sent under the application
    //  keys before wsr_tlsrec takes over (clients do full handshakes)
    SSL_CTX_set_num_tickets (ctx, 0);
    SSL_CTX_set_read_ahead (ctx, 0);
    SSL_CTX_set_keylog_callback (ctx, s_keylog);
    if (SSL_CTX_use_certificate_chain_file (ctx, cert_path) != 1) {
        s_log_errors ("cannot load certificate", cert_path);
        SSL_CTX_free (ctx);
        return NULL;
    }
    if (SSL_CTX_use_PrivateKey_file (ctx, key_path, SSL_FILETYPE_PEM) != 1
    ||  SSL_CTX_check_private_key (ctx) != 1) {
        s_log_errors ("cannot load private key (or it does not match the certificate)",
                      key_path);
        SSL_CTX_free (ctx);
        return NULL;
    }
    return ctx;
}

//  --------------------------------------------------------------------------
//  Load the certificate and key.
wsr_tls_t *
wsr_tls_new (const char *cert_path, const char *key_path)
{
    assert (cert_path && key_path);
    SSL_CTX *ctx = s_ctx_new (cert_path, key_path);
    if (!ctx)
        return NULL;
    wsr_tls_t *self = (wsr_tls_t *) zmalloc (sizeof (wsr_tls_t));
    self->cert_path = strdup (cert_path);
    self->key_path = strdup (key_path);
    self->ctx = ctx;
    return self;
}

//  --------------------------------------------------------------------------
//  Destroy; sessions keep their own context reference.
void
wsr_tls_destroy (wsr_tls_t **self_p)
{
    assert (self_p);
    if (*self_p) {
        wsr_tls_t *self = *self_p;
        SSL_CTX_free (self->ctx);
        free (self->cert_path);
        free (self->key_path);
        free (self);
        *self_p = NULL;
    }
}

//  --------------------------------------------------------------------------
//  Reload the files into a fresh context.
int
wsr_tls_reload (wsr_tls_t *self)
{
    assert (self);
    SSL_CTX *ctx = s_ctx_new (self->cert_path, self->key_path);
    if (!ctx)
        return -1;
    SSL_CTX_free (self->ctx);           //  live sessions hold their own reference
    self->ctx = ctx;
    return 0;
}

//  --------------------------------------------------------------------------
//  A server session on fd.
wsr_tlsconn_t *
wsr_tls_session (wsr_tls_t *self, int fd)
{
    assert (self);
    wsr_tlsconn_t *conn = (wsr_tlsconn_t *) zmalloc (sizeof (wsr_tlsconn_t));
    if (!conn)
        return NULL;
    conn->fd = fd;
    conn->ssl = SSL_new (self->ctx);
    if (conn->ssl && SSL_set_fd (conn->ssl, fd) == 1) {
        SSL_set_app_data (conn->ssl, conn);
        SSL_set_accept_state (conn->ssl);
    }
    else
        wsr_tls_free (&conn);
    return conn;
}

static void
s_secrets_free (wsr_tlsconn_t *conn)
{
    if (conn->secrets) {
        OPENSSL_cleanse (conn->secrets, sizeof (s_secrets_t));
        free (conn->secrets);
        conn->secrets = NULL;
    }
}

//  After a complete handshake: a TLS 1.3 session moves to wsr_tlsrec
//  when nothing of it is left inside OpenSSL
static void
s_offload (wsr_tlsconn_t *conn)
{
    SSL *ssl = conn->ssl;
    s_secrets_t *secrets = conn->secrets;
    const SSL_CIPHER *cipher = SSL_get_current_cipher (ssl);
    if (SSL_version (ssl) == TLS1_3_VERSION && secrets && cipher
    &&  secrets->client_len == secrets->server_len
    &&  !SSL_has_pending (ssl)
    &&  SSL_get_key_update_type (ssl) == SSL_KEY_UPDATE_NONE) {
        conn->rec = wsr_tlsrec_new (SSL_CIPHER_get_protocol_id (cipher), secrets->client,
                                    secrets->server, secrets->client_len);
        if (conn->rec) {
            SSL_free (ssl);             //  sends nothing: no SSL_shutdown
            conn->ssl = NULL;
        }
    }
    s_secrets_free (conn);
    if (conn->ssl)
        SSL_set_app_data (conn->ssl, NULL);
}

//  --------------------------------------------------------------------------
//  Drive the handshake.
int
wsr_tls_handshake (wsr_tlsconn_t *conn, bool *want_write)
{
    assert (conn && want_write);
    *want_write = false;
    if (!conn->ssl)
        return 1;
    ERR_clear_error ();
    int rc = SSL_do_handshake (conn->ssl);
    if (rc == 1) {
        s_offload (conn);
        return 1;
    }
    int error = SSL_get_error (conn->ssl, rc);
    if (error == SSL_ERROR_WANT_READ)
        return 0;
    if (error == SSL_ERROR_WANT_WRITE) {
        *want_write = true;
        return 0;
    }
    ERR_clear_error ();                 //  bad clients are counted, not logged
    return -1;
}

//  --------------------------------------------------------------------------
//  recv through TLS.
ssize_t
wsr_tls_recv (wsr_tlsconn_t *conn, void *buf, size_t len)
{
    assert (conn);
    if (conn->rec)
        return wsr_tlsrec_recv (conn->rec, conn->fd, buf, len);
    SSL *ssl = conn->ssl;
    if (len > INT_MAX)
        len = INT_MAX;
    ERR_clear_error ();
    int n = SSL_read (ssl, buf, (int) len);
    if (n > 0)
        return n;
    int error = SSL_get_error (ssl, n);
    if (error == SSL_ERROR_WANT_READ || error == SSL_ERROR_WANT_WRITE) {
        errno = EAGAIN;
        return -1;
    }
    if (error == SSL_ERROR_ZERO_RETURN)
        return 0;                       //  close_notify
    if (error == SSL_ERROR_SYSCALL && errno == 0)
        return 0;                       //  TCP EOF without close_notify
    ERR_clear_error ();
    errno = ECONNRESET;
    return -1;
}

//  --------------------------------------------------------------------------
//  writev through TLS, one record at a time.
ssize_t
wsr_tls_writev (wsr_tlsconn_t *conn, const struct iovec *iov, int count, uint32_t *retry)
{
    assert (conn && retry);
    if (conn->rec)
        return wsr_tlsrec_writev (conn->rec, conn->fd, iov, count, retry);
    SSL *ssl = conn->ssl;
    static __thread uint8_t buffer [S_RECORD_MAX];
    size_t size = 0;
    for (int i = 0; i < count && size < sizeof buffer; i++) {
        size_t n = iov [i].iov_len;
        if (n > sizeof buffer - size)
            n = sizeof buffer - size;
        memcpy (buffer + size, iov [i].iov_base, n);
        size += n;
    }
    //  A write OpenSSL started has its bytes in an encrypted record already:
    //  the retry only needs at least as many bytes, their content is unused
    if (size < *retry) {
        memset (buffer + size, 0, *retry - size);
        size = *retry;
    }
    if (size == 0)
        return 0;
    ERR_clear_error ();
    int n = SSL_write (ssl, buffer, (int) size);
    if (n > 0) {
        *retry = 0;
        return n;
    }
    int error = SSL_get_error (ssl, n);
    if (error == SSL_ERROR_WANT_WRITE || error == SSL_ERROR_WANT_READ) {
        *retry = (uint32_t) size;
        errno = EAGAIN;
        return -1;
    }
    ERR_clear_error ();
    errno = EPIPE;
    return -1;
}

//  --------------------------------------------------------------------------
//  Decrypted bytes waiting?
bool
wsr_tls_pending (wsr_tlsconn_t *conn)
{
    if (!conn)
        return false;
    if (conn->rec)
        return wsr_tlsrec_pending (conn->rec);
    return SSL_pending (conn->ssl) > 0;
}

//  --------------------------------------------------------------------------
//  Whether the session runs on wsr_tlsrec (no OpenSSL object left).
bool
wsr_tls_offloaded (wsr_tlsconn_t *conn)
{
    assert (conn);
    return conn->rec != NULL;
}

//  --------------------------------------------------------------------------
//  Free a session.
void
wsr_tls_free (wsr_tlsconn_t **conn_p)
{
    assert (conn_p);
    if (*conn_p) {
        wsr_tlsconn_t *conn = *conn_p;
        if (conn->rec) {
            wsr_tlsrec_close (conn->rec, conn->fd);
            wsr_tlsrec_destroy (&conn->rec);
        }
        if (conn->ssl) {
            if (SSL_is_init_finished (conn->ssl))
                SSL_shutdown (conn->ssl);   //  best effort: non-blocking socket
            ERR_clear_error ();
            SSL_free (conn->ssl);
        }
        s_secrets_free (conn);
        free (conn);
        *conn_p = NULL;
    }
}

//  --------------------------------------------------------------------------
//  Self-signed certificate for tests.
int
wsr_tls_make_test_cert (const char *cert_path, const char *key_path, const char *cn)
{
    int rc = -1;
    EVP_PKEY *key = EVP_EC_gen ("P-256");
    X509 *cert = X509_new ();
    FILE *file = NULL;
    if (!key || !cert)
        goto done;
    ASN1_INTEGER_set (X509_get_serialNumber (cert), (long) randombytes_uniform (1 << 30));
    X509_gmtime_adj (X509_getm_notBefore (cert), -3600);
    X509_gmtime_adj (X509_getm_notAfter (cert), 86400);
    X509_set_pubkey (cert, key);
    X509_NAME *name = X509_get_subject_name (cert);
    X509_NAME_add_entry_by_txt (name, "CN", MBSTRING_ASC, (const unsigned char *) cn, -1, -1, 0);
    X509_set_issuer_name (cert, name);
    if (!X509_sign (cert, key, EVP_sha256 ()))
        goto done;
    file = fopen (cert_path, "w");
    if (!file || !PEM_write_X509 (file, cert))
        goto done;
    fclose (file);
    file = fopen (key_path, "w");
    if (!file || !PEM_write_PrivateKey (file, key, NULL, NULL, 0, NULL, NULL))
        goto done;
    rc = 0;
done:
    if (file)
        fclose (file);
    X509_free (cert);
    EVP_PKEY_free (key);
    return rc;
}

//  --------------------------------------------------------------------------
//  Selftest: a client SSL over a socketpair against sessions of a context.

static SSL *
s_client (SSL_CTX *ctx, int fd)
{
    SSL *ssl = SSL_new (ctx);
    assert (ssl);
    SSL_set_fd (ssl, fd);
    SSL_set_connect_state (ssl);
    return ssl;
}

//  Run both handshakes to completion (or failure); returns the server's result.
static int
s_pump (wsr_tlsconn_t *server, SSL *client)
{
    for (int i = 0; i < 100; i++) {
        bool want_write;
        int rc = wsr_tls_handshake (server, &want_write);
        int crc = SSL_do_handshake (client);
        if (rc == 1 && crc == 1)
            return 1;
        if (rc == -1)
            return -1;
        if (crc != 1 && SSL_get_error (client, crc) != SSL_ERROR_WANT_READ)
            return -2;
    }
    return 0;
}

static char *
s_peer_cn (SSL *client)
{
    X509 *cert = SSL_get1_peer_certificate (client);
    assert (cert);
    char cn [64] = "";
    X509_NAME_get_text_by_NID (X509_get_subject_name (cert), NID_commonName, cn, sizeof cn);
    X509_free (cert);
    return strdup (cn);
}

void
wsr_tls_test (bool verbose)
{
    (void) verbose;
    char dir [] = "/tmp/wsr-tls-XXXXXX";
    assert (mkdtemp (dir));
    char cert [64], key [64], cert2 [64], key2 [64];
    snprintf (cert, sizeof cert, "%s/cert.pem", dir);
    snprintf (key, sizeof key, "%s/key.pem", dir);
    snprintf (cert2, sizeof cert2, "%s/cert2.pem", dir);
    snprintf (key2, sizeof key2, "%s/key2.pem", dir);
    assert (wsr_tls_make_test_cert (cert, key, "one") == 0);
    assert (wsr_tls_make_test_cert (cert2, key2, "two") == 0);

    //  Missing file, mismatched key: refused
    assert (wsr_tls_new ("/nonexistent.pem", key) == NULL);
    assert (wsr_tls_new (cert, key2) == NULL);
    wsr_tls_t *tls = wsr_tls_new (cert, key);
    assert (tls);

    SSL_CTX *cctx = SSL_CTX_new (TLS_client_method ());
    static const unsigned char alpn [] = { 2, 'h', '2', 8, 'h', 't', 't', 'p', '/', '1', '.', '1' };
    SSL_CTX_set_alpn_protos (cctx, alpn, sizeof alpn);

    //  Handshake on non-blocking sockets; ALPN picks http/1.1 out of h2 + http/1.1
    int pair [2];
    assert (socketpair (AF_UNIX, SOCK_STREAM | SOCK_NONBLOCK, 0, pair) == 0);
    wsr_tlsconn_t *server = wsr_tls_session (tls, pair [0]);
    SSL *client = s_client (cctx, pair [1]);
    assert (!wsr_tls_offloaded (server));
    assert (s_pump (server, client) == 1);
    const unsigned char *proto;
    unsigned int proto_len;
    SSL_get0_alpn_selected (client, &proto, &proto_len);
    assert (proto_len == 8 && memcmp (proto, "http/1.1", 8) == 0);
    //  TLS 1.3: OpenSSL is gone, our record layer runs the session
    assert (SSL_version (client) == TLS1_3_VERSION);
    assert (wsr_tls_offloaded (server) && !server->ssl && !server->secrets);
    bool want;
    assert (wsr_tls_handshake (server, &want) == 1);    //  done stays done
    char *cn = s_peer_cn (client);
    assert (streq (cn, "one"));
    free (cn);

    //  Nothing to read yet: EAGAIN
    char buf [S_RECORD_MAX * 2];
    assert (wsr_tls_recv (server, buf, sizeof buf) == -1 && errno == EAGAIN);
    //  Client → server, read in small pieces: the rest of the record waits
    //  inside OpenSSL (pending) while the socket is quiet
    assert (SSL_write (client, "hello, world", 12) == 12);
    assert (wsr_tls_recv (server, buf, 5) == 5 && memcmp (buf, "hello", 5) == 0);
    assert (wsr_tls_pending (server));
    assert (wsr_tls_recv (server, buf, sizeof buf) == 7 && memcmp (buf, ", world", 7) == 0);
    assert (!wsr_tls_pending (server));

    //  Server → client through iovecs until the socket is full: EAGAIN with
    //  a retry length; the retry with a shorter queue still completes
    uint32_t retry = 0;
    memset (buf, 'x', sizeof buf);
    struct iovec iov [2] = { { buf, 10000 }, { buf, 10000 } };
    size_t sent = 0;
    ssize_t n;
    while ((n = wsr_tls_writev (server, iov, 2, &retry)) > 0) {
        assert (n <= S_RECORD_MAX);
        sent += (size_t) n;
    }
    assert (n == -1 && errno == EAGAIN && retry > 0);
    //  Drain the client, then retry with only 1 byte offered
    size_t got = 0;
    while ((n = SSL_read (client, buf, sizeof buf)) > 0)
        got += (size_t) n;
    struct iovec one = { buf, 1 };
    n = wsr_tls_writev (server, &one, 1, &retry);
    assert (n > 0 && retry == 0);
    sent += (size_t) n;
    while ((n = SSL_read (client, buf, sizeof buf)) > 0)
        got += (size_t) n;
    assert (got == sent);

    //  Reload with the other certificate: new sessions see it, the old one
    //  keeps working
    char *saved_cert = tls->cert_path, *saved_key = tls->key_path;
    tls->cert_path = cert2;
    tls->key_path = key2;
    assert (wsr_tls_reload (tls) == 0);
    int pair2 [2];
    assert (socketpair (AF_UNIX, SOCK_STREAM | SOCK_NONBLOCK, 0, pair2) == 0);
    wsr_tlsconn_t *server2 = wsr_tls_session (tls, pair2 [0]);
    SSL *client2 = s_client (cctx, pair2 [1]);
    assert (s_pump (server2, client2) == 1);
    cn = s_peer_cn (client2);
    assert (streq (cn, "two"));
    free (cn);
    assert (SSL_write (client, "old", 3) == 3);
    assert (wsr_tls_recv (server, buf, sizeof buf) == 3 && memcmp (buf, "old", 3) == 0);
    //  A failed reload keeps the context
    tls->key_path = key;                //  does not match cert2
    assert (wsr_tls_reload (tls) == -1);
    tls->cert_path = saved_cert;
    tls->key_path = saved_key;

    //  Client closes: 0 (close_notify), and a freed server session is nulled
    SSL_shutdown (client2);
    assert (wsr_tls_recv (server2, buf, sizeof buf) == 0);
    wsr_tls_free (&server2);
    assert (server2 == NULL);
    wsr_tls_free (&server2);            //  safe on NULL
    SSL_free (client2);
    close (pair2 [0]);
    close (pair2 [1]);

    //  TLS 1.2 client: OpenSSL keeps the session, which works the same way
    int pair4 [2];
    assert (socketpair (AF_UNIX, SOCK_STREAM | SOCK_NONBLOCK, 0, pair4) == 0);
    SSL_CTX *tls12 = SSL_CTX_new (TLS_client_method ());
    SSL_CTX_set_max_proto_version (tls12, TLS1_2_VERSION);
    wsr_tlsconn_t *server4 = wsr_tls_session (tls, pair4 [0]);
    SSL *client4 = s_client (tls12, pair4 [1]);
    assert (s_pump (server4, client4) == 1);
    assert (SSL_version (client4) == TLS1_2_VERSION && !wsr_tls_offloaded (server4));
    assert (SSL_write (client4, "twelve", 6) == 6);
    assert (wsr_tls_recv (server4, buf, 3) == 3 && wsr_tls_pending (server4));
    assert (wsr_tls_recv (server4, buf + 3, 3) == 3 && memcmp (buf, "twelve", 6) == 0);
    struct iovec twelve = { (void *) "back", 4 };
    retry = 0;
    assert (wsr_tls_writev (server4, &twelve, 1, &retry) == 4);
    assert (SSL_read (client4, buf, sizeof buf) == 4 && memcmp (buf, "back", 4) == 0);
    wsr_tls_free (&server4);
    assert (SSL_read (client4, buf, sizeof buf) <= 0);          //  close_notify
    SSL_free (client4);
    SSL_CTX_free (tls12);
    close (pair4 [0]);
    close (pair4 [1]);

    //  TLS 1.1 only client: refused; plain HTTP bytes: refused
    int pair3 [2];
    assert (socketpair (AF_UNIX, SOCK_STREAM | SOCK_NONBLOCK, 0, pair3) == 0);
    SSL_CTX *old = SSL_CTX_new (TLS_client_method ());
    SSL_CTX_set_min_proto_version (old, TLS1_VERSION);
    SSL_CTX_set_max_proto_version (old, TLS1_1_VERSION);
    wsr_tlsconn_t *server3 = wsr_tls_session (tls, pair3 [0]);
    SSL *client3 = s_client (old, pair3 [1]);
    assert (s_pump (server3, client3) < 0);
    wsr_tls_free (&server3);
    SSL_free (client3);
    SSL_CTX_free (old);
    close (pair3 [0]);
    close (pair3 [1]);
    assert (socketpair (AF_UNIX, SOCK_STREAM | SOCK_NONBLOCK, 0, pair3) == 0);
    server3 = wsr_tls_session (tls, pair3 [0]);
    const char *http = "GET / HTTP/1.1\r\nHost: x\r\n\r\n";
    assert (write (pair3 [1], http, strlen (http)) == (ssize_t) strlen (http));
    bool want_write;
    assert (wsr_tls_handshake (server3, &want_write) == -1);
    wsr_tls_free (&server3);
    close (pair3 [0]);
    close (pair3 [1]);

    wsr_tls_free (&server);
    SSL_free (client);
    close (pair [0]);
    close (pair [1]);
    SSL_CTX_free (cctx);
    wsr_tls_destroy (&tls);
    wsr_tls_destroy (&tls);
    unlink (cert);
    unlink (key);
    unlink (cert2);
    unlink (key2);
    rmdir (dir);
}
