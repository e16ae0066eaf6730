"""Pure: verify a portal's bearer JWT against its identity provider's JWKS.

No boto3, no chalice import: settings come in explicitly (:class:`JwtSettings`), the answer is a
:class:`Principal` or a :class:`~chalicelib.errors.KipError` (401 :class:`Unauthorized`,
503 :class:`AuthUnavailable`); a token without the write claim gets a policy that allows only
the reads, so API Gateway answers its writes 403.

How it is used: in a Chalice built-in authorizer (``@app.authorizer()``),
:func:`authorizer_response`, i.e.
  :func:`verify_bearer` with ``auth_request.token`` (the raw ``Authorization`` header), then
  :func:`policy_for`, which returns
  the dict ``chalice.AuthResponse(...).to_dict(request)`` would. The policy covers every route the
  principal may call (reads; writes only with the write claim), because API Gateway caches an
  authorizer's answer per token and reuses it for other methods and paths.

What is refused: a missing or malformed ``Authorization: Bearer`` header; any algorithm but RS256
and ES256 (so ``none`` and HS256-with-the-public-key are refused before any key is looked up); a
``kid`` the JWKS does not hold (one refresh of the JWKS first, at most once per cooldown, so a
flood of made-up kids cannot hammer the endpoint); a bad signature; ``exp``, ``iss``, ``aud`` or
``sub`` missing; expired, not yet valid, wrong issuer, wrong audience; a ``typ`` header other than
``JWT`` or ``at+jwt`` (RFC 8725 section 3.11, RFC 9068); a lifetime longer than
``max_lifetime_seconds`` (``exp`` further than that from ``iat`` or from now: a leaked token must
not stay good for years); an ``azp`` outside ``allowed_azp`` when that is set. An unreachable or
broken JWKS endpoint is a 503, not a 401. Messages never contain the token.
"""
from __future__ import annotations

import ipaddress
import os
import re
import threading
import time
from dataclasses import dataclass, field
from typing import Any, Mapping, Optional
from urllib.parse import urlparse

import jwt
from jwt.exceptions import (ExpiredSignatureError, ImmatureSignatureError, InvalidAudienceError,
                            InvalidIssuerError, InvalidTokenError, MissingRequiredClaimError,
                            PyJWKClientConnectionError, PyJWKClientError, PyJWKSetError,
                            PyJWTError)

from chalicelib.errors import AuthUnavailable, Unauthorized

ALGORITHMS = ("RS256", "ES256")
REQUIRED_CLAIMS = ("exp", "iss", "aud", "sub")
READ_METHODS = ("GET", "HEAD", "OPTIONS")
ALL_METHODS = READ_METHODS + ("POST", "PUT", "PATCH", "DELETE")
MAX_TOKEN_BYTES = 16 * 1024
# Three base64url segments; the signature may be empty (alg none), refused later with a clear word.
_TOKEN_RE = re.compile(r"^[A-Za-z0-9_-]+\.[A-Za-z0-9_-]+\.[A-Za-z0-9_-]*$")
_CLAIM_RE = re.compile(r"^[A-Za-z0-9_.:/#@-]{1,200}$")
# Claims whose string value is a space-delimited list (RFC 8693 section 4.2, RFC 9068).
_SPACE_DELIMITED = frozenset({"scope", "scp"})
# The header "typ" values accepted (compared case-insensitively, RFC 7515 section 4.1.9): a plain
# JWT (RFC 7519) or an OAuth access token (RFC 9068), with or without the "application/" prefix
# that RFC 7515 lets a media type drop. Anything else (an ID token's "id_token+jwt", a logout or
# DPoP proof, a "secevent+jwt") is another kind of JWT that must not open the API (RFC 8725 3.11).
ACCEPTED_TYPES = frozenset({"jwt", "at+jwt", "application/jwt", "application/at+jwt"})
DEFAULT_MAX_LIFETIME_SECONDS = 12 * 3600
MIN_MAX_LIFETIME_SECONDS = 60
MAX_MAX_LIFETIME_SECONDS = 24 * 3600
_DURATION_RE = re.compile(r"^([0-9]{1,6})([smh]?)$")
_DURATION_UNITS = {"": 1, "s": 1, "m": 60, "h": 3600}


