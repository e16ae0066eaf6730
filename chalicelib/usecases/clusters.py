"""Use cases: provision, adopt, reconcile, teardown, describe, list, sweep.

Every change follows one skeleton: observe (reads in parallel) -> plan (pure) -> lease -> run the
plan on its dependency graph -> record. Names are written into the record with the lease, before
anything is created, so a crash at any point leaves a record naming everything that may exist.
When a change is likely, the lease is taken while the second wave of reads runs.
"""
from __future__ import annotations

import calendar
import threading
import time
from dataclasses import dataclass, field
from typing import Callable, Optional

from aws_lambda_powertools import Logger

from chalicelib import aws, errors
from chalicelib.core import kms, naming, quota, records, tenancy
from chalicelib.converge import migration, planner
from chalicelib.usecases import reads as observe, sweep as sweeper
from chalicelib.aws import registry
from chalicelib.config import Settings, get_settings
from chalicelib.converge.executor import Run, Workers, done, execute, gather, preview
from chalicelib.core.records import ClusterRecord, EksCluster, Karpenter, LastError
from chalicelib.core.spec import (ClusterRequest, DesiredSpec, RoleRef, build_spec, resolve_real_role,
                             resolve_role)
from chalicelib.core.observed import ClusterState, Observed

# A child of app.py's Powertools logger: same JSON format, same keys (the cluster identity).
log = Logger(service="kip", child=True)
IN_SYNC = ("ready", "waiting_for_role")


@dataclass
class Outcome:
    record: Optional[ClusterRecord]
    changed: bool = False
    actions: list = field(default_factory=list)
    dry_run: bool = False
    skipped: list = field(default_factory=list)
    opted_out: bool = False
    # "queue"/"dlq" -> GetQueueAttributes (All) as this run read them: the sweep's health read
    # takes its counts from here instead of asking SQS again
    queue_attributes: dict = field(default_factory=dict)


@dataclass
class Context:
    """What the first wave of reads found for one run."""
    cid: naming.ClusterId
    target: aws.Target
    names: naming.Names
    record: Optional[ClusterRecord]
    found: observe.Located
    role: Optional[RoleRef] = None
    cluster: Optional[ClusterState] = None
    kms_key_arn: Optional[str] = None
    counting: Optional[list] = None     # the rule quota's reads, started early


Guard = Callable[[Context], Optional[Outcome]]


