//  wsr_upgrade — zero-disconnect upgrade: a node hands its listening socket
//  and live sessions to a new process started from the same binary path

#ifndef WSR_UPGRADE_H_INCLUDED
#define WSR_UPGRADE_H_INCLUDED

#ifdef __cplusplus
extern "C" {
#endif

#define WSR_UPGRADE_ENV_FD      "WSROUTER_HANDOVER_FD"      //  set in the new process
#define WSR_UPGRADE_ENV_REFUSE  "WSROUTER_HANDOVER_REFUSE"  //  tests: the new one refuses
#define WSR_UPGRADE_BATCH       512         //  sessions per batch
#define WSR_UPGRADE_TIMEOUT_MS  10000       //  each step of the exchange
#define WSR_UPGRADE_START_MS    30000       //  the new node starts (READY)
#define WSR_UPGRADE_LINGER_MS   3000        //  sessions not exportable yet (v1 openings)

//  Old side (SIGUSR2): start the binary at the path this process was
//  started from (wsr_util_exe_path) with argv, hand over the listening
//  socket and every session in batches. Returns 0 when everything went (the
//  caller then exits without draining), or -1 after a failure, logged and
//  counted: the node has every session back and accepts again.
int
    wsr_upgrade_give (wsr_node_t *node, char *const argv []);

//  New side, before the node starts: if this process was started by an
//  upgrade, say HELLO and receive the listening socket (*listen_fd_p).
//  Returns the handover socket, -1 if not started by an upgrade, or -2 if
//  the handover failed (the caller exits; the old process keeps serving).
int
    wsr_upgrade_begin (int *listen_fd_p);

//  New side, once the node runs: say READY, take sessions batch by batch
//  until DONE. Closes sock. Returns the sessions taken.
int64_t
    wsr_upgrade_take (int sock, wsr_node_t *node);

//  Tell systemd (NOTIFY_SOCKET, Type=notify) this process is the service's
//  main process and ready. No-op without NOTIFY_SOCKET.
void
    wsr_upgrade_notify_ready (void);

//  Self test
void
    wsr_upgrade_test (bool verbose);

#ifdef __cplusplus
}
#endif

#endif
