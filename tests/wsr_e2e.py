"""wsr_e2e — shared harness for the wsrouter end-to-end suites.

Every suite drives the real binary (env WSROUTER, else build/wsrouter next to
this folder) with independent clients: python websockets 10.4 (asyncio API),
http.client, python3-zmq and python3-msgpack. Nothing here uses the server's
own code: tokens are minted with hmac, envelopes decoded with msgpack.

Rules kept by every helper: free ports only (bind port 0), every wait has a
timeout, every process started is stopped by PID.

Exit status of a suite: 0 when every case passed, 1 when one failed (or none
ran), SKIP (77, ctest's SKIP_RETURN_CODE) when nothing failed but a case, or
the whole suite, could not run here: a server or module it needs is missing
(require(), skip_suite(), Suite.skip). A suite never passes for want of
something to test against.
"""

import asyncio
import atexit
import base64
import hashlib
import hmac
import http.client
import json
import os
import re
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
import traceback

HERE = os.path.dirname(os.path.abspath(__file__))
READY_RE = re.compile(r"ws://[^:/\s]+:(\d+)/ws")
READY_TIMEOUT_S = 15.0
STOP_TIMEOUT_S = 5.0

#  Servers that had been ready and then ended with a non-zero status no test
#  asked for: a crash, an assert, a sanitizer report (ASan, LeakSanitizer,
#  UBSan exit non-zero), a failed drain. Server.stop() records them;
#  Suite.finish() reports each as a failed case, and a script that has no
#  Suite fails at exit (_unclean_at_exit).
UNCLEAN_EXITS = []


#  Exit status of a suite that could not (wholly) run here: ctest reports it
#  as skipped (CMake sets SKIP_RETURN_CODE 77 on every e2e test)
SKIP = 77


class E2EError(AssertionError):
    """A failed expectation, with a message that says expected and observed."""


class SkipSuite(Exception):
    """Raised by skip_suite(): the whole suite cannot run here."""


def skip_suite(why):
    """The suite cannot run here (a server it needs is not installed, no
    privileges for namespaces...): main() reports why and exits SKIP."""
    raise SkipSuite(why)


def require(*programs):
    """Skip the suite (exit SKIP) unless every program, a path or a name
    looked up in PATH, is an executable file."""
    missing = [p for p in programs
               if not (os.access(p, os.X_OK) if os.sep in p else shutil.which(p))]
    if missing:
        skip_suite("%s not installed (scripts/deps test installs %s)"
                   % (", ".join(missing), "them" if len(missing) > 1 else "it"))


def binary():
    """Path of the wsrouter binary under test; E2EError if it is missing."""
    path = os.environ.get("WSROUTER") or os.path.join(HERE, "..", "build", "wsrouter")
    path = os.path.abspath(path)
    if not os.access(path, os.X_OK):
        raise E2EError("wsrouter binary not found or not executable: %s "
                       "(set WSROUTER=/path/to/wsrouter)" % path)
    return path


def free_port():
    """A TCP port on 127.0.0.1 that was free a moment ago."""
    s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    try:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]
    finally:
        s.close()


# --------------------------------------------------------------------------
#  JWT minting, independent of the server

def b64url(data):
    if isinstance(data, str):
        data = data.encode()
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def b64url_json(obj):
    return b64url(json.dumps(obj, separators=(",", ":")).encode())


def jwt_hs256(header, payload, secret):
    """Sign header and payload (dicts, or already-encoded str) with HMAC-SHA256."""
    if isinstance(secret, str):
        secret = secret.encode()
    h = header if isinstance(header, str) else b64url_json(header)
    p = payload if isinstance(payload, str) else b64url_json(payload)
    signing_input = (h + "." + p).encode()
    sig = hmac.new(secret, signing_input, hashlib.sha256).digest()
    return h + "." + p + "." + b64url(sig)


def mint(secret, sub, ttl=3600, channels=None, now=None, extra=None):
    """HS256 token {"sub", "iat", "exp" (omitted if ttl is None), "channels"}."""
    now = int(time.time()) if now is None else now
    payload = {"sub": sub, "iat": now}
    if ttl is not None:
        payload["exp"] = now + ttl
    if channels:
        payload["channels"] = list(channels)
    if extra:
        payload.update(extra)
    return jwt_hs256({"alg": "HS256", "typ": "JWT"}, payload, secret)


# --------------------------------------------------------------------------
#  HTTP client helpers

