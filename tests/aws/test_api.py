"""The HTTP API through chalice.test.Client, on moto in-process."""
from __future__ import annotations

import json
import pathlib

import boto3
import pytest
from botocore.exceptions import ClientError
from openapi_spec_validator import validate

import app as service_app
from chalicelib import aws
from chalicelib.aws import registry
from chalicelib.core import naming
from chalicelib.http.openapi import document
from tests.support.world import ACCOUNT, REGION, make_cluster, make_role, portal_inbox


JSON = {"Content-Type": "application/json"}


def post(api, path, body):
    raw = body if isinstance(body, (str, bytes)) else json.dumps(body)
    return api.http.post(path, body=raw, headers=JSON)


def assert_error(resp, status, field=None, code=None):
    assert resp.status_code == status, resp.body
    err = resp.json_body["error"]
    assert set(err) >= {"code", "message"}
    if field is not None:
        assert err["field"] == field, err
    if code is not None:
        assert err["code"] == code, err
    return err


def test_provision_returns_201_then_200_with_karpenter_settings(api, cluster):
    # when
    first = post(api, "/clusters", {"cluster_name": cluster})
    second = post(api, "/clusters", {"cluster_name": cluster})
    # then
    assert first.status_code == 201
    body = first.json_body
    assert body["status"] == "ready" and body["changed"] is True
    assert body["karpenter"]["settings.interruptionQueue"] == "kip-payments-prod"
    assert body["resources"]["queue"]["url"].endswith("/kip-payments-prod")
    assert body["resources"]["attachment"]["attached"] is True
    assert second.status_code == 200
    assert second.json_body["changed"] is False
    assert second.json_body["version"] == body["version"]


def test_dry_run_returns_the_plan_and_creates_nothing(api, cluster):
    # when
    resp = post(api, "/clusters", {"cluster_name": cluster, "dry_run": True})
    # then
    assert resp.status_code == 200
    plan = resp.json_body["plan"]
    assert {a["op"] for a in plan} >= {"create_queue", "put_rule", "put_targets",
                                        "create_policy", "attach_role_policy"}
    assert boto3.client("sqs").list_queues().get("QueueUrls", []) == []
    assert api.http.get(f"/clusters/{cluster}").status_code == 404


@pytest.mark.parametrize("body,field", [
    ("{not json", "body"),
    ("[1, 2]", "body"),
    ("", "body"),
    ({"cluster_name": "ok", "surprise": 1}, "surprise"),
    ({"cluster_name": None}, "cluster_name"),
    ({"cluster_name": 5}, "cluster_name"),
    ({"cluster_name": "a" * 101}, "cluster_name"),
    ({"cluster_name": "bad*name"}, "cluster_name"),
    ({"cluster_name": "../etc"}, "cluster_name"),
    ({"cluster_name": "has space"}, "cluster_name"),
    ({"cluster_name": "ünïcode"}, "cluster_name"),
    ({"cluster_name": "ctl\u0001"}, "cluster_name"),
    ({"cluster_name": "ok", "account_id": "12"}, "account_id"),
    ({"cluster_name": "ok", "region": "mars-1"}, "region"),
    ({"cluster_name": "ok", "message_retention_seconds": -1}, "message_retention_seconds"),
    ({"cluster_name": "ok", "message_retention_seconds": 10 ** 12}, "message_retention_seconds"),
    ({"cluster_name": "ok", "visibility_timeout_seconds": "300"}, "visibility_timeout_seconds"),
    ({"cluster_name": "ok", "max_receive_count": True}, "max_receive_count"),
    ({"cluster_name": "ok", "event_kinds": ["rebalance_recommendation"]}, "event_kinds"),
    ({"cluster_name": "ok", "event_kinds": ["nope"]}, "event_kinds.0"),
    ({"cluster_name": "ok", "kms_key_id": "alias/aws/sqs"}, "kms_key_id"),
    ({"cluster_name": "ok", "tags": {"aws:x": "y"}}, "tags"),
    ({"cluster_name": "ok", "dry_run": "yes"}, "dry_run"),
    ({"cluster_name": "ok", "controller_role": "arn:aws:iam::999999999999:role/KarpenterController-ok"},
     "controller_role"),
    ({"cluster_name": "ok", "controller_role": "arn:aws-cn:iam::123456789012:role/KarpenterController-ok"},
     "controller_role"),
])
def test_bad_input_is_a_400_naming_the_field(api, moto_env, body, field):
    # when
    resp = post(api, "/clusters", body)
    # then
    err = assert_error(resp, 400, field=field, code="ValidationError")
    assert err.get("allowed")


def test_oversize_body_is_refused(api, moto_env):
    resp = post(api, "/clusters", json.dumps({"cluster_name": "ok", "tags": {"k": "v" * (1 << 20)}}))
    assert_error(resp, 400, field="body")


