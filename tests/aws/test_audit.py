"""The audit trail (GET /clusters/{name}/history) and the actor carried into member accounts as
STS SourceIdentity: every write, by every path, names who caused it; the trail outlives the
cluster's record."""
from __future__ import annotations

import pytest

from chalicelib import aws
from chalicelib.aws import clients
from chalicelib.core import actor
from tests.support.world import OTHER_ACCOUNT as SAMPLE_ACCOUNT, REGION, make_cluster_in, sample
from tests.support.events import eks_event

SAMPLE_ACTOR = "arn:aws:sts::111122223333:assumed-role/platform-admin/platform-bot"


@pytest.fixture
def assumed(api):
    """The parameters of every AssumeRole kip sends: a before-call hook reads the serialized
    request body (the query parameters STS receives)."""
    seen: list[dict] = []
    aws.add_hook("before-call.sts.AssumeRole",
                 lambda params, **_: seen.append(dict(params["body"])))
    return seen


def history(client, name: str, **query) -> dict:
    qs = "&".join(f"{k}={v}" for k, v in {"account_id": SAMPLE_ACCOUNT, **query}.items())
    answer = client.http.get(f"/clusters/{name}/history?{qs}")
    assert answer.status_code == 200, answer.body
    return answer.json_body


def test_history_survives_teardown_and_names_the_actor_of_each_path(api, assumed):
    # given a cluster in a member account, wired by the CreateCluster trigger
    sess = make_cluster_in(SAMPLE_ACCOUNT, REGION, "payments-prod")
    assert api.lambda_.invoke("on_eks_event",
                              sample("cloudtrail-eks-create-cluster.json")).payload["status"] \
        == "ready"
    # and drift the sweep repairs (its rule deleted behind kip's back)
    events = sess.client("events")
    rule = events.list_rules(NamePrefix="kip-")["Rules"][0]["Name"]
    ids = [t["Id"] for t in events.list_targets_by_rule(Rule=rule)["Targets"]]
    events.remove_targets(Rule=rule, Ids=ids)
    events.delete_rule(Name=rule)
    swept = api.lambda_.invoke("reconcile_all", api.events.generate_cw_event(
        source="aws.events", detail_type="Scheduled Event", detail={}, resources=[])).payload
    assert swept["repaired"], swept
    # when EKS deletes the cluster and the trigger tears the wiring down
    sess.client("eks").delete_cluster(name="payments-prod")
    out = api.lambda_.invoke("on_eks_event", eks_event("DeleteCluster", "payments-prod",
                                                       SAMPLE_ACCOUNT, REGION)).payload
    assert out["deleted"]
    # then the record is gone, but its history is still there, newest first
    assert api.http.get(f"/clusters/payments-prod?account_id={SAMPLE_ACCOUNT}").status_code \
        == 404
    items = history(api, "payments-prod")["items"]
    assert [(i["action"], i["source"], i["actor"], i["outcome"]) for i in items] == [
        ("teardown", "trigger", SAMPLE_ACTOR, "deleted"),
        ("reconcile", "sweep", "kip", "ready"),
        ("provision", "trigger", SAMPLE_ACTOR, "ready")]
    assert any(r.startswith("rule:") for r in items[1]["resources"])   # what the sweep redid
    assert any(r.startswith("queue:") for r in items[0]["resources"])
    assert all(set(i) == {"at", "actor", "source", "action", "outcome", "resources"}
               for i in items)
    # and pages of records never show the audit item
    assert api.http.get("/clusters").json_body["items"] == []
    # and each session into the member account carried its actor and path
    assert {(p["SourceIdentity"], p["RoleSessionName"]) for p in assumed} == {
        ("platform-admin@platform-bot", "kip-trigger"), ("kip", "kip-sweep")}


