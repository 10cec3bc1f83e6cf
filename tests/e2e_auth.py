#!/usr/bin/python3
"""e2e_auth — token checks at the WebSocket handshake: good tokens open a
session, bad ones get the 101 and then close 1008 with a short reason, and
/metrics counts the failures by reason. Tokens are minted here with hmac
(and Ed25519 with python3-cryptography when it is installed)."""

import os
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import base64  # noqa: E402
import time  # noqa: E402

import wsr_e2e as e  # noqa: E402

HS = {"alg": "HS256", "typ": "JWT"}


async def body(suite):
    srv = e.start_server()
    try:
        await run_cases(suite, srv)
    finally:
        srv.stop()
    await eddsa_cases(suite)


async def expect_rejected(srv, token=None, headers=None, reason_has=None, what="token"):
    """Handshake must succeed (101), then the server closes with 1008."""
    url = srv.ws_url(token) if token is not None else srv.url
    try:
        ws = await e.connect(url, extra_headers=headers)
    except Exception as ex:
        raise e.E2EError("%s: expected the handshake to succeed (101) and a 1008 close, "
                         "the handshake failed: %s: %s" % (what, type(ex).__name__, ex))
    try:
        reason = await e.expect_close(ws, 1008, timeout=5.0, what=what)
    finally:
        await e.close_all(ws)
    e.expect(isinstance(reason, str) and 0 < len(reason.encode()) <= 123,
             "%s: expected a short non-empty close reason, got %r" % (what, reason))
    if reason_has:
        e.expect(reason_has in reason.lower(), "%s: expected the close reason to mention %r, "
                 "got %r" % (what, reason_has, reason))
    return reason


async def expect_accepted(srv, user, token=None, headers=None, what="token"):
    """The session opens and receives a message published to user."""
    url = srv.ws_url(token) if token is not None else srv.url
    ws = await e.connect(url, extra_headers=headers)
    try:
        await e.settle(srv, 1)
        srv.publish(user=user, data="welcome " + user)
        msg = await e.recv(ws, what="message for %s (%s)" % (user, what))
        e.expect_eq(msg, "welcome " + user, "%s: message delivered" % what)
    finally:
        await e.close_all(ws)


async def run_cases(suite, srv):
    now = int(time.time())

    async def valid_query_token():
        await expect_accepted(srv, "alice", token=srv.mint("alice"), what="valid query token")

    async def bearer_header():
        await expect_accepted(srv, "bearer1", headers={"Authorization": "Bearer "
                                                       + srv.mint("bearer1")},
                              what="Authorization: Bearer")

    async def bearer_header_bad():
        await expect_rejected(srv, headers={"Authorization": "Bearer "
                                            + e.mint("wrong-secret", "bearer2")},
                              what="Authorization: Bearer with a bad signature")

    async def missing_token():
        await expect_rejected(srv, what="missing token")
        await expect_rejected(srv, token="", what="empty token= parameter")

    async def garbage_token():
        await expect_rejected(srv, token="not-a-jwt", what="garbage token")
        await expect_rejected(srv, token="a.b.c", what="three garbage segments")
        await expect_rejected(srv, token="%20%20", what="spaces")

    async def wrong_signature():
        await expect_rejected(srv, token=e.mint(srv.secret + "x", "mallory"),
                              what="signed with another secret")
        good = srv.mint("alice")
        h, p, s = good.split(".")
        forged_payload = e.b64url_json({"sub": "admin", "iat": now, "exp": now + 3600})
        await expect_rejected(srv, token=h + "." + forged_payload + "." + s,
                              what="payload swapped under a valid signature")
        sig = bytearray(base64.urlsafe_b64decode(s + "=" * (-len(s) % 4)))
        sig[0] ^= 1
        await expect_rejected(srv, token=h + "." + p + "." + e.b64url(bytes(sig)),
                              what="one signature bit flipped")
        await expect_rejected(srv, token=h + "." + p + ".", what="signature stripped")

    async def expired_token():
        tok = e.jwt_hs256(HS, {"sub": "late", "iat": now - 7200, "exp": now - 3600}, srv.secret)
        await expect_rejected(srv, token=tok, reason_has="expired", what="expired 1 h ago")

    async def alg_none():
        payload = {"sub": "alice", "iat": now, "exp": now + 3600}
        for header in ({"alg": "none", "typ": "JWT"}, {"alg": "None"}, {"alg": "NONE"}):
            unsigned = e.b64url_json(header) + "." + e.b64url_json(payload) + "."
            await expect_rejected(srv, token=unsigned, what="alg %s, no signature"
                                  % header["alg"])
        #  alg none but carrying a valid HS256 signature of that header+payload
        await expect_rejected(srv, token=e.jwt_hs256({"alg": "none", "typ": "JWT"}, payload,
                                                     srv.secret),
                              what="alg none with an HMAC signature")
        await expect_rejected(srv, token=e.jwt_hs256({"alg": "HS512", "typ": "JWT"}, payload,
                                                     srv.secret),
                              what="alg HS512 (not the configured algorithm)")

    async def bad_claims():
        await expect_rejected(srv, token=e.jwt_hs256(HS, {"iat": now, "exp": now + 60},
                                                     srv.secret), what="no sub claim")
        await expect_rejected(srv, token=srv.mint("u 1"), what="sub 'u 1'")
        await expect_rejected(srv, token=srv.mint("u*"), what="sub 'u*'")
        await expect_rejected(srv, token=srv.mint("u1", channels=["room*"]),
                              what="channels ['room*']")

    async def not_yet_expired_is_accepted():
        #  exp 1 minute ahead, iat a minute ago: valid
        tok = e.jwt_hs256(HS, {"sub": "soon", "iat": now - 60, "exp": now + 60}, srv.secret)
        await expect_accepted(srv, "soon", token=tok, what="exp in 60 s")

    async def metrics_by_reason():
        keys = {"ok": 'wsrouter_handshakes_total{result="ok"}',
                "missing": 'wsrouter_handshakes_total{result="token_missing"}',
                "invalid": 'wsrouter_handshakes_total{result="token_invalid"}',
                "expired": 'wsrouter_handshakes_total{result="token_expired"}'}
        before = srv.metrics()
        for name, key in keys.items():
            e.expect(key in before, "/metrics has no %s line" % key)
        await expect_rejected(srv, what="missing token (metrics)")
        await expect_rejected(srv, token="garbage", what="garbage token (metrics)")
        await expect_rejected(srv, token=e.mint("other-secret", "x"),
                              what="wrong signature (metrics)")
        tok = e.jwt_hs256(HS, {"sub": "late", "iat": now - 7200, "exp": now - 3600}, srv.secret)
        await expect_rejected(srv, token=tok, what="expired (metrics)")
        await expect_rejected(srv, token=tok, what="expired again (metrics)")
        ws = await e.connect(srv.ws_url(srv.mint("counted")))
        await e.settle(srv, 1)
        await e.close_all(ws)
        want = {"ok": 1, "missing": 1, "invalid": 2, "expired": 2}

        def deltas():
            after = srv.metrics()
            return {n: after.get(k, 0) - before.get(k, 0) for n, k in keys.items()}

        got = await e.wait_until(lambda: deltas() == want, timeout=3.0)
        if not got:
            raise e.E2EError("handshake counters: expected increases %r, observed %r"
                             % (want, deltas()))

    await suite.case("valid token in ?token= opens a session", valid_query_token)
    await suite.case("Authorization: Bearer token works", bearer_header)
    await suite.case("Authorization: Bearer bad token → 1008", bearer_header_bad)
    await suite.case("missing token → 1008", missing_token)
    await suite.case("garbage token → 1008", garbage_token)
    await suite.case("wrong signature / tampered → 1008", wrong_signature)
    await suite.case("expired token → 1008 'expired'", expired_token)
    await suite.case("alg none / other alg → 1008", alg_none)
    await suite.case("invalid sub or channels claims → 1008", bad_claims)
    await suite.case("token valid for 60 more seconds is accepted", not_yet_expired_is_accepted)
    await suite.case("metrics count handshake results by reason", metrics_by_reason)


