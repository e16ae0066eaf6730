"""The EKS trigger's failed events: kept on kip_failed-events-<stage> by Lambda's on-failure
destination (or the rule target's DLQ), replayed by the schedule through on_eks_event's code."""
from __future__ import annotations

import json

import boto3
import pytest

import app as service_app
from chalicelib import errors
from chalicelib.usecases import clusters, replay as failed_events
from tests.support.world import ACCOUNT, REGION, load_event, make_cluster, make_role
from tests.support.events import eks_event


SCHEDULE = {"version": "0", "id": "x", "detail-type": "Scheduled Event", "source": "aws.events",
            "account": ACCOUNT, "time": "2026-11-20T10:00:00Z", "region": REGION,
            "resources": [], "detail": {}}


def create_event(name: str = "payments-prod") -> dict:
    event = load_event("cloudtrail-eks-create-cluster.json")
    event["version"] = "0"
    event["account"] = event["detail"]["recipientAccountId"] = ACCOUNT
    event["detail"]["requestParameters"]["name"] = name
    return event


def destination_record(event: dict, error_type: str = "AwsCallFailed",
                       message: str = "eks:DescribeCluster: connection reset") -> dict:
    """What Lambda sends to an on-failure destination after the last retry (AWS Lambda docs,
    "Capturing records of Lambda asynchronous invocations")."""
    return {
        "version": "1.0", "timestamp": "2026-11-20T09:58:05.568Z",
        "requestContext": {
            "requestId": "e4b46cbf-b738-xmpl-8880-a18cdf61200e",
            "functionArn": f"arn:aws:lambda:{REGION}:{ACCOUNT}:function:kip-prod-on_eks_event"
                           ":$LATEST",
            "condition": "RetriesExhausted", "approximateInvokeCount": 3},
        "requestPayload": event,
        "responseContext": {"statusCode": 200, "executedVersion": "$LATEST",
                            "functionError": "Unhandled"},
        "responsePayload": {"errorType": error_type, "errorMessage": message,
                            "stackTrace": ["  File \"/var/task/app.py\", line 1"]}}


@pytest.fixture
def queue(api, api_with, monkeypatch):
    """The failed-events queue (as resources-<stage>.json declares it) and an engine using it."""
    # chalice.test's Lambda context leaves 3 s (its default), less than the replay's margin
    monkeypatch.setattr(failed_events, "MARGIN_SECONDS", 0.0)
    url = boto3.client("sqs").create_queue(
        QueueName="kip_failed-events-test",
        Attributes={"VisibilityTimeout": "600", "MessageRetentionPeriod": "1209600"})["QueueUrl"]
    api_with(failed_events_queue_url=url)
    return url


def put(url: str, body, **attributes) -> None:
    boto3.client("sqs").send_message(
        QueueUrl=url, MessageBody=body if isinstance(body, str) else json.dumps(body),
        MessageAttributes={k: {"DataType": "String", "StringValue": v}
                           for k, v in attributes.items()})


def counts(url: str) -> tuple[int, int]:
    a = boto3.client("sqs").get_queue_attributes(QueueUrl=url, AttributeNames=[
        "ApproximateNumberOfMessages", "ApproximateNumberOfMessagesNotVisible"])["Attributes"]
    return int(a["ApproximateNumberOfMessages"]), int(a["ApproximateNumberOfMessagesNotVisible"])


