"""redis_cluster — a throwaway local Redis Cluster for tests.

    with RedisCluster(masters=3, replicas=1) as rc:     # starts, waits for cluster_state:ok
        url = "redis+cluster://" + rc.seeds()
        killed, replica = rc.kill_master(port)          # SIGKILL the master of a slot
        rc.wait_promoted(replica)                       # monotonic time of the promotion

Each node is `redis-server --cluster-enabled yes` with a short
`cluster-node-timeout` on a loopback port P whose cluster bus port P+10000 is
free too, in its own temporary directory, no persistence. The cluster is
made with `redis-cli --cluster create`. Every process is started here and
stopped here by PID (stop(), the context manager, atexit), and also gets
SIGKILL from the kernel if the test process dies (PR_SET_PDEATHSIG).

No client library is needed: `command()` speaks RESP2 on a plain socket.
`python3 tests/redis_cluster.py` runs a self-check (exit 77 if redis-server
is missing).
"""

import atexit
import ctypes
import os
import random
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time

NODE_TIMEOUT_MS = 1000      # cluster-node-timeout: a dead master is replaced after ~2 s
START_TIMEOUT_S = 20.0      # all nodes answer, cluster created and ok
COMMAND_TIMEOUT_S = 5.0     # one RESP command
PORT_LOW, PORT_HIGH = 20000, 22700  # P and P+10000 both below the ephemeral range (32768-)
PR_SET_PDEATHSIG = 1

_LIVE = []                  # clusters not yet stopped, for atexit


class ClusterError(AssertionError):
    """The cluster did not reach the state a test waited for."""


def available():
    """True if redis-server and redis-cli are installed."""
    return bool(shutil.which("redis-server") and shutil.which("redis-cli"))


def crc16(data):
    """CRC16-XMODEM as in the Redis Cluster spec (poly 0x1021, init 0)."""
    crc = 0
    for byte in data:
        crc ^= byte << 8
        for _ in range(8):
            crc = ((crc << 1) ^ 0x1021) if crc & 0x8000 else (crc << 1)
            crc &= 0xFFFF
    return crc


def key_slot(key):
    """Slot of a key, with {hash tags}."""
    if isinstance(key, str):
        key = key.encode()
    start = key.find(b"{")
    if start >= 0:
        end = key.find(b"}", start + 1)
        if end > start + 1:
            key = key[start + 1:end]
    return crc16(key) % 16384


def _port_free(port):
    s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    try:
        s.bind(("127.0.0.1", port))
        return True
    except OSError:
        return False
    finally:
        s.close()


def free_cluster_ports(count, taken=()):
    """count ports P on 127.0.0.1 with P and P+10000 free a moment ago."""
    ports = []
    rng = random.Random(os.getpid() ^ time.monotonic_ns())
    for _ in range(5000):
        p = rng.randrange(PORT_LOW, PORT_HIGH)
        if p in ports or p in taken:
            continue
        if _port_free(p) and _port_free(p + 10000):
            ports.append(p)
            if len(ports) == count:
                return ports
    raise ClusterError("no free port pairs in %d..%d" % (PORT_LOW, PORT_HIGH))


def _pdeathsig():
    libc = ctypes.CDLL(None, use_errno=True)
    libc.prctl(PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0)


# --------------------------------------------------------------------------
#  RESP2 on a plain socket

class _Reader:
    def __init__(self, sock):
        self.sock = sock
        self.buf = b""

    def _line(self):
        while b"\r\n" not in self.buf:
            chunk = self.sock.recv(65536)
            if not chunk:
                raise ConnectionError("connection closed")
            self.buf += chunk
        line, self.buf = self.buf.split(b"\r\n", 1)
        return line

    def _exact(self, n):
        while len(self.buf) < n + 2:
            chunk = self.sock.recv(65536)
            if not chunk:
                raise ConnectionError("connection closed")
            self.buf += chunk
        data, self.buf = self.buf[:n], self.buf[n + 2:]
        return data

    def reply(self):
        line = self._line()
        kind, rest = line[:1], line[1:]
        if kind == b"+":
            return rest.decode()
        if kind == b"-":
            return RespError(rest.decode())
        if kind == b":":
            return int(rest)
        if kind == b"$":
            n = int(rest)
            return None if n < 0 else self._exact(n)
        if kind == b"*":
            n = int(rest)
            return None if n < 0 else [self.reply() for _ in range(n)]
        raise ConnectionError("bad RESP type %r" % kind)