def test_role_outside_the_allowed_pattern_is_403_and_creates_nothing(api, cluster):
    make_role("SomeAdminRole")
    resp = post(api, "/clusters", {"cluster_name": cluster, "controller_role": "SomeAdminRole"})
    assert_error(resp, 403, field="controller_role")
    assert boto3.client("sqs").list_queues().get("QueueUrls", []) == []


def test_unknown_eks_cluster_is_404(api, moto_env):
    assert_error(post(api, "/clusters", {"cluster_name": "ghost"}), 404, code="ClusterNotFound")


def test_untagged_same_named_queue_is_409_and_untouched(api, cluster):
    # given a queue made by someone else (say Terraform)
    sqs = boto3.client("sqs")
    url = sqs.create_queue(QueueName="kip-payments-prod", Attributes={"VisibilityTimeout": "42"})["QueueUrl"]
    # when
    resp = post(api, "/clusters", {"cluster_name": cluster})
    # then
    err = assert_error(resp, 409, code="ResourceNotOwned")
    assert err["resource"] == "kip-payments-prod"
    assert sqs.get_queue_attributes(QueueUrl=url, AttributeNames=["VisibilityTimeout"])[
        "Attributes"]["VisibilityTimeout"] == "42"
    assert boto3.client("events").list_rules(NamePrefix="kip-")["Rules"] == []


def test_a_run_in_progress_is_409(api, cluster, moto_env):
    # given another run holds the lease
    reg = registry.Registry(aws.Store(moto_env), moto_env)
    cid = naming.ClusterId(ACCOUNT, REGION, cluster)
    reg.acquire(cid, "someone-else", None, {"status": "provisioning"})
    # when
    resp = post(api, "/clusters", {"cluster_name": cluster})
    # then
    assert_error(resp, 409, code="ProvisioningInProgress")
    assert int(resp.headers["Retry-After"]) >= 1


def test_throttling_past_the_retries_is_503_with_retry_after(api, cluster):


    def throttle(model, **kw):
        if model.name == "CreateQueue":
            raise ClientError({"Error": {"Code": "ThrottlingException", "Message": "slow down"}},
                              model.name)
    aws.add_hook("before-call.sqs.CreateQueue", throttle)
    resp = post(api, "/clusters", {"cluster_name": cluster})
    err = assert_error(resp, 503, code="Throttled")
    assert resp.headers["Retry-After"] == "5"
    assert "sqs:CreateQueue" in err["step"]
    # and the record says what failed
    rec = api.http.get(f"/clusters/{cluster}").json_body
    assert rec["status"] == "failed" and rec["last_error"]["call"] == "create_queue"


def test_list_paginates_and_filters_by_status(api, moto_env):
    for name in ("c1", "c2", "c3"):
        make_cluster(name)
        make_role(f"KarpenterController-{name}")
    make_cluster("c4")              # a role named but not there yet: waiting_for_role
    for name in ("c1", "c2", "c3"):
        assert post(api, "/clusters", {"cluster_name": name}).status_code == 201
    assert post(api, "/clusters", {"cluster_name": "c4",
                                   "controller_role": "KarpenterController-c4"}).status_code == 201
    # when
    page1 = api.http.get("/clusters?limit=2").json_body
    page2 = api.http.get(f"/clusters?limit=2&next_token={page1['next_token']}").json_body
    waiting = api.http.get("/clusters?status=waiting_for_role").json_body
    # then
    names = [r["cluster_name"] for r in page1["items"] + page2["items"]]
    assert sorted(names) == ["c1", "c2", "c3", "c4"]
    assert [r["cluster_name"] for r in waiting["items"]] == ["c4"]
    assert_error(api.http.get("/clusters?limit=0"), 400, field="limit")
    assert_error(api.http.get("/clusters?status=bogus"), 400, field="status")
    assert_error(api.http.get("/clusters?next_token=%%%"), 400, field="next_token")
    assert_error(api.http.get("/clusters?nope=1"), 400, field="nope")


def test_post_and_reconcile_accept_if_match_and_refuse_a_stale_one(api, cluster):
    post(api, "/clusters", {"cluster_name": cluster})
    etag = api.http.get(f"/clusters/{cluster}").headers["ETag"]
    stale = {"If-Match": '"1"', "Content-Type": "application/json"}
    # a change made against an older version of the record: 412, nothing changed
    assert_error(api.http.post("/clusters", headers=stale, body=json.dumps(
        {"cluster_name": cluster, "tags": {"team": "x"}})), 412, field="If-Match")
    assert_error(api.http.post(f"/clusters/{cluster}/reconcile", headers=stale), 412,
                 field="If-Match")
    assert api.http.get(f"/clusters/{cluster}").headers["ETag"] == etag
    # the current ETag passes
    current = {"If-Match": etag, "Content-Type": "application/json"}
    assert api.http.post(f"/clusters/{cluster}/reconcile", headers=current).status_code == 200
    changed = api.http.post("/clusters", headers=current, body=json.dumps(
        {"cluster_name": cluster, "tags": {"team": "x"}}))
    assert changed.status_code == 201 and changed.headers["ETag"] != etag


