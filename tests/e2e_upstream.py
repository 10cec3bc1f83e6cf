#!/usr/bin/python3
"""e2e_upstream — what clients send is published on the ZeroMQ PUB socket at
--upstream-endpoint as [b"up:" + user + b"\\0", msgpack envelope], observed
here with an independent python3-zmq SUB socket; plus the client-side limits:
messages over --max-message close 1009, invalid UTF-8 text closes 1007."""

import os
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import asyncio  # noqa: E402
import random  # noqa: E402
import time  # noqa: E402

import msgpack  # noqa: E402
import zmq  # noqa: E402
import zmq.asyncio  # noqa: E402
from websockets.frames import OP_CONT, OP_TEXT  # noqa: E402

import wsr_e2e as e  # noqa: E402

PROBE = b"probe:"
ENVELOPE_KEYS = {"v", "u", "s", "n", "ts", "k", "d"}


class Upstream:
    """A SUB socket on the server's upstream endpoint."""

    def __init__(self, endpoint):
        self.ctx = zmq.asyncio.Context()
        self.sub = self.ctx.socket(zmq.SUB)
        self.sub.setsockopt(zmq.LINGER, 0)
        self.sub.setsockopt(zmq.RCVHWM, 0)
        self.sub.setsockopt(zmq.SUBSCRIBE, b"up:")
        self.sub.connect(endpoint)

    async def recv_raw(self, timeout):
        return await asyncio.wait_for(self.sub.recv_multipart(), timeout)

    async def sync(self, ws, limit=10.0):
        """PUB/SUB joins asynchronously: send probes from ws until one is seen,
        then drain the stragglers."""
        deadline = time.monotonic() + limit
        n = 0
        while time.monotonic() < deadline:
            await ws.send(PROBE + str(n).encode())
            n += 1
            try:
                frames = await self.recv_raw(0.1)
            except asyncio.TimeoutError:
                continue
            if len(frames) == 2 and frames[1] and PROBE in frames[1]:
                break
        else:
            raise e.E2EError("upstream: no probe message observed on %s within %.0f s "
                             "(%d probes sent)" % ("the SUB socket", limit, n))
        await self.drain(0.3)

    async def drain(self, quiet):
        """Discard messages until none arrives for `quiet` seconds."""
        while True:
            try:
                await self.recv_raw(quiet)
            except asyncio.TimeoutError:
                return

    async def next(self, user=None, timeout=5.0, what="upstream message"):
        """Next non-probe message (of user, if given): (topic, envelope dict)."""
        deadline = time.monotonic() + timeout
        while True:
            left = deadline - time.monotonic()
            if left <= 0:
                raise e.E2EError("expected %s within %.1f s, observed nothing" % (what, timeout))
            try:
                frames = await self.recv_raw(left)
            except asyncio.TimeoutError:
                continue
            e.expect(len(frames) == 2, "%s: expected 2 frames, got %d: %r"
                     % (what, len(frames), [e.short(f) for f in frames]))
            topic, payload = frames
            try:
                env = msgpack.unpackb(payload, raw=False)
            except Exception as ex:
                raise e.E2EError("%s: frame 2 is not msgpack (%s): %r"
                                 % (what, ex, e.short(payload)))
            e.expect(isinstance(env, dict), "%s: envelope is not a map: %r" % (what, env))
            d = env.get("d")
            if isinstance(d, (bytes, str)) and (d.encode() if isinstance(d, str)
                                                else d).startswith(PROBE):
                continue
            if user is not None and env.get("u") != user:
                continue
            return topic, env

    def close(self):
        self.sub.close(0)
        self.ctx.term()


def check_envelope(topic, env, user, kind, data, what):
    e.expect_eq(topic, b"up:" + user.encode() + b"\x00", what + ": topic frame")
    e.expect(set(env) >= ENVELOPE_KEYS, "%s: envelope keys %r, expected at least %r"
             % (what, sorted(env), sorted(ENVELOPE_KEYS)))
    e.expect_eq(env["v"], 1, what + ": v")
    e.expect_eq(env["u"], user, what + ": u")
    e.expect(isinstance(env["s"], int) and not isinstance(env["s"], bool),
             "%s: s must be an int, got %r" % (what, env["s"]))
    e.expect(isinstance(env["n"], str) and env["n"], "%s: n must be a non-empty str, got %r"
             % (what, env["n"]))
    now_us = int(time.time() * 1e6)
    e.expect(isinstance(env["ts"], int) and abs(env["ts"] - now_us) < 60 * 1000000,
             "%s: ts must be µs since the epoch near %d, got %r" % (what, now_us, env["ts"]))
    e.expect_eq(env["k"], kind, what + ": k (1 text, 2 binary)")
    e.expect(isinstance(env["d"], bytes), "%s: d must be msgpack bin (bytes), got %s %r"
             % (what, type(env["d"]).__name__, e.short_any(env["d"])))
    e.expect_eq(env["d"], data, what + ": d")


