//  wsr_tlsrec — TLS 1.3 record layer after the handshake ("user-space kTLS")
//
//  OpenSSL runs the handshake (wsr_tls); once a TLS 1.3 handshake is
//  complete, wsr_tls hands the two application traffic secrets to this class
//  and frees the SSL object (7.6 KB, plus ~6 KB of cipher contexts, session
//  and certificate copies). What a session then keeps is this struct: the
//  secrets, keys, IVs and sequence numbers of both directions (~250 B).
//  Records are sealed and opened with one EVP_CIPHER_CTX per direction and
//  per thread, re-keyed for every record (RFC 8446 §5.2, §5.3):
//
//      nonce = iv XOR (0^32 || seq), AAD = the 5-byte record header,
//      TLSInnerPlaintext = content || type || zero padding
//
//  After the handshake a client may send application data, alerts and
//  KeyUpdate (§4.6.3). Everything else (change_cipher_spec, other handshake
//  messages, a handshake message split across records) ends the session with
//  a fatal alert. Buffers exist only while they hold bytes: the receive
//  buffer (one record, 16.3 KiB) while a record is incomplete or plaintext is
//  not yet read, the send buffer while the socket has not taken a record.
//
//  Security: a sequence number is used once: a record the socket did not take
//  is kept and sent later, never sealed again. Plaintext of a record whose tag
//  does not verify is wiped and never returned (the AEAD compares tags in
//  constant time). Secrets, keys and buffers are wiped when freed. Our own
//  KeyUpdate every 2^24 records keeps AES-GCM within its limits (§5.5).

#include "wsr_classes.h"
#include <openssl/core_names.h>
#include <openssl/evp.h>
#include <openssl/kdf.h>
#include <openssl/ssl.h>
#include <pthread.h>
#include <sys/socket.h>

#define S_HEADER            5           //  type, legacy version, length
#define S_TAG               16          //  AEAD tag (all three suites)
#define S_IV                12          //  per-record nonce length
#define S_KEY_MAX           32
#define S_PLAIN_MAX         16384       //  2^14: content bytes per record
#define S_CIPHER_MAX        (S_PLAIN_MAX + 256)
#define S_SEAL_MAX          (S_HEADER + S_PLAIN_MAX + 1 + S_TAG)
#define S_UPDATE_RECORDS    (1ULL << 24)    //  our KeyUpdate after this many records
#define S_VERSION           1           //  of the saved form
#define S_EMPTY_MAX         32          //  records in a row that carry no data

#define S_CT_CCS            20
#define S_CT_ALERT          21
#define S_CT_HANDSHAKE      22
#define S_CT_APPDATA        23
#define S_HS_KEY_UPDATE     24

#define S_AL_CLOSE_NOTIFY       0
#define S_AL_UNEXPECTED         10
#define S_AL_BAD_RECORD_MAC     20
#define S_AL_RECORD_OVERFLOW    22
#define S_AL_ILLEGAL_PARAMETER  47
#define S_AL_DECODE_ERROR       50
#define S_AL_INTERNAL_ERROR     80
#define S_AL_USER_CANCELED      90

//  The three suites: IANA number, AEAD, hash, key and hash lengths
static const struct {
    uint16_t id;
    const char *cipher;
    const char *digest;
    uint8_t key_len;
    uint8_t hash_len;
} s_suites [] = {
    { 0x1301, "AES-128-GCM", "SHA256", 16, 32 },
    { 0x1302, "AES-256-GCM", "SHA384", 32, 48 },
    { 0x1303, "ChaCha20-Poly1305", "SHA256", 32, 32 }
};
#define S_SUITES    3

//  One direction's keys: plain bytes, no pointers (saved as they are)
typedef struct {
    uint8_t secret [WSR_TLSREC_SECRET_MAX]; //  current traffic secret
    uint8_t key [S_KEY_MAX];        //  AEAD key derived from it
    uint8_t iv [S_IV];              //  static IV derived from it
    uint64_t seq;                   //  next record's sequence number
} s_keys_t;

//  The session's state: what wsr_tlsrec_save writes
typedef struct {
    uint8_t version;                //  S_VERSION
    uint8_t suite;                  //  index into s_suites
    uint8_t update;                 //  0, or 1 + update_requested: KeyUpdate to send
    uint8_t pad;
    s_keys_t rx;                    //  peer → us
    s_keys_t tx;                    //  us → peer
} s_state_t;

struct _wsr_tlsrec_t {
    s_state_t st;                   //  keys and sequence numbers
    uint8_t *rbuf;                  //  receive buffer, NULL while empty
    uint16_t rstart, rend;          //  ciphertext not yet opened: rbuf [rstart, rend)
    uint16_t pstart, pend;          //  plaintext not yet returned: rbuf [pstart, pend)
    uint8_t *wbuf;                  //  sealed bytes the socket has not taken, or NULL
    uint16_t wstart, wend;          //  wbuf [wstart, wend) still to send
    uint16_t wtaken;                //  plaintext bytes of the data record in wbuf
    int16_t alert;                  //  alert that ended the session, -1 if none
    uint8_t empty;                  //  records in a row without data (KeyUpdate,
                                    //  empty application data, user_canceled)
    bool eof;                       //  close_notify received
    bool failed;                    //  fatal error: no more input or output
    bool close_sent;                //  close_notify sent
};

//  --------------------------------------------------------------------------
//  Per-thread AEAD contexts, re-keyed per record: a session holds no
//  OpenSSL object at all.

typedef struct {
    EVP_CIPHER *cipher [S_SUITES];  //  fetched once per thread
    EVP_CIPHER_CTX *ctx [2];        //  0 = open, 1 = seal
    int last [2];                   //  suite each context was last set up for, -1
} s_aead_t;

static pthread_key_t s_aead_key;
static pthread_once_t s_aead_once = PTHREAD_ONCE_INIT;

static void
s_aead_free (void *arg)
{
    s_aead_t *aead = (s_aead_t *) arg;
    for (int i = 0; i < S_SUITES; i++)
        EVP_CIPHER_free (aead->cipher [i]);
    EVP_CIPHER_CTX_free (aead->ctx [0]);
    EVP_CIPHER_CTX_free (aead->ctx [1]);
    free (aead);
}

static void
s_aead_init (void)
{
    int rc = pthread_key_create (&s_aead_key, s_aead_free);
    assert (rc == 0);
}

static s_aead_t *
s_aead (void)
{
    pthread_once (&s_aead_once, s_aead_init);
    s_aead_t *aead = (s_aead_t *) pthread_getspecific (s_aead_key);
    if (aead)
        return aead;
    aead = (s_aead_t *) zmalloc (sizeof (s_aead_t));
    for (int i = 0; i < S_SUITES; i++)
        aead->cipher [i] = EVP_CIPHER_fetch (NULL, s_suites [i].cipher, NULL);
    aead->ctx [0] = EVP_CIPHER_CTX_new ();
    aead->ctx [1] = EVP_CIPHER_CTX_new ();
    aead->last [0] = aead->last [1] = -1;
    for (int i = 0; i < S_SUITES; i++)
        assert (aead->cipher [i]);
    assert (aead->ctx [0] && aead->ctx [1]);
    pthread_setspecific (s_aead_key, aead);
    return aead;
}

