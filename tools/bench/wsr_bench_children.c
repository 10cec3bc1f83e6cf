//  wsr_bench_children — a run's receiver processes: fork, the pipe protocol, totals, reaping
//
//  With --procs K the parent publishes and holds no session; it forks K
//  receiver children (the open-files limit is per process). Parent and
//  children talk in lines on two pipes per child:
//
//    child → parent   "S done attempted established slow_established failed
//                      open warm received final"     every WSR_BENCH_STATUS_NS
//                     "R {json}"                     once, the final counters
//    parent → child   "E published final_sent interrupted"   publishing is over:
//                                                    drain, then report
//                     "X"                            exit (the parent has read
//                                                    the server's memory)
//
//  A child ignores SIGINT (the parent decides) and dies with its parent
//  (PR_SET_PDEATHSIG). Both sides of the protocol are in this file.
//
//  Owns: the parent's ends of the pipes, the children's pids until reaped.

#include "wsr_bench_classes.h"
#include <sys/epoll.h>
#include <sys/prctl.h>
#include <sys/wait.h>

#define S_LINE_MAX          (64 * 1024 * 1024)  //  a child's unparsed output

typedef struct {
    pid_t pid;                      //  child process, 0 once reaped
    int cmd_fd;                     //  parent → child commands, -1 if closed
    int status_fd;                  //  child → parent lines, -1 at EOF
    wsr_bench_buf_t *line;          //  partial line (owned)
    uint64_t stat [WSR_BENCH_T_COUNT];  //  last status line
    bool result;                    //  its result was merged
} s_child_t;

struct _wsr_bench_children_t {
    int epoll_fd;                   //  the run's epoll set (not owned)
    s_child_t children [WSR_BENCH_MAX_PROCS];
    int count;                      //  children forked
};

//  --------------------------------------------------------------------------
//  Create an empty set.
wsr_bench_children_t *
wsr_bench_children_new (int epoll_fd)
{
    wsr_bench_children_t *self =
        (wsr_bench_children_t *) zmalloc (sizeof (wsr_bench_children_t));
    assert (self);
    self->epoll_fd = epoll_fd;
    return self;
}

//  --------------------------------------------------------------------------
//  Close the parent's pipe ends and free the set.
void
wsr_bench_children_destroy (wsr_bench_children_t **self_p)
{
    assert (self_p);
    if (*self_p) {
        wsr_bench_children_t *self = *self_p;
        for (int i = 0; i < self->count; i++) {
            s_child_t *child = &self->children [i];
            if (child->cmd_fd >= 0)
                close (child->cmd_fd);
            if (child->status_fd >= 0)
                close (child->status_fd);
            wsr_bench_buf_destroy (&child->line);
        }
        free (self);
        *self_p = NULL;
    }
}

//  --------------------------------------------------------------------------
//  One pipe pair and one fork per child.
int
wsr_bench_children_fork (wsr_bench_children_t *self, const wsr_bench_opts_t *opts,
                         wsr_bench_ident_t *ident, wsr_bench_child_fn *body)
{
    assert (self && opts && ident && body);
    assert (opts->procs <= WSR_BENCH_MAX_PROCS);
    //  A child may be gone before the parent's last write: EPIPE, not a signal
    signal (SIGPIPE, SIG_IGN);
    fflush (stdout);
    fflush (stderr);
    pid_t parent = getpid ();
    for (int k = 0; k < opts->procs; k++) {
        int cmd [2], status [2];
        if (pipe2 (cmd, O_CLOEXEC))
            return -1;
        if (pipe2 (status, O_CLOEXEC)) {
            close (cmd [0]);
            close (cmd [1]);
            return -1;
        }
        pid_t pid = fork ();
        if (pid < 0) {
            close (cmd [0]);
            close (cmd [1]);
            close (status [0]);
            close (status [1]);
            return -1;
        }
        if (pid == 0) {
            signal (SIGINT, SIG_IGN);
            if (prctl (PR_SET_PDEATHSIG, SIGKILL) || getppid () != parent)
                _exit (1);                  //  or the parent died before prctl
            close (cmd [1]);
            close (status [0]);
            for (int i = 0; i < self->count; i++) {
                close (self->children [i].cmd_fd);
                close (self->children [i].status_fd);
            }
            close (self->epoll_fd);
            body (opts, ident, k, cmd [0], status [1]);
            _exit (1);                      //  body does not return
        }
        close (cmd [0]);
        close (status [1]);
        s_child_t *child = &self->children [self->count++];
        child->pid = pid;
        child->cmd_fd = cmd [1];
        child->status_fd = status [0];
        child->line = wsr_bench_buf_new (S_LINE_MAX);
        if (fcntl (child->status_fd, F_SETFL, O_NONBLOCK))
            return -1;
        wsr_bench_epoll_set (self->epoll_fd, EPOLL_CTL_ADD, child->status_fd, EPOLLIN,
                             WSR_BENCH_TAG_CHILD, (uint32_t) (self->count - 1));
    }
    return 0;
}

