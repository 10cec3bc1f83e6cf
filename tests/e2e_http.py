#!/usr/bin/python3
"""e2e_http — the HTTP side of the port: /healthz, /readyz, /metrics, and the
publish API's status codes (401 / 400 / 404 / 2xx)."""

import os
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import http.client  # noqa: E402
import json  # noqa: E402
import re  # noqa: E402

import wsr_e2e as e  # noqa: E402

REQUIRED = ["wsrouter_sessions_open",
            'wsrouter_handshakes_total{result="ok"}',
            'wsrouter_handshakes_total{result="token_expired"}',
            "wsrouter_messages_in_total",
            "wsrouter_messages_out_total"]


async def body(suite):
    srv = e.start_server()
    try:
        await run_cases(suite, srv)
    finally:
        srv.stop()
    await suite.case("configuration from environment variables", env_config)


def post(srv, body, auth="default", content_type="application/json"):
    headers = {"Content-Type": content_type}
    if auth == "default":
        headers["Authorization"] = "apikey " + srv.api_key
    elif auth is not None:
        headers["Authorization"] = auth
    if isinstance(body, (dict, list)):
        body = json.dumps(body).encode()
    elif isinstance(body, str):
        body = body.encode()
    return srv.http("POST", "/api/publish", body=body, headers=headers)


def expect_status(res, status, what):
    if isinstance(status, range):
        ok = res.status in status
        want = "2xx"
    else:
        ok = res.status == status
        want = str(status)
    e.expect(ok, "%s: expected HTTP %s, got %r" % (what, want, res))


