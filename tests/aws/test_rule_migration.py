"""Fleet density: one EventBridge rule per cluster, and a gap-free move from the five-rule layout.

A cluster provisioned by an earlier version has five rules (one per kind) that the queue policy
allows. Its next reconciles move it: phase 1 adds the one rule and lets the queue policy allow both;
phase 2, once SQS has had 60 s to apply that policy, removes the old rules and tightens the policy.
At every step each sample event kind is delivered by a rule that targets the queue *and* that the
queue policy allows (moto does not enforce queue policies, so the test checks that part itself).
"""
from __future__ import annotations

import json

import boto3
import pytest

from chalicelib.core import naming, policies
from chalicelib.config import ALL_EVENT_KINDS
from chalicelib.converge.migration import POLICY_SETTLE_SECONDS
from chalicelib.core.spec import ClusterRequest
from tests.support.world import CLUSTER, SHARED_EVENTS, load_event
from tests.support import drive

SAMPLES = sorted(p.name for p in SHARED_EVENTS.glob("*.json")
                 if p.name.startswith(("ec2-", "health-")))


@pytest.fixture
def eng(kit_factory, cluster, clock):
    return kit_factory(clock)


def writes_of(engine, fn):
    from chalicelib import aws
    seen = []
    aws.add_hook("before-call.*.*", lambda model, **_: seen.append(model.name)
                 if aws.is_write(model.name) else None)
    fn()
    return [w for w in seen if w not in ("PutItem", "DeleteItem")]


def make_legacy(engine) -> naming.Names:
    """Turn a fresh provision into what the five-rule version left behind."""
    cid = drive.identity(engine, CLUSTER)
    drive.provision(engine, ClusterRequest(cluster_name=CLUSTER))
    legacy = naming.names_for(cid, engine.settings.prefix, engine.settings.iam_path, legacy=True)
    events, sqs, ddb = boto3.client("events"), boto3.client("sqs"), boto3.client("dynamodb")
    events.remove_targets(Rule=legacy.rule, Ids=[naming.TARGET_ID])
    events.delete_rule(Name=legacy.rule)
    tags = [{"Key": k, "Value": v} for k, v in naming.ownership_tags(cid).items()]
    for kind, rule in legacy.rules.items():
        events.put_rule(Name=rule, EventPattern=json.dumps(policies.EVENT_PATTERNS[kind]),
                        Tags=tags)
        events.put_targets(Rule=rule, Targets=[{"Id": naming.TARGET_ID,
                                                "Arn": legacy.queue_arn}])
    url = sqs.get_queue_url(QueueName=legacy.queue)["QueueUrl"]
    sqs.set_queue_attributes(QueueUrl=url, Attributes={"Policy": json.dumps(
        policies.queue_policy(legacy.queue_arn, list(legacy.rule_arns.values())))})
    # the record of that version: names without the one rule, resources per kind
    rec = drive.describe(engine, cid).item()
    old = {k: v for k, v in legacy.to_dict().items() if k not in ("rule", "rule_arn")}
    resources = dict(rec["resources"])
    resources.pop("rule", None)
    resources["rules"] = {k: {"name": r, "arn": legacy.rule_arns[k], "exists": True,
                              "enabled": True, "target": True} for k, r in legacy.rules.items()}
    rec.update(names=old, resources=resources, spec_hash="from-the-five-rule-version")
    from chalicelib.aws.store import _to_ddb
    ddb.put_item(TableName=engine.settings.table_name, Item=_to_ddb(rec))
    return legacy


def _drain(sqs, url: str) -> None:
    while True:
        got = sqs.receive_message(QueueUrl=url, MaxNumberOfMessages=10).get("Messages", [])
        if not got:
            return
        for m in got:
            sqs.delete_message(QueueUrl=url, ReceiptHandle=m["ReceiptHandle"])


