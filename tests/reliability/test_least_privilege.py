"""Least privilege and isolation, asserted on the documents actually stored in moto and on the
Lambda's own IAM policy files.

* The controller policy is exactly sqs:GetQueueUrl/ReceiveMessage/DeleteMessage on exactly the
  queue (+ kms:Decrypt on exactly the key when one is set).
* The queue policy allows only events.amazonaws.com, only from this cluster's rule ARNs, and
  denies every non-TLS request; the DLQ denies non-TLS and allows nothing.
* A role outside the allowed pattern is refused (403) and nothing is created.
* The service's own policy (.chalice/policy-<stage>.json) allows every call it makes, on the
  resources it makes them on, and nothing broader.
* One cluster's provisioning or teardown never changes another cluster's resources.
"""
from __future__ import annotations

import fnmatch
import json
import pathlib

import pytest

from chalicelib import errors
from chalicelib.core import naming, policies
from chalicelib.core.spec import ClusterRequest
from tests.support.faults import operation_of, service_of
from tests.support.scenario import KMS_ALIAS, reliability_settings, world
from tests.support.snapshots import diff, owned_by, snapshot
from tests.support.world import ACCOUNT, CLUSTER, REGION, ROLE, make_cluster, make_role, plain
from tests.support import drive

ROOT = pathlib.Path(__file__).resolve().parents[2]
JSON = {"Content-Type": "application/json"}
SQS_ACTIONS = {"sqs:GetQueueUrl", "sqs:ReceiveMessage", "sqs:DeleteMessage"}


def _as_list(value) -> list:
    return value if isinstance(value, list) else [value]


def _grants(document: dict) -> set[tuple]:
    """(effect, action, resource) for every action x resource of every statement."""
    out = set()
    for st in document["Statement"]:
        assert not {"NotAction", "NotResource", "NotPrincipal"} & set(st), st
        for action in _as_list(st["Action"]):
            for resource in _as_list(st["Resource"]):
                out.add((st["Effect"], action, resource))
    return out


def _provision(sc, **request) -> object:
    return drive.provision(sc.engine(), ClusterRequest(cluster_name=CLUSTER, **request))


# ----------------------------------------------------------------------------- documents

def test_controller_policy_is_exactly_three_sqs_actions_on_the_queue(sc, record_property):
    sc.setup("provision")
    _provision(sc)
    pol = sc.snapshot()["policies"][sc.names.policy]
    doc = pol["document"]
    assert _grants(doc) == {("Allow", a, sc.names.queue_arn) for a in SQS_ACTIONS}, doc
    assert all("Condition" not in st for st in doc["Statement"])
    assert pol["roles"] == [ROLE], "attached to exactly the controller role"
    record_property("least_privilege", {"check": "controller policy (no KMS key)",
                                        "result": "exactly sqs:DeleteMessage, sqs:GetQueueUrl, "
                                                  "sqs:ReceiveMessage on the queue ARN; "
                                                  "attached only to the controller role"})


def test_controller_policy_with_a_customer_key_adds_only_kms_decrypt_on_that_key(sc,
                                                                                record_property):
    sc.setup("provision")
    _provision(sc, kms_key_id=KMS_ALIAS)          # an alias: resolved to the key ARN
    doc = snapshot(sc.settings.table_name)["policies"][sc.names.policy]["document"]
    expected = {("Allow", a, sc.names.queue_arn) for a in SQS_ACTIONS}
    expected.add(("Allow", "kms:Decrypt", sc.kms_arn))
    assert _grants(doc) == expected, doc
    queue = snapshot(sc.settings.table_name)["queues"][sc.names.queue]["attributes"]
    assert queue["KmsMasterKeyId"] == sc.kms_arn
    record_property("least_privilege", {"check": "controller policy (customer KMS key)",
                                        "result": "the three SQS actions on the queue ARN + "
                                                  "kms:Decrypt on exactly the key ARN (alias "
                                                  "resolved), nothing else"})


