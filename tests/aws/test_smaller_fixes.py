"""Smaller fixes of issue #19, each shown here: AssumeRole outside the shared client lock, ..."""
from __future__ import annotations

import dataclasses
import threading
from typing import Any

import pytest

from chalicelib import aws
from tests.support.clock import Clock
from tests.support.world import ACCOUNT, REGION

SLOW, QUICK = "111111111111", "222222222222"
WAIT = 30       # a bound on a wait that must end at once: only a failure ever reaches it


# ----------------------------------------------------------------- a. AssumeRole off the lock

class HeldAssumeRole:
    """Holds every AssumeRole into account ``held`` until ``release`` is set (before-send hook,
    so the request is real up to the wire); counts AssumeRole calls per account."""

    def __init__(self, held: str) -> None:
        self.held, self.entered, self.release = held, threading.Event(), threading.Event()
        self.calls: dict[str, int] = {}
        self._lock = threading.Lock()
        aws.add_hook("before-send.sts.AssumeRole", self)

    def __call__(self, request: Any, **_: Any) -> None:
        body = request.body.decode() if isinstance(request.body, bytes) else str(request.body)
        account = next(a for a in (SLOW, QUICK) if a in body)
        with self._lock:
            self.calls[account] = self.calls.get(account, 0) + 1
        if account == self.held:
            self.entered.set()
            assert self.release.wait(WAIT), "the held AssumeRole was never released"


def in_thread(fn: Any) -> tuple[threading.Thread, dict]:
    out: dict = {}

    def run() -> None:
        try:
            out["value"] = fn()
        except BaseException as exc:    # reported by the test
            out["error"] = exc
    t = threading.Thread(target=run, daemon=True)
    t.start()
    return t, out


def test_a_slow_assume_role_for_one_account_does_not_block_another(moto_env):
    # given: AssumeRole into SLOW hangs until released
    settings = dataclasses.replace(moto_env, account_id=ACCOUNT, cross_account_role="kip-member")
    held = HeldAssumeRole(SLOW)
    slow, slow_out = in_thread(lambda: aws.client("sqs", SLOW, REGION, settings))
    assert held.entered.wait(WAIT)

    # when: another thread wants a client in QUICK while SLOW's AssumeRole is in flight
    quick, quick_out = in_thread(lambda: aws.client("sqs", QUICK, REGION, settings))
    quick.join(WAIT)

    # then: QUICK got its client (its own AssumeRole) before SLOW's answer came back
    assert not quick.is_alive() and "value" in quick_out, quick_out
    assert not held.release.is_set() and slow.is_alive()
    assert held.calls == {SLOW: 1, QUICK: 1}

    # and SLOW's threads get theirs once STS answers, from one AssumeRole
    also_slow, also_out = in_thread(lambda: aws.client("events", SLOW, REGION, settings))
    held.release.set()
    slow.join(WAIT)
    also_slow.join(WAIT)
    assert "value" in slow_out and "value" in also_out, (slow_out, also_out)
    assert held.calls == {SLOW: 1, QUICK: 1}


# ----------------------------------------------------------------- d. leases fence writes

def _registry(settings: Any, clock: Any) -> Any:
    from chalicelib.aws.registry import Registry
    return Registry(aws.Store(settings), settings, clock)


def _leased(reg: Any, cid: Any, current: Any = None) -> tuple:
    from chalicelib.aws.registry import new_token
    owner = new_token()
    return owner, reg.acquire(cid, owner, current, {"status": "provisioning"})


def test_a_holder_whose_lease_was_taken_over_can_no_longer_write(moto_env):
    from chalicelib import errors
    from chalicelib.core import naming
    # given: run A holds the lease; it expires; run B takes the record over
    clock = Clock(None)
    reg, cid = _registry(moto_env, clock), naming.ClusterId(ACCOUNT, REGION, "payments-prod")
    a_owner, a_rec = _leased(reg, cid)
    clock.advance(moto_env.lease_seconds + 1)
    b_owner, b_rec = _leased(reg, cid, reg.get(cid))
    before = aws.Store(moto_env).get(cid.key)

    # when / then: A's save and delete are refused, say why, and change nothing
    with pytest.raises(errors.StaleWrite) as saved:
        reg.save(a_rec.model_copy(update={"status": "ready"}), a_owner)
    assert "lease expired" in saved.value.message and "changed nothing" in saved.value.message
    with pytest.raises(errors.StaleWrite):
        reg.delete(a_rec, a_owner)
    with pytest.raises(errors.StaleWrite):       # even at the version B wrote
        reg.save(b_rec.model_copy(update={"status": "ready"}), a_owner)
    assert aws.Store(moto_env).get(cid.key) == before

    # and B, the holder, writes
    assert reg.save(b_rec.model_copy(update={"status": "ready"}), b_owner).status == "ready"


def test_notes_without_a_lease_wait_for_a_live_lease_to_end(moto_env):
    from chalicelib.core import naming
    # given: a record another run holds under a live lease, read as it is
    clock = Clock(None)
    reg, cid = _registry(moto_env, clock), naming.ClusterId(ACCOUNT, REGION, "payments-prod")
    owner, rec = _leased(reg, cid)
    seen = reg.get(cid)
    before = aws.Store(moto_env).get(cid.key)

    # when / then: the sweep's notes are refused (the holder's save would overwrite them)
    assert reg.note(seen, {"cluster_missing_since": "2026-01-01T00:00:00Z"}) is False
    assert reg.note_health(seen, {"consumer": "idle"}) is False
    assert aws.Store(moto_env).get(cid.key) == before

    # and once the lease has expired, they are written
    clock.advance(moto_env.lease_seconds + 1)
    assert reg.note_health(seen, {"consumer": "idle"}) is True
    assert aws.Store(moto_env).get(cid.key)["health"] == {"consumer": "idle"}


