#!/usr/bin/python3
"""e2e_reliable — nothing lost across reconnects: wsrouter.v1, history and
recovery (Redis Streams, NATS JetStream), lifecycle events, presence, refresh.

Real processes (redis-server, nats-server -js, `wsrouter serve` nodes) on
free 127.0.0.1 ports, stopped by PID. Clients are Python websockets 10.4
(Debian) offering the `wsrouter.v1` subprotocol, or raw mode; Redis is
spoken with raw RESP, NATS with its text protocol. Nothing here uses the
server's code.

Cases:
  1  v1 negotiation: the 101 names wsrouter.v1; hello → welcome with the
     session, node, expiry and each topic's position; a raw client of the
     same user gets the bare payload of the same publication.
  2  Recovery (Redis): a client disconnects, 500 publications are made, it
     reconnects with its position: recovered:true, exactly the 500 missed in
     order, then live ones with no gap and no duplicate, while a publisher
     races the reconnect.
  3  Recovery (NATS JetStream): the same with plain NATS publications
     (offset = stream sequence).
  4  Redis restarted without persistence: recovered:false and a new epoch.
  5  Lifecycle events on ws:events:{user}: connect, then disconnect with the
     client's code, channels and a duration; a node killed with -9: its
     sessions' disconnects (1006) are published by another node's bridge
     within 5 s.
  6  Presence: GET /api/presence?user= lists the user's sessions on both
     nodes; ?channel= counts members; after kill -9 of a node its sessions
     leave the answer within 2 s (plus 0.5 s scheduling slack on this box);
     the API key is required.
  7  refresh: a token refreshed before its exp keeps the session past it;
     without refresh the session ends with 1008 "token expired"; a refresh
     for another sub, or a bad token, ends it with 1008.
  8  Malformed v1 input: not JSON, unknown type, binary frames, a second
     hello get {"type":"error"} and the session goes on; no hello within the
     hello timeout gets 1008.
"""

import os
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import asyncio  # noqa: E402
import json  # noqa: E402
import signal  # noqa: E402
import socket  # noqa: E402
import tempfile  # noqa: E402
import threading  # noqa: E402
import time  # noqa: E402

import websockets  # noqa: E402

import wsr_e2e as e  # noqa: E402
from wsr_procs import (stop_everything, start_node, RedisProc, NatsProc,  # noqa: E402
                       REDIS_SERVER, NATS_SERVER)

V1 = "wsrouter.v1"
SUITE_LIMIT_S = 300.0


class NatsJsProc(NatsProc):
    """nats-server with JetStream in a temporary store."""

    def __init__(self, port=None):
        super().__init__(port)
        self.store = tempfile.mkdtemp(prefix="e2e-nats-js-")

    def argv(self):
        return super().argv() + ["-js", "-sd", self.store]


# --------------------------------------------------------------------------
#  Backplane clients of our own (RESP, NATS text protocol)

def resp_encode(*args):
    out = b"*%d\r\n" % len(args)
    for a in args:
        a = a if isinstance(a, bytes) else str(a).encode()
        out += b"$%d\r\n%s\r\n" % (len(a), a)
    return out


async def resp_read(reader):
    line = await reader.readline()
    if not line:
        raise e.E2EError("Redis closed the connection")
    kind, rest = line[:1], line[1:-2]
    if kind in (b"+", b"-", b":"):
        return rest.decode() if kind != b":" else int(rest)
    if kind == b"$":
        n = int(rest)
        if n < 0:
            return None
        data = await reader.readexactly(n + 2)
        return data[:-2]
    if kind == b"*":
        return [await resp_read(reader) for _ in range(int(rest))]
    raise e.E2EError("bad RESP line %r" % line)