async def body(suite):
    srv = e.start_server(upstream=True, workers=2)
    up = Upstream(srv.upstream_endpoint)
    try:
        await upstream_cases(suite, srv, up)
    finally:
        up.close()
        srv.stop()
    await limit_cases(suite)


async def upstream_cases(suite, srv, up):
    alice = await e.connect(srv.ws_url(srv.mint("alice")))
    alice2 = await e.connect(srv.ws_url(srv.mint("alice")))
    bob = await e.connect(srv.ws_url(srv.mint("bob")))
    await e.settle(srv, 3)

    async def synced():
        await up.sync(alice)
        await up.sync(bob)

    async def text_message():
        await alice.send("hello upstream ✓")
        topic, env = await up.next("alice", what="alice's text message")
        check_envelope(topic, env, "alice", 1, "hello upstream ✓".encode(), "text")

    async def binary_message():
        data = b"\x00\x01\xff\xfe bin \x00"
        await bob.send(data)
        topic, env = await up.next("bob", what="bob's binary message")
        check_envelope(topic, env, "bob", 2, data, "binary")
        #  Binary that happens to be valid UTF-8 is still binary
        await bob.send(b"plain ascii")
        topic, env = await up.next("bob", what="bob's ascii binary message")
        check_envelope(topic, env, "bob", 2, b"plain ascii", "ascii binary")

    async def fragmented():
        await alice.send(["frag", "ment", "ed ✓"])
        topic, env = await up.next("alice", what="fragmented text")
        check_envelope(topic, env, "alice", 1, "fragmented ✓".encode(), "fragmented text")

        async def gen():
            for part in (b"\x00\x01", b"", b"\xff" * 1000, b"end"):
                yield part
        await alice.send(gen())
        topic, env = await up.next("alice", what="fragmented binary")
        check_envelope(topic, env, "alice", 2, b"\x00\x01" + b"\xff" * 1000 + b"end",
                       "fragmented binary (async iterator)")
        #  A UTF-8 character split across two fragments is valid text
        await alice.write_frame(False, OP_TEXT, b"caf\xc3")
        await alice.write_frame(True, OP_CONT, b"\xa9!")
        topic, env = await up.next("alice", what="text with a character split across fragments")
        check_envelope(topic, env, "alice", 1, "café!".encode(), "split UTF-8 character")

    async def session_ids_differ():
        await alice.send("from session A")
        _, env_a = await up.next("alice", what="message from alice's first session")
        await alice2.send("from session B")
        _, env_b = await up.next("alice", what="message from alice's second session")
        e.expect_eq(env_a["d"], b"from session A", "first session's data")
        e.expect_eq(env_b["d"], b"from session B", "second session's data")
        e.expect(env_a["s"] != env_b["s"], "two sessions of alice share session id %r"
                 % env_a["s"])
        await alice.send("A again")
        _, env_a2 = await up.next("alice", what="second message from alice's first session")
        e.expect_eq(env_a2["s"], env_a["s"], "session id stable within a session")
        await bob.send("bob")
        _, env_bob = await up.next("bob")
        e.expect(env_bob["s"] not in (env_a["s"], env_b["s"]),
                 "bob's session id %r equals one of alice's" % env_bob["s"])
        e.expect_eq(env_bob["n"], env_a["n"], "node id (one node)")

    async def order_and_empty():
        for i in range(200):
            await bob.send("seq %03d" % i)
        for i in range(200):
            _, env = await up.next("bob", what="bob's message %d" % i)
            e.expect_eq(env["d"], ("seq %03d" % i).encode(), "upstream order, message %d" % i)
        await bob.send("")
        topic, env = await up.next("bob", what="empty text message")
        check_envelope(topic, env, "bob", 1, b"", "empty text message")

    async def one_mib_upstream():
        data = random.Random(3).randbytes(1024 * 1024)
        await alice.send(data)
        topic, env = await up.next("alice", timeout=10, what="1 MiB binary message")
        check_envelope(topic, env, "alice", 2, data, "1 MiB binary (exactly --max-message)")

    async def messages_in_metric():
        before = srv.metrics().get("wsrouter_messages_in_total")
        e.expect(before is not None, "/metrics has no wsrouter_messages_in_total")
        await bob.send("count me")
        await bob.send(b"and me")
        await up.next("bob")
        await up.next("bob")
        after = srv.metrics().get("wsrouter_messages_in_total")
        e.expect_eq(after - before, 2, "wsrouter_messages_in_total increase after 2 messages")

    try:
        await suite.case("upstream subscriber joined (probe seen)", synced)
        await suite.case("text message → k=1, user, bytes", text_message)
        await suite.case("binary message → k=2, bytes", binary_message)
        await suite.case("fragmented text/binary messages reassembled", fragmented)
        await suite.case("session ids differ between sessions", session_ids_differ)
        await suite.case("200 client messages in order, empty message", order_and_empty)
        await suite.case("1 MiB client message forwarded intact", one_mib_upstream)
        await suite.case("messages_in_total counts client messages", messages_in_metric)
    finally:
        await e.close_all(alice, alice2, bob)


