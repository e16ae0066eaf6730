"""Use case: the scheduled sweep as fan-out (``KIP_SWEEP_MODE=fanout``).

* ``schedule`` pages through the records and sends one work item per record to the sweep queue
  (``SendMessageBatch``, 10 per call, per-entry failures resent). It watches the Lambda's time
  budget: before it runs out, it sends a *continuation* item carrying the last page token, and the
  worker that receives it carries on paging from there. Nothing is kept between schedules. A
  schedule that finds items of the last pass still waiting in the queue (the fleet takes longer
  than the interval) skips its pass rather than queue every record a second time.
* ``work`` handles one SQS batch in the ``sweep_worker`` Lambda: reconcile (or adopt) each
  cluster (then read and record its consumer health, as the inline sweep's health pass does),
  each (account, region) and each account paced by a token bucket in this process, and
  returns the message ids to retry (Lambda's ``ReportBatchItemFailures``): only retryable
  failures and items the time budget did not reach. Final errors are in the cluster's record.
"""
from __future__ import annotations

import json
import threading
import time
from typing import Any, Callable, Iterable, Optional

from aws_lambda_powertools import Logger

from chalicelib import errors
from chalicelib.aws import worklist
from chalicelib.usecases import backfill, clusters, queue_health, skeleton, sweep
from chalicelib.usecases.kit import Kit

log = Logger(service="kip", child=True)
PAGE = 100              # records per page while fanning out (10 SendMessageBatch calls)
MARGIN_SECONDS = 20.0   # stop starting new work when less time than this is left
SEND_TRIES = 3


class TokenBucket:
    """``rate`` tokens a second, at most ``burst`` saved up; ``take`` waits for a token."""

    def __init__(self, rate: float, burst: float = 1.0,
                 clock: Callable[[], float] = time.monotonic,
                 sleep: Callable[[float], None] = time.sleep) -> None:
        self.rate, self.burst, self.clock, self.sleep = rate, max(burst, 1.0), clock, sleep
        self.tokens, self.at = self.burst, clock()
        self.lock = threading.Lock()

    def take(self) -> float:
        """Take one token; returns the seconds waited."""
        with self.lock:
            now = self.clock()
            self.tokens = min(self.burst, self.tokens + (now - self.at) * self.rate)
            self.at = now
            self.tokens -= 1
            wait = -self.tokens / self.rate if self.tokens < 0 else 0.0
        if wait > 0:
            self.sleep(wait)
        return wait


class Pacer:
    """One bucket per (account, region) -- EventBridge's and SQS's quotas are per account and
    region -- and one per account, for IAM, which is global to the account."""

    def __init__(self, region_rate: float, account_rate: float) -> None:
        self.region_rate, self.account_rate = region_rate, account_rate
        self.buckets: dict[tuple, TokenBucket] = {}
        self.lock = threading.Lock()

    def _bucket(self, key: tuple, rate: float) -> TokenBucket:
        with self.lock:
            if key not in self.buckets:
                self.buckets[key] = TokenBucket(rate, burst=rate)
            return self.buckets[key]

    def wait(self, account: str, region: str) -> float:
        return (self._bucket((account, region), self.region_rate).take() +
                self._bucket((account,), self.account_rate).take())


_pacer: Optional[Pacer] = None


def pacer(settings: Any) -> Pacer:
    global _pacer
    if _pacer is None or (_pacer.region_rate, _pacer.account_rate) != \
            (settings.sweep_rate, settings.sweep_account_rate):
        _pacer = Pacer(settings.sweep_rate, settings.sweep_account_rate)
    return _pacer


# ----------------------------------------------------------------------------- the schedule

def schedule(kit: Kit, remaining: Callable[[], float], token: Optional[str] = None) -> dict:
    """Fan the records out from ``token`` (None: the start, which also queues adoptions)."""
    settings = kit.settings
    summary: dict[str, list] = {"queued": [], "skipped": [], "unsent": [], "continued": [],
                                "behind": [], "errors": []}
    known: set[str] = set()
    first = token is None
    if first and _still_queued(settings, summary):
        return summary
    while True:
        items, token = kit.registry.page(PAGE, token, None)
        now = kit.clock()
        bodies = []
        for rec in items:
            known.add(rec.id)
            if rec.lease_live(now):         # a run is at work on it right now
                summary["skipped"].append(rec.id)
            else:
                bodies.append({"kind": "reconcile", "id": rec.id})
        _send_all(kit, bodies, summary)
        if not token:
            break
        if remaining() < MARGIN_SECONDS:
            _send_all(kit, [{"kind": "continue", "token": token}], summary)
            summary["continued"].append(token)
            break
    if settings.adopt_existing and first and not summary["continued"]:
        _send_all(kit, [{"kind": "adopt", "id": key}
                           for key in _unknown(kit, known, summary["errors"])], summary)
    return summary


def _unknown(kit: Kit, known: set, problems: list) -> list[str]:
    """Clusters of the adoption's account-regions (as the inline sweep's, ``backfill``) that
    have no record; account-regions that could not be listed go to ``problems``."""
    accounts, regions = backfill.adoption_scope(kit, problems)
    found, failures = backfill.discover(kit, accounts, regions)
    problems.extend({"cluster": f"{f['account_id']}/{f['region']}", "code": f["code"],
                     "message": f["message"]} for f in failures)
    return [key for a, r, n in found if (key := f"{a}/{r}/{n}") not in known]


