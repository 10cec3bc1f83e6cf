#!/usr/bin/python3
"""e2e_security — node ⇄ bridge links and session lifetime, end to end on loopback.

Real processes (redis-server, `wsrouter bridge`, `wsrouter serve` nodes) on
free 127.0.0.1 ports, stopped by PID; clients are Python websockets; Redis is
spoken with raw RESP.

Cases:
  1  CURVE: a node whose certificate is in the bridge's clients directory
     delivers; a node with a certificate the bridge does not know gets
     nothing (not ready, no delivery, no Redis subscription) and is counted
     in wsrouter_bridge_peers_denied_total; after its certificate is copied
     in and the bridge gets SIGHUP, it connects and delivers.
  2  Plaintext on a non-loopback address: a bridge (tcp://0.0.0.0) and a node
     (--bridge tcp://10.255.255.1:…) without keys refuse to start with a clear
     message; with --insecure-plaintext the bridge starts.
  3  A stalled node (SIGSTOP) never blocks delivery to the others: node B's
     p99 latency stays within 2× of its own p99 before the stall, nothing of
     B's is lost or reordered, the bridge counts what it dropped for A; after
     SIGCONT, A's sessions receive again (the bridge had forgotten A: RESYNC).
  4  Token lifetime: a session is closed with 1008 "token expired" at its
     token's exp (plus the leeway, 1 s here), not before.
"""

import os
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import asyncio  # noqa: E402
import shutil  # noqa: E402
import signal  # noqa: E402
import socket  # noqa: E402
import subprocess  # noqa: E402
import tempfile  # noqa: E402
import threading  # noqa: E402
import time  # noqa: E402

import websockets  # noqa: E402

import wsr_e2e as e  # noqa: E402
from wsr_procs import (_STARTED, stop_everything, RedisProc, BridgeProc,  # noqa: E402
                       REDIS_SERVER)

SUITE_LIMIT_S = 240.0


def keygen(path):
    r = e.run_cli(["keygen", "--curve", "--out", path])
    if r.returncode != 0:
        raise e.E2EError("wsrouter keygen --curve failed: %s %s" % (r.stdout, r.stderr))


def resp(port, *args, timeout=2.0):
    """One Redis command over a fresh connection; returns the raw reply bytes."""
    with socket.create_connection(("127.0.0.1", port), timeout=timeout) as s:
        out = b"*%d\r\n" % len(args)
        for a in args:
            a = a if isinstance(a, bytes) else str(a).encode()
            out += b"$%d\r\n%s\r\n" % (len(a), a)
        s.sendall(out)
        buf = b""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            buf += s.recv(65536)
            if buf.endswith(b"\r\n"):
                return buf
        return buf


def redis_channels(port, pattern):
    reply = resp(port, "PUBSUB", "CHANNELS", pattern)
    return [l for l in reply.split(b"\r\n")[1:] if l and not l.startswith(b"$")]


def start_node(bridge_endpoint, extra=(), env=None):
    srv = e.start_server(extra_args=["--bridge", bridge_endpoint, "--workers", "2"] + list(extra),
                         env=env)
    _STARTED.append(srv)
    return srv


def readyz(srv):
    try:
        return srv.http("GET", "/readyz", timeout=1.0).status
    except Exception:
        return None


async def wait_for(fn, timeout, what):
    t0 = time.monotonic()
    while time.monotonic() - t0 < timeout:
        if fn():
            return time.monotonic() - t0
        await asyncio.sleep(0.05)
    raise e.E2EError("%s: not within %.1f s" % (what, timeout))


async def receive_one(ws, timeout):
    try:
        return await asyncio.wait_for(ws.recv(), timeout)
    except asyncio.TimeoutError:
        return None


# --------------------------------------------------------------------------
#  1  CURVE admission

