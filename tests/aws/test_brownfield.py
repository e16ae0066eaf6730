"""Brownfield (issue 20): kip finds the cluster's real Karpenter controller role (request, Pod
Identity, IRSA trust, template), finds another tool's interruption handling for that role, and
either reports it (creates nothing) or wires its own beside it -- on every entry path."""
from __future__ import annotations

import dataclasses
import json
import time

import boto3
import pytest

from chalicelib import errors
from chalicelib.core.events import parse_eks_event
from chalicelib.core.spec import ClusterRequest
from chalicelib.core import brownfield
from chalicelib.usecases import backfill, fanout, lifecycle, queue_health
from tests.support.world import ACCOUNT, REGION, make_cluster, make_role, portal_inbox, put_metric
from tests.support.clock import Clock
from tests.support.faults import Calls, Strict
from tests.support import drive, layouts
from tests.support.events import eks_event

KEY = f"{ACCOUNT}/{REGION}"


def kip_made_nothing() -> bool:
    sqs, events = boto3.client("sqs"), boto3.client("events")
    return (not sqs.list_queues(QueueNamePrefix="kip-").get("QueueUrls") and
            not events.list_rules(NamePrefix="kip-")["Rules"] and
            not boto3.client("iam").list_policies(Scope="Local", PathPrefix="/kip/")["Policies"])


def attached(role: str) -> list:
    return [p["PolicyName"] for p in boto3.client("iam").list_attached_role_policies(
        RoleName=role)["AttachedPolicies"]]


# ----------------------------------------------------------------------- 1. the real role

def test_an_eksctl_pod_identity_role_is_found_and_wired(moto_env, pod_identity):
    # given the KP guide's cluster: role <cluster>-karpenter, bound by Pod Identity, no handler
    make_cluster("shop")
    arn = layouts.role("shop-karpenter", layouts.POD_TRUST)
    pod_identity.associate("shop", "kube-system", "karpenter", arn)
    kit = drive.make_kit(moto_env)
    # when kip is asked without naming the role
    out = drive.provision(kit, ClusterRequest(cluster_name="shop"))
    # then the association's role gets kip's policy, though its name is outside the pattern
    rec = out.record
    assert (rec.status, rec.role_source, rec.handler) == ("ready", "pod-identity", "kip")
    assert rec.resources.attachment.role_name == "shop-karpenter"
    assert attached("shop-karpenter") == [f"kip-{REGION}-shop"]
    assert rec.existing_handler is None


def test_a_terraform_irsa_role_is_found_by_its_trust_not_its_name(moto_env):
    # given terraform-aws-eks v20's IRSA role (a name_prefix name) trusting the cluster's OIDC
    # provider for karpenter/karpenter, and a decoy trusting another cluster's provider
    make_cluster("ledger")
    make_cluster("other")
    name = f"KarpenterController-{layouts.TF_SUFFIX}"
    layouts.role(name, layouts.irsa_trust("ledger", "system:serviceaccount:karpenter:karpenter"))
    layouts.role("KarpenterController-00000000000000000000000000", layouts.irsa_trust(
        "other", "system:serviceaccount:karpenter:karpenter"))
    kit = drive.make_kit(moto_env)
    # when
    out = drive.provision(kit, ClusterRequest(cluster_name="ledger"))
    # then
    assert (out.record.status, out.record.role_source) == ("ready", "irsa")
    assert out.record.resources.attachment.role_name == name
    assert attached(name) == [f"kip-{REGION}-ledger"]


def test_pod_identity_wins_over_irsa_and_the_request_wins_over_both(moto_env, pod_identity):
    make_cluster("both")
    pod = layouts.role("both-karpenter", layouts.POD_TRUST)
    pod_identity.associate("both", "karpenter", "karpenter", pod)   # the second default SA
    layouts.role("irsa-karpenter", layouts.irsa_trust(
        "both", "system:serviceaccount:kube-system:karpenter"))
    make_role("KarpenterController-both")
    kit = drive.make_kit(moto_env)
    out = drive.provision(kit, ClusterRequest(cluster_name="both"))
    assert (out.record.role_source, out.record.resources.attachment.role_name) == \
        ("pod-identity", "both-karpenter")
    out = drive.provision(kit, ClusterRequest(cluster_name="both",
                                              controller_role="KarpenterController-both"))
    assert (out.record.role_source, out.record.resources.attachment.role_name) == \
        ("request", "KarpenterController-both")


