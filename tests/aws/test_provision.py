"""The provision use case against moto in-process: what it creates, in-place updates, refusals,
names of any length and the exact write calls of a clean run.

Every test gets a fresh moto (the ``moto_env`` fixture) and fresh chalicelib clients. AWS state is
checked with plain boto3 clients, never through the code under test.
"""
from __future__ import annotations

import json

import boto3
import threading

import pytest
from moto import mock_aws

from chalicelib import aws, errors
from chalicelib.config import ALL_EVENT_KINDS, get_settings
from chalicelib.core import naming, policies
from tests.support import drive
from tests.support.pod_identity import PodIdentity
from tests.support.faults import Calls, Strict
from tests.support.snapshots import (assert_nothing_managed, attached, list_kip_policies,
                                     list_queue_urls, list_rule_names, managed, queue_attributes,
                                     queue_url)
from tests.support.world import (ACCOUNT, CLUSTER, DLQ, OTHER_ACCOUNT, POLICY, POLICY_ARN, QUEUE,
                                 REGION, ROLE, RULE, RULE_ARN, cid, make_cluster, make_key,
                                 make_role, plain, req)


def test_provision_creates_the_queue_and_its_dlq(engine, cluster):
    # when
    out = drive.provision(engine, req())

    # then
    attrs = queue_attributes(QUEUE)
    assert attrs["MessageRetentionPeriod"] == "1209600"
    assert attrs["VisibilityTimeout"] == "300"
    assert attrs["DelaySeconds"] == "0"
    assert attrs["SqsManagedSseEnabled"] == "true"
    assert json.loads(attrs["RedrivePolicy"]) == {
        "deadLetterTargetArn": f"arn:aws:sqs:{REGION}:{ACCOUNT}:{DLQ}", "maxReceiveCount": 5}
    policy = json.loads(attrs["Policy"])
    allow = [s for s in policy["Statement"] if s["Effect"] == "Allow"]
    assert allow[0]["Principal"] == {"Service": "events.amazonaws.com"}
    assert allow[0]["Action"] == "sqs:SendMessage"
    assert allow[0]["Condition"]["ArnEquals"]["aws:SourceArn"] == [RULE_ARN]
    assert any(s.get("Sid") == "DenyHTTP" and s["Effect"] == "Deny"
               for s in policy["Statement"])
    dlq = queue_attributes(DLQ)
    assert dlq["MessageRetentionPeriod"] == "1209600"
    assert dlq["SqsManagedSseEnabled"] == "true"
    for name in (QUEUE, DLQ):
        tags = plain("sqs").list_queue_tags(QueueUrl=queue_url(name))["Tags"]
        assert tags["karpenter.sh/discovery"] == CLUSTER
        assert tags[naming.MANAGED_BY_TAG] == naming.MANAGED_BY_VALUE
        assert tags[naming.CLUSTER_TAG] == f"{ACCOUNT}/{REGION}/{CLUSTER}"
    assert out.changed is True


def test_provision_creates_one_rule_for_every_kind_targeting_the_queue(engine, cluster):
    # when
    drive.provision(engine, req())

    # then
    events = plain("events")
    assert list_rule_names() == [RULE]
    rule = events.describe_rule(Name=RULE)
    assert json.loads(rule["EventPattern"]) == policies.interruption_pattern(ALL_EVENT_KINDS)
    assert rule["State"] == "ENABLED"
    assert rule.get("EventBusName", "default") == "default"
    targets = events.list_targets_by_rule(Rule=RULE)["Targets"]
    assert [(t["Id"], t["Arn"]) for t in targets] == [
        ("KarpenterInterruptionQueueTarget", f"arn:aws:sqs:{REGION}:{ACCOUNT}:{QUEUE}")]


