#!/usr/bin/python3
"""e2e_scale_netns — scale-out faults under load, over real TCP between network namespaces.

Fifteen hosts, each its own network namespace on one Linux bridge device (in
a sixteenth, "switch" namespace; tests/wsr_netns.py), addresses in
10.214.0.0/24 that exist only inside the namespaces:

    redis-1..6  10.214.0.11-16  redis-server :6379 --cluster-enabled yes (bus :16379),
                                cluster-node-timeout 2 s, made with
                                redis-cli --cluster create --cluster-replicas 1
    nats-1..3   10.214.0.21-23  nats-server :4222, routes :6222 to each other,
                                monitoring :8222
    bridge-1,2  10.214.0.31-32  wsrouter bridge :5570 (CURVE, a certificate each),
                                HTTP :9090; WEBSOCKET_REDIS_URL=redis+cluster://
                                all six, NATS_URL=nats-1,nats-2
    node-a,b,c  10.214.0.41-43  wsrouter serve --bridge tcp://b1:5570,tcp://b2:5570
                                --bridge-key b1,b2 :8080
    client      10.214.0.51     the WebSocket sessions, the Redis backend
                                (cluster-aware: SPUBLISH ws:USER at the slot's
                                owner) and the NATS backend (connected to
                                nats-3, which is never killed)

One redis-server per namespace, as one per host in production: each has its
own address with the standard ports, a kill takes exactly one cluster node
away, and redis-cli places replicas by address as it would on real hosts.

Users: 9 users, 3 per node, chosen so that every (Redis shard, owning
bridge) pair has one (the rendezvous weight of tests' rendezvous_owner, the
same as actors/wsr_link.c), plus "shared" with a session on each node: 12
sessions. Load runs from before the first fault to after the last: every
50 ms one message per user through each backplane, "L|VIA|USER|SEQ|...",
SEQ per user and backplane; the Redis backend records the receiver count
SPUBLISH returns, a publish refused (the master is dead, MOVED) is not
expected anywhere.

Faults, in order, each with the load running:
  1  redis: the master owning the first user's slot is SIGKILLed; its
     replica reports role master (polled every 10 ms): t_ref
  2  bridge-1 SIGKILLed: t_ref is the kill (bridge-2 must take its share over)
  2b bridge-1 started again: t_ref is its ready line (its share moves back;
     afterwards every channel is SSUBSCRIBEd exactly once, SHARDNUMSUB 1)
  3  nats: the server of nats-1/nats-2 that holds most bridge connections
     (/connz) is SIGKILLed: t_ref is the kill
For each fault, for each session and each backplane: "resumed" is the first
delivery of a message published after t_ref and after the last message lost
in the window; it must come within 2 s of t_ref. No client connection may
close; no message twice, none out of order (per session and backplane,
over the whole run); what was lost (accepted by the server, never received)
is counted and printed per fault, with the nodes' topic moves and stale
deliveries dropped.

By default (ctest e2e_scale_netns) the bridges use core NATS subjects.
With --jetstream (ctest e2e_scale_netns_jetstream) the NATS servers run
JetStream and the bridges keep history in an R3 stream
(NATS_HISTORY_STREAM=WSR_NETNS, NATS_HISTORY_REPLICAS=3): live NATS delivery
then comes from the stream's consumers (core copies while the stream is
silent: bridge/wsr_jsmerge.c), the NATS server killed is the stream's
leader when a bridge is on it, and the same bounds apply.

Run as root. Exits 77 (skipped) when namespaces cannot be made or ip,
redis-server, redis-cli or nats-server is missing. `--setup-only` builds the
topology, pings every pair, tears it down. Bounded: every wait has a
timeout, the whole run stops itself at 225 s (ctest allows 300).
"""

import collections
import os
import re
import secrets
import shutil
import signal
import statistics
import sys
import tempfile
import time
import traceback

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)

import wsr_e2e as e  # noqa: E402
from redis_cluster import key_slot  # noqa: E402
from wsr_netns import (AGENT, READY_TIMEOUT_S, Agent, Interrupted, Proc,  # noqa: E402
                       SetupError, TestTimeout, Topology, arm, bridge_supported,
                       clean_env, disarm, metric, nats_server_path, netns_refused, run,
                       run_case, unb64)
from wsr_netns_agent import load_payload  # noqa: E402

SUBNET = "10.214.0"
REDIS = ["redis-%d" % i for i in range(1, 7)]
NATS = ["nats-%d" % i for i in range(1, 4)]
BRIDGES = ["bridge-1", "bridge-2"]
NODES = ["node-a", "node-b", "node-c"]
HOSTS = REDIS + NATS + BRIDGES + NODES + ["client"]
ADDR = {}
for _i, _h in enumerate(REDIS):
    ADDR[_h] = "%s.%d" % (SUBNET, 11 + _i)
for _i, _h in enumerate(NATS):
    ADDR[_h] = "%s.%d" % (SUBNET, 21 + _i)
for _i, _h in enumerate(BRIDGES):
    ADDR[_h] = "%s.%d" % (SUBNET, 31 + _i)
for _i, _h in enumerate(NODES):
    ADDR[_h] = "%s.%d" % (SUBNET, 41 + _i)
ADDR["client"] = "%s.51" % SUBNET

REDIS_PORT = 6379
NATS_PORT = 4222
NATS_ROUTE_PORT = 6222
NATS_HTTP_PORT = 8222
BRIDGE_PORT = 5570
BRIDGE_HTTP_PORT = 9090
NODE_PORT = 8080
NODE_TIMEOUT_MS = 2000      # cluster-node-timeout: short, yet no spurious failover on
                            # 2 busy cores (1 s does happen there: see e2e_scale case 1)
NATS_PUBLISHER = "nats-3"   # the backend's server: never killed
BRIDGE_NATS = ["nats-1", "nats-2"]  # the bridges' NATS_URL (nats-3 is discovered)