class EventWatcher:
    """PSUBSCRIBE to the events channels; collects decoded events."""

    def __init__(self, port, pattern="ws:events:*"):
        self.port = port
        self.pattern = pattern
        self.events = []
        self.task = None

    async def start(self):
        self.reader, self.writer = await asyncio.open_connection("127.0.0.1", self.port)
        self.writer.write(resp_encode("PSUBSCRIBE", self.pattern))
        await self.writer.drain()
        reply = await asyncio.wait_for(resp_read(self.reader), 5)
        e.expect(reply[0] == b"psubscribe", "PSUBSCRIBE answered %r" % (reply,))
        self.task = asyncio.ensure_future(self._run())
        return self

    async def _run(self):
        while True:
            msg = await resp_read(self.reader)
            if msg[0] == b"pmessage":
                self.events.append((msg[2].decode(), json.loads(msg[3]), time.monotonic()))

    def of(self, user, kind=None, session=None):
        return [ev for ch, ev, _ in self.events
                if ev.get("user") == user and (kind is None or ev.get("type") == kind)
                and (session is None or ev.get("session") == session)]

    async def stop(self):
        if self.task:
            self.task.cancel()
        self.writer.close()


def redis_cmd(port, *args, timeout=3.0):
    with socket.create_connection(("127.0.0.1", port), timeout=timeout) as s:
        s.sendall(resp_encode(*args))
        data = b""
        while not data.endswith(b"\r\n"):
            chunk = s.recv(65536)
            if not chunk:
                break
            data += chunk
        return data


def nats_publish(port, subject, payloads):
    """Plain NATS publications over one connection, flushed with PING/PONG."""
    with socket.create_connection(("127.0.0.1", port), timeout=5) as s:
        f = s.makefile("rb")
        f.readline()                                    # INFO
        s.sendall(b'CONNECT {"verbose":false,"pedantic":false}\r\n')
        out = b"".join(b"PUB %s %d\r\n%s\r\n" % (subject.encode(), len(p), p)
                       for p in payloads)
        s.sendall(out + b"PING\r\n")
        line = f.readline()
        while line and not line.startswith(b"PONG"):
            if line.startswith(b"-ERR"):
                raise e.E2EError("NATS: %r" % line)
            line = f.readline()


# --------------------------------------------------------------------------
#  v1 client helpers

async def v1_connect(srv, user, ttl=3600, channels=None, token=None):
    token = token or srv.mint(user, ttl=ttl, channels=channels)
    ws = await e.connect(srv.ws_url(token), subprotocols=[V1])
    e.expect_eq(ws.subprotocol, V1, "negotiated subprotocol")
    return ws


async def v1_recv(ws, timeout=10.0, what="v1 message"):
    raw = await e.recv(ws, timeout=timeout, what=what)
    e.expect(isinstance(raw, str), "v1 frames are text, got %r" % (raw,))
    return json.loads(raw)


async def v1_hello(ws, recover=None):
    msg = {"type": "hello"}
    if recover:
        msg["recover"] = recover
    await ws.send(json.dumps(msg))
    welcome = await v1_recv(ws, what="welcome")
    e.expect_eq(welcome.get("type"), "welcome", "first server message type")
    return welcome


async def collect_pubs(ws, n, timeout=20.0, what="publications"):
    out = []
    deadline = time.monotonic() + timeout
    while len(out) < n:
        left = deadline - time.monotonic()
        if left <= 0:
            raise e.E2EError("%s: got %d of %d" % (what, len(out), n))
        msg = await v1_recv(ws, timeout=left, what=what)
        if msg.get("type") == "pub":
            out.append(msg)
    return out


def check_contiguous(pubs, first_offset, what):
    offsets = [p.get("offset") for p in pubs]
    want = list(range(first_offset, first_offset + len(pubs)))
    if offsets != want:
        bad = next(i for i, (a, b) in enumerate(zip(offsets, want)) if a != b)
        raise e.E2EError("%s: offsets not contiguous from %d: at %d got %r (around %r)"
                         % (what, first_offset, bad, offsets[bad], offsets[max(0, bad - 2):bad + 3]))


async def must_until(pred, timeout, what):
    value = await e.wait_until(pred, timeout)
    if not value:
        raise e.E2EError("%s: not within %.1f s" % (what, timeout))
    return value


def leeway_args():
    """--jwt-leeway 0 where the binary has it (tokens end at exp exactly)."""
    r = e.run_cli(["serve", "--help"])
    out = r.stdout + r.stderr
    out = out.decode() if isinstance(out, bytes) else out
    return ["--jwt-leeway", "0"] if "--jwt-leeway" in out else []


# --------------------------------------------------------------------------
#  Cases

