"""The sequential baseline: the same resources, one plain boto3 call after another.

The order is the reference Terraform setup for Karpenter interruption handling, the
terraform-aws-modules/eks ``modules/karpenter`` submodule (``main.tf``):

    aws_sqs_queue.this -> aws_sqs_queue_policy.this
    -> for each event: aws_cloudwatch_event_rule.this[k] -> aws_cloudwatch_event_target.this[k]
    -> aws_iam_policy.controller -> aws_iam_role_policy_attachment.controller

plus what this service makes on top of the module (a dead-letter queue, a fifth rule for
capacity-reservation interruptions) and the DynamoDB record writes the service also does (the
record is written first with status ``provisioning`` and last with ``ready``).

Resource contents (names, queue attributes, policies, event patterns, tags) come from the same
pure modules the service uses (``naming``, ``spec``), so both sides build identical resources and
only the way the calls are issued differs.

Call sets: the same calls the service makes, one after another.

* provision first reads what exists (the reads the service's observe step makes, as a Terraform
  plan refreshes state), then issues the writes in the module's order. A real ``terraform apply``
  also reads every resource back after creating it; the baseline does not, so it is a lower bound
  of Terraform's time.
* the no-op check issues the same reads the service's observe step does, and no writes.
* teardown refreshes (the same reads as the no-op check) and then deletes in reverse order.

``SequentialBaseline(writes_only=True)`` drops the reads, for a stricter comparison.
"""
from __future__ import annotations

import json
import time
from decimal import Decimal
from typing import Any, Callable

import boto3
from boto3.dynamodb.types import TypeSerializer
from botocore.config import Config

from chalicelib.core import naming
from chalicelib.config import Settings
from chalicelib.core.spec import ClusterRequest, build_spec, resolve_role

_ser = TypeSerializer()


def _ddb(item: dict) -> dict:
    def fix(v: Any) -> Any:
        if isinstance(v, float):
            return Decimal(str(v))
        if isinstance(v, dict):
            return {k: fix(x) for k, x in v.items()}
        if isinstance(v, list):
            return [fix(x) for x in v]
        return v
    return {k: _ser.serialize(fix(v)) for k, v in item.items() if v is not None}


def _iso() -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())


