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
//
//  Servers and credentials. NATS_URL is one URL or a comma-separated list
//  (natsOptions_SetServers; servers the cluster announces are followed too).
//  We parse every URL strictly, percent-decode its USER:PASSWORD@ or TOKEN@,
//  and hand libnats the URLs without them and the credentials as options
//  (SetUserInfo / SetToken). libnats 3.4 would use URL credentials itself,
//  but it does not percent-decode them, ignores ":PASSWORD@" without a user,
//  and returns them in natsConnection_GetConnectedUrl; as options they also
//  reach the discovered servers. NATS_CREDS (a .creds file, read by libnats
//  at every connect) or NATS_NKEY_SEED (decoded here once; we sign the
//  server's nonce with libsodium, the secret key in guarded read-only
//  memory) prove the identity with a signature.
//
//  TLS. A tls:// URL, NATS_CA_FILE or a client certificate turns TLS on
//  (libnats 3.4 does not act on the tls:// scheme itself). The server's
//  certificate must chain to NATS_CA_FILE (else to the system's CAs) and
//  name the host (or address) of its URL: Debian's libnats is built with
//  NATS_FORCE_HOST_VERIFICATION, which checks every server against its own
//  URL (measured: a certificate for another name is refused). When all URLs
//  name one host we also set it as the expected name, so a libnats built
//  without that flag checks it too.
//
//  libnats gives up on a connection (CLOSED) when a server refuses the same
//  credentials twice or a TLS handshake fails. wsr_nats_process, which the
//  owner calls every heartbeat, then starts over with a new connection and
//  the same subscriptions, after a backoff of 1 s doubling to 10 s.

#include "wsr_classes.h"
#include <dlfcn.h>
#include <nats/nats.h>

#define S_MAX_SERVERS       16      //  URLs in one NATS_URL
#define S_RESTART_MIN_MS    1000    //  first backoff after libnats gave up
#define S_RESTART_MAX_MS    10000   //  longest backoff
#define S_REFUSAL_LOG_MS    60000   //  one refusal report per minute at most
#define S_KEY_FILE_MAX      8192    //  bytes read from a seed file
#define S_NKEY_SEED_LEN     58      //  base32 of prefix (2) + seed (32) + crc (2)
#define S_NKEY_PUBLIC_LEN   56      //  base32 of prefix (1) + key (32) + crc (2)
#define S_NKEY_PREFIX_SEED  (18 << 3)   //  'S'
#define S_NKEY_PREFIX_USER  (20 << 3)   //  'U'
#define S_SHUTDOWN_WAIT_MS  2000    //  for libnats' threads at exit

struct _wsr_nats_t {
    natsConnection *conn;           //  the connection (owned), NULL if none could start
    natsOptions *opts;              //  its options (owned), reused when starting over
    zhashx_t *subs;                 //  subject → natsSubscription or &s_pending (owned)
    zsock_t *forward;               //  PUSH to the owner, used under lock
    pthread_mutex_t lock;           //  guards forward, closed, closed_done, reports
    bool closed;                    //  destroying: no more forwarding
    char *shown;                    //  the server list with secrets hidden, for logs
    pthread_cond_t closed_cond;     //  signalled by libnats' closed callback
    bool closed_done;               //  libnats closed conn: no more callbacks (under lock)
    unsigned char *nkey_secret;     //  ed25519 secret key (sodium_malloc, read-only) or NULL
    char nkey_public [S_NKEY_PUBLIC_LEN + 1];   //  its public nkey (U...)
    int64_t restart_at;             //  mono ms to start over, 0 = not scheduled
    int restart_backoff;            //  ms, doubles per restart, reset once connected
    int64_t refusal_logged_at;      //  mono ms of the last refusal report (under lock)
    uint64_t refusal_unlogged;      //  refusals since that report (under lock)
    _Atomic uint64_t dropped;       //  forward queue full (libnats threads add)
    _Atomic uint64_t slow;          //  slow-consumer errors reported by libnats
    _Atomic uint64_t refused;       //  authorization / permission errors, give-ups
};

//  Placeholder for a subject wanted while no connection could take it
static char s_pending;

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

//  Count a refusal; report it at most once per S_REFUSAL_LOG_MS. Called
//  from libnats' threads and from the owner's, so under the lock.
static void
s_refusal (wsr_nats_t *self, const char *what, const char *detail)
{
    atomic_fetch_add (&self->refused, 1);
    int64_t now = wsr_util_mono_ms ();
    pthread_mutex_lock (&self->lock);
    self->refusal_unlogged++;
    if (!self->refusal_logged_at || now - self->refusal_logged_at >= S_REFUSAL_LOG_MS) {
        zsys_error ("nats: %s: %s (%" PRIu64 " refusal(s) since the last report)", what,
                    detail && *detail? detail: "no detail from libnats",
                    self->refusal_unlogged);
        self->refusal_logged_at = now;
        self->refusal_unlogged = 0;
    }
    pthread_mutex_unlock (&self->lock);
}

//  libnats reports its own drops (pending limits) as slow-consumer errors,
//  and what servers refuse once connected (credentials after a reconnect,
//  a subject outside the user's permissions) as auth / permission errors
static void
s_on_error (natsConnection *nc, natsSubscription *sub, natsStatus err, void *closure)
{
    (void) sub;
    wsr_nats_t *self = (wsr_nats_t *) closure;
    if (err == NATS_SLOW_CONSUMER)
        atomic_fetch_add (&self->slow, 1);
    else
    if (err == NATS_CONNECTION_AUTH_FAILED || err == NATS_NOT_PERMITTED) {
        const char *text = NULL;
        if (natsConnection_GetLastError (nc, &text) == NATS_OK)
            text = NULL;
        s_refusal (self, err == NATS_NOT_PERMITTED? "permission refused": "login refused",
                   text? text: natsStatus_GetText (err));
    }
}

//  The last callback libnats makes for a connection: destroy and the
//  restart wait for it
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
    wsr_nats_t *self = (wsr_nats_t *) closure;
    pthread_mutex_lock (&self->lock);
    bool closing = self->closed;    //  our own close: not worth a warning
    pthread_mutex_unlock (&self->lock);
    const char *text = NULL;
    if (natsConnection_GetLastError (nc, &text) == NATS_OK)
        text = NULL;
    if (!closing)
        zsys_warning ("nats: connection lost (servers %s)%s%s", self->shown,
                      text && *text? ": ": "", text && *text? text: "");
}

static void
s_on_connected (natsConnection *nc, void *closure)
{
    char url [WSR_URL_MAX], shown [WSR_URL_MAX];
    if (natsConnection_GetConnectedUrl (nc, url, sizeof url) != NATS_OK)
        snprintf (url, sizeof url, "%s", ((wsr_nats_t *) closure)->shown);
    zsys_info ("nats: connected to %s", wsr_util_redact_url (url, shown, sizeof shown));
}

