//  wsr_bench_classes — private umbrella header of the load generator, first include
//
//  The load generator (`wsrouter bench`) lives outside the server library: it
//  links the library for token minting and id rules (and, in its selftest, a
//  real node), the library never links it.

#ifndef WSR_BENCH_CLASSES_H_INCLUDED
#define WSR_BENCH_CLASSES_H_INCLUDED

#include "wsr_classes.h"
#include <jansson.h>
#include <netinet/in.h>
#include <signal.h>

//  Time units (all bench times are CLOCK_MONOTONIC ns)
#define WSR_BENCH_MS                1000000LL           //  ns per ms
#define WSR_BENCH_SEC               1000000000LL        //  ns per s

//  Limits of the options
#define WSR_BENCH_MAX_URLS          64          //  --url entries
#define WSR_BENCH_MAX_PROCS         64          //  --procs
#define WSR_BENCH_MAX_PIDS          64          //  --server-pids entries
#define WSR_BENCH_MAX_SIZE          (1024 * 1024 - 64)  //  --size limit (server max 1 MiB)
#define WSR_BENCH_MAX_SESSIONS      10000000    //  --sessions, --inflight
#define WSR_BENCH_MAX_SLOW          1000000     //  --slow
#define WSR_BENCH_MAX_PIPELINE      1000000     //  --pipeline
#define WSR_BENCH_MAX_TOKEN_TTL_S   100000000   //  --token-ttl
#define WSR_BENCH_MAX_SECONDS       1e7         //  any option in seconds

//  Defaults of the options
#define WSR_BENCH_DEFAULT_RAMP      5000        //  handshakes started per second
#define WSR_BENCH_DEFAULT_INFLIGHT  1000        //  handshakes in progress
#define WSR_BENCH_DEFAULT_HS_TIMEOUT_NS (10 * WSR_BENCH_SEC)
#define WSR_BENCH_DEFAULT_SIZE      100         //  payload bytes
#define WSR_BENCH_DEFAULT_PIPELINE  128         //  HTTP requests / Redis commands unanswered
#define WSR_BENCH_DEFAULT_WARMUP_NS (10 * WSR_BENCH_SEC)
#define WSR_BENCH_DEFAULT_DRAIN_NS  (5 * WSR_BENCH_SEC)
#define WSR_BENCH_DEFAULT_TOKEN_TTL_S 86400

//  Payloads and counters
#define WSR_BENCH_HDR_LEN           46          //  payload header bytes
#define WSR_BENCH_KINDS             3           //  message kinds: measured, warm-up, final
#define WSR_BENCH_CLOSE_SLOTS       17          //  close codes 1000..1015, then other
#define WSR_BENCH_STATUS_SLOTS      500         //  HTTP statuses 100..599

//  Sessions (the WebSocket client)
#define WSR_BENCH_READ_CHUNK        65536       //  scratch read buffer
#define WSR_BENCH_READS_PER_WAKE    4           //  reads per connection per wake-up
#define WSR_BENCH_HS_RESPONSE_MAX   1024        //  101 response head limit
#define WSR_BENCH_CONTROL_MAX       125         //  control frame payload limit
#define WSR_BENCH_START_BATCH       1024        //  connections started per loop turn at most
#define WSR_BENCH_SLOW_RCVBUF       4096        //  receive buffer of a slow session
#define WSR_BENCH_SLOW_CHECK_NS     (2 * WSR_BENCH_SEC)     //  reading slow sessions at the end
#define WSR_BENCH_QUICK_DRAIN_NS    (500 * WSR_BENCH_MS)    //  drain after SIGINT

//  Publisher
#define WSR_BENCH_NATS_MAX_BUFFERED (8 * 1024 * 1024)   //  libnats pending bytes before waiting
#define WSR_BENCH_NATS_FLUSH_MS     5000        //  final flush round trip limit
#define WSR_BENCH_RETRY_NS          (100 * WSR_BENCH_MS)    //  publisher reconnect backoff
#define WSR_BENCH_CONNECT_TIMEOUT_MS 2000       //  publisher connect limit
#define WSR_BENCH_PUB_STALL_NS      (10 * WSR_BENCH_SEC)    //  publisher blocked this long: give up
#define WSR_BENCH_HTTP_READ         65536       //  HTTP answers read per recv

//  The run and its processes
#define WSR_BENCH_MAX_EVENTS        1024        //  epoll_wait batch
#define WSR_BENCH_PUB_BATCH         1024        //  messages per loop turn at most
#define WSR_BENCH_STATUS_NS         (100 * WSR_BENCH_MS)    //  child status line period
#define WSR_BENCH_PROGRESS_NS       WSR_BENCH_SEC           //  progress line period
#define WSR_BENCH_WARMUP_ROUND_NS   (250 * WSR_BENCH_MS)    //  pause between warm-up rounds
#define WSR_BENCH_CHILD_GRACE_NS    (15 * WSR_BENCH_SEC)    //  beyond --drain before children go
#define WSR_BENCH_REAP_NS           (5 * WSR_BENCH_SEC)     //  children's exit before SIGKILL
#define WSR_BENCH_PUBLISH_TIMEOUT_NS (600 * WSR_BENCH_SEC)  //  --messages without --duration
#define WSR_BENCH_FINAL_TIMEOUT_NS  (60 * WSR_BENCH_SEC)    //  the final round, at most
#define WSR_BENCH_PIPE_READ         65536       //  child status bytes read per call

//  epoll data: tag << 32 | index
#define WSR_BENCH_TAG_CONN          1           //  a session; index = its slot
#define WSR_BENCH_TAG_PUB           2           //  the publisher's socket
#define WSR_BENCH_TAG_CHILD         3           //  a child's status pipe; index = child
#define WSR_BENCH_TAG_CMD           4           //  the parent's command pipe (in a child)

#include "wsr_bench_util.h"
#include "wsr_bench_buf.h"
#include "wsr_bench_hist.h"
#include "wsr_bench_opts.h"
#include "wsr_bench_ident.h"
#include "wsr_bench_payload.h"
#include "wsr_bench_ws.h"
#include "wsr_bench_rx.h"
#include "wsr_bench_sessions.h"
#include "wsr_bench_pub.h"
#include "wsr_bench_children.h"
#include "wsr_bench_run.h"
#include "wsr_bench.h"

#endif
