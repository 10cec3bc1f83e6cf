//  wsr_upgrade — zero-disconnect upgrade between two processes
//
//  Old process (SIGUSR2 or `wsrouter upgrade --pid`):
//    1. socketpair; fork; the child clears FD_CLOEXEC on its end and execs
//       wsr_util_exe_path () with the same argv and WSROUTER_HANDOVER_FD.
//    2. ← HELLO (build id). Another protocol version, REFUSE, EOF or a
//       timeout ends the upgrade here: nothing was given yet.
//    3. The listener stops accepting; → LISTENER with a duplicate of the
//       listening socket. ← ACK once the new node runs (its bridge links
//       and listener are up; it accepts new connections from then on).
//    4. Topics first: → TOPICS, one frame per worker with its topic keys;
//       the new process subscribes every one of them (holding what arrives
//       per topic in a ring, wsr_hring) and answers ← ACK "subscribed" once
//       its bridges confirmed them (a SYNC barrier through the backplane).
//       Then a barrier here (wsr_node_sync): everything the backplane sent
//       before the new subscriptions has reached our workers. From now on
//       every message reaches the new process, and any message our workers
//       have not seen yet, it has.
//    5. Batches: the workers export up to WSR_UPGRADE_BATCH sessions (each
//       stops being read, writes what its socket takes, and leaves its
//       topics); → SESSION × n with their fds, → ACK (commit); ← ACK with
//       the count taken. The old process keeps its copies of the fds until
//       that answer: if it does not come, it imports the batch back. Each
//       record carries, per topic, the mark of the last message queued for
//       it; the new worker queues what its ring holds after that mark.
//    6. Sessions that cannot go yet (a v1 opening) are waited for up to
//       WSR_UPGRADE_LINGER_MS, then closed with 1012. → DONE; the caller
//       exits without draining.
//  Any failure: the sessions of the batch under way come back into the
//  workers, the listener accepts again, the new process is told REFUSE
//  and reaped (killed if it does not go), and the failure is counted.
//
//  New process: HELLO, LISTENER, starts its node on that socket, ACK,
//  TOPICS → subscribe all, ACK "subscribed", then, after a barrier of its
//  own per batch (so its rings hold whatever the old workers queued that
//  was published after our subscriptions), imports each committed batch (its workers subscribe the sessions'
//  topics as they take them) and answers ACK, until DONE. A batch not
//  committed when the old process goes away is closed, never served twice.

#include "wsr_classes.h"
#include <signal.h>
#include <sys/socket.h>
#include <sys/un.h>
#include <sys/wait.h>

extern char **environ;

//  Send a frame of type with a text body (may be "").
static int
s_send (int sock, wsr_handover_type_t type, const char *text, int fd)
{
    size_t size = 0;
    uint8_t *frame = wsr_handover_frame (type, text, strlen (text), &size);
    int rc = frame? wsr_passfd_send (sock, frame, size, fd, WSR_UPGRADE_TIMEOUT_MS): -1;
    free (frame);
    return rc;
}

//  Read a frame of the type expected; else fill why. The body is dropped.
static int
s_expect (int sock, wsr_handover_type_t want, int timeout_ms, int *fd_p, char *why,
          size_t why_size, char *body_out, size_t body_size)
{
    wsr_handover_type_t type;
    uint8_t *body = NULL;
    size_t size = 0;
    int fd = -1;
    if (wsr_handover_read (sock, &type, &body, &size, &fd, timeout_ms)) {
        snprintf (why, why_size, "%s",
                  errno == EPROTONOSUPPORT? "handover protocol version mismatch":
                  errno == ETIMEDOUT? "timed out": errno == ECONNRESET? "peer went away":
                  strerror (errno));
        return -1;
    }
    if (type != want) {
        if (type == WSR_HANDOVER_REFUSE)
            snprintf (why, why_size, "refused: %.*s", (int) (size < 200? size: 200),
                      body? (const char *) body: "");
        else
            snprintf (why, why_size, "unexpected frame %d", (int) type);
        free (body);
        if (fd >= 0)
            close (fd);
        return -1;
    }
    if (body_out && body_size) {
        size_t n = size < body_size - 1? size: body_size - 1;
        if (n)
            memcpy (body_out, body, n);
        body_out [n] = 0;
    }
    free (body);
    if (fd_p)
        *fd_p = fd;
    else
    if (fd >= 0)
        close (fd);
    return 0;
}

