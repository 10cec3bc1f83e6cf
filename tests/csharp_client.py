#!/usr/bin/python3
"""csharp_client — clients/csharp (WsrouterClient) under Mono against a real
node and redis-server started here, on free loopback ports.

The library and tests/csharp/ClientAgent.cs are compiled with `mcs`; the
agent runs under `mono`, its main thread a SynchronizationContext loop
standing in for Unity's, and reports every event as a JSON line (with
whether it ran on the main thread). This script drives it:
- raw mode receives a publish; a send gets the HTTP backend's reply;
- v1 receives publications with epoch and offset; send → reply;
- the node is killed (SIGKILL) and restarted while 500 messages are
  published through scripts/redis/publish.lua: all arrive exactly once, in
  order, with recovered:true;
- the TCP connection is cut (a proxy here drops it and refuses new ones)
  while 500 are published through POST /api/publish: the same;
- the token runs out: close 1008 "token expired", GetToken("expired"), the
  client reconnects and recovers what was published meanwhile;
- a v1 refresh before the expiry keeps the session (SKIP while the server
  answers "refresh is not available");
- a bad token: Error with close code 1008, Fatal, state Closed, no endless
  reconnect (one retry with a token from GetToken, then stop).
Exit 77 when mcs, mono or redis-server is missing."""

import base64
import http.server
import json
import os
import queue
import select
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)
import wsr_e2e as e  # noqa: E402
import wsr_procs as procs  # noqa: E402

ROOT = os.path.dirname(HERE)
PUBLISH_LUA = os.path.join(ROOT, "scripts", "redis", "publish.lua")
HISTORY = 2000
FAST = {"base_ms": 50, "max_ms": 500}


class SkipCase(Exception):
    pass


# --------------------------------------------------------------------------
#  The Mono agent

class Agent:
    def __init__(self, exe):
        self.proc = subprocess.Popen(["mono", "--debug", exe], stdin=subprocess.PIPE,
                                     stdout=subprocess.PIPE, stderr=subprocess.PIPE)
        self.events = []
        self.lock = threading.Lock()
        self.tokens = {}            # name → fn(reason) → token, for token_request
        self.stderr = []
        threading.Thread(target=self._read, daemon=True).start()
        threading.Thread(target=self._read_err, daemon=True).start()
        self.wait(lambda ev: ev.get("ev") == "ready", 30, "agent ready", name=None)

    def _read(self):
        for raw in iter(self.proc.stdout.readline, b""):
            try:
                ev = json.loads(raw)
            except ValueError:
                ev = {"ev": "garbage", "line": raw.decode("utf-8", "replace")}
            with self.lock:
                self.events.append(ev)
            if ev.get("ev") == "token_request":
                fn = self.tokens.get(ev["name"])
                if fn:
                    self.cmd(cmd="token", name=ev["name"], token=fn(ev["reason"]))

    def _read_err(self):
        for raw in iter(self.proc.stderr.readline, b""):
            self.stderr.append(raw.decode("utf-8", "replace"))

    def cmd(self, **kw):
        self.proc.stdin.write((json.dumps(kw) + "\n").encode())
        self.proc.stdin.flush()

    def of(self, name, ev=None):
        with self.lock:
            return [x for x in self.events if x.get("name") == name
                    and (ev is None or x.get("ev") == ev)]

    def wait(self, pred, timeout, what, name):
        deadline = time.monotonic() + timeout
        while True:
            with self.lock:
                evs = [x for x in self.events if name is None or x.get("name") == name]
            if any(pred(x) for x in evs):
                return
            if self.proc.poll() is not None:
                raise e.E2EError("%s: the agent exited (%s): %s" % (what, self.proc.returncode,
                                                                    "".join(self.stderr)[-2000:]))
            if time.monotonic() > deadline:
                tail = [x for x in evs if x.get("ev") != "message"][-12:]
                raise e.E2EError("%s: not within %.0f s; %d messages; last events %s"
                                 % (what, timeout, sum(1 for x in evs if x.get("ev") == "message"),
                                    json.dumps(tail)[:1500]))
            time.sleep(0.05)

    def wait_count(self, name, ev, n, timeout, what):
        self.wait(lambda x: len(self.of(name, ev)) >= n, timeout, what, name)

    def state(self, name):
        states = self.of(name, "state")
        return states[-1]["state"] if states else None

    def stop(self):
        try:
            self.cmd(cmd="quit")
            self.proc.wait(5)
        except Exception:
            pass
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(5)