TEST_LIMIT_S = 225
RESUME_LIMIT_S = 2.0        # the bound, for every fault
LOAD_INTERVAL_S = 0.05      # one message per user and backplane every 50 ms
WINDOW_S = 3.0              # a fault's publishes looked at: until t_ref + this
SETTLE_S = 1.0              # ... and received until t_ref + WINDOW_S + this
GIVE_UP_S = 12.0            # a window stretched this far to tell "late" from "never"
WARMUP_S = 20.0
PER_NODE = 3
JETSTREAM = "--jetstream" in sys.argv[1:]
STREAM = "WSR_NETNS"

BRIDGE_READY = "bridge listening on tcp://"
NODE_READY_RE = re.compile(r"listening on ws://[^\s]*:%d/ws" % NODE_PORT)
LOAD_RE = re.compile(rb"^L\|([rn])\|([^|]+)\|(\d+)\|")
VIAS = ("r", "n")
VIA_NAME = {"r": "redis", "n": "nats"}


def note(text):
    print("  # " + text, flush=True)


# --------------------------------------------------------------------------
#  Rendezvous ownership, as actors/wsr_link.c computes it

M64 = (1 << 64) - 1


def rendezvous_weight(endpoint, key):
    h = 14695981039346656037
    for b in endpoint.encode():
        h = ((h ^ b) * 1099511628211) & M64
    h = ((h ^ 0xff) * 1099511628211) & M64
    for b in key:
        h = ((h ^ b) * 1099511628211) & M64
    h ^= h >> 30
    h = (h * 0xbf58476d1ce4e5b9) & M64
    h ^= h >> 27
    h = (h * 0x94d049bb133111eb) & M64
    return h ^ (h >> 31)


def rendezvous_owner(endpoints, user):
    """Index of the endpoint owning user's topic (key "user:U" and its NUL)."""
    key = ("user:%s" % user).encode() + b"\0"
    weights = [rendezvous_weight(ep, key) for ep in endpoints]
    return weights.index(max(weights))


def bridge_endpoint(b):
    return "tcp://%s:%d" % (ADDR[b], BRIDGE_PORT)


# --------------------------------------------------------------------------
#  The deployment

