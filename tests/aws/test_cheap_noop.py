"""Fleet density: a reconcile of an up-to-date cluster is cheap, read-only and still safe."""
from __future__ import annotations

import boto3
import pytest

from chalicelib import aws
from chalicelib.core import naming
from chalicelib.core.spec import ClusterRequest
from tests.support import drive


@pytest.fixture
def eng(kit_factory, cluster, clock):
    e = kit_factory(clock)
    drive.provision(e, ClusterRequest(cluster_name=cluster))
    return e


def aws_calls(fn) -> list[str]:
    seen: list[str] = []
    aws.add_hook("before-call.*.*", lambda model, **_: seen.append(model.name))
    fn()
    return seen


def test_a_no_op_reconcile_makes_at_most_ten_read_only_calls(eng, cluster):
    calls = aws_calls(lambda: drive.reconcile(eng, drive.identity(eng, cluster)))
    assert len(calls) <= 10, calls
    assert not [c for c in calls if aws.is_write(c)], calls


def test_drift_seen_by_the_cheap_look_is_repaired_from_a_full_one(eng, cluster):
    names = eng.names(drive.identity(eng, cluster))
    boto3.client("events").remove_targets(Rule=names.rule, Ids=[naming.TARGET_ID])
    out = drive.reconcile(eng, drive.identity(eng, cluster))
    assert [a["id"] for a in out.actions] == ["targets"]
    assert boto3.client("events").list_targets_by_rule(Rule=names.rule)["Targets"]


def test_tag_only_drift_is_repaired_once_the_last_full_look_is_old(eng, cluster, clock):
    sqs = boto3.client("sqs")
    url = sqs.get_queue_url(QueueName=eng.names(drive.identity(eng, cluster)).queue)["QueueUrl"]
    sqs.untag_queue(QueueUrl=url, TagKeys=[naming.DISCOVERY_TAG])
    assert drive.reconcile(eng, drive.identity(eng, cluster)).actions == []     # cheap look: tags not read
    clock.now += 24 * 3600 + 1
    out = drive.reconcile(eng, drive.identity(eng, cluster))
    assert [a["id"] for a in out.actions] == ["queue.tag"]
    assert sqs.list_queue_tags(QueueUrl=url)["Tags"][naming.DISCOVERY_TAG] == cluster


def test_a_full_look_that_finds_nothing_only_notes_when(eng, cluster, clock):
    clock.now += 25 * 3600
    calls = aws_calls(lambda: drive.reconcile(eng, drive.identity(eng, cluster)))
    assert [c for c in calls if aws.is_write(c)] == ["UpdateItem"]   # the record's stamp only
    assert "ListQueueTags" in calls
    assert drive.describe(eng, drive.identity(eng, cluster))["verified_at"] == "2027-01-16T09:00:00Z"
    # and the next reconcile is cheap again
    assert "ListQueueTags" not in aws_calls(lambda: drive.reconcile(eng, drive.identity(eng, cluster)))