def test_provision_creates_the_controller_policy_and_attaches_it(engine, cluster):
    # when
    drive.provision(engine, req())

    # then
    policies = list_kip_policies()
    assert [(p["PolicyName"], p["Path"], p["Arn"]) for p in policies] == [
        (POLICY, "/kip/", POLICY_ARN)]
    doc = managed()["policies"][POLICY]["document"]
    assert doc["Statement"] == [{
        "Sid": "KarpenterInterruptionQueue", "Effect": "Allow",
        "Action": ["sqs:DeleteMessage", "sqs:GetQueueUrl", "sqs:ReceiveMessage"],
        "Resource": f"arn:aws:sqs:{REGION}:{ACCOUNT}:{QUEUE}"}]
    assert attached(ROLE) == [POLICY_ARN]


def test_provision_records_the_cluster_as_ready(engine, cluster):
    # when
    out = drive.provision(engine, req())

    # then
    rec = drive.describe(engine, cid())
    assert rec == out.record
    assert rec["status"] == "ready"
    assert rec["karpenter"]["settings.interruptionQueue"] == QUEUE
    assert rec["karpenter"]["helm_values"] == {"settings": {"interruptionQueue": QUEUE}}
    assert rec["names"]["queue"] == QUEUE
    assert rec["resources"]["queue"]["exists"] and rec["resources"]["dlq"]["exists"]
    assert all(r["exists"] and r["target"] for r in rec["resources"]["rules"].values())
    assert rec["resources"]["attachment"] == {
        "role_name": ROLE, "role_arn": f"arn:aws:iam::{ACCOUNT}:role/{ROLE}",
        "role_exists": True, "attached": True}
    assert "lease_owner" not in rec and "last_error" not in rec


def test_second_provision_makes_no_write_calls_and_returns_the_same_record(engine, cluster):
    # given
    first = drive.provision(engine, req())
    calls = Calls()

    # when
    second = drive.provision(engine, req())

    # then
    assert calls.names, "the hook must see the reads"
    assert "GetItem" in calls.names
    assert calls.writes == []
    assert second.changed is False
    assert second.actions == []
    assert second.record == first.record


def test_dry_run_plans_everything_and_writes_nothing(engine, cluster):
    # given
    calls = Calls()

    # when
    out = drive.provision(engine, req(dry_run=True))

    # then
    assert out.dry_run is True
    assert len(out.actions) == 6
    assert calls.writes == []
    assert_nothing_managed()
    assert engine.registry.get(cid()) is None


def test_retention_change_updates_the_queue_in_place(engine, cluster):
    # given
    drive.provision(engine, req())
    before = managed()

    # when
    out = drive.provision(engine, req(message_retention_seconds=3600))

    # then
    assert [(a["id"], a["params"]["attributes"]) for a in out.actions] == [
        ("queue.update", {"MessageRetentionPeriod": "3600"})]
    after = managed()
    assert after["queues"][QUEUE]["attributes"]["MessageRetentionPeriod"] == "3600"
    after["queues"][QUEUE]["attributes"]["MessageRetentionPeriod"] = "1209600"
    # moto 5.x (unlike SQS) drops the queue Policy on any SetQueueAttributes that omits it
    for snap in (before, after):
        snap["queues"][QUEUE]["attributes"].pop("Policy", None)
    assert after == before
    assert out.record["status"] == "ready"
    assert out.record["request"]["message_retention_seconds"] == 3600


def test_event_kinds_subset_narrows_the_one_rule(engine, cluster):
    # given
    drive.provision(engine, req())
    queue_policy = queue_attributes(QUEUE)["Policy"]

    # when
    out = drive.provision(engine, req(event_kinds=["spot_interruption", "scheduled_change"]))

    # then
    assert list_rule_names() == [RULE]
    assert json.loads(plain("events").describe_rule(Name=RULE)["EventPattern"]) == \
        policies.interruption_pattern(["spot_interruption", "scheduled_change"])
    assert queue_attributes(QUEUE)["Policy"] == queue_policy
    assert out.record["resources"]["rule"]["exists"]
    assert out.record["event_kinds"] == ["spot_interruption", "scheduled_change"]
    # and back again
    drive.provision(engine, req())
    assert json.loads(plain("events").describe_rule(Name=RULE)["EventPattern"]) == \
        policies.interruption_pattern(ALL_EVENT_KINDS)