class HttpResult:
    def __init__(self, status, headers, body):
        self.status = status
        self.headers = headers
        self.body = body

    def text(self):
        return self.body.decode("utf-8", "replace")

    def __repr__(self):
        return "HTTP %d %r" % (self.status, self.body[:200])


def http_request(port, method, path, body=None, headers=None, timeout=10.0):
    """One request on a new connection; returns HttpResult. Raises on I/O error."""
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=timeout)
    try:
        try:
            conn.request(method, path, body=body, headers=headers or {})
        except (BrokenPipeError, ConnectionResetError) as ex:
            #  The server answered (e.g. 413) and closed before reading the
            #  whole body: report its answer if it can still be read.
            try:
                resp = conn.getresponse()
                data = resp.read()
            except Exception:
                raise E2EError("%s %s (%d-byte body): the server closed the connection "
                               "while the request was being sent (%s), no response"
                               % (method, path, len(body or b""), type(ex).__name__))
            raise E2EError("%s %s (%d-byte body): the server answered HTTP %d %r and closed "
                           "before the body was sent" % (method, path, len(body or b""),
                                                          resp.status, data[:200]))
        resp = conn.getresponse()
        data = resp.read()
        return HttpResult(resp.status, {k.lower(): v for k, v in resp.getheaders()}, data)
    finally:
        conn.close()


class Publisher:
    """Sequential POST /api/publish over one keep-alive connection (reconnects
    transparently if the server closes it between requests)."""

    def __init__(self, port, api_key, timeout=10.0):
        self.port = port
        self.api_key = api_key
        self.timeout = timeout
        self.conn = None

    def _connect(self):
        self.conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=self.timeout)

    def post(self, body_obj):
        body = json.dumps(body_obj, separators=(",", ":")).encode()
        headers = {"Authorization": "apikey " + self.api_key,
                   "Content-Type": "application/json"}
        for attempt in (0, 1):
            if self.conn is None:
                self._connect()
            try:
                self.conn.request("POST", "/api/publish", body=body, headers=headers)
                resp = self.conn.getresponse()
                data = resp.read()
                if resp.will_close:
                    self.close()
                return HttpResult(resp.status, {}, data)
            except (http.client.RemoteDisconnected, BrokenPipeError,
                    ConnectionResetError, http.client.CannotSendRequest):
                #  Closed before this request was read: retrying cannot duplicate it
                self.close()
                if attempt:
                    raise

    def close(self):
        if self.conn is not None:
            self.conn.close()
            self.conn = None


def parse_metrics(text):
    """Prometheus text → {"name{labels}": number}; raises E2EError on a bad line."""
    out = {}
    line_re = re.compile(r'^([a-zA-Z_:][a-zA-Z0-9_:]*(?:\{[^}]*\})?) (-?[0-9.eE+-]+|NaN|[+-]Inf)$')
    for line in text.splitlines():
        if not line or line.startswith("#"):
            continue
        m = line_re.match(line)
        if not m:
            raise E2EError("metrics: line not in Prometheus text format: %r" % line)
        v = m.group(2)
        out[m.group(1)] = int(v) if re.fullmatch(r"-?\d+", v) else float(v)
    return out


# --------------------------------------------------------------------------
#  The server process

