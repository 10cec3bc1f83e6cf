#!/usr/bin/python3
"""scale — issue 12's benchmarks, each side by side in one run.

usage: scale.py [--sessions N] [--duration S] [--rate R|max] [--json OUT]
                [--only cluster|bridges]

cluster: a Redis Cluster of 3 masters + 3 replicas (tests/redis_cluster.py,
  loopback), one node `serve --workers 2` with its in-process bridge, N
  sessions of N users, `wsrouter bench --publish http://NODE` (the API: the
  bridge publishes) for S seconds, twice:
    sharded  WEBSOCKET_REDIS_URL=redis+cluster://SEEDS (SSUBSCRIBE at the
             owner, SPUBLISH routed to it);
    classic  WEBSOCKET_REDIS_URL=redis://MASTER-1 (SUBSCRIBE / PUBLISH on one
             node; the cluster bus copies every message to every node).
  Reported: delivered/s, and Redis CPU (utime+stime of all 6 redis-server
  processes, /proc/PID/stat) per published message, summed over the nodes.

bridges: one redis-server, B `wsrouter bridge` processes (B = 1, then 2),
  two nodes listing them all (--bridge tcp://127.0.0.2:P1,tcp://127.0.0.3:P2),
  N sessions spread over both nodes, `wsrouter bench --publish redis://`
  (PUBLISH ws:{user}, pipelined) for S seconds. Reported: delivered/s and the
  bridges' CPU (summed) per delivered message.

Every process is started here on free loopback ports and stopped by PID.
Prints one JSON object (and writes it to --json).
"""

import argparse
import json
import os
import subprocess
import sys
import threading
import time

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.join(HERE, "..", "..", "tests"))

import wsr_e2e as e  # noqa: E402
import redis_cluster  # noqa: E402
from wsr_procs import RedisProc, BridgeProc, start_node, stop_everything  # noqa: E402

CLK_TCK = os.sysconf("SC_CLK_TCK")
SECRET = "bench-secret-0123456789abcdef0123456789abcdef"
API_KEY = "bench-api-key-0123456789"


def cpu_seconds(pid):
    try:
        with open("/proc/%d/stat" % pid) as f:
            fields = f.read().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / CLK_TCK
    except OSError:
        return 0.0


def cpu_of(pids):
    return sum(cpu_seconds(p) for p in pids)


def bench(urls, publish, secret, api_key, args):
    cmd = [e.binary(), "bench", "--sessions", str(args.sessions), "--jwt-secret", secret,
           "--publish", publish, "--api-key", api_key, "--duration", str(args.duration),
           "--rate", str(args.rate), "--quiet", "--drain", "3"]
    for u in urls:
        cmd += ["--url", u]
    r = subprocess.run(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                       timeout=args.duration + 120)
    if r.returncode != 0:
        raise RuntimeError("bench failed (%d): %s" % (r.returncode, r.stderr[-1500:]))
    return json.loads(r.stdout)


def pick(report):
    keys = ("messages_published", "publish_per_s", "messages_received", "delivered_per_s",
            "loss", "duplicates", "latency_ms")
    return {k: report.get(k) for k in keys if k in report}


def run_cluster(args):
    out = {}
    rc = redis_cluster.RedisCluster(masters=3, replicas=1,
                                    config=("--cluster-require-full-coverage", "no"))
    rc.start()
    try:
        pids = [p.pid for p in rc.procs.values()]
        master = rc.masters()[0]
        for name, url in (("sharded", "redis+cluster://" + rc.seeds()),
                          ("classic", "redis://127.0.0.1:%d" % master)):
            srv = start_node(workers=2, extra_args=["--redis-url", url])
            try:
                time.sleep(0.5)
                c0 = cpu_of(pids)
                rep = bench([srv.url], "http://127.0.0.1:%d" % srv.port, srv.secret,
                            srv.api_key, args)
                c1 = cpu_of(pids)
                published = rep.get("messages_published") or 0
                row = pick(rep)
                row["redis_cpu_s"] = round(c1 - c0, 3)
                row["redis_cpu_us_per_published"] = (
                    round((c1 - c0) * 1e6 / published, 2) if published else None)
                out[name] = row
            finally:
                srv.stop()
    finally:
        rc.stop()
    return out


def run_bridges(args):
    out = {}
    redis = RedisProc().start()
    try:
        for count in (1, 2):
            bridges = [BridgeProc(e.free_port(), redis_url=redis.url,
                                  bind="127.0.0.%d" % (2 + i)).start() for i in range(count)]
            endpoints = ",".join(b.endpoint for b in bridges)
            nodes = [start_node(workers=2, secret=SECRET, api_key=API_KEY,
                                extra_args=["--bridge", endpoints]) for _ in range(2)]
            try:
                time.sleep(0.5)
                pids = [b.proc.pid for b in bridges]
                c0 = cpu_of(pids)
                topics = []
                sampler = threading.Timer(args.duration / 2 + 2, lambda: topics.extend(
                    b.metrics().get("wsrouter_bridge_topics", 0) for b in bridges))
                sampler.start()
                rep = bench([n.url for n in nodes], redis.url, SECRET, API_KEY, args)
                c1 = cpu_of(pids)
                sampler.join()
                delivered = rep.get("messages_received") or 0
                row = pick(rep)
                row["bridges_cpu_s"] = round(c1 - c0, 3)
                row["bridges_cpu_us_per_delivered"] = (
                    round((c1 - c0) * 1e6 / delivered, 2) if delivered else None)
                row["topics_per_bridge_mid_run"] = topics
                out["bridges_%d" % count] = row
            finally:
                for n in nodes:
                    n.stop()
                for b in bridges:
                    b.stop()
    finally:
        redis.stop()
    return out


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--sessions", type=int, default=2000)
    ap.add_argument("--duration", type=float, default=5)
    ap.add_argument("--rate", default="max")
    ap.add_argument("--json")
    ap.add_argument("--only", choices=("cluster", "bridges"))
    args = ap.parse_args()
    result = {"sessions": args.sessions, "duration_s": args.duration, "rate": args.rate,
              "nproc": os.cpu_count()}
    try:
        if args.only in (None, "cluster"):
            result["cluster"] = run_cluster(args)
        if args.only in (None, "bridges"):
            result["bridges"] = run_bridges(args)
    finally:
        stop_everything()
    text = json.dumps(result, indent=2)
    print(text)
    if args.json:
        with open(args.json, "w") as f:
            f.write(text + "\n")


if __name__ == "__main__":
    main()
