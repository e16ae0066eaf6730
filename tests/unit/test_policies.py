"""policies: the controller may only read this cluster's queue; only its rules may send to it."""
from __future__ import annotations

import json

import pytest

from chalicelib.core import naming, policies
from tests.support.world import ACCOUNT, REGION, load_event

QUEUE_ARN = f"arn:aws:sqs:{REGION}:{ACCOUNT}:kip-payments-prod"
KEY_ARN = f"arn:aws:kms:{REGION}:{ACCOUNT}:key/0b5a6c8e-1111-2222-3333-444455556666"


def rule_arns() -> list[str]:
    cid = naming.ClusterId(ACCOUNT, REGION, "payments-prod")
    return list(naming.names_for(cid, "kip-", "/kip/", legacy=True).rule_arns.values())


def allowed_actions(doc: dict) -> dict:
    """resource -> set of actions allowed on it."""
    out: dict = {}
    for st in doc["Statement"]:
        assert st["Effect"] == "Allow"
        actions = st["Action"] if isinstance(st["Action"], list) else [st["Action"]]
        resources = st["Resource"] if isinstance(st["Resource"], list) else [st["Resource"]]
        for res in resources:
            out.setdefault(res, set()).update(actions)
    return out


def test_controller_policy_is_exactly_the_three_sqs_actions_on_the_queue():
    # when
    doc = policies.controller_policy(QUEUE_ARN)

    # then
    assert doc["Version"] == "2012-10-17"
    assert allowed_actions(doc) == {
        QUEUE_ARN: {"sqs:GetQueueUrl", "sqs:ReceiveMessage", "sqs:DeleteMessage"}}
    assert len(doc["Statement"]) == 1
    assert "Condition" not in doc["Statement"][0]
    assert not any("*" in a for st in doc["Statement"] for a in st["Action"])


def test_controller_policy_adds_kms_decrypt_on_the_key_only_when_a_key_is_given():
    # when
    doc = policies.controller_policy(QUEUE_ARN, KEY_ARN)

    # then
    assert allowed_actions(doc) == {
        QUEUE_ARN: {"sqs:GetQueueUrl", "sqs:ReceiveMessage", "sqs:DeleteMessage"},
        KEY_ARN: {"kms:Decrypt"}}


@pytest.mark.parametrize("key", [None, ""])
def test_controller_policy_has_no_kms_statement_without_a_key(key):
    # when
    doc = policies.controller_policy(QUEUE_ARN, key)

    # then
    assert not any(a.startswith("kms:") for st in doc["Statement"] for a in st["Action"])


def test_controller_policy_is_json_serialisable_and_stable():
    # when
    a, b = policies.controller_policy(QUEUE_ARN, KEY_ARN), policies.controller_policy(
        QUEUE_ARN, KEY_ARN)

    # then
    assert json.loads(json.dumps(a)) == a == b


def test_queue_policy_allows_only_eventbridge_sendmessage_from_the_cluster_rules():
    # given
    rules = rule_arns()

    # when
    doc = policies.queue_policy(QUEUE_ARN, rules)

    # then
    allows = [s for s in doc["Statement"] if s["Effect"] == "Allow"]
    assert len(allows) == 1
    allow = allows[0]
    assert allow["Principal"] == {"Service": "events.amazonaws.com"}
    assert allow["Action"] == "sqs:SendMessage"
    assert allow["Resource"] == QUEUE_ARN
    assert allow["Condition"] == {"ArnEquals": {"aws:SourceArn": sorted(rules)}}
    assert len(rules) == 5


def test_queue_policy_denies_plain_http():
    # when
    doc = policies.queue_policy(QUEUE_ARN, rule_arns())

    # then
    deny = [s for s in doc["Statement"] if s.get("Sid") == "DenyHTTP"]
    assert deny == [{
        "Sid": "DenyHTTP", "Effect": "Deny", "Principal": "*", "Action": "sqs:*",
        "Resource": QUEUE_ARN, "Condition": {"Bool": {"aws:SecureTransport": "false"}}}]
    assert {s["Effect"] for s in doc["Statement"]} == {"Allow", "Deny"}


def test_queue_policy_is_independent_of_rule_order():
    # given
    rules = rule_arns()

    # then
    assert policies.queue_policy(QUEUE_ARN, rules) == policies.queue_policy(
        QUEUE_ARN, list(reversed(rules)))


def test_queue_policy_uses_the_china_service_principal_in_aws_cn():
    # when
    doc = policies.queue_policy(QUEUE_ARN.replace("arn:aws:", "arn:aws-cn:"), [], "aws-cn")

    # then
    assert doc["Statement"][0]["Principal"] == {"Service": "events.amazonaws.com.cn"}


def test_dlq_policy_only_denies_plain_http():
    # given
    dlq_arn = QUEUE_ARN + "-dlq"

    # when
    doc = policies.dlq_policy(dlq_arn)

    # then
    assert [s["Sid"] for s in doc["Statement"]] == ["DenyHTTP"]
    assert doc["Statement"][0]["Effect"] == "Deny"
    assert doc["Statement"][0]["Resource"] == dlq_arn


@pytest.mark.parametrize("kind, source, detail_type", [
    ("spot_interruption", "aws.ec2", "EC2 Spot Instance Interruption Warning"),
    ("rebalance_recommendation", "aws.ec2", "EC2 Instance Rebalance Recommendation"),
    ("instance_state_change", "aws.ec2", "EC2 Instance State-change Notification"),
    ("scheduled_change", "aws.health", "AWS Health Event"),
    ("capacity_reservation_interruption", "aws.ec2",
     "EC2 Capacity Reservation Instance Interruption Warning"),
])
def test_event_patterns_match_the_reference_table(kind, source, detail_type):
    # when
    pattern = policies.EVENT_PATTERNS[kind]

    # then
    assert pattern["source"] == [source]
    assert pattern["detail-type"] == [detail_type]


def test_every_event_kind_has_a_pattern_and_a_rule_suffix():
    # then
    assert set(policies.EVENT_PATTERNS) == set(naming.RULE_SUFFIX)


def test_scheduled_change_pattern_narrows_to_ec2_scheduled_changes_and_matches_the_sample():
    # given
    pattern = policies.EVENT_PATTERNS["scheduled_change"]
    sample = load_event("health-scheduled-change.json")

    # then
    assert pattern["detail"] == {"service": ["EC2"], "eventTypeCategory": ["scheduledChange"]}
    assert sample["detail"]["service"] in pattern["detail"]["service"]
    assert sample["detail"]["eventTypeCategory"] in pattern["detail"]["eventTypeCategory"]


def test_one_pattern_matches_every_selected_kind_and_narrows_health():
    # when
    ec2_only = policies.interruption_pattern(["spot_interruption", "rebalance_recommendation"])
    every = policies.interruption_pattern(list(policies.EVENT_PATTERNS))

    # then: EC2 kinds share one branch; Health stays narrowed to EC2 scheduled changes
    assert ec2_only == {"source": ["aws.ec2"], "detail-type": [
        "EC2 Spot Instance Interruption Warning", "EC2 Instance Rebalance Recommendation"]}
    assert every["$or"][1] == policies.EVENT_PATTERNS["scheduled_change"]
    assert len(every["$or"][0]["detail-type"]) == 4
    assert len(json.dumps(every)) < 2048 // 2      # EventBridge's pattern limit, with room
