#!/usr/bin/python3
"""e2e_credentials — backplane credentials end to end, and that no secret leaks.

Real redis-server / nats-server processes on free 127.0.0.1 ports, the real
wsrouter binary; every process is stopped by PID. Redis is spoken with raw
RESP, NATS with its text protocol (the helpers of e2e_bridge.py and
wsr_procs.py); certificates are made with the openssl CLI.

Cases:
  1  Redis with requirepass (redis://:PASSWORD@, percent-encoded): a PUBLISH
     on ws:u1 reaches u1's session, u1's message lands on ws:actions:u1.
  2  Redis with an ACL user (ACL SETUSER, only &ws:* channels): the same, and
     both bridge connections are logged in as that user.
  3  Redis with a wrong password: `wsrouter bridge` and a node stay up, both
     /readyz 503, refusals counted in /metrics.
  4  NATS with user and password (percent-encoded) in NATS_URL: both ways.
  5  NATS over TLS with a CA made here (tls:// + NATS_CA_FILE) and a token.
  6  A NATS URL list whose first server is down: delivery through the second.
  7  Overlapping subject templates and bad URLs: refused at start, non-zero.
  8  Redaction: every password and token used above is searched in all the
     output of every wsrouter process, /metrics, /readyz and --help; a hit fails.
Exits 77 (ctest's skip code) if redis-server, nats-server or openssl is missing.
"""

import os
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import asyncio  # noqa: E402
import json  # noqa: E402
import secrets  # noqa: E402
import shutil  # noqa: E402
import socket  # noqa: E402
import subprocess  # noqa: E402
import tempfile  # noqa: E402
import time  # noqa: E402
import urllib.parse  # noqa: E402

import msgpack  # noqa: E402

import wsr_e2e as e  # noqa: E402
import wsr_procs as p  # noqa: E402
import e2e_bridge as b  # noqa: E402

SUITE_LIMIT_S = 150.0
SKIP = 77

#  Every secret this suite hands to wsrouter (raw and as written in URLs)
SECRETS = []
#  Every wsrouter output and HTTP body collected, searched at the end
OUTPUTS = []            # (what, text)


def secret(prefix):
    """A distinctive secret with characters that need percent-encoding."""
    value = "%s-%s@:/%%!" % (prefix, secrets.token_hex(6))
    SECRETS.append(value)
    SECRETS.append(urllib.parse.quote(value, safe=""))
    return value


def token(prefix):
    value = "%s%s" % (prefix, secrets.token_hex(10))
    SECRETS.append(value)
    return value


def enc(value):
    return urllib.parse.quote(value, safe="")


def clean_environment():
    """No backplane settings leak in from the caller."""
    for name in list(os.environ):
        if name.startswith(("WEBSOCKET_", "NATS_", "JWT_")):
            del os.environ[name]


# --------------------------------------------------------------------------
#  Servers that want credentials

class AuthRedis(p.RedisProc):
    """redis-server with requirepass."""

    def __init__(self, password):
        super().__init__()
        self.password = password

    def argv(self):
        return super().argv() + ["--requirepass", self.password]

    def ping(self):
        #  Without AUTH it answers -NOAUTH: up all the same
        try:
            with socket.create_connection(("127.0.0.1", self.port), timeout=0.5) as s:
                s.sendall(b"*1\r\n$4\r\nPING\r\n")
                return s.recv(64).startswith((b"+PONG", b"-NOAUTH"))
        except OSError:
            return False


class ConfNats(p.NatsProc):
    """nats-server with a configuration file."""

    def __init__(self, conf_body, directory):
        super().__init__()
        self.conf = os.path.join(directory, "nats-%d.conf" % self.port)
        with open(self.conf, "w") as f:
            f.write("listen: 127.0.0.1:%d\n%s\n" % (self.port, conf_body))

    def argv(self):
        return [p.NATS_SERVER, "-c", self.conf]

    def ping(self):
        #  INFO comes first, before any login or TLS
        try:
            with socket.create_connection(("127.0.0.1", self.port), timeout=0.5) as s:
                return s.recv(4096).startswith(b"INFO")
        except OSError:
            return False


async def resp_auth(port, *auth):
    conn = await b.Resp.open(port)
    e.expect_eq(await conn.cmd("AUTH", *auth), "OK", "test client AUTH")
    return conn


