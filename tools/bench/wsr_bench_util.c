//  wsr_bench_util — small helpers of the load generator: clock, addresses, HTTP heads, /proc
//
//  Functions without state, shared by the session client, the publisher and
//  the run: the monotonic clock every latency is measured with, host:port
//  parsing and resolving, the two HTTP head helpers the handshake check and
//  the HTTP publisher both need, the bounded publisher connect, blocking pipe
//  writes, and the readings of the server's memory (/proc).

#include "wsr_bench_classes.h"
#include <netdb.h>
#include <netinet/tcp.h>
#include <poll.h>
#include <sys/epoll.h>

//  --------------------------------------------------------------------------
//  One clock for every process of the run, so that a receiver can subtract
//  the publisher's timestamp.
int64_t
wsr_bench_now (void)
{
    struct timespec ts;
    clock_gettime (CLOCK_MONOTONIC, &ts);
    return (int64_t) ts.tv_sec * WSR_BENCH_SEC + ts.tv_nsec;
}

//  --------------------------------------------------------------------------
//  epoll_ctl with the bench's tag and index packed into the event data.
void
wsr_bench_epoll_set (int epoll_fd, int op, int fd, uint32_t events, uint32_t tag,
                     uint32_t index)
{
    struct epoll_event event = { .events = events };
    event.data.u64 = (uint64_t) tag << 32 | index;
    if (epoll_ctl (epoll_fd, op, fd, &event) && op != EPOLL_CTL_DEL)
        zsys_warning ("bench: epoll_ctl: %s", strerror (errno));
}

//  --------------------------------------------------------------------------
//  Channel and subject templates have one placeholder, whatever its name.
void
wsr_bench_subst (char *out, size_t size, const char *tpl, const char *value)
{
    const char *open = strchr (tpl, '{');
    const char *close = open? strchr (open, '}'): NULL;
    if (!open || !close)
        snprintf (out, size, "%s", tpl);
    else
        snprintf (out, size, "%.*s%s%s", (int) (open - tpl), tpl, value, close + 1);
}

//  --------------------------------------------------------------------------
//  Resolved once, before the run: no lookup on the measured path.
int
wsr_bench_resolve (const char *host, int port, struct sockaddr_in *addr)
{
    struct addrinfo hints = { .ai_family = AF_INET, .ai_socktype = SOCK_STREAM };
    struct addrinfo *found = NULL;
    if (getaddrinfo (host, NULL, &hints, &found) || !found)
        return -1;
    *addr = *(struct sockaddr_in *) found->ai_addr;
    addr->sin_port = htons ((uint16_t) port);
    freeaddrinfo (found);
    return 0;
}

//  --------------------------------------------------------------------------
//  The authority part of ws://, http://, redis:// and nats:// URLs.
const char *
wsr_bench_hostport (const char *text, char *host, size_t size, int *port)
{
    const char *end = text + strcspn (text, "/?");
    const char *colon = memchr (text, ':', (size_t) (end - text));
    if (colon) {
        snprintf (host, size, "%.*s", (int) (colon - text), text);
        *port = atoi (colon + 1);
    }
    else
        snprintf (host, size, "%.*s", (int) (end - text), text);
    return end;
}

//  --------------------------------------------------------------------------
//  Lines end with LF (CR is trimmed with the other trailing white space).
const char *
wsr_bench_header_find (const char *head, size_t head_len, const char *name, size_t *len)
{
    size_t name_len = strlen (name);
    const char *end = head + head_len;
    const char *line = memchr (head, '\n', head_len);
    while (line && line + 1 < end) {
        line++;
        const char *eol = memchr (line, '\n', (size_t) (end - line));
        if (!eol)
            eol = end;
        if ((size_t) (eol - line) > name_len && strncasecmp (line, name, name_len) == 0
        &&  line [name_len] == ':') {
            const char *value = line + name_len + 1;
            while (value < eol && (*value == ' ' || *value == '\t'))
                value++;
            const char *value_end = eol;
            while (value_end > value && isspace ((unsigned char) value_end [-1]))
                value_end--;
            *len = (size_t) (value_end - value);
            return value;
        }
        line = eol < end? eol: NULL;
    }
    return NULL;
}

//  --------------------------------------------------------------------------
//  "Connection: keep-alive, Upgrade" holds "upgrade".
bool
wsr_bench_list_has (const char *value, size_t len, const char *token)
{
    size_t token_len = strlen (token);
    const char *end = value + len;
    while (value < end) {
        while (value < end && (*value == ' ' || *value == ','))
            value++;
        const char *item = value;
        while (value < end && *value != ',')
            value++;
        const char *item_end = value;
        while (item_end > item && item_end [-1] == ' ')
            item_end--;
        if ((size_t) (item_end - item) == token_len && strncasecmp (item, token, token_len) == 0)
            return true;
    }
    return false;
}

