#!/usr/bin/python3
"""e2e_conformance — RFC 6455 and wsrouter's documented limits, over raw sockets.

Every case writes the bytes itself (request line and headers, frame header
bits, masking key, 7/16/64-bit lengths) and asserts on the exact bytes the
server sends back: HTTP status and headers, frame opcodes, close codes, and
when the TCP connection ends. No WebSocket library is used on the client side.

Groups: upgrade (HTTP), framing (1002), ping/pong, UTF-8 (1007), size (1009),
close codes, and the limits (pings, sessions, per-IP, rates, id abuse, drain).
Client messages are observed on the upstream ZeroMQ PUB socket with an
independent python3-zmq SUB (msgpack envelopes), or through /metrics.
"""

import os
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import asyncio  # noqa: E402
import base64  # noqa: E402
import functools  # noqa: E402
import hashlib  # noqa: E402
import signal  # noqa: E402
import socket  # noqa: E402
import subprocess  # noqa: E402
import threading  # noqa: E402
import time  # noqa: E402

import msgpack  # noqa: E402
import zmq  # noqa: E402

import wsr_e2e as e  # noqa: E402

GUID = "258EAFA5-E914-47DA-95CA-C5AB0DC85B11"
OP_CONT, OP_TEXT, OP_BIN, OP_CLOSE, OP_PING, OP_PONG = 0x0, 0x1, 0x2, 0x8, 0x9, 0xA
RSV1, RSV2, RSV3 = 0x40, 0x20, 0x10
CASE_TIMEOUT_S = 20.0


def hx(data, n=48):
    """Hex of the first n bytes, for failure messages."""
    data = bytes(data)
    return data[:n].hex(" ") + (" ...(%d bytes)" % len(data) if len(data) > n else "")


# --------------------------------------------------------------------------
#  Frame builder: every bit chosen by the caller

def frame(opcode, payload=b"", fin=True, rsv=0, mask=True, key=None, length=None,
          form=None):
    """One frame's bytes. rsv: RSV1|RSV2|RSV3 bits; length: the declared
    length (defaults to len(payload)); form: 7, 16 or 64 forces that length
    encoding (default: the shortest); key: 4-byte masking key (random)."""
    payload = bytes(payload)
    n = len(payload) if length is None else length
    if form is None:
        form = 7 if n < 126 else (16 if n < 65536 else 64)
    b0 = (0x80 if fin else 0) | rsv | (opcode & 0x0F)
    mbit = 0x80 if mask else 0
    if form == 7:
        head = bytes([b0, mbit | n])
    elif form == 16:
        head = bytes([b0, mbit | 126]) + n.to_bytes(2, "big")
    else:
        head = bytes([b0, mbit | 127]) + n.to_bytes(8, "big")
    if not mask:
        return head + payload
    key = os.urandom(4) if key is None else key
    return head + key + bytes(b ^ key[i % 4] for i, b in enumerate(payload))


def close_payload(code, reason=b""):
    return code.to_bytes(2, "big") + (reason.encode() if isinstance(reason, str) else reason)


def upgrade_request(port, path="/ws", method="GET", proto="HTTP/1.1", key=None,
                    headers=None, body=b""):
    """The bytes of an upgrade request. headers: {name: value or None}; a name
    given replaces the default header of that name (None drops it)."""
    key = base64.b64encode(os.urandom(16)).decode() if key is None else key
    hdrs = [("Host", "127.0.0.1:%d" % port), ("Upgrade", "websocket"),
            ("Connection", "Upgrade"), ("Sec-WebSocket-Key", key),
            ("Sec-WebSocket-Version", "13")]
    extra = dict(headers or {})
    out = []
    for name, value in hdrs:
        if name in extra:
            value = extra.pop(name)
        if value is not None:
            out.append((name, value))
    out += [(k, v) for k, v in extra.items() if v is not None]
    text = "%s %s %s\r\n" % (method, path, proto)
    text += "".join("%s: %s\r\n" % kv for kv in out) + "\r\n"
    return text.encode("latin-1") + body, key


def accept_for(key):
    return base64.b64encode(hashlib.sha1((key + GUID).encode()).digest()).decode()


# --------------------------------------------------------------------------
#  Raw connection

class Frame:
    def __init__(self, b0, payload):
        self.fin = bool(b0 & 0x80)
        self.rsv = b0 & 0x70
        self.opcode = b0 & 0x0F
        self.payload = payload

    def close_code(self):
        return int.from_bytes(self.payload[:2], "big") if len(self.payload) >= 2 else None

    def close_reason(self):
        return self.payload[2:]

    def __repr__(self):
        if self.opcode == OP_CLOSE:
            return "close frame (code %s, reason %r)" % (self.close_code(), self.payload[2:])
        return "frame fin=%d rsv=0x%x opcode=0x%x payload %r" % (
            self.fin, self.rsv, self.opcode, e.short(self.payload))


