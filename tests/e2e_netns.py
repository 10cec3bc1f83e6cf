#!/usr/bin/python3
"""e2e_netns — the multi-host deployment over real TCP between network namespaces.

Six hosts, each its own network namespace, wired by veth pairs to a Linux
bridge device that lives in a seventh, dedicated "switch" namespace; addresses
in 10.213.0.0/24 exist only inside the namespaces, nothing is connected to the
host's network:

    redis   10.213.0.11  redis-server :6379 (and the Redis publisher/subscriber)
    nats    10.213.0.12  nats-server  :4222 (and the NATS publisher/subscriber)
    bridge  10.213.0.13  wsrouter bridge: ROUTER :5570 (CURVE), HTTP :9090
    node-a  10.213.0.14  wsrouter serve --bridge tcp://10.213.0.13:5570 :8080 (CURVE)
    node-b  10.213.0.15  the same, node id node-b
    client  10.213.0.16  the WebSocket clients (python3-websockets) and HTTP probes

Every program in a namespace is started with `ip netns exec NS ...` (which
execs: the PID we hold is the program's). Helpers that run inside namespaces
(WebSocket clients, raw-socket Redis RESP and NATS text-protocol clients, an
ICMP echo prober) are one "agent" script, tests/wsr_netns_agent.py, driven
over stdin/stdout with JSON lines. Agents and the test share CLOCK_MONOTONIC
(not namespaced), so receive times and restart times compare. Namespaces,
processes and agents: tests/wsr_netns.py (shared with e2e_scale_netns).

Cases (one line each):
  1  Redis `ws:U` / `ws:channel:C` and NATS `world.updates.user.U` /
     `world.updates.channel.C` reach the sessions on node-a and node-b byte for
     byte (text and binary), channel members on both nodes, in publish order
  2  a client message reaches NATS `client.actions.U` (msgpack v,u,s,n,ts,k,d)
  2b ... and Redis `ws:actions:U`
  3a Redis restarted (SIGTERM, started again): no client closed, delivery
     resumes within 2 s of Redis answering PING; 3b the same for NATS
  4  bridge SIGKILLed and restarted: no client closed, delivery (both
     backplanes) resumes within 2 s of the bridge's ready line; upstream works
  5  node-a SIGKILLed: node-b's clients untouched, keep receiving everything
  6  over the whole run: no payload to the wrong session, no duplicate
  7  ZeroMQ peers in the client namespace with no CURVE key, or a key not in
     the bridge's clients directory, get nothing (no message, no Redis
     subscription, no forged publish delivered); the bridge counts them
  8  a bridge or a node asked for plaintext on a non-loopback address refuses
     to start

Payloads are "TARGET|SEQ|..." (TARGET u:USER or c:CHANNEL, SEQ unique per
run) so each client can check what it receives.

Run as root (CI is). Exits 77 (ctest: skipped) with a SKIP line when it
cannot run here: not root, network namespaces refused (unshare(CLONE_NEWNET)
fails, e.g. in an unprivileged container), or ip, redis-server or nats-server
not installed. Namespaces possible but the topology cannot be built:
failure. `--setup-only` builds the topology,
pings every host from every other one (ICMP), checks the host namespace has
no 10.213.0.x address, tears it down and checks nothing is left.
Bounded: every wait has a timeout, the whole run stops itself at 225 s.
"""

import itertools
import json
import os
import re
import secrets
import shutil
import signal
import sys
import tempfile
import time
import traceback

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)

import wsr_e2e as e  # noqa: E402
from wsr_netns import (AGENT, PY, READY_TIMEOUT_S, Agent, Interrupted, Proc,  # noqa: E402
                       SetupError, TestTimeout, Topology, arm, b64, bridge_supported,
                       clean_env, compress, disarm, metric, nats_server_path,
                       netns_refused, run, run_case, unb64)

SUBNET = "10.213.0"
HOSTS = ["redis", "nats", "bridge", "node-a", "node-b", "client"]
ADDR = {h: "%s.%d" % (SUBNET, 11 + i) for i, h in enumerate(HOSTS)}
REDIS_PORT = 6379
NATS_PORT = 4222
BRIDGE_PORT = 5570
BRIDGE_HTTP_PORT = 9090
NODE_PORT = 8080
NODES = ["node-a", "node-b"]

TEST_LIMIT_S = 225          # the whole run (ctest allows 300)
RESUME_LIMIT_S = 2.0        # delivery must resume within this after a restart
RESUME_GIVE_UP_S = 8.0      # keep probing this long to tell "late" from "never"
TICK_S = 0.1                # probe publish interval after a restart
DELIVERY_TIMEOUT_S = 5.0    # a message published in steady state

BRIDGE_READY = "bridge listening on tcp://"
NODE_READY_RE = re.compile(r"listening on ws://[^\s]*:%d/ws" % NODE_PORT)

#  cid, user, node, channels. "shared" has a session on each node; bob2 and
#  lobby2 are prefix neighbours of bob and lobby that must never get their
#  messages; carol only ever gets what is addressed to carol.
CLIENTS = [
    ("a1", "alice", "node-a", ["lobby"]),
    ("sh_a", "shared", "node-a", []),
    ("bob2", "bob2", "node-a", []),
    ("b1", "bob", "node-b", ["lobby"]),
    ("sh_b", "shared", "node-b", []),
    ("carol", "carol", "node-b", ["lobby2"]),
]


def is_utf8(b):
    try:
        b.decode("utf-8")
        return True
    except UnicodeDecodeError:
        return False


# --------------------------------------------------------------------------
#  The deployment