class Scale:
    def __init__(self, topo, tmpdir, wsrouter):
        self.topo = topo
        self.tmp = tmpdir
        self.bin = wsrouter
        self.secret = "scale-" + secrets.token_hex(16)
        self.procs = []
        self.redis, self.nats, self.bridges, self.nodes = {}, {}, {}, {}
        self.keys = os.path.join(tmpdir, "keys")
        self.clients_dir = os.path.join(tmpdir, "clients")
        os.makedirs(self.keys)
        os.makedirs(self.clients_dir)
        for name in BRIDGES + NODES:
            run([wsrouter, "keygen", "--curve", "--out", os.path.join(self.keys, name)])
        for name in NODES:
            shutil.copy(os.path.join(self.keys, name), self.clients_dir)
        self.users = []             # [(user, node)]
        self.sessions = {}          # cid -> (user, node)
        self.slots = {}             # user -> slot
        self.shards = {}            # user -> master host at the start
        self.owner = {}             # user -> bridge (rendezvous, both live)
        #  What the agents reported, gathered incrementally (collect())
        self.pubs = collections.defaultdict(list)   # (via, user) -> [(seq, t, n)]
        self.recv = collections.defaultdict(list)   # (cid, via) -> [(seq, t)]
        self.bad = []               # payloads that are not what was published
        self.closed = []            # close events
        self.pub_errors = []
        self._at = {"c": 0, "r": 0, "n": 0}

    def key(self, name, secret=False):
        return os.path.join(self.keys, name + ("_secret" if secret else ""))

    def _track(self, p):
        self.procs.append(p)
        return p

    # ---- processes

    def start_redis(self, h):
        d = os.path.join(self.tmp, h)
        os.makedirs(d, exist_ok=True)
        self.redis[h] = self._track(Proc(
            h, self.topo.ns(h),
            ["redis-server", "--port", str(REDIS_PORT), "--bind", ADDR[h],
             "--protected-mode", "no", "--cluster-enabled", "yes",
             "--cluster-node-timeout", str(NODE_TIMEOUT_MS),
             "--cluster-config-file", os.path.join(d, "nodes.conf"), "--dir", d,
             "--save", "", "--appendonly", "no",
             #  Replicas sync at once and may always take over; the other
             #  shards keep serving while one waits for its replica (README)
             "--repl-diskless-sync-delay", "0", "--cluster-replica-validity-factor", "0",
             "--cluster-require-full-coverage", "no"], cwd=self.tmp,
            ready=r"Ready to accept connections"))
        return self.redis[h]

    def start_nats(self, h):
        os.makedirs(os.path.join(self.tmp, h), exist_ok=True)
        routes = ",".join("nats-route://%s:%d" % (ADDR[n], NATS_ROUTE_PORT)
                          for n in NATS if n != h)
        self.nats[h] = self._track(Proc(
            h, self.topo.ns(h),
            [nats_server_path(), "-a", ADDR[h], "-p", str(NATS_PORT), "-n", h,
             "-m", str(NATS_HTTP_PORT), "--cluster_name", "wsr",
             "--cluster", "nats://%s:%d" % (ADDR[h], NATS_ROUTE_PORT), "--routes", routes] +
            (["-js", "-sd", os.path.join(self.tmp, h)] if JETSTREAM else []),
            cwd=self.tmp, ready=r"Server is ready"))
        return self.nats[h]

    def start_bridge(self, b):
        env = clean_env(
            WEBSOCKET_REDIS_URL="redis+cluster://" + ",".join(
                "%s:%d" % (ADDR[h], REDIS_PORT) for h in REDIS),
            NATS_URL=",".join("nats://%s:%d" % (ADDR[n], NATS_PORT) for n in BRIDGE_NATS),
            **({"NATS_HISTORY_STREAM": STREAM, "NATS_HISTORY_REPLICAS": "3"} if JETSTREAM
               else {}))
        self.bridges[b] = self._track(Proc(
            b, self.topo.ns(b),
            [self.bin, "bridge", "--endpoint", bridge_endpoint(b),
             "--http-port", str(BRIDGE_HTTP_PORT), "--http-bind", ADDR[b],
             "--cert", self.key(b, True), "--clients", self.clients_dir],
            env=env, cwd=self.tmp, ready=re.escape(BRIDGE_READY)))
        return self.bridges[b]

    def start_node(self, n):
        self.nodes[n] = self._track(Proc(
            n, self.topo.ns(n),
            [self.bin, "serve", "--bridge", ",".join(bridge_endpoint(b) for b in BRIDGES),
             "--port", str(NODE_PORT), "--bind", ADDR[n], "--workers", "2",
             "--jwt-secret", self.secret, "--node-id", n, "--cert", self.key(n, True),
             "--bridge-key", ",".join(self.key(b) for b in BRIDGES)],
            cwd=self.tmp, ready=NODE_READY_RE.pattern))
        return self.nodes[n]

    def start_agents(self):
        ns = self.topo.ns("client")
        self.cagent = self._track(Agent("client-agent", ns, AGENT, "client", cwd=self.tmp))
        self.ragent = self._track(Agent(
            "redis-backend", ns, AGENT, "rcluster",
            ["%s:%d" % (ADDR[h], REDIS_PORT) for h in REDIS], cwd=self.tmp))
        self.nagent = self._track(Agent(
            "nats-backend", ns, AGENT, "natsload",
            ["%s:%d" % (ADDR[NATS_PUBLISHER], NATS_PORT)], cwd=self.tmp))

    def kill_all(self):
        problems = []
        for p in reversed(self.procs):
            if p.alive():
                try:
                    p.kill(signal.SIGKILL, wait=5)
                except Exception as ex:
                    problems.append(str(ex))
        return problems

    def crashed(self):
        return [p for p in self.procs
                if not p.alive() and not p.expected_exit and not isinstance(p, Agent)]

    def health_note(self):
        dead = [p.describe() for p in self.procs
                if not isinstance(p, Agent) and not p.alive() and not p.expected_exit]
        out = ("\n  process(es) exited unexpectedly:\n  " + "\n  ".join(dead)) if dead else ""
        for a in (self.cagent, self.ragent, self.nagent):
            with a.lock:
                stray = [l for l in a.lines if not l.startswith("{")]
            if stray or not a.alive():
                out += "\n  %s (%s) printed:\n    %s" % (
                    a.name, "running" if a.alive() else "exited %s" % a.proc.returncode,
                    "\n    ".join(stray[-15:]))
        return out

    # ---- Redis Cluster

    def redis_addr(self, h):
        return "%s:%d" % (ADDR[h], REDIS_PORT)

    def rcmd(self, h, *args, timeout=1.0, check=True):
        r = self.ragent.call("cmd", addr=self.redis_addr(h), args=list(args),
                             timeout=timeout + 3, check=check)
        return r.get("v") if r.get("ok") else None

    def live_redis(self):
        return [h for h in REDIS if self.redis[h].alive()]

    def host_of(self, addr):
        for h in REDIS:
            if ADDR[h] == addr:
                return h
        return None

    def create_cluster(self):
        for h in REDIS:
            self.redis[h].wait_ready()
        r = run(["ip", "netns", "exec", self.topo.ns("client"), "redis-cli", "--cluster",
                 "create"] + [self.redis_addr(h) for h in REDIS] +
                ["--cluster-replicas", "1", "--cluster-yes"], timeout=60, check=False)
        if r.returncode != 0:
            raise SetupError("redis-cli --cluster create failed (exit %d): %s"
                             % (r.returncode, (r.stdout + r.stderr).decode(
                                 "utf-8", "replace")[-800:]))
        self.wait_cluster_ok(30.0, "after redis-cli --cluster create")

    def wait_cluster_ok(self, timeout, what):
        deadline = time.monotonic() + timeout
        last = None
        while time.monotonic() < deadline:
            bad = []
            for h in self.live_redis():
                info = self.rcmd(h, "CLUSTER", "INFO", check=False) or ""
                repl = self.rcmd(h, "INFO", "replication", check=False) or ""
                if "cluster_state:ok" not in info:
                    bad.append("%s: cluster_state not ok" % h)
                elif "role:master" not in repl and "master_link_status:up" not in repl:
                    bad.append("%s: replica not in sync" % h)
            if not bad:
                return
            last = bad
            time.sleep(0.2)
        raise SetupError("Redis Cluster not ok within %.0f s %s: %s" % (timeout, what, last))

    def slot_owner(self, slot, ask=None):
        """Master host owning slot, as node `ask` (default: a live one) sees it."""
        for entry in self.rcmd(ask or self.live_redis()[0], "CLUSTER", "SLOTS"):
            if entry[0] <= slot <= entry[1]:
                return self.host_of(entry[2][0])
        return None

    def roles(self):
        r = self.ragent.call("roles", addrs=[self.redis_addr(h) for h in self.live_redis()],
                             timeout=10)
        return {self.host_of(a.rsplit(":", 1)[0]): v for a, v in r["roles"].items()}

    def replica_of(self, master):
        for h, role in self.roles().items():
            if role[0] == "slave" and role[1] == ADDR[master]:
                return h
        return None

    def shardnumsub(self, user):
        """{host: SSUBSCRIBE count of ws:USER} on every live master."""
        out = {}
        for h, role in self.roles().items():
            if role[0] == "master":
                v = self.rcmd(h, "PUBSUB", "SHARDNUMSUB", "ws:" + user)
                out[h] = v[1]
        return out

    # ---- NATS

    def nats_json(self, h, path):
        r = self.nagent.call("json", url="http://%s:%d%s" % (ADDR[h], NATS_HTTP_PORT, path),
                             timeout=5, check=False)
        return r.get("doc") if r.get("ok") else None

    def wait_nats_routes(self, timeout=15.0):
        deadline = time.monotonic() + timeout
        last = None
        while time.monotonic() < deadline:
            counts = {}
            for h in NATS:
                doc = self.nats_json(h, "/routez")
                counts[h] = doc.get("num_routes") if doc else None
            if all((c or 0) >= len(NATS) - 1 for c in counts.values()):
                return counts
            last = counts
            time.sleep(0.2)
        raise SetupError("NATS routes not all up within %.0f s: %s" % (timeout, last))

    def stream_info(self):
        """The history stream's replicas and leader, from /jsz of a live server."""
        for h in NATS:
            if not self.nats[h].alive():
                continue
            doc = self.nats_json(h, "/jsz?accounts=true&streams=true&config=true") or {}
            for acc in doc.get("account_details", []):
                for st in acc.get("stream_detail", []):
                    if st.get("name") == STREAM:
                        cl = st.get("cluster", {})
                        return {"replicas": st.get("config", {}).get("num_replicas"),
                                "leader": cl.get("leader"),
                                "messages": st.get("state", {}).get("messages")}
        return None

    def bridges_on_nats(self):
        """{nats host: [bridges connected to it]} from each server's /connz."""
        by_ip = {ADDR[b]: b for b in BRIDGES}
        out = {}
        for h in NATS:
            if not self.nats[h].alive():
                continue
            doc = self.nats_json(h, "/connz") or {}
            out[h] = sorted({by_ip[c["ip"]] for c in doc.get("connections", [])
                             if c.get("ip") in by_ip})
        return out

    # ---- HTTP

    def http(self, host, path, port, grep=None):
        r = self.cagent.call("http", url="http://%s:%d%s" % (ADDR[host], port, path),
                             timeout=5, check=False, http_timeout=1.0, grep=grep)
        return (r["status"], r["body"]) if r.get("ok") else (None, r.get("err"))

    def metrics(self, host, grep):
        port = BRIDGE_HTTP_PORT if host in BRIDGES else NODE_PORT
        st, body = self.http(host, "/metrics", port, grep=grep)
        return body if st == 200 else ""

    def bridge_topics(self):
        return {b: metric(self.metrics(b, "wsrouter_bridge_topics"), "wsrouter_bridge_topics")
                for b in BRIDGES if self.bridges[b].alive()}

    def link_counters(self):
        out = {}
        for n in NODES:
            text = self.metrics(n, "wsrouter_link")
            out[n] = (metric(text, "wsrouter_link_topic_moves_total") or 0,
                      metric(text, "wsrouter_link_stale_deliveries_total") or 0)
        return out

    # ---- users and sessions

    def choose_users(self):
        """3 per node, every (shard, bridge) pair covered, then 'shared' on all nodes."""
        endpoints = [bridge_endpoint(b) for b in BRIDGES]
        v = self.rcmd(self.live_redis()[0], "CLUSTER", "SLOTS")
        ranges = [(x[0], x[1], self.host_of(x[2][0])) for x in v]
        masters = sorted({h for _, _, h in ranges})
        e.expect(len(masters) == 3, "expected 3 masters, CLUSTER SLOTS says %s" % v)
        info = {}

        def place(u):
            slot = key_slot("ws:" + u)
            m = next((h for lo, hi, h in ranges if lo <= slot <= hi), None)
            e.expect(m is not None, "slot %d of ws:%s has no owner: %s" % (slot, u, v))
            info[u] = (slot, m, BRIDGES[rendezvous_owner(endpoints, u)])
            return info[u][1:]

        want = [(m, b) for m in masters for b in BRIDGES]
        chosen = []
        for i in range(5000):
            u = "u%d" % i
            combo = place(u)
            if combo in want:
                want.remove(combo)
                chosen.append(u)
                if not want:
                    break
        e.expect(not want, "no users for (shard, bridge) pairs %s" % want)
        i = 0
        while len(chosen) < len(NODES) * PER_NODE:
            place("x%d" % i)
            chosen.append("x%d" % i)
            i += 1
        place("shared")
        for i, u in enumerate(chosen):
            self.users.append((u, NODES[i % len(NODES)]))
            self.sessions["%s@%s" % (u, NODES[i % len(NODES)])] = (u, NODES[i % len(NODES)])
        for n in NODES:
            self.sessions["shared@%s" % n] = ("shared", n)
        for u in self.all_users():
            self.slots[u], self.shards[u], self.owner[u] = info[u]

    def all_users(self):
        return sorted({u for u, _ in self.sessions.values()})

    def open_sessions(self):
        for cid, (u, n) in sorted(self.sessions.items()):
            token = e.mint(self.secret, u, ttl=3600)
            self.cagent.call("open", cid=cid, timeout=10,
                             url="ws://%s:%d/ws?token=%s" % (ADDR[n], NODE_PORT, token))

    def cids_of(self, user):
        return [cid for cid, (u, _) in self.sessions.items() if u == user]

    # ---- load and what it gave

    def start_load(self):
        self.ragent.call("load", slots=self.slots, interval=LOAD_INTERVAL_S)
        r = self.nagent.call("load", users=self.all_users(), interval=LOAD_INTERVAL_S,
                             subject="world.updates.user.%s")
        return r.get("server")

    def stop_load(self):
        for a in (self.ragent, self.nagent):
            r = a.call("stop", timeout=10, check=False)
            if r.get("errors"):
                self.pub_errors.append("%s: %s" % (a.name, r["errors"]))

    def collect(self):
        for key, agent in (("r", self.ragent), ("n", self.nagent)):
            evs, self._at[key] = agent.events_since(self._at[key])
            for ev in evs:
                if ev.get("ev") == "pub":
                    for u, seq, n in ev["r"]:
                        self.pubs[(ev["via"], u)].append((seq, ev["t"], n))
                elif ev.get("ev") == "loaderr":
                    self.pub_errors.append("%s: %s" % (agent.name, ev["err"]))
        evs, self._at["c"] = self.cagent.events_since(self._at["c"])
        for ev in evs:
            if ev.get("ev") == "closed":
                self.closed.append(ev)
            elif ev.get("ev") == "msg":
                cid = ev["cid"]
                data = unb64(ev["d"])
                m = LOAD_RE.match(data)
                if not m:
                    self.bad.append("%s: unexpected message %r" % (cid, e.short(data)))
                    continue
                via, user, seq = m.group(1).decode(), m.group(2).decode(), int(m.group(3))
                if user != self.sessions[cid][0]:
                    self.bad.append("%s received %s's message %s/%d"
                                    % (cid, user, VIA_NAME[via], seq))
                elif data != load_payload(via, user, seq):
                    self.bad.append("%s: %s/%d not byte for byte: %r"
                                    % (cid, VIA_NAME[via], seq, e.short(data)))
                else:
                    self.recv[(cid, via)].append((seq, ev["t"]))

    def expect_open(self, what):
        self.collect()
        if self.closed:
            raise e.E2EError("%s: client connection(s) closed, all must stay open: %s%s"
                             % (what, "; ".join("%s code %s %r" % (
                                 ev["cid"], ev["code"], ev["reason"]) for ev in self.closed),
                                self.health_note()))

    def link_flaps(self, t0):
        """The nodes' link log lines since t0 saying a bridge went silent or
        came back: ["node-b +1.52 s bridge-2 silent", ...]."""
        out = []
        ep = {bridge_endpoint(b): b for b in BRIDGES}
        for n in NODES:
            with self.nodes[n].lock:
                pairs = list(zip(self.nodes[n].times, self.nodes[n].lines))
            seen = set()
            for t, line in pairs:
                m = re.search(r"link: the bridge at (\S+) (is silent|is back)", line)
                if t >= t0 and m and (m.group(1), m.group(2), round(t, 1)) not in seen:
                    seen.add((m.group(1), m.group(2), round(t, 1)))
                    out.append("%s +%.2f s %s %s" % (n, t - t0, ep.get(m.group(1), m.group(1)),
                                                      m.group(2).split()[1]))
        return out

    def check_sequences(self, what):
        """No message twice, none out of order, nothing foreign: so far."""
        self.collect()
        problems = list(self.bad)
        for (cid, via), got in sorted(self.recv.items()):
            seqs = [s for s, _ in got]
            dups = sorted(s for s, c in collections.Counter(seqs).items() if c > 1)
            if dups:
                problems.append("%s received %s seqs %s more than once"
                                % (cid, VIA_NAME[via], dups[:10]))
            back = [(a, b) for a, b in zip(seqs, seqs[1:]) if b < a]
            if back:
                problems.append("%s: %s out of order: %s" % (
                    cid, VIA_NAME[via], ", ".join("%d after %d" % (b, a) for a, b in back[:5])))
            if dups or back:
                i = max(0, next(i for i in range(1, len(seqs))
                                if seqs[i] <= seqs[i - 1]) - 25)
                problems.append("  %s %s received, from the %dth: %s" % (
                    cid, VIA_NAME[via], i, compress_runs(got[i:i + 150])))
        if problems:
            raise e.E2EError("%s: %d problem(s):\n  %s"
                             % (what, len(problems), "\n  ".join(problems[:20])))

    def wait_all_flowing(self, timeout, what):
        """Until every session has received from both backplanes something
        published after now; returns the seconds it took."""
        t0 = time.monotonic()
        deadline = t0 + timeout
        while True:
            self.collect()
            missing = []
            for cid, (u, _) in sorted(self.sessions.items()):
                for via in VIAS:
                    acc = {s for s, t, n in self.pubs[(via, u)] if t >= t0 and n != -1}
                    if not any(s in acc for s, _ in self.recv[(cid, via)]):
                        missing.append("%s/%s" % (cid, VIA_NAME[via]))
            if not missing:
                return time.monotonic() - t0
            if time.monotonic() > deadline:
                raise e.E2EError("%s: within %.0f s nothing published reached %s%s"
                                 % (what, timeout, ", ".join(missing), self.health_note()))
            time.sleep(0.1)

    def window(self, t_from, t_ref, what):
        """Waits for the window to close, then, per session and backplane:
        loss among publishes accepted in [t_from, t_ref + WINDOW_S] and the
        resume latency after t_ref. A window where some session has not
        resumed is stretched (up to GIVE_UP_S) to tell late from never.
        Returns {(cid, via): figures}."""
        t_until = t_ref + WINDOW_S
        while True:
            wait = t_until + SETTLE_S - time.monotonic()
            if wait > 0:
                time.sleep(wait)
            rows = self._window_rows(t_from, t_ref, t_until, what)
            if all(r["resume"] is not None for r in rows.values()) or \
                    t_until >= t_ref + GIVE_UP_S:
                return rows
            t_until += 1.0

    def _window_rows(self, t_from, t_ref, t_until, what):
        self.collect()
        for via in VIAS:
            last = max((t for s, t, n in self.pubs[(via, self.users[0][0])]), default=0)
            if last < t_until - 0.5:
                raise e.E2EError("%s: the %s backend stopped publishing %.1f s before the "
                                 "end of the window%s" % (what, VIA_NAME[via],
                                                          t_until - last, self.health_note()))
        rows = {}
        for cid, (u, _) in sorted(self.sessions.items()):
            for via in VIAS:
                got = dict((s, t) for s, t in self.recv[(cid, via)])
                acc = [(s, t, n) for s, t, n in self.pubs[(via, u)]
                       if n != -1 and t_from <= t <= t_until]
                refused = sum(1 for s, t, n in self.pubs[(via, u)]
                              if n == -1 and t_from <= t <= t_until)
                lost = [(s, t, n) for s, t, n in acc if s not in got]
                after = [(s, t, n) for s, t, n in acc if t >= t_ref]
                lost_after = [t for s, t, n in after if s not in got]
                t_last_lost = max(lost_after) if lost_after else None
                cand = [got[s] for s, t, n in after if s in got and
                        (t_last_lost is None or t > t_last_lost)]
                rows[(cid, via)] = {
                    "accepted": len(acc), "lost": len(lost), "refused": refused,
                    "zero": sum(1 for s, t, n in lost if n == 0),
                    "resume": (min(cand) - t_ref) if cand else None,
                    "lost_span": (min(t for _, t, _ in lost) - t_ref,
                                  max(t for _, t, _ in lost) - t_ref) if lost else None,
                    "until": t_until - t_ref}
        return rows

    def judge(self, rows, what, limit=RESUME_LIMIT_S):
        """Print the window's loss and resume figures; raise if a resume is
        late or missing. Returns a one-line summary."""
        problems = []
        for (cid, via), r in sorted(rows.items()):
            if r["resume"] is None:
                problems.append("%s/%s: nothing published within %.0f s after t_ref was "
                                "delivered (%d accepted, %d lost)" % (
                                    cid, VIA_NAME[via], r["until"], r["accepted"], r["lost"]))
            elif r["resume"] > limit:
                problems.append("%s/%s: delivery resumed %.2f s after t_ref (limit %.1f s; "
                                "%d lost, published %.2f..%.2f s from t_ref)"
                                % (cid, VIA_NAME[via], r["resume"], limit, r["lost"],
                                   r["lost_span"][0] if r["lost_span"] else 0,
                                   r["lost_span"][1] if r["lost_span"] else 0))
        parts = []
        for via in VIAS:
            vr = {cid: r for (cid, v), r in rows.items() if v == via}
            lost = sum(r["lost"] for r in vr.values())
            acc = sum(r["accepted"] for r in vr.values())
            refused = sum(r["refused"] for r in vr.values())
            res = [r["resume"] for r in vr.values() if r["resume"] is not None]
            hit = sorted("%s %d (%.2f..%.2f s)" % (cid, r["lost"], r["lost_span"][0],
                                                   r["lost_span"][1])
                         for cid, r in vr.items() if r["lost"])
            zero = sum(r["zero"] for r in vr.values())
            parts.append("%s: %d deliveries expected, %d lost%s%s%s; resumed within %.2f s "
                         "(median %.2f s)" % (
                             VIA_NAME[via], acc, lost,
                             " (%d of them: SPUBLISH counted 0 receivers)" % zero
                             if zero else "",
                             " [%s]" % ", ".join(hit) if hit else "",
                             ", %d publishes refused by the server" % refused
                             if refused else "",
                             max(res) if res else float("nan"),
                             statistics.median(res) if res else float("nan")))
        for p in parts:
            note("%s: %s" % (what, p))
        if problems:
            raise e.E2EError("%s: delivery did not resume in time:\n  %s%s"
                             % (what, "\n  ".join(problems), self.health_note()))
        return "; ".join(parts)