//  One line from a child.
static void
s_child_line (s_child_t *child, char *line, wsr_bench_rx_t *rx)
{
    if (line [0] == 'S') {
        uint64_t v [WSR_BENCH_T_COUNT];
        if (sscanf (line + 1, " %" SCNu64 " %" SCNu64 " %" SCNu64 " %" SCNu64 " %" SCNu64
                    " %" SCNu64 " %" SCNu64 " %" SCNu64 " %" SCNu64, &v [0], &v [1], &v [2],
                    &v [3], &v [4], &v [5], &v [6], &v [7], &v [8]) == WSR_BENCH_T_COUNT)
            memcpy (child->stat, v, sizeof v);
    }
    else
    if (line [0] == 'R' && !child->result) {
        json_error_t error;
        json_t *json = json_loads (line + 2, 0, &error);
        if (json) {
            wsr_bench_rx_merge (rx, json);
            child->result = true;
            json_decref (json);
        }
        else
            zsys_error ("bench: bad result from child %d: %s", (int) child->pid, error.text);
    }
}

//  --------------------------------------------------------------------------
//  Read a child's lines; at EOF its pipe leaves the epoll set.
void
wsr_bench_children_event (wsr_bench_children_t *self, uint32_t index, wsr_bench_rx_t *rx)
{
    assert (self && rx);
    if (index >= (uint32_t) self->count)
        return;
    s_child_t *child = &self->children [index];
    if (child->status_fd < 0)
        return;
    char buf [WSR_BENCH_PIPE_READ];
    ssize_t n;
    bool broken = false;
    while ((n = read (child->status_fd, buf, sizeof buf)) > 0) {
        if (wsr_bench_buf_append (child->line, buf, (size_t) n)) {
            zsys_error ("bench: child %d sent a line too long", (int) child->pid);
            broken = true;
            break;
        }
        char *line;
        while ((line = wsr_bench_buf_line (child->line)))
            s_child_line (child, line, rx);
    }
    if (broken || n == 0 || (n < 0 && errno != EAGAIN && errno != EINTR)) {
        if (!child->result)
            zsys_error ("bench: child %d ended without a result", (int) child->pid);
        wsr_bench_epoll_set (self->epoll_fd, EPOLL_CTL_DEL, child->status_fd, 0,
                             WSR_BENCH_TAG_CHILD, index);
        close (child->status_fd);
        child->status_fd = -1;
    }
}

//  --------------------------------------------------------------------------
//  Sums of the last status lines; a child that is gone counts as done.
void
wsr_bench_children_totals (wsr_bench_children_t *self, uint64_t totals [WSR_BENCH_T_COUNT])
{
    assert (self);
    memset (totals, 0, WSR_BENCH_T_COUNT * sizeof (uint64_t));
    totals [WSR_BENCH_T_DONE] = 1;
    for (int i = 0; i < self->count; i++) {
        s_child_t *child = &self->children [i];
        bool gone = child->status_fd < 0;
        for (int t = 0; t < WSR_BENCH_T_COUNT; t++)
            if (t == WSR_BENCH_T_DONE)
                totals [t] &= gone || child->stat [t];
            else
                totals [t] += child->stat [t];
    }
}

//  --------------------------------------------------------------------------
//  "E": a child whose pipe is broken is no longer told anything.
void
wsr_bench_children_end (wsr_bench_children_t *self, uint64_t published, uint64_t final_sent,
                        bool interrupted)
{
    assert (self);
    char line [128];
    int n = snprintf (line, sizeof line, "E %" PRIu64 " %" PRIu64 " %d\n",
                      published, final_sent, interrupted? 1: 0);
    for (int i = 0; i < self->count; i++)
        if (self->children [i].cmd_fd >= 0
        &&  !wsr_bench_write_all (self->children [i].cmd_fd, line, (size_t) n)) {
            close (self->children [i].cmd_fd);
            self->children [i].cmd_fd = -1;
        }
}