class Deployment:
    def __init__(self, topo, tmpdir, wsrouter):
        self.topo = topo
        self.tmp = tmpdir
        self.bin = wsrouter
        self.agent_path = AGENT
        self.secret = "netns-" + secrets.token_hex(16)
        self.api_key = "key-" + secrets.token_hex(12)
        self.procs = []         # every process ever started, for teardown
        self.redis = self.nats = self.bridge = None
        self.nodes = {}
        self.seq = itertools.count(1)
        self.published = {}     # seq -> dict(target, via, data, ctx, t)
        self.clients = {cid: {"user": u, "node": n, "channels": ch}
                        for cid, u, n, ch in CLIENTS}
        self.subs = {}          # sub id -> (agent, subject)
        #  CURVE: a certificate per node and one for the bridge; the bridge
        #  admits the nodes' public certificates in clients/; "intruder" has
        #  a certificate the bridge does not know
        self.keys = os.path.join(tmpdir, "keys")
        self.clients_dir = os.path.join(tmpdir, "clients")
        os.makedirs(self.keys)
        os.makedirs(self.clients_dir)
        for name in ["bridge", "intruder"] + NODES:
            run([wsrouter, "keygen", "--curve", "--out", os.path.join(self.keys, name)])
        for name in NODES:
            shutil.copy(os.path.join(self.keys, name), self.clients_dir)

    def key(self, name, secret=False):
        return os.path.join(self.keys, name + ("_secret" if secret else ""))

    def _track(self, p):
        self.procs.append(p)
        return p

    # ---- processes

    def start_redis(self):
        self.redis = self._track(Proc(
            "redis-server", self.topo.ns("redis"),
            ["redis-server", "--port", str(REDIS_PORT), "--bind", ADDR["redis"],
             "--save", "", "--appendonly", "no",
             #  Redis 7 refuses non-loopback clients without a password unless
             #  protected mode is off (the namespaces are not reachable anyway)
             "--protected-mode", "no"], cwd=self.tmp))
        return self.redis

    def start_nats(self):
        self.nats = self._track(Proc(
            "nats-server", self.topo.ns("nats"),
            [nats_server_path(), "-a", ADDR["nats"], "-p", str(NATS_PORT)], cwd=self.tmp))
        return self.nats

    def start_bridge(self):
        env = clean_env(WEBSOCKET_REDIS_URL="redis://%s:%d" % (ADDR["redis"], REDIS_PORT),
                        NATS_URL="nats://%s:%d" % (ADDR["nats"], NATS_PORT))
        self.bridge = self._track(Proc(
            "bridge", self.topo.ns("bridge"),
            [self.bin, "bridge", "--endpoint", "tcp://%s:%d" % (ADDR["bridge"], BRIDGE_PORT),
             "--http-port", str(BRIDGE_HTTP_PORT), "--http-bind", ADDR["bridge"],
             "--cert", self.key("bridge", True), "--clients", self.clients_dir],
            env=env, cwd=self.tmp, ready=re.escape(BRIDGE_READY)))
        return self.bridge

    def start_node(self, name):
        p = self._track(Proc(
            name, self.topo.ns(name),
            [self.bin, "serve", "--bridge", "tcp://%s:%d" % (ADDR["bridge"], BRIDGE_PORT),
             "--port", str(NODE_PORT), "--bind", "0.0.0.0", "--jwt-secret", self.secret,
             "--api-key", self.api_key, "--node-id", name,
             "--cert", self.key(name, True), "--bridge-key", self.key("bridge")],
            cwd=self.tmp, ready=NODE_READY_RE.pattern))
        self.nodes[name] = p
        return p

    def start_agents(self):
        self.ragent = self._track(Agent("redis-agent", self.topo.ns("redis"), self.agent_path,
                                        "redis", [ADDR["redis"], str(REDIS_PORT)], cwd=self.tmp))
        self.nagent = self._track(Agent("nats-agent", self.topo.ns("nats"), self.agent_path,
                                        "nats", [ADDR["nats"], str(NATS_PORT)], cwd=self.tmp))
        self.cagent = self._track(Agent("client-agent", self.topo.ns("client"),
                                        self.agent_path, "client", cwd=self.tmp))

    def kill_all(self):
        """SIGKILL every process started that is still running, by PID."""
        problems = []
        for p in reversed(self.procs):
            if p.alive():
                try:
                    p.kill(signal.SIGKILL, wait=5)
                except Exception as ex:
                    problems.append(str(ex))
        return problems

    def crashed(self):
        """Server processes that exited although the test did not stop them."""
        return [p for p in self.procs
                if not p.alive() and not p.expected_exit and not isinstance(p, Agent)]

    # ---- backplane helpers

    def wait_backplane(self, kind, timeout=10.0):
        """Poll PING until the server answers; returns the agent's time of the answer."""
        agent = self.ragent if kind == "redis" else self.nagent
        proc = self.redis if kind == "redis" else self.nats
        deadline = time.monotonic() + timeout
        last = None
        while time.monotonic() < deadline:
            r = agent.call("ping", timeout=3, check=False)
            if r.get("ok"):
                return r["t"]
            last = r.get("err")
            if not proc.alive():
                break
            time.sleep(0.02)
        raise e.E2EError("%s does not answer PING within %.0f s (last error: %s); %s"
                         % (kind, timeout, last, proc.describe()))

    def payload(self, target, binary):
        seq = next(self.seq)
        head = ("%s|%d|" % (target, seq)).encode()
        if binary:
            data = head + b"\x00\xff\xfe\x80" + os.urandom(12) + b"\xc3"
        else:
            data = head + "héllo ✓ 漢字 \x00 tab\t".encode()
        return seq, data

    def publish(self, via, target, binary=False, ctx=""):
        """Publish one payload on Redis or NATS; returns (seq, agent reply)."""
        kind, name = target.split(":", 1)
        seq, data = self.payload(target, binary)
        if via == "redis":
            subject = ("ws:" + name) if kind == "u" else ("ws:channel:" + name)
            agent = self.ragent
        else:
            subject = ("world.updates.user." + name) if kind == "u" \
                else ("world.updates.channel." + name)
            agent = self.nagent
        t = time.monotonic()
        r = agent.call("pub", subject=subject, d=b64(data), timeout=5)
        self.published[seq] = {"target": target, "via": via, "subject": subject,
                               "data": data, "ctx": ctx, "t": t,
                               "receivers": r.get("receivers")}
        return seq, r

    def subscribe(self, via, subject):
        agent = self.ragent if via == "redis" else self.nagent
        rid = agent.send("sub", subject=subject)
        r = agent.result(rid, 5, "subscribe " + subject)
        if not r.get("ok"):
            raise e.E2EError("%s subscriber on %s: %s" % (via, subject, r.get("err")))
        self.subs[(via, rid)] = subject
        return (via, rid)

    def sub_messages(self, sub):
        via, rid = sub
        agent = self.ragent if via == "redis" else self.nagent
        return [ev for ev in agent.event_list() if ev.get("ev") == "sub" and ev["sub"] == rid]

    # ---- clients

    def http(self, host, path, port=None, timeout=1.0, grep=None):
        port = port or (BRIDGE_HTTP_PORT if host == "bridge" else NODE_PORT)
        r = self.cagent.call("http", url="http://%s:%d%s" % (ADDR[host], port, path),
                             timeout=timeout + 3, check=False, http_timeout=timeout,
                             grep=grep)
        if not r.get("ok"):
            return None, r.get("err")
        return r["status"], r["body"]

    def wait_ready_http(self, host, timeout=READY_TIMEOUT_S, want=200):
        deadline = time.monotonic() + timeout
        last = None
        while time.monotonic() < deadline:
            st, body = self.http(host, "/readyz")
            if st == want:
                return time.monotonic()
            last = (st, body)
            time.sleep(0.1)
        proc = self.bridge if host == "bridge" else self.nodes.get(host)
        raise e.E2EError("%s /readyz: expected %d within %.0f s, last answer %r\n  %s"
                         % (host, want, timeout, last,
                            proc.describe() if proc else ""))

    def open_clients(self):
        for cid, c in self.clients.items():
            token = e.mint(self.secret, c["user"], ttl=3600, channels=c["channels"] or None)
            url = "ws://%s:%d/ws?token=%s" % (ADDR[c["node"]], NODE_PORT, token)
            self.cagent.call("open", cid=cid, url=url, timeout=10)

    def client_send(self, cid, data, text):
        return self.cagent.call("send", cid=cid, d=b64(data), k="text" if text else "binary")

    def msgs(self, cid):
        """[(t, kind, data bytes)] received by client cid so far, in order."""
        return [(ev["t"], ev["k"], unb64(ev["d"])) for ev in self.cagent.event_list()
                if ev.get("ev") == "msg" and ev["cid"] == cid]

    def closes(self, cids=None):
        return [ev for ev in self.cagent.event_list()
                if ev.get("ev") == "closed" and (cids is None or ev["cid"] in cids)]

    def recipients(self, target, alive_only=True):
        kind, name = target.split(":", 1)
        closed = {ev["cid"] for ev in self.closes()}
        out = []
        for cid, c in self.clients.items():
            if alive_only and cid in closed:
                continue
            if (kind == "u" and c["user"] == name) or (kind == "c" and name in c["channels"]):
                out.append(cid)
        return out

    def received_seqs(self, cid):
        """{seq: first receive time} from the client's messages (parsable ones)."""
        out = {}
        for t, _, data in self.msgs(cid):
            seq = parse_seq(data)
            if seq is not None and seq not in out:
                out[seq] = t
        return out

    def describe_client(self, cid):
        c = self.clients[cid]
        return "%s (user %s on %s%s)" % (cid, c["user"], c["node"],
                                         ", channels " + ",".join(c["channels"])
                                         if c["channels"] else "")

    def wait_received(self, expected, timeout, what):
        """expected: {cid: set(seq)}; waits until each client has them all."""
        deadline = time.monotonic() + timeout
        while True:
            missing = {cid: sorted(s - set(self.received_seqs(cid))) for cid, s in
                       expected.items()}
            missing = {cid: m for cid, m in missing.items() if m}
            if not missing:
                return
            if time.monotonic() >= deadline:
                break
            time.sleep(0.02)
        lines = []
        for cid, seqs in missing.items():
            shown = ", ".join("%d (%s %s, %d bytes%s)" % (
                s, self.published[s]["via"], self.published[s]["subject"],
                len(self.published[s]["data"]),
                "" if self.published[s]["receivers"] is None else
                ", PUBLISH reported %d receiver(s)" % self.published[s]["receivers"])
                for s in seqs[:6])
            lines.append("  %s did not receive %d of them: %s%s"
                         % (self.describe_client(cid), len(seqs), shown,
                            " ..." if len(seqs) > 6 else ""))
        raise e.E2EError("%s: not delivered within %.1f s:\n%s%s"
                         % (what, timeout, "\n".join(lines), self.health_note()))

    def health_note(self):
        dead = [p.describe() for p in [self.bridge] + list(self.nodes.values())
                if p is not None and not p.alive() and not p.expected_exit]
        closed = self.closes()
        out = ""
        if dead:
            out += "\n  process(es) exited unexpectedly:\n  " + "\n  ".join(dead)
        if closed:
            out += "\n  client closes seen: %s" % ", ".join(
                "%s code %s %r" % (ev["cid"], ev["code"], ev["reason"]) for ev in closed)
        return out

    def expect_no_close(self, cids, what):
        closed = self.closes(cids)
        if closed:
            raise e.E2EError("%s: client connection(s) closed, expected all to stay open: %s"
                             % (what, "; ".join("%s code %s reason %r" % (
                                 self.describe_client(ev["cid"]), ev["code"], ev["reason"])
                                 for ev in closed)))

    def resume(self, what, vias, target, cids, t_back):
        """After a restart complete at t_back: publish on each of vias every
        TICK_S until every client in cids has received one from each via;
        every first receipt must come within RESUME_LIMIT_S of t_back.
        Returns {(cid, via): latency s}."""
        probes = {via: [] for via in vias}
        first = {}
        give_up = t_back + RESUME_GIVE_UP_S
        next_tick = time.monotonic()
        while True:
            now = time.monotonic()
            for via in vias:
                seq, _ = self.publish(via, target, binary=bool(len(probes[via]) % 2),
                                      ctx=what + " probe")
                probes[via].append(seq)
            for cid in cids:
                got = self.received_seqs(cid)
                for via in vias:
                    ts = [got[s] for s in probes[via] if s in got]
                    if ts:
                        first[(cid, via)] = min(ts)
            if len(first) == len(cids) * len(vias) or now >= give_up:
                break
            next_tick += TICK_S
            time.sleep(max(0.0, next_tick - time.monotonic()))
        time.sleep(0.2)     # late stragglers for the report (and for case 6)
        lat = {}
        problems = []
        for cid in cids:
            got = self.received_seqs(cid)
            for via in vias:
                ts = [got[s] for s in probes[via] if s in got]
                if not ts:
                    n0 = [self.published[s]["receivers"] for s in probes[via]]
                    problems.append("%s: nothing from %s in %.0f s after the restart "
                                    "(%d probes sent every %d ms%s)"
                                    % (self.describe_client(cid), via, RESUME_GIVE_UP_S,
                                       len(probes[via]), TICK_S * 1000,
                                       "; Redis PUBLISH receiver counts %s" % compress(n0)
                                       if via == "redis" else ""))
                    continue
                lat[(cid, via)] = min(ts) - t_back
                if lat[(cid, via)] > RESUME_LIMIT_S:
                    problems.append("%s: first %s delivery %.2f s after the restart was "
                                    "complete (limit %.1f s)" % (self.describe_client(cid), via,
                                                                 lat[(cid, via)],
                                                                 RESUME_LIMIT_S))
        if problems:
            raise e.E2EError("%s: delivery did not resume in time:\n  %s%s"
                             % (what, "\n  ".join(problems), self.health_note()))
        return lat

    def observe_readyz(self, host, want, timeout):
        """Informational: seconds until host's /readyz answers `want`, or None."""
        t0 = time.monotonic()
        while time.monotonic() - t0 < timeout:
            st, _ = self.http(host, "/readyz", timeout=0.5)
            if st == want:
                return time.monotonic() - t0
            time.sleep(0.1)
        return None


