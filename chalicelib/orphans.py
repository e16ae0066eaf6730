"""Records whose EKS cluster is gone: a DeleteCluster event was missed.

The sweep's reconcile of such a record meets ``ClusterNotFound``. The first sweep that sees it
notes when (``cluster_missing_since``); once the cluster has been missing for
``KIP_ORPHAN_GRACE_MINUTES`` (default 30; 0: at once) the sweep tears the cluster's resources
down, says so in its summary and publishes a status event. A cluster that comes back clears the
mark.
"""
from __future__ import annotations

import calendar
import time
from typing import Any

from chalicelib import aws, errors, naming, registry


def sweep_one(engine: Any, cid: naming.ClusterId, summary: dict) -> None:
    """Reconcile one record for the sweep; an orphan is noted, then retired after the grace."""
    try:
        out = engine.reconcile(cid)
    except errors.ClusterNotFound:
        _missing(engine, cid, summary)
        return
    if out.record is not None and out.record.get("cluster_missing_since"):
        engine.registry.note(out.record, {"cluster_missing_since": None})
    summary["repaired" if out.actions else "up_to_date"].append(cid.key)


def _missing(engine: Any, cid: naming.ClusterId, summary: dict) -> None:
    rec = engine.registry.get(cid)
    if rec is None:
        return
    now, grace = engine.clock(), engine.settings.orphan_grace_minutes * 60
    since = rec.get("cluster_missing_since")
    if since is None and grace > 0:
        engine.registry.note(rec, {"cluster_missing_since": registry.iso(now)})
        summary.setdefault("orphans", []).append({"cluster": cid.key, "state": "missing",
                                                   "teardown_after_minutes": grace // 60})
        return
    if since is not None and now - calendar.timegm(time.strptime(since, "%Y-%m-%dT%H:%M:%SZ")) \
            < grace:
        summary.setdefault("orphans", []).append({"cluster": cid.key, "state": "missing",
                                                   "since": since})
        return
    out = engine.teardown(cid, source="reconcile")
    summary.setdefault("orphans", []).append({"cluster": cid.key, "state": "torn_down",
                                               "missing_since": since,
                                               "removed": len(out.actions)})
    try:
        aws.publish_status(engine.settings, {
            "cluster": cid.key, "cluster_name": cid.cluster_name, "account_id": cid.account_id,
            "region": cid.region, "status": "deleted", "previous_status": rec.status,
            "reason": "the EKS cluster no longer exists (missed DeleteCluster); torn down by "
                      "the sweep", "missing_since": since})
    except errors.KipError:
        pass    # the teardown itself already published "deleted"
