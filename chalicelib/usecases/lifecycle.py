"""What an EKS lifecycle event may do, and the brake on teardowns nobody asked for by API.

* ``cluster_created`` / ``cluster_deleted``: the trigger's (and the failed-events replay's) use
  cases. Before anything is removed, EKS is asked (DescribeCluster) and the event's generation is
  compared with the one kip recorded (``core.generations``): a DeleteCluster for a cluster EKS
  still reports, or about an older generation, is answered ``stale``/``live`` and changes nothing.
* ``automatic_teardown``: every teardown that is not an API DELETE (trigger, replay, the sweep's
  orphans) spends one unit of ``KIP_TEARDOWN_BUDGET`` per hour, counted in DynamoDB so every
  container shares it; past it the record is ``teardown_held`` until ``release`` (an operator,
  through the API) or the sweep, an hour later, still finds the cluster gone.
"""
from __future__ import annotations

import calendar
import time
from typing import Optional

from aws_lambda_powertools import Logger

from chalicelib import errors
from chalicelib.aws import registry
from chalicelib.converge.executor import gather
from chalicelib.core import generations, naming, preconditions
from chalicelib.core.events import EksEvent
from chalicelib.core.observed import ClusterState
from chalicelib.core.records import ClusterRecord, LastError
from chalicelib.core.spec import ClusterRequest
from chalicelib.usecases import audit, brownfield, clusters, skeleton, teardown
from chalicelib.usecases.kit import Kit

log = Logger(service="kip", child=True)
HOUR = 3600
HOLD_SECONDS = HOUR       # the sweep's second look at a held teardown comes after this


def cluster_created(kit: Kit, cid: naming.ClusterId, ev: EksEvent) -> dict:
    record = kit.registry.get(cid)
    verdict = generations.create_verdict(_recorded_created(record), ev.event_time,
                                         ev.created_at)
    if not verdict.act:
        log.warning("CreateCluster not acted on", extra={"reason": verdict.reason})
        return {"ignored": verdict.reason, "cluster": cid.key}
    out = clusters.adopt(kit, cid, source="eks-event")     # honours the opt-out tag
    if out.opted_out:
        return {"ignored": "cluster opted out", "cluster": cid.key}
    if out.parked:      # another tool handles it, or no Karpenter: recorded, nothing created
        return {"recorded": cid.key, "status": out.parked,
                "existing_handler": out.record.existing_handler if out.record else None}
    return {"provisioned": cid.key, "status": out.record.status}


def cluster_config_updated(kit: Kit, cid: naming.ClusterId, ev: EksEvent) -> dict:
    """UpdateClusterConfig turning EKS Auto Mode on: Auto Mode handles interruptions itself, so
    kip's wiring is retired, once EKS confirms it (DescribeCluster), by the verified, budgeted
    teardown; the record then says ``handler: auto-mode``."""
    if ev.auto_mode is not True:
        return {"ignored": "not a change that turns EKS Auto Mode on", "cluster": cid.key}
    record, now = _look(kit, cid)
    return retire_for_auto_mode(kit, cid, record, now, "eks-event")


def retire_for_auto_mode(kit: Kit, cid: naming.ClusterId, record: Optional[ClusterRecord],
                         now: Optional[ClusterState], source: str) -> dict:
    """kip's wiring of a cluster EKS reports in Auto Mode is retired (the sweep calls this too,
    for a missed event); nothing happens while EKS does not confirm it."""
    if now is None or not now.auto_mode:
        return {"ignored": "EKS does not report Auto Mode for the cluster (yet)",
                "cluster": cid.key}
    if record is None or record.get("handler") not in (None, "kip"):
        return {"ignored": "kip has no wiring for the cluster", "cluster": cid.key}
    out = automatic_teardown(kit, cid, record, source, "EKS Auto Mode was turned on")
    if "deleted" in out:
        req = ClusterRequest(cluster_name=cid.cluster_name, account_id=cid.account_id,
                             region=cid.region)
        brownfield.park(kit, cid, req, source, "external", "auto-mode", None, replaced="kip")
        out["handler"] = "auto-mode"
    return out


def cluster_deleted(kit: Kit, cid: naming.ClusterId, ev: EksEvent,
                    source: str = "eks-event") -> dict:
    """Tear down only on observed truth: EKS no longer reports the cluster (or reports it
    DELETING) and the event is about the generation kip recorded."""
    record, now = _look(kit, cid)
    verdict = generations.delete_verdict(now, _recorded_created(record), ev.event_time,
                                         ev.created_at)
    if not verdict.act:
        log.warning("DeleteCluster not acted on", extra={"reason": verdict.reason})
        return {"ignored": verdict.reason, "cluster": cid.key,
                "verdict": verdict.reason.split(":")[0]}
    return automatic_teardown(kit, cid, record, source)


