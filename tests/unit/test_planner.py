"""planner: plans are plain data; dependencies put every call after what it needs."""
from __future__ import annotations

import copy
import json

import pytest

from chalicelib.converge import actions as actions_mod
from chalicelib import errors
from chalicelib.core import naming, policies, spec
from chalicelib.converge import planner
from chalicelib.config import ALL_EVENT_KINDS, Settings
from chalicelib.converge.planner import plan_provision, plan_teardown
from chalicelib.core.observed import Observed, PolicyState, QueueState, RoleState, RuleState
from tests.support.plans import (CID, LEGACY, NAMES, SETTINGS, before, by_id, converged, desired,
                                 legacy_world)
from tests.support.world import ACCOUNT, REGION, ROLE

# ------------------------------------------------------------------------------ provision

def test_plan_for_nothing_observed_creates_everything():
    # given
    s = desired()
    obs = Observed(role=RoleState(ROLE, True, []))

    # when
    actions = plan_provision(s, obs)

    # then
    ids = by_id(actions)
    assert set(ids) == {
        "dlq.create", "queue.create", "policy.create", "attach", "rule", "targets"}
    assert {a.kind for a in actions} == {"create"}
    assert ids["queue.create"].params["attributes"] == s.queue_attributes
    assert ids["dlq.create"].params["attributes"] == s.dlq_attributes
    assert ids["policy.create"].params["document"] == s.controller_policy
    assert ids["policy.create"].params["path"] == "/kip/"
    assert ids["attach"].params == {"role": ROLE, "policy_arn": NAMES.policy_arn}
    assert ids["rule"].params["pattern"] == s.rule_pattern
    assert ids["rule"].params["name"] == NAMES.rule
    assert ids["targets"].params["targets"] == [
        {"Id": "KarpenterInterruptionQueueTarget", "Arn": NAMES.queue_arn}]
    for a in actions:
        if a.op in ("create_queue", "put_rule", "create_policy"):
            assert a.params["tags"] == s.tags


def test_plan_for_nothing_observed_has_the_dependency_shape():
    # given
    s = desired()
    obs = Observed(role=RoleState(ROLE, True, []))

    # when
    actions = plan_provision(s, obs)

    # then
    ids = by_id(actions)
    assert ids["queue.create"].after == ("dlq.create",)
    assert ids["attach"].after == ("policy.create",)
    assert ids["targets"].after == ("rule",)
    assert ids["rule"].after == ()
    assert ids["dlq.create"].after == () and ids["policy.create"].after == ()
    # three independent chains of two calls each (queue, rule->targets, policy->attach): the
    # targets deliberately do not wait for the queue (EventBridge accepts a target ARN before
    # the queue exists), so a provision from nothing is two sequential round-trips.
    assert actions_mod.depth(actions) == 2


def test_every_dependency_names_an_action_of_the_plan():
    # given
    actions = plan_provision(desired(), Observed(role=RoleState(ROLE, True, [])))

    # then
    ids = by_id(actions)
    assert len(ids) == len(actions)
    assert all(p in ids for a in actions for p in a.after)


def test_plan_is_plain_printable_data():
    # given
    actions = plan_provision(desired(), Observed(role=RoleState(ROLE, True, [])))

    # when
    text = json.dumps([a.to_dict() for a in actions])

    # then
    first = json.loads(text)[0]
    assert set(first) == {"id", "op", "kind", "resource", "name", "params", "after"}
    assert isinstance(first["after"], list)


def test_missing_role_means_no_attachment_yet():
    # given
    obs = Observed(role=RoleState(ROLE, False, []))

    # when
    actions = plan_provision(desired(), obs)

    # then
    assert "attach" not in by_id(actions)
    assert "policy.create" in by_id(actions)


def test_converged_state_plans_nothing():
    # given
    s = desired()

    # then
    assert plan_provision(s, converged(s)) == []
    assert actions_mod.depth([]) == 0