def test_queue_policy_allows_only_eventbridge_from_this_clusters_rules_and_denies_plain_http(
        sc, record_property):
    sc.setup("provision")
    _provision(sc)
    snap = sc.snapshot()
    queue = snap["queues"][sc.names.queue]["attributes"]
    doc = queue["Policy"]
    allows = [st for st in doc["Statement"] if st["Effect"] == "Allow"]
    denies = [st for st in doc["Statement"] if st["Effect"] == "Deny"]
    assert len(allows) == 1 and len(denies) == 1, doc
    allow = allows[0]
    assert allow["Principal"] == {"Service": "events.amazonaws.com"}
    assert _as_list(allow["Action"]) == ["sqs:SendMessage"]
    assert allow["Resource"] == sc.names.queue_arn
    source_arns = set(_as_list(allow["Condition"]["ArnEquals"]["aws:SourceArn"]))
    assert set(allow["Condition"]) == {"ArnEquals"}
    assert source_arns == {sc.names.rule_arn}
    assert {r["arn"] for r in snap["rules"].values()} <= source_arns
    deny = denies[0]
    assert deny["Principal"] == "*" and _as_list(deny["Action"]) == ["sqs:*"]
    assert deny["Resource"] == sc.names.queue_arn
    assert deny["Condition"] == {"Bool": {"aws:SecureTransport": "false"}}
    # the DLQ allows nothing and denies plain HTTP
    dlq = snap["queues"][sc.names.dlq]["attributes"]["Policy"]
    assert [st["Effect"] for st in dlq["Statement"]] == ["Deny"]
    assert dlq["Statement"][0]["Condition"] == {"Bool": {"aws:SecureTransport": "false"}}
    # and each rule delivers to exactly this queue, with the documented pattern
    for kind, rule in sc.names.rules.items():
        stored = snap["rules"][rule]
        assert stored["targets"] == [[naming.TARGET_ID, sc.names.queue_arn]]
        assert stored["pattern"] == policies.EVENT_PATTERNS[kind]
    record_property("least_privilege", {
        "check": "queue policy", "result": "one Allow: events.amazonaws.com, sqs:SendMessage, "
        "ArnEquals aws:SourceArn = the cluster's 5 rule ARNs; one Deny sqs:* when "
        "aws:SecureTransport=false; DLQ: the Deny only; each rule has one target, the queue"})


ROLES_OUTSIDE = ["SomeAdminRole", "OrganizationAccountAccessRole", "KarpenterController",
                 "karpentercontroller-payments-prod", "KarpenterControllerX-payments-prod",
                 "arn:aws:iam::123456789012:role/admin/Admin"]


@pytest.mark.parametrize("role", ROLES_OUTSIDE)
def test_a_role_outside_the_allowed_pattern_is_403_and_nothing_is_created(sc, api, role,
                                                                         record_property):
    sc.setup("provision")
    name = role.rsplit("/", 1)[-1]
    make_role(name)
    resp = api.http.post("/clusters", headers=JSON,
                         body=json.dumps({"cluster_name": CLUSTER,
                                          "controller_role": role}))
    assert resp.status_code == 403, resp.body
    assert resp.json_body["error"]["field"] == "controller_role"
    assert sc.leftovers() == [], "a refused request created something"
    assert plain("iam").list_attached_role_policies(RoleName=name)[
        "AttachedPolicies"] == []
    record_property("least_privilege", {"check": f"controller_role {role!r}",
                                        "result": "403 Forbidden, nothing created"})


