"""The account allow-list decision (pure) and its settings."""
from __future__ import annotations

import dataclasses

import pytest

from chalicelib import errors
from chalicelib.core import tenancy
from chalicelib.config import Settings

OWN, LISTED, OTHER = "123456789012", "210987654321", "111122223333"


def settings(**kw) -> Settings:
    return dataclasses.replace(Settings(), **kw)


def never(account):
    raise AssertionError("Organizations must not be asked")


@pytest.mark.parametrize("kw,account,verdict", [
    ({}, OTHER, True),                                               # local: any account
    ({"allowed_accounts": frozenset({LISTED})}, LISTED, True),
    ({"allowed_accounts": frozenset({LISTED})}, OTHER, False),
    ({"allowed_accounts": frozenset({LISTED})}, OWN, True),          # own account, always
    ({"org_id": "o-abcdefghij"}, OTHER, None),                       # only Organizations knows
    ({"org_id": "o-abcdefghij", "allowed_accounts": frozenset({LISTED})}, LISTED, True),
])
def test_decide(kw, account, verdict):
    assert tenancy.decide(account, OWN, settings(**kw)) is verdict


def test_refusal_names_the_account_and_the_field():
    s = settings(allowed_accounts=frozenset({LISTED}))
    tenancy.require_allowed(LISTED, OWN, s, never)
    with pytest.raises(errors.Forbidden) as exc:
        tenancy.require_allowed(OTHER, OWN, s, never, field="accounts")
    assert exc.value.field == "accounts" and OTHER in exc.value.message
    assert exc.value.status == 403 and not exc.value.retryable


def test_org_membership_is_the_organization_id_match():
    s = settings(org_id="o-abcdefghij")
    tenancy.require_allowed(OTHER, OWN, s, lambda a: "o-abcdefghij")
    for answer in (None, "o-zzzzzzzzzz"):
        with pytest.raises(errors.Forbidden):
            tenancy.require_allowed(OTHER, OWN, s, lambda a, answer=answer: answer)


@pytest.mark.parametrize("env,name", [
    ({"KIP_ALLOWED_ACCOUNTS": "12345,210987654321"}, "KIP_ALLOWED_ACCOUNTS"),
    ({"KIP_ORG_ID": "org-1"}, "KIP_ORG_ID"),
    ({"KIP_ADOPT_REGIONS": "eu-west-1,Mars"}, "KIP_ADOPT_REGIONS"),
])
def test_bad_or_missing_settings_refuse_to_start(env, name):
    with pytest.raises(ValueError, match=name):
        Settings.from_env(env)


def test_a_required_but_missing_account_list_is_a_refusal_not_an_import_error():
    # the lists are stack parameters: packaging imports the app without them; handlers refuse
    s = Settings.from_env({"KIP_REQUIRE_ACCOUNT_LIST": "true"})
    assert "KIP_ALLOWED_ACCOUNTS" in s.reach_refusal and "KIP_ORG_ID" in s.reach_refusal
    assert Settings.from_env({"KIP_REQUIRE_ACCOUNT_LIST": "true",
                              "KIP_ORG_ID": "o-abcdefghij"}).reach_refusal is None
    assert Settings.from_env({}).reach_refusal is None


def test_the_external_id_is_read_from_its_secret_once_given():
    from chalicelib.config import with_external_id
    arn = "arn:aws:secretsmanager:eu-west-1:123456789012:secret:kip-external-id-AbCdEf"
    s = Settings.from_env({"KIP_EXTERNAL_ID_SECRET_ARN": arn})
    reads = []
    got = with_external_id(s, lambda a: reads.append(a) or " s3cr3t-0123456789 ")
    assert got.external_id == "s3cr3t-0123456789" and reads == [arn]
    plain = Settings.from_env({"KIP_EXTERNAL_ID_SECRET_ARN": arn, "KIP_EXTERNAL_ID": "given"})
    assert with_external_id(plain, lambda a: 1 / 0).external_id == "given"
    with pytest.raises(ValueError, match="KIP_EXTERNAL_ID_SECRET_ARN"):
        with_external_id(s, lambda a: "")


def test_settings_parse_the_lists():
    s = Settings.from_env({"KIP_ALLOWED_ACCOUNTS": f" {LISTED}, {OTHER},{LISTED}",
                           "KIP_ORG_ID": "o-abcdefghij", "KIP_REQUIRE_ACCOUNT_LIST": "true",
                           "KIP_ADOPT_REGIONS": "eu-west-1,us-west-2"})
    assert s.allowed_accounts == {LISTED, OTHER} and s.org_id == "o-abcdefghij"
    assert s.adopt_regions == ("eu-west-1", "us-west-2")
