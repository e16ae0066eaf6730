"""KIP_ALARMS=true: per-cluster CloudWatch alarms (consumer stale, DLQ not empty), created,
repaired and removed with the cluster's other resources, ownership-tagged."""
from __future__ import annotations

import dataclasses

import boto3
import pytest

from chalicelib.converge import alarms
from chalicelib import aws, errors
from chalicelib.core import naming
from chalicelib.core.spec import ClusterRequest
from tests.support.faults import Strict
from tests.support.world import ACCOUNT, CLUSTER, REGION, make_cluster, make_role
from tests.support import drive

STALE, DLQ = f"kip-{CLUSTER}-consumer-stale", f"kip-{CLUSTER}-dlq-not-empty"


@pytest.fixture
def engine(kit_factory):
    make_cluster(CLUSTER)
    make_role(f"KarpenterController-{CLUSTER}")
    return kit_factory(alarms=True, stale_seconds=900)


def described() -> dict:
    cw = boto3.client("cloudwatch")
    return {a["AlarmName"]: a for a in cw.describe_alarms(AlarmNamePrefix="kip-")["MetricAlarms"]}


def tags_of(name: str) -> dict:
    arn = f"arn:aws:cloudwatch:{REGION}:{ACCOUNT}:alarm:{name}"
    return {t["Key"]: t["Value"] for t in
            boto3.client("cloudwatch").list_tags_for_resource(ResourceARN=arn)["Tags"]}


def test_provision_creates_both_alarms_on_the_queue_and_the_dlq(engine):
    out = drive.provision(engine, ClusterRequest(cluster_name=CLUSTER))
    found = described()
    assert set(found) == {STALE, DLQ}
    stale, dlq = found[STALE], found[DLQ]
    assert (stale["MetricName"], stale["Statistic"], stale["Threshold"]) == (
        "ApproximateAgeOfOldestMessage", "Maximum", 900.0)
    assert stale["Dimensions"] == [{"Name": "QueueName", "Value": f"kip-{CLUSTER}"}]
    assert (dlq["MetricName"], dlq["Threshold"], dlq["ComparisonOperator"]) == (
        "ApproximateNumberOfMessagesVisible", 0.0, "GreaterThanThreshold")
    assert dlq["Dimensions"] == [{"Name": "QueueName", "Value": f"kip-_{CLUSTER}-dlq"}]
    assert stale["TreatMissingData"] == "notBreaching"
    key = f"{ACCOUNT}/{REGION}/{CLUSTER}"
    assert naming.owned_by(tags_of(STALE), key) and naming.owned_by(tags_of(DLQ), key)
    assert {a["op"] for a in out.actions} >= {"put_metric_alarm"}


def test_a_second_provision_changes_nothing_and_drift_is_repaired(engine):
    drive.provision(engine, ClusterRequest(cluster_name=CLUSTER))
    again = drive.provision(engine, ClusterRequest(cluster_name=CLUSTER))
    assert not [a for a in again.actions if a["resource"] == "alarm"]
    boto3.client("cloudwatch").put_metric_alarm(
        AlarmName=STALE, Namespace="AWS/SQS", MetricName="ApproximateAgeOfOldestMessage",
        Dimensions=[{"Name": "QueueName", "Value": f"kip-{CLUSTER}"}], Statistic="Maximum",
        Period=300, EvaluationPeriods=1, Threshold=99999, ComparisonOperator="GreaterThanThreshold")
    cid = naming.ClusterId(ACCOUNT, REGION, CLUSTER)
    out = drive.reconcile(engine, cid)
    assert [a["name"] for a in out.actions if a["resource"] == "alarm"] == [STALE]
    assert described()[STALE]["Threshold"] == 900.0


def test_teardown_removes_the_alarms(engine):
    drive.provision(engine, ClusterRequest(cluster_name=CLUSTER))
    out = drive.teardown(engine, naming.ClusterId(ACCOUNT, REGION, CLUSTER))
    assert {a["name"] for a in out.actions if a["resource"] == "alarm"} == {STALE, DLQ}
    assert described() == {}


def test_a_same_named_alarm_that_is_not_ours_is_refused_before_any_write(engine):
    boto3.client("cloudwatch").put_metric_alarm(
        AlarmName=STALE, Namespace="AWS/SQS", MetricName="X", Statistic="Maximum", Period=300,
        EvaluationPeriods=1, Threshold=1, ComparisonOperator="GreaterThanThreshold")
    with pytest.raises(errors.ResourceNotOwned) as err:
        drive.provision(engine, ClusterRequest(cluster_name=CLUSTER))
    assert err.value.extra.get("resource") == STALE or STALE in err.value.message
    assert boto3.client("sqs").list_queues().get("QueueUrls", []) == []


def test_an_alarm_already_gone_at_delete_is_success(engine):
    drive.provision(engine, ClusterRequest(cluster_name=CLUSTER))
    gone = Strict("cloudwatch", "DeleteAlarms", None, "ResourceNotFound", "Alarm not found",
                  times=2, status=404)
    out = drive.teardown(engine, naming.ClusterId(ACCOUNT, REGION, CLUSTER))
    assert gone.seen == 2 and out.record is None