def test_a_custom_role_pattern_refuses_the_default_role(record_property):
    settings = reliability_settings(role_pattern="eks-*-karpenter")
    with world(settings) as sc:
        sc.setup("provision")
        with pytest.raises(errors.Forbidden):
            sc.run("provision")
        assert sc.leftovers() == []
        make_role("eks-payments-prod-karpenter")
        out = drive.provision(sc.engine(), ClusterRequest(cluster_name=CLUSTER,
                                                   controller_role="eks-payments-prod-karpenter"))
        assert out.record["resources"]["attachment"]["role_name"] == "eks-payments-prod-karpenter"
    record_property("least_privilege", {"check": "KIP_ROLE_PATTERN=eks-*-karpenter",
                                        "result": "default role refused (403), a matching "
                                                  "role accepted"})


# ----------------------------------------------------------------------------- the service's policy

def _arn_of(label: str, params: dict, sc, table: str) -> str | None:
    """The resource IAM authorizes a call against (None: no resource-level check)."""
    service, op = service_of(label), operation_of(label)
    p = "aws"
    if service == "sts":
        return None if op == "GetCallerIdentity" else params.get("RoleArn")
    if service == "sqs":
        if op == "ListQueues":
            return "*"                   # no resource type
        name = params.get("QueueName") or params["QueueUrl"].rsplit("/", 1)[-1]
        return f"arn:{p}:sqs:{REGION}:{ACCOUNT}:{name}"
    if service == "events":
        if op == "ListRules":
            return "*"                   # no resource type (counting rules for the quota)
        if "ResourceARN" in params:
            return params["ResourceARN"]
        return f"arn:{p}:events:{REGION}:{ACCOUNT}:rule/{params.get('Name') or params['Rule']}"
    if service == "iam":
        if op in ("ListRoles", "GetAccountSummary"):
            return "*"                   # no resource type
        if "PolicyArn" in params and "RoleName" in params:
            return f"arn:{p}:iam::{ACCOUNT}:role/{params['RoleName']}"
        if "PolicyArn" in params:
            return params["PolicyArn"]
        if "RoleName" in params:
            return f"arn:{p}:iam::{ACCOUNT}:role/{params['RoleName']}"
        return f"arn:{p}:iam::{ACCOUNT}:policy{params['Path']}{params['PolicyName']}"
    if service == "dynamodb":
        suffix = f"/index/{params['IndexName']}" if params.get("IndexName") else ""
        return f"arn:{p}:dynamodb:{REGION}:{ACCOUNT}:table/{table}{suffix}"
    if service == "eks":
        if op == "DescribePodIdentityAssociation":
            return f"arn:{p}:eks:{REGION}:{ACCOUNT}:podidentityassociation/" \
                   f"{params['clusterName']}/{params['associationId']}"
        return f"arn:{p}:eks:{REGION}:{ACCOUNT}:cluster/{params.get('name') or params['clusterName']}"
    if service == "kms":
        return sc.kms_arn
    if service == "service-quotas":
        return f"arn:{p}:servicequotas:{REGION}:{ACCOUNT}:{params['ServiceCode']}/" \
               f"{params['QuotaCode']}"
    if service == "cloudwatch":
        if op == "GetMetricData":
            return "*"                   # no resource type
        if "ResourceARN" in params:     # ListTagsForResource, TagResource
            return params["ResourceARN"]
        name = params.get("AlarmName") or params["AlarmNames"][0]   # all kip-<queue>-...
        return f"arn:{p}:cloudwatch:{REGION}:{ACCOUNT}:alarm:{name}"
    raise AssertionError(f"no ARN rule for {label}")