class Raw:
    """A blocking TCP connection with a byte buffer; every read has a deadline."""

    def __init__(self, port, timeout=5.0):
        self.port = port
        self.sock = socket.create_connection(("127.0.0.1", port), timeout=timeout)
        self.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self.buf = b""
        self.eof = False
        self.status = None
        self.head = ""
        self.headers = {}

    def send(self, data):
        self.sock.sendall(data)

    def try_send(self, data):
        """Send; False if the server has already closed (EPIPE / reset)."""
        try:
            self.sock.sendall(data)
            return True
        except (BrokenPipeError, ConnectionResetError):
            return False

    def _fill(self, deadline):
        """Read once; False on EOF/reset. socket.timeout past the deadline."""
        left = deadline - time.monotonic()
        if left <= 0:
            raise socket.timeout()
        self.sock.settimeout(left)
        try:
            chunk = self.sock.recv(65536)
        except ConnectionResetError:
            chunk = b""
        if not chunk:
            self.eof = True
            return False
        self.buf += chunk
        return True

    def read_head(self, timeout=5.0, what="response"):
        """Read an HTTP response head: sets status, headers (lower-case names;
        repeated names joined with ', '). Bytes after it stay in buf."""
        deadline = time.monotonic() + timeout
        while b"\r\n\r\n" not in self.buf:
            try:
                if not self._fill(deadline):
                    raise e.E2EError("%s: connection closed before a complete HTTP response "
                                     "head; received %r" % (what, self.buf[:300]))
            except socket.timeout:
                raise e.E2EError("%s: no complete HTTP response head within %.1f s; "
                                 "received %r" % (what, timeout, self.buf[:300]))
        head, self.buf = self.buf.split(b"\r\n\r\n", 1)
        self.head = head.decode("latin-1")
        lines = self.head.split("\r\n")
        parts = lines[0].split(" ", 2)
        if len(parts) < 2 or not parts[0].startswith("HTTP/") or not parts[1].isdigit():
            raise e.E2EError("%s: not an HTTP status line: %r" % (what, lines[0]))
        self.status = int(parts[1])
        self.headers = {}
        for line in lines[1:]:
            if ":" in line:
                k, v = line.split(":", 1)
                k, v = k.strip().lower(), v.strip()
                self.headers[k] = self.headers[k] + ", " + v if k in self.headers else v
        return self.status

    def read_exact(self, n, deadline, what):
        while len(self.buf) < n:
            try:
                if not self._fill(deadline):
                    raise e.E2EError("%s: connection closed by the server (EOF/reset) while "
                                     "waiting for a frame; %d byte(s) pending %r"
                                     % (what, len(self.buf), self.buf[:40]))
            except socket.timeout:
                raise e.E2EError("%s: no frame from the server within the time limit "
                                 "(%d byte(s) pending)" % (what, len(self.buf)))
        out, self.buf = self.buf[:n], self.buf[n:]
        return out

    def read_frame(self, timeout=3.0, what="server frame"):
        deadline = time.monotonic() + timeout
        b0, b1 = self.read_exact(2, deadline, what)
        if b1 & 0x80:
            raise e.E2EError("%s: the server's frame is masked (header %02x %02x); RFC 6455 "
                             "§5.1: a server MUST NOT mask" % (what, b0, b1))
        n = b1 & 0x7F
        if n == 126:
            n = int.from_bytes(self.read_exact(2, deadline, what), "big")
        elif n == 127:
            n = int.from_bytes(self.read_exact(8, deadline, what), "big")
        payload = self.read_exact(n, deadline, what)
        f = Frame(b0, payload)
        if f.rsv:
            raise e.E2EError("%s: server frame has RSV bits 0x%x set: %r" % (what, f.rsv, f))
        return f

    def wait_eof(self, timeout):
        """Seconds until the server ended the TCP connection (EOF or reset);
        None if it is still open after timeout. Bytes received meanwhile stay
        in buf."""
        t0 = time.monotonic()
        deadline = t0 + timeout
        while not self.eof:
            try:
                self._fill(deadline)
            except socket.timeout:
                return None
        return time.monotonic() - t0

    def poll_closed(self):
        """Non-blocking: has the server sent anything or closed? (bytes, eof)"""
        self.sock.setblocking(False)
        try:
            chunk = self.sock.recv(65536)
            if not chunk:
                self.eof = True
            self.buf += chunk
        except (BlockingIOError, InterruptedError):
            pass
        except ConnectionResetError:
            self.eof = True
        finally:
            self.sock.setblocking(True)
        return self.buf, self.eof

    def close(self):
        try:
            self.sock.close()
        except OSError:
            pass


def http_try(port, request, timeout=5.0, what="request"):
    """Send request bytes on a new connection, read the response head."""
    c = Raw(port, timeout)
    try:
        c.send(request)
        c.read_head(timeout, what)
        return c
    except BaseException:
        c.close()
        raise


def expect_status(c, want, what, sent):
    ok = c.status in want if isinstance(want, (tuple, list, set)) else c.status == want
    e.expect(ok, "%s: expected HTTP %s, got %r (head %r); sent %r"
             % (what, want, c.status, c.head[:300], e.short(sent, 300)))


def ws_open(port, token=None, headers=None, early=b"", what="session", timeout=5.0):
    """A completed WebSocket handshake (101 and a correct accept key)."""
    path = "/ws" if token is None else "/ws?token=" + token
    req, key = upgrade_request(port, path, headers=headers)
    c = Raw(port, timeout)
    try:
        c.send(req + early)
        c.read_head(timeout, what)
        e.expect(c.status == 101, "%s: expected HTTP 101, got %d: %r"
                 % (what, c.status, c.head[:300]))
        e.expect_eq(c.headers.get("sec-websocket-accept"), accept_for(key),
                    what + ": Sec-WebSocket-Accept")
        return c
    except BaseException:
        c.close()
        raise


def expect_close(c, code, what, sent=b"", reply=False, tcp_within=1.0, timeout=3.0,
                 reason_has=None):
    """The next server frame is a close with `code`; then (after echoing the
    close if reply) the server ends TCP within tcp_within seconds."""
    ctx = (" (bytes sent: %s)" % hx(sent)) if sent else ""
    try:
        f = c.read_frame(timeout, what)
    except e.E2EError as ex:
        raise e.E2EError("expected close %s; %s%s" % (code, ex, ctx))
    e.expect(f.opcode == OP_CLOSE, "%s: expected a close frame with code %s, got %r%s"
             % (what, code, f, ctx))
    e.expect(len(f.payload) != 1, "%s: server close frame has a 1-byte payload%s" % (what, ctx))
    got = f.close_code()
    e.expect(got == code, "%s: expected close code %s, got %s (reason %r)%s"
             % (what, code, got, f.close_reason(), ctx))
    try:
        f.close_reason().decode("utf-8")
    except UnicodeDecodeError:
        raise e.E2EError("%s: server close reason is not UTF-8: %r" % (what, f.close_reason()))
    if reason_has is not None:
        e.expect(reason_has.lower() in f.close_reason().decode("utf-8", "replace").lower(),
                 "%s: close %d reason %r does not mention %r"
                 % (what, got, f.close_reason(), reason_has))
    if reply:
        c.try_send(frame(OP_CLOSE, f.payload[:2]))
    elapsed = c.wait_eof(tcp_within)
    e.expect(elapsed is not None,
             "%s: got close %s but the server kept the TCP connection open more than "
             "%.1f s afterwards (client %s)%s"
             % (what, got, tcp_within, "echoed the close" if reply
                else "sent nothing more (RFC 6455 §7.1.7: after failing the connection the "
                     "server closes TCP itself)", ctx))
    extra = c.buf
    e.expect(not extra, "%s: %d byte(s) after the server's close frame: %s"
             % (what, len(extra), hx(extra)))
    return f


