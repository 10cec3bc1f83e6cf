"""wsr_netns — network namespaces, processes and agents for the multi-host tests.

Shared by tests/e2e_netns.py (one bridge, two nodes) and
tests/e2e_scale_netns.py (Redis Cluster, NATS cluster, two bridges, three
nodes). Each test names its hosts and their addresses in a /24 of its own;
Topology makes one network namespace per host, wired by veth pairs to a
Linux bridge device in a dedicated "switch" namespace: nothing is
connected to the host's network.

Every program in a namespace is started with `ip netns exec NS ...` (which
execs: the PID we hold is the program's) and gets SIGKILL if the test
process dies (PR_SET_PDEATHSIG). Helpers that run inside namespaces are the
agent script tests/wsr_netns_agent.py, driven over stdin/stdout with JSON
lines (Agent). Agents and the test share CLOCK_MONOTONIC (not namespaced),
so receive times and restart times compare.
"""

import base64
import ctypes
import itertools
import json
import os
import re
import signal
import shutil
import subprocess
import threading
import time
import traceback

import wsr_e2e as e

HERE = os.path.dirname(os.path.abspath(__file__))
PY = "/usr/bin/python3"
AGENT = os.path.join(HERE, "wsr_netns_agent.py")
CLONE_NEWNET = 0x40000000           # <sched.h>: unshare the network namespace
READY_TIMEOUT_S = 15.0


class SetupError(e.E2EError):
    pass


class TestTimeout(BaseException):
    pass


class Interrupted(BaseException):
    pass


# --------------------------------------------------------------------------
#  Plumbing: commands, processes, namespaces

_libc = ctypes.CDLL(None, use_errno=True)


def _die_with_parent():
    """Child side of Popen: SIGKILL if the test process dies (even by SIGKILL).
    `ip netns exec` execs the program, so this reaches the program itself."""
    _libc.prctl(1, signal.SIGKILL, 0, 0, 0)     # PR_SET_PDEATHSIG


def run(argv, timeout=10.0, check=True):
    try:
        r = subprocess.run(argv, stdin=subprocess.DEVNULL, capture_output=True,
                           timeout=timeout)
    except subprocess.TimeoutExpired:
        raise SetupError("command timed out after %.0f s: %s" % (timeout, " ".join(argv)))
    if check and r.returncode != 0:
        raise SetupError("command failed (exit %d): %s\n  %s"
                         % (r.returncode, " ".join(argv),
                            (r.stderr or r.stdout).decode("utf-8", "replace").strip()))
    return r


def clean_env(**extra):
    env = {k: v for k, v in os.environ.items()
           if not k.startswith(("WEBSOCKET_", "JWT_", "NATS_", "REDIS_"))}
    env.update(extra)
    return env


