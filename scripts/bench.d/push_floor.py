#!/usr/bin/python3
"""push_floor — per-user push through Redis, server CPU per delivery against
the physical floor, measured in one run (issue 9's method).

usage: push_floor.py --wsrouter BIN [--baseline BIN] [--floor FLOOR_BIN]
                     [--sessions N] [--rate R] [--duration S] [--json OUT]
                     [--via redis|http] [--history-size N]
                     [--mode user|channel] [--write-delay T] [--no-max]

For each server binary (this build, and optionally a baseline built from an
earlier commit in a git worktree), in turn, on free loopback ports:
  1. a fresh redis-server (no disk) and one node `serve --workers 2` with its
     in-process bridge, per-client protections off (all sessions come from
     this host);
  2. the load generator of THIS build (`wsrouter bench`, the same generator
     for both servers) opens N sessions of N distinct users and publishes on
     Redis `PUBLISH ws:{user}` round robin, at R msg/s (paced) for S seconds,
     then again at `--rate max` (closed loop: the highest delivered/s);
  3. every 250 ms the node's CPU (utime+stime of all its threads,
     /proc/PID/stat) and its wsrouter_messages_out_total are sampled; CPU per
     delivery = delta CPU / delta deliveries over the samples between 10 % and
     90 % of the run's deliveries (ramp-up, warm-up and drain excluded).
Then `floor N 10 5` (../shared/bench/floor.c: one write() of a pre-framed
40-byte frame per delivery to N loopback sockets) gives the floor in the
same run. Ratios, not absolute times, are what compare across runs.

Prints one JSON object; every process it started is stopped by PID.
"""

import argparse
import json
import os
import re
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request

SECRET = "bench-secret-0123456789abcdef0123456789abcdef"
API_KEY = "bench-api-key-0123456789"
CLK_TCK = os.sysconf("SC_CLK_TCK")


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def cpu_seconds(pid):
    with open("/proc/%d/stat" % pid) as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / CLK_TCK


def messages_out(port):
    try:
        with urllib.request.urlopen("http://127.0.0.1:%d/metrics" % port, timeout=2) as r:
            text = r.read().decode()
    except Exception:
        return None
    m = re.search(r"^wsrouter_messages_out_total (\d+)", text, re.M)
    return int(m.group(1)) if m else None


class Procs:
    def __init__(self):
        self.procs = []

    def start(self, argv, **kw):
        p = subprocess.Popen(argv, stdin=subprocess.DEVNULL, **kw)
        self.procs.append(p)
        return p

    def stop(self, p):
        if p.poll() is None:
            p.send_signal(signal.SIGTERM)
            try:
                p.wait(10)
            except subprocess.TimeoutExpired:
                p.kill()
                p.wait()

    def stop_all(self):
        for p in reversed(self.procs):
            self.stop(p)


def serve_flags(binary):
    out = subprocess.run([binary, "serve", "--help"], capture_output=True, text=True)
    text = out.stdout + out.stderr
    flags = ["--rate-messages", "0", "--max-per-ip", "0", "--handshake-rate", "0"]
    if "--max-pending-per-ip" in text:
        flags += ["--max-pending-per-ip", "0"]
    if "--keepalive-requests" in text:
        #  the HTTP publisher pipelines on one keep-alive connection
        flags += ["--keepalive-requests", "0", "--keepalive-lifetime", "0"]
    return flags


