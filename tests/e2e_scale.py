#!/usr/bin/python3
"""e2e_scale — scaling out: Redis Cluster with sharded Pub/Sub, end to end.

A real Redis Cluster (tests/redis_cluster.py: 3 masters, 3 replicas,
cluster-node-timeout 1 s) on free loopback ports, and a node whose bridge
uses WEBSOCKET_REDIS_URL=redis+cluster://SEEDS. Everything is started here
and stopped by PID.

Cases:
  1  cluster: users on different shards each get what is SPUBLISHed on
     ws:USER at the owning master (and only there: PUBSUB SHARDNUMSUB is 1
     on the owner, 0 elsewhere); API publishes go out as SPUBLISH through the
     history script, whose keys {ws:USER}:s / :m sit on the channel's slot.
  2  failover: with load running, the master owning an active user's slot is
     SIGKILLed; once its replica is promoted, delivery to that user resumes
     within 2 s, the other shards never stop, no client is disconnected, and
     what was lost during the gap is counted (printed), none duplicated.
  3  NATS cluster: 3 nats-server with routes and JetStream (cluster name);
     two nodes' bridges are given only the first server's URL and follow the
     ones the cluster announces; one bridge has the history stream, made with
     NATS_HISTORY_REPLICAS=3 (checked with $JS.API.STREAM.INFO). That server
     is SIGKILLed under load: plain NATS delivery resumes within 2 s; live
     delivery through the stream's ordered consumers resumes within 25 s
     (measured 6-10 s: the bridge makes them again after the reconnect,
     once JetStream has elected a new stream leader); no client
     disconnected, loss printed, none duplicated.
  4  two bridges: two `wsrouter bridge` processes (127.0.0.2, 127.0.0.3) on
     one Redis, two nodes with WEBSOCKET_BRIDGE listing both, 24 users. Each
     topic is subscribed on exactly one bridge (PUBSUB NUMSUB 1), both have a
     share. Under load, bridge 1 is SIGKILLed: its topics move to bridge 2
     and delivery to every user resumes within 2 s of the kill, no client
     disconnected, none duplicated; bridge 1 restarted takes its share back
     (NUMSUB still 1 for every topic) with no duplicates; loss printed.
  5  two bridges with CURVE: each bridge its own certificate, the node
     --bridge-key b1,b2 (one per endpoint): both admit the node (each gets a
     share of the topics) and every user receives what Redis publishes.
"""

import os
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import asyncio  # noqa: E402
import collections  # noqa: E402
import time  # noqa: E402

import wsr_e2e as e  # noqa: E402
import redis_cluster  # noqa: E402
from redis_cluster import RedisCluster, key_slot  # noqa: E402
import json  # noqa: E402
import shutil  # noqa: E402
import signal  # noqa: E402
import subprocess  # noqa: E402
import tempfile  # noqa: E402
from wsr_procs import (start_node, stop_everything, nats_ping, NATS_SERVER,  # noqa: E402
                       RedisProc, BridgeProc)
from e2e_bridge import Nats as _Nats  # noqa: E402


class Nats(_Nats):
    async def publish_reply(self, subject, reply, data):
        self.writer.write(b"PUB %s %s %d\r\n%s\r\n" % (subject.encode(), reply.encode(),
                                                         len(data), data))
        await self.flush()

RESUME_LIMIT_S = 2.0            # delivery after a promotion
VERBOSE = bool(os.environ.get("E2E_VERBOSE"))


def note(text):
    print("  # " + text, flush=True)