def expect_alive(c, what, timeout=2.0):
    """Ping with a unique payload; the next frame must be the matching pong
    (a ping from the server in between is answered and skipped: with a short
    --ping-interval the server may ping at any moment)."""
    token = os.urandom(6).hex().encode()
    e.expect(c.try_send(frame(OP_PING, token)),
             "%s: connection already closed by the server (send failed)" % what)
    deadline = time.monotonic() + timeout
    f = c.read_frame(timeout, what + " (liveness ping)")
    while f.opcode == OP_PING and time.monotonic() < deadline:
        c.send(frame(OP_PONG, f.payload))
        f = c.read_frame(max(0.01, deadline - time.monotonic()), what + " (liveness ping)")
    e.expect(f.opcode == OP_PONG and f.payload == token,
             "%s: expected pong %r to a liveness ping, got %r" % (what, token, f))


# --------------------------------------------------------------------------
#  Upstream observer (blocking python3-zmq SUB)

class Upstream:
    def __init__(self, endpoint):
        self.ctx = zmq.Context()
        self.sub = self.ctx.socket(zmq.SUB)
        self.sub.setsockopt(zmq.LINGER, 0)
        self.sub.setsockopt(zmq.RCVHWM, 0)
        self.sub.setsockopt(zmq.SUBSCRIBE, b"up:")
        self.sub.connect(endpoint)

    def recv(self, timeout):
        if self.sub.poll(int(max(0, timeout) * 1000)) == 0:
            return None
        return self.sub.recv_multipart()

    def sync(self, port, token, limit=10.0):
        """PUB/SUB joins asynchronously: send probes until one is seen."""
        c = ws_open(port, token, what="upstream probe session")
        try:
            deadline = time.monotonic() + limit
            n = 0
            while time.monotonic() < deadline:
                c.send(frame(OP_TEXT, b"probe:%d" % n))
                n += 1
                if self.recv(0.1) is not None:
                    break
            else:
                raise e.E2EError("upstream: no probe seen on the SUB socket in %.0f s" % limit)
            c.send(frame(OP_CLOSE, close_payload(1000)))
            c.wait_eof(1.0)
        finally:
            c.close()
        while self.recv(0.3) is not None:
            pass

    def next(self, user, timeout=3.0, what="upstream message"):
        """Next envelope of user (others are skipped)."""
        deadline = time.monotonic() + timeout
        while True:
            frames = self.recv(deadline - time.monotonic())
            if frames is None:
                raise e.E2EError("%s: nothing from user %r on the upstream socket within "
                                 "%.1f s" % (what, user, timeout))
            if len(frames) != 2:
                continue
            env = msgpack.unpackb(frames[1], raw=False)
            if isinstance(env, dict) and env.get("u") == user:
                e.expect_eq(frames[0], b"up:" + user.encode() + b"\0", what + ": topic")
                return env

    def close(self):
        self.sub.close(0)
        self.ctx.term()


# --------------------------------------------------------------------------
#  Plumbing

def sync_case(fn, *args):
    """Run a blocking case body in a thread (its own reads are all bounded)."""
    async def runner():
        await asyncio.get_running_loop().run_in_executor(None, fn, *args)
    return runner


_uid = [0]


def uid(prefix="u"):
    _uid[0] += 1
    return "%s%d" % (prefix, _uid[0])


async def run(suite, name, fn, *args, timeout=CASE_TIMEOUT_S, **kw):
    await suite.case(name, sync_case(functools.partial(fn, *args, **kw)), timeout=timeout)


def start(suite, what, **kw):
    try:
        return e.start_server(**kw)
    except e.E2EError as ex:
        suite.fail(what + ": server start", str(ex))
        return None


# --------------------------------------------------------------------------
#  Upgrade (HTTP)

