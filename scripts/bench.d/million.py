#!/usr/bin/env python3
"""million.py — the stretch of issue 9: N concurrent authenticated sessions on
this one box (default 1,000,000), a final publish that must reach every one,
and where the memory goes.

Method. One redis-server, K node processes (`wsrouter serve --workers 1`,
each with its bridge in-process on its own Redis connection, per-topic
subscriptions; or, with --split, one `wsrouter bridge` process for all of
them), one port each,
--per-node sessions at most: the 20,000 open-file limit per process), and
`wsrouter bench` with --procs P receiver processes (--per-proc sessions each)
spreading sessions round robin over the nodes' ports from source addresses
127.0.0.2-127.0.0.254. Every session is an HS256 token verified by its
node. Once all are up they are held --hold seconds, then one message per
user goes through Redis (PUBLISH ws:{user}) and the bench counts the
sessions that missed it.

Memory. /proc/meminfo before the sessions (nodes idle) and at the peak
(sampled every second): Slab (of it SUnreclaim: sockets, inodes, dentries,
epoll items), PageTables, KernelStack; the RSS of the nodes, the bridge,
Redis and the load processes. Per session = growth / sessions. Both ends of
every connection are on this box: the kernel figure counts two sockets per
session (the node's and the client's).

Every process is ours and stopped by PID at the end; every phase has a
time limit. Prints a JSON report on stdout (progress on stderr).
"""
import argparse
import json
import os
import resource
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time

HERE = os.path.dirname(os.path.abspath(__file__))
BIN = os.environ.get("WSROUTER") or os.path.join(HERE, "..", "..", "build", "wsrouter")
SECRET = "million-bench-secret-0123456789abcdef0123456789"
APIKEY = "million-bench-api-key"


def log(text):
    print("million: %s" % text, file=sys.stderr, flush=True)


def free_port(pair=False):
    for _ in range(200):
        s = socket.socket()
        try:
            s.bind(("127.0.0.1", 0))
            p = s.getsockname()[1]
        finally:
            s.close()
        if not pair:
            return p
        t = socket.socket()
        try:
            t.bind(("127.0.0.1", p + 1))
            return p
        except OSError:
            continue
        finally:
            t.close()
    raise RuntimeError("no free port")


def meminfo():
    out = {}
    with open("/proc/meminfo") as f:
        for line in f:
            k, v = line.split(":", 1)
            out[k] = int(v.split()[0])      # KiB
    return out


def rss_kib(pid):
    try:
        with open("/proc/%d/status" % pid) as f:
            for line in f:
                if line.startswith("VmRSS:"):
                    return int(line.split()[1])
    except OSError:
        pass
    return 0


def children(pid):
    """Direct children of pid (the bench's receiver processes)."""
    kids = []
    for d in os.listdir("/proc"):
        if not d.isdigit():
            continue
        try:
            with open("/proc/%s/stat" % d) as f:
                fields = f.read().rsplit(")", 1)[1].split()
            if int(fields[1]) == pid:
                kids.append(int(d))
        except (OSError, IndexError, ValueError):
            pass
    return kids