async def nats_auth(port, user, password):
    """A NATS text-protocol client logged in with user and password."""
    conn = b.Nats(port)
    conn.reader, conn.writer = await asyncio.wait_for(
        asyncio.open_connection("127.0.0.1", port), 5)
    info = await asyncio.wait_for(conn.reader.readline(), 5)
    e.expect(info.startswith(b"INFO "), "nats: expected INFO, got %r" % info[:80])
    connect = {"verbose": False, "pedantic": False, "user": user, "pass": password}
    conn.writer.write(b"CONNECT " + json.dumps(connect).encode() + b"\r\n")
    conn.task = asyncio.ensure_future(conn._run())
    await conn.flush(5)
    return conn


def node(env, **kw):
    srv = p.start_node(env=env, **kw)
    return srv


def collect_node(srv, what):
    """Remember a node's output and its HTTP status bodies (for case 8)."""
    if srv is None:
        return
    for path in ("/metrics", "/readyz"):
        try:
            OUTPUTS.append(("%s GET %s" % (what, path), srv.http("GET", path, timeout=2).text()))
        except Exception:
            pass


def collect_node_logs(srv, what):
    if srv is not None:
        OUTPUTS.append((what + " stdout", srv.stdout_text()))
        OUTPUTS.append((what + " stderr", srv.stderr_text()))


async def delivered(srv, client, publish, what, timeout=8.0):
    """Publish probes until the client receives one: the subscription works."""
    await b.sync_probes(publish, [(client.name, [client])], timeout=timeout)
    client.mark()
    await publish(client.name, "payload-" + what)
    msg = await client.next(5.0, what + " payload")
    e.expect_eq(msg, "payload-" + what, what + ": payload delivered")


async def upstream_redis(client, rsub, what):
    """A client message arrives on ws:actions:u1 as an envelope."""
    text = "up-" + what
    deadline = time.monotonic() + 8
    await client.send(text)
    while True:
        ch, data = await rsub.message(max(0.1, deadline - time.monotonic()), what)
        if ch == "ws:actions:u1" and b.PROBE.encode() not in data:
            env = msgpack.unpackb(data, raw=False)
            e.expect_eq(env.get("u"), "u1", what + ": envelope user")
            e.expect_eq(env.get("d"), text.encode(), what + ": envelope data")
            return


# --------------------------------------------------------------------------
#  Cases

