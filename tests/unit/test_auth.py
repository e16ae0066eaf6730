"""auth: portal JWTs verified against a JWKS served on 127.0.0.1 by the test itself.

Keys and the JWKS server come from tests.support.tokens; the server counts its fetches so the
tests can prove when the key set is (and is not) fetched.
"""
from __future__ import annotations

import base64
import hashlib
import hmac
import json
import socket
import time

import jwt
import pytest
from cryptography.hazmat.primitives import serialization

from chalicelib.http import auth
from chalicelib import errors
from tests.support.tokens import (AUDIENCE, EC_KEY, FOREIGN_KEY, ISSUER, RSA_KEY, RSA_KEY_2, Jwks,
                                 claims, jwk, mint)

METHOD_ARN = "arn:aws:execute-api:eu-west-1:123456789012:abcdef1234/api/GET/clusters"


@pytest.fixture(scope="module")
def server():
    srv = Jwks()
    yield srv
    srv.stop()


@pytest.fixture
def jwks(server):
    # given: the default key set, a fresh counter and no cached key set in this process
    server.keys = [jwk(RSA_KEY, "rsa-1"), jwk(EC_KEY, "ec-1")]
    server.status, server.body, server.delay, server.hits = 200, None, 0.0, 0
    auth.reset_cache()
    yield server
    auth.reset_cache()


def settings_for(jwks: Jwks, **kw) -> auth.JwtSettings:
    return auth.JwtSettings(jwks_url=jwks.url, issuer=ISSUER, audience=AUDIENCE, **kw)


def b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def hand_made(header: dict, payload: dict, sign=lambda signing_input: b"") -> str:
    signing_input = f"{b64(json.dumps(header).encode())}.{b64(json.dumps(payload).encode())}"
    return f"{signing_input}.{b64(sign(signing_input.encode()))}"


def bearer(token: str) -> dict:
    return {"Authorization": f"Bearer {token}"}


def verify(settings, headers: dict) -> auth.Principal:
    """What the deployed authorizer (``authorizer_response``) verifies: the Authorization
    header, whatever its case, as API Gateway hands it over."""
    header = next((v for k, v in headers.items() if k.lower() == "authorization"), None)
    return auth.verify_bearer(settings, header)


def allowed_methods(settings, token: str) -> set:
    """The methods the authorizer's answer lets API Gateway pass for this token (any other
    method API Gateway answers 403)."""
    policy = auth.authorizer_response(settings, f"Bearer {token}", METHOD_ARN)
    return {r.split("/")[2] for r in policy["policyDocument"]["Statement"][0]["Resource"]}


def refused(settings, token: str, kind=errors.Unauthorized) -> errors.KipError:
    with pytest.raises(kind) as caught:
        verify(settings, bearer(token))
    exc = caught.value
    # then: the message names what was wrong and never echoes the token (nor its signature)
    text = json.dumps(exc.to_body())
    signature = token.rsplit(".", 1)[-1]
    assert token not in text and (len(signature) < 8 or signature not in text)
    assert exc.status == kind.status
    return exc


# ------------------------------------------------------------------------------- accepted

def test_rs256_token_returns_the_subject_and_claims(jwks):
    principal = verify(settings_for(jwks), bearer(mint(groups=["x"])))
    assert principal.subject == "user:alice"
    assert principal.claims["groups"] == ["x"] and principal.claims["aud"] == AUDIENCE
    assert principal.can_write      # no write claim configured: every valid token may write
    assert jwks.hits == 1


def test_es256_token_is_accepted(jwks):
    principal = verify(settings_for(jwks), bearer(mint(EC_KEY, "ec-1", "ES256")))
    assert principal.subject == "user:alice"


def test_key_set_is_cached_between_requests(jwks):
    s = settings_for(jwks)
    for _ in range(5):
        verify(s, bearer(mint()))
        verify(s, bearer(mint(EC_KEY, "ec-1", "ES256")))
    assert jwks.hits == 1


