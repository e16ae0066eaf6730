"""A cluster deleted in EKS while its DeleteCluster event was missed: the sweep retires it."""
from __future__ import annotations

import boto3

from chalicelib.core.spec import ClusterRequest
from tests.support.world import make_cluster, make_role
from tests.support import drive


def orphan(name: str, eng) -> None:
    make_cluster(name)
    make_role(f"KarpenterController-{name}")
    drive.provision(eng, ClusterRequest(cluster_name=name))
    boto3.client("eks").delete_cluster(name=name)        # ...and the event never came


def test_the_sweep_retires_a_record_whose_cluster_is_gone_after_the_grace(kit_factory, clock):
    eng = kit_factory(clock, orphan_grace_minutes=30)
    orphan("gone", eng)
    # first sweep: noted, nothing removed, no error line every run
    summary = drive.sweep(eng)
    assert summary["errors"] == []
    assert summary["orphans"] == [{"cluster": drive.identity(eng, "gone").key, "state": "missing",
                                   "teardown_after_minutes": 30}]
    assert drive.describe(eng, drive.identity(eng, "gone"))["cluster_missing_since"]
    assert boto3.client("sqs").list_queues().get("QueueUrls")
    # within the grace: still waiting
    clock.now += 29 * 60
    assert drive.sweep(eng)["orphans"][0]["state"] == "missing"
    # after it: torn down
    clock.now += 2 * 60
    summary = drive.sweep(eng)
    assert summary["orphans"][0]["state"] == "torn_down" and summary["orphans"][0]["removed"]
    assert boto3.client("sqs").list_queues().get("QueueUrls", []) == []
    assert boto3.client("events").list_rules(NamePrefix="kip-")["Rules"] == []
    assert boto3.client("iam").list_policies(Scope="Local", PathPrefix="/kip/")["Policies"] == []
    assert drive.page(eng)[0] == []


def test_grace_zero_retires_on_the_first_sweep_that_sees_it(kit_factory, clock):
    eng = kit_factory(clock, orphan_grace_minutes=0)
    orphan("gone", eng)
    assert drive.sweep(eng)["orphans"][0]["state"] == "torn_down"
    assert drive.page(eng)[0] == []


def test_a_cluster_that_comes_back_clears_the_mark(kit_factory, clock):
    eng = kit_factory(clock)
    orphan("flaky", eng)
    drive.sweep(eng)
    make_cluster("flaky")
    clock.now += 60 * 60
    summary = drive.sweep(eng)
    assert "orphans" not in summary
    assert "cluster_missing_since" not in drive.describe(eng, drive.identity(eng, "flaky"))