def test_kms_key_adds_a_policy_version_with_decrypt(engine, cluster):
    # given
    drive.provision(engine, req())
    key_arn = make_key(Description="karpenter")["Arn"]

    # when
    out = drive.provision(engine, req(kms_key_id=key_arn))

    # then
    assert out.record["status"] == "ready"
    iam = plain("iam")
    pol = iam.get_policy(PolicyArn=POLICY_ARN)["Policy"]
    assert pol["DefaultVersionId"] != "v1"
    doc = managed()["policies"][POLICY]["document"]
    assert {"Sid": "KarpenterInterruptionQueueKey", "Effect": "Allow",
            "Action": ["kms:Decrypt"], "Resource": key_arn} in doc["Statement"]
    assert out.record["resources"]["policy"]["default_version"] == pol["DefaultVersionId"]
    attrs = queue_attributes(QUEUE)
    assert attrs["KmsMasterKeyId"] == key_arn
    assert attrs.get("SqsManagedSseEnabled") != "true"
    assert attached(ROLE) == [POLICY_ARN]


def test_kms_key_by_alias_is_resolved_to_the_key_arn(engine, cluster):
    # given
    kms = plain("kms")
    key_arn = make_key()["Arn"]
    kms.create_alias(AliasName="alias/karpenter", TargetKeyId=key_arn)

    # when
    drive.provision(engine, req(kms_key_id="alias/karpenter"))

    # then
    assert queue_attributes(QUEUE)["KmsMasterKeyId"] == key_arn
    assert any(s["Resource"] == key_arn
               for s in managed()["policies"][POLICY]["document"]["Statement"])


def test_unknown_kms_key_is_a_validation_error_and_creates_nothing(engine, cluster):
    # when
    with pytest.raises(errors.ValidationError) as exc:
        drive.provision(engine, req(kms_key_id="alias/does-not-exist"))

    # then
    assert exc.value.field == "kms_key_id"
    assert_nothing_managed()


def test_policy_versions_are_pruned_to_at_most_five(engine, cluster):
    # given
    drive.provision(engine, req())
    key_arn = make_key()["Arn"]
    iam = plain("iam")

    # when: eight document changes
    for i in range(8):
        drive.provision(engine, req(kms_key_id=key_arn if i % 2 == 0 else None))

        # then
        versions = iam.list_policy_versions(PolicyArn=POLICY_ARN)["Versions"]
        assert len(versions) <= 5
        assert sum(v["IsDefaultVersion"] for v in versions) == 1
    doc = managed()["policies"][POLICY]["document"]
    assert [s["Sid"] for s in doc["Statement"]] == ["KarpenterInterruptionQueue"]


def test_missing_role_waits_then_reconcile_attaches(engine):
    # given a request naming a role that does not exist yet
    make_cluster(CLUSTER)

    # when
    out = drive.provision(engine, req(controller_role=ROLE))

    # then
    assert out.record["status"] == "waiting_for_role"
    assert out.record["resources"]["attachment"]["role_exists"] is False
    assert [p["PolicyName"] for p in list_kip_policies()] == [POLICY]
    assert len(list_queue_urls()) == 2

    # given
    make_role(ROLE)

    # when
    out = drive.reconcile(engine, cid())

    # then
    assert [a["id"] for a in out.actions] == ["attach"]
    assert out.record["status"] == "ready"
    assert attached(ROLE) == [POLICY_ARN]


def test_waiting_for_role_is_stable_without_writes(engine):
    # given
    make_cluster(CLUSTER)
    drive.provision(engine, req(controller_role=ROLE))
    calls = Calls()

    # when
    out = drive.provision(engine, req(controller_role=ROLE))

    # then
    assert calls.writes == []
    assert out.record["status"] == "waiting_for_role"