def test_header_name_and_scheme_are_case_insensitive(jwks):
    principal = verify(settings_for(jwks), {"authorization": f"bearer {mint()}"})
    assert principal.subject == "user:alice"


def test_expired_within_leeway_is_accepted(jwks):
    now = int(time.time())
    token = mint(exp=now - 10, iat=now - 100)
    assert verify(settings_for(jwks), bearer(token)).subject == "user:alice"
    refused(settings_for(jwks, leeway_seconds=0), token)


# ------------------------------------------------------------------------------- refused

@pytest.mark.parametrize("headers,word", [
    ({}, "no Authorization header"),
    ({"Authorization": ""}, "no Authorization header"),
    ({"Authorization": "Basic dXNlcjpwYXNz"}, "not a bearer token"),
    ({"Authorization": "Bearer"}, "not a bearer token"),
    ({"Authorization": "Bearer not-a-jwt"}, "not a JWT"),
    ({"Authorization": "Bearer a.b.c.d"}, "not a JWT"),
    ({"Authorization": "Bearer " + "a" * 20000 + ".b.c"}, "not a JWT"),
    ({"Authorization": "Bearer e30.e30.sig"}, "algorithm"),            # {} header: no alg
    ({"Authorization": "Bearer !!!.e30.sig"}, "not a JWT"),
])
def test_missing_or_malformed_header(jwks, headers, word):
    with pytest.raises(errors.Unauthorized) as caught:
        verify(settings_for(jwks), headers)
    assert word in caught.value.message and caught.value.status == 401
    assert jwks.hits == 0     # nothing was worth a JWKS fetch


def test_token_signed_by_a_foreign_key_with_a_published_kid(jwks):
    exc = refused(settings_for(jwks), mint(FOREIGN_KEY, "rsa-1"))
    assert "does not verify" in exc.message and "InvalidSignatureError" in exc.message


def test_token_signed_by_a_foreign_key_with_an_unknown_kid(jwks):
    exc = refused(settings_for(jwks), mint(FOREIGN_KEY, "attacker-1"))
    assert "does not publish" in exc.message and "attacker-1" in exc.message


def test_alg_none_is_refused_before_any_key_lookup(jwks):
    token = hand_made({"alg": "none", "typ": "JWT", "kid": "rsa-1"}, claims())
    exc = refused(settings_for(jwks), token)
    assert "'none' is not accepted" in exc.message
    assert jwks.hits == 0


def test_hs256_keyed_with_the_public_key_is_refused(jwks):
    # the classic algorithm confusion: HMAC "secret" = the RSA public key the JWKS publishes
    pem = RSA_KEY.public_key().public_bytes(serialization.Encoding.PEM,
                                            serialization.PublicFormat.SubjectPublicKeyInfo)
    token = hand_made({"alg": "HS256", "typ": "JWT", "kid": "rsa-1"}, claims(),
                      lambda data: hmac.new(pem, data, hashlib.sha256).digest())
    exc = refused(settings_for(jwks), token)
    assert "'HS256' is not accepted" in exc.message
    assert jwks.hits == 0


def test_header_alg_must_match_the_published_key(jwks):
    # ES256 in the header, a kid that names the RSA key: the key's own algorithm wins
    token = mint(EC_KEY, "rsa-1", "ES256")
    exc = refused(settings_for(jwks), token)
    assert "does not verify" in exc.message


def test_expired(jwks):
    now = int(time.time())
    exc = refused(settings_for(jwks), mint(exp=now - 3600, iat=now - 7200))
    assert exc.field == "exp" and "expired" in exc.message


def test_not_yet_valid(jwks):
    now = int(time.time())
    exc = refused(settings_for(jwks), mint(nbf=now + 3600))
    assert exc.field == "nbf" and "not valid yet" in exc.message