def test_queue_policy_key_order_is_not_drift():
    # given
    s = desired()
    obs = converged(s)
    pol = json.loads(s.queue_attributes["Policy"])
    obs.queue.attributes["Policy"] = json.dumps(pol, sort_keys=False, indent=2)
    obs.queue.attributes["RedrivePolicy"] = json.dumps(
        {"maxReceiveCount": 5, "deadLetterTargetArn": NAMES.dlq_arn})

    # then
    assert plan_provision(s, obs) == []


def test_changed_attribute_is_updated_alone():
    # given
    s = desired()
    obs = converged(s)
    obs.queue.attributes["VisibilityTimeout"] = "30"

    # when
    actions = plan_provision(s, obs)

    # then
    assert [a.to_dict() for a in actions] == [{
        "id": "queue.update", "op": "set_queue_attributes", "kind": "update",
        "resource": "queue", "name": NAMES.queue, "after": [],
        "params": {"url": "https://sqs/q", "attributes": {"VisibilityTimeout": "300"}}}]


def test_missing_tags_are_added():
    # given
    s = desired()
    obs = converged(s)
    del obs.queue.tags[naming.DISCOVERY_TAG]

    # when
    actions = plan_provision(s, obs)

    # then
    assert [(a.id, a.params["tags"]) for a in actions] == [
        ("queue.tag", {naming.DISCOVERY_TAG: "payments-prod"})]


def test_switching_to_a_kms_key_turns_off_sqs_managed_encryption():
    # given
    key = f"arn:aws:kms:{REGION}:{ACCOUNT}:key/0b5a6c8e-1111-2222-3333-444455556666"
    before_key = desired()
    obs = converged(before_key)
    s = spec.build_spec(spec.parse_request({"cluster_name": "payments-prod"}), CID, NAMES,
                        SETTINGS, key)

    # when
    actions = by_id(plan_provision(s, obs))

    # then
    attrs = actions["queue.update"].params["attributes"]
    assert attrs["KmsMasterKeyId"] == key
    assert attrs["SqsManagedSseEnabled"] == "false"
    assert actions["policy.version"].params["document"] == s.controller_policy


def test_changed_document_prunes_old_versions_before_the_new_default():
    # given
    s = desired(max_receive_count=7)
    obs = converged(desired())
    obs.policy.document = {"Version": "2012-10-17", "Statement": []}
    obs.policy.versions = [{"VersionId": f"v{i}", "IsDefaultVersion": i == 5}
                           for i in range(1, 6)]

    # when
    actions = by_id(plan_provision(s, obs))

    # then
    prunes = {f"policy.prune.v{i}" for i in range(1, 5)}
    assert prunes <= set(actions)
    assert "policy.prune.v5" not in actions
    assert set(actions["policy.version"].after) == prunes
    assert actions["policy.version"].params["document"] == s.controller_policy


def test_changed_event_kinds_update_the_one_rule_in_place():
    # given
    obs = converged(desired())
    s = desired(event_kinds=["spot_interruption", "scheduled_change"])

    # when
    actions = plan_provision(s, obs)

    # then: one PutRule with the narrower pattern; the queue policy is unchanged
    assert [(a.id, a.kind) for a in actions] == [("rule", "update")]
    assert actions[0].params["pattern"] == policies.interruption_pattern(
        ["spot_interruption", "scheduled_change"])


def test_deleted_rule_is_recreated_with_its_target():
    # given
    s = desired()
    obs = converged(s)
    del obs.rules[NAMES.rule]

    # when
    actions = plan_provision(s, obs)

    # then
    assert [a.id for a in actions] == ["rule", "targets"]
    assert actions[1].after == ("rule",)


def test_lost_target_is_put_back_without_touching_the_rule():
    # given
    s = desired()
    obs = converged(s)
    obs.rules[NAMES.rule].targets = []

    # when
    actions = plan_provision(s, obs)

    # then
    assert [(a.id, a.after) for a in actions] == [("targets", ())]


