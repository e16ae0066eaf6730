"""The four brownfield layouts kip meets, built in moto with the tools' real names, tags and
policies (docs/BROWNFIELD.md says where each name comes from):

* ``karpenter_cfn``: Karpenter's getting-started CloudFormation (stack ``Karpenter-<cluster>``):
  queue ``<cluster>``, five rules ``Karpenter-<cluster>-<Kind>Rule-<random>``, the split
  controller policies (``KarpenterControllerInterruptionPolicy-<cluster>`` holds the SQS
  statement), and the ``<cluster>-karpenter`` role eksctl makes with a Pod Identity association
  (kube-system/karpenter).
* ``terraform``: terraform-aws-eks ``modules/karpenter`` (v20, IRSA): queue ``Karpenter-<cluster>``,
  rules ``Karpenter<Kind>-<26>`` tagged ``ClusterName``, role and managed policy
  ``KarpenterController-<26>`` trusting the cluster's OIDC provider for karpenter/karpenter.
* ``eksctl``: ``karpenter.withSpotInterruptionQueue``: queue ``<cluster>`` tagged by the stack
  ``eksctl-<cluster>-karpenter``, four rules ``eksctl-<cluster>-karpenter-<Kind>Rule-<random>``,
  policy ``eksctl-KarpenterControllerPolicy-<cluster>``, IRSA role
  ``eksctl-<cluster>-iamservice-role`` (karpenter/karpenter).
* ``hand_written``: hand-written Terraform: queue ``karpenter-interruptions-<cluster>``, one rule,
  an *inline* policy granting a wildcard queue ARN, on the role named by kip's template.
"""
from __future__ import annotations

import json
from dataclasses import dataclass, field

import boto3

from tests.support.world import ACCOUNT, REGION, make_cluster

KINDS = {   # kind -> (source, detail-type)
    "ScheduledChange": ("aws.health", "AWS Health Event"),
    "SpotInterruption": ("aws.ec2", "EC2 Spot Instance Interruption Warning"),
    "Rebalance": ("aws.ec2", "EC2 Instance Rebalance Recommendation"),
    "InstanceStateChange": ("aws.ec2", "EC2 Instance State-change Notification"),
    "CapacityReservationInterruption": (
        "aws.ec2", "EC2 Capacity Reservation Instance Interruption Warning"),
}
TF_NAMES = {"ScheduledChange": "HealthEvent", "SpotInterruption": "SpotInterrupt",
            "Rebalance": "InstanceRebalance", "InstanceStateChange": "InstanceStateChange"}
TF_SUFFIX = "20260101123456789012345678"     # 18 timestamp digits + 8 hex (terraform name_prefix)
TARGET_ID = "KarpenterInterruptionQueueTarget"


@dataclass
class Layout:
    tool: str
    cluster: str
    role: str
    queue: str
    rules: list = field(default_factory=list)
    role_source: str = ""


def _iam():
    return boto3.client("iam", region_name=REGION)


def issuer(cluster: str) -> str:
    c = boto3.client("eks", region_name=REGION).describe_cluster(name=cluster)["cluster"]
    return c["identity"]["oidc"]["issuer"].removeprefix("https://")


def irsa_trust(cluster: str, subject: str, operator: str = "StringEquals",
               aud: bool = True) -> dict:
    host = issuer(cluster)
    cond = {f"{host}:sub": subject}
    if aud:
        cond[f"{host}:aud"] = "sts.amazonaws.com"
    return {"Version": "2012-10-17", "Statement": [{
        "Effect": "Allow", "Action": "sts:AssumeRoleWithWebIdentity",
        "Principal": {"Federated": f"arn:aws:iam::{ACCOUNT}:oidc-provider/{host}"},
        "Condition": {operator: cond}}]}


POD_TRUST = {"Version": "2012-10-17", "Statement": [{
    "Sid": "AllowEksAuthToAssumeRoleForPodIdentity", "Effect": "Allow",
    "Principal": {"Service": "pods.eks.amazonaws.com"},
    "Action": ["sts:AssumeRole", "sts:TagSession"]}]}


def role(name: str, trust: dict, path: str = "/") -> str:
    return _iam().create_role(RoleName=name, Path=path,
                              AssumeRolePolicyDocument=json.dumps(trust))["Role"]["Arn"]


def sqs_statement(resource: str, sid: str | None = "AllowInterruptionQueueActions",
                  extra: tuple = ()) -> dict:
    stmt = {"Effect": "Allow", "Resource": resource,
            "Action": ["sqs:DeleteMessage", *extra, "sqs:GetQueueUrl", "sqs:ReceiveMessage"]}
    return {**({"Sid": sid} if sid else {}), **stmt}


def managed(role_name: str, policy: str, *statements: dict) -> str:
    arn = _iam().create_policy(PolicyName=policy, PolicyDocument=json.dumps({
        "Version": "2012-10-17", "Statement": list(statements)}))["Policy"]["Arn"]
    _iam().attach_role_policy(RoleName=role_name, PolicyArn=arn)
    return arn


