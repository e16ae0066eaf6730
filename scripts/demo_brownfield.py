"""`make demo`'s brownfield scenes: clusters that another tool already wires, and one without
Karpenter, met the way a platform team meets them (docs/BROWNFIELD.md).

* ``legacy-orders``: terraform-aws-eks ``modules/karpenter`` (queue ``Karpenter-<cluster>``, four
  ``Karpenter<Kind>-<suffix>`` rules, an IRSA role ``KarpenterController-<suffix>``). kip finds the
  role by its trust, reports the other tool (409 from the API; ``external`` from the trigger) and
  creates nothing.
* ``legacy-search``: Karpenter's getting-started CloudFormation (stack ``Karpenter-<cluster>``). A
  takeover wires kip's queue beside it; the cutover waits, then CloudWatch (simulated here, as
  SQS would publish it) shows Karpenter reading kip's queue and not the old one: ``switched``.
* ``bare-analytics``: no Karpenter at all: recorded ``no_karpenter``, no queue, no rule.

Everything runs against the local stack's moto server; the other tools' resources are compared
before and after: kip never changes them.
"""
from __future__ import annotations

import datetime
import json
import time
from typing import Any, Callable

ACCOUNT, REGION = "123456789012", "eu-west-1"
TF_SUFFIX = "20261205093000123456789abc"     # terraform name_prefix: 18 digits + 8 hex
KINDS = {"ScheduledChange": ("aws.health", "AWS Health Event", "HealthEvent"),
         "SpotInterruption": ("aws.ec2", "EC2 Spot Instance Interruption Warning",
                              "SpotInterrupt"),
         "Rebalance": ("aws.ec2", "EC2 Instance Rebalance Recommendation", "InstanceRebalance"),
         "InstanceStateChange": ("aws.ec2", "EC2 Instance State-change Notification",
                                 "InstanceStateChange")}
SCHEDULED = {"version": "0", "id": "demo", "detail-type": "Scheduled Event",
             "source": "aws.events", "account": ACCOUNT, "region": REGION, "resources": [],
             "detail": {}, "time": "2026-12-05T00:00:00Z"}


def run(api_url: str, trust: dict, cluster_role: str, say: Callable, row: Callable,
        invoke: Callable[[str, dict], Any], event: Callable[[str, str], dict]) -> int:
    """The three scenes; ``invoke(function, event)`` runs a handler of the app in-process,
    ``event(name, cluster)`` makes a CloudTrail EKS event."""
    import boto3
    import requests
    eks = boto3.client("eks")
    for name in ("legacy-orders", "legacy-search", "bare-analytics"):
        eks.create_cluster(name=name, roleArn=cluster_role,
                           resourcesVpcConfig={"subnetIds": ["subnet-0abc"]})
    orders, search = terraform("legacy-orders"), karpenter_cfn("legacy-search", trust)
    before = {c: theirs(made) for c, made in (("orders", orders), ("search", search))}

    say("Brownfield 1: legacy-orders, already wired by terraform-aws-eks (IRSA role "
        f"KarpenterController-{TF_SUFFIX[:6]}...)")
    resp = requests.post(f"{api_url}/clusters", json={"cluster_name": "legacy-orders"},
                         timeout=60)
    err = resp.json().get("error", {})
    row(f"POST /clusters -> HTTP {resp.status_code} {err.get('code')}")
    found = err.get("existing_handler") or {}
    row("existing handler:", found.get("tool"), "| queue", found.get("queue"), "| rules",
        len(found.get("rules") or []))
    out = invoke("on_eks_event", event("CreateCluster", "legacy-orders"))
    row("CreateCluster trigger ->", json.dumps({k: out.get(k) for k in ("status", "recorded")}))
    if resp.status_code != 409 or out.get("status") != "external":
        return 1

    say("Brownfield 2: legacy-search, Karpenter's CloudFormation; kip takes over")
    resp = requests.post(f"{api_url}/clusters", json={"cluster_name": "legacy-search",
                                                      "on_existing": "takeover"}, timeout=60)
    cut = resp.json().get("cutover") or {}
    row(f"POST /clusters on_existing=takeover -> HTTP {resp.status_code}, cutover "
        f"{cut.get('state')!r} ({cut.get('reason')})")
    row("make the switch with:", cut.get("helm"))
    row("kip's queue keeps", retention("kip-legacy-search"), "s of messages while waiting")
    if resp.status_code != 201 or cut.get("state") != "waiting":
        print(json.dumps(resp.json(), indent=2))
        return 1
    reads("kip-legacy-search", minutes_ago=2)
    reads("legacy-search", minutes_ago=90)
    row("CloudWatch (simulated): kip-legacy-search read 2 min ago; legacy-search last read "
        "90 min ago")
    swept = invoke("reconcile_all", SCHEDULED)
    row("sweep health pass ->", json.dumps([h for h in swept.get("health", [])
                                            if "cutover" in h]))
    cut = requests.get(f"{api_url}/clusters/legacy-search", timeout=30).json()["cutover"]
    row(f"cutover {cut['state']!r} ({cut['reason']}), old_queue_still_fed="
        f"{cut['old_queue_still_fed']}; kip's queue keeps {retention('kip-legacy-search')} s")
    row("next:", cut["next"])
    if cut["state"] != "switched" or retention("kip-legacy-search") != 1209600:
        return 1

    say("Bare cluster: bare-analytics has no Karpenter")
    out = invoke("on_eks_event", event("CreateCluster", "bare-analytics"))
    queues = boto3.client("sqs").list_queues(QueueNamePrefix="kip-bare").get("QueueUrls", [])
    row("CreateCluster trigger ->", out.get("status"), "| kip queues for it:", len(queues))
    if out.get("status") != "no_karpenter" or queues:
        return 1
    return inventory(api_url, before, {"orders": orders, "search": search}, say, row)


