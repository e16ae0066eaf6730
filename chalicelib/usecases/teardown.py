"""Teardown: remove everything the record names; without a record, this cluster's tagged
resources under the computed names (a run whose record write failed). The teardown plan is made
in one place, ``_plan``."""
from __future__ import annotations

from typing import Optional

from chalicelib import errors
from chalicelib.aws import registry
from chalicelib.converge import planner
from chalicelib.converge.executor import execute, preview
from chalicelib.core import cutover, naming, preconditions, records
from chalicelib.core.preconditions import IfMatch
from chalicelib.core.observed import Observed
from chalicelib.usecases import audit, skeleton
from chalicelib.usecases.kit import Kit
from chalicelib.usecases.recorder import by
from chalicelib.usecases.skeleton import Context, Outcome


def teardown(kit: Kit, cid: naming.ClusterId, source: str = "api", dry_run: bool = False,
             requested_by: Optional[str] = None, if_match: Optional[IfMatch] = None,
             require_match: bool = False) -> Outcome:
    """``if_match``/``require_match``: the API's conditional DELETE (428 without the record's
    ETag, 412 with a stale one), checked on the record as read, before anything changes. With
    no record there is nothing to match (RFC 9110 13.2.1): tagged leftovers are still removed."""
    ctx = skeleton.first_wave(kit, cid, None, [], legacy=True)    # (no record: old rules too)
    if ctx.record is not None:
        preconditions.check(ctx.record.version, if_match, require_match, "DELETE")
    if dry_run:
        obs, actions, skipped = _plan(kit, ctx)
        return Outcome(ctx.record, actions=preview(actions), dry_run=True, skipped=skipped)
    kit.registry.check_free(ctx.record)
    planned = None
    if ctx.record is None:      # adopt this cluster's tagged resources only if there are any
        planned = _plan(kit, ctx)
        if not planned[1]:
            raise errors.RecordNotFound(f"no record and no resources for cluster {cid.key}",
                                        field="cluster_name", skipped=planned[2] or None)
    fields = {"status": "deleting", "source": source, "names": ctx.names.to_dict(),
              **kit.recorder.stamps(ctx.record), **by(requested_by)}
    with kit.registry.lease(cid, ctx.record, fields, kit.workers.submit) as held:
        obs, actions, skipped = planned or _plan(kit, ctx)
        return _remove(kit, ctx, obs, actions, skipped, held)


def _plan(kit: Kit, ctx: Context) -> tuple[Observed, list, list]:
    obs = skeleton.detail(kit, ctx, "teardown")
    actions, skipped = planner.plan_teardown(ctx.names, ctx.cid, obs)
    return obs, actions, skipped


def _remove(kit: Kit, ctx: Context, obs: Observed, actions: list, skipped: list,
            held: registry.Lease) -> Outcome:
    leased = held.get()
    held.writing = True
    run = execute(ctx.target, actions, kit.workers)
    removed = [{"resource": a.resource, "name": a.name, "call": a.op}
               for a in run.finished(actions)]
    if run.failure:     # still "deleting": a retried DELETE, a reconcile or the sweep finishes
        resources = records.apply(records.from_teardown(
            ctx.names, obs, leased.event_kinds, leased.resources.attachment, ctx.cid),
            actions, run.done)
        saved = kit.recorder.save(leased.model_copy(update={
            "resources": resources, "removed": removed,
            "last_error": kit.recorder.failure(run, "teardown")}), held.owner, leased.status)
        audit.record(kit, ctx.cid, "teardown", f"failed: {run.failure[1].code}",
                     audit.changed(run.finished(actions)), source=leased.source)
        run.failure[1].extra["record"] = saved.public()
        raise run.failure[1]
    kit.registry.delete(leased, held.owner)
    audit.record(kit, ctx.cid, "teardown", "deleted", audit.changed(run.finished(actions)),
                 source=leased.source)
    if ctx.record is not None:
        kit.recorder.deleted(leased, ctx.record.status)
    return Outcome(None, changed=bool(actions), actions=removed, skipped=skipped,
                   warning=cutover.after_teardown(leased.cutover))
