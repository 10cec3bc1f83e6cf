#!/usr/bin/python3
"""e2e_edge — the edge holes of issue 8, tried from the outside:

  - one address holding ~10,000 idle keep-alive connections (several
    processes from 127.0.0.1, GET /healthz every few seconds) takes nothing
    from another address: a WebSocket client from 127.0.0.2 connects in well
    under a second and receives a publication, handshakes_total{capacity}
    stays flat;
  - a publish with a wrong key and a 6 MiB body is answered 401 from its
    headers, before any body byte is sent;
  - HEAD carries no body; the keep-alive request cap ends a connection;
  - --bind :: is dual-stack and counts IPv4 clients by their IPv4 address;
  - tokens without exp are refused (1008 "exp missing") unless
    --require-exp 0;
  - --dev binds 127.0.0.1; short HS256 secrets are refused with status 2."""

import os
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import asyncio  # noqa: E402
import json  # noqa: E402
import resource  # noqa: E402
import selectors  # noqa: E402
import socket  # noqa: E402
import subprocess  # noqa: E402
import time  # noqa: E402

import wsr_e2e as e  # noqa: E402

ATTACKERS = 4                   # processes
ATTACK_CONNS = 2500             # connections each: 10,000 in all
ATTACK_SECONDS = 14.0           # bounded
ATTACK_PERIOD = 3.0             # GET /healthz per connection every this many s
REOPEN_PER_S = 100              # per process: refused connections come back slowly


def raw_connect(port, source="127.0.0.1", host="127.0.0.1", timeout=5.0):
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    s = socket.socket(family, socket.SOCK_STREAM)
    s.settimeout(timeout)
    if source:
        s.bind((source, 0))
    s.connect((host, port))
    return s


def read_response(s, head_only=False, timeout=5.0):
    """One HTTP response (by Content-Length; HEAD: headers only) → (status,
    headers dict, body, bytes left over)."""
    s.settimeout(timeout)
    buf = b""
    while b"\r\n\r\n" not in buf:
        chunk = s.recv(65536)
        if not chunk:
            raise e.E2EError("connection closed before a whole response: %r" % buf[:200])
        buf += chunk
    head, rest = buf.split(b"\r\n\r\n", 1)
    lines = head.decode("latin-1").split("\r\n")
    status = int(lines[0].split()[1])
    headers = {}
    for line in lines[1:]:
        k, _, v = line.partition(":")
        headers[k.strip().lower()] = v.strip()
    length = 0 if head_only else int(headers.get("content-length", "0"))
    while len(rest) < length:
        chunk = s.recv(65536)
        if not chunk:
            break
        rest += chunk
    return status, headers, rest[:length], rest[length:]


def publish_from(port, api_key, source, user, data):
    s = raw_connect(port, source=source)
    body = json.dumps({"user": user, "data": data}).encode()
    s.sendall(b"POST /api/publish HTTP/1.1\r\nHost: x\r\nAuthorization: apikey "
              + api_key.encode() + b"\r\nContent-Type: application/json\r\n"
              b"Content-Length: " + str(len(body)).encode() + b"\r\nConnection: close\r\n\r\n"
              + body)
    status, _, _, _ = read_response(s)
    s.close()
    return status


