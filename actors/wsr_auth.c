//  wsr_auth — the auth actor: verifies tokens, hands sessions to workers
//
//  Takes AUTH from the listener (a TCP connection whose upgrade request is
//  complete), verifies the JWT (HS256 or EdDSA, see wsr_jwt) and sends ADOPT
//  to a session worker (round robin by connection id) with the verdict: 0 and
//  the user's id and channels, or 1008 and a short reason. The worker writes
//  the 101 response either way; a refused session is then closed with 1008
//  and the reason (README, Limits). Verification never runs on a session
//  thread, and a slow signature check never delays sessions.
//
//  The descriptor travels inside the messages: the listener gives it up when
//  it sends AUTH, auth gives it up when it sends ADOPT; whoever fails to send
//  closes it. A TLS session (wsr_tlsconn_t *) travels with its descriptor and has the
//  same owner; whoever closes the fd frees it first (wsr_tls_free).
//
//  Sockets (owned):
//    pipe                          PAIR  commands: START, $TERM
//    inproc://wsr-auth-NAME        PULL  bind; AUTH from the listener
//    inproc://wsr-adopt-NAME-N     PUSH  connect, one per worker; ADOPT

#include "wsr_classes.h"

struct _wsr_auth_t {
    zactor_t *actor;                //  the auth thread
};

typedef struct {
    char *name;                     //  node instance name
    int workers;                    //  session workers
    wsr_jwt_t *verifier;            //  handed to the actor, which owns it
    wsr_metrics_t *metrics;         //  shared counters (not owned)
    wsr_ipcount_t *ipcount;         //  per-IP counters (not owned)
} s_args_t;

typedef struct {
    zsock_t *pipe;                  //  actor pipe (not owned)
    zsock_t *in;                    //  PULL AUTH
    zsock_t *out [WSR_MAX_WORKERS]; //  PUSH ADOPT per worker
    int workers;                    //  entries in out
    wsr_jwt_t *verifier;            //  token verifier (owned)
    wsr_metrics_t *metrics;         //  shared counters
    wsr_ipcount_t *ipcount;         //  per-IP counters
    int status;                     //  init result
} s_auth_t;

//  Which handshake-failure counter a verifier reason belongs to.
static wsr_metric_t
s_reason_metric (const char *reason)
{
    if (streq (reason, "token missing"))
        return WSR_M_HS_FAIL_TOKEN_MISSING;
    if (streq (reason, "token expired") || streq (reason, "token not yet valid")
    ||  streq (reason, "iat in future") || streq (reason, "exp missing"))
        return WSR_M_HS_FAIL_TOKEN_EXPIRED;
    if (strstr (reason, "sub ") == reason || strstr (reason, "channels ") == reason)
        return WSR_M_HS_FAIL_CLAIMS;
    return WSR_M_HS_FAIL_TOKEN_INVALID;
}

//  --------------------------------------------------------------------------
//  Judge an upgrade's token and send ADOPT with the verdict to a worker.
int
wsr_auth_judge (wsr_jwt_t *verifier, wsr_metrics_t *metrics, zsock_t *out, uint64_t id,
                int fd, int ip_slot, int flags, const char *accept, const char *peer,
                const char *token, size_t token_len, zframe_t *early, void *tls)
{
    assert (verifier && metrics && out && accept && peer && early);
    wsr_claims_t claims;
    const char *reason = NULL;
    int code = 0;
    int rc = wsr_jwt_verify (verifier, token? token: "", token? token_len: 0,
                             (int64_t) time (NULL), &claims, &reason);
    char channels [WSR_MAX_CHANNELS * (WSR_MAX_ID_LEN + 1) + 1] = "";
    if (rc == 0) {
        size_t used = 0;
        for (size_t i = 0; i < claims.channels_count; i++)
            used += (size_t) snprintf (channels + used, sizeof channels - used, "%s%s",
                                       i? ",": "", claims.channels [i]);
        reason = "";
    }
    else {
        code = 1008;
        claims.sub [0] = 0;
        wsr_metrics_add (metrics, s_reason_metric (reason), 1);
        wsr_debug ("auth: conn %" PRIu64 " from %s refused: %s", id, peer, reason);
    }
    //  The session ends at exp plus the leeway the verifier allowed
    uint64_t expiry = rc == 0 && claims.exp > 0
                    ? (uint64_t) claims.exp + (uint64_t) wsr_jwt_leeway (verifier): 0;
    char response [384];
    snprintf (response, sizeof response, "HTTP/1.1 101 Switching Protocols\r\n"
              "Upgrade: websocket\r\nConnection: Upgrade\r\n"
              "Sec-WebSocket-Accept: %s\r\n%s%s\r\n", accept,
              (flags & WSR_ADOPT_V1)? "Sec-WebSocket-Protocol: " WSR_V1_SUBPROTOCOL "\r\n": "",
              (flags & WSR_ADOPT_DEFLATE)? WSR_DEFLATE_RESPONSE: "");
    rc = zsock_send (out, WSR_PIC_ADOPT, WSR_MSG_ADOPT, id, fd, code, ip_slot,
                     expiry, flags, reason, claims.sub, channels, response, early, tls);
    sodium_memzero (&claims, sizeof claims);
    return rc == -1? -1: 0;
}