class Client:
    """A WebSocket session whose messages are collected by a reader task."""

    def __init__(self, name, ws):
        self.name = name
        self.ws = ws
        self.msgs = []              # (monotonic time, message)
        self.closed = None
        self.task = asyncio.ensure_future(self._run())

    @classmethod
    async def connect(cls, srv, user):
        ws = await e.connect(srv.ws_url(srv.mint(user)))
        return cls(user, ws)

    async def _run(self):
        try:
            async for m in self.ws:
                self.msgs.append((time.monotonic(), m))
            self.closed = "closed: code %s" % self.ws.close_code
        except e.ConnectionClosed as ex:
            self.closed = "closed: code %s" % e.close_code(ex)
        except Exception as ex:
            self.closed = "reader failed: %r" % ex

    def with_prefix(self, prefix):
        return [(t, m) for t, m in self.msgs if isinstance(m, str) and m.startswith(prefix)]

    async def wait_for(self, text, timeout):
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            for t, m in self.msgs:
                if m == text:
                    return t
            if self.closed:
                break
            await asyncio.sleep(0.01)
        raise e.E2EError("%s: %r not received within %.1f s (%s)"
                         % (self.name, text, timeout, self.closed or "open"))

    async def received(self, text, timeout):
        try:
            await self.wait_for(text, timeout)
            return True
        except e.E2EError:
            return False

    def expect_open(self, what):
        e.expect(self.closed is None, "%s: %s expected connected, %s"
                 % (what, self.name, self.closed))

    async def close(self):
        await e.close_all(self.ws)
        try:
            await asyncio.wait_for(self.task, 3)
        except Exception:
            self.task.cancel()


def users_on_distinct_shards(rc, count):
    """count user ids whose ws:USER channels are owned by different masters."""
    found, owners = [], set()
    for i in range(1000):
        user = "u%d" % i
        owner = rc.owner(key_slot("ws:" + user))
        if owner not in owners:
            owners.add(owner)
            found.append(user)
            if len(found) == count:
                return found
    raise e.E2EError("no %d users on distinct shards" % count)


async def wait_subscribed(rc, channels, timeout=8.0):
    deadline = time.monotonic() + timeout
    while True:
        counts = {c: rc.shardnumsub(c) for c in channels}
        if all(sum(v.values()) == 1 and v.get(rc.owner(key_slot(c))) == 1
               for c, v in counts.items()):
            return counts
        if time.monotonic() > deadline:
            raise e.E2EError("sharded subscriptions not in place within %.0f s: %s"
                             % (timeout, counts))
        await asyncio.sleep(0.05)


# --------------------------------------------------------------------------
#  Case 1: sharded delivery, API publish through the history script

async def case_cluster(rc, srv, users):
    clients = [await Client.connect(srv, u) for u in users]
    try:
        counts = await wait_subscribed(rc, ["ws:" + u for u in users])
        note("SHARDNUMSUB: %s" % counts)
        for u, c in zip(users, clients):
            #  Again until received: on a loaded machine a 1 s node timeout can
            #  make the cluster fail over by itself (then a publish is lost)
            for attempt in range(20):
                rc.publish("ws:" + u, "direct-" + u)
                if await c.received("direct-" + u, 0.4):
                    break
            await c.wait_for("direct-" + u, 0.1)
            for attempt in range(20):
                r = srv.publish(user=u, data="api-" + u)
                e.expect(r.status == 202, "API publish for %s: %s" % (u, r))
                if await c.received("api-" + u, 0.4):
                    break
            await c.wait_for("api-" + u, 0.1)
            owner = rc.owner(key_slot("ws:" + u))
            keys = sorted(k.decode() for k in rc.command(owner, "KEYS", "{ws:%s}:*" % u))
            e.expect_eq(keys, ["{ws:%s}:m" % u, "{ws:%s}:s" % u],
                        "history keys of ws:%s on its owner" % u)
        for c in clients:
            e.expect(not any(m.startswith(("direct-", "api-")) and not m.endswith(c.name)
                             for _, m in c.msgs if isinstance(m, str)),
                     "%s received another user's messages: %s" % (c.name, c.msgs))
    finally:
        for c in clients:
            await c.close()


# --------------------------------------------------------------------------
#  Case 2: a master dies under load

