"""spec: request validation (400 naming the field, 403 for roles we may not touch) and the
desired resources a request implies."""
from __future__ import annotations

import json

import pytest

from chalicelib import errors
from chalicelib.core import naming, policies, spec
from chalicelib.config import ALL_EVENT_KINDS, Settings
from tests.support.world import ACCOUNT, OTHER_ACCOUNT, REGION


@pytest.fixture
def settings():
    return Settings(region=REGION, account_id=ACCOUNT)


def cid(name: str = "payments-prod") -> naming.ClusterId:
    return naming.ClusterId(ACCOUNT, REGION, name)


def build(body: dict, settings: Settings, kms_key_arn: str | None = None) -> spec.DesiredSpec:
    req = spec.parse_request({"cluster_name": "payments-prod", **body})
    c = naming.ClusterId(req.account_id or ACCOUNT, req.region or REGION, req.cluster_name)
    return spec.build_spec(req, c, naming.names_for(c, settings.prefix, settings.iam_path),
                           settings, kms_key_arn)


def invalid(body) -> errors.ValidationError:
    with pytest.raises(errors.ValidationError) as exc:
        spec.parse_request(body)
    assert exc.value.status == 400
    assert exc.value.code == "ValidationError"
    return exc.value


# ------------------------------------------------------------------------------ validation

def test_minimal_request_is_valid():
    # when
    req = spec.parse_request({"cluster_name": "payments-prod"})

    # then
    assert req.cluster_name == "payments-prod"
    assert req.dry_run is False
    assert req.event_kinds is None


def test_full_request_is_valid():
    # when
    req = spec.parse_request({
        "cluster_name": "p", "account_id": ACCOUNT, "region": "us-east-1",
        "controller_role": "KarpenterController-p", "event_kinds": ["spot_interruption"],
        "kms_key_id": "alias/karpenter", "message_retention_seconds": 60,
        "visibility_timeout_seconds": 0, "max_receive_count": 1000,
        "tags": {"team": "payments"}, "dry_run": True})

    # then
    assert req.event_kinds == ["spot_interruption"]
    assert req.dry_run is True


@pytest.mark.parametrize("body", [None, [], "cluster", 3])
def test_body_must_be_an_object(body):
    # then
    assert invalid(body).field == "body"


def test_unknown_field_is_named():
    # when
    err = invalid({"cluster_name": "a", "queue_name": "mine"})

    # then
    assert err.field == "queue_name"
    assert "cluster_name" in err.allowed


def test_every_problem_is_reported_in_details():
    # when
    err = invalid({"cluster_name": 7, "max_receive_count": 0, "extra": 1})

    # then
    assert {d["field"] for d in err.details} == {"cluster_name", "max_receive_count", "extra"}


@pytest.mark.parametrize("field, value", [
    ("cluster_name", 123),
    ("cluster_name", None),
    ("account_id", 123456789012),
    ("region", ["eu-west-1"]),
    ("controller_role", 5),
    ("event_kinds", "spot_interruption"),
    ("kms_key_id", 42),
    ("message_retention_seconds", "600"),
    ("message_retention_seconds", 600.0),
    ("visibility_timeout_seconds", 30.5),
    ("max_receive_count", "5"),
    ("tags", ["team=a"]),
    ("tags", {"team": 1}),
    ("dry_run", "true"),
])
def test_wrong_types_are_refused(field, value):
    # when
    err = invalid({"cluster_name": "a", field: value})

    # then: nested problems name the path, e.g. tags.team
    assert err.field.split(".")[0] == field


@pytest.mark.parametrize("field, value", [
    ("message_retention_seconds", True),
    ("visibility_timeout_seconds", False),
    ("max_receive_count", True),
    ("dry_run", 1),
    ("dry_run", 0),
])
def test_bool_and_int_are_not_interchangeable(field, value):
    # then
    assert invalid({"cluster_name": "a", field: value}).field == field


@pytest.mark.parametrize("field, value", [
    ("message_retention_seconds", 59),
    ("message_retention_seconds", 1209601),
    ("visibility_timeout_seconds", -1),
    ("visibility_timeout_seconds", 43201),
    ("max_receive_count", 0),
    ("max_receive_count", 1001),
])
def test_out_of_range_numbers_are_refused(field, value):
    # then
    assert invalid({"cluster_name": "a", field: value}).field == field


@pytest.mark.parametrize("field, value", [
    ("message_retention_seconds", 60), ("message_retention_seconds", 1209600),
    ("visibility_timeout_seconds", 0), ("visibility_timeout_seconds", 43200),
    ("max_receive_count", 1), ("max_receive_count", 1000),
])
def test_range_bounds_are_inclusive(field, value):
    # then
    assert getattr(spec.parse_request({"cluster_name": "a", field: value}), field) == value


