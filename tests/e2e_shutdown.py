#!/usr/bin/python3
"""e2e_shutdown — SIGTERM drains: every open session gets close 1001, /readyz
stops answering 200 (on a keep-alive connection opened before: 503 "draining"
and Connection: close), an upgrade on such a connection gets 503, and the
process exits with status 0 within 5 s."""

import os
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import asyncio  # noqa: E402
import signal  # noqa: E402
import socket  # noqa: E402
import subprocess  # noqa: E402
import time  # noqa: E402

import wsr_e2e as e  # noqa: E402

EXIT_LIMIT_S = 5.0


async def wait_exit(srv, t0, what):
    """Wait (without blocking the loop) for the process to exit; assert status
    0 within EXIT_LIMIT_S of t0."""
    loop = asyncio.get_running_loop()
    left = max(0.1, t0 + EXIT_LIMIT_S - time.monotonic())
    try:
        status = await loop.run_in_executor(None, srv.proc.wait, left)
    except subprocess.TimeoutExpired:
        raise e.E2EError("%s: process still running %.1f s after SIGTERM" % (what, EXIT_LIMIT_S))
    elapsed = time.monotonic() - t0
    e.expect(status == 0, "%s: expected exit status 0, got %s; stderr tail: %s"
             % (what, status, srv.stderr_text()[-1000:]))
    return elapsed


async def three_clients():
    srv = e.start_server(workers=2)
    socks = []
    try:
        socks = [await e.connect(srv.ws_url(srv.mint(u, channels=["all"])))
                 for u in ("s1", "s2", "s2")]
        e.expect_eq(await e.settle(srv, 3), 3, "sessions_open before SIGTERM")
        #  Sessions are live: each gets a message before the signal
        srv.publish(channel="all", data="before")
        for i, ws in enumerate(socks):
            e.expect_eq(await e.recv(ws), "before", "client %d message before SIGTERM" % i)
        t0 = time.monotonic()
        srv.signal(signal.SIGTERM)
        results = await asyncio.gather(
            *[e.expect_close(ws, 1001, timeout=EXIT_LIMIT_S, what="client %d" % i)
              for i, ws in enumerate(socks)], return_exceptions=True)
        errors = [str(r) for r in results if isinstance(r, BaseException)]
        e.expect(not errors, "close codes after SIGTERM: " + "; ".join(errors))
        elapsed = await wait_exit(srv, t0, "SIGTERM with 3 clients")
        print("  info: exited %.2f s after SIGTERM" % elapsed, flush=True)
    finally:
        await e.close_all(*socks)
        srv.stop()


