"""The five-rule -> one-rule move never leaves an event kind undelivered, whatever write fails.

A clean move is enumerated first: every AWS write of every run (phase 1, phase 2, the steady run
after). Then, for each of those writes in turn, a fresh world repeats the move with that one call
refused by AWS (a 403 ``AccessDenied`` answered in the service's own wire protocol, every attempt),
and after every run checks that each sample event kind is still delivered: by an existing,
enabled rule whose pattern matches it, whose target is the queue, and whose ARN the queue policy
allows (``aws:SourceArn``): ``test_rule_migration.deliverable_kinds`` reads rules, targets and the
policy from AWS and matches patterns with moto's own matcher rather than sending events (moto
enforces no queue policy, delivers through disabled rules in ``PutEvents`` and has no
``TestEventPattern``). The runs go on until the move is complete; it must complete.
"""
from __future__ import annotations

import contextlib
import json
import threading
from typing import Any, Iterator, Optional

import boto3
import pytest

from chalicelib import aws, errors
from chalicelib.converge.migration import POLICY_SETTLE_SECONDS
from tests.support.clock import Clock
from tests.support.faults import FAULT_URL, fake_error
from tests.support.migration import SAMPLES, deliverable_kinds, make_legacy
from tests.support.world import ACCOUNT, CLUSTER, REGION, make_cluster, make_role, moto_like_aws
from tests.support import drive

STICKY_RUNS = 2     # a write that "keeps failing": refused again in this many later runs
MAX_RUNS = 10       # the clean move takes three (phase 1, phase 2, steady); a fault adds a few


class RefuseNth:
    """Counts the AWS writes of a run (DynamoDB's record writes aside) and refuses the ``n``-th,
    and every write of operation ``sticky``: every attempt of it is answered 403 AccessDenied,
    in the protocol of its service."""

    def __init__(self) -> None:
        self.n: Optional[int] = None
        self.sticky: Optional[str] = None
        self.writes: list[str] = []
        self.refused: list[str] = []
        self._lock, self._tls = threading.Lock(), threading.local()
        aws.add_hook("before-call.*.*", self._on_call)
        aws.add_hook("before-send.*.*", self._on_send)

    def arm(self, n: Optional[int], sticky: Optional[str] = None) -> None:
        with self._lock:
            self.n, self.sticky, self.writes = n, sticky, []

    def _on_call(self, model: Any, **_: Any) -> None:
        sm = model.service_model
        self._tls.refuse = None
        if sm.service_name == "dynamodb" or not aws.is_write(model.name):
            return
        label = f"{sm.endpoint_prefix}:{model.name}"
        with self._lock:
            if len(self.writes) == self.n or label == self.sticky:
                self._tls.refuse = (label, sm.protocol)
                self.refused.append(label)
            self.writes.append(label)

    def _on_send(self, request: Any, **_: Any) -> Any:
        refuse = getattr(self._tls, "refuse", None)
        if refuse is None:
            return None
        label, protocol = refuse
        code = "AccessDenied" if protocol == "query" else "AccessDeniedException"
        url, request.url = request.url, FAULT_URL      # moto's own handler must pass this one
        return fake_error(protocol, url, 403, code,
                          f"not authorized to perform: {label} (fault injected)")


@contextlib.contextmanager
def fresh_world(settings: Any) -> Iterator[RefuseNth]:
    from moto import mock_aws
    from tests.support.pod_identity import PodIdentity, distinct_issuers
    with mock_aws(), moto_like_aws(), distinct_issuers():
        aws.reset()
        aws.Store(settings).create_table()
        PodIdentity(ACCOUNT, REGION)    # moto has no Pod Identity API
        make_cluster(CLUSTER)
        make_role("KarpenterController-payments-prod")
        try:
            yield RefuseNth()
        finally:
            aws.reset()


def rules_now() -> set:
    return {r["Name"] for r in boto3.client("events").list_rules(NamePrefix="kip-")["Rules"]}