async def case_failover(rc, srv, users):
    clients = [await Client.connect(srv, u) for u in users]
    try:
        await wait_subscribed(rc, ["ws:" + u for u in users])
        lost_before = srv.metrics().get("wsrouter_bridge_publish_lost_total", 0)
        victim = users[0]
        accepted = collections.defaultdict(list)        # user → [(seq, time)]
        stop = asyncio.Event()
        pub = e.Publisher(srv.port, srv.api_key)

        async def publisher():
            seq = 0
            while not stop.is_set():
                for u in users:
                    try:
                        r = pub.post({"user": u, "data": "L%s:%d" % (u, seq)})
                        if r.status == 202:
                            accepted[u].append((seq, time.monotonic()))
                    except Exception:
                        pub.close()             # reconnects on the next post
                seq += 1
                await asyncio.sleep(0.02)

        task = asyncio.ensure_future(publisher())
        await asyncio.sleep(1.0)
        loop = asyncio.get_running_loop()
        killed, replica = await loop.run_in_executor(
            None, lambda: rc.kill_master(slot=key_slot("ws:" + victim)))
        t_kill = time.monotonic()
        e.expect(replica is not None, "the victim's master has no replica")
        t_promo = await loop.run_in_executor(None, lambda: rc.wait_promoted(replica, 15.0))
        note("master %d killed, replica %d promoted %.2f s later"
             % (killed, replica, t_promo - t_kill))
        #  Delivery for the victim: the first message published after the promotion
        deadline = t_promo + RESUME_LIMIT_S + 3.0
        first = None
        while time.monotonic() < deadline and first is None:
            after = [s for s, t in accepted[victim] if t >= t_promo]
            got = {m for _, m in clients[0].with_prefix("L%s:" % victim)}
            for s in after:
                if "L%s:%d" % (victim, s) in got:
                    first = [t for t, m in clients[0].msgs if m == "L%s:%d" % (victim, s)][0]
                    break
            await asyncio.sleep(0.02)
        await asyncio.sleep(1.0)
        stop.set()
        await task
        await asyncio.sleep(0.5)
        e.expect(first is not None, "nothing published after the promotion reached %s"
                 % victim)
        resumed = first - t_promo
        note("delivery to %s resumed %.2f s after the promotion" % (victim, resumed))
        for u, c in zip(users, clients):
            c.expect_open("failover")
            got = [m for _, m in c.with_prefix("L%s:" % u)]
            seqs = [int(m.split(":")[1]) for m in got]
            dups = [s for s, n in collections.Counter(seqs).items() if n > 1]
            e.expect(not dups, "%s received %s twice" % (u, dups))
            e.expect(seqs == sorted(seqs), "%s received out of order" % u)
            lost = len(accepted[u]) - len(set(seqs))
            missing = sorted({s for s, _ in accepted[u]} - set(seqs))
            note("%s: %d accepted, %d delivered, %d lost%s"
                 % (u, len(accepted[u]), len(set(seqs)), lost,
                    (" (%d..%d; promotion at %.2f s of the run)"
                     % (missing[0], missing[-1], t_promo - accepted[u][0][1]))
                    if missing else ""))
            if u != victim:
                e.expect(lost <= 0, "%s (another shard) lost %d messages" % (u, lost))
        lost_counted = srv.metrics().get("wsrouter_bridge_publish_lost_total", 0) - lost_before
        note("bridge counted %d publishes lost" % lost_counted)
        e.expect(lost_counted > 0, "publishes lost during the failover were not counted")
        e.expect(resumed <= RESUME_LIMIT_S, "delivery resumed %.2f s after the promotion, "
                 "limit %.1f s" % (resumed, RESUME_LIMIT_S))
    finally:
        for c in clients:
            await c.close()


# --------------------------------------------------------------------------
#  Case 3: a NATS cluster