def test_wrong_audience(jwks):
    exc = refused(settings_for(jwks), mint(aud="some-other-api"))
    assert exc.field == "aud" and AUDIENCE in exc.message


def test_audience_list_containing_ours_is_accepted(jwks):
    token = mint(aud=["some-other-api", AUDIENCE])
    assert verify(settings_for(jwks), bearer(token)).subject == "user:alice"


def test_wrong_issuer(jwks):
    exc = refused(settings_for(jwks), mint(iss="https://evil.example.test/"))
    assert exc.field == "iss" and ISSUER in exc.message


@pytest.mark.parametrize("claim", ["exp", "iss", "aud", "sub"])
def test_required_claim_missing(jwks, claim):
    exc = refused(settings_for(jwks), mint(**{claim: None}))
    assert exc.field == claim and claim in exc.message


def test_tampered_payload(jwks):
    token = mint()
    header, _, signature = token.split(".")
    forged = f"{header}.{b64(json.dumps(claims(sub='user:admin')).encode())}.{signature}"
    assert "does not verify" in refused(settings_for(jwks), forged).message


# --------------------------------------------------------------------------- lifetime, typ, azp

def typed(typ, **claim_overrides) -> str:
    """A token whose header ``typ`` is ``typ`` (None: no typ at all)."""
    return jwt.encode(claims(**claim_overrides), RSA_KEY, algorithm="RS256",
                      headers={"kid": "rsa-1", "typ": typ})


def test_a_token_expiring_in_2286_is_refused(jwks):
    # found in the wild: exp 9999999999 (year 2286) was accepted
    exc = refused(settings_for(jwks), mint(exp=9_999_999_999))
    assert exc.field == "exp" and "exp" in exc.message and "12 h" in exc.message
    assert "KIP_JWT_MAX_LIFETIME" in exc.message


def test_exp_more_than_the_maximum_after_iat_is_refused(jwks):
    # iat an hour ago, exp 11 h 30 min from now: 12 h 30 min of life, though < 12 h remain
    now = int(time.time())
    exc = refused(settings_for(jwks), mint(iat=now - 3600, exp=now + 11 * 3600 + 1800))
    assert exc.field == "exp" and "after its iat" in exc.message


def test_exp_more_than_the_maximum_from_now_is_refused_without_iat(jwks):
    now = int(time.time())
    exc = refused(settings_for(jwks), mint(iat=None, exp=now + 13 * 3600))
    assert exc.field == "exp" and "from now" in exc.message


def test_a_token_issued_hours_ago_within_the_maximum_is_accepted(jwks):
    # iat in the future is refused by jwt.decode; iat far in the past with exp - iat <= 12 h is
    # an ordinary, already-running token: accepted
    now = int(time.time())
    assert verify(settings_for(jwks), bearer(mint(iat=now - 11 * 3600,
                                                  exp=now + 3600))).subject == "user:alice"


@pytest.mark.parametrize("lifetime,max_lifetime,ok", [
    (12 * 3600, None, True),                 # exactly the default
    (12 * 3600 + 1, None, False),
    (3600, 1800, False),                     # a tighter KIP_JWT_MAX_LIFETIME
    (1800, 1800, True),
])
def test_lifetime_boundary(jwks, lifetime, max_lifetime, ok):
    s = settings_for(jwks, **({"max_lifetime_seconds": max_lifetime} if max_lifetime else {}))
    now = int(time.time())
    token = mint(iat=now, exp=now + lifetime)
    if ok:
        assert verify(s, bearer(token)).subject == "user:alice"
    else:
        assert refused(s, token).field == "exp"


def test_exp_from_now_allows_the_clock_skew_leeway(jwks):
    # an IdP whose clock runs 20 s ahead issues a 12 h token: exp is 12 h 20 s from our now
    now = int(time.time())
    s = settings_for(jwks, leeway_seconds=30)
    assert verify(s, bearer(mint(iat=None, exp=now + 12 * 3600 + 20))).subject == "user:alice"
    assert refused(s, mint(iat=None, exp=now + 12 * 3600 + 120)).field == "exp"