def test_without_any_binding_the_template_names_the_role(moto_env):
    make_cluster("plain")
    make_role("KarpenterController-plain")
    out = drive.provision(drive.make_kit(moto_env), ClusterRequest(cluster_name="plain"))
    assert (out.record.status, out.record.role_source) == ("ready", "template")


def test_configured_service_accounts_replace_the_defaults(moto_env, pod_identity):
    make_cluster("custom")
    arn = layouts.role("custom-karpenter", layouts.POD_TRUST)
    pod_identity.associate("custom", "kube-system", "karpenter", arn)
    other = layouts.role("ops-karpenter", layouts.POD_TRUST)
    pod_identity.associate("custom", "ops", "kctl", other)
    kit = drive.make_kit(dataclasses.replace(
        moto_env, karpenter_service_accounts=(("ops", "kctl"),)))
    out = drive.provision(kit, ClusterRequest(cluster_name="custom"))
    assert out.record.resources.attachment.role_name == "ops-karpenter"


def test_a_reconcile_keeps_the_discovered_role_without_looking_again(moto_env, pod_identity):
    make_cluster("shop")
    pod_identity.associate("shop", "kube-system", "karpenter",
                           layouts.role("shop-karpenter", layouts.POD_TRUST))
    kit = drive.make_kit(moto_env)
    drive.provision(kit, ClusterRequest(cluster_name="shop"))
    looked = len(pod_identity.calls)
    out = drive.reconcile(kit, drive.identity(kit, "shop"))
    assert out.record.role_source == "pod-identity" and len(pod_identity.calls) == looked


# ---------------------------------------------------------------- 5. room on the role

def test_a_role_holding_the_quota_of_managed_policies_is_refused_before_anything_exists(
        moto_env):
    make_cluster("full")
    make_role("KarpenterController-full")
    for i in range(10):
        layouts.managed("KarpenterController-full", f"team-policy-{i}",
                        {"Effect": "Allow", "Action": "s3:GetObject", "Resource": "*"})
    kit = drive.make_kit(moto_env)
    with pytest.raises(errors.RolePolicyQuotaExceeded) as err:
        drive.provision(kit, ClusterRequest(cluster_name="full"))
    assert err.value.status == 409 and err.value.extra["quota"] == 10
    assert "Managed policies attached to an IAM role" in err.value.message
    assert kip_made_nothing()
    # an automatic path records the cluster blocked, naming the quota
    with pytest.raises(errors.RolePolicyQuotaExceeded):
        drive.adopt(kit, drive.identity(kit, "full"), "backfill")
    rec = drive.describe(kit, drive.identity(kit, "full"))
    assert (rec.status, rec.last_error.code) == ("blocked", "RolePolicyQuotaExceeded")
    assert kip_made_nothing()


# ------------------------------------------------------------ 4. no Karpenter at all

def test_an_automatic_path_records_a_cluster_without_karpenter_and_creates_nothing(moto_env):
    make_cluster("bare")
    kit = drive.make_kit(moto_env)
    out = lifecycle.cluster_created(kit, drive.identity(kit, "bare"), parse_eks_event(
        eks_event("CreateCluster", "bare", ACCOUNT, REGION)))
    assert out == {"recorded": f"{KEY}/bare", "status": "no_karpenter", "existing_handler": None}
    rec = drive.describe(kit, drive.identity(kit, "bare"))
    assert (rec.status, rec.handler) == ("no_karpenter", "none")
    assert kip_made_nothing()
    # the sweep looks again: once Karpenter's role exists, the cluster is wired
    make_role("KarpenterController-bare")
    assert drive.sweep(kit)["repaired"] == [f"{KEY}/bare"]
    rec = drive.describe(kit, drive.identity(kit, "bare"))
    assert (rec.status, rec.handler, rec.role_source) == ("ready", "kip", "template")


# ------------------------------------------------- 2, 3, 6. layouts x entry paths x modes

