"""Pure: the five-rule move deletes a legacy rule only on observed truth (``migration``).

The settle time having passed (``keep_legacy`` false) is not enough: the run must also see the one
rule enabled, with its pattern and its target on the queue, and the queue policy read back allowing
its ARN. Otherwise it plans phase 1 again, and the record's mark starts over.
"""
from __future__ import annotations

import json

import pytest

from chalicelib.converge import migration
from chalicelib.converge.planner import plan_provision
from chalicelib.core import naming, records, spec
from chalicelib.core.observed import RuleState
from tests.support.plans import CID, LEGACY, SETTINGS, by_id, legacy_world

NOW = "2026-01-01T00:10:00Z"
SINCE = "2026-01-01T00:00:00Z"


def phase_two(breaks: str = "") -> tuple:
    """The spec after the settle time, and what a run sees: phase 1 in place unless ``breaks``."""
    s1, obs = legacy_world(keep_legacy=True)
    obs.queue.attributes["Policy"] = s1.queue_attributes["Policy"]
    obs.rules[LEGACY.rule] = RuleState(True, s1.rule_pattern, "ENABLED", dict(s1.tags), [
        {"Id": naming.TARGET_ID, "Arn": LEGACY.queue_arn}])
    one = obs.rules[LEGACY.rule]
    if breaks == "policy":       # phase 1's policy write failed: only the old rules allowed
        obs.queue.attributes["Policy"] = legacy_world(keep_legacy=True)[1].queue.attributes[
            "Policy"]
    elif breaks == "no policy":
        obs.queue.attributes.pop("Policy")
    elif breaks == "garbled":
        obs.queue.attributes["Policy"] = "{not json"
    elif breaks == "rule":
        del obs.rules[LEGACY.rule]
    elif breaks == "disabled":
        one.state = "DISABLED"
    elif breaks == "target":
        one.targets = []
    elif breaks == "pattern":
        one.pattern = {"source": ["aws.ec2"]}
    s2 = spec.build_spec(spec.parse_request({"cluster_name": "payments-prod"}), CID, LEGACY,
                         SETTINGS, keep_legacy=False)
    return s2, obs


def test_confirmed_phase_one_retires_the_old_rules_after_the_one_rule():
    s, obs = phase_two()
    ids = by_id(plan_provision(s, obs))
    assert {a for a in ids if a.endswith(".delete")} == {
        f"legacy.{k}.delete" for k in LEGACY.rules}
    assert migration.retire_now(s, obs)


@pytest.mark.parametrize("breaks", ["policy", "no policy", "garbled", "rule", "disabled",
                                    "target", "pattern"])
def test_unconfirmed_phase_one_deletes_nothing_and_keeps_the_old_rules_allowed(breaks):
    # given: the settle time has passed, but the run does not see phase 1 in place
    s, obs = phase_two(breaks)

    # when
    ids = by_id(plan_provision(s, obs))

    # then: no legacy rule is touched; any policy written still allows them all
    assert not [a for a in ids.values() if a.name in LEGACY.rules.values()]
    if "queue.update" in ids:
        assert ids["queue.update"].after == ()      # nothing to wait for: nothing is deleted
        allowed = json.loads(ids["queue.update"].params["attributes"]["Policy"])[
            "Statement"][0]["Condition"]["ArnEquals"]["aws:SourceArn"]
        assert set(allowed) == {LEGACY.rule_arn, *LEGACY.rule_arns.values()}
    assert not migration.retire_now(s, obs)


def _resources(obs) -> records.Resources:
    return records.from_observed(LEGACY, obs, tuple(LEGACY.rules), "r", "arn:r", True, CID)


@pytest.mark.parametrize("ok, seen, since, mark", [
    (False, "policy", None, None),        # phase 1 failed: no mark (the found bug)
    (False, "policy", SINCE, None),       # a mark whose policy is not there any more: cleared
    (True, "policy", SINCE, NOW),         # phase 1 put in place again by this run: starts again
    (True, "policy", None, NOW),          # put in place by this run
    (False, "", None, NOW),               # seen in place (read back), though the run failed
])
def test_the_mark_follows_what_was_confirmed(ok, seen, since, mark):
    s, obs = phase_two(seen)
    s1 = spec.build_spec(spec.parse_request({"cluster_name": "payments-prod"}), CID, LEGACY,
                         SETTINGS, keep_legacy=True)
    out = migration.recorded_fields(s1, _resources(obs), ok, NOW, since, obs)
    assert out == {"rule_migration_since": mark}


def test_phase_two_forgets_only_the_rules_that_are_gone():
    # given: phase 2 ran; one delete failed
    s, obs = phase_two()
    res = _resources(obs)
    for kind, entry in res.rules.items():
        entry.exists = kind == "spot_interruption"

    # when
    out = migration.recorded_fields(s, res, False, NOW, SINCE, obs)

    # then
    assert list(out["names"]["rules"]) == ["spot_interruption"]
    assert out["rule_migration_since"] == SINCE