def compress_runs(got):
    """[(seq, t)] → "426-447 @12.31, 448-465 @13.02 ..." (runs of consecutive
    seqs, with the time of their first receipt)."""
    out = []
    start = prev = None
    for s, t in got:
        if start is not None and s == prev + 1:
            prev = s
            continue
        if start is not None:
            out.append("%d-%d @%.2f" % (start[0], prev, start[1]) if prev != start[0]
                       else "%d @%.2f" % (start[0], start[1]))
        start, prev = (s, t), s
    if start is not None:
        out.append("%d-%d @%.2f" % (start[0], prev, start[1]) if prev != start[0]
                   else "%d @%.2f" % (start[0], start[1]))
    return ", ".join(out)


# --------------------------------------------------------------------------
#  Faults

def case_redis_master(d):
    what = "redis master killed"
    victim = d.users[0][0]
    master = d.slot_owner(d.slots[victim])
    replica = d.replica_of(master)
    e.expect(replica is not None, "%s: master %s of ws:%s has no replica: %s"
             % (what, master, victim, d.roles()))
    hit_users = sorted(u for u in d.all_users() if d.shards[u] == master)
    rid = d.ragent.send("watch_master", addr=d.redis_addr(replica), timeout=30)
    time.sleep(0.1)
    t_kill = time.monotonic()
    d.redis[master].kill(signal.SIGKILL)
    t_promo = d.ragent.result(rid, 35, "watch_master %s" % replica)
    if not t_promo.get("ok"):
        raise e.E2EError("%s: replica %s of %s not promoted: %s" % (
            what, replica, master, t_promo.get("err")))
    t_promo = t_promo["t"]
    note("%s: %s (ws:%s slot %d; users %s) SIGKILLed; replica %s role master %.2f s later"
         % (what, master, victim, d.slots[victim], ",".join(hit_users), replica,
            t_promo - t_kill))
    rows = d.window(t_kill - 0.2, t_promo, what)
    flaps = d.link_flaps(t_kill)
    if flaps:
        note("%s: the nodes saw bridges go silent / come back: %s" % (what, "; ".join(flaps)))
    d.expect_open(what)
    d.check_sequences(what)
    summary = d.judge(rows, what)
    #  The lost ones are the killed shard's, through Redis only
    stray = sorted("%s/%s %d" % (cid, VIA_NAME[via], r["lost"]) for (cid, via), r in rows.items()
                   if r["lost"] and (via == "n" or d.sessions[cid][0] not in hit_users))
    if stray:
        note("%s: loss outside the killed shard (a busy machine?): %s" % (what, stray))
    d.wait_cluster_ok(15.0, "after the failover")
    counts = {u: d.shardnumsub(u) for u in hit_users}
    e.expect(all(sum(c.values()) == 1 and c.get(replica) == 1 for c in counts.values()),
             "%s: the killed shard's channels are not SSUBSCRIBEd exactly once, at %s: %s"
             % (what, replica, counts))
    return ("promotion %.2f s after the kill; from the promotion: %s; SHARDNUMSUB 1 at %s"
            % (t_promo - t_kill, summary, replica))