//  The context for one record, keyed with keys and the nonce for keys->seq
static EVP_CIPHER_CTX *
s_aead_ctx (int suite, s_keys_t *keys, int enc)
{
    s_aead_t *aead = s_aead ();
    uint8_t nonce [S_IV];
    memcpy (nonce, keys->iv, S_IV);
    for (int i = 0; i < 8; i++)
        nonce [S_IV - 1 - i] ^= (uint8_t) (keys->seq >> (8 * i));
    EVP_CIPHER_CTX *ctx = aead->ctx [enc];
    const EVP_CIPHER *cipher = aead->last [enc] == suite? NULL: aead->cipher [suite];
    if (EVP_CipherInit_ex2 (ctx, cipher, keys->key, nonce, enc, NULL) != 1) {
        aead->last [enc] = -1;
        return NULL;
    }
    aead->last [enc] = suite;
    return ctx;
}

//  --------------------------------------------------------------------------
//  Key schedule (RFC 8446 §7.1, §7.3)

//  HKDF-Expand-Label (secret, label, "", out_len)
static int
s_expand_label (int suite, const uint8_t *secret, const char *label,
                uint8_t *out, size_t out_len)
{
    uint8_t info [2 + 1 + 255 + 1];
    size_t label_len = strlen (label);
    assert (label_len + 6 <= 255 && out_len <= 255);
    info [0] = 0;
    info [1] = (uint8_t) out_len;
    info [2] = (uint8_t) (6 + label_len);
    memcpy (info + 3, "tls13 ", 6);
    memcpy (info + 9, label, label_len);
    info [9 + label_len] = 0;           //  empty context
    size_t info_len = 10 + label_len;

    int rc = -1;
    int mode = EVP_KDF_HKDF_MODE_EXPAND_ONLY;
    EVP_KDF *kdf = EVP_KDF_fetch (NULL, "HKDF", NULL);
    EVP_KDF_CTX *kctx = kdf? EVP_KDF_CTX_new (kdf): NULL;
    if (kctx) {
        OSSL_PARAM params [] = {
            OSSL_PARAM_construct_utf8_string (OSSL_KDF_PARAM_DIGEST,
                                              (char *) s_suites [suite].digest, 0),
            OSSL_PARAM_construct_int (OSSL_KDF_PARAM_MODE, &mode),
            OSSL_PARAM_construct_octet_string (OSSL_KDF_PARAM_KEY, (void *) secret,
                                               s_suites [suite].hash_len),
            OSSL_PARAM_construct_octet_string (OSSL_KDF_PARAM_INFO, info, info_len),
            OSSL_PARAM_construct_end ()
        };
        if (EVP_KDF_derive (kctx, out, out_len, params) == 1)
            rc = 0;
    }
    EVP_KDF_CTX_free (kctx);
    EVP_KDF_free (kdf);
    return rc;
}

//  Key and IV from the current secret; the sequence number starts again
static int
s_keys_derive (int suite, s_keys_t *keys)
{
    keys->seq = 0;
    return s_expand_label (suite, keys->secret, "key", keys->key, s_suites [suite].key_len)
        || s_expand_label (suite, keys->secret, "iv", keys->iv, S_IV);
}

//  KeyUpdate: secret_{n+1} = HKDF-Expand-Label (secret_n, "traffic upd", "", Hash.length)
static int
s_keys_update (int suite, s_keys_t *keys)
{
    uint8_t next [WSR_TLSREC_SECRET_MAX];
    if (s_expand_label (suite, keys->secret, "traffic upd", next, s_suites [suite].hash_len))
        return -1;
    memcpy (keys->secret, next, sizeof next);
    OPENSSL_cleanse (next, sizeof next);
    return s_keys_derive (suite, keys);
}

static int
s_suite_index (uint16_t suite)
{
    for (int i = 0; i < S_SUITES; i++)
        if (s_suites [i].id == suite)
            return i;
    return -1;
}

//  --------------------------------------------------------------------------
//  Seal one record into out (S_SEAL_MAX bytes at least): the iovecs' first
//  len bytes, then the type byte, then padding zeros. Uses one sequence
//  number. Returns the record's length, or -1 (then nothing was sealed).
static int
s_seal (wsr_tlsrec_t *self, uint8_t type, const struct iovec *iov, int count, size_t len,
        size_t padding, uint8_t *out)
{
    assert (len + 1 + padding + S_TAG <= S_CIPHER_MAX);
    size_t body = len + 1 + padding + S_TAG;
    out [0] = S_CT_APPDATA;
    out [1] = 3;
    out [2] = 3;
    out [3] = (uint8_t) (body >> 8);
    out [4] = (uint8_t) body;
    EVP_CIPHER_CTX *ctx = s_aead_ctx (self->st.suite, &self->st.tx, 1);
    if (!ctx)
        return -1;
    int n;
    uint8_t *p = out + S_HEADER;
    if (EVP_EncryptUpdate (ctx, NULL, &n, out, S_HEADER) != 1)
        return -1;
    for (int i = 0; i < count && len > 0; i++) {
        size_t take = iov [i].iov_len < len? iov [i].iov_len: len;
        if (take == 0)
            continue;
        if (EVP_EncryptUpdate (ctx, p, &n, (const uint8_t *) iov [i].iov_base, (int) take) != 1)
            return -1;
        p += n;
        len -= take;
    }
    assert (len == 0);
    uint8_t trailer [256];
    memset (trailer, 0, sizeof trailer);
    trailer [0] = type;
    size_t more = 1 + padding;
    while (more > 0) {
        size_t step = more < sizeof trailer? more: sizeof trailer;
        if (EVP_EncryptUpdate (ctx, p, &n, trailer, (int) step) != 1)
            return -1;
        p += n;
        more -= step;
        trailer [0] = 0;
    }
    if (EVP_EncryptFinal_ex (ctx, p, &n) != 1)
        return -1;
    p += n;
    if (EVP_CIPHER_CTX_ctrl (ctx, EVP_CTRL_AEAD_GET_TAG, S_TAG, p) != 1)
        return -1;
    p += S_TAG;
    assert ((size_t) (p - out) == S_HEADER + body);
    //  This sequence number is spent, whatever happens to the record
    if (++self->st.tx.seq >= S_UPDATE_RECORDS && !self->st.update)
        self->st.update = 1;
    return (int) (S_HEADER + body);
}

//  Seal a pending KeyUpdate into out and move to the next send keys
static int
s_seal_update (wsr_tlsrec_t *self, uint8_t *out)
{
    uint8_t msg [5] = { S_HS_KEY_UPDATE, 0, 0, 1, (uint8_t) (self->st.update - 1) };
    struct iovec iov = { msg, sizeof msg };
    int n = s_seal (self, S_CT_HANDSHAKE, &iov, 1, sizeof msg, 0, out);
    self->st.update = 0;
    if (n < 0 || s_keys_update (self->st.suite, &self->st.tx))
        return -1;
    return n;
}