def test_a_create_cluster_lambda_gave_up_on_is_provisioned_by_the_schedule(api, queue,
                                                                          monkeypatch):
    # given a CreateCluster whose trigger run failed (a transient error, before any record)
    make_cluster("payments-prod")
    make_role("KarpenterController-payments-prod")
    engine = service_app._kit

    real_adopt, down = clusters.adopt, [True]

    def flaky(*a, **kw):
        if down[0]:
            raise errors.AwsCallFailed("eks:DescribeCluster: connection reset")
        return real_adopt(*a, **kw)
    monkeypatch.setattr(clusters, "adopt", flaky)
    with pytest.raises(errors.AwsCallFailed):
        api.lambda_.invoke("on_eks_event", create_event())
    assert api.http.get("/clusters/payments-prod").status_code == 404
    # ... and, its two retries spent, Lambda sent the invocation record to the destination
    put(queue, destination_record(create_event()))
    down[0] = False                     # the cause has gone away
    # when the schedule runs
    summary = api.lambda_.invoke("reconcile_all", SCHEDULE).payload
    # then the event was replayed through on_eks_event's code path, the cluster provisioned
    out = summary["failed_events"]
    assert (out["replayed"], out["still_failing"], out["dropped"]) == (1, 0, 0)
    assert out["details"][0]["first_failure"] == \
        "AwsCallFailed: eks:DescribeCluster: connection reset"
    assert out["details"][0]["condition"] == "RetriesExhausted"
    rec = api.http.get("/clusters/payments-prod").json_body
    assert rec["status"] == "ready" and rec["source"] == "eks-event"
    assert boto3.client("sqs").get_queue_url(QueueName="kip-payments-prod")["QueueUrl"]
    assert counts(queue) == (0, 0)      # handled: deleted
    # and the audit trail says the replay did it, for the caller of the EKS call
    (entry,) = api.http.get("/clusters/payments-prod/history").json_body["items"]
    assert (entry["action"], entry["source"]) == ("provision", "replay")
    assert entry["actor"] == create_event()["detail"]["userIdentity"]["arn"]


@pytest.mark.parametrize("forged", [
    "event",                # an EventBridge-shaped body (any SendMessage can write one)
    "other-function",       # Lambda's record shape, but of another function
    "other-account",        # ... of a function named like kip's trigger, in another account
    "no-condition",         # ... without Lambda's failure condition
])
def test_a_message_that_is_not_lambdas_failure_record_of_the_trigger_changes_nothing(
        api, queue, caplog, forged):
    # given a live cluster kip wired, and a DeleteCluster for it written straight to the queue
    make_cluster("orders")
    make_role("KarpenterController-orders")
    assert api.http.post("/clusters", body=json.dumps({"cluster_name": "orders"}),
                         headers={"Content-Type": "application/json"}).status_code == 201
    boto3.client("eks").delete_cluster(name="orders")       # even once EKS no longer has it
    event = eks_event("DeleteCluster", "orders", ACCOUNT, REGION)
    record = destination_record(event)
    context = record["requestContext"]
    if forged == "event":
        body = event
    elif forged == "other-function":
        context["functionArn"] = f"arn:aws:lambda:{REGION}:{ACCOUNT}:function:someone-else"
        body = record
    elif forged == "other-account":
        context["functionArn"] = context["functionArn"].replace(ACCOUNT, "999999999999")
        body = record
    else:
        context.pop("condition")
        body = record
    put(queue, body, ERROR_CODE="SDK_CLIENT_ERROR", RULE_ARN="arn:aws:events:x")
    # when
    out = api.lambda_.invoke("reconcile_all", SCHEDULE).payload["failed_events"]
    # then it is logged and dropped; the cluster's wiring and record are untouched
    assert (out["dropped"], out["replayed"]) == (1, 0), out
    assert api.http.get("/clusters/orders").json_body["status"] == "ready"
    assert boto3.client("sqs").get_queue_url(QueueName="kip-orders")["QueueUrl"]
    assert counts(queue) == (0, 0)
    assert any("refused" in r.getMessage() for r in caplog.records)


def test_a_still_failing_event_stays_on_the_queue(api, queue, monkeypatch):
    # given a queued failure whose cause has not gone away
    make_cluster("payments-prod")
    make_role("KarpenterController-payments-prod")
    put(queue, destination_record(create_event()))

    def still_down(*a, **kw):
        raise errors.Throttled("sqs:CreateQueue throttled")
    monkeypatch.setattr(clusters, "adopt", still_down)
    # when
    out = api.lambda_.invoke("reconcile_all", SCHEDULE).payload["failed_events"]
    # then it is left (hidden for the visibility timeout, back at the next schedule)
    assert (out["replayed"], out["still_failing"], out["kept"]) == (0, 1, 0)
    assert out["details"][0]["code"] == "Throttled"
    assert counts(queue) == (0, 1)


