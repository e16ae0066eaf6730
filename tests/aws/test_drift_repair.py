"""Reconcile against moto in-process: drift reported by a dry run, then repaired.

Every test gets a fresh moto (the ``moto_env`` fixture) and fresh chalicelib clients. AWS state is
checked with plain boto3 clients, never through the code under test.
"""
from __future__ import annotations

import pytest

from chalicelib import errors
from tests.support import drive
from tests.support.faults import Calls
from tests.support.snapshots import managed
from tests.support.world import change_visibility, cid, detach, drop_rule, drop_target, req


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
    clean = managed()
    for make_drift in DRIFTS[drift][0]:
        make_drift()
    drifted, record = managed(), engine.registry.get(cid())
    calls = Calls()

    # when
    out = drive.reconcile(engine, cid(), dry_run=True)

    # then: reported, nothing changed
    assert out.dry_run is True
    assert {a["id"] for a in out.actions} == DRIFTS[drift][1]
    assert calls.writes == []
    assert managed() == drifted
    assert engine.registry.get(cid()) == record

    # when
    out = drive.reconcile(engine, cid())

    # then: repaired
    assert {a["id"] for a in out.actions} == DRIFTS[drift][1]
    assert managed() == clean
    assert out.record["status"] == "ready"
    assert drive.reconcile(engine, cid()).actions == []


def test_reconcile_without_a_record_is_not_found(engine, cluster):
    # when / then
    with pytest.raises(errors.RecordNotFound):
        drive.reconcile(engine, cid())
