"""Snapshots of what exists, read with plain boto3 clients (never through the code under test,
so no hook sees these reads): normalized so two worlds can be compared, with readable diffs.

``snapshot`` is the reliability harness's full picture (queues, rules, policies with versions,
role attachments, records); ``managed`` is the smaller one of the engine tests (no records, only
roles that have attachments), which can also read another account through a session."""
from __future__ import annotations

import contextlib
import json
from typing import Any, Optional

from botocore.exceptions import ClientError

from chalicelib.core import naming
from tests.support.world import IAM_PATH, PREFIX, REGION, ROLE, plain


VOLATILE_QUEUE_ATTRS = {"CreatedTimestamp", "LastModifiedTimestamp", "ApproximateNumberOfMessages",
                        "ApproximateNumberOfMessagesNotVisible",
                        "ApproximateNumberOfMessagesDelayed"}
RECORD_NOISE = {"version", "write_id", "updated_at", "created_at", "source", "applied", "lease_owner",
                "verified_at", "settling",
                "lease_expires", "spec_hash", "removed"}


def _json(value: Any) -> Any:
    if isinstance(value, str):
        try:
            return json.loads(value)
        except ValueError:
            return value
    return value


def from_ddb(item: Optional[dict]) -> Optional[dict]:
    """A DynamoDB item as plain Python, decoded as the product's store decodes it."""
    from chalicelib.aws.store import _from_ddb
    return _from_ddb(item)


def snapshot(table: str, prefix: str = PREFIX, iam_path: str = IAM_PATH,
             region: str = REGION, substitute: Optional[dict] = None,
             expected_spec_hash: Optional[str] = None, table_region: str = REGION) -> dict:
    """What exists, normalized so two worlds can be compared: SQS, EventBridge, IAM, the record.

    Uses plain boto3 clients (not chalicelib.aws), so the tap never sees these reads.
    """
    sqs, events = plain("sqs", region), plain("events", region)
    iam, ddb = plain("iam", region), plain("dynamodb", table_region)
    out: dict[str, Any] = {"queues": {}, "rules": {}, "policies": {}, "roles": {}, "records": {}}
    for url in sqs.list_queues(QueueNamePrefix=prefix).get("QueueUrls", []):
        attrs = sqs.get_queue_attributes(QueueUrl=url, AttributeNames=["All"])["Attributes"]
        out["queues"][url.rsplit("/", 1)[-1]] = {
            "url": url,
            "attributes": {k: _json(v) for k, v in sorted(attrs.items())
                           if k not in VOLATILE_QUEUE_ATTRS},
            "tags": sqs.list_queue_tags(QueueUrl=url).get("Tags", {}),
        }
    for page in events.get_paginator("list_rules").paginate(NamePrefix=prefix):
        for rule in page["Rules"]:
            name = rule["Name"]
            out["rules"][name] = {
                "arn": rule["Arn"], "state": rule.get("State"),
                "pattern": _json(rule.get("EventPattern")), "description": rule.get("Description"),
                "tags": {t["Key"]: t["Value"] for t in
                         events.list_tags_for_resource(ResourceARN=rule["Arn"])["Tags"]},
                "targets": sorted((t["Id"], t["Arn"]) for t in
                                  events.list_targets_by_rule(Rule=name)["Targets"]),
            }
    for pol in iam.list_policies(Scope="Local", PathPrefix=iam_path)["Policies"]:
        arn = pol["Arn"]
        versions = iam.list_policy_versions(PolicyArn=arn)["Versions"]
        default = iam.get_policy_version(PolicyArn=arn, VersionId=pol["DefaultVersionId"])
        out["policies"][pol["PolicyName"]] = {
            "arn": arn, "path": pol["Path"], "default_version": pol["DefaultVersionId"],
            "document": _json(default["PolicyVersion"]["Document"]),
            "versions": sorted(v["VersionId"] for v in versions),
            "tags": {t["Key"]: t["Value"] for t in iam.list_policy_tags(PolicyArn=arn)["Tags"]},
            "roles": sorted(r["RoleName"] for r in
                            iam.list_entities_for_policy(PolicyArn=arn)["PolicyRoles"]),
        }
    for role in iam.list_roles()["Roles"]:
        out["roles"][role["RoleName"]] = sorted(
            p["PolicyArn"] for p in
            iam.list_attached_role_policies(RoleName=role["RoleName"])["AttachedPolicies"])
    for item in ddb.scan(TableName=table, ConsistentRead=True).get("Items", []):
        rec = from_ddb(item)
        if "account_id" not in rec:     # kip's own items (rule count, token secret): no record
            continue
        norm = {k: v for k, v in rec.items() if k not in RECORD_NOISE}
        if isinstance(norm.get("cluster"), dict):   # each world creates its EKS cluster anew
            norm["cluster"] = {k: v for k, v in norm["cluster"].items() if k != "created_at"}
        norm["leased"] = bool(rec.get("lease_owner"))
        if expected_spec_hash is not None:
            norm["spec_hash_is_current"] = rec.get("spec_hash") == expected_spec_hash
        out["records"][rec["id"]] = norm
    text = json.dumps(out, sort_keys=True, default=str)
    for actual, placeholder in (substitute or {}).items():
        text = text.replace(actual, placeholder)
    return json.loads(text)


