#!/usr/bin/python3
"""wsr_netns_agent — the helper the network-namespace tests run inside a namespace.

Started as `ip netns exec NS python3 wsr_netns_agent.py ROLE ARGS...` by
tests/wsr_netns.py's Agent (e2e_netns, e2e_scale_netns) and driven over
stdin/stdout with JSON lines: a request {"id": N, "op": ..., ...} is
answered by {"re": N, "ok": true|false, ...}; anything else it prints is an
event ({"ev": ...}). Times are CLOCK_MONOTONIC, which namespaces share with
the test process, so they compare with the test's own.

Roles:
  redis HOST PORT / nats HOST PORT   one server: ping, pub, cmd, sub
  client                             WebSocket sessions and HTTP probes
  ping DST...                        ICMP echo to each, one JSON line, exit
  intruder ENDPOINT [CERT SERVERKEY] a ZeroMQ peer knocking at a bridge
  rcluster HOST:PORT...              a cluster-aware Redis backend: SPUBLISH
                                     load at each slot's owner, ROLE watch
  natsload HOST:PORT...              a NATS backend publishing load; monitoring
Only the Python standard library, plus websockets (client), zmq and msgpack
(intruder).
"""

import asyncio, base64, json, os, socket, struct, sys, threading, time

OUT = threading.Lock()

def emit(obj):
    line = json.dumps(obj)
    with OUT:
        sys.stdout.write(line + "\n")
        sys.stdout.flush()

def b64(b):
    return base64.b64encode(bytes(b)).decode()

def unb64(s):
    return base64.b64decode(s)

class Reader:
    def __init__(self, sock):
        self.sock, self.buf = sock, b""
    def _fill(self):
        c = self.sock.recv(65536)
        if not c:
            raise ConnectionError("connection closed by the peer")
        self.buf += c
    def line(self):
        while b"\r\n" not in self.buf:
            self._fill()
        l, self.buf = self.buf.split(b"\r\n", 1)
        return l
    def exact(self, n):
        while len(self.buf) < n:
            self._fill()
        d, self.buf = self.buf[:n], self.buf[n:]
        return d

# ---- Redis (RESP over a raw socket)

def resp_cmd(*args):
    out = b"*%d\r\n" % len(args)
    for a in args:
        a = a.encode() if isinstance(a, str) else a
        out += b"$%d\r\n" % len(a) + a + b"\r\n"
    return out

def resp_read(r):
    l = r.line()
    t, rest = l[:1], l[1:]
    if t == b"+":
        return rest.decode()
    if t == b"-":
        return RuntimeError(rest.decode())
    if t == b":":
        return int(rest)
    if t == b"$":
        n = int(rest)
        return None if n < 0 else r.exact(n + 2)[:-2]
    if t == b"*":
        n = int(rest)
        return None if n < 0 else [resp_read(r) for _ in range(n)]
    raise ValueError("bad RESP line %r" % l)

def redis_call(host, port, *args, timeout=1.0):
    s = socket.create_connection((host, port), timeout=timeout)
    try:
        s.sendall(resp_cmd(*args))
        v = resp_read(Reader(s))
        if isinstance(v, Exception):
            raise v
        return v
    finally:
        s.close()

def redis_sub(host, port, channel, sid):
    try:
        s = socket.create_connection((host, port), timeout=2.0)
        r = Reader(s)
        s.sendall(resp_cmd("SUBSCRIBE", channel))
        v = resp_read(r)
        if not (isinstance(v, list) and v and v[0] == b"subscribe"):
            raise RuntimeError("unexpected SUBSCRIBE answer %r" % (v,))
    except Exception as ex:
        emit({"re": sid, "ok": False, "err": "%s: %s" % (type(ex).__name__, ex)})
        return
    emit({"re": sid, "ok": True})
    s.settimeout(None)
    try:
        while True:
            v = resp_read(r)
            if isinstance(v, list) and len(v) == 3 and v[0] == b"message":
                emit({"ev": "sub", "sub": sid, "subject": v[1].decode("latin-1"),
                      "d": b64(v[2]), "t": time.monotonic()})
    except Exception as ex:
        emit({"ev": "subend", "sub": sid, "err": str(ex)})

