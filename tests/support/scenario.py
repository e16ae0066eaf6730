"""The reliability scenario: a fresh moto world with a fault tap, the cluster payments-prod with
its controller role and a customer KMS key, the three phases (provision, reconcile of drift,
teardown) driven through the use cases, and the automatic enumeration of every AWS call that
the fault matrix (tests/reliability/test_faults.py) is parametrized with.

Nothing here patches our own code: faults enter through tests.support.faults."""
from __future__ import annotations

import contextlib
import dataclasses
import json
from collections import Counter
from typing import Any, Iterator, Optional

from chalicelib import aws, errors
from chalicelib.config import Settings
from chalicelib.core import naming
from chalicelib.core.spec import ClusterRequest, build_spec, resolve_role
from tests.support import drive
from tests.support.clock import Clock
from tests.support.faults import Crash, Fault, Tap, is_write
from tests.support.snapshots import leftovers, snapshot
from tests.support.world import (ACCOUNT, CLUSTER, REGION, ROLE, key_policy, make_cluster,
                                 make_role, moto_like_aws, plain)

KMS_ALIAS = "alias/kip-payments-prod"
PHASES = ("provision", "reconcile", "teardown")
TRANSIENT = ("throttle", "server_error", "timeout")
LEASE_SECONDS = 60

# Botocore's standard-mode backoff, as it would have slept (seconds), before the test scaled it.
BACKOFF_LOG: list[float] = []


def reliability_settings(**overrides: Any) -> Settings:
    """Settings for the matrix: standard retry mode, few attempts, a short lease."""
    base = Settings.from_env()
    values = dict(retry_mode="standard", max_attempts=3, lease_seconds=LEASE_SECONDS)
    values.update(overrides)
    return dataclasses.replace(base, **values)


_WORLDS: list = []


@contextlib.contextmanager
def world(settings: Optional[Settings] = None) -> Iterator["Scenario"]:
    """A fresh in-process AWS (moto), fresh clients, the records table and an installed tap."""
    from moto import mock_aws
    settings = settings or reliability_settings()
    from tests.support.pod_identity import PodIdentity, distinct_issuers
    with mock_aws(), moto_like_aws(), distinct_issuers():
        _WORLDS.append(settings)
        aws.reset()
        aws.Store(settings).create_table()
        PodIdentity(ACCOUNT, REGION)    # moto has no Pod Identity API: the strict-AWS fake
        sc = Scenario(settings)
        try:
            yield sc
        finally:
            sc.shutdown_engines()
            aws.reset()
            _WORLDS.pop()