async def case_curve(suite, redis, tmp):
    keys = os.path.join(tmp, "keys")
    clients = os.path.join(tmp, "clients")
    os.makedirs(keys)
    os.makedirs(clients)
    for name in ("bridge", "known", "stranger"):
        keygen(os.path.join(keys, name))
    shutil.copy(os.path.join(keys, "known"), clients)
    bridge = BridgeProc(e.free_port(), redis_url=redis.url, extra_args=[
        "--cert", os.path.join(keys, "bridge_secret"), "--clients", clients]).start()
    known = start_node(bridge.endpoint, ["--cert", os.path.join(keys, "known_secret"),
                                         "--bridge-key", os.path.join(keys, "bridge")])
    stranger = start_node(bridge.endpoint, ["--cert", os.path.join(keys, "stranger_secret"),
                                            "--bridge-key", os.path.join(keys, "bridge")])
    await wait_for(lambda: readyz(known) == 200, 10, "keyed node ready")
    ws_k = await e.connect(known.ws_url(known.mint("ka")))
    ws_s = await e.connect(stranger.ws_url(stranger.mint("sa")))
    got = None
    for _ in range(40):
        resp(redis.port, "PUBLISH", "ws:ka", "to-ka")
        got = await receive_one(ws_k, 0.1)
        if got:
            break
    e.expect_eq(got, "to-ka", "keyed node's session receives")
    for _ in range(5):
        resp(redis.port, "PUBLISH", "ws:sa", "to-sa")
    e.expect(await receive_one(ws_s, 1.0) is None, "the unknown node's session received")
    e.expect(readyz(stranger) == 503, "the unknown node is ready (%s)" % readyz(stranger))
    e.expect(redis_channels(redis.port, "ws:sa") == [],
             "the unknown node's subscription reached Redis")
    denied = bridge.metrics().get("wsrouter_bridge_peers_denied_total", 0)
    e.expect(denied >= 1, "peers_denied_total is %s" % denied)
    out = bridge.output()
    e.expect(out.count("denied") <= 2, "denials logged more than once per address:\n%s"
             % out[-2000:])
    #  Added to the directory without a restart
    shutil.copy(os.path.join(keys, "stranger"), clients)
    os.kill(bridge.proc.pid, signal.SIGHUP)
    took = await wait_for(lambda: readyz(stranger) == 200, 12, "the added node ready")
    got = None
    for _ in range(40):
        resp(redis.port, "PUBLISH", "ws:sa", "now-sa")
        got = await receive_one(ws_s, 0.1)
        if got:
            break
    e.expect_eq(got, "now-sa", "the added node's session receives")
    await ws_k.close()
    await ws_s.close()
    known.stop()
    stranger.stop()
    bridge.stop()
    suite.ok("1 CURVE: known node delivers, unknown one gets nothing (denied %d), "
             "admitted %.1f s after SIGHUP" % (denied, took))


# --------------------------------------------------------------------------
#  2  Plaintext refused off loopback

async def case_plaintext(suite):
    port = e.free_port()
    r = e.run_cli(["bridge", "--endpoint", "tcp://0.0.0.0:%d" % port], timeout=10)
    out = (r.stdout + r.stderr).decode("utf-8", "replace")
    e.expect(r.returncode != 0 and "refusing plaintext" in out,
             "keyless bridge on 0.0.0.0: exit %d: %s" % (r.returncode, out[-500:]))
    r = e.run_cli(["serve", "--port", "0", "--bind", "127.0.0.1", "--jwt-secret", "x" * 32,
                   "--bridge", "tcp://10.255.255.1:%d" % port], timeout=10)
    out2 = (r.stdout + r.stderr).decode("utf-8", "replace")
    e.expect(r.returncode != 0 and "refusing plaintext" in out2,
             "keyless node to 10.255.255.1: exit %d: %s" % (r.returncode, out2[-500:]))
    bridge = BridgeProc(port, bind="0.0.0.0", extra_args=["--insecure-plaintext"]).start()
    bridge.stop()
    suite.ok("2 plaintext off loopback refused by bridge and node; --insecure-plaintext "
             "starts")


# --------------------------------------------------------------------------
#  3  A stalled node