@pytest.mark.parametrize("name", ["", "-a", "_a", "a.b", "a b", "a" * 101, "é"])
def test_invalid_cluster_names_are_refused(name):
    # then
    assert invalid({"cluster_name": name}).field == "cluster_name"
    with pytest.raises(errors.ValidationError) as err:
        spec.validate_identity(name, "123456789012", "eu-west-1", Settings(region="eu-west-1"))
    assert err.value.field == "cluster_name"


@pytest.mark.parametrize("field, value", [
    ("account_id", "12345678901"), ("account_id", "12345678901a"),
    ("region", "EU-WEST-1"), ("region", "europe"),
])
def test_invalid_account_and_region_are_refused(field, value):
    # then
    assert invalid({"cluster_name": "a", field: value}).field == field


@pytest.mark.parametrize("kinds", [
    ["rebalance_recommendation"],
    ["instance_state_change", "scheduled_change"],
])
def test_event_kinds_must_include_spot_interruption(kinds):
    # then
    assert invalid({"cluster_name": "a", "event_kinds": kinds}).field == "event_kinds"


@pytest.mark.parametrize("kinds", [
    [], ["spot_interruption", "spot_interruption"], ["spot_interruption", "earthquake"]])
def test_event_kinds_must_be_a_non_empty_set_of_known_kinds(kinds):
    # then
    assert invalid({"cluster_name": "a", "event_kinds": kinds}).field.startswith("event_kinds")


def test_event_kinds_are_put_in_canonical_order():
    # when
    req = spec.parse_request({"cluster_name": "a", "event_kinds": [
        "scheduled_change", "spot_interruption", "rebalance_recommendation"]})

    # then
    assert req.event_kinds == ["spot_interruption", "rebalance_recommendation",
                               "scheduled_change"]


@pytest.mark.parametrize("key", [
    "alias/aws/sqs", f"arn:aws:kms:{REGION}:{ACCOUNT}:alias/aws/sqs", "alias/aws/ebs"])
def test_aws_managed_kms_keys_are_refused(key):
    # then
    assert invalid({"cluster_name": "a", "kms_key_id": key}).field == "kms_key_id"


@pytest.mark.parametrize("key", ["not a key", "arn:aws:s3:::bucket", "alias/"])
def test_malformed_kms_keys_are_refused(key):
    # then
    assert invalid({"cluster_name": "a", "kms_key_id": key}).field == "kms_key_id"


@pytest.mark.parametrize("key", [
    "0b5a6c8e-1111-2222-3333-444455556666", "mrk-" + "a" * 32, "alias/karpenter",
    f"arn:aws:kms:{REGION}:{ACCOUNT}:key/0b5a6c8e-1111-2222-3333-444455556666",
    f"arn:aws:kms:{REGION}:{ACCOUNT}:alias/karpenter"])
def test_customer_kms_keys_are_accepted(key):
    # then
    assert spec.parse_request({"cluster_name": "a", "kms_key_id": key}).kms_key_id == key


@pytest.mark.parametrize("tags", [
    {"aws:createdBy": "x"}, {"kip.io/cluster": "x"}, {"karpenter.sh/discovery": "x"},
    {"k" * 129: "v"}, {"team": "v" * 257}, {f"t{i}": "v" for i in range(21)}])
def test_reserved_or_oversized_tags_are_refused(tags):
    # then
    assert invalid({"cluster_name": "a", "tags": tags}).field == "tags"


@pytest.mark.parametrize("role", ["", "has space", "r" * 65, "arn:aws:iam::123:role/x"])
def test_malformed_controller_role_is_refused(role):
    # then
    assert invalid({"cluster_name": "a", "controller_role": role}).field == "controller_role"


def test_role_arn_in_another_partition_than_the_region_is_refused():
    # when
    err = invalid({"cluster_name": "a", "region": REGION,
                   "controller_role": f"arn:aws-cn:iam::{ACCOUNT}:role/KarpenterController-a"})

    # then
    assert err.field == "controller_role"


# ------------------------------------------------------------------------------ roles

def test_default_role_comes_from_the_template(settings):
    # given
    req = spec.parse_request({"cluster_name": "payments-prod"})

    # when
    role = spec.resolve_role(req, cid(), settings)

    # then
    assert role.name == "KarpenterController-payments-prod"
    assert role.arn == f"arn:aws:iam::{ACCOUNT}:role/KarpenterController-payments-prod"


def test_role_arn_with_a_path_is_accepted(settings):
    # given
    arn = f"arn:aws:iam::{ACCOUNT}:role/teams/KarpenterController-x"
    req = spec.parse_request({"cluster_name": "payments-prod", "controller_role": arn})

    # when
    role = spec.resolve_role(req, cid(), settings)

    # then
    assert role == spec.RoleRef("KarpenterController-x", arn)