def wait_line(path, text, seconds, proc):
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            return False
        try:
            with open(path, errors="replace") as f:
                if text in f.read():
                    return True
        except OSError:
            pass
        time.sleep(0.1)
    return False


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--sessions", type=int, default=1000000)
    ap.add_argument("--per-node", type=int, default=17500)
    ap.add_argument("--per-proc", type=int, default=17500)
    ap.add_argument("--ramp", type=int, default=20000)
    ap.add_argument("--inflight", type=int, default=4000)
    ap.add_argument("--hold", type=int, default=20)
    ap.add_argument("--time-limit", type=int, default=900, help="whole run, seconds")
    ap.add_argument("--split", action="store_true",
                    help="one bridge process for every node (default: in-process bridges)")
    args = ap.parse_args()

    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    nodes_n = -(-args.sessions // args.per_node)
    procs_n = -(-args.sessions // args.per_proc)
    tmp = tempfile.mkdtemp(prefix="wsr-million-")
    procs = []
    report = {"method": __doc__.split("\n\n")[1].replace("\n", " "),
              "sessions": args.sessions, "nodes": nodes_n, "load_procs": procs_n}
    started = time.monotonic()
    try:
        rport = free_port()
        redis = subprocess.Popen(
            ["redis-server", "--bind", "127.0.0.1", "--port", str(rport), "--save", "",
             "--appendonly", "no", "--protected-mode", "no",
             "--client-output-buffer-limit", "pubsub", "512mb", "256mb", "60",
             "--maxclients", "1000"],
            stdout=open(os.path.join(tmp, "redis.log"), "wb"), stderr=subprocess.STDOUT)
        procs.append(redis)
        time.sleep(0.3)
        backplane = ["--redis-url", "redis://127.0.0.1:%d" % rport]
        bridge_pids = []
        if args.split:
            bport, bhttp = free_port(pair=True), free_port()
            blog = os.path.join(tmp, "bridge.log")
            bridge = subprocess.Popen(
                [BIN, "bridge", "--endpoint", "tcp://127.0.0.1:%d" % bport, "--http-port",
                 str(bhttp), "--http-bind", "127.0.0.1"] + backplane,
                stdout=open(blog, "wb"), stderr=subprocess.STDOUT)
            procs.append(bridge)
            bridge_pids = [bridge.pid]
            if not wait_line(blog, "bridge listening", 15, bridge):
                raise RuntimeError("bridge did not start: see %s" % blog)
            backplane = ["--bridge", "tcp://127.0.0.1:%d" % bport]
        report["bridges"] = "one process" if args.split else "in-process, one per node"
        log("redis :%d; starting %d nodes" % (rport, nodes_n))
        nodes, ports = [], []
        #  Node ports below the ephemeral range (32768-60999 here): a port
        #  picked from that range could be taken by an outgoing connection
        #  (the nodes' Redis links) before its node binds it
        next_port = 21000
        for i in range(nodes_n):
            while True:
                t = socket.socket()
                try:
                    t.bind(("127.0.0.1", next_port))
                    break
                except OSError:
                    next_port += 1
                finally:
                    t.close()
            port = next_port
            next_port += 1
            path = os.path.join(tmp, "node-%d.log" % i)
            p = subprocess.Popen(
                [BIN, "serve", "--bind", "127.0.0.1", "--port", str(port), "--workers", "1",
                 "--jwt-secret", SECRET, "--api-key", APIKEY, "--rate-messages", "0",
                 "--max-per-ip", "0", "--handshake-rate", "0", "--max-pending-per-ip", "0",
                 "--node-id", "m-%d" % i] + backplane,
                stdout=open(path, "wb"), stderr=subprocess.STDOUT)
            procs.append(p)
            nodes.append((p, path))
            ports.append(port)
        for p, path in nodes:
            if not wait_line(path, "backplane reachable", 30, p):
                raise RuntimeError("a node did not start: see %s" % path)
        node_pids = [p.pid for p, _ in nodes]
        time.sleep(1.0)
        before = meminfo()
        rss_before = sum(rss_kib(pid) for pid in node_pids + bridge_pids + [redis.pid])
        report["before"] = {k: before[k] for k in ("MemAvailable", "Slab", "SUnreclaim",
                                                   "PageTables", "KernelStack")}
        report["before"]["servers_rss"] = rss_before

        cmd = [BIN, "bench", "--sessions", str(args.sessions), "--procs", str(procs_n),
               "--ramp", str(args.ramp), "--inflight", str(args.inflight),
               "--hold", str(args.hold), "--jwt-secret", SECRET, "--final-publish",
               "--publish", "redis://127.0.0.1:%d" % rport, "--drain", "60",
               "--handshake-timeout", "60", "--quiet",
               "--server-pids", ",".join(str(p) for p in node_pids)]
        for port in ports:
            cmd += ["--url", "ws://127.0.0.1:%d/ws" % port]
        log("%d sessions over %d nodes from %d load processes" % (args.sessions, nodes_n,
                                                                   procs_n))
        out_path = os.path.join(tmp, "bench.json")
        bench = subprocess.Popen(cmd, stdout=open(out_path, "wb"),
                                 stderr=open(os.path.join(tmp, "bench.err"), "wb"))
        procs.append(bench)
        peak = {"Slab": 0, "SUnreclaim": 0, "PageTables": 0, "KernelStack": 0,
                "MemAvailable_min": before["MemAvailable"], "servers_rss": 0, "load_rss": 0,
                "sockets": 0}
        stop = threading.Event()

        def sample():
            while not stop.wait(1.0):
                m = meminfo()
                for k in ("Slab", "SUnreclaim", "PageTables", "KernelStack"):
                    peak[k] = max(peak[k], m[k])
                peak["MemAvailable_min"] = min(peak["MemAvailable_min"], m["MemAvailable"])
                srv = sum(rss_kib(pid) for pid in node_pids + bridge_pids + [redis.pid])
                if srv > peak["servers_rss"]:
                    peak["servers_rss"] = srv
                    peak["nodes_rss"] = sum(rss_kib(pid) for pid in node_pids)
                    peak["bridge_rss"] = sum(rss_kib(pid) for pid in bridge_pids)
                    peak["redis_rss"] = rss_kib(redis.pid)
                load = sum(rss_kib(pid) for pid in children(bench.pid)) + rss_kib(bench.pid)
                peak["load_rss"] = max(peak["load_rss"], load)
                with open("/proc/net/sockstat") as f:
                    for line in f:
                        if line.startswith("TCP:"):
                            peak["sockets"] = max(peak["sockets"], int(line.split()[2]))
                if m["MemAvailable"] < 1024 * 1024:
                    log("less than 1 GiB available: stopping the load")
                    bench.send_signal(signal.SIGINT)
        sampler = threading.Thread(target=sample, daemon=True)
        sampler.start()
        try:
            bench.wait(timeout=max(60, args.time_limit - (time.monotonic() - started)))
        except subprocess.TimeoutExpired:
            log("time limit: interrupting the load")
            bench.send_signal(signal.SIGINT)
            bench.wait(60)
        stop.set()
        sampler.join()
        with open(out_path) as f:
            b = json.load(f)
        report["bench"] = {k: b.get(k) for k in (
            "sessions_established", "sessions_open_at_end", "handshake_failures",
            "handshake_errors", "handshakes_per_s", "handshake_latency_ms", "final_publish",
            "sessions_closed_by_server", "memory", "interrupted", "elapsed_s")}
        report["peak"] = peak
        up = b.get("sessions_established") or 0
        if up:
            kib = lambda k: peak[k] - before[k]     # noqa: E731
            report["per_session_bytes"] = {
                "kernel_slab (both ends)": round(kib("Slab") * 1024 / up),
                "kernel_slab_unreclaimable (both ends)": round(kib("SUnreclaim") * 1024 / up),
                "page_tables": round(kib("PageTables") * 1024 / up),
                "nodes_rss": round((peak.get("nodes_rss", 0) - 0) * 1024 / up),
                "nodes_rss_growth": (b.get("memory") or {}).get("per_session_bytes"),
                "bridge_and_redis_rss": round((peak.get("bridge_rss", 0)
                                               + peak.get("redis_rss", 0)) * 1024 / up),
                "load_generator_rss": round(peak["load_rss"] * 1024 / up),
                "machine (MemAvailable drop)": round((before["MemAvailable"]
                                                      - peak["MemAvailable_min"]) * 1024 / up),
            }
        report["elapsed_s"] = round(time.monotonic() - started, 1)
        print(json.dumps(report, indent=1))
    finally:
        for p in reversed(procs):
            if p.poll() is None:
                p.send_signal(signal.SIGTERM)
        deadline = time.monotonic() + 30
        for p in reversed(procs):
            try:
                p.wait(max(0.1, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                p.kill()
                p.wait()
        log("logs in %s" % tmp)


if __name__ == "__main__":
    main()