def test_lifetime_check_happens_after_the_signature(jwks):
    # a forged long-lived token is a signature failure, not a lifetime message
    token = mint()
    header, _, signature = token.split(".")
    forged = f"{header}.{b64(json.dumps(claims(exp=9_999_999_999)).encode())}.{signature}"
    assert "does not verify" in refused(settings_for(jwks), forged).message


@pytest.mark.parametrize("typ", ["JWT", "jwt", "at+jwt", "AT+JWT", "application/at+jwt",
                                 "Application/AT+JWT", "application/jwt", None])
def test_accepted_typ_headers(jwks, typ):
    token = typed(typ)
    assert ("typ" in jwt.get_unverified_header(token)) is (typ is not None)
    assert verify(settings_for(jwks), bearer(token)).subject == "user:alice"


@pytest.mark.parametrize("typ", ["id_token+jwt", "logout+jwt", "dpop+jwt", "secevent+jwt",
                                 "JWS", "JWE", "at+jwt ", "application/json"])
def test_other_typ_headers_are_refused_before_any_key_lookup(jwks, typ):
    exc = refused(settings_for(jwks), typed(typ))
    assert exc.field == "typ" and "typ" in exc.message
    assert jwks.hits == 0


@pytest.mark.parametrize("typ", [7, "", None, ["JWT"]])
def test_an_empty_or_non_string_typ_is_refused(jwks, typ):
    # (PyJWT drops an empty typ when it signs, so these are made by hand)
    token = hand_made({"alg": "RS256", "typ": typ, "kid": "rsa-1"}, claims())
    assert refused(settings_for(jwks), token).field == "typ"


@pytest.mark.parametrize("azp,ok", [
    ("backstage-kip", True),
    ("port-kip", True),
    ("other-client", False),
    ("Backstage-kip", False),        # exact match
    (["backstage-kip"], False),      # azp is a single string (OIDC core 2)
    (None, False),                   # absent
])
def test_azp_must_be_one_of_the_allowed_clients(jwks, azp, ok):
    s = settings_for(jwks, allowed_azp=("backstage-kip", "port-kip"))
    token = mint(azp=azp)
    if ok:
        assert verify(s, bearer(token)).subject == "user:alice"
    else:
        exc = refused(s, token)
        assert exc.field == "azp" and "KIP_JWT_AZP" in exc.message


def test_azp_is_not_checked_when_unset(jwks):
    assert verify(settings_for(jwks), bearer(mint(azp="anyone"))).subject == "user:alice"
    assert verify(settings_for(jwks), bearer(mint())).subject == "user:alice"


def test_lifetime_and_azp_refusals_are_401_under_the_authorizer(jwks):
    s = settings_for(jwks, allowed_azp=("backstage-kip",))
    for token in (mint(azp="backstage-kip", exp=9_999_999_999), mint(azp="x"),
                  typed("id_token+jwt", azp="backstage-kip")):
        with pytest.raises(Exception, match="^Unauthorized$"):
            auth.authorizer_response(s, f"Bearer {token}", METHOD_ARN)
    assert allowed_methods(s, mint(azp="backstage-kip")) == set(auth.ALL_METHODS)


# ------------------------------------------------------------------------------- write claim

def test_write_claim_missing_refuses_post_and_delete_but_not_get(jwks):
    s = settings_for(jwks, write_claim="groups=platform-admins")
    token = mint(groups=["developers"])
    principal = verify(s, bearer(token))
    assert principal.subject == "user:alice" and principal.can_write is False
    # the authorizer's answer lets only the reads through: API Gateway refuses the writes (403)
    assert allowed_methods(s, token) == {"GET", "HEAD", "OPTIONS"}


