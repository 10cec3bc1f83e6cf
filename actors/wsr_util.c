//  wsr_util — small shared helpers: clocks, id validation, UTF-8, rlimits, test support
//
//  Functions without state of their own, but for two process-wide flags:
//  wsr_verbose (set once by main) and the selftest skip reason (set by a
//  selftest, read by the selftest runner). The UTF-8 checker is a
//  table-free DFA so it can run incrementally over fragments (RFC 6455 §8.1
//  wants text validated as a whole message, and failing fast on a split code
//  point is allowed).

#include "wsr_classes.h"
#include <netinet/in.h>
#include <sys/resource.h>
#include <sys/wait.h>

bool wsr_verbose = false;

#define S_SKIP_REASON_MAX   256     //  bytes of a skip reason kept

//  Why the running selftest skipped, "" if it did not (selftests run one
//  after the other on the runner's thread)
static char s_skip_reason [S_SKIP_REASON_MAX];

//  --------------------------------------------------------------------------
//  Wall clock in microseconds since the epoch.
int64_t
wsr_util_now_us (void)
{
    struct timespec ts;
    clock_gettime (CLOCK_REALTIME, &ts);
    return (int64_t) ts.tv_sec * 1000000 + ts.tv_nsec / 1000;
}

//  --------------------------------------------------------------------------
//  Monotonic clock in milliseconds; immune to wall-clock jumps.
int64_t
wsr_util_mono_ms (void)
{
    struct timespec ts;
    clock_gettime (CLOCK_MONOTONIC, &ts);
    return (int64_t) ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
}

//  --------------------------------------------------------------------------
//  Ids become parts of topics, Redis channels and NATS subjects: whatever is
//  allowed here must never be a wildcard or separator anywhere.
bool
wsr_util_id_valid (const char *id, size_t len)
{
    if (!id || len == 0 || len > WSR_MAX_ID_LEN)
        return false;
    for (size_t i = 0; i < len; i++) {
        unsigned char c = (unsigned char) id [i];
        if (isalnum (c))
            continue;
        if (!strchr ("_-.@=+|~", c) || c == 0)
            return false;
    }
    //  A NATS subject token may not be empty: no leading, trailing or double dot
    if (id [0] == '.' || id [len - 1] == '.' || memmem (id, len, "..", 2))
        return false;
    return true;
}

//  --------------------------------------------------------------------------
//  Numeric ids as zhashx keys (stored in the pointer itself).
size_t
wsr_util_id_hash (const void *key)
{
    return (size_t) ((uintptr_t) key * 0x9E3779B97F4A7C15ULL);
}

int
wsr_util_id_compare (const void *a, const void *b)
{
    return (uintptr_t) a < (uintptr_t) b? -1: (uintptr_t) a > (uintptr_t) b;
}

//  --------------------------------------------------------------------------
//  Incremental UTF-8 validation. state holds the number of continuation bytes
//  still expected (bits 0-2) and the allowed range of the next one (bits 8-15
//  low bound, 16-23 high bound), so overlongs and surrogates fail at once.
bool
wsr_util_utf8_step (uint32_t *state, const uint8_t *data, size_t len)
{
    uint32_t need = *state & 0x7;
    uint8_t lo = (*state >> 8) & 0xff;
    uint8_t hi = (*state >> 16) & 0xff;
    for (size_t i = 0; i < len; i++) {
        uint8_t c = data [i];
        if (need == 0) {
            if (c < 0x80)
                continue;
            lo = 0x80; hi = 0xBF;
            if (c >= 0xC2 && c <= 0xDF)
                need = 1;
            else
            if (c >= 0xE0 && c <= 0xEF) {
                need = 2;
                if (c == 0xE0)
                    lo = 0xA0;
                else
                if (c == 0xED)
                    hi = 0x9F;
            }
            else
            if (c >= 0xF0 && c <= 0xF4) {
                need = 3;
                if (c == 0xF0)
                    lo = 0x90;
                else
                if (c == 0xF4)
                    hi = 0x8F;
            }
            else {
                *state = 0xFFFFFFFF;
                return false;
            }
        }
        else {
            if (c < lo || c > hi) {
                *state = 0xFFFFFFFF;
                return false;
            }
            lo = 0x80; hi = 0xBF;
            need--;
        }
    }
    *state = need | ((uint32_t) lo << 8) | ((uint32_t) hi << 16);
    if (need == 0)
        *state = 0;
    return true;
}