//  Old side: every worker's topics, then the new process' confirmation,
//  then our barrier. Returns 0, or -1 with why filled.
static int
s_give_topics (int sock, wsr_node_t *node, char *why, size_t why_size)
{
    int workers = wsr_node_workers (node);
    size_t total = 0;
    for (int i = 0; i < workers; i++) {
        zmsg_t *keys = wsr_node_topics (node, i);
        size_t n = keys? zmsg_size (keys): 0;
        char **list = (char **) calloc (n + 1, sizeof (char *));
        assert (list);
        size_t k = 0;
        char *key;
        while (keys && k < n && (key = zmsg_popstr (keys)))
            list [k++] = key;
        zmsg_destroy (&keys);
        size_t size = 0;
        uint8_t *frame = wsr_handover_topics_encode (i, workers, (const char *const *) list, k,
                                                     &size);
        for (size_t j = 0; j < k; j++)
            free (list [j]);
        free (list);
        total += k;
        int rc = frame? wsr_passfd_send (sock, frame, size, -1, WSR_UPGRADE_TIMEOUT_MS): -1;
        free (frame);
        if (rc) {
            snprintf (why, why_size, "sending topics: %s", strerror (errno));
            return -1;
        }
    }
    if (s_expect (sock, WSR_HANDOVER_ACK, WSR_UPGRADE_TIMEOUT_MS, NULL, why, why_size, NULL, 0))
        return -1;
    if (wsr_node_sync (node)) {
        snprintf (why, why_size, "barrier: a bridge did not answer SYNC");
        return -1;
    }
    zsys_info ("upgrade: the new process subscribed %zu topics first", total);
    return 0;
}

//  New side: TOPICS from every old worker, subscribed, then ACK. Returns
//  0, or -1 (logged; REFUSE sent when it is ours to say).
static int
s_take_topics (int sock, wsr_node_t *node)
{
    zlistx_t *lists [WSR_MAX_WORKERS] = { NULL };
    int count = 0, got = 0, rc = -1;
    char why [256] = "";
    while (count == 0 || got < count) {
        wsr_handover_type_t type;
        uint8_t *body = NULL;
        size_t size = 0;
        int fd = -1;
        if (wsr_handover_read (sock, &type, &body, &size, &fd, WSR_UPGRADE_TIMEOUT_MS)) {
            snprintf (why, sizeof why, "old process: %s", strerror (errno));
            goto done;
        }
        if (fd >= 0)
            close (fd);
        zlistx_t *list = zlistx_new ();
        zlistx_set_destructor (list, (zlistx_destructor_fn *) zstr_free);
        int index = 0, workers = 0;
        if (type != WSR_HANDOVER_TOPICS
        ||  wsr_handover_topics_decode (body, size, &index, &workers, list)
        ||  workers > WSR_MAX_WORKERS || (count && workers != count) || lists [index]) {
            snprintf (why, sizeof why, "expected TOPICS, got frame %d", (int) type);
            zlistx_destroy (&list);
            free (body);
            goto done;
        }
        free (body);
        count = workers;
        lists [index] = list;
        got++;
    }
    int64_t started = wsr_util_mono_ms ();
    if (wsr_node_presub (node, lists, count)) {
        snprintf (why, sizeof why, "subscriptions not confirmed by the backplane");
        s_send (sock, WSR_HANDOVER_REFUSE, why, -1);
        goto done;
    }
    size_t total = 0;
    for (int i = 0; i < count; i++)
        total += zlistx_size (lists [i]);
    zsys_info ("upgrade: %zu topics subscribed in %" PRId64 " ms, before any session",
               total, wsr_util_mono_ms () - started);
    rc = s_send (sock, WSR_HANDOVER_ACK, "subscribed", -1);
done:
    if (rc)
        zsys_error ("upgrade: topics: %s", *why? why: "ACK not sent");
    for (int i = 0; i < WSR_MAX_WORKERS; i++)
        zlistx_destroy (&lists [i]);
    return rc;
}