class Publisher(threading.Thread):
    """Publishes to ws:{user} round-robin at a fixed rate over one pipelined
    RESP connection; payload "user|seq|t_ns|padding"."""

    def __init__(self, port, users, rate, pad):
        super().__init__(daemon=True)
        self.sock = socket.create_connection(("127.0.0.1", port))
        self.users = users
        self.rate = rate
        self.pad = pad              # user → padding bytes
        self.stop_at = None
        self.running = True
        self.seq = {u: 0 for u in users}
        self.sent = 0

    def run(self):
        drain = threading.Thread(target=self._drain, daemon=True)
        drain.start()
        t0 = time.monotonic()
        i = 0
        while self.running:
            due = t0 + i / self.rate
            now = time.monotonic()
            if due > now:
                time.sleep(min(due - now, 0.01))
                continue
            u = self.users[i % len(self.users)]
            self.seq[u] += 1
            data = b"%s|%d|%d|" % (u.encode(), self.seq[u], time.monotonic_ns()) + \
                b"x" * self.pad.get(u, 0)
            cmd = b"*3\r\n$7\r\nPUBLISH\r\n$%d\r\nws:%s\r\n$%d\r\n%s\r\n" % (
                len(u) + 3, u.encode(), len(data), data)
            self.sock.sendall(cmd)
            self.sent += 1
            i += 1

    def _drain(self):
        try:
            while self.sock.recv(65536):
                pass
        except OSError:
            pass

    def stop(self):
        self.running = False
        self.join(5)
        self.sock.close()


class Receiver:
    """One session; records (seq, latency ms) per message."""

    def __init__(self, ws, user):
        self.ws = ws
        self.user = user
        self.got = []               # (receive monotonic ns, seq, latency ms)
        self.task = asyncio.ensure_future(self._run())

    async def _run(self):
        try:
            async for m in self.ws:
                now = time.monotonic_ns()
                b = m.encode() if isinstance(m, str) else m
                parts = b.split(b"|", 3)
                if len(parts) >= 3 and parts[0] == self.user.encode():
                    self.got.append((now, int(parts[1]), (now - int(parts[2])) / 1e6))
        except websockets.ConnectionClosed:
            pass


def p99(values):
    values = sorted(values)
    return values[int(len(values) * 0.99)] if values else None


async def case_stalled(suite, redis):
    bridge = BridgeProc(e.free_port(), redis_url=redis.url,
                        extra_args=["--peer-queue", "100"]).start()
    node_a = start_node(bridge.endpoint)
    node_b = start_node(bridge.endpoint)
    await wait_for(lambda: readyz(node_a) == 200 and readyz(node_b) == 200, 10, "nodes ready")
    a_users = ["sa%d" % i for i in range(10)]
    b_users = ["sb%d" % i for i in range(10)]
    recv = {}
    for srv, users in ((node_a, a_users), (node_b, b_users)):
        for u in users:
            ws = await e.connect(srv.ws_url(srv.mint(u)))
            recv[u] = Receiver(ws, u)
    await wait_for(lambda: len(redis_channels(redis.port, "ws:s*")) == 20, 10,
                   "20 Redis subscriptions")
    #  A's users get 16 KiB messages (so a stalled A fills its buffers and
    #  the bridge's queue for it quickly), B's small ones; 1,000 msg/s
    pad = {u: 16384 for u in a_users}
    pub = Publisher(redis.port, a_users + b_users, 1000, pad)
    pub.start()
    await asyncio.sleep(3.0)
    t_stop = time.monotonic_ns()
    drops0 = bridge.metrics().get("wsrouter_bridge_deliver_drops_total", 0)
    node_a.signal(signal.SIGSTOP)
    await asyncio.sleep(5.0)
    t_cont = time.monotonic_ns()
    node_a.signal(signal.SIGCONT)
    drops1 = bridge.metrics().get("wsrouter_bridge_deliver_drops_total", 0)
    await asyncio.sleep(3.0)
    pub.stop()
    await asyncio.sleep(1.0)
    before, during = [], []
    lost, disorder = 0, 0
    for u in b_users:
        seqs = [s for _, s, _ in recv[u].got]
        lost += pub.seq[u] - len(set(seqs))
        disorder += sum(1 for x, y in zip(seqs, seqs[1:]) if y <= x)
        for t, _, lat in recv[u].got:
            if t < t_stop:
                before.append(lat)
            elif t < t_cont:
                during.append(lat)
    p_before, p_during = p99(before), p99(during)
    e.expect(before and during, "node B received nothing in a phase")
    e.expect_eq(lost, 0, "messages of node B's users lost")
    e.expect_eq(disorder, 0, "messages of node B's users out of order")
    e.expect(drops1 > drops0, "the bridge dropped nothing for the stalled node (%s → %s)"
             % (drops0, drops1))
    e.expect(p_during <= 2 * max(p_before, 1.0),
             "node B's p99 %.2f ms during A's stall, %.2f ms before (over 2×)"
             % (p_during, p_before))
    #  A is back: the bridge forgot it during the stall; it resyncs and its
    #  sessions receive again
    t0 = time.monotonic()
    resumed = False
    while time.monotonic() - t0 < 8 and not resumed:
        marker = len(recv["sa0"].got)
        resp(redis.port, "PUBLISH", "ws:sa0", "sa0|999999|%d|" % time.monotonic_ns())
        await asyncio.sleep(0.2)
        resumed = any(s == 999999 for _, s, _ in recv["sa0"].got[marker:])
    e.expect(resumed, "node A's session receives again after SIGCONT")
    for r in recv.values():
        await r.ws.close()
    node_a.stop()
    node_b.stop()
    bridge.stop()
    suite.ok("3 stalled node: B p99 %.2f ms before, %.2f ms during A's SIGSTOP (%d and %d "
             "messages); B lost 0, reordered 0; bridge dropped %d for A; A receives again "
             "%.1f s after SIGCONT" % (p_before, p_during, len(before), len(during),
                                       drops1 - drops0, time.monotonic() - t0))