def parse_seq(data):
    m = re.match(rb"^([uc]:[A-Za-z0-9_.@=+|~-]+?)\|(\d+)\|", data)
    return int(m.group(2)) if m else None


def fmt_lat(lat):
    return ", ".join("%s/%s %.2fs" % (cid, via, v) for (cid, via), v in sorted(lat.items()))


# --------------------------------------------------------------------------
#  Cases

ALL_CIDS = [c[0] for c in CLIENTS]


def case_delivery(d):
    targets = [("u:alice", False), ("u:bob", True), ("u:shared", False), ("u:shared", True),
               ("c:lobby", False), ("c:lobby", True), ("u:carol", False), ("u:bob2", True)]
    expected = {cid: set() for cid in ALL_CIDS}
    mine = []
    for via in ("redis", "nats"):
        for target, binary in targets:
            seq, _ = d.publish(via, target, binary, ctx="case 1")
            mine.append(seq)
            for cid in d.recipients(target):
                expected[cid].add(seq)
    #  Order: a burst per backplane to the user with a session on each node
    burst = {"redis": [], "nats": []}
    for i in range(20):
        for via in ("redis", "nats"):
            seq, _ = d.publish(via, "u:shared", binary=bool(i % 2), ctx="case 1 burst")
            burst[via].append(seq)
            mine.append(seq)
            for cid in d.recipients("u:shared"):
                expected[cid].add(seq)
    d.wait_received(expected, DELIVERY_TIMEOUT_S, "case 1")
    time.sleep(0.3)     # anything extra would arrive now
    mine = set(mine)
    for cid in ALL_CIDS:
        got = [(t, k, data) for t, k, data in d.msgs(cid) if parse_seq(data) in mine]
        seqs = [parse_seq(data) for _, _, data in got]
        dups = sorted({s for s in seqs if seqs.count(s) > 1})
        e.expect(not dups, "%s received these seqs more than once: %s"
                 % (d.describe_client(cid), ", ".join("%d (%s %s)" % (
                     s, d.published[s]["via"], d.published[s]["subject"]) for s in dups[:10])))
        extra = sorted(set(seqs) - expected[cid])
        e.expect(not extra, "%s received messages addressed to others: %s"
                 % (d.describe_client(cid), ", ".join("%d (to %s via %s)" % (
                     s, d.published[s]["target"], d.published[s]["via"]) for s in extra)))
        for _, kind, data in got:
            pub = d.published[parse_seq(data)]
            e.expect(data == pub["data"], "%s: seq %d via %s %s not byte for byte:\n"
                     "  published %r\n  received  %r" % (d.describe_client(cid),
                                                         parse_seq(data), pub["via"],
                                                         pub["subject"], pub["data"], data))
            want = "text" if is_utf8(pub["data"]) else "binary"
            e.expect(kind == want, "%s: seq %d (%s) arrived as a %s frame, expected %s "
                     "(valid UTF-8 → text, otherwise binary)"
                     % (d.describe_client(cid), parse_seq(data), pub["subject"], kind, want))
        for via in ("redis", "nats"):
            if cid in ("sh_a", "sh_b"):
                order = [s for s in seqs if s in set(burst[via])]
                e.expect(order == burst[via], "%s: %s burst out of order: published %s, "
                         "received %s" % (d.describe_client(cid), via, burst[via], order))
    return "%d messages, sessions on node-a and node-b, text and binary, 2×20 in order" \
        % len(mine)


