"""The fan-out sweep: the schedule queues one work item per record (resumable), sweep_worker
reconciles them and reports only retryable failures (ReportBatchItemFailures)."""
from __future__ import annotations

import collections
import dataclasses
import json

import boto3
import pytest

import app as service_app
from chalicelib import aws, errors
from chalicelib.aws import worklist
from chalicelib.usecases import clusters, fanout as fan
from tests.support import drive
from tests.support.drive import make_kit
from tests.support.faults import Strict
from tests.support.world import ACCOUNT, REGION, make_cluster, make_role, put_metric


SCHEDULED = {"version": "0", "id": "x", "detail-type": "Scheduled Event", "source": "aws.events",
             "account": ACCOUNT, "time": "2026-11-20T10:00:00Z", "region": REGION,
             "resources": [], "detail": {}}


@pytest.fixture
def fanout(api, moto_env, monkeypatch):
    """app and engine in fanout mode, on a work queue in moto."""
    url = worklist.create_work_queue(moto_env, "kip_sweep-test")
    settings = dataclasses.replace(moto_env, sweep_mode="fanout", sweep_queue_url=url)
    monkeypatch.setattr(service_app, "settings", settings)
    monkeypatch.setattr(service_app, "_kit", dataclasses.replace(service_app.kit(), settings=settings))
    # chalice.test's LambdaContext reports a 3 s budget; Lambda reports the function's timeout
    monkeypatch.setattr(service_app, "_remaining", lambda event: (lambda: 900.0))
    return url


def seed(engine, n: int) -> list[str]:
    keys = [f"{ACCOUNT}/{REGION}/c{i:04d}" for i in range(n)]
    for key in keys:
        account, region, name = key.split("/")
        engine.registry.store.put({"id": key, "account_id": account, "region": region,
                                   "cluster_name": name, "status": "ready", "version": 1},
                                  "attribute_not_exists(id)", {})
    return keys


def drain(url: str) -> list[dict]:
    sqs, out = boto3.client("sqs"), []
    while True:
        got = sqs.receive_message(QueueUrl=url, MaxNumberOfMessages=10).get("Messages", [])
        if not got:
            return out
        for m in got:
            out.append({"id": m["MessageId"], "body": m["Body"]})
            sqs.delete_message(QueueUrl=url, ReceiptHandle=m["ReceiptHandle"])


def test_schedule_queues_one_item_per_record(api, fanout, monkeypatch):
    monkeypatch.setattr(fan, "PAGE", 10)             # several pages, several batches
    keys = seed(service_app._kit, 25)
    summary = api.lambda_.invoke("reconcile_all", SCHEDULED).payload
    assert sorted(summary["queued"]) == keys
    items = [json.loads(m["body"]) for m in drain(fanout)]
    assert sorted(i["id"] for i in items) == keys and {i["kind"] for i in items} == {"reconcile"}


def test_a_schedule_out_of_time_leaves_a_continuation_the_worker_resumes(api, fanout,
                                                                        monkeypatch):
    monkeypatch.setattr(fan, "PAGE", 10)
    engine = service_app._kit
    keys = seed(engine, 25)
    out = fan.schedule(engine, remaining=lambda: 5.0)        # under the margin after page 1
    assert len(out["queued"]) == 10 + 1 and out["continued"]
    first = drain(fanout)
    cont = [m for m in first if json.loads(m["body"])["kind"] == "continue"]
    assert len(cont) == 1
    # the worker receiving the continuation carries on from the token
    event = api.events.generate_sqs_event([cont[0]["body"]], queue_name="kip_sweep-test")
    result = api.lambda_.invoke("sweep_worker", event).payload
    assert result == {"batchItemFailures": []}
    rest = drain(fanout)
    ids = [json.loads(m["body"]).get("id") for m in first + rest]
    assert sorted(i for i in ids if i) == keys