def test_disabled_rule_is_re_enabled():
    # given
    s = desired()
    obs = converged(s)
    obs.rules[NAMES.rule].state = "DISABLED"

    # then
    assert [a.id for a in plan_provision(s, obs)] == ["rule"]


# ------------------------------------------------------------------------------ migration

def test_migration_phase_one_adds_the_rule_and_allows_both_keeping_the_old_rules():
    # given
    s, obs = legacy_world(keep_legacy=True)

    # when
    ids = by_id(plan_provision(s, obs))

    # then
    assert set(ids) == {"queue.update", "rule", "targets"}
    allowed = json.loads(ids["queue.update"].params["attributes"]["Policy"])[
        "Statement"][0]["Condition"]["ArnEquals"]["aws:SourceArn"]
    assert set(allowed) == {LEGACY.rule_arn, *LEGACY.rule_arns.values()}


def test_migration_phase_two_removes_the_old_rules_then_tightens_the_policy():
    # given: phase one is done (the policy allows both)
    s1, obs = legacy_world(keep_legacy=True)
    obs.queue.attributes["Policy"] = s1.queue_attributes["Policy"]
    obs.rules[LEGACY.rule] = RuleState(True, s1.rule_pattern, "ENABLED", dict(s1.tags), [
        {"Id": naming.TARGET_ID, "Arn": LEGACY.queue_arn}])
    req = spec.parse_request({"cluster_name": "payments-prod"})
    s2 = spec.build_spec(req, CID, LEGACY, SETTINGS, keep_legacy=False)

    # when
    actions = plan_provision(s2, obs)

    # then
    ids = by_id(actions)
    deletes = {f"legacy.{k}.delete" for k in ALL_EVENT_KINDS}
    assert deletes <= set(ids) and "rule" not in ids
    assert set(ids["queue.update"].after) >= deletes      # tighten only once they are gone
    assert json.loads(ids["queue.update"].params["attributes"]["Policy"])["Statement"][0][
        "Condition"]["ArnEquals"]["aws:SourceArn"] == [LEGACY.rule_arn]
    for kind in ALL_EVENT_KINDS:
        assert ids[f"legacy.{kind}.delete"].after == (f"legacy.{kind}.untarget",)


def test_legacy_rule_that_is_not_ours_is_left_alone():
    # given: phase one is in place (the one rule delivers, the policy allows it)
    s1, obs = legacy_world(keep_legacy=True)
    obs.queue.attributes["Policy"] = s1.queue_attributes["Policy"]
    obs.rules[LEGACY.rule] = RuleState(True, s1.rule_pattern, "ENABLED", dict(s1.tags), [
        {"Id": naming.TARGET_ID, "Arn": LEGACY.queue_arn}])
    s = spec.build_spec(spec.parse_request({"cluster_name": "payments-prod"}), CID, LEGACY,
                        SETTINGS, keep_legacy=False)
    obs.rules[LEGACY.rules["rebalance_recommendation"]].tags = {"team": "other"}

    # when
    ids = by_id(plan_provision(s, obs))

    # then
    assert "legacy.rebalance_recommendation.delete" not in ids
    assert "legacy.instance_state_change.delete" in ids


def test_detached_policy_is_attached_again():
    # given
    s = desired()
    obs = converged(s)
    obs.role.attached = []

    # then
    assert [(a.id, a.after) for a in plan_provision(s, obs)] == [("attach", ())]


def test_changed_role_detaches_from_the_previous_one():
    # given
    s = desired(controller_role="KarpenterController-new")
    obs = converged(desired())
    obs.role = RoleState("KarpenterController-new", True, [])
    obs.previous_role = RoleState(ROLE, True, [NAMES.policy_arn])

    # when
    actions = by_id(plan_provision(s, obs))

    # then
    assert actions["attach"].params["role"] == "KarpenterController-new"
    assert actions["detach.previous"].params == {"role": ROLE, "policy_arn": NAMES.policy_arn}


