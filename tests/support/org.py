"""The organization's templates in moto: the hub and member accounts, deploying the member stack,
and the events that cross from a member's default bus to the hub bus."""
from __future__ import annotations

import ast
import json
import warnings

import boto3

from tests.support.templates import MEMBER

SHARED_EVENTS = MEMBER.parents[2] / "shared" / "reference" / "events"
HUB_ACCOUNT = "123456789012"
MEMBER_ACCOUNT = "111111111111"
HUB_REGION = "eu-west-1"
PRIMARY = "eu-west-1"
SECONDARY = "eu-central-1"
HUB_BUS_NAME = "kip-hub"
HUB_BUS = f"arn:aws:events:{HUB_REGION}:{HUB_ACCOUNT}:event-bus/{HUB_BUS_NAME}"
EXTERNAL_ID = "0123456789abcdef0123456789abcdef"
FORWARDER_RULE = "kip--org-eks-forwarder"


def sample(name: str) -> dict:
    return json.loads((SHARED_EVENTS / name).read_text())


def as_doc(doc: str | dict) -> dict:
    """A policy document as a dict. boto3 decodes IAM's documents; for an inline policy created by
    moto's CloudFormation, moto returns the Python repr of the dict it stored (a moto quirk)."""
    if isinstance(doc, dict):
        return doc
    try:
        return json.loads(doc)
    except json.JSONDecodeError:
        return ast.literal_eval(doc)


def received(url: str) -> list[dict]:
    sqs = boto3.client("sqs", region_name=HUB_REGION)
    out = []
    while True:
        msgs = sqs.receive_message(QueueUrl=url, MaxNumberOfMessages=10).get("Messages", [])
        if not msgs:
            return out
        for m in msgs:
            out.append(json.loads(m["Body"]))
            sqs.delete_message(QueueUrl=url, ReceiptHandle=m["ReceiptHandle"])


def deploy_member(session: boto3.Session, region: str, **params) -> dict:
    values = {"HubAccountId": HUB_ACCOUNT, "HubEventBusArn": HUB_BUS, "ExternalId": EXTERNAL_ID,
              "PrimaryRegion": PRIMARY, **params}
    cfn = session.client("cloudformation", region_name=region)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        cfn.create_stack(StackName="kip-member", TemplateBody=MEMBER.read_text(),
                         Parameters=[{"ParameterKey": k, "ParameterValue": v}
                                     for k, v in values.items()],
                         Capabilities=["CAPABILITY_NAMED_IAM"])
    skipped = {str(w.message) for w in caught if "not supported by moto" in str(w.message)}
    # the only resource moto cannot model is the DLQ's queue policy
    assert skipped == {"Tried to parse AWS::SQS::QueuePolicy but it's not supported by moto's "
                       "CloudFormation implementation"}, skipped
    stack = cfn.describe_stacks(StackName="kip-member")["Stacks"][0]
    assert stack["StackStatus"] == "CREATE_COMPLETE", stack
    return {o["OutputKey"]: o["OutputValue"] for o in stack.get("Outputs", [])}


def put_on_default_bus(session: boto3.Session, region: str, event: dict) -> None:
    entries = [{"Source": event["source"], "DetailType": event["detail-type"],
                "Detail": json.dumps(event["detail"]), "Resources": event.get("resources", [])}]
    out = session.client("events", region_name=region).put_events(Entries=entries)
    assert out["FailedEntryCount"] == 0, out