class NatsCluster:
    """count nats-server processes with routes to each other and JetStream."""

    def __init__(self, count=3):
        self.ports = [e.free_port() for _ in range(count)]
        self.cluster_ports = [e.free_port() for _ in range(count)]
        self.dir = tempfile.mkdtemp(prefix="wsr-nats-cluster-")
        self.procs = {}

    def start(self):
        routes = ",".join("nats-route://127.0.0.1:%d" % c for c in self.cluster_ports)
        for i, (p, c) in enumerate(zip(self.ports, self.cluster_ports)):
            d = os.path.join(self.dir, "n%d" % i)
            os.mkdir(d)
            args = [NATS_SERVER, "-a", "127.0.0.1", "-p", str(p), "-n", "n%d" % i,
                    "--cluster_name", "wsr", "-cluster", "nats://127.0.0.1:%d" % c,
                    "-routes", routes, "-js", "-sd", d]
            self.procs[p] = subprocess.Popen(args, stdin=subprocess.DEVNULL,
                                             stdout=open(os.path.join(d, "log"), "wb"),
                                             stderr=subprocess.STDOUT)
        deadline = time.monotonic() + 10
        for p in self.ports:
            while not nats_ping(p):
                if time.monotonic() > deadline or self.procs[p].poll() is not None:
                    raise e.E2EError("nats-server %d did not start: %s" % (p, self.log(p)))
                time.sleep(0.05)
        return self

    def log(self, port):
        i = self.ports.index(port)
        try:
            with open(os.path.join(self.dir, "n%d" % i, "log"), "rb") as f:
                return f.read()[-800:].decode(errors="replace")
        except OSError:
            return ""

    def kill(self, port):
        self.procs[port].send_signal(signal.SIGKILL)
        self.procs[port].wait()

    def stop(self):
        for p in self.procs.values():
            if p.poll() is None:
                p.send_signal(signal.SIGTERM)
                try:
                    p.wait(5)
                except subprocess.TimeoutExpired:
                    p.kill()
                    p.wait()
        shutil.rmtree(self.dir, ignore_errors=True)


_js_sid = 0


async def js_request(nc, subject, body=b"", timeout=5.0):
    """A request over the raw NATS client; returns the decoded JSON reply."""
    global _js_sid
    _js_sid += 1                # a sid once: NATS keeps the first SUB of a sid
    inbox = "_INBOX.e2e%d" % time.monotonic_ns()
    await nc.subscribe(inbox, 1000 + _js_sid)
    await nc.publish_reply(subject, inbox, body)
    deadline = time.monotonic() + timeout
    while True:
        subj, data = await nc.message(max(0.1, deadline - time.monotonic()), "JS API reply")
        if subj == inbox:
            return json.loads(data)


JS_RESUME_LIMIT_S = RESUME_LIMIT_S  # with a history stream too (core copies while it is down)


async def js_stream_ready(nc, name, create=None, budget=30.0):
    """The stream's info once it has a leader (made first if create is given:
    a STREAM.CREATE body). JetStream answers late or not at all while its
    meta leader or the stream's leader is being elected: ask again."""
    info = {}
    deadline = time.monotonic() + budget
    while "config" not in info or not info.get("cluster", {}).get("leader"):
        try:
            if create is not None and "config" not in info:
                info = await js_request(nc, "$JS.API.STREAM.CREATE." + name,
                                        json.dumps(create).encode(), timeout=2.0)
                if info.get("error", {}).get("err_code") == 10058:     # exists already
                    info = {}
                    create = None
            else:
                info = await js_request(nc, "$JS.API.STREAM.INFO." + name, timeout=2.0)
        except e.E2EError:
            info = {}
        if time.monotonic() > deadline:
            raise e.E2EError("stream %s not made or leaderless: %s" % (name, info))
        if "config" not in info or not info.get("cluster", {}).get("leader"):
            await asyncio.sleep(0.2)
    return info