class Engine:
    def __init__(self, settings: Optional[Settings] = None,
                 clock: Callable[[], float] = time.time) -> None:
        self.settings = settings or get_settings()
        self.clock = clock
        self.registry = registry.Registry(aws.Store(self.settings), self.settings, clock)
        self.recorder = Recorder(self.registry, self.settings, clock)
        self.rule_room = RuleRoom(self.settings, clock)
        self.workers = Workers(self.settings.max_workers)
        self.org = aws.Organization(self.settings)      # KIP_ORG_ID membership, cached

    # ------------------------------------------------------------------ identity
    def identity(self, cluster_name: str, account_id: Optional[str] = None,
                 region: Optional[str] = None) -> naming.ClusterId:
        """The only way to build a cluster's identity: every part checked (400 otherwise)."""
        from chalicelib.core.spec import validate_identity
        account = account_id or aws.own_account(self.settings)
        region = region or self.settings.region
        validate_identity(cluster_name, account, region, self.settings,
                          aws.available_regions(naming.partition_for(region)))
        tenancy.require_allowed(account, aws.own_account(self.settings), self.settings,
                                self.org.organization_of)    # 403 outside the allow-list
        return naming.ClusterId(account, region, cluster_name)

    def names(self, cid: naming.ClusterId, legacy: bool = False) -> naming.Names:
        return naming.names_for(cid, self.settings.prefix, self.settings.iam_path, legacy)

    def _target(self, cid: naming.ClusterId) -> aws.Target:
        target = aws.Target(cid.account_id, cid.region, self.settings)
        target.warm()
        return target

    # ------------------------------------------------------------------ use cases
    def provision(self, req: ClusterRequest, source: str = "api",
                  requested_by: Optional[str] = None) -> Outcome:
        return self._converge(req, source, _refuse_unusable_cluster, requested_by)

    def adopt(self, cid: naming.ClusterId, source: str, dry_run: bool = False) -> Outcome:
        """Provision a cluster found without kip being asked (EKS event, sweep, backfill): its
        opt-out tag is honoured."""
        req = ClusterRequest(cluster_name=cid.cluster_name, account_id=cid.account_id,
                             region=cid.region, dry_run=dry_run)
        return self._converge(req, source, self._opted_out_or_unusable)

    def reconcile(self, cid: naming.ClusterId, dry_run: bool = False,
                  requested_by: Optional[str] = None,
                  record: Optional[ClusterRecord] = None) -> Outcome:
        rec = record or self.describe(cid)
        if rec.status == "deleting":     # an unfinished teardown: finish it, never undo it
            return self.teardown(cid, "reconcile", dry_run, requested_by)
        params = {**rec.request, "cluster_name": cid.cluster_name,
                  "account_id": cid.account_id, "region": cid.region, "dry_run": dry_run}
        return self._converge(ClusterRequest.model_validate(params), "reconcile",
                              _refuse_unusable_cluster, requested_by, known=rec)

    def teardown(self, cid: naming.ClusterId, source: str = "api",
                 dry_run: bool = False, requested_by: Optional[str] = None) -> Outcome:
        """Remove everything the record names; without a record, this cluster's tagged
        resources under the computed names (a run whose record write failed)."""
        ctx = self._first_wave(cid, None, [], legacy=True)    # (no record: old rules too)
        if dry_run:
            obs = self._detail(ctx, "teardown")
            actions, skipped = planner.plan_teardown(ctx.names, cid, obs)
            return Outcome(ctx.record, actions=preview(actions), dry_run=True, skipped=skipped)
        self.registry.check_free(ctx.record)
        obs = None
        if ctx.record is None:      # adopt this cluster's tagged resources only if there are any
            obs = self._detail(ctx, "teardown")
            actions, skipped = planner.plan_teardown(ctx.names, cid, obs)
            if not actions:
                raise errors.RecordNotFound(f"no record and no resources for cluster {cid.key}",
                                            field="cluster_name", skipped=skipped or None)
        fields = {"status": "deleting", "source": source, "names": ctx.names.to_dict(),
                  **self.recorder.stamps(ctx.record), **_by(requested_by)}
        with self.registry.lease(cid, ctx.record, fields, self.workers.submit) as held:
            obs = obs or self._detail(ctx, "teardown")
            actions, skipped = planner.plan_teardown(ctx.names, cid, obs)
            return self._remove(ctx, obs, actions, skipped, held)

    def describe(self, cid: naming.ClusterId) -> ClusterRecord:
        rec = self.registry.get(cid)
        if rec is None:
            raise errors.RecordNotFound(f"no record for cluster {cid.key}; provision it with "
                                        "POST /clusters", field="cluster_name")
        return rec

    def list(self, limit: int = 50, next_token: Optional[str] = None,
             status: Optional[str] = None) -> tuple[list[ClusterRecord], Optional[str]]:
        return self.registry.page(limit, next_token, status)

    def sweep(self, max_records: int = 1000) -> dict:
        """The scheduled job, in process (the local stage; deployed: chalicelib.usecases.fanout)."""
        return sweeper.sweep(self, max_records)

    # ------------------------------------------------------------------ the skeleton
    def _converge(self, req: ClusterRequest, source: str, guard: Guard,
                  requested_by: Optional[str] = None,
                  known: Optional[ClusterRecord] = None) -> Outcome:
        cid = self.identity(req.cluster_name, req.account_id, req.region)
        role = resolve_role(req, cid, self.settings)       # 400/403 before any AWS call
        ctx = self._first_wave(cid, role, [role.name], req.kms_key_id, known=known)
        stop = guard(ctx)
        if stop is not None:
            return stop
        since = ctx.record.rule_migration_since if ctx.record else None
        spec = build_spec(req, cid, ctx.names, self.settings, ctx.kms_key_arn, ctx.role,
                          migration.keep_legacy(ctx.names, since, self.clock()),
                          ctx.record.tag_keys if ctx.record else None,
                          migration.still_settling(ctx.record.settling if ctx.record else None,
                                                   self.clock()))
        previous = self._previous_role(ctx)
        if req.dry_run:
            actions = planner.plan_provision(spec, self._detail(ctx, "provision", previous))
            return Outcome(ctx.record, actions=preview(actions), dry_run=True)
        self.registry.check_free(ctx.record)
        obs = actions = None
        rec = ctx.record
        if rec is not None and rec.status in IN_SYNC and rec.spec_hash == spec.spec_hash:
            # likely in sync: a cheaper look (no tags, no policy versions) decides, unless the
            # last full look is older than KIP_FULL_CHECK_HOURS; any difference is planned
            # again from a full look, under the lease
            cheap = _recent(rec.verified_at, self.clock(), self.settings.full_check_hours)
            check = self._detail(ctx, "check" if cheap else "provision", previous)
            if not planner.plan_provision(spec, check) and rec.status == _status_for(check):
                return Outcome(self._note_in_sync(ctx, rec, check, cheap),
                               queue_attributes=_queue_attributes(check))
        with self.registry.lease(cid, rec, self.recorder.provision_fields(
                spec, source, ctx, requested_by), self.workers.submit) as held:
            if obs is None:
                if not ctx.found.rules.get(ctx.names.rule):     # a rule will be created
                    ctx.counting = self.rule_room.prefetch(ctx.target, self.workers)
                obs = self._detail(ctx, "provision", previous)
                actions = planner.plan_provision(spec, obs)
            return self._apply(ctx, spec, obs, actions, held)

    def _note_in_sync(self, ctx: Context, rec: ClusterRecord, check: Observed,
                      cheap: bool) -> ClusterRecord:
        """An in-sync record, brought up to date without a lease or a version bump (one
        UpdateItem, only when something changed): when it was last fully verified, the EKS
        cluster's summary (upgraded, Auto Mode turned on) and the alarms found (a record from
        before alarms were recorded, or alarms deleted by hand once KIP_ALARMS is off)."""
        update: dict = {} if cheap else {"verified_at": registry.iso(self.clock())}
        cluster = {k: v for k, v in (ctx.cluster.summary() if ctx.cluster else {}).items()
                   if v is not None}
        if cluster != (rec.cluster.model_dump(exclude_none=True) if rec.cluster else {}):
            update["cluster"] = EksCluster(**cluster)
        alarms = records.owned_alarms(check, ctx.cid)
        if alarms is not None and alarms.keys() != rec.resources.alarms.keys():
            update["resources"] = rec.resources.model_copy(update={"alarms": alarms})
        if not update:
            return rec
        self.registry.note(rec, {k: v.model_dump() if hasattr(v, "model_dump") else v
                                 for k, v in update.items()})
        return rec.model_copy(update=update)

    def _first_wave(self, cid: naming.ClusterId, role: Optional[RoleRef], roles: list,
                    kms_key_id: Optional[str] = None, legacy: bool = False,
                    known: Optional[ClusterRecord] = None) -> Context:
        """The first parallel wave. ``known``: the record as just read (a reconcile): not read
        again, and its queue URLs and resolved role save their look-ups."""
        target, names = self._target(cid), self.names(cid)
        submit = self.workers.submit
        record_f = done(known) if known else submit(self.registry.get, cid)
        cluster_f = role_f = key_f = policy_f = None
        if role is not None:
            cluster_f = submit(target.describe_cluster, cid.cluster_name)
            role_f = done(records.known_role(known, role.name)) if \
                records.known_role(known, role.name) else submit(target.get_role, role.name)
        if kms_key_id:
            key_f = submit(target.describe_key, kms_key_id)
            policy_f = submit(target.key_policy, kms_key_id)
        locating = observe.locate(target, names, roles, self.workers, records.known_urls(known))
        gather([f for f in (record_f, cluster_f, role_f, key_f, policy_f) if f is not None])
        record, found = record_f.result(), locating()
        recorded = record.recorded_names() if record else None
        if recorded and recorded != names:          # names are recorded once: the record wins
            names = recorded.upgraded(names)        # (a five-rule record gains the one rule)
            found = observe.locate(target, names, roles, self.workers)()
        elif record is None and legacy:             # a teardown without a record: look for the
            names = self.names(cid, legacy=True)    # five-rule layout's rules as well
            found = observe.locate(target, names, roles, self.workers)()
        ctx = Context(cid, target, names, record, found, role)
        if cluster_f is not None and role_f is not None:
            ctx.cluster = cluster_f.result()
            if ctx.cluster is None:
                raise errors.ClusterNotFound(
                    f"EKS cluster {cid.cluster_name!r} does not exist in account "
                    f"{cid.account_id} region {cid.region}; nothing was created",
                    field="cluster_name")
            ctx.role = resolve_real_role(role, role_f.result())
        if key_f is not None and policy_f is not None:
            ctx.kms_key_arn = kms.usable_key_arn(kms_key_id, key_f.result(), cid.account_id,
                                                 cid.region, policy=policy_f.result())
        return ctx

    def _previous_role(self, ctx: Context) -> Optional[str]:
        """A role the record says holds the policy, other than the one wanted now."""
        att = ctx.record.resources.attachment if ctx.record else None
        if att and att.role_name and ctx.role and att.role_name != ctx.role.name:
            ctx.found.roles.update(observe.roles(ctx.target, [att.role_name], self.workers))
            return att.role_name
        return None

    def _alarms_to_read(self, ctx: Context, purpose: observe.Purpose) -> bool:
        """Alarms are read when kip manages them, when the record lists some (KIP_ALARMS was
        turned off since: they are deleted), and by every teardown (rare, and in the same wave:
        a record from before alarms were recorded may not list them)."""
        return bool(self.settings.alarms or purpose == "teardown" or
                    (ctx.record and ctx.record.resources.alarms))

    def _detail(self, ctx: Context, purpose: observe.Purpose,
                previous: Optional[str] = None) -> Observed:
        obs = observe.detail(ctx.target, ctx.names, ctx.found, self.workers, purpose,
                             read_alarms=self._alarms_to_read(ctx, purpose))
        if ctx.role is not None:
            obs.role = ctx.found.roles[ctx.role.name]
        if previous:
            obs.previous_role = ctx.found.roles[previous]
        return obs

    def _apply(self, ctx: Context, spec: DesiredSpec, obs: Observed,
               actions: list, held: registry.Lease) -> Outcome:
        leased = held.get()
        if any(a.op == "put_rule" and a.kind == "create" for a in actions):
            self.rule_room.claim(ctx.target, self.workers, ctx.counting)  # before any write
        held.writing = True
        run = execute(ctx.target, actions, self.workers)
        role = spec.role
        resources = records.apply(records.observed(
            ctx.names, obs, spec.event_kinds, role.name, role.arn, obs.role.exists, ctx.cid),
            actions, run.done)
        update = {"resources": resources, "applied": [a.id for a in run.finished(actions)],
                  "status": _status_for(obs), "last_error": None,
                  "verified_at": registry.iso(self.clock()),
                  "settling": migration.settled_after(leased.settling, actions, run.done, obs,
                                                      self.clock(), registry.iso(self.clock()))}
        update.update(migration.recorded_fields(spec, resources, run.failure is None,
                                                registry.iso(self.clock()),
                                                leased.rule_migration_since))
        if run.failure:
            update.update(status="failed", last_error=self.recorder.failure(run, "provisioning"))
        previous = ctx.record.status if ctx.record else None
        saved = self.recorder.save(leased.model_copy(update=update), held.owner, previous)
        if run.failure:
            run.failure[1].extra["record"] = saved.public()
            raise run.failure[1]
        return Outcome(saved, changed=bool(actions) or previous != saved.status,
                       actions=preview(actions), queue_attributes=_queue_attributes(obs))

    def _remove(self, ctx: Context, obs: Observed, actions: list, skipped: list,
                held: registry.Lease) -> Outcome:
        leased = held.get()
        held.writing = True
        run = execute(ctx.target, actions, self.workers)
        removed = [{"resource": a.resource, "name": a.name, "call": a.op}
                   for a in run.finished(actions)]
        if run.failure:     # still "deleting": a retried DELETE, a reconcile or the sweep finishes
            resources = records.apply(records.observed_teardown(
                ctx.names, obs, leased.event_kinds, leased.resources.attachment, ctx.cid),
                actions, run.done)
            saved = self.recorder.save(leased.model_copy(update={
                "resources": resources, "removed": removed,
                "last_error": self.recorder.failure(run, "teardown")}), held.owner, leased.status)
            run.failure[1].extra["record"] = saved.public()
            raise run.failure[1]
        self.registry.delete(leased, held.owner)
        if ctx.record is not None:
            self.recorder.deleted(leased, ctx.record.status)
        return Outcome(None, changed=bool(actions), actions=removed, skipped=skipped)

    def _opted_out_or_unusable(self, ctx: Context) -> Optional[Outcome]:
        from chalicelib.core.spec import is_opted_out
        if ctx.cluster is not None and is_opted_out(ctx.cluster.tags, self.settings):
            return Outcome(ctx.record, opted_out=True)
        return _refuse_unusable_cluster(ctx)


