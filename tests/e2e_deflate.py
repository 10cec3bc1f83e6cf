#!/usr/bin/python3
"""e2e_deflate — permessage-deflate (RFC 7692): negotiation and declined
offers, round trips of compressible, incompressible and small messages with
Python websockets (compression="deflate"), one compression per message per
worker shared by every deflate recipient, fragmented compressed messages, a
zip bomb (1009), corrupt data (1007), RSV1 without negotiation (1002),
WEBSOCKET_DEFLATE=0, and deflate over wss."""

import os
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import asyncio  # noqa: E402
import json  # noqa: E402
import socket  # noqa: E402
import time  # noqa: E402
import zlib  # noqa: E402

import wsr_e2e as e  # noqa: E402

try:
    import websockets  # noqa: E402
except ImportError:
    websockets = None

OUR_ANSWER = "permessage-deflate; server_no_context_takeover; client_no_context_takeover"


def compress(data, wbits=-15):
    c = zlib.compressobj(6, zlib.DEFLATED, wbits)
    out = c.compress(data) + c.flush(zlib.Z_SYNC_FLUSH)
    assert out.endswith(b"\x00\x00\xff\xff")
    return out[:-4]


def inflate(data):
    d = zlib.decompressobj(-15)
    return d.decompress(data + b"\x00\x00\xff\xff")