PATHS = ("api", "trigger", "backfill", "sweep")


def enter(path: str, kit, cluster: str, api=None, mode: str = "report"):
    """Enter kip for ``cluster`` the way ``path`` does; the API's answer, or the record."""
    if path == "api":
        body = {"cluster_name": cluster, **({"on_existing": mode} if mode != "report" else {})}
        return api.http.post("/clusters", body=json.dumps(body),
                             headers={"Content-Type": "application/json"})
    if path == "trigger":
        lifecycle.cluster_created(kit, drive.identity(kit, cluster), parse_eks_event(
            eks_event("CreateCluster", cluster, ACCOUNT, REGION)))
    elif path == "backfill":
        summary = backfill.run(kit, [ACCOUNT], [REGION])
        assert summary["clusters"][0]["outcome"] == ("external" if mode == "report"
                                                     else "provisioned"), summary
    else:
        fresh = drive.make_kit(dataclasses.replace(kit.settings, adopt_existing=True))
        summary = drive.sweep(fresh)
        if mode == "report":
            assert summary["adopted"] == [] and summary["recorded"] == [
                {"cluster": f"{KEY}/{cluster}", "status": "external"}], summary
        else:
            assert summary["adopted"] == [f"{KEY}/{cluster}"], summary
    return drive.describe(kit, drive.identity(kit, cluster))


@pytest.mark.parametrize("path", PATHS)
@pytest.mark.parametrize("layout", sorted(layouts.LAYOUTS))
def test_report_creates_nothing_and_says_who_handles_the_cluster(moto_env, api, pod_identity,
                                                                  layout, path):
    # given a cluster another tool already wires
    made = layouts.LAYOUTS[layout]("brown", pod_identity)
    kit = drive.make_kit(moto_env)          # KIP_ON_EXISTING defaults to report
    # when kip meets it
    got = enter(path, kit, "brown", api)
    # then kip created nothing, and says which tool, queue and rules handle it
    assert kip_made_nothing()
    if path == "api":
        assert got.status_code == 409
        err = got.json_body["error"]
        assert err["code"] == "AlreadyHandled" and made.tool in err["message"]
        found = err["existing_handler"]
    else:
        assert (got.status, got.handler, got.role_source) == \
            ("external", "external", made.role_source)
        found = got.existing_handler
    assert (found["tool"], found["queue"], found["rules"]) == (made.tool, made.queue, made.rules)
    assert found["policies"]
    # and the other tool's resources are as they were
    assert boto3.client("sqs").get_queue_url(QueueName=made.queue)
    assert sorted(boto3.client("events").list_rule_names_by_target(
        TargetArn=f"arn:aws:sqs:{REGION}:{ACCOUNT}:{made.queue}")["RuleNames"]) == made.rules


@pytest.mark.parametrize("path", PATHS)
@pytest.mark.parametrize("layout", sorted(layouts.LAYOUTS))
def test_coexist_wires_kip_beside_the_other_handler_and_records_it(moto_env, api, pod_identity,
                                                                   layout, path):
    made = layouts.LAYOUTS[layout]("brown", pod_identity)
    kit = drive.make_kit(dataclasses.replace(moto_env, on_existing="coexist"))
    got = enter(path, kit, "brown", api, mode="coexist")
    rec = drive.describe(kit, drive.identity(kit, "brown"))
    if path == "api":
        assert got.status_code == 201, got.json_body
    assert (rec.status, rec.handler, rec.role_source) == ("ready", "kip", made.role_source)
    assert rec.resources.attachment.role_name == made.role
    assert (rec.existing_handler["tool"], rec.existing_handler["queue"]) == \
        (made.tool, made.queue)
    assert boto3.client("sqs").get_queue_url(QueueName="kip-brown")
    assert f"kip-{REGION}-brown" in attached(made.role)


