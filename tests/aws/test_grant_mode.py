"""KIP_GRANT_MODE=queue-policy: the queue's own policy lets the controller role read it (by
aws:PrincipalArn), no IAM policy is created or attached, and kip needs no IAM write permission.

moto enforces no resource-based policy (its IAM authorization mode reads identity policies only:
moto/iam/access_control.py, "TODO add support for resource-based policies"), so whether the role
can read a queue is shown in the strict-AWS layer: a before-send hook on the role's own SQS client
answers AccessDenied, in SQS's wire protocol, unless the queue policy kip wrote allows that role
the action, as AWS does for a principal in the queue's account with no identity policy."""
from __future__ import annotations

import dataclasses
import fnmatch
import json

import boto3
import pytest

from chalicelib import errors
from chalicelib.core.spec import ClusterRequest
from tests.support.faults import FAULT_URL, fake_error
from tests.support.world import ACCOUNT, REGION, make_cluster, make_role
from tests.support import drive

SQS_READS = ["sqs:DeleteMessage", "sqs:GetQueueUrl", "sqs:ReceiveMessage"]


def queue_policy_kit(settings):
    return drive.make_kit(dataclasses.replace(settings, grant_mode="queue-policy"))


def provisioned(kit, name: str) -> str:
    make_cluster(name)
    role = make_role(f"KarpenterController-{name}")
    drive.provision(kit, ClusterRequest(cluster_name=name))
    return role


def queue_policy(queue: str) -> dict:
    sqs = boto3.client("sqs")
    url = sqs.get_queue_url(QueueName=queue)["QueueUrl"]
    return json.loads(sqs.get_queue_attributes(QueueUrl=url, AttributeNames=["Policy"])
                      ["Attributes"]["Policy"])


def allows(policy: dict, principal_arn: str, action: str) -> bool:
    """AWS's answer for a same-account principal with no identity policy: an Allow statement of
    the queue policy must name the action for that principal (no Deny applies over TLS)."""
    for st in policy["Statement"]:
        if st["Effect"] != "Allow" or st.get("Principal") != {"AWS": "*"}:
            continue
        actions = st["Action"] if isinstance(st["Action"], list) else [st["Action"]]
        wanted = st.get("Condition", {}).get("ArnEquals", {}).get("aws:PrincipalArn")
        wanted = wanted if isinstance(wanted, list) else [wanted]
        if any(fnmatch.fnmatchcase(action, a) for a in actions) and principal_arn in wanted:
            return True
    return False


def as_role(role_arn: str):
    """An SQS client acting as ``role_arn`` (STS), whose requests AWS would judge by the queue
    policy alone (the role has no identity policy)."""
    creds = boto3.client("sts").assume_role(RoleArn=role_arn, RoleSessionName="karpenter")[
        "Credentials"]
    client = boto3.client("sqs", region_name=REGION, aws_access_key_id=creds["AccessKeyId"],
                          aws_secret_access_key=creds["SecretAccessKey"],
                          aws_session_token=creds["SessionToken"])

    def judge(request, **_):
        body = json.loads(request.body or b"{}")
        target = request.headers.get("X-Amz-Target", b"")
        op = (target.decode() if isinstance(target, bytes) else target).rsplit(".", 1)[-1]
        name = body.get("QueueName") or str(body.get("QueueUrl", "")).rsplit("/", 1)[-1]
        if allows(queue_policy(name), role_arn, f"sqs:{op}"):
            return None
        url, request.url = request.url, FAULT_URL
        return fake_error("json", url, 400, "AccessDenied", f"not authorized to sqs:{op}")
    client.meta.events.register("before-send.sqs.*", judge)
    return client


def test_the_queue_policy_alone_lets_the_role_read_its_own_queue_and_no_other(moto_env):
    kit = queue_policy_kit(moto_env)
    mine, theirs = provisioned(kit, "mine"), provisioned(kit, "theirs")
    # no IAM policy anywhere: nothing created, nothing attached
    iam = boto3.client("iam")
    assert iam.list_policies(Scope="Local", PathPrefix="/kip/")["Policies"] == []
    assert iam.list_attached_role_policies(RoleName="KarpenterController-mine")[
        "AttachedPolicies"] == []
    # the queue policy grants exactly the three actions Karpenter calls, to that role only
    readers = [st for st in queue_policy("kip-mine")["Statement"]
               if st["Sid"] == "KarpenterControllerReads"]
    assert readers == [{"Sid": "KarpenterControllerReads", "Effect": "Allow",
                        "Principal": {"AWS": "*"}, "Action": SQS_READS,
                        "Resource": f"arn:aws:sqs:{REGION}:{ACCOUNT}:kip-mine",
                        "Condition": {"ArnEquals": {"aws:PrincipalArn": mine}}}]
    # as the role: its own queue by name, receive and delete; another cluster's queue refused
    sqs = as_role(mine)
    url = sqs.get_queue_url(QueueName="kip-mine")["QueueUrl"]
    boto3.client("sqs").send_message(QueueUrl=url, MessageBody="{}")
    got = sqs.receive_message(QueueUrl=url, WaitTimeSeconds=0)["Messages"]
    sqs.delete_message(QueueUrl=url, ReceiptHandle=got[0]["ReceiptHandle"])
    for call in (lambda: sqs.get_queue_url(QueueName="kip-theirs"),
                 lambda: sqs.receive_message(QueueUrl=url.replace("kip-mine", "kip-theirs"))):
        with pytest.raises(sqs.exceptions.ClientError) as denied:
            call()
        assert denied.value.response["Error"]["Code"] == "AccessDenied"
    assert allows(queue_policy("kip-theirs"), theirs, "sqs:ReceiveMessage")


def test_switching_to_queue_policy_grants_by_the_queue_first_then_removes_the_iam_policy(
        moto_env):
    role = provisioned(drive.make_kit(moto_env), "moving")          # role-policy mode
    iam = boto3.client("iam")
    assert len(iam.list_attached_role_policies(RoleName="KarpenterController-moving")[
        "AttachedPolicies"]) == 1
    out = drive.reconcile(queue_policy_kit(moto_env), drive.identity(
        queue_policy_kit(moto_env), "moving"))
    ops = [a["op"] for a in out.actions]
    assert ops.index("set_queue_attributes") < ops.index("detach_role_policy") < \
        ops.index("delete_policy")
    assert iam.list_policies(Scope="Local", PathPrefix="/kip/")["Policies"] == []
    assert allows(queue_policy("kip-moving"), role, "sqs:ReceiveMessage")
    assert out.record.status == "ready" and not out.record.resources.policy.exists


def test_a_customer_key_is_refused_in_queue_policy_mode_before_any_write(moto_env):
    kit = queue_policy_kit(moto_env)
    make_cluster("keyed")
    make_role("KarpenterController-keyed")
    key = boto3.client("kms").create_key()["KeyMetadata"]["Arn"]
    with pytest.raises(errors.ValidationError) as refused:
        drive.provision(kit, ClusterRequest(cluster_name="keyed", kms_key_id=key))
    assert refused.value.field == "kms_key_id"
    assert boto3.client("sqs").list_queues().get("QueueUrls") is None