async def case_negotiation(suite, redis):
    srv = start_node(extra_args=["--redis-url", redis.url, "--history-size", "1000"])
    try:
        ws = await v1_connect(srv, "neg1", channels=["lobby"])
        raw = await e.connect(srv.ws_url(srv.mint("neg1")))
        e.expect(raw.subprotocol is None, "raw client: no subprotocol, got %r" % raw.subprotocol)
        welcome = await v1_hello(ws)
        e.expect(welcome.get("session") and isinstance(welcome["session"], str),
                 "welcome.session is a string: %r" % welcome)
        e.expect(welcome.get("node"), "welcome.node: %r" % welcome)
        e.expect(isinstance(welcome.get("expires"), int), "welcome.expires: %r" % welcome)
        topics = welcome.get("topics", {})
        e.expect("user:neg1" in topics and "channel:lobby" in topics,
                 "welcome.topics has user:neg1 and channel:lobby: %r" % topics)
        await e.settle(srv, 2)
        srv.publish(user="neg1", data="hello")
        pub = (await collect_pubs(ws, 1))[0]
        e.expect_eq((pub["topic"], pub["data"]), ("user:neg1", "hello"), "v1 pub")
        e.expect(isinstance(pub.get("offset"), int) and pub.get("epoch"),
                 "an API publication has offset and epoch: %r" % pub)
        got = await e.recv(raw, what="raw payload")
        e.expect_eq(got, "hello", "raw client's frame (bare payload)")
        srv.publish(user="neg1", data_base64="AP8=")
        pub = (await collect_pubs(ws, 1))[0]
        e.expect_eq(pub.get("data_base64"), "AP8=", "binary payload as data_base64")
        await e.close_all(ws, raw)
    finally:
        srv.stop()


async def case_recover_redis(suite, redis):
    srv = start_node(extra_args=["--redis-url", redis.url, "--history-size", "2000"])
    try:
        user = "rec1"
        ws = await v1_connect(srv, user)
        await v1_hello(ws)
        await e.settle(srv, 1)
        for i in range(3):
            srv.publish(user=user, data="before-%d" % i)
        pubs = await collect_pubs(ws, 3)
        epoch, last = pubs[-1]["epoch"], pubs[-1]["offset"]
        await ws.close()
        pub = e.Publisher(srv.port, srv.api_key)
        for i in range(500):
            pub.post({"user": user, "data": "missed-%d" % i})
        #  A publisher racing the reconnect: its messages land before, during
        #  and after the history read
        stop = threading.Event()
        raced = []

        def racer():
            p = e.Publisher(srv.port, srv.api_key)
            i = 0
            while not stop.is_set() and i < 400:
                p.post({"user": user, "data": "race-%d" % i})
                raced.append(i)
                i += 1
                time.sleep(0.002)
            p.close()
        t = threading.Thread(target=racer)
        t.start()
        await asyncio.sleep(0.05)
        ws = await v1_connect(srv, user)
        welcome = await v1_hello(ws, {"user:%s" % user: {"epoch": epoch, "offset": last}})
        await asyncio.sleep(0.3)
        stop.set()
        t.join(10)
        pub.post({"user": user, "data": "live-end"})
        topic = welcome["topics"].get("user:%s" % user, {})
        e.expect(topic.get("recovered") is True, "recovered:true expected: %r" % topic)
        e.expect_eq(topic.get("epoch"), epoch, "epoch kept")
        total = 500 + len(raced) + 1
        got = await collect_pubs(ws, total, timeout=30)
        check_contiguous(got, last + 1, "recovered + live")
        data = [p["data"] for p in got]
        e.expect_eq(data[:500], ["missed-%d" % i for i in range(500)], "the 500 missed, in order")
        e.expect_eq(data[500:-1], ["race-%d" % i for i in raced], "the raced ones, in order")
        e.expect_eq(data[-1], "live-end", "then live")
        await e.expect_silence(ws, 0.3, "after the last publication (no duplicate)")
        pub.close()
        await ws.close()
        suite.ok("2 recovery (Redis): 500 missed + %d raced + live, contiguous, no dup"
                 % len(raced))
    finally:
        srv.stop()