@pytest.mark.parametrize("write_claim,extra", [
    ("groups=platform-admins", {"groups": ["developers", "platform-admins"]}),
    ("groups=platform-admins", {"groups": "platform-admins"}),
    ("role=kip-writer", {"role": "kip-writer"}),
    ("scope=kip:write", {"scope": "openid kip:read kip:write"}),
    ("realm_access.roles=kip-admin", {"realm_access": {"roles": ["kip-admin"]}}),
    ("https://portal.example.test/groups=ops",
     {"https://portal.example.test/groups": ["ops"]}),
])
def test_write_claim_present_allows_writes(jwks, write_claim, extra):
    s = settings_for(jwks, write_claim=write_claim)
    assert verify(s, bearer(mint(**extra))).can_write is True
    assert {"POST", "DELETE"} <= allowed_methods(s, mint(**extra))


@pytest.mark.parametrize("extra", [
    {},                                              # claim absent
    {"groups": "platform-admins-readonly"},          # a string is matched whole
    {"groups": ["platform-admins "]},
    {"groups": {"platform-admins": True}},            # wrong type
    {"groups": "developers platform-admins"},        # only scope/scp are space-delimited
])
def test_write_claim_near_misses_are_refused(jwks, extra):
    s = settings_for(jwks, write_claim="groups=platform-admins")
    assert verify(s, bearer(mint(**extra))).can_write is False
    assert "POST" not in allowed_methods(s, mint(**extra))


# ------------------------------------------------------------------------------- the key set

def test_key_rotation_new_kid_is_fetched_once_after_the_cooldown(jwks):
    s = settings_for(jwks, jwks_refresh_cooldown_seconds=0.2)
    verify(s, bearer(mint()))
    assert jwks.hits == 1
    # when: the IdP publishes a second key and starts signing with it
    jwks.keys = jwks.keys + [jwk(RSA_KEY_2, "rsa-2")]
    new_token = mint(RSA_KEY_2, "rsa-2")
    # then: within the cooldown the set is not refetched, the unknown kid is refused
    refused(s, new_token)
    assert jwks.hits == 1
    time.sleep(0.25)
    # after it: exactly one refresh picks the new key up, and it is cached from then on
    assert verify(s, bearer(new_token)).subject == "user:alice"
    assert verify(s, bearer(mint())).subject == "user:alice"
    assert verify(s, bearer(new_token)).subject == "user:alice"
    assert jwks.hits == 2


def test_a_flood_of_unknown_kids_does_not_hammer_the_jwks_endpoint(jwks):
    s = settings_for(jwks)    # default 30 s cooldown
    verify(s, bearer(mint()))
    for n in range(50):
        refused(s, mint(FOREIGN_KEY, f"made-up-{n}"))
    assert jwks.hits == 1


def test_removed_key_stops_verifying_when_the_cached_set_expires(jwks):
    s = settings_for(jwks, jwks_cache_seconds=0.2)
    token = mint(EC_KEY, "ec-1", "ES256")
    verify(s, bearer(token))
    jwks.keys = [jwk(RSA_KEY, "rsa-1")]          # the IdP revokes the EC key
    time.sleep(0.25)
    refused(s, token)


def test_jwks_unreachable_is_503_not_401():
    with socket.socket() as sock:                # a port nobody listens on
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    auth.reset_cache()
    s = auth.JwtSettings(jwks_url=f"http://127.0.0.1:{port}/jwks", issuer=ISSUER,
                         audience=AUDIENCE)
    exc = refused(s, mint(), errors.AuthUnavailable)
    assert exc.status == 503 and exc.retry_after and "KIP_JWKS_URL" in exc.message
    assert not isinstance(exc, errors.Unauthorized)


@pytest.mark.parametrize("status,body", [
    (500, None),
    (200, b"<html>not json</html>"),
    (200, b"[]"),
    (200, b'{"keys": []}'),
])
def test_broken_jwks_answers_are_503(jwks, status, body):
    jwks.status, jwks.body = status, body
    refused(settings_for(jwks), mint(), errors.AuthUnavailable)