def nothing_left(snap: dict) -> list[str]:
    """What a teardown left behind (empty = nothing)."""
    left = [f"queue {q}" for q in snap["queues"]] + [f"rule {r}" for r in snap["rules"]]
    left += [f"policy {p}" for p in snap["policies"]] + [f"record {r}" for r in snap["records"]]
    for role, attached in snap["roles"].items():
        left += [f"attachment {role} -> {a}" for a in attached if f":policy{IAM_PATH}" in a]
    return left


def leftovers(table: str, prefix: str = PREFIX, iam_path: str = IAM_PATH,
              region: str = REGION, roles: tuple = (ROLE,)) -> list[str]:
    """What of ours exists, with few calls (no item bodies read)."""
    sqs, events, iam, ddb = plain("sqs", region), plain("events", region), plain("iam", region), \
        plain("dynamodb", region)
    left = [f"queue {u.rsplit('/', 1)[-1]}"
            for u in sqs.list_queues(QueueNamePrefix=prefix).get("QueueUrls", [])]
    left += [f"rule {r['Name']}" for r in events.list_rules(NamePrefix=prefix)["Rules"]]
    left += [f"policy {p['PolicyName']}"
             for p in iam.list_policies(Scope="Local", PathPrefix=iam_path)["Policies"]]
    for role in roles:
        with contextlib.suppress(iam.exceptions.NoSuchEntityException):
            left += [f"attachment {role} -> {a['PolicyArn']}" for a in
                     iam.list_attached_role_policies(RoleName=role)["AttachedPolicies"]
                     if f":policy{iam_path}" in a["PolicyArn"]]
    count = ddb.scan(TableName=table, Select="COUNT", ConsistentRead=True,
                     FilterExpression="attribute_exists(account_id)")["Count"]
    left += [f"{count} record(s)"] if count else []
    return left


def owned_by(snap: dict, cluster_key: str) -> dict:
    """The part of a snapshot tagged as one cluster's (whatever the names), and its record."""
    def ours(tags: Optional[dict]) -> bool:
        return (tags or {}).get(naming.CLUSTER_TAG) == cluster_key
    policies = {k: v for k, v in snap["policies"].items() if ours(v["tags"])}
    arns = {p["arn"] for p in policies.values()}
    return {
        "queues": {k: v for k, v in snap["queues"].items() if ours(v["tags"])},
        "rules": {k: v for k, v in snap["rules"].items() if ours(v["tags"])},
        "policies": policies,
        "attachments": {role: [a for a in attached if a in arns]
                        for role, attached in snap["roles"].items()
                        if any(a in arns for a in attached)},
        "record": snap["records"].get(cluster_key),
    }


