#!/usr/bin/python3
"""e2e_bridge — the backplane bridge, end to end, against real Redis and NATS.

Every backplane server (redis-server, nats-server), every `wsrouter bridge`
process and every node runs on a free 127.0.0.1 port and is stopped by PID.
Redis is spoken with raw RESP over a socket, NATS with its text protocol over
a socket, the HTTP backend is a python http.server thread: nothing here uses
the server's own code.

Cases:
  1  Redis, in-process bridge: ws:u1 → every session of u1 byte for byte (text,
     binary), 1,000 pipelined messages in order, u10/u1x isolation, channels.
  2  NATS, in-process bridge: the same on world.updates.user.* / .channel.*.
  3  Upstream: client messages → Redis ws:actions:u1 and NATS client.actions.u1
     as msgpack envelopes {v, u, s, n, ts, k, d}.
  4  HTTP upstream: the backend's reply goes to the sending session only;
     500 / timeout / refused → an error message mentioning "upstream"; metrics.
  5  Dynamic subscriptions (PUBSUB CHANNELS), firehose mode (PUBSUB NUMPAT).
  6  Two nodes + `wsrouter bridge` + Redis: Redis and API publishes reach both.
  7  Faults: Redis restart, NATS restart, bridge SIGKILL + restart, node SIGKILL,
     upstream messages lost while Redis is down are counted; no duplicates.
"""

import os
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import asyncio  # noqa: E402
import base64  # noqa: E402
import collections  # noqa: E402
import http.server  # noqa: E402
import json  # noqa: E402
import random  # noqa: E402
import re  # noqa: E402
import shutil  # noqa: E402
import signal  # noqa: E402
import socket  # noqa: E402
import subprocess  # noqa: E402
import tempfile  # noqa: E402
import threading  # noqa: E402
import time  # noqa: E402

import msgpack  # noqa: E402

import wsr_e2e as e  # noqa: E402
from wsr_procs import (_STARTED, stop_everything, RedisProc, NatsProc,  # noqa: E402
                       BridgeProc, start_node, node_readyz, redis_ping, nats_ping)

from wsr_procs import REDIS_SERVER, NATS_SERVER  # noqa: E402
SUITE_LIMIT_S = 170.0           # whole suite, below the 3-minute budget
PROBE = "probe:"
VERBOSE = bool(os.environ.get("E2E_VERBOSE"))


def note(text):
    """Observed timings, printed only with E2E_VERBOSE=1."""
    if VERBOSE:
        print("  # " + text, flush=True)

async def wait_status(fn, want, timeout, what):
    """Poll fn() every 50 ms until it returns want; returns seconds waited."""
    t0 = time.monotonic()
    last = None
    while time.monotonic() - t0 < timeout:
        last = fn()
        if last == want:
            return time.monotonic() - t0
        await asyncio.sleep(0.05)
    raise e.E2EError("%s: expected %r within %.1f s, last observed %r"
                     % (what, want, timeout, last))


# --------------------------------------------------------------------------
#  Redis: raw RESP2 over asyncio streams

class RespError(Exception):
    pass


_EOF = object()


class Resp:
    """One Redis connection; a reader task queues every reply / push message."""

    def __init__(self, port):
        self.port = port
        self.reader = self.writer = self.task = None
        self.queue = asyncio.Queue()

    @classmethod
    async def open(cls, port, timeout=5.0):
        self = cls(port)
        self.reader, self.writer = await asyncio.wait_for(
            asyncio.open_connection("127.0.0.1", port), timeout)
        self.task = asyncio.ensure_future(self._run())
        return self

    @staticmethod
    def encode(*args):
        out = [b"*%d\r\n" % len(args)]
        for a in args:
            if isinstance(a, str):
                a = a.encode()
            elif isinstance(a, int):
                a = str(a).encode()
            out.append(b"$%d\r\n%s\r\n" % (len(a), a))
        return b"".join(out)

    async def _reply(self):
        line = await self.reader.readline()
        if not line.endswith(b"\r\n"):
            raise EOFError("redis connection closed")
        kind, rest = line[:1], line[1:-2]
        if kind == b"+":
            return rest.decode()
        if kind == b"-":
            return RespError(rest.decode())
        if kind == b":":
            return int(rest)
        if kind == b"$":
            n = int(rest)
            if n < 0:
                return None
            return (await self.reader.readexactly(n + 2))[:-2]
        if kind == b"*":
            n = int(rest)
            if n < 0:
                return None
            return [await self._reply() for _ in range(n)]
        raise EOFError("unexpected RESP line %r" % line[:80])

    async def _run(self):
        try:
            while True:
                self.queue.put_nowait(await self._reply())
        except (EOFError, asyncio.IncompleteReadError, ConnectionError, OSError):
            pass
        finally:
            self.queue.put_nowait(_EOF)

    async def get(self, timeout, what):
        try:
            item = await asyncio.wait_for(self.queue.get(), timeout)
        except asyncio.TimeoutError:
            raise e.E2EError("redis: no %s within %.1f s" % (what, timeout))
        if item is _EOF:
            self.queue.put_nowait(_EOF)
            raise e.E2EError("redis: connection closed while waiting for %s" % what)
        if isinstance(item, RespError):
            raise e.E2EError("redis: error reply to %s: %s" % (what, item))
        return item

    async def cmd(self, *args, timeout=5.0):
        self.writer.write(self.encode(*args))
        await self.writer.drain()
        return await self.get(timeout, "reply to %r" % (args[:3],))

    async def pipeline(self, commands, timeout=10.0):
        self.writer.write(b"".join(self.encode(*c) for c in commands))
        await self.writer.drain()
        deadline = time.monotonic() + timeout
        return [await self.get(max(0.01, deadline - time.monotonic()), "pipelined reply %d" % i)
                for i in range(len(commands))]

    async def publish(self, channel, data):
        return await self.cmd("PUBLISH", channel, data)

    async def channels(self, pattern="ws:*"):
        return sorted(c.decode() for c in await self.cmd("PUBSUB", "CHANNELS", pattern))

    async def subscribe(self, channel):
        reply = await self.cmd("SUBSCRIBE", channel)
        e.expect(isinstance(reply, list) and reply[0] == b"subscribe",
                 "redis SUBSCRIBE %s: unexpected reply %r" % (channel, reply))

    async def message(self, timeout=5.0, what="pub/sub message"):
        """(channel, data) of the next pub/sub message."""
        deadline = time.monotonic() + timeout
        while True:
            item = await self.get(max(0.01, deadline - time.monotonic()), what)
            if isinstance(item, list) and len(item) == 3 and item[0] == b"message":
                return item[1].decode(), item[2]

    def close(self):
        if self.task:
            self.task.cancel()
        if self.writer:
            self.writer.close()


# --------------------------------------------------------------------------
#  NATS: the text protocol over asyncio streams