def test_slow_jwks_times_out_as_503(jwks):
    jwks.delay = 1.0
    started = time.monotonic()
    refused(settings_for(jwks, jwks_timeout_seconds=0.2), mint(), errors.AuthUnavailable)
    assert time.monotonic() - started < 0.9


def test_jwks_recovers_after_an_outage(jwks):
    s = settings_for(jwks)
    jwks.status = 503
    refused(s, mint(), errors.AuthUnavailable)
    jwks.status = 200
    assert verify(s, bearer(mint())).subject == "user:alice"


# ------------------------------------------------------------------------------- settings

GOOD_ENV = {"KIP_JWKS_URL": "https://idp.example.test/jwks", "KIP_JWT_ISSUER": ISSUER,
            "KIP_JWT_AUDIENCE": AUDIENCE}


def test_from_env_reads_every_variable():
    s = auth.JwtSettings.from_env({**GOOD_ENV, "KIP_JWT_WRITE_CLAIM": "groups=platform-admins",
                                   "KIP_JWT_LEEWAY_SECONDS": "10",
                                   "KIP_JWT_MAX_LIFETIME": "1h",
                                   "KIP_JWT_AZP": " backstage-kip, port-kip ,backstage-kip"})
    assert (s.jwks_url, s.issuer, s.audience) == (GOOD_ENV["KIP_JWKS_URL"], ISSUER, AUDIENCE)
    assert s.write_requirement == ("groups", "platform-admins") and s.leeway_seconds == 10
    assert s.max_lifetime_seconds == 3600 and s.allowed_azp == ("backstage-kip", "port-kip")
    plain = auth.JwtSettings.from_env(GOOD_ENV)
    assert plain.write_claim is None and plain.leeway_seconds == 30
    assert plain.max_lifetime_seconds == 12 * 3600 and plain.allowed_azp == ()


@pytest.mark.parametrize("raw,seconds", [
    ("43200", 43200), ("720m", 43200), ("12h", 43200), ("12H", 43200), ("90s", 90),
    ("1m", 60), ("24h", 86400), ("", 43200), ("  ", 43200),
])
def test_from_env_max_lifetime_forms(raw, seconds):
    s = auth.JwtSettings.from_env({**GOOD_ENV, "KIP_JWT_MAX_LIFETIME": raw})
    assert s.max_lifetime_seconds == seconds


@pytest.mark.parametrize("name", ["KIP_JWKS_URL", "KIP_JWT_ISSUER", "KIP_JWT_AUDIENCE"])
@pytest.mark.parametrize("value", [None, "", "   "])
def test_from_env_names_a_missing_variable(name, value):
    env = dict(GOOD_ENV)
    if value is None:
        del env[name]
    else:
        env[name] = value
    with pytest.raises(ValueError, match=name):
        auth.JwtSettings.from_env(env)