async def case_redis(suite):
    tag = "1-3 redis"
    password = secret("redisPw")
    acl_password = secret("aclPw")
    redis = AuthRedis(password).start()
    srv = srv2 = bridge = bad = rsub = admin = None
    c1 = c2 = None
    try:
        admin = await resp_auth(redis.port, password)

        async def publish(user, data):
            await admin.publish("ws:" + user, data)

        async def requirepass():
            nonlocal srv, c1, rsub
            url = "redis://:%s@127.0.0.1:%d/0" % (enc(password), redis.port)
            srv = node({"WEBSOCKET_REDIS_URL": url})
            c1 = await b.Client.connect(srv, "u1")
            await delivered(srv, c1, publish, "requirepass")
            rsub = await resp_auth(redis.port, password)
            await rsub.subscribe("ws:actions:u1")
            await upstream_redis(c1, rsub, "requirepass upstream")
            await b.wait_status(lambda: p.node_readyz(srv), 200, 5, "node GET /readyz")

        async def acl_user():
            nonlocal srv2, c2
            reply = await admin.cmd("ACL", "SETUSER", "wsrbridge", "on", ">" + acl_password,
                                    "resetchannels", "&ws:*", "-@all", "+@pubsub", "+ping",
                                    "+select")
            e.expect_eq(reply, "OK", "ACL SETUSER")
            url = "redis://wsrbridge:%s@127.0.0.1:%d" % (enc(acl_password), redis.port)
            srv2 = node({"WEBSOCKET_REDIS_URL": url})
            c2 = await b.Client.connect(srv2, "u1")
            await delivered(srv2, c2, publish, "acl")
            listing = (await admin.cmd("CLIENT", "LIST")).decode()
            users = [f for line in listing.splitlines() for f in line.split()
                     if f == "user=wsrbridge"]
            e.expect(len(users) >= 2, "CLIENT LIST: expected the bridge's subscribe and "
                     "publish connections as user wsrbridge, got %d in %r"
                     % (len(users), listing[:600]))
            await upstream_redis(c2, rsub, "acl upstream")

        async def wrong_password():
            nonlocal bad, bridge
            wrong = secret("wrongPw")
            url = "redis://:%s@127.0.0.1:%d" % (enc(wrong), redis.port)
            bridge = p.BridgeProc(e.free_port(), redis_url=url).start()
            bad = node({"WEBSOCKET_REDIS_URL": url})
            t0 = time.monotonic()
            while time.monotonic() - t0 < 2.5:
                e.expect_eq(bridge.readyz(), 503, "bridge with a wrong password: GET /readyz")
                e.expect_eq(p.node_readyz(bad), 503, "node with a wrong password: GET /readyz")
                await asyncio.sleep(0.25)
            e.expect(bridge.proc.poll() is None, "bridge exited: %s" % bridge.output()[-800:])
            e.expect(bad.proc.poll() is None, "node exited: %s" % bad.stderr_text()[-800:])
            refused = bridge.metrics().get("wsrouter_bridge_redis_refused_total", 0)
            e.expect(refused >= 2, "bridge: wsrouter_bridge_redis_refused_total %r, expected "
                     ">= 2 (it keeps retrying)" % refused)
            out = bridge.output()
            e.expect("refused AUTH" in out and "WRONGPASS" in out,
                     "bridge log: expected a 'refused AUTH ... WRONGPASS' line: %s" % out[-800:])

        await suite.case(tag + " (1): requirepass, redis://:PASSWORD@ (percent-encoded)",
                         requirepass)
        await suite.case(tag + " (2): ACL user, redis://USER:PASSWORD@, logged in as it",
                         acl_user)
        await suite.case(tag + " (3): wrong password: up, /readyz 503, refusals counted",
                         wrong_password)
    finally:
        await b.close_clients(c1, c2)
        for conn in (admin, rsub):
            if conn:
                conn.close()
        for s, what in ((srv, "node requirepass"), (srv2, "node acl"), (bad, "node wrong")):
            collect_node(s, what)
        if bridge and bridge.http_port:
            for path in ("/metrics", "/readyz"):
                try:
                    OUTPUTS.append(("bridge " + path, bridge.http("GET", path).text()))
                except Exception:
                    pass
        for proc in (srv, srv2, bad, bridge):
            if proc:
                proc.stop()
        for s, what in ((srv, "node requirepass"), (srv2, "node acl"), (bad, "node wrong")):
            collect_node_logs(s, what)
        if bridge:
            #  Without the harness's own "---- start ARGV" lines: the password
            #  is on that command line (--redis-url) on purpose
            OUTPUTS.append(("bridge output", "\n".join(
                line for line in bridge.output().splitlines()
                if not line.startswith("---- start "))))
        redis.stop()


