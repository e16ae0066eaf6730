"""deploy/member.yaml and deploy/hub.yaml deployed with moto's CloudFormation, in a member account
(111111111111, reached the way a StackSet or an operator would: STS AssumeRole, which moto maps to
that account) and the hub account (moto's default, 123456789012).

What moto models here, and what it does not (each test says which side it is on):
- moto delivers an event from a rule to an event bus in another account and region (it puts the
  event on that bus and runs its rules), so the EKS event path member -> hub is exercised for real.
  It does not check the hub bus's resource policy, nor assume the target's RoleArn, nor use the
  RetryPolicy / DeadLetterConfig (it stores them). It rewrites the forwarded event's "account"
  to the hub's (AWS keeps the member's).
- moto's CloudFormation has no AWS::SQS::QueuePolicy: it warns and skips it (the DLQ policy is
  checked in tests/unit/test_member_template.py), and ignores AWS::Events::EventBus.Policy.
- moto does not evaluate trust policies: AssumeRole succeeds without the external id. The trust
  and least-privilege semantics are evaluated in the unit tests with IAM wildcard rules.
- moto's TestEventPattern is a stub; the patterns are proven by delivery instead (moto's matcher
  implements prefix, wildcard and $or).
"""
from __future__ import annotations

import ast
import json
import warnings

import boto3
import pytest
from moto import mock_aws

from tests.support.world import bus_inbox
from tests.support.templates import HUB, MEMBER, Rendered, load
from tests.support.org import (EXTERNAL_ID, FORWARDER_RULE, HUB_ACCOUNT, HUB_BUS, HUB_BUS_NAME,  # noqa: F401
                               HUB_REGION, MEMBER_ACCOUNT, PRIMARY, SECONDARY, as_doc,
                               deploy_member, put_on_default_bus, received, sample)

@pytest.fixture
def aws(monkeypatch):
    monkeypatch.delenv("MOTO_ACCOUNT_ID", raising=False)
    with mock_aws():
        yield


@pytest.fixture
def member(aws) -> boto3.Session:
    """Credentials in the member account, as a StackSet execution role would have them."""
    creds = boto3.client("sts", region_name=HUB_REGION).assume_role(
        RoleArn=f"arn:aws:iam::{MEMBER_ACCOUNT}:role/AWSCloudFormationStackSetExecutionRole",
        RoleSessionName="stackset")["Credentials"]
    session = boto3.Session(aws_access_key_id=creds["AccessKeyId"],
                            aws_secret_access_key=creds["SecretAccessKey"],
                            aws_session_token=creds["SessionToken"])
    assert session.client("sts", region_name=PRIMARY).get_caller_identity()["Account"] == \
        MEMBER_ACCOUNT
    return session


@pytest.fixture
def hub_inbox(aws) -> str:
    """The hub bus, and a rule on it that copies every CloudTrail event to a queue we can read."""
    assert boto3.client("sts", region_name=HUB_REGION).get_caller_identity()["Account"] == \
        HUB_ACCOUNT
    return bus_inbox(HUB_BUS_NAME, {"detail-type": ["AWS API Call via CloudTrail"]}, "hub",
                     region=HUB_REGION)


# ------------------------------------------------------------------------------- the stack

def test_primary_region_stack_creates_the_provisioner_role_and_the_forwarding_rule(member,
                                                                                    hub_inbox):
    # given / when
    outputs = deploy_member(member, PRIMARY)

    # then: the role, trusting only the hub account, with the external id
    iam = member.client("iam", region_name=PRIMARY)
    role = iam.get_role(RoleName="kip-provisioner")["Role"]
    assert outputs["ProvisionerRoleArn"] == role["Arn"] == \
        f"arn:aws:iam::{MEMBER_ACCOUNT}:role/kip-provisioner"
    (trust,) = as_doc(role["AssumeRolePolicyDocument"])["Statement"]
    assert trust["Principal"] == {"AWS": f"arn:aws:iam::{HUB_ACCOUNT}:root"}
    assert trust["Condition"]["StringEquals"] == {"sts:ExternalId": EXTERNAL_ID}
    assert iam.list_role_policies(RoleName="kip-provisioner")["PolicyNames"] == ["kip-provisioner"]
    # moto's CloudFormation resolved the policy exactly as the unit tests' renderer does, so the
    # least-privilege evaluation there is about the document AWS would get
    deployed = as_doc(iam.get_role_policy(RoleName="kip-provisioner",
                                          PolicyName="kip-provisioner")["PolicyDocument"])
    rendered = Rendered(load(MEMBER), {"HubAccountId": HUB_ACCOUNT, "HubEventBusArn": HUB_BUS,
                                       "ExternalId": EXTERNAL_ID, "PrimaryRegion": PRIMARY},
                        MEMBER_ACCOUNT, PRIMARY).resources()["ProvisionerRole"]
    assert deployed == rendered["Properties"]["Policies"][0]["PolicyDocument"]

    # and: the forwarding rule on the default bus, targeting the hub bus through the role
    events = member.client("events", region_name=PRIMARY)
    rule = events.describe_rule(Name=FORWARDER_RULE)
    assert outputs["ForwardingRuleArn"] == rule["Arn"]
    assert json.loads(rule["EventPattern"])["detail"]["eventName"] == [
        "CreateCluster", "DeleteCluster", "UpdateClusterConfig"]
    (target,) = events.list_targets_by_rule(Rule=FORWARDER_RULE)["Targets"]
    assert target["Arn"] == HUB_BUS
    assert target["RoleArn"] == \
        f"arn:aws:iam::{MEMBER_ACCOUNT}:role/kip--org-forwarder-{PRIMARY}"
    dlq_arn = f"arn:aws:sqs:{PRIMARY}:{MEMBER_ACCOUNT}:kip--org-forwarder-dlq"
    assert target["DeadLetterConfig"] == {"Arn": dlq_arn}
    assert target["RetryPolicy"] == {"MaximumRetryAttempts": 185,
                                     "MaximumEventAgeInSeconds": 86400}
    forwarder = iam.get_role_policy(RoleName=f"kip--org-forwarder-{PRIMARY}",
                                    PolicyName="put-events-on-kip-hub")["PolicyDocument"]
    assert as_doc(forwarder)["Statement"] == [{"Effect": "Allow", "Action": "events:PutEvents",
                                       "Resource": HUB_BUS}]


