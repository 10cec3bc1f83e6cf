//  wsr_passfd — bytes and descriptors over a Unix stream socket (SCM_RIGHTS)

#ifndef WSR_PASSFD_H_INCLUDED
#define WSR_PASSFD_H_INCLUDED

#ifdef __cplusplus
extern "C" {
#endif

//  Send size bytes with fd attached to the first of them (-1: none), on a
//  blocking or non-blocking Unix stream socket, waiting up to timeout_ms in
//  total for room. The fd stays the caller's (the kernel duplicates it).
//  Returns 0 or -1 (errno set; ETIMEDOUT when time ran out).
int
    wsr_passfd_send (int sock, const void *data, size_t size, int fd, int timeout_ms);

//  Receive exactly size bytes, waiting up to timeout_ms in total. If fd_p is
//  given, a descriptor that came with them is stored there (else -1); the
//  caller owns it. Descriptors beyond the first one are closed. Returns 0,
//  or -1 (errno set; ECONNRESET at EOF, ETIMEDOUT when time ran out).
int
    wsr_passfd_recv (int sock, void *data, size_t size, int *fd_p, int timeout_ms);

//  Self test of this class.
void
    wsr_passfd_test (bool verbose);

#ifdef __cplusplus
}
#endif

#endif
