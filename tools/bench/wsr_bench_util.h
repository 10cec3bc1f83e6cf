//  wsr_bench_util — small helpers of the load generator: clock, addresses, HTTP heads, /proc

#ifndef WSR_BENCH_UTIL_H_INCLUDED
#define WSR_BENCH_UTIL_H_INCLUDED

#ifdef __cplusplus
extern "C" {
#endif

//  CLOCK_MONOTONIC in ns: every bench time, on every process of the run.
int64_t
    wsr_bench_now (void);

//  epoll_ctl with data = tag << 32 | index; a failure other than on DEL is
//  logged (the descriptor then simply never reports).
void
    wsr_bench_epoll_set (int epoll_fd, int op, int fd, uint32_t events, uint32_t tag,
                         uint32_t index);

//  Write into out (size bytes) tpl with its first "{...}" placeholder
//  replaced by value; tpl as is if it has none.
void
    wsr_bench_subst (char *out, size_t size, const char *tpl, const char *value);

//  Resolve host (IPv4) and port into addr; -1 if it does not resolve.
int
    wsr_bench_resolve (const char *host, int port, struct sockaddr_in *addr);

//  Split "HOST[:PORT][/rest]" (what follows a scheme): host into host (size
//  bytes), the port into *port if there is one (else *port is unchanged).
//  Returns the rest ("/..." or "?..." or "").
const char *
    wsr_bench_hostport (const char *text, char *host, size_t size, int *port);

//  Value of header name (case-insensitive) in an HTTP head of head_len bytes
//  (the lines after the first), or NULL; *len is set to its trimmed length.
//  The value points into head.
const char *
    wsr_bench_header_find (const char *head, size_t head_len, const char *name, size_t *len);

//  True if the comma list value (len bytes) holds token, case-insensitive.
bool
    wsr_bench_list_has (const char *value, size_t len, const char *token);

//  Connect a non-blocking TCP socket (TCP_NODELAY) to addr, waiting at most
//  WSR_BENCH_CONNECT_TIMEOUT_MS. Returns the descriptor (caller closes) or -1.
int
    wsr_bench_tcp_connect (const struct sockaddr_in *addr);

//  Write all of data to a blocking descriptor (a pipe); false if the reader is gone.
bool
    wsr_bench_write_all (int fd, const char *data, size_t len);

//  Sum of VmRSS in KiB of the count processes pids; -1 if one cannot be read.
long
    wsr_bench_rss_kib (const pid_t *pids, int count);

//  /proc/net/sockstat's TCP line as a JSON object (mem in pages and KiB), or
//  JSON null. Caller owns the result.
json_t *
    wsr_bench_sockstat (void);

//  Sparse {"CODE": count} of counts [slots] where slot i is code base + i and
//  slot other_slot (if >= 0) is "other". Caller owns the result.
json_t *
    wsr_bench_codes_to_json (const uint64_t *counts, int slots, int base, int other_slot);

//  Add an object made by wsr_bench_codes_to_json into counts; unknown keys
//  are ignored.
void
    wsr_bench_codes_merge (uint64_t *counts, int slots, int base, int other_slot,
                           json_t *object);

//  Self test
void
    wsr_bench_util_test (bool verbose);

#ifdef __cplusplus
}
#endif
#endif
