"""Use case: replay the EKS events the trigger failed on (``KIP_FAILED_EVENTS_QUEUE_URL``).

Lambda retries an asynchronous invocation twice and then drops it unless the function has an
on-failure destination; EventBridge drops an event it could not deliver unless the rule's target
has a dead-letter queue. Both point at one SQS queue, ``kip_failed-events-<stage>``
(.chalice/resources-<stage>.json), so a ``CreateCluster`` that failed before a record existed is
kept, with the reason, instead of lost. Two message shapes arrive there:

* Lambda's on-failure *invocation record* (docs: "Capturing records of Lambda asynchronous
  invocations")::

    {"version": "1.0", "timestamp": "2019-11-14T18:16:05.568Z",
     "requestContext": {"requestId": "...", "functionArn": "arn:aws:lambda:...:$LATEST",
                        "condition": "RetriesExhausted" | "EventAgeExceeded",
                        "approximateInvokeCount": 3},
     "requestPayload": <the EventBridge event the function received>,
     "responseContext": {"statusCode": 200, "executedVersion": "$LATEST",
                         "functionError": "Unhandled"},
     "responsePayload": {"errorType": "...", "errorMessage": "...", "stackTrace": [...]}}

* EventBridge's target DLQ message: the body *is* the event; the reason is in the message
  attributes ``ERROR_CODE`` and ``ERROR_MESSAGE`` (and ``RULE_ARN``, ``TARGET_ARN``).

``replay`` (called by the schedule, ``reconcile_all``) reads up to ``limit``
messages and hands each event to ``handle`` -- ``app.handle_eks_event``, the body ``on_eks_event`` runs:

* handled (provisioned, deleted, or ignored as final: opted out, failed call, unknown cluster):
  the message is deleted;
* malformed (not JSON, neither shape, no EKS event inside): logged with its reason and deleted;
* still failing (a retryable ``KipError`` or a bug): left; it reappears after the queue's
  visibility timeout, at the next schedule. After ``KEEP_AFTER`` receives it is logged for a
  human and left to the queue's redrive policy, which moves it to ``kip_failed-events-<stage>-dlq``;
* not reached before the time budget ran out: released (visibility 0) for the next run.
"""
from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any, Callable, Optional

from aws_lambda_powertools import Logger

from chalicelib import aws, errors
from chalicelib.usecases.kit import Kit

log = Logger(service="kip", child=True)
LIMIT = 50              # messages per schedule (a backlog drains over a few runs)
KEEP_AFTER = 5          # = the queue's RedrivePolicy maxReceiveCount (resources-<stage>.json)
MARGIN_SECONDS = 20.0   # stop starting replays when less time than this is left


@dataclass(frozen=True)
class FailedEvent:
    """One queued failure: the EKS event to replay and why it failed the first time."""
    event: Optional[dict]       # None: malformed
    origin: str                 # "lambda-destination" | "eventbridge-dlq" | "unknown"
    reason: str                 # errorType: errorMessage / ERROR_CODE: ERROR_MESSAGE / why bad
    condition: Optional[str] = None     # Lambda's requestContext.condition
    failed_at: Optional[str] = None     # Lambda's record timestamp


def _is_event(value: Any) -> bool:
    return isinstance(value, dict) and isinstance(value.get("detail"), dict) and \
        "detail-type" in value and "source" in value


CONDITIONS = ("RetriesExhausted", "EventAgeExceeded")
TRIGGER_NAMES = ("on_eks_event", "OnEksEvent")   # chalice deploy / the packaged template


def is_trigger(function_arn: Any, account: str, region: str) -> bool:
    """Pure: ``function_arn`` (an invocation record's requestContext.functionArn, with or
    without a version) names kip's EKS trigger function in kip's own account and region."""
    if not isinstance(function_arn, str):
        return False
    parts = function_arn.split(":")
    if len(parts) not in (7, 8) or parts[:3] != ["arn", parts[1], "lambda"] or \
            parts[5] != "function":
        return False
    return parts[3] == region and parts[4] == account and \
        any(name in parts[6] for name in TRIGGER_NAMES)