@pytest.mark.parametrize("name,value", [
    ("KIP_JWKS_URL", "http://idp.example.test/jwks"),     # keys over plain HTTP: no
    ("KIP_JWKS_URL", "file:///etc/passwd"),
    ("KIP_JWKS_URL", "idp.example.test/jwks"),
    ("KIP_JWT_WRITE_CLAIM", "groups"),
    ("KIP_JWT_WRITE_CLAIM", "=platform-admins"),
    ("KIP_JWT_WRITE_CLAIM", "groups="),
    ("KIP_JWT_WRITE_CLAIM", "gro ups=x"),
    ("KIP_JWT_LEEWAY_SECONDS", "-1"),
    ("KIP_JWT_LEEWAY_SECONDS", "301"),
    ("KIP_JWT_LEEWAY_SECONDS", "ten"),
    ("KIP_JWT_MAX_LIFETIME", "0"),
    ("KIP_JWT_MAX_LIFETIME", "59"),
    ("KIP_JWT_MAX_LIFETIME", "25h"),          # longer than a day: the point is short tokens
    ("KIP_JWT_MAX_LIFETIME", "-1h"),
    ("KIP_JWT_MAX_LIFETIME", "12 h"),
    ("KIP_JWT_MAX_LIFETIME", "1d"),
    ("KIP_JWT_MAX_LIFETIME", "1.5h"),
    ("KIP_JWT_MAX_LIFETIME", "forever"),
    ("KIP_JWT_AZP", ","),
    ("KIP_JWT_AZP", "backstage kip"),
    ("KIP_JWT_AZP", "ok,bad client"),
    ("KIP_JWT_AZP", "x" * 201),
])
def test_from_env_names_a_malformed_variable(name, value):
    with pytest.raises(ValueError, match=name):
        auth.JwtSettings.from_env({**GOOD_ENV, name: value})


def test_http_is_allowed_for_loopback_only():
    for url in ("http://127.0.0.1:8080/jwks", "http://localhost/jwks", "http://[::1]:9/jwks"):
        assert auth.JwtSettings.from_env({**GOOD_ENV, "KIP_JWKS_URL": url}).jwks_url == url


# ------------------------------------------------------------------------------- API Gateway

def _chalice_shape(routes, principal_id, context):
    from chalice.app import AuthRequest, AuthResponse
    return AuthResponse(routes=routes, principal_id=principal_id, context=context).to_dict(
        AuthRequest("TOKEN", "Bearer x", METHOD_ARN))


def _allows(policy: dict, method: str, path: str) -> bool:
    from chalice.local import ARNMatcher
    arn = f"arn:aws:execute-api:eu-west-1:123456789012:abcdef1234/api/{method}/{path}"
    resources = [r for st in policy["policyDocument"]["Statement"] if st["Effect"] == "Allow"
                 for r in st["Resource"]]
    return ARNMatcher(arn).does_any_resource_match(resources)


def test_policy_for_a_reader_is_chalice_authresponse_shape():
    from chalice.app import AuthRoute
    reader = auth.Principal("user:bob", {"sub": "user:bob"}, can_write=False)
    policy = auth.policy_for(reader, METHOD_ARN)
    assert policy == _chalice_shape([AuthRoute("/*", ["GET", "HEAD", "OPTIONS"])], "user:bob",
                                    {"sub": "user:bob", "can_write": "false"})
    assert _allows(policy, "GET", "clusters") and _allows(policy, "GET", "clusters/prod-1")
    assert not _allows(policy, "POST", "clusters")
    assert not _allows(policy, "DELETE", "clusters/prod-1")


def test_policy_for_a_writer_covers_every_route_not_just_this_one():
    from chalice.app import AuthRoute
    writer = auth.Principal("user:alice", {}, can_write=True)
    policy = auth.policy_for(writer, METHOD_ARN)
    assert policy == _chalice_shape([AuthRoute("/*", list(auth.ALL_METHODS))], "user:alice",
                                    {"sub": "user:alice", "can_write": "true"})
    for method, path in (("GET", "openapi.json"), ("POST", "clusters"),
                         ("DELETE", "clusters/prod-1"), ("POST", "clusters/prod-1/reconcile")):
        assert _allows(policy, method, path)
    # another API or stage is never covered
    resources = policy["policyDocument"]["Statement"][0]["Resource"]
    assert all(":abcdef1234/api/" in r for r in resources)


def test_deny_policy_allows_nothing():
    policy = auth.deny_policy(METHOD_ARN)
    assert not _allows(policy, "GET", "clusters")
    assert policy["policyDocument"]["Statement"][0]["Effect"] == "Deny"