async def upgrade_cases(suite, srv, up):
    port = srv.port
    tok = lambda: srv.mint(uid("h"))  # noqa: E731

    def refused(want, what, **kw):
        path = kw.pop("path", "/ws?token=" + tok())
        req, _ = upgrade_request(port, path, **kw)
        c = http_try(port, req, what=what)
        try:
            expect_status(c, want, what, req)
            return c
        finally:
            c.close()

    def accepted(what, headers):
        c = ws_open(port, tok(), headers=headers, what=what)
        c.close()

    await run(suite, "upgrade: POST /ws with upgrade headers → 405",
              refused, 405, "POST upgrade", method="POST", headers={"Content-Length": "0"})
    await run(suite, "upgrade: HTTP/1.0 GET upgrade → 400 or 505",
              refused, (400, 505), "HTTP/1.0 upgrade", proto="HTTP/1.0")

    def version(value, what):
        c = refused(426, what, headers={"Sec-WebSocket-Version": value})
        e.expect_eq(c.headers.get("sec-websocket-version"), "13",
                    what + ": Sec-WebSocket-Version header of the 426 (head %r)" % c.head)

    await run(suite, "upgrade: Sec-WebSocket-Version 8 → 426 + Sec-WebSocket-Version: 13",
              version, "8", "version 8")
    await run(suite, "upgrade: Sec-WebSocket-Version missing → 426",
              version, None, "version missing")

    for label, key in (("missing", None), ("not base64", "!!not*base64?key!!ab=="),
                       ("15 bytes", base64.b64encode(b"k" * 15).decode()),
                       ("17 bytes", base64.b64encode(b"k" * 17).decode())):
        await run(suite, "upgrade: Sec-WebSocket-Key %s → 400" % label,
                  refused, 400, "key " + label, headers={"Sec-WebSocket-Key": key})

    await run(suite, "upgrade: 'Upgrade: WebSocket' (case) → 101",
              accepted, "Upgrade: WebSocket", {"Upgrade": "WebSocket"})
    await run(suite, "upgrade: 'Upgrade: websocket2' → 400",
              refused, 400, "Upgrade: websocket2", headers={"Upgrade": "websocket2"})
    await run(suite, "upgrade: 'Connection: keep-alive, Upgrade' → 101",
              accepted, "Connection list", {"Connection": "keep-alive, Upgrade"})
    await run(suite, "upgrade: 'Connection: upgrades' → 400",
              refused, 400, "Connection: upgrades", headers={"Connection": "upgrades"})
    await run(suite, "upgrade: 'Connection: keep-alive' (no upgrade token) → 400",
              refused, 400, "Connection: keep-alive", headers={"Connection": "keep-alive"})

    def too_big(what, want, **kw):
        path = kw.pop("path", "/ws?token=" + tok())
        req, _ = upgrade_request(port, path, **kw)
        c = Raw(port)
        try:
            c.try_send(req)
            c.read_head(5.0, what)
            expect_status(c, want, what, req)
            e.expect(c.wait_eof(2.0) is not None,
                     "%s: HTTP %d sent but the connection stayed open 2 s" % (what, c.status))
        finally:
            c.close()

    await run(suite, "upgrade: headers over 8 KiB → 431 and close",
              too_big, "9 KiB header", 431, headers={"X-Filler": "f" * 9000})
    await run(suite, "upgrade: URI over 8 KiB → 414 or 431 and close",
              too_big, "9 KiB URI", (414, 431), path="/ws?token=" + "a" * 9000)

    def pipelined():
        user = uid("pipe")
        data = "pipelined ✓".encode()
        f = frame(OP_TEXT, data)
        c = ws_open(port, srv.mint(user), early=f, what="pipelined upgrade + frame")
        try:
            env = up.next(user, what="text frame sent in the same write as the request "
                          "(%s)" % hx(f))
            e.expect_eq((env.get("k"), env.get("d")), (1, data), "pipelined message (k, d)")
        finally:
            c.close()

    await run(suite, "upgrade: request + masked frame in one write → message upstream",
              pipelined)

    def accept_key():
        for _ in range(5):
            key = base64.b64encode(os.urandom(16)).decode()
            req, _ = upgrade_request(port, "/ws?token=" + tok(), key=key)
            c = http_try(port, req, what="accept key")
            try:
                e.expect_eq(c.status, 101, "status for key %s" % key)
                e.expect_eq(c.headers.get("sec-websocket-accept"), accept_for(key),
                            "Sec-WebSocket-Accept for key %s" % key)
                e.expect("websocket" in c.headers.get("upgrade", "").lower(),
                         "101 lacks 'Upgrade: websocket': %r" % c.head)
                e.expect("upgrade" in c.headers.get("connection", "").lower(),
                         "101 lacks 'Connection: Upgrade': %r" % c.head)
            finally:
                c.close()

    await run(suite, "upgrade: Sec-WebSocket-Accept = base64(sha1(key + GUID))", accept_key)

    def bad_token(token, what):
        c = ws_open(port, token, what=what)
        try:
            f = expect_close(c, 1008, what, reply=True)
            e.expect(len(f.close_reason()) > 0, "%s: close 1008 without a reason" % what)
        finally:
            c.close()

    forged = e.mint("not-the-secret", "mallory")
    await run(suite, "upgrade: bad signature → 101 then close 1008 with a reason",
              bad_token, forged, "bad signature")
    await run(suite, "upgrade: garbage token → 101 then close 1008 with a reason",
              bad_token, "abc.def", "garbage token")


async def handshake_timeout_cases(suite):
    srv = start(suite, "handshake timeout", extra_args=["--handshake-timeout", "1"])
    if srv is None:
        return
    try:
        def deadline():
            partial = Raw(srv.port)
            silent = Raw(srv.port)
            try:
                t0 = time.monotonic()
                partial.send(b"GET /ws HTTP/1.1\r\nHost:")
                results = {}

                def watch(name, c):
                    #  Seconds from connect (t0) to EOF/reset, None if still open
                    el = c.wait_eof(3.5)
                    results[name] = None if el is None else time.monotonic() - t0
                th = [threading.Thread(target=watch, args=(n, c), daemon=True)
                      for n, c in (("partial", partial), ("silent", silent))]
                for t in th:
                    t.start()
                for t in th:
                    t.join(5)
                errs = []
                for name, c in (("partial", partial), ("silent", silent)):
                    el = results.get(name)
                    if el is None:
                        errs.append("%s connection still open 3.5 s after connect" % name)
                    elif el > 2.2:
                        errs.append("%s connection closed only after %.2f s (limit ~2 s)"
                                    % (name, el))
                e.expect(partial.buf.startswith(b"HTTP/1.1 408"),
                         "partial request 'GET /ws HTTP/1.1\\r\\nHost:': expected an "
                         "'HTTP/1.1 408' answer, received %r" % partial.buf[:200])
                e.expect(not errs, "; ".join(errs))
                print("  info: partial closed after %.2f s, silent after %.2f s"
                      % (results["partial"], results["silent"]), flush=True)
            finally:
                partial.close()
                silent.close()

        await run(suite, "upgrade: --handshake-timeout 1: partial → 408 + close, silent "
                  "closed, within ~2 s", deadline)
    finally:
        srv.stop()


async def origin_cases(suite):
    srv = start(suite, "origin", extra_args=["--allowed-origins", "https://good.example"])
    if srv is None:
        return
    try:
        def origin(value, want):
            hdrs = {"Origin": value} if value else None
            req, _ = upgrade_request(srv.port, "/ws?token=" + srv.mint(uid("o")),
                                     headers=hdrs)
            c = http_try(srv.port, req, what="Origin %r" % value)
            try:
                expect_status(c, want, "Origin %r" % value, req)
            finally:
                c.close()

        await run(suite, "origin: allowed https://good.example → 101",
                  origin, "https://good.example", 101)
        await run(suite, "origin: https://evil.example → 403",
                  origin, "https://evil.example", 403)
        await run(suite, "origin: no Origin header → 101", origin, None, 101)
    finally:
        srv.stop()