def envelope_check(raw, user, node, kind, data, what):
    import msgpack
    try:
        env = msgpack.unpackb(raw, raw=False)
    except Exception as ex:
        raise e.E2EError("%s: not msgpack (%s): %r" % (what, ex, e.short(raw)))
    e.expect(isinstance(env, dict), "%s: envelope is not a map: %r" % (what, env))
    e.expect(set(env) >= {"v", "u", "s", "n", "ts", "k", "d"},
             "%s: envelope keys %r, expected v,u,s,n,ts,k,d" % (what, sorted(env)))
    e.expect_eq(env["v"], 1, what + ": v")
    e.expect_eq(env["u"], user, what + ": u")
    e.expect_eq(env["n"], node, what + ": n (node id)")
    e.expect(isinstance(env["s"], int) and not isinstance(env["s"], bool),
             "%s: s must be an int, got %r" % (what, env["s"]))
    now_us = int(time.time() * 1e6)
    e.expect(isinstance(env["ts"], int) and abs(env["ts"] - now_us) < 60 * 1000000,
             "%s: ts must be µs since the epoch near %d, got %r" % (what, now_us, env["ts"]))
    e.expect_eq(env["k"], kind, what + ": k (1 text, 2 binary)")
    e.expect(isinstance(env["d"], bytes), "%s: d must be msgpack bin, got %s %r"
             % (what, type(env["d"]).__name__, e.short_any(env["d"])))
    e.expect_eq(env["d"], data, what + ": d")
    return env