static void
s_handle_auth (s_auth_t *self)
{
    char *command = NULL, *accept = NULL, *peer = NULL;
    uint64_t id = 0;
    int fd = -1, ip_slot = -1, flags = 0;
    zframe_t *token = NULL, *early = NULL;
    void *tls = NULL;
    if (zsock_recv (self->in, WSR_PIC_AUTH, &command, &id, &fd, &ip_slot, &flags, &accept,
                    &peer, &token, &early, &tls) == -1)
        return;
    assert (streq (command, WSR_MSG_AUTH));
    zsock_t *out = self->out [wsr_msgs_worker_for (id, self->workers)];
    if (wsr_auth_judge (self->verifier, self->metrics, out, id, fd, ip_slot, flags, accept,
                        peer, (const char *) zframe_data (token), zframe_size (token),
                        early, tls) == -1) {
        //  Worker saturated: shed this connection, keep the node healthy
        wsr_tlsconn_t *ssl = (wsr_tlsconn_t *) tls;
        wsr_tls_free (&ssl);
        close (fd);
        if (ip_slot >= 0)
            wsr_ipcount_release (self->ipcount, ip_slot);
        wsr_metrics_add (self->metrics, WSR_M_HS_FAIL_CAPACITY, 1);
        wsr_metrics_add (self->metrics, WSR_M_CONNECTIONS_OPEN, -1);
    }
    zstr_free (&command);
    zstr_free (&accept);
    zstr_free (&peer);
    zframe_destroy (&token);
    zframe_destroy (&early);
}