def inventory(api_url: str, before: dict, made: dict, say: Callable, row: Callable) -> int:
    import requests
    say("Fleet coverage: GET /clusters?handler=...")
    for handler in ("kip", "external", "none"):
        items = requests.get(f"{api_url}/clusters?handler={handler}", timeout=30).json()["items"]
        row(f"{handler:<9}", ", ".join(sorted(f"{i['cluster_name']} ({i['status']})"
                                              for i in items)))
    same = all(theirs(m) == before[k] for k, m in made.items())
    row("the other tools' queues, rules and policies are as they were:", same)
    return 0 if same else 1


# ----------------------------------------------------------------- the other tools' wiring

def _queue(name: str, tags: dict | None = None) -> str:
    import boto3
    sqs = boto3.client("sqs")
    url = sqs.create_queue(QueueName=name, Attributes={"MessageRetentionPeriod": "300"},
                           tags=tags or {})["QueueUrl"]
    return sqs.get_queue_attributes(QueueUrl=url, AttributeNames=["QueueArn"])[
        "Attributes"]["QueueArn"]


def _rules(names: dict, queue_arn: str, tags: dict) -> list:
    import boto3
    events = boto3.client("events")
    for kind, name in names.items():
        source, detail_type, _ = KINDS[kind]
        events.put_rule(Name=name, EventPattern=json.dumps(
            {"source": [source], "detail-type": [detail_type]}),
            Tags=[{"Key": k, "Value": v} for k, v in tags.items()])
        events.put_targets(Rule=name, Targets=[{"Id": "KarpenterInterruptionQueueTarget",
                                                "Arn": queue_arn}])
    return sorted(names.values())


def _grant(queue_arn: str) -> str:
    return json.dumps({"Version": "2012-10-17", "Statement": [{
        "Sid": "AllowInterruptionQueueActions", "Effect": "Allow", "Resource": queue_arn,
        "Action": ["sqs:DeleteMessage", "sqs:GetQueueUrl", "sqs:ReceiveMessage"]}]})