def _allowed(policy: dict, action: str, resource: str | None, params: dict) -> bool:
    for st in policy["Statement"]:
        if st["Effect"] != "Allow":
            continue
        if not any(fnmatch.fnmatchcase(action.lower(), a.lower()) for a in _as_list(st["Action"])):
            continue
        if resource is not None and not any(fnmatch.fnmatchcase(resource, r)
                                            for r in _as_list(st["Resource"])):
            continue
        cond = st.get("Condition") or {}
        ok = True
        for operator, pairs in cond.items():
            for key, patterns in pairs.items():
                if operator in ("ArnLike", "ArnEquals") and key == "iam:PolicyARN":
                    ok &= any(fnmatch.fnmatchcase(params.get("PolicyArn", ""), x)
                              for x in _as_list(patterns))
                elif operator == "StringEquals" and key == "aws:ResourceTag/kip.io/managed-by":
                    # every resource these runs remove is kip's own, tagged at creation (kip
                    # never touches an untagged one: tests/aws/test_provision.py ownership)
                    ok &= patterns == "karpenter-interruption-provisioner"
                else:
                    ok = False           # a condition this check does not model: not granted
        if ok:
            return True
    return False


# Granted without appearing as a call above, and why (anything else granted is a finding).
IMPLICIT = {
    "events:TagResource": "PutRule with Tags is authorized as PutRule + TagResource",
    "iam:TagPolicy": "CreatePolicy with Tags is authorized as CreatePolicy + TagPolicy",
    "sqs:TagQueue": "CreateQueue with tags is authorized as CreateQueue + TagQueue",
    "sts:AssumeRole": "clusters in other accounts (KIP_CROSS_ACCOUNT_ROLE)",
    "sts:SetSourceIdentity": "AssumeRole names the actor as SourceIdentity (tests/aws/"
                             "test_audit.py)",
    "ssm:GetParameter": "KIP_AUTHZ=ssm:/kip/..., read once per container",
    "events:PutEvents": "status events to the portal bus (KIP_STATUS_BUS)",
    "eks:ListClusters": "the schedule's adoption of existing clusters (KIP_ADOPT_EXISTING)",
    "organizations:DescribeAccount": "KIP_ORG_ID membership of an account outside "
                                     "KIP_ALLOWED_ACCOUNTS (test_organization_reach.py)",
    "organizations:ListAccounts": "the schedule's adoption with KIP_ORG_ID and no account list "
                                  "discovers the organization's accounts (same file)",
    "sqs:UntagQueue": "tags kip applied and the request no longer has are removed "
                      "(tests/aws/test_tag_convergence.py)",
    "events:UntagResource": "the same, on the cluster's rule",
    "iam:UntagPolicy": "the same, on the controller policy",
    "iam:DetachUserPolicy": "teardown of a kip policy someone attached to a user "
                            "(test_teardown_detaches_the_policy_from_users_and_groups_too)",
    "iam:DetachGroupPolicy": "teardown of a kip policy someone attached to a group (same test)",
    "logs:CreateLogGroup": "Lambda logs", "logs:CreateLogStream": "Lambda logs",
    "logs:PutLogEvents": "Lambda logs",
    "xray:PutTraceSegments": "tracing", "xray:PutTelemetryRecords": "tracing",
    "secretsmanager:GetSecretValue": "the external id, once per cold start, from the stack's "
                                     "kip-* secret (chalicelib.aws.read_secret; "
                                     "tests/package runs it against the deployed stack)",
    "sqs:SendMessage": "the fan-out sweep's work items, on the sweep queue only "
                       "(tests/aws/test_sweep_fanout.py)",
    "sqs:ReceiveMessage": "Lambda's event source mapping polls the sweep queue with the "
                          "function's role (sweep_worker)",
    "sqs:DeleteMessage": "the same event source mapping deletes what sweep_worker finished",
    "cloudwatch:GetMetricData": "consumer health: GET /clusters/{name} and the schedule's health "
                                "pass (tests/aws/test_consumer_health.py)",
    "dynamodb:UpdateItem": "the health pass writes the health attribute alone (same tests)",
    **{f"cloudwatch:{op}": "per-cluster alarms, KIP_ALARMS=true (tests/aws/test_alarms.py)"
       for op in ("DescribeAlarms", "ListTagsForResource", "PutMetricAlarm", "TagResource",
                  "DeleteAlarms")},
    **{action: "existing-handler detection and role discovery in brownfield accounts "
               "(tests/aws/test_brownfield.py: the four tools' layouts)"
       for action in ("eks:DescribePodIdentityAssociation", "iam:GetRolePolicy",
                      "sqs:ListQueues", "events:ListRuleNamesByTarget",
                      "iam:GetAccountSummary")},
    "sqs:ChangeMessageVisibility": "the schedule's replay of the EKS trigger's failed events "
                                   "releases what it did not reach, on kip_failed-events-<stage> "
                                   "only (tests/aws/test_failed_events.py)",
}
BROAD = {"iam:PassRole", "iam:CreateRole", "iam:PutRolePolicy", "iam:UpdateAssumeRolePolicy",
         "iam:AttachUserPolicy", "sqs:SendMessage", "sqs:ReceiveMessage",
         "sqs:DeleteMessage", "sqs:PurgeQueue", "kms:Decrypt", "events:PutPermission"}