# --------------------------------------------------------------------------
#  4  Token lifetime

async def case_expiry(suite):
    srv = e.start_server(env={"WEBSOCKET_JWT_LEEWAY": "1"})
    _STARTED.append(srv)
    exp = int(time.time()) + 2
    token = e.mint(srv.secret, "tu", extra={"exp": exp})
    ws = await e.connect(srv.ws_url(token))
    try:
        await asyncio.wait_for(ws.recv(), 10)
        raise e.E2EError("a message instead of the close")
    except websockets.ConnectionClosed as ex:
        closed_at = time.time()
        code, reason = ex.rcvd.code if ex.rcvd else None, ex.rcvd.reason if ex.rcvd else None
    e.expect_eq(code, 1008, "close code")
    e.expect_eq(reason, "token expired", "close reason")
    e.expect(closed_at >= exp, "closed %.2f s before exp" % (exp - closed_at))
    e.expect(closed_at <= exp + 1 + 1.5, "closed %.2f s after exp (leeway 1 s)"
             % (closed_at - exp))
    m = srv.metrics()
    e.expect_eq(m.get("wsrouter_token_expired_total"), 1, "token_expired_total")
    srv.stop()
    suite.ok("4 token lifetime: closed 1008 'token expired' %.2f s after exp" % (closed_at - exp))


async def body(suite):
    if not os.access(REDIS_SERVER, os.X_OK):
        print("SKIP: redis-server is not installed (scripts/deps test installs it)")
        sys.exit(77)
    tmp = tempfile.mkdtemp(prefix="wsr-e2e-security-")
    redis = RedisProc().start()
    try:
        for name, fn, args in (("1 CURVE", case_curve, (suite, redis, tmp)),
                               ("2 plaintext", case_plaintext, (suite,)),
                               ("3 stalled node", case_stalled, (suite, redis)),
                               ("4 token lifetime", case_expiry, (suite,))):
            try:
                await asyncio.wait_for(fn(*args), 90)
            except asyncio.TimeoutError:
                suite.fail(name, "timed out")
            except e.E2EError as ex:
                suite.fail(name, str(ex))
    finally:
        stop_everything()
        shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    signal.alarm(int(SUITE_LIMIT_S))
    e.main("e2e_security", body)