def _still_queued(settings: Any, summary: dict) -> bool:
    """True when the last pass's items still wait in the queue: another pass would only pile up
    behind it (a fleet slower than the interval). An unreadable queue depth never stops a pass;
    a sweep worker that consumes nothing stops them all until the items expire, hence the
    error log and the metric (SweepPassSkipped) to alarm on."""
    try:
        waiting, in_flight = worklist.depth(settings, settings.sweep_queue_url)
    except errors.KipError as exc:
        log.warning("sweep queue depth unreadable; the pass goes ahead",
                    extra={"code": exc.code, "detail": exc.message})
        return False
    if not waiting:
        return False
    (log.warning if in_flight else log.error)(
        "sweep pass skipped: the last pass's work items are still queued" +
        ("" if in_flight else ", and none is being worked on: is sweep_worker running?"),
        extra={"waiting": waiting, "in_flight": in_flight})
    summary["behind"].append(waiting)
    return True


def _send_all(kit: Kit, bodies: list[dict], summary: dict) -> None:
    """Send in batches of 10, in parallel; entries SQS refused are resent, then reported."""
    url = kit.settings.sweep_queue_url
    batches = [bodies[i:i + worklist.BATCH] for i in range(0, len(bodies), worklist.BATCH)]
    for attempt in range(SEND_TRIES):
        futures = [kit.workers.submit(worklist.send, kit.settings, url, b) for b in batches]
        failed = [body for f in futures for body in f.result()]
        summary["queued"].extend(b.get("id") or "continuation" for batch in batches
                                 for b in batch if b not in failed)
        if not failed:
            return
        batches = [failed[i:i + worklist.BATCH] for i in range(0, len(failed), worklist.BATCH)]
        time.sleep(0.2 * (attempt + 1))
    summary["unsent"].extend(b.get("id") or "continuation" for b in failed)
    log.error("work items not queued", extra={"count": len(failed)})


# ----------------------------------------------------------------------------- the worker

def work(kit: Kit, messages: Iterable[tuple[str, str]],
         remaining: Callable[[], float]) -> dict:
    """``messages``: (message id, body). Returns a summary whose ``failed`` ids SQS redelivers."""
    summary: dict[str, list] = {"repaired": [], "up_to_date": [], "adopted": [], "skipped": [],
                                "errors": [], "failed": [], "continued": [], "health": []}
    for message_id, body in messages:
        if remaining() < MARGIN_SECONDS:        # let SQS redeliver what this run cannot reach
            summary["failed"].append(message_id)
            continue
        try:
            _one(kit, _item(body), summary, remaining)
        except errors.KipError as exc:
            key = "failed" if exc.retryable else "errors"
            summary["errors"].append({"message": message_id, "code": exc.code,
                                      "detail": exc.message})
            if exc.retryable:
                summary[key].append(message_id)
        except Exception:   # a bug: retried, then parked in the sweep DLQ with its body
            log.exception("sweep item failed", extra={"message_id": message_id})
            summary["failed"].append(message_id)
    return summary


def _item(body: str) -> dict:
    try:
        item = json.loads(body)
    except (TypeError, ValueError):
        raise errors.ValidationError("not a sweep work item (not JSON)", field="body") from None
    if not isinstance(item, dict) or item.get("kind") not in ("reconcile", "adopt", "continue"):
        raise errors.ValidationError("not a sweep work item", field="body")
    return item


def _one(kit: Kit, item: dict, summary: dict, remaining: Callable[[], float]) -> None:
    if item["kind"] == "continue":
        token = item.get("token")
        if not isinstance(token, str):
            raise errors.ValidationError("a continuation without a token", field="token")
        out = schedule(kit, remaining, token)
        summary["continued"].append({"queued": len(out["queued"]),
                                     "continued": bool(out["continued"])})
        return
    parts = str(item.get("id") or "").split("/", 2)
    if len(parts) != 3:
        raise errors.ValidationError("a work item without a cluster key", field="id")
    account, region, name = parts
    cid = skeleton.identity(kit, name, account, region)
    pacer(kit.settings).wait(cid.account_id, cid.region)
    try:
        if item["kind"] == "adopt":
            if not clusters.adopt(kit, cid, "reconcile").opted_out:
                summary["adopted"].append(cid.key)
            return
        # the health's metric read runs alongside the reconcile, not after it
        metrics = queue_health.start_metrics(kit, cid.account_id, cid.region,
                                         kit.names(cid).queue)
        out = sweep.sweep_one(kit, cid, summary)       # a cluster gone: retired
    except (errors.InProgress, errors.RecordNotFound):  # another run has it / it is gone
        summary["skipped"].append(cid.key)
        return
    except errors.KipError:     # the reconcile failed: the consumer's health is read anyway
        _health_as_stored(kit, cid, summary["health"])
        raise
    if out is not None:         # health: the reconcile's queue reads, and GetMetricData
        queue_health.check(kit, out.record, summary["health"],
                       {**out.queue_attributes, "metrics": metrics})


def _health_as_stored(kit: Kit, cid: Any, changed: list) -> None:
    """Health from the record as stored, its queues read afresh (as the inline health pass
    reads every record, whatever its repair did); a failure here never hides the first one."""
    try:
        queue_health.check(kit, kit.registry.get(cid), changed)
    except errors.KipError as exc:
        changed.append({"cluster": cid.key, "error": exc.code})
