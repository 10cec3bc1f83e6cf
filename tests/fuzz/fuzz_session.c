//  fuzz_session — libFuzzer harness for a session's WebSocket input path
//
//  After the upgrade, every byte a client sends goes through wslay and our
//  callbacks in a session worker: frame parsing, fragmentation, UTF-8 checks,
//  control frames, close handling, rate limits, the output queue. The worker
//  offers wsr_session_fuzz for this: it runs one input as the bytes of one
//  freshly adopted session (peer then silent, EOF) synchronously in this
//  thread and returns how many bytes the session wrote back. Crashes, leaks
//  and undefined behaviour are what the sanitizers report; the harness adds
//  no expectations of its own beyond the call returning.
//
//  czmq logs every session close at info level: the log stream is turned off
//  unless WSR_FUZZ_LOG is set, or a run drowns in it.

#include "wsr_classes.h"

//  True once an input ran: wsr_session_fuzz (NULL, 0) releases the worker's
//  state only if it exists (without it, the call would create it).
static bool s_started = false;

//  Release the worker's static state before czmq's own atexit shutdown runs
//  (registered later, so it runs first), so no socket is left dangling.
static void
s_release (void)
{
    if (s_started)
        wsr_session_fuzz (NULL, 0);
}

//  --------------------------------------------------------------------------
//  Called once by libFuzzer before the first input.

int
LLVMFuzzerInitialize (int *argc, char ***argv)
{
    (void) argc;
    (void) argv;
    int rc = sodium_init ();
    assert (rc >= 0);
    zsys_init ();
    //  libFuzzer handles SIGINT itself (it prints stats and exits cleanly)
    zsys_handler_set (NULL);
    if (!getenv ("WSR_FUZZ_LOG"))
        zsys_set_logstream (NULL);
    atexit (s_release);
    return 0;
}

//  --------------------------------------------------------------------------
//  One input: the bytes one client sends after its handshake.

int
LLVMFuzzerTestOneInput (const uint8_t *data, size_t size)
{
    //  NULL means "release the state" to the entry point: an empty input is
    //  still a session, one that sends nothing
    static const uint8_t nothing [1] = { 0 };
    s_started = true;
    wsr_session_fuzz (size? data: nothing, size);
    return 0;
}