class Server:
    """A running wsrouter serve. Use start_server()."""

    def __init__(self, args, env, secret, api_key, upstream_endpoint):
        self.secret = secret
        self.api_key = api_key
        self.upstream_endpoint = upstream_endpoint
        self.args = args
        self.port = None
        self.lines = []
        self.lines_lock = threading.Lock()
        self.ready = threading.Event()
        self.stderr_file = tempfile.TemporaryFile()
        self.proc = subprocess.Popen(args, env=env, stdin=subprocess.DEVNULL,
                                     stdout=subprocess.PIPE, stderr=self.stderr_file)
        self.returncode = None
        self.signals = []           # signals sent by a test (Server.signal) or stop()
        self.exit_checked = False
        self.reader = threading.Thread(target=self._read_stdout, daemon=True)
        self.reader.start()

    def _read_stdout(self):
        for raw in iter(self.proc.stdout.readline, b""):
            line = raw.decode("utf-8", "replace").rstrip("\n")
            with self.lines_lock:
                self.lines.append(line)
            if self.port is None and "listening on" in line:
                m = READY_RE.search(line)
                if m:
                    self.port = int(m.group(1))
                    self.ready.set()
        self.proc.stdout.close()

    def wait_ready(self, timeout=READY_TIMEOUT_S):
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.ready.wait(0.05):
                return
            if self.proc.poll() is not None:
                time.sleep(0.1)     # let the reader take the last lines
                raise E2EError("server exited with status %s before it was ready\n"
                               "  command: %s\n  stdout: %s\n  stderr: %s"
                               % (self.proc.returncode, " ".join(self.args),
                                  self.stdout_text()[-2000:], self.stderr_text()[-2000:]))
        raise E2EError("server printed no 'listening on ws://HOST:PORT/ws' line in %.0f s "
                       "(is stdout flushed?)\n  stdout: %s\n  stderr: %s"
                       % (timeout, self.stdout_text()[-2000:], self.stderr_text()[-2000:]))

    def stdout_text(self):
        with self.lines_lock:
            return "\n".join(self.lines)

    def stderr_text(self):
        try:
            self.stderr_file.seek(0)
            return self.stderr_file.read().decode("utf-8", "replace")
        except Exception:
            return ""

    @property
    def url(self):
        return "ws://127.0.0.1:%d/ws" % self.port

    @property
    def http_url(self):
        return "http://127.0.0.1:%d" % self.port

    def ws_url(self, token=None):
        return self.url if token is None else self.url + "?token=" + token

    def mint(self, sub, ttl=3600, channels=None, **kw):
        return mint(self.secret, sub, ttl=ttl, channels=channels, **kw)

    def http(self, method, path, body=None, headers=None, timeout=10.0):
        return http_request(self.port, method, path, body=body, headers=headers,
                            timeout=timeout)

    def publish(self, user=None, channel=None, data=None, data_base64=None,
                api_key=None, expect_ok=True, ensure_ascii=True):
        """POST /api/publish; returns HttpResult; raises E2EError on non-2xx
        when expect_ok."""
        body = {}
        if user is not None:
            body["user"] = user
        if channel is not None:
            body["channel"] = channel
        if data_base64 is not None:
            body["data_base64"] = data_base64
        else:
            body["data"] = data
        res = self.http("POST", "/api/publish",
                        body=json.dumps(body, separators=(",", ":"),
                                        ensure_ascii=ensure_ascii).encode(),
                        headers={"Authorization": "apikey " + (api_key or self.api_key),
                                 "Content-Type": "application/json"})
        if expect_ok and not 200 <= res.status < 300:
            shown = {k: (short_any(v) if k == "data" else v) for k, v in body.items()
                     if k != "data_base64"}
            if data_base64 is not None:
                shown["data_base64"] = "<%d chars>" % len(data_base64)
            raise E2EError("publish %s (%d-byte JSON body): expected 2xx, got %r"
                           % (shown, len(json.dumps(body, ensure_ascii=ensure_ascii)), res))
        return res

    def metrics(self):
        res = self.http("GET", "/metrics")
        if res.status != 200:
            raise E2EError("GET /metrics: expected 200, got %r" % res)
        return parse_metrics(res.text())

    def signal(self, sig):
        if self.proc.poll() is None:
            self.signals.append(sig)
            os.kill(self.proc.pid, sig)

    def stop(self, timeout=STOP_TIMEOUT_S):
        """SIGTERM, wait up to timeout, then SIGKILL. Returns the exit status
        (negative if killed by a signal) and whether it needed SIGKILL."""
        killed = False
        if self.proc.poll() is None:
            try:
                self.signals.append(signal.SIGTERM)
                os.kill(self.proc.pid, signal.SIGTERM)
            except ProcessLookupError:
                pass
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                killed = True
                os.kill(self.proc.pid, signal.SIGKILL)
                self.proc.wait(5)
        self.reader.join(2)
        self.returncode = self.proc.returncode
        self.killed = killed
        self._check_exit()
        return self.returncode

    def _check_exit(self):
        """Record a non-zero exit of a server that was ready, unless the
        harness had to SIGKILL it or a test sent it another signal than
        SIGTERM/SIGINT on purpose. A failed start is wait_ready's business."""
        if self.exit_checked:
            return
        self.exit_checked = True
        if (self.returncode == 0 or self.killed or not self.ready.is_set()
                or any(s not in (signal.SIGTERM, signal.SIGINT) for s in self.signals)):
            return
        when = "after SIGTERM" if self.signals else "before any signal (it died on its own)"
        UNCLEAN_EXITS.append("wsrouter (port %s) exited with status %s %s: a crash, an "
                             "assert, a sanitizer report or a failed drain"
                             "\n  command: %s\n  stderr tail:\n%s"
                             % (self.port, self.returncode, when, " ".join(self.args),
                                self.stderr_text()[-4000:]))

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.stop()
        self.stderr_file.close()