def move(settings: Any, fault: Optional[tuple[int, int]], sticky: bool = False) -> dict:
    """The whole move in a fresh world, ``fault`` = (run, write) refused (``sticky``: that
    operation is refused again in the next STICKY_RUNS runs); checks delivery after every run.
    Returns the writes of each run, what was refused and how many runs it took."""
    clock = Clock(None)
    with fresh_world(settings) as tap:
        kit = drive.make_kit(settings, clock=clock)
        legacy = make_legacy(kit)
        cid = drive.identity(kit, CLUSTER)
        per_run, failed, stuck = [], [], None
        for run in range(MAX_RUNS):
            if fault and fault[0] == run:
                tap.arm(fault[1])
            elif stuck and run <= fault[0] + STICKY_RUNS:
                tap.arm(None, stuck)
            else:
                tap.arm(None)
            try:
                drive.reconcile(kit, cid)
            except errors.KipError as exc:
                failed.append((run, exc.code))
            per_run.append(list(tap.writes))
            stuck = (tap.refused[:1] or [None])[0] if sticky else None
            missing = set(SAMPLES) - deliverable_kinds(legacy)
            assert not missing, (f"fault {fault}: after run {run} ({per_run[-1]}) no rule "
                                 f"delivers {sorted(missing)}")
            rec = drive.describe(kit, cid)
            if rules_now() == {legacy.rule} and not rec["names"]["rules"] and not per_run[-1]:
                break
            clock.now += POLICY_SETTLE_SECONDS + 1
        else:
            pytest.fail(f"fault {fault}: the move did not complete in {MAX_RUNS} runs")
        # complete: one rule, the policy allows only it, the record forgets the old rules
        sqs = boto3.client("sqs")
        url = sqs.get_queue_url(QueueName=legacy.queue)["QueueUrl"]
        policy = json.loads(sqs.get_queue_attributes(QueueUrl=url, AttributeNames=["Policy"])[
            "Attributes"]["Policy"])
        assert policy["Statement"][0]["Condition"]["ArnEquals"]["aws:SourceArn"] == \
            [legacy.rule_arn]
        assert "rule_migration_since" not in rec
        return {"writes": per_run, "refused": list(tap.refused), "failed": failed,
                "runs": len(per_run)}


def test_no_write_failure_anywhere_in_the_move_leaves_a_kind_undelivered(settings):
    # given: the clean move, every write of every run
    clean = move(settings, None)
    cases = [(run, i) for run, writes in enumerate(clean["writes"]) for i in range(len(writes))]
    assert len(clean["writes"][0]) >= 3 and len(clean["writes"][1]) >= 11   # phase 1, phase 2

    # when / then: each write refused in turn, once, then again as one that keeps failing;
    # delivery checked after every run
    checked = 0
    for sticky in (False, True):
        for run, i in cases:
            got = move(settings, (run, i), sticky)
            assert got["refused"][0] == clean["writes"][run][i], (run, i, got)
            assert got["failed"] and got["failed"][0][0] == run
            checked += got["runs"]
    print(f"\nmigration: {len(cases)} writes ({[len(w) for w in clean['writes']]} per run) "
          f"refused one at a time, once and for {1 + STICKY_RUNS} runs; delivery checked after "
          f"{checked} runs")


def test_a_failed_policy_write_in_phase_one_sets_no_mark(settings):
    """The found bug: phase 1's queue policy write fails, yet the record noted the migration as
    started, so the next run after 60 s deleted the old rules the policy still alone allowed."""
    # given: phase 1's writes, in order, from a clean move
    writes = move(settings, None)["writes"][0]
    clock = Clock(None)
    with fresh_world(settings) as tap:
        kit = drive.make_kit(settings, clock=clock)
        legacy = make_legacy(kit)
        cid = drive.identity(kit, CLUSTER)
        tap.arm(writes.index("sqs:SetQueueAttributes"))     # the policy write is refused
        with pytest.raises(errors.KipError):
            drive.reconcile(kit, cid)
        assert tap.refused == ["sqs:SetQueueAttributes"]
        assert "rule_migration_since" not in drive.describe(kit, cid)

        # when: the next run comes after the settle time
        tap.arm(None)
        clock.now += POLICY_SETTLE_SECONDS + 1
        drive.reconcile(kit, cid)

        # then: it redoes phase 1 (old rules kept and allowed) instead of deleting them
        assert rules_now() == {legacy.rule, *legacy.rules.values()}
        assert deliverable_kinds(legacy) == set(SAMPLES)
        assert drive.describe(kit, cid)["rule_migration_since"]

