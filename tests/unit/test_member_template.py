"""deploy/member.yaml and deploy/hub.yaml, statically: cfn-lint, parameters and conditions, the
provisioner role's trust and least privilege (evaluated with IAM wildcard semantics), the
forwarding rules and their dead-letter queue. Fast and pure: no AWS, no moto."""
from __future__ import annotations

import json
import pathlib
import re
import shutil
import subprocess
import sys

import pytest
from cfnlint.api import ManualArgs, lint_file

from tests.support.templates import HUB, MEMBER, Rendered, allowed, as_list, decide, load

MEMBER_ACCOUNT = "111111111111"
HUB_ACCOUNT = "123456789012"
HUB_BUS = f"arn:aws:events:eu-west-1:{HUB_ACCOUNT}:event-bus/kip-hub"
EXTERNAL_ID = "0123456789abcdef0123456789abcdef"
REQUIRED = {"HubAccountId": HUB_ACCOUNT, "HubEventBusArn": HUB_BUS, "ExternalId": EXTERNAL_ID,
            "PrimaryRegion": "eu-west-1"}
READ_VERBS = ("Get", "List", "Describe")
EKS_PATTERN = {"source": ["aws.eks"], "detail-type": ["AWS API Call via CloudTrail"],
               "detail": {"eventSource": ["eks.amazonaws.com"],
                          "eventName": ["CreateCluster", "DeleteCluster",
                                        "UpdateClusterConfig"]}}


def member(region: str = "eu-west-1", **params) -> Rendered:
    return Rendered(load(MEMBER), {**REQUIRED, **params}, MEMBER_ACCOUNT, region)


def provisioner_policy(**params) -> dict:
    role = member(**params).resources()["ProvisionerRole"]["Properties"]
    (policy,) = role["Policies"]
    return policy["PolicyDocument"]


def arn(resource: str) -> str:
    return f"arn:aws:{resource}"


# ------------------------------------------------------------------------------------ linting

@pytest.mark.parametrize("path", [MEMBER, HUB], ids=["member", "hub"])
def test_cfn_lint_reports_nothing_in_any_region_we_deploy_to(path):
    matches = lint_file(pathlib.Path(path), config=ManualArgs(
        regions=["us-east-1", "eu-west-1", "ap-southeast-2", "us-gov-west-1", "cn-north-1"]))
    assert [str(m) for m in matches] == []