@dataclass(frozen=True)
class JwtSettings:
    jwks_url: str
    issuer: str
    audience: str
    write_claim: Optional[str] = None       # "claim=value", e.g. "groups=platform-admins"
    leeway_seconds: int = 30                # clock skew allowed on exp / nbf / iat
    jwks_timeout_seconds: float = 3.0       # per JWKS fetch; the authorizer has < 29 s in all
    jwks_cache_seconds: float = 300.0       # the fetched key set is reused this long
    jwks_refresh_cooldown_seconds: float = 30.0  # at most one unknown-kid refresh per this
    # exp may be at most this far from iat and from now (plus leeway): KIP_JWT_MAX_LIFETIME
    max_lifetime_seconds: int = DEFAULT_MAX_LIFETIME_SECONDS
    # KIP_JWT_AZP: when not empty, a token's azp (the OAuth client it was issued to) must be one
    allowed_azp: tuple = ()
    # KIP_JWT_TYP: typ values accepted besides JWT/at+jwt, named by the deployment: a Backstage
    # user token's typ is vnd.backstage.user (the forwarded-credentials path)
    extra_types: tuple = ()

    def __post_init__(self) -> None:
        _check_url(self.jwks_url, "KIP_JWKS_URL")
        if not self.issuer.strip():
            raise ValueError("KIP_JWT_ISSUER must not be empty")
        if not self.audience.strip():
            raise ValueError("KIP_JWT_AUDIENCE must not be empty")
        if self.write_claim is not None:
            _parse_write_claim(self.write_claim)
        if not 0 <= self.leeway_seconds <= 300:
            raise ValueError("KIP_JWT_LEEWAY_SECONDS must be an integer from 0 to 300")
        if self.jwks_timeout_seconds <= 0 or self.jwks_cache_seconds <= 0 \
                or self.jwks_refresh_cooldown_seconds < 0:
            raise ValueError("JWKS timeout and cache lifetime must be > 0, the cooldown >= 0")
        if isinstance(self.max_lifetime_seconds, bool) \
                or not isinstance(self.max_lifetime_seconds, int) \
                or not MIN_MAX_LIFETIME_SECONDS <= self.max_lifetime_seconds \
                <= MAX_MAX_LIFETIME_SECONDS:
            raise ValueError(_LIFETIME_HINT)
        if not isinstance(self.allowed_azp, tuple) or not all(
                isinstance(v, str) and _CLAIM_RE.fullmatch(v) for v in self.allowed_azp):
            raise ValueError(_AZP_HINT)

    @property
    def write_requirement(self) -> Optional[tuple[str, str]]:
        return _parse_write_claim(self.write_claim) if self.write_claim is not None else None

    @classmethod
    def from_env(cls, env: Optional[Mapping[str, str]] = None) -> "JwtSettings":
        """Read KIP_JWKS_URL, KIP_JWT_ISSUER, KIP_JWT_AUDIENCE (required), KIP_JWT_WRITE_CLAIM,
        KIP_JWT_LEEWAY_SECONDS, KIP_JWT_MAX_LIFETIME and KIP_JWT_AZP (optional). A missing or
        malformed one raises ValueError naming the variable, so a misconfigured stage refuses to
        start instead of letting everyone (or no one) in."""
        env = os.environ if env is None else env
        values = {}
        for name in ("KIP_JWKS_URL", "KIP_JWT_ISSUER", "KIP_JWT_AUDIENCE"):
            value = (env.get(name) or "").strip()
            if not value:
                raise ValueError(f"{name} is required when KIP_API_AUTH=jwt")
            values[name] = value
        write_claim = (env.get("KIP_JWT_WRITE_CLAIM") or "").strip() or None
        raw_leeway = (env.get("KIP_JWT_LEEWAY_SECONDS") or "").strip()
        if raw_leeway and not re.fullmatch(r"[0-9]{1,3}", raw_leeway):
            raise ValueError("KIP_JWT_LEEWAY_SECONDS must be an integer from 0 to 300")
        return cls(jwks_url=values["KIP_JWKS_URL"], issuer=values["KIP_JWT_ISSUER"],
                   audience=values["KIP_JWT_AUDIENCE"], write_claim=write_claim,
                   leeway_seconds=int(raw_leeway) if raw_leeway else 30,
                   max_lifetime_seconds=_parse_lifetime(env.get("KIP_JWT_MAX_LIFETIME")),
                   allowed_azp=_parse_azp(env.get("KIP_JWT_AZP")),
                   extra_types=_parse_types(env.get("KIP_JWT_TYP")))


