#!/usr/bin/python3
"""make_corpus — write the seed corpus of the libFuzzer harnesses.

Run once, from anywhere: /usr/bin/python3 tests/fuzz/make_corpus.py
It (re)writes tests/fuzz/corpus/{http,jwt,session,tlsrec}/; the files are committed,
so CI never runs this. The constants below must match the harnesses:
S_SECRET, S_EDDSA_SEED and S_NOW in fuzz_jwt.c, the chunk-size prefix of
fuzz_http.c, the operation codes of fuzz_tlsrec.c.
"""

import base64
import hashlib
import hmac
import json
import os
import struct

HERE = os.path.dirname(os.path.abspath(__file__))
CORPUS = os.path.join(HERE, "corpus")

S_SECRET = b"wsr-fuzz-secret"                       # fuzz_jwt.c S_SECRET
S_EDDSA_SEED = b"wsr-fuzz-eddsa-seed-0123456789ab"   # fuzz_jwt.c S_EDDSA_SEED
S_NOW = 1700000000                                  # fuzz_jwt.c S_NOW
MAX_ID_LEN = 128                                    # WSR_MAX_ID_LEN


def write(kind, name, data):
    folder = os.path.join(CORPUS, kind)
    os.makedirs(folder, exist_ok=True)
    with open(os.path.join(folder, name), "wb") as f:
        f.write(data)


# --------------------------------------------------------------------------
#  HTTP: byte 0 = number of chunk sizes (low 3 bits) and stop-at-headers
#  mode (bit 3), then the sizes, then the request bytes.

def http_input(stream, sizes=(), stop=False):
    return bytes([len(sizes) | (8 if stop else 0)]) + bytes(sizes) + stream


RFC6455_SAMPLE = (b"GET /chat HTTP/1.1\r\n"
                  b"Host: server.example.com\r\n"
                  b"Upgrade: websocket\r\n"
                  b"Connection: Upgrade\r\n"
                  b"Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n"
                  b"Origin: http://example.com\r\n"
                  b"Sec-WebSocket-Protocol: chat, superchat\r\n"
                  b"Sec-WebSocket-Version: 13\r\n"
                  b"\r\n")

WS_WITH_TOKEN = (b"GET /ws?token=eyJhbGciOiJIUzI1NiJ9.e30.c2ln&x=%41+b HTTP/1.1\r\n"
                 b"Host: 127.0.0.1:8080\r\n"
                 b"Upgrade: websocket\r\n"
                 b"Connection: keep-alive, Upgrade\r\n"
                 b"Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n"
                 b"Sec-WebSocket-Version: 13\r\n"
                 b"X-Forwarded-For: 10.0.0.1\r\n"
                 b"\r\n")

PUBLISH_BODY = b'{"user":"u1","data":"hello"}'
PUBLISH = (b"POST /api/publish HTTP/1.1\r\n"
           b"Host: 127.0.0.1:8080\r\n"
           b"Authorization: apikey 3f2a9c\r\n"
           b"Content-Type: application/json\r\n"
           b"Content-Length: " + str(len(PUBLISH_BODY)).encode() + b"\r\n"
           b"\r\n" + PUBLISH_BODY)

CHUNKED = (b"POST /api/publish HTTP/1.1\r\n"
           b"Host: h\r\n"
           b"Authorization: apikey k\r\n"
           b"Transfer-Encoding: chunked\r\n"
           b"\r\n"
           b"7\r\n{\"user\"\r\n"
           b"13\r\n:\"u1\",\"data\":\"hi\"}\r\n"
           b"0\r\nX-Trailer: ignored\r\n\r\n")

PIPELINED = (b"GET /healthz HTTP/1.1\r\nHost: h\r\n\r\n"
             b"GET /readyz HTTP/1.1\r\nHost: h\r\n\r\n"
             + PUBLISH +
             b"GET /metrics HTTP/1.1\r\nHost: h\r\nConnection: close\r\n\r\n")


# --------------------------------------------------------------------------
#  WebSocket frames from a client (always masked)

def frame(opcode, payload=b"", fin=True, mask=b"\x37\xfa\x21\x3d"):
    head = bytes([(0x80 if fin else 0) | opcode])
    n = len(payload)
    if n < 126:
        head += bytes([0x80 | n])
    elif n < 65536:
        head += bytes([0x80 | 126]) + struct.pack("!H", n)
    else:
        head += bytes([0x80 | 127]) + struct.pack("!Q", n)
    masked = bytes(b ^ mask[i % 4] for i, b in enumerate(payload))
    return head + mask + masked


def close(code=1000, reason=b""):
    return frame(0x8, struct.pack("!H", code) + reason)


# --------------------------------------------------------------------------
#  JWT

def b64url(data):
    return base64.urlsafe_b64encode(data).rstrip(b"=")


def b64json(obj):
    return b64url(json.dumps(obj, separators=(",", ":")).encode())


def hs256(header, payload, secret=S_SECRET):
    signed = b64json(header) + b"." + b64json(payload)
    return signed + b"." + b64url(hmac.new(secret, signed, hashlib.sha256).digest())


