"""A DeleteCluster event is obeyed only on observed truth (issue: destructive paths): EKS is
asked, and the event must be about the cluster generation kip wired. A hostile or late event
(replayed, duplicated, about a deleted-and-re-created cluster, with a forged envelope) removes
nothing; a DeleteCluster for a cluster EKS no longer has still tears everything down."""
from __future__ import annotations

import json
import time

import boto3
import pytest

from tests.support.world import ACCOUNT, REGION, make_cluster, make_role
from tests.support.events import eks_event

CLUSTER = "payments-prod"


def provisioned(api, name: str = CLUSTER) -> dict:
    make_cluster(name)
    make_role(f"KarpenterController-{name}")
    answer = api.http.post("/clusters", body=json.dumps({"cluster_name": name}),
                           headers={"Content-Type": "application/json"})
    assert answer.status_code == 201, answer.json_body
    return answer.json_body


def wired(name: str = CLUSTER) -> bool:
    sqs = boto3.client("sqs")
    try:
        sqs.get_queue_url(QueueName=f"kip-{name}")
    except sqs.exceptions.QueueDoesNotExist:
        return False
    return bool(boto3.client("events").list_rules(NamePrefix=f"kip-{name}")["Rules"])


def deliver(api, event: dict) -> dict:
    return api.lambda_.invoke("on_eks_event", event).payload


def test_an_active_cluster_survives_a_delete_cluster_event(api):
    provisioned(api)
    out = deliver(api, eks_event("DeleteCluster", CLUSTER, ACCOUNT, REGION))
    assert out["verdict"] == "live" and "ACTIVE" in out["ignored"]
    assert wired() and api.http.get(f"/clusters/{CLUSTER}").json_body["status"] == "ready"


def test_a_replayed_delete_cluster_changes_nothing_twice(api):
    # given the same event delivered three times (CloudTrail duplicates, Lambda retries)
    provisioned(api)
    event = eks_event("DeleteCluster", CLUSTER, ACCOUNT, REGION)
    for _ in range(3):
        assert deliver(api, event)["verdict"] == "live"
    assert wired()


def test_a_late_delete_cluster_of_the_previous_generation_spares_the_recreated_cluster(api):
    # given a cluster deleted and created again under the same name (same ARN) and wired again
    first = make_cluster(CLUSTER)
    old_created = first["createdAt"].timestamp()
    boto3.client("eks").delete_cluster(name=CLUSTER)
    time.sleep(1.1)                         # a later createdAt for the new generation
    provisioned(api)
    record = api.http.get(f"/clusters/{CLUSTER}").json_body
    assert record["cluster"]["created_at"] > old_created
    # when the old generation's DeleteCluster arrives late (a retry, the failed-events queue)
    out = deliver(api, eks_event("DeleteCluster", CLUSTER, ACCOUNT, REGION,
                                 at=old_created + 0.5, created_at=old_created))
    # then nothing is removed
    assert out.get("verdict") in ("live", "stale") and "deleted" not in out
    assert wired()


def test_an_event_whose_envelope_account_differs_from_the_calls_is_ignored(api):
    provisioned(api)
    boto3.client("eks").delete_cluster(name=CLUSTER)     # even when EKS no longer has it
    event = eks_event("DeleteCluster", CLUSTER, ACCOUNT, REGION)
    event["account"] = "999999999999"
    out = deliver(api, event)
    assert "999999999999" in out["ignored"] and ACCOUNT in out["ignored"]
    assert wired()


def test_a_delete_cluster_for_a_cluster_eks_no_longer_has_tears_everything_down(api):
    provisioned(api)
    boto3.client("eks").delete_cluster(name=CLUSTER)
    out = deliver(api, eks_event("DeleteCluster", CLUSTER, ACCOUNT, REGION))
    assert out["deleted"] == f"{ACCOUNT}/{REGION}/{CLUSTER}" and out["removed"] >= 5
    assert not wired()
    assert api.http.get(f"/clusters/{CLUSTER}").status_code == 404


def test_a_create_cluster_older_than_the_recorded_generation_changes_nothing(api):
    provisioned(api)
    created = api.http.get(f"/clusters/{CLUSTER}").json_body["cluster"]["created_at"]
    out = deliver(api, eks_event("CreateCluster", CLUSTER, ACCOUNT, REGION,
                                 at=created - 86400, created_at=created - 86400))
    assert out["ignored"].startswith("stale")


@pytest.mark.parametrize("status", [None, "DELETING"])
def test_the_verdict_acts_only_when_eks_no_longer_reports_the_cluster(status):
    from chalicelib.core.generations import delete_verdict
    from chalicelib.core.observed import ClusterState
    now = None if status is None else ClusterState(CLUSTER, status=status, created_at=100.0)
    assert delete_verdict(now, 100.0, 200.0, 100.0).act
    assert not delete_verdict(ClusterState(CLUSTER, status="ACTIVE"), 100.0, 200.0, 100.0).act
    # about another generation than the recorded one, or from before it existed: stale
    assert not delete_verdict(None, 100.0, 200.0, 50.0).act
    assert not delete_verdict(None, 100.0, 40.0, None).act
