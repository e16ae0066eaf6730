"""Organization reach, hub side: the account allow-list (KIP_ALLOWED_ACCOUNTS / KIP_ORG_ID),
POST /backfill across the account-regions of a member account reached through STS, the sweep's
adoption of configured account-regions, and EKS Auto Mode clusters (refused, skipped)."""
from __future__ import annotations

import json
import os
import subprocess
import sys

import boto3
import pytest

from chalicelib import aws, errors
from chalicelib.aws import worklist
from chalicelib.http.openapi import BackfillResult
from chalicelib.usecases import fanout
from tests.support import drive
from tests.support.events import eks_event
from tests.support.world import auto_mode, portal_inbox
from tests.support.faults import Strict
from tests.support.world import (ACCOUNT, OTHER_ACCOUNT, REGION, ROOT, make_cluster,
                                 make_cluster_in, make_role, other_account_session, sample)


MEMBER = "210987654321"
OTHER_REGION = "us-west-2"
JSON = {"Content-Type": "application/json"}
def queues(sess: boto3.session.Session) -> list[str]:
    """The interruption queues (not their dead-letter queues) in that account-region."""
    names = [u.rsplit("/", 1)[-1] for u in sess.client("sqs").list_queues(
        QueueNamePrefix="kip-").get("QueueUrls", [])]
    return sorted(n for n in names if not n.endswith("dlq"))


def post(client, path, body):
    return client.http.post(path, headers=JSON, body=json.dumps(body))


# ----------------------------------------------------------------------------- backfill

def test_backfill_dry_run_then_real_run_across_two_regions_of_a_member_account(api_with):
    client = api_with(allowed_accounts=frozenset({MEMBER}))
    # given a member account with clusters in two regions, one opted out, one already managed
    west = make_cluster_in(MEMBER, REGION, "shop")
    make_cluster_in(MEMBER, REGION, "private", tags={"kip.io/opt-out": "true"})
    oregon = make_cluster_in(MEMBER, OTHER_REGION, "search")
    make_cluster_in(MEMBER, OTHER_REGION, "known")
    assert post(client, "/clusters", {"cluster_name": "known", "account_id": MEMBER,
                                      "region": OTHER_REGION}).status_code == 201
    body = {"accounts": [MEMBER], "regions": [REGION, OTHER_REGION]}
    # when: a dry run
    dry = post(client, "/backfill", {**body, "dry_run": True})
    # then it shows what would be done and changes nothing
    assert dry.status_code == 200, dry.body
    BackfillResult.model_validate(dry.json_body)
    got = {c["cluster_name"]: c for c in dry.json_body["clusters"]}
    assert {n: c["outcome"] for n, c in got.items()} == {
        "shop": "would_provision", "private": "opted_out", "search": "would_provision",
        "known": "already_managed"}
    assert any(step.startswith("create_queue kip-shop") for step in got["shop"]["plan"])
    assert queues(west) == [] and queues(oregon) == ["kip-known"]
    assert client.http.get(f"/clusters/shop?account_id={MEMBER}").status_code == 404
    # when: the real run
    real = post(client, "/backfill", body)
    # then both regions' clusters are provisioned in the member account, nothing in ours
    assert real.status_code == 200, real.body
    BackfillResult.model_validate(real.json_body)
    assert real.json_body["counts"] == {"provisioned": 2, "opted_out": 1, "already_managed": 1}
    assert queues(west) == ["kip-shop"] and queues(oregon) == ["kip-known", "kip-search"]
    assert boto3.client("sqs").list_queues().get("QueueUrls", []) == []
    rec = client.http.get(f"/clusters/search?account_id={MEMBER}&region={OTHER_REGION}").json_body
    assert rec["source"] == "backfill" and rec["status"] == "ready"
    # and again: every cluster is already managed (or still opted out)
    again = post(client, "/backfill", body).json_body
    assert again["counts"] == {"already_managed": 3, "opted_out": 1}


def test_backfill_reports_an_account_region_it_cannot_list_and_goes_on(api_with):
    client = api_with()
    make_cluster_in(MEMBER, REGION, "shop")
    Strict("eks", "ListClusters", "rest-json", "AccessDeniedException", "no role", times=1)
    out = post(client, "/backfill", {"accounts": [MEMBER], "regions": [REGION]}).json_body
    assert out["clusters"] == []
    assert out["errors"][0]["code"] == "AwsCallFailed" and out["errors"][0]["region"] == REGION