//  --------------------------------------------------------------------------
//  Every result in, or its child gone.
bool
wsr_bench_children_done (wsr_bench_children_t *self)
{
    assert (self);
    bool done = true;
    for (int i = 0; i < self->count; i++)
        done = done && (self->children [i].result || self->children [i].status_fd < 0);
    return done;
}

//  --------------------------------------------------------------------------
//  Children without a result.
uint64_t
wsr_bench_children_failures (wsr_bench_children_t *self)
{
    assert (self);
    uint64_t failures = 0;
    for (int i = 0; i < self->count; i++)
        failures += self->children [i].result? 0: 1;
    return failures;
}

//  --------------------------------------------------------------------------
//  "X", then waitpid with a deadline, then SIGKILL.
void
wsr_bench_children_reap (wsr_bench_children_t *self)
{
    assert (self);
    for (int i = 0; i < self->count; i++)
        if (self->children [i].cmd_fd >= 0) {
            if (!wsr_bench_write_all (self->children [i].cmd_fd, "X\n", 2))
                wsr_debug ("bench: child %d already gone", (int) self->children [i].pid);
            close (self->children [i].cmd_fd);
            self->children [i].cmd_fd = -1;
        }
    int64_t deadline = wsr_bench_now () + WSR_BENCH_REAP_NS;
    for (int i = 0; i < self->count; i++) {
        s_child_t *child = &self->children [i];
        while (child->pid > 0) {
            pid_t pid = waitpid (child->pid, NULL, WNOHANG);
            if (pid == child->pid || (pid < 0 && errno != EINTR))
                child->pid = 0;
            else
            if (wsr_bench_now () > deadline) {
                kill (child->pid, SIGKILL);
                waitpid (child->pid, NULL, 0);
                child->pid = 0;
            }
            else
                usleep (10000);
        }
    }
}

//  --------------------------------------------------------------------------
//  "S ..." from a child's counters.
size_t
wsr_bench_children_status_line (char *line, size_t size, bool done, wsr_bench_rx_t *rx)
{
    assert (line && rx);
    int n = snprintf (line, size, "S %d %" PRIu64 " %" PRIu64 " %" PRIu64 " %" PRIu64
                      " %" PRIu64 " %" PRIu64 " %" PRIu64 " %" PRIu64 "\n",
                      done? 1: 0, rx->attempted, rx->established, rx->slow_established,
                      rx->failed, rx->open, rx->warm, rx->received, rx->final_received);
    assert (n > 0 && (size_t) n < size);
    return (size_t) n;
}

//  --------------------------------------------------------------------------
//  "R {json}" from a child's final counters.
int
wsr_bench_children_result (int status_fd, wsr_bench_rx_t *rx)
{
    assert (rx);
    json_t *result = wsr_bench_rx_to_json (rx);
    char *text = json_dumps (result, JSON_COMPACT);
    json_decref (result);
    assert (text);
    bool ok = wsr_bench_write_all (status_fd, "R ", 2)
           && wsr_bench_write_all (status_fd, text, strlen (text))
           && wsr_bench_write_all (status_fd, "\n", 1);
    free (text);
    return ok? 0: -1;
}

//  --------------------------------------------------------------------------
//  "E ..." or "X".
char
wsr_bench_children_command (const char *line, uint64_t *published, uint64_t *final_sent,
                            bool *interrupted)
{
    assert (line && published && final_sent && interrupted);
    int flag = 0;
    if (line [0] == 'E' && sscanf (line + 1, " %" SCNu64 " %" SCNu64 " %d", published,
                                   final_sent, &flag) == 3) {
        *interrupted = flag != 0;
        return 'E';
    }
    if (line [0] == 'X')
        return 'X';
    return 0;
}

//  --------------------------------------------------------------------------
//  Selftest

