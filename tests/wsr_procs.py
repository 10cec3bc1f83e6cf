#!/usr/bin/python3
"""wsr_procs — processes the end-to-end suites start and stop by PID:
redis-server, nats-server, `wsrouter bridge`, `wsrouter serve` nodes.
Shared by e2e_bridge, e2e_security and the other backplane suites."""

import os
import re
import shutil
import signal
import socket
import subprocess
import tempfile
import threading
import time

import wsr_e2e as e

REDIS_SERVER = shutil.which("redis-server") or "/usr/bin/redis-server"
NATS_SERVER = "/usr/sbin/nats-server" if os.access("/usr/sbin/nats-server", os.X_OK) \
    else (shutil.which("nats-server") or "/usr/sbin/nats-server")


#  Everything started by this suite, stopped (by PID) at the end at the latest
_STARTED = []


def stop_everything():
    for obj in reversed(_STARTED):
        try:
            obj.stop()
        except Exception:
            pass


# --------------------------------------------------------------------------
#  External processes: redis-server, nats-server, wsrouter bridge

class ExtProc:
    """A server process on a fixed port; start() again restarts it on that port."""

    name = "process"

    def __init__(self, port):
        self.port = port
        self.proc = None
        self.log = tempfile.TemporaryFile()
        _STARTED.append(self)

    def argv(self):
        raise NotImplementedError

    def start(self):
        self.proc = subprocess.Popen(self.argv(), stdin=subprocess.DEVNULL,
                                     stdout=self.log, stderr=subprocess.STDOUT)
        self.wait_ready()
        return self

    def log_tail(self, n=1500):
        try:
            self.log.seek(0)
            return self.log.read().decode("utf-8", "replace")[-n:]
        except Exception:
            return ""

    def alive(self):
        return self.proc is not None and self.proc.poll() is None

    def wait_ready(self, timeout=10.0):
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise e.E2EError("%s exited with status %s at start on port %d: %s"
                                 % (self.name, self.proc.returncode, self.port, self.log_tail()))
            if self.ping():
                return
            time.sleep(0.05)
        raise e.E2EError("%s on port %d not answering within %.0f s: %s"
                         % (self.name, self.port, timeout, self.log_tail()))

    def ping(self):
        raise NotImplementedError

    def stop(self, sig=signal.SIGTERM, timeout=5.0):
        """Signal by PID, wait; SIGKILL if it does not exit in time."""
        if self.proc is None:
            return None
        if self.proc.poll() is None:
            try:
                os.kill(self.proc.pid, sig)
            except ProcessLookupError:
                pass
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                os.kill(self.proc.pid, signal.SIGKILL)
                self.proc.wait(5)
        return self.proc.returncode


class RedisProc(ExtProc):
    name = "redis-server"

    def __init__(self, port=None):
        super().__init__(port or e.free_port())
        self.dir = tempfile.mkdtemp(prefix="e2e-redis-")

    @property
    def url(self):
        return "redis://127.0.0.1:%d" % self.port

    def argv(self):
        return [REDIS_SERVER, "--port", str(self.port), "--bind", "127.0.0.1",
                "--save", "", "--appendonly", "no", "--protected-mode", "no",
                "--dir", self.dir, "--daemonize", "no"]

    def ping(self):
        return redis_ping(self.port)


class NatsProc(ExtProc):
    name = "nats-server"

    def __init__(self, port=None):
        super().__init__(port or e.free_port())

    @property
    def url(self):
        return "nats://127.0.0.1:%d" % self.port

    def argv(self):
        return [NATS_SERVER, "-a", "127.0.0.1", "-p", str(self.port)]

    def ping(self):
        return nats_ping(self.port)


def redis_ping(port, timeout=0.5):
    """True if a RESP PING on a new connection answers +PONG."""
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=timeout) as s:
            s.settimeout(timeout)
            s.sendall(b"*1\r\n$4\r\nPING\r\n")
            buf = b""
            while b"\r\n" not in buf:
                chunk = s.recv(64)
                if not chunk:
                    return False
                buf += chunk
            return buf.startswith(b"+PONG")
    except OSError:
        return False


def nats_ping(port, timeout=0.5):
    """True if a NATS server sends INFO and answers PING with PONG."""
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=timeout) as s:
            s.settimeout(timeout)
            buf = b""
            while b"\r\n" not in buf:
                chunk = s.recv(4096)
                if not chunk:
                    return False
                buf += chunk
            if not buf.startswith(b"INFO"):
                return False
            s.sendall(b'CONNECT {"verbose":false,"pedantic":false}\r\nPING\r\n')
            buf = buf.split(b"\r\n", 1)[1]
            while b"PONG\r\n" not in buf:
                chunk = s.recv(4096)
                if not chunk:
                    return False
                buf += chunk
            return True
    except OSError:
        return False


