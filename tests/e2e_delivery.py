#!/usr/bin/python3
"""e2e_delivery — messages published via the HTTP API or the CLI reach the
right sessions, intact and in order."""

import os
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import asyncio  # noqa: E402
import base64  # noqa: E402
import json  # noqa: E402
import random  # noqa: E402
import string  # noqa: E402
import threading  # noqa: E402
import time  # noqa: E402

import wsr_e2e as e  # noqa: E402

ORDER_COUNT = 10000
ORDER_PUBLISH_LIMIT_S = 60.0


async def body(suite):
    server = e.start_server(workers=2)
    try:
        await run_cases(suite, server)
    finally:
        server.stop()


async def run_cases(suite, srv):

    async def http_publish_delivered():
        ws = await e.connect(srv.ws_url(srv.mint("alice")))
        try:
            await e.settle(srv, 1)
            srv.publish(user="alice", data="hello alice")
            msg = await e.recv(ws, what="published message")
            e.expect_eq(msg, "hello alice", "message delivered to alice")
            e.expect(isinstance(msg, str), "expected a text frame, got binary %r" % (msg,))
        finally:
            await e.close_all(ws)

    async def cli_publish_delivered():
        ws = await e.connect(srv.ws_url(srv.mint("bob", channels=["news"])))
        try:
            await e.settle(srv, 1)
            r = e.run_cli(["publish", "--user", "bob", "hello from the cli",
                           "--url", srv.http_url, "--api-key", srv.api_key])
            e.expect(r.returncode == 0, "wsrouter publish --user exited %d; stdout %r stderr %r"
                     % (r.returncode, r.stdout[-500:], r.stderr[-500:]))
            msg = await e.recv(ws, what="CLI-published message")
            e.expect_eq(msg, "hello from the cli", "CLI publish --user delivered")
            r = e.run_cli(["publish", "--channel", "news", "channel via cli",
                           "--url", srv.http_url, "--api-key", srv.api_key])
            e.expect(r.returncode == 0, "wsrouter publish --channel exited %d; stderr %r"
                     % (r.returncode, r.stderr[-500:]))
            msg = await e.recv(ws, what="CLI-published channel message")
            e.expect_eq(msg, "channel via cli", "CLI publish --channel delivered")
            #  A wrong API key makes the CLI fail, and nothing is delivered
            r = e.run_cli(["publish", "--user", "bob", "must not arrive",
                           "--url", srv.http_url, "--api-key", srv.api_key + "x"])
            e.expect(r.returncode != 0, "wsrouter publish with a wrong api key exited 0")
            await e.expect_silence(ws, 0.3, "bob after a refused CLI publish")
        finally:
            await e.close_all(ws)

    async def every_session_of_user():
        socks = [await e.connect(srv.ws_url(srv.mint("carol"))) for _ in range(3)]
        try:
            await e.settle(srv, 3)
            srv.publish(user="carol", data="to all of carol")
            srv.publish(user="carol", data={"n": 2})
            for i, ws in enumerate(socks):
                msg = await e.recv(ws, what="message on carol's session %d" % i)
                e.expect_eq(msg, "to all of carol", "carol session %d first message" % i)
                msg = await e.recv(ws, what="second message on carol's session %d" % i)
                e.expect_eq(msg, '{"n":2}', "carol session %d second message" % i)
        finally:
            await e.close_all(*socks)

    async def exact_user_matching():
        u1 = await e.connect(srv.ws_url(srv.mint("u1")))
        u10 = await e.connect(srv.ws_url(srv.mint("u10")))
        u1x = await e.connect(srv.ws_url(srv.mint("u1x")))
        U1 = await e.connect(srv.ws_url(srv.mint("U1")))
        try:
            await e.settle(srv, 4)
            srv.publish(user="u10", data="for u10")
            srv.publish(user="u1x", data="for u1x")
            srv.publish(user="U1", data="for U1")
            srv.publish(user="u", data="for u")
            srv.publish(user="u1", data="for u1")
            msg = await e.recv(u1, what="u1's own message")
            e.expect_eq(msg, "for u1", "u1's next message (messages to u10/u1x/U1/u must not match)")
            e.expect_eq(await e.recv(u10), "for u10", "u10's message")
            e.expect_eq(await e.recv(u1x), "for u1x", "u1x's message")
            e.expect_eq(await e.recv(U1), "for U1", "U1's message (ids are case-sensitive)")
            await e.expect_silence(u1, 0.3, "u1")
            await e.expect_silence(u10, 0.1, "u10 (must not get u1's message)")
            await e.expect_silence(u1x, 0.1, "u1x (must not get u1's message)")
            await e.expect_silence(U1, 0.1, "U1 (must not get u1's message)")
        finally:
            await e.close_all(u1, u10, u1x, U1)

    async def channels_claim():
        a = await e.connect(srv.ws_url(srv.mint("dave", channels=["room.7", "lobby"])))
        b = await e.connect(srv.ws_url(srv.mint("erin", channels=["room.7"])))
        c = await e.connect(srv.ws_url(srv.mint("frank")))
        d = await e.connect(srv.ws_url(srv.mint("gina", channels=["room.70", "room"])))
        try:
            await e.settle(srv, 4)
            srv.publish(channel="room.7", data="to room.7")
            srv.publish(user="frank", data="frank marker")
            srv.publish(user="gina", data="gina marker")
            e.expect_eq(await e.recv(a, what="channel message"), "to room.7", "dave (room.7)")
            e.expect_eq(await e.recv(b, what="channel message"), "to room.7", "erin (room.7)")
            #  Users without the channel see only their own marker next
            e.expect_eq(await e.recv(c), "frank marker",
                        "frank (no channels) next message")
            e.expect_eq(await e.recv(d), "gina marker",
                        "gina (room.70, room: not room.7) next message")
            srv.publish(channel="lobby", data="to lobby")
            e.expect_eq(await e.recv(a), "to lobby", "dave (lobby)")
            await e.expect_silence(b, 0.3, "erin (not in lobby)")
            #  A user-addressed message is not a channel message, and vice versa
            srv.publish(user="room.7", data="user named room.7")
            srv.publish(channel="erin", data="channel named erin")
            await e.expect_silence(a, 0.2, "dave")
            await e.expect_silence(b, 0.2, "erin")
        finally:
            await e.close_all(a, b, c, d)

    async def order_10000():
        ws = await e.connect(srv.ws_url(srv.mint("orderly")))
        try:
            await e.settle(srv, 1)
            outcome = {"error": None, "elapsed": None, "stopped": False}
            stop = threading.Event()

            def publisher():
                pub = e.Publisher(srv.port, srv.api_key)
                t0 = time.monotonic()
                try:
                    for i in range(ORDER_COUNT):
                        if stop.is_set():
                            return
                        if time.monotonic() - t0 > ORDER_PUBLISH_LIMIT_S:
                            outcome["stopped"] = True
                            outcome["error"] = ("publishing was too slow: %d of %d requests in "
                                                "%.0f s" % (i, ORDER_COUNT, ORDER_PUBLISH_LIMIT_S))
                            return
                        r = pub.post({"user": "orderly", "data": "m%05d" % i})
                        if not 200 <= r.status < 300:
                            outcome["error"] = "publish #%d: expected 2xx, got %r" % (i, r)
                            return
                    outcome["elapsed"] = time.monotonic() - t0
                except Exception as ex:
                    outcome["error"] = "publish failed: %s: %s" % (type(ex).__name__, ex)
                finally:
                    pub.close()

            thread = threading.Thread(target=publisher, daemon=True)
            thread.start()
            try:
                for i in range(ORDER_COUNT):
                    try:
                        msg = await e.recv(ws, timeout=15.0, what="message #%d" % i)
                    except e.E2EError:
                        if outcome["error"]:
                            raise e.E2EError(outcome["error"])
                        raise
                    if msg != "m%05d" % i:
                        raise e.E2EError("order: message #%d expected %r, observed %r"
                                         % (i, "m%05d" % i, e.short_any(msg)))
            finally:
                stop.set()
                await asyncio.get_running_loop().run_in_executor(None, thread.join, 30)
            if outcome["error"]:
                raise e.E2EError(outcome["error"])
            await e.expect_silence(ws, 0.3, "after 10,000 messages (duplicates?)")
            print("  info: %d sequential publishes in %.1f s" % (ORDER_COUNT, outcome["elapsed"]),
                  flush=True)
        finally:
            await e.close_all(ws)

    async def one_mib_binary():
        ws = await e.connect(srv.ws_url(srv.mint("big")))
        try:
            await e.settle(srv, 1)
            payload = random.Random(7).randbytes(1024 * 1024)
            srv.publish(user="big", data_base64=base64.b64encode(payload).decode())
            msg = await e.recv(ws, timeout=15.0, what="1 MiB binary message")
            e.expect(isinstance(msg, bytes),
                     "1 MiB of random bytes (invalid UTF-8) must arrive as a binary frame, "
                     "got a text frame of %d chars" % len(msg))
            e.expect(len(msg) == len(payload), "1 MiB binary: expected %d bytes, got %d"
                     % (len(payload), len(msg)))
            if msg != payload:
                raise e.E2EError("1 MiB binary: bytes differ (first difference at %d)"
                                 % next(i for i in range(len(msg)) if msg[i] != payload[i]))
        finally:
            await e.close_all(ws)

    async def one_mib_text():
        ws = await e.connect(srv.ws_url(srv.mint("bigtext")))
        try:
            await e.settle(srv, 1)
            rnd = random.Random(8)
            alphabet = string.ascii_letters + string.digits + " .,-"
            text = "".join(rnd.choice(alphabet) for _ in range(1024 * 1024))
            srv.publish(user="bigtext", data=text)
            msg = await e.recv(ws, timeout=15.0, what="1 MiB text message")
            e.expect(isinstance(msg, str), "1 MiB text must arrive as a text frame, got binary")
            e.expect(len(msg) == len(text), "1 MiB text: expected %d chars, got %d"
                     % (len(text), len(msg)))
            e.expect(msg == text, "1 MiB text: content differs")
        finally:
            await e.close_all(ws)

    async def one_mib_text_escaped():
        #  1 MiB of UTF-8 text full of characters JSON must escape or that take
        #  several bytes: the API body is larger than the message itself.
        ws = await e.connect(srv.ws_url(srv.mint("bigesc")))
        try:
            await e.settle(srv, 1)
            rnd = random.Random(9)
            pieces = ["a", "b", " ", '"', "\\", "\n", "\t", "é", "日", "🎉", "/", "<"]
            parts, size = [], 0
            while size < 1024 * 1024 - 4:
                p = rnd.choice(pieces)
                parts.append(p)
                size += len(p.encode())
            parts.append("x" * (1024 * 1024 - size))
            text = "".join(parts)
            e.expect_eq(len(text.encode()), 1024 * 1024, "test setup: UTF-8 size")
            srv.publish(user="bigesc", data=text, ensure_ascii=False)
            msg = await e.recv(ws, timeout=15.0, what="1 MiB escaped text message")
            e.expect(isinstance(msg, str), "1 MiB text must arrive as a text frame, got binary")
            e.expect(msg == text, "1 MiB escaped text: content differs (%d chars vs %d)"
                     % (len(msg), len(text)))
        finally:
            await e.close_all(ws)

    async def utf8_and_base64_text():
        ws = await e.connect(srv.ws_url(srv.mint("uni")))
        try:
            await e.settle(srv, 1)
            s = "héllo wörld — 日本語 🎉 \"quoted\" \\ \n tab\t"
            srv.publish(user="uni", data=s)
            e.expect_eq(await e.recv(ws), s, "non-ASCII JSON string delivered as its contents")
            srv.publish(user="uni", data_base64=base64.b64encode("plain ✓".encode()).decode())
            msg = await e.recv(ws)
            e.expect_eq(msg, "plain ✓", "data_base64 of valid UTF-8 delivered as a text frame")
            srv.publish(user="uni", data_base64=base64.b64encode(b"\x00\xff\xfe\x01").decode())
            msg = await e.recv(ws)
            e.expect_eq(msg, b"\x00\xff\xfe\x01", "data_base64 of invalid UTF-8 as a binary frame")
            srv.publish(user="uni", data="")
            e.expect_eq(await e.recv(ws), "", "empty string delivered as an empty text message")
        finally:
            await e.close_all(ws)

    async def json_compact():
        ws = await e.connect(srv.ws_url(srv.mint("jsonuser")))
        try:
            await e.settle(srv, 1)
            srv.publish(user="jsonuser", data={"a": 1})
            e.expect_eq(await e.recv(ws), '{"a":1}', "object data")
            nested = {"a": [1, {"b": "c d"}, None, True], "e": 2.5}
            srv.publish(user="jsonuser", data=nested)
            msg = await e.recv(ws)
            e.expect(isinstance(msg, str), "object data must be a text frame")
            e.expect_eq(json.loads(msg), nested, "nested object data (parsed)")
            e.expect(msg == json.dumps(nested, separators=(",", ":"))
                     or msg == json.dumps(nested, separators=(",", ":"), sort_keys=True),
                     "nested object not compact: %r" % msg)
            for value, want in ((42, "42"), ([1, 2, "x"], '[1,2,"x"]'), (True, "true"),
                                (None, "null")):
                srv.publish(user="jsonuser", data=value)
                e.expect_eq(await e.recv(ws), want, "data %r" % (value,))
        finally:
            await e.close_all(ws)

    async def publish_right_after_open():
        #  The client sees the 101 and asks for a message at once: it must
        #  arrive (no window after the handshake where messages are lost).
        lost = []
        for i in range(10):
            ws = await e.connect(srv.ws_url(srv.mint("eager%d" % i)))
            try:
                srv.publish(user="eager%d" % i, data="first %d" % i)
                try:
                    msg = await e.recv(ws, timeout=3.0)
                    e.expect_eq(msg, "first %d" % i, "eager%d first message" % i)
                except e.E2EError as ex:
                    lost.append("attempt %d: %s" % (i, ex))
            finally:
                await e.close_all(ws)
        e.expect(not lost, "%d of 10 messages published right after the handshake were not "
                 "delivered: %s" % (len(lost), lost[0] if lost else ""))

    async def token_from_cli_works():
        r = e.run_cli(["token", "--sub", "clitok", "--ttl", "600", "--channels", "c1,c2"],
                      env={"JWT_SECRET_KEY": srv.secret})
        e.expect(r.returncode == 0, "wsrouter token exited %d: %r" % (r.returncode, r.stderr))
        token = r.stdout.decode().strip()
        e.expect(token.count(".") == 2, "wsrouter token printed no JWT: %r" % token)
        ws = await e.connect(srv.ws_url(token))
        try:
            await e.settle(srv, 1)
            srv.publish(channel="c2", data="on c2")
            srv.publish(user="clitok", data="direct")
            e.expect_eq(await e.recv(ws), "on c2", "CLI token channel c2")
            e.expect_eq(await e.recv(ws), "direct", "CLI token user message")
        finally:
            await e.close_all(ws)

    await suite.case("http publish delivered to user", http_publish_delivered)
    await suite.case("cli publish delivered (user, channel, bad key)", cli_publish_delivered)
    await suite.case("every session of a user (3) receives", every_session_of_user)
    await suite.case("exact matching: u1 never gets u10/u1x/U1/u", exact_user_matching)
    await suite.case("channels claim: members get it, others don't", channels_claim)
    await suite.case("token minted by wsrouter token works", token_from_cli_works)
    await suite.case("publish right after the handshake is delivered", publish_right_after_open)
    await suite.case("order kept for 10,000 messages", order_10000, timeout=150)
    await suite.case("1 MiB random bytes via data_base64 → binary, intact", one_mib_binary)
    await suite.case("1 MiB text intact", one_mib_text)
    await suite.case("1 MiB text with JSON escapes / multibyte intact", one_mib_text_escaped)
    await suite.case("unicode text, base64 text/binary, empty", utf8_and_base64_text)
    await suite.case("JSON values delivered as compact serialization", json_compact)


if __name__ == "__main__":
    e.main("e2e_delivery", body)