class RespError(str):
    """An error reply (returned, not raised, so callers can look at MOVED/ASK)."""


def encode(*args):
    out = [b"*%d\r\n" % len(args)]
    for a in args:
        if isinstance(a, int):
            a = str(a)
        if isinstance(a, str):
            a = a.encode()
        out.append(b"$%d\r\n%s\r\n" % (len(a), a))
    return b"".join(out)


class Conn:
    """One RESP2 connection (blocking, with a timeout)."""

    def __init__(self, port, password=None, timeout=COMMAND_TIMEOUT_S):
        self.sock = socket.create_connection(("127.0.0.1", port), timeout=timeout)
        self.reader = _Reader(self.sock)
        if password:
            r = self.call("AUTH", password)
            if isinstance(r, RespError):
                self.close()
                raise ClusterError("AUTH refused on %d" % port)

    def send(self, *args):
        self.sock.sendall(encode(*args))

    def read(self):
        return self.reader.reply()

    def call(self, *args):
        self.send(*args)
        return self.read()

    def close(self):
        self.sock.close()


# --------------------------------------------------------------------------

class RedisCluster:
    """masters x (1 + replicas) redis-server processes forming one cluster."""

    def __init__(self, masters=3, replicas=1, password=None, node_timeout=NODE_TIMEOUT_MS,
                 config=()):
        """config: extra redis-server arguments, e.g. ("--cluster-require-full-coverage",
        "no") so that the other shards keep serving while a slot has no master."""
        self.config = list(config)
        self.masters_wanted = masters
        self.replicas = replicas
        self.password = password
        self.node_timeout = node_timeout
        self.ports = []
        self.procs = {}         # port -> Popen (alive or killed but not yet stopped)
        self.dir = None

    # -- lifecycle --------------------------------------------------------
    def start(self, timeout=START_TIMEOUT_S):
        if not available():
            raise ClusterError("redis-server / redis-cli not installed")
        count = self.masters_wanted * (1 + self.replicas)
        self.dir = tempfile.mkdtemp(prefix="wsr-rcluster-")
        _LIVE.append(self)
        self.ports = free_cluster_ports(count)
        for port in self.ports:
            self._spawn(port)
        deadline = time.monotonic() + timeout
        for port in self.ports:
            self._wait_answer(port, deadline)
        args = ["redis-cli", "--cluster", "create"]
        args += ["127.0.0.1:%d" % p for p in self.ports]
        args += ["--cluster-replicas", str(self.replicas), "--cluster-yes"]
        env = dict(os.environ)
        if self.password:
            env["REDISCLI_AUTH"] = self.password    # not on the command line
        r = subprocess.run(args, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                           stderr=subprocess.STDOUT, env=env,
                           timeout=max(1.0, deadline - time.monotonic()))
        if r.returncode != 0:
            raise ClusterError("redis-cli --cluster create failed: %s"
                               % r.stdout.decode(errors="replace")[-500:])
        self.wait_ok(max(1.0, deadline - time.monotonic()))
        return self

    def _spawn(self, port):
        node_dir = os.path.join(self.dir, str(port))
        os.mkdir(node_dir)
        args = ["redis-server", "--port", str(port), "--bind", "127.0.0.1",
                "--cluster-enabled", "yes", "--cluster-node-timeout", str(self.node_timeout),
                "--cluster-config-file", os.path.join(node_dir, "nodes.conf"),
                "--dir", node_dir, "--logfile", os.path.join(node_dir, "log"),
                "--save", "", "--appendonly", "no",
                #  Replicas sync at once, and may always take over
                "--repl-diskless-sync-delay", "0", "--cluster-replica-validity-factor", "0"]
        args += self.config
        if self.password:
            #  Through the config on stdin, so the password is not in ps output
            args.insert(1, "-")
            conf = "requirepass %s\nmasterauth %s\n" % (self.password, self.password)
        else:
            conf = None
        proc = subprocess.Popen(args, stdin=subprocess.PIPE if conf else subprocess.DEVNULL,
                                stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                                preexec_fn=_pdeathsig)
        if conf:
            proc.stdin.write(conf.encode())
            proc.stdin.close()
        self.procs[port] = proc

    def _wait_answer(self, port, deadline):
        while True:
            try:
                c = Conn(port, self.password, timeout=1.0)
                try:
                    if c.call("PING") == "PONG":
                        return
                finally:
                    c.close()
            except (OSError, ConnectionError, ClusterError):
                pass
            if self.procs[port].poll() is not None:
                raise ClusterError("redis-server on %d exited (%s)" % (port, self.log(port)))
            if time.monotonic() > deadline:
                raise ClusterError("redis-server on %d does not answer" % port)
            time.sleep(0.02)

    def stop(self):
        """Stop every process started here (by PID) and remove the directory."""
        for proc in self.procs.values():
            if proc.poll() is None:
                proc.terminate()
        for proc in self.procs.values():
            try:
                proc.wait(timeout=5)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
        self.procs = {}
        if self.dir:
            shutil.rmtree(self.dir, ignore_errors=True)
            self.dir = None
        if self in _LIVE:
            _LIVE.remove(self)

    def __enter__(self):
        return self.start()

    def __exit__(self, *exc):
        self.stop()

    # -- queries ----------------------------------------------------------
    def log(self, port):
        try:
            with open(os.path.join(self.dir, str(port), "log")) as f:
                return f.read()[-400:]
        except OSError:
            return ""

    def alive(self):
        return [p for p in self.ports if p in self.procs and self.procs[p].poll() is None]

    def seeds(self):
        """host:port list for redis+cluster:// (live nodes), password form included."""
        auth = (":%s@" % self.password) if self.password else ""
        return auth + ",".join("127.0.0.1:%d" % p for p in self.alive())

    def command(self, port, *args):
        c = Conn(port, self.password)
        try:
            return c.call(*args)
        finally:
            c.close()

    def role(self, port):
        """('master', None) or ('slave', master_port)."""
        r = self.command(port, "ROLE")
        kind = r[0].decode()
        return (kind, int(r[2]) if kind == "slave" else None)

    def masters(self):
        return [p for p in self.alive() if self.role(p)[0] == "master"]

    def replica_of(self, master_port):
        for p in self.alive():
            if p != master_port and self.role(p) == ("slave", master_port):
                return p
        return None

    def owner(self, slot, ask=None):
        """Port of the master owning slot, as node `ask` (default: any live) sees it."""
        port = ask or self.alive()[0]
        for entry in self.command(port, "CLUSTER", "SLOTS"):
            if entry[0] <= slot <= entry[1]:
                return int(entry[2][1])
        return None

    def cluster_ok(self, port):
        try:
            info = self.command(port, "CLUSTER", "INFO")
        except (OSError, ConnectionError):
            return False
        return isinstance(info, bytes) and b"cluster_state:ok" in info

    def replica_synced(self, port):
        """True for a master, or a replica whose link to its master is up."""
        try:
            info = self.command(port, "INFO", "replication")
        except (OSError, ConnectionError):
            return False
        return b"role:master" in info or b"master_link_status:up" in info

    def wait_ok(self, timeout=10.0):
        """Wait for cluster_state:ok on every live node and every replica in sync."""
        deadline = time.monotonic() + timeout
        while not all(self.cluster_ok(p) and self.replica_synced(p) for p in self.alive()):
            if time.monotonic() > deadline:
                raise ClusterError("cluster_state not ok on all nodes after %.1f s" % timeout)
            time.sleep(0.05)

    def publish(self, channel, data):
        """SPUBLISH at the owner (as a cluster-aware backend would)."""
        return self.command(self.owner(key_slot(channel)), "SPUBLISH", channel, data)

    def shardnumsub(self, channel):
        """{port: subscriber count} for channel on every live node."""
        return {p: self.command(p, "PUBSUB", "SHARDNUMSUB", channel)[1] for p in self.alive()}

    # -- faults -----------------------------------------------------------
    def kill(self, port):
        """SIGKILL one node (by PID) and reap it."""
        proc = self.procs[port]
        proc.kill()
        proc.wait()

    def kill_master(self, port=None, slot=None):
        """SIGKILL a master (given, or the owner of slot, or the first);
        returns (killed port, port of its replica or None)."""
        if port is None:
            port = self.owner(slot) if slot is not None else self.masters()[0]
        replica = self.replica_of(port)
        self.kill(port)
        return port, replica

    def wait_promoted(self, port, timeout=10.0):
        """Wait until node port is a master; returns time.monotonic() when seen."""
        deadline = time.monotonic() + timeout
        while True:
            try:
                if self.role(port)[0] == "master":
                    return time.monotonic()
            except (OSError, ConnectionError):
                pass
            if time.monotonic() > deadline:
                raise ClusterError("node %d not promoted after %.1f s" % (port, timeout))
            time.sleep(0.02)