def case_bridge_kill(d):
    what = "bridge-1 killed"
    dead, alive = BRIDGES
    moved = sorted(u for u in d.all_users() if d.owner[u] == dead)
    before = d.link_counters()
    t_kill = time.monotonic()
    d.bridges[dead].kill(signal.SIGKILL)
    note("%s: SIGKILL; its share: %s" % (what, ",".join(moved)))
    rows = d.window(t_kill - 0.2, t_kill, what)
    d.expect_open(what)
    d.check_sequences(what)
    summary = d.judge(rows, what)
    takeover = max(r["resume"] for (cid, via), r in rows.items()
                   if d.sessions[cid][0] in moved)
    silent = {}
    for n in NODES:
        t = d.nodes[n].first_line_after(t_kill, r"link: the bridge at %s is silent"
                                        % re.escape(bridge_endpoint(dead)))
        silent[n] = "%.2f s" % (t - t_kill) if t else "not logged"
    note("%s: the dead bridge's %d users resumed on %s within %.2f s of the kill; the "
         "nodes' links found it silent after %s" % (what, len(moved), alive, takeover, silent))
    topics = d.bridge_topics()
    after = d.link_counters()
    moves = {n: after[n][0] - before[n][0] for n in NODES}
    e.expect(all(moves[n] > 0 for n in NODES), "%s: topic moves per node %s: every node "
             "has sessions of %s, expected moves on each" % (what, moves, ",".join(moved)))
    note("%s: topic moves per node %s; %s topics now %s" % (what, moves, alive, topics))
    return "takeover by %s within %.2f s of the kill; %s" % (alive, takeover, summary)


