"""The cluster use cases: provision, adopt, reconcile (and describe, page), on one skeleton
(``usecases.skeleton``): first wave -> desired spec -> second wave (under the lease when a change
is likely) -> plan -> run -> record. Teardown is ``usecases.teardown``.

Each takes the kit and a cluster identity built once at the edge (``skeleton.identity``).
"""
from __future__ import annotations

import calendar
import time
from typing import Callable, Optional

from chalicelib import errors
from chalicelib.aws import registry
from chalicelib.converge import migration, planner
from chalicelib.converge.executor import execute, preview
from chalicelib.core import cutover, naming, preconditions, records
from chalicelib.core.preconditions import IfMatch
from chalicelib.core.observed import Observed
from chalicelib.core.records import ClusterRecord, EksCluster, LastError
from chalicelib.core.spec import ClusterRequest, DesiredSpec, build_spec, is_opted_out
from chalicelib.usecases import audit, brownfield, skeleton, teardown
from chalicelib.usecases.kit import Kit
from chalicelib.usecases.skeleton import Context, Outcome

IN_SYNC = ("ready", "waiting_for_role")
Guard = Callable[[Kit, Context], Optional[Outcome]]


def provision(kit: Kit, cid: naming.ClusterId, req: ClusterRequest, source: str = "api",
              requested_by: Optional[str] = None, if_match: Optional[IfMatch] = None) -> Outcome:
    """What a caller asked for (``POST /clusters``): an Auto Mode or dying cluster is refused;
    ``if_match``: the record must still be at that version (412 otherwise)."""
    guard = _refuse_unusable_cluster if if_match is None else _matching(if_match, "POST")
    return _converge(kit, cid, req, source, guard, requested_by)


# An automatic path meets these before anything exists: the cluster keeps a ``blocked`` record
# that says why, and the sweep tries again (quota room freed, clash removed, role named).
BLOCKING = (errors.QuotaExceeded, errors.ResourceNotOwned, errors.ValidationError,
            errors.Forbidden)


def adopt(kit: Kit, cid: naming.ClusterId, source: str, dry_run: bool = False) -> Outcome:
    """Provision a cluster found without kip being asked (EKS event, sweep, backfill): its
    opt-out tag is honoured. One that cannot be provisioned keeps a ``blocked`` record."""
    req = ClusterRequest(cluster_name=cid.cluster_name, account_id=cid.account_id,
                         region=cid.region, dry_run=dry_run)
    try:
        return _converge(kit, cid, req, source, _opted_out_or_unusable)
    except errors.AutoModeCluster:      # EKS handles it: in the inventory as handler auto-mode
        if not dry_run:
            brownfield.park(kit, cid, req, source, "external", "auto-mode", None)
        raise
    except BLOCKING as exc:
        if not dry_run:
            _block(kit, cid, req, source, exc)
        raise


def _block(kit: Kit, cid: naming.ClusterId, req: ClusterRequest, source: str,
           exc: errors.KipError) -> None:
    """Record a cluster an automatic path could not provision, when it has no record yet (or
    only a blocked one): status ``blocked``, the error's code and message."""
    error = LastError(step="admission", call=type(exc).__name__, resource=cid.key,
                      code=exc.code, message=exc.message, at=registry.iso(kit.clock()),
                      during="admission")
    blocked = kit.registry.block(cid, {
        "source": source, "request": req.model_dump(exclude_none=True, exclude={"dry_run"}),
        "last_error": error.model_dump(), **kit.recorder.stamps(None)})
    if blocked is not None:
        audit.record(kit, cid, "block", f"blocked: {exc.code}", source=source)


def reconcile(kit: Kit, cid: naming.ClusterId, dry_run: bool = False,
              requested_by: Optional[str] = None,
              record: Optional[ClusterRecord] = None,
              if_match: Optional[IfMatch] = None, finish_teardown: bool = True) -> Outcome:
    """Bring a recorded cluster back to what its record asked for (drift, a retried failure).
    ``finish_teardown=False``: the sweep found the cluster of an automatic unfinished teardown
    live in EKS after all: it is wired again instead."""
    rec = record or describe(kit, cid)
    preconditions.check(rec.version, if_match, False, "reconcile")
    if rec.status == "deleting" and finish_teardown:     # an unfinished teardown: finish it
        return teardown.teardown(kit, cid, "reconcile", dry_run, requested_by)
    params = {**rec.request, "cluster_name": cid.cluster_name,
              "account_id": cid.account_id, "region": cid.region, "dry_run": dry_run}
    req = ClusterRequest.model_validate(params)
    try:
        return _converge(kit, cid, req, "reconcile", _refuse_unusable_cluster, requested_by,
                         known=rec)
    except errors.AutoModeCluster:      # a parked cluster (nothing of kip's) went Auto Mode
        if dry_run or rec.status not in brownfield.PARKED:
            raise
        parked = brownfield.park(kit, cid, req, rec.source or "reconcile", "external",
                                 "auto-mode", rec.role_source)
        return Outcome(parked or rec, parked="external")