@pytest.mark.parametrize("body,field", [
    ({"accounts": [MEMBER], "regions": [REGION], "extra": 1}, "extra"),
    ({"accounts": [], "regions": [REGION]}, "accounts"),
    ({"accounts": [str(100000000000 + i) for i in range(51)], "regions": [REGION]}, "accounts"),
    ({"accounts": [MEMBER, MEMBER], "regions": [REGION]}, "accounts"),
    ({"accounts": ["12345"], "regions": [REGION]}, "accounts.0"),
    ({"accounts": [MEMBER], "regions": ["cn-north-1"]}, "regions"),
    ({"accounts": [MEMBER], "regions": ["eu-west-1"] * 2}, "regions"),
    ({"accounts": [MEMBER]}, "regions"),
    ({"accounts": [MEMBER], "regions": [REGION], "dry_run": "yes"}, "dry_run"),
])
def test_backfill_bad_input_is_400_naming_the_field_before_any_write(api_with, body, field):
    client = api_with()
    make_cluster_in(MEMBER, REGION, "shop")
    resp = post(client, "/backfill", body)
    assert resp.status_code == 400, resp.body
    assert resp.json_body["error"]["field"] == field
    assert queues(other_account_session(MEMBER, REGION)) == []


def test_sweep_adopts_clusters_of_configured_account_regions(kit_factory):
    make_cluster("legacy")
    make_role("KarpenterController-legacy")
    west = make_cluster_in(MEMBER, REGION, "shop")
    oregon = make_cluster_in(MEMBER, OTHER_REGION, "search")
    engine = kit_factory(adopt_existing=True,
                         allowed_accounts=frozenset({MEMBER}),
                         adopt_regions=(REGION, OTHER_REGION))
    summary = drive.sweep(engine)
    assert sorted(summary["adopted"]) == [f"{ACCOUNT}/{REGION}/legacy", f"{MEMBER}/{REGION}/shop",
                                          f"{MEMBER}/{OTHER_REGION}/search"]
    assert summary["errors"] == []
    assert "kip-shop" in queues(west) and "kip-search" in queues(oregon)
    again = drive.sweep(engine)
    assert again["adopted"] == [] and len(again["up_to_date"]) == 3


# ----------------------------------------------------------------------------- EKS Auto Mode

def test_auto_mode_cluster_is_409_and_skipped_by_trigger_and_backfill(api_with):
    client = api_with()
    make_cluster("auto")
    make_role("KarpenterController-auto")
    auto_mode("auto")
    # POST /clusters: 409, nothing created
    resp = post(client, "/clusters", {"cluster_name": "auto"})
    assert resp.status_code == 409, resp.body
    err = resp.json_body["error"]
    assert err["code"] == "AutoModeCluster" and "handles Spot interruptions itself" in \
        err["message"]
    assert boto3.client("sqs").list_queues().get("QueueUrls", []) == []
    assert client.http.get("/clusters/auto").status_code == 404
    # the trigger skips it, with that reason, and does not ask Lambda to retry
    event = sample("cloudtrail-eks-create-cluster.json")
    event["account"] = event["detail"]["recipientAccountId"] = ACCOUNT
    event["detail"]["requestParameters"]["name"] = "auto"
    out = client.lambda_.invoke("on_eks_event", event).payload
    assert out["ignored"] == "AutoModeCluster" and "Auto Mode" in out["message"]
    # backfill skips it as auto_mode (a dry run and a real run)
    for dry_run in (True, False):
        got = post(client, "/backfill", {"accounts": [ACCOUNT], "regions": [REGION],
                                         "dry_run": dry_run}).json_body
        assert [(c["cluster_name"], c["outcome"]) for c in got["clusters"]] == [
            ("auto", "auto_mode")]
        assert "Auto Mode" in got["clusters"][0]["reason"]
    assert boto3.client("sqs").list_queues().get("QueueUrls", []) == []