class SequentialBaseline:
    """One call at a time, Terraform order, plain boto3 clients (no engine, no thread pool)."""

    def __init__(self, settings: Settings, account_id: str,
                 hooks: tuple = (), writes_only: bool = False) -> None:
        self.settings, self.account = settings, account_id
        self.writes_only = writes_only
        self.session = boto3.session.Session()
        for event_name, handler in hooks:
            self.session.events.register(event_name, handler)
        cfg = Config(retries={"mode": "standard", "max_attempts": 3})
        region = settings.region
        self.sqs = self.session.client("sqs", region_name=region, config=cfg)
        self.events = self.session.client("events", region_name=region, config=cfg)
        self.iam = self.session.client("iam", region_name=region, config=cfg)
        self.eks = self.session.client("eks", region_name=region, config=cfg)
        self.ddb = self.session.client("dynamodb", region_name=region, config=cfg)

    # ------------------------------------------------------------------ helpers
    def spec(self, cluster_name: str) -> Any:
        cid = naming.ClusterId(self.account, self.settings.region, cluster_name)
        names = naming.names_for(cid, self.settings.prefix, self.settings.iam_path)
        req = ClusterRequest(cluster_name=cluster_name)
        return build_spec(req, cid, names, self.settings), resolve_role(req, cid, self.settings)

    def _record(self, spec: Any, status: str, version: int) -> dict:
        cid = spec.cid
        return {"id": cid.key, "account_id": cid.account_id, "region": cid.region,
                "cluster_name": cid.cluster_name, "status": status, "version": version,
                "source": "baseline", "spec_hash": spec.spec_hash,
                "names": spec.names.to_dict(), "event_kinds": list(spec.event_kinds),
                "karpenter": {"settings.interruptionQueue": spec.names.queue},
                "updated_at": _iso()}

    def _put_record(self, spec: Any, status: str, version: int) -> None:
        if version == 1:
            cond: dict = {"ConditionExpression": "attribute_not_exists(id)"}
        else:
            cond = {"ConditionExpression": "version = :v",
                    "ExpressionAttributeValues": {":v": {"N": str(version - 1)}}}
        self.ddb.put_item(TableName=self.settings.table_name,
                          Item=_ddb(self._record(spec, status, version)), **cond)

    # ------------------------------------------------------------------ use cases
    def provision(self, cluster_name: str) -> dict:
        """Create everything; returns the 'state' teardown and check use (like Terraform's)."""
        spec, role = self.spec(cluster_name)
        n, tags = spec.names, spec.tags
        tag_list = [{"Key": k, "Value": v} for k, v in tags.items()]
        if not self.writes_only:
            self.plan_reads(spec, role)
        self._put_record(spec, "provisioning", 1)
        # our addition: the dead-letter queue the main queue's redrive policy names
        dlq_url = self.sqs.create_queue(QueueName=n.dlq, Attributes=spec.dlq_attributes,
                                        tags=tags)["QueueUrl"]
        # aws_sqs_queue.this (with SSE) ...
        attrs = {k: v for k, v in spec.queue_attributes.items() if k != "Policy"}
        queue_url = self.sqs.create_queue(QueueName=n.queue, Attributes=attrs,
                                          tags=tags)["QueueUrl"]
        # ... then aws_sqs_queue_policy.this
        self.sqs.set_queue_attributes(QueueUrl=queue_url,
                                      Attributes={"Policy": spec.queue_attributes["Policy"]})
        # aws_cloudwatch_event_rule followed by its aws_cloudwatch_event_target
        self.events.put_rule(Name=n.rule, EventPattern=json.dumps(spec.rule_pattern),
                             State="ENABLED", Description="Karpenter interruption handling for "
                                                          f"{spec.cid.key}", Tags=tag_list)
        r = self.events.put_targets(Rule=n.rule, Targets=[
            {"Id": naming.TARGET_ID, "Arn": n.queue_arn}])
        if r.get("FailedEntryCount"):
            raise RuntimeError(f"baseline PutTargets {n.rule} failed: {r['FailedEntries']}")
        # aws_iam_policy.controller, then aws_iam_role_policy_attachment.controller
        policy_arn = self.iam.create_policy(
            PolicyName=n.policy, Path=n.policy_path,
            PolicyDocument=json.dumps(spec.controller_policy),
            Description=f"Karpenter interruption queue access for {spec.cid.key}",
            Tags=tag_list)["Policy"]["Arn"]
        self.iam.attach_role_policy(RoleName=role.name, PolicyArn=policy_arn)
        self._put_record(spec, "ready", 2)
        return {"cluster_name": cluster_name, "queue_url": queue_url, "dlq_url": dlq_url,
                "policy_arn": policy_arn, "role": role.name, "version": 2}

    def plan_reads(self, spec: Any, role: Any) -> None:
        """What exists before creating: the service's first read stage, one call at a time."""
        from botocore.exceptions import ClientError
        n = spec.names

        def read(fn: Callable[..., Any], **kw: Any) -> None:
            try:
                fn(**kw)
            except ClientError:
                pass            # "does not exist" is the expected answer here
        read(self.ddb.get_item, TableName=self.settings.table_name,
             Key={"id": {"S": spec.cid.key}}, ConsistentRead=True)
        read(self.eks.describe_cluster, name=spec.cid.cluster_name)
        for qname in (n.queue, n.dlq):
            read(self.sqs.get_queue_url, QueueName=qname)
        read(self.iam.get_policy, PolicyArn=n.policy_arn)
        read(self.events.describe_rule, Name=n.rule)
        read(self.iam.list_attached_role_policies, RoleName=role.name)

    def check(self, state: dict) -> bool:
        """A no-op re-provision: read everything (a refresh), find nothing to change."""
        spec, role = self.spec(state["cluster_name"])
        n = spec.names
        self.ddb.get_item(TableName=self.settings.table_name, Key={"id": {"S": spec.cid.key}},
                          ConsistentRead=True)
        self.eks.describe_cluster(name=spec.cid.cluster_name)
        in_sync = True
        for qname in (n.dlq, n.queue):
            url = self.sqs.get_queue_url(QueueName=qname)["QueueUrl"]
            self.sqs.get_queue_attributes(QueueUrl=url, AttributeNames=["All"])
            self.sqs.list_queue_tags(QueueUrl=url)
        d = self.events.describe_rule(Name=n.rule)
        in_sync &= json.loads(d["EventPattern"]) == spec.rule_pattern
        self.events.list_tags_for_resource(ResourceARN=n.rule_arn)
        t = self.events.list_targets_by_rule(Rule=n.rule)["Targets"]
        in_sync &= any(x["Id"] == naming.TARGET_ID for x in t)
        p = self.iam.get_policy(PolicyArn=n.policy_arn)["Policy"]
        self.iam.get_policy_version(PolicyArn=n.policy_arn, VersionId=p["DefaultVersionId"])
        self.iam.list_policy_versions(PolicyArn=n.policy_arn)
        att = self.iam.list_attached_role_policies(RoleName=role.name)["AttachedPolicies"]
        in_sync &= any(a["PolicyArn"] == n.policy_arn for a in att)
        return in_sync

    def teardown(self, state: dict) -> None:
        """Terraform destroy order (reverse dependencies), one call at a time, from the state."""
        spec, _ = self.spec(state["cluster_name"])
        n = spec.names
        version = state["version"] + 1
        if not self.writes_only:
            self.check(state)
        self._put_record(spec, "deleting", version)
        self.iam.detach_role_policy(RoleName=state["role"], PolicyArn=state["policy_arn"])
        self.iam.delete_policy(PolicyArn=state["policy_arn"])
        self.events.remove_targets(Rule=n.rule, Ids=[naming.TARGET_ID])
        self.events.delete_rule(Name=n.rule)
        self.sqs.set_queue_attributes(QueueUrl=state["queue_url"], Attributes={"Policy": ""})
        self.sqs.delete_queue(QueueUrl=state["queue_url"])
        self.sqs.delete_queue(QueueUrl=state["dlq_url"])
        self.ddb.delete_item(TableName=self.settings.table_name,
                             Key={"id": {"S": spec.cid.key}},
                             ConditionExpression="version = :v",
                             ExpressionAttributeValues={":v": {"N": str(version)}})