def describe(kit: Kit, cid: naming.ClusterId) -> ClusterRecord:
    rec = kit.registry.get(cid)
    if rec is None:
        raise missing(cid)
    return rec


def missing(cid: naming.ClusterId) -> errors.KipError:
    """The 404 of a cluster without a record (also of one outside the caller's team scopes:
    the same answer, so a read is no oracle of what exists)."""
    return errors.RecordNotFound(f"no record for cluster {cid.key}; provision it with "
                                 "POST /clusters", field="cluster_name")


def page(kit: Kit, limit: int = 50, next_token: Optional[str] = None,
         status: Optional[str] = None, consumer: Optional[str] = None,
         handler: Optional[str] = None) -> tuple[list[ClusterRecord], Optional[str]]:
    return kit.registry.page(limit, next_token, status, consumer, handler)


# ---------------------------------------------------------------------------- the skeleton

def _converge(kit: Kit, cid: naming.ClusterId, req: ClusterRequest, source: str, guard: Guard,
              requested_by: Optional[str] = None,
              known: Optional[ClusterRecord] = None) -> Outcome:
    look = not (known and known.status in IN_SYNC and
                _recent(known.verified_at, kit.clock(), kit.settings.full_check_hours))
    # the role: the request's, the record's, else found from the cluster (read beside the
    # first wave, which reads the template's meanwhile) or the template's
    discovery = brownfield.discover(kit, cid, req, known, asked=source == "api")
    guess = discovery.guess or discovery.found()
    ctx = skeleton.first_wave(kit, cid, guess.role, [guess.role.name], req.kms_key_id,
                              known=known, cluster=discovery.cluster if discovery.guess
                              else guess.cluster, inline=look)
    guessed = ctx.found.roles.get(guess.role.name)
    found = discovery.found(guessed.exists if guessed else None)
    if found.role.name != guess.role.name:
        skeleton.switch_role(kit, ctx, found.role)
    stop = guard(kit, ctx) or brownfield.gate(kit, ctx, req, found, source, look=look)
    if stop is not None:
        return stop
    spec = _desired(kit, ctx, req)
    previous = skeleton.previous_role(kit, ctx)
    if req.dry_run:
        actions = planner.plan_provision(spec, skeleton.detail(kit, ctx, "provision", previous))
        return Outcome(ctx.record, actions=preview(actions), dry_run=True)
    kit.registry.check_free(ctx.record)
    rec = ctx.record
    if rec is not None and rec.status in IN_SYNC and rec.spec_hash == spec.spec_hash:
        # likely in sync: a cheaper look (no tags, no policy versions) decides, unless the
        # last full look is older than KIP_FULL_CHECK_HOURS; any difference is planned
        # again from a full look, under the lease
        cheap = _recent(rec.verified_at, kit.clock(), kit.settings.full_check_hours)
        check = skeleton.detail(kit, ctx, "check" if cheap else "provision", previous)
        if not planner.plan_provision(spec, check) and rec.status == _status_for(check):
            return Outcome(_note_in_sync(kit, ctx, rec, check, cheap),
                           queue_attributes=skeleton.queue_attributes(check))
    fields = kit.recorder.provision_fields(spec, source, ctx.cluster, ctx.record, requested_by)
    if req.team:
        fields["owner_team"] = req.team
    with kit.registry.lease(cid, rec, fields, kit.workers.submit) as held:
        if not ctx.found.rules.get(ctx.names.rule):     # a rule will be created
            ctx.counting = kit.rule_room.prefetch(ctx.target, kit.workers)
            if ctx.counting is None:    # counted lately: the claim's one write goes beside the
                ctx.claimed = kit.workers.submit(       # lease's (a run that stops before
                    kit.rule_room.claim, ctx.target, kit.workers)   # its rule: the recount)
        obs = skeleton.detail(kit, ctx, "provision", previous)
        return _apply(kit, ctx, spec, obs, planner.plan_provision(spec, obs), held)


def _desired(kit: Kit, ctx: Context, req: ClusterRequest) -> DesiredSpec:
    """The desired spec; the one place a run decides whether the five-rule migration keeps the
    legacy rules, which attribute changes SQS may not show yet, and whether a takeover holds
    kip's queue's retention short while Karpenter still reads the other tool's queue."""
    rec, now = ctx.record, kit.clock()
    since = rec.rule_migration_since if rec else None
    return build_spec(req, ctx.cid, ctx.names, kit.settings, ctx.kms_key_arn, ctx.role,
                      migration.keep_legacy(ctx.names, since, now),
                      rec.tag_keys if rec else None,
                      migration.still_settling(rec.settling if rec else None, now),
                      hold=cutover.holding(ctx.cutover))


