//  wsr_bench_run — one bench run: the epoll loop, the phases, the report
//
//  A run is one process's part of the bench, in one epoll loop with no
//  thread per connection:
//  - local: sessions and the publisher in this process (--procs 1);
//  - parent: the publisher, with --procs receiver children (it holds no
//    session itself) whose counters it adds up;
//  - child: sessions only, driven by the parent's commands.
//  All times are CLOCK_MONOTONIC of this one machine, so latency = receive
//  time − the time the publisher embedded (wsr_bench_payload).
//
//  Phases, driven by the publishing process: connect → hold (--hold) →
//  warm-up (rounds of W messages to every target, until every open session
//  has seen one or --warmup passes: subscriptions reach the router and the
//  backplane asynchronously and must exist before measuring) → publish
//  (--rate or max, --duration or --messages) → final (--final-publish: one
//  F message per user, or one to the channel) → flush (the publisher's
//  acknowledgements) → drain (receivers wait until they have what they
//  expect, at most --drain, and read their slow sessions to see whether the
//  server closed them) → report.
//
//  Every phase has a deadline, and a publisher that can hand over nothing
//  for WSR_BENCH_PUB_STALL_NS ends publishing, so every run ends by itself;
//  SIGINT (wsr_bench_interrupted) ends it early with a report all the same.
//
//  Owns: the epoll set, the sessions or the children, the publisher, the
//  memory readings; nothing outlives the run.

#include "wsr_bench_classes.h"
#include <poll.h>
#include <sys/epoll.h>

volatile sig_atomic_t wsr_bench_interrupted = 0;

typedef enum {
    S_ROLE_LOCAL,                   //  sessions and publisher in one process
    S_ROLE_PARENT,                  //  publisher; sessions in children
    S_ROLE_CHILD                    //  sessions only
} s_role_t;

typedef enum {
    S_PHASE_CONNECT,
    S_PHASE_HOLD,
    S_PHASE_WARMUP,
    S_PHASE_PUBLISH,
    S_PHASE_FINAL,
    S_PHASE_FLUSH,
    S_PHASE_DRAIN,
    S_PHASE_END,
    S_PHASE_COUNT
} s_phase_t;

static const char *s_phase_names [S_PHASE_COUNT] = {
    [S_PHASE_CONNECT] = "connect", [S_PHASE_HOLD] = "hold", [S_PHASE_WARMUP] = "warmup",
    [S_PHASE_PUBLISH] = "publish", [S_PHASE_FINAL] = "final", [S_PHASE_FLUSH] = "flush",
    [S_PHASE_DRAIN] = "drain", [S_PHASE_END] = "end"
};

#define S_CMD_MAX           4096        //  unparsed commands from the parent

struct _wsr_bench_run_t {
    const wsr_bench_opts_t *opts;   //  settings (not owned)
    wsr_bench_ident_t *ident;       //  users and tokens (not owned)
    s_role_t role;
    int epoll_fd;                   //  the one epoll set (owned)
    int64_t now;                    //  mono ns, updated after each wake-up
    wsr_bench_sessions_t *sessions; //  local, child: the sessions (owned)
    wsr_bench_rx_t *merged;         //  parent: the children's counters (owned)
    wsr_bench_rx_t *rx;             //  the counters reported (sessions' or merged)

    //  Child control
    int cmd_fd;                     //  commands from the parent (owned), -1 if none
    int status_fd;                  //  lines to the parent (owned), -1 if none
    wsr_bench_buf_t *cmd_line;      //  partial command (owned)
    int64_t next_status;            //  next status line due
    bool exit_now;                  //  "X" or parent gone

    //  Publishing side (local, parent)
    wsr_bench_pub_t *pub;           //  the publisher (owned; idle without --publish)
    wsr_bench_children_t *children; //  parent: receiver processes (owned)
    s_phase_t phase;
    int64_t phase_deadline;         //  limit of the current phase
    uint32_t target_count;          //  users (user mode) or 1 (channel mode)
    uint32_t *seq;                  //  last sequence sent per target (owned)
    uint32_t rr;                    //  next target of a measured message
    uint64_t sent_measured;         //  measured messages sent (M)
    uint32_t round_next;            //  next target of the warm-up / final round
    bool round_active;              //  a warm-up / final round is being sent
    int64_t next_round;             //  warm-up: next round not before
    uint32_t warm_rounds;           //  warm-up rounds sent
    uint64_t final_count;           //  final messages sent
    int64_t t_start;                //  run started
    int64_t t_up;                   //  all sessions resolved
    int64_t t_warm;                 //  warm-up ended
    int64_t t_pub_start, t_pub_end; //  measured publishing
    int64_t next_progress;          //  next progress line
    bool interrupted;               //  SIGINT seen
    json_t *memory;                 //  RSS and sockstat readings (owned)
};