//  --------------------------------------------------------------------------
//  Whole-buffer UTF-8 check with an ASCII fast path (most payloads are JSON).
bool
wsr_util_utf8_valid (const uint8_t *data, size_t len)
{
    size_t i = 0;
    while (i + 8 <= len) {
        uint64_t word;
        memcpy (&word, data + i, 8);
        if (word & 0x8080808080808080ULL)
            break;
        i += 8;
    }
    uint32_t state = 0;
    return wsr_util_utf8_step (&state, data + i, len - i) && state == 0;
}

//  --------------------------------------------------------------------------
//  Percent-decode n bytes into out (NUL-terminated). -1 on a bad escape, an
//  escaped NUL, or if it does not fit.
static int
s_percent_decode (const char *from, size_t n, char *out, size_t size)
{
    size_t used = 0;
    for (size_t i = 0; i < n; i++) {
        char c = from [i];
        if (c == '%') {
            if (i + 2 >= n)
                return -1;
            if (!isxdigit ((unsigned char) from [i + 1])
            ||  !isxdigit ((unsigned char) from [i + 2]))
                return -1;
            char hex [3] = { from [i + 1], from [i + 2], 0 };
            c = (char) strtol (hex, NULL, 16);
            if (c == 0)
                return -1;
            i += 2;
        }
        if (used + 1 >= size)
            return -1;
        out [used++] = c;
    }
    out [used] = 0;
    return (int) used;
}

static bool
s_host_char (char c)
{
    return isalnum ((unsigned char) c) || c == '.' || c == '-' || c == '_';
}