async def case_nats_cluster(ncl):
    """Two nodes: "p" plain core NATS, "j" with the R3 history stream (live
    delivery then comes from JetStream ordered consumers, with the core
    copies for when the stream stops). The worst case: the server both
    bridges were given is the stream's leader, and it is killed, so the
    bridges reconnect, nothing is stored until the two others elect a new
    leader (seconds), and the live consumers must be made again."""
    nc = await Nats.open(ncl.ports[0])
    info = await js_stream_ready(nc, "WSR_SCALE", create={
        "name": "WSR_SCALE", "subjects": ["world.updates.user.*", "world.updates.channel.*"],
        "num_replicas": 3, "max_msgs_per_subject": 100, "max_age": 3600 * 10**9,
        "storage": "file", "retention": "limits", "allow_direct": True, "discard": "old"})
    nc.close()
    e.expect_eq(info["config"].get("num_replicas"), 3, "WSR_SCALE replicas")
    cluster = info["cluster"]
    leader = int(cluster["leader"][1:])         # servers are named n0, n1, n2
    killed = ncl.ports[leader]
    note("stream WSR_SCALE: leader %s, replicas %s: both bridges on it, it is killed" % (
        cluster["leader"], [r.get("name") for r in cluster.get("replicas", [])]))
    url = "nats://127.0.0.1:%d" % killed
    srv_p = start_node(workers=2, extra_args=["--nats-url", url])
    srv_j = start_node(workers=2, extra_args=["--nats-url", url],
                       env={"NATS_HISTORY_STREAM": "WSR_SCALE", "NATS_HISTORY_REPLICAS": "3"})
    users = ["p1", "j1"]
    limits = {"p1": RESUME_LIMIT_S, "j1": JS_RESUME_LIMIT_S}
    clients = [await Client.connect(srv_p, "p1"), await Client.connect(srv_j, "j1")]
    other = next(p for p in ncl.ports if p != killed)
    nc = await Nats.open(other)
    try:
        #  Routes in place and both bridges subscribed: a probe from another server arrives
        deadline = time.monotonic() + 10
        n = 0
        while not all(c.with_prefix("probe") for c in clients):
            for u in users:
                await nc.publish("world.updates.user." + u, "probe%d" % n)
            n += 1
            if time.monotonic() > deadline:
                raise e.E2EError("no probe published on another server reached the clients")
            await asyncio.sleep(0.1)
        #  Load, then kill the server both bridges were given
        sent = collections.defaultdict(list)
        stop = asyncio.Event()

        async def publisher():
            seq = 0
            while not stop.is_set():
                for u in users:
                    await nc.publish("world.updates.user." + u, "N%s:%d" % (u, seq))
                    sent[u].append((seq, time.monotonic()))
                seq += 1
                await asyncio.sleep(0.02)

        task = asyncio.ensure_future(publisher())
        await asyncio.sleep(1.0)
        ncl.kill(killed)
        t_kill = time.monotonic()
        #  Until both resumed (or the JetStream limit): poll, do not sleep it out
        deadline = t_kill + JS_RESUME_LIMIT_S + 0.5
        while time.monotonic() < deadline:
            await asyncio.sleep(0.25)
            resumed = 0
            for u, c in zip(users, clients):
                after = {s for s, t in sent[u] if t > t_kill + 0.05}
                resumed += any(int(m.split(":")[1]) in after for _, m in c.with_prefix("N%s:" % u))
            if resumed == len(users):
                await asyncio.sleep(1.0)
                break
        stop.set()
        await task
        await asyncio.sleep(0.5)
        for u, c in zip(users, clients):
            c.expect_open("NATS server killed")
            got = c.with_prefix("N%s:" % u)
            seqs = [int(m.split(":")[1]) for _, m in got]
            e.expect(len(seqs) == len(set(seqs)), "%s: duplicates" % u)
            e.expect(seqs == sorted(seqs), "%s: out of order" % u)
            #  Resumed: the first message published over 50 ms after the kill that arrived
            sent_after = {s for s, t in sent[u] if t > t_kill + 0.05}
            first = next((t for t, m in got if int(m.split(":")[1]) in sent_after), None)
            e.expect(first is not None, "%s: nothing published after the kill arrived" % u)
            lost = len(sent[u]) - len(set(seqs))
            note("%s: %d sent, %d delivered, %d lost; resumed %.2f s after the kill"
                 % (u, len(sent[u]), len(set(seqs)), lost, first - t_kill))
            e.expect(first - t_kill <= limits[u], "%s: delivery resumed %.2f s after the "
                     "kill, limit %.1f s" % (u, first - t_kill, limits[u]))
        #  "j": the core copies carried delivery while the stream was down;
        #  once it has a leader again the stream delivers again (with
        #  offsets), its copies of what went from core are dropped
        m = srv_j.metrics()
        core = m.get("wsrouter_bridge_jetstream_core_total", 0)
        e.expect(core > 0, "j: no message delivered from core NATS while the stream was down")
        info = await js_stream_ready(nc, "WSR_SCALE")
        after = []
        deadline = time.monotonic() + 15
        while True:
            tag = "after%d" % len(after)
            after.append(tag)
            await nc.publish("world.updates.user.j1", tag)
            await clients[1].wait_for(tag, 5.0)
            m = srv_j.metrics()
            if m.get("wsrouter_bridge_jetstream_core_total", 0) == core:
                break                   # came from the stream
            core = m.get("wsrouter_bridge_jetstream_core_total", 0)
            e.expect(time.monotonic() < deadline, "j: the stream (leader %s) does not deliver "
                     "again after the failover" % info["cluster"]["leader"])
            await asyncio.sleep(0.5)
        note("j: %d delivered from core while the stream was down, %d second copies dropped; "
             "the stream delivers again (leader %s)" % (
                 core, m.get("wsrouter_bridge_jetstream_duplicates_total", 0),
                 info["cluster"]["leader"]))
    except BaseException:
        if VERBOSE:
            for srv in (srv_p, srv_j):
                print("\n".join(line for line in (srv.stdout_text() + srv.stderr_text())
                                .splitlines() if "nats" in line or "jetstream" in line)[-3000:])
        raise
    finally:
        nc.close()
        for c in clients:
            await c.close()
        srv_p.stop()
        srv_j.stop()


