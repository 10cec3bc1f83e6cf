#!/usr/bin/python3
"""recover_storm — N wsrouter.v1 sessions reconnect at once, each having
missed M publications: how long until all have recovered, and what Redis
does meanwhile (issue 10's benchmark).

usage: recover_storm.py --wsrouter BIN [--sessions N] [--missed M] [--procs P]
                        [--history on|off] [--json OUT]

Method. One node (`serve --workers 2`, in-process bridge, history size 100)
and a fresh redis-server on free loopback ports. P client processes (Python
websockets 10.4 from Debian, asyncio, one event loop each; /usr/bin/python3)
hold N/P sessions of distinct users each, bound to source addresses
127.0.0.2.. so ephemeral ports do not run out:
  1. every session connects with `wsrouter.v1`, says hello and keeps its
     topic's position (epoch, offset) after one publication;
  2. every session closes; M publications per user are made through
     `scripts/redis/publish.lua` (EVALSHA, pipelined, what a backend does);
  3. every session reconnects at once (no pacing) with `recover`; a session
     has recovered when its welcome says recovered:true and its M missed
     publications arrived in order with contiguous offsets.
Reported: wall time from the start of phase 3 until the last session has
recovered, per-session recovery time percentiles, sessions that did not
recover, and Redis' commands/s over phase 3 (INFO commandstats delta). The
client processes share the 2 cores with the node and Redis: the time is an
upper bound of the server's.
"""

import argparse
import asyncio
import json
import multiprocessing
import os
import re
import resource
import signal
import socket
import subprocess
import sys
import tempfile
import time

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "..",
                                "tests"))
import wsr_e2e as e  # noqa: E402

SECRET = "storm-secret-0123456789abcdef0123456789abcdef"
HERE = os.path.dirname(os.path.abspath(__file__))
PUBLISH_LUA = os.path.join(HERE, "..", "redis", "publish.lua")


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def resp(*args):
    out = b"*%d\r\n" % len(args)
    for a in args:
        a = a if isinstance(a, bytes) else str(a).encode()
        out += b"$%d\r\n%s\r\n" % (len(a), a)
    return out


def redis_call(port, *args):
    with socket.create_connection(("127.0.0.1", port), timeout=30) as s:
        s.sendall(resp(*args))
        f = s.makefile("rb")
        return _read(f)


def _read(f):
    line = f.readline()
    kind, rest = line[:1], line[1:-2]
    if kind == b"$":
        n = int(rest)
        return None if n < 0 else f.read(n + 2)[:-2]
    if kind == b"*":
        return [_read(f) for _ in range(int(rest))]
    if kind == b":":
        return int(rest)
    return rest


def redis_pipeline(port, commands):
    with socket.create_connection(("127.0.0.1", port), timeout=60) as s:
        f = s.makefile("rb")
        for i in range(0, len(commands), 1000):
            chunk = commands[i:i + 1000]
            s.sendall(b"".join(resp(*c) for c in chunk))
            for _ in chunk:
                r = _read(f)
                if isinstance(r, bytes) and r.startswith(b"ERR"):
                    raise SystemExit("redis: %r" % r)


def commands_processed(port):
    info = redis_call(port, "INFO", "stats").decode()
    return int(re.search(r"total_commands_processed:(\d+)", info).group(1))


