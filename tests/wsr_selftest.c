//  wsr_selftest — runs the selftest of one class or actor, or all of them

#include "wsr_classes.h"
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
    { "envelope", wsr_envelope_test },
    { "jwt", wsr_jwt_test },
    { "http", wsr_http_test },
    { "outframe", wsr_outframe_test },
    { "ipcount", wsr_ipcount_test },
    { "curve", wsr_curve_test },
    { "link", wsr_link_test },
    { "auth", wsr_auth_test },
    { "router", wsr_router_test },
    { "session", wsr_session_test },
    { "listener", wsr_listener_test },
    { "node", wsr_node_test },
    { "naming", wsr_naming_test },
    { "redis", wsr_redis_test },
    { "history", wsr_history_test },
    { "recovery", wsr_recovery_test },
    { "nats", wsr_nats_test },
    { "jetstream", wsr_jetstream_test },
    { "peers", wsr_peers_test },
    { "zap", wsr_zap_test },
    { "upstream_http", wsr_upstream_http_test },
    { "bridge", wsr_bridge_test },
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
    for (wsr_test_t *t = s_tests; t->name; t++) {
        if (only && strcmp (only, t->name))
            continue;
        printf (" * %s: ", t->name);
        fflush (stdout);
        t->test (verbose);
        printf ("OK\n");
        ran++;
    }
    if (ran == 0) {
        fprintf (stderr, "no selftest named '%s'\n", only? only: "");
        return 1;
    }
    nats_Close ();
    zsys_shutdown ();
    return 0;
}