# --------------------------------------------------------------------------
#  Framing

async def frame_cases(suite, srv, up):
    port = srv.port

    def protocol_error(data, what, code=1002):
        c = ws_open(port, srv.mint(uid("f")), what=what)
        try:
            c.try_send(data)
            expect_close(c, code, what, sent=data)
        finally:
            c.close()

    cases = [
        ("unmasked text frame", frame(OP_TEXT, b"hello", mask=False)),
        ("RSV1 set", frame(OP_TEXT, b"hello", rsv=RSV1)),
        ("RSV2 set", frame(OP_TEXT, b"hello", rsv=RSV2)),
        ("RSV3 set", frame(OP_TEXT, b"hello", rsv=RSV3)),
    ]
    for op in list(range(3, 8)) + list(range(0xB, 0x10)):
        cases.append(("reserved opcode 0x%X" % op, frame(op, b"x")))
    cases += [
        ("ping with a 126-byte payload", frame(OP_PING, b"p" * 126)),
        ("ping with FIN=0 (fragmented control)", frame(OP_PING, b"abc", fin=False)),
        ("continuation with no message started", frame(OP_CONT, b"orphan")),
        ("text frame inside a fragmented text message",
         frame(OP_TEXT, b"part1", fin=False) + frame(OP_TEXT, b"again")),
        ("binary frame inside a fragmented binary message",
         frame(OP_BIN, b"part1", fin=False) + frame(OP_BIN, b"again")),
        ("64-bit length with the top bit set",
         frame(OP_BIN, b"abcde", length=(1 << 63) | 5, form=64)),
    ]
    for label, data in cases:
        await run(suite, "frame: %s → 1002" % label, protocol_error, data, label)

    def ping(payload):
        c = ws_open(port, srv.mint(uid("p")), what="ping")
        try:
            c.send(frame(OP_PING, payload))
            f = c.read_frame(2.0, "pong to ping %r" % e.short(payload))
            e.expect(f.opcode == OP_PONG and f.fin and f.payload == payload,
                     "ping %r: expected a pong (FIN, opcode 0xA) with the same payload, "
                     "got %r" % (e.short(payload), f))
        finally:
            c.close()

    await run(suite, "ping 'abc' → pong 'abc'", ping, b"abc")
    await run(suite, "ping with 125-byte payload → same pong", ping, os.urandom(125))

    def ping_between_fragments():
        user = uid("frag")
        c = ws_open(port, srv.mint(user), what="fragments + ping")
        try:
            c.send(frame(OP_TEXT, b"frag-", fin=False))
            c.send(frame(OP_PING, b"mid"))
            f = c.read_frame(2.0, "pong between fragments")
            e.expect(f.opcode == OP_PONG and f.payload == b"mid",
                     "ping between fragments: expected pong 'mid', got %r" % f)
            c.send(frame(OP_CONT, b"ment-", fin=False))
            c.send(frame(OP_CONT, b"end"))
            env = up.next(user, what="fragmented text with a ping in the middle")
            e.expect_eq((env.get("k"), env.get("d")), (1, b"frag-ment-end"),
                        "reassembled message (k, d)")
            expect_alive(c, "after the fragmented message")
        finally:
            c.close()

    await run(suite, "ping between fragments answered; message arrives whole upstream",
              ping_between_fragments)


# --------------------------------------------------------------------------
#  UTF-8

async def utf8_cases(suite, srv, up):
    port = srv.port

    def invalid(data, what):
        c = ws_open(port, srv.mint(uid("t")), what=what)
        try:
            c.try_send(data)
            expect_close(c, 1007, what, sent=data, reply=True)
        finally:
            c.close()

    cases = [
        ("0xFF in a text frame", frame(OP_TEXT, b"ok \xff\xfe")),
        ("code point invalid at the fragment split",
         frame(OP_TEXT, b"caf\xc3", fin=False) + frame(OP_CONT, b"(")),
        ("3-byte sequence broken at the split",
         frame(OP_TEXT, b"euro \xe2\x82", fin=False) + frame(OP_CONT, b"A")),
        ("overlong '/' C0 AF", frame(OP_TEXT, b"\xc0\xaf")),
        ("overlong 3-byte E0 80 AF", frame(OP_TEXT, b"\xe0\x80\xaf")),
        ("surrogate ED A0 80", frame(OP_TEXT, b"\xed\xa0\x80")),
        ("code point above U+10FFFF F4 90 80 80", frame(OP_TEXT, b"\xf4\x90\x80\x80")),
        ("text ending inside a character", frame(OP_TEXT, b"end \xe2\x82")),
        ("invalid UTF-8 in a close reason", frame(OP_CLOSE, close_payload(1000, b"\xff\xfe"))),
    ]
    for label, data in cases:
        await run(suite, "utf-8: %s → 1007" % label, invalid, data, label)

    def split_valid():
        user = uid("split")
        c = ws_open(port, srv.mint(user), what="valid split")
        try:
            c.send(frame(OP_TEXT, b"caf\xc3", fin=False))
            c.send(frame(OP_CONT, b"\xa9 \xf0\x9f", fin=False))
            c.send(frame(OP_CONT, b"\x98\x80!"))
            env = up.next(user, what="text with characters split across fragments")
            e.expect_eq((env.get("k"), env.get("d")), (1, "café 😀!".encode()),
                        "valid split UTF-8 (k, d)")
            expect_alive(c, "after valid split UTF-8")
        finally:
            c.close()

    await run(suite, "utf-8: code points split validly across fragments → accepted",
              split_valid)


# --------------------------------------------------------------------------
#  Size