def test_role_arn_in_another_account_is_a_validation_error(settings):
    # given
    req = spec.parse_request({
        "cluster_name": "payments-prod",
        "controller_role": f"arn:aws:iam::{OTHER_ACCOUNT}:role/KarpenterController-x"})

    # when
    with pytest.raises(errors.ValidationError) as exc:
        spec.resolve_role(req, cid(), settings)

    # then
    assert exc.value.field == "controller_role"
    assert exc.value.status == 400


@pytest.mark.parametrize("role", [
    "admin", "OrganizationAccountAccessRole",
    f"arn:aws:iam::{ACCOUNT}:role/admin"])
def test_role_outside_the_allowed_pattern_is_forbidden(settings, role):
    # given
    req = spec.parse_request({"cluster_name": "payments-prod", "controller_role": role})

    # when
    with pytest.raises(errors.Forbidden) as exc:
        spec.resolve_role(req, cid(), settings)

    # then
    assert exc.value.status == 403
    assert exc.value.code == "Forbidden"
    assert exc.value.field == "controller_role"
    assert exc.value.allowed == "KarpenterController-*"


def test_explicit_role_pattern_is_honoured():
    # given
    settings = Settings(region=REGION, role_pattern="karpenter-*")
    req = spec.parse_request({"cluster_name": "a", "controller_role": "karpenter-a"})

    # when
    role = spec.resolve_role(req, cid("a"), settings)

    # then
    assert role.name == "karpenter-a"
    with pytest.raises(errors.Forbidden):
        spec.resolve_role(spec.parse_request({"cluster_name": "a"}), cid("a"), settings)


def test_template_role_name_over_64_characters_must_be_named_explicitly(settings):
    # given: KarpenterController- + 100 characters is longer than an IAM role name may be
    req = spec.parse_request({"cluster_name": "c" * 100})

    # when
    with pytest.raises(errors.ValidationError) as exc:
        spec.resolve_role(req, cid("c" * 100), settings)

    # then
    assert exc.value.field == "controller_role"


# ------------------------------------------------------------------------------ desired spec

def test_defaults_describe_the_reference_queue(settings):
    # when
    s = build({}, settings)

    # then
    q = s.queue_attributes
    assert q["MessageRetentionPeriod"] == "1209600"
    assert q["VisibilityTimeout"] == "300"
    assert q["DelaySeconds"] == "0"
    assert q["SqsManagedSseEnabled"] == "true"
    assert "KmsMasterKeyId" not in q
    assert json.loads(q["RedrivePolicy"]) == {"deadLetterTargetArn": s.names.dlq_arn,
                                              "maxReceiveCount": 5}
    assert json.loads(q["Policy"]) == s.queue_policy
    assert s.event_kinds == ALL_EVENT_KINDS
    assert s.rule_pattern == policies.interruption_pattern(ALL_EVENT_KINDS)
    assert s.kms_key_arn is None
    # only the cluster's one rule may send
    allow = [st for st in s.queue_policy["Statement"] if st["Effect"] == "Allow"][0]
    assert allow["Condition"]["ArnEquals"]["aws:SourceArn"] == [s.names.rule_arn]


def test_parameters_flow_into_the_attributes(settings):
    # when
    s = build({"message_retention_seconds": 3600, "visibility_timeout_seconds": 0,
               "max_receive_count": 9}, settings)

    # then
    assert s.queue_attributes["MessageRetentionPeriod"] == "3600"
    assert s.queue_attributes["VisibilityTimeout"] == "0"
    assert json.loads(s.queue_attributes["RedrivePolicy"])["maxReceiveCount"] == 9


def test_kms_key_switches_encryption_and_adds_decrypt(settings):
    # given
    key = f"arn:aws:kms:{REGION}:{ACCOUNT}:key/0b5a6c8e-1111-2222-3333-444455556666"

    # when
    s = build({}, settings, kms_key_arn=key)

    # then
    assert s.queue_attributes["KmsMasterKeyId"] == key
    assert "SqsManagedSseEnabled" not in s.queue_attributes
    assert s.dlq_attributes["KmsMasterKeyId"] == key
    actions = {a for st in s.controller_policy["Statement"] for a in st["Action"]}
    assert "kms:Decrypt" in actions


def test_event_kinds_subset_keeps_the_queue_policy_for_all_rules(settings):
    # when
    s = build({"event_kinds": ["spot_interruption"]}, settings)
    full = build({}, settings)

    # then
    assert s.rule_pattern == {"source": ["aws.ec2"],
                              "detail-type": ["EC2 Spot Instance Interruption Warning"]}
    assert s.queue_policy == full.queue_policy


