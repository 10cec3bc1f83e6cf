//  wsr_bench_ident — who each bench session is: its user and its token
//
//  With --jwt-secret, normal session i is user PREFIXi (one session per user)
//  and its HS256 token is minted when its connection starts
//  (wsr_jwt_mint_hs256, with the --channel claim if given); slow session j
//  reuses user j % N. With --tokens FILE, session i (slow j) uses line i (j)
//  modulo the number of lines; a line is "TOKEN" or "TOKEN USER", blank
//  lines and lines starting with '#' are skipped. Without USER the user is
//  the token's sub claim (payload decoded, signature not checked). Users are
//  deduplicated: the publisher goes round robin over the distinct users.
//
//  Built before any fork: the children of a run inherit it.

#include "wsr_bench_classes.h"

struct _wsr_bench_ident_t {
    const wsr_bench_opts_t *opts;   //  settings (not owned)
    char **users;                   //  distinct user ids (owned)
    uint32_t user_count;
    char **tokens;                  //  tokens file entries (owned), NULL when minting
    uint32_t *token_user;           //  user index of each token (owned)
    uint32_t token_count;
};

//  A token's claims (payload decoded, signature not checked), or NULL.
//  Caller owns the result.
static json_t *
s_token_claims (const char *token)
{
    const char *dot = strchr (token, '.');
    const char *dot2 = dot? strchr (dot + 1, '.'): NULL;
    if (!dot2)
        return NULL;
    size_t b64_len = (size_t) (dot2 - dot - 1);
    uint8_t *raw = (uint8_t *) malloc (b64_len + 1);
    assert (raw);
    size_t raw_len = 0;
    json_t *claims = NULL;
    if (sodium_base642bin (raw, b64_len + 1, dot + 1, b64_len, NULL, &raw_len, NULL,
                           sodium_base64_VARIANT_URLSAFE_NO_PADDING) == 0)
        claims = json_loadb ((const char *) raw, raw_len, 0, NULL);
    free (raw);
    return claims;
}

//  The user id in a token's sub claim, or NULL. Caller frees.
static char *
s_token_sub (const char *token)
{
    json_t *claims = s_token_claims (token);
    const char *value = json_string_value (json_object_get (claims, "sub"));
    char *sub = value? strdup (value): NULL;
    json_decref (claims);
    return sub;
}

//  Index of user, added if new (index maps the id to its index + 1).
static uint32_t
s_user_index (wsr_bench_ident_t *self, zhashx_t *index, const char *user)
{
    uintptr_t known = (uintptr_t) zhashx_lookup (index, user);
    if (known)
        return (uint32_t) (known - 1);
    self->users = (char **) realloc (self->users, (self->user_count + 1) * sizeof (char *));
    assert (self->users);
    self->users [self->user_count] = strdup (user);
    zhashx_insert (index, user, (void *) (uintptr_t) (self->user_count + 1));
    return self->user_count++;
}

//  Minted identities: PREFIX0 .. PREFIX(N-1). Returns 0 or -1.
static int
s_load_minted (wsr_bench_ident_t *self, zhashx_t *index)
{
    const wsr_bench_opts_t *opts = self->opts;
    for (uint32_t i = 0; i < opts->sessions; i++) {
        char user [WSR_MAX_ID_LEN + 1];
        snprintf (user, sizeof user, "%s%u", opts->user_prefix, i);
        if (!wsr_util_id_valid (user, strlen (user))) {
            fprintf (stderr, "wsrouter bench: user id '%s' is not valid\n", user);
            return -1;
        }
        s_user_index (self, index, user);
    }
    return 0;
}

