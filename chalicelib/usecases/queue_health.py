"""Use cases: the consumer health of a cluster's queue (``GET /clusters/{name}``, the sweep, the
``?consumer=`` filter of ``GET /clusters``). Functions taking the ``Kit``; the rules are pure in
``health``, the reads in the adapter.

One wave after the record: the queue's and the DLQ's ``GetQueueAttributes`` and one
``GetMetricData`` run in parallel. A read that fails never fails the GET: the metrics make the
consumer ``unknown``, a queue read leaves its counts null.
"""
from __future__ import annotations

from concurrent.futures import Future, wait
from typing import Any, Optional

from aws_lambda_powertools import Logger

from chalicelib import aws, errors
from chalicelib.core import health
from chalicelib.aws.registry import iso
from chalicelib.converge.executor import done
from chalicelib.core.records import ClusterRecord
from chalicelib.usecases import takeover
from chalicelib.usecases.kit import Kit

log = Logger(service="kip", child=True)


def read(kit: Kit, record: ClusterRecord, known: Optional[dict] = None) -> dict:
    return _finish(kit, record, _start(kit, record, known))


def _start(kit: Kit, record: ClusterRecord,
           known: Optional[dict] = None) -> list[Optional[Future]]:
    """Submit the three reads (none of them waits for another); ``known``: "queue"/"dlq" ->
    attributes a run has just read, used instead of reading them again, and "metrics" -> a
    ``start_metrics`` read begun earlier (used when it is for this record's queue)."""
    res, known = record.resources, known or {}
    target = aws.Target(record.account_id, record.region, kit.settings)
    submit = kit.workers.submit
    queue_url = res.queue.url if res.queue and res.queue.exists else None
    dlq_url = res.dlq.url if res.dlq and res.dlq.exists else None
    queue_name = res.queue.name if res.queue else (record.names or {}).get("queue")
    other = _external(record)
    if other is not None:           # the other tool's queue (its DLQ, if any, is not known)
        queue_url, dlq_url, queue_name = other["queue_url"], None, other["queue"]

    def attributes(key: str, url: Optional[str]) -> Optional[Future]:
        if key in known:
            return done(known[key])
        return submit(target.queue_attributes, url) if url else None
    early = known.get("metrics")
    if early is None or early[0] != queue_name:
        early = start_metrics(kit, record.account_id, record.region, queue_name) \
            if queue_name else (None, None)
    return [attributes("queue", queue_url), attributes("dlq", dlq_url), early[1]]


def start_metrics(kit: Kit, account: str, region: str, queue_name: str) -> tuple[str, Future]:
    """The health's GetMetricData for ``queue_name``, begun before its record is at hand: the
    fan-out worker starts it alongside the reconcile (with the queue name the naming scheme
    gives; ``_start`` reads again if the record names another queue)."""
    target = aws.Target(account, region, kit.settings)
    start, end = health.window(kit.clock())
    return queue_name, kit.workers.submit(target.metric_series,
                                             health.metric_queries(queue_name), start, end)


def _finish(kit: Kit, record: ClusterRecord, reads: list[Optional[Future]]) -> dict:
    wait([f for f in reads if f is not None])
    queue, dlq, series = (_answer(f, record.id) for f in reads)
    return health.assess(queue, dlq, series, kit.clock(), kit.settings.stale_seconds)


def _answer(future: Optional[Future], cluster: str) -> Any:
    if future is None:
        return None
    exc = future.exception()
    if exc is None:
        return future.result()
    if not isinstance(exc, errors.KipError):
        raise exc
    log.warning("health read failed", extra={"cluster": cluster, "code": exc.code,
                                             "aws_code": exc.extra.get("aws_code"),
                                             "detail": exc.message})
    return None


def sweep(kit: Kit, max_records: int = 1000) -> list[dict]:
    """The schedule's health pass, after its repairs: every record's health, read a few records
    at a time (each record's three reads in parallel), recorded only when it changed."""
    changed: list[dict] = []
    token, seen = None, 0
    while seen < max_records:
        items, token = kit.registry.page(100, token, None)
        items = [r for r in items[:max_records - seen] if _readable(r)]
        seen += len(items)
        per_wave = max(1, kit.workers.size // 3)
        for i in range(0, len(items), per_wave):
            chunk = items[i:i + per_wave]
            started = [(rec, _start(kit, rec)) for rec in chunk]
            for rec, reads in started:
                _noted(kit, rec, lambda: _finish(kit, rec, reads), changed)
        if not token:
            break
    return changed


def check(kit: Kit, record: Optional[ClusterRecord], changed: list,
          known: Optional[dict] = None) -> None:
    """One record's health, read and recorded as ``sweep`` does: the fan-out worker's pass,
    right after its reconcile of the record (so every record gets one, however many there are),
    with the queue attributes that reconcile read and the GetMetricData begun beside it
    (``known``, see ``_start``)."""
    if record is not None and _readable(record):
        _noted(kit, record, lambda: read(kit, record, known), changed)


def _noted(kit: Kit, record: ClusterRecord, current: Any, changed: list) -> None:
    """The health, then a takeover's cutover (``usecases.takeover``), each on its own: a
    failure of one never hides the other."""
    for step in (lambda: note(kit, record, current(), changed),
                 lambda: takeover.observe(kit, record, changed)):
        try:
            step()
        except errors.KipError as exc:  # a read or the record write; the next sweep retries
            changed.append({"cluster": record.id, "error": exc.code})


def _readable(record: ClusterRecord) -> bool:
    return record.status != "deleting" and (bool(record.names) or _external(record) is not None)


def _external(record: ClusterRecord) -> Optional[dict]:
    """The other tool's queue of a cluster kip leaves to it (``handler: external``): its health
    is read the same way, so the inventory says whether anyone reads it."""
    found = record.existing_handler
    if record.handler == "external" and found and found.get("queue_url"):
        return found
    return None


def note(kit: Kit, record: ClusterRecord, current: dict, changed: list) -> None:
    """Write ``current`` on the record only when the consumer state or DLQ emptiness changed
    (``health.worth_recording``: no write amplification), with a conditional UpdateItem of the
    ``health`` attribute alone; publish a status event when the consumer turns stale or the
    DLQ fills."""
    previous = record.health.model_dump() if record.health else None
    if not health.worth_recording(previous, current):
        return
    stored = {**current, "checked_at": iso(kit.clock())}
    if not kit.registry.note_health(record, stored):
        return                           # the record moved on: the next sweep looks again
    events = health.changes(previous, current)
    changed.append({"cluster": record.id, "consumer": current["consumer"], "events": events})
    for change in events:
        kit.recorder.publish(record.cid, record.status, record.status,
                                (record.names or {}).get("queue"), None, record.requested_by,
                                change=change, health=stored, handler=record.handler,
                                previous_handler=record.handler)
