"""Drift repaired from CloudTrail change events: on_drift_event, invoked like Lambda would."""
from __future__ import annotations

import dataclasses
import json
import time

import boto3
import pytest

from tests.support.events import KIP_LAMBDA_ROLE, cloudtrail, rule_of
from tests.support.world import ACCOUNT, REGION, load_event, make_cluster, make_role
from tests.support import drive

@pytest.fixture
def provisioned(api, moto_env):
    make_cluster("payments-prod")
    make_role("KarpenterController-payments-prod")
    r = api.http.post("/clusters", body=json.dumps({"cluster_name": "payments-prod"}),
                      headers={"Content-Type": "application/json"})
    assert r.status_code == 201, r.json_body
    return r.json_body["names"]


def invoke(api, event: dict) -> tuple[dict, float]:
    started = time.perf_counter()
    out = api.lambda_.invoke("on_drift_event", event).payload
    return out, time.perf_counter() - started


def test_deleted_rule_is_recreated_with_its_target(api, provisioned):
    # given someone deletes the cluster's rule
    events, rule = boto3.client("events"), rule_of(provisioned)
    events.remove_targets(Rule=rule, Ids=["KarpenterInterruptionQueueTarget"])
    events.delete_rule(Name=rule)
    # when CloudTrail's DeleteRule event arrives
    out, took = invoke(api, cloudtrail("events", "DeleteRule", {"name": rule}))
    # then the rule and its target are back
    assert out["repaired"] is True, out
    assert events.describe_rule(Name=rule)["State"] == "ENABLED"
    assert events.list_targets_by_rule(Rule=rule)["Targets"]
    print(f"drift repair (DeleteRule) in-process: {took * 1000:.0f} ms")


def test_removed_target_event_names_the_rule_in_rule(api, provisioned):
    events, rule = boto3.client("events"), rule_of(provisioned)
    events.remove_targets(Rule=rule, Ids=["KarpenterInterruptionQueueTarget"])
    out, _ = invoke(api, cloudtrail("events", "RemoveTargets",
                                    {"rule": rule, "ids": ["KarpenterInterruptionQueueTarget"]}))
    assert out["repaired"] is True, out
    assert events.list_targets_by_rule(Rule=rule)["Targets"]


def test_deleted_queue_is_recreated(api, provisioned):
    sqs = boto3.client("sqs")
    url = sqs.get_queue_url(QueueName=provisioned["queue"])["QueueUrl"]
    sqs.delete_queue(QueueUrl=url)
    out, _ = invoke(api, cloudtrail("sqs", "DeleteQueue", {"queueUrl": url}))
    assert out["repaired"] is True, out
    assert sqs.get_queue_url(QueueName=provisioned["queue"])["QueueUrl"]


def test_detached_policy_is_reattached_from_the_us_east_1_event(api, provisioned):
    iam = boto3.client("iam")
    role = "KarpenterController-payments-prod"
    iam.detach_role_policy(RoleName=role, PolicyArn=provisioned["policy_arn"])
    # IAM is global: its CloudTrail events reach EventBridge in us-east-1 only
    out, _ = invoke(api, cloudtrail("iam", "DetachRolePolicy",
                                    {"roleName": role, "policyArn": provisioned["policy_arn"]},
                                    region="us-east-1"))
    assert out["repaired"] is True, out
    attached = iam.list_attached_role_policies(RoleName=role)["AttachedPolicies"]
    assert [p["PolicyArn"] for p in attached] == [provisioned["policy_arn"]]


def test_a_change_by_kips_member_account_role_is_ignored(api, provisioned):
    events, rule = boto3.client("events"), rule_of(provisioned)
    events.disable_rule(Name=rule)
    out, _ = invoke(api, cloudtrail(
        "events", "DisableRule", {"name": rule},
        actor=f"arn:aws:sts::{ACCOUNT}:assumed-role/kip-provisioner/kip-provisioner",
        issuer=f"arn:aws:iam::{ACCOUNT}:role/kip-provisioner"))
    assert out == {"ignored": "a change made by kip itself"}
    assert events.describe_rule(Name=rule)["State"] == "DISABLED"     # left to the sweep


def test_a_change_by_kips_lambda_role_is_ignored(api, provisioned, monkeypatch):
    import app as service_app
    monkeypatch.setattr(service_app, "settings", dataclasses.replace(
        service_app.settings, service_role_arns=(KIP_LAMBDA_ROLE,)))
    events, rule = boto3.client("events"), rule_of(provisioned)
    events.disable_rule(Name=rule)
    out, _ = invoke(api, cloudtrail(
        "events", "DisableRule", {"name": rule},
        actor=f"arn:aws:sts::{ACCOUNT}:assumed-role/kip-prod-DefaultRole-ABC/kip-prod-sweep",
        issuer=KIP_LAMBDA_ROLE))
    assert out == {"ignored": "a change made by kip itself"}
    assert events.describe_rule(Name=rule)["State"] == "DISABLED"


def test_resources_kip_does_not_record_are_ignored(api, provisioned, engine):
    events = boto3.client("events")
    # a rule under kip's prefix that no record names, and one outside the prefix
    for name in ("kip-someone-elses-rule", "team-rule"):
        events.put_rule(Name=name, EventPattern=json.dumps({"source": ["x"]}))
        out, _ = invoke(api, cloudtrail("events", "DisableRule", {"name": name}))
        assert "ignored" in out, out
        assert "repaired" not in out
    assert [r.id for r in drive.page(engine)[0]] == [f"{ACCOUNT}/{REGION}/payments-prod"]


@pytest.mark.parametrize("event", [
    {}, {"detail": None}, {"detail": {"eventSource": "events.amazonaws.com"}},
    {"detail": {"eventSource": "events.amazonaws.com", "eventName": "DeleteRule",
                "requestParameters": ["x"]}},
    {"detail": {"eventSource": "sqs.amazonaws.com", "eventName": "DeleteQueue",
                "requestParameters": {"queueUrl": 7}}},
])
def test_malformed_events_are_ignored_never_raised(api, moto_env, event):
    # EventBridge always sends the envelope (Chalice reads it): the detail is what varies
    envelope = {"version": "0", "id": "x", "detail-type": "AWS API Call via CloudTrail",
                "source": "aws.events", "account": ACCOUNT, "time": "2026-11-20T10:00:00Z",
                "region": REGION, "resources": [], "detail": {}}
    out, _ = invoke(api, {**envelope, **event})
    assert "ignored" in out


def test_a_failed_call_changed_nothing_and_is_ignored(api, provisioned):
    event = cloudtrail("events", "DeleteRule", {"name": rule_of(provisioned)})
    event["detail"]["errorCode"] = "AccessDenied"
    out, _ = invoke(api, event)
    assert out["ignored"].startswith("the call failed")
