"""The adapter: one (account, region). Reads return plain data or ``state`` types; each write is an
operation a planner action names. No decisions here: those live in the pure modules."""
from __future__ import annotations

import json
import time
from typing import Any, Callable, Optional
from urllib.parse import unquote

from chalicelib import errors
from chalicelib.core import kms, naming
from chalicelib.aws.calls import call, tags_dict, tags_list
from chalicelib.aws.clients import client, own_account
from chalicelib.config import Settings, get_settings
from chalicelib.core.observed import ClusterState, KeyState, PolicyHolders, RoleInfo, RoleState

# AWS answers that mean "not visible yet" right after a create (eventual consistency), when they
# come from these calls: retried within the run for up to ``Settings.settle_seconds``.
UNSETTLED_DLQ = "dead letter target does not exist"


class _Reads:
    """The reads of one (account, region); ``Target`` adds the writes."""

    def __init__(self, account: str, region: str, settings: Optional[Settings] = None) -> None:
        self.account, self.region = account, region
        self.settings = settings or get_settings()

    def _c(self, service: str) -> Any:
        return client(service, self.account, self.region, self.settings)

    def _settled(self, step: str, fn: Callable[..., Any], code: str, text: str = "",
                 **kw: Any) -> Any:
        """``call`` that waits out eventual consistency: on ``code`` (whose message contains
        ``text``) it tries again with growing pauses, ``settle_seconds`` in total."""
        for pause in (*settle_pauses(self.settings.settle_seconds), None):
            try:
                return call(step, fn, **kw)
            except errors.AwsCallFailed as exc:
                if pause is None or exc.extra.get("aws_code") != code or \
                        text not in exc.message.lower():
                    raise
            time.sleep(pause)

    def warm(self) -> None:
        """Create every client up front (one round of credential/endpoint setup, not per call)."""
        for service in ("sqs", "events", "iam", "eks"):
            self._c(service)

    # -- reads ------------------------------------------------------------------------------
    def describe_cluster(self, name: str) -> Optional[ClusterState]:
        r = call(f"eks:DescribeCluster {name}", self._c("eks").describe_cluster, name=name,
                 gone_ok=True)
        if r is None:
            return None
        c = r["cluster"]
        created = c.get("createdAt")
        return ClusterState(name=c["name"], arn=c.get("arn"), status=c.get("status"),
                            version=c.get("version"), tags=c.get("tags") or {},
                            auto_mode=bool((c.get("computeConfig") or {}).get("enabled")),
                            created_at=created.timestamp() if hasattr(created, "timestamp")
                            else created,
                            oidc_issuer=((c.get("identity") or {}).get("oidc") or {}).get("issuer"))

    def list_clusters(self) -> list[str]:
        paginator = self._c("eks").get_paginator("list_clusters")
        pages = call("eks:ListClusters", lambda: list(paginator.paginate()))
        return [name for page in pages for name in page.get("clusters", [])]

    def queue_url(self, name: str) -> Optional[str]:
        r = call(f"sqs:GetQueueUrl {name}", self._c("sqs").get_queue_url, QueueName=name,
                 gone_ok=True)
        return r["QueueUrl"] if r else None

    def queue_attributes(self, url: str) -> Optional[dict]:
        r = call(f"sqs:GetQueueAttributes {url}", self._c("sqs").get_queue_attributes,
                 QueueUrl=url, AttributeNames=["All"], gone_ok=True)
        return None if r is None else r.get("Attributes", {})

    def queue_tags(self, url: str) -> dict:
        r = call(f"sqs:ListQueueTags {url}", self._c("sqs").list_queue_tags, QueueUrl=url,
                 gone_ok=True)
        return (r or {}).get("Tags", {}) or {}

    def describe_rule(self, name: str) -> Optional[dict]:
        r = call(f"events:DescribeRule {name}", self._c("events").describe_rule, Name=name,
                 gone_ok=True)
        if r is None:
            return None
        return {"pattern": json.loads(r.get("EventPattern") or "null"), "state": r.get("State")}

    def rule_targets(self, name: str) -> list[dict]:
        r = call(f"events:ListTargetsByRule {name}", self._c("events").list_targets_by_rule,
                 Rule=name, gone_ok=True)
        return [{"Id": t["Id"], "Arn": t["Arn"]} for t in (r or {}).get("Targets", [])]

    def rule_tags(self, arn: str) -> dict:
        r = call(f"events:ListTagsForResource {arn}", self._c("events").list_tags_for_resource,
                 ResourceARN=arn, gone_ok=True)
        return tags_dict((r or {}).get("Tags"))

    def get_policy(self, arn: str) -> Optional[dict]:
        """``{"default_version", "tags"}`` of a managed policy, or None."""
        r = call(f"iam:GetPolicy {arn}", self._c("iam").get_policy, PolicyArn=arn, gone_ok=True)
        if r is None:
            return None
        return {"default_version": r["Policy"].get("DefaultVersionId"),
                "tags": tags_dict(r["Policy"].get("Tags"))}

    def _get_policy_now(self, arn: str) -> dict:
        r = self._c("iam").get_policy(PolicyArn=arn)
        return {"default_version": r["Policy"].get("DefaultVersionId"),
                "tags": tags_dict(r["Policy"].get("Tags"))}

    def policy_document(self, arn: str, version: str) -> Optional[dict]:
        r = call(f"iam:GetPolicyVersion {arn}", self._c("iam").get_policy_version,
                 PolicyArn=arn, VersionId=version, gone_ok=True)
        if r is None:
            return None
        doc = r["PolicyVersion"]["Document"]
        return json.loads(doc) if isinstance(doc, str) else doc

    def policy_versions(self, arn: str) -> list[dict]:
        r = call(f"iam:ListPolicyVersions {arn}", self._c("iam").list_policy_versions,
                 PolicyArn=arn, gone_ok=True)
        return [{"VersionId": v["VersionId"], "IsDefaultVersion": v["IsDefaultVersion"]}
                for v in (r or {}).get("Versions", [])]

    def policy_holders(self, arn: str) -> PolicyHolders:
        """Every role, user and group the policy is attached to (all pages)."""
        step = f"iam:ListEntitiesForPolicy {arn}"
        paginator = self._c("iam").get_paginator("list_entities_for_policy")
        pages = call(step, lambda: list(paginator.paginate(PolicyArn=arn)), gone_ok=True) or []
        return PolicyHolders(
            roles=[x["RoleName"] for p in pages for x in p.get("PolicyRoles", [])],
            users=[x["UserName"] for p in pages for x in p.get("PolicyUsers", [])],
            groups=[x["GroupName"] for p in pages for x in p.get("PolicyGroups", [])])

    def count_rules(self) -> int:
        """Rules on the default event bus (all pages of ListRules)."""
        paginator = self._c("events").get_paginator("list_rules")
        pages = call("events:ListRules", lambda: list(paginator.paginate()))
        return sum(len(p.get("Rules", [])) for p in pages)

    def rule_quota(self) -> Optional[float]:
        """The account's 'rules per event bus' quota from Service Quotas, or None when it cannot
        be read (not permitted, not available in the region): the caller falls back."""
        try:
            r = call("servicequotas:GetServiceQuota",
                     self._c("service-quotas").get_service_quota, ServiceCode="events",
                     QuotaCode="L-244521F2")
        except errors.KipError:
            return None
        return r.get("Quota", {}).get("Value")

    def get_role(self, name: str) -> Optional[RoleInfo]:
        r = call(f"iam:GetRole {name}", self._c("iam").get_role, RoleName=name, gone_ok=True)
        if r is None:
            return None
        return RoleInfo(name=r["Role"]["RoleName"], arn=r["Role"]["Arn"],
                        path=r["Role"].get("Path", "/"))

    def role_attachments(self, role: str) -> RoleState:
        r = call(f"iam:ListAttachedRolePolicies {role}",
                 self._c("iam").list_attached_role_policies, RoleName=role, MaxItems=1000,
                 gone_ok=True)
        if r is None:
            return RoleState(name=role, exists=False)
        return RoleState(name=role, exists=True,
                         attached=[p["PolicyArn"] for p in r.get("AttachedPolicies", [])])

    def describe_key(self, key_id: str) -> Optional[KeyState]:
        try:
            r = call(f"kms:DescribeKey {key_id}", self._c("kms").describe_key, KeyId=key_id,
                     gone_ok=True)
        except errors.AwsCallFailed as exc:
            if exc.extra.get("aws_code") == "InvalidArnException":
                return None
            raise
        if r is None:
            return None
        m = r["KeyMetadata"]
        return KeyState(key_id=m["KeyId"], arn=m["Arn"], manager=m.get("KeyManager", ""),
                        state=m.get("KeyState"), spec=m.get("KeySpec"), usage=m.get("KeyUsage"))

    def key_policy(self, key_id: str) -> Optional[dict]:
        """The key policy ("default", the only one) decoded, or None if the key is not found.
        GetKeyPolicy takes a key id or ARN only, so an alias is resolved first. AccessDenied is
        a 400 naming the permission (kip never assumes an unreadable policy is right)."""
        if "alias/" in key_id:
            key = self.describe_key(key_id)
            if key is None:
                return None
            key_id = key.arn
        try:
            r = call(f"kms:GetKeyPolicy {key_id}", self._c("kms").get_key_policy, KeyId=key_id,
                     PolicyName="default", gone_ok=True)
        except errors.AwsCallFailed as exc:
            code = exc.extra.get("aws_code") or ""
            if code == "InvalidArnException":
                return None
            if code in ("AccessDeniedException", "AccessDenied"):
                role = ("kip's own Lambda execution role"
                        if self.account == own_account(self.settings) else
                        f"the role {self.settings.cross_account_role!r} that kip assumes in "
                        f"account {self.account}")
                raise kms.unreadable_policy(key_id, self.account, self.region, code,
                                            role) from exc
            raise
        if r is None:
            return None
        doc = r.get("Policy") or "null"
        return json.loads(doc) if isinstance(doc, str) else doc

    def metric_series(self, queries: list, start: float, end: float) -> dict:
        """``{query id: [(epoch seconds, value), ...]}`` for GetMetricData ``queries`` (all
        pages, newest first). A ``PartialData`` status means more pages (NextToken)."""
        step, cw = "cloudwatch:GetMetricData", self._c("cloudwatch")
        series: dict = {q["Id"]: [] for q in queries}
        kw: dict = {"MetricDataQueries": queries, "StartTime": start, "EndTime": end,
                    "ScanBy": "TimestampDescending"}
        for _ in range(10):
            r = call(step, cw.get_metric_data, **kw)
            for result in r.get("MetricDataResults", []):
                series.setdefault(result["Id"], []).extend(
                    (ts.timestamp(), value)
                    for ts, value in zip(result.get("Timestamps", []), result.get("Values", [])))
            if not r.get("NextToken"):
                break
            kw["NextToken"] = r["NextToken"]
        return series

    def describe_alarms(self, names: list) -> dict:
        """name -> the metric alarm as DescribeAlarms reports it (absent names: left out)."""
        r = call("cloudwatch:DescribeAlarms", self._c("cloudwatch").describe_alarms,
                 AlarmNames=list(names), AlarmTypes=["MetricAlarm"], MaxRecords=100)
        return {a["AlarmName"]: a for a in r.get("MetricAlarms", [])}

    def alarm_tags(self, arn: str) -> dict:
        r = call(f"cloudwatch:ListTagsForResource {arn}",
                 self._c("cloudwatch").list_tags_for_resource, ResourceARN=arn, gone_ok=True)
        return tags_dict((r or {}).get("Tags"))