def start_server(secret=None, api_key=None, upstream=False, upstream_endpoint=None,
                 workers=None, max_message=None, extra_args=(), env=None,
                 use_env_config=False, jwt_secret_arg=True, relaxed_limits=True):
    """Start `wsrouter serve` on a free port and wait until it is ready.

    upstream=True picks a free port for --upstream-endpoint (server.upstream_endpoint).
    use_env_config=True passes port, bind, secret, api key and upstream via the
    environment variables instead of flags.
    relaxed_limits=True turns off the per-session rate limit, the per-IP cap
    and the handshake-rate cap, which functional tests (thousands of messages
    or sessions from 127.0.0.1) would otherwise trip; the hostile-client
    suites pass False and test the defaults.
    """
    secret = secret or ("s3cret-" + secrets.token_hex(16))
    api_key = api_key or ("key-" + secrets.token_hex(12))
    if upstream and not upstream_endpoint:
        upstream_endpoint = "tcp://127.0.0.1:%d" % free_port()
    full_env = dict(os.environ)
    for name in list(full_env):
        #  Hermetic: no configuration leaks in from the caller's environment
        if name.startswith("WEBSOCKET_") or name.startswith("JWT_"):
            full_env.pop(name, None)
    if env:
        full_env.update(env)
    args = [binary(), "serve"]
    if use_env_config:
        full_env.update({"WEBSOCKET_SERVICE_PORT": "0", "WEBSOCKET_BIND": "127.0.0.1",
                         "JWT_SECRET_KEY": secret, "WEBSOCKET_API_KEY": api_key})
        if upstream_endpoint:
            full_env["WEBSOCKET_UPSTREAM_ENDPOINT"] = upstream_endpoint
    else:
        args += ["--port", "0", "--bind", "127.0.0.1", "--api-key", api_key]
        if jwt_secret_arg:
            args += ["--jwt-secret", secret]
        if upstream_endpoint:
            args += ["--upstream-endpoint", upstream_endpoint]
    if workers is not None:
        args += ["--workers", str(workers)]
    if max_message is not None:
        args += ["--max-message", str(max_message)]
    if relaxed_limits:
        args += ["--rate-messages", "0", "--max-per-ip", "0", "--handshake-rate", "0",
                 "--max-pending-per-ip", "0"]
    args += list(extra_args)
    server = Server(args, full_env, secret, api_key, upstream_endpoint)
    try:
        server.wait_ready()
    except BaseException:
        server.stop()
        raise
    return server


def run_cli(args, env=None, timeout=15.0):
    """Run the wsrouter binary with args; returns CompletedProcess (text)."""
    full_env = dict(os.environ)
    if env:
        full_env.update(env)
    return subprocess.run([binary()] + list(args), env=full_env, stdin=subprocess.DEVNULL,
                          capture_output=True, timeout=timeout)


# --------------------------------------------------------------------------
#  WebSocket client helpers (websockets 10.4, asyncio)

import websockets  # noqa: E402  (after the helpers above on purpose: clearer errors)
from websockets.exceptions import ConnectionClosed  # noqa: E402


async def connect(url, extra_headers=None, timeout=10.0, **kw):
    kw.setdefault("max_size", None)
    kw.setdefault("ping_interval", None)
    kw.setdefault("open_timeout", timeout)
    kw.setdefault("close_timeout", 5)
    return await asyncio.wait_for(
        websockets.connect(url, extra_headers=extra_headers, **kw), timeout)


async def recv(ws, timeout=10.0, what="message"):
    """Next message, or E2EError if none in timeout or the connection closed."""
    try:
        return await asyncio.wait_for(ws.recv(), timeout)
    except asyncio.TimeoutError:
        raise E2EError("expected a %s within %.1f s, got nothing" % (what, timeout))
    except ConnectionClosed as e:
        raise E2EError("expected a %s, connection closed instead: code %s reason %r"
                       % (what, close_code(e), close_reason(e)))


async def expect_silence(ws, seconds=0.3, what="session"):
    """Fail if a message arrives within seconds."""
    try:
        msg = await asyncio.wait_for(ws.recv(), seconds)
    except asyncio.TimeoutError:
        return
    except ConnectionClosed as e:
        raise E2EError("%s: expected no message, connection closed: code %s reason %r"
                       % (what, close_code(e), close_reason(e)))
    raise E2EError("%s: expected no message, received %r" % (what, short(msg)))