//  A run of role with its epoll set; NULL if there is none to be had.
static wsr_bench_run_t *
s_run_new (const wsr_bench_opts_t *opts, wsr_bench_ident_t *ident, s_role_t role)
{
    wsr_bench_run_t *self = (wsr_bench_run_t *) zmalloc (sizeof (wsr_bench_run_t));
    assert (self);
    self->opts = opts;
    self->ident = ident;
    self->role = role;
    self->cmd_fd = self->status_fd = -1;
    self->now = self->t_start = wsr_bench_now ();
    self->memory = json_object ();
    self->epoll_fd = epoll_create1 (EPOLL_CLOEXEC);
    if (self->epoll_fd < 0) {
        fprintf (stderr, "wsrouter bench: epoll_create1: %s\n", strerror (errno));
        wsr_bench_run_destroy (&self);
    }
    return self;
}

//  Record the server's RSS and the kernel's TCP memory under these keys.
static void
s_memory_reading (wsr_bench_run_t *self, const char *rss_key, const char *sockstat_key)
{
    const wsr_bench_opts_t *opts = self->opts;
    long rss = opts->server_pid_count
             ? wsr_bench_rss_kib (opts->server_pids, opts->server_pid_count): -1;
    json_object_set_new (self->memory, rss_key, rss >= 0? json_integer (rss): json_null ());
    json_object_set_new (self->memory, sockstat_key, wsr_bench_sockstat ());
}

//  --------------------------------------------------------------------------
//  Prepare a local or parent run.
wsr_bench_run_t *
wsr_bench_run_new (const wsr_bench_opts_t *opts, wsr_bench_ident_t *ident)
{
    assert (opts && ident);
    wsr_bench_run_t *self = s_run_new (opts, ident, opts->procs > 1? S_ROLE_PARENT
                                                                    : S_ROLE_LOCAL);
    if (!self)
        return NULL;
    //  Before any session and any fork
    s_memory_reading (self, "rss_start_kib", "sockstat_before");
    if (self->role == S_ROLE_LOCAL) {
        self->sessions = wsr_bench_sessions_new (opts, ident, self->epoll_fd, 0, 1);
        self->rx = wsr_bench_sessions_rx (self->sessions);
    }
    else {
        self->merged = wsr_bench_rx_new ();
        self->rx = self->merged;
        self->children = wsr_bench_children_new (self->epoll_fd);
        if (wsr_bench_children_fork (self->children, opts, ident, wsr_bench_run_child)) {
            fprintf (stderr, "wsrouter bench: fork: %s\n", strerror (errno));
            wsr_bench_run_destroy (&self);
            return NULL;
        }
    }
    self->target_count = opts->channel_mode? 1: wsr_bench_ident_user_count (ident);
    self->seq = (uint32_t *) zmalloc (self->target_count * sizeof (uint32_t));
    assert (self->seq);
    self->pub = wsr_bench_pub_new (opts, ident, self->epoll_fd);
    //  A wrong URL fails the run at once
    if (wsr_bench_pub_start (self->pub))
        wsr_bench_run_destroy (&self);
    return self;
}

//  --------------------------------------------------------------------------
//  Reap, close, free.
void
wsr_bench_run_destroy (wsr_bench_run_t **self_p)
{
    assert (self_p);
    if (*self_p) {
        wsr_bench_run_t *self = *self_p;
        if (self->children)
            wsr_bench_children_reap (self->children);
        wsr_bench_children_destroy (&self->children);
        wsr_bench_pub_destroy (&self->pub);
        wsr_bench_sessions_destroy (&self->sessions);
        wsr_bench_rx_destroy (&self->merged);
        wsr_bench_buf_destroy (&self->cmd_line);
        if (self->cmd_fd >= 0)
            close (self->cmd_fd);
        if (self->status_fd >= 0)
            close (self->status_fd);
        if (self->epoll_fd >= 0)
            close (self->epoll_fd);
        free (self->seq);
        json_decref (self->memory);
        free (self);
        *self_p = NULL;
    }
}

//  --------------------------------------------------------------------------
//  Controller (the publishing process): totals, phases, pumping

