"""Pure: is anybody reading a cluster's interruption queue?

Karpenter reads its queue by *name* (Helm ``settings.interruptionQueue``). A wrong or missing value
is silent: events pile up, nodes are reclaimed undrained. The signals, per queue:

* SQS ``GetQueueAttributes``: ``ApproximateNumberOfMessages`` (backlog),
  ``ApproximateNumberOfMessagesNotVisible`` (in flight: received, not yet deleted), and the DLQ's
  backlog;
* CloudWatch ``AWS/SQS`` (dimension ``QueueName``, one ``GetMetricData`` call):
  ``ApproximateAgeOfOldestMessage`` Maximum over the last 15 minutes and
  ``NumberOfMessagesDeleted`` Sum over the last hour.

Consumer states, first match wins: ``unknown`` (metrics unreadable: AccessDenied, throttled),
``stale`` (a message waited longer than ``KIP_STALE_SECONDS``), ``active`` (messages were deleted
in the last hour, or some are in flight), ``idle`` (nothing old waiting and no traffic; a message
younger than the threshold is not yet a sign of trouble).
"""
from __future__ import annotations

from typing import Any, Literal, Optional

AGE_WINDOW = 15 * 60        # "Maximum over the last 15 minutes"
AGE_PERIOD = 300            # SQS metrics are 1-minute; 5-minute buckets keep the answer small
TRAFFIC_WINDOW = 60 * 60    # "messages deleted in the last hour"
AGE, DELETED = "age", "deleted"
ConsumerState = Literal["stale", "active", "idle", "unknown"]


def metric_queries(queue_name: str) -> list[dict]:
    """The two ``GetMetricData`` queries (one call) for a queue."""
    def query(qid: str, metric: str, stat: str, period: int) -> dict:
        return {"Id": qid, "ReturnData": True, "MetricStat": {
            "Metric": {"Namespace": "AWS/SQS", "MetricName": metric,
                       "Dimensions": [{"Name": "QueueName", "Value": queue_name}]},
            "Period": period, "Stat": stat}}
    return [query(AGE, "ApproximateAgeOfOldestMessage", "Maximum", AGE_PERIOD),
            query(DELETED, "NumberOfMessagesDeleted", "Sum", TRAFFIC_WINDOW)]


def window(now: float) -> tuple[float, float]:
    """``StartTime``/``EndTime`` of the call: the longer window, ending now."""
    return now - TRAFFIC_WINDOW, now


def oldest_age(series: dict, now: float) -> Optional[float]:
    """Maximum age over the buckets overlapping the last 15 minutes; None without a datapoint."""
    values = [v for ts, v in series.get(AGE, []) if ts > now - AGE_WINDOW - AGE_PERIOD]
    return max(values) if values else None


def deleted(series: dict) -> float:
    return sum(v for _, v in series.get(DELETED, []))


def _count(attributes: Optional[dict], name: str) -> Optional[int]:
    if not attributes or attributes.get(name) in (None, ""):
        return None
    try:
        return int(attributes[name])
    except (TypeError, ValueError):
        return None


def classify(backlog: Optional[int], in_flight: Optional[int], age: Optional[float],
             deletes: Optional[float], stale_seconds: int) -> str:
    """The consumer state; ``deletes`` is None when the metrics could not be read."""
    if deletes is None:
        return "unknown"
    if age is not None and age > stale_seconds:
        return "stale"
    if deletes > 0 or (in_flight or 0) > 0:
        return "active"
    return "idle"


def assess(queue: Optional[dict], dlq: Optional[dict], series: Optional[dict], now: float,
           stale_seconds: int) -> dict:
    """The ``health`` object of ``GET /clusters/{name}`` from the three reads (``series`` None:
    the metrics could not be read)."""
    backlog = _count(queue, "ApproximateNumberOfMessages")
    in_flight = _count(queue, "ApproximateNumberOfMessagesNotVisible")
    age = oldest_age(series, now) if series is not None else None
    deletes = deleted(series) if series is not None else None
    return {"consumer": classify(backlog, in_flight, age, deletes, stale_seconds),
            "backlog": backlog, "in_flight": in_flight,
            "dlq_depth": _count(dlq, "ApproximateNumberOfMessages"),
            "oldest_message_age_seconds": age, "stale_after_seconds": stale_seconds}


def changes(previous: Optional[dict], current: dict) -> list[str]:
    """What the sweep reports: ``consumer_stale`` when the consumer turns stale,
    ``dlq_filled`` when the DLQ goes from empty (or unknown) to holding messages."""
    before: dict[str, Any] = previous or {}
    out = []
    if current["consumer"] == "stale" and before.get("consumer") != "stale":
        out.append("consumer_stale")
    if (current.get("dlq_depth") or 0) > 0 and not (before.get("dlq_depth") or 0) > 0:
        out.append("dlq_filled")
    return out


def worth_recording(previous: Optional[dict], current: dict) -> bool:
    """Write only when the consumer state or DLQ emptiness changed (no write amplification:
    counts move all the time, these rarely)."""
    before: dict[str, Any] = previous or {}
    return before.get("consumer") != current["consumer"] or \
        ((before.get("dlq_depth") or 0) > 0) != ((current.get("dlq_depth") or 0) > 0)