def not_on_main(agent):
    """Events of the client not on the main thread (GetToken itself is called
    on the client's background task, as documented: token_request is the
    agent's own line)."""
    return [x for x in agent.events if x.get("name") and not x.get("main")
            and x.get("ev") != "token_request"]


def expect_sequence(agent, name, topic, prefix, n):
    got = [x for x in agent.of(name, "message") if x.get("topic") == topic]
    bad = []
    if len(got) != n:
        bad.append("expected %d messages on %s, got %d" % (n, topic, len(got)))
    for i, m in enumerate(got[:n]):
        if m["data"] != "%s%d" % (prefix, i) or m["offset"] != i + 1:
            bad.append("#%d: expected %s%d at offset %d, got %r at %r"
                       % (i, prefix, i, i + 1, m["data"], m["offset"]))
            if len(bad) > 5:
                break
    if len({m["data"] for m in got}) != len(got):
        bad.append("duplicates")
    e.expect(not bad, "; ".join(bad))


# --------------------------------------------------------------------------
#  Backends: an HTTP upstream that echoes, a TCP proxy that can cut

class Echo(http.server.BaseHTTPRequestHandler):
    bodies = []

    def do_POST(self):
        body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
        Echo.bodies.append(body)
        out = b"echo:%d" % len(body)
        self.send_response(200)
        self.send_header("Content-Type", "text/plain")
        self.send_header("Content-Length", str(len(out)))
        self.end_headers()
        self.wfile.write(out)

    def log_message(self, *args):
        pass


class Proxy:
    def __init__(self, target_port):
        self.target = target_port
        self.sock = socket.socket()
        self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self.sock.bind(("127.0.0.1", 0))
        self.sock.listen(64)
        self.port = self.sock.getsockname()[1]
        self.refusing = False
        self.conns = []
        self.lock = threading.Lock()
        self.closed = False
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self):
        while not self.closed:
            try:
                c, _ = self.sock.accept()
            except OSError:
                return
            if self.refusing:
                c.close()
                continue
            try:
                u = socket.create_connection(("127.0.0.1", self.target), timeout=5)
            except OSError:
                c.close()
                continue
            with self.lock:
                self.conns += [c, u]
            threading.Thread(target=self._pump, args=(c, u), daemon=True).start()

    def _pump(self, a, b):
        try:
            while True:
                r, _, _ = select.select([a, b], [], [], 1.0)
                for s in r:
                    data = s.recv(65536)
                    if not data:
                        raise OSError("eof")
                    (b if s is a else a).sendall(data)
        except (OSError, ValueError):
            pass
        for s in (a, b):
            try:
                s.close()
            except OSError:
                pass

    def cut(self):
        self.refusing = True
        with self.lock:
            for s in self.conns:
                try:
                    s.shutdown(socket.SHUT_RDWR)
                except OSError:
                    pass
                s.close()
            self.conns = []

    def restore(self):
        self.refusing = False

    def close(self):
        self.closed = True
        self.cut()
        self.sock.close()


def redis_publish_many(port, channel, payloads):
    """EVALSHA publish.lua for each payload, pipelined through redis-cli --pipe."""
    cli = shutil.which("redis-cli") or "/usr/bin/redis-cli"
    with open(PUBLISH_LUA) as f:
        script = f.read()
    sha = subprocess.run([cli, "-p", str(port), "SCRIPT", "LOAD", script], capture_output=True,
                         text=True, timeout=10, check=True).stdout.strip()

    def resp(*args):
        out = b"*%d\r\n" % len(args)
        for a in args:
            a = a if isinstance(a, bytes) else str(a).encode()
            out += b"$%d\r\n%s\r\n" % (len(a), a)
        return out
    data = b"".join(resp("EVALSHA", sha, 1, channel, p, HISTORY) for p in payloads)
    r = subprocess.run([cli, "-p", str(port), "--pipe"], input=data, capture_output=True,
                       timeout=30)
    out = r.stdout.decode()
    e.expect(r.returncode == 0 and "errors: 0" in out and "replies: %d" % len(payloads) in out,
             "redis-cli --pipe: %s %s" % (out, r.stderr.decode()))


# --------------------------------------------------------------------------

