"""The engine against moto in-process: provision, reconcile, teardown, failures and races.

Every test gets a fresh moto (the ``moto_env`` fixture) and fresh chalicelib clients. AWS state is
checked with plain boto3 clients, never through the code under test.
"""
from __future__ import annotations

import json
import threading

import boto3
import pytest
from botocore import xform_name
from botocore.exceptions import ClientError
from moto import mock_aws

from chalicelib import aws, errors
from chalicelib.core import naming, policies
from chalicelib.config import ALL_EVENT_KINDS, get_settings
from tests.support.drive import make_kit
from chalicelib.core.spec import ClusterRequest
from tests.support import drive
from tests.conftest import (ACCOUNT, REGION, Calls, SHARED_EVENTS, load_event, make_cluster, make_key,
                            make_role)

CLUSTER = "payments-prod"
ROLE = "KarpenterController-payments-prod"
QUEUE = "kip-payments-prod"
DLQ = "kip-_payments-prod-dlq"
POLICY = "kip-eu-west-1-payments-prod"
POLICY_ARN = f"arn:aws:iam::{ACCOUNT}:policy/kip/{POLICY}"
OTHER_ACCOUNT = "111122223333"
RULE = "kip-payments-prod-events"
RULE_ARN = f"arn:aws:events:{REGION}:{ACCOUNT}:rule/{RULE}"
LEGACY_RULES = {        # the five-rule layout of earlier versions (migration tests)
    "spot_interruption": "kip-payments-prod-spot",
    "rebalance_recommendation": "kip-payments-prod-rebalance",
    "instance_state_change": "kip-payments-prod-state",
    "scheduled_change": "kip-payments-prod-health",
    "capacity_reservation_interruption": "kip-payments-prod-capres",
}
PATTERNS = {
    "spot_interruption": {
        "source": ["aws.ec2"], "detail-type": ["EC2 Spot Instance Interruption Warning"]},
    "rebalance_recommendation": {
        "source": ["aws.ec2"], "detail-type": ["EC2 Instance Rebalance Recommendation"]},
    "instance_state_change": {
        "source": ["aws.ec2"], "detail-type": ["EC2 Instance State-change Notification"]},
    "scheduled_change": {
        "source": ["aws.health"], "detail-type": ["AWS Health Event"],
        "detail": {"service": ["EC2"], "eventTypeCategory": ["scheduledChange"]}},
    "capacity_reservation_interruption": {
        "source": ["aws.ec2"],
        "detail-type": ["EC2 Capacity Reservation Instance Interruption Warning"]},
}
SAMPLE_EVENTS = sorted(p.name for p in SHARED_EVENTS.glob("*.json")
                       if p.name.startswith(("ec2-", "health-")))


# ------------------------------------------------------------------------------ helpers

@pytest.fixture(autouse=True, scope="module")
def _shared_model_loader():
    """Speed only: each test starts new botocore sessions (moto resets the default one,
    ``aws.reset`` drops chalicelib's); let them share one loader so the service models and
    endpoints are parsed once per module instead of once per test."""
    import botocore.session
    original = botocore.session.create_loader
    loaders: dict = {}

    def shared(search_path_string=None):
        if search_path_string not in loaders:
            loaders[search_path_string] = original(search_path_string)
        return loaders[search_path_string]
    patch = pytest.MonkeyPatch()
    patch.setattr(botocore.session, "create_loader", shared)
    yield
    patch.undo()


def cid(name: str = CLUSTER, account: str = ACCOUNT) -> naming.ClusterId:
    return naming.ClusterId(account, REGION, name)


def req(name: str = CLUSTER, **kw) -> ClusterRequest:
    return ClusterRequest(cluster_name=name, **kw)


_clients: dict = {}


@pytest.fixture(autouse=True)
def _fresh_test_clients():
    """The test's own boto3 clients, made on first use inside the test's mock."""
    _clients.clear()
    yield
    _clients.clear()


def client(service: str, session=None):
    key = (session, service)
    if key not in _clients:
        _clients[key] = (session or boto3).client(service, region_name=REGION)
    return _clients[key]


def queue_url(name: str, session=None) -> str:
    return client("sqs", session).get_queue_url(QueueName=name)["QueueUrl"]