def client_proc(index, users, port, missed, q_ready, go_close, go_back, q_done):
    resource.setrlimit(resource.RLIMIT_NOFILE, (resource.getrlimit(resource.RLIMIT_NOFILE)[1],) * 2)
    src = "127.0.0.%d" % (2 + index % 250)

    async def one_open(user):
        tok = e.mint(SECRET, user, ttl=3600)
        ws = await e.connect("ws://127.0.0.1:%d/ws?token=%s" % (port, tok),
                             subprotocols=["wsrouter.v1"], local_addr=(src, 0),
                             open_timeout=60, timeout=60)
        await ws.send('{"type":"hello"}')
        w = json.loads(await asyncio.wait_for(ws.recv(), 60))
        return ws, w

    async def run():
        sem = asyncio.Semaphore(200)
        conns = {}

        async def opener(u):
            async with sem:
                conns[u] = await one_open(u)
        await asyncio.gather(*(opener(u) for u in users))
        q_ready.put(("open", index, len(conns)))
        #  positions after one publication (made by the parent)
        positions = {}

        async def first_pub(u):
            ws, _ = conns[u]
            while True:
                m = json.loads(await asyncio.wait_for(ws.recv(), 60))
                if m.get("type") == "pub":
                    positions[u] = (m["epoch"], m["offset"])
                    return
        await asyncio.gather(*(first_pub(u) for u in users))
        await asyncio.gather(*(conns[u][0].close() for u in users))
        q_ready.put(("closed", index, len(positions)))
        while not go_back.is_set():
            await asyncio.sleep(0.01)
        t0 = time.monotonic()
        times = []
        failed = 0

        async def back(u):
            nonlocal failed
            epoch, offset = positions[u]
            tok = e.mint(SECRET, u, ttl=3600)
            try:
                ws = await e.connect("ws://127.0.0.1:%d/ws?token=%s" % (port, tok),
                                     subprotocols=["wsrouter.v1"], local_addr=(src, 0),
                                     open_timeout=120, timeout=120)
                await ws.send(json.dumps({"type": "hello", "recover": {
                    "user:" + u: {"epoch": epoch, "offset": offset}}}))
                w = json.loads(await asyncio.wait_for(ws.recv(), 120))
                ok = w.get("topics", {}).get("user:" + u, {}).get("recovered") is True
                want = offset + 1
                got = 0
                while ok and got < missed:
                    m = json.loads(await asyncio.wait_for(ws.recv(), 120))
                    if m.get("type") == "pub":
                        ok = m.get("offset") == want
                        want += 1
                        got += 1
                if ok:
                    times.append(time.monotonic() - t0)
                else:
                    failed += 1
                await ws.close()
            except Exception:
                failed += 1
        await asyncio.gather(*(back(u) for u in users))
        q_done.put((index, times, failed))

    asyncio.run(run())


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--wsrouter", required=True)
    ap.add_argument("--sessions", type=int, default=10000)
    ap.add_argument("--missed", type=int, default=10)
    ap.add_argument("--procs", type=int, default=4)
    ap.add_argument("--json")
    args = ap.parse_args()
    rport = free_port()
    tmp = tempfile.mkdtemp(prefix="storm-")
    procs = []
    redis = subprocess.Popen(["redis-server", "--port", str(rport), "--bind", "127.0.0.1",
                              "--save", "", "--appendonly", "no", "--dir", tmp],
                             stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    procs.append(redis)
    node = None
    try:
        for _ in range(100):
            try:
                socket.create_connection(("127.0.0.1", rport), timeout=0.2).close()
                break
            except OSError:
                time.sleep(0.05)
        node = subprocess.Popen([args.wsrouter, "serve", "--port", "0", "--bind", "127.0.0.1",
                                 "--jwt-secret", SECRET, "--workers", "2", "--redis-url",
                                 "redis://127.0.0.1:%d" % rport, "--history-size", "100",
                                 "--rate-messages", "0", "--max-per-ip", "0",
                                 "--handshake-rate", "0", "--max-pending-per-ip", "0"],
                                stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
        procs.append(node)
        port = None
        while port is None:
            line = node.stdout.readline()
            if not line:
                raise SystemExit("node did not start")
            m = re.search(r"ws://[^:/\s]+:(\d+)/ws", line)
            port = int(m.group(1)) if m else None
        users = ["st%d" % i for i in range(args.sessions)]
        sha = redis_call(rport, "SCRIPT", "LOAD", open(PUBLISH_LUA, "rb").read()).decode()
        q_ready, q_done = multiprocessing.Queue(), multiprocessing.Queue()
        go_close, go_back = multiprocessing.Event(), multiprocessing.Event()
        shares = [users[i::args.procs] for i in range(args.procs)]
        clients = [multiprocessing.Process(target=client_proc,
                                           args=(i, shares[i], port, args.missed, q_ready,
                                                 go_close, go_back, q_done))
                   for i in range(args.procs)]
        for c in clients:
            c.start()
        t_open = time.monotonic()
        for _ in clients:
            q_ready.get(timeout=600)
        opened = time.monotonic() - t_open
        time.sleep(1.0)                 # subscriptions settle
        redis_pipeline(rport, [("EVALSHA", sha, 1, "ws:" + u, "first") for u in users])
        for _ in clients:
            q_ready.get(timeout=600)
        redis_pipeline(rport, [("EVALSHA", sha, 1, "ws:" + u, "missed-%d" % k)
                               for k in range(args.missed) for u in users])
        c0 = commands_processed(rport)
        t0 = time.monotonic()
        go_back.set()
        times, failed = [], 0
        for _ in clients:
            _, t, f = q_done.get(timeout=900)
            times += t
            failed += f
        wall = time.monotonic() - t0
        c1 = commands_processed(rport)
        for c in clients:
            c.join(30)
        times.sort()

        def pct(p):
            return round(times[min(len(times) - 1, int(p * len(times)))], 3) if times else None
        out = {
            "method": __doc__.split("\n\n")[2].strip(), "sessions": args.sessions,
            "missed_each": args.missed, "client_procs": args.procs,
            "open_s": round(opened, 2), "recovered": len(times), "not_recovered": failed,
            "all_recovered_s": round(wall, 2), "recovery_s_p50": pct(0.5),
            "recovery_s_p99": pct(0.99), "recovery_s_max": times[-1] if times else None,
            "redis_commands": c1 - c0, "redis_commands_per_s": round((c1 - c0) / wall),
        }
        text = json.dumps(out, indent=1)
        if args.json:
            open(args.json, "w").write(text)
        print(text)
    finally:
        for p in reversed(procs):
            if p.poll() is None:
                p.send_signal(signal.SIGTERM)
                try:
                    p.wait(10)
                except subprocess.TimeoutExpired:
                    p.kill()


if __name__ == "__main__":
    main()
