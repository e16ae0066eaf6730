"""The EKS trigger's failed-events queue (``KIP_FAILED_EVENTS_QUEUE_URL``): read, delete, release.

Two senders put messages there (.chalice/resources-<stage>.json): Lambda's on-failure destination
of ``on_eks_event`` (a body that is the invocation record, with ``requestPayload``) and the
EventBridge rule's target dead-letter queue (a body that is the event itself, the reason in the
message attributes ``ERROR_CODE`` / ``ERROR_MESSAGE``). ``chalicelib/failed_events.py`` tells
them apart; this module only moves messages.
"""
from __future__ import annotations

from typing import Any

from chalicelib.aws.calls import call
from chalicelib.aws.clients import client
from chalicelib.config import Settings

BATCH = 10      # ReceiveMessage returns at most 10 messages per call


def receive(settings: Settings, queue_url: str, limit: int = BATCH) -> list[dict]:
    """Up to ``limit`` (<= 10) messages, without waiting; each is hidden for the queue's
    visibility timeout. Carries ``ApproximateReceiveCount`` and every message attribute."""
    sqs = client("sqs", None, settings.region, settings)
    r = call(f"sqs:ReceiveMessage {queue_url}", sqs.receive_message, QueueUrl=queue_url,
             MaxNumberOfMessages=max(1, min(BATCH, limit)), WaitTimeSeconds=0,
             AttributeNames=["ApproximateReceiveCount", "SentTimestamp"],
             MessageAttributeNames=["All"])
    return list(r.get("Messages") or [])


def delete(settings: Settings, queue_url: str, receipt_handle: str) -> None:
    sqs = client("sqs", None, settings.region, settings)
    call(f"sqs:DeleteMessage {queue_url}", sqs.delete_message, QueueUrl=queue_url,
         ReceiptHandle=receipt_handle)


def release(settings: Settings, queue_url: str, receipt_handle: str, seconds: int = 0) -> None:
    """Make a received message visible again after ``seconds`` (0: at once)."""
    sqs = client("sqs", None, settings.region, settings)
    call(f"sqs:ChangeMessageVisibility {queue_url}", sqs.change_message_visibility,
         QueueUrl=queue_url, ReceiptHandle=receipt_handle, VisibilityTimeout=int(seconds))


def attribute(message: dict, name: str) -> Any:
    """A string message attribute (``ERROR_CODE`` ...), or None."""
    value = (message.get("MessageAttributes") or {}).get(name) or {}
    return value.get("StringValue")