//  Close the fds of a [frame][fd] message.
static void
s_close_fds (zmsg_t *msg)
{
    zframe_t *frame = zmsg_first (msg);
    while (frame && (frame = zmsg_next (msg))) {
        int fd;
        memcpy (&fd, zframe_data (frame), sizeof fd);
        close (fd);
        frame = zmsg_next (msg);
    }
}

//  Reap the child: told to go, given a moment, then killed.
static void
s_reap (pid_t pid)
{
    int64_t end = wsr_util_mono_ms () + 2000;
    while (wsr_util_mono_ms () < end) {
        pid_t rc = waitpid (pid, NULL, WNOHANG);
        if (rc == pid || (rc < 0 && errno == ECHILD))
            return;
        usleep (20000);
    }
    kill (pid, SIGKILL);
    waitpid (pid, NULL, 0);
}

//  Start the new process with the handover socket.
static pid_t
s_spawn (int child_end, char *const argv [])
{
    const char *path = wsr_util_exe_path ();
    if (!path)
        return -1;
    //  Everything exec needs is built before fork: the child only makes
    //  async-signal-safe calls
    size_t count = 0;
    while (environ [count])
        count++;
    char **envp = (char **) calloc (count + 2, sizeof (char *));
    assert (envp);
    size_t used = 0;
    size_t prefix = strlen (WSR_UPGRADE_ENV_FD) + 1;
    for (size_t i = 0; i < count; i++)
        if (strncmp (environ [i], WSR_UPGRADE_ENV_FD "=", prefix))
            envp [used++] = environ [i];
    char fd_var [64];
    snprintf (fd_var, sizeof fd_var, "%s=%d", WSR_UPGRADE_ENV_FD, child_end);
    envp [used++] = fd_var;
    sigset_t none;
    sigemptyset (&none);
    pid_t pid = fork ();
    if (pid == 0) {
        fcntl (child_end, F_SETFD, 0);
        pthread_sigmask (SIG_SETMASK, &none, NULL);
        execve (path, argv, envp);
        _exit (127);
    }
    free (envp);
    return pid;
}