def footprint(session: Any, settings: Settings, account: str, cluster_name: str) -> dict:
    """What exists for a cluster, name-independent, to check both sides built the same thing."""
    cfg = Config(retries={"mode": "standard", "max_attempts": 3})
    sqs = session.client("sqs", region_name=settings.region, config=cfg)
    events = session.client("events", region_name=settings.region, config=cfg)
    iam = session.client("iam", region_name=settings.region, config=cfg)
    cid = naming.ClusterId(account, settings.region, cluster_name)
    n = naming.names_for(cid, settings.prefix, settings.iam_path)
    role = resolve_role(ClusterRequest(cluster_name=cluster_name), cid, settings)
    out: dict = {}
    for key, qname in (("queue", n.queue), ("dlq", n.dlq)):
        url = sqs.get_queue_url(QueueName=qname)["QueueUrl"]
        a = sqs.get_queue_attributes(QueueUrl=url, AttributeNames=["All"])["Attributes"]
        redrive = json.loads(a.get("RedrivePolicy") or "{}")
        policy = json.loads(a.get("Policy") or "{}")
        out[key] = {"sse": a.get("SqsManagedSseEnabled"),
                    "retention": a.get("MessageRetentionPeriod"),
                    "redrive_max": redrive.get("maxReceiveCount"),
                    "policy_sids": sorted(s.get("Sid", "") for s in policy.get("Statement", [])),
                    "tags": sorted(sqs.list_queue_tags(QueueUrl=url).get("Tags", {}))}
    out["rules"] = {}
    for kind, rule in (("all", n.rule),):
        d = events.describe_rule(Name=rule)
        t = events.list_targets_by_rule(Rule=rule)["Targets"]
        out["rules"][kind] = {"pattern": json.loads(d["EventPattern"]), "state": d["State"],
                              "targets": sorted((x["Id"], x["Arn"] == n.queue_arn) for x in t)}
    p = iam.get_policy(PolicyArn=n.policy_arn)["Policy"]
    doc = iam.get_policy_version(PolicyArn=n.policy_arn,
                                 VersionId=p["DefaultVersionId"])["PolicyVersion"]["Document"]
    doc = json.loads(doc) if isinstance(doc, str) else doc
    out["policy_actions"] = sorted(a for s in doc["Statement"] for a in s["Action"])
    att = iam.list_attached_role_policies(RoleName=role.name)["AttachedPolicies"]
    out["attached"] = any(x["PolicyArn"] == n.policy_arn for x in att)
    return out