class Nats:
    def __init__(self, port):
        self.port = port
        self.reader = self.writer = self.task = None
        self.msgs = asyncio.Queue()
        self.pings = 0
        self.pongs = 0
        self.errors = []
        self.eof = False

    @classmethod
    async def open(cls, port, timeout=5.0):
        self = cls(port)
        self.reader, self.writer = await asyncio.wait_for(
            asyncio.open_connection("127.0.0.1", port), timeout)
        info = await asyncio.wait_for(self.reader.readline(), timeout)
        e.expect(info.startswith(b"INFO "), "nats: expected INFO first, got %r" % info[:80])
        self.writer.write(b'CONNECT {"verbose":false,"pedantic":false,"name":"e2e"}\r\n')
        self.task = asyncio.ensure_future(self._run())
        await self.flush(timeout)
        return self

    async def _run(self):
        try:
            while True:
                line = await self.reader.readline()
                if not line.endswith(b"\r\n"):
                    break
                if line.startswith(b"MSG "):
                    parts = line.split()
                    n = int(parts[-1])
                    data = (await self.reader.readexactly(n + 2))[:-2]
                    self.msgs.put_nowait((parts[1].decode(), data))
                elif line.startswith(b"PING"):
                    self.writer.write(b"PONG\r\n")
                elif line.startswith(b"PONG"):
                    self.pongs += 1
                elif line.startswith(b"-ERR"):
                    self.errors.append(line.decode("utf-8", "replace").strip())
        except (asyncio.IncompleteReadError, ConnectionError, OSError):
            pass
        finally:
            self.eof = True

    async def flush(self, timeout=5.0):
        """PING and wait for its PONG: everything written before was processed."""
        self.pings += 1
        want = self.pings
        self.writer.write(b"PING\r\n")
        await self.writer.drain()
        deadline = time.monotonic() + timeout
        while self.pongs < want:
            if self.eof:
                raise e.E2EError("nats: connection closed while waiting for PONG (%s)"
                                 % self.errors)
            if time.monotonic() > deadline:
                raise e.E2EError("nats: no PONG within %.1f s (%s)" % (timeout, self.errors))
            await asyncio.sleep(0.005)
        e.expect(not self.errors, "nats: server errors %r" % self.errors)

    def _pub_bytes(self, subject, data):
        if isinstance(data, str):
            data = data.encode()
        return b"PUB %s %d\r\n%s\r\n" % (subject.encode(), len(data), data)

    async def publish(self, subject, data):
        self.writer.write(self._pub_bytes(subject, data))
        await self.flush()

    async def publish_many(self, subject, items):
        self.writer.write(b"".join(self._pub_bytes(subject, d) for d in items))
        await self.flush(10.0)

    async def subscribe(self, subject, sid):
        self.writer.write(b"SUB %s %d\r\n" % (subject.encode(), sid))
        await self.flush()

    async def message(self, timeout=5.0, what="NATS message"):
        try:
            return await asyncio.wait_for(self.msgs.get(), timeout)
        except asyncio.TimeoutError:
            raise e.E2EError("nats: no %s within %.1f s" % (what, timeout))

    def close(self):
        if self.task:
            self.task.cancel()
        if self.writer:
            self.writer.close()


# --------------------------------------------------------------------------
#  WebSocket clients that record everything they receive

def is_probe(m):
    return (m.startswith(PROBE) if isinstance(m, str)
            else isinstance(m, bytes) and m.startswith(PROBE.encode()))


class Client:
    """A session whose messages are collected by a background task."""

    def __init__(self, name, ws):
        self.name = name
        self.ws = ws
        self.msgs = []              # (monotonic time, message)
        self.pos = 0
        self.closed = None
        self.task = asyncio.ensure_future(self._run())

    @classmethod
    async def connect(cls, srv, user, channels=None, name=None):
        ws = await e.connect(srv.ws_url(srv.mint(user, channels=channels)))
        return cls(name or user, ws)

    async def _run(self):
        try:
            async for m in self.ws:
                self.msgs.append((time.monotonic(), m))
            self.closed = "closed: code %s reason %r" % (self.ws.close_code, self.ws.close_reason)
        except e.ConnectionClosed as ex:
            self.closed = "closed: code %s reason %r" % (e.close_code(ex), e.close_reason(ex))
        except Exception as ex:
            self.closed = "reader failed: %r" % ex

    def mark(self):
        self.pos = len(self.msgs)

    def data(self, since=0):
        """Non-probe messages received from index since."""
        return [m for _, m in self.msgs[since:] if not is_probe(m)]

    def with_prefix(self, prefix):
        return [(t, m) for t, m in self.msgs if isinstance(m, str) and m.startswith(prefix)]

    async def next(self, timeout=5.0, what="message"):
        """Next non-probe message after the read position."""
        deadline = time.monotonic() + timeout
        while True:
            while self.pos < len(self.msgs):
                m = self.msgs[self.pos][1]
                self.pos += 1
                if not is_probe(m):
                    return m
            if self.closed:
                raise e.E2EError("%s: expected a %s, session %s" % (self.name, what, self.closed))
            if time.monotonic() >= deadline:
                raise e.E2EError("%s: expected a %s within %.1f s, received nothing"
                                 % (self.name, what, timeout))
            await asyncio.sleep(0.005)

    async def wait_count(self, pred, n, timeout, what):
        """Wait until n messages after the read position satisfy pred; returns them."""
        deadline = time.monotonic() + timeout
        while True:
            got = [m for _, m in self.msgs[self.pos:] if pred(m)]
            if len(got) >= n:
                return got
            if self.closed or time.monotonic() >= deadline:
                raise e.E2EError("%s: expected %d %s within %.1f s, received %d%s"
                                 % (self.name, n, what, timeout, len(got),
                                    (" (session %s)" % self.closed) if self.closed else ""))
            await asyncio.sleep(0.01)

    async def send(self, data):
        await self.ws.send(data)

    def expect_open(self, what):
        e.expect(self.closed is None and not self.ws.closed,
                 "%s: session %s expected to stay connected, %s"
                 % (what, self.name, self.closed or "socket closed"))

    async def close(self):
        await e.close_all(self.ws)
        try:
            await asyncio.wait_for(self.task, 3)
        except Exception:
            self.task.cancel()


async def close_clients(*clients):
    for c in clients:
        if c is not None:
            await c.close()


async def sync_probes(publish, targets, timeout=8.0):
    """Publish probes to each (name, clients) target every 100 ms until every
    client received one: the bridge's subscriptions are in place. Probes are
    skipped by Client.next / Client.data."""
    starts = {id(c): len(c.msgs) for _, cs in targets for c in cs}
    deadline = time.monotonic() + timeout
    n = 0
    while True:
        for name, _ in targets:
            await publish(name, "%s%s:%d" % (PROBE, name, n))
        n += 1
        await asyncio.sleep(0.1)
        missing = [c.name for _, cs in targets for c in cs
                   if not any(is_probe(m) for _, m in c.msgs[starts[id(c)]:])]
        if not missing:
            break
        if time.monotonic() > deadline:
            raise e.E2EError("no probe published on %s reached %s within %.0f s (%d probes each)"
                             % ([t for t, _ in targets], missing, timeout, n))
    await asyncio.sleep(0.2)


def seq_of(m, prefix):
    try:
        return int(m[len(prefix):])
    except ValueError:
        return None


def check_no_duplicates(client, prefix, what):
    """Each sequence number of prefix at most once, in increasing order."""
    seqs = [seq_of(m, prefix) for _, m in client.with_prefix(prefix)]
    dups = sorted(s for s, c in collections.Counter(seqs).items() if c > 1)
    e.expect(not dups, "%s: %s received sequence numbers %s more than once (all: %s)"
             % (what, client.name, dups, seqs))
    e.expect(seqs == sorted(seqs), "%s: %s received %s out of order: %s"
             % (what, client.name, prefix, seqs))


