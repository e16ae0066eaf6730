"""The sweep, one record at a time: repair drift, finish unfinished runs, retire orphans.

``sweep`` is the in-process sweep (the local stage; deployed stages fan the records out to the
``sweep_worker``, chalicelib.usecases.fanout, which calls ``sweep_one`` for each).

Orphans, records whose EKS cluster is gone (a DeleteCluster event was missed): the sweep's reconcile of such a record meets ``ClusterNotFound``. The first sweep that sees it
notes when (``cluster_missing_since``); once the cluster has been missing for
``KIP_ORPHAN_GRACE_MINUTES`` (default 30; 0: at once) the sweep tears the cluster's resources
down, says so in its summary and publishes a status event. A cluster that comes back clears the
mark.
"""
from __future__ import annotations

import calendar
import time
from typing import Any, Iterator

from chalicelib import aws, errors
from chalicelib.core import naming
from chalicelib.aws import registry
from chalicelib.core.records import LastError
from chalicelib.usecases import backfill, clusters, lifecycle, skeleton, teardown
from chalicelib.usecases.kit import Kit


def sweep(kit: Kit, max_records: int = 1000) -> dict:
    """Finish waiting/failed/crashed runs, repair drift, retire orphans, and (when enabled)
    adopt EKS clusters that have no record."""
    summary: dict[str, list] = {"repaired": [], "up_to_date": [], "errors": [],
                                "skipped": [], "adopted": []}
    known: set[str] = set()
    for rec in _records(kit, max_records):
        known.add(rec.id)
        if rec.lease_live(kit.clock()):
            summary["skipped"].append(rec.id)
            continue
        try:
            sweep_one(kit, rec.cid, summary, rec)
        except errors.KipError as exc:
            summary["errors"].append({"cluster": rec.id, "code": exc.code,
                                      "message": exc.message})
    if kit.settings.adopt_existing:    # the configured account-regions, as a backfill
        backfill.adopt_configured(kit, summary, known)
    return summary


def _records(kit: Kit, limit: int) -> Iterator[Any]:
    token, seen = None, 0
    while seen < limit:
        items, token = clusters.page(kit, limit=100, next_token=token)
        yield from items[:limit - seen]
        seen += len(items)
        if not token:
            return


UNREACHABLE_RETRY_SECONDS = 3600     # an account kip cannot enter is tried again hourly
ASSUME_REFUSED = ("AccessDenied", "AccessDeniedException", "InvalidClientTokenId",
                  "RegionDisabledException", "NoSuchEntity")


def sweep_one(kit: Kit, cid: naming.ClusterId, summary: dict, record: Any = None) -> Any:
    """Reconcile one record for the sweep (``record``: as already read, saves a read); an
    orphan is noted, then retired after the grace. Returns the run's Outcome (None when the
    record was not reconciled: an orphan, a held teardown, an unreachable account).

    The sweep never tears down a cluster EKS still reports: a held teardown, or an unfinished
    one nobody asked for by API, gets a second look at EKS first."""
    rec = record if record is not None else kit.registry.get(cid)
    if rec is not None and _unreachable_recently(kit, rec):
        summary["skipped"].append(cid.key)
        return None
    try:
        if rec is not None and (rec.status == "teardown_held" or
                                (rec.status == "deleting" and rec.source != "api")):
            return _second_look(kit, cid, rec, summary)
        out = clusters.reconcile(kit, cid, record=rec)
    except errors.ClusterNotFound:
        _missing(kit, cid, summary)
        return None
    except errors.KipError as exc:
        if rec is not None and _assume_refused(exc):
            _mark_unreachable(kit, rec, exc, summary)
            return None
        raise
    if _turned_auto_mode(out.record):      # a missed UpdateClusterConfig: retired the same way
        now = skeleton.target_for(kit, cid).describe_cluster(cid.cluster_name)
        retired = lifecycle.retire_for_auto_mode(kit, cid, out.record, now, "reconcile")
        summary.setdefault("auto_mode", []).append({"cluster": cid.key, **retired})
        return None
    if out.record is not None and out.record.get("cluster_missing_since"):
        kit.registry.note(out.record, {"cluster_missing_since": None})
    summary["repaired" if out.actions else "up_to_date"].append(cid.key)
    return out


