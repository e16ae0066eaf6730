"""Pure brownfield parsing: IRSA trusts, the queues a policy lets a role read, interruption
patterns, and naming the tool only where names or tags make it certain."""
from __future__ import annotations

import pytest

from chalicelib.core import brownfield as bf

HOST = "oidc.eks.eu-west-1.amazonaws.com/id/EXAMPLED539D4633E53DE1B71EXAMPLE"
PROVIDER = f"arn:aws:iam::111122223333:oidc-provider/{HOST}"
SUB = "system:serviceaccount:karpenter:karpenter"


def trust(condition: dict, action="sts:AssumeRoleWithWebIdentity", federated=PROVIDER) -> dict:
    return {"Version": "2012-10-17", "Statement": [{
        "Effect": "Allow", "Principal": {"Federated": federated}, "Action": action,
        "Condition": condition}]}


@pytest.mark.parametrize("condition, expected", [
    # the EKS user guide's shape
    ({"StringEquals": {f"{HOST}:sub": SUB, f"{HOST}:aud": "sts.amazonaws.com"}}, "exact"),
    ({"StringEquals": {f"{HOST}:sub": SUB}}, "exact"),                     # no :aud
    ({"StringEquals": {f"{HOST}:sub": ["system:serviceaccount:x:y", SUB]}}, "exact"),   # a list
    ({"StringLike": {f"{HOST}:sub": "system:serviceaccount:karpenter:*"}}, "wildcard"),
    ({"StringLike": {f"{HOST}:sub": SUB}}, "exact"),
    ({"StringEquals": {f"{HOST.upper()}:SUB": SUB}}, "exact"),  # condition keys ignore case
    ({"StringEquals": {f"{HOST}:sub": "system:serviceaccount:kube-system:karpenter"}}, None),
    ({"StringEquals": {f"{HOST}:aud": "sts.amazonaws.com"}}, None),   # any SA of the cluster
    ({"StringEquals": {f"{HOST}:sub": SUB, f"{HOST}:aud": "other"}}, None),
    ({"StringLike": {f"{HOST}:sub": "system:serviceaccount:karpenter:karp?nter"}}, "wildcard"),
])
def test_irsa_trust_shapes(condition, expected):
    assert bf.irsa_match(trust(condition), PROVIDER, SUB) == expected


def test_irsa_trust_needs_web_identity_from_this_clusters_provider():
    cond = {"StringEquals": {f"{HOST}:sub": SUB}}
    assert bf.irsa_match(trust(cond, action="sts:AssumeRole"), PROVIDER, SUB) is None
    assert bf.irsa_match(trust(cond, action=["sts:TagSession", "sts:AssumeRoleWith*"]),
                         PROVIDER, SUB) == "exact"
    other = PROVIDER.replace("EXAMPLED", "OTHERED")
    assert bf.irsa_match(trust(cond, federated=other), PROVIDER, SUB) is None
    assert bf.irsa_match(trust(cond, federated=[other, PROVIDER]), PROVIDER, SUB) == "exact"
    deny = trust(cond)
    deny["Statement"][0]["Effect"] = "Deny"
    assert bf.irsa_match(deny, PROVIDER, SUB) is None
    assert bf.irsa_match(None, PROVIDER, SUB) is None


def test_irsa_role_prefers_the_first_service_account_then_exact_then_name():
    exact = {"name": "b", "arn": "arn:b", "trust": trust({"StringEquals": {f"{HOST}:sub": SUB}})}
    wild = {"name": "a", "arn": "arn:a", "trust": trust(
        {"StringLike": {f"{HOST}:sub": "system:serviceaccount:karpenter:*"}})}
    assert bf.irsa_role([wild, exact], PROVIDER, [SUB])["name"] == "b"
    kube = {"name": "z", "arn": "arn:z", "trust": trust(
        {"StringEquals": {f"{HOST}:sub": "system:serviceaccount:kube-system:karpenter"}})}
    first = ["system:serviceaccount:kube-system:karpenter", SUB]
    assert bf.irsa_role([exact, kube], PROVIDER, first)["name"] == "z"
    assert bf.irsa_role([], PROVIDER, first) is None


def test_receive_grants_follow_actions_and_resources():
    doc = {"Statement": [
        {"Effect": "Allow", "Action": ["sqs:DeleteMessage", "sqs:ReceiveMessage"],
         "Resource": "arn:aws:sqs:eu-west-1:1:Karpenter-a"},
        {"Effect": "Allow", "Action": "sqs:*", "Resource": ["arn:aws:sqs:*:1:team-*"]},
        {"Effect": "Allow", "Action": "SQS:Receive*", "Resource": "arn:aws:sqs:eu-west-1:1:c"},
        {"Effect": "Allow", "Action": "sqs:SendMessage", "Resource": "arn:aws:sqs:*:1:send"},
        {"Effect": "Deny", "Action": "sqs:ReceiveMessage", "Resource": "*"},
        {"Effect": "Allow", "Action": "sqs:ReceiveMessage", "NotResource": "arn:aws:sqs:*:1:x"},
    ]}
    assert bf.receive_grants(doc) == ["arn:aws:sqs:eu-west-1:1:Karpenter-a",
                                      "arn:aws:sqs:*:1:team-*", "arn:aws:sqs:eu-west-1:1:c", "*"]
    assert bf.receive_grants({"Statement": {"Effect": "Allow", "Action": "*",
                                            "Resource": "*"}}) == ["*"]