class Topology:
    """Namespaces TAG<PID>-<host>, a bridge br0 in TAG<PID>-switch; host h
    has eth0 with addr[h]/24."""

    def __init__(self, tag, hosts, addr, pid=None):
        self.tag = tag
        self.hosts = list(hosts)
        self.addr = addr
        self.prefix = "%s%d-" % (tag, pid or os.getpid())
        self.switch = self.prefix + "switch"
        self.created = []

    def ns(self, host):
        return self.prefix + host

    def build(self):
        for name in [self.switch] + [self.ns(h) for h in self.hosts]:
            r = run(["ip", "netns", "add", name], check=False)
            if r.returncode != 0:
                raise SetupError("ip netns add %s failed (exit %d) although running as root: %s"
                                 % (name, r.returncode,
                                    r.stderr.decode("utf-8", "replace").strip()))
            self.created.append(name)
            run(["ip", "-n", name, "link", "set", "lo", "up"])
        sw = self.switch
        run(["ip", "-n", sw, "link", "add", "br0", "type", "bridge", "stp_state", "0",
             "forward_delay", "0"])
        run(["ip", "-n", sw, "link", "set", "br0", "up"])
        for h in self.hosts:
            port = "p-" + h          # names are per namespace: no clash between runs
            run(["ip", "-n", sw, "link", "add", port, "type", "veth", "peer", "name",
                 "eth0", "netns", self.ns(h)])
            run(["ip", "-n", sw, "link", "set", port, "master", "br0"])
            run(["ip", "-n", sw, "link", "set", port, "up"])
            run(["ip", "-n", self.ns(h), "addr", "add", self.addr[h] + "/24", "dev", "eth0"])
            run(["ip", "-n", self.ns(h), "link", "set", "eth0", "up"])

    def teardown(self):
        """Delete every namespace created; returns a list of problems."""
        problems = []
        for name in reversed(self.created):
            r = run(["ip", "netns", "del", name], check=False)
            if r.returncode != 0:
                problems.append("ip netns del %s: %s" % (
                    name, r.stderr.decode("utf-8", "replace").strip()))
        left = [n for n in Topology.listed() if n in self.created]
        if left:
            problems.append("namespaces still listed after teardown: %s" % ", ".join(left))
        self.created = []
        return problems

    def sweep_stale(self):
        """Delete namespaces left by runs of this test that were SIGKILLed
        (their programs died with them: PR_SET_PDEATHSIG). Only names
        TAG<PID>-<host|switch> whose PID no longer exists."""
        removed = []
        pattern = r"^%s(\d+)-(%s)$" % (re.escape(self.tag), "|".join(
            map(re.escape, self.hosts + ["switch"])))
        for name in Topology.listed():
            m = re.match(pattern, name)
            if m and int(m.group(1)) != os.getpid() and \
                    not os.path.exists("/proc/%s" % m.group(1)):
                if run(["ip", "netns", "del", name], check=False).returncode == 0:
                    removed.append(name)
        return removed

    @staticmethod
    def listed():
        r = run(["ip", "netns", "list"], check=False)
        return [l.split()[0] for l in r.stdout.decode().splitlines() if l.strip()]

    def ping_matrix(self):
        """ICMP from every host to every other; returns a summary, raises on loss."""
        lost = []
        worst = 0.0
        for src in self.hosts:
            dsts = [self.addr[h] for h in self.hosts if h != src]
            r = run(["ip", "netns", "exec", self.ns(src), PY, AGENT, "ping"] + dsts,
                    timeout=20)
            res = json.loads(r.stdout.decode().strip().splitlines()[-1])
            for h in self.hosts:
                if h == src:
                    continue
                rtt = res.get(self.addr[h])
                if rtt is None:
                    lost.append("%s → %s (%s)" % (src, h, self.addr[h]))
                else:
                    worst = max(worst, rtt)
        if lost:
            raise SetupError("no ICMP echo reply within 2 s: " + ", ".join(lost))
        n = len(self.hosts)
        return "%d pairs answered, worst RTT %.2f ms" % (n * (n - 1), worst)

    def host_isolated(self):
        """Raise if the host namespace has an address of our subnets."""
        nets = sorted({a.rsplit(".", 1)[0] + "." for a in self.addr.values()})
        r = run(["ip", "-4", "-o", "addr", "show"], check=False)
        leaked = [l for l in r.stdout.decode().splitlines()
                  if any(" %s" % n in l for n in nets)]
        if leaked:
            raise SetupError("the host namespace has an address in %s: %s"
                             % (", ".join(n + "0/24" for n in nets), leaked))


