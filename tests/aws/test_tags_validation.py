"""Tags AWS would refuse late (IAM tag keys are case-insensitive: ``Team`` and ``team`` pass SQS
and EventBridge and fail at iam:CreatePolicy, after the queues and rules exist) are a 400 before
any AWS call is made, through the API and through the engine's own check."""
from __future__ import annotations

import json

import boto3

from chalicelib import errors
from chalicelib.config import Settings
from tests.support.drive import make_kit
from chalicelib.core.spec import ClusterRequest
from tests.support.faults import Calls
from tests.support.world import REGION
from tests.support import drive

JSON = {"Content-Type": "application/json"}


def queues() -> list[str]:
    return boto3.client("sqs", region_name=REGION).list_queues().get("QueueUrls", [])


def test_tag_keys_differing_only_in_case_are_a_400_before_any_aws_call(api, cluster):
    # given
    calls = Calls()

    # when
    resp = api.http.post("/clusters", headers=JSON, body=json.dumps(
        {"cluster_name": cluster, "tags": {"Team": "a", "team": "b"}}))

    # then
    assert resp.status_code == 400, resp.body
    err = resp.json_body["error"]
    assert err["field"] == "tags"
    assert "'Team'" in err["message"] and "'team'" in err["message"]
    assert calls.names == [], "refused before any AWS call"
    assert queues() == []


def test_a_case_clash_with_a_default_tag_writes_nothing(moto_env, cluster):
    # given: an engine whose settings carry KIP_DEFAULT_TAGS team=platform
    settings = Settings(**{**moto_env.__dict__, "default_tags": {"team": "platform"}})
    engine = make_kit(settings)
    calls = Calls()

    # when
    try:
        drive.provision(engine, ClusterRequest(cluster_name=cluster, tags={"Team": "payments"}))
        raise AssertionError("expected a 400")
    except errors.ValidationError as exc:
        err = exc

    # then
    assert err.status == 400 and err.field == "tags"
    assert "'Team' collides with 'team'" in err.message
    assert calls.writes == [], f"no AWS write before the refusal: {calls.writes}"
    assert queues() == []
    engine.workers.shutdown()


def test_the_same_tags_spelled_once_provision_ready(engine, cluster):
    out = drive.provision(engine, ClusterRequest(cluster_name=cluster, tags={"Team": "a", "env": "b"}))
    assert out.record["status"] == "ready"
    sqs = boto3.client("sqs", region_name=REGION)
    url = sqs.get_queue_url(QueueName=f"kip-{cluster}")["QueueUrl"]
    assert sqs.list_queue_tags(QueueUrl=url)["Tags"]["Team"] == "a"