def close_code(exc):
    rcvd = getattr(exc, "rcvd", None)
    if rcvd is not None:
        return rcvd.code
    return getattr(exc, "code", None)


def close_reason(exc):
    rcvd = getattr(exc, "rcvd", None)
    if rcvd is not None:
        return rcvd.reason
    return getattr(exc, "reason", None)


async def expect_close(ws, code, timeout=10.0, what="connection"):
    """Read until the server closes; assert the close code. Returns the reason.
    A data message before the close is a failure."""
    try:
        msg = await asyncio.wait_for(ws.recv(), timeout)
    except asyncio.TimeoutError:
        raise E2EError("%s: expected close %d within %.1f s, connection stayed open"
                       % (what, code, timeout))
    except ConnectionClosed as e:
        got = close_code(e)
        if got != code:
            raise E2EError("%s: expected close code %d, got %s (reason %r)"
                           % (what, code, got, close_reason(e)))
        return close_reason(e) or ""
    raise E2EError("%s: expected close %d, got a message %r first" % (what, code, short(msg)))


def short(msg, n=80):
    if isinstance(msg, (bytes, bytearray)):
        return bytes(msg[:n]) + (b"..." if len(msg) > n else b"")
    return msg[:n] + ("..." if len(msg) > n else "")


async def wait_until(pred, timeout=5.0, interval=0.05):
    """Poll pred() (sync) until true; returns the last value."""
    deadline = time.monotonic() + timeout
    while True:
        value = pred()
        if value or time.monotonic() >= deadline:
            return value
        await asyncio.sleep(interval)


async def settle(srv, sessions, timeout=3.0):
    """Wait (bounded, never failing) until the server reports `sessions` open
    sessions: authentication may finish a moment after the 101, and sessions
    closed by an earlier case may still be draining. Returns the last value."""
    deadline = time.monotonic() + timeout
    value = None
    while time.monotonic() < deadline:
        try:
            value = srv.metrics().get("wsrouter_sessions_open")
        except Exception:
            value = None
        if value == sessions:
            break
        await asyncio.sleep(0.02)
    return value


async def close_all(*sockets):
    for ws in sockets:
        if ws is None:
            continue
        try:
            await asyncio.wait_for(ws.close(), 5)
        except Exception:
            pass


def expect(cond, message):
    if not cond:
        raise E2EError(message)


def expect_eq(observed, expected, what):
    if observed != expected:
        raise E2EError("%s: expected %r, observed %r" % (what, short_any(expected),
                                                           short_any(observed)))


def short_any(v):
    if isinstance(v, (str, bytes, bytearray)) and len(v) > 120:
        return short(v, 120)
    return v


# --------------------------------------------------------------------------
#  Case runner

class Suite:
    """Collects cases; prints one line per case and `N passed, M failed`."""

    def __init__(self, name):
        self.name = name
        self.passed = 0
        self.failed = 0
        self.skipped = 0
        self.failures = []

    def ok(self, case, note=""):
        self.passed += 1
        print("PASS %s%s" % (case, (" — " + note) if note else ""), flush=True)

    def fail(self, case, message):
        self.failed += 1
        self.failures.append((case, message))
        print("FAIL %s: %s" % (case, message), flush=True)

    def skip(self, case, why):
        """case could not run here (what it needs is missing): the suite
        then exits SKIP unless a case failed."""
        self.skipped += 1
        print("SKIP %s: %s" % (case, why), flush=True)

    async def case(self, name, coro_fn, *args, timeout=60.0):
        """Run one async case with a hard timeout."""
        try:
            await asyncio.wait_for(coro_fn(*args), timeout)
        except asyncio.TimeoutError:
            self.fail(name, "case timed out after %.0f s" % timeout)
        except E2EError as e:
            self.fail(name, str(e))
        except Exception as e:
            self.fail(name, "%s: %s\n%s" % (type(e).__name__, e, traceback.format_exc()))
        else:
            self.ok(name)

    def finish(self):
        while UNCLEAN_EXITS:
            self.fail("server exit status", UNCLEAN_EXITS.pop(0))
        line = "%d passed, %d failed" % (self.passed, self.failed)
        if self.skipped:
            line += ", %d skipped" % self.skipped
        if self.failures:
            print("%s: failed cases: %s" % (self.name, ", ".join(c for c, _ in self.failures)),
                  flush=True)
        print(line, flush=True)
        if self.failed:
            return 1
        if self.skipped:
            print("%s: skipped (exit %d): not everything could run here" % (self.name, SKIP),
                  flush=True)
            return SKIP
        return 0 if self.passed > 0 else 1