async def case_recover_nats(suite, nats):
    srv = start_node(extra_args=["--nats-url", nats.url, "--nats-history-stream", "WSRTEST",
                                 "--history-size", "2000"])
    try:
        user = "nrec1"
        subject = "world.updates.user.%s" % user
        ws = await v1_connect(srv, user)
        await v1_hello(ws)
        await e.settle(srv, 1)
        nats_publish(nats.port, subject, [b"before-0", b"before-1"])
        pubs = await collect_pubs(ws, 2)
        e.expect(all(isinstance(p.get("offset"), int) for p in pubs),
                 "JetStream publications carry offsets: %r" % pubs)
        epoch, last = pubs[-1]["epoch"], pubs[-1]["offset"]
        await ws.close()
        nats_publish(nats.port, subject, [b"missed-%d" % i for i in range(500)])
        ws = await v1_connect(srv, user)
        welcome = await v1_hello(ws, {"user:%s" % user: {"epoch": epoch, "offset": last}})
        topic = welcome["topics"].get("user:%s" % user, {})
        e.expect(topic.get("recovered") is True, "recovered:true expected: %r" % topic)
        nats_publish(nats.port, subject, [b"live-0"])
        got = await collect_pubs(ws, 501, timeout=30)
        check_contiguous(got, last + 1, "JetStream recovered + live")
        e.expect_eq([p["data"] for p in got[:500]], ["missed-%d" % i for i in range(500)],
                    "the 500 missed, in order")
        e.expect_eq(got[-1]["data"], "live-0", "then live")
        await e.expect_silence(ws, 0.3, "after the last publication (no duplicate)")
        await ws.close()
    finally:
        srv.stop()


async def case_redis_restart(suite):
    redis = RedisProc().start()
    srv = start_node(extra_args=["--redis-url", redis.url, "--history-size", "100"])
    try:
        user = "rr1"
        ws = await v1_connect(srv, user)
        await v1_hello(ws)
        await e.settle(srv, 1)
        srv.publish(user=user, data="a")
        pub = (await collect_pubs(ws, 1))[0]
        await ws.close()
        redis.stop()
        redis.start()                   # no persistence: the history is gone
        await must_until(lambda: srv.http("GET", "/readyz", timeout=1).status == 200, 10,
                         "node ready after the Redis restart")
        await asyncio.sleep(0.5)
        srv.publish(user=user, data="b")
        ws = await v1_connect(srv, user)
        welcome = await v1_hello(ws, {"user:%s" % user: {"epoch": pub["epoch"],
                                                         "offset": pub["offset"]}})
        topic = welcome["topics"].get("user:%s" % user, {})
        e.expect(topic.get("recovered") is False, "recovered:false expected: %r" % topic)
        e.expect(topic.get("epoch") and topic.get("epoch") != pub["epoch"],
                 "a new epoch after the restart: old %r, now %r" % (pub["epoch"], topic))
        await ws.close()
    finally:
        srv.stop()
        redis.stop()


async def case_events(suite, redis):
    a = start_node(extra_args=["--redis-url", redis.url, "--node-id", "ev-a"])
    b = start_node(extra_args=["--redis-url", redis.url, "--node-id", "ev-b"])
    watch = await EventWatcher(redis.port).start()
    try:
        ws = await e.connect(a.ws_url(a.mint("ev1", channels=["lobby", "room.7"])))
        await must_until(lambda: watch.of("ev1", "connect"), 5, "connect event of ev1")
        connect = watch.of("ev1", "connect")[0]
        e.expect_eq((connect["node"], sorted(connect["channels"])), ("ev-a", ["lobby", "room.7"]),
                    "connect event node and channels")
        e.expect(connect.get("session") and connect.get("since"), "connect event: %r" % connect)
        await asyncio.sleep(0.2)
        await ws.close(code=4001, reason="bye")
        await must_until(lambda: watch.of("ev1", "disconnect"), 5, "disconnect event of ev1")
        gone = watch.of("ev1", "disconnect")[0]
        e.expect_eq((gone["session"], gone["code"]), (connect["session"], 4001),
                    "disconnect event session and the client's code")
        e.expect(gone["duration_ms"] >= 150, "duration_ms %r >= 150" % gone["duration_ms"])
        suite.ok("5 events: connect, disconnect with code 4001 and duration")

        #  kill -9: the other node's bridge publishes the lost sessions
        ws_b = await e.connect(b.ws_url(b.mint("ev2")))
        await must_until(lambda: watch.of("ev2", "connect"), 5, "connect event of ev2")
        await asyncio.sleep(0.5)            # beats have seen b's session
        killed_at = time.monotonic()
        b.signal(signal.SIGKILL)
        await must_until(lambda: watch.of("ev2", "disconnect"), 8,
                         "disconnect event of ev2 after kill -9")
        lost = watch.of("ev2", "disconnect")[0]
        at = [t for ch, ev, t in watch.events if ev is lost][0]
        e.expect_eq(lost["code"], 1006, "disconnect code of a killed node's session")
        e.expect(at - killed_at <= 5.0, "published %.2f s after kill -9 (<= 5 s)"
                 % (at - killed_at))
        suite.ok("5 events: kill -9 → 1006 '%s' published %.2f s later"
                 % (lost.get("reason"), at - killed_at))
        try:
            await ws_b.close()
        except Exception:
            pass
    finally:
        await watch.stop()
        b.stop() if b.proc.poll() is None else None
        a.stop()