//  Open the record at rbuf [rstart] (whole, header checked) in place; 0 or
//  -1 if the tag does not verify (the plaintext is wiped then).
static int
s_open (wsr_tlsrec_t *self, uint8_t *record, size_t body)
{
    EVP_CIPHER_CTX *ctx = s_aead_ctx (self->st.suite, &self->st.rx, 0);
    if (!ctx)
        return -1;
    int n = 0, total = 0;
    uint8_t *data = record + S_HEADER;
    size_t len = body - S_TAG;
    int ok = EVP_DecryptUpdate (ctx, NULL, &n, record, S_HEADER) == 1
          && EVP_CIPHER_CTX_ctrl (ctx, EVP_CTRL_AEAD_SET_TAG, S_TAG, data + len) == 1
          && EVP_DecryptUpdate (ctx, data, &n, data, (int) len) == 1;
    total = n;
    ok = ok && EVP_DecryptFinal_ex (ctx, data + total, &n) == 1;
    if (!ok) {
        OPENSSL_cleanse (data, body);
        return -1;
    }
    self->st.rx.seq++;
    return 0;
}

//  --------------------------------------------------------------------------
//  Buffers

static void
s_rbuf_free (wsr_tlsrec_t *self)
{
    if (self->rbuf) {
        OPENSSL_cleanse (self->rbuf, self->rend);
        free (self->rbuf);
        self->rbuf = NULL;
    }
    self->rstart = self->rend = self->pstart = self->pend = 0;
}

static void
s_wbuf_free (wsr_tlsrec_t *self)
{
    free (self->wbuf);                  //  ciphertext only
    self->wbuf = NULL;
    self->wstart = self->wend = self->wtaken = 0;
}

//  Send sealed bytes; what the socket does not take goes to wbuf. Returns 0
//  if all went, 1 if some wait in wbuf, -1 on a socket error.
static int
s_send (wsr_tlsrec_t *self, int fd, const uint8_t *data, size_t size)
{
    assert (!self->wbuf);
    ssize_t n = send (fd, data, size, MSG_NOSIGNAL | MSG_DONTWAIT);
    if (n < 0) {
        if (errno != EAGAIN && errno != EWOULDBLOCK && errno != EINTR)
            return -1;
        n = 0;
    }
    if ((size_t) n == size)
        return 0;
    self->wbuf = (uint8_t *) malloc (size - (size_t) n);
    if (!self->wbuf)
        return -1;
    memcpy (self->wbuf, data + n, size - (size_t) n);
    self->wstart = 0;
    self->wend = (uint16_t) (size - (size_t) n);
    return 1;
}

//  Send what waits in wbuf: 0 when it is all gone, 1 if some waits, -1 error
static int
s_flush (wsr_tlsrec_t *self, int fd)
{
    while (self->wstart < self->wend) {
        ssize_t n = send (fd, self->wbuf + self->wstart, self->wend - self->wstart,
                          MSG_NOSIGNAL | MSG_DONTWAIT);
        if (n < 0 && errno == EINTR)
            continue;
        if (n < 0 && (errno == EAGAIN || errno == EWOULDBLOCK))
            return 1;
        if (n <= 0)
            return -1;
        self->wstart += (uint16_t) n;
    }
    uint16_t taken = self->wtaken;
    s_wbuf_free (self);
    self->wtaken = taken;               //  the caller reads and clears it
    return 0;
}

//  A fatal error: send the alert if the socket takes it at once, wipe the
//  input, and refuse everything from now on.
static ssize_t
s_fail (wsr_tlsrec_t *self, int fd, int alert)
{
    if (!self->failed && alert >= 0 && !self->wbuf && !self->close_sent) {
        uint8_t msg [2] = { 2, (uint8_t) alert };
        uint8_t out [S_HEADER + 3 + S_TAG];
        struct iovec iov = { msg, sizeof msg };
        if (s_seal (self, S_CT_ALERT, &iov, 1, sizeof msg, 0, out) > 0)
            if (send (fd, out, sizeof out, MSG_NOSIGNAL | MSG_DONTWAIT)) {}
        OPENSSL_cleanse (out, sizeof out);
    }
    if (self->alert < 0)
        self->alert = (int16_t) alert;
    self->failed = true;
    s_rbuf_free (self);
    errno = ECONNRESET;
    return -1;
}

//  The handshake messages of a record: only whole KeyUpdates, the last
//  one ending the record (a key change ends the record, §5.1).
static int
s_handshake (wsr_tlsrec_t *self, const uint8_t *data, size_t len)
{
    if (len < 4 || data [0] != S_HS_KEY_UPDATE)
        return S_AL_UNEXPECTED;         //  or a fragment: not supported
    size_t msg_len = (size_t) data [1] << 16 | (size_t) data [2] << 8 | data [3];
    if (msg_len != 1)
        return len < 4 + msg_len? S_AL_UNEXPECTED: S_AL_DECODE_ERROR;
    if (len != 5)
        return S_AL_UNEXPECTED;         //  data after a key change
    if (data [4] > 1)
        return S_AL_ILLEGAL_PARAMETER;
    if (s_keys_update (self->st.suite, &self->st.rx))
        return S_AL_INTERNAL_ERROR;
    if (data [4] == 1 && !self->st.update)
        self->st.update = 1;            //  update_not_requested in our answer
    return -1;
}

//  Open the whole record at rstart; returns 0 (plaintext may now be
//  waiting), 1 at close_notify, or -1 (session failed, errno set).
static int
s_record (wsr_tlsrec_t *self, int fd, size_t body)
{
    uint8_t *record = self->rbuf + self->rstart;
    if (s_open (self, record, body))
        return (int) s_fail (self, fd, S_AL_BAD_RECORD_MAC);
    self->rstart += (uint16_t) (S_HEADER + body);
    uint8_t *data = record + S_HEADER;
    size_t len = body - S_TAG;
    while (len > 0 && data [len - 1] == 0)
        len--;                          //  padding (not constant time: §5.4 allows it)
    if (len == 0)
        return (int) s_fail (self, fd, S_AL_UNEXPECTED);
    uint8_t type = data [--len];
    if (len > S_PLAIN_MAX)
        return (int) s_fail (self, fd, S_AL_RECORD_OVERFLOW);
    //  Records that return nothing cost an AEAD each and are never seen by
    //  the caller's rate limits: a run of them is a flood (OpenSSL does the same)
    if (type == S_CT_APPDATA && len > 0)
        self->empty = 0;
    else
    if (++self->empty > S_EMPTY_MAX)
        return (int) s_fail (self, fd, S_AL_UNEXPECTED);
    if (type == S_CT_APPDATA) {
        self->pstart = (uint16_t) (data - self->rbuf);
        self->pend = (uint16_t) (self->pstart + len);
        return 0;
    }
    if (type == S_CT_ALERT) {
        if (len != 2)
            return (int) s_fail (self, fd, S_AL_DECODE_ERROR);
        if (data [1] == S_AL_USER_CANCELED)
            return 0;                   //  a close_notify follows
        self->alert = data [1];
        if (data [1] == S_AL_CLOSE_NOTIFY) {
            self->eof = true;
            s_rbuf_free (self);
            return 1;
        }
        return (int) s_fail (self, fd, -1);     //  the peer's error: no answer
    }
    if (type == S_CT_HANDSHAKE) {
        int alert = s_handshake (self, data, len);
        return alert < 0? 0: (int) s_fail (self, fd, alert);
    }
    return (int) s_fail (self, fd, S_AL_UNEXPECTED);
}