def test_get_and_delete(api, cluster):
    post(api, "/clusters", {"cluster_name": cluster})
    got = api.http.get(f"/clusters/{cluster}")
    assert got.status_code == 200 and got.json_body["status"] == "ready"
    assert "lease_owner" not in got.json_body
    etag = got.headers["ETag"]
    assert etag == f'"{got.json_body["version"]}"'
    # DELETE is conditional: without If-Match 428, with a stale ETag 412; nothing removed
    assert_error(api.http.delete(f"/clusters/{cluster}"), 428, field="If-Match")
    stale = f'"{got.json_body["version"] - 1}"'
    assert_error(api.http.delete(f"/clusters/{cluster}", headers={"If-Match": stale}), 412,
                 field="If-Match")
    assert_error(api.http.delete(f"/clusters/{cluster}", headers={"If-Match": "7"}), 400,
                 field="If-Match")
    assert api.http.get(f"/clusters/{cluster}").json_body["status"] == "ready"
    deleted = api.http.delete(f"/clusters/{cluster}", headers={"If-Match": etag})
    assert deleted.status_code == 200
    assert {r["call"] for r in deleted.json_body["removed"]} >= {
        "delete_queue", "delete_rule", "delete_policy", "detach_role_policy"}
    assert_error(api.http.get(f"/clusters/{cluster}"), 404)
    assert_error(api.http.delete(f"/clusters/{cluster}", headers={"If-Match": etag}), 404)
    assert_error(api.http.get("/clusters/bad*name"), 400, field="cluster_name")
    assert_error(api.http.get(f"/clusters/{cluster}?account_id=1"), 400, field="account_id")


def test_reconcile_reports_then_repairs_a_deleted_rule(api, cluster):
    post(api, "/clusters", {"cluster_name": cluster})
    events = boto3.client("events")
    events.remove_targets(Rule="kip-payments-prod-events", Ids=["KarpenterInterruptionQueueTarget"])
    events.delete_rule(Name="kip-payments-prod-events")
    # when
    report = post(api, f"/clusters/{cluster}/reconcile", {"dry_run": True}).json_body
    # then nothing changed yet
    assert report["in_sync"] is False and report["repaired"] is False
    assert {(a["op"], a["name"]) for a in report["differences"]} == {
        ("put_rule", "kip-payments-prod-events"), ("put_targets", "kip-payments-prod-events")}
    assert not [r for r in events.list_rules(NamePrefix="kip-payments-prod-events")["Rules"]]
    # when repaired
    fixed = post(api, f"/clusters/{cluster}/reconcile", "").json_body
    assert fixed["repaired"] is True
    assert events.list_targets_by_rule(Rule="kip-payments-prod-events")["Targets"][0]["Id"] == \
        "KarpenterInterruptionQueueTarget"
    again = post(api, f"/clusters/{cluster}/reconcile", "").json_body
    assert again["in_sync"] is True
    assert_error(post(api, f"/clusters/{cluster}/reconcile", {"force": 1}), 400, field="force")
    assert_error(post(api, "/clusters/unknown/reconcile", ""), 404)


def test_openapi_is_valid_and_matches_the_routes(api):

    doc = api.http.get("/openapi.json").json_body
    validate(doc)
    documented = {(path, method.upper()) for path, ops in doc["paths"].items() for method in ops}
    routed = {(path, method) for path, entries in service_app.app.routes.items()
              for method in entries}
    assert documented == routed
    for path, ops in doc["paths"].items():
        for method, op in ops.items():
            if path != "/openapi.json":
                assert "400" in op["responses"] or method == "get" and path == "/openapi.json"


def test_status_events_reach_the_portal_bus(api_with, cluster):
    # given a portal bus with a rule forwarding our status events to a queue
    sqs = boto3.client("sqs")
    url = portal_inbox()
    client = api_with(status_bus="kip-portal")
    assert post(client, "/clusters", {"cluster_name": cluster}).status_code == 201
    assert client.http.delete(f"/clusters/{cluster}",
                              headers={"If-Match": "*"}).status_code == 200
    msgs = sqs.receive_message(QueueUrl=url, MaxNumberOfMessages=10)["Messages"]
    details = [json.loads(m["Body"]) for m in msgs]
    assert {d["detail-type"] for d in details} == {"Interruption Handling Status Changed"}
    assert [d["detail"]["status"] for d in details] == ["ready", "deleted"]


def test_the_committed_openapi_copy_for_the_portal_is_current():

    committed = json.loads((pathlib.Path(__file__).parents[2] / "docs" / "openapi.json").read_text())
    assert committed == document(), "regenerate docs/openapi.json (see README)"