def test_a_request_without_a_role_for_a_cluster_without_karpenter_creates_nothing(api,
                                                                                 engine):
    # given a cluster with no Karpenter: no association, no IRSA trust, no template role
    make_cluster(CLUSTER)
    # when a portal asks kip to wire it without naming a role
    got = api.http.post("/clusters", body=json.dumps({"cluster_name": CLUSTER}),
                        headers={"Content-Type": "application/json"})
    # then it is recorded, nothing is created, and the answer says why and what comes next
    assert got.status_code == 202, got.json_body
    body = got.json_body
    assert (body["status"], body["handler"], body["actions"]) == ("no_karpenter", "none", [])
    assert "no Karpenter controller role" in body["message"] and got.headers["ETag"]
    assert list_queue_urls() == [] and list_kip_policies() == []
    assert not boto3.client("events").list_rules(NamePrefix="kip-")["Rules"]
    # and the sweep wires it once the role exists
    make_role(ROLE)
    drive.sweep(engine)
    assert api.http.get(f"/clusters/{CLUSTER}").json_body["status"] == "ready"


def test_missing_cluster_creates_nothing(engine):
    # given
    make_role(ROLE)
    calls = Calls()

    # when
    with pytest.raises(errors.ClusterNotFound) as exc:
        drive.provision(engine, req())

    # then
    assert exc.value.code == "ClusterNotFound"
    assert exc.value.status == 404
    assert calls.writes == []
    assert_nothing_managed()
    assert engine.registry.get(cid()) is None


def test_deleting_cluster_is_refused(engine, cluster):
    # given: moto deletes clusters at once, so mark ours as going away in its backend
    from moto.eks.models import eks_backends
    eks_backends[ACCOUNT][REGION].clusters[CLUSTER].status = "DELETING"

    # when
    with pytest.raises(errors.Conflict) as exc:
        drive.provision(engine, req())

    # then
    assert exc.value.status == 409
    assert_nothing_managed()


@pytest.mark.parametrize("role", ["admin", f"arn:aws:iam::{OTHER_ACCOUNT}:role/"
                                  "KarpenterController-payments-prod"])


def test_bad_role_fails_before_any_aws_call(engine, cluster, role):
    # given
    calls = Calls()

    # when
    with pytest.raises((errors.Forbidden, errors.ValidationError)) as exc:
        drive.provision(engine, req(controller_role=role))

    # then
    assert exc.value.field == "controller_role"
    assert set(calls.names) <= {"GetCallerIdentity"}     # who we are; nothing else


def test_untagged_same_named_queue_is_not_touched(engine, cluster):
    # given
    sqs = plain("sqs")
    sqs.create_queue(QueueName=QUEUE, Attributes={"VisibilityTimeout": "17"},
                     tags={"team": "someone-else"})
    before = queue_attributes(QUEUE)

    # when
    with pytest.raises(errors.ResourceNotOwned) as exc:
        drive.provision(engine, req())

    # then
    assert exc.value.code == "ResourceNotOwned"
    assert exc.value.extra["resource"] == QUEUE
    assert queue_attributes(QUEUE) == before
    assert plain("sqs").list_queue_tags(QueueUrl=queue_url(QUEUE))["Tags"] == {
        "team": "someone-else"}
    assert [u.rsplit("/", 1)[1] for u in list_queue_urls()] == [QUEUE]
    assert list_rule_names() == []
    assert list_kip_policies() == []
    assert attached(ROLE) == []
    assert engine.registry.get(cid()) is None


def test_after_a_refusal_the_cluster_can_be_provisioned_at_once(engine, cluster):
    # given: a refusal must not leave a lease behind
    sqs = plain("sqs")
    sqs.create_queue(QueueName=QUEUE)
    with pytest.raises(errors.ResourceNotOwned):
        drive.provision(engine, req())
    sqs.delete_queue(QueueUrl=queue_url(QUEUE))

    # when
    out = drive.provision(engine, req())

    # then
    assert out.record["status"] == "ready"