def keepalive_conn(port):
    """A raw HTTP/1.1 connection that has had one keep-alive answer."""
    s = socket.create_connection(("127.0.0.1", port), timeout=5.0)
    s.sendall(b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n")
    head = read_answer(s)
    e.expect(b"Connection: keep-alive" in head, "keep-alive before SIGTERM: %r" % head[:200])
    return s


def read_answer(s):
    """One answer (headers and Content-Length body) as bytes."""
    buf = b""
    while b"\r\n\r\n" not in buf:
        chunk = s.recv(4096)
        if not chunk:
            return buf
        buf += chunk
    head, _, rest = buf.partition(b"\r\n\r\n")
    length = 0
    for line in head.split(b"\r\n"):
        if line.lower().startswith(b"content-length:"):
            length = int(line.split(b":")[1])
    while len(rest) < length:
        chunk = s.recv(4096)
        if not chunk:
            break
        rest += chunk
    return head + b"\r\n\r\n" + rest


async def readyz_during_drain():
    srv = e.start_server()
    raws = []
    try:
        expect_ready = srv.http("GET", "/readyz")
        e.expect_eq(expect_ready.status, 200, "GET /readyz before SIGTERM")
        loop = asyncio.get_running_loop()
        #  Raw peers that never answer the close: the drain has to wait for them
        for u in ("r1", "r2"):
            raws.append(await loop.run_in_executor(
                None, lambda u=u: e.RawWs(srv.port, "/ws?token=" + srv.mint(u))))
        await e.settle(srv, 2)
        #  Keep-alive connections opened before the drain stay with the
        #  listener: they see the drain from the inside
        idle = [await loop.run_in_executor(None, keepalive_conn, srv.port) for _ in range(2)]
        raws.extend(idle)
        t0 = time.monotonic()
        srv.signal(signal.SIGTERM)
        for i, raw in enumerate(raws[:2]):
            try:
                fin, op, payload = await loop.run_in_executor(None, raw.read_frame,
                                                              EXIT_LIMIT_S)
            except Exception as ex:
                raise e.E2EError("raw client %d: expected a close frame after SIGTERM, got "
                                 "%s: %s" % (i, type(ex).__name__, ex))
            e.expect(op == 0x8, "raw client %d: expected a close frame (opcode 8), got "
                     "opcode %d %r" % (i, op, e.short(payload)))
            code = int.from_bytes(payload[:2], "big") if len(payload) >= 2 else None
            e.expect_eq(code, 1001, "raw client %d close code" % i)
        #  The drain has begun (closes were sent) and cannot be over: the two
        #  peers never answer, so the node waits for them. A readiness probe
        #  now must fail: not 200, or no answer at all (the listener stops
        #  accepting when the drain starts: connection refused)
        e.expect(srv.proc.poll() is None, "the process exited while 2 peers had not answered "
                 "its close (status %s)" % srv.proc.poll())
        try:
            res = await loop.run_in_executor(None, lambda: srv.http("GET", "/readyz",
                                                                    timeout=2.0))
            e.expect(res.status != 200, "GET /readyz during the drain (after the 1001 "
                     "closes were sent, process still running): expected not 200, got %r"
                     % res)
            note = "HTTP %d" % res.status
        except (OSError, e.http.client.HTTPException) as ex:
            note = "no answer (%s)" % type(ex).__name__
        print("  info: /readyz during drain: %s" % note, flush=True)

        def on_idle():
            idle[0].sendall(b"GET /readyz HTTP/1.1\r\nHost: x\r\n\r\n")
            ready = read_answer(idle[0])
            idle[1].sendall(b"GET /ws?token=" + srv.mint("late").encode()
                            + b" HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\n"
                            b"Connection: Upgrade\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n"
                            b"Sec-WebSocket-Version: 13\r\n\r\n")
            upgrade = read_answer(idle[1])
            return ready, upgrade

        ready, upgrade = await loop.run_in_executor(None, on_idle)
        e.expect(ready.startswith(b"HTTP/1.1 503") and b"draining" in ready,
                 "GET /readyz on a keep-alive connection during the drain: %r" % ready[:200])
        e.expect(b"Connection: close" in ready, "keep-alive ends during the drain: %r"
                 % ready[:200])
        e.expect(upgrade.startswith(b"HTTP/1.1 503"),
                 "upgrade on a keep-alive connection during the drain: %r" % upgrade[:200])
        elapsed = await wait_exit(srv, t0, "SIGTERM with 2 peers that never answer the close")
        print("  info: exited %.2f s after SIGTERM" % elapsed, flush=True)
    finally:
        for raw in raws:
            raw.close()
        srv.stop()


async def no_clients():
    srv = e.start_server()
    try:
        t0 = time.monotonic()
        srv.signal(signal.SIGTERM)
        await wait_exit(srv, t0, "SIGTERM with no clients")
    finally:
        srv.stop()


async def body(suite):
    await suite.case("SIGTERM: 3 clients get 1001, exit 0 within 5 s", three_clients)
    await suite.case("SIGTERM: /readyz not 200 during drain; silent peers", readyz_during_drain)
    await suite.case("SIGTERM with no clients: exit 0 within 5 s", no_clients)


if __name__ == "__main__":
    e.main("e2e_shutdown", body)
