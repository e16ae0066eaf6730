"""The records' leases against moto in-process: one run at a time, takeover after expiry, stale
writes refused.

Every test gets a fresh moto (the ``moto_env`` fixture) and fresh chalicelib clients. AWS state is
checked with plain boto3 clients, never through the code under test.
"""
from __future__ import annotations

import pytest

from chalicelib import errors
from tests.support import drive
from tests.support.snapshots import assert_nothing_managed
from tests.support.world import cid, req


@pytest.fixture
def clocked(kit_factory, clock):
    return kit_factory(clock)


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