async def size_cases(suite):
    srv = start(suite, "size", extra_args=["--max-message", "1000"])
    if srv is None:
        return
    try:
        def at_limit():
            c = ws_open(srv.port, srv.mint(uid("s")), what="1000-byte text")
            try:
                before = srv.metrics().get("wsrouter_messages_in_total")
                c.send(frame(OP_TEXT, b"x" * 1000))
                expect_alive(c, "after a 1000-byte text (--max-message 1000)")
                after = srv.metrics().get("wsrouter_messages_in_total")
                e.expect_eq(after - before, 1, "wsrouter_messages_in_total increase")
            finally:
                c.close()

        def over(data, what):
            c = ws_open(srv.port, srv.mint(uid("s")), what=what)
            try:
                c.try_send(data)
                expect_close(c, 1009, what, sent=data, reply=True)
            finally:
                c.close()

        await run(suite, "size: 1000-byte text with --max-message 1000 accepted", at_limit)
        await run(suite, "size: 1001-byte text → 1009", over, frame(OP_TEXT, b"x" * 1001),
                  "1001-byte text")
        await run(suite, "size: fragments 600 + 401 → 1009", over,
                  frame(OP_TEXT, b"x" * 600, fin=False) + frame(OP_CONT, b"y" * 401),
                  "fragmented 1001 bytes")
    finally:
        srv.stop()


# --------------------------------------------------------------------------
#  Close

VALID_CODES = [1000, 1001, 1003, 1007, 1008, 1009, 1010, 1011, 1012, 1013, 1014, 3000, 4999]
INVALID_CODES = [0, 999, 1004, 1005, 1006, 1015, 1016, 2999, 5000, 65535]


async def close_cases(suite, srv):
    port = srv.port

    def echoed(code):
        c = ws_open(port, srv.mint(uid("c")), what="close %d" % code)
        try:
            data = frame(OP_CLOSE, close_payload(code, "bye"))
            c.send(data)
            expect_close(c, code, "client close %d" % code, sent=data, tcp_within=1.0)
        finally:
            c.close()

    for code in VALID_CODES:
        await run(suite, "close: code %d echoed, TCP closed < 1 s" % code, echoed, code)

    def bad(data, what):
        c = ws_open(port, srv.mint(uid("c")), what=what)
        try:
            c.send(data)
            expect_close(c, 1002, what, sent=data)
        finally:
            c.close()

    for code in INVALID_CODES:
        await run(suite, "close: invalid code %d → 1002" % code, bad,
                  frame(OP_CLOSE, close_payload(code)), "close code %d" % code)
    await run(suite, "close: 1-byte close payload → 1002", bad,
              frame(OP_CLOSE, b"\x03"), "1-byte close payload")

    def empty():
        c = ws_open(port, srv.mint(uid("c")), what="empty close")
        try:
            c.send(frame(OP_CLOSE, b""))
            f = c.read_frame(2.0, "answer to an empty close")
            e.expect(f.opcode == OP_CLOSE and (f.payload == b"" or f.close_code() == 1000),
                     "empty close: expected a close frame, empty or 1000, got %r" % f)
            el = c.wait_eof(1.0)
            e.expect(el is not None, "empty close: TCP still open 1 s after the server's close")
        finally:
            c.close()

    await run(suite, "close: empty payload → close (empty or 1000), TCP closed", empty)

    def data_after_close():
        c = ws_open(port, srv.mint(uid("c")), what="data after close")
        try:
            before = srv.metrics().get("wsrouter_messages_in_total")
            data = (frame(OP_CLOSE, close_payload(1000)) + frame(OP_TEXT, b"after close") +
                    frame(OP_BIN, b"\x00after"))
            c.send(data)
            expect_close(c, 1000, "close followed by data", sent=data)
            after = srv.metrics().get("wsrouter_messages_in_total")
            e.expect_eq(after - before, 0, "wsrouter_messages_in_total increase from frames "
                        "sent after the client's close")
            res = srv.http("GET", "/healthz", timeout=2.0)
            e.expect_eq(res.status, 200, "/healthz after data-after-close")
        finally:
            c.close()

    await run(suite, "close: data after the client's close ignored, TCP closed", data_after_close)


# --------------------------------------------------------------------------
#  Limits (relaxed_limits=False)

async def ping_cases(suite):
    srv = start(suite, "ping", relaxed_limits=False,
                extra_args=["--ping-interval", "1", "--ping-timeout", "1"])
    if srv is None:
        return
    try:
        def pings():
            out = {}

            def deaf():
                c = ws_open(srv.port, srv.mint(uid("deaf")), what="deaf client")
                try:
                    t0 = time.monotonic()
                    f = c.read_frame(1.5, "first server frame of a silent client")
                    t_ping = time.monotonic() - t0
                    e.expect(f.opcode == OP_PING, "silent client: expected a ping (0x9) first, "
                             "got %r" % f)
                    frames = []
                    deadline = t0 + 3.0
                    while time.monotonic() < deadline and not c.eof:
                        try:
                            frames.append(c.read_frame(deadline - time.monotonic(), "after ping"))
                        except e.E2EError:
                            break
                    e.expect(c.eof, "silent client: still connected 3 s after the handshake "
                             "(frames after the ping: %r)" % frames)
                    out["deaf"] = "ping after %.2f s, closed after %.2f s, then %r" % (
                        t_ping, time.monotonic() - t0, frames)
                finally:
                    c.close()

            def lively():
                c = ws_open(srv.port, srv.mint(uid("alive")), what="answering client")
                try:
                    t0 = time.monotonic()
                    n = 0
                    while time.monotonic() - t0 < 4.0:
                        try:
                            f = c.read_frame(t0 + 4.0 - time.monotonic(), "answering client")
                        except e.E2EError:
                            if c.eof:
                                raise e.E2EError("answering client: disconnected after %.2f s "
                                                 "(%d pings answered)"
                                                 % (time.monotonic() - t0, n))
                            break
                        e.expect(f.opcode == OP_PING, "answering client: got %r" % f)
                        c.send(frame(OP_PONG, f.payload))
                        n += 1
                    expect_alive(c, "answering client after 4 s")
                    out["alive"] = "%d pings answered in 4 s" % n
                finally:
                    c.close()

            errs = []

            def wrap(fn):
                try:
                    fn()
                except BaseException as ex:
                    errs.append(str(ex))
            ts = [threading.Thread(target=wrap, args=(f,), daemon=True) for f in (deaf, lively)]
            for t in ts:
                t.start()
            for t in ts:
                t.join(8)
            e.expect(not errs, "; ".join(errs))
            print("  info: %s; %s" % (out.get("deaf"), out.get("alive")), flush=True)

        await run(suite, "limits: --ping-interval 1 --ping-timeout 1: silent client pinged "
                  "< 1.5 s, dropped < 3 s; answering client kept 4 s", pings)
    finally:
        srv.stop()