def automatic_teardown(kit: Kit, cid: naming.ClusterId, record: Optional[ClusterRecord],
                       source: str, reason: str = "the EKS cluster is gone") -> dict:
    """A verified teardown nobody asked for by API, within the hourly budget; else held."""
    if record is not None and record.status == "teardown_held":
        return {"held": cid.key, "since": record.get("held_at")}
    if record is not None and not _spend(kit):
        _hold(kit, record, reason)
        return {"held": cid.key, "budget": kit.settings.teardown_budget}
    out = teardown.teardown(kit, cid, source=source)
    return {"deleted": cid.key, "removed": len(out.actions)}


def release(kit: Kit, cid: naming.ClusterId, requested_by: Optional[str] = None,
            if_match: Optional[preconditions.IfMatch] = None) -> dict:
    """An operator releases a held teardown (``POST /clusters/{name}/release``): EKS is asked
    once more, then the teardown runs outside the budget."""
    record, now = _look(kit, cid)
    if record is None:
        raise errors.RecordNotFound(f"no record for cluster {cid.key}", field="cluster_name")
    preconditions.check(record.version, if_match, False, "release")
    if record.status != "teardown_held":
        raise errors.Conflict(f"cluster {cid.key} has no held teardown (status "
                              f"{record.status!r}); nothing was removed", field="cluster_name")
    verdict = generations.delete_verdict(now, _recorded_created(record), None, None)
    if not verdict.act:
        raise errors.Conflict(f"cluster {cid.key}: {verdict.reason}; the sweep re-wires it",
                              field="cluster_name")
    out = teardown.teardown(kit, cid, source="api", requested_by=requested_by)
    return {"cluster": cid.key, "deleted": True, "removed": out.actions,
            "skipped": out.skipped}


def held_teardown_due(kit: Kit, record: ClusterRecord, now: Optional[ClusterState]) -> bool:
    """The sweep's second look: the hold is older than an hour and EKS still reports the
    cluster gone (or DELETING) for the generation kip recorded."""
    held_at = record.get("held_at")
    if not held_at or kit.clock() - _epoch(held_at) < HOLD_SECONDS:
        return False
    return generations.delete_verdict(now, _recorded_created(record), None, None).act


def _look(kit: Kit, cid: naming.ClusterId) -> tuple:
    target = skeleton.target_for(kit, cid)
    record, now = gather([kit.workers.submit(kit.registry.get, cid),
                          kit.workers.submit(target.describe_cluster, cid.cluster_name)])
    return record, now


def _recorded_created(record: Optional[ClusterRecord]) -> Optional[float]:
    return record.cluster.created_at if record is not None and record.cluster else None


def _spend(kit: Kit) -> bool:
    hour = int(kit.clock()) // HOUR * HOUR
    return kit.registry.store.spend(f"#budget/teardown/{hour}", kit.settings.teardown_budget,
                                    hour + 3 * HOUR)


def _hold(kit: Kit, record: ClusterRecord, reason: str) -> None:
    stamp = registry.iso(kit.clock())
    error = LastError(step="teardown", call="budget", resource=record.id,
                      code="TeardownHeld", at=stamp, during="teardown",
                      message=f"{reason}, but more than KIP_TEARDOWN_BUDGET "
                              f"({kit.settings.teardown_budget}) automatic teardowns ran this "
                              "hour: held until an operator releases it (POST "
                              "/clusters/{name}/release) or the sweep, an hour on, still finds "
                              "the cluster gone")
    if kit.registry.note(record, {"status": "teardown_held", "held_at": stamp,
                                  "last_error": error.model_dump()}):
        audit.record(kit, record.cid, "hold", "teardown_held", source=record.source)
    log.error("teardown held", extra={"cluster": record.id, "budget":
                                      kit.settings.teardown_budget})
    kit.recorder.publish(record.cid, "teardown_held", record.status,
                         (record.names or {}).get("queue"), error, record.requested_by,
                         handler=record.handler, previous_handler=record.handler)


def _epoch(stamp: str) -> float:
    return float(calendar.timegm(time.strptime(stamp, "%Y-%m-%dT%H:%M:%SZ")))
