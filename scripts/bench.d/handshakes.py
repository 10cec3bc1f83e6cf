#!/usr/bin/python3
"""handshakes — HS256 handshakes/s of ONE node process, the generator sharing
the box, and where the CPU goes per handshake (issue 9's handshake target).

usage: handshakes.py --wsrouter BIN [--baseline BIN] [--sessions N]
                     [--rounds R] [--inflight M] [--procs K] [--json OUT]
                     [--backplane none|redis] [--own-generator]

For each round, and in each round for each binary in turn (this build, then
the baseline built from an earlier commit in a git worktree; the order flips
every round so that neither always runs first), on free loopback ports:
  1. one node `serve --workers 2` with its in-process bridge, per-client
     protections off (all sessions come from this host); with --backplane
     redis also a fresh redis-server (no disk) that the bridge uses: each
     session then SUBSCRIBEs its user on Redis, and its connect and
     disconnect are lifecycle events (PUBLISH) and presence updates (EVALSHA),
     the defaults;
  2. the load generator of THIS build (`wsrouter bench`, the same generator
     for both servers; with --own-generator each binary's own) opens N sessions of N distinct users with minted HS256
     tokens as fast as it can (--ramp far above capacity, M in flight);
  3. the node's threads' CPU (utime+stime, /proc/PID/task/*/stat) is read
     before, when the generator has its report (all sessions up) and again
     once the node is idle after the generator closed everything (teardown);
     the generator's CPU is its rusage as a waited-for child.
Per handshake: node CPU while opening / node CPU for teardown, per thread
name, and the generator's CPU. Medians and ranges over the rounds.

Prints one JSON object; every process it started is stopped by PID.
"""

import argparse
import json
import os
import re
import resource
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time

SECRET = "bench-secret-0123456789abcdef0123456789abcdef"
CLK_TCK = os.sysconf("SC_CLK_TCK")


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def threads_cpu(pid):
    """{thread name: cpu seconds} summed over threads of the same name."""
    out = {}
    for tid in os.listdir("/proc/%d/task" % pid):
        try:
            with open("/proc/%d/task/%s/stat" % (pid, tid)) as f:
                text = f.read()
        except OSError:
            continue
        name = text[text.index("(") + 1:text.rindex(")")]
        name = re.sub(r"\d+$", "", name)        # session-0, session-1 → session-
        fields = text.rsplit(")", 1)[1].split()
        out[name] = out.get(name, 0.0) + (int(fields[11]) + int(fields[12])) / CLK_TCK
    return out


def total(cpu):
    return sum(cpu.values())


def stop(p):
    if p.poll() is None:
        p.send_signal(signal.SIGTERM)
        try:
            p.wait(10)
        except subprocess.TimeoutExpired:
            p.kill()
            p.wait()


def serve_flags(binary):
    out = subprocess.run([binary, "serve", "--help"], capture_output=True, text=True)
    text = out.stdout + out.stderr
    flags = ["--rate-messages", "0", "--max-per-ip", "0", "--handshake-rate", "0"]
    if "--max-pending-per-ip" in text:
        flags += ["--max-pending-per-ip", "0"]
    return flags