def test_second_region_adds_forwarding_but_no_second_provisioner_role(member, hub_inbox):
    # given
    deploy_member(member, PRIMARY)

    # when
    outputs = deploy_member(member, SECONDARY)

    # then
    iam = member.client("iam", region_name=SECONDARY)
    names = {r["RoleName"] for r in iam.list_roles()["Roles"]}
    assert {"kip-provisioner", f"kip--org-forwarder-{PRIMARY}",
            f"kip--org-forwarder-{SECONDARY}"} <= names
    assert outputs["ProvisionerRoleArn"] == f"arn:aws:iam::{MEMBER_ACCOUNT}:role/kip-provisioner"
    events = member.client("events", region_name=SECONDARY)
    (target,) = events.list_targets_by_rule(Rule=FORWARDER_RULE)["Targets"]
    assert target["Arn"] == HUB_BUS
    assert target["RoleArn"].endswith(f"role/kip--org-forwarder-{SECONDARY}")


def test_secondary_region_alone_deploys_without_the_role(member, hub_inbox):
    """StackSets may reach a secondary region first: nothing there depends on the primary."""
    deploy_member(member, SECONDARY)
    names = {r["RoleName"] for r in member.client("iam", region_name=SECONDARY).list_roles()[
        "Roles"]}
    assert "kip-provisioner" not in names
    assert f"kip--org-forwarder-{SECONDARY}" in names


def test_deleting_a_region_leaves_the_other_regions_forwarding(member, hub_inbox):
    # given
    deploy_member(member, PRIMARY)
    deploy_member(member, SECONDARY)

    # when
    member.client("cloudformation", region_name=PRIMARY).delete_stack(StackName="kip-member")

    # then
    put_on_default_bus(member, SECONDARY, sample("cloudtrail-eks-create-cluster.json"))
    assert [e["detail"]["eventName"] for e in received(hub_inbox)] == ["CreateCluster"]


# ------------------------------------------------------------------------- the event path

@pytest.mark.parametrize("region", [PRIMARY, SECONDARY])
def test_create_cluster_event_reaches_the_hub_bus(member, hub_inbox, region):
    # given
    deploy_member(member, region)
    event = sample("cloudtrail-eks-create-cluster.json")

    # when: CloudTrail's event lands on the member's default bus
    put_on_default_bus(member, region, event)

    # then: it is on the hub bus (moto ran the hub bus's rules), detail intact
    (got,) = received(hub_inbox)
    assert got["source"] == "aws.eks"
    assert got["detail-type"] == "AWS API Call via CloudTrail"
    assert got["detail"] == event["detail"]
    assert got["detail"]["requestParameters"]["name"] == "payments-prod"


def test_delete_and_config_changes_are_forwarded_and_other_events_are_not(member, hub_inbox):
    deploy_member(member, PRIMARY)
    put_on_default_bus(member, PRIMARY, sample("cloudtrail-eks-delete-cluster.json"))
    put_on_default_bus(member, PRIMARY, sample("ec2-spot-interruption-warning.json"))
    # UpdateClusterConfig is forwarded (Auto Mode turned on retires kip's wiring); another EKS
    # call is not
    config = sample("cloudtrail-eks-create-cluster.json")
    config["detail"]["eventName"] = "UpdateClusterConfig"
    put_on_default_bus(member, PRIMARY, config)
    other = sample("cloudtrail-eks-create-cluster.json")
    other["detail"]["eventName"] = "UpdateClusterVersion"
    put_on_default_bus(member, PRIMARY, other)
    assert [e["detail"]["eventName"] for e in received(hub_inbox)] == [
        "DeleteCluster", "UpdateClusterConfig"]