def test_a_managed_cluster_that_turns_on_auto_mode_has_kips_wiring_retired(api_with):
    """Auto Mode switched on after kip took the cluster (its UpdateClusterConfig event missed):
    Auto Mode handles interruptions itself, so the sweep retires kip's wiring through the same
    verified, budgeted teardown, and the record says handler auto-mode."""
    client = api_with()
    make_cluster("moving")
    make_role("KarpenterController-moving")
    assert post(client, "/clusters", {"cluster_name": "moving"}).status_code == 201
    auto_mode("moving")
    swept = client.lambda_.invoke("reconcile_all", {
        "version": "0", "id": "x", "detail-type": "Scheduled Event", "source": "aws.events",
        "account": ACCOUNT, "time": "2026-11-20T10:00:00Z", "region": REGION, "resources": [],
        "detail": {}}).payload
    assert swept["errors"] == []
    assert swept["auto_mode"][0]["cluster"] == f"{ACCOUNT}/{REGION}/moving"
    record = client.http.get("/clusters/moving").json_body
    assert record["handler"] == "auto-mode" and record["status"] == "external"
    assert queues(boto3.session.Session()) == []


def test_an_update_cluster_config_turning_auto_mode_on_retires_kips_wiring(api_with):
    client = api_with(status_bus="kip-portal")
    for name in ("moving", "staying"):
        make_cluster(name)
        make_role(f"KarpenterController-{name}")
        assert post(client, "/clusters", {"cluster_name": name}).status_code == 201
    inbox = portal_inbox()
    auto_mode("moving")
    event = eks_event("CreateCluster", "moving", ACCOUNT, REGION)
    event["detail"].update(eventName="UpdateClusterConfig", requestParameters={
        "name": "moving", "computeConfig": {"enabled": True}})
    out = client.lambda_.invoke("on_eks_event", event).payload
    assert out["deleted"] == f"{ACCOUNT}/{REGION}/moving" and out["handler"] == "auto-mode"
    seen = [json.loads(m["Body"])["detail"] for m in boto3.client("sqs").receive_message(
        QueueUrl=inbox, MaxNumberOfMessages=10)["Messages"]]
    assert [(d["status"], d["handler"], d["previous_handler"], d.get("change")) for d in seen] \
        == [("deleted", None, "kip", None), ("external", "auto-mode", "kip", "handler_changed")]
    # a config change that is not Auto Mode, or one EKS does not confirm, changes nothing
    for name, body in (("staying", {"name": "staying", "logging": {}}),
                       ("staying", {"name": "staying", "computeConfig": {"enabled": True}})):
        event["detail"]["requestParameters"] = body
        assert "ignored" in client.lambda_.invoke("on_eks_event", event).payload
    assert queues(boto3.session.Session()) == ["kip-staying"]


def test_describe_cluster_reads_compute_config(moto_env):
    make_cluster("auto")
    make_cluster("classic")
    auto_mode("auto")
    target = aws.Target(ACCOUNT, REGION, moto_env)
    assert target.describe_cluster("auto").auto_mode is True
    assert target.describe_cluster("classic").auto_mode is False


# ----------------------------------------------------------------------------- allow-list

def test_event_from_a_non_allowed_account_is_refused_and_not_retried(api_with):
    client = api_with(allowed_accounts=frozenset({MEMBER}))
    sess = other_account_session(OTHER_ACCOUNT, REGION)
    make_cluster_in(OTHER_ACCOUNT, REGION, "payments-prod")
    # when the trigger gets CreateCluster from an account outside the list
    out = client.lambda_.invoke("on_eks_event", sample("cloudtrail-eks-create-cluster.json"))
    # then it returns (Lambda does not retry) saying why, and creates nothing
    assert out.payload["ignored"] == "Forbidden", out.payload
    assert OTHER_ACCOUNT in out.payload["message"]
    assert queues(sess) == []
    delete = client.lambda_.invoke("on_eks_event", sample("cloudtrail-eks-delete-cluster.json"))
    assert delete.payload["ignored"] == "Forbidden"