def diff(a: Any, b: Any, path: str = "") -> list[str]:
    """Readable differences between two snapshots (for assertion messages)."""
    if isinstance(a, dict) and isinstance(b, dict):
        out = []
        for k in sorted(set(a) | set(b), key=str):
            if k not in a:
                out.append(f"{path}/{k}: only in actual")
            elif k not in b:
                out.append(f"{path}/{k}: missing (expected {json.dumps(a[k], default=str)[:120]})")
            else:
                out.extend(diff(a[k], b[k], f"{path}/{k}"))
        return out
    if a != b:
        return [f"{path}: expected {json.dumps(a, default=str)[:160]} got "
                f"{json.dumps(b, default=str)[:160]}"]
    return []


# ----------------------------------------------------------------------------- managed

def queue_url(name: str, session: Any = None) -> str:
    return plain("sqs", session=session).get_queue_url(QueueName=name)["QueueUrl"]


def queue_attributes(name: str, session: Any = None) -> dict:
    return plain("sqs", session=session).get_queue_attributes(
        QueueUrl=queue_url(name, session), AttributeNames=["All"])["Attributes"]


def list_queue_urls(prefix: str = PREFIX, session: Any = None) -> list[str]:
    return plain("sqs", session=session).list_queues(QueueNamePrefix=prefix).get("QueueUrls", [])


def list_rule_names(prefix: str = PREFIX, session: Any = None) -> list[str]:
    return [r["Name"] for r in plain("events", session=session).list_rules(
        NamePrefix=prefix)["Rules"]]


def list_kip_policies(session: Any = None) -> list[dict]:
    return plain("iam", session=session).list_policies(Scope="Local",
                                                       PathPrefix=IAM_PATH)["Policies"]


def attached(role: str, session: Any = None) -> list[str]:
    return [p["PolicyArn"] for p in plain("iam", session=session).list_attached_role_policies(
        RoleName=role)["AttachedPolicies"]]


def managed(session: Any = None) -> dict:
    """Everything this service manages, normalized (no timestamps, JSON parsed, lists sorted)."""
    sqs, events, iam = (plain(s, session=session) for s in ("sqs", "events", "iam"))
    out: dict = {"queues": {}, "rules": {}, "policies": {}, "attachments": {}}
    for url in list_queue_urls(session=session):
        attrs = sqs.get_queue_attributes(QueueUrl=url, AttributeNames=["All"])["Attributes"]
        for key in ("CreatedTimestamp", "LastModifiedTimestamp"):
            attrs.pop(key, None)
        for key in ("Policy", "RedrivePolicy"):
            if key in attrs:
                attrs[key] = json.loads(attrs[key])
        out["queues"][url.rsplit("/", 1)[1]] = {
            "attributes": attrs, "tags": sqs.list_queue_tags(QueueUrl=url).get("Tags", {})}
    for rule in events.list_rules(NamePrefix=PREFIX)["Rules"]:
        targets = events.list_targets_by_rule(Rule=rule["Name"])["Targets"]
        tags = events.list_tags_for_resource(ResourceARN=rule["Arn"])["Tags"]
        out["rules"][rule["Name"]] = {
            "pattern": json.loads(rule["EventPattern"]), "state": rule["State"],
            "targets": sorted((t["Id"], t["Arn"]) for t in targets),
            "tags": {t["Key"]: t["Value"] for t in tags}}
    for pol in list_kip_policies(session):
        doc = iam.get_policy_version(PolicyArn=pol["Arn"], VersionId=pol["DefaultVersionId"])[
            "PolicyVersion"]["Document"]
        out["policies"][pol["PolicyName"]] = {
            "arn": pol["Arn"], "path": pol["Path"], "document": _json(doc),
            "tags": {t["Key"]: t["Value"] for t in iam.list_policy_tags(PolicyArn=pol["Arn"])[
                "Tags"]}}
    for role in iam.list_roles()["Roles"]:
        arns = sorted(attached(role["RoleName"], session))
        if arns:
            out["attachments"][role["RoleName"]] = arns
    return out


def assert_nothing_managed(session: Any = None, role: str = ROLE) -> None:
    assert list_queue_urls(session=session) == []
    assert list_rule_names(session=session) == []
    assert list_kip_policies(session) == []
    try:
        assert attached(role, session) == []
    except ClientError as exc:
        assert exc.response["Error"]["Code"] == "NoSuchEntity"