class _Brownfield(_Reads):
    """Reads that find who already handles a cluster, and as which role (docs/BROWNFIELD.md)."""

    def pod_identity_roles(self, cluster: str, namespace: str, service_account: str) -> list:
        """The role ARNs of the cluster's Pod Identity associations for one service account
        (every page; each association described: the summaries carry no roleArn). A target
        role (cross-account chaining) wins when set."""
        eks, arns, kw = self._c("eks"), [], {"clusterName": cluster, "namespace": namespace,
                                             "serviceAccount": service_account}
        step = f"eks:ListPodIdentityAssociations {cluster} {namespace}/{service_account}"
        for _ in range(20):
            r = call(step, eks.list_pod_identity_associations, gone_ok=True, **kw) or {}
            for summary in r.get("associations", []):
                d = call(f"eks:DescribePodIdentityAssociation {summary['associationId']}",
                         eks.describe_pod_identity_association, clusterName=cluster,
                         associationId=summary["associationId"], gone_ok=True)
                assoc = (d or {}).get("association") or {}
                arn = assoc.get("targetRoleArn") or assoc.get("roleArn")
                if arn:
                    arns.append(arn)
            if not r.get("nextToken"):
                break
            kw["nextToken"] = r["nextToken"]
        return arns

    def list_roles(self) -> list[dict]:
        """Every role of the account: ``{"name", "arn", "trust"}`` (all pages of ListRoles)."""
        paginator = self._c("iam").get_paginator("list_roles")
        pages = call("iam:ListRoles", lambda: list(paginator.paginate()))
        return [{"name": r["RoleName"], "arn": r["Arn"],
                 "trust": _decoded(r.get("AssumeRolePolicyDocument"))}
                for p in pages for r in p.get("Roles", [])]

    def managed_documents(self, attached: list) -> dict:
        """A role's managed policies, ``{policy ARN: document}``: GetPolicy + GetPolicyVersion
        of each attached ARN."""
        docs: dict = {}
        for arn in attached:
            policy = self.get_policy(arn)
            if policy and policy.get("default_version"):
                docs[arn] = self.policy_document(arn, policy["default_version"])
        return docs

    def inline_documents(self, role: str) -> dict:
        """A role's inline policies, ``{"inline:<role>/<name>": document}``: ListRolePolicies
        + GetRolePolicy."""
        docs: dict = {}
        iam = self._c("iam")
        paginator = iam.get_paginator("list_role_policies")
        pages = call(f"iam:ListRolePolicies {role}", lambda: list(paginator.paginate(
            RoleName=role)), gone_ok=True) or []
        for name in (n for p in pages for n in p.get("PolicyNames", [])):
            r = call(f"iam:GetRolePolicy {role}/{name}", iam.get_role_policy, RoleName=role,
                     PolicyName=name, gone_ok=True)
            if r is not None:
                docs[f"inline:{role}/{name}"] = _decoded(r.get("PolicyDocument"))
        return docs

    def queue_names(self, prefix: str) -> list[str]:
        """Queue names starting with ``prefix`` in this account-region (all pages)."""
        paginator = self._c("sqs").get_paginator("list_queues")
        pages = call(f"sqs:ListQueues {prefix}", lambda: list(paginator.paginate(
            QueueNamePrefix=prefix, PaginationConfig={"MaxItems": 5000})))
        return [u.rsplit("/", 1)[-1] for p in pages for u in p.get("QueueUrls", [])]

    def rules_targeting(self, arn: str) -> list[str]:
        """Default-bus rules with a target ``arn`` (all pages of ListRuleNamesByTarget)."""
        paginator = self._c("events").get_paginator("list_rule_names_by_target")
        pages = call(f"events:ListRuleNamesByTarget {arn}",
                     lambda: list(paginator.paginate(TargetArn=arn)))
        return [n for p in pages for n in p.get("RuleNames", [])]

    def attached_policies_quota(self) -> Optional[int]:
        """IAM's managed-policies-per-role quota for the account (GetAccountSummary), or None
        when it cannot be read."""
        try:
            r = call("iam:GetAccountSummary", self._c("iam").get_account_summary)
        except errors.KipError:
            return None
        value = r.get("SummaryMap", {}).get("AttachedPoliciesPerRoleQuota")
        return int(value) if value else None


