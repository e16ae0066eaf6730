"""EKS CloudTrail events as EventBridge delivers them, built from the shared samples with the
times a test needs: an event is stamped now unless the test says when (a late, replayed or
stale event is one stamped in the past)."""
from __future__ import annotations

import copy
import json
import pathlib
import time
from typing import Optional

from tests.support.world import ACCOUNT, REGION, load_event

SAMPLES = pathlib.Path(__file__).resolve().parents[2].parent / "shared" / "reference" / "events"
FILES = {"CreateCluster": "cloudtrail-eks-create-cluster.json",
         "DeleteCluster": "cloudtrail-eks-delete-cluster.json"}


def iso(ts: float) -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(ts))


def eks_event(name: str, cluster: str, account: str, region: str, at: Optional[float] = None,
              created_at: Optional[float] = None) -> dict:
    """``name`` (CreateCluster / DeleteCluster) for ``cluster``, made at ``at`` (default now);
    ``created_at``: the generation the response names (responseElements.cluster.createdAt)."""
    event = copy.deepcopy(json.loads((SAMPLES / FILES[name]).read_text()))
    when = iso(time.time() if at is None else at)
    event.update(version="0", account=account, region=region, time=when)
    detail = event["detail"]
    detail.update(eventTime=when, recipientAccountId=account, awsRegion=region)
    detail["requestParameters"]["name"] = cluster
    response = detail.setdefault("responseElements", {}).setdefault("cluster", {})
    response.update(name=cluster, arn=f"arn:aws:eks:{region}:{account}:cluster/{cluster}")
    if created_at is not None:
        response["createdAt"] = created_at
    return event


# CloudTrail management events other than EKS's (the drift trigger reads them)
HUMAN = f"arn:aws:sts::{ACCOUNT}:assumed-role/platform-admin/someone"
KIP_LAMBDA_ROLE = f"arn:aws:iam::{ACCOUNT}:role/kip-prod-DefaultRole-ABC"


def cloudtrail(service: str, name: str, params: dict, *, region: str = REGION,
               actor: str = HUMAN, issuer: str = f"arn:aws:iam::{ACCOUNT}:role/platform-admin"
               ) -> dict:
    """The EventBridge envelope of a CloudTrail management event (shared sample's shape)."""
    event = load_event("cloudtrail-eks-delete-cluster.json")
    event.update(version="0", source=f"aws.{service}", account=ACCOUNT, region=region)
    event["detail"].update(eventSource=f"{service}.amazonaws.com", eventName=name,
                           awsRegion=region, requestParameters=params, responseElements=None,
                           recipientAccountId=ACCOUNT, userIdentity={
                               "type": "AssumedRole", "arn": actor, "accountId": ACCOUNT,
                               "sessionContext": {"sessionIssuer": {
                                   "type": "Role", "arn": issuer,
                                   "userName": issuer.rsplit("/", 1)[-1]}}})
    return event


def rule_of(names: dict) -> str:
    return names.get("rule") or sorted(names["rules"].values())[0]