async def send_expect_close(ws, payload, code, what):
    """Send; the server may close while we are still writing, which is fine
    as long as the close code is the expected one."""
    try:
        await ws.send(payload)
    except e.ConnectionClosed as ex:
        got = e.close_code(ex)
        e.expect(got == code, "%s: expected close code %d, got %s (reason %r)"
                 % (what, code, got, e.close_reason(ex)))
        return
    await e.expect_close(ws, code, what=what)


async def limit_cases(suite):
    """Separate servers: one with --max-message 1000, one with the default."""
    try:
        small = e.start_server(max_message=1000)
    except e.E2EError as ex:
        suite.fail("limits: server start", str(ex))
        return
    try:
        async def at_limit_ok():
            ws = await e.connect(small.ws_url(small.mint("lim")))
            try:
                await e.settle(small, 1)
                await ws.send("x" * 1000)
                await ws.send(b"\x00" * 1000)
                small.publish(user="lim", data="still open")
                e.expect_eq(await e.recv(ws, what="message after two 1000-byte sends"),
                            "still open", "session open after messages of exactly max-message")
            finally:
                await e.close_all(ws)

        async def over_limit(payload, what):
            ws = await e.connect(small.ws_url(small.mint("lim")))
            try:
                await send_expect_close(ws, payload, 1009, what)
            finally:
                await e.close_all(ws)

        async def over_text():
            await over_limit("x" * 1001, "1001-byte text with --max-message 1000")

        async def over_binary():
            await over_limit(b"\x00" * 1001, "1001-byte binary with --max-message 1000")

        async def over_fragmented():
            await over_limit([b"\x00" * 600, b"\x00" * 401],
                             "fragments totalling 1001 bytes with --max-message 1000")

        async def invalid_utf8(frames, what):
            ws = await e.connect(small.ws_url(small.mint("utf")))
            try:
                for fin, op, data in frames:
                    await ws.write_frame(fin, op, data)
                await e.expect_close(ws, 1007, what=what)
            finally:
                await e.close_all(ws)

        async def utf8_bad_byte():
            await invalid_utf8([(True, OP_TEXT, b"ok \xff\xfe")], "text frame with 0xFF 0xFE")

        async def utf8_overlong():
            await invalid_utf8([(True, OP_TEXT, b"\xc0\xaf")], "overlong encoding of '/'")

        async def utf8_surrogate():
            await invalid_utf8([(True, OP_TEXT, b"\xed\xa0\x80")], "UTF-16 surrogate U+D800")

        async def utf8_fragments():
            await invalid_utf8([(False, OP_TEXT, b"abc\xc3"), (True, OP_CONT, b"(")],
                               "invalid sequence across fragments")

        async def utf8_truncated():
            await invalid_utf8([(True, OP_TEXT, b"end \xe2\x82")],
                               "text ending inside a character")

        await suite.case("limit: exactly --max-message accepted", at_limit_ok)
        await suite.case("limit: text over --max-message → 1009", over_text)
        await suite.case("limit: binary over --max-message → 1009", over_binary)
        await suite.case("limit: fragmented over --max-message → 1009", over_fragmented)
        await suite.case("utf-8: invalid bytes → 1007", utf8_bad_byte)
        await suite.case("utf-8: overlong → 1007", utf8_overlong)
        await suite.case("utf-8: surrogate → 1007", utf8_surrogate)
        await suite.case("utf-8: invalid across fragments → 1007", utf8_fragments)
        await suite.case("utf-8: truncated at end → 1007", utf8_truncated)
    finally:
        small.stop()

    try:
        default = e.start_server()
    except e.E2EError as ex:
        suite.fail("default limit: server start", str(ex))
        return
    try:
        async def default_over():
            ws = await e.connect(default.ws_url(default.mint("big")))
            try:
                await send_expect_close(ws, b"\x01" * (1024 * 1024 + 1), 1009,
                                        "1 MiB + 1 byte with the default limit")
            finally:
                await e.close_all(ws)

        await suite.case("limit: default 1 MiB, 1 MiB + 1 → 1009", default_over)
    finally:
        default.stop()


if __name__ == "__main__":
    e.main("e2e_upstream", body)
