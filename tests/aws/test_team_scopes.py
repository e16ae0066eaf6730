"""Team scopes end to end: the app imported with KIP_API_AUTH=jwt and KIP_AUTHZ, Backstage-style
ES256 user tokens (the ``ent`` claim, ``group:default/<team>``) from a JWKS on 127.0.0.1, through
the built-in authorizer (chalice's local gateway runs it, as API Gateway would) to the routes.

Two teams and an admin: no cross-team read (404, as for a missing record), write or delete
(403 naming the token's scopes); POST /backfill is admin-only; the audit trail names the
token's subject."""
from __future__ import annotations

import importlib
import json
import logging
import time

import jwt
import pytest

from chalicelib.config import get_settings
from chalicelib.http import auth
from tests.support.tokens import EC_KEY, Jwks, jwk
from tests.support.world import ACCOUNT, make_cluster, make_role

BACKSTAGE = "https://backstage.example.test/api/auth"
AUTHZ = {"claim": "ent", "prefix": "group:default/", "admins": ["platform"],
         "teams": {"payments": {"accounts": [ACCOUNT], "clusters": ["payments-*"]},
                   "search": {"accounts": ["*"], "clusters": ["search-*"]}}}
JSON = {"Content-Type": "application/json"}


def backstage_token(user: str, *groups: str) -> str:
    """What Backstage's auth backend issues for a signed-in user (and the proxy forwards with
    ``credentials: forward``): ES256, typ vnd.backstage.user, aud backstage, ``ent`` listing
    the user and its groups."""
    now = int(time.time())
    claims = {"iss": BACKSTAGE, "aud": "backstage", "sub": f"user:default/{user}", "iat": now,
              "exp": now + 3600,
              "ent": [f"user:default/{user}", *(f"group:default/{g}" for g in groups)]}
    return jwt.encode(claims, EC_KEY, algorithm="ES256",
                      headers={"kid": "ec-1", "typ": "vnd.backstage.user"})


@pytest.fixture
def portal(moto_env, monkeypatch, request):
    """chalice.test.Client on app.py as imported by a JWT stage with team scopes (or, with
    ``indirect`` param None, without KIP_AUTHZ)."""
    from chalice.test import Client

    from tests.support.drive import make_kit
    server = Jwks()
    server.keys = [jwk(EC_KEY, "ec-1")]
    for key, value in {"KIP_API_AUTH": "jwt", "KIP_JWKS_URL": server.url,
                       "KIP_JWT_ISSUER": BACKSTAGE, "KIP_JWT_AUDIENCE": "backstage",
                       "KIP_JWT_TYP": "vnd.backstage.user",
                       "KIP_AUTHZ": json.dumps(AUTHZ)}.items():
        monkeypatch.setenv(key, value)
    if getattr(request, "param", "") is None:
        monkeypatch.delenv("KIP_AUTHZ")
    get_settings.cache_clear()
    auth.reset_cache()
    import app as service_app
    service_app = _reimport(service_app)
    service_app._kit = make_kit(moto_env)
    try:
        with Client(service_app.app, stage_name="local") as client:
            yield client
    finally:
        service_app._kit = None
        monkeypatch.undo()
        get_settings.cache_clear()
        auth.reset_cache()
        _reimport(service_app)
        server.stop()


def _reimport(module):
    """app.py again, under the current environment. Powertools keeps its handler on the
    standard ``kip`` logger; a second Logger(service="kip") must start from a bare one."""
    std = logging.getLogger("kip")
    std.handlers.clear()
    if hasattr(std, "init"):
        delattr(std, "init")
    return importlib.reload(module)


class As:
    """One signed-in user's requests."""

    def __init__(self, client, token: str) -> None:
        self.client, self.headers = client, {**JSON, "Authorization": f"Bearer {token}"}

    def get(self, path: str):
        return self.client.http.get(path, headers=self.headers)

    def post(self, path: str, body: dict | None = None, **headers: str):
        return self.client.http.post(path, headers={**self.headers, **headers},
                                     body=json.dumps(body or {}))

    def delete(self, path: str, etag: str):
        return self.client.http.delete(path, headers={**self.headers, "If-Match": etag})


@pytest.fixture
def users(portal):
    for name in ("payments-prod", "search-prod"):
        make_cluster(name)
        make_role(f"KarpenterController-{name}")
    return (As(portal, backstage_token("alice", "payments")),
            As(portal, backstage_token("bob", "search")),
            As(portal, backstage_token("root", "platform")))


def names(answer) -> list[str]:
    assert answer.status_code == 200, answer.body
    return sorted(i["cluster_name"] for i in answer.json_body["items"])


def test_a_backstage_user_token_provisions_for_its_team(users):
    alice, _, _ = users
    made = alice.post("/clusters", {"cluster_name": "payments-prod"})
    assert made.status_code == 201, made.body
    assert made.json_body["owner_team"] == "payments"
    assert made.json_body["requested_by"] == "user:default/alice"