async def deliver_until(publish, targets, t0, limit, what, give_up=8.0):
    """Publish PREFIXn to each (name, prefix, clients) target every 100 ms until
    every client received one of them. Returns the seconds from t0 to the
    last client's first arrival; fails if above limit. Then checks that
    delivery is steady (3 more in order) and nothing was duplicated."""
    n = 0
    while True:
        for name, prefix, _ in targets:
            await publish(name, "%s%d" % (prefix, n))
        n += 1
        firsts = {}
        for _, prefix, clients in targets:
            for c in clients:
                got = c.with_prefix(prefix)
                if got:
                    firsts[c.name] = got[0][0]
        total = sum(len(cs) for _, _, cs in targets)
        if len(firsts) == total:
            break
        if time.monotonic() - t0 > give_up:
            missing = [c.name for _, _, cs in targets for c in cs if c.name not in firsts]
            closed = ["%s %s" % (c.name, c.closed) for _, _, cs in targets for c in cs
                      if c.closed]
            raise e.E2EError("%s: nothing delivered to %s within %.1f s (%d publishes each)%s"
                             % (what, missing, give_up, n,
                                ("; " + ", ".join(closed)) if closed else ""))
        await asyncio.sleep(0.1)
    elapsed = max(firsts.values()) - t0
    #  Steady afterwards: 3 more each, all delivered
    for k in range(3):
        for name, prefix, _ in targets:
            await publish(name, "%s%d" % (prefix, n + k))
    for name, prefix, clients in targets:
        for c in clients:
            deadline = time.monotonic() + 3.0
            while seq_of(c.with_prefix(prefix)[-1][1], prefix) != n + 2:
                if time.monotonic() > deadline:
                    raise e.E2EError("%s: after recovery %s did not receive %s%d within 3 s "
                                     "(last %r)" % (what, c.name, prefix, n + 2,
                                                    c.with_prefix(prefix)[-1][1]))
                await asyncio.sleep(0.01)
            check_no_duplicates(c, prefix, what)
    note("%s: delivery resumed %.2f s after t0" % (what, elapsed))
    e.expect(elapsed <= limit, "%s: delivery resumed %.2f s after the backplane was back, "
             "expected within %.1f s" % (what, elapsed, limit))
    return elapsed


# --------------------------------------------------------------------------
#  Cases 1 and 2: delivery through one backplane, in-process bridge

async def delivery_cases(suite, tag, publish, publish_many, user_name, channel_name, srv):
    u1a = await Client.connect(srv, "u1", name="u1/a")
    u1b = await Client.connect(srv, "u1", name="u1/b")
    u10 = await Client.connect(srv, "u10")
    u1x = await Client.connect(srv, "u1x")
    room = await Client.connect(srv, "u2", channels=["room.7"], name="u2(room.7)")
    everyone = (u1a, u1b, u10, u1x, room)
    try:
        await sync_probes(publish, [(user_name("u1"), [u1a, u1b]), (user_name("u10"), [u10]),
                                    (user_name("u1x"), [u1x]), (channel_name("room.7"), [room])])

        async def bytes_exact():
            payloads = ["héllo ✓ {\"hp\":3} " + tag,                  # text, multibyte UTF-8
                        b"\x00\x01\x80\xfe\xff binary " + tag.encode(),  # not UTF-8: binary
                        "nul\x00inside ✓",                              # valid UTF-8 with NUL
                        random.Random(7).randbytes(256 * 1024) + b"\xff",  # 256 KiB binary
                        ""]                                               # empty
            for p in payloads:
                await publish(user_name("u1"), p)
                for c in (u1a, u1b):
                    got = await c.next(what="publish of %d bytes" % len(p))
                    e.expect(type(got) is type(p),
                             "%s: payload %r must arrive as a %s frame, arrived as %s %r"
                             % (c.name, e.short_any(p), "text" if isinstance(p, str)
                                else "binary", type(got).__name__, e.short_any(got)))
                    e.expect_eq(got, p, "%s: payload byte for byte" % c.name)

        async def order_1000():
            for c in (u1a, u1b):
                c.mark()
            items = ["seq:%04d" % i for i in range(1000)]
            await publish_many(user_name("u1"), items)
            for c in (u1a, u1b):
                got = await c.wait_count(lambda m: isinstance(m, str) and m.startswith("seq:"),
                                         1000, 15.0, "seq messages")
                if got != items:
                    first = next(i for i, (a, b) in enumerate(zip(got, items)) if a != b) \
                        if got[:1000] != items else 1000
                    raise e.E2EError("%s: 1,000 messages not in order: first difference at "
                                     "index %d: expected %r, observed %r (received %d)"
                                     % (c.name, first, items[min(first, 999)],
                                        got[first] if first < len(got) else None, len(got)))
                c.pos += len(got)

        async def isolation():
            for c in everyone:
                c.mark()
            await publish(user_name("u10"), "only-u10")
            await publish(user_name("u1x"), "only-u1x")
            await publish(user_name("u1"), "marker-u1")
            for c in (u1a, u1b):
                got = await c.next(what="marker after publishes to u10 and u1x")
                e.expect_eq(got, "marker-u1", "%s: first message after publishes to %s and %s"
                            % (c.name, user_name("u10"), user_name("u1x")))
            e.expect_eq(await u10.next(), "only-u10", "u10's message")
            e.expect_eq(await u1x.next(), "only-u1x", "u1x's message")
            await asyncio.sleep(0.3)
            for c, own in ((u10, ["only-u10"]), (u1x, ["only-u1x"])):
                e.expect_eq(c.data(), own, "%s: everything it ever received (u1's messages "
                            "must not leak)" % c.name)

        async def channel():
            for c in everyone:
                c.mark()
            await publish(channel_name("room.7"), "room-msg ✓")
            await publish(user_name("u1"), "marker-2")
            e.expect_eq(await room.next(what="channel message"), "room-msg ✓",
                        "room.7 subscriber's message")
            for c in (u1a, u1b):
                e.expect_eq(await c.next(), "marker-2",
                            "%s (not in room.7): first message after the channel publish"
                            % c.name)
            await asyncio.sleep(0.3)
            e.expect_eq(room.data(), ["room-msg ✓"],
                        "u2(room.7): everything it ever received")

        await suite.case("%s: text/binary/NUL/256 KiB/empty payloads reach both sessions of "
                         "u1 byte for byte" % tag, bytes_exact)
        await suite.case("%s: 1,000 messages from one connection arrive in order at both "
                         "sessions" % tag, order_1000)
        await suite.case("%s: messages to u10 and u1x never reach u1 (and vice versa)" % tag,
                         isolation)
        await suite.case("%s: channel message reaches the session with the channels claim "
                         "only" % tag, channel)
    finally:
        await close_clients(*everyone)