static void
s_free_sub (void **item_p)
{
    if (*item_p != &s_pending) {
        natsSubscription *sub = (natsSubscription *) *item_p;
        //  Fails, harmlessly, on a connection libnats has closed
        (void) natsSubscription_Unsubscribe (sub);
        natsSubscription_Destroy (sub);
    }
    *item_p = NULL;
}

//  --------------------------------------------------------------------------
//  A libnats 3.4 bug with OpenSSL 3: once TLS was set up, libnats' own exit
//  handler frees OpenSSL's list of compression methods, and OpenSSL's exit
//  handler frees it again (measured: a crash in OPENSSL_cleanup at exit in
//  about half the runs). Our handler, registered after libnats' and so run
//  before it, takes the list out of OpenSSL's hands and frees it once. The
//  calls go through dlsym: libssl is loaded by libnats, and we do not link
//  OpenSSL ourselves.

typedef void *(s_set0_fn) (void *);
typedef void (s_crypto_free_fn) (void *, const char *, int);
typedef void (s_sk_pop_free_fn) (void *, void (*) (void *));
static s_crypto_free_fn *s_crypto_free;

static void
s_comp_free (void *comp)
{
    s_crypto_free (comp, __FILE__, __LINE__);
}

static void
s_openssl_at_exit (void)
{
    s_set0_fn *set0 = (s_set0_fn *) dlsym (RTLD_DEFAULT, "SSL_COMP_set0_compression_methods");
    s_sk_pop_free_fn *pop_free = (s_sk_pop_free_fn *) dlsym (RTLD_DEFAULT,
                                                             "OPENSSL_sk_pop_free");
    s_crypto_free = (s_crypto_free_fn *) dlsym (RTLD_DEFAULT, "CRYPTO_free");
    if (set0 && pop_free && s_crypto_free) {
        void *methods = set0 (NULL);
        if (methods)
            pop_free (methods, s_comp_free);
    }
}

static void
s_register_at_exit (void)
{
    if (atexit (s_openssl_at_exit))
        zsys_warning ("nats: cannot register the OpenSSL exit workaround");
}

//  --------------------------------------------------------------------------
//  NKeys: base32 (RFC 4648, no padding) with a CRC-16/XMODEM, as nats-io/nkeys

static const char s_base32 [] = "ABCDEFGHIJKLMNOPQRSTUVWXYZ234567";

//  Decode len base32 characters into out; returns bytes, or -1.
static int
s_base32_decode (const char *text, size_t len, uint8_t *out, size_t size)
{
    uint32_t acc = 0;
    int bits = 0;
    size_t used = 0;
    for (size_t i = 0; i < len; i++) {
        const char *at = strchr (s_base32, text [i]);
        if (!at || !text [i])
            return -1;
        acc = (acc << 5) | (uint32_t) (at - s_base32);
        bits += 5;
        if (bits >= 8) {
            if (used == size)
                return -1;
            out [used++] = (uint8_t) (acc >> (bits - 8));
            bits -= 8;
        }
    }
    return (int) used;
}

//  Encode len bytes; out needs (len * 8 + 4) / 5 + 1 bytes.
static void
s_base32_encode (const uint8_t *data, size_t len, char *out)
{
    uint32_t acc = 0;
    int bits = 0;
    size_t used = 0;
    for (size_t i = 0; i < len; i++) {
        acc = (acc << 8) | data [i];
        bits += 8;
        while (bits >= 5) {
            out [used++] = s_base32 [(acc >> (bits - 5)) & 31];
            bits -= 5;
        }
    }
    if (bits > 0)
        out [used++] = s_base32 [(acc << (5 - bits)) & 31];
    out [used] = 0;
}

static uint16_t
s_crc16 (const uint8_t *data, size_t len)
{
    uint16_t crc = 0;
    for (size_t i = 0; i < len; i++) {
        crc ^= (uint16_t) (data [i] << 8);
        for (int bit = 0; bit < 8; bit++)
            crc = (uint16_t) (crc & 0x8000? (crc << 1) ^ 0x1021: crc << 1);
    }
    return crc;
}

//  A user seed: "SU" and 56 more base32 characters.
static bool
s_seed_at (const char *text, size_t len)
{
    if (len < S_NKEY_SEED_LEN || text [0] != 'S' || text [1] != 'U')
        return false;
    for (size_t i = 0; i < S_NKEY_SEED_LEN; i++)
        if (!text [i] || !strchr (s_base32, text [i]))
            return false;
    return len == S_NKEY_SEED_LEN || !strchr (s_base32, text [S_NKEY_SEED_LEN])
        || !text [S_NKEY_SEED_LEN];
}

//  Decode a user seed into an ed25519 secret key and the public nkey.
//  Returns 0 or -1 (bad characters, checksum or prefix).
static int
s_nkey_decode (const char *seed, unsigned char *secret, char *public_key)
{
    uint8_t raw [36];
    unsigned char public_raw [crypto_sign_PUBLICKEYBYTES];
    int rc = -1;
    if (s_base32_decode (seed, S_NKEY_SEED_LEN, raw, sizeof raw) == (int) sizeof raw
    &&  s_crc16 (raw, 34) == (uint16_t) (raw [34] | raw [35] << 8)
    &&  (raw [0] & 0xF8) == S_NKEY_PREFIX_SEED
    &&  (((raw [0] & 7) << 5) | ((raw [1] & 0xF8) >> 3)) == S_NKEY_PREFIX_USER
    &&  crypto_sign_seed_keypair (public_raw, secret, raw + 2) == 0) {
        uint8_t encoded [35];
        encoded [0] = S_NKEY_PREFIX_USER;
        memcpy (encoded + 1, public_raw, sizeof public_raw);
        uint16_t crc = s_crc16 (encoded, 33);
        encoded [33] = (uint8_t) (crc & 0xFF);
        encoded [34] = (uint8_t) (crc >> 8);
        s_base32_encode (encoded, sizeof encoded, public_key);
        rc = 0;
    }
    sodium_memzero (raw, sizeof raw);
    return rc;
}

//  NATS_NKEY_SEED: the seed itself (never printed), or a file that holds
//  one (an .nk file, or a .creds file's seed block). Returns 0 or -1 (logged).
static int
s_nkey_load (wsr_nats_t *self, const char *value)
{
    self->nkey_secret = (unsigned char *) sodium_malloc (crypto_sign_SECRETKEYBYTES);
    assert (self->nkey_secret);
    if (strncmp (value, "SU", 2) == 0 && !strchr (value, '/')) {
        if (!s_seed_at (value, strlen (value)) || strlen (value) != S_NKEY_SEED_LEN
        ||  s_nkey_decode (value, self->nkey_secret, self->nkey_public)) {
            zsys_error ("nats: NATS_NKEY_SEED is not a valid user nkey seed (SU..., "
                        "value not shown)");
            return -1;
        }
        return sodium_mprotect_readonly (self->nkey_secret);
    }
    char *text = (char *) sodium_malloc (S_KEY_FILE_MAX);
    assert (text);
    FILE *file = fopen (value, "r");
    size_t len = file? fread (text, 1, S_KEY_FILE_MAX - 1, file): 0;
    int rc = -1;
    if (!file)
        zsys_error ("nats: cannot read NATS_NKEY_SEED file '%s': %s", value, strerror (errno));
    else {
        text [len] = 0;
        const char *seed = NULL;
        for (size_t i = 0; i + S_NKEY_SEED_LEN <= len && !seed; i++)
            if ((i == 0 || !strchr (s_base32, text [i - 1])) && s_seed_at (text + i, len - i))
                seed = text + i;
        if (seed && s_nkey_decode (seed, self->nkey_secret, self->nkey_public) == 0)
            rc = sodium_mprotect_readonly (self->nkey_secret);
        else
            zsys_error ("nats: no valid user nkey seed (SU...) in NATS_NKEY_SEED file '%s'",
                        value);
        fclose (file);
    }
    sodium_free (text);             //  zeroes it
    return rc;
}