def run_server(procs, binary, bench, args, label):
    rport = free_port()
    tmp = tempfile.mkdtemp(prefix="push-floor-")
    redis = procs.start(["redis-server", "--port", str(rport), "--bind", "127.0.0.1",
                         "--save", "", "--appendonly", "no", "--dir", tmp,
                         "--client-output-buffer-limit", "pubsub", "256mb", "128mb", "60"],
                        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    for _ in range(100):
        try:
            socket.create_connection(("127.0.0.1", rport), timeout=0.2).close()
            break
        except OSError:
            time.sleep(0.05)
    log = tempfile.TemporaryFile()
    history = ["--history-size", str(args.history_size)] if args.history_size else []
    if args.write_delay:
        history += ["--write-delay", args.write_delay]
    node = procs.start([binary, "serve", "--port", "0", "--bind", "127.0.0.1",
                        "--jwt-secret", SECRET, "--redis-url", "redis://127.0.0.1:%d" % rport,
                        "--workers", "2", "--api-key", API_KEY] + history + serve_flags(binary),
                       stdout=subprocess.PIPE, stderr=log, text=True)
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
        raise SystemExit("%s: node did not start" % label)
    threading.Thread(target=lambda: node.stdout.read(), daemon=True).start()
    result = {"binary": binary}
    modes = (("paced", str(args.rate)),) if args.no_max else \
        (("paced", str(args.rate)), ("max", "max"))
    for mode, rate in modes:
        samples = []
        stop = threading.Event()

        def sampler():
            while not stop.is_set():
                out = messages_out(port)
                if out is not None:
                    samples.append((time.monotonic(), cpu_seconds(node.pid), out))
                time.sleep(0.25)
        t = threading.Thread(target=sampler)
        t.start()
        b = subprocess.run([bench, "bench", "--url", "ws://127.0.0.1:%d/ws" % port,
                            "--sessions", str(args.sessions), "--jwt-secret", SECRET,
                            "--user-prefix", "%s%s" % (label, mode),
                            "--publish", ("redis://127.0.0.1:%d" % rport) if args.via == "redis"
                            else ("http://127.0.0.1:%d" % port), "--api-key", API_KEY,
                            "--rate", rate,
                            "--duration", str(args.duration), "--size", "64", "--quiet",
                            "--mode", args.mode] + (["--channel", "bench-room"]
                                                    if args.mode == "channel" else []) + [
                            "--ramp", "20000", "--inflight", "2000"],
                           capture_output=True, text=True, timeout=args.duration + 120)
        stop.set()
        t.join()
        report = json.loads(b.stdout) if b.stdout.strip() else {}
        first, last = samples[0][2], samples[-1][2]
        span = last - first
        lo = [s for s in samples if s[2] >= first + 0.1 * span]
        hi = [s for s in samples if s[2] <= first + 0.9 * span]
        cpu_us = None
        if lo and hi and hi[-1][2] > lo[0][2]:
            cpu_us = (hi[-1][1] - lo[0][1]) * 1e6 / (hi[-1][2] - lo[0][2])
        result[mode] = {
            "rate": rate, "delivered_per_s": report.get("delivered_per_s"),
            "messages_received": report.get("messages_received"),
            "loss": report.get("loss"), "duplicates": report.get("duplicates"),
            "reordered": report.get("reordered"),
            "latency_p50_ms": (report.get("latency_ms") or {}).get("p50"),
            "latency_p99_ms": (report.get("latency_ms") or {}).get("p99"),
            "server_cpu_us_per_delivery": cpu_us,
        }
    procs.stop(node)
    procs.stop(redis)
    return result


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--wsrouter", required=True)
    ap.add_argument("--baseline")
    ap.add_argument("--floor", default=None)
    ap.add_argument("--sessions", type=int, default=10000)
    ap.add_argument("--rate", type=int, default=20000)
    ap.add_argument("--duration", type=float, default=10)
    ap.add_argument("--json")
    ap.add_argument("--via", choices=("redis", "http"), default="redis")
    ap.add_argument("--history-size", type=int, default=0)
    ap.add_argument("--mode", choices=("user", "channel"), default="user")
    ap.add_argument("--write-delay")
    ap.add_argument("--no-max", action="store_true")
    args = ap.parse_args()
    procs = Procs()
    out = {"method": __doc__.split("\n\n")[2].strip(), "sessions": args.sessions,
           "via": args.via, "history_size": args.history_size, "mode": args.mode,
           "write_delay": args.write_delay, "rate": args.rate,
           "loadavg_start": open("/proc/loadavg").read().split()[:3]}
    try:
        out["this"] = run_server(procs, args.wsrouter, args.wsrouter, args, "t")
        if args.baseline:
            out["baseline"] = run_server(procs, args.baseline, args.wsrouter, args, "b")
        if args.floor:
            f = subprocess.run([args.floor, str(args.sessions), "10", "5"], capture_output=True,
                               text=True, timeout=120)
            out["floor"] = json.loads(f.stdout)
            floor_us = out["floor"]["writer_cpu_us_per_delivery"]
            for key in ("this", "baseline"):
                for mode in ("paced", "max"):
                    r = out.get(key, {}).get(mode)
                    if r and r.get("server_cpu_us_per_delivery"):
                        r["x_floor"] = round(r["server_cpu_us_per_delivery"] / floor_us, 2)
        if args.baseline and not args.no_max:
            a = out["this"]["max"].get("delivered_per_s") or 0
            b = out["baseline"]["max"].get("delivered_per_s") or 0
            out["max_delivered_vs_baseline"] = round(a / b, 2) if b else None
    finally:
        procs.stop_all()
    out["loadavg_end"] = open("/proc/loadavg").read().split()[:3]
    text = json.dumps(out, indent=1)
    if args.json:
        open(args.json, "w").write(text)
    print(text)


if __name__ == "__main__":
    sys.exit(main())
