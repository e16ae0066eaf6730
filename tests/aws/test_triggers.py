"""The EKS CloudTrail trigger and the scheduled sweep, invoked like Lambda would."""
from __future__ import annotations

import json

import boto3
import pytest

from tests.support import drive
from tests.support.world import (ACCOUNT, OTHER_ACCOUNT, REGION, make_cluster, make_cluster_in,
                                 make_role, sample)
from tests.support.events import eks_event


@pytest.fixture
def client(api):
    return api


def test_create_cluster_event_provisions_in_the_events_account_through_sts(client):
    # given the cluster of the sample event, in the sample's (other) account
    sess = make_cluster_in(OTHER_ACCOUNT, REGION, "payments-prod")
    # when
    out = client.lambda_.invoke("on_eks_event", sample("cloudtrail-eks-create-cluster.json")).payload
    # then
    assert out == {"provisioned": f"{OTHER_ACCOUNT}/{REGION}/payments-prod", "status": "ready"}
    assert sess.client("sqs").get_queue_url(QueueName="kip-payments-prod")["QueueUrl"]
    assert boto3.client("sqs").list_queues().get("QueueUrls", []) == []   # not in our account
    rec = client.http.get(f"/clusters/payments-prod?account_id={OTHER_ACCOUNT}").json_body
    assert rec["source"] == "eks-event" and rec["status"] == "ready"
    # and once EKS has deleted the cluster, DeleteCluster tears it all down
    sess.client("eks").delete_cluster(name="payments-prod")
    out = client.lambda_.invoke("on_eks_event", eks_event(
        "DeleteCluster", "payments-prod", OTHER_ACCOUNT, REGION)).payload
    assert out["deleted"] == f"{OTHER_ACCOUNT}/{REGION}/payments-prod"
    assert sess.client("sqs").list_queues().get("QueueUrls", []) == []
    assert sess.client("events").list_rules(NamePrefix="kip-")["Rules"] == []
    assert sess.client("iam").list_policies(Scope="Local", PathPrefix="/kip/")["Policies"] == []


def test_failed_create_cluster_call_is_ignored(client):
    out = client.lambda_.invoke(
        "on_eks_event", sample("cloudtrail-eks-create-cluster-failed.json")).payload
    assert out["ignored"].startswith("CreateCluster failed with ResourceInUseException")
    assert client.http.get("/clusters").json_body["items"] == []


def test_opted_out_cluster_is_left_alone(client, moto_env):
    # given a cluster in our account carrying the opt-out tag
    make_cluster("payments-prod", tags={"kip.io/opt-out": "true"})
    event = sample("cloudtrail-eks-create-cluster.json")
    event["account"] = event["detail"]["recipientAccountId"] = ACCOUNT
    # when
    out = client.lambda_.invoke("on_eks_event", event).payload
    # then
    assert out["ignored"] == "cluster opted out"
    assert boto3.client("sqs").list_queues().get("QueueUrls", []) == []


def test_delete_event_for_an_unknown_cluster_is_ignored(client):
    event = sample("cloudtrail-eks-delete-cluster.json")
    event["account"] = event["detail"]["recipientAccountId"] = ACCOUNT
    assert client.lambda_.invoke("on_eks_event", event).payload["ignored"] == "RecordNotFound"


def test_sweep_attaches_once_the_role_exists_and_repairs_drift(client, moto_env):
    # given one cluster waiting for its role and one with a deleted target
    make_cluster("waiting")
    make_cluster("drifted")
    make_role("KarpenterController-drifted")
    for name, code in (("waiting", 202), ("drifted", 201)):
        assert client.http.post("/clusters", body=json.dumps({"cluster_name": name}),
                                headers={"Content-Type": "application/json"}).status_code == code
    assert client.http.get("/clusters/waiting").json_body["status"] == "no_karpenter"
    make_role("KarpenterController-waiting")
    boto3.client("events").remove_targets(Rule="kip-drifted-events",
                                          Ids=["KarpenterInterruptionQueueTarget"])
    # when the schedule fires
    summary = client.lambda_.invoke("reconcile_all", {
        "version": "0", "id": "x", "detail-type": "Scheduled Event", "source": "aws.events",
        "account": ACCOUNT, "time": "2026-11-20T10:00:00Z", "region": REGION,
        "resources": [], "detail": {}}).payload
    # then
    assert sorted(summary["repaired"]) == [f"{ACCOUNT}/{REGION}/drifted", f"{ACCOUNT}/{REGION}/waiting"]
    assert client.http.get("/clusters/waiting").json_body["status"] == "ready"
    assert boto3.client("iam").list_attached_role_policies(
        RoleName="KarpenterController-waiting")["AttachedPolicies"]
    assert boto3.client("events").list_targets_by_rule(Rule="kip-drifted-events")["Targets"]


def test_sweep_adopts_existing_clusters_when_enabled(kit_factory):
    make_cluster("legacy")
    make_role("KarpenterController-legacy")
    make_cluster("private", tags={"kip.io/opt-out": "true"})
    engine = kit_factory(adopt_existing=True)
    summary = drive.sweep(engine)
    assert summary["adopted"] == [f"{ACCOUNT}/{REGION}/legacy"]
    assert drive.describe(engine, drive.identity(engine, "legacy"))["source"] == "reconcile"
    # the second sweep has nothing to adopt and nothing to repair
    again = drive.sweep(engine)
    assert again["adopted"] == [] and again["up_to_date"] == [f"{ACCOUNT}/{REGION}/legacy"]