//  libnats asks us to sign the server's nonce; it frees the signature.
static natsStatus
s_sign (char **error, unsigned char **signature, int *length, const char *nonce, void *closure)
{
    (void) error;
    wsr_nats_t *self = (wsr_nats_t *) closure;
    unsigned char *sig = (unsigned char *) malloc (crypto_sign_BYTES);
    if (!sig)
        return NATS_NO_MEMORY;
    if (crypto_sign_detached (sig, NULL, (const unsigned char *) nonce, strlen (nonce),
                              self->nkey_secret)) {
        free (sig);
        return NATS_ERR;
    }
    *signature = sig;
    *length = crypto_sign_BYTES;
    return NATS_OK;
}

//  --------------------------------------------------------------------------
//  Options from a wsr_nats_opts_t

//  The ',' before the next URL of the list (followed by nats:// or tls://),
//  or NULL: a ',' inside a password does not split.
static const char *
s_next_url (const char *from)
{
    for (const char *at = strchr (from, ','); at; at = strchr (at + 1, ',')) {
        const char *p = at + 1;
        while (*p == ' ')
            p++;
        if (strncasecmp (p, "nats://", 7) == 0 || strncasecmp (p, "tls://", 6) == 0)
            return at;
    }
    return NULL;
}

//  Credentials found in the URLs (all that carry some must agree)
typedef struct {
    bool found;                     //  a URL had USERINFO@
    bool token;                     //  TOKEN@ rather than USER:PASSWORD@
    char user [WSR_URL_PART_MAX];   //  user or token, decoded
    char password [WSR_URL_PART_MAX];
} s_creds_t;

//  Parse the server list into clean URLs, credentials and TLS wishes.
//  Returns the number of servers, or -1 with *error set.
static int
s_parse_servers (const char *list, char servers [][WSR_URL_MAX], s_creds_t *creds,
                 bool *tls, bool *plain, char *host, bool *one_host, const char **error)
{
    int count = 0;
    *one_host = true;
    for (const char *p = list; p && *p; ) {
        const char *next = s_next_url (p);
        const char *end = next? next: p + strlen (p);
        while (p < end && *p == ' ')
            p++;
        while (end > p && end [-1] == ' ')
            end--;
        if (count == S_MAX_SERVERS) {
            *error = "more than 16 servers";
            return -1;
        }
        wsr_url_t url;
        if (wsr_util_url_parse (p, (size_t) (end - p), &url, error))
            return -1;
        int rc = 0;
        if (!streq (url.scheme, "nats") && !streq (url.scheme, "tls"))
            *error = "the scheme is not nats:// or tls://", rc = -1;
        else
        if (url.path [0])
            *error = "a NATS URL has no path", rc = -1;
        else
        if (url.has_password && (!url.user [0] || !url.password [0]))
            *error = "USER:PASSWORD@ needs both (a token is TOKEN@)", rc = -1;
        else
        if (url.has_userinfo && !url.user [0])
            *error = "the token is empty", rc = -1;
        else
        if (url.has_userinfo && creds->found
        &&  (creds->token != !url.has_password || strcmp (creds->user, url.user)
        ||   strcmp (creds->password, url.password)))
            *error = "the URLs carry different credentials", rc = -1;
        if (rc == 0) {
            if (url.has_userinfo && !creds->found) {
                creds->found = true;
                creds->token = !url.has_password;
                memcpy (creds->user, url.user, sizeof creds->user);
                memcpy (creds->password, url.password, sizeof creds->password);
            }
            *tls |= streq (url.scheme, "tls");
            *plain |= streq (url.scheme, "nats");
            bool v6 = strchr (url.host, ':') != NULL;
            snprintf (servers [count], WSR_URL_MAX, "%s://%s%s%s:%d", url.scheme,
                      v6? "[": "", url.host, v6? "]": "", url.port? url.port: 4222);
            if (count == 0)
                snprintf (host, WSR_URL_PART_MAX, "%s", url.host);
            else
            if (strcmp (host, url.host))
                *one_host = false;
            count++;
        }
        wsr_util_url_clear (&url);
        if (rc)
            return -1;
        p = next? next + 1: end;
    }
    if (count == 0)
        *error = "no server";
    return count? count: -1;
}

//  Everything but the connection callbacks. Returns 0 or -1 (logged).
static int
s_configure (wsr_nats_t *self, const wsr_nats_opts_t *opts)
{
    char (*servers) [WSR_URL_MAX] = (char (*) [WSR_URL_MAX]) calloc (S_MAX_SERVERS,
                                                                     WSR_URL_MAX);
    assert (servers);
    s_creds_t *creds = (s_creds_t *) sodium_malloc (sizeof (s_creds_t));
    assert (creds);
    memset (creds, 0, sizeof *creds);
    char host [WSR_URL_PART_MAX] = "";
    bool tls = false, plain = false, one_host = true;
    const char *error = NULL;
    int rc = 0;
    int count = s_parse_servers (opts->url, servers, creds, &tls, &plain, host, &one_host,
                                 &error);
    bool secure = tls || opts->ca_file || opts->cert_file || opts->key_file;
    if (count < 0) {
        zsys_error ("nats: bad URL %s: %s", self->shown, error);
        rc = -1;
    }
    else
    if (tls && plain) {
        zsys_error ("nats: %s mixes nats:// and tls:// (libnats has one TLS setting per "
                    "connection)", self->shown);
        rc = -1;
    }
    else
    if (!opts->cert_file != !opts->key_file) {
        zsys_error ("nats: a client certificate needs both NATS_CERT_FILE and NATS_KEY_FILE");
        rc = -1;
    }
    else
    if (opts->creds && opts->nkey_seed) {
        zsys_error ("nats: NATS_CREDS and NATS_NKEY_SEED exclude each other (a .creds file "
                    "holds its own seed)");
        rc = -1;
    }
    natsStatus status = rc == 0? natsOptions_Create (&self->opts): NATS_ERR;
    //  libnats is initialised now (its exit handler registered): ours goes after
    static pthread_once_t once = PTHREAD_ONCE_INIT;
    if (status == NATS_OK)
        pthread_once (&once, s_register_at_exit);
    const char *list [S_MAX_SERVERS];
    for (int i = 0; i < count; i++)
        list [i] = servers [i];
    if (status == NATS_OK)
        status = natsOptions_SetServers (self->opts, list, count);
    if (status == NATS_OK && creds->found)
        status = creds->token? natsOptions_SetToken (self->opts, creds->user)
                             : natsOptions_SetUserInfo (self->opts, creds->user,
                                                        creds->password);
    if (status == NATS_OK && opts->creds) {
        FILE *file = fopen (opts->creds, "r");
        if (file)
            fclose (file);
        else {
            zsys_error ("nats: cannot read NATS_CREDS file '%s': %s", opts->creds,
                        strerror (errno));
            rc = -1;
        }
        if (rc == 0)
            status = natsOptions_SetUserCredentialsFromFiles (self->opts, opts->creds, NULL);
    }
    if (status == NATS_OK && rc == 0 && opts->nkey_seed) {
        rc = s_nkey_load (self, opts->nkey_seed);
        if (rc == 0)
            status = natsOptions_SetNKey (self->opts, self->nkey_public, s_sign, self);
    }
    if (status == NATS_OK && rc == 0 && secure) {
        status = natsOptions_SetSecure (self->opts, true);
        if (status == NATS_OK && opts->ca_file)
            status = natsOptions_LoadCATrustedCertificates (self->opts, opts->ca_file);
        if (status == NATS_OK && opts->cert_file)
            status = natsOptions_LoadCertificatesChain (self->opts, opts->cert_file,
                                                        opts->key_file);
        if (status == NATS_OK && one_host)
            status = natsOptions_SetExpectedHostname (self->opts, host);
    }
    if (status != NATS_OK && rc == 0) {
        //  libnats' text names files and OpenSSL reasons, never credentials
        zsys_error ("nats: cannot set up %s: %s", self->shown, nats_GetLastError (NULL));
        rc = -1;
    }
    sodium_free (creds);
    free (servers);
    return rc;
}