class Recorder:
    """Writes a run's outcome: the record's fields, its last error, and the portal's status
    event when the status changes."""

    def __init__(self, reg: registry.Registry, settings: Settings,
                 clock: Callable[[], float]) -> None:
        self.registry, self.settings, self.clock = reg, settings, clock

    def failure(self, run: Run, during: str) -> LastError:
        assert run.failure is not None
        action, exc = run.failure
        log.error(f"{during} step failed", extra={
            "step": action.id, "resource": action.name, "code": exc.code,
            "detail": exc.message, "done": sorted(run.done)})
        return LastError(step=action.id, call=action.op, resource=action.name,
                         code=exc.extra.get("aws_code") or exc.code, message=exc.message,
                         at=registry.iso(self.clock()), during=during)

    def stamps(self, record: Optional[ClusterRecord]) -> dict:
        now = registry.iso(self.clock())
        return {"updated_at": now} if record else {"updated_at": now, "created_at": now,
                                                    "resources": {}}

    def provision_fields(self, spec: DesiredSpec, source: str, ctx: Context,
                         requested_by: Optional[str] = None) -> dict:
        return {"status": "provisioning", "source": source, "spec_hash": spec.spec_hash,
                "request": spec.parameters, "names": spec.names.to_dict(),
                "event_kinds": list(spec.event_kinds), "tag_keys": sorted(spec.tags),
                "karpenter": Karpenter.for_queue(spec.names.queue).model_dump(by_alias=True),
                "cluster": ctx.cluster.summary() if ctx.cluster else None,
                **self.stamps(ctx.record), **_by(requested_by)}

    def save(self, record: ClusterRecord, owner: str,
              previous_status: Optional[str]) -> ClusterRecord:
        saved = self.registry.save(record, owner)
        if saved.status != previous_status:
            self.publish(saved.cid, saved.status, previous_status,
                          (saved.names or {}).get("queue"), saved.last_error, saved.requested_by)
        return saved

    def deleted(self, record: ClusterRecord, previous: str) -> None:
        self.publish(record.cid, "deleted", previous, None, None, record.requested_by)

    def publish(self, cid: naming.ClusterId, status: str, previous: Optional[str],
                queue: Optional[str], last_error: Optional[LastError],
                requested_by: Optional[str] = None, **more: object) -> None:
        try:
            aws.publish_status(self.settings, {
                "cluster": cid.key, "cluster_name": cid.cluster_name,
                "account_id": cid.account_id, "region": cid.region, "status": status,
                "previous_status": previous, "queue_name": queue,
                "last_error": last_error.model_dump() if last_error else None,
                "requested_by": requested_by, **more})
        except errors.KipError as exc:  # a portal notification never fails provisioning
            log.warning("status event not published", extra={"detail": exc.message})



