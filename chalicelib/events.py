"""Pure: the EKS CloudTrail events the trigger handles, parsed with Powertools' parser models."""
from __future__ import annotations

from typing import Literal, Optional

from aws_lambda_powertools.utilities.parser.models import EventBridgeModel
from pydantic import BaseModel, ConfigDict

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


def parse_eks_event(raw: dict) -> EksCloudTrailEvent:
    # chalice's test client sends "version": 0 (an int); EventBridge sends "0".
    raw = dict(raw)
    raw["version"] = str(raw.get("version", "0"))
    return EksCloudTrailEvent.model_validate(raw)