def test_a_parked_cluster_is_wired_once_the_other_handler_is_removed(moto_env, pod_identity):
    made = layouts.terraform("brown")
    inbox = portal_inbox()
    kit = drive.make_kit(dataclasses.replace(moto_env, status_bus="kip-portal"))
    assert enter("trigger", kit, "brown").status == "external"
    # the team removes terraform's queue and rules (enable_spot_termination = false)
    events = boto3.client("events")
    for rule in made.rules:
        events.remove_targets(Rule=rule, Ids=[layouts.TARGET_ID])
        events.delete_rule(Name=rule)
    sqs = boto3.client("sqs")
    sqs.delete_queue(QueueUrl=sqs.get_queue_url(QueueName=made.queue)["QueueUrl"])
    # the sweep's next look wires kip's own
    assert drive.sweep(kit)["repaired"] == [f"{KEY}/brown"]
    rec = drive.describe(kit, drive.identity(kit, "brown"))
    assert (rec.status, rec.handler, rec.existing_handler) == ("ready", "kip", None)
    # and the portal heard who handles the cluster, each time that changed
    seen = [json.loads(m["Body"])["detail"] for m in boto3.client("sqs").receive_message(
        QueueUrl=inbox, MaxNumberOfMessages=10)["Messages"]]
    assert [(d["status"], d["handler"], d["previous_handler"], d.get("change"))
            for d in seen] == [("external", "external", None, None),
                               ("ready", "kip", "external", "handler_changed")]


def test_the_fleet_inventory_filters_by_handler(moto_env, api, pod_identity):
    # given one cluster per handler: kip's, another tool's (reported), none (no Karpenter)
    kit = drive.make_kit(moto_env)
    make_cluster("mine")
    make_role("KarpenterController-mine")
    layouts.eksctl("theirs")
    make_cluster("bare")
    drive.provision(kit, ClusterRequest(cluster_name="mine"))
    for name in ("theirs", "bare"):
        enter("trigger", kit, name)
    # when a portal asks who handles what
    def names(query: str) -> list:
        got = api.http.get(f"/clusters?{query}")
        assert got.status_code == 200, got.json_body
        return sorted(i["cluster_name"] for i in got.json_body["items"])
    # then
    assert names("handler=kip") == ["mine"]
    assert names("handler=external") == ["theirs"]
    assert names("handler=none") == ["bare"]
    assert names("status=no_karpenter") == ["bare"]
    assert names("status=external&handler=external") == ["theirs"]
    assert api.http.get("/clusters?handler=other").status_code == 400
    # a token is bound to its filter
    page = api.http.get("/clusters?handler=kip&limit=1").json_body
    if page["next_token"]:
        assert api.http.get(f"/clusters?handler=external&next_token={page['next_token']}"
                            ).status_code == 400


def test_an_irsa_role_made_after_the_account_was_listed_is_found_once_the_list_is_old(
        moto_env, clock):
    kit = drive.make_kit(moto_env, clock=clock)
    make_cluster("first")
    make_role("KarpenterController-first")
    drive.provision(kit, ClusterRequest(cluster_name="first"))     # lists the account's roles
    make_cluster("late")
    name = f"KarpenterController-{layouts.TF_SUFFIX}"
    layouts.role(name, layouts.irsa_trust("late", "system:serviceaccount:karpenter:karpenter"))
    # an automatic path keeps a list younger than a tenth of KIP_ROLE_LIST_SECONDS
    assert drive.adopt(kit, drive.identity(kit, "late"), "backfill").parked == "no_karpenter"
    clock.advance(11)
    assert drive.adopt(kit, drive.identity(kit, "late"), "backfill").parked == "no_karpenter"
    clock.now += kit.settings.role_list_seconds / 10      # a miss re-reads an older list
    out = drive.adopt(kit, drive.identity(kit, "late"), "backfill")
    assert (out.record.role_source, out.record.resources.attachment.role_name) == ("irsa", name)
    # an API request that would say no_karpenter reads a list older than itself again
    make_cluster("later")
    layouts.role("later-karpenter", layouts.irsa_trust(
        "later", "system:serviceaccount:karpenter:karpenter"))
    clock.advance(1)
    out = drive.provision(kit, ClusterRequest(cluster_name="later"))
    assert (out.record.role_source, out.record.resources.attachment.role_name) == \
        ("irsa", "later-karpenter")
    # one whose template role exists is answered from the kept list
    make_cluster("templated")
    make_role("KarpenterController-templated")
    clock.advance(1)
    calls = Calls()
    assert drive.provision(kit, ClusterRequest(cluster_name="templated")).record.status == "ready"
    assert "ListRoles" not in calls.names