//  What the receivers have done so far.
static void
s_totals (wsr_bench_run_t *self, uint64_t totals [WSR_BENCH_T_COUNT])
{
    if (self->role == S_ROLE_PARENT) {
        wsr_bench_children_totals (self->children, totals);
        return;
    }
    wsr_bench_rx_t *rx = self->rx;
    totals [WSR_BENCH_T_DONE] = wsr_bench_sessions_connected (self->sessions);
    totals [WSR_BENCH_T_ATTEMPTED] = rx->attempted;
    totals [WSR_BENCH_T_ESTABLISHED] = rx->established;
    totals [WSR_BENCH_T_SLOW] = rx->slow_established;
    totals [WSR_BENCH_T_FAILED] = rx->failed;
    totals [WSR_BENCH_T_OPEN] = rx->open;
    totals [WSR_BENCH_T_WARM] = rx->warm;
    totals [WSR_BENCH_T_RECEIVED] = rx->received;
    totals [WSR_BENCH_T_FINAL] = rx->final_received;
}

static void
s_phase (wsr_bench_run_t *self, s_phase_t phase)
{
    self->phase = phase;
    wsr_debug ("bench: phase %s", s_phase_names [phase]);
}

//  Tell the receivers publishing is over.
static void
s_ctl_end (wsr_bench_run_t *self)
{
    if (self->role == S_ROLE_LOCAL) {
        self->interrupted = self->interrupted || wsr_bench_interrupted;
        wsr_bench_sessions_end (self->sessions, self->sent_measured, self->final_count,
                                self->interrupted);
    }
    else
        wsr_bench_children_end (self->children, self->sent_measured, self->final_count,
                                self->interrupted);
    self->phase_deadline = self->now + self->opts->drain_ns + WSR_BENCH_CHILD_GRACE_NS;
    s_phase (self, S_PHASE_DRAIN);
}

//  Send a bounded batch of the current round (warm-up or final).
static void
s_ctl_round (wsr_bench_run_t *self, char kind)
{
    int budget = WSR_BENCH_PUB_BATCH;
    while (self->round_active && budget-- > 0 && wsr_bench_pub_ready (self->pub)) {
        wsr_bench_pub_send (self->pub, kind, 0, self->round_next);
        if (kind == WSR_BENCH_KIND_FINAL)
            self->final_count++;
        if (++self->round_next == self->target_count)
            self->round_active = false;
    }
    wsr_bench_pub_flush (self->pub);
}

//  Measured messages: as many as the rate allows now, round robin.
static void
s_ctl_measured (wsr_bench_run_t *self)
{
    const wsr_bench_opts_t *opts = self->opts;
    uint64_t allowed = WSR_BENCH_PUB_BATCH;
    if (opts->rate > 0) {
        double due = (double) (self->now - self->t_pub_start) * opts->rate / 1e9 + 1;
        allowed = due > (double) self->sent_measured? (uint64_t) due - self->sent_measured: 0;
        if (allowed > WSR_BENCH_PUB_BATCH)
            allowed = WSR_BENCH_PUB_BATCH;
    }
    if (opts->messages && allowed > opts->messages - self->sent_measured)
        allowed = opts->messages - self->sent_measured;
    while (allowed-- > 0 && wsr_bench_pub_ready (self->pub)) {
        uint32_t target = self->rr;
        wsr_bench_pub_send (self->pub, WSR_BENCH_KIND_MEASURED, ++self->seq [target], target);
        self->sent_measured++;
        if (++self->rr == self->target_count)
            self->rr = 0;
    }
    wsr_bench_pub_flush (self->pub);
}

//  Is there anything to publish at all?
static bool
s_ctl_publishing (const wsr_bench_opts_t *opts)
{
    return opts->pub_kind != WSR_BENCH_PUB_NONE
        && (opts->messages || opts->duration_ns || opts->final_publish);
}

//  Measured publishing is over: the final round next, or the flush.
static void
s_ctl_published (wsr_bench_run_t *self)
{
    self->t_pub_end = self->now;
    if (self->opts->final_publish) {
        self->round_active = true;
        self->round_next = 0;
        self->phase_deadline = self->now + WSR_BENCH_FINAL_TIMEOUT_NS;
        s_phase (self, S_PHASE_FINAL);
    }
    else {
        self->phase_deadline = self->now + self->opts->drain_ns;
        s_phase (self, S_PHASE_FLUSH);
    }
}