def queue(name: str, tags: dict | None = None) -> str:
    sqs = boto3.client("sqs", region_name=REGION)
    url = sqs.create_queue(QueueName=name, Attributes={"MessageRetentionPeriod": "300"},
                           tags=tags or {})["QueueUrl"]
    return sqs.get_queue_attributes(QueueUrl=url, AttributeNames=["QueueArn"])["Attributes"][
        "QueueArn"]


def rules(names: dict, queue_arn: str, tags: dict | None = None) -> list:
    """``names``: kind -> rule name; each rule targets the queue on the default bus."""
    events = boto3.client("events", region_name=REGION)
    for kind, name in names.items():
        source, detail_type = KINDS[kind]
        events.put_rule(Name=name, EventPattern=json.dumps(
            {"source": [source], "detail-type": [detail_type]}),
            Tags=[{"Key": k, "Value": v} for k, v in (tags or {}).items()])
        events.put_targets(Rule=name, Targets=[{"Id": TARGET_ID, "Arn": queue_arn}])
    return sorted(names.values())


def karpenter_cfn(cluster: str, pods, legacy_policy: bool = False) -> Layout:
    make_cluster(cluster)
    stack = f"Karpenter-{cluster}"
    arn = queue(cluster, {"aws:cloudformation:stack-name": stack,
                          "aws:cloudformation:logical-id": "KarpenterInterruptionQueue"})
    made = rules({k: f"{stack}-{k}Rule-1A2B3C4D5E6F" for k in KINDS}, arn)
    role_name = f"{cluster}-karpenter"
    role_arn = role(role_name, POD_TRUST)
    if legacy_policy:
        managed(role_name, f"KarpenterControllerPolicy-{cluster}", sqs_statement(arn))
    else:
        for part in ("NodeLifecycle", "IAMIntegration", "EKSIntegration",
                     "ResourceDiscovery", "ZonalShift"):
            managed(role_name, f"KarpenterController{part}Policy-{cluster}", {
                "Effect": "Allow", "Action": "ec2:DescribeInstances", "Resource": "*"})
        managed(role_name, f"KarpenterControllerInterruptionPolicy-{cluster}",
                sqs_statement(arn))
    pods.associate(cluster, "kube-system", "karpenter", role_arn)
    return Layout("karpenter-cloudformation", cluster, role_name, cluster, made,
                  "pod-identity")


def terraform(cluster: str, pods=None) -> Layout:
    make_cluster(cluster)
    name = f"Karpenter-{cluster}"
    arn = queue(name)
    made = rules({k: f"Karpenter{TF_NAMES[k]}-{TF_SUFFIX}" for k in TF_NAMES}, arn,
                 {"ClusterName": cluster})
    role_name = f"KarpenterController-{TF_SUFFIX}"
    role(role_name, irsa_trust(cluster, "system:serviceaccount:karpenter:karpenter"))
    managed(role_name, f"KarpenterController-{TF_SUFFIX}", sqs_statement(arn),
            {"Sid": "AllowScopedEC2InstanceAccessActions", "Effect": "Allow",
             "Action": ["ec2:RunInstances", "ec2:CreateFleet"], "Resource": "*"})
    return Layout("terraform-aws-eks", cluster, role_name, name, made, "irsa")


def eksctl(cluster: str, pods=None) -> Layout:
    make_cluster(cluster)
    stack = f"eksctl-{cluster}-karpenter"
    arn = queue(cluster, {"aws:cloudformation:stack-name": stack,
                          "alpha.eksctl.io/cluster-name": cluster,
                          "alpha.eksctl.io/eksctl-version": "0.230.0"})
    made = rules({k: f"{stack}-{k}Rule-9Z8Y7X6W5V4U" for k in list(KINDS)[:4]}, arn)
    role_name = f"eksctl-{cluster}-iamservice-role"
    role(role_name, irsa_trust(cluster, "system:serviceaccount:karpenter:karpenter",
                               aud=False))
    managed(role_name, f"eksctl-KarpenterControllerPolicy-{cluster}",
            sqs_statement(arn, sid=None, extra=("sqs:GetQueueAttributes",)))
    return Layout("eksctl", cluster, role_name, cluster, made, "irsa")


def hand_written(cluster: str, pods=None) -> Layout:
    make_cluster(cluster)
    name = f"karpenter-interruptions-{cluster}"
    arn = queue(name, {"team": "platform"})
    made = rules({"SpotInterruption": f"spot-to-karpenter-{cluster}"}, arn)
    role_name = f"KarpenterController-{cluster}"
    role(role_name, irsa_trust(cluster, "system:serviceaccount:kube-system:*",
                               operator="StringLike"))
    _iam().put_role_policy(RoleName=role_name, PolicyName="karpenter-sqs",
                           PolicyDocument=json.dumps({"Version": "2012-10-17", "Statement": [
                               sqs_statement(f"arn:aws:sqs:{REGION}:{ACCOUNT}:karpenter-*",
                                             sid=None)]}))
    return Layout("unknown", cluster, role_name, name, made, "irsa")


LAYOUTS = {"karpenter_cfn": karpenter_cfn, "terraform": terraform, "eksctl": eksctl,
           "hand_written": hand_written}