# --------------------------------------------------------------------------
#  Case 4: two bridges

BRIDGE_USERS = 24


def numsub(redis_port, channels):
    c = redis_cluster.Conn(redis_port)
    try:
        r = c.call("PUBSUB", "NUMSUB", *channels)
        return {r[i].decode(): r[i + 1] for i in range(0, len(r), 2)}
    finally:
        c.close()


async def wait_numsub_one(redis_port, channels, timeout, what):
    deadline = time.monotonic() + timeout
    while True:
        counts = numsub(redis_port, channels)
        if all(v == 1 for v in counts.values()):
            return counts
        if time.monotonic() > deadline:
            bad = {k: v for k, v in counts.items() if v != 1}
            raise e.E2EError("%s: channels not subscribed exactly once within %.0f s: %s"
                             % (what, timeout, bad))
        await asyncio.sleep(0.05)


async def case_two_bridges():
    redis = RedisProc().start()
    b1 = BridgeProc(e.free_port(), redis_url=redis.url, bind="127.0.0.2").start()
    b2 = BridgeProc(e.free_port(), redis_url=redis.url, bind="127.0.0.3").start()
    endpoints = "%s,%s" % (b1.endpoint, b2.endpoint)
    nodes = [start_node(workers=2, extra_args=["--bridge", endpoints]) for _ in range(2)]
    users = ["m%d" % i for i in range(BRIDGE_USERS)]
    channels = ["ws:" + u for u in users]
    clients = [await Client.connect(nodes[i % 2], u) for i, u in enumerate(users)]
    pub = redis_cluster.Conn(redis.port)
    try:
        await wait_numsub_one(redis.port, channels, 8.0, "two bridges")
        deadline = time.monotonic() + 5.0               # gauges refresh every 500 ms
        while True:
            t1 = b1.metrics().get("wsrouter_bridge_topics", 0)
            t2 = b2.metrics().get("wsrouter_bridge_topics", 0)
            if t1 + t2 == BRIDGE_USERS or time.monotonic() > deadline:
                break
            await asyncio.sleep(0.2)
        note("topics: bridge 1 %d, bridge 2 %d" % (t1, t2))
        share1 = t1
        e.expect(t1 > 0 and t2 > 0 and t1 + t2 == BRIDGE_USERS,
                 "topics not shared out: bridge 1 %d, bridge 2 %d of %d" % (t1, t2,
                                                                          BRIDGE_USERS))
        sent = collections.defaultdict(list)
        stop = asyncio.Event()

        async def publisher():
            seq = 0
            while not stop.is_set():
                for u in users:
                    pub.send("PUBLISH", "ws:" + u, "B%s:%d" % (u, seq))
                t = time.monotonic()
                for u in users:
                    pub.read()
                    sent[u].append((seq, t))
                seq += 1
                await asyncio.sleep(0.05)

        def check_resumed(t0, limit, what):
            worst = 0.0
            for u, c in zip(users, clients):
                c.expect_open(what)
                after = {s for s, t in sent[u] if t > t0 + 0.05}
                first = next((t for t, m in c.with_prefix("B%s:" % u)
                              if int(m.split(":")[1]) in after), None)
                e.expect(first is not None, "%s: nothing published after it reached %s"
                         % (what, u))
                worst = max(worst, first - t0)
            note("%s: delivery to all %d users resumed within %.2f s" % (what, len(users),
                                                                         worst))
            e.expect(worst <= limit, "%s: delivery resumed %.2f s after, limit %.1f s"
                     % (what, worst, limit))

        task = asyncio.ensure_future(publisher())
        await asyncio.sleep(1.0)
        b1.kill()
        t_kill = time.monotonic()
        await asyncio.sleep(3.0)
        check_resumed(t_kill, RESUME_LIMIT_S, "bridge 1 killed")
        counts = numsub(redis.port, channels)
        e.expect(all(v == 1 for v in counts.values()),
                 "after the kill, channels not subscribed once: %s" % counts)
        b1.start()
        t_back = time.monotonic()
        await asyncio.sleep(3.0)
        check_resumed(t_back, RESUME_LIMIT_S, "bridge 1 restarted")
        await wait_numsub_one(redis.port, channels, 3.0, "bridge 1 back")
        await asyncio.sleep(1.0)
        t1 = b1.metrics().get("wsrouter_bridge_topics", 0)
        e.expect(t1 > 0, "bridge 1 restarted took no topics back")
        stop.set()
        await task
        await asyncio.sleep(0.5)
        total_lost = 0
        for u, c in zip(users, clients):
            c.expect_open("two bridges")
            seqs = [int(m.split(":")[1]) for _, m in c.with_prefix("B%s:" % u)]
            dups = [s for s, n in collections.Counter(seqs).items() if n > 1]
            e.expect(not dups, "%s received %s more than once" % (u, dups))
            e.expect(seqs == sorted(seqs), "%s received out of order" % u)
            total_lost += len(sent[u]) - len(set(seqs))
        moves = sum(n.metrics().get("wsrouter_link_topic_moves_total", 0) for n in nodes)
        stale = sum(n.metrics().get("wsrouter_link_stale_deliveries_total", 0) for n in nodes)
        note("two bridges: %d messages sent, %d lost over a kill and a restart; "
             "%d topic moves, %d stale deliveries dropped"
             % (sum(len(v) for v in sent.values()), total_lost, moves, stale))
        e.expect(moves >= 2 * share1, "nodes counted %d topic moves, expected at least %d "
                 "(bridge 1's share away and back)" % (moves, 2 * share1))
    except BaseException:
        if VERBOSE:
            for srv in nodes:
                print("\n".join(line for line in (srv.stdout_text() + srv.stderr_text())
                                .splitlines() if "link" in line)[-2000:])
        raise
    finally:
        pub.close()
        for c in clients:
            await c.close()
        for n in nodes:
            n.stop()
        b1.stop()
        b2.stop()
        redis.stop()