def upstream_case(d, via):
    subj = "client.actions.%s" if via == "nats" else "ws:actions:%s"
    sub_a = d.subscribe(via, subj % "alice")
    sub_b = d.subscribe(via, subj % "bob")
    tag = secrets.token_hex(4)
    sends = [("a1", "alice", "node-a", ("up|alice|%s|text héllo ✓" % tag).encode(), True),
             ("a1", "alice", "node-a", b"up|alice|" + tag.encode() + b"|\x00\xff\xfe bin", False),
             ("b1", "bob", "node-b", ("up|bob|%s|from node-b" % tag).encode(), True)]
    for cid, _, _, data, text in sends:
        d.client_send(cid, data, text)
    deadline = time.monotonic() + DELIVERY_TIMEOUT_S
    want = {sub_a: [s for s in sends if s[1] == "alice"],
            sub_b: [s for s in sends if s[1] == "bob"]}
    while True:
        got = {sub: [unb64(ev["d"]) for ev in d.sub_messages(sub)] for sub in want}
        if all(len(got[sub]) >= len(want[sub]) for sub in want) \
                or time.monotonic() >= deadline:
            break
        time.sleep(0.02)
    time.sleep(0.2)
    got = {sub: [unb64(ev["d"]) for ev in d.sub_messages(sub)] for sub in want}
    import msgpack
    sids = set()
    for sub, sends_for in want.items():
        subject = d.subs[sub]
        envs = []
        for raw in got[sub]:
            try:
                envs.append(msgpack.unpackb(raw, raw=False))
            except Exception:
                envs.append({"d": raw})
        for cid, user, node, data, text in sends_for:
            idx = [i for i, env in enumerate(envs) if isinstance(env, dict)
                   and env.get("d") == data]
            e.expect(idx, "%s: %s sent %r (%s) from %s; expected it on %s %s within %.0f s, "
                     "observed %d message(s) there: %s%s"
                     % ("upstream", cid, data, "text" if text else "binary", node, via, subject,
                        DELIVERY_TIMEOUT_S, len(got[sub]),
                        [e.short(r, 60) for r in got[sub]][:5], d.health_note()))
            e.expect(len(idx) == 1, "%s %s: %r arrived %d times" % (via, subject, data, len(idx)))
            env = envelope_check(got[sub][idx[0]], user, node, 1 if text else 2, data,
                                 "%s %s envelope of %s's message" % (via, subject, cid))
            sids.add((user, env["s"]))
        e.expect(len(got[sub]) == len(sends_for),
                 "%s %s: expected exactly %d message(s), observed %d"
                 % (via, subject, len(sends_for), len(got[sub])))
    e.expect(len({s for u, s in sids if u == "alice"}) == 1,
             "alice's two messages carry different session ids: %r" % sids)
    return "alice@node-a text+binary on %s, bob@node-b on %s, envelopes checked" \
        % (subj % "alice", subj % "bob")