class RuleRoom:
    """The rule quota check before a new rule, with the bus's rule count cached per
    account-region for a minute (a sweep creating many rules counts once, then adds)."""

    TTL = 60.0

    def __init__(self, settings: Settings, clock: Callable[[], float]) -> None:
        self.settings, self.clock = settings, clock
        self._seen: dict[tuple, list] = {}       # (account, region) -> [used, quota, source, at]
        self._lock = threading.Lock()

    def prefetch(self, target: aws.Target, workers: Workers) -> Optional[list]:
        """Start the count and quota reads (alongside a run's second wave) unless cached."""
        with self._lock:
            seen = self._seen.get((target.account, target.region))
            if seen is not None and self.clock() - seen[3] <= self.TTL:
                return None
        return [workers.submit(target.count_rules), workers.submit(target.rule_quota)]

    def claim(self, target: aws.Target, workers: Workers,
              reading: Optional[list] = None) -> None:
        key = (target.account, target.region)
        with self._lock:
            seen = self._seen.get(key)
            if seen is None or self.clock() - seen[3] > self.TTL:
                used, from_sq = gather(reading or [workers.submit(target.count_rules),
                                                   workers.submit(target.rule_quota)])
                limit, source = quota.effective_quota(target.region, from_sq,
                                                      self.settings.rule_quota)
                seen = self._seen[key] = [used, limit, source, self.clock()]
            quota.check_rule_room(seen[0], seen[1], seen[2], self.settings.rule_reserve,
                                  target.account, target.region)
            seen[0] += 1