# ---- NATS (text protocol over a raw socket)

def nats_connect(host, port, timeout=1.0):
    s = socket.create_connection((host, port), timeout=timeout)
    r = Reader(s)
    info = r.line()
    if not info.startswith(b"INFO "):
        s.close()
        raise RuntimeError("expected INFO, got %r" % info[:100])
    s.sendall(b'CONNECT {"verbose":false,"pedantic":false,"name":"e2e-netns"}\r\nPING\r\n')
    nats_wait_pong(s, r)
    return s, r

def nats_wait_pong(s, r):
    while True:
        l = r.line()
        if l == b"PONG":
            return
        if l == b"PING":
            s.sendall(b"PONG\r\n")
        elif l.startswith(b"-ERR"):
            raise RuntimeError(l.decode("latin-1"))

def nats_pub(host, port, subject, data):
    s, r = nats_connect(host, port)
    try:
        s.sendall(b"PUB %s %d\r\n" % (subject.encode(), len(data)) + data + b"\r\nPING\r\n")
        nats_wait_pong(s, r)
    finally:
        s.close()

def nats_sub(host, port, subject, sid):
    try:
        s, r = nats_connect(host, port, timeout=2.0)
        s.sendall(b"SUB %s 1\r\nPING\r\n" % subject.encode())
        nats_wait_pong(s, r)
    except Exception as ex:
        emit({"re": sid, "ok": False, "err": "%s: %s" % (type(ex).__name__, ex)})
        return
    emit({"re": sid, "ok": True})
    s.settimeout(None)
    try:
        while True:
            l = r.line()
            if l == b"PING":
                s.sendall(b"PONG\r\n")
                continue
            parts = l.split()
            if parts and parts[0] == b"MSG":
                n = int(parts[-1])
                d = r.exact(n + 2)[:-2]
            elif parts and parts[0] == b"HMSG":
                hl, n = int(parts[-2]), int(parts[-1])
                d = r.exact(n + 2)[:-2][hl:]
            else:
                continue
            emit({"ev": "sub", "sub": sid, "subject": parts[1].decode("latin-1"),
                  "d": b64(d), "t": time.monotonic()})
    except Exception as ex:
        emit({"ev": "subend", "sub": sid, "err": str(ex)})

def backplane_main(kind, host, port):
    def handle(req):
        rid, op = req["id"], req["op"]
        try:
            if op == "ping":
                if kind == "redis":
                    v = redis_call(host, port, "PING", timeout=0.5)
                    if v != "PONG":
                        raise RuntimeError("PING answered %r" % (v,))
                else:
                    s, _ = nats_connect(host, port, timeout=0.5)
                    s.close()
                emit({"re": rid, "ok": True, "t": time.monotonic()})
            elif op == "pub":
                data = unb64(req["d"])
                if kind == "redis":
                    n = redis_call(host, port, "PUBLISH", req["subject"], data)
                    emit({"re": rid, "ok": True, "receivers": n, "t": time.monotonic()})
                else:
                    nats_pub(host, port, req["subject"], data)
                    emit({"re": rid, "ok": True, "t": time.monotonic()})
            elif op == "cmd" and kind == "redis":
                v = redis_call(host, port, *req["args"])
                emit({"re": rid, "ok": True, "v": v, "t": time.monotonic()})
            elif op == "sub":
                fn = redis_sub if kind == "redis" else nats_sub
                threading.Thread(target=fn, args=(host, port, req["subject"], rid),
                                 daemon=True).start()
            else:
                emit({"re": rid, "ok": False, "err": "unknown op " + op})
        except Exception as ex:
            emit({"re": rid, "ok": False, "err": "%s: %s" % (type(ex).__name__, ex)})
    for line in sys.stdin:
        handle(json.loads(line))

# ---- WebSocket clients and HTTP probes