def case_bridge_restart(d):
    what = "bridge-1 restarted"
    b = BRIDGES[0]
    before = d.link_counters()
    t_start = time.monotonic()
    d.start_bridge(b)
    t_ready = d.bridges[b].wait_ready(READY_TIMEOUT_S)
    note("%s: ready line %.2f s after the start" % (what, t_ready - t_start))
    rows = d.window(t_start, t_ready, what)
    d.expect_open(what)
    d.check_sequences(what)
    summary = d.judge(rows, what)
    #  Its share is back, each channel subscribed once in the cluster
    share = {x: sum(1 for u in d.all_users() if d.owner[u] == x) for x in BRIDGES}
    deadline = time.monotonic() + 5
    while True:
        topics = d.bridge_topics()
        if topics == share or time.monotonic() > deadline:
            break
        time.sleep(0.3)
    e.expect(topics == share, "%s: bridge topic gauges %s, rendezvous shares %s"
             % (what, topics, share))
    counts = {u: d.shardnumsub(u) for u in d.all_users()}
    e.expect(all(sum(c.values()) == 1 for c in counts.values()),
             "%s: channels not SSUBSCRIBEd exactly once: %s" % (what, {
                 u: c for u, c in counts.items() if sum(c.values()) != 1}))
    after = d.link_counters()
    back = {}
    for n in NODES:
        t = d.nodes[n].first_line_after(t_start, r"link: the bridge at %s is back"
                                        % re.escape(bridge_endpoint(b)))
        back[n] = "%.2f s" % (t - t_ready) if t else "not logged"
    note("%s: nodes saw it back (first link log line) after the ready line: %s; topic moves "
         "per node %s, stale deliveries dropped %s" % (
             what, back, {n: after[n][0] - before[n][0] for n in NODES},
             {n: after[n][1] for n in NODES}))
    return "from the ready line: %s; nodes took it back after %s; topics back to %s, " \
        "SHARDNUMSUB 1 for all" % (summary, back, topics)


