"""Consumer health (GET /clusters/{name} ``health``, the sweep's record of it, ?consumer=) and
``requested_by``. CloudWatch datapoints are put into moto (AWS/SQS, dimension QueueName), which
returns them through GetMetricData; what moto cannot do (AccessDenied on GetMetricData) is
answered in CloudWatch's wire protocol (Smithy RPC v2 CBOR) by a before-send hook."""
from __future__ import annotations

import json
import os
import pathlib
import subprocess
import sys

import boto3
import pytest
from chalice.local import LocalGateway

import app as service_app
from chalicelib import aws
from chalicelib.aws.store import Store
from chalicelib.usecases import queue_health
from tests.support import drive
from tests.support.faults import FAULT_URL, fake_error
from tests.support.tokens import AUDIENCE, EC_KEY, ISSUER, RSA_KEY, Jwks, jwk, mint
from tests.support.world import CLUSTER, make_cluster, make_role, portal_inbox, put_metric


JSON = {"Content-Type": "application/json"}


def post(api, path, body, headers=JSON):
    return api.http.post(path, headers=headers, body=json.dumps(body))


def provision(api, name=CLUSTER):
    make_cluster(name)
    make_role(f"KarpenterController-{name}")
    resp = post(api, "/clusters", {"cluster_name": name})
    assert resp.status_code == 201, resp.body
    return resp.json_body


def queue_url(name):
    return boto3.client("sqs").get_queue_url(QueueName=name)["QueueUrl"]


def health(api, name=CLUSTER):
    resp = api.http.get(f"/clusters/{name}")
    assert resp.status_code == 200, resp.body
    return resp.json_body["health"]


# -- CloudWatch refusing a call -------------------------------------------------------------
# botocore 1.44 speaks CloudWatch's JSON protocol (awsJson1_0, the service also offers Smithy
# RPC v2 CBOR and query); the error is answered in the protocol the client chose.

class DenyMetrics:
    """Every GetMetricData attempt is refused as AWS refuses a role without the permission."""

    def __init__(self, code="AccessDenied", status=403):
        self.code, self.status, self.seen = code, status, 0
        aws.add_hook("before-send.cloudwatch.GetMetricData", self)

    def __call__(self, request, **_):
        self.seen += 1
        url, request.url = request.url, FAULT_URL
        return fake_error(request_protocol(request), url, self.status, self.code,
                          "User is not authorized to perform: cloudwatch:GetMetricData")


def request_protocol(request) -> str:
    content_type = request.headers.get("Content-Type", b"")
    content_type = content_type.decode() if isinstance(content_type, bytes) else content_type
    return "json" if "json" in content_type else "query"


# -- GET /clusters/{name}: health ------------------------------------------------------------

def test_messages_waiting_longer_than_the_threshold_make_the_consumer_stale(api):
    rec = provision(api)
    queue = rec["names"]["queue"]
    for i in range(3):
        boto3.client("sqs").send_message(QueueUrl=queue_url(queue), MessageBody=f"m{i}")
    put_metric(queue, "ApproximateAgeOfOldestMessage", 900)
    h = health(api)
    assert h["consumer"] == "stale"
    assert (h["backlog"], h["in_flight"], h["dlq_depth"]) == (3, 0, 0)
    assert h["oldest_message_age_seconds"] == 900


def test_messages_deleted_in_the_last_hour_make_the_consumer_active(api):
    rec = provision(api)
    put_metric(rec["names"]["queue"], "NumberOfMessagesDeleted", 4, minutes_ago=40)
    h = health(api)
    assert h["consumer"] == "active" and h["oldest_message_age_seconds"] is None


def test_a_message_in_flight_makes_the_consumer_active(api):
    rec = provision(api)
    url = queue_url(rec["names"]["queue"])
    boto3.client("sqs").send_message(QueueUrl=url, MessageBody="m")
    boto3.client("sqs").receive_message(QueueUrl=url, VisibilityTimeout=300)
    h = health(api)
    assert (h["consumer"], h["backlog"], h["in_flight"]) == ("active", 0, 1)


def test_an_empty_queue_without_traffic_is_idle_and_old_datapoints_do_not_count(api):
    rec = provision(api)
    put_metric(rec["names"]["queue"], "ApproximateAgeOfOldestMessage", 5000, minutes_ago=50)
    h = health(api)
    assert h["consumer"] == "idle" and h["backlog"] == 0
    assert h["oldest_message_age_seconds"] is None      # older than the last 15 minutes