async def client_main():
    import urllib.request, urllib.error
    import websockets
    from websockets.exceptions import ConnectionClosed
    loop = asyncio.get_running_loop()
    q = asyncio.Queue()
    def stdin_thread():
        for line in sys.stdin:
            loop.call_soon_threadsafe(q.put_nowait, line)
        loop.call_soon_threadsafe(q.put_nowait, None)
    threading.Thread(target=stdin_thread, daemon=True).start()
    conns = {}
    opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))

    def http_get(url, timeout):
        try:
            with opener.open(url, timeout=timeout) as resp:
                return resp.status, resp.read()
        except urllib.error.HTTPError as ex:
            return ex.code, ex.read()

    async def reader(cid, ws):
        while True:
            try:
                m = await ws.recv()
            except ConnectionClosed as ex:
                rc = getattr(ex, "rcvd", None)
                emit({"ev": "closed", "cid": cid, "t": time.monotonic(),
                      "code": rc.code if rc else None, "reason": rc.reason if rc else None})
                return
            except Exception as ex:
                emit({"ev": "closed", "cid": cid, "t": time.monotonic(), "code": None,
                      "reason": "%s: %s" % (type(ex).__name__, ex)})
                return
            t = time.monotonic()
            if isinstance(m, str):
                emit({"ev": "msg", "cid": cid, "t": t, "k": "text", "d": b64(m.encode())})
            else:
                emit({"ev": "msg", "cid": cid, "t": t, "k": "binary", "d": b64(m)})

    async def handle(req):
        rid, op = req["id"], req["op"]
        try:
            if op == "open":
                ws = await asyncio.wait_for(websockets.connect(
                    req["url"], ping_interval=None, max_size=None, open_timeout=5,
                    close_timeout=2), 6)
                conns[req["cid"]] = ws
                asyncio.ensure_future(reader(req["cid"], ws))
                emit({"re": rid, "ok": True})
            elif op == "send":
                data = unb64(req["d"])
                await conns[req["cid"]].send(data.decode() if req["k"] == "text" else data)
                emit({"re": rid, "ok": True, "t": time.monotonic()})
            elif op == "http":
                st, body = await loop.run_in_executor(None, http_get, req["url"],
                                                      req.get("http_timeout", 1.0))
                text = body.decode("utf-8", "replace")
                if req.get("grep"):     # only the lines that start with it (metrics)
                    text = "\n".join(l for l in text.splitlines()
                                      if l.startswith(req["grep"]))
                emit({"re": rid, "ok": True, "status": st, "body": text[:2000]})
            else:
                emit({"re": rid, "ok": False, "err": "unknown op " + op})
        except Exception as ex:
            emit({"re": rid, "ok": False, "err": "%s: %s" % (type(ex).__name__, ex)})

    while True:
        line = await q.get()
        if line is None:
            break
        asyncio.ensure_future(handle(json.loads(line)))

# ---- ICMP echo (no ping binary needed)

