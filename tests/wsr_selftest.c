//  wsr_selftest — runs the selftest of one class or actor, or all of them
//
//  `wsr_selftest NAME` runs one (ctest runs each as unit_NAME), no argument
//  runs them all. Exit status: 0 if every selftest run passed, 77 (ctest's
//  SKIP_RETURN_CODE) if one of them could not run here and said so with
//  wsr_util_test_skip, 1 if NAME is unknown; a failed assert aborts.
//  The load generator's selftests (bench_*) come from tools/bench.

#include "wsr_classes.h"
#include "wsr_bench_classes.h"
#include "wsr_upstream_http.h"
#include <nats/nats.h>
#include <curl/curl.h>

typedef struct {
    const char *name;                   //  class name, also the ctest name
    void (*test) (bool verbose);        //  its selftest
} wsr_test_t;

static wsr_test_t
s_tests [] = {
    { "util", wsr_util_test },
    { "metrics", wsr_metrics_test },
    { "topic", wsr_topic_test },
    { "census", wsr_census_test },
    { "envelope", wsr_envelope_test },
    { "v1", wsr_v1_test },
    { "jwt", wsr_jwt_test },
    { "http", wsr_http_test },
    { "outframe", wsr_outframe_test },
    { "passfd", wsr_passfd_test },
    { "handover", wsr_handover_test },
    { "hring", wsr_hring_test },
    { "tls", wsr_tls_test },
    { "tlsrec", wsr_tlsrec_test },
    { "deflate", wsr_deflate_test },
    { "ipcount", wsr_ipcount_test },
    { "curve", wsr_curve_test },
    { "link", wsr_link_test },
    { "auth", wsr_auth_test },
    { "router", wsr_router_test },
    { "session", wsr_session_test },
    { "listener", wsr_listener_test },
    { "node", wsr_node_test },
    { "upgrade", wsr_upgrade_test },
    { "naming", wsr_naming_test },
    { "redis", wsr_redis_test },
    { "rcluster", wsr_rcluster_test },
    { "history", wsr_history_test },
    { "recovery", wsr_recovery_test },
    { "hreads", wsr_hreads_test },
    { "presence", wsr_presence_test },
    { "v1sess", wsr_v1sess_test },
    { "nats", wsr_nats_test },
    { "jetstream", wsr_jetstream_test },
    { "jsmerge", wsr_jsmerge_test },
    { "peers", wsr_peers_test },
    { "zap", wsr_zap_test },
    { "upstream_http", wsr_upstream_http_test },
    { "bridge", wsr_bridge_test },
    { "bench_util", wsr_bench_util_test },
    { "bench_buf", wsr_bench_buf_test },
    { "bench_hist", wsr_bench_hist_test },
    { "bench_opts", wsr_bench_opts_test },
    { "bench_ident", wsr_bench_ident_test },
    { "bench_payload", wsr_bench_payload_test },
    { "bench_rx", wsr_bench_rx_test },
    { "bench_ws", wsr_bench_ws_test },
    { "bench_sessions", wsr_bench_sessions_test },
    { "bench_pub", wsr_bench_pub_test },
    { "bench_children", wsr_bench_children_test },
    { "bench_run", wsr_bench_run_test },
    { "bench", wsr_bench_test },
    { NULL, NULL }
};

int
main (int argc, char *argv [])
{
    bool verbose = getenv ("VERBOSE") != NULL;
    wsr_verbose = verbose;
    const char *only = argc > 1? argv [1]: NULL;
    if (sodium_init () < 0)
        return 1;
    zsys_init ();
    zsys_handler_set (NULL);
    curl_global_init (CURL_GLOBAL_DEFAULT);     //  before any thread, as in main
    wsr_util_raise_nofile ();
    int ran = 0;
    int skipped = 0;
    for (wsr_test_t *t = s_tests; t->name; t++) {
        if (only && strcmp (only, t->name))
            continue;
        printf (" * %s: ", t->name);
        fflush (stdout);
        t->test (verbose);
        const char *why = wsr_util_test_skipped ();
        if (why) {
            printf ("SKIPPED (%s)\n", why);
            skipped++;
        }
        else
            printf ("OK\n");
        ran++;
    }
    if (ran == 0) {
        fprintf (stderr, "no selftest named '%s'\n", only? only: "");
        return 1;
    }
    if (ran > 1)
        printf ("%d passed, %d skipped\n", ran - skipped, skipped);
    wsr_nats_shutdown ();
    zsys_shutdown ();
    return skipped? 77: 0;
}