def case_nats_kill(d):
    what = "nats server killed"
    on = d.bridges_on_nats()
    cands = [h for h in BRIDGE_NATS if on.get(h)]
    e.expect(cands, "%s: no bridge connected to %s (connz: %s)" % (what, BRIDGE_NATS, on))
    if JETSTREAM:
        note("%s: stream %s before: %s" % (what, STREAM, d.stream_info()))
    leader = (d.stream_info() or {}).get("leader") if JETSTREAM else None
    #  The worst case: the stream's leader (JetStream), then the most bridges
    victim = max(cands, key=lambda h: (h == leader, len(on[h]), -BRIDGE_NATS.index(h)))
    t_kill = time.monotonic()
    d.nats[victim].kill(signal.SIGKILL)
    note("%s: %s SIGKILLed (bridges on it: %s)" % (what, victim, ",".join(on[victim])))
    rows = d.window(t_kill - 0.2, t_kill, what)
    flaps = d.link_flaps(t_kill)
    if flaps:
        note("%s: the nodes saw bridges go silent / come back: %s" % (what, "; ".join(flaps)))
    d.expect_open(what)
    d.check_sequences(what)
    summary = d.judge(rows, what)
    now_on = d.bridges_on_nats()
    e.expect(sorted(sum(now_on.values(), [])) == sorted(BRIDGES),
             "%s: each bridge should be on exactly one live server: %s" % (what, now_on))
    return "%s had %s; from the kill: %s; now %s" % (victim, ",".join(on[victim]), summary,
                                                    now_on)