@pytest.mark.parametrize("what", ["queue", "dlq", "rule", "policy"])
@pytest.mark.parametrize("tags", [{}, {"team": "x"}, {
    naming.MANAGED_BY_TAG: naming.MANAGED_BY_VALUE, naming.CLUSTER_TAG: "999999999999/x/y"}])
def test_not_owned_resource_is_refused_before_any_action(what, tags):
    # given
    s = desired()
    obs = Observed(role=RoleState(ROLE, True, []))
    name = {"queue": NAMES.queue, "dlq": NAMES.dlq, "rule": NAMES.rule,
            "policy": NAMES.policy}[what]
    if what in ("queue", "dlq"):
        setattr(obs, what, QueueState(True, "https://sqs/x", {}, tags))
    elif what == "rule":
        obs.rules[name] = RuleState(True, {}, "ENABLED", tags, [])
    else:
        obs.policy = PolicyState(True, tags, "v1", {}, [])

    # when
    with pytest.raises(errors.ResourceNotOwned) as exc:
        plan_provision(s, obs)

    # then
    assert exc.value.code == "ResourceNotOwned"
    assert exc.value.status == 409
    assert exc.value.extra["resource"] == name


# ------------------------------------------------------------------------------ teardown

def full_observed_for_teardown() -> Observed:
    obs = converged(desired())
    obs.policy.versions = [{"VersionId": "v1", "IsDefaultVersion": False},
                           {"VersionId": "v2", "IsDefaultVersion": True}]
    obs.policy.attached_roles = [ROLE, "KarpenterController-old"]
    return obs


def test_teardown_order():
    # given
    obs = full_observed_for_teardown()

    # when
    actions, skipped = plan_teardown(NAMES, CID, obs)

    # then
    ids = by_id(actions)
    assert skipped == []
    assert {a.kind for a in actions} == {"delete"}
    assert ids["rule.delete"].after == ("rule.untarget",)
    assert set(ids["policy.delete"].after) == {
        f"detach.{ROLE}", "detach.KarpenterController-old", "policy.prune.v1"}
    assert "policy.prune.v2" not in ids
    assert ids["dlq.delete"].after == ("queue.delete",)
    assert before(actions, "queue.delete", "dlq.delete")
    assert before(actions, f"detach.{ROLE}", "policy.delete")


def test_teardown_of_nothing_plans_nothing():
    # when
    actions, skipped = plan_teardown(NAMES, CID, Observed())

    # then
    assert actions == [] and skipped == []


def test_teardown_skips_what_is_not_ours():
    # given
    obs = full_observed_for_teardown()
    obs.queue.tags = {}
    obs.rules[NAMES.rule].tags = {"team": "x"}

    # when
    actions, skipped = plan_teardown(NAMES, CID, obs)

    # then
    ids = by_id(actions)
    assert "queue.delete" not in ids
    assert "rule.delete" not in ids and "rule.untarget" not in ids
    assert ids["dlq.delete"].after == ()
    assert {(s["resource"], s["name"]) for s in skipped} == {
        ("queue", NAMES.queue), ("rule", NAMES.rule)}


def test_teardown_of_a_rule_without_targets_deletes_it_directly():
    # given
    obs = full_observed_for_teardown()
    obs.rules[NAMES.rule].targets = []

    # when
    actions, _ = plan_teardown(NAMES, CID, obs)

    # then
    ids = by_id(actions)
    assert "rule.untarget" not in ids
    assert ids["rule.delete"].after == ()


def test_queue_diff_reports_only_differences():
    # given
    desired_attrs = {"VisibilityTimeout": "300", "DelaySeconds": "0",
                     "RedrivePolicy": json.dumps({"a": 1, "b": 2})}
    observed = {"VisibilityTimeout": "300", "DelaySeconds": "5",
                "RedrivePolicy": json.dumps({"b": 2, "a": 1}), "QueueArn": "x"}

    # then
    assert planner.queue_diff(desired_attrs, observed) == {"DelaySeconds": "0"}
