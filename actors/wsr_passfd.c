//  wsr_passfd — bytes and descriptors over a Unix stream socket (SCM_RIGHTS)
//
//  The handover moves listening sockets and client sockets from an old
//  process to its replacement. A descriptor is attached to the first byte of
//  the frame that describes it: on a Unix stream socket the kernel never
//  merges two sendmsg calls carrying descriptors into one read, so the
//  reader gets the fd with the header it reads first. Blocking is bounded by
//  poll with a total deadline; EINTR is retried.

#include "wsr_classes.h"
#include <poll.h>
#include <sys/socket.h>
#include <sys/wait.h>

//  Wait until sock is ready for events or the deadline (mono ms) passes.
static int
s_wait (int sock, short events, int64_t deadline)
{
    while (true) {
        int64_t left = deadline - wsr_util_mono_ms ();
        if (left <= 0) {
            errno = ETIMEDOUT;
            return -1;
        }
        struct pollfd item = { .fd = sock, .events = events };
        int rc = poll (&item, 1, (int) left);
        if (rc > 0)
            return 0;
        if (rc < 0 && errno != EINTR)
            return -1;
    }
}

//  --------------------------------------------------------------------------
//  Send size bytes, fd attached to the first sendmsg.
int
wsr_passfd_send (int sock, const void *data, size_t size, int fd, int timeout_ms)
{
    int64_t deadline = wsr_util_mono_ms () + timeout_ms;
    const uint8_t *bytes = (const uint8_t *) data;
    size_t sent = 0;
    bool fd_sent = fd < 0;
    while (sent < size) {
        struct iovec iov = { .iov_base = (void *) (bytes + sent), .iov_len = size - sent };
        struct msghdr msg = { .msg_iov = &iov, .msg_iovlen = 1 };
        union {
            char buf [CMSG_SPACE (sizeof (int))];
            struct cmsghdr align;
        } control;
        if (!fd_sent) {
            memset (&control, 0, sizeof control);
            msg.msg_control = control.buf;
            msg.msg_controllen = sizeof control.buf;
            struct cmsghdr *cmsg = CMSG_FIRSTHDR (&msg);
            cmsg->cmsg_level = SOL_SOCKET;
            cmsg->cmsg_type = SCM_RIGHTS;
            cmsg->cmsg_len = CMSG_LEN (sizeof (int));
            memcpy (CMSG_DATA (cmsg), &fd, sizeof (int));
        }
        ssize_t n = sendmsg (sock, &msg, MSG_NOSIGNAL | MSG_DONTWAIT);
        if (n > 0) {
            sent += (size_t) n;
            fd_sent = true;
        }
        else
        if (n < 0 && (errno == EAGAIN || errno == EWOULDBLOCK)) {
            if (s_wait (sock, POLLOUT, deadline))
                return -1;
        }
        else
        if (n < 0 && errno != EINTR)
            return -1;
    }
    return 0;
}

//  --------------------------------------------------------------------------
//  Receive exactly size bytes and the descriptor that came with them.
int
wsr_passfd_recv (int sock, void *data, size_t size, int *fd_p, int timeout_ms)
{
    int64_t deadline = wsr_util_mono_ms () + timeout_ms;
    uint8_t *bytes = (uint8_t *) data;
    size_t got = 0;
    if (fd_p)
        *fd_p = -1;
    while (got < size) {
        struct iovec iov = { .iov_base = bytes + got, .iov_len = size - got };
        union {
            char buf [CMSG_SPACE (sizeof (int) * 4)];
            struct cmsghdr align;
        } control;
        struct msghdr msg = {
            .msg_iov = &iov, .msg_iovlen = 1,
            .msg_control = control.buf, .msg_controllen = sizeof control.buf
        };
        ssize_t n = recvmsg (sock, &msg, MSG_DONTWAIT | MSG_CMSG_CLOEXEC);
        if (n > 0) {
            for (struct cmsghdr *cmsg = CMSG_FIRSTHDR (&msg); cmsg;
                 cmsg = CMSG_NXTHDR (&msg, cmsg)) {
                if (cmsg->cmsg_level != SOL_SOCKET || cmsg->cmsg_type != SCM_RIGHTS)
                    continue;
                size_t count = (cmsg->cmsg_len - CMSG_LEN (0)) / sizeof (int);
                for (size_t i = 0; i < count; i++) {
                    int fd;
                    memcpy (&fd, CMSG_DATA (cmsg) + i * sizeof (int), sizeof (int));
                    if (fd_p && *fd_p < 0)
                        *fd_p = fd;
                    else
                        close (fd);         //  one descriptor per frame
                }
            }
            got += (size_t) n;
        }
        else
        if (n == 0) {
            errno = ECONNRESET;
            goto fail;
        }
        else
        if (errno == EAGAIN || errno == EWOULDBLOCK) {
            if (s_wait (sock, POLLIN, deadline))
                goto fail;
        }
        else
        if (errno != EINTR)
            goto fail;
    }
    return 0;
fail:
    if (fd_p && *fd_p >= 0) {
        int saved = errno;
        close (*fd_p);
        *fd_p = -1;
        errno = saved;
    }
    return -1;
}