class Scenario:
    """The cluster ``payments-prod`` with its controller role and a customer KMS key (so every
    kind of call, kms:DescribeKey included, is made), driven through the use cases directly."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.clock = Clock(None)     # the wall clock's present, settable
        self.tap = Tap().install()
        self.cid = naming.ClusterId(ACCOUNT, REGION, CLUSTER)
        self.names = naming.names_for(self.cid, settings.prefix, settings.iam_path)
        self.kms_arn: Optional[str] = None
        self._engines: list = []

    # -- world ------------------------------------------------------------------------------
    def engine(self) -> Any:
        e = drive.make_kit(self.settings, clock=self.clock)
        self._engines.append(e)
        return e

    def crash(self, phase: str, label: str) -> Any:
        """Run ``phase`` in a fresh engine whose process 'dies' just before ``label``: the crash
        propagates, the dead process's other threads stop, and the injector is reset."""
        import pytest
        engine = self.engine()
        self.tap.arm(Fault("crash", label))
        with pytest.raises(Crash):
            self.run(phase, engine)
        engine.workers.shutdown()
        self.tap.disarm()
        self.tap.dead = False
        return engine

    def shutdown_engines(self) -> None:
        for e in self._engines:
            e.workers.shutdown()
        self._engines.clear()

    def request(self) -> ClusterRequest:
        return ClusterRequest(cluster_name=CLUSTER, kms_key_id=KMS_ALIAS)

    def expected_spec_hash(self) -> str:
        req = self.request()
        resolve_role(req, self.cid, self.settings)
        return build_spec(req, self.cid, self.names, self.settings, self.kms_arn).spec_hash

    def snapshot(self) -> dict:
        subs = {self.kms_arn: "<kms-key-arn>"} if self.kms_arn else {}
        return snapshot(self.settings.table_name, self.settings.prefix, self.settings.iam_path,
                        substitute=subs, expected_spec_hash=self.expected_spec_hash())

    def record(self) -> Optional[dict]:
        return aws.Store(self.settings).get(self.cid.key)

    def lease_live(self, rec: Any = "read") -> bool:
        rec = self.record() if rec == "read" else rec
        return bool(rec) and bool(rec.get("lease_owner")) and int(rec.get("lease_expires", 0)) >= self.clock()

    def expire_lease(self) -> None:
        self.clock.advance(self.settings.lease_seconds + 1)

    # -- phases -----------------------------------------------------------------------------
    def setup(self, phase: str) -> None:
        """Bring the world to the start of ``phase`` (no fault armed), then clear the tap."""
        make_cluster(CLUSTER)
        make_role(ROLE)
        kms = plain("kms")
        key = kms.create_key(Description="karpenter interruption queue key",
                             Policy=key_policy())["KeyMetadata"]
        kms.create_alias(AliasName=KMS_ALIAS, TargetKeyId=key["KeyId"])
        self.kms_arn = key["Arn"]
        if phase in ("reconcile", "teardown"):
            drive.provision(self.engine(), self.request())
        if phase == "reconcile":
            self.drift()
        self.tap.reset()

    def drift(self) -> None:
        """Changes made behind the service's back, which a reconcile must repair: a deleted rule,
        a changed queue attribute, a removed tag, a widened controller policy, a detached role."""
        n = self.names
        events, sqs, iam = plain("events"), plain("sqs"), plain("iam")
        events.remove_targets(Rule=n.rule, Ids=[naming.TARGET_ID])
        events.delete_rule(Name=n.rule)
        sqs.set_queue_attributes(QueueUrl=sqs.get_queue_url(QueueName=n.queue)["QueueUrl"],
                                 Attributes={"VisibilityTimeout": "42"})
        sqs.untag_queue(QueueUrl=sqs.get_queue_url(QueueName=n.dlq)["QueueUrl"],
                        TagKeys=[naming.DISCOVERY_TAG])
        wide = {"Version": "2012-10-17", "Statement": [{
            "Effect": "Allow", "Action": ["sqs:*"], "Resource": n.queue_arn}]}
        iam.create_policy_version(PolicyArn=n.policy_arn, PolicyDocument=json.dumps(wide),
                                  SetAsDefault=True)
        iam.detach_role_policy(RoleName=ROLE, PolicyArn=n.policy_arn)

    def run(self, phase: str, engine: Optional[Any] = None) -> Any:
        engine = engine or self.engine()
        if phase == "provision":
            return drive.provision(engine, self.request())
        if phase == "reconcile":
            return drive.reconcile(engine, self.cid)
        if phase == "teardown":
            return drive.teardown(engine, self.cid)
        raise ValueError(phase)

    def run_again(self, phase: str, may_wait_for_lease: bool) -> str:
        """The next run after a failure. Returns how it went (for the report)."""
        try:
            self.run(phase)
            return "next run converged"
        except errors.InProgress:
            if not may_wait_for_lease:
                raise
        self.expire_lease()
        self.run(phase)
        return "next run (after the lease expired) converged"

    def leftovers(self) -> list[str]:
        """A cheap look at whether anything of ours is left (queues, rules, policies, the role's
        attachments, records)."""
        return leftovers(self.settings.table_name, self.settings.prefix, self.settings.iam_path)

    def teardown_leaves_nothing(self) -> list[str]:
        """Tear down (without a fault) and return what is left; [] = nothing."""
        with contextlib.suppress(errors.RecordNotFound):     # nothing there at all
            drive.teardown(self.engine(), self.cid)
        return self.leftovers()

    def record_vs_reality(self, record: dict) -> list[str]:
        """Where the record's resources.*.exists disagrees with what exists."""
        snap = self.snapshot()
        res = record.get("resources") or {}
        wrong = []

        def check(what: str, claimed: Any, actual: bool) -> None:
            if claimed is None:
                wrong.append(f"{what}: not in the record")
            elif bool(claimed) != actual:
                wrong.append(f"{what}: record says {claimed}, reality {actual}")
        check("queue", (res.get("queue") or {}).get("exists"), self.names.queue in snap["queues"])
        check("dlq", (res.get("dlq") or {}).get("exists"), self.names.dlq in snap["queues"])
        for kind, rule in self.names.rules.items():
            r = (res.get("rules") or {}).get(kind) or {}
            check(f"rule {kind}", r.get("exists"), rule in snap["rules"])
            has_target = any(t[0] == naming.TARGET_ID
                             for t in (snap["rules"].get(rule) or {}).get("targets", []))
            check(f"rule {kind} target", r.get("target"), has_target)
        check("policy", (res.get("policy") or {}).get("exists"),
              self.names.policy in snap["policies"])
        check("attachment", (res.get("attachment") or {}).get("attached"),
              self.names.policy_arn in snap["roles"].get(ROLE, []))
        return wrong


# ----------------------------------------------------------------------------- enumeration

_ENUMERATION: Optional[dict] = None


def enumerate_calls() -> dict:
    """Run a clean provision, reconcile (of drift) and teardown with the recording hook.

    Returns {phase: {"calls": Counter(label -> number of calls), "order": [labels, first-seen
    order], "reference": normalized snapshot after the phase}}. A new AWS call in the code shows
    up here, and so in the matrix, without touching the tests.
    """
    global _ENUMERATION
    if _ENUMERATION is None:
        if _WORLDS:
            raise RuntimeError("enumerate_calls() inside a world would share its moto state")
        result = {}
        for phase in PHASES:
            with world() as sc:
                sc.setup(phase)
                sc.run(phase)
                calls = list(sc.tap.calls)
                result[phase] = {"calls": Counter(calls), "order": list(dict.fromkeys(calls)),
                                 "reference": sc.snapshot()}
        _ENUMERATION = result
    return _ENUMERATION


def matrix_cases(kinds: tuple) -> list[tuple[str, str, str]]:
    cases = []
    for phase, info in enumerate_calls().items():
        for label in sorted(info["calls"]):     # sorted: every xdist worker collects the same
            for kind in kinds:
                if kind == "lost_response" and not is_write(label):
                    continue
                cases.append((phase, label, kind))
    return cases
