"""The brake on teardowns nobody asked for by API (KIP_TEARDOWN_BUDGET per hour, counted in
DynamoDB so every container shares it), and the sweep's second look before any teardown: the
sweep never tears down a cluster EKS still reports."""
from __future__ import annotations

import dataclasses

import boto3
import pytest

from chalicelib import errors
from chalicelib.core.events import parse_eks_event
from chalicelib.core.spec import ClusterRequest
from chalicelib.usecases import lifecycle
from tests.support.clock import Clock
from tests.support.world import ACCOUNT, REGION, make_cluster, make_role
from tests.support import drive
from tests.support.events import eks_event


def kit_with(settings, clock, **overrides):
    return drive.make_kit(dataclasses.replace(settings, **overrides), clock=clock)


def wired_and_gone(kit, name: str) -> None:
    """A cluster kip wired, then deleted in EKS (its DeleteCluster still to come)."""
    make_cluster(name)
    make_role(f"KarpenterController-{name}")
    drive.provision(kit, ClusterRequest(cluster_name=name))
    boto3.client("eks").delete_cluster(name=name)


def delete_event(kit, name: str) -> dict:
    ev = parse_eks_event(eks_event("DeleteCluster", name, ACCOUNT, REGION))
    return lifecycle.cluster_deleted(kit, drive.identity(kit, name), ev)


def queues() -> list:
    return boto3.client("sqs").list_queues(QueueNamePrefix="kip-").get("QueueUrls", [])


def test_the_eleventh_automatic_teardown_in_an_hour_is_held(moto_env):
    # given 11 wired clusters that EKS deleted at once (or a flood of forged events)
    clock = Clock()
    kit = kit_with(moto_env, clock)
    names = [f"c{i:02d}" for i in range(11)]
    for name in names:
        wired_and_gone(kit, name)
    # when their DeleteCluster events arrive within the hour
    outs = [delete_event(kit, name) for name in names]
    # then ten are torn down and the eleventh is held, with its wiring intact
    assert [("deleted" in o, "held" in o) for o in outs] == [(True, False)] * 10 + [(False, True)]
    held = drive.describe(kit, drive.identity(kit, "c10"))
    assert held.status == "teardown_held" and held.last_error.code == "TeardownHeld"
    assert [q.rsplit("/", 1)[1] for q in queues()] == ["kip-_c10-dlq", "kip-c10"]
    # a second kit (another Lambda container) shares the hour's count
    other = kit_with(moto_env, clock)
    wired_and_gone(other, "c11")
    assert "held" in delete_event(other, "c11")


def test_a_held_teardown_is_released_by_an_operator_or_by_the_sweep_an_hour_later(moto_env):
    clock = Clock()
    kit = kit_with(moto_env, clock, teardown_budget=0)       # every automatic teardown held
    for name in ("released", "swept", "back"):
        wired_and_gone(kit, name)
        assert "held" in delete_event(kit, name)
    # the operator releases one: EKS is asked again, then it is removed (outside the budget)
    out = lifecycle.release(kit, drive.identity(kit, "released"), requested_by="user:ops")
    assert out["deleted"] and len(out["removed"]) >= 5
    # one comes back in EKS (re-created): the sweep wires it again instead of removing it
    make_cluster("back")
    # within the hour the sweep leaves the rest held
    summary = drive.sweep(kit)
    assert drive.describe(kit, drive.identity(kit, "swept")).status == "teardown_held"
    assert drive.describe(kit, drive.identity(kit, "back")).status == "ready"
    assert summary["errors"] == []
    # an hour later EKS still reports it gone: the sweep finishes the teardown
    clock.now += 3601
    drive.sweep(kit)
    with pytest.raises(errors.RecordNotFound):
        drive.describe(kit, drive.identity(kit, "swept"))
    assert sorted(q.rsplit("/", 1)[1] for q in queues()) == ["kip-_back-dlq", "kip-back"]


def test_release_refuses_a_cluster_eks_reports_live_and_one_not_held(moto_env):
    clock = Clock()
    kit = kit_with(moto_env, clock, teardown_budget=0)
    wired_and_gone(kit, "held")
    assert "held" in delete_event(kit, "held")
    make_cluster("held")                                     # re-created meanwhile
    with pytest.raises(errors.Conflict):
        lifecycle.release(kit, drive.identity(kit, "held"))
    make_cluster("fine")
    make_role("KarpenterController-fine")
    drive.provision(kit, ClusterRequest(cluster_name="fine"))
    with pytest.raises(errors.Conflict):
        lifecycle.release(kit, drive.identity(kit, "fine"))
    assert len(queues()) == 4


def test_the_sweep_wires_again_an_automatic_unfinished_teardown_whose_cluster_is_live(moto_env):
    # given a record left "deleting" by an automatic teardown, whose cluster EKS reports live
    kit = kit_with(moto_env, Clock())
    make_cluster("alive")
    make_role("KarpenterController-alive")
    drive.provision(kit, ClusterRequest(cluster_name="alive"))
    rec = drive.describe(kit, drive.identity(kit, "alive"))
    assert kit.registry.note(rec, {"status": "deleting", "source": "eks-event"})
    # when the sweep runs, then it is re-wired, never torn down
    summary = drive.sweep(kit)
    assert summary["repaired"] == [rec.id]
    assert drive.describe(kit, rec.cid).status == "ready" and len(queues()) == 2