//  Warm-up: rounds until every open session saw one, or its deadline.
static void
s_ctl_warmup (wsr_bench_run_t *self, const uint64_t totals [WSR_BENCH_T_COUNT])
{
    const wsr_bench_opts_t *opts = self->opts;
    if (totals [WSR_BENCH_T_WARM] >= totals [WSR_BENCH_T_OPEN]
    ||  self->now >= self->phase_deadline || wsr_bench_pub_stalled (self->pub)) {
        if (totals [WSR_BENCH_T_WARM] < totals [WSR_BENCH_T_OPEN])
            zsys_warning ("bench: warm-up timed out: %" PRIu64 " of %" PRIu64
                          " sessions saw a message", totals [WSR_BENCH_T_WARM],
                          totals [WSR_BENCH_T_OPEN]);
        self->round_active = false;
        self->t_warm = self->now;
        self->t_pub_start = self->now;
        self->phase_deadline = self->now + (opts->duration_ns? opts->duration_ns
                                                             : WSR_BENCH_PUBLISH_TIMEOUT_NS);
        s_phase (self, S_PHASE_PUBLISH);
        return;
    }
    if (!self->round_active && self->now >= self->next_round) {
        self->round_active = true;
        self->round_next = 0;
        self->warm_rounds++;
    }
    if (self->round_active) {
        s_ctl_round (self, WSR_BENCH_KIND_WARMUP);
        if (!self->round_active)
            self->next_round = self->now + WSR_BENCH_WARMUP_ROUND_NS;
    }
}

//  One step of the phase machine.
static void
s_ctl_tick (wsr_bench_run_t *self)
{
    const wsr_bench_opts_t *opts = self->opts;
    uint64_t totals [WSR_BENCH_T_COUNT];
    s_totals (self, totals);
    if (wsr_bench_interrupted && !self->interrupted) {
        self->interrupted = true;
        if (self->phase < S_PHASE_FLUSH) {
            if (self->phase == S_PHASE_PUBLISH)
                self->t_pub_end = self->now;
            self->phase_deadline = self->now + WSR_BENCH_QUICK_DRAIN_NS;
            s_phase (self, S_PHASE_FLUSH);
        }
    }
    if (self->phase >= S_PHASE_WARMUP && self->phase <= S_PHASE_FINAL)
        wsr_bench_pub_watch (self->pub, self->now);
    switch (self->phase) {
        case S_PHASE_CONNECT:
            if (totals [WSR_BENCH_T_DONE]) {
                self->t_up = self->now;
                s_memory_reading (self, "rss_up_kib", "sockstat_after");
                self->phase_deadline = self->now + opts->hold_ns;
                s_phase (self, S_PHASE_HOLD);
            }
            break;
        case S_PHASE_HOLD:
            if (self->now >= self->phase_deadline) {
                if (s_ctl_publishing (opts)) {
                    self->phase_deadline = self->now + opts->warmup_ns;
                    self->next_round = self->now;
                    s_phase (self, S_PHASE_WARMUP);
                }
                else {
                    self->phase_deadline = self->now;
                    s_phase (self, S_PHASE_FLUSH);
                }
            }
            break;
        case S_PHASE_WARMUP:
            s_ctl_warmup (self, totals);
            break;
        case S_PHASE_PUBLISH:
            if ((opts->messages && self->sent_measured >= opts->messages)
            ||  (!opts->messages && !opts->duration_ns)
            ||  self->now >= self->phase_deadline || wsr_bench_pub_stalled (self->pub))
                s_ctl_published (self);
            else
                s_ctl_measured (self);
            break;
        case S_PHASE_FINAL:
            s_ctl_round (self, WSR_BENCH_KIND_FINAL);
            if (self->round_active && (wsr_bench_pub_stalled (self->pub)
                                   ||  self->now >= self->phase_deadline)) {
                zsys_warning ("bench: final round incomplete: %" PRIu64 " of %u sent",
                              self->final_count, self->target_count);
                self->round_active = false;
            }
            if (!self->round_active) {
                self->phase_deadline = self->now + opts->drain_ns;
                s_phase (self, S_PHASE_FLUSH);
            }
            break;
        case S_PHASE_FLUSH:
            wsr_bench_pub_flush (self->pub);
            if (wsr_bench_pub_idle (self->pub) || self->now >= self->phase_deadline)
                s_ctl_end (self);
            break;
        case S_PHASE_DRAIN: {
            bool done = self->role == S_ROLE_LOCAL
                      ? wsr_bench_sessions_done (self->sessions)
                      : wsr_bench_children_done (self->children);
            if (done || self->now >= self->phase_deadline) {
                s_memory_reading (self, "rss_end_kib", "sockstat_end");
                s_phase (self, S_PHASE_END);
            }
            break;
        }
        case S_PHASE_END:
        case S_PHASE_COUNT:
            break;
    }
}