def _refuse_unusable_cluster(ctx: Context) -> Optional[Outcome]:
    """No new provisioning for an EKS Auto Mode cluster. One kip already manages keeps its
    resources (the record shows ``cluster.auto_mode``): self-managed Karpenter may still be
    running while the cluster moves to Auto Mode, and only its owner knows when it is gone."""
    if ctx.cluster is not None and ctx.cluster.auto_mode and ctx.record is None:
        raise errors.AutoModeCluster(
            f"EKS cluster {ctx.cid.cluster_name!r} runs EKS Auto Mode (computeConfig.enabled), "
            "which handles Spot interruptions itself: it needs no interruption queue; nothing "
            "was created", field="cluster_name")
    status = ctx.cluster.status if ctx.cluster else None
    if status in ("DELETING", "FAILED"):
        raise errors.Conflict(f"EKS cluster {ctx.cid.cluster_name!r} is {status}; nothing was "
                              "created", field="cluster_name")
    return None


def _queue_attributes(obs: Observed) -> dict:
    """The attributes of the queues that existed when read (a queue this run created has none)."""
    return {key: st.attributes for key in ("queue", "dlq")
            if (st := getattr(obs, key)) is not None and st.exists and st.attributes}


def _by(requested_by: Optional[str]) -> dict:
    """The caller is recorded when known; runs nobody asked for (sweep, EKS event) keep it."""
    return {"requested_by": requested_by} if requested_by else {}


def _recent(stamp: Optional[str], now: float, hours: float) -> bool:
    if not stamp:
        return False
    return now - calendar.timegm(time.strptime(stamp, "%Y-%m-%dT%H:%M:%SZ")) < hours * 3600




def _status_for(obs: Observed) -> str:
    return "ready" if obs.role.exists else "waiting_for_role"