//  Connect (libnats goes on in the background when no server answers yet).
static int
s_connect (wsr_nats_t *self)
{
    natsStatus rc = natsConnection_Connect (&self->conn, self->opts);
    if (rc == NATS_NOT_YET_CONNECTED)
        rc = NATS_OK;
    if (rc != NATS_OK) {
        zsys_error ("nats: cannot connect to %s: %s", self->shown, nats_GetLastError (NULL));
        natsConnection_Destroy (self->conn);
        self->conn = NULL;
        //  libnats will make no callback for it: the restart may go ahead
        pthread_mutex_lock (&self->lock);
        self->closed_done = true;
        pthread_mutex_unlock (&self->lock);
        return -1;
    }
    return 0;
}

//  Subscribe on the current connection; NULL if it cannot take it now
//  (*status says why: NATS_CONNECTION_CLOSED while libnats gave up).
static natsSubscription *
s_subscribe (wsr_nats_t *self, const char *subject, natsStatus *status)
{
    natsSubscription *sub = NULL;
    natsStatus rc = self->conn? natsConnection_Subscribe (&sub, self->conn, subject,
                                                          s_on_message, self)
                              : NATS_CONNECTION_CLOSED;
    *status = rc;
    if (rc != NATS_OK) {
        if (rc != NATS_CONNECTION_CLOSED)
            zsys_warning ("nats: subscribe %s: %s", subject, natsStatus_GetText (rc));
        return NULL;
    }
    //  Generous pending limits: the forward socket's HWM is the real bound
    if (natsSubscription_SetPendingLimits (sub, WSR_HWM, 256 * 1024 * 1024) != NATS_OK)
        zsys_warning ("nats: %s: cannot set pending limits", subject);
    return sub;
}

//  --------------------------------------------------------------------------
//  Create a link.
wsr_nats_t *
wsr_nats_new (const wsr_nats_opts_t *opts, const char *forward)
{
    assert (opts && opts->url && forward);
    wsr_nats_t *self = (wsr_nats_t *) zmalloc (sizeof (wsr_nats_t));
    pthread_mutex_init (&self->lock, NULL);
    pthread_cond_init (&self->closed_cond, NULL);
    char shown [WSR_URL_MAX];
    self->shown = strdup (wsr_util_redact_url (opts->url, shown, sizeof shown));
    self->restart_backoff = S_RESTART_MIN_MS;
    self->subs = zhashx_new ();
    zhashx_set_destructor (self->subs, s_free_sub);
    self->forward = zsock_new (ZMQ_PUSH);
    assert (self->forward);
    zsock_set_sndhwm (self->forward, WSR_HWM);
    zsock_set_sndtimeo (self->forward, 0);
    zsock_set_linger (self->forward, 0);
    int rc = zsock_connect (self->forward, "%s", forward);
    if (rc == 0)
        rc = s_configure (self, opts);
    natsStatus status = rc == 0? NATS_OK: NATS_ERR;
    if (status == NATS_OK)
        status = natsOptions_SetMaxReconnect (self->opts, -1);
    if (status == NATS_OK)
        status = natsOptions_SetReconnectWait (self->opts, 100);
    if (status == NATS_OK)
        status = natsOptions_SetTimeout (self->opts, 2000);
    if (status == NATS_OK)
        status = natsOptions_SetPingInterval (self->opts, 1000);
    if (status == NATS_OK)
        status = natsOptions_SetMaxPingsOut (self->opts, 2);
    if (status == NATS_OK)
        status = natsOptions_UseGlobalMessageDelivery (self->opts, true);
    if (status == NATS_OK)
        status = natsOptions_SetDisconnectedCB (self->opts, s_on_disconnected, self);
    if (status == NATS_OK)
        status = natsOptions_SetReconnectedCB (self->opts, s_on_connected, self);
    if (status == NATS_OK)
        status = natsOptions_SetErrorHandler (self->opts, s_on_error, self);
    if (status == NATS_OK)
        status = natsOptions_SetClosedCB (self->opts, s_on_closed, self);
    if (status == NATS_OK)
        status = natsOptions_SetRetryOnFailedConnect (self->opts, true, s_on_connected, self);
    if (status == NATS_OK && s_connect (self) == 0)
        return self;
    if (rc == 0 && status != NATS_OK)
        zsys_error ("nats: cannot use %s: %s", self->shown, natsStatus_GetText (status));
    wsr_nats_destroy (&self);
    return NULL;
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
        if (self->nkey_secret)
            sodium_free (self->nkey_secret);
        free (self->shown);
        free (self);
        *self_p = NULL;
    }
}

//  Start over: a new connection, the same subscriptions.
static void
s_restart (wsr_nats_t *self)
{
    zlistx_t *subjects = zhashx_keys (self->subs);
    assert (subjects);
    for (const char *subject = (const char *) zlistx_first (subjects); subject;
         subject = (const char *) zlistx_next (subjects))
        zhashx_update (self->subs, subject, &s_pending);
    natsConnection_Destroy (self->conn);
    self->conn = NULL;
    pthread_mutex_lock (&self->lock);
    self->closed_done = false;
    pthread_mutex_unlock (&self->lock);
    zsys_info ("nats: starting over with %s", self->shown);
    if (s_connect (self) == 0)
        for (const char *subject = (const char *) zlistx_first (subjects); subject;
             subject = (const char *) zlistx_next (subjects)) {
            natsStatus status;
            natsSubscription *sub = s_subscribe (self, subject, &status);
            if (sub)
                zhashx_update (self->subs, subject, sub);
        }
    zlistx_destroy (&subjects);
}

