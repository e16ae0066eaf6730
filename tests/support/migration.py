"""The five-rule layout kip moves from, built in moto, and what delivers: which event kinds some
existing, enabled rule targeting the queue delivers, with the queue policy allowing it."""
from __future__ import annotations

import json

import boto3

from chalicelib.core import naming, policies
from chalicelib.core.spec import ClusterRequest
from tests.support import drive
from tests.support.world import CLUSTER, SHARED_EVENTS, load_event

SAMPLES = sorted(p.name for p in SHARED_EVENTS.glob("*.json")
                 if p.name.startswith(("ec2-", "health-")))


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


def allowed_by_queue_policy(queue_url: str) -> set:
    """The rule ARNs the queue policy lets EventBridge send from (Allow sqs:SendMessage)."""
    raw = boto3.client("sqs").get_queue_attributes(QueueUrl=queue_url, AttributeNames=[
        "Policy"])["Attributes"].get("Policy")
    out: set = set()
    for st in json.loads(raw)["Statement"] if raw else []:
        if st["Effect"] == "Allow" and "sqs:SendMessage" in json.dumps(st["Action"]):
            arns = st.get("Condition", {}).get("ArnEquals", {}).get("aws:SourceArn", [])
            out.update([arns] if isinstance(arns, str) else arns)
    return out


def deliverable_kinds(names: naming.Names) -> set[str]:
    """Kinds whose sample event some existing, enabled rule matches that targets the queue and
    that the queue policy allows. Read from AWS, matched with moto's own pattern matcher: moto
    enforces no queue policy, its PutEvents delivers through disabled rules too, and it has no
    TestEventPattern, so sending events could not show a gap."""
    from moto.events.models import EventPattern
    events, sqs = boto3.client("events"), boto3.client("sqs")
    allowed = allowed_by_queue_policy(sqs.get_queue_url(QueueName=names.queue)["QueueUrl"])
    senders = [r["EventPattern"] for r in events.list_rules(NamePrefix="kip-")["Rules"]
               if r.get("State") == "ENABLED" and r["Arn"] in allowed and
               any(t["Arn"] == names.queue_arn
                   for t in events.list_targets_by_rule(Rule=r["Name"])["Targets"])]
    return {sample for sample in SAMPLES
            if any(EventPattern.load(pattern).matches_event(load_event(sample))
                   for pattern in senders)}