async def case_redis_inproc(suite):
    tag = "1 redis in-process"
    redis = srv = r = None
    try:
        redis = RedisProc().start()
        srv = start_node(workers=2, extra_args=["--redis-url", redis.url,
                                                 "--node-id", "node-redis"])
        r = await Resp.open(redis.port)

        async def publish_many(channel, items):
            replies = await r.pipeline([("PUBLISH", channel, it) for it in items])
            e.expect(all(isinstance(x, int) and x >= 1 for x in replies),
                     "pipelined PUBLISH: some had no subscriber: %r"
                     % [x for x in replies if x != 1][:5])

        await delivery_cases(suite, tag, r.publish, publish_many,
                             lambda u: "ws:" + u, lambda c: "ws:channel:" + c, srv)
    except e.E2EError as ex:
        suite.fail(tag + ": setup", str(ex))
    finally:
        if r:
            r.close()
        if srv:
            srv.stop()
        if redis:
            redis.stop()


async def case_nats_inproc(suite):
    tag = "2 nats in-process"
    nats = srv = n = None
    try:
        nats = NatsProc().start()
        srv = start_node(workers=2, extra_args=["--nats-url", nats.url,
                                                 "--node-id", "node-nats"])
        n = await Nats.open(nats.port)
        await delivery_cases(suite, tag, n.publish, n.publish_many,
                             lambda u: "world.updates.user." + u,
                             lambda c: "world.updates.channel." + c, srv)
    except e.E2EError as ex:
        suite.fail(tag + ": setup", str(ex))
    finally:
        if n:
            n.close()
        if srv:
            srv.stop()
        if nats:
            nats.stop()


# --------------------------------------------------------------------------
#  Case 3: upstream to Redis and NATS

ENVELOPE_KEYS = {"v", "u", "s", "n", "ts", "k", "d"}


def check_envelope(raw, user, node, kind, data, what):
    try:
        env = msgpack.unpackb(raw, raw=False)
    except Exception as ex:
        raise e.E2EError("%s: not a msgpack map (%s): %r" % (what, ex, e.short(raw)))
    e.expect(isinstance(env, dict), "%s: envelope is not a map: %r" % (what, env))
    e.expect(set(env) >= ENVELOPE_KEYS, "%s: envelope keys %r, expected at least %r"
             % (what, sorted(env), sorted(ENVELOPE_KEYS)))
    e.expect_eq(env["v"], 1, what + ": v")
    e.expect_eq(env["u"], user, what + ": u")
    e.expect(isinstance(env["s"], int) and not isinstance(env["s"], bool),
             "%s: s must be an integer session id, got %r" % (what, env["s"]))
    e.expect_eq(env["n"], node, what + ": n (the --node-id)")
    now_us = int(time.time() * 1e6)
    e.expect(isinstance(env["ts"], int) and abs(env["ts"] - now_us) < 60 * 1000000,
             "%s: ts must be µs since the epoch near %d, got %r" % (what, now_us, env["ts"]))
    e.expect_eq(env["k"], kind, what + ": k (1 text, 2 binary)")
    e.expect(isinstance(env["d"], bytes), "%s: d must be msgpack bin (bytes), got %s %r"
             % (what, type(env["d"]).__name__, e.short_any(env["d"])))
    e.expect_eq(env["d"], data, what + ": d")
    return env


async def case_upstream(suite):
    tag = "3 upstream"
    redis = nats = srv = rsub = nsub = None
    a = a2 = None
    node_id = "node-up-7"
    try:
        redis = RedisProc().start()
        nats = NatsProc().start()
        srv = start_node(workers=2, extra_args=["--redis-url", redis.url, "--nats-url", nats.url,
                                                 "--node-id", node_id])
        rsub = await Resp.open(redis.port)
        await rsub.subscribe("ws:actions:u1")
        nsub = await Nats.open(nats.port)
        await nsub.subscribe("client.actions.u1", 1)
        a = await Client.connect(srv, "u1", name="u1/a")
        a2 = await Client.connect(srv, "u1", name="u1/b")

        async def next_redis(what):
            while True:
                ch, data = await rsub.message(5.0, what)
                e.expect_eq(ch, "ws:actions:u1", what + ": Redis channel")
                if PROBE.encode() not in data:
                    return data

        async def next_nats(what):
            while True:
                subject, data = await nsub.message(5.0, what)
                e.expect_eq(subject, "client.actions.u1", what + ": NATS subject")
                if PROBE.encode() not in data:
                    return data

        async def synced():
            #  The bridge connects to Redis and NATS asynchronously: probe until
            #  both subscribers see a client message, then drain the rest
            deadline = time.monotonic() + 8.0
            seen_r = seen_n = False
            k = 0
            while not (seen_r and seen_n):
                e.expect(time.monotonic() < deadline,
                         "no probe client message observed within 8 s on %s"
                         % " and ".join(n for n, s in (("Redis ws:actions:u1", seen_r),
                                                       ("NATS client.actions.u1", seen_n))
                                        if not s))
                await a.send(PROBE + str(k))
                k += 1
                await asyncio.sleep(0.1)
                while not rsub.queue.empty():
                    item = rsub.queue.get_nowait()
                    seen_r = seen_r or (isinstance(item, list) and item[0] == b"message")
                while not nsub.msgs.empty():
                    nsub.msgs.get_nowait()
                    seen_n = True
            await asyncio.sleep(0.3)

        async def envelopes():
            text = "héllo upstream ✓"
            binary = b"\x00\x01\xfe\xff up"
            await a.send(text)
            await a.send(binary)
            envs = {}
            for name, nxt in (("redis", next_redis), ("nats", next_nats)):
                raw = await nxt(name + ": text message")
                t = check_envelope(raw, "u1", node_id, 1, text.encode(), name + " text")
                raw = await nxt(name + ": binary message")
                b = check_envelope(raw, "u1", node_id, 2, binary, name + " binary")
                e.expect_eq(b["s"], t["s"], name + ": session id of two messages of one session")
                envs[name] = t
            e.expect_eq(envs["nats"]["s"], envs["redis"]["s"],
                        "session id on NATS vs on Redis for the same session")
            await a2.send("from the second session")
            r2 = check_envelope(await next_redis("redis: second session"), "u1", node_id, 1,
                                b"from the second session", "redis: second session")
            n2 = check_envelope(await next_nats("nats: second session"), "u1", node_id, 1,
                                b"from the second session", "nats: second session")
            e.expect(r2["s"] != envs["redis"]["s"] and n2["s"] == r2["s"],
                     "second session: expected its own session id on both, got redis %r nats %r "
                     "(first session %r)" % (r2["s"], n2["s"], envs["redis"]["s"]))

        async def order():
            items = [("up-%03d" % i).encode() for i in range(100)]
            for it in items:
                await a.send(it.decode())
            for name, nxt in (("redis", next_redis), ("nats", next_nats)):
                for i, it in enumerate(items):
                    env = msgpack.unpackb(await nxt("%s: message %d" % (name, i)), raw=False)
                    e.expect_eq(env.get("d"), it, "%s: upstream order, message %d" % (name, i))

        await suite.case(tag + ": subscribers on Redis and NATS see client messages (probe)",
                         synced)
        await suite.case(tag + ": text + binary → ws:actions:u1 and client.actions.u1, "
                         "envelope v/u/s/n/ts/k/d", envelopes)
        await suite.case(tag + ": 100 client messages in order on both", order)
    except e.E2EError as ex:
        suite.fail(tag + ": setup", str(ex))
    finally:
        await close_clients(a, a2)
        for c in (rsub, nsub):
            if c:
                c.close()
        for p in (srv, nats, redis):
            if p:
                p.stop()


