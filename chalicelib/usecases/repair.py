"""Use case: repair drift on one cluster at once, when CloudTrail reports a change to a kip-owned
rule, queue or policy (the ``on_drift_event`` trigger).

The changed resource's name leads to its cluster: ``drift.lookup`` derives the candidate cluster
names from the naming scheme, each candidate's record is read (in parallel, by key) and the one
whose recorded ``names`` hold the resource is the owner. A shortened name (long cluster names)
cannot be read back: its cut narrows a filtered Scan of the records instead. No name index is
written: the record already holds every name, records written before this trigger existed work
as they are, and nothing extra has to be kept in step on provision and teardown.
"""
from __future__ import annotations

from typing import Optional

from chalicelib.core import drift, naming
from chalicelib import errors
from chalicelib.aws import worklist
from chalicelib.core.records import ClusterRecord
from chalicelib.usecases import clusters
from chalicelib.usecases.kit import Kit


def owner(kit: Kit, change: drift.Change) -> Optional[ClusterRecord]:
    """The record that names ``change.name``, or None when no cluster of kip's holds it."""
    found = drift.lookup(change, kit.settings.prefix)
    if found is None:
        return None
    cids = [naming.ClusterId(found.account, found.region, c) for c in found.clusters]
    futures = [kit.workers.submit(kit.registry.get, cid) for cid in cids]
    for future in futures:
        rec = future.result()
        if rec is not None and change.name in drift.recorded_names(rec.names):
            return rec
    if found.cut:
        for item in worklist.records_by_cut(kit.settings, found.account, found.region, found.cut):
            if change.name in drift.recorded_names(item.get("names")):
                return ClusterRecord.model_validate(item)
    return None


def repair(kit: Kit, change: drift.Change) -> dict:
    """Reconcile the owning cluster now. Another run holding the lease is fine: it converges the
    cluster from what it reads, which already includes this change or is followed by it."""
    rec = owner(kit, change)
    if rec is None:
        return {"ignored": "no kip record names this resource", "resource": change.name}
    try:
        out = clusters.reconcile(kit, rec.cid)
    except errors.InProgress:
        return {"in_progress": rec.id, "resource": change.name}
    except errors.RecordNotFound:       # deleted between the read and the reconcile
        return {"ignored": "the record is gone", "resource": change.name}
    return {"cluster": rec.id, "resource": change.name, "repaired": bool(out.actions),
            "actions": len(out.actions)}