//  --------------------------------------------------------------------------
//  Public API

bool
wsr_tlsrec_supported (uint16_t suite)
{
    return s_suite_index (suite) >= 0;
}

//  --------------------------------------------------------------------------
//  A record layer from the application traffic secrets.
wsr_tlsrec_t *
wsr_tlsrec_new (uint16_t suite, const uint8_t *rx_secret, const uint8_t *tx_secret,
                size_t secret_len)
{
    assert (rx_secret && tx_secret);
    int index = s_suite_index (suite);
    if (index < 0 || secret_len != s_suites [index].hash_len)
        return NULL;
    wsr_tlsrec_t *self = (wsr_tlsrec_t *) zmalloc (sizeof (wsr_tlsrec_t));
    if (!self)
        return NULL;
    self->st.version = S_VERSION;
    self->st.suite = (uint8_t) index;
    self->alert = -1;
    memcpy (self->st.rx.secret, rx_secret, secret_len);
    memcpy (self->st.tx.secret, tx_secret, secret_len);
    if (s_keys_derive (index, &self->st.rx) || s_keys_derive (index, &self->st.tx))
        wsr_tlsrec_destroy (&self);
    return self;
}

//  --------------------------------------------------------------------------
//  Wipe and free.
void
wsr_tlsrec_destroy (wsr_tlsrec_t **self_p)
{
    assert (self_p);
    if (*self_p) {
        wsr_tlsrec_t *self = *self_p;
        s_rbuf_free (self);
        s_wbuf_free (self);
        OPENSSL_cleanse (self, sizeof *self);
        free (self);
        *self_p = NULL;
    }
}

//  --------------------------------------------------------------------------
//  recv through TLS.
ssize_t
wsr_tlsrec_recv (wsr_tlsrec_t *self, int fd, void *buf, size_t len)
{
    assert (self);
    while (true) {
        if (self->pend > self->pstart) {
            size_t n = self->pend - self->pstart;
            if (n > len)
                n = len;
            memcpy (buf, self->rbuf + self->pstart, n);
            self->pstart += (uint16_t) n;
            if (self->pstart == self->pend && self->rstart == self->rend)
                s_rbuf_free (self);
            return (ssize_t) n;
        }
        if (self->failed) {
            errno = ECONNRESET;
            return -1;
        }
        if (self->eof)
            return 0;
        //  A whole record buffered? Check its header first
        size_t have = self->rend - self->rstart;
        if (have >= S_HEADER) {
            const uint8_t *header = self->rbuf + self->rstart;
            size_t body = (size_t) header [3] << 8 | header [4];
            if (header [0] != S_CT_APPDATA)
                return s_fail (self, fd, S_AL_UNEXPECTED);
            if (body > S_CIPHER_MAX)
                return s_fail (self, fd, S_AL_RECORD_OVERFLOW);
            if (body < 1 + S_TAG)
                return s_fail (self, fd, S_AL_DECODE_ERROR);
            if (have >= S_HEADER + body) {
                int rc = s_record (self, fd, body);
                if (rc < 0)
                    return -1;
                if (rc > 0)
                    return 0;
                continue;
            }
        }
        //  Read more: as much as fits behind what is buffered
        if (!self->rbuf) {
            self->rbuf = (uint8_t *) malloc (WSR_TLSREC_RECORD_MAX);
            if (!self->rbuf)
                return s_fail (self, fd, S_AL_INTERNAL_ERROR);
        }
        else
        if (self->rstart > 0) {
            memmove (self->rbuf, self->rbuf + self->rstart, have);
            OPENSSL_cleanse (self->rbuf + have, self->rend - have);
            self->rstart = self->pstart = self->pend = 0;
            self->rend = (uint16_t) have;
        }
        ssize_t n = recv (fd, self->rbuf + self->rend, WSR_TLSREC_RECORD_MAX - self->rend, 0);
        if (n > 0) {
            self->rend += (uint16_t) n;
            continue;
        }
        if (n == 0) {
            if (have > 0)
                return s_fail (self, fd, -1);   //  truncated record
            s_rbuf_free (self);
            return 0;                   //  TCP EOF without close_notify
        }
        int error = errno;
        if (have == 0)
            s_rbuf_free (self);
        if (error == EAGAIN || error == EWOULDBLOCK || error == EINTR) {
            errno = error;
            return -1;
        }
        return s_fail (self, fd, -1);
    }
}

//  --------------------------------------------------------------------------
//  writev through TLS, one record at a time.
ssize_t
wsr_tlsrec_writev (wsr_tlsrec_t *self, int fd, const struct iovec *iov, int count,
                   uint32_t *retry)
{
    assert (self && retry);
    if (self->failed || self->close_sent) {
        errno = EPIPE;
        return -1;
    }
    if (self->wbuf) {
        int rc = s_flush (self, fd);
        if (rc) {
            errno = rc > 0? EAGAIN: EPIPE;
            if (rc < 0)
                self->failed = true;
            return -1;
        }
        size_t taken = self->wtaken;
        self->wtaken = 0;
        *retry = 0;
        if (taken > 0)
            return (ssize_t) taken;     //  the record sealed earlier is out now
    }
    size_t size = 0;
    for (int i = 0; i < count && size < S_PLAIN_MAX; i++)
        size += iov [i].iov_len;
    if (size > S_PLAIN_MAX)
        size = S_PLAIN_MAX;
    if (size == 0 && !self->st.update)
        return 0;
    //  A KeyUpdate we owe goes before the application data (§4.6.3)
    static __thread uint8_t out [2 * S_SEAL_MAX];
    int used = 0;
    if (self->st.update && (used = s_seal_update (self, out)) < 0)
        goto failed;
    if (size > 0) {
        int n = s_seal (self, S_CT_APPDATA, iov, count, size, 0, out + used);
        if (n < 0)
            goto failed;
        used += n;
    }
    int rc = s_send (self, fd, out, (size_t) used);
    if (rc < 0)
        goto failed;
    if (rc > 0) {
        self->wtaken = (uint16_t) size;
        *retry = (uint32_t) size;
        errno = EAGAIN;
        return -1;
    }
    return (ssize_t) size;
failed:
    self->failed = true;
    errno = EPIPE;
    return -1;
}

//  --------------------------------------------------------------------------
//  Input waiting without the socket?
bool
wsr_tlsrec_pending (wsr_tlsrec_t *self)
{
    assert (self);
    if (self->pend > self->pstart || self->failed || self->eof)
        return true;
    size_t have = self->rend - self->rstart;
    if (have < S_HEADER)
        return false;
    const uint8_t *header = self->rbuf + self->rstart;
    size_t body = (size_t) header [3] << 8 | header [4];
    return have >= S_HEADER + body || body > S_CIPHER_MAX;
}