# --------------------------------------------------------------------------
#  Case 4: HTTP upstream

class Backend:
    """A python http.server backend. mode: echo (200 {"echo": data}), 500, slow."""

    def __init__(self):
        self.mode = "echo"
        self.requests = []
        self.events = []
        self.lock = threading.Lock()
        backend = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def log_message(self, *args):
                pass

            def _body(self):
                if self.headers.get("Transfer-Encoding", "").lower() == "chunked":
                    out = b""
                    while True:
                        size = int(self.rfile.readline().strip().split(b";")[0], 16)
                        if size == 0:
                            self.rfile.readline()
                            return out
                        out += self.rfile.read(size)
                        self.rfile.readline()
                return self.rfile.read(int(self.headers.get("Content-Length") or 0))

            def do_POST(self):
                body = self._body()
                try:
                    event = json.loads(body).get("event")
                except Exception:
                    event = None
                if event:
                    #  Session lifecycle events share the URL: kept apart
                    with backend.lock:
                        backend.events.append(json.loads(body))
                    self._answer(200, b"{}")
                    return
                with backend.lock:
                    backend.requests.append((self.path, dict(self.headers), body))
                    mode = backend.mode
                if mode == "500":
                    self._answer(500, b'{"err":"boom"}')
                    return
                if mode == "slow":
                    time.sleep(3.0)
                try:
                    req = json.loads(body)
                    data = req.get("data", req.get("data_base64"))
                except Exception:
                    data = None
                self._answer(200, json.dumps({"echo": data}).encode())

            def _answer(self, status, body):
                try:
                    self.send_response(status)
                    self.send_header("Content-Type", "application/json")
                    self.send_header("Content-Length", str(len(body)))
                    self.end_headers()
                    self.wfile.write(body)
                except OSError:
                    pass

        self.httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.httpd.daemon_threads = True
        self.port = self.httpd.server_address[1]
        self.thread = threading.Thread(target=self.httpd.serve_forever,
                                       kwargs={"poll_interval": 0.1}, daemon=True)
        self.thread.start()
        self.stopped = False
        _STARTED.append(self)

    @property
    def url(self):
        return "http://127.0.0.1:%d/hook" % self.port

    def take(self):
        with self.lock:
            out, self.requests = self.requests, []
        return out

    def stop(self):
        if not self.stopped:
            self.stopped = True
            self.httpd.shutdown()
            self.httpd.server_close()


def check_error_reply(msg, what):
    e.expect(isinstance(msg, str), "%s: expected a text (JSON) error message, got %r"
             % (what, e.short_any(msg)))
    try:
        obj = json.loads(msg)
    except ValueError:
        raise e.E2EError("%s: error message is not JSON: %r" % (what, e.short_any(msg)))
    e.expect(isinstance(obj, dict) and obj.get("type") == "error",
             "%s: expected JSON with \"type\":\"error\", got %r" % (what, obj))
    e.expect(isinstance(obj.get("error"), str) and "upstream" in obj["error"],
             "%s: expected an \"error\" string containing 'upstream', got %r" % (what, obj))


async def case_http_upstream(suite):
    tag = "4 http upstream"
    backend = srv = None
    a = b = None
    node_id = "node-http"
    try:
        backend = Backend()
        srv = start_node(workers=2, extra_args=["--upstream-url", backend.url,
                                                 "--node-id", node_id],
                         env={"WEBSOCKET_UPSTREAM_TIMEOUT": "1000"})
        a = await Client.connect(srv, "u1", name="u1/a")
        b = await Client.connect(srv, "u1", name="u1/b")
        await e.settle(srv, 2)
        m0 = srv.metrics()
        for name in ("wsrouter_bridge_replies_total", "wsrouter_bridge_http_errors_total"):
            e.expect(name in m0, "node /metrics (in-process bridge) has no %s" % name)

        async def reply_to_sender():
            text = "hello ✓ backend"
            data = b"\x00\x01\xfe\xff"
            await a.send(text)
            got = await a.next(what="backend reply to a text message")
            e.expect_eq(json.loads(got) if isinstance(got, str) else got, {"echo": text},
                        "u1/a: reply to its text message")
            await a.send(data)
            got = await a.next(what="backend reply to a binary message")
            e.expect_eq(json.loads(got) if isinstance(got, str) else got,
                        {"echo": base64.b64encode(data).decode()},
                        "u1/a: reply to its binary message")
            await b.send("from b")
            got = await b.next(what="backend reply to b's message")
            e.expect_eq(json.loads(got) if isinstance(got, str) else got, {"echo": "from b"},
                        "u1/b: reply to its own message")
            await asyncio.sleep(0.5)
            e.expect_eq(len(a.data()), 2, "u1/a: messages received in all (its 2 replies, "
                        "not b's: %r)" % a.data())
            e.expect_eq(len(b.data()), 1, "u1/b: messages received in all (its 1 reply, not "
                        "a's: %r)" % b.data())
            reqs = backend.take()
            e.expect_eq(len(reqs), 3, "backend: requests received")
            with backend.lock:
                connects = [ev for ev in backend.events
                            if ev.get("event") == "connect" and ev.get("user") == "u1"]
            e.expect(len(connects) >= 2 and all(ev.get("node") == node_id for ev in connects),
                     "backend: lifecycle connect events of u1's two sessions POSTed with "
                     "\"event\": %r" % connects)
            bodies = []
            for path, headers, body in reqs:
                e.expect_eq(path, "/hook", "backend: request path")
                ctype = {k.lower(): v for k, v in headers.items()}.get("content-type", "")
                e.expect(ctype.split(";")[0].strip().lower() == "application/json",
                         "backend: Content-Type %r, expected application/json" % ctype)
                bodies.append(json.loads(body))
            t, bn, fb = bodies
            for j, kind in ((t, "text"), (bn, "binary"), (fb, "text")):
                e.expect(set(j) >= {"user", "session", "node", "ts", "kind"},
                         "backend: JSON keys %r" % sorted(j))
                e.expect_eq(j["user"], "u1", "backend JSON user")
                e.expect_eq(j["node"], node_id, "backend JSON node")
                e.expect_eq(j["kind"], kind, "backend JSON kind")
                e.expect(isinstance(j["ts"], int) and isinstance(j["session"], int),
                         "backend JSON ts and session must be integers: %r" % j)
            e.expect_eq(t.get("data"), text, "backend JSON data (text)")
            e.expect_eq(base64.b64decode(bn.get("data_base64") or ""), data,
                        "backend JSON data_base64 (binary), decoded")
            e.expect_eq(bn["session"], t["session"], "backend JSON session of a's two messages")
            e.expect(fb["session"] != t["session"], "backend JSON: a and b share session id %r"
                     % t["session"])

        async def error_500():
            a.mark()
            b.mark()
            backend.mode = "500"
            await a.send("please fail")
            check_error_reply(await a.next(what="error message after a 500"), "backend 500")
            await asyncio.sleep(0.3)
            e.expect_eq(b.data(b.pos), [], "u1/b: messages after a's failed request")

        async def error_timeout():
            a.mark()
            backend.mode = "slow"
            t0 = time.monotonic()
            await a.send("too slow")
            check_error_reply(await a.next(timeout=4.0, what="error message after a timeout "
                                           "(WEBSOCKET_UPSTREAM_TIMEOUT=1000, backend takes 3 s)"),
                              "backend timeout")
            took = time.monotonic() - t0
            e.expect(0.7 <= took <= 2.5, "timeout error after %.2f s, expected about 1 s "
                     "(WEBSOCKET_UPSTREAM_TIMEOUT=1000)" % took)

        async def error_down():
            a.mark()
            backend.stop()
            await a.send("nobody home")
            check_error_reply(await a.next(timeout=4.0, what="error message with the backend "
                                           "down (connection refused)"), "backend down")

        async def metrics():
            m1 = srv.metrics()
            e.expect_eq(m1["wsrouter_bridge_replies_total"] - m0["wsrouter_bridge_replies_total"],
                        3, "wsrouter_bridge_replies_total increase (3 replies)")
            e.expect_eq(m1["wsrouter_bridge_http_errors_total"]
                        - m0["wsrouter_bridge_http_errors_total"], 3,
                        "wsrouter_bridge_http_errors_total increase (500, timeout, refused)")
            a.expect_open("after backend errors")
            b.expect_open("after backend errors")

        await suite.case(tag + ": reply goes to the sending session only; JSON body to backend",
                         reply_to_sender)
        await suite.case(tag + ": backend 500 → error message with 'upstream'", error_500)
        await suite.case(tag + ": backend timeout → error message with 'upstream'", error_timeout)
        await suite.case(tag + ": backend down (refused) → error message with 'upstream'",
                         error_down)
        await suite.case(tag + ": replies_total +3, http_errors_total +3", metrics)
    except e.E2EError as ex:
        suite.fail(tag + ": setup", str(ex))
    finally:
        await close_clients(a, b)
        if srv:
            srv.stop()
        if backend:
            backend.stop()