def queue_attributes(name: str, session=None) -> dict:
    return client("sqs", session).get_queue_attributes(
        QueueUrl=queue_url(name, session), AttributeNames=["All"])["Attributes"]


def list_queue_urls(prefix: str = "kip-", session=None) -> list[str]:
    return client("sqs", session).list_queues(QueueNamePrefix=prefix).get("QueueUrls", [])


def list_rule_names(prefix: str = "kip-", session=None) -> list[str]:
    return [r["Name"] for r in client("events", session).list_rules(NamePrefix=prefix)["Rules"]]


def list_kip_policies(session=None) -> list[dict]:
    return client("iam", session).list_policies(Scope="Local", PathPrefix="/kip/")["Policies"]


def attached(role: str, session=None) -> list[str]:
    return [p["PolicyArn"] for p in client("iam", session).list_attached_role_policies(
        RoleName=role)["AttachedPolicies"]]


def snapshot(session=None) -> dict:
    """Everything this service manages, normalized (no timestamps, JSON parsed, lists sorted)."""
    sqs, events, iam = (client(s, session) for s in ("sqs", "events", "iam"))
    out: dict = {"queues": {}, "rules": {}, "policies": {}, "attachments": {}}
    for url in list_queue_urls(session=session):
        attrs = sqs.get_queue_attributes(QueueUrl=url, AttributeNames=["All"])["Attributes"]
        for key in ("CreatedTimestamp", "LastModifiedTimestamp"):
            attrs.pop(key, None)
        for key in ("Policy", "RedrivePolicy"):
            if key in attrs:
                attrs[key] = json.loads(attrs[key])
        out["queues"][url.rsplit("/", 1)[1]] = {
            "attributes": attrs, "tags": sqs.list_queue_tags(QueueUrl=url).get("Tags", {})}
    for rule in events.list_rules(NamePrefix="kip-")["Rules"]:
        targets = events.list_targets_by_rule(Rule=rule["Name"])["Targets"]
        tags = events.list_tags_for_resource(ResourceARN=rule["Arn"])["Tags"]
        out["rules"][rule["Name"]] = {
            "pattern": json.loads(rule["EventPattern"]), "state": rule["State"],
            "targets": sorted((t["Id"], t["Arn"]) for t in targets),
            "tags": {t["Key"]: t["Value"] for t in tags}}
    for pol in list_kip_policies(session):
        doc = iam.get_policy_version(PolicyArn=pol["Arn"], VersionId=pol["DefaultVersionId"])[
            "PolicyVersion"]["Document"]
        out["policies"][pol["PolicyName"]] = {
            "arn": pol["Arn"], "path": pol["Path"],
            "document": json.loads(doc) if isinstance(doc, str) else doc,
            "tags": {t["Key"]: t["Value"] for t in iam.list_policy_tags(PolicyArn=pol["Arn"])[
                "Tags"]}}
    for role in iam.list_roles()["Roles"]:
        arns = sorted(attached(role["RoleName"], session))
        if arns:
            out["attachments"][role["RoleName"]] = arns
    return out


def assert_nothing_managed(session=None, role: str = ROLE) -> None:
    assert list_queue_urls(session=session) == []
    assert list_rule_names(session=session) == []
    assert list_kip_policies(session) == []
    try:
        assert attached(role, session) == []
    except ClientError as exc:
        assert exc.response["Error"]["Code"] == "NoSuchEntity"


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


class FailOnce:
    """Make one write call fail once with a hard ClientError, as AWS would (AccessDenied).

    Hooked on ``before-parameter-build`` rather than ``before-call`` because that event carries
    the API parameters, so each call (e.g. the queue's CreateQueue vs the DLQ's) is hit alone.
    """

    def __init__(self, operation: str, resource: str | None) -> None:
        self.operation, self.resource, self.fired = operation, resource, 0
        self._lock = threading.Lock()
        aws.add_hook("before-parameter-build.*.*", self.maybe_fail)

    def maybe_fail(self, params, model, **kw) -> None:
        if model.name != self.operation or resource_of(params) != self.resource:
            return
        with self._lock:
            if self.fired:
                return
            self.fired += 1
        raise ClientError({"Error": {"Code": "AccessDenied", "Message": "injected"}}, model.name)


class Clock:
    def __init__(self, start: float = 1_900_000_000.0) -> None:
        self.now = start

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds


