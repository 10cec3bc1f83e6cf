#!/usr/bin/python3
"""deflate_cpu — server CPU per delivery of a 2 KiB JSON broadcast, plain vs
permessage-deflate, and over TLS.

Method: one node (W workers) with a plain and a TLS port. For each mode,
N sessions join channel "room" (raw sockets; deflate sessions offer
permessage-deflate, TLS ones connect to the TLS port); M broadcasts of a
2 KiB JSON document are published to the channel through the API, paced in
batches; a selector loop in this process drains every socket. The server's
CPU (utime + stime of the whole process, /proc/PID/stat) from the first
publish until wsrouter_messages_out_total has grown by N x M, divided by
N x M, is the CPU per delivery. Each mode runs on a fresh set of sessions
(the previous set closed first).

usage: deflate_cpu.py [N] [M] [W]   (default 5000 sessions, 40 messages, 2 workers)
"""
import json, os, selectors, socket, ssl, subprocess, sys, tempfile, time
sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "..", "tests"))
import wsr_e2e as e

KEY = "dGhlIHNhbXBsZSBub25jZQ=="


def cpu_s(pid):
    with open("/proc/%d/stat" % pid) as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def connect(port, token, deflate, ctx):
    s = socket.create_connection(("127.0.0.1", port))
    if ctx:
        s = ctx.wrap_socket(s, server_hostname="127.0.0.1")
    s.sendall(("GET /ws?token=%s HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\n"
               "Connection: Upgrade\r\nSec-WebSocket-Key: %s\r\nSec-WebSocket-Version: 13\r\n"
               "%s\r\n" % (token, KEY, "Sec-WebSocket-Extensions: permessage-deflate; "
                                       "client_max_window_bits\r\n" if deflate else "")).encode())
    return s


def drain(sel):
    got = 0
    for key, _ in sel.select(0.01):
        try:
            while True:
                chunk = key.fileobj.recv(1 << 16)
                if not chunk:
                    break
                got += len(chunk)
        except (BlockingIOError, ssl.SSLWantReadError):
            pass
    return got


def run_mode(srv, port, n, m, deflate, ctx, doc):
    token = srv.mint("bench", channels=["room"])
    socks = [connect(port, token, deflate, ctx) for _ in range(n)]
    for s in socks:
        s.settimeout(10)
        data = b""
        while b"\r\n\r\n" not in data:
            data += s.recv(4096)
        assert data.startswith(b"HTTP/1.1 101"), data[:60]
        assert (b"permessage-deflate" in data) == deflate, data
        s.setblocking(False)
    sel = selectors.DefaultSelector()
    for s in socks:
        sel.register(s, selectors.EVENT_READ)
    got = 0
    #  Warm-up: a first broadcast reaches every session only once the
    #  workers' subscriptions are at the bridge; measure after it arrived
    out0 = srv.metrics().get("wsrouter_messages_out_total", 0)
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        srv.publish(channel="room", data="warm-up")
        time.sleep(0.2)
        got += drain(sel)
        if srv.metrics().get("wsrouter_messages_out_total", 0) - out0 >= n:
            break
    time.sleep(0.5)
    got = drain(sel) * 0
    out0 = srv.metrics().get("wsrouter_messages_out_total", 0)
    pid = srv.proc.pid
    c0 = cpu_s(pid)
    t0 = time.monotonic()
    for i in range(m):
        srv.publish(channel="room", data=doc)
        drain_until = time.monotonic() + 0.02
        while time.monotonic() < drain_until:
            for key, _ in sel.select(0.005):
                try:
                    while True:
                        chunk = key.fileobj.recv(1 << 16)
                        if not chunk:
                            break
                        got += len(chunk)
                except (BlockingIOError, ssl.SSLWantReadError):
                    pass
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        for key, _ in sel.select(0.05):
            try:
                while True:
                    chunk = key.fileobj.recv(1 << 16)
                    if not chunk:
                        break
                    got += len(chunk)
            except (BlockingIOError, ssl.SSLWantReadError):
                pass
        if srv.metrics().get("wsrouter_messages_out_total", 0) - out0 >= n * m:
            break
        time.sleep(0.2)
    c1 = cpu_s(pid)
    quiet = time.monotonic() + 0.5
    while time.monotonic() < quiet:
        for key, _ in sel.select(0.05):
            try:
                while True:
                    chunk = key.fileobj.recv(1 << 16)
                    if not chunk:
                        break
                    got += len(chunk)
                    quiet = time.monotonic() + 0.5
            except (BlockingIOError, ssl.SSLWantReadError):
                pass
    wall = time.monotonic() - t0
    delivered = srv.metrics().get("wsrouter_messages_out_total", 0) - out0
    for s in socks:
        sel.unregister(s)
        s.close()
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline and srv.metrics().get("wsrouter_sessions_open", 0):
        time.sleep(0.1)
    return delivered, (c1 - c0), got, wall