def test_the_record_lists_the_alarms_it_made(engine):
    out = drive.provision(engine, ClusterRequest(cluster_name=CLUSTER))
    assert out.record.resources.alarms.keys() == {STALE, DLQ}
    assert all(a.exists for a in out.record.resources.alarms.values())
    assert set(out.record.public()["resources"]["alarms"]) == {STALE, DLQ}


def off(engine):
    """The same table with KIP_ALARMS turned off."""
    from tests.support.drive import make_kit
    return make_kit(dataclasses.replace(engine.settings, alarms=False))


def test_alarms_are_removed_once_kip_alarms_is_turned_off(engine):
    drive.provision(engine, ClusterRequest(cluster_name=CLUSTER))
    out = drive.reconcile(off(engine), naming.ClusterId(ACCOUNT, REGION, CLUSTER))
    assert {a["name"] for a in out.actions if a["op"] == "delete_alarm"} == {STALE, DLQ}
    assert described() == {}
    assert out.record.resources.alarms == {} and "alarms" not in out.record.public()["resources"]
    # from then on a run does not look for alarms at all
    calls = []
    aws.add_hook("before-call.cloudwatch.*", lambda model=None, **_: calls.append(model.name))
    drive.reconcile(off(engine), naming.ClusterId(ACCOUNT, REGION, CLUSTER))
    assert calls == []


def test_a_teardown_after_kip_alarms_was_turned_off_still_removes_them(engine):
    drive.provision(engine, ClusterRequest(cluster_name=CLUSTER))
    out = drive.teardown(off(engine), naming.ClusterId(ACCOUNT, REGION, CLUSTER))
    assert {a["name"] for a in out.actions if a["resource"] == "alarm"} == {STALE, DLQ}
    assert described() == {}


def test_a_teardown_without_a_record_finds_the_clusters_alarms(engine):
    drive.provision(engine, ClusterRequest(cluster_name=CLUSTER))
    cid = naming.ClusterId(ACCOUNT, REGION, CLUSTER)
    boto3.resource("dynamodb").Table(engine.settings.table_name).delete_item(
        Key={"id": drive.describe(engine, cid).id})
    drive.teardown(off(engine), cid)
    assert described() == {}


def test_a_stopped_teardown_records_which_alarms_are_left(engine):
    drive.provision(engine, ClusterRequest(cluster_name=CLUSTER))

    Strict("cloudwatch", "DeleteAlarms", None, "AccessDenied", "not allowed", times=99,
           status=403)
    with pytest.raises(errors.KipError):
        drive.teardown(engine, naming.ClusterId(ACCOUNT, REGION, CLUSTER))
    left = drive.describe(engine, naming.ClusterId(ACCOUNT, REGION, CLUSTER))
    assert left.status == "deleting" and set(left.resources.alarms) == {STALE, DLQ}


def test_a_record_from_before_alarms_were_recorded_learns_them_on_its_next_run(engine):
    """Alarms made before records listed them are found by the next (no-op) reconcile, so
    turning KIP_ALARMS off afterwards still removes them."""
    drive.provision(engine, ClusterRequest(cluster_name=CLUSTER))
    cid = naming.ClusterId(ACCOUNT, REGION, CLUSTER)
    table = boto3.resource("dynamodb").Table(engine.settings.table_name)
    table.update_item(Key={"id": cid.key}, UpdateExpression="REMOVE resources.alarms")
    assert drive.describe(engine, cid).resources.alarms == {}
    out = drive.reconcile(engine, cid)
    assert out.actions == [] and set(out.record.resources.alarms) == {STALE, DLQ}
    assert set(drive.describe(engine, cid).resources.alarms) == {STALE, DLQ}
    drive.reconcile(off(engine), cid)
    assert described() == {}


def test_alarms_deleted_by_hand_once_off_leave_the_record_and_stop_the_reads(engine):
    drive.provision(engine, ClusterRequest(cluster_name=CLUSTER))
    boto3.client("cloudwatch").delete_alarms(AlarmNames=[STALE, DLQ])
    cid = naming.ClusterId(ACCOUNT, REGION, CLUSTER)
    out = drive.reconcile(off(engine), cid)
    assert out.actions == [] and out.record.resources.alarms == {}
    calls = []
    aws.add_hook("before-call.cloudwatch.*", lambda model=None, **_: calls.append(model.name))
    drive.reconcile(off(engine), cid)
    assert calls == []


def test_a_teardown_without_recorded_alarms_still_finds_them(engine):
    drive.provision(engine, ClusterRequest(cluster_name=CLUSTER))
    cid = naming.ClusterId(ACCOUNT, REGION, CLUSTER)
    boto3.resource("dynamodb").Table(engine.settings.table_name).update_item(
        Key={"id": cid.key}, UpdateExpression="REMOVE resources.alarms")
    drive.teardown(off(engine), cid)
    assert described() == {}


def test_alarm_names_fit_cloudwatch_for_the_longest_names():
    cid = naming.ClusterId(ACCOUNT, REGION, "c" * 100)
    names = naming.names_for(cid, "a-much-longer-prefix", "/kip/")
    for name in alarms.names(names).values():
        assert len(name) <= alarms.ALARM_MAX and name.startswith(names.queue)
