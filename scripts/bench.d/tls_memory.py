#!/usr/bin/python3
"""tls_memory — idle memory per TLS session against a plain one.

Method: one node (2 workers) with a plain port and a TLS port (self-signed
P-256 certificate made with `openssl`). Open W warm-up sessions of each kind,
then N plain sessions, read the server's VmRSS before and after (all 101s seen,
/metrics shows them open, 1 s idle); then N TLS 1.3 sessions and N TLS 1.2
sessions (Python ssl clients) the same way. RSS growth / N is the user-space
memory per idle session of each kind; the difference is what TLS adds (TLS
1.3: wsr_tlsrec's keys, the SSL object is freed after the handshake; TLS
1.2: OpenSSL's SSL object, its buffers released while idle).

usage: tls_memory.py [N]    (default 5000; WSROUTER = the binary)
"""
import os, socket, ssl, subprocess, sys, tempfile, time
sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "..", "tests"))
import wsr_e2e as e

KEY = "dGhlIHNhbXBsZSBub25jZQ=="


def rss_kib(pid):
    with open("/proc/%d/status" % pid) as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1])


def open_sessions(port, count, token, ctx=None):
    socks = []
    for _ in range(count):
        s = socket.create_connection(("127.0.0.1", port))
        if ctx:
            s = ctx.wrap_socket(s, server_hostname="127.0.0.1")
        s.sendall(("GET /ws?token=%s HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\n"
                   "Connection: Upgrade\r\nSec-WebSocket-Key: %s\r\n"
                   "Sec-WebSocket-Version: 13\r\n\r\n" % (token, KEY)).encode())
        socks.append(s)
    for s in socks:
        s.settimeout(10)
        data = b""
        while b"\r\n\r\n" not in data:
            chunk = s.recv(4096)
            assert chunk, "closed during the handshake"
            data += chunk
        assert data.startswith(b"HTTP/1.1 101"), data[:40]
    return socks


def wait_open(srv, want):
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        if srv.metrics().get("wsrouter_sessions_open", 0) >= want:
            return
        time.sleep(0.1)
    raise SystemExit("sessions did not open")


def measure(n, warm=200):
    tmp = tempfile.TemporaryDirectory()
    cert, key = os.path.join(tmp.name, "c.pem"), os.path.join(tmp.name, "k.pem")
    subprocess.run(["openssl", "req", "-x509", "-newkey", "ec", "-pkeyopt",
                    "ec_paramgen_curve:P-256", "-nodes", "-keyout", key, "-out", cert,
                    "-days", "1", "-subj", "/CN=127.0.0.1",
                    "-addext", "subjectAltName=IP:127.0.0.1"], check=True, capture_output=True)
    tls_port = e.free_port()
    srv = e.start_server(workers=2, extra_args=["--tls-cert", cert, "--tls-key", key,
                                                "--tls-port", str(tls_port),
                                                "--ping-interval", "0"])
    ctx = ssl.create_default_context(cafile=cert)
    held = []
    try:
        token = srv.mint("mem")
        pid = srv.proc.pid
        held += open_sessions(srv.port, warm, token)
        held += open_sessions(tls_port, warm, token, ctx)
        wait_open(srv, 2 * warm)
        time.sleep(1)
        r0 = rss_kib(pid)
        held += open_sessions(srv.port, n, token)
        wait_open(srv, 2 * warm + n)
        time.sleep(1)
        r1 = rss_kib(pid)
        held += open_sessions(tls_port, n, token, ctx)
        wait_open(srv, 2 * warm + 2 * n)
        time.sleep(1)
        r2 = rss_kib(pid)
        ctx12 = ssl.create_default_context(cafile=cert)
        ctx12.maximum_version = ssl.TLSVersion.TLSv1_2
        held += open_sessions(tls_port, n, token, ctx12)
        wait_open(srv, 2 * warm + 3 * n)
        time.sleep(1)
        r3 = rss_kib(pid)
        plain = (r1 - r0) * 1024 / n
        tls = (r2 - r1) * 1024 / n
        tls12 = (r3 - r2) * 1024 / n
        return plain, tls, tls12
    finally:
        for s in held:
            s.close()
        srv.stop()
        tmp.cleanup()


if __name__ == "__main__":
    n = int(sys.argv[1]) if len(sys.argv) > 1 else 5000
    plain, tls, tls12 = measure(n)
    print("sessions of each kind: %d" % n)
    print("plain:   %.0f B per idle session (RSS growth)" % plain)
    print("TLS 1.3: %.0f B per idle session (RSS growth), adds %.0f B" % (tls, tls - plain))
    print("TLS 1.2: %.0f B per idle session (RSS growth), adds %.0f B" % (tls12, tls12 - plain))