def csum(b):
    if len(b) % 2:
        b += b"\0"
    s = sum(struct.unpack("!%dH" % (len(b) // 2), b))
    s = (s >> 16) + (s & 0xFFFF)
    s += s >> 16
    return ~s & 0xFFFF

def icmp_ping(dst, timeout=2.0):
    s = socket.socket(socket.AF_INET, socket.SOCK_RAW, socket.IPPROTO_ICMP)
    try:
        ident = os.getpid() & 0xFFFF
        payload = b"wsr-e2e-netns"
        deadline = time.monotonic() + timeout
        seq = 0
        while time.monotonic() < deadline:
            seq += 1
            hdr = struct.pack("!BBHHH", 8, 0, 0, ident, seq)
            pkt = struct.pack("!BBHHH", 8, 0, csum(hdr + payload), ident, seq) + payload
            t0 = time.monotonic()
            s.sendto(pkt, (dst, 0))
            wait_until = min(deadline, t0 + 0.5)
            while time.monotonic() < wait_until:
                s.settimeout(max(0.01, wait_until - time.monotonic()))
                try:
                    data, addr = s.recvfrom(2048)
                except socket.timeout:
                    break
                ihl = (data[0] & 0x0F) * 4
                typ, _, _, rid, rseq = struct.unpack("!BBHHH", data[ihl:ihl + 8])
                if typ == 0 and rid == ident and addr[0] == dst:
                    return (time.monotonic() - t0) * 1000.0
        return None
    finally:
        s.close()

def cert_keys(path):
    """(public, secret) Z85 keys of a czmq certificate file (secret may be None)."""
    keys = {}
    with open(path) as f:
        for line in f:
            line = line.strip()
            for name in ("public-key", "secret-key"):
                if line.startswith(name):
                    keys[name] = line.split("=", 1)[1].strip().strip('"')
    return keys.get("public-key"), keys.get("secret-key")

def intruder_main(endpoint, secret_path, server_path):
    """A ZeroMQ peer that tries the bridge's door: the old XSUB 'subscribe to
    everything', and a DEALER speaking the node protocol (HELLO, SUB of a
    real user, a forged publish and client message). Reports what it got."""
    import zmq
    ctx = zmq.Context()
    socks = []
    for kind in (zmq.XSUB, zmq.DEALER):
        s = ctx.socket(kind)
        s.setsockopt(zmq.LINGER, 0)
        s.setsockopt(zmq.SNDTIMEO, 0)
        if secret_path:
            pub, sec = cert_keys(secret_path)
            s.curve_publickey = pub.encode()
            s.curve_secretkey = sec.encode()
            s.curve_serverkey = cert_keys(server_path)[0].encode()
        s.connect(endpoint)
        socks.append(s)
    xsub, dealer = socks
    import msgpack
    forged = msgpack.packb({"v": 1, "k": 1, "ts": 0, "d": b"u:alice|999999999|forged"})
    got = []
    deadline = time.monotonic() + 3.0
    sent = 0
    while time.monotonic() < deadline:
        for op in ([b"\x01"], [b"HELLO", b"1", b"intruder", b"worker", b"0"],
                   [b"SUB", b"user:alice\x00", b"user:intruder\x00"],
                   [b"PUB", b"user:alice\x00", forged]):
            try:
                (xsub if op == [b"\x01"] else dealer).send_multipart(op, zmq.NOBLOCK)
                sent += 1
            except zmq.ZMQError:
                pass
        for s in socks:
            try:
                while True:
                    got.append([b64(f) for f in s.recv_multipart(zmq.NOBLOCK)])
            except zmq.ZMQError:
                pass
        time.sleep(0.2)
    emit({"received": got, "sent": sent})
    for s in socks:
        s.close()
    ctx.term()

# ---- Load: per-user publishes with sequence numbers (rcluster, natsload)
#
#  Every `interval` one message per user, "L|VIA|USER|SEQ|" + filler
#  (load_payload), SEQ counting from 1 per user; each tick is one event
#  {"ev": "pub", "via": VIA, "t": time before the sends, "r": [[USER, SEQ, N]]}
#  where N is what the server answered (Redis: receivers; NATS: 1 once
#  written) or -1 when the publish failed (not accepted: not expected).

def load_payload(via, user, seq):
    return ("L|%s|%s|%d|" % (via, user, seq)).encode() + b"0123456789abcdef" * 2

def load_loop(stop, via, users, interval, publish):
    seqs = dict.fromkeys(users, 0)
    next_t = time.monotonic()
    while not stop.is_set():
        items = []
        for u in users:
            seqs[u] += 1
            items.append((u, seqs[u], load_payload(via, u, seqs[u])))
        t = time.monotonic()
        try:
            res = publish(items)
        except Exception as ex:         # reported, and the load goes on
            emit({"ev": "loaderr", "via": via, "err": "%s: %s" % (type(ex).__name__, ex)})
            res = [-1] * len(items)
        emit({"ev": "pub", "via": via, "t": t,
              "r": [[u, q, n] for (u, q, _), n in zip(items, res)]})
        next_t += interval
        delay = next_t - time.monotonic()
        if delay < 0:               # late (a busy machine): no catch-up burst
            next_t, delay = time.monotonic(), 0
        stop.wait(delay)

class Loader:
    """One load thread at a time, started by op "load", ended by op "stop"."""
    def __init__(self):
        self.stop, self.thread = None, None
    def start(self, via, users, interval, publish):
        self.end()
        self.stop = threading.Event()
        self.thread = threading.Thread(target=load_loop, daemon=True,
                                       args=(self.stop, via, users, interval, publish))
        self.thread.start()
    def end(self):
        if self.thread:
            self.stop.set()
            self.thread.join(5)
            self.thread = None

def parse_addr(a):
    host, port = a.rsplit(":", 1)
    return host, int(port)

def count(d, key):
    d[key] = d.get(key, 0) + 1

# ---- Redis Cluster backend: SPUBLISH at each slot's owner

class ClusterPub:
    """A cluster-aware publisher, as a backend's client library would be:
    the slot map from CLUSTER SLOTS (any node that answers), one connection
    per master, pipelined SPUBLISH per tick; a MOVED or a broken connection
    fails that publish and has the map read again before the next tick."""

    def __init__(self, seeds):
        self.seeds = seeds
        self.ranges = []            # [(first slot, last slot, (host, port))]
        self.conns = {}             # (host, port) -> (socket, Reader)
        self.stale = True
        self.errors = {}

    def refresh(self):
        for addr in self.seeds:
            try:
                v = redis_call(addr[0], addr[1], "CLUSTER", "SLOTS", timeout=0.3)
            except Exception:
                continue
            if isinstance(v, list) and v:
                self.ranges = [(e[0], e[1], (e[2][0].decode(), int(e[2][1]))) for e in v]
                self.stale = False
                return True
        count(self.errors, "no node answered CLUSTER SLOTS")
        return False

    def owner(self, slot):
        for lo, hi, addr in self.ranges:
            if lo <= slot <= hi:
                return addr
        return None

    def drop(self, addr):
        c = self.conns.pop(addr, None)
        if c:
            c[0].close()

    def publish(self, items, slots):
        if self.stale:
            self.refresh()
        res = [-1] * len(items)
        groups = {}
        for i, (u, _, _) in enumerate(items):
            groups.setdefault(self.owner(slots[u]), []).append(i)
        for addr, idx in groups.items():
            if addr is None:
                count(self.errors, "slot without owner")
                continue
            try:
                c = self.conns.get(addr)
                if c is None:
                    s = socket.create_connection(addr, timeout=0.5)
                    s.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
                    c = self.conns[addr] = (s, Reader(s))
                c[0].sendall(b"".join(resp_cmd("SPUBLISH", "ws:" + items[i][0], items[i][2])
                                      for i in idx))
                for i in idx:
                    v = resp_read(c[1])
                    if isinstance(v, int):
                        res[i] = v
                    else:
                        count(self.errors, str(v).split(" ")[0])
                        self.stale = True
            except Exception as ex:
                count(self.errors, "%s at %s:%d" % (type(ex).__name__, addr[0], addr[1]))
                self.drop(addr)
                self.stale = True
        return res

def plain(v):
    """A RESP reply as JSON can carry it (bulk strings as latin-1 text)."""
    if isinstance(v, bytes):
        return v.decode("latin-1")
    if isinstance(v, list):
        return [plain(x) for x in v]
    return v

def role_of(addr):
    v = redis_call(addr[0], addr[1], "ROLE", timeout=0.5)
    if v[0] == b"slave":
        return ["slave", v[1].decode(), int(v[2]), v[3].decode()]
    return [v[0].decode()]

def rcluster_main(seeds):
    pub = ClusterPub(seeds)
    loader = Loader()

    def watch_master(rid, addr, timeout):
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            try:
                if role_of(addr)[0] == "master":
                    emit({"re": rid, "ok": True, "t": time.monotonic()})
                    return
            except Exception:
                pass
            time.sleep(0.01)
        emit({"re": rid, "ok": False, "err": "not master within %.0f s" % timeout})

    for line in sys.stdin:
        req = json.loads(line)
        rid, op = req["id"], req["op"]
        try:
            if op == "cmd":
                addr = parse_addr(req["addr"])
                v = redis_call(addr[0], addr[1], *req["args"], timeout=req.get("timeout", 1.0))
                emit({"re": rid, "ok": True, "v": plain(v), "t": time.monotonic()})
            elif op == "roles":
                out = {}
                for a in req["addrs"]:
                    try:
                        out[a] = role_of(parse_addr(a))
                    except Exception as ex:
                        out[a] = ["down", str(ex)]
                emit({"re": rid, "ok": True, "roles": out})
            elif op == "watch_master":
                threading.Thread(target=watch_master, daemon=True,
                                 args=(rid, parse_addr(req["addr"]), req["timeout"])).start()
            elif op == "load":
                loader.start("r", sorted(req["slots"]), req["interval"],
                             lambda items, slots=req["slots"]: pub.publish(items, slots))
                emit({"re": rid, "ok": True, "t": time.monotonic()})
            elif op == "stop":
                loader.end()
                emit({"re": rid, "ok": True, "errors": pub.errors})
            else:
                emit({"re": rid, "ok": False, "err": "unknown op " + op})
        except Exception as ex:
            emit({"re": rid, "ok": False, "err": "%s: %s" % (type(ex).__name__, ex)})
    loader.end()

# ---- NATS backend: core NATS PUB on one server of a cluster

class NatsPub:
    """One connection to the first server that answers (in the order
    given); PING from the server answered by a reader thread; a failed write
    fails the tick's publishes and the next tick connects again."""

    def __init__(self, servers):
        self.servers = servers
        self.sock = None
        self.wlock = threading.Lock()
        self.errors = {}
        self.server = None

    def _reader(self, s, r):
        try:
            while True:
                l = r.line()
                if l == b"PING":
                    with self.wlock:
                        s.sendall(b"PONG\r\n")
                elif l.startswith(b"-ERR"):
                    count(self.errors, l.decode("latin-1"))
        except Exception:
            pass
        with self.wlock:
            if self.sock is s:
                self.sock = None
                count(self.errors, "connection lost")

    def connect(self):
        for h, p in self.servers:
            try:
                s, r = nats_connect(h, p, timeout=0.5)
            except Exception:
                continue
            s.settimeout(None)
            s.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            self.sock, self.server = s, "%s:%d" % (h, p)
            threading.Thread(target=self._reader, args=(s, r), daemon=True).start()
            return True
        count(self.errors, "no server answered")
        return False

    def publish(self, items, subject_fmt):
        if self.sock is None and not self.connect():
            return [-1] * len(items)
        out = b"".join(b"PUB %s %d\r\n%s\r\n" % ((subject_fmt % u).encode(), len(d), d)
                       for u, _, d in items)
        with self.wlock:
            try:
                self.sock.sendall(out)
                return [1] * len(items)
            except Exception as ex:
                count(self.errors, type(ex).__name__)
                self.sock.close()
                self.sock = None
                return [-1] * len(items)

def natsload_main(servers):
    import urllib.request
    pub = NatsPub(servers)
    loader = Loader()
    opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))
    for line in sys.stdin:
        req = json.loads(line)
        rid, op = req["id"], req["op"]
        try:
            if op == "load":
                if pub.sock is None and not pub.connect():
                    raise RuntimeError("no NATS server answered")
                loader.start("n", sorted(req["users"]), req["interval"],
                             lambda items, subject=req["subject"]: pub.publish(items, subject))
                emit({"re": rid, "ok": True, "server": pub.server, "t": time.monotonic()})
            elif op == "stop":
                loader.end()
                emit({"re": rid, "ok": True, "errors": pub.errors})
            elif op == "json":
                #  nats-server's monitoring (/connz, /routez): a JSON document
                with opener.open(req["url"], timeout=2) as resp:
                    emit({"re": rid, "ok": True, "doc": json.loads(resp.read())})
            else:
                emit({"re": rid, "ok": False, "err": "unknown op " + op})
        except Exception as ex:
            emit({"re": rid, "ok": False, "err": "%s: %s" % (type(ex).__name__, ex)})
    loader.end()

if __name__ == "__main__":
    role = sys.argv[1]
    if role == "intruder":
        intruder_main(sys.argv[2], sys.argv[3] if len(sys.argv) > 3 else None,
                      sys.argv[4] if len(sys.argv) > 4 else None)
    elif role == "ping":
        emit({dst: icmp_ping(dst) for dst in sys.argv[2:]})
    elif role in ("redis", "nats"):
        backplane_main(role, sys.argv[2], int(sys.argv[3]))
    elif role == "client":
        asyncio.run(client_main())
    elif role == "rcluster":
        rcluster_main([parse_addr(a) for a in sys.argv[2:]])
    elif role == "natsload":
        natsload_main([parse_addr(a) for a in sys.argv[2:]])