def presence(srv, query, api_key=None):
    res = srv.http("GET", "/api/presence?" + query,
                   headers={"Authorization": "apikey " + (api_key or srv.api_key)})
    try:
        return res.status, (json.loads(res.body) if res.body else None)
    except ValueError:
        raise e.E2EError("presence %s: not JSON: %r" % (query, res.body[:300]))


async def case_presence(suite, redis):
    a = start_node(extra_args=["--redis-url", redis.url, "--node-id", "pr-a"])
    b = start_node(extra_args=["--redis-url", redis.url, "--node-id", "pr-b"])
    try:
        status, _ = presence(a, "user=pr1", api_key="wrong")
        e.expect_eq(status, 401, "presence with a wrong API key")
        status, _ = presence(a, "user=bad%20id")
        e.expect_eq(status, 400, "presence with an invalid id")
        wa = await e.connect(a.ws_url(a.mint("pr1", channels=["hall"])))
        wb = await e.connect(b.ws_url(b.mint("pr1", channels=["hall"])))
        wc = await e.connect(b.ws_url(b.mint("pr2", channels=["hall"])))
        t0 = time.monotonic()

        def both():
            st, body = presence(a, "user=pr1")
            return st == 200 and sorted(s["node"] for s in body.get("sessions", [])) == \
                ["pr-a", "pr-b"]
        await must_until(both, 5, "presence of pr1 on both nodes")
        seen = time.monotonic() - t0
        e.expect(seen <= 2.0, "presence correct %.2f s after connect (<= 2 s)" % seen)
        st, body = presence(a, "user=pr1")
        s0 = body["sessions"][0]
        e.expect(all(k in s0 for k in ("session", "node", "since", "channels")),
                 "session entry fields: %r" % s0)
        st, body = presence(b, "channel=hall&limit=2")
        e.expect_eq((st, body.get("count")), (200, 3), "channel hall member count")
        e.expect(len(body.get("members", [])) <= 2, "limit=2 honoured: %r" % body)
        killed_at = time.monotonic()
        b.signal(signal.SIGKILL)

        def only_a():
            st, body = presence(a, "user=pr1")
            return st == 200 and [s["node"] for s in body.get("sessions", [])] == ["pr-a"]
        await must_until(only_a, 6, "presence without the killed node")
        took = time.monotonic() - killed_at
        e.expect(took <= 2.5, "presence without the killed node after %.2f s (<= 2 s + 0.5)"
                 % took)
        st, body = presence(a, "channel=hall")
        e.expect_eq(body.get("count"), 1, "channel count after kill -9")
        suite.ok("6 presence: both nodes after %.2f s; killed node gone after %.2f s"
                 % (seen, took))
        for w in (wa, wb, wc):
            try:
                await w.close()
            except Exception:
                pass
    finally:
        b.stop() if b.proc.poll() is None else None
        a.stop()