BRIDGE_LISTEN = "bridge listening on tcp://"
BRIDGE_STATUS_RE = re.compile(r"status on http://([^/\s]+):(\d+)/")


class BridgeProc:
    """`wsrouter bridge --endpoint tcp://127.0.0.1:PORT --http-port P`."""

    def __init__(self, port, http_port=0, redis_url=None, nats_url=None, upstream_url=None,
                 firehose=False, extra_args=(), bind="127.0.0.1"):
        self.port = port
        self.extra_args = list(extra_args)
        self.bind = bind
        self.http_port_arg = http_port
        self.http_port = None
        self.redis_url = redis_url
        self.nats_url = nats_url
        self.upstream_url = upstream_url
        self.firehose = firehose
        self.proc = None
        self.lines = []
        self.lock = threading.Lock()
        self.ready = threading.Event()
        self.ready_at = None
        _STARTED.append(self)

    @property
    def endpoint(self):
        return "tcp://%s:%d" % (self.bind, self.port)

    def argv(self):
        args = [e.binary(), "bridge", "--endpoint", self.endpoint,
                "--http-port", str(self.http_port_arg), "--http-bind", "127.0.0.1"]
        if self.redis_url:
            args += ["--redis-url", self.redis_url]
        if self.nats_url:
            args += ["--nats-url", self.nats_url]
        if self.upstream_url:
            args += ["--upstream-url", self.upstream_url]
        if self.firehose:
            args += ["--firehose"]
        return args + self.extra_args

    def _read(self, proc):
        for raw in iter(proc.stdout.readline, b""):
            line = raw.decode("utf-8", "replace").rstrip("\n")
            with self.lock:
                self.lines.append(line)
            if BRIDGE_LISTEN in line and not self.ready.is_set():
                m = BRIDGE_STATUS_RE.search(line)
                if m:
                    self.http_port = int(m.group(2))
                self.ready_at = time.monotonic()
                self.ready.set()
        proc.stdout.close()

    def start(self, timeout=10.0):
        """Start (or restart, on the same ports) and wait for the listening line."""
        env = {k: v for k, v in os.environ.items()
               if not (k.startswith("WEBSOCKET_") or k.startswith("NATS_") or k.startswith("JWT_"))}
        self.ready.clear()
        self.ready_at = None
        with self.lock:
            self.lines.append("---- start %s" % " ".join(self.argv()))
        self.proc = subprocess.Popen(self.argv(), env=env, stdin=subprocess.DEVNULL,
                                     stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
        threading.Thread(target=self._read, args=(self.proc,), daemon=True).start()
        deadline = time.monotonic() + timeout
        while not self.ready.wait(0.05):
            if self.proc.poll() is not None:
                time.sleep(0.1)
                raise e.E2EError("bridge exited with status %s before printing %r: %s"
                                 % (self.proc.returncode, BRIDGE_LISTEN, self.output()[-2000:]))
            if time.monotonic() > deadline:
                raise e.E2EError("bridge printed no %r line within %.0f s: %s"
                                 % (BRIDGE_LISTEN, timeout, self.output()[-2000:]))
        if self.http_port is None:
            raise e.E2EError("bridge started with --http-port but its listening line has no "
                             "'status on http://ADDR:PORT/': %s" % self.output()[-1000:])
        #  A restart must come back on the same ports
        self.http_port_arg = self.http_port
        return self

    def output(self):
        with self.lock:
            return "\n".join(self.lines)

    def kill(self):
        """SIGKILL by PID, reaped."""
        if self.proc is not None and self.proc.poll() is None:
            os.kill(self.proc.pid, signal.SIGKILL)
            self.proc.wait(5)

    def stop(self, timeout=5.0):
        if self.proc is None or self.proc.poll() is not None:
            return
        os.kill(self.proc.pid, signal.SIGTERM)
        try:
            self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            os.kill(self.proc.pid, signal.SIGKILL)
            self.proc.wait(5)

    def http(self, method, path, timeout=3.0):
        return e.http_request(self.http_port, method, path, timeout=timeout)

    def readyz(self):
        try:
            return self.http("GET", "/readyz", timeout=1.0).status
        except Exception:
            return None

    def metrics(self):
        res = self.http("GET", "/metrics")
        if res.status != 200:
            raise e.E2EError("bridge GET /metrics: expected 200, got %r" % res)
        return e.parse_metrics(res.text())


def start_node(**kw):
    srv = e.start_server(**kw)
    _STARTED.append(srv)
    return srv


def node_readyz(srv):
    try:
        return srv.http("GET", "/readyz", timeout=1.0).status
    except Exception:
        return None