def provision_clean_cluster() -> tuple[list[tuple], dict, dict]:
    """In its own fresh moto: provision ``payments-prod`` once; return the write calls, the
    resulting AWS snapshot and the record."""
    get_settings.cache_clear()
    settings = get_settings()
    _clients.clear()
    from tests.support.pod_identity import PodIdentity
    with mock_aws():
        aws.reset()
        try:
            aws.Store(settings).create_table()
            PodIdentity(ACCOUNT, REGION)    # moto has no Pod Identity API
            make_cluster(CLUSTER)
            make_role(ROLE)
            writes = WriteRecorder()
            out = drive.provision(make_kit(settings), req())
            return list(writes.calls), snapshot(), out.record
        finally:
            aws.reset()
            _clients.clear()
            get_settings.cache_clear()


@pytest.fixture(scope="module")
def clean_run():
    return provision_clean_cluster()


EXPECTED_WRITES = sorted(
    [("sqs", "CreateQueue", DLQ), ("sqs", "CreateQueue", QUEUE),
     ("iam", "CreatePolicy", POLICY), ("iam", "AttachRolePolicy", ROLE)]
    + [("events", "PutRule", RULE), ("events", "PutTargets", RULE)])


# ------------------------------------------------------------------------------ provision

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
        tags = client("sqs").list_queue_tags(QueueUrl=queue_url(name))["Tags"]
        assert tags["karpenter.sh/discovery"] == CLUSTER
        assert tags[naming.MANAGED_BY_TAG] == naming.MANAGED_BY_VALUE
        assert tags[naming.CLUSTER_TAG] == f"{ACCOUNT}/{REGION}/{CLUSTER}"
    assert out.changed is True


def test_provision_creates_one_rule_for_every_kind_targeting_the_queue(engine, cluster):
    # when
    drive.provision(engine, req())

    # then
    events = client("events")
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
    doc = snapshot()["policies"][POLICY]["document"]
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
    before = snapshot()

    # when
    out = drive.provision(engine, req(message_retention_seconds=3600))

    # then
    assert [(a["id"], a["params"]["attributes"]) for a in out.actions] == [
        ("queue.update", {"MessageRetentionPeriod": "3600"})]
    after = snapshot()
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
    assert json.loads(client("events").describe_rule(Name=RULE)["EventPattern"]) == \
        policies.interruption_pattern(["spot_interruption", "scheduled_change"])
    assert queue_attributes(QUEUE)["Policy"] == queue_policy
    assert out.record["resources"]["rule"]["exists"]
    assert out.record["event_kinds"] == ["spot_interruption", "scheduled_change"]
    # and back again
    drive.provision(engine, req())
    assert json.loads(client("events").describe_rule(Name=RULE)["EventPattern"]) == \
        policies.interruption_pattern(ALL_EVENT_KINDS)


def test_kms_key_adds_a_policy_version_with_decrypt(engine, cluster):
    # given
    drive.provision(engine, req())
    key_arn = make_key(Description="karpenter")["Arn"]

    # when
    out = drive.provision(engine, req(kms_key_id=key_arn))

    # then
    assert out.record["status"] == "ready"
    iam = client("iam")
    pol = iam.get_policy(PolicyArn=POLICY_ARN)["Policy"]
    assert pol["DefaultVersionId"] != "v1"
    doc = snapshot()["policies"][POLICY]["document"]
    assert {"Sid": "KarpenterInterruptionQueueKey", "Effect": "Allow",
            "Action": ["kms:Decrypt"], "Resource": key_arn} in doc["Statement"]
    assert out.record["resources"]["policy"]["default_version"] == pol["DefaultVersionId"]
    attrs = queue_attributes(QUEUE)
    assert attrs["KmsMasterKeyId"] == key_arn
    assert attrs.get("SqsManagedSseEnabled") != "true"
    assert attached(ROLE) == [POLICY_ARN]


