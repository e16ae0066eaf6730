"""An automatic path (trigger, backfill, adoption) that cannot provision a cluster keeps a
``blocked`` record saying why, visible in GET /clusters?status=blocked, and the sweep retries it;
an account whose kip role refuses AssumeRole is ``unreachable`` and not retried in a loop."""
from __future__ import annotations

import dataclasses

import boto3
import pytest

from chalicelib import aws, errors
from chalicelib.core.events import parse_eks_event
from chalicelib.core.spec import ClusterRequest
from chalicelib.usecases import lifecycle
from tests.support.clock import Clock
from tests.support.world import ACCOUNT, REGION, make_cluster, make_cluster_in, make_role
from tests.support.faults import Strict
from tests.support import drive
from tests.support.events import eks_event

MEMBER = "210987654321"       # an allowed member account (moto: any account exists)


def created(kit, name: str, account: str = ACCOUNT) -> dict:
    ev = parse_eks_event(eks_event("CreateCluster", name, account, REGION))
    return lifecycle.cluster_created(kit, drive.identity(kit, name, account), ev)


def test_a_create_cluster_over_the_rule_quota_is_blocked_then_provisioned_once_room_is_made(
        moto_env):
    clock = Clock()
    kit = drive.make_kit(dataclasses.replace(moto_env, rule_quota=21, rule_reserve=20), clock)
    for name in ("first", "second"):
        make_cluster(name)
        make_role(f"KarpenterController-{name}")
    assert created(kit, "first")["status"] == "ready"          # the one rule of room
    # when the next CreateCluster finds the bus full
    with pytest.raises(errors.QuotaExceeded):
        created(kit, "second")
    # then its record says so, and a portal finds it by status
    blocked, _ = drive.page(kit, status="blocked")
    assert [(r.cluster_name, r.last_error.code) for r in blocked] == \
        [("second", "RuleQuotaExceeded")]
    assert boto3.client("sqs").list_queues(QueueNamePrefix="kip-second").get("QueueUrls") is None
    # room is made (the first cluster goes); the next sweep provisions the blocked one
    drive.teardown(kit, drive.identity(kit, "first"))
    clock.now += 61                 # the shared rule count is read again after a minute
    summary = drive.sweep(kit)
    assert summary["repaired"] == [f"{ACCOUNT}/{REGION}/second"], summary
    assert drive.describe(kit, drive.identity(kit, "second")).status == "ready"


def test_a_cluster_whose_default_role_name_is_too_long_is_blocked_naming_the_field(moto_env):
    kit = drive.make_kit(moto_env)
    name = "c" * 50                               # KarpenterController-<50> is 70 characters
    make_cluster(name)
    with pytest.raises(errors.ValidationError):
        created(kit, name)
    rec = drive.describe(kit, drive.identity(kit, name))
    assert rec.status == "blocked" and rec.last_error.code == "ValidationError"
    assert "controller_role" in rec.last_error.message


def test_an_account_whose_kip_role_refuses_assume_role_is_unreachable_not_retried_hot(
        moto_env):
    clock = Clock()
    kit = drive.make_kit(dataclasses.replace(moto_env, allowed_accounts=frozenset({MEMBER})),
                         clock=clock)
    make_cluster_in(MEMBER, REGION, "remote")
    drive.provision(kit, ClusterRequest(cluster_name="remote", account_id=MEMBER))
    # when the member's kip role starts refusing AssumeRole (deleted, trust changed)
    aws.reset()                                   # no cached session for the member
    refused = Strict("sts", "AssumeRole", "query", "AccessDenied", "not authorized", times=99)
    summary = drive.sweep(kit)
    # then the record says unreachable (not ready) and why
    rec = drive.describe(kit, drive.identity(kit, "remote", MEMBER))
    assert rec.status == "unreachable" and rec.last_error.code == "AccessDenied"
    assert summary["errors"][0]["code"] == "Unreachable"
    # and the next sweeps within the hour do not try again
    tried = refused.seen
    assert drive.sweep(kit)["skipped"] == [rec.id] and refused.seen == tried
    clock.now += 3601
    drive.sweep(kit)
    assert refused.seen > tried