def _parse_types(raw: Optional[str]) -> tuple:
    """KIP_JWT_TYP: comma-separated typ values (e.g. vnd.backstage.user); empty: none."""
    values = tuple(v.strip() for v in (raw or "").split(",") if v.strip())
    if not all(re.fullmatch(r"[A-Za-z0-9.+/_-]{1,100}", v) for v in values):
        raise ValueError("KIP_JWT_TYP must be comma-separated typ values such as "
                         "vnd.backstage.user")
    return values


@dataclass(frozen=True)
class Principal:
    subject: str
    claims: dict = field(compare=False, repr=False)
    can_write: bool = False


def _check_url(url: str, name: str) -> None:
    parsed = urlparse(url)
    if parsed.scheme == "https" and parsed.hostname:
        return
    if parsed.scheme == "http" and parsed.hostname:
        host = parsed.hostname
        try:
            loopback = host == "localhost" or ipaddress.ip_address(host).is_loopback
        except ValueError:
            loopback = False
        if loopback:
            return    # a local IdP or a test; keys over plain HTTP anywhere else could be swapped
    raise ValueError(f"{name} must be an https:// URL (http:// only for localhost), "
                     f"got {url[:200]!r}")


def _parse_write_claim(raw: str) -> tuple[str, str]:
    claim, sep, value = raw.partition("=")
    claim, value = claim.strip(), value.strip()
    if not sep or not _CLAIM_RE.fullmatch(claim) or not value:
        raise ValueError("KIP_JWT_WRITE_CLAIM must look like claim=value, e.g. "
                         f"groups=platform-admins (got {raw[:200]!r})")
    return claim, value


_LIFETIME_HINT = ("KIP_JWT_MAX_LIFETIME must be a duration from 1m to 24h: seconds, or a number "
                  "with s, m or h (e.g. 43200, 720m, 12h; default 12h)")
_AZP_HINT = ("KIP_JWT_AZP must be a comma-separated list of OAuth client ids (letters, digits and "
             "_ . : / # @ -, at most 200 each), e.g. backstage-kip,port-kip")


def _parse_lifetime(raw: Optional[str]) -> int:
    raw = (raw or "").strip().lower()
    if not raw:
        return DEFAULT_MAX_LIFETIME_SECONDS
    match = _DURATION_RE.fullmatch(raw)
    if match is None:
        raise ValueError(f"{_LIFETIME_HINT}; got {raw[:40]!r}")
    seconds = int(match.group(1)) * _DURATION_UNITS[match.group(2)]
    if not MIN_MAX_LIFETIME_SECONDS <= seconds <= MAX_MAX_LIFETIME_SECONDS:
        raise ValueError(f"{_LIFETIME_HINT}; got {raw[:40]!r}")
    return seconds


def _parse_azp(raw: Optional[str]) -> tuple:
    if raw is None or not raw.strip():
        return ()
    values = tuple(dict.fromkeys(v.strip() for v in raw.split(",") if v.strip()))
    if not values or not all(_CLAIM_RE.fullmatch(v) for v in values):
        raise ValueError(f"{_AZP_HINT}; got {raw[:200]!r}")
    return values


def _duration(seconds: float) -> str:
    seconds = int(seconds)
    if seconds % 3600 == 0:
        return f"{seconds // 3600} h"
    if seconds % 60 == 0:
        return f"{seconds // 60} min"
    return f"{seconds} s"


# ------------------------------------------------------------------------------- key set client