@pytest.mark.parametrize("method,path,body", [
    ("post", "/clusters", {"cluster_name": "payments-prod", "account_id": OTHER_ACCOUNT}),
    ("get", f"/clusters/payments-prod?account_id={OTHER_ACCOUNT}", None),
    ("delete", f"/clusters/payments-prod?account_id={OTHER_ACCOUNT}", None),
    ("post", f"/clusters/payments-prod/reconcile?account_id={OTHER_ACCOUNT}", None),
    ("post", "/backfill", {"accounts": [MEMBER, OTHER_ACCOUNT], "regions": [REGION]}),
])
def test_api_request_naming_a_non_allowed_account_is_403(api_with, method, path, body):
    client = api_with(allowed_accounts=frozenset({MEMBER}))
    sess = other_account_session(OTHER_ACCOUNT, REGION)
    make_cluster_in(OTHER_ACCOUNT, REGION, "payments-prod")
    kw = {"headers": JSON, "body": json.dumps(body)} if body is not None else {}
    resp = getattr(client.http, method)(path, **kw)
    assert resp.status_code == 403, resp.body
    err = resp.json_body["error"]
    assert err["code"] == "Forbidden" and OTHER_ACCOUNT in err["message"]
    assert err["field"] == ("accounts" if path == "/backfill" else "account_id")
    assert queues(sess) == [] and queues(other_account_session(MEMBER, REGION)) == []


def test_own_account_is_always_allowed(api_with, cluster):
    client = api_with(allowed_accounts=frozenset({MEMBER}))
    assert post(client, "/clusters", {"cluster_name": cluster}).status_code == 201
    assert post(client, "/clusters", {"cluster_name": cluster,
                                      "account_id": ACCOUNT}).status_code == 200


def test_org_id_membership_is_checked_with_describe_account_and_cached(kit_factory):
    orgs = boto3.client("organizations")
    org = orgs.create_organization(FeatureSet="ALL")["Organization"]["Id"]
    member = orgs.create_account(Email="m@example.com",
                                 AccountName="m")["CreateAccountStatus"]["AccountId"]
    calls = []
    aws.add_hook("before-parameter-build.organizations.DescribeAccount",
                 lambda params, **_: calls.append(params["AccountId"]))
    engine = kit_factory(org_id=org)
    # a member of the organization is allowed; asked once per process
    for _ in range(3):
        assert drive.identity(engine, "shop", member).account_id == member
    assert calls == [member]
    # an account outside it is refused, naming the account and the field
    with pytest.raises(errors.Forbidden) as exc:
        drive.identity(engine, "shop", "999999999999")
    assert exc.value.field == "account_id" and "999999999999" in exc.value.message
    # the own account and listed accounts never need Organizations
    listed = kit_factory(org_id=org,
                         allowed_accounts=frozenset({MEMBER}))
    drive.identity(listed, "shop")
    drive.identity(listed, "shop", MEMBER)
    assert calls == [member, "999999999999"]


def _org_with_member() -> tuple[str, str]:
    orgs = boto3.client("organizations")
    org = orgs.create_organization(FeatureSet="ALL")["Organization"]["Id"]
    member = orgs.create_account(Email="m@example.com",
                                 AccountName="m")["CreateAccountStatus"]["AccountId"]
    return org, member


def test_with_only_an_org_id_the_sweep_discovers_accounts_with_list_accounts(kit_factory):
    """KIP_ORG_ID without KIP_ALLOWED_ACCOUNTS: adoption covers the organization's ACTIVE
    accounts, read as AWS answers since 2026-09-09 (``State``; ``Status`` retired, while moto
    still sends only ``Status``). A suspended account is left out; the listing fills the
    membership cache, so no DescribeAccount follows."""
    org, member = _org_with_member()
    make_cluster_in(member, REGION, "shop")

    def as_aws_answers(parsed, **_):
        for account in parsed.get("Accounts", []):
            account["State"] = account.pop("Status", "ACTIVE")
        parsed["Accounts"].append({"Id": "555555555555", "State": "SUSPENDED",
                                   "Arn": f"arn:aws:organizations::{ACCOUNT}:account/{org}/"
                                          "555555555555"})
    aws.add_hook("after-call.organizations.ListAccounts", as_aws_answers)
    described = []
    aws.add_hook("before-parameter-build.organizations.DescribeAccount",
                 lambda params, **_: described.append(params["AccountId"]))
    engine = kit_factory(adopt_existing=True, org_id=org)
    assert engine.org.member_accounts() == sorted([ACCOUNT, member])
    summary = drive.sweep(engine)
    assert summary["adopted"] == [f"{member}/{REGION}/shop"] and summary["errors"] == []
    assert "kip-shop" in queues(other_account_session(member, REGION)) and described == []