//  --------------------------------------------------------------------------
//  Old side.
int
wsr_upgrade_give (wsr_node_t *node, char *const argv [])
{
    assert (node && argv);
    wsr_metrics_t *metrics = wsr_node_metrics (node);
    int64_t started = wsr_util_mono_ms ();
    char why [256] = "";
    char build [64] = "";
    int listen_fd = -1;
    bool paused = false;
    zmsg_t *batch = NULL;
    int64_t moved = 0;
    int pair [2];
    if (socketpair (AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0, pair)) {
        zsys_error ("upgrade: socketpair: %s", strerror (errno));
        wsr_metrics_add (metrics, WSR_M_HANDOVER_FAILURES, 1);
        return -1;
    }
    zsys_info ("upgrade: starting %s", wsr_util_exe_path ()? wsr_util_exe_path (): "?");
    pid_t pid = s_spawn (pair [1], argv);
    close (pair [1]);
    int sock = pair [0];
    if (pid < 0) {
        snprintf (why, sizeof why, "cannot start the binary: %s", strerror (errno));
        goto failed;
    }
    if (s_expect (sock, WSR_HANDOVER_HELLO, WSR_UPGRADE_TIMEOUT_MS, NULL, why, sizeof why,
                  build, sizeof build))
        goto failed;
    listen_fd = wsr_node_pause (node);
    paused = true;
    if (listen_fd < 0) {
        snprintf (why, sizeof why, "no listening socket");
        goto failed;
    }
    if (s_send (sock, WSR_HANDOVER_LISTENER, "", listen_fd)) {
        snprintf (why, sizeof why, "sending the listening socket: %s", strerror (errno));
        goto failed;
    }
    close (listen_fd);
    listen_fd = -1;
    if (s_expect (sock, WSR_HANDOVER_ACK, WSR_UPGRADE_START_MS, NULL, why, sizeof why, NULL, 0))
        goto failed;
    if (s_give_topics (sock, node, why, sizeof why))
        goto failed;

    int64_t linger_end = 0;
    while (true) {
        uint64_t open = 0;
        batch = wsr_node_export (node, WSR_UPGRADE_BATCH, &open);
        size_t sessions = zmsg_size (batch) / 2;
        if (sessions == 0) {
            zmsg_destroy (&batch);
            if (open == 0)
                break;
            //  Only sessions that cannot go yet: wait a little, then 1012
            if (!linger_end)
                linger_end = wsr_util_mono_ms () + WSR_UPGRADE_LINGER_MS;
            if (wsr_util_mono_ms () >= linger_end) {
                int closed = wsr_node_restart (node);
                zsys_warning ("upgrade: %d sessions closed with 1012 (not transferable)",
                              closed);
                break;
            }
            usleep (10000);
            continue;
        }
        for (zframe_t *record = zmsg_first (batch); record; record = zmsg_next (batch)) {
            zframe_t *fd_frame = zmsg_next (batch);
            int fd;
            memcpy (&fd, zframe_data (fd_frame), sizeof fd);
            if (wsr_passfd_send (sock, zframe_data (record), zframe_size (record), fd,
                                 WSR_UPGRADE_TIMEOUT_MS)) {
                snprintf (why, sizeof why, "sending a session: %s", strerror (errno));
                goto failed;
            }
        }
        char count [32];
        snprintf (count, sizeof count, "%zu", sessions);
        char taken [32] = "";
        if (s_send (sock, WSR_HANDOVER_ACK, count, -1)
        ||  s_expect (sock, WSR_HANDOVER_ACK, WSR_UPGRADE_TIMEOUT_MS, NULL, why, sizeof why,
                      taken, sizeof taken)) {
            if (!*why)
                snprintf (why, sizeof why, "committing a batch: %s", strerror (errno));
            goto failed;
        }
        //  The new process has them: our copies go
        s_close_fds (batch);
        zmsg_destroy (&batch);
        moved += (int64_t) sessions;
        wsr_metrics_add (metrics, WSR_M_HANDOVER_SESSIONS, (int64_t) sessions);
        if (atoi (taken) != (int) sessions)
            zsys_warning ("upgrade: new process took %s of %zu sessions", taken, sessions);
    }
    if (s_send (sock, WSR_HANDOVER_DONE, "", -1))
        zsys_warning ("upgrade: DONE not sent: %s", strerror (errno));
    close (sock);
    wsr_metrics_add (metrics, WSR_M_HANDOVERS, 1);
    zsys_info ("upgrade: %" PRId64 " sessions handed to pid %d (build %s) in %" PRId64 " ms",
               moved, (int) pid, build, wsr_util_mono_ms () - started);
    return 0;

failed:
    zsys_error ("upgrade: failed, keeping every session: %s", why);
    wsr_metrics_add (metrics, WSR_M_HANDOVER_FAILURES, 1);
    if (pid > 0)
        s_send (sock, WSR_HANDOVER_REFUSE, why, -1);
    close (sock);
    if (batch) {
        //  Ours again: the fds never left this process
        size_t back = zmsg_size (batch) / 2;
        int taken = wsr_node_import (node, &batch);
        if ((size_t) taken != back)
            zsys_warning ("upgrade: %zu sessions back, %d taken", back, taken);
    }
    if (listen_fd >= 0)
        close (listen_fd);
    if (paused)
        wsr_node_resume (node);
    if (pid > 0)
        s_reap (pid);
    if (moved)
        zsys_warning ("upgrade: %" PRId64 " sessions had gone before the failure", moved);
    return -1;
}