class _Verifier:
    """One per settings value and process: the JWKS cache lives as long as the Lambda container."""

    def __init__(self, settings: JwtSettings) -> None:
        self.settings = settings
        # cache_jwk_set: the whole set is kept for jwks_cache_seconds, so a key the IdP removes
        # stops verifying within that time. cache_keys (a per-kid LRU with no expiry) stays off
        # for that reason. cooldown_duration bounds unknown-kid refreshes; fetch_data times out.
        self.jwks = jwt.PyJWKClient(
            settings.jwks_url, cache_keys=False, cache_jwk_set=True,
            lifespan=settings.jwks_cache_seconds, timeout=settings.jwks_timeout_seconds,
            cooldown_duration=settings.jwks_refresh_cooldown_seconds,
            headers={"User-Agent": "kip-jwt-verifier"})

    def signing_key(self, kid: str) -> jwt.PyJWK:
        try:
            return self.jwks.get_signing_key(kid)
        except PyJWKClientConnectionError:
            raise AuthUnavailable("the identity provider's key set (KIP_JWKS_URL) could not be "
                                  "fetched; retry later") from None
        except ValueError:        # a JSON decode error escapes PyJWKClient.fetch_data
            raise AuthUnavailable("the identity provider's key set (KIP_JWKS_URL) is not JSON; "
                                  "check the URL") from None
        except PyJWKSetError:
            raise AuthUnavailable("the identity provider's key set (KIP_JWKS_URL) holds no usable "
                                  "key; check the URL") from None
        except PyJWKClientError as exc:
            if str(exc).startswith("Unable to find a signing key"):
                raise Unauthorized(f"the token is signed by a key the identity provider does not "
                                   f"publish (kid {kid[:64]!r})") from None
            raise AuthUnavailable("the identity provider's key set (KIP_JWKS_URL) could not be "
                                  "read; check the URL") from None


_verifiers: dict[JwtSettings, _Verifier] = {}
_verifiers_lock = threading.Lock()


def _verifier(settings: JwtSettings) -> _Verifier:
    with _verifiers_lock:
        found = _verifiers.get(settings)
        if found is None:
            found = _verifiers[settings] = _Verifier(settings)
        return found


def reset_cache() -> None:
    """Forget every cached key set (tests; or after the IdP was reconfigured)."""
    with _verifiers_lock:
        _verifiers.clear()


# ------------------------------------------------------------------------------- verification

def bearer_token(authorization: Optional[str]) -> str:
    """The token of an ``Authorization: Bearer <token>`` value; Unauthorized if there is none."""
    if authorization is None or not authorization.strip():
        raise Unauthorized("no Authorization header; send 'Authorization: Bearer <JWT>'",
                           field="Authorization")
    scheme, _, token = authorization.strip().partition(" ")
    token = token.strip()
    if scheme.lower() != "bearer" or not token:
        raise Unauthorized("the Authorization header is not a bearer token; send "
                           "'Authorization: Bearer <JWT>'", field="Authorization")
    if len(token) > MAX_TOKEN_BYTES or not _TOKEN_RE.fullmatch(token):
        raise Unauthorized("the bearer token is not a JWT (three base64url parts joined by '.')",
                           field="Authorization")
    return token


def verify_token(settings: JwtSettings, token: str) -> Principal:
    """Verify a compact JWT; return who it names and whether it may write."""
    try:
        header = jwt.get_unverified_header(token)
    except PyJWTError:
        raise Unauthorized("the bearer token's header is not valid JSON/base64url",
                           field="Authorization") from None
    if "typ" in header:
        typ = header["typ"]
        if not isinstance(typ, str) or typ.lower() not in ACCEPTED_TYPES | {
                t.lower() for t in settings.extra_types}:
            # before any key lookup, like alg: another kind of JWT never costs a JWKS fetch
            raise Unauthorized(f"the token's header typ {str(typ)[:40]!r} is not accepted; an "
                               "access token has typ JWT or at+jwt (or no typ)", field="typ")
    alg = header.get("alg")
    if alg not in ALGORITHMS:
        # Checked before any key lookup: alg none and HS256 keyed with the public key
        # (algorithm confusion) never get near a key, nor trigger a JWKS fetch.
        raise Unauthorized(f"the token's algorithm {str(alg)[:20]!r} is not accepted; "
                           f"use one of {', '.join(ALGORITHMS)}", field="Authorization")
    kid = header.get("kid")
    if not isinstance(kid, str) or not kid:
        raise Unauthorized("the token's header has no key id (kid)", field="Authorization")
    key = _verifier(settings).signing_key(kid)
    try:
        # A PyJWK is bound to its own algorithm: an RSA key never verifies an ES256 token and
        # vice versa, whatever the header claims.
        claims = jwt.decode(token, key=key, algorithms=list(ALGORITHMS),
                            audience=settings.audience, issuer=settings.issuer,
                            leeway=settings.leeway_seconds,
                            options={"require": list(REQUIRED_CLAIMS)})
    except ExpiredSignatureError:
        raise Unauthorized("the token has expired; get a new one", field="exp") from None
    except ImmatureSignatureError:
        raise Unauthorized("the token is not valid yet (nbf/iat in the future)",
                           field="nbf") from None
    except InvalidAudienceError:
        raise Unauthorized(f"the token is not for this API (aud must be "
                           f"{settings.audience!r})", field="aud") from None
    except InvalidIssuerError:
        raise Unauthorized(f"the token was not issued by {settings.issuer!r}",
                           field="iss") from None
    except MissingRequiredClaimError as exc:
        raise Unauthorized(f"the token has no {exc.claim!r} claim", field=exc.claim) from None
    except InvalidTokenError as exc:
        # signature mismatch, malformed payload, algorithm/key mismatch: name the class only
        raise Unauthorized(f"the token does not verify ({type(exc).__name__})",
                           field="Authorization") from None
    subject = claims.get("sub")
    if not isinstance(subject, str) or not subject.strip():
        raise Unauthorized("the token's sub claim is empty", field="sub")
    _check_lifetime(settings, claims)
    _check_azp(settings, claims)
    return Principal(subject=subject, claims=claims, can_write=_may_write(settings, claims))