def test_a_refused_list_accounts_is_a_sweep_error_that_says_where_kip_must_run(kit_factory):
    org, member = _org_with_member()
    make_cluster_in(member, REGION, "shop")
    make_cluster("own")
    make_role("KarpenterController-own")
    Strict("organizations", "ListAccounts", "json", "AccessDeniedException",
           "not the management account", times=99)
    engine = kit_factory(adopt_existing=True, org_id=org)
    summary = drive.sweep(engine)
    assert [e["code"] for e in summary["errors"]] == ["Forbidden"]
    assert "delegated administrator" in summary["errors"][0]["message"]
    assert queues(other_account_session(member, REGION)) == []
    # kip's own account is still adopted
    assert summary["adopted"] == [f"{ACCOUNT}/{REGION}/own"]


def test_the_fan_out_schedule_adopts_across_the_organizations_accounts(kit_factory, moto_env):
    """Deployed stages sweep by fan-out: the schedule queues one adopt item per cluster without
    a record in every account-region of the adoption, not only kip's own."""
    org, member = _org_with_member()
    make_cluster_in(member, REGION, "shop")
    make_cluster_in(member, OTHER_REGION, "search")
    make_cluster("own")
    make_role("KarpenterController-own")
    url = worklist.create_work_queue(moto_env, "kip_sweep-org")
    engine = kit_factory(adopt_existing=True, org_id=org,
                         adopt_regions=(REGION, OTHER_REGION),
                         sweep_mode="fanout", sweep_queue_url=url)
    out = fanout.schedule(engine, remaining=lambda: 900.0)
    assert sorted(out["queued"]) == sorted([f"{ACCOUNT}/{REGION}/own", f"{member}/{REGION}/shop",
                                            f"{member}/{OTHER_REGION}/search"])
    assert out["errors"] == []
    got = boto3.client("sqs").receive_message(QueueUrl=url, MaxNumberOfMessages=10)["Messages"]
    result = fanout.work(engine, [(m["MessageId"], m["Body"]) for m in got], lambda: 900.0)
    assert sorted(result["adopted"]) == sorted(out["queued"]) and result["failed"] == []
    assert queues(other_account_session(member, OTHER_REGION)) == ["kip-search"]


def test_org_check_that_organizations_refuses_is_403_never_allowed(kit_factory):
    Strict("organizations", "DescribeAccount", "json", "AccessDeniedException",
           "not the management account", times=99)
    engine = kit_factory(org_id="o-abcdefghij")
    with pytest.raises(errors.Forbidden) as exc:
        drive.identity(engine, "shop", MEMBER)
    assert "delegated administrator" in exc.value.message
    assert exc.value.extra["aws_code"] == "AccessDeniedException"


# ----------------------------------------------------------------------------- deployed stages

def _import_app(code: str = "", **env) -> subprocess.CompletedProcess:
    base = {k: v for k, v in os.environ.items() if not k.startswith("KIP_")}
    base.update({"KIP_API_AUTH": "none", **env})
    return subprocess.run([sys.executable, "-c", "import app\n" + code], cwd=ROOT, env=base,
                          capture_output=True, text=True, timeout=120)


def test_a_stage_requiring_the_account_list_refuses_to_run_without_one():
    # packaging imports app.py without the lists (they are stack parameters): the import works,
    # and every handler refuses, naming the settings (tests/package runs the zip the same way)
    run = "from chalice.test import Client\nwith Client(app.app) as c:\n" \
          "    print(c.http.get('/openapi.json').status_code)"
    refused = _import_app(KIP_REQUIRE_ACCOUNT_LIST="true", KIP_API_AUTH="iam", code=run)
    assert refused.returncode == 0, refused.stderr
    assert refused.stdout.split()[-1] == "503"
    assert "KIP_ALLOWED_ACCOUNTS" in refused.stdout + refused.stderr
    assert _import_app(KIP_REQUIRE_ACCOUNT_LIST="true", KIP_API_AUTH="iam", code=run,
                       KIP_ALLOWED_ACCOUNTS=MEMBER).stdout.split()[-1] == "200"


def test_deployed_stages_require_the_list_and_local_does_not():
    stages = json.loads((ROOT / ".chalice" / "config.json").read_text())["stages"]
    for stage in ("dev", "prod"):
        assert stages[stage]["environment_variables"]["KIP_REQUIRE_ACCOUNT_LIST"] == "true"
    assert "KIP_REQUIRE_ACCOUNT_LIST" not in stages["local"]["environment_variables"]