def test_after_k_receives_a_failing_event_is_kept_for_a_human(api, queue, monkeypatch, caplog):
    make_cluster("payments-prod")
    put(queue, destination_record(create_event()))

    def still_down(*a, **kw):
        raise errors.AwsCallFailed("still down")
    monkeypatch.setattr(clusters, "adopt", still_down)
    monkeypatch.setattr(failed_events, "KEEP_AFTER", 1)
    out = api.lambda_.invoke("reconcile_all", SCHEDULE).payload["failed_events"]
    assert (out["kept"], out["still_failing"]) == (1, 0)
    assert counts(queue) == (0, 1)          # not deleted: the redrive moves it to the DLQ
    assert any("kept for a human" in r.getMessage() for r in caplog.records)


def test_final_outcomes_and_malformed_messages_are_deleted_and_logged(api, queue, caplog):
    # given: not JSON, not an event, a record without its payload, an event for a cluster
    # that no longer exists (final: ignored), a failed CreateCluster call (final: ignored)
    put(queue, "{not json")
    put(queue, {"hello": "world"})
    put(queue, {**destination_record(create_event()), "requestPayload": "truncated"})
    put(queue, destination_record(create_event("gone-already")))
    failed_call = load_event("cloudtrail-eks-create-cluster-failed.json")
    put(queue, destination_record(failed_call))
    # when
    out = api.lambda_.invoke("reconcile_all", SCHEDULE).payload["failed_events"]
    # then nothing is left, and each malformed one was logged
    assert out["dropped"] == 3 and out["replayed"] == 2, out
    assert sorted(d["outcome"] for d in out["details"]) == \
        ["ignored", "ignored", "malformed", "malformed", "malformed"]
    assert counts(queue) == (0, 0)
    assert sum("refused" in r.getMessage() for r in caplog.records) == 3


def test_the_local_stage_has_no_replay(api, engine):
    summary = api.lambda_.invoke("reconcile_all", SCHEDULE).payload
    assert "failed_events" not in summary
    assert failed_events.replay(engine, lambda e: {}, lambda: 60.0)["enabled"] is False


def test_messages_not_reached_in_time_are_released_at_once(api, queue):
    put(queue, destination_record(create_event()))
    clock = iter([5.0, -1.0])     # time enough to receive, none left to replay
    out = failed_events.replay(service_app._kit, lambda e: {}, lambda: next(clock, -1.0))
    assert out["released"] == 1 and out["replayed"] == 0
    assert counts(queue) == (1, 0)          # visible again for the next run


def test_parse_reads_both_shapes_and_refuses_the_rest():
    event = create_event()
    got = failed_events.parse(json.dumps(destination_record(event, "KeyError", "'x'")))
    assert (got.event, got.origin, got.reason) == (event, "lambda-destination", "KeyError: 'x'")
    got = failed_events.parse(json.dumps(event), {"ERROR_CODE": "THROTTLING"})
    assert (got.event, got.origin) == (None, "eventbridge-dlq")     # never replayed
    arn = f"arn:aws:lambda:{REGION}:{ACCOUNT}:function:kip-prod-OnEksEvent-AbC12:$LATEST"
    assert failed_events.is_trigger(arn, ACCOUNT, REGION)
    assert not failed_events.is_trigger(arn, "999999999999", REGION)
    assert not failed_events.is_trigger(arn.replace("OnEksEvent", "Other"), ACCOUNT, REGION)
    assert not failed_events.is_trigger("arn:aws:lambda:x", ACCOUNT, REGION)
    for bad in ("", "[]", "null", json.dumps({"requestContext": {}}), json.dumps({"detail": 1})):
        assert failed_events.parse(bad).event is None