def parse(body: Any, attributes: Optional[dict] = None,
          trigger: Callable[[Any], bool] = lambda arn: True) -> FailedEvent:
    """Pure: a queue message body (+ its string message attributes) -> the event and reason.

    Only Lambda's own failure records of kip's trigger (``trigger(functionArn)``) carry an event
    to replay; anything else -- a raw SendMessage, an EventBridge-shaped body, a record of
    another function -- is refused (logged and dropped by ``replay``)."""
    attributes = attributes or {}
    try:
        doc = json.loads(body) if isinstance(body, (str, bytes)) else body
    except (TypeError, ValueError, RecursionError):
        return FailedEvent(None, "unknown", "the message body is not JSON")
    if not isinstance(doc, dict):
        return FailedEvent(None, "unknown", "the message body is not a JSON object")
    if "requestPayload" in doc or "requestContext" in doc:
        context = doc.get("requestContext") if isinstance(doc.get("requestContext"), dict) else {}
        if not trigger(context.get("functionArn")) or context.get("condition") not in CONDITIONS:
            return FailedEvent(None, "unknown", "an invocation record that is not Lambda's "
                                                "failure record of kip's EKS trigger")
        response = doc.get("responsePayload")
        if isinstance(response, dict):
            reason = f"{response.get('errorType') or 'Error'}: {response.get('errorMessage')}"
        else:
            reason = str(context.get("condition") or "unknown failure")
        payload = doc.get("requestPayload")
        if not _is_event(payload):
            return FailedEvent(None, "lambda-destination",
                               f"the invocation record carries no EventBridge event ({reason})",
                               context.get("condition"), doc.get("timestamp"))
        return FailedEvent(payload, "lambda-destination", reason[:500],
                           context.get("condition"), doc.get("timestamp"))
    if _is_event(doc):      # anyone allowed to SendMessage could write this: never replayed
        return FailedEvent(None, "eventbridge-dlq", "an EventBridge event body, not Lambda's "
                                                    "failure record of kip's EKS trigger")
    return FailedEvent(None, "unknown", "not a Lambda invocation record")


def replay(kit: Kit, handle: Callable[[dict], dict], remaining: Callable[[], float],
           limit: int = LIMIT) -> dict:
    """Replay up to ``limit`` queued failures through ``handle``; returns counts and details."""
    from chalicelib.aws import failed_events as queue
    settings = kit.settings
    url = settings.failed_events_queue_url
    summary: dict[str, Any] = {"replayed": 0, "dropped": 0, "still_failing": 0, "kept": 0,
                               "released": 0, "details": []}
    if not url:
        return {**summary, "enabled": False}
    seen, out_of_time = 0, False
    while seen < limit and not out_of_time and remaining() >= MARGIN_SECONDS:
        messages = queue.receive(settings, url, min(queue.BATCH, limit - seen))
        if not messages:
            break
        seen += len(messages)
        for message in messages:
            out_of_time = out_of_time or remaining() < MARGIN_SECONDS
            if out_of_time:     # visible again at once, for the next run (not this one)
                queue.release(settings, url, message["ReceiptHandle"])
                summary["released"] += 1
                continue
            _one(settings, url, queue, message, handle, summary)
    return {**summary, "enabled": True}


def _one(settings: Any, url: str, queue: Any, message: dict, handle: Callable[[dict], dict],
         summary: dict) -> None:
    attrs = {k: queue.attribute(message, k) for k in ("ERROR_CODE", "ERROR_MESSAGE")}
    own = aws.own_account(settings)
    failed = parse(message.get("Body"), attrs,
                   lambda arn: is_trigger(arn, own, settings.region))
    receives = int((message.get("Attributes") or {}).get("ApproximateReceiveCount") or 1)
    where = {"message_id": message.get("MessageId"), "origin": failed.origin,
             "first_failure": failed.reason, "condition": failed.condition,
             "failed_at": failed.failed_at, "receives": receives}
    if failed.event is None:
        log.error("failed-events message refused (not a failure record of kip's trigger); "
                  "deleted", extra=where)
        queue.delete(settings, url, message["ReceiptHandle"])
        summary["dropped"] += 1
        summary["details"].append({**where, "outcome": "malformed"})
        return
    try:
        out = handle(failed.event)
    except Exception as exc:    # noqa: BLE001 -- retryable KipError or a bug: keep the message
        code = exc.code if isinstance(exc, errors.KipError) else type(exc).__name__
        detail = exc.message if isinstance(exc, errors.KipError) else str(exc)[:300]
        if receives >= KEEP_AFTER:
            log.error("failed EKS event still failing; kept for a human (the queue's redrive "
                      "moves it to the dead-letter queue)", extra={**where, "code": code,
                                                                   "detail": detail})
            summary["kept"] += 1
        else:
            log.warning("failed EKS event still failing; retried at the next schedule",
                        extra={**where, "code": code, "detail": detail})
            summary["still_failing"] += 1
        summary["details"].append({**where, "outcome": "failing", "code": code})
        return
    queue.delete(settings, url, message["ReceiptHandle"])
    summary["replayed"] += 1
    outcome = "ignored" if isinstance(out, dict) and "ignored" in out else "handled"
    log.info("failed EKS event replayed", extra={**where, "result": out})
    summary["details"].append({**where, "outcome": outcome})