def _turned_auto_mode(record: Any) -> bool:
    return record is not None and record.cluster is not None and \
        bool(record.cluster.auto_mode) and record.get("handler") in (None, "kip")


def _second_look(kit: Kit, cid: naming.ClusterId, rec: Any, summary: dict) -> Any:
    """A held or automatic unfinished teardown: finished only if EKS still reports the cluster
    gone (a held one, an hour after it was held); a cluster EKS reports live is wired again."""
    now = skeleton.target_for(kit, cid).describe_cluster(cid.cluster_name)
    live = now is not None and now.status != "DELETING"
    if live:
        out = clusters.reconcile(kit, cid, record=rec, finish_teardown=False)
        summary["repaired"].append(cid.key)
        return out
    if rec.status == "teardown_held" and not lifecycle.held_teardown_due(kit, rec, now):
        summary["skipped"].append(cid.key)
        return None
    out = teardown.teardown(kit, cid, source="reconcile")
    summary.setdefault("orphans", []).append({"cluster": cid.key, "state": "torn_down",
                                               "removed": len(out.actions),
                                               "after": rec.status})
    return None


def _assume_refused(exc: errors.KipError) -> bool:
    return str(exc.extra.get("step", "")).startswith("sts:AssumeRole") and \
        exc.extra.get("aws_code") in ASSUME_REFUSED


def _unreachable_recently(kit: Kit, rec: Any) -> bool:
    since = rec.get("unreachable_at") if rec.status == "unreachable" else None
    return bool(since) and kit.clock() - calendar.timegm(
        time.strptime(since, "%Y-%m-%dT%H:%M:%SZ")) < UNREACHABLE_RETRY_SECONDS


def _mark_unreachable(kit: Kit, rec: Any, exc: errors.KipError, summary: dict) -> None:
    """kip's role in the cluster's account is missing or refuses AssumeRole: the record says
    ``unreachable`` (not ``ready``) and the sweep tries again an hour later, not in a loop."""
    stamp = registry.iso(kit.clock())
    error = LastError(step="assume_role", call="sts:AssumeRole", resource=rec.account_id,
                      code=exc.extra.get("aws_code") or exc.code, message=exc.message,
                      at=stamp, during="provisioning")
    kit.registry.note(rec, {"status": "unreachable", "unreachable_at": stamp,
                            "last_error": error.model_dump()})
    if rec.status != "unreachable":
        kit.recorder.publish(rec.cid, "unreachable", rec.status,
                             (rec.names or {}).get("queue"), error, rec.requested_by,
                             handler=rec.handler, previous_handler=rec.handler)
    summary["errors"].append({"cluster": rec.id, "code": "Unreachable", "message": exc.message})


def _missing(kit: Kit, cid: naming.ClusterId, summary: dict) -> None:
    rec = kit.registry.get(cid)
    if rec is None:
        return
    now, grace = kit.clock(), kit.settings.orphan_grace_minutes * 60
    since = rec.get("cluster_missing_since")
    if since is None and grace > 0:
        kit.registry.note(rec, {"cluster_missing_since": registry.iso(now)})
        summary.setdefault("orphans", []).append({"cluster": cid.key, "state": "missing",
                                                   "teardown_after_minutes": grace // 60})
        return
    if since is not None and now - calendar.timegm(time.strptime(since, "%Y-%m-%dT%H:%M:%SZ")) \
            < grace:
        summary.setdefault("orphans", []).append({"cluster": cid.key, "state": "missing",
                                                   "since": since})
        return
    out = lifecycle.automatic_teardown(kit, cid, rec, "reconcile",
                                       "the EKS cluster no longer exists (a missed DeleteCluster)")
    if "held" in out:
        summary.setdefault("orphans", []).append({"cluster": cid.key, "state": "held",
                                                   "missing_since": since})
        return
    summary.setdefault("orphans", []).append({"cluster": cid.key, "state": "torn_down",
                                               "missing_since": since,
                                               "removed": out["removed"]})
    try:
        aws.publish_status(kit.settings, {
            "cluster": cid.key, "cluster_name": cid.cluster_name, "account_id": cid.account_id,
            "region": cid.region, "status": "deleted", "previous_status": rec.status,
            "reason": "the EKS cluster no longer exists (missed DeleteCluster); torn down by "
                      "the sweep", "missing_since": since})
    except errors.KipError:
        pass    # the teardown itself already published "deleted"