# --------------------------------------------------------------------------
#  Case 5: dynamic subscriptions and firehose

async def case_dynamic(suite):
    tag = "5 subscriptions"
    redis = srv = r = None
    clients = []
    try:
        redis = RedisProc().start()
        r = await Resp.open(redis.port)
        srv = start_node(workers=2, extra_args=["--redis-url", redis.url])

        async def wait_channels(pred, timeout, what):
            t0 = time.monotonic()
            chans = None
            while time.monotonic() - t0 < timeout:
                chans = await r.channels()
                if pred(chans):
                    return time.monotonic() - t0
                await asyncio.sleep(0.05)
            raise e.E2EError("%s: not within %.1f s; PUBSUB CHANNELS ws:* = %r"
                             % (what, timeout, chans))

        async def per_topic():
            await asyncio.sleep(0.5)
            chans = await r.channels()
            e.expect("ws:u1" not in chans, "before any session of u1: PUBSUB CHANNELS ws:* "
                     "already has ws:u1: %r" % chans)
            s1 = await Client.connect(srv, "u1", name="u1/1")
            s2 = await Client.connect(srv, "u1", name="u1/2")
            u5 = await Client.connect(srv, "u5", channels=["room.9"])
            clients.extend([s1, s2, u5])
            await wait_channels(lambda c: {"ws:u1", "ws:u5", "ws:channel:room.9"} <= set(c), 3.0,
                                "sessions of u1 and u5 (room.9) connected: ws:u1, ws:u5, "
                                "ws:channel:room.9 subscribed")
            await s1.close()
            await asyncio.sleep(1.0)
            chans = await r.channels()
            e.expect("ws:u1" in chans, "one of two sessions of u1 closed: ws:u1 must stay "
                     "subscribed, PUBSUB CHANNELS ws:* = %r" % chans)
            await r.publish("ws:u1", "still here")
            e.expect_eq(await s2.next(), "still here", "remaining session of u1")
            await s2.close()
            took = await wait_channels(lambda c: "ws:u1" not in c, 2.0,
                                       "last session of u1 closed: ws:u1 unsubscribed")
            note("ws:u1 unsubscribed %.2f s after the last session closed" % took)
            chans = await r.channels()
            e.expect({"ws:u5", "ws:channel:room.9"} <= set(chans),
                     "u5 still connected: ws:u5 and ws:channel:room.9 must stay, got %r" % chans)
            await u5.close()
            await wait_channels(lambda c: not ({"ws:u5", "ws:channel:room.9"} & set(c)), 2.0,
                                "u5 closed: ws:u5 and ws:channel:room.9 unsubscribed")
            return took

        await suite.case(tag + ": PUBSUB CHANNELS has ws:u1 only while u1 has a session",
                         per_topic)
        srv.stop()
        srv = None

        async def firehose():
            n0 = await r.cmd("PUBSUB", "NUMPAT")
            node = start_node(workers=2, extra_args=["--redis-url", redis.url, "--firehose"])
            try:
                u1 = await Client.connect(node, "u1")
                u10 = await Client.connect(node, "u10")
                room = await Client.connect(node, "u3", channels=["room.7"], name="u3(room.7)")
                clients.extend([u1, u10, room])
                t0 = time.monotonic()
                numpat = None
                while time.monotonic() - t0 < 3.0:
                    numpat = await r.cmd("PUBSUB", "NUMPAT")
                    if numpat - n0 == 2:
                        break
                    await asyncio.sleep(0.05)
                e.expect_eq(numpat - n0, 2, "firehose: PUBSUB NUMPAT (user and channel patterns)"
                            " with 3 sessions connected")
                await sync_probes(r.publish, [("ws:u1", [u1]), ("ws:u10", [u10]),
                                              ("ws:channel:room.7", [room])])
                await r.publish("ws:u10", "fh-u10")
                await r.publish("ws:channel:room.7", "fh-room")
                await r.publish("ws:u1", "fh-u1 ✓")
                await r.publish("ws:u1", b"\x00\xff fh")
                e.expect_eq(await u1.next(), "fh-u1 ✓", "firehose: u1's first message")
                e.expect_eq(await u1.next(), b"\x00\xff fh", "firehose: u1's binary message")
                e.expect_eq(await u10.next(), "fh-u10", "firehose: u10's message")
                e.expect_eq(await room.next(), "fh-room", "firehose: room.7 message")
                await asyncio.sleep(0.3)
                e.expect_eq(u1.data(), ["fh-u1 ✓", b"\x00\xff fh"],
                            "firehose: everything u1 received")
                e.expect_eq(u10.data(), ["fh-u10"], "firehose: everything u10 received")
                e.expect_eq(room.data(), ["fh-room"], "firehose: everything u3(room.7) received")
            finally:
                await close_clients(*clients)
                node.stop()

        await suite.case(tag + ": firehose: PUBSUB NUMPAT 2 and delivery with isolation",
                         firehose)
    except e.E2EError as ex:
        suite.fail(tag + ": setup", str(ex))
    finally:
        await close_clients(*clients)
        if r:
            r.close()
        if srv:
            srv.stop()
        if redis:
            redis.stop()


# --------------------------------------------------------------------------
#  Case 6: two nodes, a bridge process, Redis