async def max_sessions_cases(suite):
    srv = start(suite, "max sessions", relaxed_limits=False,
                extra_args=["--max-connections", "3", "--workers", "1"])
    if srv is None:
        return
    try:
        def fourth():
            conns = []
            try:
                for i in range(3):
                    conns.append(ws_open(srv.port, srv.mint(uid("m")), what="session %d" % i))
                for i, c in enumerate(conns):
                    expect_alive(c, "session %d of 3" % i)
                c4 = ws_open(srv.port, srv.mint(uid("m")), what="4th session")
                conns.append(c4)
                try:
                    expect_close(c4, 1013, "4th session with --max-connections 3", reply=True)
                except e.E2EError as ex:
                    #  Say what the server did instead: is the 4th session live,
                    #  and where does the cap really bite?
                    notes = []
                    try:
                        expect_alive(c4, "4th session")
                        notes.append("the 4th session is open and answers pings")
                    except e.E2EError as ex2:
                        notes.append(str(ex2))
                    notes.append("wsrouter_sessions_open = %s"
                                 % srv.metrics().get("wsrouter_sessions_open"))
                    c5 = ws_open(srv.port, srv.mint(uid("m")), what="5th session")
                    conns.append(c5)
                    try:
                        notes.append("5th session: %r" % c5.read_frame(1.0, "5th session"))
                    except e.E2EError:
                        notes.append("5th session: no frame in 1 s (also accepted)")
                    raise e.E2EError("%s; %s" % (ex, "; ".join(notes)))
                for i, c in enumerate(conns[:3]):
                    expect_alive(c, "session %d after the 4th was refused" % i)
            finally:
                for c in conns:
                    c.close()

        await run(suite, "limits: --max-connections 3: 4th session → 101 then 1013", fourth)
    finally:
        srv.stop()


async def per_ip_cases(suite):
    srv = start(suite, "per-ip", relaxed_limits=False, extra_args=["--max-per-ip", "5"])
    if srv is None:
        return
    try:
        def cap():
            conns = []
            try:
                for i in range(5):
                    conns.append(ws_open(srv.port, srv.mint(uid("ip")), what="connection %d" % i))
                req, _ = upgrade_request(srv.port, "/ws?token=" + srv.mint(uid("ip")))
                c6 = http_try(srv.port, req, what="6th connection")
                conns.append(c6)
                expect_status(c6, 429, "6th TCP connection from 127.0.0.1 (--max-per-ip 5)", req)
                c6.close()
                conns.remove(c6)
                #  Close one session cleanly; a slot must be free again
                first = conns.pop(0)
                first.send(frame(OP_CLOSE, close_payload(1000)))
                expect_close(first, 1000, "closing connection 0")
                first.close()
                deadline = time.monotonic() + 1.0
                statuses = []
                while True:
                    req, _ = upgrade_request(srv.port, "/ws?token=" + srv.mint(uid("ip")))
                    c = http_try(srv.port, req, what="connection after one was closed")
                    statuses.append(c.status)
                    if c.status == 101:
                        conns.append(c)
                        break
                    c.close()
                    if time.monotonic() > deadline:
                        raise e.E2EError("after closing one of 5 connections, new connections "
                                         "still refused for 1 s: statuses %r" % statuses)
                    time.sleep(0.05)
            finally:
                for c in conns:
                    c.close()

        await run(suite, "limits: --max-per-ip 5: 6th connection → 429; closing one frees a "
                  "slot", cap)
    finally:
        srv.stop()


async def rate_cases(suite):
    srv = start(suite, "rate", relaxed_limits=False, extra_args=["--rate-messages", "10"])
    if srv is None:
        return
    try:
        def burst():
            c = ws_open(srv.port, srv.mint(uid("r")), what="burst client")
            try:
                data = b"".join(frame(OP_TEXT, b"m%02d" % i) for i in range(50))
                c.send(data)
                expect_close(c, 1008, "50 frames at once with --rate-messages 10",
                             reply=True, reason_has="rate")
            finally:
                c.close()

        def steady():
            c = ws_open(srv.port, srv.mint(uid("r")), what="steady client")
            try:
                t0 = time.monotonic()
                for i in range(15):
                    at = t0 + i * 0.2
                    time.sleep(max(0, at - time.monotonic()))
                    buf, eof = c.poll_closed()
                    e.expect(not buf and not eof, "5 frames/s: server sent %s (eof=%s) after %d "
                             "frames" % (hx(buf), eof, i))
                    c.send(frame(OP_TEXT, b"steady %d" % i))
                time.sleep(max(0, t0 + 3.0 - time.monotonic()))
                expect_alive(c, "client sending 5 frames/s for 3 s")
            finally:
                c.close()

        await run(suite, "limits: --rate-messages 10: 50 frames at once → 1008 'rate'", burst)
        await run(suite, "limits: --rate-messages 10: 5 frames/s for 3 s not closed", steady)
    finally:
        srv.stop()