//  --------------------------------------------------------------------------
//  close_notify, best effort.
void
wsr_tlsrec_close (wsr_tlsrec_t *self, int fd)
{
    assert (self);
    if (self->failed || self->close_sent || self->wbuf)
        return;
    uint8_t msg [2] = { 1, S_AL_CLOSE_NOTIFY };
    uint8_t out [S_HEADER + 3 + S_TAG];
    struct iovec iov = { msg, sizeof msg };
    if (s_seal (self, S_CT_ALERT, &iov, 1, sizeof msg, 0, out) > 0)
        if (send (fd, out, sizeof out, MSG_NOSIGNAL | MSG_DONTWAIT)) {}
    self->close_sent = true;
}

//  --------------------------------------------------------------------------
//  Ask for a KeyUpdate before the next application data.
void
wsr_tlsrec_update (wsr_tlsrec_t *self, bool request)
{
    assert (self);
    if (request || !self->st.update)
        self->st.update = request? 2: 1;
}

//  --------------------------------------------------------------------------
//  The alert that ended the session.
int
wsr_tlsrec_alert (wsr_tlsrec_t *self)
{
    assert (self);
    return self->alert;
}

//  --------------------------------------------------------------------------
//  Serialise the state.
int
wsr_tlsrec_save (wsr_tlsrec_t *self, uint8_t *out, size_t size)
{
    assert (self);
    static_assert (sizeof (s_state_t) <= WSR_TLSREC_SAVED_MAX, "saved form too big");
    if (self->rbuf || self->wbuf || self->failed || self->eof || self->close_sent
    ||  size < sizeof (s_state_t))
        return -1;
    memcpy (out, &self->st, sizeof (s_state_t));
    return (int) sizeof (s_state_t);
}

//  --------------------------------------------------------------------------
//  Back from the saved form.
wsr_tlsrec_t *
wsr_tlsrec_load (const uint8_t *data, size_t size)
{
    s_state_t st;
    if (size != sizeof st)
        return NULL;
    memcpy (&st, data, sizeof st);
    wsr_tlsrec_t *self = NULL;
    if (st.version == S_VERSION && st.suite < S_SUITES && st.update <= 2
    &&  st.tx.seq <= S_UPDATE_RECORDS)
        self = (wsr_tlsrec_t *) zmalloc (sizeof (wsr_tlsrec_t));
    if (self) {
        self->st = st;
        self->alert = -1;
    }
    OPENSSL_cleanse (&st, sizeof st);
    return self;
}

//  --------------------------------------------------------------------------
//  Seal a record of any type (tests, fuzzer).
int
wsr_tlsrec_seal (wsr_tlsrec_t *self, uint8_t type, const void *data, size_t len,
                 size_t padding, uint8_t *out, size_t size)
{
    assert (self);
    if (len + 1 + padding + S_TAG > S_CIPHER_MAX || size < S_HEADER + len + 1 + padding + S_TAG)
        return -1;                      //  (len may exceed 2^14: tests of the peer's check)
    struct iovec iov = { (void *) data, len };
    return s_seal (self, type, &iov, 1, len, padding, out);
}

//  --------------------------------------------------------------------------
//  Selftest: real OpenSSL clients after real handshakes, for each suite;
//  then hostile records made with a second record layer playing the client.

//  Secrets the test server's keylog callback captured
static struct {
    uint8_t client [WSR_TLSREC_SECRET_MAX];
    uint8_t server [WSR_TLSREC_SECRET_MAX];
    size_t len;
} s_test_secrets;

static void
s_test_keylog (const SSL *ssl, const char *line)
{
    (void) ssl;
    uint8_t *target = NULL;
    if (strncmp (line, "CLIENT_TRAFFIC_SECRET_0 ", 24) == 0)
        target = s_test_secrets.client;
    else
    if (strncmp (line, "SERVER_TRAFFIC_SECRET_0 ", 24) == 0)
        target = s_test_secrets.server;
    if (!target)
        return;
    const char *hex = strchr (line + 24, ' ');
    assert (hex);
    hex++;
    assert (sodium_hex2bin (target, WSR_TLSREC_SECRET_MAX, hex, strlen (hex), NULL,
                            &s_test_secrets.len, NULL) == 0);
}

//  A TLS 1.3 handshake with suite over a socketpair; returns the record
//  layer for the server side (pair [0]) and the OpenSSL client (pair [1]).
static wsr_tlsrec_t *
s_test_handshake (const char *suite, const char *cert, const char *key, int *pair,
                  SSL **client_p)
{
    SSL_CTX *sctx = SSL_CTX_new (TLS_server_method ());
    SSL_CTX *cctx = SSL_CTX_new (TLS_client_method ());
    assert (sctx && cctx);
    SSL_CTX_set_min_proto_version (sctx, TLS1_3_VERSION);
    SSL_CTX_set_ciphersuites (sctx, suite);
    SSL_CTX_set_ciphersuites (cctx, suite);
    SSL_CTX_set_num_tickets (sctx, 0);
    SSL_CTX_set_keylog_callback (sctx, s_test_keylog);
    assert (SSL_CTX_use_certificate_chain_file (sctx, cert) == 1);
    assert (SSL_CTX_use_PrivateKey_file (sctx, key, SSL_FILETYPE_PEM) == 1);
    assert (socketpair (AF_UNIX, SOCK_STREAM | SOCK_NONBLOCK, 0, pair) == 0);
    SSL *server = SSL_new (sctx);
    SSL *client = SSL_new (cctx);
    SSL_set_fd (server, pair [0]);
    SSL_set_fd (client, pair [1]);
    SSL_set_accept_state (server);
    SSL_set_connect_state (client);
    int done = 0;
    for (int i = 0; i < 100 && done != 3; i++) {
        if (!(done & 1) && SSL_do_handshake (server) == 1)
            done |= 1;
        if (!(done & 2) && SSL_do_handshake (client) == 1)
            done |= 2;
    }
    assert (done == 3);
    assert (!SSL_has_pending (server));
    uint16_t id = SSL_CIPHER_get_protocol_id (SSL_get_current_cipher (server));
    wsr_tlsrec_t *rec = wsr_tlsrec_new (id, s_test_secrets.client, s_test_secrets.server,
                                        s_test_secrets.len);
    assert (rec);
    sodium_memzero (&s_test_secrets, sizeof s_test_secrets);
    SSL_free (server);
    SSL_CTX_free (sctx);
    SSL_CTX_free (cctx);                //  the client holds its own reference
    *client_p = client;
    return rec;
}

//  Read from the OpenSSL client until want bytes came, serving the record
//  layer's pending output meanwhile
static size_t
s_test_client_read (SSL *client, uint8_t *buf, size_t want)
{
    size_t got = 0;
    for (int i = 0; i < 10000 && got < want; i++) {
        int n = SSL_read (client, buf + got, (int) (want - got));
        if (n > 0)
            got += (size_t) n;
        else
            assert (SSL_get_error (client, n) == SSL_ERROR_WANT_READ);
    }
    return got;
}

//  Receive want bytes through the record layer
static size_t
s_test_rec_read (wsr_tlsrec_t *rec, int fd, uint8_t *buf, size_t want)
{
    size_t got = 0;
    for (int i = 0; i < 10000 && got < want; i++) {
        ssize_t n = wsr_tlsrec_recv (rec, fd, buf + got, want - got);
        if (n > 0)
            got += (size_t) n;
        else
            assert (n == -1 && errno == EAGAIN);
    }
    return got;
}