STAR_RESOURCE_OK = {"xray:PutTraceSegments", "xray:PutTelemetryRecords", "eks:ListClusters",
                    "events:ListRuleNamesByTarget",
                    "events:ListRules", "organizations:ListAccounts",
                    "cloudwatch:GetMetricData",     # no resource type: "*" only
                    # issue 20, read-only, no resource type: IRSA discovery, the role's room,
                    # queues a wildcard grant may cover
                    "iam:ListRoles", "iam:GetAccountSummary", "sqs:ListQueues"}


@pytest.mark.parametrize("stage", ["dev", "prod"])
def test_the_service_policy_allows_every_call_it_makes_and_nothing_broad(sc, stage,
                                                                        record_property):
    config = json.loads((ROOT / ".chalice" / "config.json").read_text())
    table = config["stages"][stage]["environment_variables"]["KIP_TABLE_NAME"]
    policy = json.loads((ROOT / ".chalice" / f"policy-{stage}.json").read_text())
    # every call of provision, a no-op and a repairing reconcile, list, sweep and teardown
    sc.setup("provision")
    sc.run("provision")
    sc.run("reconcile")
    sc.drift()
    sc.run("reconcile")
    engine = sc.engine()
    drive.page(engine, limit=10)
    drive.page(engine, limit=10, status="ready")
    drive.sweep(engine)
    sc.run("teardown")
    denied, used = [], set()
    for label, params in sc.tap.requests:
        action = label.split("(")[0].replace("service-quotas:", "servicequotas:")  # IAM prefix
        if action == "sts:GetCallerIdentity":
            continue                       # needs no permission
        used.add(action)
        resource = _arn_of(label, params, sc, table)
        if not _allowed(policy, action, resource, params):
            denied.append(f"{action} on {resource}")
    granted = {a for st in policy["Statement"] for a in _as_list(st["Action"])}
    wildcard_actions = sorted(a for a in granted if a == "*" or a.endswith(":*"))
    star_resources = sorted(a for st in policy["Statement"] if "*" in _as_list(st["Resource"])
                            for a in _as_list(st["Action"]) if a not in STAR_RESOURCE_OK)
    # the sweep work queue's own statement is exempt: its one resource is kip_sweep-<stage>
    broad = sorted(a for st in policy["Statement"]
                   if st.get("Sid") not in ("SweepWorkQueue", "FailedEventsQueue")
                   for a in _as_list(st["Action"]) if any(fnmatch.fnmatchcase(a, b) for b in BROAD))
    assert all(_as_list(st["Resource"]) == [f"arn:aws:sqs:*:*:kip_sweep-{stage}"]
               for st in policy["Statement"] if st.get("Sid") == "SweepWorkQueue")
    assert all(_as_list(st["Resource"]) == [f"arn:aws:sqs:*:*:kip_failed-events-{stage}"]
               for st in policy["Statement"] if st.get("Sid") == "FailedEventsQueue")
    unexplained = sorted(granted - used - set(IMPLICIT))
    record_property("least_privilege", {
        "check": f".chalice/policy-{stage}.json vs every call made",
        "result": f"all {len(used)} actions used are allowed on the resources used "
                  f"({len(set(denied))} denied); no wildcard action; Resource '*' only for "
                  f"{sorted(STAR_RESOURCE_OK)}; granted but unused and unexplained: "
                  f"{unexplained or 'none'}"})
    assert not sorted(set(denied)), f"the {stage} policy denies calls the service makes: " \
                                    f"{sorted(set(denied))}"
    assert not wildcard_actions, wildcard_actions
    assert not star_resources, f"actions granted on Resource '*': {star_resources}"
    assert not broad, f"grants the service does not need: {broad}"
    assert not unexplained, f"granted but never used: {unexplained}"