def terraform(cluster: str) -> dict:
    import boto3
    iam = boto3.client("iam")
    issuer = boto3.client("eks").describe_cluster(name=cluster)["cluster"]["identity"][
        "oidc"]["issuer"].removeprefix("https://")
    trust = {"Version": "2012-10-17", "Statement": [{
        "Effect": "Allow", "Action": "sts:AssumeRoleWithWebIdentity",
        "Principal": {"Federated": f"arn:aws:iam::{ACCOUNT}:oidc-provider/{issuer}"},
        "Condition": {"StringEquals": {f"{issuer}:sub": "system:serviceaccount:karpenter:karpenter",
                                       f"{issuer}:aud": "sts.amazonaws.com"}}}]}
    role = f"KarpenterController-{TF_SUFFIX}"
    iam.create_role(RoleName=role, AssumeRolePolicyDocument=json.dumps(trust))
    arn = _queue(f"Karpenter-{cluster}")
    policy = iam.create_policy(PolicyName=role, PolicyDocument=_grant(arn))["Policy"]["Arn"]
    iam.attach_role_policy(RoleName=role, PolicyArn=policy)
    rules = _rules({k: f"Karpenter{v[2]}-{TF_SUFFIX}" for k, v in KINDS.items()}, arn,
                   {"ClusterName": cluster})
    return {"role": role, "queue": f"Karpenter-{cluster}", "rules": rules}


def karpenter_cfn(cluster: str, trust: dict) -> dict:
    import boto3
    iam = boto3.client("iam")
    role = f"KarpenterController-{cluster}"
    iam.create_role(RoleName=role, AssumeRolePolicyDocument=json.dumps(trust))
    stack = {"aws:cloudformation:stack-name": f"Karpenter-{cluster}"}
    arn = _queue(cluster, stack)
    policy = iam.create_policy(PolicyName=f"KarpenterControllerInterruptionPolicy-{cluster}",
                               PolicyDocument=_grant(arn))["Policy"]["Arn"]
    iam.attach_role_policy(RoleName=role, PolicyArn=policy)
    rules = _rules({k: f"Karpenter-{cluster}-{k}Rule-1A2B3C4D5E6F" for k in KINDS}, arn, {})
    return {"role": role, "queue": cluster, "rules": rules}


def theirs(made: dict) -> dict:
    """The other tool's queue attributes, rules and targets, and its role's policies."""
    import boto3
    sqs, events, iam = boto3.client("sqs"), boto3.client("events"), boto3.client("iam")
    url = sqs.get_queue_url(QueueName=made["queue"])["QueueUrl"]
    attrs = sqs.get_queue_attributes(QueueUrl=url, AttributeNames=["All"])["Attributes"]
    return {"queue": {k: v for k, v in attrs.items() if not k.startswith("Approximate")},
            "rules": {r: (events.describe_rule(Name=r)["EventPattern"],
                          events.list_targets_by_rule(Rule=r)["Targets"])
                      for r in made["rules"]},
            "policies": sorted(p["PolicyArn"] for p in iam.list_attached_role_policies(
                RoleName=made["role"])["AttachedPolicies"] if "/kip/" not in p["PolicyArn"])}


def retention(queue: str) -> int:
    import boto3
    sqs = boto3.client("sqs")
    url = sqs.get_queue_url(QueueName=queue)["QueueUrl"]
    return int(sqs.get_queue_attributes(QueueUrl=url, AttributeNames=[
        "MessageRetentionPeriod"])["Attributes"]["MessageRetentionPeriod"])


def reads(queue: str, minutes_ago: int) -> None:
    """Karpenter's long polls as SQS reports them: ReceiveMessage calls that found nothing."""
    import boto3
    at = datetime.datetime.now(datetime.timezone.utc) - datetime.timedelta(minutes=minutes_ago)
    boto3.client("cloudwatch").put_metric_data(Namespace="AWS/SQS", MetricData=[{
        "MetricName": "NumberOfEmptyReceives", "Value": 180, "Timestamp": at,
        "Dimensions": [{"Name": "QueueName", "Value": queue}]}])


def now() -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