def test_kms_key_by_alias_is_resolved_to_the_key_arn(engine, cluster):
    # given
    kms = client("kms")
    key_arn = make_key()["Arn"]
    kms.create_alias(AliasName="alias/karpenter", TargetKeyId=key_arn)

    # when
    drive.provision(engine, req(kms_key_id="alias/karpenter"))

    # then
    assert queue_attributes(QUEUE)["KmsMasterKeyId"] == key_arn
    assert any(s["Resource"] == key_arn
               for s in snapshot()["policies"][POLICY]["document"]["Statement"])


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
    iam = client("iam")

    # when: eight document changes
    for i in range(8):
        drive.provision(engine, req(kms_key_id=key_arn if i % 2 == 0 else None))

        # then
        versions = iam.list_policy_versions(PolicyArn=POLICY_ARN)["Versions"]
        assert len(versions) <= 5
        assert sum(v["IsDefaultVersion"] for v in versions) == 1
    doc = snapshot()["policies"][POLICY]["document"]
    assert [s["Sid"] for s in doc["Statement"]] == ["KarpenterInterruptionQueue"]


def test_missing_role_waits_then_reconcile_attaches(engine):
    # given
    make_cluster(CLUSTER)

    # when
    out = drive.provision(engine, req())

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
    drive.provision(engine, req())
    calls = Calls()

    # when
    out = drive.provision(engine, req())

    # then
    assert calls.writes == []
    assert out.record["status"] == "waiting_for_role"


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
    sqs = client("sqs")
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
    assert client("sqs").list_queue_tags(QueueUrl=queue_url(QUEUE))["Tags"] == {
        "team": "someone-else"}
    assert [u.rsplit("/", 1)[1] for u in list_queue_urls()] == [QUEUE]
    assert list_rule_names() == []
    assert list_kip_policies() == []
    assert attached(ROLE) == []
    assert engine.registry.get(cid()) is None


def test_after_a_refusal_the_cluster_can_be_provisioned_at_once(engine, cluster):
    # given: a refusal must not leave a lease behind
    sqs = client("sqs")
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
    sqs = client("sqs")
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


# ------------------------------------------------------------------------------ drift

def drop_target() -> None:
    client("events").remove_targets(Rule=RULE, Ids=["KarpenterInterruptionQueueTarget"])


def drop_rule() -> None:
    drop_target()
    client("events").delete_rule(Name=RULE)


def change_visibility() -> None:
    client("sqs").set_queue_attributes(QueueUrl=queue_url(QUEUE),
                                       Attributes={"VisibilityTimeout": "30"})


def detach() -> None:
    client("iam").detach_role_policy(RoleName=ROLE, PolicyArn=POLICY_ARN)


DRIFTS = {
    "target": ([drop_target], {"targets"}),
    "rule": ([drop_rule], {"rule", "targets"}),
    "visibility": ([change_visibility], {"queue.update"}),
    "detached": ([detach], {"attach"}),
}
DRIFTS["all"] = ([f for fs, _ in DRIFTS.values() for f in fs],
                 set().union(*(ids for _, ids in DRIFTS.values())))


@pytest.mark.parametrize("drift", list(DRIFTS))
def test_reconcile_dry_run_reports_drift_then_reconcile_repairs_it(engine, cluster, drift):
    # given
    drive.provision(engine, req())
    clean = snapshot()
    for make_drift in DRIFTS[drift][0]:
        make_drift()
    drifted, record = snapshot(), engine.registry.get(cid())
    calls = Calls()

    # when
    out = drive.reconcile(engine, cid(), dry_run=True)

    # then: reported, nothing changed
    assert out.dry_run is True
    assert {a["id"] for a in out.actions} == DRIFTS[drift][1]
    assert calls.writes == []
    assert snapshot() == drifted
    assert engine.registry.get(cid()) == record

    # when
    out = drive.reconcile(engine, cid())

    # then: repaired
    assert {a["id"] for a in out.actions} == DRIFTS[drift][1]
    assert snapshot() == clean
    assert out.record["status"] == "ready"
    assert drive.reconcile(engine, cid()).actions == []


def test_reconcile_without_a_record_is_not_found(engine, cluster):
    # when / then
    with pytest.raises(errors.RecordNotFound):
        drive.reconcile(engine, cid())


# ------------------------------------------------------------------------------ teardown

def test_teardown_leaves_nothing(engine, cluster):
    # given
    drive.provision(engine, req())

    # when
    out = drive.teardown(engine, cid())

    # then
    assert out.changed is True
    assert out.skipped == []
    assert_nothing_managed()
    assert engine.registry.get(cid()) is None
    with pytest.raises(errors.RecordNotFound):
        drive.describe(engine, cid())