//  Both directions through the record layer against the OpenSSL client
static void
s_test_exchange (wsr_tlsrec_t *rec, int fd, SSL *client, size_t size)
{
    uint8_t *out = (uint8_t *) malloc (size);
    uint8_t *in = (uint8_t *) malloc (size);
    randombytes_buf (out, size);
    //  Server → client, as three iovecs, record by record
    size_t sent = 0, got = 0;
    uint32_t retry = 0;
    for (int i = 0; i < 10000 && got < size; i++) {
        struct iovec iov [3] = {
            { out + sent, (size - sent) / 3 }, { out + sent + (size - sent) / 3, 1 },
            { out + sent + (size - sent) / 3 + 1, size - sent - (size - sent) / 3 - 1 }
        };
        if (sent < size) {
            ssize_t n = wsr_tlsrec_writev (rec, fd, iov, 3, &retry);
            if (n > 0) {
                assert (n <= S_PLAIN_MAX);
                sent += (size_t) n;
            }
            else
                assert (n == -1 && errno == EAGAIN && retry > 0);
        }
        int n = SSL_read (client, in + got, (int) (size - got));
        if (n > 0)
            got += (size_t) n;
    }
    assert (got == size && memcmp (in, out, size) == 0);
    //  Client → server
    sent = got = 0;
    randombytes_buf (out, size);
    for (int i = 0; i < 10000 && got < size; i++) {
        if (sent < size) {
            int n = SSL_write (client, out + sent, (int) (size - sent));
            if (n > 0)
                sent += (size_t) n;
        }
        ssize_t n = wsr_tlsrec_recv (rec, fd, in + got, size - got);
        if (n > 0)
            got += (size_t) n;
        else
            assert (n == -1 && errno == EAGAIN);
    }
    assert (got == size && memcmp (in, out, size) == 0);
    free (out);
    free (in);
}

//  A pair of record layers over a socketpair with made-up secrets: the
//  "client" seals what the server opens
static void
s_test_pair (uint16_t suite, wsr_tlsrec_t **server, wsr_tlsrec_t **client, int *pair)
{
    uint8_t a [48], b [48];
    randombytes_buf (a, sizeof a);
    randombytes_buf (b, sizeof b);
    size_t len = suite == 0x1302? 48: 32;
    *server = wsr_tlsrec_new (suite, a, b, len);
    *client = wsr_tlsrec_new (suite, b, a, len);
    assert (*server && *client);
    assert (socketpair (AF_UNIX, SOCK_STREAM | SOCK_NONBLOCK, 0, pair) == 0);
}

static void
s_test_pair_end (wsr_tlsrec_t **server, wsr_tlsrec_t **client, int *pair)
{
    wsr_tlsrec_destroy (server);
    wsr_tlsrec_destroy (client);
    close (pair [0]);
    close (pair [1]);
}

//  The server record layer, fed bytes, fails with alert (and says so to
//  the client, whose own record layer reads the alert, unless the alert
//  came from the client)
static void
s_test_rejects (const uint8_t *bytes, size_t size, int alert, bool answered,
                wsr_tlsrec_t *server, wsr_tlsrec_t *client, int *pair)
{
    assert (write (pair [1], bytes, size) == (ssize_t) size);
    uint8_t buf [64];
    memset (buf, 0xAA, sizeof buf);
    assert (wsr_tlsrec_recv (server, pair [0], buf, sizeof buf) == -1 && errno == ECONNRESET);
    for (size_t i = 0; i < sizeof buf; i++)
        assert (buf [i] == 0xAA);       //  no plaintext leaked
    assert (wsr_tlsrec_alert (server) == alert);
    //  Dead from now on, both ways
    assert (wsr_tlsrec_recv (server, pair [0], buf, sizeof buf) == -1 && errno == ECONNRESET);
    uint32_t retry = 0;
    struct iovec iov = { buf, 1 };
    assert (wsr_tlsrec_writev (server, pair [0], &iov, 1, &retry) == -1 && errno == EPIPE);
    //  The client got a fatal alert it can read
    if (answered) {
        assert (wsr_tlsrec_recv (client, pair [1], buf, sizeof buf) == -1
                && errno == ECONNRESET);
        assert (wsr_tlsrec_alert (client) == alert);
    }
}

//  One crafted record from the client, expected to fail with alert
static void
s_test_bad_record (uint16_t suite, uint8_t type, const void *data, size_t len, size_t padding,
                   int alert)
{
    wsr_tlsrec_t *server, *client;
    int pair [2];
    s_test_pair (suite, &server, &client, pair);
    static uint8_t record [WSR_TLSREC_RECORD_MAX];
    int n = wsr_tlsrec_seal (client, type, data, len, padding, record, sizeof record);
    assert (n > 0);
    s_test_rejects (record, (size_t) n, alert, true, server, client, pair);
    s_test_pair_end (&server, &client, pair);
}