async def run_cases(suite, srv):

    async def healthz():
        res = srv.http("GET", "/healthz")
        expect_status(res, 200, "GET /healthz")

    async def readyz():
        res = srv.http("GET", "/readyz")
        expect_status(res, 200, "GET /readyz")

    async def metrics_format():
        res = srv.http("GET", "/metrics")
        expect_status(res, 200, "GET /metrics")
        ctype = res.headers.get("content-type", "")
        e.expect(ctype.startswith("text/plain"),
                 "GET /metrics: expected Content-Type text/plain..., got %r" % ctype)
        text = res.text()
        values = e.parse_metrics(text)
        for key in REQUIRED:
            e.expect(key in values, "/metrics lacks %s; got:\n%s" % (key, text[:1500]))
        for key, v in values.items():
            e.expect(isinstance(v, int) and v >= 0, "/metrics %s = %r, expected an integer "
                     ">= 0" % (key, v))
        types = {}
        for line in text.splitlines():
            m = re.match(r"# TYPE (\S+) (\S+)$", line)
            if m:
                e.expect(m.group(1) not in types, "/metrics: two TYPE lines for %s" % m.group(1))
                types[m.group(1)] = m.group(2)
        for key in values:
            name = key.split("{")[0]
            e.expect(name in types, "/metrics: no # TYPE line for %s" % name)
            e.expect(types[name] in ("counter", "gauge"), "/metrics: TYPE of %s is %r"
                     % (name, types[name]))
        e.expect_eq(types.get("wsrouter_sessions_open"), "gauge", "TYPE wsrouter_sessions_open")
        e.expect_eq(types.get("wsrouter_messages_out_total"), "counter",
                    "TYPE wsrouter_messages_out_total")

    async def metrics_track_sessions():
        e.expect_eq(await e.settle(srv, 0), 0, "sessions_open with no client")
        a = await e.connect(srv.ws_url(srv.mint("m1")))
        b = await e.connect(srv.ws_url(srv.mint("m1")))
        try:
            e.expect_eq(await e.settle(srv, 2), 2, "sessions_open with two clients")
            before = srv.metrics()
            srv.publish(user="m1", data="count")
            e.expect_eq(await e.recv(a), "count", "first session")
            e.expect_eq(await e.recv(b), "count", "second session")
            await a.send("in")
            got = await e.wait_until(
                lambda: (lambda m: m["wsrouter_messages_in_total"]
                         - before["wsrouter_messages_in_total"] == 1
                         and m["wsrouter_messages_out_total"]
                         - before["wsrouter_messages_out_total"] == 2)(srv.metrics()), 3.0)
            after = srv.metrics()
            e.expect(got, "after 1 client message and 1 publish to 2 sessions: expected "
                     "messages_in +1 and messages_out +2, observed in +%d out +%d"
                     % (after["wsrouter_messages_in_total"] - before["wsrouter_messages_in_total"],
                        after["wsrouter_messages_out_total"]
                        - before["wsrouter_messages_out_total"]))
        finally:
            await e.close_all(a, b)
        e.expect_eq(await e.settle(srv, 0), 0, "sessions_open after both clients closed")

    async def unauthorized():
        ws = await e.connect(srv.ws_url(srv.mint("victim")))
        try:
            await e.settle(srv, 1)
            good = {"user": "victim", "data": "forged"}
            cases = [(None, "no Authorization header"),
                     ("apikey " + srv.api_key + "x", "key with an extra character"),
                     ("apikey " + srv.api_key[:-1], "key missing its last character"),
                     ("apikey ", "empty key"),
                     ("apikey wrong-key", "wrong key"),
                     ("apikey " + srv.api_key.upper(), "key in the wrong case")]
            for auth, what in cases:
                expect_status(post(srv, good, auth=auth), 401, what)
            await e.expect_silence(ws, 0.3, "victim after refused publishes")
            #  and the right key still works
            expect_status(post(srv, good), range(200, 300), "right key")
            e.expect_eq(await e.recv(ws), "forged", "delivered with the right key")
        finally:
            await e.close_all(ws)

    async def bad_request():
        cases = [("{not json", "malformed JSON"),
                 ("", "empty body"),
                 ('{"user":"u1","data":"x"', "truncated JSON"),
                 ({"data": "x"}, "neither user nor channel"),
                 ({"user": "u 1", "data": "x"}, "user 'u 1'"),
                 ({"user": "u*", "data": "x"}, "user 'u*'"),
                 ({"user": "", "data": "x"}, "empty user"),
                 ({"user": "u>", "data": "x"}, "user 'u>'"),
                 ({"user": "a:b", "data": "x"}, "user 'a:b'"),
                 ({"channel": "room 7", "data": "x"}, "channel 'room 7'"),
                 ({"channel": "room.*", "data": "x"}, "channel 'room.*'"),
                 ({"channel": "room/7", "data": "x"}, "channel 'room/7'")]
        for body, what in cases:
            expect_status(post(srv, body), 400, what)

    async def not_found():
        for method, path in (("GET", "/nope"), ("GET", "/api/nothing"),
                             ("POST", "/api/nothing"), ("GET", "/healthzz")):
            res = srv.http(method, path, body=b"{}" if method == "POST" else None,
                           headers={"Authorization": "apikey " + srv.api_key})
            expect_status(res, 404, "%s %s" % (method, path))

    async def publish_no_session():
        res = post(srv, {"user": "nobody-here", "data": "into the void"})
        expect_status(res, range(200, 300), "publish to a user with no session")
        res = post(srv, {"channel": "empty.channel", "data": {"x": 1}})
        expect_status(res, range(200, 300), "publish to a channel with no session")

    async def keep_alive():
        #  http.client reopens the connection if the server answered
        #  Connection: close; either way every request must be answered.
        conn = http.client.HTTPConnection("127.0.0.1", srv.port, timeout=10)
        reused = 0
        try:
            for i in range(5):
                conn.request("GET", "/healthz")
                resp = conn.getresponse()
                resp.read()
                e.expect_eq(resp.status, 200, "keep-alive request %d" % i)
                body = json.dumps({"user": "ka", "data": "x"}).encode()
                conn.request("POST", "/api/publish", body=body,
                             headers={"Authorization": "apikey " + srv.api_key,
                                      "Content-Type": "application/json"})
                resp = conn.getresponse()
                resp.read()
                e.expect(200 <= resp.status < 300, "keep-alive publish %d: HTTP %d"
                         % (i, resp.status))
                reused += 0 if resp.will_close else 1
        finally:
            conn.close()
        print("  info: %d of 5 publish responses kept the connection open" % reused, flush=True)

    await suite.case("GET /healthz → 200", healthz)
    await suite.case("GET /readyz → 200", readyz)
    await suite.case("GET /metrics → Prometheus text with required series", metrics_format)
    await suite.case("metrics track sessions and messages", metrics_track_sessions)
    await suite.case("publish without the right api key → 401, nothing delivered", unauthorized)
    await suite.case("publish bad JSON / ids → 400", bad_request)
    await suite.case("unknown paths → 404", not_found)
    await suite.case("publish to a user with no session → 2xx", publish_no_session)
    await suite.case("10 sequential requests from one HTTP client", keep_alive)


async def env_config():
    srv = e.start_server(use_env_config=True)
    try:
        expect_status(srv.http("GET", "/healthz"), 200, "GET /healthz (env config)")
        ws = await e.connect(srv.ws_url(srv.mint("envuser")))
        try:
            await e.settle(srv, 1)
            expect_status(post(srv, {"user": "envuser", "data": "from env"}), range(200, 300),
                          "publish with WEBSOCKET_API_KEY")
            e.expect_eq(await e.recv(ws), "from env", "message (JWT_SECRET_KEY token)")
        finally:
            await e.close_all(ws)
    finally:
        srv.stop()


if __name__ == "__main__":
    e.main("e2e_http", body)