def restart_backplane_case(d, kind):
    try:
        return _restart_backplane_case(d, kind)
    finally:
        #  Whatever happened, leave the server running for the next cases
        proc = d.redis if kind == "redis" else d.nats
        if not proc.alive():
            (d.start_redis if kind == "redis" else d.start_nats)()


def _restart_backplane_case(d, kind):
    what = "%s restart" % kind
    proc = d.redis if kind == "redis" else d.nats
    st = proc.kill(signal.SIGTERM, wait=10)
    t_down = time.monotonic()
    #  Informational, while it is down: does node-a's readiness notice?
    nr = d.observe_readyz("node-a", 503, 3.0)
    br = d.observe_readyz("bridge", 503, 0.5)
    if kind == "redis":
        d.start_redis()
    else:
        d.start_nats()
    t_back = d.wait_backplane(kind, timeout=10)
    lat = d.resume(what, [kind], "u:shared", ["sh_a", "sh_b"], t_back)
    d.expect_no_close(ALL_CIDS, what)
    ready_again = d.observe_readyz("node-a", 200, 10.0)
    e.expect(ready_again is not None, "%s: node-a /readyz not 200 again within 10 s of %s "
             "answering PING" % (what, kind))
    return ("%s exited %s, down %.1f s, back (PING) → first delivery %s; no client closed; "
            "node-a /readyz during outage: %s, bridge /readyz: %s, node-a 200 again after %.1f s"
            % (kind, st, t_back - t_down, fmt_lat(lat),
               "503 after %.1f s" % nr if nr is not None else "stayed non-503 for 3 s",
               "503" if br is not None else "not 503 within 0.5 s", ready_again))


def case_bridge_restart(d):
    try:
        return _case_bridge_restart(d)
    finally:
        if not d.bridge.alive():
            d.start_bridge()


def _case_bridge_restart(d):
    what = "bridge restart"
    st = d.bridge.kill(signal.SIGKILL, wait=10)
    t_down = time.monotonic()
    nr = d.observe_readyz("node-a", 503, 3.0)
    d.expect_no_close(ALL_CIDS, what + " (while the bridge was down)")
    d.start_bridge()
    t_back = d.bridge.wait_ready(READY_TIMEOUT_S)
    lat = d.resume(what, ["redis", "nats"], "u:shared", ["sh_a", "sh_b"], t_back)
    d.expect_no_close(ALL_CIDS, what)
    #  Upstream through the new bridge
    sub = d.subscribe("nats", "client.actions.alice")
    data = ("up|alice|after-bridge-restart|%s" % secrets.token_hex(4)).encode()
    t0 = time.monotonic()
    d.client_send("a1", data, True)
    while time.monotonic() - t0 < DELIVERY_TIMEOUT_S:
        if any(unb64(ev["d"]) for ev in d.sub_messages(sub)):
            break
        time.sleep(0.02)
    got = [unb64(ev["d"]) for ev in d.sub_messages(sub)]
    e.expect(got, "%s: a1's message after the restart did not reach NATS "
             "client.actions.alice within %.0f s%s" % (what, DELIVERY_TIMEOUT_S,
                                                     d.health_note()))
    envelope_check(got[0], "alice", "node-a", 1, data, what + ": upstream envelope")
    ready_again = d.observe_readyz("node-a", 200, 10.0)
    e.expect(ready_again is not None, "%s: node-a /readyz not 200 again within 10 s of the "
             "bridge's ready line" % what)
    return ("SIGKILL (status %s), down %.1f s, back (ready line) → first delivery %s; "
            "no client closed; upstream OK; node-a /readyz while bridge down: %s"
            % (st, t_back - t_down, fmt_lat(lat),
               "503 after %.1f s" % nr if nr is not None else "stayed non-503 for 3 s"))


