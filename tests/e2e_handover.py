#!/usr/bin/python3
"""e2e_handover — zero-disconnect upgrade (SIGUSR2).

A node with Redis holds HANDOVER_SESSIONS raw sessions (default 1,000, one
user each, asyncio sockets) and 40 wsrouter.v1 sessions (Python websockets
10.4 from Debian). A publisher sends per-user sequence numbers through Redis
(PUBLISH ws:USER) at a steady rate while the node is upgraded.

  1  upgrade: SIGUSR2 with a copy of the binary (one byte appended: another
     build id) → the old PID exits 0, a new PID serves the same port with a
     new build id and start time; no session sees a close or EOF; per user
     nothing is lost, doubled or reordered, including what was published
     during the handover (the new process subscribes every topic before
     the first session moves: ARCHITECTURE.md, "Zero-disconnect upgrade");
     a raw client frame half-sent before SIGUSR2 and completed after it is
     processed by the new process (its messages_in counter).
  2  rollback: WSROUTER_HANDOVER_REFUSE makes the new process refuse →
     the old process keeps every session, answers, counts the failure, and
     nothing published meanwhile is lost.
  3  rollback: the binary at the node's path exits at once → the same.
  4  the upgrade again with NATS as the backplane (publisher on
     world.updates.user.U): nothing lost, doubled or reordered either.
"""

import os
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import asyncio  # noqa: E402
import base64  # noqa: E402
import json  # noqa: E402
import shutil  # noqa: E402
import signal  # noqa: E402
import tempfile  # noqa: E402
import time  # noqa: E402

import wsr_e2e as e  # noqa: E402
from wsr_procs import NatsProc, RedisProc, start_node, stop_everything  # noqa: E402

try:
    import websockets  # noqa: E402
except ImportError:
    websockets = None

RAW = int(os.environ.get("HANDOVER_SESSIONS", "1000"))
V1 = 40
RATE = int(os.environ.get("HANDOVER_RATE", "1000"))   # messages per second, in all


async def resp_conn(port):
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    return reader, writer


def resp_encode(*args):
    out = b"*%d\r\n" % len(args)
    for a in args:
        a = a if isinstance(a, bytes) else str(a).encode()
        out += b"$%d\r\n%s\r\n" % (len(a), a)
    return out


class RawSession:
    """One raw-mode client: reads frames, keeps the sequence numbers."""

    def __init__(self, user):
        self.user = user
        self.seqs = []
        self.lat = []           # (publish time, delivery latency), monotonic s
        self.closed = None
        self.reader = self.writer = None
        self.task = None

    async def open(self, srv):
        token = srv.mint(self.user)
        self.reader, self.writer = await asyncio.open_connection("127.0.0.1", srv.port)
        key = base64.b64encode(os.urandom(16)).decode()
        self.writer.write(("GET /ws?token=%s HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\n"
                           "Connection: Upgrade\r\nSec-WebSocket-Key: %s\r\n"
                           "Sec-WebSocket-Version: 13\r\n\r\n" % (token, key)).encode())
        head = await asyncio.wait_for(self.reader.readuntil(b"\r\n\r\n"), 20)
        if b" 101 " not in head.split(b"\r\n")[0] + b" ":
            raise e.E2EError("raw %s: no 101: %r" % (self.user, head[:80]))
        self.task = asyncio.ensure_future(self._run())

    async def _run(self):
        try:
            while True:
                b0, b1 = await self.reader.readexactly(2)
                n = b1 & 0x7F
                if n == 126:
                    n = int.from_bytes(await self.reader.readexactly(2), "big")
                elif n == 127:
                    n = int.from_bytes(await self.reader.readexactly(8), "big")
                data = await self.reader.readexactly(n)
                op = b0 & 0x0F
                if op == 8:
                    self.closed = "close %d" % int.from_bytes(data[:2], "big")
                    return
                if op == 9:
                    self.send(0xA, data)
                elif op == 1:
                    parts = data.split(b":")
                    self.seqs.append(int(parts[1]))
                    self.lat.append((float(parts[2]), time.monotonic() - float(parts[2])))
        except (asyncio.IncompleteReadError, ConnectionError, OSError) as ex:
            self.closed = "EOF (%s)" % type(ex).__name__

    def send(self, opcode, payload, fin=True, cut=None):
        mask = os.urandom(4)
        frame = bytes([(0x80 if fin else 0) | opcode, 0x80 | len(payload)]) + mask + \
            bytes(b ^ mask[i % 4] for i, b in enumerate(payload))
        self.writer.write(frame if cut is None else frame[:cut])
        return frame

    def close(self):
        if self.task:
            self.task.cancel()
        if self.writer:
            self.writer.close()


