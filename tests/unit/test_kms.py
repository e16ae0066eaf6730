"""The pure KMS rules: key state checks and the key-policy evaluator (events.amazonaws.com must be
allowed kms:GenerateDataKey and kms:Decrypt on the key, and not explicitly denied)."""
from __future__ import annotations

import json

import pytest

from chalicelib import errors
from chalicelib.core import kms
from chalicelib.core.observed import KeyState

ACCOUNT, REGION = "123456789012", "eu-west-1"
KEY_ID = "1234abcd-12ab-34cd-56ef-1234567890ab"
KEY_ARN = f"arn:aws:kms:{REGION}:{ACCOUNT}:key/{KEY_ID}"
ROOT = {"Sid": "Enable IAM User Permissions", "Effect": "Allow",
        "Principal": {"AWS": f"arn:aws:iam::{ACCOUNT}:root"}, "Action": "kms:*", "Resource": "*"}
GRANT = {"Sid": "AllowEventBridge", "Effect": "Allow",
         "Principal": {"Service": "events.amazonaws.com"},
         "Action": ["kms:GenerateDataKey", "kms:Decrypt"], "Resource": "*"}


def policy(*statements: dict) -> dict:
    return {"Version": "2012-10-17", "Statement": list(statements)}


def key(**kw) -> KeyState:
    base = dict(key_id=KEY_ID, arn=KEY_ARN, manager="CUSTOMER", state="Enabled",
                spec="SYMMETRIC_DEFAULT", usage="ENCRYPT_DECRYPT")
    return KeyState(**{**base, **kw})


def missing(doc: dict) -> list[str]:
    return [g.action for g in kms.eventbridge_gaps(doc, KEY_ARN)]


def refusal(k, doc) -> errors.ValidationError:
    with pytest.raises(errors.ValidationError) as exc:
        kms.usable_key_arn(KEY_ARN, k, ACCOUNT, REGION, policy=doc)
    assert exc.value.field == "kms_key_id"
    assert KEY_ARN in exc.value.message
    return exc.value


# ----------------------------------------------------------------------------- the evaluator

def test_the_documented_grant_is_enough():
    assert missing(policy(ROOT, GRANT)) == []


def test_kms_default_policy_does_not_grant_eventbridge():
    # the account-root delegation lets IAM principals of the account in, not a service principal
    assert missing(policy(ROOT)) == ["kms:GenerateDataKey", "kms:Decrypt"]


@pytest.mark.parametrize("actions", [
    "kms:*", "*", ["kms:GenerateDataKey*", "kms:Decrypt"], ["KMS:generatedatakey", "kms:DECRYPT"],
    ["kms:Generate*", "kms:Decr?pt"], ["kms:GenerateDataKey", "kms:ReEncrypt*", "kms:Decrypt"],
])
def test_action_wildcards_and_case_follow_iam(actions):
    assert missing(policy({**GRANT, "Action": actions})) == []


@pytest.mark.parametrize("actions, absent", [
    (["kms:Decrypt"], ["kms:GenerateDataKey"]),
    (["kms:GenerateDataKey"], ["kms:Decrypt"]),
    (["kms:GenerateDataKeyWithoutPlaintext", "kms:Decrypt"], ["kms:GenerateDataKey"]),
    (["kms:Encrypt"], ["kms:GenerateDataKey", "kms:Decrypt"]),
])
def test_partial_grants_name_what_is_missing(actions, absent):
    assert missing(policy({**GRANT, "Action": actions})) == absent


def test_grants_may_be_split_over_statements():
    assert missing(policy({**GRANT, "Action": "kms:GenerateDataKey"},
                          {**GRANT, "Sid": "b", "Action": "kms:Decrypt"})) == []


@pytest.mark.parametrize("principal", [
    {"Service": "events.amazonaws.com"}, {"Service": ["sns.amazonaws.com", "events.amazonaws.com"]},
    "*", {"AWS": "*"}, {"AWS": ["*"]},
])
def test_principals_that_cover_the_service(principal):
    assert missing(policy({**GRANT, "Principal": principal})) == []


@pytest.mark.parametrize("principal", [
    {"Service": "sns.amazonaws.com"}, {"AWS": f"arn:aws:iam::{ACCOUNT}:root"},
    {"AWS": f"arn:aws:iam::{ACCOUNT}:role/events"}, {"Federated": "*"},
])
def test_principals_that_do_not_cover_the_service(principal):
    assert missing(policy({**GRANT, "Principal": principal})) == list(kms.REQUIRED_ACTIONS)


def test_a_condition_guarded_wildcard_principal_is_not_relied_on():
    stmt = {**GRANT, "Principal": "*",
            "Condition": {"StringEquals": {"kms:CallerAccount": ACCOUNT}}}
    assert missing(policy(stmt)) == list(kms.REQUIRED_ACTIONS)


def test_a_conditioned_service_grant_counts():
    # AWS recommends narrowing the service grant with aws:SourceAccount / aws:SourceArn
    stmt = {**GRANT, "Condition": {"StringEquals": {"aws:SourceAccount": ACCOUNT}}}
    assert missing(policy(stmt)) == []


@pytest.mark.parametrize("resource, ok", [
    ("*", True), (KEY_ARN, True), ([KEY_ARN], True), (f"arn:aws:kms:{REGION}:{ACCOUNT}:key/*", True),
    (f"arn:aws:kms:{REGION}:{ACCOUNT}:key/other", False), ("arn:aws:s3:::bucket", False),
])
def test_resource_is_star_or_matches_the_key_arn(resource, ok):
    assert (missing(policy({**GRANT, "Resource": resource})) == []) is ok


