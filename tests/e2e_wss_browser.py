#!/usr/bin/python3
"""e2e_wss_browser — a real browser against wsrouter: headless Chromium (Debian
`chromium`) driven over the DevTools protocol with Python websockets (no npm
needed). It connects over wss:// to the TLS port (self-signed certificate
made with `openssl`, trusted through --ignore-certificate-errors), negotiates
permessage-deflate as every Chromium does, receives a compressible 2 KiB
JSON broadcast, a small and an incompressible one, sends a compressible
message and a fragmented-size one back, and closes cleanly."""

import os
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import asyncio  # noqa: E402
import base64  # noqa: E402
import json  # noqa: E402
import shutil  # noqa: E402
import subprocess  # noqa: E402
import tempfile  # noqa: E402
import time  # noqa: E402

import wsr_e2e as e  # noqa: E402

try:
    import websockets  # noqa: E402
except ImportError:
    websockets = None


class Chromium:
    """Headless Chromium with a DevTools endpoint; one page, Runtime.evaluate."""

    def __init__(self):
        self.profile = tempfile.mkdtemp(prefix="wsr-chromium-")
        exe = shutil.which("chromium") or shutil.which("chromium-browser")
        self.proc = subprocess.Popen(
            [exe, "--headless=new", "--no-sandbox", "--disable-gpu", "--no-first-run",
             "--ignore-certificate-errors", "--remote-debugging-port=0",
             "--user-data-dir=" + self.profile, "about:blank"],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        self.ws = None
        self.next_id = 0

    async def start(self):
        port_file = os.path.join(self.profile, "DevToolsActivePort")
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline and not os.path.exists(port_file):
            if self.proc.poll() is not None:
                raise e.E2EError("chromium exited with %s" % self.proc.returncode)
            await asyncio.sleep(0.1)
        with open(port_file) as f:
            port = int(f.readline())
        #  The page target: from /json/list
        import http.client
        deadline = time.monotonic() + 10
        page = None
        while time.monotonic() < deadline and not page:
            conn = http.client.HTTPConnection("127.0.0.1", port, timeout=5)
            conn.request("GET", "/json/list")
            targets = json.loads(conn.getresponse().read())
            conn.close()
            page = next((t for t in targets if t.get("type") == "page"), None)
            if not page:
                await asyncio.sleep(0.1)
        e.expect(page, "no page target in chromium")
        self.ws = await websockets.connect(page["webSocketDebuggerUrl"], max_size=2 ** 24)

    async def call(self, method, **params):
        self.next_id += 1
        mine = self.next_id
        await self.ws.send(json.dumps({"id": mine, "method": method, "params": params}))
        while True:
            msg = json.loads(await self.ws.recv())
            if msg.get("id") == mine:
                if "error" in msg:
                    raise e.E2EError("%s: %s" % (method, msg["error"]))
                return msg["result"]

    async def evaluate(self, expression, timeout=20):
        res = await asyncio.wait_for(self.call("Runtime.evaluate", expression=expression,
                                               awaitPromise=True, returnByValue=True),
                                     timeout)
        if "exceptionDetails" in res:
            raise e.E2EError("page script failed: %s" % json.dumps(res["exceptionDetails"])[:500])
        return res["result"].get("value")

    async def stop(self):
        if self.ws:
            await self.ws.close()
        self.proc.terminate()
        try:
            self.proc.wait(10)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait(5)
        shutil.rmtree(self.profile, ignore_errors=True)


def make_cert(dirname):
    cert, key = os.path.join(dirname, "c.pem"), os.path.join(dirname, "k.pem")
    subprocess.run(["openssl", "req", "-x509", "-newkey", "ec", "-pkeyopt",
                    "ec_paramgen_curve:P-256", "-nodes", "-keyout", key, "-out", cert,
                    "-days", "1", "-subj", "/CN=127.0.0.1",
                    "-addext", "subjectAltName=IP:127.0.0.1"], check=True, capture_output=True,
                   timeout=30)
    return cert, key


async def body(suite):
    e.require("openssl")
    if not (shutil.which("chromium") or shutil.which("chromium-browser")):
        e.skip_suite("chromium not installed (scripts/deps test installs it)")
    if websockets is None:
        e.skip_suite("python3-websockets not installed")
    tmp = tempfile.TemporaryDirectory()
    cert, key = make_cert(tmp.name)
    tls_port = e.free_port()
    srv = e.start_server(workers=2, upstream=True, extra_args=[
        "--tls-cert", cert, "--tls-key", key, "--tls-port", str(tls_port)])
    browser = Chromium()
    try:
        await browser.start()
        await cases(suite, srv, tls_port, browser)
    finally:
        await browser.stop()
        srv.stop()
        tmp.cleanup()


async def cases(suite, srv, tls_port, browser):
    url = "wss://127.0.0.1:%d/ws?token=%s" % (tls_port, srv.mint("chrome1"))

    async def connect():
        got = await browser.evaluate("""
            new Promise((resolve, reject) => {
                window.inbox = [];
                const ws = new WebSocket(%s);
                ws.binaryType = 'arraybuffer';
                window.sock = ws;
                ws.onmessage = (ev) => window.inbox.push(
                    typeof ev.data === 'string' ? ev.data
                        : 'bin:' + btoa(String.fromCharCode(...new Uint8Array(ev.data))));
                ws.onopen = () => resolve({extensions: ws.extensions, protocol: ws.protocol});
                ws.onerror = () => reject(new Error('websocket error'));
                ws.onclose = (ev) => { window.closed = ev.code; };
            })""" % json.dumps(url))
        e.expect("permessage-deflate" in got["extensions"],
                 "Chromium negotiated permessage-deflate over wss: %r" % got)
    await suite.case("Chromium opens wss:// with permessage-deflate", connect)

    async def downstream():
        doc = json.dumps({"players": [{"id": i, "name": "p%d" % i, "x": i * 3}
                                      for i in range(80)]})
        noise = os.urandom(3000)
        before = srv.metrics().get("wsrouter_deflate_messages_total", 0)
        srv.publish(user="chrome1", data=doc)
        srv.publish(user="chrome1", data="tiny")
        srv.publish(user="chrome1", data_base64=base64.b64encode(noise).decode())
        got = await browser.evaluate("""
            new Promise((resolve) => {
                const t0 = Date.now();
                const poll = () => (window.inbox.length >= 3 || Date.now() - t0 > 5000)
                    ? resolve(window.inbox.splice(0)) : setTimeout(poll, 20);
                poll();
            })""")
        e.expect_eq(len(got), 3, "messages in the browser")
        e.expect_eq(got[0], doc, "compressible JSON, inflated by Chromium")
        e.expect_eq(got[1], "tiny", "small message (sent plain)")
        e.expect_eq(got[2], "bin:" + base64.b64encode(noise).decode(), "incompressible binary")
        after = srv.metrics().get("wsrouter_deflate_messages_total", 0)
        e.expect_eq(after - before, 1, "compressions (only the JSON one is worth it)")
    await suite.case("Chromium receives compressed, small and incompressible messages",
                     downstream)

    async def upstream():
        before = srv.metrics().get("wsrouter_bytes_in_total", 0)
        text = json.dumps({"say": "hello " * 2000})
        await browser.evaluate("window.sock.send(%s); window.sock.send('x'.repeat(70000)); 1"
                               % json.dumps(text))
        want = before + len(text) + 70000
        deadline = time.monotonic() + 5
        while time.monotonic() < deadline and srv.metrics().get("wsrouter_bytes_in_total", 0) < want:
            await asyncio.sleep(0.05)
        e.expect_eq(srv.metrics().get("wsrouter_bytes_in_total", 0) - before, len(text) + 70000,
                    "bytes inflated from Chromium's compressed messages")
        e.expect_eq(srv.metrics().get("wsrouter_closed_protocol_total", 0), 0,
                    "protocol closes")
    await suite.case("Chromium sends compressed messages upstream", upstream)

    async def close():
        code = await browser.evaluate("""
            new Promise((resolve) => {
                window.sock.onclose = (ev) => resolve(ev.code);
                window.sock.close(1000, 'bye');
            })""")
        e.expect_eq(code, 1000, "close code seen by Chromium")
    await suite.case("Chromium closes cleanly", close)


if __name__ == "__main__":
    e.main("e2e_wss_browser", body)