# ----------------------------------------------------------------- c. list tokens

def _records(settings: Any, n: int) -> Any:
    """``n`` bare cluster records written straight to the table (paging needs nothing more)."""
    from chalicelib.aws.registry import Registry
    reg = Registry(aws.Store(settings), settings)
    for i in range(n):
        aws.Store(settings).put({"id": f"{ACCOUNT}/{REGION}/c{i}", "account_id": ACCOUNT,
                                 "region": REGION, "cluster_name": f"c{i}", "status": "ready",
                                 "version": 1}, "attribute_not_exists(id)", {})
    return reg


def _forge(token: str, **changes: Any) -> str:
    """The token's body changed, its signature kept."""
    import base64
    import json
    body, mac = token.rsplit(".", 1)
    data = json.loads(base64.urlsafe_b64decode(body + "=" * (-len(body) % 4)))
    data.update(changes)
    raw = json.dumps(data, sort_keys=True, separators=(",", ":")).encode()
    return base64.urlsafe_b64encode(raw).decode().rstrip("=") + "." + mac


def test_list_tokens_are_signed_with_a_secret_made_once_per_deployment(moto_env):
    from chalicelib import errors
    from chalicelib.aws.registry import TOKEN_SECRET_ID, Registry, _seal_token
    assert moto_env.token_secret is None
    # given: four records; one container pages through them
    first = _records(moto_env, 4)
    page1, token = first.page(2, None, None)
    secret = aws.Store(moto_env).get(TOKEN_SECRET_ID)["secret"]
    assert len(secret) == 64 and moto_env.table_name not in secret

    # when: another container (a new registry) opens the token
    other = Registry(aws.Store(moto_env), moto_env)
    page2, last = other.page(2, token, None)

    # then: the same secret signs for both; the secret item is no cluster record
    assert sorted(r.cluster_name for r in page1 + page2) == ["c0", "c1", "c2", "c3"]
    assert other.page(10, None, None)[0] and all(r.account_id == ACCOUNT
                                                 for r in other.page(10, None, None)[0])
    assert aws.Store(moto_env).get(TOKEN_SECRET_ID)["secret"] == secret

    # and a token signed the old way (with the table name) is refused as next_token
    start = {"id": f"{ACCOUNT}/{REGION}/c1"}
    for forged in (_seal_token(start, None, moto_env.table_name.encode()),
                   _forge(token, k={"id": f"{ACCOUNT}/{REGION}/c3"}),
                   _forge(token, s="failed")):
        with pytest.raises(errors.ValidationError) as bad:
            other.page(2, forged, None)
        assert bad.value.field == "next_token"
    with pytest.raises(errors.ValidationError):
        other.page(2, token, "failed")          # a token for one filter, used with another


def test_a_forged_token_through_the_api_is_a_400_naming_next_token(api, moto_env):
    # given: a real token (two pages of records), then forged copies of it
    _records(moto_env, 3)
    token = api.http.get("/clusters?limit=2").json_body["next_token"]
    assert token
    for forged in (_forge(token, s="ready"), _forge(token, k={"id": "x"}), token + "0",
                   token.replace(".", "..")):
        # when
        got = api.http.get(f"/clusters?limit=2&next_token={forged}")
        # then
        assert got.status_code == 400, got.body
        assert got.json_body["error"]["field"] == "next_token"
    assert api.http.get(f"/clusters?limit=2&next_token={token}").status_code == 200


# ----------------------------------------------------------------- b. one rule count for all

def test_two_containers_cannot_together_eat_into_the_rule_reserve(moto_env):
    import json

    import boto3

    from chalicelib.core import quota
    from chalicelib.core.spec import ClusterRequest
    from tests.support.world import make_cluster, make_role
    from tests.support import drive
    # given: room for 3 kip rules beside 1 of someone else's; two containers (kits), one table
    for name in "abcde":
        make_cluster(name)
        make_role(f"KarpenterController-{name}")
    boto3.client("events").put_rule(Name="someone-else", EventPattern=json.dumps(
        {"source": ["x"]}))
    settings = dataclasses.replace(moto_env, rule_quota=24, rule_reserve=20)
    clock = Clock(None)
    one, two = drive.make_kit(settings, clock), drive.make_kit(settings, clock)

    # when: they take turns
    drive.provision(one, ClusterRequest(cluster_name="a"))
    drive.provision(two, ClusterRequest(cluster_name="b"))
    drive.provision(one, ClusterRequest(cluster_name="c"))
    refused = []
    for kit, name in ((two, "d"), (one, "d"), (two, "e")):
        with pytest.raises(quota.RuleQuotaExceeded) as err:
            drive.provision(kit, ClusterRequest(cluster_name=name))
        refused.append(err.value.extra["used"])

    # then: 4 rules in use (quota 24 - reserve 20), never more; each refusal says 4 are used
    assert len(boto3.client("events").list_rules()["Rules"]) == 4
    assert refused == [4, 4, 4]

    # and once the count is old, a new count sees rules that were deleted
    boto3.client("events").delete_rule(Name="someone-else")
    clock.advance(61)
    drive.provision(two, ClusterRequest(cluster_name="d"))
    with pytest.raises(quota.RuleQuotaExceeded):
        drive.provision(one, ClusterRequest(cluster_name="e"))
    assert len(boto3.client("events").list_rules()["Rules"]) == 4
