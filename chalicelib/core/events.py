"""Pure: the EKS CloudTrail events the trigger handles, parsed with Powertools' parser models.

``parse_eks_event`` never raises: a malformed event (a retry could never fix it) comes back with
``ignored`` saying why, so Lambda does not retry junk.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Literal, Optional

from aws_lambda_powertools.utilities.parser.models import EventBridgeModel
from pydantic import BaseModel, ConfigDict
from pydantic import ValidationError as PydanticValidationError

HANDLED = ("CreateCluster", "DeleteCluster")


class EksRequestParameters(BaseModel):
    model_config = ConfigDict(extra="ignore")
    name: str
    tags: Optional[dict[str, str]] = None


class EksCloudTrailDetail(BaseModel):
    model_config = ConfigDict(extra="ignore", populate_by_name=True)
    eventSource: Literal["eks.amazonaws.com"]
    eventName: str
    awsRegion: Optional[str] = None
    recipientAccountId: Optional[str] = None
    errorCode: Optional[str] = None
    errorMessage: Optional[str] = None
    requestParameters: Optional[EksRequestParameters] = None


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
    # The account and region of the cluster are those of the API call (they survive forwarding
    # from a member account's bus), else the envelope's.
    return EksEvent(name=d.eventName, cluster_name=d.requestParameters.name,
                    account_id=d.recipientAccountId or ev.account,
                    region=d.awsRegion or ev.region, tags=d.requestParameters.tags or {})