async def case_nats(suite, certs):
    tag = "4-6 nats"
    password = secret("natsPw")
    tls_token = token("natsTok")
    srvs = []
    nats = ConfNats('authorization { user: alice, password: "%s" }' % password, certs).start()
    tls = ConfNats('authorization { token: "%s" }\ntls { cert_file: "%s/server.pem", '
                   'key_file: "%s/server.key" }' % (tls_token, certs, certs), certs).start()
    plain = p.NatsProc().start()
    nsub = None
    clients = []
    try:
        async def user_password():
            nonlocal nsub
            url = "nats://alice:%s@127.0.0.1:%d" % (enc(password), nats.port)
            srv = node({"NATS_URL": url})
            srvs.append((srv, "node nats user"))
            nsub = await nats_auth(nats.port, "alice", password)
            client = await b.Client.connect(srv, "u1")
            clients.append(client)

            async def publish(user, data):
                await nsub.publish("world.updates.user." + user, data)

            await delivered(srv, client, publish, "nats user/password")
            await nsub.subscribe("client.actions.u1", 1)
            await client.send("up-nats")
            deadline = time.monotonic() + 5
            while True:
                subject, data = await nsub.message(max(0.1, deadline - time.monotonic()),
                                                   "client message on client.actions.u1")
                if subject == "client.actions.u1" and b.PROBE.encode() not in data:
                    env = msgpack.unpackb(data, raw=False)
                    e.expect_eq(env.get("d"), b"up-nats", "client.actions.u1 envelope data")
                    break

        async def api_delivery(srv, what):
            client = await b.Client.connect(srv, "u1")
            clients.append(client)

            async def publish(user, data):
                srv.publish(user=user, data=data)

            await delivered(srv, client, publish, what)

        async def over_tls():
            url = "tls://%s@127.0.0.1:%d" % (tls_token, tls.port)
            srv = node({"NATS_URL": url, "NATS_CA_FILE": os.path.join(certs, "ca.pem")})
            srvs.append((srv, "node nats tls"))
            await api_delivery(srv, "nats tls")
            out = srv.stdout_text() + srv.stderr_text()
            e.expect("tls://***@127.0.0.1" in out, "node output: expected the NATS URL with "
                     "its token hidden (tls://***@127.0.0.1...): %s" % out[-600:])

        async def first_down():
            dead = e.free_port()
            url = "nats://127.0.0.1:%d,nats://127.0.0.1:%d" % (dead, plain.port)
            srv = node({"NATS_URL": url})
            srvs.append((srv, "node nats list"))
            await api_delivery(srv, "nats list, first server down")

        await suite.case(tag + " (4): user and password in NATS_URL (percent-encoded), "
                         "both ways", user_password)
        await suite.case(tag + " (5): tls:// with our CA (NATS_CA_FILE) and a token",
                         over_tls)
        await suite.case(tag + " (6): URL list, first server down: delivery through the "
                         "second", first_down)
    finally:
        await b.close_clients(*clients)
        if nsub:
            nsub.close()
        for srv, what in srvs:
            collect_node(srv, what)
            srv.stop()
            collect_node_logs(srv, what)
        for proc in (nats, tls, plain):
            proc.stop()


def run(args, env):
    """Run wsrouter with args and env (on top of a clean environment);
    remember its output. Returns CompletedProcess."""
    full = dict(os.environ)
    full.update(env)
    res = subprocess.run([e.binary()] + args, env=full, stdin=subprocess.DEVNULL,
                         capture_output=True, timeout=20)
    text = res.stdout.decode("utf-8", "replace") + res.stderr.decode("utf-8", "replace")
    OUTPUTS.append(("wsrouter %s" % " ".join(args[:1]), text))
    return res, text


async def case_refused(suite):
    tag = "7 refused at start"
    pw = secret("badUrlPw")
    tok = token("badUrlTok")
    base = ["--port", "0", "--bind", "127.0.0.1", "--jwt-secret", "x" * 40,
            "--api-key", "k" * 20]

    async def overlap():
        res, text = run(["serve"] + base, {
            "NATS_URL": "nats://%s@127.0.0.1:%d" % (tok, e.free_port()),
            "NATS_USER_SUBJECT": "ws.{user_id}", "NATS_CHANNEL_SUBJECT": "ws.channel.{channel}"})
        e.expect(res.returncode != 0, "serve with overlapping subjects: expected a non-zero "
                 "exit, got %d: %s" % (res.returncode, text[-500:]))
        e.expect("'ws.{user_id}'" in text and "'ws.channel.{channel}'" in text,
                 "expected both templates named in the error: %s" % text[-500:])
        res, text = run(["bridge", "--endpoint", "tcp://127.0.0.1:%d" % e.free_port()], {
            "WEBSOCKET_REDIS_URL": "redis://127.0.0.1:%d" % e.free_port(),
            "WEBSOCKET_REDIS_USER_CHANNEL": "ws.{user_id}",
            "WEBSOCKET_REDIS_ACTIONS_CHANNEL": "ws.actions.{user_id}"})
        e.expect(res.returncode != 0 and "'ws.actions.{user_id}'" in text,
                 "bridge with overlapping channels: expected a non-zero exit naming both "
                 "templates, got %d: %s" % (res.returncode, text[-500:]))

    async def bad_urls():
        for env in ({"WEBSOCKET_REDIS_URL": "redis://:%s@127.0.0.1:1/notadb" % enc(pw)},
                    {"WEBSOCKET_REDIS_URL": "rediss://:%s@127.0.0.1:1" % enc(pw)},
                    {"WEBSOCKET_REDIS_URL": "redis://%s@127.0.0.1:1" % enc(pw)},
                    {"NATS_URL": "nats://%s@127.0.0.1:1/path" % tok},
                    {"NATS_URL": "nats://u:%s@h1:1,nats://u:other@h2:2" % enc(pw)},
                    {"NATS_URL": "nats://127.0.0.1:1", "NATS_NKEY_SEED": "SU" + tok}):
            res, text = run(["serve"] + base, env)
            e.expect(res.returncode != 0, "serve with %s: expected a non-zero exit, got %d"
                     % (list(env), res.returncode))
            e.expect("could not start" in text, "serve with a bad setting: expected 'could not "
                     "start': %s" % text[-400:])

    async def help_output():
        env = {"WEBSOCKET_REDIS_URL": "redis://:%s@127.0.0.1:1" % enc(pw),
               "NATS_URL": "nats://%s@127.0.0.1:1" % tok, "NATS_NKEY_SEED": "SU" + tok}
        for args in (["serve", "--help"], ["bridge", "--help"], ["--help"]):
            res, text = run(args, env)
            e.expect("NATS_CREDS" in text or args == ["--help"],
                     "%s: expected the NATS credential settings listed" % " ".join(args))

    await suite.case(tag + ": overlapping templates refused, both named", overlap)
    await suite.case(tag + ": bad URLs and seeds refused", bad_urls)
    await suite.case(tag + ": --help with secrets in the environment", help_output)