async def body(suite):
    e.require("mcs", "mono", procs.REDIS_SERVER)
    work = tempfile.mkdtemp(prefix="csharp-client-")
    exe = os.path.join(work, "agent.exe")
    sources = [os.path.join(ROOT, "clients", "csharp", f)
               for f in sorted(os.listdir(os.path.join(ROOT, "clients", "csharp")))
               if f.endswith(".cs")]
    r = subprocess.run(["mcs", "-target:library", "-out:" + os.path.join(work, "Wsrouter.dll"),
                        "-r:System.dll", "-warn:4", "-warnaserror"] + sources,
                       capture_output=True, text=True, timeout=120)
    e.expect(r.returncode == 0, "mcs (library): %s%s" % (r.stdout, r.stderr))
    r = subprocess.run(["mcs", "-debug", "-out:" + exe, "-r:System.dll", "-warn:4", "-warnaserror"]
                       + sources + [os.path.join(HERE, "csharp", "ClientAgent.cs")],
                       capture_output=True, text=True, timeout=120)
    e.expect(r.returncode == 0, "mcs (agent): %s%s" % (r.stdout, r.stderr))

    redis = procs.RedisProc().start()
    echo = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Echo)
    threading.Thread(target=echo.serve_forever, daemon=True).start()
    node_args = ["--redis-url", redis.url, "--history-size", str(HISTORY),
                 "--upstream-url", "http://127.0.0.1:%d/up" % echo.server_address[1]]
    node = procs.start_node(extra_args=node_args)
    secret, api_key, port = node.secret, node.api_key, node.port
    proxy = Proxy(port)
    agent = Agent(exe)
    direct = "ws://127.0.0.1:%d/ws" % port
    proxied = "ws://127.0.0.1:%d/ws" % proxy.port
    publisher = e.Publisher(port, api_key)

    def publish(**kw):
        res = publisher.post(kw)
        e.expect(200 <= res.status < 300, "publish %r: %r" % (kw, res))

    def mint(sub, **kw):
        return e.mint(secret, sub, **kw)

    def run(name, fn, timeout=90):
        try:
            fn()
        except SkipCase as why:
            suite.skip(name, str(why))
        except e.E2EError as ex:
            suite.fail(name, str(ex))
        except Exception as ex:
            import traceback
            suite.fail(name, "%s: %s\n%s" % (type(ex).__name__, ex, traceback.format_exc()))
        else:
            suite.ok(name)

    try:
        def raw_mode():
            agent.cmd(cmd="new", name="raw", url=direct, protocol="raw", token=mint("r1"), **FAST)
            agent.wait(lambda x: x.get("ev") == "state" and x["state"] == "Connected", 10,
                       "raw connected", "raw")
            time.sleep(0.2)
            publish(user="r1", data="hello raw")
            agent.wait_count("raw", "message", 1, 10, "raw publish")
            m = agent.of("raw", "message")[0]
            e.expect(m["data"] == "hello raw" and m["topic"] is None and not m["binary"],
                     "raw message %r" % m)
            agent.cmd(cmd="send", name="raw", text="up raw")
            agent.wait_count("raw", "message", 2, 10, "raw reply")
            e.expect(agent.of("raw", "message")[1]["data"].startswith("echo:"),
                     "raw reply %r" % agent.of("raw", "message")[1])
            e.expect(any(b"up raw" in b for b in Echo.bodies), "upstream bodies %r" % Echo.bodies)
            agent.cmd(cmd="close", name="raw")
        run("raw mode receives a publish; send gets the reply", raw_mode)

        def v1_offsets():
            agent.cmd(cmd="new", name="v1", url=direct, token=mint("c1", channels=["lobby"]), **FAST)
            agent.wait_count("v1", "welcome", 1, 10, "v1 welcome")
            w = agent.of("v1", "welcome")[0]
            e.expect(set(w["topics"]) == {"user:c1", "channel:lobby"} and w["session"].isdigit(),
                     "welcome %r" % w)
            for i in range(3):
                publish(user="c1", data="a%d" % i)
            publish(channel="lobby", data={"hp": 3})
            agent.wait_count("v1", "message", 4, 10, "v1 publications")
            expect_sequence(agent, "v1", "user:c1", "a", 3)
            got = agent.of("v1", "message")
            e.expect(all(m["epoch"] == w["topics"][m["topic"]]["epoch"] for m in got),
                     "epochs %r vs welcome %r" % (got, w))
            lobby = [m for m in got if m["topic"] == "channel:lobby"]
            e.expect(lobby and lobby[0]["data"] == '{"hp":3}' and lobby[0]["offset"] == 1,
                     "channel publication %r" % lobby)
            agent.cmd(cmd="send", name="v1", text="move up")
            agent.wait_count("v1", "reply", 1, 10, "v1 reply")
            e.expect(agent.of("v1", "reply")[0]["data"].startswith("echo:"), "reply")
            agent.cmd(cmd="close", name="v1")
        run("v1 receives offsets; send gets the reply", v1_offsets)

        def restart():
            nonlocal node
            agent.cmd(cmd="new", name="rs", url=direct, token=mint("c2"), **FAST)
            agent.wait_count("rs", "welcome", 1, 10, "welcome")
            for i in range(10):
                publish(user="c2", data="m%d" % i)
            agent.wait_count("rs", "message", 10, 10, "first 10")
            node.signal(signal.SIGKILL)
            node.proc.wait(5)
            agent.wait_count("rs", "closed", 1, 10, "the client sees the node gone")
            redis_publish_many(redis.port, "ws:c2", ["m%d" % i for i in range(10, 510)])
            node = procs.start_node(secret=secret, api_key=api_key,
                                   extra_args=node_args + ["--port", str(port)])
            e.expect(node.port == port, "restarted on %d, not %d" % (node.port, port))
            publisher.close()
            agent.wait_count("rs", "message", 510, 60, "510 messages")
            time.sleep(0.3)
            expect_sequence(agent, "rs", "user:c2", "m", 510)
            w = agent.of("rs", "welcome")[-1]
            e.expect(len(agent.of("rs", "welcome")) >= 2
                     and w["topics"]["user:c2"]["recovered"] is True, "last welcome %r" % w)
            e.expect(not agent.of("rs", "resync"), "resync %r" % agent.of("rs", "resync"))
            e.expect(any(x["state"] == "Recovering" for x in agent.of("rs", "state")), "states")
            agent.cmd(cmd="close", name="rs")
        run("node killed and restarted while 500 are published: all exactly once, in order",
            restart)

        def cut():
            agent.cmd(cmd="new", name="cut", url=proxied, token=mint("c3"), **FAST)
            agent.wait_count("cut", "welcome", 1, 10, "welcome")
            for i in range(10):
                publish(user="c3", data="c%d" % i)
            agent.wait_count("cut", "message", 10, 10, "first 10")
            proxy.cut()
            agent.wait_count("cut", "closed", 1, 10, "the client sees the cut")
            for i in range(10, 510):
                publish(user="c3", data="c%d" % i)
            e.expect(len(agent.of("cut", "message")) == 10, "messages arrived during the cut")
            proxy.restore()
            agent.wait_count("cut", "message", 510, 60, "510 messages")
            time.sleep(0.3)
            expect_sequence(agent, "cut", "user:c3", "c", 510)
            e.expect(agent.of("cut", "welcome")[-1]["topics"]["user:c3"]["recovered"] is True,
                     "welcome %r" % agent.of("cut", "welcome")[-1])
            agent.cmd(cmd="close", name="cut")
        run("TCP connection cut while 500 are published: all exactly once, in order", cut)

        def bad_token():
            bad = e.mint("not-the-secret", "c6")
            agent.cmd(cmd="new", name="bad", url=direct, token=bad, **FAST)
            agent.cmd(cmd="new", name="badraw", url=direct, protocol="raw", token=bad, **FAST)
            agent.tokens["badcb"] = lambda reason: e.mint("not-the-secret", "c6")
            agent.cmd(cmd="new", name="badcb", url=direct, token=bad, get_token=True, **FAST)
            for name in ("bad", "badraw", "badcb"):
                agent.wait(lambda x: x.get("ev") == "error" and x.get("fatal"), 10,
                           name + " fatal error", name)
                err = [x for x in agent.of(name, "error") if x.get("fatal")][0]
                e.expect(err["code"] == 1008 and err["reason"] == "bad signature",
                         "%s: %r" % (name, err))
            time.sleep(1.5)
            for name, want in (("bad", 1), ("badraw", 1), ("badcb", 2)):
                agent.cmd(cmd="close", name=name)
                agent.wait_count(name, "closed_by_agent", 1, 5, "close")
                x = agent.of(name, "closed_by_agent")[0]
                e.expect(x["connections"] == want and agent.state(name) == "Closed",
                         "%s: %d connections (expected %d), state %s"
                         % (name, x["connections"], want, agent.state(name)))
            reasons = [x["reason"] for x in agent.of("badcb", "token_request")]
            e.expect(reasons == ["rejected"], "GetToken reasons %r" % reasons)
        run("bad token: error with close code 1008, no endless reconnect", bad_token)

        #  Two clients whose token runs out in 3 s (the server closes at exp
        #  plus its leeway): one waits for the close, one refreshes before
        now = int(time.time())
        agent.tokens["ex"] = lambda reason: mint("c5")
        agent.tokens["rf"] = lambda reason: mint("c7")
        agent.cmd(cmd="new", name="ex", url=direct, token=mint("c5", ttl=63, now=now - 60),
                  get_token=True, refresh_before=-3600, **FAST)
        agent.cmd(cmd="new", name="rf", url=direct, token=mint("c7", ttl=63, now=now - 60),
                  get_token=True, refresh_before=60, **FAST)

        def expired():
            agent.wait_count("ex", "welcome", 1, 10, "welcome")
            for i in range(5):
                publish(user="c5", data="e%d" % i)
            agent.wait_count("ex", "message", 5, 10, "first 5")
            agent.wait_count("ex", "closed", 1, 45, "the expiry close")
            c = agent.of("ex", "closed")[0]
            e.expect(c["code"] == 1008 and c["reason"] == "token expired", "close %r" % c)
            for i in range(5, 10):
                publish(user="c5", data="e%d" % i)
            agent.wait_count("ex", "message", 10, 15, "recovered after the new token")
            time.sleep(0.2)
            expect_sequence(agent, "ex", "user:c5", "e", 10)
            reasons = [x["reason"] for x in agent.of("ex", "token_request")]
            e.expect(reasons == ["expired"], "GetToken reasons %r" % reasons)
            w = agent.of("ex", "welcome")
            e.expect(len(w) == 2 and w[1]["topics"]["user:c5"]["recovered"] is True,
                     "welcomes %r" % w)
            e.expect(not [x for x in agent.of("ex", "error") if x.get("fatal")], "fatal error")
            agent.cmd(cmd="close", name="ex")
        run("token expires: 1008, the refresh callback, the session goes on (recovered)", expired)

        def refresh():
            agent.wait_count("rf", "welcome", 1, 10, "welcome")
            session = agent.of("rf", "welcome")[0]["session"]
            agent.wait(lambda x: x.get("ev") in ("refreshed", "error", "closed"), 10,
                       "refreshed", "rf")
            errors = [x["message"] for x in agent.of("rf", "error")]
            if not agent.of("rf", "refreshed") and any("refresh is not available" in m
                                                       for m in errors):
                agent.cmd(cmd="close", name="rf")
                raise SkipCase('the server answers "refresh is not available" (v1 refresh not '
                               'implemented in this build: actors/wsr_session.c s_v1_refresh)')
            r = agent.of("rf", "refreshed")
            reasons = [x["reason"] for x in agent.of("rf", "token_request")]
            e.expect(r and r[0]["expires"] > time.time() + 300 and reasons == ["refresh"],
                     "refreshed %r, errors %r, GetToken reasons %r" % (r, errors, reasons))
            time.sleep(max(0.0, now + 3 + 32 - time.time()))
            e.expect(not agent.of("rf", "closed") and agent.state("rf") == "Connected",
                     "after the old expiry: closes %r" % agent.of("rf", "closed"))
            publish(user="c7", data="still")
            agent.wait_count("rf", "message", 1, 10, "publication after the refresh")
            e.expect(len(agent.of("rf", "welcome")) == 1 and
                     agent.of("rf", "welcome")[0]["session"] == session, "one session")
            agent.cmd(cmd="close", name="rf")
        run("refresh before the expiry keeps the same session", refresh)

        def main_thread():
            off = not_on_main(agent)
            e.expect(not off, "%d events not on the main thread, e.g. %r" % (len(off), off[:3]))
            bad = [x for x in agent.events if x.get("ev") in ("agent_error", "bad_command",
                                                               "garbage")]
            e.expect(not bad, "agent trouble: %r" % bad[:3])
        run("every event ran on the constructing thread's SynchronizationContext", main_thread)
    finally:
        agent.stop()
        proxy.close()
        publisher.close()
        echo.shutdown()
        shutil.rmtree(work, ignore_errors=True)
        procs.stop_everything()


if __name__ == "__main__":
    e.main("csharp_client", body)