def test_an_auto_mode_cluster_is_in_the_inventory_as_auto_mode_and_the_sweep_stays_quiet(
        moto_env, api):
    from tests.support.world import auto_mode
    kit = drive.make_kit(moto_env)
    make_cluster("auto")
    make_cluster("bare")
    auto_mode("auto")
    with pytest.raises(errors.AutoModeCluster):      # the trigger still answers why
        enter("trigger", kit, "auto")
    rec = drive.describe(kit, drive.identity(kit, "auto"))
    assert (rec.status, rec.handler) == ("external", "auto-mode")
    # a cluster parked without Karpenter that turns Auto Mode on is never wired by the sweep
    enter("trigger", kit, "bare")
    make_role("KarpenterController-bare")
    auto_mode("bare")
    summary = drive.sweep(kit)
    assert summary["errors"] == [] and summary["repaired"] == [], summary
    assert drive.describe(kit, drive.identity(kit, "bare")).handler == "auto-mode"
    assert kip_made_nothing()
    got = api.http.get("/clusters?handler=auto-mode").json_body["items"]
    assert sorted(i["cluster_name"] for i in got) == ["auto", "bare"]


def test_a_handler_that_appears_beside_kips_wiring_is_recorded_not_parked(moto_env, clock):
    # given a cluster kip wires
    kit = drive.make_kit(moto_env, clock=clock)
    make_cluster("mine")
    make_role("KarpenterController-mine")
    drive.provision(kit, ClusterRequest(cluster_name="mine"))
    # when someone adds a hand-written queue, rule and grant for the same role
    arn = layouts.queue("karpenter-mine")
    rule = layouts.rules({"SpotInterruption": "by-hand-mine"}, arn)
    boto3.client("iam").put_role_policy(
        RoleName="KarpenterController-mine", PolicyName="by-hand",
        PolicyDocument=json.dumps({"Version": "2012-10-17",
                                   "Statement": [layouts.sqs_statement(arn)]}))
    # then the next full reconcile records it beside kip's (kip's own queue never counts)
    clock.now += kit.settings.full_check_hours * 3600 + 1
    rec = drive.reconcile(kit, drive.identity(kit, "mine")).record
    assert (rec.status, rec.handler) == ("ready", "kip")
    assert rec.existing_handler == {
        "tool": "unknown", "queue": "karpenter-mine", "queue_arn": arn, "rules": rule,
        "policies": ["inline:KarpenterController-mine/by-hand"],
        "queue_url": boto3.client("sqs").get_queue_url(QueueName="karpenter-mine")["QueueUrl"]}
    assert boto3.client("sqs").get_queue_url(QueueName="kip-mine")


def test_a_broad_sqs_grant_alone_is_not_a_handler_only_a_queue_interruption_rules_feed(
        moto_env):
    # given a template-named role allowed sqs:* on every queue, and unrelated queues
    make_cluster("wide")
    make_role("KarpenterController-wide")
    boto3.client("iam").put_role_policy(
        RoleName="KarpenterController-wide", PolicyName="sqs-everything",
        PolicyDocument=json.dumps({"Version": "2012-10-17", "Statement": [
            {"Effect": "Allow", "Action": "sqs:*", "Resource": "*"}]}))
    for i in range(5):
        layouts.queue(f"orders-{i}")
    other = layouts.queue("billing-events")
    boto3.client("events").put_rule(Name="billing", EventPattern=json.dumps(
        {"source": ["aws.ec2"], "detail-type": ["AWS API Call via CloudTrail"]}))
    boto3.client("events").put_targets(Rule="billing", Targets=[{"Id": "q", "Arn": other}])
    kit = drive.make_kit(moto_env)
    # then the grant alone, or a rule without interruption events, is nobody's handler
    out = drive.provision(kit, ClusterRequest(cluster_name="wide"))
    assert (out.record.status, out.record.existing_handler) == ("ready", None)
    # once an interruption rule feeds one of those queues, that queue is the handler
    arn = layouts.queue("wide-spot")
    layouts.rules({"SpotInterruption": "wide-spot"}, arn)
    drive.teardown(kit, drive.identity(kit, "wide"))
    with pytest.raises(errors.AlreadyHandled) as err:
        drive.provision(kit, ClusterRequest(cluster_name="wide"))
    assert err.value.extra["existing_handler"]["queue"] == "wide-spot"
    assert err.value.extra["existing_handler"]["policies"] == [
        "inline:KarpenterController-wide/sqs-everything"]