//  The tokens file. Returns 0 or -1.
static int
s_load_file (wsr_bench_ident_t *self, zhashx_t *index)
{
    const char *path = self->opts->tokens_file;
    FILE *file = fopen (path, "r");
    if (!file) {
        fprintf (stderr, "wsrouter bench: %s: %s\n", path, strerror (errno));
        return -1;
    }
    int rc = 0;
    char *line = NULL;
    size_t cap = 0;
    ssize_t len;
    while ((len = getline (&line, &cap, file)) >= 0) {
        while (len > 0 && isspace ((unsigned char) line [len - 1]))
            line [--len] = 0;
        char *token = line + strspn (line, " \t");
        if (!*token || *token == '#')
            continue;
        char *space = token + strcspn (token, " \t");
        char *user = NULL;
        if (*space) {
            *space = 0;
            user = strdup (space + 1 + strspn (space + 1, " \t"));
        }
        else
            user = s_token_sub (token);
        if (!user || !wsr_util_id_valid (user, strlen (user))) {
            fprintf (stderr, "wsrouter bench: %s: no valid user for token %u\n",
                     path, self->token_count + 1);
            free (user);
            rc = -1;
            break;
        }
        self->tokens = (char **) realloc (self->tokens,
                                          (self->token_count + 1) * sizeof (char *));
        self->token_user = (uint32_t *) realloc (self->token_user,
                                                 (self->token_count + 1) * sizeof (uint32_t));
        assert (self->tokens && self->token_user);
        self->tokens [self->token_count] = strdup (token);
        self->token_user [self->token_count] = s_user_index (self, index, user);
        self->token_count++;
        free (user);
    }
    free (line);
    fclose (file);
    if (rc == 0 && self->token_count == 0) {
        fprintf (stderr, "wsrouter bench: %s holds no token\n", path);
        rc = -1;
    }
    return rc;
}

//  --------------------------------------------------------------------------
//  Build the user table (and read the tokens file).
wsr_bench_ident_t *
wsr_bench_ident_new (const wsr_bench_opts_t *opts)
{
    assert (opts);
    wsr_bench_ident_t *self = (wsr_bench_ident_t *) zmalloc (sizeof (wsr_bench_ident_t));
    assert (self);
    self->opts = opts;
    zhashx_t *index = zhashx_new ();
    assert (index);
    int rc = opts->tokens_file? s_load_file (self, index): s_load_minted (self, index);
    zhashx_destroy (&index);
    if (rc)
        wsr_bench_ident_destroy (&self);
    return self;
}

//  --------------------------------------------------------------------------
//  Destroy it; safe on NULL.
void
wsr_bench_ident_destroy (wsr_bench_ident_t **self_p)
{
    assert (self_p);
    if (*self_p) {
        wsr_bench_ident_t *self = *self_p;
        for (uint32_t i = 0; i < self->user_count; i++)
            free (self->users [i]);
        for (uint32_t i = 0; i < self->token_count; i++)
            free (self->tokens [i]);
        free (self->users);
        free (self->tokens);
        free (self->token_user);
        free (self);
        *self_p = NULL;
    }
}

//  --------------------------------------------------------------------------
//  Number of distinct users.
uint32_t
wsr_bench_ident_user_count (wsr_bench_ident_t *self)
{
    assert (self);
    return self->user_count;
}

//  --------------------------------------------------------------------------
//  User id of user index.
const char *
wsr_bench_ident_user (wsr_bench_ident_t *self, uint32_t index)
{
    assert (self);
    assert (index < self->user_count);
    return self->users [index];
}

//  Identity slot of session g: slow session j is slot j.
static uint32_t
s_slot (wsr_bench_ident_t *self, uint32_t g)
{
    return g < self->opts->sessions? g: g - self->opts->sessions;
}

//  --------------------------------------------------------------------------
//  User index of session g.
uint32_t
wsr_bench_ident_session_user (wsr_bench_ident_t *self, uint32_t g)
{
    assert (self);
    uint32_t k = s_slot (self, g);
    if (self->tokens)
        return self->token_user [k % self->token_count];
    return k % self->opts->sessions;
}

//  --------------------------------------------------------------------------
//  Token of session g (minted at connect time, so that exp starts then).
char *
wsr_bench_ident_token (wsr_bench_ident_t *self, uint32_t g)
{
    assert (self);
    if (self->tokens)
        return strdup (self->tokens [s_slot (self, g) % self->token_count]);
    const wsr_bench_opts_t *opts = self->opts;
    int64_t now = (int64_t) time (NULL);
    return wsr_jwt_mint_hs256 ((const uint8_t *) opts->jwt_secret, strlen (opts->jwt_secret),
                               self->users [wsr_bench_ident_session_user (self, g)], now,
                               opts->token_ttl_s? now + opts->token_ttl_s: 0, opts->channel);
}

//  --------------------------------------------------------------------------
//  Selftest