//  --------------------------------------------------------------------------
//  Strict URL parser for backplane URLs; errors never quote the input.
int
wsr_util_url_parse (const char *text, size_t len, wsr_url_t *url, const char **error)
{
    assert (text && url && error);
    memset (url, 0, sizeof *url);
    *error = NULL;
    if (len == 0 || len > WSR_URL_MAX) {
        *error = "empty or too long";
        return -1;
    }
    for (size_t i = 0; i < len; i++)
        if ((unsigned char) text [i] <= ' ' || (unsigned char) text [i] == 0x7F) {
            *error = "contains a space or a control byte";
            return -1;
        }
    const char *end = text + len;
    size_t scheme_len = 0;
    while (scheme_len < len && isalpha ((unsigned char) text [scheme_len]))
        scheme_len++;
    if (scheme_len == 0 || scheme_len >= sizeof url->scheme
    ||  (size_t) (end - text) < scheme_len + 3 || memcmp (text + scheme_len, "://", 3)) {
        *error = "does not start with SCHEME://";
        return -1;
    }
    for (size_t i = 0; i < scheme_len; i++)
        url->scheme [i] = (char) tolower ((unsigned char) text [i]);
    const char *rest = text + scheme_len + 3;

    //  Userinfo: everything up to the last '@' (a raw '@' or '/' in a
    //  password then stays in the password)
    const char *at = NULL;
    for (const char *p = rest; p < end; p++)
        if (*p == '@')
            at = p;
    if (at) {
        url->has_userinfo = true;
        const char *colon = memchr (rest, ':', (size_t) (at - rest));
        const char *user_end = colon? colon: at;
        if (s_percent_decode (rest, (size_t) (user_end - rest), url->user, sizeof url->user) < 0
        ||  (colon && s_percent_decode (colon + 1, (size_t) (at - colon - 1), url->password,
                                        sizeof url->password) < 0)) {
            *error = "bad %-escape, escaped NUL or too long in the user or password";
            wsr_util_url_clear (url);
            return -1;
        }
        url->has_password = colon != NULL;
        rest = at + 1;
    }
    const char *slash = memchr (rest, '/', (size_t) (end - rest));
    const char *host_end = slash? slash: end;
    if (memchr (rest, '?', (size_t) (end - rest)) || memchr (rest, '#', (size_t) (end - rest))) {
        *error = "has a query (?) or a fragment (#)";
        wsr_util_url_clear (url);
        return -1;
    }
    const char *port = NULL;
    if (rest < host_end && *rest == '[') {
        const char *close = memchr (rest, ']', (size_t) (host_end - rest));
        if (!close || close == rest + 1 || (close + 1 < host_end && close [1] != ':')) {
            *error = "bad [IPv6] host";
            wsr_util_url_clear (url);
            return -1;
        }
        for (const char *p = rest + 1; p < close; p++)
            if (!isxdigit ((unsigned char) *p) && *p != ':' && *p != '.') {
                *error = "bad [IPv6] host";
                wsr_util_url_clear (url);
                return -1;
            }
        memcpy (url->host, rest + 1, (size_t) (close - rest - 1));
        if (close + 1 < host_end)
            port = close + 2;
    }
    else {
        const char *colon = memchr (rest, ':', (size_t) (host_end - rest));
        const char *name_end = colon? colon: host_end;
        if (name_end == rest || (size_t) (name_end - rest) >= sizeof url->host) {
            *error = "empty or too long host";
            wsr_util_url_clear (url);
            return -1;
        }
        for (const char *p = rest; p < name_end; p++)
            if (!s_host_char (*p)) {
                *error = "bad character in the host (IPv6 needs [brackets])";
                wsr_util_url_clear (url);
                return -1;
            }
        memcpy (url->host, rest, (size_t) (name_end - rest));
        if (colon)
            port = colon + 1;
    }
    if (port) {
        long value = 0;
        const char *p = port;
        for (; p < host_end && isdigit ((unsigned char) *p) && p - port < 5; p++)
            value = value * 10 + (*p - '0');
        if (p == port || p != host_end || value < 1 || value > 65535) {
            *error = "port is not a number in 1..65535";
            wsr_util_url_clear (url);
            return -1;
        }
        url->port = (int) value;
    }
    if (slash) {
        if ((size_t) (end - slash) >= sizeof url->path) {
            *error = "path too long";
            wsr_util_url_clear (url);
            return -1;
        }
        memcpy (url->path, slash, (size_t) (end - slash));
    }
    return 0;
}

//  --------------------------------------------------------------------------
//  Wipe a parsed URL.
void
wsr_util_url_clear (wsr_url_t *url)
{
    assert (url);
    sodium_memzero (url, sizeof *url);
}

//  Append len bytes of data to out, as much as fits (one byte kept for NUL).
static void
s_put (char *out, size_t size, size_t *used, const char *data, size_t len)
{
    size_t room = *used + 1 < size? size - *used - 1: 0;
    if (len > room)
        len = room;
    memcpy (out + *used, data, len);
    *used += len;
    out [*used] = 0;
}

//  The ',' that starts the next URL of a list (followed by SCHEME://), or
//  NULL: a ',' inside a password is not a separator.
static const char *
s_next_url (const char *from, const char *end)
{
    for (const char *at = memchr (from, ',', (size_t) (end - from)); at;
         at = memchr (at + 1, ',', (size_t) (end - at - 1))) {
        const char *p = at + 1;
        while (p < end && *p == ' ')
            p++;
        const char *q = p;
        while (q < end && isalpha ((unsigned char) *q))
            q++;
        if (q > p && end - q >= 3 && memcmp (q, "://", 3) == 0)
            return at;
    }
    return NULL;
}