//  A scripted child: one status line; child 1 then dies without a result,
//  child 0 answers "E" with a result that echoes it and leaves on "X".
static void
s_test_child (const wsr_bench_opts_t *opts, wsr_bench_ident_t *ident, int k, int cmd_fd,
              int status_fd)
{
    (void) opts;
    (void) ident;
    wsr_bench_rx_t *rx = wsr_bench_rx_new ();
    rx->attempted = 3;
    rx->established = 2 + (uint64_t) k;
    rx->received = 7;
    char line [256];
    size_t len = wsr_bench_children_status_line (line, sizeof line, true, rx);
    if (!wsr_bench_write_all (status_fd, line, len) || k == 1)
        _exit (3);
    wsr_bench_buf_t *commands = wsr_bench_buf_new (4096);
    int64_t deadline = wsr_bench_now () + 10 * WSR_BENCH_SEC;
    while (wsr_bench_now () < deadline) {
        char buf [256];
        ssize_t n = read (cmd_fd, buf, sizeof buf);
        if (n <= 0 || wsr_bench_buf_append (commands, buf, (size_t) n))
            break;
        char *command;
        while ((command = wsr_bench_buf_line (commands))) {
            uint64_t published, final_sent;
            bool interrupted;
            char verb = wsr_bench_children_command (command, &published, &final_sent,
                                                    &interrupted);
            if (verb == 'X')
                _exit (0);
            if (verb == 'E') {
                rx->expected = published;
                rx->final_expected = final_sent;
                rx->loss = interrupted? 1: 0;
                if (wsr_bench_children_result (status_fd, rx))
                    _exit (4);
            }
        }
    }
    _exit (5);
}

//  Pump the children's events into rx for at most ms.
static void
s_pump (wsr_bench_children_t *self, int epoll_fd, wsr_bench_rx_t *rx, int ms)
{
    struct epoll_event events [8];
    int n = epoll_wait (epoll_fd, events, 8, ms);
    for (int i = 0; i < n; i++) {
        assert ((uint32_t) (events [i].data.u64 >> 32) == WSR_BENCH_TAG_CHILD);
        wsr_bench_children_event (self, (uint32_t) events [i].data.u64, rx);
    }
}

void
wsr_bench_children_test (bool verbose)
{
    (void) verbose;
    //  The protocol's lines, both ways
    uint64_t published = 0, final_sent = 0;
    bool interrupted = false;
    assert (wsr_bench_children_command ("E 12 3 1", &published, &final_sent, &interrupted)
            == 'E');
    assert (published == 12 && final_sent == 3 && interrupted);
    assert (wsr_bench_children_command ("X", &published, &final_sent, &interrupted) == 'X');
    assert (wsr_bench_children_command ("E 12", &published, &final_sent, &interrupted) == 0);
    assert (wsr_bench_children_command ("?", &published, &final_sent, &interrupted) == 0);

    //  Two real children; the second dies without a result
    wsr_bench_opts_t opts;
    wsr_bench_opts_defaults (&opts);
    opts.sessions = 2;
    opts.procs = 2;
    opts.jwt_secret = "children-test";
    wsr_bench_ident_t *ident = wsr_bench_ident_new (&opts);
    assert (ident);
    int epoll_fd = epoll_create1 (EPOLL_CLOEXEC);
    assert (epoll_fd >= 0);
    wsr_bench_children_t *self = wsr_bench_children_new (epoll_fd);
    assert (wsr_bench_children_fork (self, &opts, ident, s_test_child) == 0);
    wsr_bench_rx_t *rx = wsr_bench_rx_new ();
    uint64_t totals [WSR_BENCH_T_COUNT];
    int64_t deadline = wsr_bench_now () + 10 * WSR_BENCH_SEC;
    do {
        s_pump (self, epoll_fd, rx, 10);
        wsr_bench_children_totals (self, totals);
    } while (totals [WSR_BENCH_T_ESTABLISHED] < 5 && wsr_bench_now () < deadline);
    assert (totals [WSR_BENCH_T_DONE] == 1 && totals [WSR_BENCH_T_ATTEMPTED] == 6);
    assert (totals [WSR_BENCH_T_ESTABLISHED] == 2 + 3 && totals [WSR_BENCH_T_RECEIVED] == 14);
    assert (!wsr_bench_children_done (self));

    wsr_bench_children_end (self, 10, 2, false);
    while (!wsr_bench_children_done (self) && wsr_bench_now () < deadline)
        s_pump (self, epoll_fd, rx, 10);
    assert (wsr_bench_children_done (self));
    assert (wsr_bench_children_failures (self) == 1);
    //  Only child 0's result was merged
    assert (rx->expected == 10 && rx->final_expected == 2 && rx->loss == 0);
    assert (rx->established == 2 && rx->received == 7);
    wsr_bench_children_reap (self);
    for (int i = 0; i < self->count; i++)
        assert (self->children [i].pid == 0);
    wsr_bench_children_destroy (&self);
    assert (!self);
    wsr_bench_rx_destroy (&rx);
    close (epoll_fd);
    wsr_bench_ident_destroy (&ident);
}