//  --------------------------------------------------------------------------
//  The publisher's connection: waited for (bounded), so that a wrong URL
//  fails at once; non-blocking afterwards.
int
wsr_bench_tcp_connect (const struct sockaddr_in *addr)
{
    int fd = socket (AF_INET, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
    if (fd < 0)
        return -1;
    if (connect (fd, (const struct sockaddr *) addr, sizeof *addr) && errno != EINPROGRESS) {
        close (fd);
        return -1;
    }
    struct pollfd item = { .fd = fd, .events = POLLOUT };
    int error = 0;
    socklen_t len = sizeof error;
    if (poll (&item, 1, WSR_BENCH_CONNECT_TIMEOUT_MS) != 1
    ||  getsockopt (fd, SOL_SOCKET, SO_ERROR, &error, &len) || error) {
        close (fd);
        return -1;
    }
    int one = 1;
    if (setsockopt (fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one))
        zsys_warning ("bench: TCP_NODELAY: %s", strerror (errno));
    return fd;
}

//  --------------------------------------------------------------------------
//  Pipe lines between the processes of a run are short and must go whole.
bool
wsr_bench_write_all (int fd, const char *data, size_t len)
{
    while (len) {
        ssize_t n = write (fd, data, len);
        if (n < 0 && errno == EINTR)
            continue;
        if (n <= 0)
            return false;
        data += n;
        len -= (size_t) n;
    }
    return true;
}

//  --------------------------------------------------------------------------
//  The server's resident memory, read at the start, when every session is
//  up, and at the end.
long
wsr_bench_rss_kib (const pid_t *pids, int count)
{
    long sum = 0;
    for (int i = 0; i < count; i++) {
        char path [64];
        snprintf (path, sizeof path, "/proc/%d/status", (int) pids [i]);
        FILE *file = fopen (path, "r");
        if (!file)
            return -1;
        char line [256];
        long rss = -1;
        while (fgets (line, sizeof line, file))
            if (sscanf (line, "VmRSS: %ld", &rss) == 1)
                break;
        fclose (file);
        if (rss < 0)
            return -1;
        sum += rss;
    }
    return sum;
}

//  --------------------------------------------------------------------------
//  The kernel's side of the sessions' memory: TCP sockets and their buffers.
json_t *
wsr_bench_sockstat (void)
{
    FILE *file = fopen ("/proc/net/sockstat", "r");
    if (!file)
        return json_null ();
    char line [256];
    json_t *result = json_null ();
    long inuse, orphan, tw, alloc, mem;
    while (fgets (line, sizeof line, file))
        if (sscanf (line, "TCP: inuse %ld orphan %ld tw %ld alloc %ld mem %ld",
                    &inuse, &orphan, &tw, &alloc, &mem) == 5) {
            json_decref (result);
            result = json_pack ("{s:I, s:I, s:I, s:I, s:I, s:I}", "inuse", (json_int_t) inuse,
                                "orphan", (json_int_t) orphan, "tw", (json_int_t) tw,
                                "alloc", (json_int_t) alloc, "mem_pages", (json_int_t) mem,
                                "mem_kib", (json_int_t) (mem * sysconf (_SC_PAGESIZE) / 1024));
        }
    fclose (file);
    return result;
}

//  --------------------------------------------------------------------------
//  Close codes and HTTP statuses travel between processes and into the
//  report in this sparse form.
json_t *
wsr_bench_codes_to_json (const uint64_t *counts, int slots, int base, int other_slot)
{
    json_t *object = json_object ();
    for (int i = 0; i < slots; i++)
        if (counts [i]) {
            char key [16];
            if (i == other_slot)
                snprintf (key, sizeof key, "other");
            else
                snprintf (key, sizeof key, "%d", base + i);
            json_object_set_new (object, key, json_integer ((json_int_t) counts [i]));
        }
    return object;
}

//  --------------------------------------------------------------------------
//  The parent adds up what its children counted.
void
wsr_bench_codes_merge (uint64_t *counts, int slots, int base, int other_slot, json_t *object)
{
    const char *key;
    json_t *value;
    json_object_foreach (object, key, value) {
        int slot = streq (key, "other")? other_slot: atoi (key) - base;
        if (slot >= 0 && slot < slots)
            counts [slot] += (uint64_t) json_integer_value (value);
    }
}

//  --------------------------------------------------------------------------
//  Selftest

void
wsr_bench_util_test (bool verbose)
{
    (void) verbose;
    int64_t t0 = wsr_bench_now ();
    assert (t0 > 0 && wsr_bench_now () >= t0);

    char out [64];
    wsr_bench_subst (out, sizeof out, "ws:{user_id}", "u1");
    assert (streq (out, "ws:u1"));
    wsr_bench_subst (out, sizeof out, "a.{x}.b", "c");
    assert (streq (out, "a.c.b"));
    wsr_bench_subst (out, sizeof out, "fixed", "c");
    assert (streq (out, "fixed"));
    wsr_bench_subst (out, sizeof out, "open{", "c");
    assert (streq (out, "open{"));

    char host [64];
    int port = 80;
    const char *rest = wsr_bench_hostport ("example.org:8080/ws?x=1", host, sizeof host, &port);
    assert (streq (host, "example.org") && port == 8080 && streq (rest, "/ws?x=1"));
    port = 80;
    rest = wsr_bench_hostport ("example.org", host, sizeof host, &port);
    assert (streq (host, "example.org") && port == 80 && streq (rest, ""));
    struct sockaddr_in addr;
    assert (wsr_bench_resolve ("127.0.0.1", 4321, &addr) == 0);
    assert (ntohl (addr.sin_addr.s_addr) == 0x7f000001 && ntohs (addr.sin_port) == 4321);
    assert (wsr_bench_resolve ("no such host.invalid", 1, &addr) == -1);

    //  Header lookup: case-insensitive name, trimmed value, first line skipped
    const char *head = "HTTP/1.1 101 Switching\r\nUpgrade:  WebSocket \r\n"
                       "Connection: keep-alive, Upgrade\r\nX-Empty:\r\n\r\n";
    size_t len = 0;
    const char *value = wsr_bench_header_find (head, strlen (head), "upgrade", &len);
    assert (value && len == 9 && strncmp (value, "WebSocket", 9) == 0);
    value = wsr_bench_header_find (head, strlen (head), "connection", &len);
    assert (value && wsr_bench_list_has (value, len, "upgrade"));
    assert (wsr_bench_list_has (value, len, "KEEP-ALIVE"));
    assert (!wsr_bench_list_has (value, len, "close"));
    assert (!wsr_bench_list_has (value, len, "upgrad"));
    value = wsr_bench_header_find (head, strlen (head), "x-empty", &len);
    assert (value && len == 0);
    assert (!wsr_bench_header_find (head, strlen (head), "HTTP/1.1 101", &len));
    assert (!wsr_bench_header_find (head, strlen (head), "sec-websocket-accept", &len));

    //  Codes: sparse, "other" slot, merge adds up and ignores what it cannot place
    uint64_t codes [WSR_BENCH_CLOSE_SLOTS] = { 0 };
    codes [1] = 3;
    codes [16] = 2;
    json_t *json = wsr_bench_codes_to_json (codes, WSR_BENCH_CLOSE_SLOTS, 1000, 16);
    assert (json_object_size (json) == 2);
    assert (json_integer_value (json_object_get (json, "1001")) == 3);
    assert (json_integer_value (json_object_get (json, "other")) == 2);
    json_object_set_new (json, "99", json_integer (7));
    uint64_t sum [WSR_BENCH_CLOSE_SLOTS] = { 0 };
    wsr_bench_codes_merge (sum, WSR_BENCH_CLOSE_SLOTS, 1000, 16, json);
    wsr_bench_codes_merge (sum, WSR_BENCH_CLOSE_SLOTS, 1000, 16, json);
    json_decref (json);
    assert (sum [1] == 6 && sum [16] == 4);
    for (int i = 0; i < WSR_BENCH_CLOSE_SLOTS; i++)
        assert (i == 1 || i == 16 || sum [i] == 0);

    //  Pipes: all or nothing
    int fds [2];
    assert (pipe (fds) == 0);
    assert (wsr_bench_write_all (fds [1], "line\n", 5));
    char buf [8];
    assert (read (fds [0], buf, sizeof buf) == 5 && memcmp (buf, "line\n", 5) == 0);
    close (fds [0]);
    void (*handler) (int) = signal (SIGPIPE, SIG_IGN);
    assert (!wsr_bench_write_all (fds [1], "x", 1));
    signal (SIGPIPE, handler);
    close (fds [1]);

    //  Our own memory reads; a process that does not exist does not
    pid_t pids [2] = { getpid (), getpid () };
    long one = wsr_bench_rss_kib (pids, 1);
    assert (one > 0 && wsr_bench_rss_kib (pids, 2) >= one);
    pid_t none = 0x7ffffff0;
    assert (wsr_bench_rss_kib (&none, 1) == -1);
    //  A connect to a closed port fails within the limit; to a listener it works
    int listener = socket (AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
    assert (listener >= 0);
    struct sockaddr_in local = { .sin_family = AF_INET };
    local.sin_addr.s_addr = htonl (INADDR_LOOPBACK);
    socklen_t local_len = sizeof local;
    assert (bind (listener, (struct sockaddr *) &local, sizeof local) == 0);
    assert (getsockname (listener, (struct sockaddr *) &local, &local_len) == 0);
    assert (listen (listener, 4) == 0);
    json_t *sockstat = wsr_bench_sockstat ();
    assert (json_integer_value (json_object_get (sockstat, "inuse")) >= 1);
    assert (json_is_integer (json_object_get (sockstat, "mem_kib")));
    json_decref (sockstat);
    int fd = wsr_bench_tcp_connect (&local);
    assert (fd >= 0);
    close (fd);
    close (listener);
    assert (wsr_bench_tcp_connect (&local) == -1);
}
