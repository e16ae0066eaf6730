"""The sweep's work queue (SQS ``SendMessageBatch``) and the drift trigger's record search.

``send`` reports entries SQS refused: ``SendMessageBatch`` answers HTTP 200 with a per-entry
``Failed`` list, so a batch that "succeeded" may still have lost messages.
"""
from __future__ import annotations

import json
from typing import Any, Iterator, Optional

from chalicelib.aws.calls import call
from chalicelib.aws.clients import client
from chalicelib.aws.store import _from_ddb, _to_ddb
from chalicelib.config import Settings

BATCH = 10      # SendMessageBatch takes at most 10 entries


def send(settings: Settings, queue_url: str, bodies: list[dict]) -> list[dict]:
    """Send ``bodies`` (at most 10) as one batch; returns the bodies SQS did not accept."""
    if not bodies:
        return []
    if len(bodies) > BATCH:
        raise ValueError(f"at most {BATCH} messages per SendMessageBatch")
    sqs = client("sqs", None, settings.region, settings)
    entries = [{"Id": str(i), "MessageBody": json.dumps(b, separators=(",", ":"))}
               for i, b in enumerate(bodies)]
    # IAM authorizes SendMessageBatch as sqs:SendMessage (there is no batch action)
    r = call(f"sqs:SendMessage (SendMessageBatch) {queue_url}", sqs.send_message_batch,
             QueueUrl=queue_url, Entries=entries)
    return [bodies[int(f["Id"])] for f in r.get("Failed") or []]


def depth(settings: Settings, queue_url: str) -> tuple[int, int]:
    """(work items not yet received, items in flight): ``ApproximateNumberOfMessages`` plus the
    delayed ones, and ``ApproximateNumberOfMessagesNotVisible`` (approximations SQS may report
    up to a minute late)."""
    sqs = client("sqs", None, settings.region, settings)
    attrs = call(f"sqs:GetQueueAttributes {queue_url}", sqs.get_queue_attributes,
                 QueueUrl=queue_url, AttributeNames=["ApproximateNumberOfMessages",
                                                     "ApproximateNumberOfMessagesDelayed",
                                                     "ApproximateNumberOfMessagesNotVisible"]
                 ).get("Attributes", {})
    return (int(attrs.get("ApproximateNumberOfMessages", 0)) +
            int(attrs.get("ApproximateNumberOfMessagesDelayed", 0)),
            int(attrs.get("ApproximateNumberOfMessagesNotVisible", 0)))


def records_by_cut(settings: Settings, account: str, region: str, cut: str,
                   page_size: int = 500) -> Iterator[dict]:
    """Records of (account, region) whose cluster name starts with ``cut``: a filtered Scan, for
    the rare shortened resource name whose cluster name cannot be read back from it."""
    ddb = client("dynamodb", None, settings.region, settings)
    kw: dict[str, Any] = {
        "TableName": settings.table_name, "Limit": page_size,
        "FilterExpression": "account_id = :a AND #r = :r AND begins_with(cluster_name, :c)",
        "ExpressionAttributeNames": {"#r": "region"},
        "ExpressionAttributeValues": _to_ddb({":a": account, ":r": region, ":c": cut})}
    start: Optional[dict] = None
    while True:
        if start:
            kw["ExclusiveStartKey"] = start
        r = call("dynamodb:Scan", ddb.scan, **kw)
        for item in r.get("Items", []):
            yield _from_ddb(item) or {}
        start = r.get("LastEvaluatedKey")
        if not start:
            return


def create_work_queue(settings: Settings, name: str, max_receives: int = 5) -> str:
    """For the local stack (deployed stages get it from CloudFormation): the work queue and its
    DLQ with a redrive policy, as .chalice/resources-<stage>.json declares them. Returns the URL."""
    sqs = client("sqs", None, settings.region, settings)
    dlq = call(f"sqs:CreateQueue {name}-dlq", sqs.create_queue, QueueName=f"{name}-dlq",
               Attributes={"MessageRetentionPeriod": "1209600"})["QueueUrl"]
    dlq_arn = call(f"sqs:GetQueueAttributes {dlq}", sqs.get_queue_attributes, QueueUrl=dlq,
                   AttributeNames=["QueueArn"])["Attributes"]["QueueArn"]
    redrive = json.dumps({"deadLetterTargetArn": dlq_arn, "maxReceiveCount": max_receives})
    return call(f"sqs:CreateQueue {name}", sqs.create_queue, QueueName=name,
                Attributes={"VisibilityTimeout": "720", "RedrivePolicy": redrive})["QueueUrl"]