//  --------------------------------------------------------------------------
//  Start over a connection libnats gave up on.
void
wsr_nats_process (wsr_nats_t *self)
{
    assert (self);
    if (wsr_nats_connected (self)) {
        self->restart_backoff = S_RESTART_MIN_MS;
        return;
    }
    pthread_mutex_lock (&self->lock);
    bool gave_up = self->closed_done;
    pthread_mutex_unlock (&self->lock);
    if (!gave_up)
        return;
    int64_t now = wsr_util_mono_ms ();
    if (self->restart_at == 0) {
        self->restart_at = now + self->restart_backoff;
        char detail [128];
        snprintf (detail, sizeof detail, "starting over in %d ms", self->restart_backoff);
        s_refusal (self, "libnats gave up (credentials refused, or TLS failed?)", detail);
    }
    else
    if (now >= self->restart_at) {
        self->restart_at = 0;
        self->restart_backoff = self->restart_backoff * 2 > S_RESTART_MAX_MS
                              ? S_RESTART_MAX_MS: self->restart_backoff * 2;
        s_restart (self);
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
    natsStatus status;
    natsSubscription *sub = s_subscribe (self, subject, &status);
    if (!sub && status != NATS_CONNECTION_CLOSED)
        return -1;
    //  While libnats has given up (or before a restart), the restart
    //  subscribes it
    zhashx_insert (self->subs, subject, sub? (void *) sub: &s_pending);
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
//  Refusals since the last call.
uint64_t
wsr_nats_take_refusals (wsr_nats_t *self)
{
    assert (self);
    return atomic_exchange (&self->refused, 0);
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
//  The calling thread's libnats memory.
void
wsr_nats_release_thread (void)
{
    nats_ReleaseThreadMemory ();
}

//  --------------------------------------------------------------------------
//  Tear libnats down and wait for its threads.
void
wsr_nats_shutdown (void)
{
    natsStatus rc = nats_CloseAndWait (S_SHUTDOWN_WAIT_MS);
    //  NATS_NOT_INITIALIZED: libnats was never used, nothing to wait for
    if (rc != NATS_OK && rc != NATS_NOT_INITIALIZED)
        zsys_warning ("nats: library threads still busy at exit: %s", natsStatus_GetText (rc));
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
//  Selftest: real nats-servers on free loopback ports (plain, restarted;
//  user/password; token; nkey; operator JWT + .creds; mutual TLS with a CA
//  the test makes with the openssl CLI). Exits 77 (ctest's skip code) when
//  nats-server is missing.

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

//  Write text to dir/name; returns the path (caller frees).
static char *
s_write (const char *dir, const char *name, const char *text)
{
    char *path = zsys_sprintf ("%s/%s", dir, name);
    FILE *file = fopen (path, "w");
    assert (file);
    assert (fputs (text, file) >= 0);
    assert (fclose (file) == 0);
    return path;
}

//  Start nats-server on port with a configuration whose body is conf.
static pid_t
s_start_nats_conf (const char *dir, int port, const char *conf)
{
    char *text = zsys_sprintf ("listen: 127.0.0.1:%d\n%s\n", port, conf);
    char name [32];
    snprintf (name, sizeof name, "nats-%d.conf", port);
    char *path = s_write (dir, name, text);
    const char *argv [] = { s_nats_server (), "-c", path, NULL };
    pid_t pid = wsr_util_spawn (argv);
    zstr_free (&text);
    zstr_free (&path);
    return pid;
}

//  Receive [subject][data] within ms, skipping other subjects (late copies
//  of an earlier round trip); returns data (caller frees) or NULL.
static char *
s_expect (zsock_t *pull, const char *subject, int ms)
{
    zpoller_t *poller = zpoller_new (pull, NULL);
    char *data = NULL;
    int64_t deadline = zclock_mono () + ms;
    while (!data && zclock_mono () < deadline
       &&  zpoller_wait (poller, (int) (deadline - zclock_mono ()))) {
        char *got_subject = zstr_recv (pull);
        data = zstr_recv (pull);
        if (!got_subject || !streq (got_subject, subject))
            zstr_free (&data);
        zstr_free (&got_subject);
    }
    zpoller_destroy (&poller);
    return data;
}

//  Drive the link (as the bridge does every heartbeat) until connected or
//  ms pass; returns whether it is connected.
static bool
s_wait_connected (wsr_nats_t *nats, int ms)
{
    int64_t deadline = zclock_mono () + ms;
    while (!wsr_nats_connected (nats) && zclock_mono () < deadline) {
        wsr_nats_process (nats);
        zclock_sleep (20);
    }
    return wsr_nats_connected (nats);
}

//  Subscribe, publish, and expect our own message back.
static bool
s_round_trip (wsr_nats_t *nats, zsock_t *pull, const char *subject)
{
    if (wsr_nats_subscribe (nats, subject))
        return false;
    char *data = NULL;
    for (int i = 0; i < 50 && !data; i++) {
        wsr_nats_publish (nats, subject, (const uint8_t *) "rt", 2);
        data = s_expect (pull, subject, 50);
    }
    bool ok = data && streq (data, "rt");
    zstr_free (&data);
    wsr_nats_unsubscribe (nats, subject);
    return ok;
}

//  An nkey (seed and public key) of kind prefix from 32 raw seed bytes.
static void
s_nkey_make (uint8_t prefix, const uint8_t *raw_seed, char *seed, char *public_key,
             unsigned char *secret)
{
    uint8_t data [36];
    data [0] = (uint8_t) (S_NKEY_PREFIX_SEED | (prefix >> 5));
    data [1] = (uint8_t) ((prefix & 31) << 3);
    memcpy (data + 2, raw_seed, 32);
    uint16_t crc = s_crc16 (data, 34);
    data [34] = (uint8_t) (crc & 0xFF);
    data [35] = (uint8_t) (crc >> 8);
    s_base32_encode (data, 36, seed);
    unsigned char public_raw [crypto_sign_PUBLICKEYBYTES];
    crypto_sign_seed_keypair (public_raw, secret, raw_seed);
    data [0] = prefix;
    memcpy (data + 1, public_raw, 32);
    crc = s_crc16 (data, 33);
    data [33] = (uint8_t) (crc & 0xFF);
    data [34] = (uint8_t) (crc >> 8);
    s_base32_encode (data, 35, public_key);
}

//  A NATS JWT (ed25519-nkey) with claims, signed by the issuer's secret key.
static char *
s_jwt (const char *claims, const unsigned char *issuer_secret)
{
    const char *header = "{\"typ\":\"JWT\",\"alg\":\"ed25519-nkey\"}";
    int variant = sodium_base64_VARIANT_URLSAFE_NO_PADDING;
    char header64 [128], claims64 [2048], sig64 [128];
    sodium_bin2base64 (header64, sizeof header64, (const unsigned char *) header,
                       strlen (header), variant);
    assert (sodium_base64_encoded_len (strlen (claims), variant) <= sizeof claims64);
    sodium_bin2base64 (claims64, sizeof claims64, (const unsigned char *) claims,
                       strlen (claims), variant);
    char *input = zsys_sprintf ("%s.%s", header64, claims64);
    unsigned char sig [crypto_sign_BYTES];
    crypto_sign_detached (sig, NULL, (const unsigned char *) input, strlen (input),
                          issuer_secret);
    sodium_bin2base64 (sig64, sizeof sig64, sig, sizeof sig, variant);
    char *jwt = zsys_sprintf ("%s.%s", input, sig64);
    zstr_free (&input);
    return jwt;
}

//  Make the openssl CLI write a CA, a server certificate for 127.0.0.1 and
//  a client certificate into dir. Returns false if openssl is missing.
static bool
s_make_certs (const char *dir)
{
    if (system ("command -v openssl >/dev/null 2>&1") != 0)
        return false;
    char *script = zsys_sprintf (
        "cd '%s' && exec >openssl.log 2>&1 && "
        "openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:prime256v1 -nodes "
        "  -keyout ca.key -out ca.pem -days 2 -subj '/CN=wsr test CA' && "
        "printf 'subjectAltName=IP:127.0.0.1,DNS:localhost\\n' > server.ext && "
        "printf 'subjectAltName=DNS:other.example\\n' > other.ext && "
        "printf 'extendedKeyUsage=clientAuth\\n' > client.ext && "
        "for who in server other client; do "
        "  openssl req -newkey ec -pkeyopt ec_paramgen_curve:prime256v1 -nodes "
        "    -keyout $who.key -out $who.csr -subj /CN=$who && "
        "  openssl x509 -req -in $who.csr -CA ca.pem -CAkey ca.key -CAcreateserial "
        "    -out $who.pem -days 2 -extfile $who.ext || exit 1; "
        "done", dir);
    int rc = system (script);
    zstr_free (&script);
    assert (rc == 0);
    return true;
}

void
wsr_nats_test (bool verbose)
{
    (void) verbose;
    //  NKeys: the published example pair of nats.c's README; a wrong checksum
    unsigned char secret [crypto_sign_SECRETKEYBYTES];
    char public_key [S_NKEY_PUBLIC_LEN + 1];
    assert (s_nkey_decode ("SUACSSL3UAHUDXKFSNVUZRF5UHPMWZ6BFDTJ7M6USDXIEDNPPQYYYCU3VY", secret,
                           public_key) == 0);
    assert (streq (public_key, "UDXU4RCSJNZOIQHZNWXHXORDPRTGNJAHAHFRGZNEEJCPQTT2M7NLCNF4"));
    assert (s_nkey_decode ("SUACSSL3UAHUDXKFSNVUZRF5UHPMWZ6BFDTJ7M6USDXIEDNPPQYYYCU3AA", secret,
                           public_key) == -1);
    uint8_t raw [32], bytes [40];
    char text [80];
    randombytes_buf (raw, sizeof raw);
    s_base32_encode (raw, sizeof raw, text);
    assert (s_base32_decode (text, strlen (text), bytes, sizeof bytes) == 32);
    assert (memcmp (raw, bytes, 32) == 0);
    assert (s_base32_decode ("AB1", 3, bytes, sizeof bytes) == -1);

    //  Options refused before any connection (logged, secrets hidden)
    wsr_nats_opts_t opts = { .url = "redis://x" };
    const char *bad [] = {
        "redis://x", "nats://", "nats://h/x", "nats://:pw@h", "nats://u:@h", "nats://@h",
        "nats://a:b@h1,nats://c:d@h2", "nats://t1@h1,nats://h2, nats://t2@h3",
        "nats://h1,tls://h2", "nats://h1,,nats://h2", "nats://h:0", NULL
    };
    for (int i = 0; bad [i]; i++) {
        opts.url = bad [i];
        assert (wsr_nats_new (&opts, "inproc://wsr-nats-none") == NULL);
    }
    char many [512] = "nats://h0";
    for (int i = 1; i <= S_MAX_SERVERS; i++)
        snprintf (many + strlen (many), sizeof many - strlen (many), ",nats://h%d", i);
    opts.url = many;
    assert (wsr_nats_new (&opts, "inproc://wsr-nats-none") == NULL);
    opts = (wsr_nats_opts_t) { .url = "nats://127.0.0.1:1", .cert_file = "/nonexistent" };
    assert (wsr_nats_new (&opts, "inproc://wsr-nats-none") == NULL);      //  no key file
    opts = (wsr_nats_opts_t) { .url = "nats://127.0.0.1:1", .creds = "/nonexistent" };
    assert (wsr_nats_new (&opts, "inproc://wsr-nats-none") == NULL);
    opts = (wsr_nats_opts_t) { .url = "nats://127.0.0.1:1", .nkey_seed = "/nonexistent" };
    assert (wsr_nats_new (&opts, "inproc://wsr-nats-none") == NULL);
    opts.nkey_seed = "SUACSSL3UAHUDXKFSNVUZRF5UHPMWZ6BFDTJ7M6USDXIEDNPPQYYYCU3AA";
    assert (wsr_nats_new (&opts, "inproc://wsr-nats-none") == NULL);      //  bad checksum
    opts.creds = "/dev/null";
    opts.nkey_seed = "SUACSSL3UAHUDXKFSNVUZRF5UHPMWZ6BFDTJ7M6USDXIEDNPPQYYYCU3VY";
    assert (wsr_nats_new (&opts, "inproc://wsr-nats-none") == NULL);      //  both
    opts = (wsr_nats_opts_t) { .url = "tls://127.0.0.1:1", .ca_file = "/nonexistent" };
    assert (wsr_nats_new (&opts, "inproc://wsr-nats-none") == NULL);

    //  A test whose server is missing is skipped, never passed (ctest's
    //  SKIP_RETURN_CODE 77)
    if (!s_nats_server ()) {
        wsr_util_test_skip ("nats-server not installed");
        return;
    }
    //  libnats writes TLS through OpenSSL's socket BIO, which raises SIGPIPE
    //  when a server hangs up; main ignores SIGPIPE, and so does this test
    signal (SIGPIPE, SIG_IGN);
    char dir [] = "/tmp/wsr-nats-test-XXXXXX";
    assert (mkdtemp (dir));
    zsock_t *pull = zsock_new_pull ("inproc://wsr-nats-test");
    assert (pull);

    //  Plain server, restarted: libnats reconnects and re-subscribes by itself
    int port = wsr_util_free_port ();
    pid_t server = s_start_nats (port);
    char url [256];
    snprintf (url, sizeof url, "nats://127.0.0.1:%d", port);
    opts = (wsr_nats_opts_t) { .url = url };
    wsr_nats_t *nats = wsr_nats_new (&opts, "inproc://wsr-nats-test");
    assert (nats);
    assert (s_wait_connected (nats, 5000));
    assert (wsr_nats_subscribe (nats, "world.updates.user.u1") == 0);
    assert (wsr_nats_subscribe (nats, "world.updates.user.u1") == 0);
    assert (wsr_nats_wanted (nats) == 1);
    //  Our own publish comes back; another subject does not
    assert (wsr_nats_publish (nats, "world.updates.user.u10", (const uint8_t *) "x", 1) == 0);
    assert (wsr_nats_publish (nats, "world.updates.user.u1", (const uint8_t *) "m1", 2) == 0);
    char *data = s_expect (pull, "world.updates.user.u1", 2000);
    assert (data && streq (data, "m1"));
    zstr_free (&data);
    assert (!s_expect (pull, "world.updates.user.u10", 100));    //  not subscribed
    wsr_util_reap (server);
    int64_t deadline = zclock_mono () + 5000;
    while (wsr_nats_connected (nats) && zclock_mono () < deadline)
        zclock_sleep (10);
    assert (!wsr_nats_connected (nats));
    server = s_start_nats (port);
    assert (s_wait_connected (nats, 5000));
    for (int i = 0; i < 50 && !data; i++) {
        wsr_nats_publish (nats, "world.updates.user.u1", (const uint8_t *) "m2", 2);
        data = s_expect (pull, "world.updates.user.u1", 50);
    }
    assert (data && streq (data, "m2"));
    zstr_free (&data);
    wsr_nats_unsubscribe (nats, "world.updates.user.u1");
    assert (wsr_nats_wanted (nats) == 0);
    assert (wsr_nats_take_refusals (nats) == 0);
    wsr_nats_destroy (&nats);
    wsr_util_reap (server);

    //  A list whose first server is down: the second one serves
    int dead = wsr_util_free_port ();
    port = wsr_util_free_port ();
    server = s_start_nats (port);
    snprintf (url, sizeof url, "nats://127.0.0.1:%d, nats://127.0.0.1:%d", dead, port);
    opts = (wsr_nats_opts_t) { .url = url };
    nats = wsr_nats_new (&opts, "inproc://wsr-nats-test");
    assert (nats && s_wait_connected (nats, 5000));
    assert (s_round_trip (nats, pull, "list.u1"));
    wsr_nats_destroy (&nats);
    wsr_util_reap (server);

    //  User and password (percent-decoded), given in the URL
    port = wsr_util_free_port ();
    server = s_start_nats_conf (dir, port,
                                "authorization { user: alice, password: \"p@ss:w/rd\" }");
    snprintf (url, sizeof url, "nats://alice:p%%40ss%%3Aw%%2Frd@127.0.0.1:%d", port);
    opts = (wsr_nats_opts_t) { .url = url };
    nats = wsr_nats_new (&opts, "inproc://wsr-nats-test");
    assert (nats && s_wait_connected (nats, 5000));
    assert (s_round_trip (nats, pull, "auth.u1"));
    assert (wsr_nats_take_refusals (nats) == 0);
    wsr_nats_destroy (&nats);
    //  A wrong password: never connected; libnats gives up, the link counts
    //  it and starts over, again and again; once the server takes the
    //  password (restarted), the link gets in and its subscription works
    snprintf (url, sizeof url, "nats://alice:wrong@127.0.0.1:%d", port);
    opts.url = url;
    nats = wsr_nats_new (&opts, "inproc://wsr-nats-test");
    assert (nats);
    assert (wsr_nats_subscribe (nats, "late.u1") == 0);
    uint64_t refused = 0;
    deadline = zclock_mono () + 8000;
    while (refused < 2 && zclock_mono () < deadline) {
        assert (!s_wait_connected (nats, 100));
        refused += wsr_nats_take_refusals (nats);
    }
    assert (refused >= 2);
    wsr_util_reap (server);
    server = s_start_nats_conf (dir, port, "authorization { user: alice, password: wrong }");
    assert (s_wait_connected (nats, 15000));
    for (int i = 0; i < 50 && !data; i++) {
        wsr_nats_publish (nats, "late.u1", (const uint8_t *) "in", 2);
        data = s_expect (pull, "late.u1", 50);
    }
    assert (data && streq (data, "in"));
    zstr_free (&data);
    wsr_nats_destroy (&nats);
    wsr_util_reap (server);

    //  A token
    port = wsr_util_free_port ();
    server = s_start_nats_conf (dir, port, "authorization { token: \"t0k.en\" }");
    snprintf (url, sizeof url, "nats://t0k.en@127.0.0.1:%d", port);
    opts = (wsr_nats_opts_t) { .url = url };
    nats = wsr_nats_new (&opts, "inproc://wsr-nats-test");
    assert (nats && s_wait_connected (nats, 5000));
    assert (s_round_trip (nats, pull, "token.u1"));
    wsr_nats_destroy (&nats);
    wsr_util_reap (server);

    //  An nkey: the seed itself, a seed file; a seed the server does not know
    port = wsr_util_free_port ();
    server = s_start_nats_conf (dir, port, "authorization { users = [ { nkey: "
                                "UDXU4RCSJNZOIQHZNWXHXORDPRTGNJAHAHFRGZNEEJCPQTT2M7NLCNF4 } ] }");
    char *seed_file = s_write (dir, "user.nk",
                               "SUACSSL3UAHUDXKFSNVUZRF5UHPMWZ6BFDTJ7M6USDXIEDNPPQYYYCU3VY\n");
    snprintf (url, sizeof url, "nats://127.0.0.1:%d", port);
    const char *seeds [2] = { "SUACSSL3UAHUDXKFSNVUZRF5UHPMWZ6BFDTJ7M6USDXIEDNPPQYYYCU3VY",
                              seed_file };
    for (int i = 0; i < 2; i++) {
        opts = (wsr_nats_opts_t) { .url = url, .nkey_seed = seeds [i] };
        nats = wsr_nats_new (&opts, "inproc://wsr-nats-test");
        assert (nats && s_wait_connected (nats, 5000));
        assert (s_round_trip (nats, pull, "nkey.u1"));
        wsr_nats_destroy (&nats);
    }
    char other_seed [S_NKEY_SEED_LEN + 1], other_public [S_NKEY_PUBLIC_LEN + 1];
    randombytes_buf (raw, sizeof raw);
    s_nkey_make (S_NKEY_PREFIX_USER, raw, other_seed, other_public, secret);
    opts = (wsr_nats_opts_t) { .url = url, .nkey_seed = other_seed };
    nats = wsr_nats_new (&opts, "inproc://wsr-nats-test");
    assert (nats && !s_wait_connected (nats, 1500));
    wsr_nats_destroy (&nats);
    zstr_free (&seed_file);
    wsr_util_reap (server);

    //  Operator mode: account and user JWTs, a .creds file (NATS_CREDS)
    unsigned char op_secret [crypto_sign_SECRETKEYBYTES];
    unsigned char account_secret [crypto_sign_SECRETKEYBYTES];
    unsigned char user_secret [crypto_sign_SECRETKEYBYTES];
    char op_seed [S_NKEY_SEED_LEN + 1], op_public [S_NKEY_PUBLIC_LEN + 1];
    char account_seed [S_NKEY_SEED_LEN + 1], account_public [S_NKEY_PUBLIC_LEN + 1];
    char user_seed [S_NKEY_SEED_LEN + 1], user_public [S_NKEY_PUBLIC_LEN + 1];
    randombytes_buf (raw, sizeof raw);
    s_nkey_make (14 << 3, raw, op_seed, op_public, op_secret);
    randombytes_buf (raw, sizeof raw);
    s_nkey_make (0, raw, account_seed, account_public, account_secret);
    randombytes_buf (raw, sizeof raw);
    s_nkey_make (S_NKEY_PREFIX_USER, raw, user_seed, user_public, user_secret);
    long now = (long) time (NULL);
    char claims [1024];
    snprintf (claims, sizeof claims, "{\"jti\":\"OPJTI\",\"iat\":%ld,\"iss\":\"%s\","
              "\"name\":\"op\",\"sub\":\"%s\",\"nats\":{\"type\":\"operator\",\"version\":2}}",
              now, op_public, op_public);
    char *op_jwt = s_jwt (claims, op_secret);
    snprintf (claims, sizeof claims, "{\"jti\":\"ACJTI\",\"iat\":%ld,\"iss\":\"%s\","
              "\"name\":\"acct\",\"sub\":\"%s\",\"nats\":{\"limits\":{\"subs\":-1,\"data\":-1,"
              "\"payload\":-1,\"imports\":-1,\"exports\":-1,\"wildcards\":true,\"conn\":-1,"
              "\"leaf\":-1},\"default_permissions\":{\"pub\":{},\"sub\":{}},"
              "\"type\":\"account\",\"version\":2}}", now, op_public, account_public);
    char *account_jwt = s_jwt (claims, op_secret);
    snprintf (claims, sizeof claims, "{\"jti\":\"USJTI\",\"iat\":%ld,\"iss\":\"%s\","
              "\"name\":\"user\",\"sub\":\"%s\",\"nats\":{\"pub\":{},\"sub\":{},\"subs\":-1,"
              "\"data\":-1,\"payload\":-1,\"type\":\"user\",\"version\":2}}",
              now, account_public, user_public);
    char *user_jwt = s_jwt (claims, account_secret);
    char *op_file = s_write (dir, "op.jwt", op_jwt);
    char *creds_text = zsys_sprintf (
        "-----BEGIN NATS USER JWT-----\n%s\n------END NATS USER JWT------\n\n"
        "-----BEGIN USER NKEY SEED-----\n%s\n------END USER NKEY SEED------\n",
        user_jwt, user_seed);
    char *creds_file = s_write (dir, "user.creds", creds_text);
    char *conf = zsys_sprintf ("operator: \"%s\"\nresolver: MEMORY\n"
                               "resolver_preload: { %s: \"%s\" }", op_file, account_public,
                               account_jwt);
    port = wsr_util_free_port ();
    server = s_start_nats_conf (dir, port, conf);
    snprintf (url, sizeof url, "nats://127.0.0.1:%d", port);
    opts = (wsr_nats_opts_t) { .url = url, .creds = creds_file };
    nats = wsr_nats_new (&opts, "inproc://wsr-nats-test");
    assert (nats && s_wait_connected (nats, 5000));
    assert (s_round_trip (nats, pull, "creds.u1"));
    wsr_nats_destroy (&nats);
    //  Without the creds file: refused
    opts.creds = NULL;
    nats = wsr_nats_new (&opts, "inproc://wsr-nats-test");
    assert (nats && !s_wait_connected (nats, 1500));
    wsr_nats_destroy (&nats);
    wsr_util_reap (server);
    zstr_free (&op_jwt);
    zstr_free (&account_jwt);
    zstr_free (&user_jwt);
    zstr_free (&op_file);
    zstr_free (&creds_text);
    zstr_free (&creds_file);
    zstr_free (&conf);

    //  Mutual TLS with our own CA: tls:// + NATS_CA_FILE + a client certificate
    if (s_make_certs (dir)) {
        port = wsr_util_free_port ();
        conf = zsys_sprintf ("tls { cert_file: \"%s/server.pem\", key_file: \"%s/server.key\", "
                             "ca_file: \"%s/ca.pem\", verify: true }", dir, dir, dir);
        server = s_start_nats_conf (dir, port, conf);
        zstr_free (&conf);
        char ca [256], cert [256], key [256];
        snprintf (ca, sizeof ca, "%s/ca.pem", dir);
        snprintf (cert, sizeof cert, "%s/client.pem", dir);
        snprintf (key, sizeof key, "%s/client.key", dir);
        snprintf (url, sizeof url, "tls://127.0.0.1:%d", port);
        opts = (wsr_nats_opts_t) { .url = url, .ca_file = ca, .cert_file = cert,
                                   .key_file = key };
        nats = wsr_nats_new (&opts, "inproc://wsr-nats-test");
        assert (nats && s_wait_connected (nats, 5000));
        assert (s_round_trip (nats, pull, "tls.u1"));
        wsr_nats_destroy (&nats);
        //  Without the client certificate, or without our CA: refused
        opts.cert_file = opts.key_file = NULL;
        nats = wsr_nats_new (&opts, "inproc://wsr-nats-test");
        assert (nats && !s_wait_connected (nats, 1500));
        wsr_nats_destroy (&nats);
        opts = (wsr_nats_opts_t) { .url = url, .cert_file = cert, .key_file = key };
        nats = wsr_nats_new (&opts, "inproc://wsr-nats-test");
        assert (nats && !s_wait_connected (nats, 1500));
        assert (wsr_nats_take_refusals (nats) >= 1);
        wsr_nats_destroy (&nats);
        wsr_util_reap (server);
        //  A server whose certificate (from our CA) names another host than
        //  the URL's: refused (by libnats' forced host check, and by ours)
        port = wsr_util_free_port ();
        conf = zsys_sprintf ("tls { cert_file: \"%s/other.pem\", key_file: \"%s/other.key\" }",
                             dir, dir);
        server = s_start_nats_conf (dir, port, conf);
        zstr_free (&conf);
        snprintf (url, sizeof url, "tls://127.0.0.1:%d", port);
        opts = (wsr_nats_opts_t) { .url = url, .ca_file = ca };
        nats = wsr_nats_new (&opts, "inproc://wsr-nats-test");
        assert (nats && !s_wait_connected (nats, 1500));
        wsr_nats_destroy (&nats);
        wsr_util_reap (server);
    }
    else
        printf ("(no openssl: TLS not tested) ");
    char *cleanup = zsys_sprintf ("rm -rf '%s'", dir);
    assert (system (cleanup) == 0);
    zstr_free (&cleanup);
    zsock_destroy (&pull);
}