def test_history_pages_newest_first_with_a_stable_token(api, engine):
    from chalicelib.core import naming
    from chalicelib.usecases import audit
    cid = naming.ClusterId(SAMPLE_ACCOUNT, REGION, "c1")
    for n in range(5):
        with actor.acting(f"user-{n}", "api"):
            audit.record(engine, cid, "provision", "ready", [f"queue:q{n}"])
    first, token = audit.history(engine, cid, limit=2)
    with actor.acting("late", "api"):       # appended between pages: the next page stays put
        audit.record(engine, cid, "reconcile", "ready")
    second, token2 = audit.history(engine, cid, limit=2, next_token=token)
    third, end = audit.history(engine, cid, limit=2, next_token=token2)
    assert [i["actor"] for i in first + second + third] == [f"user-{n}" for n in (4, 3, 2, 1, 0)]
    assert end is None


def test_the_log_keeps_the_newest_entries_only(engine, monkeypatch):
    from chalicelib.core import naming
    from chalicelib.usecases import audit
    monkeypatch.setattr(audit, "KEEP", 3)
    cid = naming.ClusterId(SAMPLE_ACCOUNT, REGION, "c1")
    for n in range(5):
        with actor.acting(f"user-{n}", "sweep"):
            audit.record(engine, cid, "reconcile", "ready")
    items, token = audit.history(engine, cid, limit=10)
    assert [i["actor"] for i in items] == ["user-4", "user-3", "user-2"] and token is None
    stored = engine.registry.store.get(audit.key(cid))
    assert "cluster_name" not in stored and stored["expires_at"] > engine.clock() + 399 * 86400


def test_source_identity_from_an_actor():
    assert actor.Actor("arn:aws:iam::111122223333:user/ops/alice", "api").source_identity \
        == "alice"
    assert actor.Actor("user:default/alice", "api").source_identity == "user.default.alice"
    assert actor.Actor("kip", "sweep").source_identity == "kip"
    assert actor.Actor("", "sweep").source_identity == "kip.sweep"
    assert actor.Actor("x" * 100, "api").source_identity == "x" * 64
    assert actor.Actor("kip", "sweep").session_name == "kip-sweep"


def test_sessions_per_actor_are_bounded(api, assumed, monkeypatch):
    # given a member account and a cap of two cached sessions
    monkeypatch.setattr(clients, "MAX_SESSIONS", 2)
    import app as service_app
    settings = service_app.kit().settings
    # when three actors each reach the account, and the first comes back
    for who in ("alice", "bob", "carol", "alice"):
        with actor.acting(who, "api"):
            aws.client("sqs", SAMPLE_ACCOUNT, REGION, settings)
    # then at most two sessions are kept, and alice (evicted) assumed the role again
    assert len(clients._state["sessions"]) == 2
    assert [p["SourceIdentity"] for p in assumed] == ["alice", "bob", "carol", "alice"]


def test_drift_repair_names_the_caller_whose_change_it_undid(api):
    from tests.support.events import HUMAN, cloudtrail, rule_of
    from tests.support.world import ACCOUNT, make_cluster, make_role
    import boto3
    import json
    # given a cluster provisioned through the API (the local stage: no caller)
    make_cluster("payments-prod")
    make_role("KarpenterController-payments-prod")
    made = api.http.post("/clusters", body=json.dumps({"cluster_name": "payments-prod"}),
                         headers={"Content-Type": "application/json"})
    assert made.status_code == 201
    # when someone deletes its rule and CloudTrail's DeleteRule event reaches kip
    events, rule = boto3.client("events"), rule_of(made.json_body["names"])
    events.remove_targets(Rule=rule, Ids=["KarpenterInterruptionQueueTarget"])
    events.delete_rule(Name=rule)
    assert api.lambda_.invoke("on_drift_event", cloudtrail(
        "events", "DeleteRule", {"name": rule})).payload.get("repaired")
    # then the trail says who drifted it, and that the API provisioned it first
    items = history(api, "payments-prod", account_id=ACCOUNT)["items"]
    assert [(i["action"], i["source"], i["actor"]) for i in items] == [
        ("reconcile", "drift", HUMAN), ("provision", "api", "kip")]
    assert f"rule:{rule}" in items[0]["resources"]