void
wsr_tlsrec_test (bool verbose)
{
    (void) verbose;
    char dir [] = "/tmp/wsr-tlsrec-XXXXXX";
    assert (mkdtemp (dir));
    char cert [64], key [64];
    snprintf (cert, sizeof cert, "%s/cert.pem", dir);
    snprintf (key, sizeof key, "%s/key.pem", dir);
    assert (wsr_tls_make_test_cert (cert, key, "rec") == 0);

    assert (!wsr_tlsrec_supported (0x1304));        //  AES-128-CCM: OpenSSL's path
    uint8_t secret [48] = { 1 };
    assert (wsr_tlsrec_new (0x1301, secret, secret, 48) == NULL);   //  wrong length
    assert (wsr_tlsrec_new (0x1304, secret, secret, 32) == NULL);

    const char *names [S_SUITES] = {
        "TLS_AES_128_GCM_SHA256", "TLS_AES_256_GCM_SHA384", "TLS_CHACHA20_POLY1305_SHA256"
    };
    for (int s = 0; s < S_SUITES; s++) {
        int pair [2];
        SSL *client;
        wsr_tlsrec_t *rec = s_test_handshake (names [s], cert, key, pair, &client);
        assert (rec->st.suite == s);
        uint8_t buf [100];

        //  Nothing yet; then a small record read in two pieces
        assert (wsr_tlsrec_recv (rec, pair [0], buf, sizeof buf) == -1 && errno == EAGAIN);
        assert (!rec->rbuf);            //  idle: no buffer
        assert (SSL_write (client, "hello, world", 12) == 12);
        assert (wsr_tlsrec_recv (rec, pair [0], buf, 5) == 5 && memcmp (buf, "hello", 5) == 0);
        assert (wsr_tlsrec_pending (rec));
        assert (wsr_tlsrec_recv (rec, pair [0], buf, sizeof buf) == 7);
        assert (memcmp (buf, ", world", 7) == 0);
        assert (!wsr_tlsrec_pending (rec) && !rec->rbuf);
        //  Two records in one read: the second is pending
        assert (SSL_write (client, "one", 3) == 3 && SSL_write (client, "two", 3) == 3);
        assert (wsr_tlsrec_recv (rec, pair [0], buf, sizeof buf) == 3);
        assert (wsr_tlsrec_pending (rec));
        assert (wsr_tlsrec_recv (rec, pair [0], buf, sizeof buf) == 3);
        assert (memcmp (buf, "two", 3) == 0);

        //  Many records both ways, through socket back-pressure
        s_test_exchange (rec, pair [0], client, 300000);
        assert (!rec->rbuf && !rec->wbuf);

        //  Client KeyUpdate asking for ours: we answer before our next data
        assert (SSL_key_update (client, SSL_KEY_UPDATE_REQUESTED) == 1);
        assert (SSL_write (client, "ku", 2) == 2);
        assert (s_test_rec_read (rec, pair [0], buf, 2) == 2 && memcmp (buf, "ku", 2) == 0);
        assert (rec->st.rx.seq == 1 && rec->st.update == 1);
        uint32_t retry = 0;
        struct iovec iov = { (void *) "ack", 3 };
        assert (wsr_tlsrec_writev (rec, pair [0], &iov, 1, &retry) == 3);
        assert (rec->st.tx.seq == 1 && rec->st.update == 0);
        assert (s_test_client_read (client, buf, 3) == 3 && memcmp (buf, "ack", 3) == 0);
        s_test_exchange (rec, pair [0], client, 50000);
        //  Client KeyUpdate not requesting ours
        assert (SSL_key_update (client, SSL_KEY_UPDATE_NOT_REQUESTED) == 1);
        assert (SSL_write (client, "nr", 2) == 2);
        assert (s_test_rec_read (rec, pair [0], buf, 2) == 2);
        assert (rec->st.update == 0 && rec->st.rx.seq == 1);
        //  Ours, requesting the client's: OpenSSL answers on its next write
        wsr_tlsrec_update (rec, true);
        uint64_t tx_before = rec->st.tx.seq;
        s_test_exchange (rec, pair [0], client, 50000);
        assert (rec->st.tx.seq < tx_before + 10);   //  new keys, fresh count
        s_test_exchange (rec, pair [0], client, 1000);

        //  Saved and loaded mid-session (a process upgrade): still talking
        uint8_t saved [WSR_TLSREC_SAVED_MAX];
        int saved_len = wsr_tlsrec_save (rec, saved, sizeof saved);
        assert (saved_len > 0 && saved_len <= WSR_TLSREC_SAVED_MAX);
        assert (wsr_tlsrec_save (rec, saved, 10) == -1);
        wsr_tlsrec_destroy (&rec);
        assert (wsr_tlsrec_load (saved, (size_t) saved_len - 1) == NULL);
        saved [1] = 7;                  //  no such suite
        assert (wsr_tlsrec_load (saved, (size_t) saved_len) == NULL);
        saved [1] = (uint8_t) s;
        rec = wsr_tlsrec_load (saved, (size_t) saved_len);
        sodium_memzero (saved, sizeof saved);
        assert (rec);
        s_test_exchange (rec, pair [0], client, 20000);
        //  Buffered bytes: not saved
        assert (SSL_write (client, "abc", 3) == 3);
        assert (wsr_tlsrec_recv (rec, pair [0], buf, 1) == 1);
        assert (wsr_tlsrec_save (rec, saved, sizeof saved) == -1);
        assert (wsr_tlsrec_recv (rec, pair [0], buf, 2) == 2);

        //  Our close_notify: the client sees a clean close
        wsr_tlsrec_close (rec, pair [0]);
        int n = SSL_read (client, buf, sizeof buf);
        assert (n <= 0 && SSL_get_error (client, n) == SSL_ERROR_ZERO_RETURN);
        //  The client's: 0, and 0 again
        SSL_shutdown (client);
        assert (wsr_tlsrec_recv (rec, pair [0], buf, sizeof buf) == 0);
        assert (wsr_tlsrec_recv (rec, pair [0], buf, sizeof buf) == 0);
        assert (wsr_tlsrec_alert (rec) == S_AL_CLOSE_NOTIFY);
        wsr_tlsrec_destroy (&rec);
        wsr_tlsrec_destroy (&rec);      //  safe on NULL
        SSL_free (client);
        close (pair [0]);
        close (pair [1]);
    }

    //  Hostile and broken input, each suite
    for (int s = 0; s < S_SUITES; s++) {
        uint16_t suite = s_suites [s].id;
        wsr_tlsrec_t *server, *client;
        int pair [2];
        static uint8_t record [WSR_TLSREC_RECORD_MAX + 16];
        uint8_t buf [64];
        uint32_t retry_flood = 0;

        //  A record fed byte by byte; a zero-length record; padding
        s_test_pair (suite, &server, &client, pair);
        int n = wsr_tlsrec_seal (client, S_CT_APPDATA, "drip", 4, 3, record, sizeof record);
        assert (n == S_HEADER + 4 + 1 + 3 + S_TAG);
        for (int i = 0; i < n - 1; i++) {
            assert (write (pair [1], record + i, 1) == 1);
            assert (wsr_tlsrec_recv (server, pair [0], buf, sizeof buf) == -1 && errno == EAGAIN);
            assert (server->rbuf);      //  the partial record is kept
        }
        assert (write (pair [1], record + n - 1, 1) == 1);
        assert (wsr_tlsrec_recv (server, pair [0], buf, sizeof buf) == 4);
        assert (memcmp (buf, "drip", 4) == 0);
        n = wsr_tlsrec_seal (client, S_CT_APPDATA, "", 0, 0, record, sizeof record);
        assert (write (pair [1], record, (size_t) n) == n);
        assert (wsr_tlsrec_recv (server, pair [0], buf, sizeof buf) == -1 && errno == EAGAIN);
        //  The most padding a record can carry; the largest content
        static uint8_t big [S_PLAIN_MAX + 1];
        n = wsr_tlsrec_seal (client, S_CT_APPDATA, "p", 1, S_CIPHER_MAX - S_TAG - 2,
                             record, sizeof record);
        assert (n == WSR_TLSREC_RECORD_MAX);
        assert (write (pair [1], record, (size_t) n) == n);
        assert (wsr_tlsrec_recv (server, pair [0], buf, sizeof buf) == 1 && buf [0] == 'p');
        n = wsr_tlsrec_seal (client, S_CT_APPDATA, big, S_PLAIN_MAX, 0, record, sizeof record);
        assert (write (pair [1], record, (size_t) n) == n);
        assert (s_test_rec_read (server, pair [0], big, S_PLAIN_MAX) == S_PLAIN_MAX);
        //  Records without data: a run of 32 is fine, 33 is a flood
        for (int i = 0; i < S_EMPTY_MAX; i++) {
            n = wsr_tlsrec_seal (client, S_CT_APPDATA, "", 0, 0, record, sizeof record);
            assert (write (pair [1], record, (size_t) n) == n);
        }
        n = wsr_tlsrec_seal (client, S_CT_APPDATA, "!", 1, 0, record, sizeof record);
        assert (write (pair [1], record, (size_t) n) == n);
        assert (wsr_tlsrec_recv (server, pair [0], buf, sizeof buf) == 1 && buf [0] == '!');
        //  user_canceled is ignored, close_notify is the end
        uint8_t alert [2] = { 1, S_AL_USER_CANCELED };
        n = wsr_tlsrec_seal (client, S_CT_ALERT, alert, 2, 0, record, sizeof record);
        assert (write (pair [1], record, (size_t) n) == n);
        alert [1] = S_AL_CLOSE_NOTIFY;
        n = wsr_tlsrec_seal (client, S_CT_ALERT, alert, 2, 0, record, sizeof record);
        assert (write (pair [1], record, (size_t) n) == n);
        assert (wsr_tlsrec_recv (server, pair [0], buf, sizeof buf) == 0);
        s_test_pair_end (&server, &client, pair);

        //  Tampered: every part of the record (header length aside)
        for (int at = 0; at < 5 + 3 + 1 + S_TAG; at++) {
            if (at == 3 || at == 4)
                continue;
            s_test_pair (suite, &server, &client, pair);
            n = wsr_tlsrec_seal (client, S_CT_APPDATA, "abc", 3, 0, record, sizeof record);
            record [at] ^= 0x01;
            s_test_rejects (record, (size_t) n, at == 0? S_AL_UNEXPECTED: S_AL_BAD_RECORD_MAC,
                            true, server, client, pair);
            s_test_pair_end (&server, &client, pair);
        }
        //  Replayed record (sequence numbers): bad_record_mac
        s_test_pair (suite, &server, &client, pair);
        n = wsr_tlsrec_seal (client, S_CT_APPDATA, "abc", 3, 0, record, sizeof record);
        assert (write (pair [1], record, (size_t) n) == n);
        assert (wsr_tlsrec_recv (server, pair [0], buf, sizeof buf) == 3);
        s_test_rejects (record, (size_t) n, S_AL_BAD_RECORD_MAC, true, server, client, pair);
        s_test_pair_end (&server, &client, pair);
        //  Truncated: EOF inside a record is an error, between records is EOF
        s_test_pair (suite, &server, &client, pair);
        n = wsr_tlsrec_seal (client, S_CT_APPDATA, "abc", 3, 0, record, sizeof record);
        assert (write (pair [1], record, (size_t) n - 1) == n - 1);
        shutdown (pair [1], SHUT_WR);
        assert (wsr_tlsrec_recv (server, pair [0], buf, sizeof buf) == -1 && errno == ECONNRESET);
        s_test_pair_end (&server, &client, pair);
        s_test_pair (suite, &server, &client, pair);
        shutdown (pair [1], SHUT_WR);
        assert (wsr_tlsrec_recv (server, pair [0], buf, sizeof buf) == 0);
        s_test_pair_end (&server, &client, pair);
        //  Header too short to hold a tag; too long; not application_data
        s_test_pair (suite, &server, &client, pair);
        uint8_t header [5] = { S_CT_APPDATA, 3, 3, 0, S_TAG };
        s_test_rejects (header, 5, S_AL_DECODE_ERROR, true, server, client, pair);
        s_test_pair_end (&server, &client, pair);
        s_test_pair (suite, &server, &client, pair);
        header [3] = (uint8_t) ((S_CIPHER_MAX + 1) >> 8);
        header [4] = (uint8_t) (S_CIPHER_MAX + 1);
        s_test_rejects (header, 5, S_AL_RECORD_OVERFLOW, true, server, client, pair);
        s_test_pair_end (&server, &client, pair);
        s_test_pair (suite, &server, &client, pair);
        uint8_t ccs [6] = { S_CT_CCS, 3, 3, 0, 1, 1 };
        s_test_rejects (ccs, 6, S_AL_UNEXPECTED, true, server, client, pair);
        s_test_pair_end (&server, &client, pair);
        //  Content over 2^14; no content type (all zeros); unknown types
        s_test_bad_record (suite, S_CT_APPDATA, big, S_PLAIN_MAX + 1, 0, S_AL_RECORD_OVERFLOW);
        s_test_bad_record (suite, 0, "", 0, 10, S_AL_UNEXPECTED);
        s_test_bad_record (suite, S_CT_CCS, "\x01", 1, 0, S_AL_UNEXPECTED);
        s_test_bad_record (suite, 99, "x", 1, 0, S_AL_UNEXPECTED);
        //  Handshake messages: only KeyUpdate, whole, last, with 0 or 1
        s_test_bad_record (suite, S_CT_HANDSHAKE, "", 0, 0, S_AL_UNEXPECTED);
        s_test_bad_record (suite, S_CT_HANDSHAKE, "\x04\x00\x00\x01\x00", 5, 0,
                           S_AL_UNEXPECTED);
        s_test_bad_record (suite, S_CT_HANDSHAKE, "\x18\x00\x00\x01\x02", 5, 0,
                           S_AL_ILLEGAL_PARAMETER);
        s_test_bad_record (suite, S_CT_HANDSHAKE, "\x18\x00\x00\x02\x00\x00", 6, 0,
                           S_AL_DECODE_ERROR);
        s_test_bad_record (suite, S_CT_HANDSHAKE, "\x18\x00\x00\x01", 4, 0, S_AL_UNEXPECTED);
        s_test_bad_record (suite, S_CT_HANDSHAKE, "\x18\x00\x00\x01\x00\x17", 6, 0,
                           S_AL_UNEXPECTED);
        //  Alerts: two bytes; a fatal one from the peer is not answered
        s_test_bad_record (suite, S_CT_ALERT, "\x01", 1, 0, S_AL_DECODE_ERROR);
        s_test_pair (suite, &server, &client, pair);
        n = wsr_tlsrec_seal (client, S_CT_ALERT, "\x02\x28", 2, 0, record, sizeof record);
        s_test_rejects (record, (size_t) n, 40, false, server, client, pair);
        s_test_pair_end (&server, &client, pair);

        //  A flood of KeyUpdates (or empty records): unexpected_message
        s_test_pair (suite, &server, &client, pair);
        for (int i = 0; i <= S_EMPTY_MAX; i++) {
            wsr_tlsrec_update (client, false);
            assert (wsr_tlsrec_writev (client, pair [1], NULL, 0, &retry_flood) == 0);
        }
        assert (wsr_tlsrec_recv (server, pair [0], buf, sizeof buf) == -1 && errno == ECONNRESET);
        assert (wsr_tlsrec_alert (server) == S_AL_UNEXPECTED);
        s_test_pair_end (&server, &client, pair);

        //  Our KeyUpdate every 2^24 records: the peer follows
        s_test_pair (suite, &server, &client, pair);
        server->st.tx.seq = S_UPDATE_RECORDS - 1;
        uint32_t retry = 0;
        struct iovec iov = { (void *) "last", 4 };
        assert (wsr_tlsrec_writev (server, pair [0], &iov, 1, &retry) == 4);
        assert (server->st.update == 1);
        iov.iov_base = (void *) "next";
        assert (wsr_tlsrec_writev (server, pair [0], &iov, 1, &retry) == 4);
        assert (server->st.tx.seq == 1 && server->st.update == 0);
        client->st.rx.seq = S_UPDATE_RECORDS - 1;
        assert (s_test_rec_read (client, pair [1], buf, 8) == 8);
        assert (memcmp (buf, "lastnext", 8) == 0 && client->st.rx.seq == 1);
        s_test_pair_end (&server, &client, pair);
    }

    unlink (cert);
    unlink (key);
    rmdir (dir);
}