@pytest.mark.parametrize("arn,method", [
    (METHOD_ARN, "GET"),
    ("arn:aws-cn:execute-api:cn-north-1:123456789012:api1/prod/DELETE/clusters/x", "DELETE"),
])
def test_method_from_arn(arn, method):
    assert auth.method_from_arn(arn) == method


def test_method_from_arn_refuses_other_arns():
    with pytest.raises(ValueError):
        auth.method_from_arn("arn:aws:sqs:eu-west-1:123456789012:queue")


def test_builtin_authorizer_under_chalice_local(jwks):
    """The snippet app.py will use, run by chalice's local gateway (what `chalice local` runs)."""
    from chalice import Chalice
    from chalice.test import Client

    s = settings_for(jwks, write_claim="groups=platform-admins")
    app = Chalice(app_name="authz-probe")

    @app.authorizer(ttl_seconds=60)
    def portal_jwt(auth_request):
        return auth.authorizer_response(s, auth_request.token, auth_request.method_arn,
                                        local=True)

    @app.route("/clusters", methods=["GET", "POST"], authorizer=portal_jwt)
    def clusters():
        ctx = app.current_request.context["authorizer"]
        return {"sub": ctx["sub"], "can_write": ctx["can_write"], "pid": ctx["principalId"]}

    reader, writer = mint(groups=["developers"]), mint(sub="user:ops", groups=["platform-admins"])
    with Client(app) as client:
        ok = client.http.get("/clusters", headers=bearer(reader))
        assert ok.status_code == 200
        assert ok.json_body == {"sub": "user:alice", "can_write": "false", "pid": "user:alice"}
        assert client.http.post("/clusters", headers=bearer(reader)).status_code == 403
        assert client.http.post("/clusters", headers=bearer(writer)).json_body["can_write"] == \
            "true"
        assert client.http.get("/clusters", headers=bearer(mint(aud="x"))).status_code == 403
        assert client.http.get("/clusters").status_code == 401     # no header: the gateway's 401


def test_authorizer_response_deployed_raises_the_message_api_gateway_maps_to_401(jwks):
    s = settings_for(jwks)
    with pytest.raises(Exception) as caught:
        auth.authorizer_response(s, f"Bearer {mint(aud='x')}", METHOD_ARN)
    assert str(caught.value) == "Unauthorized" and type(caught.value) is Exception
    assert isinstance(caught.value.__cause__, errors.Unauthorized)     # why, for the log
    with pytest.raises(Exception, match="^Unauthorized$"):
        auth.authorizer_response(s, None, METHOD_ARN)


def test_authorizer_response_allows_and_lets_an_outage_propagate(jwks):
    s = settings_for(jwks, write_claim="groups=platform-admins")
    policy = auth.authorizer_response(s, f"Bearer {mint(groups=['platform-admins'])}", METHOD_ARN)
    assert policy["context"] == {"sub": "user:alice", "can_write": "true"}
    assert auth.authorizer_response(s, "Bearer x.y.z", METHOD_ARN, local=True) == \
        auth.deny_policy(METHOD_ARN)
    jwks.status = 500
    auth.reset_cache()
    with pytest.raises(errors.AuthUnavailable):
        auth.authorizer_response(s, f"Bearer {mint()}", METHOD_ARN)


def test_a_deployment_may_accept_backstages_user_token_type(jwks):
    # Backstage's own user tokens say typ vnd.backstage.user: refused unless KIP_JWT_TYP names it
    token = typed("vnd.backstage.user")
    refused(settings_for(jwks), token)
    assert verify(settings_for(jwks, extra_types=("vnd.backstage.user",)),
                  bearer(token)).subject == "user:alice"
    with pytest.raises(ValueError, match="KIP_JWT_TYP"):
        auth.JwtSettings.from_env({"KIP_JWKS_URL": jwks.url, "KIP_JWT_ISSUER": ISSUER,
                                   "KIP_JWT_AUDIENCE": AUDIENCE, "KIP_JWT_TYP": "a b"})