class Proc:
    """A program started in a namespace; output (stdout+stderr) captured with
    the monotonic time of each line."""

    def __init__(self, name, ns, argv, env=None, cwd=None, ready=None, stdin=False):
        self.name = name
        self.argv = ["ip", "netns", "exec", ns] + list(argv)
        self.lines = []
        self.times = []             # monotonic time each line was read
        self.lock = threading.Condition()
        self.ready_pattern = ready
        self.ready_t = None
        self.expected_exit = False
        self.proc = subprocess.Popen(
            self.argv, env=env or clean_env(), cwd=cwd,
            stdin=subprocess.PIPE if stdin else subprocess.DEVNULL,
            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, preexec_fn=_die_with_parent)
        self.pid = self.proc.pid
        self.reader = threading.Thread(target=self._read, daemon=True)
        self.reader.start()

    def on_line(self, line, t):
        pass

    def _read(self):
        for raw in iter(self.proc.stdout.readline, b""):
            t = time.monotonic()
            line = raw.decode("utf-8", "replace").rstrip("\n")
            self.on_line(line, t)
            with self.lock:
                self.lines.append(line)
                self.times.append(t)
                if self.ready_t is None and self.ready_pattern is not None \
                        and re.search(self.ready_pattern, line):
                    self.ready_t = t
                self.lock.notify_all()
        with self.lock:
            self.lock.notify_all()

    def alive(self):
        return self.proc.poll() is None

    def first_line_after(self, t0, pattern):
        """Monotonic time of the first output line read at or after t0 that
        matches pattern (a regex), or None."""
        with self.lock:
            for t, line in zip(self.times, self.lines):
                if t >= t0 and re.search(pattern, line):
                    return t
        return None

    def tail(self, n=15):
        with self.lock:
            return "\n    ".join(self.lines[-n:]) or "(no output)"

    def describe(self):
        st = "running" if self.alive() else "exited with status %s" % self.proc.returncode
        return "%s (pid %d, %s); last output:\n    %s" % (self.name, self.pid, st, self.tail())

    def wait_ready(self, timeout=READY_TIMEOUT_S):
        deadline = time.monotonic() + timeout
        with self.lock:
            while self.ready_t is None:
                left = deadline - time.monotonic()
                if left <= 0 or (not self.alive() and not self.reader.is_alive()):
                    break
                self.lock.wait(min(left, 0.1))
            if self.ready_t is not None:
                return self.ready_t
        raise SetupError("%s printed no line matching %r within %.0f s\n  command: %s\n  %s"
                         % (self.name, self.ready_pattern, timeout, " ".join(self.argv),
                            self.describe()))

    def kill(self, sig, wait=10.0):
        """Send sig by PID and wait for the exit; returns the exit status."""
        self.expected_exit = True
        if self.alive():
            try:
                os.kill(self.pid, sig)
            except ProcessLookupError:
                pass
        try:
            return self.proc.wait(wait)
        except subprocess.TimeoutExpired:
            os.kill(self.pid, signal.SIGKILL)
            self.proc.wait(5)
            raise e.E2EError("%s (pid %d) did not exit within %.0f s of signal %d; SIGKILLed"
                             % (self.name, self.pid, wait, sig))


class Agent(Proc):
    """An agent process: call(op, ...) → reply dict; events collected."""

    def __init__(self, name, ns, script, role, args=(), cwd=None):
        self.replies = {}
        self.events = []
        self.ids = itertools.count(1)
        self.wlock = threading.Lock()
        super().__init__(name, ns, [PY, script, role] + list(args), cwd=cwd, stdin=True)

    def on_line(self, line, t):
        try:
            obj = json.loads(line)
        except ValueError:
            return      # stray output (a traceback): kept in lines for describe()
        with self.lock:
            if "re" in obj:
                self.replies[obj["re"]] = obj
            else:
                self.events.append(obj)

    def send(self, op, **kw):
        rid = next(self.ids)
        kw.update(id=rid, op=op)
        with self.wlock:
            try:
                self.proc.stdin.write((json.dumps(kw) + "\n").encode())
                self.proc.stdin.flush()
            except (BrokenPipeError, ValueError):
                raise e.E2EError("agent %s is gone: %s" % (self.name, self.describe()))
        return rid

    def result(self, rid, timeout, what):
        deadline = time.monotonic() + timeout
        with self.lock:
            while rid not in self.replies:
                left = deadline - time.monotonic()
                if left <= 0:
                    raise e.E2EError("agent %s: no answer to %s within %.1f s"
                                     % (self.name, what, timeout))
                if not self.alive():
                    raise e.E2EError("agent %s died during %s: %s"
                                     % (self.name, what, self.describe()))
                self.lock.wait(min(left, 0.1))
            return self.replies.pop(rid)

    def call(self, op, timeout=5.0, check=True, **kw):
        r = self.result(self.send(op, **kw), timeout, op)
        if check and not r.get("ok"):
            raise e.E2EError("agent %s: %s %s failed: %s"
                             % (self.name, op, {k: v for k, v in kw.items() if k != "d"},
                                r.get("err")))
        return r

    def event_list(self):
        with self.lock:
            return list(self.events)

    def events_since(self, start):
        """(events[start:], new start): for readers that go through them once."""
        with self.lock:
            return self.events[start:], len(self.events)