def test_teardown_removes_old_policy_versions_and_every_attachment(engine, cluster):
    # given
    drive.provision(engine, req())
    drive.provision(engine, req(max_receive_count=9))      # same policy document: no new version
    key_arn = make_key()["Arn"]
    drive.provision(engine, req(kms_key_id=key_arn))       # v2
    make_role("KarpenterController-extra")
    client("iam").attach_role_policy(RoleName="KarpenterController-extra", PolicyArn=POLICY_ARN)

    # when
    drive.teardown(engine, cid())

    # then
    assert_nothing_managed()
    assert attached("KarpenterController-extra") == []


def delete_queue_by_hand() -> None:
    client("sqs").delete_queue(QueueUrl=queue_url(QUEUE))


def delete_dlq_by_hand() -> None:
    client("sqs").delete_queue(QueueUrl=queue_url(DLQ))


def delete_policy_by_hand() -> None:
    detach()
    client("iam").delete_policy(PolicyArn=POLICY_ARN)


@pytest.mark.parametrize("by_hand", [delete_queue_by_hand, delete_dlq_by_hand, drop_target,
                                     drop_rule, detach, delete_policy_by_hand])
def test_teardown_after_a_resource_was_deleted_by_hand(engine, cluster, by_hand):
    # given
    drive.provision(engine, req())
    by_hand()

    # when
    drive.teardown(engine, cid())

    # then
    assert_nothing_managed()
    assert engine.registry.get(cid()) is None


@pytest.mark.parametrize("operation, remove", [
    ("DeleteQueue", lambda params: client("sqs").delete_queue(QueueUrl=params["QueueUrl"])),
    ("RemoveTargets", lambda params: drop_rule()),
    ("DeleteRule", lambda params: client("events").delete_rule(Name=params["Name"])),
    ("DetachRolePolicy", lambda params: detach()),
    ("DeletePolicy", lambda params: client("iam").delete_policy(PolicyArn=POLICY_ARN)),
])
def test_teardown_treats_gone_during_the_run_as_done(engine, cluster, operation, remove):
    # given: the resource disappears between observing it and deleting it
    drive.provision(engine, req())
    lock, fired = threading.Lock(), []

    def vanish(params, model, **kw):
        with lock:
            if model.name == operation and not fired:
                fired.append(params)
                remove(params)
    aws.add_hook("before-parameter-build.*.*", vanish)

    # when
    drive.teardown(engine, cid())

    # then
    assert fired
    assert_nothing_managed()
    assert engine.registry.get(cid()) is None


def test_teardown_never_deletes_an_untagged_same_named_queue(engine, cluster):
    # given: after provisioning, someone replaced the queue with their own
    drive.provision(engine, req())
    delete_queue_by_hand()
    client("sqs").create_queue(QueueName=QUEUE, tags={"team": "someone-else"})
    theirs = queue_attributes(QUEUE)

    # when
    out = drive.teardown(engine, cid())

    # then
    assert [(s["resource"], s["name"]) for s in out.skipped] == [("queue", QUEUE)]
    assert queue_attributes(QUEUE) == theirs
    assert [u.rsplit("/", 1)[1] for u in list_queue_urls()] == [QUEUE]
    assert list_rule_names() == [] and list_kip_policies() == []


def test_teardown_without_a_record_leaves_an_untagged_queue_alone(engine, cluster):
    # given
    client("sqs").create_queue(QueueName=QUEUE)

    # when
    with pytest.raises(errors.RecordNotFound):
        drive.teardown(engine, cid())

    # then
    assert [u.rsplit("/", 1)[1] for u in list_queue_urls()] == [QUEUE]


def test_teardown_without_a_record_removes_tagged_leftovers(engine, cluster):
    # given: a run that created resources but lost its record
    drive.provision(engine, req())
    rec = engine.registry.get(cid())
    client("dynamodb").delete_item(TableName=engine.settings.table_name,
                                   Key={"id": {"S": rec["id"]}})

    # when
    drive.teardown(engine, cid())

    # then
    assert_nothing_managed()


# ------------------------------------------------------------------------------ failures

def test_clean_provision_makes_exactly_the_expected_write_calls(clean_run):
    # given
    writes, _, record = clean_run

    # then: the AWS resource writes (DynamoDB record writes are tested separately)
    assert sorted(w for w in writes if w[0] != "dynamodb") == EXPECTED_WRITES
    assert [w[1] for w in writes if w[0] == "dynamodb"] == ["PutItem", "PutItem"]
    assert record["status"] == "ready"