# ----------------------------------------------------------------------------- isolation

def _cid(name: str, region: str = REGION) -> naming.ClusterId:
    return naming.ClusterId(ACCOUNT, region, name)


def _state_of(sc, cid: naming.ClusterId) -> dict:
    snap = snapshot(sc.settings.table_name, region=cid.region)
    return owned_by(snap, cid.key)


def _provision_cluster(sc, name: str, region: str = REGION):
    make_cluster(name, region)
    make_role(f"KarpenterController-{name}")
    return drive.provision(sc.engine(), 
        ClusterRequest(cluster_name=name, region=region))


def test_two_100_char_names_differing_at_the_end_never_touch_each_other(sc, record_property):
    a = "a" * 99 + "1"
    b = "a" * 99 + "2"
    sc.tap.reset()
    make_cluster(a)
    make_cluster(b)
    # the role names would be longer than 64: name shorter roles in the request
    make_role("KarpenterController-long-a")
    make_role("KarpenterController-long-b")
    engine = sc.engine()
    drive.provision(engine, ClusterRequest(cluster_name=a, controller_role="KarpenterController-long-a"))
    a_before = _state_of(sc, _cid(a))
    drive.provision(engine, ClusterRequest(cluster_name=b, controller_role="KarpenterController-long-b"))
    b_before = _state_of(sc, _cid(b))
    na, nb = (naming.names_for(_cid(x), "kip-", "/kip/") for x in (a, b))
    def flat(names: naming.Names) -> set:
        d = names.to_dict()
        return {v for k, v in d.items() if isinstance(v, str) and k != "policy_path"} | \
            set(d["rules"].values()) | set(d["rule_arns"].values())   # (legacy: empty)
    assert not flat(na) & flat(nb), flat(na) & flat(nb)
    assert len(a_before["queues"]) == 2 and len(b_before["queues"]) == 2
    # provisioning b changed nothing of a's
    assert not diff(a_before, {**_state_of(sc, _cid(a))})
    # tearing a down leaves b exactly as it was
    drive.teardown(engine, _cid(a))
    assert not diff(b_before, _state_of(sc, _cid(b)))
    a_after = _state_of(sc, _cid(a))
    assert not (a_after["queues"] or a_after["rules"] or a_after["policies"] or a_after["record"])
    record_property("least_privilege", {"check": "two 100-char names differing at the end",
                                        "result": "distinct truncated names; provisioning and "
                                                  "teardown of one leave the other unchanged"})