def test_refusal_on_an_existing_record_keeps_the_record(engine, cluster):
    # given: a ready cluster whose queue someone replaced with their own
    first = drive.provision(engine, req())
    sqs = plain("sqs")
    sqs.delete_queue(QueueUrl=queue_url(QUEUE))
    sqs.create_queue(QueueName=QUEUE)

    # when
    with pytest.raises(errors.ResourceNotOwned):
        drive.provision(engine, req(visibility_timeout_seconds=60))

    # then
    rec = engine.registry.get(cid())
    assert rec["status"] == "ready"
    assert rec["spec_hash"] == first.record["spec_hash"]
    assert "lease_owner" not in rec


def test_cluster_named_like_another_clusters_dlq_gets_its_own_queues(engine):
    # given: with a plain "<name>-dlq" suffix, cluster 'payments-dlq''s queue would be
    # cluster 'payments''s DLQ
    for name in ("payments", "payments-dlq"):
        make_cluster(name)
        make_role(f"KarpenterController-{name}")
    drive.provision(engine, req("payments"))

    # when
    other = drive.provision(engine, req("payments-dlq"))

    # then both own separate queues, and tearing one down leaves the other whole
    assert other.record["status"] == "ready"
    assert other.record["names"]["queue"] == "kip-payments-dlq"
    drive.teardown(engine, drive.identity(engine, "payments-dlq"))
    assert drive.provision(engine, req("payments")).changed is False


# ------------------------------------------------------------------------------ write calls

def resource_of(params: dict) -> str | None:
    for key in ("QueueName", "Name", "Rule", "PolicyName", "RoleName"):
        if key in params:
            return params[key]
    return None


class WriteRecorder:
    """(service, operation, resource) of every write call, from the API parameters."""

    def __init__(self) -> None:
        self.calls: list[tuple] = []
        self._lock = threading.Lock()
        aws.add_hook("before-parameter-build.*.*", self.record)

    def record(self, params, model, **kw) -> None:
        if aws.is_write(model.name):
            with self._lock:
                self.calls.append((model.service_model.service_name, model.name,
                                   resource_of(params)))


@pytest.fixture(scope="module")
def clean_run() -> tuple[list[tuple], dict, dict]:
    """In its own fresh moto: provision ``payments-prod`` once; the write calls, the resulting
    AWS state and the record."""
    get_settings.cache_clear()
    settings = get_settings()
    with mock_aws():
        aws.reset()
        try:
            aws.Store(settings).create_table()
            PodIdentity(ACCOUNT, REGION)    # moto has no Pod Identity API
            make_cluster(CLUSTER)
            make_role(ROLE)
            writes = WriteRecorder()
            out = drive.provision(drive.make_kit(settings), req())
            return list(writes.calls), managed(), out.record
        finally:
            aws.reset()
            get_settings.cache_clear()


EXPECTED_WRITES = sorted(
    [("sqs", "CreateQueue", DLQ), ("sqs", "CreateQueue", QUEUE),
     ("iam", "CreatePolicy", POLICY), ("iam", "AttachRolePolicy", ROLE)]
    + [("events", "PutRule", RULE), ("events", "PutTargets", RULE)])


def test_clean_provision_makes_exactly_the_expected_write_calls(clean_run):
    # given
    writes, _, record = clean_run

    # then: the AWS resource writes (DynamoDB record writes are tested separately)
    assert sorted(w for w in writes if w[0] != "dynamodb") == EXPECTED_WRITES
    # the lease, the shared rule count (one new rule), the record, the audit entry
    assert [w[1] for w in writes if w[0] == "dynamodb"] == ["PutItem", "UpdateItem", "PutItem",
                                                            "UpdateItem"]
    assert record["status"] == "ready"