def cloudtrail(source: str, event_name: str, request: dict) -> dict:
    service = source.split(".", 1)[1]
    return {"source": source, "detail-type": "AWS API Call via CloudTrail",
            "detail": {"eventSource": f"{service}.amazonaws.com", "eventName": event_name,
                       "awsRegion": "us-east-1", "requestParameters": request,
                       "eventType": "AwsApiCall", "managementEvent": True}}


KIP_QUEUE = f"https://sqs.us-east-1.amazonaws.com/{MEMBER_ACCOUNT}/kip-payments-prod"
KIP_POLICY = f"arn:aws:iam::{MEMBER_ACCOUNT}:policy/kip/payments-prod"


@pytest.mark.parametrize("event, forwarded", [
    (cloudtrail("aws.events", "DeleteRule", {"name": "kip-payments-prod-spot"}), True),
    (cloudtrail("aws.events", "RemoveTargets", {"rule": "kip-payments-prod-spot",
                                                "ids": ["KarpenterInterruptionQueueTarget"]}),
     True),
    (cloudtrail("aws.events", "DisableRule", {"name": "team-rule"}), False),
    (cloudtrail("aws.events", "EnableRule", {"name": "kip-payments-prod-spot"}), False),
    (cloudtrail("aws.sqs", "SetQueueAttributes", {"queueUrl": KIP_QUEUE, "attributes": {}}), True),
    (cloudtrail("aws.sqs", "DeleteQueue",
                {"queueUrl": f"https://sqs.us-east-1.amazonaws.com/{MEMBER_ACCOUNT}/orders"}),
     False),
    (cloudtrail("aws.iam", "DetachRolePolicy", {"roleName": "KarpenterController-x",
                                                "policyArn": KIP_POLICY}), True),
    (cloudtrail("aws.iam", "DeletePolicyVersion", {"policyArn": KIP_POLICY, "versionId": "v1"}),
     True),
    (cloudtrail("aws.iam", "DetachRolePolicy",
                {"roleName": "Admin", "policyArn": "arn:aws:iam::aws:policy/ReadOnlyAccess"}),
     False),
])
def test_drift_events_on_kip_names_reach_the_hub_when_enabled(member, hub_inbox, event,
                                                              forwarded):
    # given: us-east-1, the only region where IAM's CloudTrail events reach EventBridge
    deploy_member(member, "us-east-1", ForwardDriftEvents="true")

    # when
    put_on_default_bus(member, "us-east-1", event)

    # then
    assert [e["detail"]["eventName"] for e in received(hub_inbox)] == (
        [event["detail"]["eventName"]] if forwarded else [])


def test_drift_events_stay_home_by_default(member, hub_inbox):
    deploy_member(member, "us-east-1")
    put_on_default_bus(member, "us-east-1",
                       cloudtrail("aws.events", "DeleteRule", {"name": "kip-payments-prod-spot"}))
    assert received(hub_inbox) == []


# ----------------------------------------------------------------------------------- hub

def test_hub_template_creates_the_bus_and_the_trigger_rule(aws):
    # given: the trigger Lambda exists (Chalice deploys it)
    iam = boto3.client("iam", region_name=HUB_REGION)
    role = iam.create_role(RoleName="kip-prod", AssumeRolePolicyDocument=json.dumps({
        "Version": "2012-10-17", "Statement": [{"Effect": "Allow", "Action": "sts:AssumeRole",
                                                "Principal": {"Service": "lambda.amazonaws.com"}}]
    }))["Role"]["Arn"]
    fn = boto3.client("lambda", region_name=HUB_REGION).create_function(
        FunctionName="kip-prod-on_eks_event", Runtime="python3.11", Role=role,
        Handler="app.handler", Code={"ZipFile": b"PK\x05\x06" + b"\x00" * 18})["FunctionArn"]

    # when
    cfn = boto3.client("cloudformation", region_name=HUB_REGION)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # AWS::SQS::QueuePolicy is not modelled by moto
        cfn.create_stack(StackName="kip-hub", TemplateBody=HUB.read_text(), Parameters=[
            {"ParameterKey": "OrgId", "ParameterValue": "o-abcdefghij"},
            {"ParameterKey": "TriggerFunctionArn", "ParameterValue": fn}])

    # then
    stack = cfn.describe_stacks(StackName="kip-hub")["Stacks"][0]
    assert stack["StackStatus"] == "CREATE_COMPLETE"
    outputs = {o["OutputKey"]: o["OutputValue"] for o in stack["Outputs"]}
    assert outputs["HubEventBusArn"] == HUB_BUS
    events = boto3.client("events", region_name=HUB_REGION)
    (rule,) = events.list_rules(EventBusName=HUB_BUS_NAME)["Rules"]
    assert rule["Name"] == "kip-hub-eks-trigger"
    (target,) = events.list_targets_by_rule(Rule=rule["Name"], EventBusName=HUB_BUS_NAME)[
        "Targets"]
    assert target["Arn"] == fn
    policy = json.loads(boto3.client("lambda", region_name=HUB_REGION).get_policy(
        FunctionName="kip-prod-on_eks_event")["Policy"])
    assert any(st["Principal"] == {"Service": "events.amazonaws.com"}
               for st in policy["Statement"])
