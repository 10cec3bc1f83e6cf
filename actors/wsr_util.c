//  wsr_util — small shared helpers: clocks, id validation, UTF-8, rlimits
//
//  Pure functions with no state. The UTF-8 checker is a table-free DFA so it
//  can run incrementally over fragments (RFC 6455 §8.1 wants text validated
//  as a whole message, and failing fast on a split code point is allowed).

#include "wsr_classes.h"
#include <netinet/in.h>
#include <sys/resource.h>
#include <sys/wait.h>

bool wsr_verbose = false;

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
}