def test_the_eks_trigger_lambda_answers_who_handles_a_cluster_it_leaves_alone(moto_env, api,
                                                                            pod_identity):
    made = layouts.karpenter_cfn("brown", pod_identity)
    out = api.lambda_.invoke("on_eks_event", eks_event("CreateCluster", "brown", ACCOUNT,
                                                       REGION)).payload
    assert (out["recorded"], out["status"]) == (f"{KEY}/brown", "external")
    assert (out["existing_handler"]["tool"], out["existing_handler"]["rules"]) == \
        ("karpenter-cloudformation", made.rules)
    assert kip_made_nothing()


def test_a_parked_record_is_deleted_without_touching_the_other_tools_wiring(moto_env, api):
    made = layouts.terraform("brown")
    kit = drive.make_kit(moto_env)
    assert enter("trigger", kit, "brown").status == "external"
    got = api.http.delete("/clusters/brown", headers={"If-Match": "*"})
    assert got.status_code == 200, got.json_body
    assert api.http.get("/clusters/brown").status_code == 404
    assert boto3.client("sqs").get_queue_url(QueueName=made.queue)
    assert sorted(boto3.client("events").list_rule_names_by_target(
        TargetArn=f"arn:aws:sqs:{REGION}:{ACCOUNT}:{made.queue}")["RuleNames"]) == made.rules
    assert attached(made.role) == [f"KarpenterController-{layouts.TF_SUFFIX}"]


def theirs(made) -> dict:
    """Everything of the other tool's kip could touch: its queue (attributes, tags), its rules
    (pattern, state, targets, tags) and the controller role's policies (managed, inline)."""
    sqs, events, iam = boto3.client("sqs"), boto3.client("events"), boto3.client("iam")
    url = sqs.get_queue_url(QueueName=made.queue)["QueueUrl"]
    attrs = sqs.get_queue_attributes(QueueUrl=url, AttributeNames=["All"])["Attributes"]
    rules = {}
    for name in made.rules:
        rule = events.describe_rule(Name=name)
        rules[name] = (rule["EventPattern"], rule["State"],
                       events.list_targets_by_rule(Rule=name)["Targets"],
                       events.list_tags_for_resource(ResourceARN=rule["Arn"])["Tags"])
    inline = {n: iam.get_role_policy(RoleName=made.role, PolicyName=n)["PolicyDocument"]
              for n in iam.list_role_policies(RoleName=made.role)["PolicyNames"]}
    return {"queue": ({k: v for k, v in attrs.items() if not k.startswith("Approximate")},
                      sqs.list_queue_tags(QueueUrl=url).get("Tags")),
            "rules": rules, "managed": sorted(p for p in attached(made.role)
                                              if not p.startswith("kip-")), "inline": inline}


def retention(queue: str) -> int:
    sqs = boto3.client("sqs")
    return int(sqs.get_queue_attributes(QueueUrl=sqs.get_queue_url(QueueName=queue)["QueueUrl"],
                                        AttributeNames=["MessageRetentionPeriod"])[
        "Attributes"]["MessageRetentionPeriod"])


