"""Fleet density: one EventBridge rule per cluster, and a gap-free move from the five-rule layout.

A cluster provisioned by an earlier version has five rules (one per kind) that the queue policy
allows. Its next reconciles move it: phase 1 adds the one rule and lets the queue policy allow both;
phase 2, once SQS has had 60 s to apply that policy, removes the old rules and tightens the policy.
At every step each sample event kind is matched by an enabled rule that targets the queue *and*
that the queue policy allows (moto enforces neither queue policies nor rule state in PutEvents, so
the test checks both itself).
"""
from __future__ import annotations

import json

import boto3
import pytest

from chalicelib.core import naming, policies
from chalicelib.config import ALL_EVENT_KINDS
from chalicelib.converge.migration import POLICY_SETTLE_SECONDS
from chalicelib.core.spec import ClusterRequest
from tests.support.migration import SAMPLES, deliverable_kinds, make_legacy
from tests.support.world import CLUSTER
from tests.support import drive

@pytest.fixture
def eng(kit_factory, cluster, clock):
    return kit_factory(clock)


def writes_of(engine, fn):
    from chalicelib import aws
    seen = []
    aws.add_hook("before-call.*.*", lambda model, **_: seen.append(model.name)
                 if aws.is_write(model.name) else None)
    fn()
    return [w for w in seen if w not in ("PutItem", "DeleteItem")]


def test_a_new_cluster_gets_one_rule_for_every_kind(eng):
    out = drive.provision(eng, ClusterRequest(cluster_name=CLUSTER))
    names = eng.names(drive.identity(eng, CLUSTER))
    rules = boto3.client("events").list_rules(NamePrefix="kip-")["Rules"]
    assert [r["Name"] for r in rules] == [names.rule]
    assert out.record["resources"]["rule"]["exists"] and out.record["resources"]["rules"] == {}
    assert deliverable_kinds(names) == set(SAMPLES)


def test_five_rule_cluster_moves_to_one_rule_without_a_gap(eng, clock):
    legacy = make_legacy(eng)
    cid = drive.identity(eng, CLUSTER)
    assert deliverable_kinds(legacy) == set(SAMPLES)                       # before

    # phase 1: the one rule is added and allowed; the old rules stay
    drive.reconcile(eng, cid)
    rules = {r["Name"] for r in boto3.client("events").list_rules(NamePrefix="kip-")["Rules"]}
    assert rules == {legacy.rule, *legacy.rules.values()}
    assert deliverable_kinds(legacy) == set(SAMPLES)
    rec = drive.describe(eng, cid)
    assert rec["rule_migration_since"] and rec["names"]["rules"]

    # within SQS's propagation window nothing more happens (and nothing is written)
    clock.now += POLICY_SETTLE_SECONDS - 5
    assert writes_of(eng, lambda: drive.reconcile(eng, cid)) == []

    # phase 2: old rules removed, then the policy names only the one rule
    clock.now += 10
    out = drive.reconcile(eng, cid)
    rules = {r["Name"] for r in boto3.client("events").list_rules(NamePrefix="kip-")["Rules"]}
    assert rules == {legacy.rule}
    assert deliverable_kinds(legacy) == set(SAMPLES)                       # after
    assert out.record["names"]["rules"] == {} and out.record["resources"]["rules"] == {}
    assert "rule_migration_since" not in out.record

    # and the cluster is steady: the next reconcile writes nothing
    assert writes_of(eng, lambda: drive.reconcile(eng, cid)) == []
    drive.teardown(eng, cid)
    assert boto3.client("events").list_rules(NamePrefix="kip-")["Rules"] == []


def test_teardown_of_a_five_rule_cluster_removes_the_old_rules_too(eng):
    legacy = make_legacy(eng)
    drive.teardown(eng, drive.identity(eng, CLUSTER))
    assert boto3.client("events").list_rules(NamePrefix="kip-")["Rules"] == []
    assert legacy.rules


def test_the_one_pattern_stays_far_below_eventbridges_limit():
    assert len(json.dumps(policies.interruption_pattern(ALL_EVENT_KINDS))) < 1024