async def case_refresh(suite, redis):
    srv = start_node(extra_args=["--redis-url", redis.url] + leeway_args())
    try:
        keep = await v1_connect(srv, "rf1", ttl=3)
        lapse = await v1_connect(srv, "rf2", ttl=3)
        other = await v1_connect(srv, "rf3")
        bad = await v1_connect(srv, "rf4")
        for ws in (keep, lapse, other, bad):
            await v1_hello(ws)
        await asyncio.sleep(1.0)
        await keep.send(json.dumps({"type": "refresh", "token": srv.mint("rf1", ttl=60)}))
        msg = await v1_recv(keep, what="refreshed")
        e.expect_eq(msg.get("type"), "refreshed", "answer to refresh")
        e.expect(msg.get("expires", 0) > time.time() + 50, "new expiry: %r" % msg)
        await other.send(json.dumps({"type": "refresh", "token": srv.mint("someone-else")}))
        await e.expect_close(other, 1008, what="refresh for another sub")
        await bad.send(json.dumps({"type": "refresh", "token": "x.y.z"}))
        await e.expect_close(bad, 1008, what="refresh with a bad token")
        await e.expect_close(lapse, 1008, timeout=6, what="session without refresh")
        #  The refreshed one lives past its first token's exp
        await asyncio.sleep(0.5)
        srv.publish(user="rf1", data="still here")
        pub = (await collect_pubs(keep, 1))[0]
        e.expect_eq(pub["data"], "still here", "refreshed session still delivers")
        await keep.close()
    finally:
        srv.stop()


async def case_malformed(suite, redis):
    srv = start_node(extra_args=["--redis-url", redis.url, "--hello-timeout", "1s"])
    try:
        ws = await v1_connect(srv, "mf1")
        await v1_hello(ws)
        for bad, what in ((b"not json", "binary garbage"), ("not json", "text not JSON"),
                          (json.dumps({"type": "bogus"}), "unknown type"),
                          (json.dumps({"type": "hello"}), "a second hello"),
                          (json.dumps([1, 2]), "an array"),
                          (json.dumps({"type": "send"}), "send without data")):
            await ws.send(bad)
            msg = await v1_recv(ws, what="error for %s" % what)
            e.expect_eq(msg.get("type"), "error", "answer to %s" % what)
            e.expect(msg.get("error"), "error text for %s: %r" % (what, msg))
        await e.settle(srv, 1)
        srv.publish(user="mf1", data="after errors")
        pub = (await collect_pubs(ws, 1))[0]
        e.expect_eq(pub["data"], "after errors", "session goes on after errors")
        await ws.close()
        silent = await v1_connect(srv, "mf2")
        t0 = time.monotonic()
        await e.expect_close(silent, 1008, timeout=5, what="v1 session without hello")
        e.expect(time.monotonic() - t0 >= 0.8, "closed only after the hello timeout")
    finally:
        srv.stop()


async def body(suite):
    e.require(REDIS_SERVER, NATS_SERVER)
    suite_start = time.monotonic()
    redis = RedisProc().start()
    nats = NatsJsProc().start()
    try:
        await suite.case("1 v1 negotiation, welcome, raw beside v1", case_negotiation, suite,
                         redis)
        try:
            await asyncio.wait_for(case_recover_redis(suite, redis), 90)
        except Exception as ex:
            suite.fail("2 recovery (Redis)", "%s: %s" % (type(ex).__name__, ex))
        await suite.case("3 recovery (NATS JetStream): 500 missed, then live", case_recover_nats,
                         suite, nats, timeout=90)
        await suite.case("4 Redis restart: recovered:false, new epoch", case_redis_restart,
                         suite)
        try:
            await asyncio.wait_for(case_events(suite, redis), 60)
        except Exception as ex:
            suite.fail("5 events", "%s: %s" % (type(ex).__name__, ex))
        try:
            await asyncio.wait_for(case_presence(suite, redis), 60)
        except Exception as ex:
            suite.fail("6 presence", "%s: %s" % (type(ex).__name__, ex))
        await suite.case("7 refresh: kept past exp; other sub, bad token, none → 1008",
                         case_refresh, suite, redis)
        await suite.case("8 malformed v1 input → error, session goes on; no hello → 1008",
                         case_malformed, suite, redis)
    finally:
        stop_everything()
    e.expect(time.monotonic() - suite_start < SUITE_LIMIT_S, "suite time")


if __name__ == "__main__":
    e.main("e2e_reliable", body)