class V1Session:
    def __init__(self, user):
        self.user = user
        self.seqs = []
        self.lat = []           # (publish time, delivery latency), monotonic s
        self.closed = None
        self.ws = None
        self.task = None

    async def open(self, srv):
        self.ws = await websockets.connect(srv.url + "?token=" + srv.mint(self.user),
                                           subprotocols=["wsrouter.v1"], max_queue=None,
                                           ping_interval=None, open_timeout=20)
        await self.ws.send(json.dumps({"type": "hello"}))
        welcome = json.loads(await asyncio.wait_for(self.ws.recv(), 10))
        e.expect(welcome.get("type") == "welcome", "v1 %s: %r" % (self.user, welcome))
        self.task = asyncio.ensure_future(self._run())

    async def _run(self):
        try:
            async for raw in self.ws:
                msg = json.loads(raw)
                if msg.get("type") == "pub":
                    data = msg["data"]
                    parts = data.split(":")
                    self.seqs.append(int(parts[1]))
                    self.lat.append((float(parts[2]), time.monotonic() - float(parts[2])))
        except websockets.ConnectionClosed as ex:
            self.closed = "close %s" % ex.code
            return
        self.closed = "close (end)"

    def close(self):
        if self.task:
            self.task.cancel()
        asyncio.ensure_future(self.ws.close())


class Publisher:
    """Per-user sequence numbers through Redis (or NATS) at a steady total rate."""

    def __init__(self, port, users, nats=False):
        self.port = port
        self.nats = nats
        self.users = users
        self.sent = {u: 0 for u in users}
        self.marks = {}
        self.stop = False
        self.task = None

    async def start(self):
        self.reader, self.writer = await resp_conn(self.port)
        if self.nats:
            await asyncio.wait_for(self.reader.readuntil(b"\r\n"), 5)      # INFO
            self.writer.write(b'CONNECT {"verbose":false,"pedantic":false}\r\n')
        self.task = asyncio.ensure_future(self._run())
        self.drain = asyncio.ensure_future(self._drain())

    async def _drain(self):
        try:
            while True:
                data = await self.reader.read(65536)
                if not data:
                    break
                if self.nats and b"PING" in data:
                    self.writer.write(b"PONG\r\n")
        except (ConnectionError, OSError):
            pass

    def mark(self, name):
        self.marks[name] = dict(self.sent)

    async def _run(self):
        i = 0
        period = 0.01
        per_tick = max(1, int(RATE * period))
        while not self.stop:
            t0 = time.monotonic()
            batch = b""
            for _ in range(per_tick):
                u = self.users[i % len(self.users)]
                i += 1
                self.sent[u] += 1
                data = b"%s:%d:%.6f" % (u.encode(), self.sent[u], time.monotonic())
                if self.nats:
                    batch += b"PUB world.updates.user.%s %d\r\n%s\r\n" % (u.encode(), len(data),
                                                                          data)
                else:
                    batch += resp_encode("PUBLISH", "ws:" + u, data)
            self.writer.write(batch)
            await self.writer.drain()
            await asyncio.sleep(max(0.0, period - (time.monotonic() - t0)))

    async def halt(self):
        self.stop = True
        await self.task
        self.writer.close()
        self.drain.cancel()


def healthz(port):
    res = e.http_request(port, "GET", "/healthz", timeout=3.0)
    fields = dict(line.split(" ", 1) for line in res.text().splitlines()[1:] if " " in line)
    return res.status, fields


def check_sessions(sessions, pub):
    """Every session open; per user every message published, once, in order."""
    closed = [s for s in sessions if s.closed]
    e.expect(not closed, "%d sessions closed, e.g. %s: %s"
             % (len(closed), closed[0].user if closed else "", closed[0].closed if closed else ""))
    lost = []
    doubled = []
    for s in sessions:
        seqs = s.seqs
        doubled += ["%s:%d" % (s.user, n) for n in sorted(set(seqs)) if seqs.count(n) > 1]
        e.expect(seqs == sorted(seqs), "%s: reordered: %s" % (s.user, seqs[-20:]))
        got = set(seqs)
        last = pub.sent[s.user]
        lost += ["%s:%d" % (s.user, n) for n in range(1, last + 1) if n not in got]
    e.expect(not doubled, "%d messages doubled, e.g. %s" % (len(doubled), doubled[:10]))
    e.expect(not lost, "%d messages lost, e.g. %s" % (len(lost), lost[:10]))