def metrics_from(port, source="127.0.0.3"):
    s = raw_connect(port, source=source)
    s.sendall(b"GET /metrics HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
    status, _, body, _ = read_response(s)
    s.close()
    e.expect_eq(status, 200, "GET /metrics from %s" % source)
    return e.parse_metrics(body.decode())


# --------------------------------------------------------------------------
#  The attacker: one process, ATTACK_CONNS keep-alive connections

def attacker(port, conns, seconds):
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    sel = selectors.DefaultSelector()
    end = time.monotonic() + seconds
    stats = {"opened": 0, "answers": 0, "refused": 0, "closed": 0}
    live = {}
    request = b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n"

    def open_one():
        s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        s.setblocking(False)
        s.bind(("127.0.0.1", 0))
        try:
            s.connect(("127.0.0.1", port))
        except BlockingIOError:
            pass
        except OSError:
            s.close()
            return
        live[s] = time.monotonic() + ATTACK_PERIOD * (len(live) % 100) / 100.0
        sel.register(s, selectors.EVENT_READ)
        stats["opened"] += 1

    def drop(s):
        sel.unregister(s)
        live.pop(s, None)
        s.close()
        stats["closed"] += 1

    for _ in range(conns):
        open_one()
    budget = 0.0
    last = time.monotonic()
    while time.monotonic() < end:
        for key, _ in sel.select(0.05):
            s = key.fileobj
            try:
                data = s.recv(65536)
            except OSError:
                data = b""
            if not data:
                drop(s)
                continue
            stats["answers"] += data.count(b"HTTP/1.1 200")
            stats["refused"] += data.count(b"HTTP/1.1 429")
        now = time.monotonic()
        for s, due in list(live.items()):
            if due <= now:
                try:
                    s.send(request)
                except OSError:
                    drop(s)
                    continue
                live[s] = now + ATTACK_PERIOD
        budget = min(REOPEN_PER_S, budget + (now - last) * REOPEN_PER_S)
        last = now
        while len(live) < conns and budget >= 1:
            budget -= 1
            open_one()
    print(json.dumps(stats), flush=True)


async def case_attack(suite):
    """Idle keep-alive flood from 127.0.0.1 vs a client from 127.0.0.2."""
    srv = e.start_server(relaxed_limits=False, workers=2)
    procs = []
    try:
        m0 = metrics_from(srv.port)
        cap0 = m0.get('wsrouter_handshakes_total{result="capacity"}', 0)
        for _ in range(ATTACKERS):
            procs.append(subprocess.Popen(
                [sys.executable, os.path.abspath(__file__), "--attacker", str(srv.port),
                 str(ATTACK_CONNS), str(ATTACK_SECONDS)],
                stdout=subprocess.PIPE, stderr=subprocess.PIPE))
        await asyncio.sleep(4.0)            # the flood is on and re-asking
        loop = asyncio.get_running_loop()
        for attempt in range(3):
            user = "victim%d" % attempt
            t0 = time.monotonic()
            ws = await asyncio.wait_for(
                e.connect(srv.ws_url(srv.mint(user)), local_addr=("127.0.0.2", 0)), 5.0)
            took = time.monotonic() - t0
            e.expect(took < 1.0, "client from 127.0.0.2 took %.2f s to connect" % took)
            status = await loop.run_in_executor(
                None, publish_from, srv.port, srv.api_key, "127.0.0.3", user, "hello")
            e.expect_eq(status, 202, "publish from 127.0.0.3 during the flood")
            e.expect_eq(await e.recv(ws, timeout=3.0), "hello", "message during the flood")
            await ws.close()
            print("  info: connect %d from 127.0.0.2 during the flood: %.3f s"
                  % (attempt, took), flush=True)
            await asyncio.sleep(2.0)
        m1 = await loop.run_in_executor(None, metrics_from, srv.port)
        cap1 = m1.get('wsrouter_handshakes_total{result="capacity"}', 0)
        e.expect_eq(cap1, cap0, 'handshakes_total{result="capacity"} during the flood')
        refused = m1.get('wsrouter_pending_refused_total{reason="per_ip"}', 0)
        e.expect(refused > 0, "the flood was refused per address (%s)" % refused)
        pending = m1.get("wsrouter_pending_connections", -1)
        e.expect(0 <= pending <= 64 + 8, "pending connections during the flood: %s" % pending)
        print("  info: per_ip refusals %d, pending %d" % (refused, pending), flush=True)
    finally:
        for p in procs:
            try:
                out, _ = p.communicate(timeout=ATTACK_SECONDS + 10)
                print("  info: attacker: %s" % out.decode().strip(), flush=True)
            except subprocess.TimeoutExpired:
                p.kill()
                p.communicate()
        srv.stop()


async def case_headers_first():
    """401 from the headers of a 6 MiB publish, before any body byte."""
    srv = e.start_server()
    try:
        loop = asyncio.get_running_loop()

        def probe():
            s = raw_connect(srv.port)
            s.sendall(b"POST /api/publish HTTP/1.1\r\nHost: x\r\n"
                      b"Authorization: apikey wrong\r\nContent-Type: application/json\r\n"
                      b"Content-Length: 6291456\r\n\r\n")
            t0 = time.monotonic()
            status, headers, _, _ = read_response(s, timeout=3.0)
            took = time.monotonic() - t0
            #  The rest of the body: the server stops reading soon (EOF or reset)
            sent = 0
            s.settimeout(5.0)
            chunk = b"x" * 65536
            try:
                while sent < 6291456:
                    sent += s.send(chunk)
            except OSError:
                pass
            s.close()
            return status, headers, took, sent

        status, headers, took, sent = await loop.run_in_executor(None, probe)
        e.expect_eq(status, 401, "publish with a wrong key, body not sent")
        e.expect(took < 1.0, "401 took %.2f s" % took)
        e.expect_eq(headers.get("connection"), "close", "Connection header of the 401")
        e.expect(sent < 6291456, "server read the whole 6 MiB body after the 401")
        print("  info: 401 in %.3f s; client could push %d body bytes after it"
              % (took, sent), flush=True)
    finally:
        srv.stop()


async def case_head_and_keepalive():
    srv = e.start_server(extra_args=["--keepalive-requests", "3"])
    try:
        loop = asyncio.get_running_loop()

        def run():
            s = raw_connect(srv.port)
            s.sendall(b"HEAD /healthz HTTP/1.1\r\nHost: x\r\n\r\n"
                      b"GET /nope HTTP/1.1\r\nHost: x\r\n\r\n"
                      b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n")
            first = read_response(s, head_only=True)
            s.settimeout(3.0)
            rest = first[3]
            while rest.count(b"HTTP/1.1") < 2 or not rest.endswith(b"ok\n"):
                chunk = s.recv(65536)
                if not chunk:
                    break
                rest += chunk
            tail = s.recv(100)
            s.close()
            return first, rest, tail

        first, rest, tail = await loop.run_in_executor(None, run)
        e.expect_eq(first[0], 200, "HEAD /healthz status")
        e.expect_eq(first[1].get("content-length"), "3", "HEAD Content-Length")
        e.expect(rest.startswith(b"HTTP/1.1 404"),
                 "after HEAD's headers the next answer follows at once: %r" % rest[:40])
        e.expect(b"Connection: close" in rest.split(b"HTTP/1.1 200")[-1],
                 "third answer on a keep-alive connection capped at 3 says close")
        e.expect_eq(tail, b"", "connection closed after the capped answer")
        m = srv.metrics()
        e.expect(m.get("wsrouter_keepalive_closed_total", 0) >= 1, "keepalive_closed_total")
    finally:
        srv.stop()


async def case_dual_stack():
    """--bind :: takes IPv4; mapped clients counted by their IPv4 address."""
    try:
        probe = socket.socket(socket.AF_INET6, socket.SOCK_STREAM)
        probe.bind(("::", 0))
        probe.close()
    except OSError as ex:
        return "skipped: no IPv6 (%s)" % ex
    srv = e.start_server(extra_args=["--bind", "::", "--max-pending-per-ip", "2"])
    held = []
    try:
        loop = asyncio.get_running_loop()

        def run():
            for _ in range(2):
                held.append(raw_connect(srv.port, source="127.0.0.1"))
            time.sleep(0.3)
            s = raw_connect(srv.port, source="127.0.0.1")
            s.sendall(b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n")
            try:
                third = read_response(s)[0]
            except (e.E2EError, OSError):
                third = None
            s.close()
            s = raw_connect(srv.port, source="127.0.0.2")
            s.sendall(b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n")
            other = read_response(s)[0]
            s.close()
            return third, other

        third, other = await loop.run_in_executor(None, run)
        e.expect_eq(third, 429, "third pending connection from 127.0.0.1 on ::")
        e.expect_eq(other, 200, "127.0.0.2 on :: while 127.0.0.1 is at its cap")
    finally:
        for s in held:
            s.close()
        srv.stop()


async def case_exp():
    srv = e.start_server()
    try:
        token = e.mint(srv.secret, "noexp", ttl=None)
        ws = await e.connect(srv.ws_url(token))
        try:
            reason = await e.expect_close(ws, 1008, timeout=5.0, what="token without exp")
        finally:
            await e.close_all(ws)
        e.expect_eq(reason, "exp missing", "close reason")
        m = srv.metrics()
        e.expect(m.get('wsrouter_handshakes_total{result="token_expired"}', 0) >= 1,
                 "exp missing counted under token_expired")
    finally:
        srv.stop()
    srv = e.start_server(extra_args=["--require-exp", "0"])
    try:
        ws = await e.connect(srv.ws_url(e.mint(srv.secret, "noexp", ttl=None)))
        srv.publish(user="noexp", data="eternal")
        e.expect_eq(await e.recv(ws), "eternal", "token without exp, --require-exp 0")
        await ws.close()
    finally:
        srv.stop()


async def case_dev_and_secret():
    env = {k: v for k, v in os.environ.items()
           if not (k.startswith("WEBSOCKET_") or k.startswith("JWT_"))}
    srv = e.Server([e.binary(), "serve", "--dev", "--port", "0"], env, None, None, None)
    try:
        srv.wait_ready()
        loop = asyncio.get_running_loop()

        def reach(host_source):
            try:
                s = raw_connect(srv.port, source=None, host=host_source, timeout=2.0)
                s.close()
                return True
            except OSError:
                return False

        e.expect(await loop.run_in_executor(None, reach, "127.0.0.1"), "--dev on 127.0.0.1")
        e.expect(not await loop.run_in_executor(None, reach, "127.0.0.2"),
                 "--dev must bind 127.0.0.1 only (127.0.0.2 got in)")
    finally:
        srv.stop()
    r = e.run_cli(["serve", "--port", "0", "--bind", "127.0.0.1", "--jwt-secret", "x" * 31],
                  env=env)
    e.expect_eq(r.returncode, 2, "serve with a 31-byte HS256 secret")
    err = r.stderr.decode("utf-8", "replace")
    e.expect("32" in err, "message names the minimum: %r" % err[-300:])


async def body(suite):
    await suite.case("6 MiB publish with a wrong key: 401 from the headers", case_headers_first)
    await suite.case("HEAD has no body; keep-alive request cap", case_head_and_keepalive)
    await suite.case("--bind ::: dual stack, IPv4 counted per address", case_dual_stack)
    await suite.case("tokens without exp refused by default", case_exp)
    await suite.case("--dev binds 127.0.0.1; short HS256 secret exits 2", case_dev_and_secret)
    await suite.case("10,000 idle keep-alive connections from 127.0.0.1 vs 127.0.0.2",
                     case_attack, suite, timeout=90.0)


if __name__ == "__main__":
    if len(sys.argv) == 5 and sys.argv[1] == "--attacker":
        attacker(int(sys.argv[2]), int(sys.argv[3]), float(sys.argv[4]))
        sys.exit(0)
    e.main("e2e_edge", body)