async def case_redaction(suite):
    async def grep():
        e.expect(len(OUTPUTS) >= 20, "expected output from every process and endpoint, "
                 "collected %d" % len(OUTPUTS))
        hits = []
        for what, text in OUTPUTS:
            for value in SECRETS:
                if value and value in (text or ""):
                    hits.append("%s contains %r" % (what, value))
        e.expect(not hits, "secrets found in output: " + "; ".join(hits[:10]))
        joined = "\n".join(t or "" for _, t in OUTPUTS)
        e.expect(":***@" in joined and "//***@" in joined,
                 "expected redacted URLs (USER:***@ and ***@) in the output")
    await suite.case("8 redaction: no password or token in any output (%d secrets)"
                     % len(SECRETS), grep)


def make_certs(directory):
    """A CA and a server certificate for 127.0.0.1, with the openssl CLI."""
    script = (
        "set -e; cd '%s'; "
        "openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:prime256v1 -nodes "
        "  -keyout ca.key -out ca.pem -days 2 -subj '/CN=e2e CA'; "
        "openssl req -newkey ec -pkeyopt ec_paramgen_curve:prime256v1 -nodes "
        "  -keyout server.key -out server.csr -subj /CN=server; "
        "printf 'subjectAltName=IP:127.0.0.1\\n' > server.ext; "
        "openssl x509 -req -in server.csr -CA ca.pem -CAkey ca.key -CAcreateserial "
        "  -out server.pem -days 2 -extfile server.ext" % directory)
    res = subprocess.run(["sh", "-c", script], capture_output=True, timeout=30)
    if res.returncode != 0:
        raise e.E2EError("openssl failed: %s" % res.stderr.decode("utf-8", "replace")[-600:])


async def body(suite):
    certs = tempfile.mkdtemp(prefix="e2e-creds-")
    try:
        make_certs(certs)

        async def all_cases():
            await case_redis(suite)
            await case_nats(suite, certs)
            await case_refused(suite)
            await case_redaction(suite)

        await asyncio.wait_for(all_cases(), SUITE_LIMIT_S)
    except asyncio.TimeoutError:
        suite.fail("suite", "did not finish within %.0f s" % SUITE_LIMIT_S)
    finally:
        p.stop_everything()
        for obj in p._STARTED:
            d = getattr(obj, "dir", None)
            if d:
                shutil.rmtree(d, ignore_errors=True)
        shutil.rmtree(certs, ignore_errors=True)


if __name__ == "__main__":
    missing = [x for x in (p.REDIS_SERVER, p.NATS_SERVER) if not os.access(x, os.X_OK)]
    if not shutil.which("openssl"):
        missing.append("openssl")
    if missing:
        print("SKIP: missing %s" % ", ".join(missing), flush=True)
        sys.exit(SKIP)
    clean_environment()
    e.main("e2e_credentials", body)
