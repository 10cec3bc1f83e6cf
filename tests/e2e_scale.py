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
from wsr_procs import start_node, stop_everything  # noqa: E402

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
            e.expect(rc.publish("ws:" + u, "direct-" + u) == 1,
                     "SPUBLISH ws:%s reached no subscriber" % u)
            await c.wait_for("direct-" + u, 3.0)
            r = srv.publish(user=u, data="api-" + u)
            e.expect(r.status == 202, "API publish for %s: %s" % (u, r))
            await c.wait_for("api-" + u, 3.0)
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
    finally:
        if srv is not None and suite.failed and VERBOSE:
            print("\n".join(line for line in srv.stderr_text().splitlines()
                            if "rcluster" in line or "redis" in line)[-4000:])
        stop_everything()
        rc.stop()


if __name__ == "__main__":
    e.main("e2e_scale", body)