//  --------------------------------------------------------------------------
//  Hide the secrets of a URL (or a comma-separated list of them) for logs.
const char *
wsr_util_redact_url (const char *url, char *out, size_t size)
{
    assert (out && size > 0);
    out [0] = 0;
    if (!url)
        return out;
    size_t used = 0;
    const char *end = url + strlen (url);
    const char *p = url;
    while (p < end) {
        const char *next = s_next_url (p, end);
        const char *stop = next? next: end;
        const char *sep = NULL;
        for (const char *q = p; q + 3 <= stop && !sep; q++)
            if (memcmp (q, "://", 3) == 0)
                sep = q;
        const char *rest = sep? sep + 3: p;
        s_put (out, size, &used, p, (size_t) (rest - p));
        //  Userinfo up to the last '@': keep a user name, hide the rest
        const char *at = NULL;
        for (const char *q = rest; q < stop; q++)
            if (*q == '@')
                at = q;
        if (at) {
            const char *colon = memchr (rest, ':', (size_t) (at - rest));
            if (colon)
                s_put (out, size, &used, rest, (size_t) (colon - rest + 1));
            s_put (out, size, &used, "***", 3);
            rest = at;
        }
        //  A query string may carry keys: hide it whole; drop a fragment
        const char *query = rest;
        while (query < stop && *query != '?' && *query != '#')
            query++;
        s_put (out, size, &used, rest, (size_t) (query - rest));
        if (query < stop && *query == '?')
            s_put (out, size, &used, "?***", 4);
        if (next)
            s_put (out, size, &used, ",", 1);
        p = next? next + 1: end;
    }
    return out;
}

//  --------------------------------------------------------------------------
//  Start an actor; NULL if it reports a failed start.
zactor_t *
wsr_util_actor_start (zactor_fn *actor, void *args)
{
    zactor_t *self = zactor_new (actor, args);
    assert (self);
    int status = -1;
    int sent = zsock_send (self, "s", WSR_CMD_START);
    assert (sent == 0);          //  a pipe is in-process: only ETERM fails
    zsock_recv (self, "i", &status);
    if (status != 0)
        zactor_destroy (&self);
    return self;
}

//  --------------------------------------------------------------------------
//  Every session is a descriptor: take all the kernel allows us.
long
wsr_util_raise_nofile (void)
{
    struct rlimit rl;
    if (getrlimit (RLIMIT_NOFILE, &rl))
        return -1;
    if (rl.rlim_cur < rl.rlim_max) {
        rl.rlim_cur = rl.rlim_max;
        if (setrlimit (RLIMIT_NOFILE, &rl))
            zsys_warning ("util: cannot raise RLIMIT_NOFILE: %s", strerror (errno));
        getrlimit (RLIMIT_NOFILE, &rl);
    }
    return (long) rl.rlim_cur;
}

//  --------------------------------------------------------------------------
//  Test support: a free loopback port.
int
wsr_util_free_port (void)
{
    int fd = socket (AF_INET, SOCK_STREAM, 0);
    assert (fd >= 0);
    struct sockaddr_in addr = { .sin_family = AF_INET };
    addr.sin_addr.s_addr = htonl (INADDR_LOOPBACK);
    socklen_t len = sizeof addr;
    int rc = bind (fd, (struct sockaddr *) &addr, sizeof addr);
    assert (rc == 0);
    getsockname (fd, (struct sockaddr *) &addr, &len);
    close (fd);
    return ntohs (addr.sin_port);
}

//  --------------------------------------------------------------------------
//  Test support: start a server process quietly.
pid_t
wsr_util_spawn (const char *const argv [])
{
    pid_t pid = fork ();
    if (pid == 0) {
        int devnull = open ("/dev/null", O_WRONLY);
        dup2 (devnull, 1);
        dup2 (devnull, 2);
        execvp (argv [0], (char *const *) argv);
        _exit (127);
    }
    return pid;
}

//  --------------------------------------------------------------------------
//  Test support: stop and reap it.
void
wsr_util_reap (pid_t pid)
{
    if (pid > 0) {
        kill (pid, SIGTERM);
        waitpid (pid, NULL, 0);
    }
}

//  --------------------------------------------------------------------------
//  Test support: this selftest cannot run here.
void
wsr_util_test_skip (const char *why)
{
    assert (why && *why);
    snprintf (s_skip_reason, sizeof s_skip_reason, "%s", why);
}

