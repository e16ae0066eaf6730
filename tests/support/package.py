"""The package rehearsal's helpers: the packaged template as CloudFormation receives it (the SAM
transform run by aws-sam-translator) and the moto-only adjustments, each small and saying what
AWS does instead."""
from __future__ import annotations

import copy
import json
import os
import pathlib
import socket

ROOT = pathlib.Path(__file__).resolve().parents[2]
REGION = "eu-west-1"
CODE_BUCKET = "kip-code-artifacts"
STACK = "kip-prod"
# resources moto's CloudFormation does not model (it warns and skips them); each is checked on
# the template itself instead (tests/package/test_package.py)
MOTO_SKIPS = {"AWS::SecretsManager::Secret", "AWS::CloudWatch::Alarm",
              "AWS::Lambda::EventInvokeConfig", "AWS::SQS::QueuePolicy"}


def translate(sam: dict, region: str = REGION) -> dict:
    """The SAM transform, as CloudFormation applies it (aws-sam-translator is its code)."""
    from samtranslator.translator.transform import transform

    class NoManagedPolicies:        # the template names no AWS managed policy
        def load(self) -> dict:
            return {}
    old = os.environ.get("AWS_DEFAULT_REGION")
    os.environ["AWS_DEFAULT_REGION"] = region       # the translator's boto3 session reads it
    try:
        return transform(copy.deepcopy(sam), {}, NoManagedPolicies())
    finally:
        if old is None:
            os.environ.pop("AWS_DEFAULT_REGION", None)
        else:
            os.environ["AWS_DEFAULT_REGION"] = old


def for_moto(template: dict, secret_arn: str | None = None) -> dict:
    """The translated template with the moto-only adjustments:
    - AWS imports the RestApi's OpenAPI Body and takes its name from info.title; moto's
      CloudFormation needs Name and ignores Body, so the API has no methods and the
      Deployment/Stage (which AWS creates from the Body) are left out.
    - AWS creates the external-id secret from the NoEcho parameter; moto's CloudFormation has no
      AWS::SecretsManager::Secret, so the test creates it and the template names its ARN."""
    t = copy.deepcopy(template)
    res = t["Resources"]
    for lid, r in list(res.items()):
        if r["Type"] == "AWS::ApiGateway::RestApi":
            r["Properties"].setdefault("Name", r["Properties"]["Body"]["info"]["title"])
        if r["Type"] in ("AWS::ApiGateway::Deployment", "AWS::ApiGateway::Stage"):
            del res[lid]
    if secret_arn:
        text = json.dumps(t).replace('{"Ref": "ExternalIdSecret"}', json.dumps(secret_arn))
        t = json.loads(text)
    return t


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]