# --------------------------------------------------------------------------
#  Case 5: two bridges, CURVE, one certificate each

async def case_two_bridges_curve():
    tmp = tempfile.mkdtemp(prefix="wsr-scale-curve-")
    redis = RedisProc().start()
    keys, clients = os.path.join(tmp, "keys"), os.path.join(tmp, "clients")
    os.makedirs(keys)
    os.makedirs(clients)
    for name in ("b1", "b2", "node"):
        r = e.run_cli(["keygen", "--curve", "--out", os.path.join(keys, name)])
        e.expect(r.returncode == 0, "keygen --curve failed: %s" % r.stderr)
    shutil.copy(os.path.join(keys, "node"), clients)
    bridges = [BridgeProc(e.free_port(), redis_url=redis.url, bind="127.0.0.%d" % (2 + i),
                          extra_args=["--cert", os.path.join(keys, "b%d_secret" % (i + 1)),
                                      "--clients", clients]).start() for i in range(2)]
    srv = start_node(workers=2, extra_args=[
        "--bridge", ",".join(b.endpoint for b in bridges),
        "--cert", os.path.join(keys, "node_secret"),
        "--bridge-key", "%s,%s" % (os.path.join(keys, "b1"), os.path.join(keys, "b2"))])
    users = ["k%d" % i for i in range(12)]
    clients_ws = [await Client.connect(srv, u) for u in users]
    try:
        await wait_numsub_one(redis.port, ["ws:" + u for u in users], 10.0, "CURVE bridges")
        await asyncio.sleep(1.0)
        topics = [b.metrics().get("wsrouter_bridge_topics", 0) for b in bridges]
        e.expect(all(t > 0 for t in topics) and sum(topics) == len(users),
                 "topics per CURVE bridge: %s" % topics)
        pub = redis_cluster.Conn(redis.port)
        for u in users:
            pub.call("PUBLISH", "ws:" + u, "curve-" + u)
        pub.close()
        for u, c in zip(users, clients_ws):
            await c.wait_for("curve-" + u, 3.0)
        note("CURVE, two bridges with their own certificates: topics %s" % topics)
    finally:
        for c in clients_ws:
            await c.close()
        srv.stop()
        for b in bridges:
            b.stop()
        redis.stop()
        shutil.rmtree(tmp, ignore_errors=True)