def deliverable_kinds(names: naming.Names) -> set[str]:
    """Kinds whose sample event is matched by a rule that targets the queue and is allowed."""
    events, sqs = boto3.client("events"), boto3.client("sqs")
    url = sqs.get_queue_url(QueueName=names.queue)["QueueUrl"]
    policy = json.loads(sqs.get_queue_attributes(QueueUrl=url, AttributeNames=["Policy"])[
        "Attributes"]["Policy"])
    allowed = set(policy["Statement"][0]["Condition"]["ArnEquals"]["aws:SourceArn"])
    kinds = set()
    for sample in SAMPLES:
        event = load_event(sample)
        _drain(sqs, url)
        for rule in events.list_rules(NamePrefix="kip-")["Rules"]:
            targets = events.list_targets_by_rule(Rule=rule["Name"])["Targets"]
            if rule["Arn"] not in allowed or not any(t["Arn"] == names.queue_arn
                                                     for t in targets):
                events.disable_rule(Name=rule["Name"])     # it could not deliver on AWS
        events.put_events(Entries=[{"Source": event["source"],
                                    "DetailType": event["detail-type"],
                                    "Detail": json.dumps(event["detail"])}])
        got = sqs.receive_message(QueueUrl=url, MaxNumberOfMessages=10).get("Messages", [])
        if any(json.loads(m["Body"])["detail-type"] == event["detail-type"] for m in got):
            kinds.add(sample)
        for rule in events.list_rules(NamePrefix="kip-")["Rules"]:
            events.enable_rule(Name=rule["Name"])
    return kinds


def test_a_new_cluster_gets_one_rule_for_every_kind(eng):
    out = drive.provision(eng, ClusterRequest(cluster_name=CLUSTER))
    names = eng.names(drive.identity(eng, CLUSTER))
    rules = boto3.client("events").list_rules(NamePrefix="kip-")["Rules"]
    assert [r["Name"] for r in rules] == [names.rule]
    assert out.record["resources"]["rule"]["exists"] and out.record["resources"]["rules"] == {}
    assert deliverable_kinds(names) == set(SAMPLES)


def test_five_rule_cluster_moves_to_one_rule_without_a_gap(eng, clock):
    legacy = make_legacy(eng)
    cid = drive.identity(eng, CLUSTER)
    assert deliverable_kinds(legacy) == set(SAMPLES)                       # before

    # phase 1: the one rule is added and allowed; the old rules stay
    drive.reconcile(eng, cid)
    rules = {r["Name"] for r in boto3.client("events").list_rules(NamePrefix="kip-")["Rules"]}
    assert rules == {legacy.rule, *legacy.rules.values()}
    assert deliverable_kinds(legacy) == set(SAMPLES)
    rec = drive.describe(eng, cid)
    assert rec["rule_migration_since"] and rec["names"]["rules"]

    # within SQS's propagation window nothing more happens (and nothing is written)
    clock.now += POLICY_SETTLE_SECONDS - 5
    assert writes_of(eng, lambda: drive.reconcile(eng, cid)) == []

    # phase 2: old rules removed, then the policy names only the one rule
    clock.now += 10
    out = drive.reconcile(eng, cid)
    rules = {r["Name"] for r in boto3.client("events").list_rules(NamePrefix="kip-")["Rules"]}
    assert rules == {legacy.rule}
    assert deliverable_kinds(legacy) == set(SAMPLES)                       # after
    assert out.record["names"]["rules"] == {} and out.record["resources"]["rules"] == {}
    assert "rule_migration_since" not in out.record

    # and the cluster is steady: the next reconcile writes nothing
    assert writes_of(eng, lambda: drive.reconcile(eng, cid)) == []
    drive.teardown(eng, cid)
    assert boto3.client("events").list_rules(NamePrefix="kip-")["Rules"] == []


def test_teardown_of_a_five_rule_cluster_removes_the_old_rules_too(eng):
    legacy = make_legacy(eng)
    drive.teardown(eng, drive.identity(eng, CLUSTER))
    assert boto3.client("events").list_rules(NamePrefix="kip-")["Rules"] == []
    assert legacy.rules


def test_the_one_pattern_stays_far_below_eventbridges_limit():
    assert len(json.dumps(policies.interruption_pattern(ALL_EVENT_KINDS))) < 1024
