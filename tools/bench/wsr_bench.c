//  wsr_bench — `wsrouter bench`: many WebSocket sessions, timed publishing, one JSON report
//
//  A load generator and latency meter for wsrouter, in tools/bench, outside
//  the server's library (the `wsrouter` binary links both). One process, or
//  K forked processes (--procs, because of the per-process open-files
//  limit), each with one epoll loop and no thread per connection. The
//  classes, one concept each:
//
//    wsr_bench_opts      options, usage, the report's params
//    wsr_bench_ident     who each session is: user and token
//    wsr_bench_sessions  the WebSocket client: handshakes, frames, counting
//    wsr_bench_payload   the timestamped message header
//    wsr_bench_rx        the receiving side's counters, merged across processes
//    wsr_bench_hist      latency histograms
//    wsr_bench_pub       the publisher: HTTP API, Redis or NATS
//    wsr_bench_children  receiver processes and their pipe protocol
//    wsr_bench_run       the epoll loop, the phases, the report
//    wsr_bench_buf       bounded byte buffers; wsr_bench_util small helpers
//
//  This file is the command: options, identities, signals, the run, the
//  JSON report on stdout.

#include "wsr_bench_classes.h"
#include <nats/nats.h>

static void
s_on_sigint (int sig)
{
    (void) sig;
    wsr_bench_interrupted = 1;
}

//  --------------------------------------------------------------------------
//  Run `wsrouter bench`.
int
wsr_bench_main (int argc, char *argv [])
{
    wsr_bench_opts_t opts;
    int rc = wsr_bench_opts_parse (&opts, argc, argv);
    if (rc)
        return rc == 1? 0: 2;
    if (sodium_init () < 0) {
        fprintf (stderr, "wsrouter bench: libsodium failed to initialise\n");
        return 1;
    }
    //  stdout carries the report only: czmq's log goes to stderr
    zsys_set_logstream (stderr);
    wsr_bench_ident_t *ident = wsr_bench_ident_new (&opts);
    if (!ident)
        return 2;
    long nofile = wsr_util_raise_nofile ();
    uint64_t per_proc = ((uint64_t) opts.sessions + opts.slow + (uint64_t) opts.procs - 1)
                      / (uint64_t) opts.procs;
    if (nofile > 0 && per_proc + 64 > (uint64_t) nofile)
        fprintf (stderr, "wsrouter bench: warning: %" PRIu64 " sessions per process but only "
                 "%ld open files; use --procs\n", per_proc, nofile);
    //  SIGINT ends the run early but still reports; signals are not blocked here
    sigset_t signals;
    sigemptyset (&signals);
    sigaddset (&signals, SIGINT);
    pthread_sigmask (SIG_UNBLOCK, &signals, NULL);
    struct sigaction action = { .sa_handler = s_on_sigint };
    sigemptyset (&action.sa_mask);
    sigaction (SIGINT, &action, NULL);
    signal (SIGPIPE, SIG_IGN);

    json_t *report = NULL;
    wsr_bench_run_t *run = wsr_bench_run_new (&opts, ident);
    if (run)
        report = wsr_bench_run_execute (run);
    wsr_bench_run_destroy (&run);
    wsr_bench_ident_destroy (&ident);
    if (opts.pub_kind == WSR_BENCH_PUB_NATS)
        nats_Close ();
    if (!report)
        return 1;
    char *text = json_dumps (report, JSON_INDENT (2) | JSON_PRESERVE_ORDER
                                   | JSON_REAL_PRECISION (10));
    printf ("%s\n", text);
    fflush (stdout);
    free (text);
    json_decref (report);
    return 0;
}

//  --------------------------------------------------------------------------
//  Selftest

//  A node in this process: HTTP publishing with key, tokens with secret.
static wsr_node_t *
s_test_node (const char *name, const char *secret, const char *key)
{
    wsr_node_opts_t node_opts;
    wsr_node_opts_defaults (&node_opts);
    node_opts.name = name;
    node_opts.bind = "127.0.0.1";
    node_opts.port = 0;
    node_opts.api_key = key;
    node_opts.jwt_secret = (const uint8_t *) secret;
    node_opts.jwt_secret_len = strlen (secret);
    node_opts.workers = 1;
    node_opts.max_pending_per_ip = 0;   //  every bench session comes from 127.0.0.1
    wsr_node_t *node = wsr_node_new (&node_opts);
    assert (node);
    return node;
}