static void
s_auth_actor (zsock_t *pipe, void *args)
{
    s_args_t *a = (s_args_t *) args;
    s_auth_t self = { 0 };
    self.pipe = pipe;
    self.verifier = a->verifier;
    self.metrics = a->metrics;
    self.ipcount = a->ipcount;
    self.workers = a->workers;
    pthread_setname_np (pthread_self (), "wsr-auth");
    self.in = zsock_new (ZMQ_PULL);
    assert (self.in);
    zsock_set_rcvhwm (self.in, WSR_HWM);
    self.status = zsock_bind (self.in, WSR_EP_AUTH, a->name) == -1? -1: 0;
    for (int i = 0; i < self.workers; i++) {
        self.out [i] = zsock_new (ZMQ_PUSH);
        assert (self.out [i]);
        zsock_set_sndhwm (self.out [i], WSR_HWM);
        zsock_set_sndtimeo (self.out [i], 0);
        zsock_set_linger (self.out [i], 0);
        if (zsock_connect (self.out [i], WSR_EP_ADOPT, a->name, i) == -1)
            self.status = -1;
    }
    zsock_signal (pipe, 0);

    zpoller_t *poller = zpoller_new (pipe, self.in, NULL);
    zpoller_set_nonstop (poller, true);
    while (true) {
        zsock_t *which = (zsock_t *) zpoller_wait (poller, -1);
        if (which == pipe) {
            char *command = zstr_recv (pipe);
            if (!command)
                break;
            bool term = streq (command, "$TERM");
            if (streq (command, WSR_CMD_START))
                zsock_send (pipe, "i", self.status);
            else
                assert (term);
            zstr_free (&command);
            if (term)
                break;
        }
        else
        if (which == self.in) {
            //  Drain a batch before polling again
            for (int budget = WSR_WORKER_BUDGET;
                 budget > 0 && (zsock_events (self.in) & ZMQ_POLLIN); budget--)
                s_handle_auth (&self);
        }
    }
    zpoller_destroy (&poller);
    //  Connections still queued to us: destroying the socket would free the
    //  messages but leak the descriptors they carry
    zsock_set_rcvtimeo (self.in, 0);
    char *command = NULL, *accept = NULL, *peer = NULL;
    uint64_t id = 0;
    int fd = -1, ip_slot = -1, flags = 0;
    zframe_t *token = NULL, *early = NULL;
    void *tls = NULL;
    while (zsock_recv (self.in, WSR_PIC_AUTH, &command, &id, &fd, &ip_slot, &flags, &accept,
                       &peer, &token, &early, &tls) == 0) {
        wsr_tlsconn_t *ssl = (wsr_tlsconn_t *) tls;
        wsr_tls_free (&ssl);
        close (fd);
        if (ip_slot >= 0)
            wsr_ipcount_release (self.ipcount, ip_slot);
        wsr_metrics_add (self.metrics, WSR_M_CONNECTIONS_OPEN, -1);
        zstr_free (&command);
        zstr_free (&accept);
        zstr_free (&peer);
        zframe_destroy (&token);
        zframe_destroy (&early);
    }
    zsock_destroy (&self.in);
    for (int i = 0; i < self.workers; i++)
        zsock_destroy (&self.out [i]);
    wsr_jwt_destroy (&self.verifier);
}

//  --------------------------------------------------------------------------
//  Start the auth actor; takes the verifier.
wsr_auth_t *
wsr_auth_new (const char *name, int workers, wsr_jwt_t **verifier_p, wsr_metrics_t *metrics,
              wsr_ipcount_t *ipcount)
{
    assert (name && verifier_p && *verifier_p && metrics && ipcount);
    assert (workers > 0 && workers <= WSR_MAX_WORKERS);
    s_args_t args = { (char *) name, workers, *verifier_p, metrics, ipcount };
    *verifier_p = NULL;
    wsr_auth_t *self = (wsr_auth_t *) zmalloc (sizeof (wsr_auth_t));
    self->actor = wsr_util_actor_start (s_auth_actor, &args);
    if (!self->actor)
        wsr_auth_destroy (&self);
    return self;
}

//  --------------------------------------------------------------------------
//  Stop the actor.
void
wsr_auth_destroy (wsr_auth_t **self_p)
{
    assert (self_p);
    if (*self_p) {
        wsr_auth_t *self = *self_p;
        zactor_destroy (&self->actor);
        free (self);
        *self_p = NULL;
    }
}

//  --------------------------------------------------------------------------
//  Selftest: the test plays the listener (AUTH) and two workers (ADOPT).

static void
s_send_auth_flags (zsock_t *listener, uint64_t id, int fd, const char *token, int flags)
{
    zframe_t *tok = zframe_new (token, token? strlen (token): 0);
    zframe_t *early = zframe_new ("E", 1);
    zsock_send (listener, WSR_PIC_AUTH, WSR_MSG_AUTH, id, fd, 7, flags, "ACCEPT", "127.0.0.1:1",
                tok, early, (void *) NULL);
    zframe_destroy (&tok);
    zframe_destroy (&early);
}

static void
s_send_auth (zsock_t *listener, uint64_t id, int fd, const char *token)
{
    s_send_auth_flags (listener, id, fd, token, 0);
}