@pytest.mark.parametrize("path", PATHS)
@pytest.mark.parametrize("layout", sorted(layouts.LAYOUTS))
def test_takeover_reaches_switched_from_metrics_and_never_touches_the_other_tool(
        moto_env, api, pod_identity, layout, path):
    # given a cluster another tool wires, and a deployment (or request) that takes over
    made = layouts.LAYOUTS[layout]("brown", pod_identity)
    before = theirs(made)
    kit = drive.make_kit(dataclasses.replace(moto_env, on_existing="takeover"))
    # when kip meets it
    got = enter(path, kit, "brown", api, mode="takeover")
    if path == "api":
        assert got.status_code == 201, got.json_body
    rec = drive.describe(kit, drive.identity(kit, "brown"))
    # then kip's wiring waits beside the other, holding only five minutes of events
    cut = rec.cutover
    assert (rec.status, rec.handler, cut["state"], cut["tool"], cut["old_queue"]) == \
        ("ready", "kip", "waiting", made.tool, made.queue)
    assert cut["helm"].endswith("--set settings.interruptionQueue=kip-brown")
    assert retention("kip-brown") == 300
    # when Karpenter has read kip's queue, and nobody the other one for the window
    put_metric("kip-brown", "NumberOfEmptyReceives", 180)
    put_metric(made.queue, "NumberOfEmptyReceives", 180, minutes_ago=90)   # before the switch
    if path in ("trigger", "sweep"):    # the deployed sweep's worker, one work item
        item = json.dumps({"kind": "reconcile", "id": f"{KEY}/brown"})
        health = fanout.work(kit, [("m1", item)], lambda: 900.0)["health"]
    else:                               # the local stage's inline health pass
        health = queue_health.sweep(kit)
    # then the cutover is switched, kip's queue keeps its 14 days again, the old rules are
    # reported, and nothing of the other tool's changed
    rec = drive.describe(kit, drive.identity(kit, "brown"))
    cut = rec.cutover
    assert (cut["state"], cut["reason"], cut["old_queue_still_fed"]) == \
        ("switched", "kip_queue_read_old_not", True), health
    assert cut["kip_queue_reads"] == 180 and cut["old_queue_reads"] == 0
    assert brownfield.how_to_remove(made.tool, "brown") in cut["next"]
    assert retention("kip-brown") == 1209600
    assert theirs(made) == before
    # and taking kip's wiring away again leaves the other tool's as it is, and says what
    # Karpenter must read now
    if path == "api":
        gone = api.http.delete("/clusters/brown", headers={"If-Match": "*"}).json_body
    else:
        gone = {"warning": drive.teardown(kit, drive.identity(kit, "brown")).warning}
    assert f"point it back at {made.queue}" in gone["warning"]
    assert theirs(made) == before and kip_made_nothing()


def test_the_cutover_waits_while_karpenter_reads_the_old_queue_and_ends_with_the_old_rules(
        moto_env, pod_identity):
    # given a takeover of terraform's wiring, watched on a clock that can pass the window
    made = layouts.terraform("brown")
    inbox = portal_inbox()
    clock = Clock(None)
    kit = drive.make_kit(dataclasses.replace(moto_env, on_existing="takeover",
                                             status_bus="kip-portal"), clock=clock)
    drive.provision(kit, ClusterRequest(cluster_name="brown"))
    cid = drive.identity(kit, "brown")

    def look() -> dict:
        queue_health.sweep(kit)
        return drive.describe(kit, cid).cutover
    # Karpenter still reads terraform's queue: waiting, and kip's queue keeps five minutes
    put_metric(made.queue, "NumberOfEmptyReceives", 170, minutes_ago=3)
    cut = look()
    assert (cut["state"], cut["reason"], cut["helm"].split(" -n ")[1][:10]) == \
        ("waiting", "old_queue_read", "karpenter ")       # the IRSA trust's namespace
    calls = Calls()
    assert look() == cut and not [w for w in calls.writes if w != "PutMetricData"]
    # a full reconcile meanwhile keeps the hold
    clock.advance(kit.settings.full_check_hours * 3600 + 1)
    assert drive.reconcile(kit, cid).record.cutover["state"] == "waiting"
    assert retention("kip-brown") == 300
    clock.now = time.time()             # back to the metrics' time
    # the Helm change rolls out: kip's queue is read, but the old one was read in the window
    put_metric("kip-brown", "NumberOfMessagesReceived", 4, minutes_ago=2)
    assert (look()["state"], look()["reason"]) == ("waiting", "old_queue_read")
    # a window later, only kip's queue is read: switched, retention back
    put_metric("kip-brown", "NumberOfEmptyReceives", 180, minutes_ago=-50)
    clock.advance(kit.settings.cutover_window_seconds)
    cut = look()
    assert (cut["state"], cut["old_queue_still_fed"], cut["switched_at"]) == \
        ("switched", True, cut["checked_at"])
    assert retention("kip-brown") == 1209600
    # metrics or rules that cannot be read leave the state as it was
    refused = [Strict("cloudwatch", "GetMetricData", None, "AccessDenied", "not allowed",
                      times=99),
               Strict("events", "ListRuleNamesByTarget", None, "AccessDeniedException",
                      "not allowed", times=99)]
    cut = look()
    assert (cut["state"], cut["reason"], cut["old_queue_still_fed"]) == \
        ("switched", "metrics_unreadable", True)
    for strict in refused:
        strict.times = 0
    # the Helm release rolled back: the old queue read again, so kip holds its queue short again
    put_metric(made.queue, "NumberOfEmptyReceives", 30, minutes_ago=-45)
    assert (look()["state"], retention("kip-brown")) == ("waiting", 300)
    # once terraform removed its rules, the cutover is over and no longer watched
    events = boto3.client("events")
    for rule in made.rules:
        events.remove_targets(Rule=rule, Ids=[layouts.TARGET_ID])
        events.delete_rule(Name=rule)
    cut = look()
    assert (cut["state"], cut["old_queue_still_fed"], cut["next"]) == ("switched", False, None)
    assert retention("kip-brown") == 1209600
    calls.clear()
    look()
    assert (calls.names.count("GetMetricData"), calls.names.count("ListRuleNamesByTarget")) == \
        (1, 0)                                              # the health's read alone
    changes = [json.loads(m["Body"])["detail"].get("change") for m in boto3.client(
        "sqs").receive_message(QueueUrl=inbox, MaxNumberOfMessages=10)["Messages"]]
    assert [c for c in changes if c] == ["cutover_switched", "cutover_waiting",
                                         "cutover_switched", "old_wiring_removed"]
    assert (cut["state"], cut["reason"]) == ("switched", "kip_queue_read_old_not")


