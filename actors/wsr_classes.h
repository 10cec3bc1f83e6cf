//  wsr_classes — private umbrella header, first include of every wsrouter .c

#ifndef WSR_CLASSES_H_INCLUDED
#define WSR_CLASSES_H_INCLUDED

#include <czmq.h>
#include <sodium.h>
#include <stdatomic.h>
#include <stdbool.h>
#include <stdint.h>

//  Limits and defaults: named here, never as magic numbers in the code.
#define WSR_MAX_ID_LEN              128     //  user id / channel name bytes
#define WSR_MAX_CHANNELS            32      //  channels claim entries per session
#define WSR_MAX_TOKEN_LEN           8192    //  JWT bytes accepted
#define WSR_MAX_HEADER_BYTES        8192    //  request line + headers
#define WSR_MAX_API_BODY            (2 * 1024 * 1024)   //  HTTP body limit in tests
#define WSR_DEFAULT_MAX_MESSAGE     (1024 * 1024)       //  WEBSOCKET_MAX_MESSAGE
#define WSR_DEFAULT_MAX_QUEUE       (8 * 1024 * 1024)   //  per-session output cap
#define WSR_HANDSHAKE_TIMEOUT_MS    10000   //  request must be complete by then
#define WSR_MAX_PENDING_HANDSHAKES  10000   //  connections before their request is complete
#define WSR_DEFAULT_MAX_PER_IP      10000   //  connections per client address (/64 for IPv6)
#define WSR_DEFAULT_PING_INTERVAL_MS 25000  //  WEBSOCKET_PING_INTERVAL
#define WSR_DEFAULT_PING_TIMEOUT_MS 10000   //  WEBSOCKET_PING_TIMEOUT
#define WSR_DEFAULT_RATE_MESSAGES   100     //  inbound frames per session per second
#define WSR_DEFAULT_RATE_BYTES      (1024 * 1024)   //  inbound bytes per session per second
#define WSR_DEFAULT_HANDSHAKE_RATE  20000   //  new connections per node per second
#define WSR_CLOSE_TIMEOUT_MS        2000    //  wait for the peer's close reply
#define WSR_JWT_LEEWAY_S            30      //  exp / nbf / iat clock skew
#define WSR_DEFAULT_MAX_PENDING_PER_IP 64   //  pending connections per client address
#define WSR_DEFAULT_KEEPALIVE_MS    60000   //  keep-alive connection lifetime
#define WSR_DEFAULT_KEEPALIVE_REQUESTS 1000 //  requests per keep-alive connection
#define WSR_MIN_HS256_SECRET        32      //  bytes, outside --dev
#define WSR_DEFAULT_PORT            8080
#define WSR_HWM                     100000  //  inproc high-water marks
#define WSR_WORKER_BUDGET           256     //  messages per socket per turn
#define WSR_OUTFRAME_INLINE         1024    //  payloads copied behind their header
#define WSR_MALLOC_TRIM_THRESHOLD   (64 * 1024 * 1024)  //  free memory kept per arena
#define WSR_MALLOC_MMAP_THRESHOLD   (1024 * 1024)       //  larger blocks are mmap'ed
#define WSR_MAX_WORKERS             64
#define WSR_BRIDGE_MAX_PEERS        65536   //  node actors one bridge serves
#define WSR_DEFAULT_BRIDGE_MAX_TOPICS 4000000   //  topics per node at a bridge
#define WSR_DEFAULT_DEFLATE_THRESHOLD 128   //  smaller payloads go out uncompressed
#define WSR_DEFAULT_DEFLATE_LEVEL   6       //  zlib level for permessage-deflate
#define WSR_CENSUS_TOP              100     //  topics each worker reports to the console
#define WSR_CENSUS_WANTED_MS        5000    //  workers count this long after a look
#define WSR_CENSUS_PERIOD_MS        900     //  ... at most this often (they wake each 1 s),
#define WSR_CENSUS_TOPICS_PER_MS    50      //  ... and 1 ms per 50 topics held (1M: 20 s)
#define WSR_CENSUS_STEP             1024    //  topics counted per turn of a worker's loop
#define WSR_CONSOLE_TOKEN_TTL_S     600     //  dev tokens minted by the console
#define WSR_CONSOLE_STREAMS         16      //  live-figure streams (SSE) at once per node

#include "wsr_msgs.h"
#include "wsr_util.h"
#include "wsr_metrics.h"
#include "wsr_topic.h"
#include "wsr_census.h"
#include "wsr_redis.h"
#include "wsr_history.h"
#include "wsr_envelope.h"
#include "wsr_v1.h"
#include "wsr_jwt.h"
#include "wsr_http.h"
#include "wsr_outframe.h"
#include "wsr_passfd.h"
#include "wsr_handover.h"
#include "wsr_hring.h"
#include "wsr_tls.h"
#include "wsr_tlsrec.h"
#include "wsr_deflate.h"
#include "wsr_ipcount.h"
#include "wsr_curve.h"
#include "wsr_link.h"
#include "wsr_listener.h"
#include "wsr_auth.h"
#include "wsr_session.h"
#include "wsr_router.h"
#include "wsr_naming.h"
#include "wsr_rcluster.h"
#include "wsr_recovery.h"
#include "wsr_nats.h"
#include "wsr_jetstream.h"
#include "wsr_hreads.h"
#include "wsr_presence.h"
#include "wsr_v1sess.h"
#include "wsr_peers.h"
#include "wsr_jsmerge.h"
#include "wsr_zap.h"
#include "wsr_bridge.h"
#include "wsr_node.h"
#include "wsr_upgrade.h"

#endif