void
wsr_bench_ident_test (bool verbose)
{
    (void) verbose;
    assert (sodium_init () >= 0);
    wsr_bench_opts_t opts;
    wsr_bench_opts_defaults (&opts);
    opts.sessions = 3;
    opts.slow = 2;
    opts.jwt_secret = "ident-secret";
    opts.user_prefix = "u";
    opts.channel = "room";

    //  Minted: one user per session; slow sessions reuse the first users
    wsr_bench_ident_t *ident = wsr_bench_ident_new (&opts);
    assert (ident && wsr_bench_ident_user_count (ident) == 3);
    assert (streq (wsr_bench_ident_user (ident, 2), "u2"));
    assert (wsr_bench_ident_session_user (ident, 1) == 1);
    assert (wsr_bench_ident_session_user (ident, 3) == 0);      //  slow session 0
    assert (wsr_bench_ident_session_user (ident, 4) == 1);
    char *token = wsr_bench_ident_token (ident, 4);
    assert (token);
    char *sub = s_token_sub (token);
    assert (sub && streq (sub, "u1"));
    free (sub);
    //  ... signed with the secret, carrying the channel and the expiry
    const char *dot = strrchr (token, '.');
    uint8_t mac [crypto_auth_hmacsha256_BYTES];
    crypto_auth_hmacsha256_state state;
    crypto_auth_hmacsha256_init (&state, (const uint8_t *) "ident-secret", 12);
    crypto_auth_hmacsha256_update (&state, (const uint8_t *) token, (size_t) (dot - token));
    crypto_auth_hmacsha256_final (&state, mac);
    char signature [64];
    sodium_bin2base64 (signature, sizeof signature, mac, sizeof mac,
                       sodium_base64_VARIANT_URLSAFE_NO_PADDING);
    assert (streq (dot + 1, signature));
    json_t *claims = s_token_claims (token);
    json_t *channels = json_object_get (claims, "channels");
    assert (json_array_size (channels) == 1);
    assert (streq (json_string_value (json_array_get (channels, 0)), "room"));
    assert (json_integer_value (json_object_get (claims, "exp"))
            == json_integer_value (json_object_get (claims, "iat"))
               + WSR_BENCH_DEFAULT_TOKEN_TTL_S);
    json_decref (claims);
    free (token);
    wsr_bench_ident_destroy (&ident);
    assert (!ident);

    //  An invalid minted id is refused
    opts.user_prefix = "bad user ";
    assert (wsr_bench_ident_new (&opts) == NULL);

    //  Tokens file: "TOKEN USER" lines, a token whose sub is the user,
    //  duplicates merged, comments and blank lines skipped
    char path [] = "/tmp/wsr-bench-ident-XXXXXX";
    int fd = mkstemp (path);
    assert (fd >= 0);
    char *minted = wsr_jwt_mint_hs256 ((const uint8_t *) "k", 1, "carol", 1, 0, NULL);
    assert (minted);
    char *text = zsys_sprintf ("# comment\nT1 alice\n\n  T2\tbob\nT3 alice\n%s\n", minted);
    assert (wsr_bench_write_all (fd, text, strlen (text)));
    close (fd);
    opts.tokens_file = path;
    opts.jwt_secret = NULL;
    ident = wsr_bench_ident_new (&opts);
    assert (ident && wsr_bench_ident_user_count (ident) == 3);
    assert (streq (wsr_bench_ident_user (ident, 0), "alice"));
    assert (streq (wsr_bench_ident_user (ident, 2), "carol"));
    token = wsr_bench_ident_token (ident, 1);
    assert (streq (token, "T2"));
    free (token);
    token = wsr_bench_ident_token (ident, 2);
    assert (streq (token, "T3"));
    free (token);
    assert (wsr_bench_ident_session_user (ident, 2) == 0);      //  T3 is alice's
    assert (wsr_bench_ident_session_user (ident, 3) == 0);      //  slow 0: T1
    token = wsr_bench_ident_token (ident, 4);                   //  slow 1: T2
    assert (streq (token, "T2"));
    free (token);
    wsr_bench_ident_destroy (&ident);

    //  A token without a usable sub, an empty file, a missing file
    text = (zstr_free (&text), zsys_sprintf ("T1 alice\nnot-a-jwt\n"));
    FILE *file = fopen (path, "w");
    assert (file && fputs (text, file) >= 0 && fclose (file) == 0);
    assert (wsr_bench_ident_new (&opts) == NULL);
    file = fopen (path, "w");
    assert (file && fputs ("# nothing\n\n", file) >= 0 && fclose (file) == 0);
    assert (wsr_bench_ident_new (&opts) == NULL);
    unlink (path);
    assert (wsr_bench_ident_new (&opts) == NULL);
    zstr_free (&text);
    free (minted);
}