def case_whole_run(d):
    d.stop_load()
    time.sleep(SETTLE_S)
    d.expect_open("whole run")
    d.check_sequences("whole run")
    total = sum(len(v) for v in d.recv.values())
    expected = sum(1 for cid, (u, _) in d.sessions.items() for via in VIAS
                   for s, t, n in d.pubs[(via, u)] if n != -1)
    e.expect(total > 1000, "only %d messages received over the run" % total)
    if d.pub_errors:
        note("backends' failed publishes: %s" % "; ".join(d.pub_errors))
    return ("%d sessions on %d nodes received %d of %d messages published to them "
            "(%d lost over four faults), none twice, none out of order, all still open"
            % (len(d.sessions), len(NODES), total, expected, expected - total))


# --------------------------------------------------------------------------

def deploy(d):
    t0 = time.monotonic()
    for h in REDIS:
        d.start_redis(h)
    for h in NATS:
        d.start_nats(h)
    d.start_agents()
    d.create_cluster()
    for h in NATS:
        d.nats[h].wait_ready()
    routes = d.wait_nats_routes()
    t_back = time.monotonic() - t0
    d.choose_users()
    for b in BRIDGES:
        d.start_bridge(b)
    for n in NODES:
        d.start_node(n)
    for p in list(d.bridges.values()) + list(d.nodes.values()):
        p.wait_ready()
    d.open_sessions()
    server = d.start_load()
    took = d.wait_all_flowing(WARMUP_S, "warm-up")
    print("setup: Redis Cluster (3 masters, 3 replicas) and NATS (routes %s%s) up in %.1f s; "
          "2 bridges, 3 nodes, %d sessions of %d users; load every %d ms per user and "
          "backplane (NATS backend on %s); all flowing after %.1f s"
          % (routes, "; JetStream, bridges with the R3 stream %s" % STREAM if JETSTREAM
             else "", t_back, len(d.sessions), len(d.all_users()), LOAD_INTERVAL_S * 1000,
             server, took), flush=True)
    for u in d.all_users():
        print("  user %-7s shard %s, bridge %s, sessions %s" % (
            u, d.shards[u], d.owner[u], ",".join(d.cids_of(u))), flush=True)
    #  Steady state: nothing lost before the first fault
    t = time.monotonic()
    rows = d.window(t, t, "steady state")
    lost = {k: r["lost"] for k, r in rows.items() if r["lost"]}
    if lost:
        raise SetupError("steady state, no fault yet: messages lost %s" % lost)
    print("setup: steady state for %.0f s, nothing lost; bridge topic gauges %s"
          % (WINDOW_S, d.bridge_topics()), flush=True)
    if JETSTREAM:
        print("setup: stream %s: %s" % (STREAM, d.stream_info()), flush=True)


def main():
    setup_only = "--setup-only" in sys.argv[1:]
    refused = netns_refused()
    if refused:
        print("SKIP: %s" % refused, flush=True)
        return e.SKIP
    missing = [p for p in ("ip",) + (() if setup_only else ("redis-server", "redis-cli"))
               if not shutil.which(p)]
    if not setup_only and not os.access(nats_server_path(), os.X_OK):
        missing.append("nats-server")
    if missing:
        print("SKIP: %s not installed (scripts/deps test installs them)" % ", ".join(missing),
              flush=True)
        return e.SKIP
    arm(TEST_LIMIT_S)
    t_start = time.monotonic()
    suite = e.Suite("e2e_scale_netns" + (" --jetstream" if JETSTREAM else ""))
    topo = Topology("wsrscale", HOSTS, ADDR)
    tmpdir = tempfile.mkdtemp(prefix="wsr-e2e-scale-netns-")
    d = None
    try:
        try:
            wsrouter = None
            if not setup_only:
                wsrouter = e.binary()
                ok, why = bridge_supported(wsrouter)
                if not ok:
                    raise SetupError("%s has no working 'bridge' subcommand (%s)"
                                     % (wsrouter, why))
            stale = topo.sweep_stale()
            if stale:
                print("setup: removed %d namespace(s) left by killed runs: %s"
                      % (len(stale), ", ".join(stale)), flush=True)
            topo.build()
            topo.host_isolated()
            pings = topo.ping_matrix()
            if setup_only:
                suite.ok("setup-only topology", "%d namespaces, %s"
                         % (len(topo.created), pings))
            else:
                print("setup: %d namespaces, %s" % (len(topo.created), pings), flush=True)
                d = Scale(topo, tmpdir, wsrouter)
                deploy(d)
        except e.E2EError as ex:
            suite.fail("setup", str(ex))
        else:
            if not setup_only:
                run_case(suite, "1 redis: master of an active user's slot killed under load",
                         case_redis_master, d)
                run_case(suite, "2 bridge-1 SIGKILLed: bridge-2 takes its topics over",
                         case_bridge_kill, d)
                run_case(suite, "2b bridge-1 started again: its share moves back",
                         case_bridge_restart, d)
                run_case(suite, "3 nats: the bridges' server killed under load",
                         case_nats_kill, d)
                run_case(suite, "4 whole run: every session open, nothing twice or "
                         "out of order", case_whole_run, d)
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
            for p in d.crashed():
                problems.append("%s exited unexpectedly: %s" % (p.name, p.describe()))
            problems += d.kill_all()
        problems += topo.teardown()
        shutil.rmtree(tmpdir, ignore_errors=True)
        if problems:
            suite.fail("teardown", "\n  ".join(problems))
        elif setup_only and n_ns:
            suite.ok("teardown", "%d namespaces deleted, none left" % n_ns)
        print("e2e_scale_netns: %.1f s" % (time.monotonic() - t_start), flush=True)
    return suite.finish()


if __name__ == "__main__":
    sys.exit(main())