def test_no_cross_team_read_write_or_delete(users):
    alice, bob, root = users
    etag = alice.post("/clusters", {"cluster_name": "payments-prod"}).headers["ETag"]
    assert bob.post("/clusters", {"cluster_name": "search-prod"}).status_code == 201
    # reads: each team sees its own; the admin sees both
    assert names(alice.get("/clusters")) == ["payments-prod"]
    assert names(bob.get("/clusters")) == ["search-prod"]
    assert names(root.get("/clusters")) == ["payments-prod", "search-prod"]
    # another team's cluster answers exactly as a missing one (no existence oracle)
    hidden, missing = bob.get("/clusters/payments-prod"), bob.get("/clusters/search-nope")
    assert hidden.status_code == missing.status_code == 404
    assert hidden.json_body["error"]["code"] == missing.json_body["error"]["code"]
    assert bob.get("/clusters/payments-prod/history").status_code == 404
    # writes: 403 naming the scopes the token has
    for answer in (bob.post("/clusters", {"cluster_name": "payments-prod"}),
                   bob.post("/clusters/payments-prod/reconcile"),
                   bob.post("/clusters/payments-prod/release"),
                   bob.delete("/clusters/payments-prod", etag)):
        assert answer.status_code == 403, answer.body
        error = answer.json_body["error"]
        assert error["code"] == "Forbidden"
        assert error["scopes"]["teams"] == ["search"]
        assert "search-*" in error["message"]
    # a team may not claim a cluster for another team either
    claimed = bob.post("/clusters", {"cluster_name": "search-2", "team": "payments"})
    assert claimed.status_code == 403 and claimed.json_body["error"]["field"] == "team"
    # the cluster survived bob, and its owner (or an admin) may delete it
    assert alice.get("/clusters/payments-prod").status_code == 200
    assert root.delete("/clusters/payments-prod", etag).status_code == 200


def test_backfill_is_for_admins_only(users):
    alice, _, root = users
    body = {"accounts": [ACCOUNT], "regions": ["eu-west-1"], "dry_run": True}
    refused = alice.post("/backfill", body)
    assert refused.status_code == 403 and "admin" in refused.json_body["error"]["message"]
    assert root.post("/backfill", body).status_code == 200


def test_history_names_the_token_subject_and_survives_teardown(users):
    alice, _, _ = users
    etag = alice.post("/clusters", {"cluster_name": "payments-prod"}).headers["ETag"]
    assert alice.delete("/clusters/payments-prod", etag).status_code == 200
    answer = alice.get("/clusters/payments-prod/history")
    assert answer.status_code == 200, answer.body
    items = answer.json_body["items"]
    assert [(i["action"], i["actor"], i["source"], i["outcome"]) for i in items] == [
        ("teardown", "user:default/alice", "api", "deleted"),
        ("provision", "user:default/alice", "api", "ready")]


def test_a_token_without_a_team_reads_nothing_and_writes_nothing(users, portal):
    alice, _, _ = users
    alice.post("/clusters", {"cluster_name": "payments-prod"})
    nobody = As(portal, backstage_token("eve"))
    assert names(nobody.get("/clusters")) == []
    assert nobody.post("/clusters", {"cluster_name": "payments-x"}).status_code == 403


@pytest.mark.parametrize("portal", [None], indirect=True)
def test_a_jwt_stage_without_authz_refuses_every_request(portal, caplog):
    # the authorizer fails (API Gateway answers 500, nothing cached), with a log line that says
    # what to set; the routes' middleware refuses too (503 NotConfigured)
    from chalicelib import errors
    with pytest.raises(errors.KipError, match="KIP_AUTHZ"):
        As(portal, backstage_token("alice", "payments")).get("/clusters")
    assert "kip is not configured: KIP_API_AUTH=jwt needs KIP_AUTHZ" in caplog.text


def test_iam_callers_get_their_teams_from_the_principals_map(monkeypatch):
    """KIP_API_AUTH=iam: the SigV4 caller's ARN (API Gateway's identity.userArn) maps to teams
    through KIP_AUTHZ ``principals``; an unmapped caller has none (reads nothing, writes
    nothing); without KIP_AUTHZ an IAM stage has no scopes."""
    import dataclasses

    import app as service_app
    doc = {**AUTHZ, "principals": {"arn:aws:sts::*:assumed-role/payments-deployer/*": "payments",
                                   "arn:aws:iam::*:role/platform-*": "platform"}}
    monkeypatch.setattr(service_app, "settings", dataclasses.replace(
        service_app.settings, api_auth="iam", authz=json.dumps(doc)))
    monkeypatch.setattr(service_app, "_authz_doc", None)

    def caller(arn):
        request = type("Request", (), {"context": {"identity": {"userArn": arn}}})()
        monkeypatch.setattr(service_app.app, "current_request", request, raising=False)
        return service_app._access()
    ci = caller(f"arn:aws:sts::{ACCOUNT}:assumed-role/payments-deployer/ci-run")
    assert ci.teams == ("payments",) and ci.can_read(ACCOUNT, "payments-prod")
    assert not ci.can_read(ACCOUNT, "search-prod") and not ci.admin
    assert caller(f"arn:aws:iam::{ACCOUNT}:role/platform-ops").admin
    stranger = caller(f"arn:aws:iam::{ACCOUNT}:user/mallory")
    assert stranger.teams == () and not stranger.can_read(ACCOUNT, "payments-prod")
    monkeypatch.setattr(service_app, "settings", dataclasses.replace(
        service_app.settings, authz=None))
    monkeypatch.setattr(service_app, "_authz_doc", None)
    assert caller(f"arn:aws:iam::{ACCOUNT}:user/mallory").unrestricted


def test_authz_from_an_ssm_parameter_is_read_once(moto_env, monkeypatch):
    import dataclasses

    import boto3

    import app as service_app
    from chalicelib import aws
    boto3.client("ssm").put_parameter(Name="/kip/authz", Type="SecureString",
                                      Value=json.dumps(AUTHZ))
    reads: list[str] = []
    aws.add_hook("before-call.ssm.GetParameter", lambda params, **_: reads.append("x"))
    monkeypatch.setattr(service_app, "settings", dataclasses.replace(
        service_app.settings, api_auth="jwt", authz="ssm:/kip/authz", authz_refusal=None))
    monkeypatch.setattr(service_app, "_authz_doc", None)
    first, second = service_app._authz(), service_app._authz()
    assert first is second and first.claim == "ent" and set(first.teams) == {"payments", "search"}
    assert len(reads) == 1