@pytest.mark.parametrize("service, operation, resource", EXPECTED_WRITES,
                         ids=[f"{o}-{r}" for _, o, r in EXPECTED_WRITES])
def test_failure_at_each_write_call_is_recorded_and_the_next_run_converges(
        engine, cluster, clean_run, service, operation, resource):
    # given
    FailOnce(operation, resource)

    # when
    with pytest.raises(errors.AwsCallFailed) as exc:
        drive.provision(engine, req())

    # then
    assert exc.value.code == "AwsCallFailed"
    assert exc.value.extra["aws_code"] == "AccessDenied"
    rec = engine.registry.get(cid())
    assert rec["status"] == "failed"
    assert rec["last_error"]["call"] == xform_name(operation)
    assert rec["last_error"]["resource"] == resource
    assert rec["last_error"]["code"] == "AccessDenied"
    assert rec["last_error"]["step"] not in rec["applied"]
    assert "lease_owner" not in rec
    assert exc.value.extra["record"]["status"] == "failed"
    # the record says what exists after the partial run
    state, res = snapshot(), rec["resources"]
    assert res["dlq"]["exists"] == (DLQ in state["queues"])
    assert res["queue"]["exists"] == (QUEUE in state["queues"])
    assert res["policy"]["exists"] == (POLICY in state["policies"])
    assert res["rule"]["exists"] == (RULE in state["rules"])
    assert res["rule"]["target"] == bool(state["rules"].get(RULE, {}).get("targets"))
    assert res["attachment"]["attached"] == (ROLE in state["attachments"])

    # when
    out = drive.provision(engine, req())

    # then
    assert out.record["status"] == "ready"
    assert "last_error" not in out.record
    assert snapshot() == clean_run[1]
    assert drive.provision(engine, req()).actions == []


def test_crash_while_saving_the_record_is_recovered_after_the_lease_expires(moto_env, clean_run):
    # given: the record write after the AWS calls fails, as if the Lambda died there
    clock = Clock()
    engine = make_kit(moto_env, clock=clock)
    make_cluster(CLUSTER)
    make_role(ROLE)
    puts = []

    def fail_second_put(model, **kw):
        if model.name == "PutItem":
            puts.append(1)
            if len(puts) == 2:
                raise ClientError({"Error": {"Code": "AccessDenied", "Message": "x"}}, "PutItem")
    aws.add_hook("before-call.dynamodb.PutItem", fail_second_put)
    with pytest.raises(errors.AwsCallFailed):
        drive.provision(engine, req())
    rec = engine.registry.get(cid())
    assert rec["status"] == "provisioning" and rec["lease_owner"]

    # when / then: the lease protects the crashed run until it expires
    with pytest.raises(errors.InProgress):
        drive.provision(engine, req())
    clock.advance(engine.settings.lease_seconds + 1)
    out = drive.provision(engine, req())

    # then
    assert out.record["status"] == "ready"
    assert snapshot() == clean_run[1]


# ------------------------------------------------------------------------------ events

@pytest.mark.parametrize("sample", SAMPLE_EVENTS)
def test_sample_event_arrives_in_the_cluster_queue(engine, cluster, sample):
    # given
    drive.provision(engine, req())
    event = load_event(sample)

    # when
    client("events").put_events(Entries=[{
        "Source": event["source"], "DetailType": event["detail-type"],
        "Detail": json.dumps(event["detail"]), "Resources": event["resources"]}])

    # then
    msgs = client("sqs").receive_message(QueueUrl=queue_url(QUEUE), MaxNumberOfMessages=10,
                                         WaitTimeSeconds=0).get("Messages", [])
    assert len(msgs) == 1
    body = json.loads(msgs[0]["Body"])
    assert body["source"] == event["source"]
    assert body["detail-type"] == event["detail-type"]
    assert body["detail"] == event["detail"]


def test_all_five_kinds_have_a_sample():
    # then
    assert len(SAMPLE_EVENTS) == 5