def one_run(binary, bench, args):
    rport = free_port()
    tmp = tempfile.mkdtemp(prefix="hs-bench-")
    procs = []
    try:
        redis_flags = []
        if args.backplane == "redis":
            redis_flags = ["--redis-url", "redis://127.0.0.1:%d" % rport]
        redis = None if args.backplane != "redis" else subprocess.Popen(["redis-server", "--port", str(rport), "--bind", "127.0.0.1",
                                  "--save", "", "--appendonly", "no", "--dir", tmp],
                                 stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                                 stderr=subprocess.DEVNULL)
        if redis:
            procs.append(redis)
        for _ in range(100 if redis else 0):
            try:
                socket.create_connection(("127.0.0.1", rport), timeout=0.2).close()
                break
            except OSError:
                time.sleep(0.05)
        node = subprocess.Popen([binary, "serve", "--port", "0", "--bind", "127.0.0.1",
                                 "--jwt-secret", SECRET,
                                 "--workers", "2"] + redis_flags + serve_flags(binary),
                                stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                                stderr=subprocess.DEVNULL, text=True)
        procs.append(node)
        port = None
        deadline = time.monotonic() + 15
        while port is None and time.monotonic() < deadline:
            line = node.stdout.readline()
            m = re.search(r"ws://[^:/\s]+:(\d+)/ws", line or "")
            if m:
                port = int(m.group(1))
            elif not line and node.poll() is not None:
                break
        if port is None:
            raise SystemExit("%s: node did not start" % binary)
        threading.Thread(target=lambda: node.stdout.read(), daemon=True).start()
        time.sleep(0.5)
        c0 = threads_cpu(node.pid)
        r0 = resource.getrusage(resource.RUSAGE_CHILDREN)
        b = subprocess.Popen([bench, "bench", "--url", "ws://127.0.0.1:%d/ws" % port,
                              "--sessions", str(args.sessions), "--jwt-secret", SECRET,
                              "--ramp", "1000000", "--inflight", str(args.inflight),
                              "--procs", str(args.procs), "--handshake-timeout", "30",
                              "--quiet"], stdin=subprocess.DEVNULL,
                             stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
        #  The report comes when every session is up; the sockets close when
        #  the generator exits, just after
        out, _ = b.communicate(timeout=120)
        c1 = threads_cpu(node.pid)
        r1 = resource.getrusage(resource.RUSAGE_CHILDREN)
        #  Teardown: wait until the node is idle (no CPU tick in 0.3 s)
        prev, t_end = total(c1), time.monotonic() + 20
        while time.monotonic() < t_end:
            time.sleep(0.3)
            now = total(threads_cpu(node.pid))
            if now == prev:
                break
            prev = now
        c2 = threads_cpu(node.pid)
        report = json.loads(out) if out.strip() else {}
        n = report.get("sessions_established") or 0
        res = {"handshakes_per_s": report.get("handshakes_per_s"), "established": n,
               "failed": report.get("handshake_failures"),
               "p50_ms": (report.get("handshake_latency_ms") or {}).get("p50")}
        if n:
            res["node_us_open"] = (total(c1) - total(c0)) * 1e6 / n
            res["node_us_teardown"] = (total(c2) - total(c1)) * 1e6 / n
            res["node_us_open_by_thread"] = {
                k: round((c1.get(k, 0) - c0.get(k, 0)) * 1e6 / n, 1) for k in c1
                if c1.get(k, 0) - c0.get(k, 0) > 0}
            res["node_us_teardown_by_thread"] = {
                k: round((c2.get(k, 0) - c1.get(k, 0)) * 1e6 / n, 1) for k in c2
                if c2.get(k, 0) - c1.get(k, 0) > 0}
            res["bench_us"] = ((r1.ru_utime + r1.ru_stime) - (r0.ru_utime + r0.ru_stime)) \
                * 1e6 / n
        return res
    finally:
        for p in reversed(procs):
            stop(p)


def summary(values):
    values = [v for v in values if v is not None]
    if not values:
        return None
    return {"median": round(statistics.median(values), 2), "min": round(min(values), 2),
            "max": round(max(values), 2)}


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--wsrouter", required=True)
    ap.add_argument("--baseline")
    ap.add_argument("--sessions", type=int, default=10000)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--inflight", type=int, default=2000)
    ap.add_argument("--procs", type=int, default=1)
    ap.add_argument("--own-generator", action="store_true",
                    help="each binary's own `wsrouter bench` (generator changes measured too)")
    ap.add_argument("--backplane", choices=("none", "redis"), default="none")
    ap.add_argument("--json")
    args = ap.parse_args()
    builds = [("this", args.wsrouter)] + ([("baseline", args.baseline)] if args.baseline else [])
    runs = {label: [] for label, _ in builds}
    for r in range(args.rounds):
        order = builds if r % 2 == 0 else list(reversed(builds))
        for label, binary in order:
            res = one_run(binary, binary if args.own_generator else args.wsrouter, args)
            runs[label].append(res)
            print("round %d %s: %s" % (r + 1, label, json.dumps(res)), file=sys.stderr)
    result = {"sessions": args.sessions, "backplane": args.backplane,
              "own_generator": args.own_generator, "rounds": args.rounds, "inflight": args.inflight,
              "procs": args.procs, "loadavg_start": open("/proc/loadavg").read().split()[:3],
              "builds": {}}
    for label, binary in builds:
        rs = runs[label]
        result["builds"][label] = {
            "binary": binary,
            "handshakes_per_s": summary([x.get("handshakes_per_s") for x in rs]),
            "node_us_open": summary([x.get("node_us_open") for x in rs]),
            "node_us_teardown": summary([x.get("node_us_teardown") for x in rs]),
            "bench_us": summary([x.get("bench_us") for x in rs]),
            "runs": rs,
        }
    if args.baseline:
        a = result["builds"]["this"]["handshakes_per_s"]
        b = result["builds"]["baseline"]["handshakes_per_s"]
        if a and b:
            result["ratio_handshakes_per_s"] = round(a["median"] / b["median"], 3)
    text = json.dumps(result, indent=2)
    if args.json:
        with open(args.json, "w") as f:
            f.write(text + "\n")
    print(text)


if __name__ == "__main__":
    main()