//  A progress line on stderr, once a second (or now if forced).
static void
s_progress (wsr_bench_run_t *self, bool force)
{
    if (self->opts->quiet || (!force && self->now < self->next_progress))
        return;
    self->next_progress = self->now + WSR_BENCH_PROGRESS_NS;
    uint64_t totals [WSR_BENCH_T_COUNT];
    s_totals (self, totals);
    uint64_t target = (uint64_t) self->opts->sessions + self->opts->slow;
    uint64_t inflight = totals [WSR_BENCH_T_ATTEMPTED] - totals [WSR_BENCH_T_ESTABLISHED]
                      - totals [WSR_BENCH_T_SLOW] - totals [WSR_BENCH_T_FAILED];
    fprintf (stderr, "bench: %6.1fs %-7s sessions %" PRIu64 "/%" PRIu64 " (%" PRIu64
             " in progress, %" PRIu64 " failed, %" PRIu64 " open)  published %" PRIu64
             " (%" PRIu64 " answered, %" PRIu64 " errors)  received %" PRIu64 "\n",
             (double) (self->now - self->t_start) / 1e9, s_phase_names [self->phase],
             totals [WSR_BENCH_T_ESTABLISHED] + totals [WSR_BENCH_T_SLOW], target, inflight,
             totals [WSR_BENCH_T_FAILED], totals [WSR_BENCH_T_OPEN], self->sent_measured,
             wsr_bench_pub_accepted (self->pub, WSR_BENCH_KIND_MEASURED),
             wsr_bench_pub_errors (self->pub, WSR_BENCH_KIND_MEASURED),
             totals [WSR_BENCH_T_RECEIVED]);
}

//  --------------------------------------------------------------------------
//  Child side: commands and status

//  A status line to the parent, every WSR_BENCH_STATUS_NS.
static void
s_child_status (wsr_bench_run_t *self)
{
    if (self->now < self->next_status || self->status_fd < 0)
        return;
    self->next_status = self->now + WSR_BENCH_STATUS_NS;
    char line [256];
    size_t len = wsr_bench_children_status_line (
        line, sizeof line, wsr_bench_sessions_connected (self->sessions), self->rx);
    if (!wsr_bench_write_all (self->status_fd, line, len))
        self->exit_now = true;
}

//  The parent's commands: "E" ends publishing, "X" (or EOF) exits.
static void
s_cmd_event (wsr_bench_run_t *self)
{
    char buf [256];
    ssize_t n = read (self->cmd_fd, buf, sizeof buf);
    if (n < 0 && (errno == EAGAIN || errno == EINTR))
        return;
    if (n <= 0 || wsr_bench_buf_append (self->cmd_line, buf, (size_t) n)) {
        //  The parent is gone (or mad): finish now
        wsr_bench_epoll_set (self->epoll_fd, EPOLL_CTL_DEL, self->cmd_fd, 0,
                             WSR_BENCH_TAG_CMD, 0);
        close (self->cmd_fd);
        self->cmd_fd = -1;
        wsr_bench_sessions_end (self->sessions, 0, 0, self->interrupted);
        self->exit_now = true;
        return;
    }
    char *line;
    while ((line = wsr_bench_buf_line (self->cmd_line))) {
        uint64_t published = 0, final_sent = 0;
        bool interrupted = false;
        char verb = wsr_bench_children_command (line, &published, &final_sent, &interrupted);
        if (verb == 'E') {
            self->interrupted = interrupted;
            wsr_bench_sessions_end (self->sessions, published, final_sent, interrupted);
        }
        else
        if (verb == 'X')
            self->exit_now = true;
    }
}

//  --------------------------------------------------------------------------
//  The loop

//  One epoll loop until the role's work is done.
static void
s_run_loop (wsr_bench_run_t *self)
{
    struct epoll_event events [WSR_BENCH_MAX_EVENTS];
    bool controller = self->role != S_ROLE_CHILD;
    while (true) {
        int timeout = 50;
        if (self->sessions && wsr_bench_sessions_ramping (self->sessions))
            timeout = 1;
        if (controller && self->phase >= S_PHASE_WARMUP && self->phase <= S_PHASE_FLUSH)
            timeout = 1;
        if (controller && self->phase == S_PHASE_PUBLISH && self->opts->rate <= 0
        &&  !wsr_bench_pub_writing (self->pub) && wsr_bench_pub_ready (self->pub))
            timeout = 0;
        int n = epoll_wait (self->epoll_fd, events, WSR_BENCH_MAX_EVENTS, timeout);
        if (n < 0 && errno != EINTR) {
            zsys_error ("bench: epoll_wait: %s", strerror (errno));
            break;
        }
        self->now = wsr_bench_now ();
        for (int i = 0; i < n; i++) {
            uint32_t tag = (uint32_t) (events [i].data.u64 >> 32);
            uint32_t index = (uint32_t) events [i].data.u64;
            if (tag == WSR_BENCH_TAG_CONN)
                wsr_bench_sessions_event (self->sessions, index, events [i].events);
            else
            if (tag == WSR_BENCH_TAG_PUB)
                wsr_bench_pub_event (self->pub, events [i].events);
            else
            if (tag == WSR_BENCH_TAG_CHILD)
                wsr_bench_children_event (self->children, index, self->merged);
            else
            if (tag == WSR_BENCH_TAG_CMD)
                s_cmd_event (self);
        }
        self->now = wsr_bench_now ();
        if (self->sessions)
            wsr_bench_sessions_tick (self->sessions, self->now);
        if (controller) {
            s_ctl_tick (self);
            s_progress (self, false);
            if (self->phase == S_PHASE_END)
                break;
        }
        else {
            s_child_status (self);
            if (wsr_bench_sessions_done (self->sessions) || self->exit_now)
                break;
        }
    }
}