def test_the_health_of_an_external_queue_is_read_the_same_way_as_kips(moto_env, api,
                                                                      pod_identity):
    # given a cluster left to eksctl's wiring, whose queue nobody reads
    made = layouts.eksctl("theirs")
    kit = drive.make_kit(moto_env)
    assert enter("trigger", kit, "theirs").status == "external"
    boto3.client("sqs").send_message(
        QueueUrl=boto3.client("sqs").get_queue_url(QueueName=made.queue)["QueueUrl"],
        MessageBody="{}")
    put_metric(made.queue, "ApproximateAgeOfOldestMessage", 3600)
    # a member role without read access to it (its stack not updated): counts unknown, no error
    denied = Strict("sqs", "GetQueueAttributes", None, "AccessDenied", "not allowed", times=99)
    got = api.http.get("/clusters/theirs")
    assert (got.status_code, got.json_body["health"]["backlog"]) == (200, None)
    denied.times = 0
    # then the portal sees that nobody reads it, live and from the sweep's record
    health = api.http.get("/clusters/theirs").json_body["health"]
    assert (health["consumer"], health["backlog"], health["dlq_depth"]) == ("stale", 1, None)
    assert queue_health.sweep(kit) == [{"cluster": f"{KEY}/theirs", "consumer": "stale",
                                        "events": ["consumer_stale"]}]
    got = api.http.get("/clusters?consumer=stale&handler=external").json_body["items"]
    assert [i["cluster_name"] for i in got] == ["theirs"]
    assert kip_made_nothing()


def test_a_parked_record_that_says_the_same_is_not_written_again(moto_env, pod_identity):
    # given a cluster left to terraform's wiring, and one without Karpenter
    layouts.terraform("brown")
    make_cluster("bare")
    kit = drive.make_kit(moto_env)
    for name in ("brown", "bare"):
        enter("trigger", kit, name)
    versions = {n: drive.describe(kit, drive.identity(kit, n)).version for n in ("brown", "bare")}
    # when the sweep looks again and finds the same: no write (an ETag a portal holds stays good)
    drive.sweep(kit)
    assert {n: drive.describe(kit, drive.identity(kit, n)).version
            for n in ("brown", "bare")} == versions