async def wait_received(sessions, pub, timeout=20.0):
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        if all(len(s.seqs) >= pub.sent[s.user] or s.closed for s in sessions):
            return
        await asyncio.sleep(0.1)


async def body(suite):
    e.require("redis-server")
    if websockets is None:
        e.skip_suite("python3-websockets is not installed")
    new_pids = []
    try:
        redis = RedisProc().start()
        await run(suite, "redis", ["--redis-url", redis.url], redis.port, new_pids)
        if shutil.which("nats-server"):
            nats = NatsProc().start()
            await run(suite, "nats", ["--nats-url", nats.url], nats.port, new_pids)
        else:
            print("nats-server not installed: the NATS run is skipped", flush=True)
    finally:
        for pid in new_pids:
            try:
                os.kill(pid, signal.SIGTERM)
            except (ProcessLookupError, PermissionError):
                pass
        for pid in new_pids:
            end = time.monotonic() + 5
            while time.monotonic() < end and os.path.exists("/proc/%d" % pid):
                time.sleep(0.05)
        stop_everything()


async def run(suite, kind, backplane_args, backplane_port, new_pids):
    """One node on this backplane: (Redis) the rollbacks, then the upgrade."""
    tmp = tempfile.mkdtemp(prefix="wsr-handover-")
    binary = os.path.join(tmp, "wsrouter")
    shutil.copy2(e.binary(), binary)
    everyone = []
    try:
        orig = e.binary
        e.binary = lambda: binary
        try:
            srv = start_node(workers=2, extra_args=backplane_args + ["--ping-interval", "0"])
        finally:
            e.binary = orig
        port = srv.port
        status, before = healthz(port)
        e.expect(status == 200 and "build" in before and "started" in before,
                 "/healthz: %r" % before)

        sessions = [RawSession("h%d" % i) for i in range(RAW)]
        for i in range(0, RAW, 100):
            await asyncio.gather(*(s.open(srv) for s in sessions[i:i + 100]))
        v1s = [V1Session("v%d" % i) for i in range(V1)]
        await asyncio.gather(*(s.open(srv) for s in v1s))
        everyone = sessions + v1s
        pub = Publisher(backplane_port, [s.user for s in everyone], nats=kind == "nats")
        await pub.start()
        await asyncio.sleep(1.0)

        async def rollback(env_refuse):
            """The new process fails: every session stays, nothing lost."""
            m0 = srv.metrics()
            srv.proc.send_signal(signal.SIGUSR2)
            end = time.monotonic() + 30
            while time.monotonic() < end:
                m = srv.metrics()
                if m.get("wsrouter_handover_failures_total", 0) > \
                        m0.get("wsrouter_handover_failures_total", 0):
                    break
                await asyncio.sleep(0.1)
            else:
                raise e.E2EError("no handover failure counted")
            e.expect(srv.proc.poll() is None, "old process exited after a failed upgrade")
            status, now = healthz(port)
            e.expect(now.get("pid") == str(srv.proc.pid), "another pid answers: %r" % now)
            await asyncio.sleep(1.0)
            await wait_received(everyone, pub)
            check_sessions(everyone, pub)

        async def refused():
            #  The child inherits the old process' environment: a refusing
            #  binary is a wrapper script at the node's path
            os.rename(binary, binary + ".real")
            with open(binary, "w") as f:
                f.write("#!/bin/sh\nWSROUTER_HANDOVER_REFUSE=1 exec %s.real \"$@\"\n" % binary)
            os.chmod(binary, 0o755)
            try:
                await rollback(True)
            finally:
                os.rename(binary + ".real", binary)
        if kind == "redis":
            await suite.case("rollback: new process refuses", refused, timeout=90)

        async def exits():
            os.rename(binary, binary + ".real")
            with open(binary, "w") as f:
                f.write("#!/bin/sh\nexit 3\n")
            os.chmod(binary, 0o755)
            try:
                await rollback(False)
            finally:
                os.rename(binary + ".real", binary)
        if kind == "redis":
            await suite.case("rollback: new binary exits at once", exits, timeout=90)

        async def upgrade():
            #  Another build: the same binary with one byte appended
            shutil.copy2(binary, binary + ".new")
            with open(binary + ".new", "ab") as f:
                f.write(b"\0")
            os.rename(binary + ".new", binary)
            half = sessions[0]
            frame = half.send(0x1, b"half-sent", cut=8)
            await asyncio.sleep(0.3)
            m0 = srv.metrics()
            pub.mark("usr2")
            t0 = time.monotonic()
            rss = {}

            async def sample():
                """RSS of the old process and of its child (the new one), peak."""
                old = srv.proc.pid
                while True:
                    pids = [old]
                    try:
                        with open("/proc/%d/task/%d/children" % (old, old)) as f:
                            pids += [int(p) for p in f.read().split()]
                    except OSError:
                        pass
                    for pid in pids:
                        try:
                            with open("/proc/%d/status" % pid) as f:
                                kb = int([x for x in f if x.startswith("VmRSS")][0].split()[1])
                            key = "old" if pid == old else "new"
                            rss[key] = max(rss.get(key, 0), kb)
                        except (OSError, IndexError):
                            pass
                    await asyncio.sleep(0.02)
            sampler = asyncio.ensure_future(sample())
            srv.proc.send_signal(signal.SIGUSR2)
            try:
                code = await asyncio.get_event_loop().run_in_executor(
                    None, srv.proc.wait, 60)
            except Exception:
                raise e.E2EError("old process still running 60 s after SIGUSR2:\n%s"
                                 % srv.stderr_text()[-3000:])
            took = time.monotonic() - t0
            t_done = time.monotonic()
            pub.mark("done")
            sampler.cancel()
            e.expect(code == 0, "old process exit status %s:\n%s"
                     % (code, srv.stderr_text()[-3000:]))
            status, after = healthz(port)
            new_pids.append(int(after.get("pid", "0")))
            e.expect(after.get("pid") != str(srv.proc.pid), "same pid answers: %r" % after)
            e.expect(after.get("build") != before.get("build"),
                     "build id unchanged: %r" % after)
            e.expect(int(after["started"]) > int(before["started"]), "start time unchanged")
            #  The rest of the half-sent frame: the new process processes it
            in0 = m0.get("wsrouter_messages_in_total", 0)
            half.writer.write(frame[8:])
            end = time.monotonic() + 10
            while time.monotonic() < end:
                m = e.parse_metrics(e.http_request(port, "GET", "/metrics").text())
                if m.get("wsrouter_messages_in_total", 0) >= 1:
                    break
                await asyncio.sleep(0.1)
            e.expect(m.get("wsrouter_messages_in_total", 0) >= 1,
                     "the completed frame was not processed (new process messages_in %r, "
                     "old %r)" % (m.get("wsrouter_messages_in_total"), in0))
            await asyncio.sleep(1.5)
            await pub.halt()
            await wait_received(everyone, pub)
            m = e.parse_metrics(e.http_request(port, "GET", "/metrics").text())
            window = sum(pub.marks["done"][u] - pub.marks["usr2"][u] for u in pub.sent)
            print("handover (%s): %d sessions in %.2f s; %d messages published during it; "
                  "%d from the new workers' rings; ring drops %d, gaps %d; connections "
                  "open in the new process: %s"
                  % (kind, len(everyone), took, window,
                     m.get("wsrouter_handover_replayed_total", 0),
                     m.get("wsrouter_handover_ring_dropped_total", 0),
                     m.get("wsrouter_handover_gaps_total", 0),
                     m.get("wsrouter_connections_open")), flush=True)
            def pct(values, q):
                values = sorted(values)
                return values[min(len(values) - 1, int(q * len(values)))] * 1000 if values \
                    else float("nan")
            lat_before = [lat for s in everyone for ts, lat in s.lat if ts < t0]
            during = [lat for s in everyone for ts, lat in s.lat if t0 <= ts <= t_done]
            print("latency (%s): before p50 %.1f p99 %.1f ms; published during the handover "
                  "p50 %.1f p99 %.1f max %.1f ms (n=%d); peak RSS old %s MiB, new %s MiB"
                  % (kind, pct(lat_before, 0.5), pct(lat_before, 0.99), pct(during, 0.5),
                     pct(during, 0.99), pct(during, 1.0), len(during),
                     "%.0f" % (rss["old"] / 1024) if "old" in rss else "?",
                     "%.0f" % (rss["new"] / 1024) if "new" in rss else "?"), flush=True)
            check_sessions(everyone, pub)
            e.expect(m.get("wsrouter_handover_gaps_total", 0) == 0, "ring gaps counted")
        await suite.case("upgrade (%s): sessions survive, new pid and build, nothing lost, "
                         "doubled or reordered" % kind, upgrade, timeout=180)
    finally:
        for s in everyone:
            s.close()
        shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    e.main("e2e_handover", body)