def test_entries_sqs_refuses_with_http_200_are_resent(api, fanout):
    engine = service_app._kit
    keys = seed(engine, 12)
    refused = []

    def refuse_one(parsed=None, **_):
        if not refused and parsed.get("Successful"):
            entry = parsed["Successful"].pop()
            refused.append(entry["Id"])
            parsed.setdefault("Failed", []).append({"Id": entry["Id"], "SenderFault": False,
                                                    "Code": "InternalError"})
    aws.add_hook("after-call.sqs.SendMessageBatch", refuse_one)
    out = fan.schedule(engine, remaining=lambda: 900.0)
    assert refused and not out["unsent"]
    bodies = [json.loads(m["body"])["id"] for m in drain(fanout)]
    assert set(bodies) == set(keys)      # the refused entry was sent again (SQS kept the first
    # copy too in moto, since the refusal is faked after the call: duplicates are harmless)


def test_worker_repairs_and_reports_only_retryable_failures(api, fanout, monkeypatch):
    make_cluster("drifted")
    make_role("KarpenterController-drifted")
    assert api.http.post("/clusters", body=json.dumps({"cluster_name": "drifted"}),
                         headers={"Content-Type": "application/json"}).status_code == 201
    names = drive.describe(service_app._kit, drive.identity(service_app._kit, "drifted")).names
    rule = names.get("rule") or sorted(names["rules"].values())[0]
    boto3.client("events").remove_targets(Rule=rule, Ids=["KarpenterInterruptionQueueTarget"])
    real = clusters.reconcile

    def flaky(kit, cid, **kw):
        if cid.cluster_name == "throttled":
            raise errors.Throttled("slow down")
        return real(kit, cid, **kw)
    monkeypatch.setattr(clusters, "reconcile", flaky)
    event = api.events.generate_sqs_event([
        json.dumps({"kind": "reconcile", "id": f"{ACCOUNT}/{REGION}/drifted"}),
        "not json",
        json.dumps({"kind": "reconcile", "id": f"{ACCOUNT}/{REGION}/throttled"}),
        json.dumps({"kind": "reconcile", "id": f"{ACCOUNT}/{REGION}/gone"}),
    ], queue_name="kip_sweep-test")
    for i, record in enumerate(event["Records"]):
        record["messageId"] = f"m{i}"
    ids = [r["messageId"] for r in event["Records"]]
    result = api.lambda_.invoke("sweep_worker", event).payload
    assert result == {"batchItemFailures": [{"itemIdentifier": ids[2]}]}
    assert boto3.client("events").list_targets_by_rule(Rule=rule)["Targets"]


def test_worker_hands_back_what_its_time_budget_cannot_reach(api, fanout):
    out = fan.work(service_app._kit, [("m1", json.dumps({"kind": "reconcile",
                                                             "id": f"{ACCOUNT}/{REGION}/x"}))],
                   remaining=lambda: 1.0)
    assert out["failed"] == ["m1"]


def test_a_schedule_skips_its_pass_while_the_last_pass_is_still_queued(api, fanout):
    """A fleet that takes longer than the interval must not pile a second copy of every record
    behind the first: the schedule waits for the queue to drain."""
    keys = seed(service_app._kit, 12)
    assert len(fan.schedule(service_app._kit, remaining=lambda: 900.0)["queued"]) == 12
    behind = api.lambda_.invoke("reconcile_all", SCHEDULED).payload
    assert behind["queued"] == [] and behind["behind"] == [12]
    assert sorted(json.loads(m["body"])["id"] for m in drain(fanout)) == keys
    again = api.lambda_.invoke("reconcile_all", SCHEDULED).payload
    assert sorted(again["queued"]) == keys and again["behind"] == []


def test_the_worker_records_each_reconciled_clusters_consumer_health(api, fanout):
    """Health is read per work item (the schedule's inline health pass stopped at 1,000
    records); a queue nobody reads turns the consumer stale on the record."""
    engine = service_app._kit
    for name in ("quiet", "busy"):
        make_cluster(name)
        make_role(f"KarpenterController-{name}")
        assert api.http.post("/clusters", body=json.dumps({"cluster_name": name}),
                             headers={"Content-Type": "application/json"}).status_code == 201
    busy = drive.describe(engine, drive.identity(engine, "busy"))
    boto3.client("sqs").send_message(QueueUrl=busy.resources.queue.url, MessageBody="{}")
    put_metric(busy.resources.queue.name, "ApproximateAgeOfOldestMessage", 3600.0)
    event = api.events.generate_sqs_event(
        [json.dumps({"kind": "reconcile", "id": f"{ACCOUNT}/{REGION}/{n}"})
         for n in ("quiet", "busy")], queue_name="kip_sweep-test")
    assert api.lambda_.invoke("sweep_worker", event).payload == {"batchItemFailures": []}
    states = {n: drive.describe(engine, drive.identity(engine, n)).health for n in ("quiet", "busy")}
    assert states["busy"].consumer == "stale" and states["busy"].backlog == 1
    assert states["quiet"].consumer in ("idle", "unknown")
    # the schedule no longer runs a health pass of its own in fan-out mode
    assert api.lambda_.invoke("reconcile_all", SCHEDULED).payload["health"] == []