//  --------------------------------------------------------------------------
//  Self test: a pipe's read end crosses a socketpair with its frame and
//  still reads what is written into the pipe; frames without descriptors;
//  a large frame past the socket buffer; EOF and timeout.
void
wsr_passfd_test (bool verbose)
{
    printf (" * wsr_passfd: ");
    if (verbose)
        printf ("\n");
    int pair [2];
    int rc = socketpair (AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0, pair);
    assert (rc == 0);
    int pipes [2];
    rc = pipe (pipes);
    assert (rc == 0);

    rc = wsr_passfd_send (pair [0], "head", 4, pipes [0], 1000);
    assert (rc == 0);
    rc = wsr_passfd_send (pair [0], "tail", 4, -1, 1000);
    assert (rc == 0);
    close (pipes [0]);              //  the kernel holds the copy in flight
    char buf [8];
    int fd = -2;
    rc = wsr_passfd_recv (pair [1], buf, 4, &fd, 1000);
    assert (rc == 0 && memcmp (buf, "head", 4) == 0);
    assert (fd >= 0);
    rc = (int) write (pipes [1], "x", 1);
    assert (rc == 1);
    rc = (int) read (fd, buf, 1);
    assert (rc == 1 && buf [0] == 'x');
    close (fd);
    rc = wsr_passfd_recv (pair [1], buf, 4, &fd, 1000);
    assert (rc == 0 && memcmp (buf, "tail", 4) == 0 && fd == -1);
    close (pipes [1]);

    //  Nothing comes: timeout
    rc = wsr_passfd_recv (pair [1], buf, 1, &fd, 50);
    assert (rc == -1 && errno == ETIMEDOUT);

    //  4 MiB through a socket buffer much smaller than that, read by a thread
    //  of our own: the sender waits for room
    size_t big = 4 * 1024 * 1024;
    uint8_t *out = (uint8_t *) malloc (big);
    uint8_t *in = (uint8_t *) malloc (big);
    assert (out && in);
    for (size_t i = 0; i < big; i++)
        out [i] = (uint8_t) (i * 7);
    pid_t child = fork ();
    assert (child >= 0);
    if (child == 0) {
        rc = wsr_passfd_send (pair [0], out, big, -1, 10000);
        _exit (rc == 0? 0: 1);
    }
    rc = wsr_passfd_recv (pair [1], in, big, NULL, 10000);
    assert (rc == 0 && memcmp (in, out, big) == 0);
    int status = 0;
    rc = waitpid (child, &status, 0);
    assert (rc == child && WIFEXITED (status) && WEXITSTATUS (status) == 0);
    free (out);
    free (in);

    //  EOF in the middle of a read
    rc = wsr_passfd_send (pair [0], "ab", 2, -1, 1000);
    assert (rc == 0);
    close (pair [0]);
    rc = wsr_passfd_recv (pair [1], buf, 4, &fd, 1000);
    assert (rc == -1 && errno == ECONNRESET && fd == -1);
    close (pair [1]);
    printf ("OK\n");
}
