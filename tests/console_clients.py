#!/usr/bin/python3
"""console_clients — WebSocket sessions held open for the console's browser
test (tests/node/e2e_console.js): independent Python clients, tokens minted
here (HS256, not by the node).

    console_clients.py PORT SECRET USER[:CHANNEL,CHANNEL] ...

Opens one session per USER argument, prints "OPEN n" once all are open,
holds them until stdin closes, then closes them and exits 0. Exits 77 when
the websockets module is missing."""

import asyncio
import base64
import hashlib
import hmac
import json
import sys
import time

try:
    import websockets
except ImportError:
    print("SKIP websockets not installed", flush=True)
    sys.exit(77)


def b64url(data):
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def mint(secret, user, channels):
    now = int(time.time())
    claims = {"sub": user, "iat": now, "exp": now + 600}
    if channels:
        claims["channels"] = channels
    head = b64url(json.dumps({"alg": "HS256", "typ": "JWT"}).encode())
    body = b64url(json.dumps(claims).encode())
    sig = hmac.new(secret.encode(), ("%s.%s" % (head, body)).encode(), hashlib.sha256).digest()
    return "%s.%s.%s" % (head, body, b64url(sig))


async def main():
    port, secret, specs = int(sys.argv[1]), sys.argv[2], sys.argv[3:]
    sessions = []
    for spec in specs:
        user, _, channels = spec.partition(":")
        token = mint(secret, user, [c for c in channels.split(",") if c])
        url = "ws://127.0.0.1:%d/ws?token=%s" % (port, token)
        sessions.append(await asyncio.wait_for(websockets.connect(url), 10))
    print("OPEN %d" % len(sessions), flush=True)
    loop = asyncio.get_running_loop()
    await loop.run_in_executor(None, sys.stdin.read)
    for ws in sessions:
        await ws.close()


asyncio.run(main())
