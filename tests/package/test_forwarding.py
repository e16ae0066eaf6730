"""Forwarded events land on a rule that targets kip: the kip stack (the translated package
template), deploy/hub.yaml fed with its outputs, and deploy/member.yaml (ForwardDriftEvents=true)
in a member account, all created by moto's CloudFormation. Each kind a member forwards is put on
the member's default bus; moto delivers it to the hub bus (tests/org/test_member_stack.py says
what moto models there) and runs the hub bus's rules.

moto-only adjustment: moto cannot deliver to a Lambda target (NotImplementedError), where AWS
invokes the function. So each hub rule whose target is one of kip's functions (checked first)
gets that target swapped, same Id, for a queue named after the function; the rule and its
pattern stay as deployed, and an event in that queue is an event AWS would have handed to that
function. The handlers themselves run in tests/package/test_package.py."""
from __future__ import annotations

import json
import warnings

import boto3
import pytest
from moto import mock_aws

from tests.support.org import (HUB_BUS, HUB_BUS_NAME, HUB_REGION,
                                         MEMBER_ACCOUNT, PRIMARY, deploy_member,
                                         put_on_default_bus, received, sample)
from tests.support.templates import HUB
from tests.support.package import CODE_BUCKET, STACK, for_moto

pytestmark = pytest.mark.xdist_group("package")


@pytest.fixture
def world(monkeypatch, translated, deploy_template, built_package):
    monkeypatch.delenv("MOTO_ACCOUNT_ID", raising=False)
    with mock_aws():
        # the kip stack, in the hub account
        s3 = boto3.client("s3", region_name=HUB_REGION)
        s3.create_bucket(Bucket=CODE_BUCKET,
                         CreateBucketConfiguration={"LocationConstraint": HUB_REGION})
        s3.upload_file(str(built_package / "deployment.zip"), CODE_BUCKET, deploy_template["key"])
        cfn = boto3.client("cloudformation", region_name=HUB_REGION)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")     # the types moto skips (conftest MOTO_SKIPS)
            cfn.create_stack(StackName=STACK, TemplateBody=json.dumps(for_moto(translated)),
                             Capabilities=["CAPABILITY_IAM"], Parameters=[
                                 {"ParameterKey": "OrgId", "ParameterValue": "o-abcdefghij"}])
            kip = {o["OutputKey"]: o["OutputValue"]
                   for o in cfn.describe_stacks(StackName=STACK)["Stacks"][0]["Outputs"]}
            # the hub, from the kip stack's outputs (docs/ORGANIZATION.md step 3)
            cfn.create_stack(StackName="kip-hub", TemplateBody=HUB.read_text(), Parameters=[
                {"ParameterKey": "OrgId", "ParameterValue": "o-abcdefghij"},
                {"ParameterKey": "TriggerFunctionArn",
                 "ParameterValue": kip["EksTriggerFunctionArn"]},
                {"ParameterKey": "DriftFunctionArn", "ParameterValue": kip["DriftFunctionArn"]}])
        hub = cfn.describe_stacks(StackName="kip-hub")["Stacks"][0]
        assert hub["StackStatus"] == "CREATE_COMPLETE", hub
        assert {o["OutputKey"]: o["OutputValue"] for o in hub["Outputs"]}["HubEventBusArn"] == \
            HUB_BUS
        # every hub rule that targets kip: its target swapped for a queue (moto-only, above)
        events, sqs = (boto3.client(s, region_name=HUB_REGION) for s in ("events", "sqs"))
        handlers = {kip["EksTriggerFunctionArn"]: "trigger", kip["DriftFunctionArn"]: "drift"}
        routed = {}
        for rule in events.list_rules(EventBusName=HUB_BUS_NAME)["Rules"]:
            for t in events.list_targets_by_rule(Rule=rule["Name"],
                                                 EventBusName=HUB_BUS_NAME)["Targets"]:
                if t["Arn"] not in handlers:
                    continue
                name = handlers[t["Arn"]]
                url = sqs.create_queue(QueueName=f"routed-to-{name}")["QueueUrl"]
                routed[name] = url
                arn = sqs.get_queue_attributes(QueueUrl=url, AttributeNames=["QueueArn"])[
                    "Attributes"]["QueueArn"]
                events.put_targets(Rule=rule["Name"], EventBusName=HUB_BUS_NAME,
                                   Targets=[{"Id": t["Id"], "Arn": arn}])
        assert set(routed) == {"trigger", "drift"}, routed
        # the member StackSet instances: the primary region and us-east-1 (IAM's events)
        creds = boto3.client("sts", region_name=HUB_REGION).assume_role(
            RoleArn=f"arn:aws:iam::{MEMBER_ACCOUNT}:role/AWSCloudFormationStackSetExecutionRole",
            RoleSessionName="stackset")["Credentials"]
        member = boto3.Session(aws_access_key_id=creds["AccessKeyId"],
                               aws_secret_access_key=creds["SecretAccessKey"],
                               aws_session_token=creds["SessionToken"])
        for region in (PRIMARY, "us-east-1"):
            deploy_member(member, region, ForwardDriftEvents="true")
        yield {"member": member, "routed": routed, "kip": kip}