def _check_lifetime(settings: JwtSettings, claims: Mapping[str, Any],
                    now: Optional[float] = None) -> None:
    """``exp`` no further than ``max_lifetime_seconds`` from ``iat`` (when present) and from now
    (plus the clock-skew leeway, since exp comes from the IdP's clock). jwt.decode has already
    checked that both convert with int(), as here."""
    limit = settings.max_lifetime_seconds
    exp = int(claims["exp"])
    if "iat" in claims and exp - int(claims["iat"]) > limit:
        raise Unauthorized(f"the token's exp is more than {_duration(limit)} after its iat; kip "
                           f"accepts tokens that live at most {_duration(limit)} "
                           "(KIP_JWT_MAX_LIFETIME): get a shorter-lived one", field="exp")
    now = time.time() if now is None else now
    if exp - now > limit + settings.leeway_seconds:
        raise Unauthorized(f"the token's exp is more than {_duration(limit)} from now; kip "
                           f"accepts tokens that live at most {_duration(limit)} "
                           "(KIP_JWT_MAX_LIFETIME): get a shorter-lived one", field="exp")


def _check_azp(settings: JwtSettings, claims: Mapping[str, Any]) -> None:
    if not settings.allowed_azp:
        return
    azp = claims.get("azp")
    if azp is None:
        raise Unauthorized("the token has no 'azp' claim; kip accepts only tokens issued to the "
                           "clients listed in KIP_JWT_AZP", field="azp")
    if not isinstance(azp, str) or azp not in settings.allowed_azp:
        raise Unauthorized(f"the token was issued to client {str(azp)[:64]!r} (azp), which is "
                           "not one of the clients KIP_JWT_AZP allows", field="azp")


def verify_bearer(settings: JwtSettings, authorization: Optional[str]) -> Principal:
    """:func:`bearer_token` then :func:`verify_token`: for ``AuthRequest.token``."""
    return verify_token(settings, bearer_token(authorization))


def _claim(claims: Mapping[str, Any], name: str) -> Any:
    if name in claims:
        return claims[name]
    node: Any = claims            # "realm_access.roles" style nested claims (Keycloak)
    for part in name.split("."):
        if not isinstance(node, Mapping) or part not in node:
            return None
        node = node[part]
    return node


def _may_write(settings: JwtSettings, claims: Mapping[str, Any]) -> bool:
    requirement = settings.write_requirement
    if requirement is None:
        return True               # no write claim configured: every valid token may write
    name, wanted = requirement
    value = _claim(claims, name)
    if isinstance(value, str):
        if name in _SPACE_DELIMITED:
            return wanted in value.split()
        return value == wanted
    if isinstance(value, (list, tuple)):
        return any(isinstance(item, str) and item == wanted for item in value)
    return False


# ------------------------------------------------------------------------------- API Gateway

def method_from_arn(method_arn: str) -> str:
    """``arn:aws:execute-api:<region>:<acct>:<api>/<stage>/<METHOD>/<path>`` -> ``METHOD``."""
    parts = method_arn.split(":", 5)
    segments = parts[-1].split("/") if len(parts) == 6 else []
    if len(segments) < 3:
        raise ValueError(f"not an execute-api method ARN: {method_arn[:200]!r}")
    return segments[2].upper()