//  --------------------------------------------------------------------------
//  Test support: did the selftest that just returned skip?
const char *
wsr_util_test_skipped (void)
{
    static char reason [S_SKIP_REASON_MAX];
    if (!*s_skip_reason)
        return NULL;
    memcpy (reason, s_skip_reason, sizeof reason);
    *s_skip_reason = 0;
    return reason;
}

//  --------------------------------------------------------------------------
//  Selftest

static bool
s_utf8_split_ok (const char *text, size_t len)
{
    //  Every split point must agree with the whole-buffer answer
    bool whole = wsr_util_utf8_valid ((const uint8_t *) text, len);
    for (size_t cut = 0; cut <= len; cut++) {
        uint32_t state = 0;
        bool ok = wsr_util_utf8_step (&state, (const uint8_t *) text, cut)
               && wsr_util_utf8_step (&state, (const uint8_t *) text + cut, len - cut)
               && state == 0;
        assert (ok == whole);
    }
    return whole;
}

void
wsr_util_test (bool verbose)
{
    (void) verbose;
    assert (wsr_util_id_valid ("u1", 2));
    assert (wsr_util_id_valid ("alice@example.com", 17));
    assert (!wsr_util_id_valid ("", 0));
    assert (!wsr_util_id_valid ("u 1", 3));
    assert (!wsr_util_id_valid ("u*", 2));
    assert (!wsr_util_id_valid ("u>", 2));
    assert (!wsr_util_id_valid ("a:b", 3));
    assert (!wsr_util_id_valid ("a,b", 3));
    assert (!wsr_util_id_valid ("a\0b", 3));
    assert (!wsr_util_id_valid ("a\nb", 3));
    assert (!wsr_util_id_valid (".a", 2));
    assert (!wsr_util_id_valid ("a..b", 4));
    char big [WSR_MAX_ID_LEN + 2];
    memset (big, 'x', sizeof big);
    assert (wsr_util_id_valid (big, WSR_MAX_ID_LEN));
    assert (!wsr_util_id_valid (big, WSR_MAX_ID_LEN + 1));

    assert (s_utf8_split_ok ("hello", 5));
    assert (s_utf8_split_ok ("\xce\xba\xe1\xbd\xb9\xcf\x83\xce\xbc\xce\xb5", 11));
    assert (s_utf8_split_ok ("\xf0\x9f\x98\x80 smile", 10));
    assert (!s_utf8_split_ok ("\xc0\xaf", 2));             //  overlong
    assert (!s_utf8_split_ok ("\xed\xa0\x80", 3));         //  surrogate
    assert (!s_utf8_split_ok ("\xf4\x90\x80\x80", 4));     //  > U+10FFFF
    assert (!s_utf8_split_ok ("\xce", 1));                 //  truncated
    assert (!s_utf8_split_ok ("abcdefgh\xff", 9));         //  after fast path
    assert (!s_utf8_split_ok ("\x80", 1));
    uint32_t state = 0;
    assert (wsr_util_utf8_step (&state, (const uint8_t *) "\xf0\x9f", 2));
    assert (state != 0);                                    //  mid code point

    //  URLs: parsed strictly, percent-decoded, errors never quote the input
    wsr_url_t url;
    const char *error = NULL;
    const char *text = "redis://alice:p%40ss%3Aw%2Frd@redis.example:6380/2";
    assert (wsr_util_url_parse (text, strlen (text), &url, &error) == 0);
    assert (streq (url.scheme, "redis") && streq (url.user, "alice"));
    assert (url.has_userinfo && url.has_password && streq (url.password, "p@ss:w/rd"));
    assert (streq (url.host, "redis.example") && url.port == 6380 && streq (url.path, "/2"));
    text = "REDIS://:raw/p@ss@[::1]";             //  raw '/' and '@' stay in the password
    assert (wsr_util_url_parse (text, strlen (text), &url, &error) == 0);
    assert (streq (url.scheme, "redis") && streq (url.user, ""));
    assert (streq (url.password, "raw/p@ss"));
    assert (streq (url.host, "::1") && url.port == 0 && streq (url.path, ""));
    text = "nats://s3cr3t-token@127.0.0.1:4222";
    assert (wsr_util_url_parse (text, strlen (text), &url, &error) == 0);
    assert (url.has_userinfo && !url.has_password && streq (url.user, "s3cr3t-token"));
    wsr_util_url_clear (&url);
    assert (url.user [0] == 0 && url.host [0] == 0);
    const char *bad [] = {
        "", "redis:/host", "://host", "redis://", "redis://:pw@", "redis://host:",
        "redis://host:0", "redis://host:65536", "redis://host:12a", "redis://host:123456",
        "redis://ho st", "redis://host?x=1", "redis://host#f", "redis://h*st",
        "redis://::1", "redis://[::1", "redis://[]:1", "redis://[::1]x",
        "redis://:p%zzw@host", "redis://:p%0@host", "redis://:p%00w@host",
        "redis://:pw\n@host", NULL
    };
    for (int i = 0; bad [i]; i++) {
        error = NULL;
        assert (wsr_util_url_parse (bad [i], strlen (bad [i]), &url, &error) == -1);
        assert (error && !strstr (error, "pw") && (!*bad [i] || !strstr (error, bad [i])));
    }
    char long_url [WSR_URL_MAX + 16];
    memset (long_url, 'a', sizeof long_url);
    memcpy (long_url, "redis://", 8);
    assert (wsr_util_url_parse (long_url, sizeof long_url, &url, &error) == -1);

    //  Redaction: secrets hidden, the rest kept; lists and junk too
    char shown [128];
    const char *cases [][2] = {
        { "redis://user:pass@host:6379/0", "redis://user:***@host:6379/0" },
        { "redis://:pass@host:6379", "redis://:***@host:6379" },
        { "redis://host:6379/1", "redis://host:6379/1" },
        { "nats://tok@127.0.0.1:4222", "nats://***@127.0.0.1:4222" },
        { "nats://a:b@h1:1,nats://t@h2:2, tls://h3:3",
          "nats://a:***@h1:1,nats://***@h2:2, tls://h3:3" },
        { "redis://:pa,ss@host", "redis://:***@host" },         //  ',' in a password
        { "redis://:p@ss/w@host/0", "redis://:***@host/0" },   //  raw '@' and '/'
        { "http://backend:8080/hook?key=secret", "http://backend:8080/hook?***" },
        { "http://u:pw@backend/hook?key=secret#frag", "http://u:***@backend/hook?***" },
        { "user:pass@host:1", "user:***@host:1" },             //  no scheme
        { "http://backend/hook#frag", "http://backend/hook" },
        { "", "" }
    };
    for (size_t i = 0; i < sizeof cases / sizeof cases [0]; i++) {
        wsr_util_redact_url (cases [i][0], shown, sizeof shown);
        if (!streq (shown, cases [i][1]))
            printf ("redact '%s' gave '%s'\n", cases [i][0], shown);
        assert (streq (shown, cases [i][1]));
    }
    assert (streq (wsr_util_redact_url (NULL, shown, sizeof shown), ""));
    //  Truncation keeps the NUL and never shows the hidden part
    char tiny [12];
    wsr_util_redact_url ("redis://user:secretpassword@host", tiny, sizeof tiny);
    assert (strlen (tiny) == sizeof tiny - 1 && !strstr (tiny, "secret"));

    assert (wsr_util_now_us () > 1600000000LL * 1000000);
    int64_t t0 = wsr_util_mono_ms ();
    assert (wsr_util_mono_ms () >= t0);
    assert (wsr_util_raise_nofile () > 0);
    int port = wsr_util_free_port ();
    assert (port > 0 && port < 65536);
    const char *argv [] = { "sleep", "30", NULL };
    pid_t child = wsr_util_spawn (argv);
    assert (child > 0);
    wsr_util_reap (child);
    assert (kill (child, 0) == -1);             //  gone and reaped

    //  A skip is reported once, then cleared
    assert (wsr_util_test_skipped () == NULL);
    wsr_util_test_skip ("nothing to test against");
    const char *why = wsr_util_test_skipped ();
    assert (why && streq (why, "nothing to test against"));
    assert (wsr_util_test_skipped () == NULL);
}
