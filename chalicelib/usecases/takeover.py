"""The sweep's look at a takeover (``on_existing=takeover``): moves the record's ``cutover``
between ``waiting`` and ``switched`` from both queues' CloudWatch read metrics, and says whether
rules still feed the other tool's queue. The rules are pure in ``core.cutover``.

Two reads, in parallel, only for records whose cutover is still watched: one GetMetricData (four
queries: both read metrics of both queues over the window) and one ListRuleNamesByTarget on the
old queue. Nothing of the other tool's is ever written. The record is written (one conditional
UpdateItem, no version bump) only when the state, its reason or ``old_queue_still_fed`` changed;
a change of state publishes a status event and runs a reconcile at once, which gives kip's queue
its retention back (switched) or holds it short again (waiting).
"""
from __future__ import annotations

from concurrent.futures import Future
from typing import Any, Optional

from aws_lambda_powertools import Logger

from chalicelib import aws, errors
from chalicelib.aws.registry import iso
from chalicelib.core import cutover
from chalicelib.core.records import ClusterRecord
from chalicelib.usecases import clusters
from chalicelib.usecases.kit import Kit

log = Logger(service="kip", child=True)
COMPARED = ("state", "reason", "old_queue_still_fed")
# a held teardown, an unreachable account or a teardown under way is the sweep's second look's
WATCHED = ("ready", "waiting_for_role", "failed")


def observe(kit: Kit, record: Optional[ClusterRecord], changed: list) -> Optional[dict]:
    """One look at ``record``'s cutover; the cutover as now recorded (None: nothing to watch,
    or the record moved on meanwhile: the next sweep looks again)."""
    if record is None or record.status not in WATCHED or not cutover.watching(record.cutover):
        return None
    cut: dict = record.cutover or {}
    target = aws.Target(record.account_id, record.region, kit.settings)
    window = int(cut.get("window_seconds") or kit.settings.cutover_window_seconds)
    now = kit.clock()
    series = kit.workers.submit(target.metric_series,
                                cutover.queries(cut["queue"], cut["old_queue"], window),
                                now - window, now)
    rules = kit.workers.submit(target.rules_targeting, cut["old_queue_arn"])
    found = _answer(series, record, "metrics")
    names = _answer(rules, record, "rules")
    kip_reads, old_reads = cutover.reads(found) if found is not None else (None, None)
    fed = None if names is None else any(not n.startswith(kit.settings.prefix) for n in names)
    new = cutover.step(cut, kip_reads, old_reads, fed, iso(now))
    if all(new.get(k) == cut.get(k) for k in COMPARED):
        return cut
    if not kit.registry.note(record, {"cutover": new}):
        return None
    changed.append({"cluster": record.id, "cutover": new["state"], "reason": new["reason"],
                    "old_queue_still_fed": new["old_queue_still_fed"]})
    _announce(kit, record, cut, new)
    if new["state"] != cut["state"]:     # kip's queue retention follows the state
        _retention(kit, record, changed)
    return new


def _answer(future: Future, record: ClusterRecord, what: str) -> Any:
    try:
        return future.result()
    except errors.KipError as exc:      # the state stays; the next sweep reads again
        log.warning(f"cutover {what} read failed", extra={
            "cluster": record.id, "code": exc.code, "aws_code": exc.extra.get("aws_code"),
            "detail": exc.message})
        return None


def _announce(kit: Kit, record: ClusterRecord, before: dict, now: dict) -> None:
    """A status event per change: the state (``cutover_switched`` / ``cutover_waiting``), and
    the old rules gone (``old_wiring_removed``)."""
    changes = [f"cutover_{now['state']}"] if now["state"] != before["state"] else []
    if before.get("old_queue_still_fed") and not now["old_queue_still_fed"]:
        changes.append("old_wiring_removed")
    if now["state"] == "switched" and now["old_queue_still_fed"]:
        log.warning("old queue still fed", extra={"cluster": record.id,
                                                  "old_queue": now["old_queue"]})
    for change in changes:
        kit.recorder.publish(record.cid, record.status, record.status,
                             (record.names or {}).get("queue"), None, record.requested_by,
                             change=change, cutover=now, handler=record.handler,
                             previous_handler=record.handler)


def _retention(kit: Kit, record: ClusterRecord, changed: list) -> None:
    try:
        clusters.reconcile(kit, record.cid)
    except errors.KipError as exc:      # the next sweep's reconcile converges it
        changed.append({"cluster": record.id, "error": exc.code})