def reached(world) -> dict:
    """What each of kip's handlers would have received, per handler."""
    return {name: received(url) for name, url in world["routed"].items()}


def cloudtrail(source: str, event_source: str, name: str, request: dict, region: str) -> dict:
    return {"source": source, "detail-type": "AWS API Call via CloudTrail", "detail": {
        "eventSource": event_source, "eventName": name, "awsRegion": region,
        "recipientAccountId": MEMBER_ACCOUNT, "requestParameters": request,
        "userIdentity": {"arn": f"arn:aws:iam::{MEMBER_ACCOUNT}:user/someone"}}}


FORWARDED = [
    ("CreateCluster", lambda: sample("cloudtrail-eks-create-cluster.json"), PRIMARY, "trigger"),
    ("DeleteCluster", lambda: sample("cloudtrail-eks-delete-cluster.json"), PRIMARY, "trigger"),
    ("rule deleted", lambda: cloudtrail("aws.events", "events.amazonaws.com", "DeleteRule",
                                        {"name": "kip-shop-events"}, PRIMARY), PRIMARY, "drift"),
    ("queue changed", lambda: cloudtrail(
        "aws.sqs", "sqs.amazonaws.com", "SetQueueAttributes",
        {"queueUrl": f"https://sqs.{PRIMARY}.amazonaws.com/{MEMBER_ACCOUNT}/kip-shop"}, PRIMARY),
     PRIMARY, "drift"),
    ("policy detached", lambda: cloudtrail(
        "aws.iam", "iam.amazonaws.com", "DetachRolePolicy",
        {"policyArn": f"arn:aws:iam::{MEMBER_ACCOUNT}:policy/kip/kip-{PRIMARY}-shop",
         "roleName": "KarpenterController-shop"}, "us-east-1"), "us-east-1", "drift"),
]


@pytest.mark.parametrize("kind,make,region,handler", FORWARDED, ids=[f[0] for f in FORWARDED])
def test_each_forwarded_kind_reaches_kips_handler_through_a_hub_rule(world, kind, make, region,
                                                                    handler):
    # given: an event of that kind on the member's default bus
    event = make()
    # when: the member's forwarding rule puts it on the hub bus
    put_on_default_bus(world["member"], region, event)
    # then: exactly one hub rule, the one targeting the handler for that kind, passed it on
    got = reached(world)
    assert [len(got[name]) for name in ("trigger", "drift")] == \
        ([1, 0] if handler == "trigger" else [0, 1]), (kind, got)
    delivered = got[handler][0]
    assert delivered["detail"]["eventName"] == event["detail"]["eventName"]


def test_an_unrelated_change_reaches_no_kip_handler(world):
    put_on_default_bus(world["member"], PRIMARY, cloudtrail(
        "aws.events", "events.amazonaws.com", "DeleteRule", {"name": "someone-elses-rule"},
        PRIMARY))
    assert reached(world) == {"trigger": [], "drift": []}