//  Receive one ADOPT on worker and check the verdict and the subprotocol.
static void
s_expect_adopt_flags (zsock_t *worker, uint64_t want_id, int want_fd, int want_code,
                      const char *want_reason, const char *want_user, const char *want_channels,
                      int want_flags)
{
    zpoller_t *poller = zpoller_new (worker, NULL);
    assert (zpoller_wait (poller, 2000) == worker);
    zpoller_destroy (&poller);
    char *command, *reason, *user, *channels, *response;
    uint64_t id, expiry;
    int fd, code, ip_slot, flags;
    zframe_t *early;
    void *tls = (void *) 1;
    assert (zsock_recv (worker, WSR_PIC_ADOPT, &command, &id, &fd, &code, &ip_slot, &expiry,
                        &flags, &reason, &user, &channels, &response, &early, &tls) == 0);
    assert (ip_slot == 7);          //  passed through untouched
    assert (tls == NULL);           //  plain TCP in these tests
    assert (flags == want_flags);
    //  The 101 names the subprotocol and the extension exactly when offered
    assert (!strstr (response, "Sec-WebSocket-Protocol: wsrouter.v1\r\n")
            == !(want_flags & WSR_ADOPT_V1));
    assert (!strstr (response, WSR_DEFLATE_RESPONSE) == !(want_flags & WSR_ADOPT_DEFLATE));
    //  The token's expiry travels with an accepted session only
    //  (every token of this test expires 60 s after it was minted): exp
    //  plus the leeway, the deadline the session worker enforces
    uint64_t least = (uint64_t) time (NULL) + 60 + WSR_JWT_LEEWAY_S - 5;
    assert (code == 0? expiry >= least && expiry <= least + 5: expiry == 0);
    assert (streq (command, WSR_MSG_ADOPT));
    assert (id == want_id && fd == want_fd && code == want_code);
    assert (streq (reason, want_reason));
    assert (streq (user, want_user));
    assert (streq (channels, want_channels));
    assert (strstr (response, "HTTP/1.1 101 Switching Protocols\r\n") == response);
    assert (strstr (response, "\r\nSec-WebSocket-Accept: ACCEPT\r\n"));
    size_t response_len = strlen (response);
    assert (response_len > 4 && streq (response + response_len - 4, "\r\n\r\n"));
    assert (zframe_size (early) == 1);
    zstr_free (&command);
    zstr_free (&reason);
    zstr_free (&user);
    zstr_free (&channels);
    zstr_free (&response);
    zframe_destroy (&early);
}

static void
s_expect_adopt (zsock_t *worker, uint64_t want_id, int want_fd, int want_code,
                const char *want_reason, const char *want_user, const char *want_channels)
{
    s_expect_adopt_flags (worker, want_id, want_fd, want_code, want_reason, want_user,
                          want_channels, 0);
}