def main():
    n = int(sys.argv[1]) if len(sys.argv) > 1 else 5000
    m = int(sys.argv[2]) if len(sys.argv) > 2 else 40
    w = int(sys.argv[3]) if len(sys.argv) > 3 else 2
    tmp = tempfile.TemporaryDirectory()
    cert, key = os.path.join(tmp.name, "c.pem"), os.path.join(tmp.name, "k.pem")
    subprocess.run(["openssl", "req", "-x509", "-newkey", "ec", "-pkeyopt",
                    "ec_paramgen_curve:P-256", "-nodes", "-keyout", key, "-out", cert,
                    "-days", "1", "-subj", "/CN=127.0.0.1",
                    "-addext", "subjectAltName=IP:127.0.0.1"], check=True, capture_output=True)
    tls_port = e.free_port()
    srv = e.start_server(workers=w, extra_args=["--tls-cert", cert, "--tls-key", key,
                                                "--tls-port", str(tls_port),
                                                "--ping-interval", "0"])
    ctx = ssl.create_default_context(cafile=cert)
    print("server pid %d" % srv.proc.pid, flush=True)
    doc = json.dumps({"type": "state", "players": [
        {"id": "player-%03d" % i, "x": i * 13 % 1000, "y": i * 7 % 1000, "hp": 100 - i % 50,
         "team": "blue" if i % 2 else "red"} for i in range(40)]})[:2100]
    doc = doc[:doc.rfind("},") + 1] + "]}"
    json.loads(doc)
    print("payload %d bytes JSON; %d sessions x %d messages, %d workers" % (len(doc), n, m, w))
    try:
        time.sleep(float(os.environ.get("WSR_PAUSE", "0")))
        results = {}
        modes = os.environ.get("WSR_MODES", "plain,deflate,tls,tls+deflate").split(",")
        for name, port, deflate, c in (("plain", srv.port, False, None),
                                        ("deflate", srv.port, True, None),
                                        ("tls", tls_port, False, ctx),
                                        ("tls+deflate", tls_port, True, ctx)):
            if name not in modes:
                continue
            delivered, cpu, got, wall = run_mode(srv, port, n, m, deflate, c, doc)
            per = cpu * 1e9 / max(delivered, 1)
            results[name] = per
            print("%-12s %8d deliveries, server CPU %.2f s = %5.0f ns per delivery, "
                  "%.0f bytes per delivery on the wire (%.1f s)"
                  % (name, delivered, cpu, per, got / max(delivered, 1), wall))
        if len(results) == 4:
            print("deflate / plain: %.2fx; tls / plain: %.2fx; tls+deflate / tls: %.2fx"
                  % (results["deflate"] / results["plain"], results["tls"] / results["plain"],
                     results["tls+deflate"] / results["tls"]))
        zmodes = sum(1 for name in results if "deflate" in name)
        print("compressions: %d for %d deflate broadcasts (at most one per worker each)"
              % (srv.metrics().get("wsrouter_deflate_messages_total", 0), zmodes * m))
    finally:
        srv.stop()
        tmp.cleanup()


if __name__ == "__main__":
    main()
