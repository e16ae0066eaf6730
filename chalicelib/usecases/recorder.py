"""Writes a run's outcome: the record's fields, its last error, and the portal's status event
when the status changes."""
from __future__ import annotations

from typing import Callable, Optional

from aws_lambda_powertools import Logger

from chalicelib import aws, errors
from chalicelib.aws import registry
from chalicelib.config import Settings
from chalicelib.converge.executor import Run
from chalicelib.core import naming
from chalicelib.core.records import ClusterRecord, Karpenter, LastError
from chalicelib.core.spec import DesiredSpec
from chalicelib.core.observed import ClusterState

log = Logger(service="kip", child=True)


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

    def provision_fields(self, spec: DesiredSpec, source: str, cluster: Optional[ClusterState],
                         record: Optional[ClusterRecord],
                         requested_by: Optional[str] = None) -> dict:
        return {"status": "provisioning", "source": source, "spec_hash": spec.spec_hash,
                "request": spec.parameters, "names": spec.names.to_dict(),
                "event_kinds": list(spec.event_kinds), "tag_keys": sorted(spec.tags),
                "karpenter": Karpenter.for_queue(spec.names.queue).model_dump(by_alias=True),
                "cluster": cluster.summary() if cluster else None,
                **self.stamps(record), **by(requested_by)}

    def save(self, record: ClusterRecord, owner: str, previous_status: Optional[str],
             previous_handler: Optional[str] = None) -> ClusterRecord:
        """Write a run's record; a status event when its status or its handler changed."""
        saved = self.registry.save(record, owner)
        moved = previous_handler is not None and saved.handler != previous_handler
        if saved.status != previous_status or moved:
            self.publish(saved.cid, saved.status, previous_status,
                         (saved.names or {}).get("queue"), saved.last_error, saved.requested_by,
                         **handled(saved.handler, previous_handler))
        return saved

    def parked(self, record: ClusterRecord, before: Optional[ClusterRecord],
               replaced: Optional[str] = None) -> None:
        """The status event of a record kip wrote without creating anything (``external``,
        ``no_karpenter``, ``auto-mode``), when its status or handler changed (``replaced``:
        the handler of a record just deleted, when ``before`` is gone)."""
        status, handler = (before.status, before.handler) if before else (None, replaced)
        if (status, handler) != (record.status, record.handler):
            self.publish(record.cid, record.status, status, None, None, record.requested_by,
                         existing_handler=record.existing_handler,
                         **handled(record.handler, handler))

    def deleted(self, record: ClusterRecord, previous: str) -> None:
        self.publish(record.cid, "deleted", previous, None, None, record.requested_by,
                     handler=None, previous_handler=record.handler)

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


def handled(handler: Optional[str], previous: Optional[str]) -> dict:
    """Who handles the cluster's interruptions, in every status event; ``change:
    handler_changed`` when that moved (kip <-> external, auto-mode, none)."""
    out: dict = {"handler": handler, "previous_handler": previous}
    if previous is not None and handler != previous:
        out["change"] = "handler_changed"
    return out


def by(requested_by: Optional[str]) -> dict:
    """The caller is recorded when known; runs nobody asked for (sweep, EKS event) keep it."""
    return {"requested_by": requested_by} if requested_by else {}
