"""Interruption events through EventBridge into the cluster's queue, and only those.

Every test gets a fresh moto (the ``moto_env`` fixture) and fresh chalicelib clients. AWS state is
checked with plain boto3 clients, never through the code under test.
"""
from __future__ import annotations

import json

import pytest

from chalicelib.config import ALL_EVENT_KINDS
from tests.support import drive
from tests.support.snapshots import queue_url
from tests.support.world import QUEUE, SHARED_EVENTS, load_event, plain, req


# the five kinds of Karpenter's interruption handling (their legacy rule names: test_naming.py)
KINDS = {"spot_interruption", "rebalance_recommendation", "instance_state_change",
         "scheduled_change", "capacity_reservation_interruption"}
SAMPLE_EVENTS = sorted(p.name for p in SHARED_EVENTS.glob("*.json")
                       if p.name.startswith(("ec2-", "health-")))


@pytest.mark.parametrize("sample", SAMPLE_EVENTS)
def test_sample_event_arrives_in_the_cluster_queue(engine, cluster, sample):
    # given
    drive.provision(engine, req())
    event = load_event(sample)

    # when
    plain("events").put_events(Entries=[{
        "Source": event["source"], "DetailType": event["detail-type"],
        "Detail": json.dumps(event["detail"]), "Resources": event["resources"]}])

    # then
    msgs = plain("sqs").receive_message(QueueUrl=queue_url(QUEUE), MaxNumberOfMessages=10,
                                         WaitTimeSeconds=0).get("Messages", [])
    assert len(msgs) == 1
    body = json.loads(msgs[0]["Body"])
    assert body["source"] == event["source"]
    assert body["detail-type"] == event["detail-type"]
    assert body["detail"] == event["detail"]


def test_all_five_kinds_have_a_sample():
    # then
    assert len(SAMPLE_EVENTS) == 5


UNRELATED = [
    ("aws.s3", "Object Created", {"bucket": {"name": "b"}}),
    ("aws.ec2", "EC2 AMI State Change", {"ImageId": "ami-1"}),
    ("aws.health", "AWS Health Event", {"service": "RDS", "eventTypeCategory": "scheduledChange"}),
    ("aws.health", "AWS Health Event", {"service": "EC2", "eventTypeCategory": "issue"}),
]


def test_unrelated_events_do_not_arrive(engine, cluster):
    # given
    drive.provision(engine, req())

    # when
    out = plain("events").put_events(Entries=[
        {"Source": source, "DetailType": detail_type, "Detail": json.dumps(detail),
         "Resources": []} for source, detail_type, detail in UNRELATED])

    # then
    assert out["FailedEntryCount"] == 0
    msgs = plain("sqs").receive_message(QueueUrl=queue_url(QUEUE), MaxNumberOfMessages=10,
                                         WaitTimeSeconds=0).get("Messages", [])
    assert msgs == []


def test_disabled_kind_does_not_arrive(engine, cluster):
    # given
    drive.provision(engine, req(event_kinds=["spot_interruption"]))
    event = load_event("ec2-rebalance-recommendation.json")

    # when
    plain("events").put_events(Entries=[{
        "Source": event["source"], "DetailType": event["detail-type"],
        "Detail": json.dumps(event["detail"]), "Resources": event["resources"]}])

    # then
    assert plain("sqs").receive_message(QueueUrl=queue_url(QUEUE)).get("Messages", []) == []


def test_all_event_kinds_are_covered_by_the_constants():
    # then
    assert set(ALL_EVENT_KINDS) == KINDS