async def handshake_rate_cases(suite):
    srv = start(suite, "handshake rate", relaxed_limits=False,
                extra_args=["--handshake-rate", "5"])
    if srv is None:
        return
    try:
        def burst():
            conns = []
            results = []
            try:
                for i in range(30):
                    req, _ = upgrade_request(srv.port, "/ws?token=" + srv.mint(uid("hr")))
                    c = Raw(srv.port)
                    conns.append(c)
                    c.try_send(req)
                for i, c in enumerate(conns):
                    try:
                        c.read_head(3.0, "burst connection %d" % i)
                        results.append((c.status, c.headers.get("retry-after")))
                    except e.E2EError as ex:
                        results.append(("error", str(ex)[:120]))
                statuses = [s for s, _ in results]
                refused = [(s, ra) for s, ra in results if s == 503]
                e.expect(refused, "30 connections in a burst with --handshake-rate 5: no 503; "
                         "statuses %r" % statuses)
                e.expect(all(ra for _, ra in refused), "503 without Retry-After: %r" % results)
                e.expect(all(s in (101, 503) for s in statuses),
                         "burst: statuses other than 101/503: %r" % results)
                print("  info: burst of 30: %d × 101, %d × 503 (Retry-After %r)"
                      % (statuses.count(101), len(refused), refused[0][1]), flush=True)
            finally:
                for c in conns:
                    c.close()
            time.sleep(1.5)
            c = ws_open(srv.port, srv.mint(uid("hr")), what="connection 1.5 s after the burst")
            c.close()

        await run(suite, "limits: --handshake-rate 5: burst of 30 → some 503 + Retry-After; "
                  "1.5 s later → 101", burst)
    finally:
        srv.stop()


async def id_abuse_cases(suite):
    srv = start(suite, "id abuse", relaxed_limits=False)
    if srv is None:
        return
    try:
        def token_refused(token, what):
            c = ws_open(srv.port, token, what=what)
            try:
                expect_close(c, 1008, what, reply=True)
            finally:
                c.close()

        subs = [("'*'", "a*b"), ("'>'", "a>b"), ("space", "a b"), ("control byte", "a\x01b"),
                ("NUL", "a\u0000b"), ("200 chars", "x" * 200)]
        for label, sub in subs:
            await run(suite, "ids: token sub with %s → 1008" % label, token_refused,
                      srv.mint(sub), "sub %r" % e.short(sub, 20))
        for ch in ("room*", "room.>"):
            await run(suite, "ids: channels claim %r → 1008" % ch, token_refused,
                      srv.mint(uid("ch"), channels=[ch]), "channel %r" % ch)

        def api(kind, value):
            kw = {kind: value}
            res = srv.publish(data="x", expect_ok=False, **kw)
            e.expect_eq(res.status, 400, "POST /api/publish %s=%r" % (kind, value))

        for v in ("u*", "u>", "a b"):
            await run(suite, "ids: publish API user %r → 400" % v, api, "user", v)
        await run(suite, "ids: publish API channel 'c*' → 400", api, "channel", "c*")
    finally:
        srv.stop()


async def drain_cases(suite):
    srv = start(suite, "drain", relaxed_limits=False, extra_args=["--drain-timeout", "2"])
    if srv is None:
        return
    try:
        def drain():
            polite = ws_open(srv.port, srv.mint(uid("d")), what="polite session")
            deaf = ws_open(srv.port, srv.mint(uid("d")), what="deaf session")
            try:
                expect_alive(polite, "polite session")
                expect_alive(deaf, "deaf session")
                e.expect_eq(srv.http("GET", "/readyz", timeout=2.0).status, 200,
                            "/readyz before SIGTERM")
                t0 = time.monotonic()
                srv.signal(signal.SIGTERM)
                expect_close(polite, 1001, "polite session after SIGTERM", reply=True,
                             timeout=2.5)
                f = deaf.read_frame(2.5, "deaf session after SIGTERM")
                e.expect(f.opcode == OP_CLOSE and f.close_code() == 1001,
                         "deaf session: expected close 1001, got %r" % f)
                if srv.proc.poll() is None:
                    try:
                        res = srv.http("GET", "/readyz", timeout=1.0)
                        e.expect(res.status != 200, "/readyz during the drain: expected not "
                                 "200 (503 or refused), got %r" % res)
                    except (OSError, e.http.client.HTTPException):
                        pass
                limit = 2.0 + 1.0
                try:
                    status = srv.proc.wait(max(0.1, t0 + limit - time.monotonic()))
                except subprocess.TimeoutExpired:
                    raise e.E2EError("process still running %.1f s after SIGTERM "
                                     "(--drain-timeout 2, one peer never answers)" % limit)
                el = time.monotonic() - t0
                e.expect_eq(status, 0, "exit status after SIGTERM")
                e.expect(deaf.wait_eof(0.5) is not None,
                         "deaf session: TCP still open after the process exited")
                print("  info: exited %.2f s after SIGTERM" % el, flush=True)
            finally:
                polite.close()
                deaf.close()

        await run(suite, "drain: SIGTERM → readyz off, 1001 to both, exit 0 within "
                  "drain-timeout + 1 s", drain)
    finally:
        srv.stop()


# --------------------------------------------------------------------------

async def body(suite):
    t_start = time.monotonic()
    srv = e.start_server(upstream=True, workers=2)
    up = Upstream(srv.upstream_endpoint)
    try:
        await run(suite, "upstream subscriber joined (probe seen)",
                  lambda: up.sync(srv.port, srv.mint("probe")))
        await upgrade_cases(suite, srv, up)
        await frame_cases(suite, srv, up)
        await utf8_cases(suite, srv, up)
        await close_cases(suite, srv)
        await run(suite, "server still healthy after the hostile cases",
                  lambda: e.expect_eq(srv.http("GET", "/healthz").status, 200, "/healthz"))
    finally:
        up.close()
        srv.stop()
        e.expect(srv.returncode == 0, "main server exit status %r" % srv.returncode)
    await handshake_timeout_cases(suite)
    await origin_cases(suite)
    await size_cases(suite)
    await ping_cases(suite)
    await max_sessions_cases(suite)
    await per_ip_cases(suite)
    await rate_cases(suite)
    await handshake_rate_cases(suite)
    await id_abuse_cases(suite)
    await drain_cases(suite)
    print("  info: suite took %.1f s" % (time.monotonic() - t_start), flush=True)


if __name__ == "__main__":
    e.main("e2e_conformance", body)