class Target(_Brownfield):
    """The adapter: the reads, and the writes that planner actions name."""

    def create_queue(self, name: str, attributes: dict, tags: dict) -> dict:
        # A redrive policy naming a DLQ created a moment ago can fail until SQS sees the DLQ.
        r = self._settled(f"sqs:CreateQueue {name}", self._c("sqs").create_queue,
                          "InvalidParameterValue", UNSETTLED_DLQ, QueueName=name,
                          Attributes=attributes, tags=tags)
        return {"url": r["QueueUrl"]}

    def set_queue_attributes(self, url: str, attributes: dict) -> dict:
        self._settled(f"sqs:SetQueueAttributes {url}", self._c("sqs").set_queue_attributes,
                      "InvalidParameterValue", UNSETTLED_DLQ, QueueUrl=url,
                      Attributes=attributes)
        return {}

    def tag_queue(self, url: str, tags: dict) -> dict:
        call(f"sqs:TagQueue {url}", self._c("sqs").tag_queue, QueueUrl=url, Tags=tags)
        return {}

    def delete_queue(self, url: str) -> dict:
        call(f"sqs:DeleteQueue {url}", self._c("sqs").delete_queue, QueueUrl=url, gone_ok=True)
        return {}

    def put_rule(self, name: str, pattern: dict, tags: dict, description: str) -> dict:
        r = call(f"events:PutRule {name}", self._c("events").put_rule, Name=name,
                 EventPattern=json.dumps(pattern), State="ENABLED",
                 Description=description[:512], Tags=tags_list(tags))
        return {"arn": r["RuleArn"]}

    def untag_queue(self, url: str, keys: list) -> dict:
        call(f"sqs:UntagQueue {url}", self._c("sqs").untag_queue, QueueUrl=url, TagKeys=keys)
        return {}

    def untag_rule(self, arn: str, keys: list) -> dict:
        call(f"events:UntagResource {arn}", self._c("events").untag_resource, ResourceARN=arn,
             TagKeys=keys)
        return {}

    def untag_policy(self, arn: str, keys: list) -> dict:
        call(f"iam:UntagPolicy {arn}", self._c("iam").untag_policy, PolicyArn=arn, TagKeys=keys)
        return {}

    def tag_rule(self, arn: str, tags: dict) -> dict:
        call(f"events:TagResource {arn}", self._c("events").tag_resource, ResourceARN=arn,
             Tags=tags_list(tags))
        return {}

    def put_targets(self, rule: str, targets: list) -> dict:
        step = f"events:PutTargets {rule}"
        r = call(step, self._c("events").put_targets, Rule=rule, Targets=targets)
        _entries_ok(step, r)
        return {}

    def remove_targets(self, rule: str, ids: list) -> dict:
        step = f"events:RemoveTargets {rule}"
        r = call(step, self._c("events").remove_targets, Rule=rule, Ids=ids, Force=False,
                 gone_ok=True)
        _entries_ok(step, r)
        return {}

    def delete_rule(self, name: str) -> dict:
        call(f"events:DeleteRule {name}", self._c("events").delete_rule, Name=name, gone_ok=True)
        return {}

    def create_policy(self, name: str, path: str, document: dict, tags: dict,
                      description: str) -> dict:
        """Create, or (``EntityAlreadyExists``: our own create whose answer was lost and that
        botocore retried, or one made since we looked) report the existing policy and its tags;
        the executor decides from the action whether it may be adopted."""
        try:
            r = call(f"iam:CreatePolicy {name}", self._c("iam").create_policy,
                     PolicyName=name, Path=path, PolicyDocument=json.dumps(document),
                     Description=description[:1000], Tags=tags_list(tags))
        except errors.AwsCallFailed as exc:
            if exc.extra.get("aws_code") != "EntityAlreadyExists":
                raise
            arn = f"arn:{naming.partition_for(self.region)}:iam::{self.account}:policy{path}{name}"
            # GetPolicy may not see a policy for a while after EntityAlreadyExists.
            found = self._settled(f"iam:GetPolicy {arn}", self._get_policy_now, "NoSuchEntity",
                                  arn=arn)
            return {"arn": arn, "version": found.get("default_version"),
                    "existed": True, "tags": found.get("tags", {})}
        return {"arn": r["Policy"]["Arn"], "version": r["Policy"].get("DefaultVersionId")}

    def create_policy_version(self, arn: str, document: dict) -> dict:
        r = call(f"iam:CreatePolicyVersion {arn}", self._c("iam").create_policy_version,
                 PolicyArn=arn, PolicyDocument=json.dumps(document), SetAsDefault=True)
        return {"version": r["PolicyVersion"]["VersionId"]}

    def delete_policy_version(self, arn: str, version: str) -> dict:
        call(f"iam:DeletePolicyVersion {arn} {version}", self._c("iam").delete_policy_version,
             PolicyArn=arn, VersionId=version, gone_ok=True)
        return {}

    def delete_policy(self, arn: str) -> dict:
        call(f"iam:DeletePolicy {arn}", self._c("iam").delete_policy, PolicyArn=arn,
             gone_ok=True)
        return {}

    def tag_policy(self, arn: str, tags: dict) -> dict:
        call(f"iam:TagPolicy {arn}", self._c("iam").tag_policy, PolicyArn=arn,
             Tags=tags_list(tags))
        return {}

    def attach_role_policy(self, role: str, policy_arn: str) -> dict:
        # A policy created a moment ago may not be attachable yet (NoSuchEntity).
        self._settled(f"iam:AttachRolePolicy {role}", self._c("iam").attach_role_policy,
                      "NoSuchEntity", RoleName=role, PolicyArn=policy_arn)
        return {}

    def detach_role_policy(self, role: str, policy_arn: str) -> dict:
        call(f"iam:DetachRolePolicy {role}", self._c("iam").detach_role_policy, RoleName=role,
             PolicyArn=policy_arn, gone_ok=True)
        return {}

    def detach_user_policy(self, user: str, policy_arn: str) -> dict:
        call(f"iam:DetachUserPolicy {user}", self._c("iam").detach_user_policy, UserName=user,
             PolicyArn=policy_arn, gone_ok=True)
        return {}

    def detach_group_policy(self, group: str, policy_arn: str) -> dict:
        call(f"iam:DetachGroupPolicy {group}", self._c("iam").detach_group_policy,
             GroupName=group, PolicyArn=policy_arn, gone_ok=True)
        return {}

    def put_metric_alarm(self, params: dict) -> dict:
        """Create or update (an upsert; ``Tags`` count on creation only)."""
        call(f"cloudwatch:PutMetricAlarm {params['AlarmName']}",
             self._c("cloudwatch").put_metric_alarm, **params)
        return {}

    def tag_alarm(self, arn: str, tags: dict) -> dict:
        call(f"cloudwatch:TagResource {arn}", self._c("cloudwatch").tag_resource,
             ResourceARN=arn, Tags=tags_list(tags))
        return {}

    def delete_alarm(self, name: str) -> dict:
        """One name per call: DeleteAlarms deletes none when one of them does not exist
        (``ResourceNotFound``, which here means already gone)."""
        try:
            call(f"cloudwatch:DeleteAlarms {name}", self._c("cloudwatch").delete_alarms,
                 AlarmNames=[name])
        except errors.AwsCallFailed as exc:
            if exc.extra.get("aws_code") != "ResourceNotFound":
                raise
        return {}


def _decoded(doc: Any) -> Optional[dict]:
    """An IAM policy document as a dict (botocore decodes most; a URL-encoded string else)."""
    if doc is None or isinstance(doc, dict):
        return doc
    return json.loads(unquote(doc))


def settle_pauses(total: float) -> list[float]:
    """Growing pauses (0.25 s doubling, at most 2 s each) adding up to at most ``total``."""
    pauses: list[float] = []
    pause = min(0.25, total / 4)
    while pause > 0 and sum(pauses) + pause <= total + 1e-9:
        pauses.append(pause)
        pause = min(pause * 2, 2.0)
    return pauses


def _entries_ok(step: str, answer: Optional[dict]) -> None:
    """EventBridge answers HTTP 200 with per-entry failures: one failed entry fails the call."""
    if answer and answer.get("FailedEntryCount"):
        failed = (answer.get("FailedEntries") or [{}])[0]
        raise errors.AwsCallFailed(
            f"{step} failed: {failed.get('ErrorCode')}: {failed.get('ErrorMessage')}",
            step=step, aws_code=failed.get("ErrorCode"))