def case_node_killed(d):
    what = "node-a killed"
    a_cids = [cid for cid in ALL_CIDS if d.clients[cid]["node"] == "node-a"]
    b_cids = [cid for cid in ALL_CIDS if d.clients[cid]["node"] == "node-b"]
    st = d.nodes["node-a"].kill(signal.SIGKILL, wait=10)
    deadline = time.monotonic() + 5
    while time.monotonic() < deadline and \
            len({ev["cid"] for ev in d.closes(a_cids)}) < len(a_cids):
        time.sleep(0.05)
    a_closed = sorted({ev["cid"] for ev in d.closes(a_cids)})
    d.expect_no_close(b_cids, what)
    expected = {cid: set() for cid in b_cids}
    plan = [("u:shared", False), ("u:bob", True), ("c:lobby", False), ("u:carol", True)]
    t_end = time.monotonic() + 1.5
    i = 0
    while time.monotonic() < t_end:
        target, binary = plan[i % len(plan)]
        via = ("redis", "nats")[(i // len(plan)) % 2]
        seq, _ = d.publish(via, target, binary, ctx=what)
        for cid in d.recipients(target):
            e.expect(cid in b_cids, "internal: recipient %s is on node-a" % cid)
            expected[cid].add(seq)
        i += 1
        time.sleep(TICK_S)
    e.expect(sum(len(v) for v in expected.values()) > 0,
             "%s: nothing was published to node-b's sessions: nothing to check" % what)
    d.wait_received(expected, DELIVERY_TIMEOUT_S, what)
    d.expect_no_close(b_cids, what)
    e.expect(d.nodes["node-b"].alive(), "%s: node-b exited: %s"
             % (what, d.nodes["node-b"].describe()))
    return ("node-a status %s; its clients saw a close: %s; node-b clients kept open, "
            "received all %d messages published over 1.5 s"
            % (st, ",".join(a_closed) or "none", sum(len(s) for s in expected.values())))


def case_intruders(d):
    """Peers without a key, or with a key not in the clients directory, get
    nothing: no message, no subscription reaching Redis; counted."""
    st, text = d.http("bridge", "/metrics", grep="wsrouter_bridge_peers_denied")
    denied0 = metric(text, "wsrouter_bridge_peers_denied_total")
    e.expect(denied0 is not None, "bridge /metrics has no peers_denied_total: %r" % (text,))
    endpoint = "tcp://%s:%d" % (ADDR["bridge"], BRIDGE_PORT)
    notes = []
    for label, args in (("no key", []),
                        ("unknown key", [d.key("intruder", True), d.key("bridge")])):
        r = run(["ip", "netns", "exec", d.topo.ns("client"), PY, d.agent_path, "intruder",
                 endpoint] + args, timeout=20)
        res = json.loads(r.stdout.decode().strip().splitlines()[-1])
        e.expect(res["sent"] > 0, "intruder (%s) could not even queue a message" % label)
        e.expect(res["received"] == [], "intruder (%s) received %d messages: %r"
                 % (label, len(res["received"]), res["received"][:3]))
        notes.append("%s: %d sends, 0 received" % (label, res["sent"]))
    r = d.ragent.call("cmd", args=["PUBSUB", "CHANNELS", "ws:intruder"])
    e.expect(r.get("v") == [], "Redis has the intruder's subscription: %r" % (r,))
    time.sleep(0.3)
    for cid in ALL_CIDS:
        e.expect(999999999 not in d.received_seqs(cid),
                 "%s received the intruder's forged publish" % cid)
    st, text = d.http("bridge", "/metrics", grep="wsrouter_bridge_peers_denied")
    denied = metric(text, "wsrouter_bridge_peers_denied_total")
    e.expect(denied is not None and denied >= denied0 + 2,
             "peers_denied_total %s → %s, expected +2 at least" % (denied0, denied))
    return "; ".join(notes) + "; peers_denied_total %d → %d; no ws:intruder in Redis" \
        % (denied0, denied)


def case_plaintext_refused(d):
    """Plaintext on a non-loopback address is refused, by a bridge and a node."""
    r = run(["ip", "netns", "exec", d.topo.ns("bridge"), d.bin, "bridge", "--endpoint",
             "tcp://%s:%d" % (ADDR["bridge"], BRIDGE_PORT + 10)], check=False, timeout=10)
    out = (r.stdout + r.stderr).decode("utf-8", "replace")
    e.expect(r.returncode != 0 and "refusing plaintext" in out,
             "a keyless bridge on a non-loopback address: exit %d, %r" % (r.returncode, out))
    r = run(["ip", "netns", "exec", d.topo.ns("node-a"), d.bin, "serve", "--bridge",
             "tcp://%s:%d" % (ADDR["bridge"], BRIDGE_PORT), "--port", str(NODE_PORT + 10),
             "--jwt-secret", d.secret, "--node-id", "plain"], check=False, timeout=10)
    out2 = (r.stdout + r.stderr).decode("utf-8", "replace")
    e.expect(r.returncode != 0 and "refusing plaintext" in out2,
             "a keyless node to a non-loopback bridge: exit %d, %r" % (r.returncode, out2))
    return "bridge and node both exit non-zero with 'refusing plaintext'"


def case_no_duplicates(d):
    problems = []
    total = 0
    for cid in ALL_CIDS:
        c = d.clients[cid]
        allowed = {"u:" + c["user"]} | {"c:" + ch for ch in c["channels"]}
        seen = {}
        for t, kind, data in d.msgs(cid):
            total += 1
            seq = parse_seq(data)
            if seq is None or seq not in d.published:
                problems.append("%s received an unexpected message %r"
                                % (d.describe_client(cid), e.short(data)))
                continue
            pub = d.published[seq]
            if pub["target"] not in allowed:
                problems.append("%s received seq %d addressed to %s (%s %s, during %s)"
                                % (d.describe_client(cid), seq, pub["target"], pub["via"],
                                   pub["subject"], pub["ctx"]))
            if data != pub["data"]:
                problems.append("%s: seq %d not byte for byte: published %r, received %r"
                                % (d.describe_client(cid), seq, pub["data"], data))
            if seq in seen:
                problems.append("%s received seq %d twice (%s %s, during %s), %.3f s apart"
                                % (d.describe_client(cid), seq, pub["via"], pub["subject"],
                                   pub["ctx"], t - seen[seq]))
            seen.setdefault(seq, t)
    if problems:
        raise e.E2EError("%d problem(s):\n  %s" % (len(problems), "\n  ".join(problems[:20])))
    e.expect(total > 0, "no session received anything over the whole run: nothing to check")
    return "%d messages received by %d sessions over the whole run: each to its own " \
        "user/channel, none twice" % (total, len(ALL_CIDS))


# --------------------------------------------------------------------------
#  Runner

def deploy(d, suite):
    d.start_redis()
    d.start_nats()
    d.start_agents()
    d.wait_backplane("redis")
    d.wait_backplane("nats")
    d.start_bridge()
    d.bridge.wait_ready()
    for n in NODES:
        d.start_node(n)
    for n in NODES:
        d.nodes[n].wait_ready()
    t0 = time.monotonic()
    d.wait_ready_http("bridge")
    for n in NODES:
        d.wait_ready_http(n)
    t_ready = time.monotonic() - t0
    d.open_clients()
    #  Warm-up: subscriptions travel session → node → bridge → backplane
    #  asynchronously; probe every target on both backplanes until received.
    t0 = time.monotonic()
    targets = sorted({"u:" + c["user"] for c in d.clients.values()} |
                     {"c:" + ch for c in d.clients.values() for ch in c["channels"]})
    pending = {(t, via) for t in targets for via in ("redis", "nats")}
    probes = {k: [] for k in pending}
    while pending:
        if time.monotonic() - t0 > 10:
            raise SetupError("warm-up: in 10 s nothing reached the sessions of %s%s"
                             % (", ".join("%s via %s" % k for k in sorted(pending)),
                                d.health_note()))
        for k in sorted(pending):
            seq, _ = d.publish(k[1], k[0], ctx="warm-up")
            probes[k].append(seq)
        time.sleep(0.2)
        for k in list(pending):
            cids = d.recipients(k[0])
            if all(any(s in d.received_seqs(cid) for s in probes[k]) for cid in cids):
                pending.discard(k)
    time.sleep(0.3)
    d.expect_no_close(ALL_CIDS, "setup")
    print("setup: 7 namespaces, redis, nats, bridge, node-a, node-b up; every /readyz 200 "
          "after %.1f s; %d sessions open; warm-up took %.1f s"
          % (t_ready, len(d.clients), time.monotonic() - t0), flush=True)


def main():
    setup_only = "--setup-only" in sys.argv[1:]
    refused = netns_refused()
    if refused:
        print("SKIP: %s" % refused, flush=True)
        return e.SKIP
    missing = [p for p in ("ip",) + (() if setup_only else ("redis-server",))
               if not shutil.which(p)]
    if not setup_only and not os.access(nats_server_path(), os.X_OK):
        missing.append("nats-server")
    if missing:
        print("SKIP: %s not installed (scripts/deps test installs them)" % ", ".join(missing),
              flush=True)
        return e.SKIP

    arm(TEST_LIMIT_S)
    t_start = time.monotonic()

    suite = e.Suite("e2e_netns")
    topo = Topology("wsre2e", HOSTS, ADDR)
    tmpdir = tempfile.mkdtemp(prefix="wsr-e2e-netns-")
    d = None
    try:
        try:
            wsrouter = None
            if not setup_only:
                wsrouter = e.binary()
                ok, why = bridge_supported(wsrouter)
                if not ok:
                    raise SetupError("%s has no working 'bridge' subcommand "
                                     "(wsrouter bridge --help → %s)" % (wsrouter, why))
            stale = topo.sweep_stale()
            if stale:
                print("setup: removed %d namespace(s) left by killed runs: %s"
                      % (len(stale), ", ".join(stale)), flush=True)
            topo.build()
            topo.host_isolated()
            pings = topo.ping_matrix()
            if setup_only:
                suite.ok("setup-only topology", "%d namespaces (switch + %s), %s; the host "
                         "namespace has no %s.x address"
                         % (len(topo.created), ", ".join(HOSTS), pings, SUBNET))
            else:
                print("setup: topology built, %s" % pings, flush=True)
                d = Deployment(topo, tmpdir, wsrouter)
                deploy(d, suite)
        except SetupError as ex:
            suite.fail("setup", str(ex))
        except e.E2EError as ex:
            suite.fail("setup", str(ex))
        else:
            if not setup_only:
                run_case(suite, "1 delivery redis+nats to node-a and node-b",
                         case_delivery, d)
                run_case(suite, "2 upstream to NATS client.actions.U", upstream_case, d, "nats")
                run_case(suite, "2b upstream to Redis ws:actions:U", upstream_case, d, "redis")
                run_case(suite, "3a redis restart", restart_backplane_case, d, "redis")
                run_case(suite, "3b nats restart", restart_backplane_case, d, "nats")
                run_case(suite, "4 bridge SIGKILL and restart", case_bridge_restart, d)
                run_case(suite, "5 node-a SIGKILL, node-b untouched", case_node_killed, d)
                run_case(suite, "6 nothing twice, nothing to the wrong user",
                         case_no_duplicates, d)
                run_case(suite, "7 peers without an allowed CURVE key get nothing",
                         case_intruders, d)
                run_case(suite, "8 plaintext on a non-loopback address refused",
                         case_plaintext_refused, d)
    except TestTimeout:
        suite.fail("time limit", "the whole test exceeded %d s; stopped%s"
                   % (TEST_LIMIT_S, d.health_note() if d else ""))
    except Interrupted:
        suite.fail("interrupted", "SIGTERM/SIGINT received; tearing down")
    except Exception as ex:
        suite.fail("internal", "%s: %s\n%s" % (type(ex).__name__, ex, traceback.format_exc()))
    finally:
        disarm()
        problems = []
        n_ns = len(topo.created)
        if d is not None:
            crashed = d.crashed()
            for p in crashed:
                problems.append("%s exited unexpectedly: %s" % (p.name, p.describe()))
            problems += d.kill_all()
        problems += topo.teardown()
        shutil.rmtree(tmpdir, ignore_errors=True)
        if problems:
            suite.fail("teardown", "\n  ".join(problems))
        elif setup_only and n_ns:
            suite.ok("teardown", "%d namespaces deleted, none left" % n_ns)
        print("e2e_netns: %.1f s" % (time.monotonic() - t_start), flush=True)
    return suite.finish()


if __name__ == "__main__":
    sys.exit(main())