//  --------------------------------------------------------------------------
//  New side, before the node starts.
int
wsr_upgrade_begin (int *listen_fd_p)
{
    assert (listen_fd_p);
    *listen_fd_p = 0;
    const char *value = getenv (WSR_UPGRADE_ENV_FD);
    if (!value)
        return -1;
    int sock = atoi (value);
    unsetenv (WSR_UPGRADE_ENV_FD);
    if (sock <= 2 || fcntl (sock, F_SETFD, FD_CLOEXEC)) {
        zsys_error ("upgrade: bad %s", WSR_UPGRADE_ENV_FD);
        return -2;
    }
    if (getenv (WSR_UPGRADE_ENV_REFUSE)) {
        s_send (sock, WSR_HANDOVER_REFUSE, "refused by " WSR_UPGRADE_ENV_REFUSE, -1);
        close (sock);
        return -2;
    }
    char why [256] = "";
    int fd = -1;
    if (s_send (sock, WSR_HANDOVER_HELLO, wsr_util_build_id (), -1)
    ||  s_expect (sock, WSR_HANDOVER_LISTENER, WSR_UPGRADE_TIMEOUT_MS, &fd, why, sizeof why,
                  NULL, 0)
    ||  fd <= 0) {
        zsys_error ("upgrade: no listening socket from the old process: %s", why);
        if (fd >= 0)
            close (fd);
        close (sock);
        return -2;
    }
    *listen_fd_p = fd;
    return sock;
}

//  --------------------------------------------------------------------------
//  New side, once the node runs.
int64_t
wsr_upgrade_take (int sock, wsr_node_t *node)
{
    assert (node);
    int64_t taken = 0;
    zmsg_t *batch = zmsg_new ();
    if (s_send (sock, WSR_HANDOVER_ACK, "ready", -1)) {
        zsys_error ("upgrade: READY not sent: %s", strerror (errno));
        goto done;
    }
    if (s_take_topics (sock, node))
        goto done;
    while (true) {
        wsr_handover_type_t type;
        uint8_t *body = NULL;
        size_t size = 0;
        int fd = -1;
        if (wsr_handover_read (sock, &type, &body, &size, &fd, WSR_UPGRADE_TIMEOUT_MS)) {
            zsys_error ("upgrade: old process: %s", strerror (errno));
            break;
        }
        if (type == WSR_HANDOVER_SESSION && fd >= 0) {
            //  Kept whole (header included) as the workers take it
            size_t frame_size = 0;
            uint8_t *frame = wsr_handover_frame (WSR_HANDOVER_SESSION, body, size,
                                                 &frame_size);
            assert (frame);
            zframe_t *record = zframe_new (frame, frame_size);
            free (frame);
            zmsg_append (batch, &record);
            zframe_t *fd_frame = zframe_new (&fd, sizeof fd);
            zmsg_append (batch, &fd_frame);
            free (body);
            continue;
        }
        free (body);
        if (fd >= 0)
            close (fd);
        if (type == WSR_HANDOVER_ACK) {
            //  A barrier first: what the old workers queued before letting
            //  these sessions go was published before now, so if it came
            //  after our subscriptions it is in our rings by the time the
            //  barrier is answered (a mark not found is then older than
            //  every ring: the whole ring is new to the session)
            if (zmsg_size (batch) && wsr_node_sync (node))
                zsys_warning ("upgrade: a bridge did not answer SYNC; sessions of this "
                              "batch may see a message twice");
            int n = zmsg_size (batch)? wsr_node_import (node, &batch): 0;
            if (!batch)
                batch = zmsg_new ();
            taken += n;
            char count [32];
            snprintf (count, sizeof count, "%d", n);
            if (s_send (sock, WSR_HANDOVER_ACK, count, -1)) {
                zsys_error ("upgrade: ACK not sent: %s", strerror (errno));
                break;
            }
        }
        else
        if (type == WSR_HANDOVER_DONE)
            break;
        else {
            zsys_error ("upgrade: old process gave up (frame %d)", (int) type);
            break;
        }
    }
done:
    wsr_node_presub_end (node);
    //  A batch never committed stays with the old process
    s_close_fds (batch);
    zmsg_destroy (&batch);
    close (sock);
    zsys_info ("upgrade: took %" PRId64 " sessions", taken);
    return taken;
}