def test_a_refused_queue_after_its_dlq_is_recorded_and_the_next_run_converges(
        engine, cluster, clean_run):
    """The fault matrix (tests/reliability/test_faults.py) covers a refusal of each write call;
    its sqs:CreateQueue cell refuses the first CreateQueue, the DLQ's. This is the one it cannot
    reach: the DLQ exists and the queue's own CreateQueue is refused."""
    # given: AWS refuses the queue's CreateQueue, in SQS's wire protocol
    refused = Strict("sqs", "CreateQueue", "json", "AccessDenied", "injected", times=1,
                     status=403, match=lambda request: json.loads(
                         request.body or b"{}").get("QueueName") == QUEUE)

    # when
    with pytest.raises(errors.AwsCallFailed) as exc:
        drive.provision(engine, req())

    # then
    assert refused.seen == 1
    assert exc.value.code == "AwsCallFailed"
    assert exc.value.extra["aws_code"] == "AccessDenied"
    rec = engine.registry.get(cid())
    assert rec["status"] == "failed"
    assert rec["last_error"]["call"] == "create_queue"
    assert rec["last_error"]["resource"] == QUEUE
    assert rec["last_error"]["code"] == "AccessDenied"
    assert rec["last_error"]["step"] not in rec["applied"]
    assert "lease_owner" not in rec
    assert exc.value.extra["record"]["status"] == "failed"
    # the record says what exists after the partial run
    state, res = managed(), rec["resources"]
    assert res["dlq"]["exists"] is True and DLQ in state["queues"]
    assert res["queue"]["exists"] is False and QUEUE not in state["queues"]
    assert res["policy"]["exists"] == (POLICY in state["policies"])
    assert res["rule"]["exists"] == (RULE in state["rules"])
    assert res["rule"]["target"] == bool(state["rules"].get(RULE, {}).get("targets"))
    assert res["attachment"]["attached"] == (ROLE in state["attachments"])

    # when
    out = drive.provision(engine, req())

    # then
    assert out.record["status"] == "ready"
    assert "last_error" not in out.record
    assert managed() == clean_run[1]
    assert drive.provision(engine, req()).actions == []


# ------------------------------------------------------------------------------ names

@pytest.mark.parametrize("length", [1, 80, 100])
def test_cluster_names_of_any_length_provision_and_tear_down(engine, length):
    # given
    name = ("q" + "0123456789-_abcdefgh" * 5)[:length]
    role = "KarpenterController-" + ("short" if length > 44 else name)
    make_cluster(name)
    make_role(role)

    # when
    out = drive.provision(engine, req(name, controller_role=role))

    # then
    assert out.record["status"] == "ready"
    n = out.record["names"]
    assert len(n["queue"]) <= 80 and len(n["dlq"]) <= 80
    assert all(len(r) <= 64 for r in n["rules"].values())
    assert len(list_queue_urls()) == 2 and len(list_rule_names()) == 1
    assert attached(role) == [n["policy_arn"]]

    # when
    drive.teardown(engine, cid(name))

    # then
    assert_nothing_managed(role=role)


def test_long_names_differing_at_the_end_live_side_by_side(engine):
    # given
    a, b = "x" * 99 + "a", "x" * 99 + "b"
    for name, role in ((a, "KarpenterController-a"), (b, "KarpenterController-b")):
        make_cluster(name)
        make_role(role)
    drive.provision(engine, req(a, controller_role="KarpenterController-a"))
    only_a = managed()
    drive.provision(engine, req(b, controller_role="KarpenterController-b"))

    # then
    assert len(list_queue_urls()) == 4
    assert len(list_rule_names()) == 2
    assert len(list_kip_policies()) == 2

    # when
    drive.teardown(engine, cid(b))

    # then
    assert managed() == only_a
    assert drive.describe(engine, cid(a))["status"] == "ready"
    assert drive.reconcile(engine, cid(a)).actions == []