def test_unreadable_metrics_make_the_consumer_unknown_never_a_5xx(api):
    provision(api)
    deny = DenyMetrics()
    h = health(api)
    assert deny.seen >= 1
    assert h["consumer"] == "unknown" and h["backlog"] == 0 and h["dlq_depth"] == 0


def test_throttled_metrics_after_the_retries_are_unknown_too(api):
    provision(api)
    DenyMetrics(code="ThrottlingException", status=400)
    assert health(api)["consumer"] == "unknown"


def test_the_dlq_depth_is_reported(api):
    rec = provision(api)
    boto3.client("sqs").send_message(QueueUrl=queue_url(rec["names"]["dlq"]), MessageBody="x")
    assert health(api)["dlq_depth"] == 1


# -- the sweep records health; ?consumer= filters on it ----------------------------------------

def _sweep():
    return queue_health.sweep(service_app.kit())


def test_sweep_records_stale_clusters_and_the_list_filters_on_them(api):
    stale = provision(api, "stale-one")
    provision(api, "fine-one")
    put_metric(stale["names"]["queue"], "ApproximateAgeOfOldestMessage", 1200)
    changed = _sweep()
    assert {c["cluster"]: c["consumer"] for c in changed} == {
        stale["id"]: "stale", stale["id"].replace("stale-one", "fine-one"): "idle"}
    resp = api.http.get("/clusters?consumer=stale")
    assert [i["cluster_name"] for i in resp.json_body["items"]] == ["stale-one"]
    assert resp.json_body["items"][0]["health"]["consumer"] == "stale"
    idle = api.http.get("/clusters?consumer=idle").json_body["items"]
    assert [i["cluster_name"] for i in idle] == ["fine-one"]
    assert api.http.get("/clusters?consumer=sleepy").status_code == 400


def test_a_page_token_stays_bound_to_the_consumer_filter(api):
    for name in ("a-one", "b-two", "c-three"):
        provision(api, name)
    _sweep()
    first = api.http.get("/clusters?consumer=idle&limit=1").json_body
    assert first["next_token"]
    other = api.http.get(f"/clusters?limit=1&next_token={first['next_token']}")
    assert other.status_code == 400
    assert other.json_body["error"]["field"] == "next_token"
    seen, token = [i["cluster_name"] for i in first["items"]], first["next_token"]
    while token:
        page = api.http.get(f"/clusters?consumer=idle&limit=1&next_token={token}").json_body
        seen += [i["cluster_name"] for i in page["items"]]
        token = page["next_token"]
    assert sorted(seen) == ["a-one", "b-two", "c-three"]


def test_the_sweep_writes_health_only_when_it_changes(api):
    rec = provision(api)
    _sweep()
    first = Store().get(rec["id"])
    assert first["health"]["consumer"] == "idle"
    assert _sweep() == []                              # nothing changed: nothing written
    assert Store().get(rec["id"]) == first
    put_metric(rec["names"]["queue"], "ApproximateAgeOfOldestMessage", 700)
    assert [c["consumer"] for c in _sweep()] == ["stale"]
    after = Store().get(rec["id"])
    assert after["health"]["consumer"] == "stale"
    assert after["version"] == first["version"]        # health alone: no version, no lease


def test_status_events_when_a_consumer_turns_stale_and_when_the_dlq_fills(api_with):
    sqs = boto3.client("sqs")
    inbox = portal_inbox()
    client = api_with(status_bus="kip-portal")
    rec = provision(client)
    _sweep()                                            # idle: no event
    put_metric(rec["names"]["queue"], "ApproximateAgeOfOldestMessage", 3600)
    sqs.send_message(QueueUrl=queue_url(rec["names"]["dlq"]), MessageBody="poison")
    _sweep()
    _sweep()                                            # unchanged: no second event
    msgs = sqs.receive_message(QueueUrl=inbox, MaxNumberOfMessages=10)["Messages"]
    details = [json.loads(m["Body"])["detail"] for m in msgs]
    changes = sorted(d["change"] for d in details if "change" in d)
    assert changes == ["consumer_stale", "dlq_filled"]
    stale = next(d for d in details if d.get("change") == "consumer_stale")
    assert stale["health"]["oldest_message_age_seconds"] == 3600
    assert stale["queue_name"] == rec["names"]["queue"] and stale["status"] == "ready"


@pytest.mark.parametrize("consumer", ["stale", "active", "idle", "unknown"])
def test_the_list_query_accepts_each_consumer_state(api, consumer):
    assert api.http.get(f"/clusters?consumer={consumer}").status_code == 200


# -- requested_by ---------------------------------------------------------------------------

