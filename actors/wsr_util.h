//  wsr_util — small shared helpers: clocks, id validation, UTF-8, rlimits, test support

#ifndef WSR_UTIL_H_INCLUDED
#define WSR_UTIL_H_INCLUDED

#ifdef __cplusplus
extern "C" {
#endif

//  Debug logging switch (set once by main before actors start; read-only after).
extern bool wsr_verbose;
#define wsr_debug(...) do { if (wsr_verbose) zsys_debug (__VA_ARGS__); } while (0)

//  Wall clock in microseconds since the epoch.
int64_t
    wsr_util_now_us (void);

//  zhashx key hasher for numeric ids stored in the key pointer itself (no
//  allocation per entry; set the key duplicator and destructor to NULL).
size_t
    wsr_util_id_hash (const void *key);

//  zhashx key comparator for the same keys.
int
    wsr_util_id_compare (const void *a, const void *b);

//  Monotonic clock in milliseconds.
int64_t
    wsr_util_mono_ms (void);

//  True if id (len bytes) is a valid user id or channel name: 1..WSR_MAX_ID_LEN
//  bytes of [A-Za-z0-9] and "_-.@=+|~" (no spaces, control bytes, NUL, wildcards
//  '*' '>' '?' or separators ':' ',' '/'), so that it can never address another
//  id's topic on any backplane.
bool
    wsr_util_id_valid (const char *id, size_t len);

//  True if data is well-formed UTF-8 (RFC 3629: no overlongs, no surrogates,
//  nothing above U+10FFFF).
bool
    wsr_util_utf8_valid (const uint8_t *data, size_t len);

//  Streaming UTF-8 check across fragments. state starts at 0; returns false as
//  soon as the bytes so far cannot be a prefix of valid UTF-8. At the end of a
//  message the text is valid iff the state is 0 again.
bool
    wsr_util_utf8_step (uint32_t *state, const uint8_t *data, size_t len);

//  Backplane and upstream URLs: longest accepted, and longest part of one.
#define WSR_URL_MAX         1024
#define WSR_URL_PART_MAX    256

//  One parsed scheme://[user[:password]@]host[:port][/path] URL. It may hold
//  a password: clear it with wsr_util_url_clear when done.
typedef struct {
    char scheme [16];                   //  lower-case letters, e.g. "redis", "tls"
    char user [WSR_URL_PART_MAX];       //  percent-decoded; "" if none
    char password [WSR_URL_PART_MAX];   //  percent-decoded; "" if none
    bool has_userinfo;                  //  the URL had a USERINFO@ part
    bool has_password;                  //  ... with a ':' in it
    char host [WSR_URL_PART_MAX];       //  DNS name or IPv4, or IPv6 without brackets
    int port;                           //  1..65535, or 0 if none was given
    char path [WSR_URL_PART_MAX];       //  from the first '/' after the host, or ""
} wsr_url_t;

//  Parse len bytes of text as a URL, strictly: scheme of letters then "://",
//  userinfo up to the last '@' (user and password percent-decoded, no NUL),
//  a non-empty host of [A-Za-z0-9.-_] or a bracketed IPv6 address, an
//  optional port of digits 1..65535, an optional path; no query, fragment,
//  space or control byte. Returns 0, or -1 with *error set to a static
//  reason that never quotes the input (it may contain a password).
int
    wsr_util_url_parse (const char *text, size_t len, wsr_url_t *url, const char **error);

//  Wipe a parsed URL (passwords do not linger on the stack).
void
    wsr_util_url_clear (wsr_url_t *url);

//  Copy url into out (size bytes, always NUL-terminated, truncated if need
//  be) with its secrets hidden, for logs: "redis://user:***@host:6379/0",
//  "nats://***@host:4222" (a token), "http://host/path?***" (a query). Works
//  on comma-separated lists of scheme:// URLs and on malformed input: it
//  may hide more than the secret, never less. Returns out.
const char *
    wsr_util_redact_url (const char *url, char *out, size_t size);

//  Start an actor and ask it START (the house pattern: czmq ignores the init
//  signal's status, so every actor answers START with an "i" status). Returns
//  the actor, or NULL (the actor destroyed) if its status is not 0.
zactor_t *
    wsr_util_actor_start (zactor_fn *actor, void *args);

//  Set the soft RLIMIT_NOFILE to the hard limit; returns the new soft limit.
long
    wsr_util_raise_nofile (void);

//  For selftests: a TCP port on 127.0.0.1 that was free a moment ago.
int
    wsr_util_free_port (void);

//  For selftests: start argv [0] (searched in PATH) with stdout and stderr
//  on /dev/null. Returns its pid, or -1.
pid_t
    wsr_util_spawn (const char *const argv []);

//  For selftests: SIGTERM a child started by wsr_util_spawn and reap it.
void
    wsr_util_reap (pid_t pid);

//  For selftests: this selftest cannot run here, for reason why (copied),
//  e.g. "redis-server not installed". Call it, clean up, and return from
//  the selftest: wsr_selftest then prints "SKIPPED (why)" instead of "OK"
//  and exits 77, which ctest reports as skipped (SKIP_RETURN_CODE), never
//  as passed. A selftest that skips only a part still reports a skip.
void
    wsr_util_test_skip (const char *why);

//  For the selftest runner: the reason given to wsr_util_test_skip since
//  the last call, or NULL if none; clears it. The string is owned by util.
const char *
    wsr_util_test_skipped (void);

//  Self test
void
    wsr_util_test (bool verbose);

#ifdef __cplusplus
}
#endif
#endif
