"""Tags kip applied follow the request on every resource; tags others added are left alone."""
from __future__ import annotations

import boto3

from chalicelib.core.spec import ClusterRequest
from tests.support import drive


def tags_everywhere(engine, cluster) -> list[dict]:
    n = engine.names(drive.identity(engine, cluster))
    sqs, events, iam = boto3.client("sqs"), boto3.client("events"), boto3.client("iam")
    out = []
    for q in (n.queue, n.dlq):
        out.append(sqs.list_queue_tags(QueueUrl=sqs.get_queue_url(QueueName=q)["QueueUrl"])
                   .get("Tags", {}))
    out.append({t["Key"]: t["Value"]
                for t in events.list_tags_for_resource(ResourceARN=n.rule_arn)["Tags"]})
    out.append({t["Key"]: t["Value"]
                for t in iam.list_policy_tags(PolicyArn=n.policy_arn)["Tags"]})
    return out


def test_changed_and_removed_request_tags_converge_on_every_resource(engine, cluster):
    # given
    drive.provision(engine, ClusterRequest(cluster_name=cluster, tags={"team": "a", "cost": "1"}))
    n = engine.names(drive.identity(engine, cluster))
    sqs = boto3.client("sqs")
    sqs.tag_queue(QueueUrl=sqs.get_queue_url(QueueName=n.queue)["QueueUrl"],
                  Tags={"added-by-someone": "x"})
    # when: one tag changes, one goes
    out = drive.provision(engine, ClusterRequest(cluster_name=cluster, tags={"team": "b"}))
    # then
    assert {a["op"] for a in out.actions} >= {"untag_queue", "untag_rule", "untag_policy",
                                              "tag_policy"}
    for tags in tags_everywhere(engine, cluster):
        assert tags["team"] == "b" and "cost" not in tags
    assert tags_everywhere(engine, cluster)[0]["added-by-someone"] == "x"     # not kip's
    assert "cost" not in out.record["tag_keys"] and "team" in out.record["tag_keys"]
    # and the next run is quiet
    assert drive.provision(engine, ClusterRequest(cluster_name=cluster, tags={"team": "b"})).actions \
        == []


def test_policy_tags_drift_is_repaired(engine, cluster):
    drive.provision(engine, ClusterRequest(cluster_name=cluster, tags={"team": "a"}))
    n = engine.names(drive.identity(engine, cluster))
    boto3.client("iam").untag_policy(PolicyArn=n.policy_arn, TagKeys=["team"])
    out = drive.reconcile(engine, drive.identity(engine, cluster))
    assert [a["op"] for a in out.actions] == ["tag_policy"]
    assert tags_everywhere(engine, cluster)[3]["team"] == "a"