@pytest.fixture
def caller_context(monkeypatch):
    """API Gateway's request context as a deployed stage delivers it: ``authorizer`` (the JWT
    authorizer's context: ``sub``) or ``identity.userArn`` (SigV4 / IAM auth)."""
    context: dict = {}
    original = LocalGateway._generate_lambda_event

    def with_context(self, *args, **kw):
        event = original(self, *args, **kw)
        for key, value in context.items():
            event["requestContext"].setdefault(key, {}).update(value)
        return event
    monkeypatch.setattr(LocalGateway, "_generate_lambda_event", with_context)
    return context


def test_the_jwt_subject_is_recorded_and_sent_with_status_events(api, caller_context, moto_env):
    caller_context["authorizer"] = {"sub": "user:alice", "principalId": "user:alice"}
    rec = provision(api)
    assert rec["requested_by"] == "user:alice"
    assert api.http.get(f"/clusters/{CLUSTER}").json_body["requested_by"] == "user:alice"
    # a sweep (nobody asked) keeps the last caller
    _sweep()
    drive.sweep(service_app.kit())
    assert api.http.get(f"/clusters/{CLUSTER}").json_body["requested_by"] == "user:alice"


def test_the_iam_caller_arn_is_recorded_on_teardown_events(api_with, caller_context):
    sqs = boto3.client("sqs")
    inbox = portal_inbox()
    client = api_with(status_bus="kip-portal")
    bob, carol = ("arn:aws:iam::123456789012:user/bob",
                  "arn:aws:sts::123456789012:assumed-role/ops/carol")
    caller_context["identity"] = {"userArn": bob}
    assert provision(client)["requested_by"] == bob
    caller_context["identity"] = {"userArn": carol}
    assert client.http.delete(f"/clusters/{CLUSTER}",
                              headers={"If-Match": "*"}).status_code == 200
    details = [json.loads(m["Body"])["detail"] for m in
               sqs.receive_message(QueueUrl=inbox, MaxNumberOfMessages=10)["Messages"]]
    assert [(d["status"], d["requested_by"]) for d in details] == [
        ("ready", bob), ("deleted", carol)]


JWT_RUN = """
import json, os, sys
from moto import mock_aws
from chalice.test import Client
with mock_aws():
    from chalicelib import aws
    from chalicelib.config import get_settings
    aws.Store(get_settings()).create_table()
    from tests.support.pod_identity import PodIdentity
    PodIdentity("123456789012", "eu-west-1")    # moto has no Pod Identity API
    from tests.support.world import make_cluster, make_role
    make_cluster("payments-prod")
    make_role("KarpenterController-payments-prod")
    import app
    with Client(app.app, stage_name="local") as client:
        body = json.dumps({"cluster_name": "payments-prod"})
        headers = {"Content-Type": "application/json"}
        anonymous = client.http.post("/clusters", headers=headers, body=body)
        headers["Authorization"] = "Bearer " + os.environ["TOKEN"]
        signed = client.http.post("/clusters", headers=headers, body=body)
        print(json.dumps({"anonymous": anonymous.status_code, "status": signed.status_code,
                          "requested_by": json.loads(signed.body).get("requested_by")}))
"""


def test_jwt_end_to_end_the_token_subject_becomes_requested_by():
    """A KIP_API_AUTH=jwt app (its own process: the authorizer is wired at import) verifies a
    token against a JWKS on 127.0.0.1 and records the token's sub as requested_by."""

    server = Jwks()
    server.keys = [jwk(RSA_KEY, "rsa-1"), jwk(EC_KEY, "ec-1")]
    root = pathlib.Path(__file__).resolve().parents[2]
    env = {**os.environ, "KIP_API_AUTH": "jwt", "KIP_JWKS_URL": server.url,
           "KIP_JWT_ISSUER": ISSUER, "KIP_JWT_AUDIENCE": AUDIENCE,
           # a JWT stage needs its team scopes: this token's group is an admin team
           "KIP_AUTHZ": json.dumps({"claim": "groups", "admins": ["platform"], "teams": {}}),
           "TOKEN": mint(sub="portal:team-payments", groups=["platform"]),
           "PYTHONPATH": str(root)}
    try:
        done = subprocess.run([sys.executable, "-c", JWT_RUN], cwd=root, env=env, timeout=120,
                              capture_output=True, text=True)
    finally:
        server.stop()
    assert done.returncode == 0, done.stderr[-2000:]
    result = json.loads(done.stdout.strip().splitlines()[-1])
    assert result["anonymous"] in (401, 403)
    assert (result["status"], result["requested_by"]) == (201, "portal:team-payments")
