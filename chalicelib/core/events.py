"""Pure: the EKS CloudTrail events the trigger handles, parsed with Powertools' parser models.

``parse_eks_event`` never raises: a malformed event (a retry could never fix it) comes back with
``ignored`` saying why, so Lambda does not retry junk.

An event says what happened, not what holds now: CloudTrail delivers late (hours), twice, or
replayed, and a cluster can be deleted and re-created under the same name and ARN. So the parsed
event keeps what tells generations apart: ``event_time`` (detail.eventTime) and, where the
response carries it, the cluster's ``created_at`` (responseElements.cluster.createdAt, epoch
seconds). The use cases compare them with what EKS and the record say before acting.
"""
from __future__ import annotations

import calendar
import time
from dataclasses import dataclass, field
from typing import Any, Literal, Optional, Union

from aws_lambda_powertools.utilities.parser.models import EventBridgeModel
from pydantic import BaseModel, ConfigDict
from pydantic import ValidationError as PydanticValidationError

HANDLED = ("CreateCluster", "DeleteCluster", "UpdateClusterConfig")


class EksComputeConfig(BaseModel):
    model_config = ConfigDict(extra="ignore")
    enabled: Optional[bool] = None


class EksRequestParameters(BaseModel):
    model_config = ConfigDict(extra="ignore")
    name: str
    tags: Optional[dict[str, str]] = None
    computeConfig: Optional[EksComputeConfig] = None    # UpdateClusterConfig: Auto Mode


class EksResponseCluster(BaseModel):
    model_config = ConfigDict(extra="ignore")
    arn: Optional[str] = None
    createdAt: Optional[Union[float, str]] = None


class EksResponseElements(BaseModel):
    model_config = ConfigDict(extra="ignore")
    cluster: Optional[EksResponseCluster] = None


class EksCloudTrailDetail(BaseModel):
    model_config = ConfigDict(extra="ignore", populate_by_name=True)
    eventSource: Literal["eks.amazonaws.com"]
    eventName: str
    eventTime: Optional[str] = None
    responseElements: Optional[EksResponseElements] = None
    awsRegion: Optional[str] = None
    recipientAccountId: Optional[str] = None
    errorCode: Optional[str] = None
    errorMessage: Optional[str] = None
    requestParameters: Optional[EksRequestParameters] = None
    userIdentity: Optional[dict] = None     # who made the call (the audit trail's actor)


class EksCloudTrailEvent(EventBridgeModel):
    detail: EksCloudTrailDetail


@dataclass(frozen=True)
class EksEvent:
    name: str = ""                  # CreateCluster | DeleteCluster
    cluster_name: str = ""
    account_id: str = ""
    region: str = ""
    tags: dict = field(default_factory=dict)
    ignored: Optional[str] = None   # why the event is not acted on
    event_time: Optional[float] = None      # when the call was made (epoch seconds)
    created_at: Optional[float] = None      # the cluster generation the call was about
    cluster_arn: Optional[str] = None
    auto_mode: Optional[bool] = None        # UpdateClusterConfig: computeConfig.enabled as asked
    actor: Optional[str] = None     # the caller, CloudTrail's detail.userIdentity.arn


def epoch(value: Any) -> Optional[float]:
    """Epoch seconds from what AWS writes for a time: a number (CloudTrail's createdAt), an
    ISO-8601 UTC string (eventTime, ``2026-11-20T10:00:00Z``, fractions allowed), or a datetime;
    None when it is none of these."""
    if isinstance(value, bool) or value is None:
        return None
    if isinstance(value, (int, float)):
        return float(value)
    if hasattr(value, "timestamp"):
        return float(value.timestamp())
    if isinstance(value, str):
        text = value.strip().replace("+00:00", "Z")
        for fmt in ("%Y-%m-%dT%H:%M:%SZ", "%Y-%m-%dT%H:%M:%S.%fZ"):
            try:
                return float(calendar.timegm(time.strptime(text, fmt))) + \
                    (float("0." + text.split(".")[1].rstrip("Z")) if "." in text else 0.0)
            except (ValueError, IndexError):
                continue
        try:
            return float(text)
        except ValueError:
            return None
    return None


def parse_eks_event(raw: Any) -> EksEvent:
    if not isinstance(raw, dict):
        return EksEvent(ignored="unparseable event")
    raw = dict(raw)
    # chalice's test client sends "version": 0 (an int); EventBridge sends "0".
    raw["version"] = str(raw.get("version", "0"))
    try:
        ev = EksCloudTrailEvent.model_validate(raw)
    except PydanticValidationError:
        return EksEvent(ignored="unparseable event")
    d = ev.detail
    if d.errorCode:
        return EksEvent(name=d.eventName, ignored=f"{d.eventName} failed with {d.errorCode}")
    if d.eventName not in HANDLED:
        return EksEvent(name=d.eventName, ignored=f"event {d.eventName}")
    if d.requestParameters is None:
        return EksEvent(name=d.eventName, ignored="no cluster name in the event")
    # EventBridge keeps the envelope's account when a member's rule forwards the event to the hub
    # bus, and it is the account of the API call: an event whose two accounts differ was not made
    # by CloudTrail, and is not acted on.
    if d.recipientAccountId and ev.account and d.recipientAccountId != ev.account:
        return EksEvent(name=d.eventName, ignored=(
            f"the envelope's account {ev.account[:12]!r} differs from the call's "
            f"detail.recipientAccountId {d.recipientAccountId[:12]!r}"))
    cluster = d.responseElements.cluster if d.responseElements else None
    return EksEvent(name=d.eventName, cluster_name=d.requestParameters.name,
                    account_id=d.recipientAccountId or ev.account,
                    region=d.awsRegion or ev.region, tags=d.requestParameters.tags or {},
                    event_time=epoch(d.eventTime) or epoch(ev.time),
                    created_at=epoch(cluster.createdAt) if cluster else None,
                    cluster_arn=cluster.arn if cluster else None,
                    actor=_caller_arn(d.userIdentity),
                    auto_mode=(d.requestParameters.computeConfig.enabled
                               if d.requestParameters.computeConfig else None))


def _caller_arn(identity: Optional[dict]) -> Optional[str]:
    """``userIdentity.arn`` (an AWS service's call has none: its ``invokedBy``)."""
    identity = identity or {}
    value = identity.get("arn") or identity.get("invokedBy")
    return str(value)[:512] if isinstance(value, str) and value else None
