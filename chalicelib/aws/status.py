"""Status-change events for the portal, on the configured bus (off when none is set)."""
from __future__ import annotations

import json

from chalicelib import errors
from chalicelib.aws.calls import call
from chalicelib.aws.clients import client
from chalicelib.config import Settings

DETAIL_TYPE = "Interruption Handling Status Changed"


def publish_status(settings: Settings, detail: dict) -> None:
    if not settings.status_bus:
        return
    step = "events:PutEvents"
    r = call(step, client("events", None, settings.region, settings).put_events, Entries=[{
        "Source": settings.status_source, "DetailType": DETAIL_TYPE,
        "Detail": json.dumps(detail, default=str), "EventBusName": settings.status_bus}])
    if r.get("FailedEntryCount"):       # HTTP 200 with a failed entry
        failed = (r.get("Entries") or [{}])[0]
        raise errors.AwsCallFailed(f"{step} failed: {failed.get('ErrorCode')}: "
                                   f"{failed.get('ErrorMessage')}", step=step,
                                   aws_code=failed.get("ErrorCode"))
