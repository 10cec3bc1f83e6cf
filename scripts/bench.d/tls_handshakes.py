#!/usr/bin/python3
"""tls_handshakes — TLS handshakes per second and server CPU per handshake.

Method: one node (1 worker) with a TLS port (self-signed P-256 certificate,
ECDHE X25519, TLS 1.3 and TLS 1.2); `openssl s_time -new` (one client
process, a full handshake per connection, no resumption) fetches /healthz
over fresh connections for T seconds. The server's CPU (utime + stime from
/proc/PID/stat) divided by the connections made is its cost per handshake;
the connection rate is bounded by the single client process, which does the
same public-key work as the server.

usage: tls_handshakes.py [seconds]   (default 5; WSROUTER = the binary)
"""
import os, re, subprocess, sys, tempfile
sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "..", "tests"))
import wsr_e2e as e


def cpu_s(pid):
    with open("/proc/%d/stat" % pid) as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def main():
    seconds = int(sys.argv[1]) if len(sys.argv) > 1 else 5
    tmp = tempfile.TemporaryDirectory()
    cert, key = os.path.join(tmp.name, "c.pem"), os.path.join(tmp.name, "k.pem")
    subprocess.run(["openssl", "req", "-x509", "-newkey", "ec", "-pkeyopt",
                    "ec_paramgen_curve:P-256", "-nodes", "-keyout", key, "-out", cert,
                    "-days", "1", "-subj", "/CN=127.0.0.1"], check=True, capture_output=True)
    tls_port = e.free_port()
    srv = e.start_server(workers=1, extra_args=["--tls-cert", cert, "--tls-key", key,
                                                "--tls-port", str(tls_port)])
    try:
        for proto in ("-tls1_3", "-tls1_2"):
            c0 = cpu_s(srv.proc.pid)
            out = subprocess.run(["openssl", "s_time", "-connect", "127.0.0.1:%d" % tls_port,
                                  "-new", "-time", str(seconds), "-www", "/healthz", proto],
                                 capture_output=True, text=True, timeout=seconds + 30).stdout
            c1 = cpu_s(srv.proc.pid)
            m = re.search(r"(\d+) connections in ([\d.]+)s", out)
            conns, took = int(m.group(1)), float(m.group(2))
            print("%s: %d handshakes in %.1f s = %.0f/s (one client process); server CPU "
                  "%.0f us per handshake (%.0f handshakes/s per server core)"
                  % (proto[1:], conns, took, conns / took, (c1 - c0) * 1e6 / conns,
                     conns / (c1 - c0) if c1 > c0 else 0))
    finally:
        srv.stop()
        tmp.cleanup()


if __name__ == "__main__":
    main()