void
wsr_auth_test (bool verbose)
{
    (void) verbose;
    const char *secret = "auth-test-secret";
    wsr_metrics_t *metrics = wsr_metrics_new ();
    wsr_ipcount_t *ipcount = wsr_ipcount_new (0);
    zsock_t *w0 = zsock_new_pull ("inproc://wsr-adopt-atest-0");
    zsock_t *w1 = zsock_new_pull ("inproc://wsr-adopt-atest-1");
    wsr_jwt_t *verifier = wsr_jwt_new_hs256 ((const uint8_t *) secret, strlen (secret));
    wsr_auth_t *auth = wsr_auth_new ("atest", 2, &verifier, metrics, ipcount);
    assert (auth && verifier == NULL);
    zsock_t *listener = zsock_new_push ("inproc://wsr-auth-atest");

    int64_t now = (int64_t) time (NULL);
    char *good = wsr_jwt_mint_hs256 ((const uint8_t *) secret, strlen (secret), "u1", now,
                                     now + 60, "room.7,lobby");
    char *expired = wsr_jwt_mint_hs256 ((const uint8_t *) secret, strlen (secret), "u1",
                                        now - 7200, now - 3600, NULL);
    char *forged = wsr_jwt_mint_hs256 ((const uint8_t *) "other", 5, "u1", now, now + 60, NULL);
    //  alg none: header {"alg":"none"} with the good token's payload
    char none [WSR_MAX_TOKEN_LEN];
    const char *payload = strchr (good, '.') + 1;
    size_t payload_len = (size_t) (strchr (payload, '.') - payload);
    snprintf (none, sizeof none, "eyJhbGciOiJub25lIn0.%.*s.", (int) payload_len, payload);
    //  wrong alg: HS512 header, otherwise valid HS256 signature over it
    const char *hs512_header = "eyJhbGciOiJIUzUxMiIsInR5cCI6IkpXVCJ9";

    //  Even ids go to worker 0, odd ones to worker 1
    s_send_auth (listener, 10, 100, good);
    s_expect_adopt (w0, 10, 100, 0, "", "u1", "room.7,lobby");
    s_send_auth (listener, 11, 101, good);
    s_expect_adopt (w1, 11, 101, 0, "", "u1", "room.7,lobby");
    s_send_auth_flags (listener, 22, 112, good, WSR_ADOPT_V1);
    s_expect_adopt_flags (w0, 22, 112, 0, "", "u1", "room.7,lobby", WSR_ADOPT_V1);
    s_send_auth_flags (listener, 24, 114, good, WSR_ADOPT_DEFLATE | WSR_ADOPT_V1);
    s_expect_adopt_flags (w0, 24, 114, 0, "", "u1", "room.7,lobby",
                          WSR_ADOPT_DEFLATE | WSR_ADOPT_V1);
    s_send_auth (listener, 12, 102, expired);
    s_expect_adopt (w0, 12, 102, 1008, "token expired", "", "");
    s_send_auth (listener, 14, 104, forged);
    s_expect_adopt (w0, 14, 104, 1008, "bad signature", "", "");
    s_send_auth (listener, 16, 106, none);
    s_expect_adopt (w0, 16, 106, 1008, "token malformed", "", "");
    s_send_auth (listener, 18, 108, NULL);
    s_expect_adopt (w0, 18, 108, 1008, "token missing", "", "");
    char wrong_alg [WSR_MAX_TOKEN_LEN];
    snprintf (wrong_alg, sizeof wrong_alg, "%s.%.*s.AAAA", hs512_header,
              (int) payload_len, payload);
    s_send_auth (listener, 20, 110, wrong_alg);
    s_expect_adopt (w0, 20, 110, 1008, "alg not allowed", "", "");

    assert (wsr_metrics_get (metrics, WSR_M_HS_FAIL_TOKEN_EXPIRED) == 1);
    assert (wsr_metrics_get (metrics, WSR_M_HS_FAIL_TOKEN_MISSING) == 1);
    assert (wsr_metrics_get (metrics, WSR_M_HS_FAIL_TOKEN_INVALID) == 3);

    //  EdDSA verifier: an EdDSA token passes, an HS256 one is refused
    uint8_t pk [crypto_sign_PUBLICKEYBYTES], sk [crypto_sign_SECRETKEYBYTES];
    crypto_sign_keypair (pk, sk);
    wsr_auth_destroy (&auth);
    zsock_t *w2 = zsock_new_pull ("inproc://wsr-adopt-atest2-0");
    verifier = wsr_jwt_new_eddsa (pk);
    auth = wsr_auth_new ("atest2", 1, &verifier, metrics, ipcount);
    assert (auth);
    zsock_t *listener2 = zsock_new_push ("inproc://wsr-auth-atest2");
    char *ed = wsr_jwt_mint_eddsa (sk, "u2", now, now + 60, NULL);
    s_send_auth (listener2, 1, 200, ed);
    s_expect_adopt (w2, 1, 200, 0, "", "u2", "");
    s_send_auth (listener2, 2, 201, good);
    s_expect_adopt (w2, 2, 201, 1008, "alg not allowed", "", "");

    free (good);
    free (expired);
    free (forged);
    free (ed);
    zsock_destroy (&listener);
    zsock_destroy (&listener2);
    wsr_auth_destroy (&auth);
    zsock_destroy (&w0);
    zsock_destroy (&w1);
    zsock_destroy (&w2);
    wsr_ipcount_destroy (&ipcount);
    wsr_metrics_destroy (&metrics);
}
