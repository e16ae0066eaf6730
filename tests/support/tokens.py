"""Portal JWTs: keys minted here (RSA, EC P-256, and a foreign RSA key the JWKS never
publishes), a JWKS endpoint on 127.0.0.1 that counts its fetches, and tokens signed with them."""
from __future__ import annotations

import json
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import jwt
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from jwt.algorithms import ECAlgorithm, RSAAlgorithm

ISSUER = "https://idp.example.test/realms/platform"
AUDIENCE = "kip-api"
RSA_KEY = rsa.generate_private_key(public_exponent=65537, key_size=2048)
RSA_KEY_2 = rsa.generate_private_key(public_exponent=65537, key_size=2048)
FOREIGN_KEY = rsa.generate_private_key(public_exponent=65537, key_size=2048)
EC_KEY = ec.generate_private_key(ec.SECP256R1())


def jwk(private_key, kid: str) -> dict:
    algo = RSAAlgorithm if isinstance(private_key, rsa.RSAPrivateKey) else ECAlgorithm
    key = algo.to_jwk(private_key.public_key(), as_dict=True)
    key.update(kid=kid, use="sig", alg="RS256" if algo is RSAAlgorithm else "ES256")
    return key


class Jwks:
    """A JWKS endpoint on a free loopback port. ``keys`` and ``status`` may change mid-test."""

    def __init__(self) -> None:
        self.keys = [jwk(RSA_KEY, "rsa-1"), jwk(EC_KEY, "ec-1")]
        self.status = 200
        self.body: bytes | None = None      # raw override (malformed answers)
        self.delay = 0.0
        self.hits = 0
        jwks = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:  # noqa: N802 (http.server's name)
                jwks.hits += 1
                if jwks.delay:
                    time.sleep(jwks.delay)
                body = jwks.body if jwks.body is not None else \
                    json.dumps({"keys": jwks.keys}).encode()
                try:
                    self.send_response(jwks.status)
                    self.send_header("Content-Type", "application/json")
                    self.send_header("Content-Length", str(len(body)))
                    self.end_headers()
                    self.wfile.write(body)
                except OSError:
                    pass    # the client gave up (timeout test)

            def log_message(self, *args: object) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/.well-known/jwks.json"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    def stop(self) -> None:
        self.server.shutdown()
        self.server.server_close()
        self.thread.join(timeout=5)


def claims(**overrides) -> dict:
    now = int(time.time())
    base = {"sub": "user:alice", "iss": ISSUER, "aud": AUDIENCE, "iat": now, "exp": now + 300}
    base.update(overrides)
    return {k: v for k, v in base.items() if v is not None}


def mint(key=RSA_KEY, kid="rsa-1", alg="RS256", **claim_overrides) -> str:
    return jwt.encode(claims(**claim_overrides), key, algorithm=alg, headers={"kid": kid})