def test_resources_tagged_for_another_cluster_are_never_touched(sc, record_property):
    sc.setup("provision")
    other = _cid("someone-else")
    tags = naming.ownership_tags(other)
    sqs, events = plain("sqs"), plain("events")
    url = sqs.create_queue(QueueName=sc.names.queue, Attributes={"VisibilityTimeout": "42"},
                           tags=tags)["QueueUrl"]
    spot = sc.names.rule
    events.put_rule(Name=spot, EventPattern=json.dumps({"source": ["custom"]}),
                    Tags=[{"Key": k, "Value": v} for k, v in tags.items()])
    before = sc.snapshot()
    # provisioning refuses before any write
    with pytest.raises(errors.ResourceNotOwned):
        sc.run("provision")
    assert not diff(before, sc.snapshot())
    # teardown (no record) skips them and touches nothing
    try:
        out = sc.run("teardown")
        skipped = {s["name"] for s in out.skipped}
    except errors.RecordNotFound as exc:
        skipped = {s["name"] for s in (exc.extra.get("skipped") or [])}
    assert {sc.names.queue, spot} <= skipped
    assert not diff(before, sc.snapshot())
    assert sqs.get_queue_attributes(QueueUrl=url, AttributeNames=["VisibilityTimeout"])[
        "Attributes"]["VisibilityTimeout"] == "42"
    record_property("least_privilege", {"check": "same-named resources tagged for another "
                                                 "cluster key", "result": "provision 409 "
                                        "ResourceNotOwned before any write; teardown skips "
                                        "them; both untouched"})


def test_same_cluster_name_in_two_regions_are_isolated(sc, record_property):
    sc.tap.reset()
    _provision_cluster(sc, "shared-name", REGION)
    make_cluster("shared-name", "us-east-1")
    drive.provision(sc.engine(), 
        ClusterRequest(cluster_name="shared-name", region="us-east-1"))
    east_before = _state_of(sc, _cid("shared-name", "us-east-1"))
    assert len(east_before["policies"]) == 1 and east_before["attachments"]
    drive.teardown(sc.engine(), _cid("shared-name", REGION))
    assert not diff(east_before, _state_of(sc, _cid("shared-name", "us-east-1")))
    record_property("least_privilege", {"check": "one cluster name in two regions",
                                        "result": "two policies (region in the name); teardown "
                                                  "in one region keeps the other's attachment"})


def test_a_cluster_named_like_another_clusters_dlq_is_isolated_and_provisionable(
        sc, record_property):
    sc.tap.reset()
    _provision_cluster(sc, "prod")
    prod_before = _state_of(sc, _cid("prod"))
    out = _provision_cluster(sc, "prod-dlq")
    assert out.record["status"] == "ready"
    assert not diff(prod_before, _state_of(sc, _cid("prod")))
    drive.teardown(sc.engine(), _cid("prod-dlq"))
    assert not diff(prod_before, _state_of(sc, _cid("prod")))
    record_property("least_privilege", {"check": "clusters 'prod' and 'prod-dlq'",
                                        "result": "both provisioned, neither touches the other"})


def test_a_short_name_equal_to_a_long_names_truncated_form_is_provisionable(sc,
                                                                           record_property):
    """Truncated names end in '-<10 hex of sha256(name)>'. A 100-character cluster and a
    55-character cluster whose name *is* that truncated form must not share a rule name."""
    long_name = "team-" + "x" * 95
    short_name = long_name[:44] + "-" + naming.short_hash(long_name)
    make_role("KarpenterController-long")
    make_cluster(long_name)
    engine = sc.engine()
    drive.provision(engine, ClusterRequest(cluster_name=long_name,
                                    controller_role="KarpenterController-long"))
    long_before = _state_of(sc, _cid(long_name))
    outcome = "provisioned"
    make_cluster(short_name)
    make_role("KarpenterController-short")
    try:
        drive.provision(engine, ClusterRequest(cluster_name=short_name,
                                        controller_role="KarpenterController-short"))
    except errors.ResourceNotOwned as exc:
        outcome = f"409 ResourceNotOwned on {exc.extra.get('resource')}"
    assert not diff(long_before, _state_of(sc, _cid(long_name))), "isolation broken"
    record_property("least_privilege", {"check": "a 55-char name equal to a 100-char name's "
                                                 "truncated form", "result": outcome +
                                        "; the long cluster untouched"})
    assert outcome == "provisioned", (
        f"cluster {short_name!r} cannot be provisioned: {outcome} (its names equal the "
        f"truncated names of {long_name[:20]}...)")