//  --------------------------------------------------------------------------
//  Report

//  Rounded to 0.1
static json_t *
s_rate (double value)
{
    return json_real (round (value * 10) / 10);
}

//  count per second between two times (0 if they are not in order)
static json_t *
s_per_s (uint64_t count, int64_t from, int64_t to)
{
    return s_rate (to > from? (double) count * 1e9 / (double) (to - from): 0);
}

//  object [key] = count
static void
s_put (json_t *object, const char *key, uint64_t value)
{
    json_object_set_new (object, key, json_integer ((json_int_t) value));
}

//  The memory readings, with per-session bytes = (up - start) / sessions.
static json_t *
s_report_memory (wsr_bench_run_t *self)
{
    wsr_bench_rx_t *rx = self->rx;
    json_t *memory = json_deep_copy (self->memory);
    json_t *start = json_object_get (memory, "rss_start_kib");
    json_t *up = json_object_get (memory, "rss_up_kib");
    uint64_t sessions = rx->established + rx->slow_established;
    json_object_set_new (memory, "per_session_bytes",
                         json_is_integer (up) && json_is_integer (start) && sessions
                         ? json_real (round ((double) (json_integer_value (up)
                                                       - json_integer_value (start))
                                             * 1024 / (double) sessions))
                         : json_null ());
    return memory;
}

//  The report, from the counters and the publisher
static json_t *
s_report (wsr_bench_run_t *self)
{
    const wsr_bench_opts_t *opts = self->opts;
    wsr_bench_rx_t *rx = self->rx;
    json_t *report = json_object ();
    json_object_set_new (report, "sessions_target", json_integer (opts->sessions));
    s_put (report, "sessions_established", rx->established);
    s_put (report, "sessions_open_at_end", rx->open);
    s_put (report, "handshake_failures", rx->failed);
    json_object_set_new (report, "handshake_errors", json_pack (
        "{s:I, s:I, s:I, s:I, s:I, s:I, s:I, s:o}",
        "socket", (json_int_t) rx->fail_socket, "timeout", (json_int_t) rx->fail_timeout,
        "status", (json_int_t) rx->fail_status, "accept", (json_int_t) rx->fail_accept,
        "eof", (json_int_t) rx->fail_eof, "response", (json_int_t) rx->fail_response,
        "aborted", (json_int_t) rx->fail_aborted,
        "by_status", wsr_bench_codes_to_json (rx->hs_status, WSR_BENCH_STATUS_SLOTS,
                                              WSR_BENCH_STATUS_BASE, -1)));
    json_object_set_new (report, "handshakes_per_s",
                         s_per_s (rx->established + rx->slow_established,
                                  rx->t_first_start, rx->t_last_established));
    json_object_set_new (report, "handshake_latency_ms",
                         wsr_bench_hist_summary (rx->handshake, false));
    s_put (report, "sessions_closed_by_server", rx->closed_by_server);
    json_object_set_new (report, "close_codes",
                         wsr_bench_codes_to_json (rx->close_codes, WSR_BENCH_CLOSE_SLOTS,
                                                  WSR_BENCH_CLOSE_BASE, WSR_BENCH_CLOSE_OTHER));
    s_put (report, "protocol_errors", rx->protocol_errors);
    s_put (report, "pongs_sent", rx->pongs);

    s_put (report, "messages_published", self->sent_measured);
    s_put (report, "publish_accepted",
           wsr_bench_pub_accepted (self->pub, WSR_BENCH_KIND_MEASURED));
    s_put (report, "publish_errors", wsr_bench_pub_errors (self->pub, WSR_BENCH_KIND_MEASURED));
    json_object_set_new (report, "publisher", wsr_bench_pub_report (self->pub));
    json_object_set_new (report, "publish_per_s",
                         s_per_s (self->sent_measured, self->t_pub_start, self->t_pub_end));
    s_put (report, "messages_expected", rx->expected);
    s_put (report, "messages_received", rx->received);
    json_object_set_new (report, "delivered_per_s",
                         s_per_s (rx->received, self->t_pub_start, rx->t_last_rx));
    json_object_set_new (report, "latency_ms", wsr_bench_hist_summary (rx->latency, true));
    s_put (report, "loss", rx->loss);
    s_put (report, "duplicates", rx->duplicates);
    s_put (report, "reordered", rx->reordered);
    s_put (report, "misrouted", rx->misrouted);
    s_put (report, "foreign_messages", rx->foreign);
    json_object_set_new (report, "warmup", json_pack ("{s:i, s:I, s:f}",
                         "rounds", (int) self->warm_rounds, "sessions_warm", (json_int_t) rx->warm,
                         "ms", self->t_warm > self->t_up && self->t_up
                               ? round ((double) (self->t_warm - self->t_up - opts->hold_ns)
                                        / 1e6): 0.0));
    if (opts->final_publish)
        json_object_set_new (report, "final_publish", json_pack ("{s:I, s:I, s:I}",
                             "sent", (json_int_t) self->final_count,
                             "received", (json_int_t) rx->final_received,
                             "missing", (json_int_t) (rx->final_expected > rx->final_received
                                                      ? rx->final_expected - rx->final_received
                                                      : 0)));
    json_object_set_new (report, "slow_sessions", json_integer (opts->slow));
    s_put (report, "slow_sessions_established", rx->slow_established);
    s_put (report, "slow_sessions_closed", rx->slow_closed);
    json_object_set_new (report, "memory", s_report_memory (self));
    json_object_set_new (report, "params", wsr_bench_opts_params (opts));
    json_object_set_new (report, "procs", json_integer (opts->procs));
    s_put (report, "child_failures",
           self->children? wsr_bench_children_failures (self->children): 0);
    json_object_set_new (report, "interrupted", json_boolean (self->interrupted));
    json_object_set_new (report, "elapsed_s",
                         json_real (round ((double) (wsr_bench_now () - self->t_start) / 1e6)
                                    / 1e3));
    return report;
}