class Raw(e.RawWs):
    """RawWs that keeps the response headers and reads RSV bits."""

    def frame(self, timeout=10.0):
        deadline = time.monotonic() + timeout
        b0, b1 = self._read(2, deadline)
        n = b1 & 0x7F
        if n == 126:
            n = int.from_bytes(self._read(2, deadline), "big")
        elif n == 127:
            n = int.from_bytes(self._read(8, deadline), "big")
        return b0, self._read(n, deadline)

    def send_raw(self, first_byte, payload):
        n = len(payload)
        if n < 126:
            header = bytes([first_byte, 0x80 | n])
        elif n < 65536:
            header = bytes([first_byte, 0x80 | 126]) + n.to_bytes(2, "big")
        else:
            header = bytes([first_byte, 0x80 | 127]) + n.to_bytes(8, "big")
        mask = os.urandom(4)
        self.sock.sendall(header + mask + bytes(b ^ mask[i % 4] for i, b in enumerate(payload)))

    def close_code(self, timeout=5.0):
        """Read frames until a close; its code."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            b0, payload = self.frame(deadline - time.monotonic())
            if b0 & 0x0F == 8:
                return int.from_bytes(payload[:2], "big") if len(payload) >= 2 else None
        raise e.E2EError("no close frame")


def raw_connect(srv, user, offer):
    headers = {"Sec-WebSocket-Extensions": offer} if offer else None
    raw = Raw(srv.port, "/ws?token=" + srv.mint(user), headers=headers)
    return raw


def ext_header(srv, offer):
    """Send an upgrade with this offer; the extension header of the 101."""
    s = socket.create_connection(("127.0.0.1", srv.port), timeout=5)
    req = ("GET /ws?token=%s HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\n"
           "Connection: Upgrade\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n"
           "Sec-WebSocket-Version: 13\r\n%s\r\n"
           % (srv.mint("neg"), ("Sec-WebSocket-Extensions: %s\r\n" % offer) if offer else ""))
    s.sendall(req.encode())
    data = b""
    while b"\r\n\r\n" not in data:
        chunk = s.recv(4096)
        if not chunk:
            break
        data += chunk
    s.close()
    head = data.split(b"\r\n\r\n")[0].decode("latin-1")
    e.expect(" 101 " in head.split("\r\n")[0] + " ", "offer %r: expected 101, got %r"
             % (offer, head[:80]))
    for line in head.split("\r\n"):
        if line.lower().startswith("sec-websocket-extensions:"):
            return line.split(":", 1)[1].strip()
    return None


async def wait_metric(srv, name, want, timeout=5.0):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        got = srv.metrics().get(name, 0)
        if got >= want:
            return got
        await asyncio.sleep(0.05)
    return srv.metrics().get(name, 0)


async def body(suite):
    if websockets is None:
        e.skip_suite("python3-websockets not installed")
    srv = e.start_server(workers=1, max_message=65536, upstream=True)
    try:
        await cases(suite, srv)
    finally:
        srv.stop()
    await suite.case("WEBSOCKET_DEFLATE=0 declines every offer", deflate_off)


async def cases(suite, srv):
    async def negotiation():
        e.expect_eq(ext_header(srv, "permessage-deflate"), OUR_ANSWER, "plain offer")
        e.expect_eq(ext_header(srv, "permessage-deflate; client_max_window_bits"), OUR_ANSWER,
                    "browser offer")
        e.expect_eq(ext_header(srv, "permessage-deflate; server_max_window_bits=10, "
                                    "permessage-deflate"), OUR_ANSWER,
                    "first offer limits our window, second taken")
        for nonsense in ("permessage-deflate; server_max_window_bits=10",
                         "permessage-deflate; client_max_window_bits=99",
                         "permessage-deflate; foo=bar",
                         "permessage-deflate; server_no_context_takeover=yes",
                         "permessage-deflate; client_no_context_takeover; "
                         "client_no_context_takeover",
                         "x-webkit-deflate-frame"):
            e.expect_eq(ext_header(srv, nonsense), None, "declined offer %r" % nonsense)
        e.expect_eq(ext_header(srv, None), None, "no offer")
    await suite.case("negotiation: accepted and declined offers, never a failed handshake",
                     negotiation)

    async def round_trips():
        url = srv.ws_url(srv.mint("d1"))
        async with websockets.connect(url, compression="deflate") as ws:
            e.expect("permessage-deflate" in (ws.response_headers.get(
                "Sec-WebSocket-Extensions") or ""), "websockets negotiated deflate")
            doc = json.dumps([{"id": i, "name": "player-%d" % i, "score": i * 7}
                              for i in range(60)])
            noise = os.urandom(4096)
            for data, kw in ((doc, {"data": doc}), ("tiny", {"data": "tiny"}),
                             (noise, {"data_base64": __import__("base64").b64encode(
                                 noise).decode()})):
                srv.publish(user="d1", **kw)
                got = await asyncio.wait_for(ws.recv(), 5)
                e.expect_eq(got, data, "round trip of a %d-byte message" % len(data))
            #  Client → server, compressed by websockets
            before = srv.metrics().get("wsrouter_bytes_in_total", 0)
            await ws.send(doc)
            await ws.send(noise)
            got = await wait_metric(srv, "wsrouter_bytes_in_total", before + len(doc) + 4096)
            e.expect_eq(got - before, len(doc) + 4096, "inflated bytes received")
        m = srv.metrics()
        e.expect(m.get("wsrouter_deflate_bytes_total{stage=\"out\"}", 0)
                 < m.get("wsrouter_deflate_bytes_total{stage=\"in\"}", 1),
                 "compressed output smaller than input: %r" % m)
    await suite.case("round trips: compressible, small, incompressible", round_trips)

    async def at_the_limit():
        #  Incompressible data of exactly --max-message is a little larger
        #  once compressed (stored blocks): it is still accepted
        async with websockets.connect(srv.ws_url(srv.mint("d9")), compression="deflate",
                                      max_size=None) as ws:
            before = srv.metrics().get("wsrouter_bytes_in_total", 0)
            await ws.send(os.urandom(65536))
            got = await wait_metric(srv, "wsrouter_bytes_in_total", before + 65536)
            e.expect_eq(got - before, 65536, "bytes of an incompressible max-size message")
    await suite.case("incompressible message of exactly the maximum size", at_the_limit)

    async def on_the_wire():
        raw = raw_connect(srv, "d2", "permessage-deflate")
        try:
            doc = json.dumps({"items": ["alpha"] * 100})
            srv.publish(user="d2", data=doc)
            b0, payload = raw.frame()
            e.expect_eq(b0, 0xC1, "first byte of a compressed text frame (FIN RSV1 text)")
            e.expect_eq(inflate(payload).decode(), doc, "inflated payload")
            e.expect(len(payload) < len(doc) // 4, "compressed size %d of %d"
                     % (len(payload), len(doc)))
            srv.publish(user="d2", data="short one")
            b0, payload = raw.frame()
            e.expect_eq((b0, payload), (0x81, b"short one"), "under the threshold: plain")
        finally:
            raw.close()
    await suite.case("on the wire: RSV1 above the threshold, plain below", on_the_wire)

    async def compress_once():
        #  One worker: three deflate sessions and one plain, one publish →
        #  one compression, four deliveries
        raws = [raw_connect(srv, "d3", "permessage-deflate") for _ in range(3)]
        plain = raw_connect(srv, "d3", None)
        try:
            before = srv.metrics().get("wsrouter_deflate_messages_total", 0)
            doc = json.dumps({"payload": "z" * 2000})
            srv.publish(user="d3", data=doc)
            frames = [r.frame() for r in raws]
            for b0, payload in frames:
                e.expect_eq(b0, 0xC1, "deflate recipient frame")
                e.expect_eq(inflate(payload).decode(), doc, "deflate recipient payload")
            e.expect(len({p for _, p in frames}) == 1, "the same compressed bytes for all")
            b0, payload = plain.frame()
            e.expect_eq((b0, payload.decode()), (0x81, doc), "plain recipient")
            after = srv.metrics().get("wsrouter_deflate_messages_total", 0)
            e.expect_eq(after - before, 1, "compressions for 3 deflate recipients")
        finally:
            for r in raws + [plain]:
                r.close()
    await suite.case("compressed once per message per worker, shared", compress_once)

    async def fragmented():
        raw = raw_connect(srv, "d4", "permessage-deflate")
        try:
            doc = json.dumps({"fragmented": list(range(300))}).encode()
            packed = compress(doc)
            third = len(packed) // 3
            before = srv.metrics().get("wsrouter_bytes_in_total", 0)
            raw.send_raw(0x41, packed[:third])              # text, RSV1, not FIN
            raw.send_raw(0x00, packed[third:2 * third])     # continuation
            raw.send_raw(0x80, packed[2 * third:])          # continuation, FIN
            got = await wait_metric(srv, "wsrouter_bytes_in_total", before + len(doc))
            e.expect_eq(got - before, len(doc), "inflated size of a 3-frame message")
            #  Still open: a ping is answered
            raw.send_raw(0x89, b"p")
            b0, payload = raw.frame()
            e.expect_eq((b0 & 0x0F, payload), (0xA, b"p"), "pong after the message")
        finally:
            raw.close()
    await suite.case("fragmented compressed message from a client", fragmented)

    async def zip_bomb():
        raw = raw_connect(srv, "d5", "permessage-deflate")
        try:
            bomb = compress(b"\x00" * (8 * 1024 * 1024))    # 8 MB → ~8 KB
            e.expect(len(bomb) < 65536, "bomb fits the wire limit: %d" % len(bomb))
            raw.send_raw(0xC2, bomb)
            e.expect_eq(raw.close_code(), 1009, "close code for a zip bomb (max 64 KiB)")
        finally:
            raw.close()
    await suite.case("zip bomb: 1009, bounded", zip_bomb)

    async def corrupt():
        raw = raw_connect(srv, "d6", "permessage-deflate")
        try:
            raw.send_raw(0xC2, b"\xff\xff\xff\xff\xff")
            e.expect_eq(raw.close_code(), 1007, "close code for corrupt compressed data")
        finally:
            raw.close()
        raw = raw_connect(srv, "d7", "permessage-deflate")
        try:
            raw.send_raw(0xC1, compress(b"\xc3\x28 not utf-8"))
            e.expect_eq(raw.close_code(), 1007, "compressed text that is not UTF-8")
        finally:
            raw.close()
    await suite.case("corrupt compressed data and bad UTF-8 inside: 1007", corrupt)

    async def rsv1_unnegotiated():
        raw = raw_connect(srv, "d8", None)
        try:
            raw.send_raw(0xC1, compress(b"hello hello hello"))
            e.expect_eq(raw.close_code(), 1002, "RSV1 without negotiation")
        finally:
            raw.close()
    await suite.case("RSV1 without negotiation: 1002", rsv1_unnegotiated)


async def deflate_off():
    srv = e.start_server(workers=1, extra_args=["--deflate", "0"])
    try:
        e.expect_eq(ext_header(srv, "permessage-deflate"), None, "offer with --deflate 0")
        async with websockets.connect(srv.ws_url(srv.mint("off")), compression="deflate") as ws:
            doc = json.dumps({"x": "y" * 1000})
            srv.publish(user="off", data=doc)
            e.expect_eq(await asyncio.wait_for(ws.recv(), 5), doc, "message, uncompressed")
    finally:
        srv.stop()
    srv = e.start_server(workers=1, env={"WEBSOCKET_DEFLATE": "0"}, use_env_config=True)
    try:
        e.expect_eq(ext_header(srv, "permessage-deflate"), None, "offer with WEBSOCKET_DEFLATE=0")
    finally:
        srv.stop()


if __name__ == "__main__":
    e.main("e2e_deflate", body)