def _note_in_sync(kit: Kit, ctx: Context, rec: ClusterRecord, check: Observed,
                  cheap: bool) -> ClusterRecord:
    """An in-sync record, brought up to date without a lease or a version bump (one
    UpdateItem, only when something changed): when it was last fully verified, the EKS
    cluster's summary (upgraded, Auto Mode turned on) and the alarms found (a record from
    before alarms were recorded, or alarms deleted by hand once KIP_ALARMS is off), and what a
    full look found of other tools' handlers."""
    update: dict = {} if cheap else {"verified_at": registry.iso(kit.clock())}
    cluster = {k: v for k, v in (ctx.cluster.summary() if ctx.cluster else {}).items()
               if v is not None}
    if cluster != (rec.cluster.model_dump(exclude_none=True) if rec.cluster else {}):
        update["cluster"] = EksCluster(**cluster)
    alarms = records.owned_alarms(check, ctx.cid)
    if alarms is not None and alarms.keys() != rec.resources.alarms.keys():
        update["resources"] = rec.resources.model_copy(update={"alarms": alarms})
    update.update({k: v for k, v in brownfield.recorded(ctx).items()   # another handler seen
                   if getattr(rec, k) != v})                          # (or gone) since
    if not update:
        return rec
    kit.registry.note(rec, {k: v.model_dump() if hasattr(v, "model_dump") else v
                            for k, v in update.items()})
    return rec.model_copy(update=update)


def _apply(kit: Kit, ctx: Context, spec: DesiredSpec, obs: Observed,
           actions: list, held: registry.Lease) -> Outcome:
    leased = held.get()
    if ctx.claimed is not None:                         # before any write
        ctx.claimed.result()
    elif any(a.op == "put_rule" and a.kind == "create" for a in actions):
        kit.rule_room.claim(ctx.target, kit.workers, ctx.counting)
    held.writing = True
    run = execute(ctx.target, actions, kit.workers)
    role = spec.role
    resources = records.apply(records.from_observed(
        ctx.names, obs, spec.event_kinds, role.name, role.arn, obs.role.exists, ctx.cid),
        actions, run.done)
    now, stamp = kit.clock(), registry.iso(kit.clock())
    update = {"resources": resources, "applied": [a.id for a in run.finished(actions)],
              "status": _status_for(obs), "last_error": None, "verified_at": stamp,
              "settling": migration.settled_after(leased.settling, actions, run.done, obs,
                                                  now, stamp),
              **migration.recorded_fields(spec, resources, run.failure is None, stamp,
                                          leased.rule_migration_since, obs)}
    update.update(brownfield.recorded(ctx))
    if run.failure:
        update.update(status="failed", last_error=kit.recorder.failure(run, "provisioning"))
    previous = ctx.record.status if ctx.record else None
    entry = audit.begin(kit, ctx.cid, "reconcile" if leased.source == "reconcile" else
                        "provision", f"failed: {run.failure[1].code}" if run.failure else
                        update["status"], audit.changed(run.finished(actions)),
                        source=leased.source)     # written beside the record
    saved = kit.recorder.save(leased.model_copy(update=update), held.owner, previous,
                              ctx.record.handler if ctx.record else None)
    entry.result()
    if run.failure:
        run.failure[1].extra["record"] = saved.public()
        raise run.failure[1]
    return Outcome(saved, changed=bool(actions) or previous != saved.status,
                   actions=preview(actions), queue_attributes=skeleton.queue_attributes(obs))


def _matching(if_match: IfMatch, what: str) -> Guard:
    """A guard that also holds the request to the record version the caller saw."""
    def guard(kit: Kit, ctx: Context) -> Optional[Outcome]:
        preconditions.check(ctx.record.version if ctx.record else None, if_match, False, what)
        return _refuse_unusable_cluster(kit, ctx)
    return guard


def _opted_out_or_unusable(kit: Kit, ctx: Context) -> Optional[Outcome]:
    if ctx.cluster is not None and is_opted_out(ctx.cluster.tags, kit.settings):
        return Outcome(ctx.record, opted_out=True)
    return _refuse_unusable_cluster(kit, ctx)


def _refuse_unusable_cluster(kit: Kit, ctx: Context) -> Optional[Outcome]:
    """No new provisioning for an EKS Auto Mode cluster. One kip already manages keeps its
    resources (the record shows ``cluster.auto_mode``): self-managed Karpenter may still be
    running while the cluster moves to Auto Mode, and only its owner knows when it is gone."""
    nothing_of_kips = ctx.record is None or ctx.record.status in brownfield.PARKED
    if ctx.cluster is not None and ctx.cluster.auto_mode and nothing_of_kips:
        raise errors.AutoModeCluster(
            f"EKS cluster {ctx.cid.cluster_name!r} runs EKS Auto Mode (computeConfig.enabled), "
            "which handles Spot interruptions itself: it needs no interruption queue; nothing "
            "was created", field="cluster_name")
    status = ctx.cluster.status if ctx.cluster else None
    if status in ("DELETING", "FAILED"):
        raise errors.Conflict(f"EKS cluster {ctx.cid.cluster_name!r} is {status}; nothing was "
                              "created", field="cluster_name")
    return None


def _recent(stamp: Optional[str], now: float, hours: float) -> bool:
    if not stamp:
        return False
    return now - calendar.timegm(time.strptime(stamp, "%Y-%m-%dT%H:%M:%SZ")) < hours * 3600


def _status_for(obs: Observed) -> str:
    return "ready" if obs.role.exists else "waiting_for_role"