//  --------------------------------------------------------------------------
//  The whole run.
json_t *
wsr_bench_run_execute (wsr_bench_run_t *self)
{
    assert (self);
    s_run_loop (self);
    if (self->role == S_ROLE_LOCAL && !wsr_bench_sessions_done (self->sessions))
        wsr_bench_sessions_finish (self->sessions);
    s_progress (self, true);
    return s_report (self);
}

//  --------------------------------------------------------------------------
//  Child process body: sessions of receiver k, report on the status pipe, exit.
void
wsr_bench_run_child (const wsr_bench_opts_t *opts, wsr_bench_ident_t *ident, int k,
                     int cmd_fd, int status_fd)
{
    wsr_util_raise_nofile ();
    wsr_bench_run_t *self = s_run_new (opts, ident, S_ROLE_CHILD);
    if (!self)
        _exit (1);
    self->cmd_fd = cmd_fd;
    self->status_fd = status_fd;
    self->cmd_line = wsr_bench_buf_new (S_CMD_MAX);
    self->sessions = wsr_bench_sessions_new (opts, ident, self->epoll_fd, k, opts->procs);
    self->rx = wsr_bench_sessions_rx (self->sessions);
    int rc = 1;
    if (fcntl (cmd_fd, F_SETFL, O_NONBLOCK) == 0) {
        wsr_bench_epoll_set (self->epoll_fd, EPOLL_CTL_ADD, cmd_fd, EPOLLIN,
                             WSR_BENCH_TAG_CMD, 0);
        s_run_loop (self);
        if (!wsr_bench_sessions_done (self->sessions))
            wsr_bench_sessions_finish (self->sessions);
        //  Last status (connect totals) then the result line
        self->next_status = 0;
        s_child_status (self);
        if (wsr_bench_children_result (status_fd, self->rx) == 0)
            rc = 0;
        //  Sessions stay open until the parent has read the server's memory
        int64_t deadline = wsr_bench_now () + WSR_BENCH_CHILD_GRACE_NS;
        self->exit_now = false;
        while (!self->exit_now && self->cmd_fd >= 0 && wsr_bench_now () < deadline) {
            struct pollfd item = { .fd = self->cmd_fd, .events = POLLIN };
            if (poll (&item, 1, 100) > 0)
                s_cmd_event (self);
        }
    }
    wsr_bench_run_destroy (&self);
    _exit (rc);
}

//  --------------------------------------------------------------------------
//  Selftest: runs against a real node in this process, one with two
//  receiver children, one that only connects