@pytest.mark.parametrize("path", [MEMBER, HUB], ids=["member", "hub"])
def test_cfn_lint_command_line_exits_zero(path):
    """What an operator runs: `.venv/bin/cfn-lint deploy/member.yaml` (errors and warnings)."""
    exe = pathlib.Path(sys.executable).with_name("cfn-lint")
    exe = str(exe) if exe.exists() else shutil.which("cfn-lint")
    assert exe, "cfn-lint is not installed beside this interpreter"
    done = subprocess.run([exe, str(path)], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stdout + done.stderr


# ------------------------------------------------------------------- parameters and conditions

def test_parameters_defaults_and_the_external_id_is_never_echoed():
    params = load(MEMBER)["Parameters"]
    assert {k: params[k].get("Default") for k in
            ("Prefix", "IamPath", "ProvisionerRoleName",
             "ForwardDriftEvents")} == {
        "Prefix": "kip-", "IamPath": "/kip/",
        "ProvisionerRoleName": "kip-provisioner", "ForwardDriftEvents": "false"}
    assert params["ExternalId"]["NoEcho"] is True
    for required in ("HubAccountId", "HubEventBusArn", "ExternalId", "PrimaryRegion"):
        assert "Default" not in params[required], required


@pytest.mark.parametrize("value, ok", [("/kip/", True), ("/teams/kip/", True), ("/", False),
                                       ("kip/", False), ("/kip", False)])
def test_iam_path_parameter_refuses_the_root_path(value, ok):
    pattern = load(MEMBER)["Parameters"]["IamPath"]["AllowedPattern"]
    assert bool(re.fullmatch(pattern, value)) is ok


def test_account_global_role_only_in_the_primary_region():
    assert "ProvisionerRole" in member("eu-west-1").resources()
    secondary = member("eu-central-1")
    assert "ProvisionerRole" not in secondary.resources()
    # the output names the same role everywhere, so a StackSet's outputs agree across regions
    assert secondary.outputs()["ProvisionerRoleArn"] == \
        f"arn:aws:iam::{MEMBER_ACCOUNT}:role/kip-provisioner"


@pytest.mark.parametrize("region, drift, expected", [
    ("eu-west-1", "false", {"EksForwardingRule"}),
    ("eu-west-1", "true", {"EksForwardingRule", "DriftForwardingRule"}),
    ("us-east-1", "false", {"EksForwardingRule"}),
    ("us-east-1", "true", {"EksForwardingRule", "DriftForwardingRule", "IamDriftForwardingRule"}),
])
def test_forwarding_rules_per_region_and_flag(region, drift, expected):
    res = member(region, ForwardDriftEvents=drift).resources()
    assert {k for k, v in res.items() if v["Type"] == "AWS::Events::Rule"} == expected


# ------------------------------------------------------------------------------ trust policy

def test_trust_only_the_hub_account_with_the_external_id():
    doc = member().resources()["ProvisionerRole"]["Properties"]["AssumeRolePolicyDocument"]
    (st,) = doc["Statement"]
    assert st["Effect"] == "Allow" and st["Action"] == ["sts:AssumeRole",
                                                         "sts:SetSourceIdentity"]
    assert st["Principal"] == {"AWS": f"arn:aws:iam::{HUB_ACCOUNT}:root"}
    assert st["Condition"]["StringEquals"] == {"sts:ExternalId": EXTERNAL_ID}
    hub_lambda = f"arn:aws:iam::{HUB_ACCOUNT}:role/kip-prod"
    ok = {"sts:ExternalId": EXTERNAL_ID, "aws:PrincipalArn": hub_lambda}
    role = f"arn:aws:iam::{MEMBER_ACCOUNT}:role/kip-provisioner"
    assert allowed(doc, "sts:AssumeRole", role, ok)
    # kip's sessions name their actor (SourceIdentity), under the same conditions
    assert allowed(doc, "sts:SetSourceIdentity", role, ok)
    assert not allowed(doc, "sts:SetSourceIdentity", role, {"aws:PrincipalArn": hub_lambda})
    assert not allowed(doc, "sts:AssumeRole", role, {**ok, "sts:ExternalId": "guess"})
    assert not allowed(doc, "sts:AssumeRole", role, {"aws:PrincipalArn": hub_lambda})
    assert not allowed(doc, "sts:AssumeRole", role,
                       {**ok, "aws:PrincipalArn": f"arn:aws:iam::{HUB_ACCOUNT}:role/Admin"})
    assert allowed(doc, "sts:AssumeRole", role,
                   {**ok, "aws:PrincipalArn": f"arn:aws:iam::{HUB_ACCOUNT}:role/svc/kip-dev"})


# ---------------------------------------------------------------------------- least privilege

@pytest.mark.parametrize("params", [{}, {"Prefix": "acme-kip-", "IamPath": "/platform/kip/"}],
                         ids=["defaults", "custom"])
def test_no_write_on_star_and_every_write_inside_kips_namespace(params):
    prefix = params.get("Prefix", "kip-")
    path = params.get("IamPath", "/kip/")
    kip_policies = f"arn:aws:iam::{MEMBER_ACCOUNT}:policy{path}*"
    namespace = {  # service -> what every write resource of that service must look like
        "sqs": [f"arn:aws:sqs:*:{MEMBER_ACCOUNT}:{prefix}*"],
        "events": [f"arn:aws:events:*:{MEMBER_ACCOUNT}:rule/{prefix}*"],
        "cloudwatch": [f"arn:aws:cloudwatch:*:{MEMBER_ACCOUNT}:alarm:{prefix}*"],
        # any role (the controller role is found by its trust, issue 20), only with the
        # kip policy-ARN condition below
        "iam": [kip_policies, f"arn:aws:iam::{MEMBER_ACCOUNT}:role/*"],
    }
    # writes on users/groups are allowed only with the kip policy-ARN condition
    conditioned = {"iam:DetachUserPolicy", "iam:DetachGroupPolicy",
                   "iam:AttachRolePolicy", "iam:DetachRolePolicy"}
    for st in provisioner_policy(**params)["Statement"]:
        if st["Effect"] != "Allow":
            continue
        for action in as_list(st["Action"]):
            service, verb = action.split(":", 1)
            assert "*" not in action, action
            if verb.startswith(READ_VERBS):
                continue
            for resource in as_list(st["Resource"]):
                assert resource != "*", (st["Sid"], action)
                assert f":{MEMBER_ACCOUNT}:" in resource, (action, resource)
                if action in conditioned:
                    assert st["Condition"] == {"ArnLike": {"iam:PolicyARN": kip_policies}}, action
                    if action.startswith(("iam:DetachUser", "iam:DetachGroup")):
                        continue
                assert resource in namespace[service], (action, resource)


def test_only_list_actions_without_resource_types_use_star():
    """events:ListRules and eks:ListClusters have no resource type in the Service Authorization
    Reference, so "*" is the only possible scope; nothing else may use it."""
    star = {a for st in provisioner_policy()["Statement"] if st["Effect"] == "Allow"
            and "*" in as_list(st["Resource"]) for a in as_list(st["Action"])}
    assert star == {"events:ListRules", "eks:ListClusters", "cloudwatch:GetMetricData",
                    "iam:ListRoles", "iam:GetAccountSummary", "sqs:ListQueues",
                    "events:ListRuleNamesByTarget"}     # read-only; parliament: "*" only


CONTROLLER = f"arn:aws:iam::{MEMBER_ACCOUNT}:role/teams/platform/KarpenterController-x"
KIP_POLICY = f"arn:aws:iam::{MEMBER_ACCOUNT}:policy/kip/payments-prod"


@pytest.mark.parametrize("action, resource, context, expected", [
    # attach/detach: kip's policies only, to whichever role is the cluster's controller role
    # (found by its trust: any name, any IAM path; issue 20)
    ("iam:AttachRolePolicy", CONTROLLER, {"iam:PolicyARN": KIP_POLICY}, "Allow"),
    ("iam:AttachRolePolicy", f"arn:aws:iam::{MEMBER_ACCOUNT}:role/KarpenterController-y",
     {"iam:PolicyARN": KIP_POLICY}, "Allow"),
    ("iam:AttachRolePolicy", f"arn:aws:iam::{MEMBER_ACCOUNT}:role/shop-karpenter",
     {"iam:PolicyARN": KIP_POLICY}, "Allow"),
    ("iam:AttachRolePolicy", CONTROLLER,
     {"iam:PolicyARN": "arn:aws:iam::aws:policy/AdministratorAccess"}, "ImplicitDeny"),
    ("iam:AttachRolePolicy", CONTROLLER,
     {"iam:PolicyARN": f"arn:aws:iam::{MEMBER_ACCOUNT}:policy/kipper/x"}, "ImplicitDeny"),
    ("iam:AttachRolePolicy", f"arn:aws:iam::{MEMBER_ACCOUNT}:role/Admin",
     {"iam:PolicyARN": "arn:aws:iam::aws:policy/AdministratorAccess"}, "ImplicitDeny"),
    ("iam:AttachRolePolicy", f"arn:aws:iam::222222222222:role/KarpenterController-x",
     {"iam:PolicyARN": KIP_POLICY}, "ImplicitDeny"),
    ("iam:ListAttachedRolePolicies", CONTROLLER, {}, "Allow"),
    ("iam:GetRole", f"arn:aws:iam::{MEMBER_ACCOUNT}:role/Admin", {}, "Allow"),    # a read
    ("iam:PutRolePolicy", f"arn:aws:iam::{MEMBER_ACCOUNT}:role/Admin", {}, "ImplicitDeny"),
    ("eks:ListPodIdentityAssociations",
     f"arn:aws:eks:eu-west-1:{MEMBER_ACCOUNT}:cluster/payments-prod", {}, "Allow"),
    ("events:ListRuleNamesByTarget", f"arn:aws:events:eu-west-1:{MEMBER_ACCOUNT}:rule/x", {},
     "Allow"),
    ("sqs:ReceiveMessage", f"arn:aws:sqs:eu-west-1:{MEMBER_ACCOUNT}:Karpenter-c", {},
     "ImplicitDeny"),
    # teardown of a kip policy someone attached to a user or group
    ("iam:DetachUserPolicy", f"arn:aws:iam::{MEMBER_ACCOUNT}:user/alice",
     {"iam:PolicyARN": KIP_POLICY}, "Allow"),
    ("iam:DetachGroupPolicy", f"arn:aws:iam::{MEMBER_ACCOUNT}:group/ops",
     {"iam:PolicyARN": "arn:aws:iam::aws:policy/ReadOnlyAccess"}, "ImplicitDeny"),
    ("iam:AttachUserPolicy", f"arn:aws:iam::{MEMBER_ACCOUNT}:user/alice",
     {"iam:PolicyARN": KIP_POLICY}, "ImplicitDeny"),
    # policies: only under the kip path
    ("iam:CreatePolicyVersion", KIP_POLICY, {}, "Allow"),
    ("iam:DeletePolicy", f"arn:aws:iam::{MEMBER_ACCOUNT}:policy/Admin", {}, "ImplicitDeny"),
    ("iam:CreateRole", f"arn:aws:iam::{MEMBER_ACCOUNT}:role/KarpenterController-z", {},
     "ImplicitDeny"),
    ("iam:PassRole", CONTROLLER, {}, "ImplicitDeny"),
    # queues and rules: kip's names in this account, any region; never the forwarding plumbing
    ("sqs:CreateQueue", f"arn:aws:sqs:ap-south-1:{MEMBER_ACCOUNT}:kip-payments-prod", {}, "Allow"),
    ("sqs:DeleteQueue", f"arn:aws:sqs:eu-west-1:{MEMBER_ACCOUNT}:orders", {}, "ImplicitDeny"),
    ("sqs:SendMessage", f"arn:aws:sqs:eu-west-1:{MEMBER_ACCOUNT}:kip-payments-prod", {},
     "ImplicitDeny"),
    ("sqs:DeleteQueue", f"arn:aws:sqs:eu-west-1:{MEMBER_ACCOUNT}:kip--org-forwarder-dlq", {},
     "ExplicitDeny"),
    ("events:PutRule", f"arn:aws:events:eu-west-1:{MEMBER_ACCOUNT}:rule/kip-payments-prod-spot",
     {}, "Allow"),
    ("events:DeleteRule", f"arn:aws:events:eu-west-1:{MEMBER_ACCOUNT}:rule/kip--org-eks-forwarder",
     {}, "ExplicitDeny"),
    ("events:DeleteRule", f"arn:aws:events:eu-west-1:{MEMBER_ACCOUNT}:rule/AutoScalingManagedRule",
     {}, "ImplicitDeny"),
    ("events:PutEvents", f"arn:aws:events:eu-west-1:{MEMBER_ACCOUNT}:event-bus/default", {},
     "ImplicitDeny"),
    ("events:ListRules", "*", {}, "Allow"),
    # read-only lookups
    ("eks:DescribeCluster", f"arn:aws:eks:eu-west-1:{MEMBER_ACCOUNT}:cluster/payments-prod", {},
     "Allow"),
    ("eks:ListClusters", "*", {}, "Allow"),
    ("kms:GetKeyPolicy", f"arn:aws:kms:eu-west-1:{MEMBER_ACCOUNT}:key/1234abcd", {}, "Allow"),
    ("kms:Decrypt", f"arn:aws:kms:eu-west-1:{MEMBER_ACCOUNT}:key/1234abcd", {}, "ImplicitDeny"),
    ("servicequotas:GetServiceQuota",
     f"arn:aws:servicequotas:eu-west-1:{MEMBER_ACCOUNT}:events/L-244521F2", {}, "Allow"),
    ("servicequotas:RequestServiceQuotaIncrease",
     f"arn:aws:servicequotas:eu-west-1:{MEMBER_ACCOUNT}:events/L-244521F2", {}, "ImplicitDeny"),
])
def test_provisioner_policy_decisions(action, resource, context, expected):
    assert decide(provisioner_policy(), action, resource, context) == expected


def test_custom_prefix_and_path_move_the_scope_with_them():
    policy = provisioner_policy(Prefix="acme-", IamPath="/platform/kip/")
    kip_policy = f"arn:aws:iam::{MEMBER_ACCOUNT}:policy/platform/kip/c1"
    role = f"arn:aws:iam::{MEMBER_ACCOUNT}:role/eks/karpenter-c1"
    assert allowed(policy, "iam:AttachRolePolicy", role, {"iam:PolicyARN": kip_policy})
    assert not allowed(policy, "iam:AttachRolePolicy", role, {"iam:PolicyARN": KIP_POLICY})
    assert allowed(policy, "sqs:CreateQueue", f"arn:aws:sqs:eu-west-1:{MEMBER_ACCOUNT}:acme-c1")
    assert not allowed(policy, "sqs:CreateQueue", f"arn:aws:sqs:eu-west-1:{MEMBER_ACCOUNT}:kip-c1")
    assert decide(policy, "events:DeleteRule",
                  f"arn:aws:events:eu-west-1:{MEMBER_ACCOUNT}:rule/acme--org-eks-forwarder") == \
        "ExplicitDeny"


def test_role_policy_fits_the_inline_policy_size_limit():
    """IAM: a role's inline policies may total 10,240 characters, whitespace not counted."""
    text = json.dumps(provisioner_policy(), separators=(",", ":"))
    assert len(text) < 10_240 * 0.8, len(text)


# -------------------------------------------------------------------------------- forwarding

def test_forwarding_rule_matches_the_eks_trigger_pattern_and_targets_the_hub_bus():
    res = member().resources()
    rule = res["EksForwardingRule"]["Properties"]
    assert rule["EventPattern"] == EKS_PATTERN
    assert rule["EventBusName"] == "default" and rule["State"] == "ENABLED"
    (target,) = rule["Targets"]
    assert target["Arn"] == HUB_BUS
    assert target["RoleArn"] == "GETATT:ForwarderRole.Arn"
    assert target["DeadLetterConfig"] == {"Arn": "GETATT:ForwarderDeadLetterQueue.Arn"}
    assert target["RetryPolicy"]["MaximumRetryAttempts"] > 0


def test_forwarder_role_may_only_put_events_on_the_hub_bus_and_is_per_region():
    props = member("ap-southeast-2").resources()["ForwarderRole"]["Properties"]
    assert props["RoleName"] == "kip--org-forwarder-ap-southeast-2"
    assert len(props["RoleName"]) <= 64
    (trust,) = props["AssumeRolePolicyDocument"]["Statement"]
    assert trust["Principal"] == {"Service": "events.amazonaws.com"}
    (policy,) = props["Policies"]
    assert policy["PolicyDocument"]["Statement"] == [
        {"Effect": "Allow", "Action": "events:PutEvents", "Resource": HUB_BUS}]


def test_dead_letter_queue_admits_exactly_the_forwarding_rules():
    res = member("us-east-1", ForwardDriftEvents="true").resources()
    rule_arns = {f"arn:aws:events:us-east-1:{MEMBER_ACCOUNT}:rule/{v['Properties']['Name']}"
                 for v in res.values() if v["Type"] == "AWS::Events::Rule"}
    allow, deny = res["ForwarderDeadLetterQueuePolicy"]["Properties"]["PolicyDocument"]["Statement"]
    assert allow["Principal"] == {"Service": "events.amazonaws.com"}
    assert set(allow["Condition"]["ArnEquals"]["aws:SourceArn"]) == rule_arns
    assert deny["Effect"] == "Deny" and deny["Condition"] == {
        "Bool": {"aws:SecureTransport": "false"}}
    for rule in (v for v in res.values() if v["Type"] == "AWS::Events::Rule"):
        for target in rule["Properties"]["Targets"]:
            assert target["DeadLetterConfig"] == {"Arn": "GETATT:ForwarderDeadLetterQueue.Arn"}
            assert target["RoleArn"] == "GETATT:ForwarderRole.Arn"


def test_forwarding_plumbing_names_never_collide_with_kip_cluster_names():
    """kip names are prefix + cluster name (starts [0-9A-Za-z]) or prefix + '_' (shortened);
    the plumbing is prefix + '-', which neither can produce, and the role denies it to kip."""
    res = member("us-east-1", ForwardDriftEvents="true").resources()
    names = [res["ForwarderDeadLetterQueue"]["Properties"]["QueueName"]] + [
        v["Properties"]["Name"] for v in res.values() if v["Type"] == "AWS::Events::Rule"]
    assert all(n.startswith("kip--") for n in names), names
    assert all(len(n) <= 64 for n in names)


def test_drift_rules_narrow_to_kip_names():
    res = member("us-east-1", ForwardDriftEvents="true").resources()
    drift = res["DriftForwardingRule"]["Properties"]["EventPattern"]
    assert drift["detail"]["requestParameters"] == {"$or": [
        {"name": [{"prefix": "kip-"}]}, {"rule": [{"prefix": "kip-"}]},
        {"queueUrl": [{"wildcard": "*/kip-*"}]}]}
    iam = res["IamDriftForwardingRule"]["Properties"]["EventPattern"]
    assert iam["source"] == ["aws.iam"]
    assert iam["detail"]["requestParameters"] == {
        "policyArn": [{"prefix": f"arn:aws:iam::{MEMBER_ACCOUNT}:policy/kip/"}]}
    assert set(iam["detail"]["eventName"]) == {"DetachRolePolicy", "DeletePolicy",
                                               "CreatePolicyVersion", "SetDefaultPolicyVersion",
                                               "DeletePolicyVersion"}


# ------------------------------------------------------------------------------------- hub

def hub(**params) -> Rendered:
    base = {"TriggerFunctionArn": f"arn:aws:lambda:eu-west-1:{HUB_ACCOUNT}:function:kip-prod-on_eks"}
    return Rendered(load(HUB), {**base, **params}, HUB_ACCOUNT, "eu-west-1")


@pytest.mark.parametrize("params, sids", [
    ({"OrgId": "o-abcdefghij"}, ["MembersOfTheOrganization"]),
    ({"AllowedAccountIds": "111111111111,222222222222"}, ["ListedAccounts"]),
    ({"OrgId": "o-abcdefghij", "AllowedAccountIds": "111111111111"},
     ["MembersOfTheOrganization", "ListedAccounts"]),
])
def test_hub_bus_policy_admits_the_organization_or_listed_accounts(params, sids):
    bus = hub(**params).resources()["HubEventBus"]["Properties"]
    assert bus["Name"] == "kip-hub"
    statements = bus["Policy"]["Statement"]
    assert [s["Sid"] for s in statements] == sids
    for st in statements:
        assert st["Action"] == "events:PutEvents"
        assert st["Resource"] == HUB_BUS
        if st["Sid"] == "MembersOfTheOrganization":
            assert st["Principal"] == "*"
            assert st["Condition"] == {"StringEquals": {"aws:PrincipalOrgID": "o-abcdefghij"}}
        else:
            assert st["Principal"] == {"AWS": params["AllowedAccountIds"].split(",")}


def test_hub_refuses_a_bus_nobody_may_send_to():
    """The template Rule fails the stack when neither OrgId nor AllowedAccountIds is given."""
    assertion = load(HUB)["Rules"]["SomeoneMaySend"]["Assertions"][0]["Assert"]
    assert assertion == {"Fn::Or": [
        {"Fn::Not": [{"Fn::Equals": [{"Ref": "OrgId"}, ""]}]},
        {"Fn::Not": [{"Fn::EachMemberEquals": [{"Ref": "AllowedAccountIds"}, ""]}]}]}


def test_hub_rule_invokes_the_trigger_with_a_scoped_permission():
    res = hub(OrgId="o-abcdefghij").resources()
    rule = res["EksEventsRule"]["Properties"]
    assert rule["EventPattern"] == EKS_PATTERN
    assert rule["EventBusName"] == "GETATT:HubEventBus.Name"
    (target,) = rule["Targets"]
    assert target["Arn"].endswith(":function:kip-prod-on_eks")
    perm = res["TriggerInvokePermission"]["Properties"]
    assert perm["Principal"] == "events.amazonaws.com"
    assert perm["SourceArn"] == "GETATT:EksEventsRule.Arn"
    assert perm["SourceAccount"] == HUB_ACCOUNT


def test_with_the_hub_stacks_role_arns_only_those_exact_roles_are_trusted():
    # the kip stack's output HubRoleArns: not any hub role that happens to match kip-*
    exact = [f"arn:aws:iam::{HUB_ACCOUNT}:role/kip-prod-OnEksEventRole-AbC1",
             f"arn:aws:iam::{HUB_ACCOUNT}:role/kip-prod-ApiHandlerRole-DeF2"]
    doc = member(HubRoleArns=",".join(exact)).resources()["ProvisionerRole"]["Properties"][
        "AssumeRolePolicyDocument"]
    role = f"arn:aws:iam::{MEMBER_ACCOUNT}:role/kip-provisioner"
    for arn in exact:
        assert allowed(doc, "sts:AssumeRole", role,
                       {"sts:ExternalId": EXTERNAL_ID, "aws:PrincipalArn": arn})
    assert not allowed(doc, "sts:AssumeRole", role, {
        "sts:ExternalId": EXTERNAL_ID,
        "aws:PrincipalArn": f"arn:aws:iam::{HUB_ACCOUNT}:role/kip-prod-SomethingElse"})
