//  wsr_curve — CURVE keys on the node ⇄ bridge links, and the plaintext rule

#ifndef WSR_CURVE_H_INCLUDED
#define WSR_CURVE_H_INCLUDED

#ifdef __cplusplus
extern "C" {
#endif

//  Make sock a CURVE client: our certificate from secret_file (czmq format,
//  `wsrouter keygen --curve`), the server's public key from server_file.
//  Both NULL: plaintext, returns 0. One missing, or a file that does not
//  load: logs why and returns -1.
int
    wsr_curve_client (zsock_t *sock, const char *secret_file, const char *server_file);

//  Make sock a CURVE server with the certificate in secret_file; incoming
//  peers are then checked by the ZAP handler of this process (wsr_zap).
//  Returns 0, or -1 (logged) if the file does not load.
int
    wsr_curve_server (zsock_t *sock, const char *secret_file);

//  True if a ZeroMQ endpoint stays on this host: inproc://, ipc://, or tcp://
//  on a loopback address (127.0.0.0/8, ::1, localhost). Such links may stay
//  plaintext; any other tcp:// link needs CURVE or an explicit
//  --insecure-plaintext.
bool
    wsr_curve_endpoint_local (const char *endpoint);

//  The plaintext rule in one place: returns 0 if endpoint may be used
//  (local, or keyed, or insecure allowed), else logs a clear error naming
//  who and the endpoint and returns -1.
int
    wsr_curve_check (const char *who, const char *endpoint, bool keyed, bool insecure);

//  Write a new certificate pair: path (public) and path_secret. Returns 0
//  or -1 (logged).
int
    wsr_curve_keygen (const char *path);

//  Self test
void
    wsr_curve_test (bool verbose);

#ifdef __cplusplus
}
#endif
#endif