def b64(b):
    return base64.b64encode(b).decode()


def unb64(s):
    return base64.b64decode(s)


def compress(values):
    """[0,0,0,1,1] → '0×3, 1×2'."""
    out = []
    for v in values:
        if out and out[-1][0] == v:
            out[-1][1] += 1
        else:
            out.append([v, 1])
    return ", ".join("%s×%d" % (v, n) for v, n in out)


def nats_server_path():
    for p in ("/usr/sbin/nats-server", "/usr/bin/nats-server"):
        if os.access(p, os.X_OK):
            return p
    return shutil.which("nats-server") or "/usr/sbin/nats-server"


def metric(text, name):
    """Value of an unlabelled Prometheus sample in text, or None."""
    for line in (text or "").splitlines():
        if line.startswith(name + " "):
            return float(line.split()[1])
    return None


# --------------------------------------------------------------------------
#  Runner

def run_case(suite, name, fn, *args):
    try:
        note = fn(*args)
    except e.E2EError as ex:
        suite.fail(name, str(ex))
    except (TestTimeout, Interrupted):
        raise
    except Exception as ex:
        suite.fail(name, "%s: %s\n%s" % (type(ex).__name__, ex, traceback.format_exc()))
    else:
        suite.ok(name, note or "")


def bridge_supported(binpath):
    try:
        r = subprocess.run([binpath, "bridge", "--help"], stdin=subprocess.DEVNULL,
                           capture_output=True, timeout=10)
    except Exception as ex:
        return False, str(ex)
    out = (r.stdout + r.stderr).decode("utf-8", "replace").strip()
    return r.returncode == 0, "exit %d: %s" % (r.returncode, out[:300])


def netns_refused():
    """Why this process cannot make network namespaces, or None if it can:
    unshare(CLONE_NEWNET) tried in a child that exits at once."""
    if os.geteuid() != 0:
        return "cannot create network namespaces (not root: euid %d)" % os.geteuid()
    pid = os.fork()
    if pid == 0:
        rc = _libc.unshare(CLONE_NEWNET)
        os._exit(0 if rc == 0 else min(ctypes.get_errno(), 255) or 255)
    _, status = os.waitpid(pid, 0)
    code = os.waitstatus_to_exitcode(status)
    if code != 0:
        return "cannot create network namespaces: unshare(CLONE_NEWNET): %s" % (
            os.strerror(code) if 0 < code < 255 else "failed")
    return None


def arm(limit_s):
    """SIGALRM after limit_s raises TestTimeout; SIGTERM / SIGINT raise
    Interrupted (so the finally blocks tear everything down)."""
    def on_alarm(signum, frame):
        raise TestTimeout()

    def on_term(signum, frame):
        raise Interrupted()

    signal.signal(signal.SIGALRM, on_alarm)
    signal.signal(signal.SIGTERM, on_term)
    signal.signal(signal.SIGINT, on_term)
    signal.alarm(limit_s)


def disarm():
    """No more alarm; SIGTERM / SIGINT ignored while tearing down."""
    signal.alarm(0)
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    signal.signal(signal.SIGINT, signal.SIG_IGN)