@atexit.register
def _stop_all():
    for rc in list(_LIVE):
        rc.stop()


# --------------------------------------------------------------------------
#  Self-check: python3 tests/redis_cluster.py

def _self_check():
    if not available():
        print("SKIP: redis-server / redis-cli not installed")
        return 77
    assert crc16(b"123456789") == 0x31C3
    assert key_slot("{user1000}.following") == key_slot("{user1000}.followers")
    assert key_slot("foo{}{bar}") == crc16(b"foo{}{bar}") % 16384
    assert key_slot("foo{{bar}}zap") == crc16(b"{bar") % 16384
    t0 = time.monotonic()
    rc = RedisCluster(masters=3, replicas=1)
    rc.start()
    pids = [p.pid for p in rc.procs.values()]
    tmp = rc.dir
    try:
        print("cluster of %d up in %.1f s: %s" % (len(rc.ports), time.monotonic() - t0,
                                                  rc.seeds()))
        assert len(rc.masters()) == 3, rc.masters()
        channel = "ws:{selfcheck}"
        owner = rc.owner(key_slot(channel))
        sub = Conn(owner)
        assert sub.call("SSUBSCRIBE", channel) == [b"ssubscribe", channel.encode(), 1]
        assert rc.shardnumsub(channel)[owner] == 1
        assert rc.publish(channel, "hello") == 1
        assert sub.read() == [b"smessage", channel.encode(), b"hello"]
        other = [p for p in rc.masters() if p != owner][0]
        moved = rc.command(other, "SPUBLISH", channel, "x")
        assert isinstance(moved, RespError) and moved.startswith("MOVED"), moved
        sub.close()
        killed, replica = rc.kill_master(slot=key_slot(channel))
        assert killed == owner and replica
        t_kill = time.monotonic()
        t_promo = rc.wait_promoted(replica)
        print("master %d killed; replica %d promoted after %.2f s"
              % (killed, replica, t_promo - t_kill))
        rc.wait_ok()
        assert rc.owner(key_slot(channel)) == replica
        assert killed not in rc.alive()
    finally:
        rc.stop()
    for pid in pids:
        try:
            os.kill(pid, 0)
            raise AssertionError("pid %d still alive" % pid)
        except ProcessLookupError:
            pass
    assert not os.path.exists(tmp)
    print("OK (%.1f s)" % (time.monotonic() - t0))
    return 0


if __name__ == "__main__":
    sys.exit(_self_check())