void
wsr_bench_test (bool verbose)
{
    assert (sodium_init () >= 0);
    //  Bad arguments are refused before anything starts
    char *bad [] = { (char *) "bench", (char *) "--sessions", (char *) "x", NULL };
    assert (wsr_bench_main (3, bad) == 2);

    //  A real node in this process, 50 sessions, 200 messages over HTTP
    const char *secret = "bench-test-secret-0123456789abcdef";
    wsr_node_t *node = s_test_node ("btest", secret, "bench-key");
    int port = wsr_node_port (node);
    char url [64], publish [64], pid [16];
    snprintf (url, sizeof url, "ws://127.0.0.1:%d/ws", port);
    snprintf (publish, sizeof publish, "http://127.0.0.1:%d", port);
    snprintf (pid, sizeof pid, "%d", (int) getpid ());
    char *argv [] = {
        (char *) "bench", (char *) "--url", url, (char *) "--sessions", (char *) "50",
        (char *) "--jwt-secret", (char *) secret, (char *) "--publish", publish,
        (char *) "--api-key", (char *) "bench-key", (char *) "--messages", (char *) "200",
        (char *) "--rate", (char *) "1000", (char *) "--size", (char *) "64",
        (char *) "--final-publish", (char *) "--slow", (char *) "2", (char *) "--quiet",
        (char *) "--server-pids", pid, NULL
    };
    int argc = (int) (sizeof argv / sizeof argv [0]) - 1;
    wsr_bench_opts_t opts;
    assert (wsr_bench_opts_parse (&opts, argc, argv) == 0);
    opts.quiet = !verbose;
    wsr_bench_ident_t *ident = wsr_bench_ident_new (&opts);
    assert (ident && wsr_bench_ident_user_count (ident) == 50);
    int64_t started = wsr_bench_now ();
    wsr_bench_run_t *run = wsr_bench_run_new (&opts, ident);
    assert (run);
    json_t *report = wsr_bench_run_execute (run);
    wsr_bench_run_destroy (&run);
    assert (report);
    if (verbose) {
        char *text = json_dumps (report, JSON_INDENT (2) | JSON_PRESERVE_ORDER);
        printf ("%s\n", text);
        free (text);
    }
    assert (json_integer_value (json_object_get (report, "sessions_established")) == 50);
    assert (json_integer_value (json_object_get (report, "messages_received")) == 200);
    assert (json_integer_value (json_object_get (report, "messages_expected")) == 200);
    assert (json_integer_value (json_object_get (report, "publish_accepted")) == 200);
    assert (json_integer_value (json_object_get (report, "loss")) == 0);
    assert (json_integer_value (json_object_get (report, "duplicates")) == 0);
    assert (json_integer_value (json_object_get (report, "reordered")) == 0);
    assert (json_integer_value (json_object_get (report, "misrouted")) == 0);
    json_t *latency = json_object_get (report, "latency_ms");
    assert (json_integer_value (json_object_get (latency, "count")) == 200);
    assert (json_real_value (json_object_get (latency, "p50")) > 0);
    json_t *final = json_object_get (report, "final_publish");
    assert (json_integer_value (json_object_get (final, "sent")) == 50);
    assert (json_integer_value (json_object_get (final, "missing")) == 0);
    assert (json_integer_value (json_object_get (report, "slow_sessions_established")) == 2);
    json_t *memory = json_object_get (report, "memory");
    assert (json_integer_value (json_object_get (memory, "rss_start_kib")) > 0);
    assert (json_is_real (json_object_get (memory, "per_session_bytes")));
    json_t *publisher = json_object_get (report, "publisher");
    //  Every request accepted (202): measured, final, and the warm-up rounds
    //  (to the 50 users each; the last one may be cut short)
    json_int_t sent = json_integer_value (json_object_get (publisher, "sent_all_kinds"));
    json_int_t rounds = json_integer_value (json_object_get (json_object_get (report, "warmup"),
                                                             "rounds"));
    assert (rounds >= 1 && sent > 250 + 50 * (rounds - 1) && sent <= 250 + 50 * rounds);
    assert (json_integer_value (json_object_get (publisher, "warmup_accepted")) == sent - 250);
    json_t *status = json_object_get (publisher, "http_status");
    assert (json_object_size (status) == 1);
    assert (json_integer_value (json_object_get (status, "202")) == sent);
    assert (!json_is_true (json_object_get (report, "interrupted")));
    assert (wsr_bench_now () - started < 10 * WSR_BENCH_SEC);
    json_decref (report);
    wsr_bench_ident_destroy (&ident);
    wsr_node_destroy (&node);
}