//  --------------------------------------------------------------------------
//  systemd: this process is the service now (Type=notify, NotifyAccess=all).
void
wsr_upgrade_notify_ready (void)
{
    const char *path = getenv ("NOTIFY_SOCKET");
    if (!path || !*path || strlen (path) >= sizeof ((struct sockaddr_un *) 0)->sun_path)
        return;
    struct sockaddr_un addr = { .sun_family = AF_UNIX };
    memcpy (addr.sun_path, path, strlen (path));
    if (addr.sun_path [0] == '@')
        addr.sun_path [0] = 0;          //  abstract namespace
    int fd = socket (AF_UNIX, SOCK_DGRAM | SOCK_CLOEXEC, 0);
    if (fd < 0)
        return;
    char text [64];
    int len = snprintf (text, sizeof text, "MAINPID=%d\nREADY=1\n", (int) getpid ());
    if (sendto (fd, text, (size_t) len, 0, (struct sockaddr *) &addr,
                (socklen_t) (offsetof (struct sockaddr_un, sun_path) + strlen (path))) < 0)
        zsys_warning ("upgrade: systemd notify: %s", strerror (errno));
    close (fd);
}

//  --------------------------------------------------------------------------
//  Self test: the new side's steps against a scripted old side over a
//  socketpair (the whole exchange between processes is in e2e_handover).
void
wsr_upgrade_test (bool verbose)
{
    printf (" * wsr_upgrade: ");
    if (verbose)
        printf ("\n");
    int listen_fd = -1;
    unsetenv (WSR_UPGRADE_ENV_FD);
    assert (wsr_upgrade_begin (&listen_fd) == -1);
    //  A refusing new process: REFUSE with the reason, -2
    int pair [2];
    int rc = socketpair (AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0, pair);
    assert (rc == 0);
    char value [16];
    snprintf (value, sizeof value, "%d", pair [1]);
    setenv (WSR_UPGRADE_ENV_FD, value, 1);
    setenv (WSR_UPGRADE_ENV_REFUSE, "1", 1);
    assert (wsr_upgrade_begin (&listen_fd) == -2);
    assert (getenv (WSR_UPGRADE_ENV_FD) == NULL);
    unsetenv (WSR_UPGRADE_ENV_REFUSE);
    char why [256];
    rc = s_expect (pair [0], WSR_HANDOVER_HELLO, 1000, NULL, why, sizeof why, NULL, 0);
    assert (rc == -1 && strstr (why, "refused"));
    close (pair [0]);

    //  HELLO, then a listening socket arrives
    rc = socketpair (AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0, pair);
    assert (rc == 0);
    int spare [2];
    rc = socketpair (AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0, spare);
    assert (rc == 0);
    rc = s_send (pair [0], WSR_HANDOVER_LISTENER, "", spare [0]);
    assert (rc == 0);
    snprintf (value, sizeof value, "%d", pair [1]);
    setenv (WSR_UPGRADE_ENV_FD, value, 1);
    int sock = wsr_upgrade_begin (&listen_fd);
    assert (sock == pair [1] && listen_fd > 2);
    char build [64];
    rc = s_expect (pair [0], WSR_HANDOVER_HELLO, 1000, NULL, why, sizeof why,
                   build, sizeof build);
    assert (rc == 0 && streq (build, wsr_util_build_id ()));
    close (listen_fd);
    close (spare [0]);
    close (spare [1]);
    close (sock);
    close (pair [0]);
    printf ("OK\n");
}