void
wsr_bench_run_test (bool verbose)
{
    assert (sodium_init () >= 0);
    const char *secret = "run-test-secret";
    wsr_node_opts_t node_opts;
    wsr_node_opts_defaults (&node_opts);
    node_opts.name = "brun";
    node_opts.bind = "127.0.0.1";
    node_opts.port = 0;
    node_opts.api_key = "run-key";
    node_opts.jwt_secret = (const uint8_t *) secret;
    node_opts.jwt_secret_len = strlen (secret);
    node_opts.workers = 1;
    wsr_node_t *node = wsr_node_new (&node_opts);
    assert (node);

    //  --procs 2, channel mode: 20 sessions, 100 broadcasts, a final one
    wsr_bench_opts_t opts;
    wsr_bench_opts_defaults (&opts);
    opts.url_count = 1;
    snprintf (opts.urls [0].host, sizeof opts.urls [0].host, "127.0.0.1:%d",
              wsr_node_port (node));
    snprintf (opts.urls [0].path, sizeof opts.urls [0].path, "/ws");
    assert (wsr_bench_resolve ("127.0.0.1", wsr_node_port (node), &opts.urls [0].addr) == 0);
    opts.sessions = 20;
    opts.procs = 2;
    opts.jwt_secret = secret;
    opts.channel = "room";
    opts.channel_mode = true;
    opts.pub_kind = WSR_BENCH_PUB_HTTP;
    opts.pub_addr = opts.urls [0].addr;
    snprintf (opts.pub_host, sizeof opts.pub_host, "%s", opts.urls [0].host);
    opts.api_key = "run-key";
    opts.messages = 100;
    opts.rate = 1000;
    opts.final_publish = true;
    opts.quiet = !verbose;
    wsr_bench_ident_t *ident = wsr_bench_ident_new (&opts);
    assert (ident);
    wsr_bench_run_t *run = wsr_bench_run_new (&opts, ident);
    assert (run && run->role == S_ROLE_PARENT && !run->sessions);
    json_t *report = wsr_bench_run_execute (run);
    wsr_bench_run_destroy (&run);
    if (verbose) {
        char *text = json_dumps (report, JSON_INDENT (2) | JSON_PRESERVE_ORDER);
        printf ("\n%s\n", text);
        free (text);
    }
    assert (json_integer_value (json_object_get (report, "sessions_established")) == 20);
    assert (json_integer_value (json_object_get (report, "child_failures")) == 0);
    assert (json_integer_value (json_object_get (report, "messages_published")) == 100);
    //  Each broadcast reaches the 20 sessions of both children
    assert (json_integer_value (json_object_get (report, "messages_expected")) == 2000);
    assert (json_integer_value (json_object_get (report, "messages_received")) == 2000);
    assert (json_integer_value (json_object_get (report, "loss")) == 0);
    assert (json_integer_value (json_object_get (report, "duplicates")) == 0);
    json_t *final = json_object_get (report, "final_publish");
    assert (json_integer_value (json_object_get (final, "sent")) == 1);
    assert (json_integer_value (json_object_get (final, "received")) == 20);
    assert (json_integer_value (json_object_get (final, "missing")) == 0);
    json_t *latency = json_object_get (report, "latency_ms");
    assert (json_integer_value (json_object_get (latency, "count")) == 2000);
    json_decref (report);
    wsr_bench_ident_destroy (&ident);

    //  No --publish: connect, hold, report; the publisher reports zeros
    opts.procs = 1;
    opts.sessions = 10;
    opts.channel_mode = false;
    opts.channel = NULL;
    opts.pub_kind = WSR_BENCH_PUB_NONE;
    opts.messages = 0;
    opts.final_publish = false;
    opts.hold_ns = 100 * WSR_BENCH_MS;
    ident = wsr_bench_ident_new (&opts);
    assert (ident);
    run = wsr_bench_run_new (&opts, ident);
    assert (run && run->role == S_ROLE_LOCAL);
    report = wsr_bench_run_execute (run);
    wsr_bench_run_destroy (&run);
    assert (json_integer_value (json_object_get (report, "sessions_established")) == 10);
    assert (json_integer_value (json_object_get (report, "sessions_open_at_end")) == 10);
    assert (json_integer_value (json_object_get (report, "messages_published")) == 0);
    assert (json_integer_value (json_object_get (report, "messages_expected")) == 0);
    json_t *publisher = json_object_get (report, "publisher");
    assert (json_integer_value (json_object_get (publisher, "sent_all_kinds")) == 0);
    assert (json_integer_value (json_object_get (publisher, "connects")) == 0);
    assert (!json_object_get (report, "final_publish"));
    assert (json_is_null (json_object_get (json_object_get (report, "params"), "publish")));
    assert (json_real_value (json_object_get (report, "elapsed_s")) >= 0.1);
    json_decref (report);
    wsr_bench_ident_destroy (&ident);
    wsr_node_destroy (&node);
}