@atexit.register
def _unclean_at_exit():
    """A script without a Suite (or one that never called finish()) still
    fails when one of its servers exited unclean."""
    if UNCLEAN_EXITS:
        for message in UNCLEAN_EXITS:
            print("FAIL server exit status: %s" % message, flush=True)
        sys.stdout.flush()
        os._exit(1)


def main(suite_name, body):
    """Run async body(suite); exit with the suite's status. A setup error
    (server does not start) is reported as one failed case."""
    suite = Suite(suite_name)
    try:
        binary()
    except E2EError as ex:
        suite.fail("setup", str(ex))
        sys.exit(suite.finish())

    async def runner():
        try:
            await body(suite)
        except SkipSuite as e:
            suite.skip("suite", str(e))
        except E2EError as e:
            suite.fail("setup", str(e))
        except Exception as e:
            suite.fail("setup", "%s: %s\n%s" % (type(e).__name__, e, traceback.format_exc()))

    asyncio.run(runner())
    sys.exit(suite.finish())


# --------------------------------------------------------------------------
#  A raw, blocking WebSocket client: for peers that misbehave on purpose
#  (never answer a close, send bytes a library would refuse to send).

class RawWs:
    def __init__(self, port, path, timeout=10.0, headers=None):
        self.sock = socket.create_connection(("127.0.0.1", port), timeout=timeout)
        key = base64.b64encode(os.urandom(16)).decode()
        lines = ["GET %s HTTP/1.1" % path, "Host: 127.0.0.1:%d" % port,
                 "Upgrade: websocket", "Connection: Upgrade",
                 "Sec-WebSocket-Key: " + key, "Sec-WebSocket-Version: 13"]
        for k, v in (headers or {}).items():
            lines.append("%s: %s" % (k, v))
        self.sock.sendall(("\r\n".join(lines) + "\r\n\r\n").encode())
        self.buf = b""
        while b"\r\n\r\n" not in self.buf:
            chunk = self.sock.recv(4096)
            if not chunk:
                raise E2EError("raw client: connection closed during the handshake: %r"
                               % self.buf)
            self.buf += chunk
        head, self.buf = self.buf.split(b"\r\n\r\n", 1)
        self.status_line = head.split(b"\r\n", 1)[0].decode("latin-1")
        if " 101 " not in self.status_line + " ":
            raise E2EError("raw client: expected 101, got %r" % self.status_line)
        want = base64.b64encode(hashlib.sha1(
            (key + "258EAFA5-E914-47DA-95CA-C5AB0DC85B11").encode()).digest()).decode()
        if ("sec-websocket-accept: " + want.lower()) not in head.decode("latin-1").lower():
            raise E2EError("raw client: bad or missing Sec-WebSocket-Accept in %r" % head)

    def _read(self, n, deadline):
        while len(self.buf) < n:
            left = deadline - time.monotonic()
            if left <= 0:
                raise socket.timeout("raw client: read timed out")
            self.sock.settimeout(left)
            chunk = self.sock.recv(65536)
            if not chunk:
                raise ConnectionError("raw client: connection closed by the server")
            self.buf += chunk
        out, self.buf = self.buf[:n], self.buf[n:]
        return out

    def read_frame(self, timeout=10.0):
        """(fin, opcode, payload) of the next frame from the server."""
        deadline = time.monotonic() + timeout
        b0, b1 = self._read(2, deadline)
        if b1 & 0x80:
            raise E2EError("raw client: server frame is masked")
        n = b1 & 0x7F
        if n == 126:
            n = int.from_bytes(self._read(2, deadline), "big")
        elif n == 127:
            n = int.from_bytes(self._read(8, deadline), "big")
        return bool(b0 & 0x80), b0 & 0x0F, self._read(n, deadline)

    def send_frame(self, opcode, payload, fin=True):
        header = bytes([(0x80 if fin else 0) | opcode])
        n = len(payload)
        if n < 126:
            header += bytes([0x80 | n])
        elif n < 65536:
            header += bytes([0x80 | 126]) + n.to_bytes(2, "big")
        else:
            header += bytes([0x80 | 127]) + n.to_bytes(8, "big")
        mask = os.urandom(4)
        masked = bytes(b ^ mask[i % 4] for i, b in enumerate(payload))
        self.sock.sendall(header + mask + masked)

    def close(self):
        try:
            self.sock.close()
        except OSError:
            pass