def test_ownership_and_discovery_tags_win_over_user_and_default_tags():
    # given
    settings = Settings(region=REGION, default_tags={"cost-center": "42", "team": "platform"})

    # when
    s = build({"tags": {"team": "payments"}}, settings)

    # then
    assert s.tags == {
        "cost-center": "42", "team": "payments",
        naming.DISCOVERY_TAG: "payments-prod",
        naming.MANAGED_BY_TAG: naming.MANAGED_BY_VALUE,
        naming.CLUSTER_TAG: f"{ACCOUNT}/{REGION}/payments-prod"}


def test_spec_hash_is_stable_and_changes_with_the_parameters(settings):
    # when
    a, b = build({}, settings), build({}, settings)
    c = build({"visibility_timeout_seconds": 30}, settings)

    # then
    assert a.spec_hash == b.spec_hash
    assert a.spec_hash != c.spec_hash


def test_dry_run_is_not_a_recorded_parameter(settings):
    # when
    s = build({"dry_run": True}, settings)

    # then
    assert "dry_run" not in s.parameters
    assert s.parameters["account_id"] == ACCOUNT and s.parameters["region"] == REGION


def test_settings_role_pattern_defaults_to_the_template():
    # given
    s = Settings()

    # then
    assert s.allowed_role_pattern == "KarpenterController-*"
    assert s.role_allowed("KarpenterController-x")
    assert not s.role_allowed("Admin")


# ------------------------------------------------------------------------------ tags AWS refuses late

def test_tag_keys_differing_only_in_case_are_refused():
    # IAM tag keys are case-insensitive: iam:CreatePolicy would refuse them after the queues exist
    err = invalid({"cluster_name": "a", "tags": {"Team": "a", "team": "b"}})

    assert err.field == "tags"
    assert "'Team'" in err.message and "'team'" in err.message


def test_every_case_clash_is_named():
    err = invalid({"cluster_name": "a",
                   "tags": {"Team": "a", "TEAM": "b", "env": "c", "Env": "d", "ok": "e"}})

    assert err.field == "tags"
    for key in ("'TEAM'", "'Team'", "'Env'", "'env'"):
        assert key in err.message
    assert "'ok'" not in err.message


def test_tag_keys_differing_from_a_default_tag_only_in_case_are_refused():
    # given: KIP_DEFAULT_TAGS has team=platform (the edge passes the settings' default tags)
    defaults = {"team": "platform"}
    # when / then: the exact spelling overrides the default; another spelling collides
    assert spec.parse_request({"cluster_name": "a", "tags": {"team": "payments"}}, defaults)
    with pytest.raises(errors.ValidationError) as exc:
        spec.parse_request({"cluster_name": "a", "tags": {"Team": "payments"}}, defaults)
    assert exc.value.field == "tags"
    assert "'Team' collides with 'team'" in exc.value.message


def test_build_spec_checks_tags_against_the_settings_it_is_given():
    # given: settings passed in (not read from the environment)
    settings = Settings(region=REGION, default_tags={"CostCenter": "42"})

    # when / then
    with pytest.raises(errors.ValidationError) as exc:
        build({"tags": {"costcenter": "7"}}, settings)
    assert exc.value.field == "tags"
    assert "'costcenter' collides with 'CostCenter'" in exc.value.message


def test_more_than_50_tags_per_resource_with_defaults_and_kips_own_are_refused():
    # given: 30 default tags + 20 user tags + kip's 3 = 53 > 50
    settings = Settings(region=REGION, default_tags={f"d{i}": "v" for i in range(30)})

    # when / then
    with pytest.raises(errors.ValidationError) as exc:
        build({"tags": {f"u{i}": "v" for i in range(20)}}, settings)
    assert exc.value.field == "tags" and "53" in exc.value.message
    # and 47 of theirs + kip's 3 = 50 is accepted (a user key equal to a default counts once)
    settings = Settings(region=REGION, default_tags={f"d{i}": "v" for i in range(30)})
    tags = {**{f"u{i}": "v" for i in range(17)}, "d0": "override"}
    assert len(build({"tags": tags}, settings).tags) == 50


@pytest.mark.parametrize("tags", [
    {"k" * 128: ""}, {"Team": "v" * 256}, {"Kostenstelle 1": "Zürich"}, {"a.b:c/d=e+f-g@h_i": "x"},
])
def test_tags_within_aws_limits_are_accepted(tags):
    assert spec.parse_request({"cluster_name": "a", "tags": tags}).tags == tags


@pytest.mark.parametrize("tags", [
    {"": "v"}, {"team\n": "v"}, {"team": "a\tb"}, {"te#am": "v"}, {"AWS:x": "v"},
    {"Karpenter.SH/discovery": "x"}, {"KIP.io/Cluster": "x"},
])
def test_tags_outside_aws_rules_are_refused(tags):
    assert invalid({"cluster_name": "a", "tags": tags}).field == "tags"
