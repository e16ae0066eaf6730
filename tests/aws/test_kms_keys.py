"""Customer KMS keys, end to end on moto: a key EventBridge cannot use is a 400 on kms_key_id made
in the first (read-only) wave, so nothing is written; a correctly set-up key provisions `ready`.

moto does not enforce key policies (EventBridge would deliver anyway), so these tests pin the
check kip makes itself: AWS drops the events silently when the grant is missing."""
from __future__ import annotations

import json

import boto3
import pytest
from botocore.exceptions import ClientError

from chalicelib import aws, errors
from chalicelib.core import kms
from chalicelib.core.spec import ClusterRequest
from tests.support import drive
from tests.support.faults import Calls
from tests.support.world import ACCOUNT, CLUSTER, QUEUE, REGION, key_policy, make_key, plain

# (moto applies a key policy's Deny statements to every caller, whatever the Principal: a Deny of
# kms:* would refuse kip's own DescribeKey there, so the Deny names the two actions)
DENY_EVENTS = {"Sid": "NoEventBridge", "Effect": "Deny",
               "Principal": {"Service": "events.amazonaws.com"},
               "Action": ["kms:Decrypt", "kms:GenerateDataKey*"], "Resource": "*"}
DECRYPT_ONLY = {"Sid": "EventBridgeDecryptOnly", "Effect": "Allow",
                "Principal": {"Service": "events.amazonaws.com"}, "Action": "kms:Decrypt",
                "Resource": "*"}


def queues() -> list[str]:
    return boto3.client("sqs", region_name=REGION).list_queues().get("QueueUrls", [])


def refused(engine, key_id: str) -> errors.ValidationError:
    writes = Calls()
    with pytest.raises(errors.ValidationError) as exc:
        drive.provision(engine, ClusterRequest(cluster_name=CLUSTER, kms_key_id=key_id))
    err = exc.value
    assert err.status == 400 and err.field == "kms_key_id"
    assert writes.writes == [], "a refused key must be refused before any AWS write"
    assert queues() == []
    return err


# ----------------------------------------------------------------------------- refusals

def test_disabled_key_is_refused(engine, cluster):
    # given
    key = make_key()
    plain("kms").disable_key(KeyId=key["KeyId"])

    # when
    err = refused(engine, key["Arn"])

    # then
    assert "disabled" in err.message and key["Arn"] in err.message


def test_key_pending_deletion_is_refused(engine, cluster):
    # given
    key = make_key()
    plain("kms").schedule_key_deletion(KeyId=key["KeyId"], PendingWindowInDays=7)

    # when
    err = refused(engine, key["Arn"])

    # then
    assert "pending deletion" in err.message


def test_asymmetric_key_is_refused(engine, cluster):
    # given: an RSA key that can encrypt, but not one SQS/EventBridge can use
    key = make_key(KeySpec="RSA_2048", KeyUsage="ENCRYPT_DECRYPT")

    # when
    err = refused(engine, key["Arn"])

    # then
    assert "RSA_2048" in err.message and "SYMMETRIC_DEFAULT" in err.message


def test_hmac_key_is_refused(engine, cluster):
    key = make_key(KeySpec="HMAC_256", KeyUsage="GENERATE_VERIFY_MAC")
    err = refused(engine, key["Arn"])
    assert "HMAC_256" in err.message


def test_kms_default_key_policy_is_refused_with_the_statement_to_add(engine, cluster):
    # given: KMS's default policy (account root kms:*), which grants events.amazonaws.com nothing
    key = make_key(Policy=key_policy(grant_eventbridge=False))
    plain("kms").create_alias(AliasName="alias/karpenter", TargetKeyId=key["KeyId"])

    # when: by alias (GetKeyPolicy takes no alias: kip resolves it)
    err = refused(engine, "alias/karpenter")

    # then
    assert "alias/karpenter" in err.message and key["Arn"] in err.message
    assert "kms:GenerateDataKey" in err.message and "kms:Decrypt" in err.message
    assert json.dumps(kms.required_statement(), sort_keys=True) in err.message
    assert err.details[0]["statement_to_add"]["Principal"] == {"Service": "events.amazonaws.com"}
    assert err.details[0]["missing"] == ["kms:GenerateDataKey", "kms:Decrypt"]


def test_policy_granting_only_decrypt_is_refused(engine, cluster):
    # given
    key = make_key(Policy=key_policy(DECRYPT_ONLY, grant_eventbridge=False))

    # when
    err = refused(engine, key["KeyId"])

    # then
    assert err.details[0]["missing"] == ["kms:GenerateDataKey"]
    assert "no statement allows events.amazonaws.com kms:GenerateDataKey" in err.message


def test_deny_statement_wins_over_the_grant(engine, cluster):
    # given: the grant is there, and so is an explicit Deny
    key = make_key(Policy=key_policy(DENY_EVENTS))

    # when
    err = refused(engine, key["Arn"])

    # then
    assert "'NoEventBridge'" in err.message
    assert err.details[0]["missing"] == ["kms:GenerateDataKey", "kms:Decrypt"]


def test_unreadable_key_policy_is_refused_not_assumed(engine, cluster):
    # given: the role kip uses may DescribeKey but not GetKeyPolicy
    key = make_key()

    def deny(model, **kw):
        raise ClientError({"Error": {"Code": "AccessDeniedException",
                                     "Message": "not authorized to perform kms:GetKeyPolicy"}},
                          model.name)
    aws.add_hook("before-call.kms.GetKeyPolicy", deny)

    # when
    err = refused(engine, key["Arn"])

    # then
    assert "could not read the key policy" in err.message
    assert "kms:GetKeyPolicy" in err.message
    assert err.details[0]["missing_permission"] == "kms:GetKeyPolicy"


def test_unknown_key_is_still_refused(engine, cluster):
    err = refused(engine, f"arn:aws:kms:{REGION}:{ACCOUNT}:key/11111111-1111-1111-1111-111111111111")
    assert "not found" in err.message


# ----------------------------------------------------------------------------- acceptance

def test_correctly_set_up_key_provisions_ready(engine, cluster):
    # given: a key whose policy grants events.amazonaws.com GenerateDataKey + Decrypt
    key = make_key(Description="karpenter")

    # when
    out = drive.provision(engine, ClusterRequest(cluster_name=CLUSTER, kms_key_id=key["Arn"]))

    # then
    assert out.record["status"] == "ready"
    sqs = boto3.client("sqs", region_name=REGION)
    url = sqs.get_queue_url(QueueName=QUEUE)["QueueUrl"]
    attrs = sqs.get_queue_attributes(QueueUrl=url, AttributeNames=["All"])["Attributes"]
    assert attrs["KmsMasterKeyId"] == key["Arn"]
    # and kip left the key policy as it found it
    assert plain("kms").get_key_policy(KeyId=key["KeyId"], PolicyName="default")["Policy"] \
        == key_policy()


def test_key_granted_through_wildcards_provisions_ready(engine, cluster):
    grant = {"Sid": "Services", "Effect": "Allow",
             "Principal": {"Service": ["sns.amazonaws.com", "events.amazonaws.com"]},
             "Action": ["kms:GenerateDataKey*", "kms:Decrypt"], "Resource": "*"}
    key = make_key(Policy=key_policy(grant, grant_eventbridge=False))
    out = drive.provision(engine, ClusterRequest(cluster_name=CLUSTER, kms_key_id=key["KeyId"]))
    assert out.record["status"] == "ready"
