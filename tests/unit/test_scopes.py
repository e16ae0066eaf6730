"""core.scopes: the KIP_AUTHZ document (refused by name when malformed), a token's teams (a
string or a list; Backstage's ``ent`` with its ``group:default/`` prefix), and what two teams and
an admin may read and write."""
from __future__ import annotations

import json

import pytest

from chalicelib.config import Settings
from chalicelib.core import scopes

PAYMENTS_ACCOUNT, SEARCH_ACCOUNT = "111122223333", "444455556666"
DOC = {"claim": "ent", "prefix": "group:default/", "admins": ["platform"],
       "teams": {"payments": {"accounts": [PAYMENTS_ACCOUNT], "clusters": ["payments-*"]},
                 "search": {"accounts": ["*"], "clusters": ["search-*", "shared-*"]},
                 "shop": {"accounts": [PAYMENTS_ACCOUNT], "clusters": ["shared-*"]}},
       "principals": {"arn:aws:sts::*:assumed-role/payments-deployer/*": "payments",
                      "arn:aws:iam::*:role/platform-*": "platform"}}
AUTHZ = scopes.parse(json.dumps(DOC))


def access(*teams: str) -> scopes.Access:
    return scopes.Access.of(AUTHZ, teams)


def test_teams_come_from_the_backstage_ent_claim_with_the_prefix_removed():
    claims = {"ent": ["user:default/alice", "group:default/payments", "group:default/search",
                      "group:other/payments"]}
    assert AUTHZ.teams_from_claims(claims) == ("payments", "search")


def test_a_string_claim_and_a_nested_claim_both_name_teams():
    plain = scopes.parse({"claim": "team", "teams": {}})
    assert plain.teams_from_claims({"team": "payments"}) == ("payments",)
    nested = scopes.parse({"claim": "realm_access.roles", "teams": {}})
    assert nested.teams_from_claims({"realm_access": {"roles": ["a", 7, "b"]}}) == ("a", "b")
    assert plain.teams_from_claims({}) == ()


def test_iam_principals_map_to_teams():
    assert AUTHZ.teams_for_arn(
        "arn:aws:sts::999988887777:assumed-role/payments-deployer/ci") == ("payments",)
    assert AUTHZ.teams_for_arn("arn:aws:iam::999988887777:role/platform-ops") == ("platform",)
    assert AUTHZ.teams_for_arn("arn:aws:iam::999988887777:user/mallory") == ()
    assert scopes.Access.of(AUTHZ, AUTHZ.teams_for_arn(
        "arn:aws:iam::999988887777:role/platform-ops")).admin


def test_reads_only_within_the_teams_scopes():
    assert access("payments").can_read(PAYMENTS_ACCOUNT, "payments-prod")
    assert not access("payments").can_read(SEARCH_ACCOUNT, "payments-prod")   # other account
    assert not access("search").can_read(PAYMENTS_ACCOUNT, "payments-prod")
    assert access("search").can_read(SEARCH_ACCOUNT, "search-1")
    assert access("platform").can_read(SEARCH_ACCOUNT, "anything")           # admin
    assert not access().can_read(PAYMENTS_ACCOUNT, "payments-prod")           # no team
    assert scopes.Access.everyone().can_read(PAYMENTS_ACCOUNT, "x")


def test_writes_name_the_team_that_owns_the_record():
    assert access("payments").write_team(PAYMENTS_ACCOUNT, "payments-prod") == "payments"
    with pytest.raises(PermissionError, match="no team"):
        access("search").write_team(PAYMENTS_ACCOUNT, "payments-prod")
    # a cluster both of the caller's teams cover: the request names one
    both = access("search", "shop")
    with pytest.raises(PermissionError, match="several"):
        both.write_team(PAYMENTS_ACCOUNT, "shared-1")
    assert both.write_team(PAYMENTS_ACCOUNT, "shared-1", wanted="shop") == "shop"
    with pytest.raises(PermissionError, match="'payments' is not one"):
        both.write_team(PAYMENTS_ACCOUNT, "shared-1", wanted="payments")
    # a record owned by shop: search covers the name but does not own it
    with pytest.raises(PermissionError, match="belongs to team 'shop'"):
        access("search").write_team(PAYMENTS_ACCOUNT, "shared-1", owner_team="shop")
    assert both.write_team(PAYMENTS_ACCOUNT, "shared-1", owner_team="shop") == "shop"
    assert access("platform").write_team(SEARCH_ACCOUNT, "x", owner_team="shop") == "shop"


@pytest.mark.parametrize("doc, word", [
    ("{", "not valid JSON"),
    ([], "must be a JSON object"),
    ({"teams": {}}, "KIP_AUTHZ.claim"),
    ({"claim": "g", "extra": 1}, "unknown key 'extra'"),
    ({"claim": "g", "teams": {"a b": {"accounts": ["*"], "clusters": ["*"]}}}, "team name"),
    ({"claim": "g", "teams": {"a": {"accounts": ["12345"], "clusters": ["*"]}}},
     "KIP_AUTHZ.teams.a.accounts"),
    ({"claim": "g", "teams": {"a": {"accounts": ["*"], "clusters": []}}},
     "KIP_AUTHZ.teams.a.clusters"),
    ({"claim": "g", "admins": "platform"}, "KIP_AUTHZ.admins"),
    ({"claim": "g", "principals": {"arn:aws:iam::*:role/x": "ghost"}}, "not a team"),
    ({"claim": "g", "principals": {"role/x": "ghost"}}, "not an ARN glob"),
])
def test_a_malformed_document_is_refused_naming_the_key(doc, word):
    with pytest.raises(ValueError, match="KIP_AUTHZ") as err:
        scopes.parse(doc if isinstance(doc, str) else json.dumps(doc))
    assert word in str(err.value)


def test_settings_validate_inline_authz_and_refuse_jwt_without_it():
    with pytest.raises(ValueError, match="KIP_AUTHZ"):
        Settings.from_env({"KIP_AUTHZ": '{"claim": 1}'})
    with pytest.raises(ValueError, match="ssm:"):
        Settings.from_env({"KIP_AUTHZ": "parameter/kip"})
    jwt_env = {"KIP_API_AUTH": "jwt"}
    assert "KIP_AUTHZ" in Settings.from_env(jwt_env).authz_refusal
    assert Settings.from_env({**jwt_env, "KIP_AUTHZ": "ssm:/kip/authz"}).authz_refusal is None
    assert Settings.from_env({}).authz_refusal is None              # iam: scopes are optional
    assert Settings.from_env({}).audit_days == 400
    with pytest.raises(ValueError, match="KIP_AUDIT_DAYS"):
        Settings.from_env({"KIP_AUDIT_DAYS": "0"})