def test_an_up_to_date_work_item_costs_ten_calls_with_its_health(api, fanout):
    """The no-op reconcile's 9 reads, and the health read reuses its queue attributes: one
    GetMetricData more, no second GetQueueAttributes."""

    make_cluster("steady")
    make_role("KarpenterController-steady")
    assert api.http.post("/clusters", body=json.dumps({"cluster_name": "steady"}),
                         headers={"Content-Type": "application/json"}).status_code == 201
    item = json.dumps({"kind": "reconcile", "id": f"{ACCOUNT}/{REGION}/steady"})
    fan.work(service_app._kit, [("m0", item)], lambda: 900.0)    # first health: recorded
    calls = collections.Counter()
    aws.add_hook("before-call.*.*", lambda model=None, **_: calls.update([model.name]))
    out = fan.work(service_app._kit, [("m1", item)], lambda: 900.0)
    assert out["up_to_date"] == [f"{ACCOUNT}/{REGION}/steady"] and out["failed"] == []
    assert sum(calls.values()) <= 10, calls
    assert calls["GetQueueAttributes"] == 2 and calls["GetMetricData"] == 1


def test_a_cluster_whose_repair_fails_still_gets_its_health_read(api, fanout, monkeypatch):
    engine = service_app._kit
    make_cluster("stuck")
    make_role("KarpenterController-stuck")
    assert api.http.post("/clusters", body=json.dumps({"cluster_name": "stuck"}),
                         headers={"Content-Type": "application/json"}).status_code == 201


    def refused(kit, cid, **_):
        raise errors.Forbidden("an SCP denies the repair")
    monkeypatch.setattr(clusters, "reconcile", refused)
    item = json.dumps({"kind": "reconcile", "id": f"{ACCOUNT}/{REGION}/stuck"})
    out = fan.work(engine, [("m0", item)], lambda: 900.0)
    assert [e["code"] for e in out["errors"]] == ["Forbidden"] and out["failed"] == []
    assert out["health"] and drive.describe(engine, drive.identity(engine, "stuck")).health is not None


def test_an_unreadable_queue_depth_never_stops_a_pass(api, fanout):
    keys = seed(service_app._kit, 3)
    Strict("sqs", "GetQueueAttributes", None, "AccessDenied", "not allowed", times=99,
           status=403)
    out = fan.schedule(service_app._kit, remaining=lambda: 900.0)
    assert sorted(out["queued"]) == keys and out["behind"] == []


def test_health_reads_the_recorded_queues_metrics_when_the_naming_has_changed(api, fanout):
    """The worker begins GetMetricData with the queue name the naming scheme gives; a record
    whose recorded queue is another (KIP_PREFIX changed since) is read again for its own."""
    engine = service_app._kit
    make_cluster("renamed")
    make_role("KarpenterController-renamed")
    assert api.http.post("/clusters", body=json.dumps({"cluster_name": "renamed"}),
                         headers={"Content-Type": "application/json"}).status_code == 201
    queue = drive.describe(engine, drive.identity(engine, "renamed")).resources.queue
    boto3.client("sqs").send_message(QueueUrl=queue.url, MessageBody="{}")
    put_metric(queue.name, "ApproximateAgeOfOldestMessage", 3600.0)
    other = make_kit(dataclasses.replace(engine.settings, prefix="other-"))
    assert other.names(drive.identity(other, "renamed")).queue != queue.name
    item = json.dumps({"kind": "reconcile", "id": f"{ACCOUNT}/{REGION}/renamed"})
    out = fan.work(other, [("m0", item)], lambda: 900.0)
    assert out["failed"] == [] and out["errors"] == []
    assert drive.describe(other, drive.identity(other, "renamed")).health.consumer == "stale"