def eddsa(header, payload):
    try:
        from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
    except ImportError:
        return None
    key = Ed25519PrivateKey.from_private_bytes(S_EDDSA_SEED)
    signed = b64json(header) + b"." + b64json(payload)
    return signed + b"." + b64url(key.sign(signed))


def mint_input(sub, csv=None):
    """An input whose byte 0 makes fuzz_jwt take exactly sub as its sub."""
    assert sub[0] % (MAX_ID_LEN + 2) + 1 == len(sub), "byte 0 must encode the length"
    return sub + ((b"," + csv) if csv is not None else b"")


def main():
    write("http", "rfc6455_sample", http_input(RFC6455_SAMPLE))
    write("http", "ws_token_split", http_input(WS_WITH_TOKEN, (1, 7, 30, 0)))
    write("http", "ws_early_frame", http_input(WS_WITH_TOKEN + frame(0x1, b"hi")))
    write("http", "publish", http_input(PUBLISH))
    write("http", "publish_chunked", http_input(CHUNKED, (5, 0)))
    write("http", "pipelined", http_input(PIPELINED, (64, 0)))
    write("http", "http10", http_input(b"GET /metrics HTTP/1.0\r\n\r\n"))
    write("http", "stop_publish", http_input(PUBLISH, (17, 0), stop=True))
    write("http", "stop_chunked", http_input(CHUNKED, (3, 0), stop=True))
    write("http", "stop_pipelined", http_input(PIPELINED, (1,), stop=True))
    write("http", "stop_ws_early", http_input(WS_WITH_TOKEN + frame(0x1, b"hi"), stop=True))

    claims = {"sub": "u1", "iat": S_NOW, "exp": S_NOW + 3600, "channels": ["lobby", "room.7"]}
    hs = {"alg": "HS256", "typ": "JWT"}
    write("jwt", "hs256_valid", hs256(hs, claims))
    write("jwt", "hs256_csv_channels",
          hs256(hs, {"sub": "u2", "iat": S_NOW, "exp": S_NOW + 60, "channels": "a,b.c"}))
    write("jwt", "hs256_expired", hs256(hs, {"sub": "u1", "exp": S_NOW - 3600}))
    write("jwt", "hs256_wrong_secret", hs256(hs, claims, b"another secret"))
    write("jwt", "alg_none",
          b64json({"alg": "none", "typ": "JWT"}) + b"." + b64json(claims) + b".")
    write("jwt", "alg_none_signed",
          b64json({"alg": "none", "typ": "JWT"}) + b"." + b64json(claims) + b".AAAA")
    token = eddsa({"alg": "EdDSA", "typ": "JWT"}, claims)
    if token:
        write("jwt", "eddsa_valid", token)
    sub = b"0user-with-a-long-id.for.the.mint-round-trip@x_yz"
    write("jwt", "mint_sub", mint_input(sub))
    write("jwt", "mint_sub_channels", mint_input(sub, b"lobby,room.7,lobby"))

    write("session", "text_then_close", frame(0x1, b"hello") + close(1000))
    write("session", "binary", frame(0x2, bytes(range(256))) + close(1000))
    write("session", "ping_pong", frame(0x9, b"ping?") + frame(0xA, b"unsolicited") + close())
    write("session", "fragmented",
          frame(0x1, b"frag", fin=False) + frame(0x9, b"mid") + frame(0x0, b"ment", fin=False)
          + frame(0x0, "ed ✓".encode()) + close())
    write("session", "close_reason", close(1000, b"bye"))
    write("session", "text_126", frame(0x1, b"x" * 300) + close(1001, b"going"))

    #  tlsrec: byte 0 = suite (0..2), then operations (fuzz_tlsrec.c)
    for suite in range(3):
        write("tlsrec", "data_read_write_%d" % suite,
              bytes([suite]) + seal(23, b"hello") + read(255) + write_op(10)
              + seal(23, b"x" * 300, 7) + read(17) + read(255))
        write("tlsrec", "keyupdate_%d" % suite,
              bytes([suite]) + key_update(1) + seal(23, b"after") + read(255) + write_op(20)
              + key_update(0) + seal(23, b"again") + write_op(1) + read(255))
    write("tlsrec", "close_notify", b"\x00" + seal(23, b"bye") + seal(21, b"\x01\x00") + read(255))
    write("tlsrec", "fatal_alert", b"\x01" + seal(21, b"\x02\x28") + read(255))
    write("tlsrec", "keyupdate_raw", b"\x02" + seal(22, b"\x18\x00\x00\x01\x01") + read(255)
          + write_op(5))
    write("tlsrec", "raw_oversize", b"\x00" + raw(b"\x17\x03\x03\x41\x01") + read(255))
    write("tlsrec", "raw_ccs", b"\x00" + raw(b"\x14\x03\x03\x00\x01\x01") + read(255))


#  fuzz_tlsrec operations
def seal(content_type, content, padding=0):
    return bytes([0, content_type]) + struct.pack(">H", len(content)) + bytes([padding]) + content


def raw(data):
    return bytes([1, len(data)]) + data


def read(size):
    return bytes([2, size])


def write_op(size):
    return bytes([3, size])


def key_update(requested):
    return bytes([4, requested])


if __name__ == "__main__":
    main()