UNRELATED = [
    ("aws.s3", "Object Created", {"bucket": {"name": "b"}}),
    ("aws.ec2", "EC2 AMI State Change", {"ImageId": "ami-1"}),
    ("aws.health", "AWS Health Event", {"service": "RDS", "eventTypeCategory": "scheduledChange"}),
    ("aws.health", "AWS Health Event", {"service": "EC2", "eventTypeCategory": "issue"}),
]


def test_unrelated_events_do_not_arrive(engine, cluster):
    # given
    drive.provision(engine, req())

    # when
    out = client("events").put_events(Entries=[
        {"Source": source, "DetailType": detail_type, "Detail": json.dumps(detail),
         "Resources": []} for source, detail_type, detail in UNRELATED])

    # then
    assert out["FailedEntryCount"] == 0
    msgs = client("sqs").receive_message(QueueUrl=queue_url(QUEUE), MaxNumberOfMessages=10,
                                         WaitTimeSeconds=0).get("Messages", [])
    assert msgs == []


def test_disabled_kind_does_not_arrive(engine, cluster):
    # given
    drive.provision(engine, req(event_kinds=["spot_interruption"]))
    event = load_event("ec2-rebalance-recommendation.json")

    # when
    client("events").put_events(Entries=[{
        "Source": event["source"], "DetailType": event["detail-type"],
        "Detail": json.dumps(event["detail"]), "Resources": event["resources"]}])

    # then
    assert client("sqs").receive_message(QueueUrl=queue_url(QUEUE)).get("Messages", []) == []


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
    only_a = snapshot()
    drive.provision(engine, req(b, controller_role="KarpenterController-b"))

    # then
    assert len(list_queue_urls()) == 4
    assert len(list_rule_names()) == 2
    assert len(list_kip_policies()) == 2

    # when
    drive.teardown(engine, cid(b))

    # then
    assert snapshot() == only_a
    assert drive.describe(engine, cid(a))["status"] == "ready"
    assert drive.reconcile(engine, cid(a)).actions == []


# ------------------------------------------------------------------------------ leases

@pytest.fixture
def clock():
    return Clock()


@pytest.fixture
def clocked(moto_env, clock):
    return make_kit(moto_env, clock=clock)


def test_second_acquire_while_the_lease_is_live_is_in_progress(clocked):
    # given
    reg = clocked.registry
    first = reg.acquire(cid(), "run-a", None, {"status": "provisioning"})

    # when / then: whether the loser read no record or the leased one
    with pytest.raises(errors.InProgress) as exc:
        reg.acquire(cid(), "run-b", None, {"status": "provisioning"})
    assert exc.value.code == "ProvisioningInProgress"
    assert exc.value.status == 409
    assert exc.value.retry_after > 0
    with pytest.raises(errors.InProgress):
        reg.acquire(cid(), "run-b", first, {"status": "provisioning"})
    assert reg.get(cid())["lease_owner"] == "run-a"


def test_the_holder_may_renew_its_own_lease(clocked):
    # given
    reg = clocked.registry
    first = reg.acquire(cid(), "run-a", None, {"status": "provisioning"})

    # when
    again = reg.acquire(cid(), "run-a", first, {"status": "provisioning"})

    # then
    assert again["version"] == first["version"] + 1


def test_an_expired_lease_is_taken_over(clocked, clock):
    # given
    reg = clocked.registry
    first = reg.acquire(cid(), "run-a", None, {"status": "provisioning"})

    # when
    clock.advance(clocked.settings.lease_seconds + 1)
    second = reg.acquire(cid(), "run-b", first, {"status": "provisioning"})

    # then
    assert second["lease_owner"] == "run-b"
    assert reg.get(cid())["lease_owner"] == "run-b"


def test_a_stale_save_is_refused(clocked, clock):
    # given: run-a's lease expired and run-b took over
    reg = clocked.registry
    first = reg.acquire(cid(), "run-a", None, {"status": "provisioning"})
    clock.advance(clocked.settings.lease_seconds + 1)
    second = reg.acquire(cid(), "run-b", first, {"status": "provisioning"})

    # when / then
    with pytest.raises(errors.StaleWrite) as exc:
        reg.save(first.model_copy(update={"status": "ready"}), "run-a")
    assert exc.value.code == "StaleRecord"
    with pytest.raises(errors.StaleWrite):
        reg.delete(first, "run-a")
    saved = reg.save(second.model_copy(update={"status": "ready"}), "run-b")
    assert reg.get(cid()) == saved