async def case_two_nodes(suite):
    tag = "6 bridge process"
    redis = bridge = na = nb = r = rsub = None
    clients = []
    try:
        redis = RedisProc().start()
        bridge = BridgeProc(e.free_port(), redis_url=redis.url).start()
        secret = "s3cret-bridge-6-0123456789abcdef0123"
        key = "key-bridge-6"
        na = start_node(secret=secret, api_key=key, workers=2,
                        extra_args=["--bridge", bridge.endpoint, "--node-id", "node-a"])
        nb = start_node(secret=secret, api_key=key, workers=2,
                        extra_args=["--bridge", bridge.endpoint, "--node-id", "node-b"])
        r = await Resp.open(redis.port)
        a1 = await Client.connect(na, "u1", name="A:u1")
        ua = await Client.connect(na, "ua", name="A:ua")
        b1 = await Client.connect(nb, "u1", name="B:u1")
        ub = await Client.connect(nb, "ub", channels=["room.7"], name="B:ub(room.7)")
        clients.extend([a1, ua, b1, ub])

        async def ready():
            for name, fn in (("node A", lambda: node_readyz(na)),
                             ("node B", lambda: node_readyz(nb)),
                             ("bridge", bridge.readyz)):
                await wait_status(fn, 200, 5.0, "%s GET /readyz" % name)
            await sync_probes(r.publish, [("ws:u1", [a1, b1]), ("ws:ua", [ua]), ("ws:ub", [ub]),
                                          ("ws:channel:room.7", [ub])])

        async def redis_publish():
            for c in clients:
                c.mark()
            await r.publish("ws:ua", "only ua")
            await r.publish("ws:u1", "r-both ✓")
            await r.publish("ws:u1", b"\x00\xffbin")
            for c in (a1, b1):
                e.expect_eq(await c.next(), "r-both ✓", "%s: Redis publish on ws:u1" % c.name)
                e.expect_eq(await c.next(), b"\x00\xffbin", "%s: binary on ws:u1" % c.name)
            e.expect_eq(await ua.next(), "only ua", "A:ua: Redis publish on ws:ua")
            await asyncio.sleep(0.3)
            e.expect_eq(ub.data(ub.pos), [], "B:ub: must not receive u1's or ua's messages")

        async def api_publish():
            for c in clients:
                c.mark()
            nonlocal rsub
            rsub = await Resp.open(redis.port)
            await rsub.subscribe("ws:u1")
            res = na.publish(user="u1", data="api-both ✓")
            e.expect(res.status == 202, "node A API publish: expected 202, got %r" % res)
            for c in (a1, b1):
                e.expect_eq(await c.next(), "api-both ✓", "%s: API publish on node A" % c.name)
            ch, data = await rsub.message(3.0, "API publish observed on Redis ws:u1")
            e.expect_eq((ch, data), ("ws:u1", "api-both ✓".encode()),
                        "API publish with a Redis backplane goes through Redis")
            na.publish(user="ub", data="api-to-b")
            e.expect_eq(await ub.next(), "api-to-b", "B:ub: API publish made on node A")
            na.publish(channel="room.7", data={"hp": 3})
            e.expect_eq(await ub.next(), '{"hp":3}', "B:ub(room.7): channel API publish on A")
            na.publish(user="u1", data_base64=base64.b64encode(b"\x01\x02\xff").decode())
            for c in (a1, b1):
                e.expect_eq(await c.next(), b"\x01\x02\xff", "%s: binary API publish" % c.name)
            await asyncio.sleep(0.3)
            e.expect_eq(ua.data(ua.pos), [], "A:ua: must not receive other users' API publishes")

        async def bridge_metrics():
            m = bridge.metrics()
            names = ["wsrouter_bridge_topics", "wsrouter_bridge_received_total",
                     "wsrouter_bridge_upstream_sent_total", "wsrouter_bridge_upstream_lost_total",
                     "wsrouter_bridge_publish_lost_total", "wsrouter_bridge_replies_total",
                     "wsrouter_bridge_http_errors_total", "wsrouter_bridge_redis_up",
                     "wsrouter_bridge_nats_up"]
            missing = [n for n in names if n not in m]
            e.expect(not missing, "bridge /metrics lacks %s" % missing)
            e.expect_eq(m["wsrouter_bridge_redis_up"], 1, "bridge wsrouter_bridge_redis_up")
            e.expect(m["wsrouter_bridge_received_total"] >= 10,
                     "bridge wsrouter_bridge_received_total = %r after 10+ publishes"
                     % m["wsrouter_bridge_received_total"])
            e.expect_eq(m["wsrouter_bridge_topics"], 4,
                        "bridge wsrouter_bridge_topics (u1, ua, ub, room.7)")
            sent0 = m["wsrouter_bridge_upstream_sent_total"]
            await a1.send("up from A")
            await ub.send("up from B")
            t0 = time.monotonic()
            while bridge.metrics()["wsrouter_bridge_upstream_sent_total"] < sent0 + 2:
                e.expect(time.monotonic() - t0 < 3.0, "bridge upstream_sent_total did not grow "
                         "by 2 within 3 s after one client message on each node")
                await asyncio.sleep(0.05)

        await suite.case(tag + ": both nodes and the bridge /readyz 200", ready)
        await suite.case(tag + ": Redis publish reaches u1 on node A and node B", redis_publish)
        await suite.case(tag + ": API publish on node A goes through Redis to both nodes",
                         api_publish)
        await suite.case(tag + ": bridge /metrics has the wsrouter_bridge_* series",
                         bridge_metrics)
    except e.E2EError as ex:
        suite.fail(tag + ": setup", str(ex))
    finally:
        await close_clients(*clients)
        for c in (r, rsub):
            if c:
                c.close()
        for p in (na, nb, bridge, redis):
            if p:
                p.stop()


# --------------------------------------------------------------------------
#  Case 7: faults