@pytest.mark.parametrize("grant, literal, prefix", [
    ("arn:aws:sqs:eu-west-1:1:q", "q", None),
    ("arn:aws:sqs:eu-west-1:2:q", None, None),            # another account
    ("arn:aws:sqs:eu-west-1:1:Karpenter-*", None, "Karpenter-"),
    ("arn:aws:sqs:*:1:team-*", None, ""),                 # covers this region: list, then match
    ("arn:aws:sqs:us-east-1:1:*", None, None),            # another region
    ("*", None, ""),
    ("arn:aws:sqs:eu-west-1:1:*", None, ""),
])
def test_wildcard_grants_resolve_conservatively(grant, literal, prefix):
    assert bf.literal_queue(grant, "aws", "eu-west-1", "1") == literal
    if literal is None:
        assert bf.list_prefix(grant, "aws", "eu-west-1", "1") == prefix
    assert bf.grants_cover(["arn:aws:sqs:*:1:team-*"], "arn:aws:sqs:eu-west-1:1:team-a")
    assert not bf.grants_cover(["arn:aws:sqs:*:1:team-*"], "arn:aws:sqs:eu-west-1:1:other")


@pytest.mark.parametrize("pattern, expected", [
    ({"source": ["aws.ec2"], "detail-type": ["EC2 Spot Instance Interruption Warning"]}, True),
    ({"source": ["aws.health"], "detail-type": ["AWS Health Event"]}, True),
    ({"source": ["aws.ec2"]}, True),
    ({"source": ["aws.ec2"], "detail-type": ["AWS API Call via CloudTrail"]}, False),
    ({"source": ["aws.eks"]}, False),
    (None, False),
])
def test_interruption_patterns(pattern, expected):
    assert bf.is_interruption_pattern(pattern) is expected


@pytest.mark.parametrize("queue, tags, rules, tool", [
    ("c", {"aws:cloudformation:stack-name": "Karpenter-c"}, {}, "karpenter-cloudformation"),
    ("c", {}, {"Karpenter-c-SpotInterruptionRule-ABC": {}}, "karpenter-cloudformation"),
    ("c", {"alpha.eksctl.io/cluster-name": "c"}, {}, "eksctl"),
    ("c", {}, {"eksctl-c-karpenter-RebalanceRule-XYZ": {}}, "eksctl"),
    ("Karpenter-c", {}, {"KarpenterSpotInterrupt-20260101123456789012345678": {}},
     "terraform-aws-eks"),
    ("custom", {}, {"KarpenterSpotInterrupt-20260101123456789012345678": {"ClusterName": "c"}},
     "terraform-aws-eks"),
    ("custom", {}, {"KarpenterSpotInterrupt-20260101123456789012345678": {}}, "unknown"),
    ("c", {}, {"Karpenter-other-SpotInterruptionRule-ABC": {}}, "unknown"),
    ("c", {}, {"my-spot-rule": {}}, "unknown"),
])
def test_the_tool_is_named_only_when_certain(queue, tags, rules, tool):
    assert bf.tool_of("c", queue, tags, rules) == tool


def test_brownfield_settings_are_read_and_checked():
    from chalicelib.config import Settings
    s = Settings.from_env({})
    assert s.on_existing == "report" and s.karpenter_service_accounts == (
        ("kube-system", "karpenter"), ("karpenter", "karpenter"))
    s = Settings.from_env({"KIP_ON_EXISTING": "coexist",
                           "KIP_KARPENTER_SERVICE_ACCOUNTS": "ops/kctl, kube-system/karpenter"})
    assert s.on_existing == "coexist"
    assert s.karpenter_service_accounts == (("ops", "kctl"), ("kube-system", "karpenter"))
    assert Settings.from_env({"KIP_ON_EXISTING": "takeover"}).on_existing == "takeover"
    assert (s.cutover_window_seconds, Settings.from_env(
        {"KIP_CUTOVER_WINDOW_MINUTES": "15"}).cutover_window_seconds) == (3600, 900)
    for env in ({"KIP_ON_EXISTING": "replace"}, {"KIP_ON_EXISTING": "Report"},
                {"KIP_CUTOVER_WINDOW_MINUTES": "1"},
                {"KIP_KARPENTER_SERVICE_ACCOUNTS": "karpenter"},
                {"KIP_KARPENTER_SERVICE_ACCOUNTS": "Kube_System/karpenter"}):
        with pytest.raises(ValueError):
            Settings.from_env(env)