async def body(suite):
    if not redis_cluster.available():
        e.skip_suite("redis-server / redis-cli not installed")
    #  As README advises: the other shards keep serving while one slot range
    #  waits for its replica's promotion (Redis' default stops every shard)
    rc = RedisCluster(masters=3, replicas=1,
                      config=("--cluster-require-full-coverage", "no"))
    rc.start()
    srv = None
    try:
        url = "redis+cluster://" + rc.seeds()
        srv = start_node(workers=2, extra_args=["--redis-url", url, "--history-size", "50"])
        users = users_on_distinct_shards(rc, 3)
        await suite.case("cluster: sharded delivery, API publish, history keys",
                         case_cluster, rc, srv, users, timeout=40)
        await suite.case("cluster: master killed under load, delivery resumes",
                         case_failover, rc, srv, users, timeout=60)
        srv.stop()
        rc.stop()
        await suite.case("bridges: two, topics shared, one killed and restarted",
                         case_two_bridges, timeout=60)
        await suite.case("bridges: two with CURVE, one certificate each",
                         case_two_bridges_curve, timeout=40)
        if shutil.which(NATS_SERVER) or os.path.exists(NATS_SERVER):
            ncl = NatsCluster(3).start()
            try:
                await suite.case("nats: cluster, discovered servers, R3 stream, server killed",
                                 case_nats_cluster, ncl, timeout=60)
            finally:
                ncl.stop()
        else:
            suite.skip("nats: cluster", "nats-server not installed")
    finally:
        if srv is not None and suite.failed and VERBOSE:
            print("\n".join(line for line in srv.stderr_text().splitlines()
                            if "rcluster" in line or "redis" in line)[-4000:])
        stop_everything()
        rc.stop()


if __name__ == "__main__":
    e.main("e2e_scale", body)