def test_an_acquire_on_an_outdated_read_is_stale(clocked):
    # given
    reg = clocked.registry
    first = reg.acquire(cid(), "run-a", None, {"status": "provisioning"})
    reg.save(first, "run-a")            # released, version moved on

    # when / then
    with pytest.raises(errors.StaleWrite):
        reg.acquire(cid(), "run-b", first, {"status": "provisioning"})


def test_provision_while_another_run_holds_the_lease(clocked, clock, cluster):
    # given
    clocked.registry.acquire(cid(), "someone-else", None, {"status": "provisioning"})

    # when / then
    with pytest.raises(errors.InProgress):
        drive.provision(clocked, req())
    assert_nothing_managed()
    with pytest.raises(errors.InProgress):
        drive.teardown(clocked, cid())

    # when: the other run died
    clock.advance(clocked.settings.lease_seconds + 1)
    out = drive.provision(clocked, req())

    # then
    assert out.record["status"] == "ready"


def test_lease_is_released_after_every_run(clocked, cluster):
    # when
    drive.provision(clocked, req())

    # then
    rec = clocked.registry.get(cid())
    assert "lease_owner" not in rec and "lease_expires" not in rec


# ------------------------------------------------------------------------------ accounts

def other_account_session() -> boto3.Session:
    creds = client("sts").assume_role(
        RoleArn=f"arn:aws:iam::{OTHER_ACCOUNT}:role/kip-provisioner",
        RoleSessionName="test-setup")["Credentials"]
    return boto3.Session(aws_access_key_id=creds["AccessKeyId"],
                         aws_secret_access_key=creds["SecretAccessKey"],
                         aws_session_token=creds["SessionToken"], region_name=REGION)


def test_cross_account_provision_goes_through_sts(engine):
    # given: the cluster and its controller role live in another account
    other = other_account_session()
    assert other.client("sts").get_caller_identity()["Account"] == OTHER_ACCOUNT
    iam = other.client("iam")
    iam.create_role(RoleName="eks-cluster-role", AssumeRolePolicyDocument="{}")
    iam.create_role(RoleName=ROLE, AssumeRolePolicyDocument="{}")
    other.client("eks").create_cluster(
        name=CLUSTER, roleArn=f"arn:aws:iam::{OTHER_ACCOUNT}:role/eks-cluster-role",
        resourcesVpcConfig={"subnetIds": ["subnet-0abc"]})
    assumed = []
    aws.add_hook("before-parameter-build.sts.AssumeRole",
                 lambda params, **kw: assumed.append(params["RoleArn"]))

    # when
    out = drive.provision(engine, req(account_id=OTHER_ACCOUNT))

    # then
    assert assumed == [f"arn:aws:iam::{OTHER_ACCOUNT}:role/kip-provisioner"]
    assert out.record["id"] == f"{OTHER_ACCOUNT}/{REGION}/{CLUSTER}"
    assert out.record["status"] == "ready"
    assert out.record["names"]["queue_arn"] == f"arn:aws:sqs:{REGION}:{OTHER_ACCOUNT}:{QUEUE}"
    theirs = snapshot(other)
    assert set(theirs["queues"]) == {QUEUE, DLQ}
    assert len(theirs["rules"]) == 1
    assert theirs["attachments"] == {
        ROLE: [f"arn:aws:iam::{OTHER_ACCOUNT}:policy/kip/{POLICY}"]}
    assert_nothing_managed()      # nothing in the service's own account
    assert engine.registry.get(cid(account=OTHER_ACCOUNT))["status"] == "ready"

    # when
    drive.teardown(engine, cid(account=OTHER_ACCOUNT))

    # then
    assert_nothing_managed(other)
    assert engine.registry.get(cid(account=OTHER_ACCOUNT)) is None


def test_cross_account_missing_cluster_is_not_found(engine, cluster):
    # when / then: a cluster of the same name in our own account does not count
    with pytest.raises(errors.ClusterNotFound):
        drive.provision(engine, req(account_id=OTHER_ACCOUNT))
    assert_nothing_managed(other_account_session())


def test_all_event_kinds_are_covered_by_the_constants():
    # then
    assert set(LEGACY_RULES) == set(PATTERNS) == set(ALL_EVENT_KINDS)