async def case_faults(suite):
    tag = "7 faults"
    redis = nats = bridge = na = nb = None
    conns = {}
    clients = []
    try:
        redis = RedisProc().start()
        nats = NatsProc().start()
        bridge = BridgeProc(e.free_port(), redis_url=redis.url, nats_url=nats.url).start()
        secret, key = "s3cret-faults-0123456789abcdef01234", "key-faults"
        na = start_node(secret=secret, api_key=key, workers=2,
                        extra_args=["--bridge", bridge.endpoint, "--node-id", "node-a"])
        nb = start_node(secret=secret, api_key=key, workers=2,
                        extra_args=["--bridge", bridge.endpoint, "--node-id", "node-b"])
        a1 = await Client.connect(na, "u1", name="A:u1")
        ua = await Client.connect(na, "ua", name="A:ua")
        b1 = await Client.connect(nb, "u1", name="B:u1")
        ub = await Client.connect(nb, "ub", name="B:ub")
        clients.extend([a1, ua, b1, ub])
        conns["r"] = await Resp.open(redis.port)
        for name, fn in (("node A", lambda: node_readyz(na)), ("node B", lambda: node_readyz(nb)),
                         ("bridge", bridge.readyz)):
            await wait_status(fn, 200, 8.0, "before faults: %s GET /readyz" % name)
        await sync_probes(conns["r"].publish, [("ws:u1", [a1, b1]), ("ws:ua", [ua]),
                                               ("ws:ub", [ub])])

        async def rpub(name, data):
            await conns["r"].publish(name, data)

        def user_targets(prefix_tag, naming, who=("u1", "ua", "ub")):
            groups = {"u1": [a1, b1], "ua": [ua], "ub": [ub]}
            return [(naming(u), "%s.%s:" % (prefix_tag, u), groups[u]) for u in who]

        def all_open(what, which=None):
            for c in which or clients:
                c.expect_open(what)

        async def restart_redis():
            conns["r"].close()
            redis.stop()
            await wait_status(bridge.readyz, 503, 3.0, "Redis stopped: bridge GET /readyz")
            await wait_status(lambda: node_readyz(na), 503, 3.5,
                              "Redis stopped: node A GET /readyz (heartbeat says Redis down)")
            redis.start()
            t0 = time.monotonic()       # Redis answers PING again
            conns["r"] = await Resp.open(redis.port)
            took = await deliver_until(rpub, user_targets("fa", lambda u: "ws:" + u), t0, 2.0,
                                       "Redis restarted")
            all_open("Redis restart")
            await wait_status(lambda: node_readyz(na), 200, 3.0,
                              "Redis back: node A GET /readyz")
            return took

        async def lost_counted():
            m0 = bridge.metrics()["wsrouter_bridge_upstream_lost_total"]
            conns["r"].close()
            redis.stop()
            await wait_status(lambda: bridge.metrics().get("wsrouter_bridge_redis_up"), 0, 3.0,
                              "Redis stopped: bridge wsrouter_bridge_redis_up")
            for i in range(5):
                await a1.send("lost-%d" % i)
                await ub.send(b"lost-bin-%d" % i)
            t0 = time.monotonic()
            m1 = m0
            while time.monotonic() - t0 < 3.0:
                m1 = bridge.metrics()["wsrouter_bridge_upstream_lost_total"]
                if m1 > m0:
                    break
                await asyncio.sleep(0.05)
            redis.start()
            conns["r"] = await Resp.open(redis.port)
            e.expect(m1 > m0, "10 client messages sent while Redis was down: "
                     "wsrouter_bridge_upstream_lost_total stayed %r" % m0)
            all_open("client messages while Redis is down")
            await wait_status(bridge.readyz, 200, 4.0, "Redis back: bridge GET /readyz")
            await deliver_until(rpub, user_targets("fe", lambda u: "ws:" + u), time.monotonic(),
                                3.0, "Redis back after the lost-count check")

        async def restart_nats():
            nats.stop()
            await wait_status(bridge.readyz, 503, 3.0, "NATS stopped: bridge GET /readyz")
            await wait_status(lambda: node_readyz(nb), 503, 3.5,
                              "NATS stopped: node B GET /readyz (heartbeat says NATS down)")
            nats.start()
            t0 = time.monotonic()       # NATS answers PING again
            conns["n"] = await Nats.open(nats.port)
            took = await deliver_until(conns["n"].publish,
                                       user_targets("fb", lambda u: "world.updates.user." + u),
                                       t0, 2.0, "NATS restarted")
            all_open("NATS restart")
            await wait_status(lambda: node_readyz(nb), 200, 3.0, "NATS back: node B GET /readyz")
            return took

        async def restart_bridge():
            bridge.kill()
            t_kill = time.monotonic()
            took_503 = await wait_status(lambda: node_readyz(na), 503, 3.5,
                                         "bridge SIGKILLed: node A GET /readyz")
            note("bridge SIGKILLed: node A /readyz 503 after %.2f s" % took_503)
            e.expect(took_503 <= 3.0, "node A /readyz went 503 %.2f s after the bridge died, "
                     "expected within ~2.5 s" % took_503)
            await wait_status(lambda: node_readyz(nb), 503, max(0.5, 3.5 - (time.monotonic()
                                                                           - t_kill)),
                              "bridge SIGKILLed: node B GET /readyz")
            await asyncio.sleep(0.3)
            all_open("bridge down")
            bridge.start()
            t0 = bridge.ready_at
            took = await deliver_until(rpub, user_targets("fc", lambda u: "ws:" + u), t0, 2.0,
                                       "bridge restarted")
            all_open("bridge restart")
            await wait_status(lambda: node_readyz(na), 200, 3.0,
                              "bridge back: node A GET /readyz")
            await wait_status(lambda: node_readyz(nb), 200, 3.0,
                              "bridge back: node B GET /readyz")
            return took

        async def kill_node_a():
            chans = await conns["r"].channels()
            e.expect({"ws:u1", "ws:ua", "ws:ub"} <= set(chans),
                     "before killing node A: PUBSUB CHANNELS ws:* = %r" % chans)
            na.signal(signal.SIGKILL)
            na.proc.wait(5)
            t0 = time.monotonic()
            await deliver_until(rpub, [("ws:u1", "fd.u1:", [b1]), ("ws:ub", "fd.ub:", [ub])],
                                t0, 2.0, "node A killed: node B's clients")
            all_open("node A killed", [b1, ub])
            chans = None
            while time.monotonic() - t0 < 5.0:
                chans = await conns["r"].channels()
                if "ws:ua" not in chans:
                    break
                await asyncio.sleep(0.1)
            note("node A SIGKILLed: ws:ua gone after %.2f s" % (time.monotonic() - t0))
            e.expect("ws:ua" not in chans, "node A SIGKILLed: ws:ua (a user only A had) still "
                     "subscribed after %.1f s; PUBSUB CHANNELS ws:* = %r"
                     % (time.monotonic() - t0, chans))
            chans = await conns["r"].channels()
            e.expect({"ws:u1", "ws:ub"} <= set(chans),
                     "node B still has u1 and ub: PUBSUB CHANNELS ws:* = %r" % chans)

        await suite.case(tag + " (a): Redis restart — sessions stay, delivery within 2 s of "
                         "PING, no duplicates", restart_redis, timeout=30)
        await suite.case(tag + " (e): client messages while Redis is down counted in "
                         "upstream_lost_total", lost_counted, timeout=30)
        await suite.case(tag + " (b): NATS restart — sessions stay, delivery within 2 s of "
                         "PING, no duplicates", restart_nats, timeout=30)
        await suite.case(tag + " (c): bridge SIGKILL + restart — /readyz 503 while down, "
                         "delivery within 2 s, no duplicates", restart_bridge, timeout=30)
        await suite.case(tag + " (d): node A SIGKILL — node B keeps receiving, A-only users "
                         "unsubscribed within 5 s", kill_node_a, timeout=30)
    except e.E2EError as ex:
        suite.fail(tag + ": setup", str(ex))
    finally:
        await close_clients(*clients)
        for c in conns.values():
            c.close()
        for p in (na, nb, bridge, nats, redis):
            if p:
                p.stop()


# --------------------------------------------------------------------------

async def body(suite):
    e.require(REDIS_SERVER, NATS_SERVER)

    async def all_cases():
        await case_redis_inproc(suite)
        await case_nats_inproc(suite)
        await case_upstream(suite)
        await case_http_upstream(suite)
        await case_dynamic(suite)
        await case_two_nodes(suite)
        await case_faults(suite)

    t0 = time.monotonic()
    try:
        await asyncio.wait_for(all_cases(), SUITE_LIMIT_S)
    except asyncio.TimeoutError:
        suite.fail("suite", "did not finish within %.0f s" % SUITE_LIMIT_S)
    finally:
        stop_everything()
        for obj in _STARTED:
            d = getattr(obj, "dir", None)
            if d:
                shutil.rmtree(d, ignore_errors=True)
    print("suite time %.1f s" % (time.monotonic() - t0), flush=True)


if __name__ == "__main__":
    e.main("e2e_bridge", body)