async def eddsa_cases(suite):
    name = "EdDSA (Ed25519) tokens"
    try:
        from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
        from cryptography.hazmat.primitives import serialization
    except ImportError:
        try:
            import nacl.signing  # noqa: F401
        except ImportError:
            suite.skip(name, "neither python3-cryptography nor python3-nacl is installed")
            return
        await eddsa_with(suite, name, *nacl_keys())
        return

    def keypair():
        key = Ed25519PrivateKey.generate()
        pub = key.public_key().public_bytes(serialization.Encoding.Raw,
                                            serialization.PublicFormat.Raw)
        return key.sign, pub

    await eddsa_with(suite, name, keypair(), keypair())


def nacl_keys():
    import nacl.signing

    def keypair():
        key = nacl.signing.SigningKey.generate()
        return (lambda m: key.sign(m).signature), bytes(key.verify_key)

    return keypair(), keypair()


def jwt_eddsa(sign, payload, header=None):
    h = e.b64url_json(header or {"alg": "EdDSA", "typ": "JWT"})
    p = e.b64url_json(payload)
    return h + "." + p + "." + e.b64url(sign((h + "." + p).encode()))


async def eddsa_with(suite, name, good, other):
    sign, pub = good
    other_sign, _ = other
    pub_b64 = base64.b64encode(pub).decode()
    try:
        srv = e.start_server(extra_args=["--jwt-public-key", pub_b64, "--jwt-alg", "EdDSA"])
    except e.E2EError as ex:
        suite.fail(name + ": server start", str(ex))
        return
    now = int(time.time())
    payload = {"sub": "ed", "iat": now, "exp": now + 600}

    async def accepted():
        await expect_accepted(srv, "ed", token=jwt_eddsa(sign, payload), what="EdDSA token")

    async def other_key():
        await expect_rejected(srv, token=jwt_eddsa(other_sign, payload),
                              what="EdDSA token signed by another key")

    async def alg_confusion():
        #  HS256 "signed" with the public key as the HMAC secret must not pass
        for secret in (pub, pub_b64.encode()):
            await expect_rejected(srv, token=e.jwt_hs256(HS, payload, secret),
                                  what="HS256 token keyed with the Ed25519 public key")

    async def expired():
        tok = jwt_eddsa(sign, {"sub": "ed", "iat": now - 7200, "exp": now - 3600})
        await expect_rejected(srv, token=tok, reason_has="expired", what="expired EdDSA token")

    try:
        await suite.case("EdDSA: valid token accepted", accepted)
        await suite.case("EdDSA: another key's token → 1008", other_key)
        await suite.case("EdDSA: HS256 keyed with the public key → 1008", alg_confusion)
        await suite.case("EdDSA: expired → 1008", expired)
    finally:
        srv.stop()


if __name__ == "__main__":
    e.main("e2e_auth", body)