def test_a_statement_without_resource_grants_nothing():
    stmt = {k: v for k, v in GRANT.items() if k != "Resource"}
    assert missing(policy(stmt)) == list(kms.REQUIRED_ACTIONS)


@pytest.mark.parametrize("deny", [
    {"Effect": "Deny", "Principal": {"Service": "events.amazonaws.com"}, "Action": "kms:Decrypt",
     "Resource": "*"},
    {"Effect": "Deny", "Principal": "*", "Action": "kms:Decrypt", "Resource": "*"},
    {"Effect": "Deny", "Principal": {"AWS": "*"}, "Action": "kms:Decr*", "Resource": KEY_ARN},
    {"Effect": "Deny", "NotPrincipal": {"AWS": f"arn:aws:iam::{ACCOUNT}:role/admin"},
     "Action": "kms:Decrypt", "Resource": "*"},
    {"Effect": "Deny", "Principal": "*", "Action": "kms:Decrypt", "Resource": "*",
     "Condition": {"StringNotEquals": {"aws:PrincipalOrgID": "o-abc"}}},
])
def test_an_explicit_deny_wins(deny):
    gaps = kms.eventbridge_gaps(policy(ROOT, GRANT, {"Sid": "NoDecrypt", **deny}), KEY_ARN)
    assert [(g.action, g.reason, g.statement) for g in gaps] == [
        ("kms:Decrypt", "denied", "'NoDecrypt'")]


@pytest.mark.parametrize("deny", [
    {"Effect": "Deny", "Principal": "*", "Action": "kms:*", "Resource": "*",
     "Condition": {"Bool": {"aws:SecureTransport": "false"}}},
    {"Effect": "Deny", "Principal": {"AWS": f"arn:aws:iam::{ACCOUNT}:role/x"}, "Action": "kms:*",
     "Resource": "*"},
    {"Effect": "Deny", "Principal": "*", "Action": "kms:ScheduleKeyDeletion", "Resource": "*"},
    {"Effect": "Deny", "NotPrincipal": {"Service": "events.amazonaws.com"}, "Action": "kms:*",
     "Resource": "*"},
])
def test_denies_that_cannot_apply_to_eventbridge_are_ignored(deny):
    assert missing(policy(ROOT, GRANT, deny)) == []


@pytest.mark.parametrize("doc", [None, {}, {"Statement": []}, {"Statement": "nope"}, "text"])
def test_empty_or_malformed_policies_grant_nothing(doc):
    assert missing(doc) == list(kms.REQUIRED_ACTIONS)


def test_a_single_statement_object_is_read():
    assert missing({"Version": "2012-10-17", "Statement": GRANT}) == []


# ----------------------------------------------------------------------------- the decision

def test_a_usable_key_returns_its_arn():
    assert kms.usable_key_arn("alias/karpenter", key(), ACCOUNT, REGION,
                              policy=policy(ROOT, GRANT)) == KEY_ARN


@pytest.mark.parametrize("k, words", [
    (key(state="Disabled"), "disabled"),
    (key(state="PendingDeletion"), "pending deletion"),
    (key(state="PendingImport"), "PendingImport"),
    (key(spec="RSA_2048"), "RSA_2048"),
    (key(spec="HMAC_256", usage="GENERATE_VERIFY_MAC"), "HMAC_256"),
    (key(usage="SIGN_VERIFY"), "SIGN_VERIFY"),
])
def test_unusable_key_states_are_refused_even_with_a_good_policy(k, words):
    err = refusal(k, policy(ROOT, GRANT))
    assert words in err.message


def test_a_policy_without_the_grant_is_refused_with_the_statement_to_add():
    err = refusal(key(), policy(ROOT))
    assert "kms:GenerateDataKey" in err.message and "kms:Decrypt" in err.message
    assert json.dumps(kms.required_statement(), sort_keys=True) in err.message
    detail = err.details[0]
    assert detail["missing"] == ["kms:GenerateDataKey", "kms:Decrypt"]
    assert detail["statement_to_add"] == kms.required_statement()
    # the statement kip asks for is itself sufficient
    assert missing(policy(ROOT, detail["statement_to_add"])) == []


def test_a_deny_is_named_in_the_refusal():
    deny = {"Sid": "NoEvents", "Effect": "Deny", "Principal": {"Service": "events.amazonaws.com"},
            "Action": "kms:*", "Resource": "*"}
    err = refusal(key(), policy(ROOT, GRANT, deny))
    assert "'NoEvents'" in err.message and "Deny" in err.message
    assert err.details[0]["denied_by"] == ["'NoEvents'", "'NoEvents'"]


def test_existing_checks_are_kept():
    with pytest.raises(errors.ValidationError, match="not found"):
        kms.usable_key_arn("alias/x", None, ACCOUNT, REGION, policy=None)
    with pytest.raises(errors.ValidationError, match="AWS-managed"):
        kms.usable_key_arn("alias/x", key(manager="AWS"), ACCOUNT, REGION,
                           policy=policy(ROOT, GRANT))


def test_an_unreadable_policy_names_the_permission_and_the_role():
    err = kms.unreadable_policy(KEY_ARN, ACCOUNT, REGION, "AccessDeniedException",
                                "the role 'kip-provisioner' that kip assumes in account 1")
    assert err.status == 400 and err.field == "kms_key_id"
    assert "could not read the key policy" in err.message
    assert "kms:GetKeyPolicy" in err.message and "kip-provisioner" in err.message