def _resource(method_arn: str, method: str) -> str:
    parts = method_arn.split(":", 5)
    api_id, stage = parts[-1].split("/")[:2]
    parts[-1] = f"{api_id}/{stage}/{method}/*"
    return ":".join(parts)


def policy_for(principal: Principal, method_arn: str) -> dict:
    """The custom-authorizer answer for ``principal``: what
    ``AuthResponse(routes=[AuthRoute('/*', methods)], principal_id=sub,
    context={"sub", "can_write"}).to_dict(request)`` returns, without importing chalice.

    ``methods`` are the reads, plus the writes when ``principal.can_write``; every path of the
    API's stage. Not only ``method_arn``: API Gateway caches this answer per token (the
    authorizer's ``ttl_seconds``) and applies it to the caller's next requests, whatever their
    method or path, so it must state everything the token may do. Context values are strings
    (API Gateway allows no nesting); routes read them from
    ``app.current_request.context["authorizer"]``.
    """
    methods = ALL_METHODS if principal.can_write else READ_METHODS
    method_from_arn(method_arn)   # validate the shape before building resources from it
    return {
        "context": {"sub": principal.subject,
                    "can_write": "true" if principal.can_write else "false"},
        "principalId": principal.subject,
        "policyDocument": {
            "Version": "2012-10-17",
            "Statement": [{"Action": "execute-api:Invoke", "Effect": "Allow",
                           "Resource": [_resource(method_arn, m) for m in methods]}],
        },
    }


def deny_policy(method_arn: str, principal_id: str = "anonymous") -> dict:
    """An explicit Deny for ``method_arn``: API Gateway answers 403, and so does ``chalice local``
    (which, unlike API Gateway, does not turn an authorizer's ``Exception("Unauthorized")`` into
    a 401)."""
    return {
        "context": {},
        "principalId": principal_id,
        "policyDocument": {
            "Version": "2012-10-17",
            "Statement": [{"Action": "execute-api:Invoke", "Effect": "Deny",
                           "Resource": [method_arn]}],
        },
    }


def authorizer_response(settings: JwtSettings, authorization: Optional[str], method_arn: str,
                        *, local: bool = False, scopes: Optional[tuple] = None) -> dict:
    """The whole body of a Chalice built-in authorizer: ``auth_request.token`` and
    ``auth_request.method_arn`` in, the policy out.

    A token that does not verify raises ``Exception("Unauthorized")`` (chained to the
    :class:`Unauthorized` that says why, for the log): API Gateway maps exactly that message to a
    401. ``local=True`` (under ``chalice local``, where that exception would drop the connection)
    returns :func:`deny_policy` instead, a 403. :class:`AuthUnavailable` propagates: API Gateway
    answers 500 and does not cache the failure.
    """
    try:
        principal = verify_bearer(settings, authorization)
    except Unauthorized as exc:
        if local:
            return deny_policy(method_arn)
        raise Exception("Unauthorized") from exc   # the one message API Gateway turns into 401
    answer = policy_for(principal, method_arn)
    if scopes is not None:      # (the KIP_AUTHZ document, or None): the token's teams go along
        answer["context"].update(team_context(scopes[0], principal.claims))
    return answer


# ------------------------------------------------------------------------------- team scopes

def team_context(authz: Any, claims: Mapping[str, Any]) -> dict:
    """The authorizer context entries that carry the token's teams (``core.scopes.Authz``) to
    the routes: API Gateway context values are strings, so ``teams`` is a JSON list."""
    import json
    teams = list(authz.teams_from_claims(claims)) if authz is not None else []
    admin = authz is not None and any(t in authz.admins for t in teams)
    return {"teams": json.dumps(teams, separators=(",", ":")),
            "admin": "true" if admin else "false"}


def scoped_authorizer_response(settings: JwtSettings, authz: Any, authorization: Optional[str],
                               method_arn: str, *, local: bool = False) -> dict:
    """:func:`authorizer_response` with the token's teams in the context (:func:`team_context`),
    read from the claim ``KIP_AUTHZ`` names (e.g. Backstage's ``ent``, prefix
    ``group:default/``)."""
    return authorizer_response(settings, authorization, method_arn, local=local,
                               scopes=(authz,))
