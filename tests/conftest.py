"""Shared fixtures. Every AWS test gets a fresh moto mock and fresh clients (created after it)."""
from __future__ import annotations

import json
import os
import pathlib
import threading

import pytest

ROOT = pathlib.Path(__file__).resolve().parents[1]
SHARED_EVENTS = ROOT.parent / "shared" / "reference" / "events"
ACCOUNT = "123456789012"
REGION = "eu-west-1"

# Never reach a real endpoint: fake credentials, no endpoint override from the caller's shell.
for var in ("AWS_ENDPOINT_URL", "AWS_PROFILE", "AWS_SESSION_TOKEN", "KIP_ACCOUNT_ID"):
    os.environ.pop(var, None)
os.environ.update({
    "AWS_ACCESS_KEY_ID": "testing", "AWS_SECRET_ACCESS_KEY": "testing",
    "AWS_DEFAULT_REGION": REGION, "AWS_REGION": REGION,
    "KIP_TABLE_NAME": "kip-clusters-test", "KIP_API_AUTH": "none",
    "POWERTOOLS_TRACE_DISABLED": "true", "POWERTOOLS_METRICS_NAMESPACE": "KipTest",
    "POWERTOOLS_SERVICE_NAME": "kip", "POWERTOOLS_LOG_LEVEL": "WARNING",
    "KIP_RETRY_MODE": "standard", "KIP_MAX_ATTEMPTS": "3",
})


def load_event(name: str) -> dict:
    return json.loads((SHARED_EVENTS / name).read_text())


@pytest.fixture
def settings():
    from chalicelib.config import get_settings
    get_settings.cache_clear()
    yield get_settings()
    get_settings.cache_clear()


@pytest.fixture
def moto_env(settings):
    """A fresh in-process AWS with the records table created."""
    from moto import mock_aws

    from chalicelib import aws
    from tests.support.pod_identity import distinct_issuers
    with mock_aws(), distinct_issuers():
        aws.reset()
        aws.Store(settings).create_table()
        _pods(ACCOUNT, REGION)          # moto has no Pod Identity API: the strict-AWS fake
        yield settings
        aws.reset()


def _pods(account: str, region: str):
    from tests.support.pod_identity import PodIdentity
    return PodIdentity(account, region)


@pytest.fixture
def pod_identity(moto_env):
    """The Pod Identity fake of this test's world (add associations with ``associate``)."""
    from tests.support import pod_identity as fake
    return fake.current()


def make_cluster(name: str, tags: dict | None = None, region: str = REGION) -> dict:
    import boto3
    iam = boto3.client("iam", region_name=region)
    try:
        iam.create_role(RoleName="eks-cluster-role", AssumeRolePolicyDocument=json.dumps({
            "Version": "2012-10-17", "Statement": [{"Effect": "Allow", "Action": "sts:AssumeRole",
                                                    "Principal": {"Service": "eks.amazonaws.com"}}]}))
    except iam.exceptions.EntityAlreadyExistsException:
        pass
    eks = boto3.client("eks", region_name=region)
    return eks.create_cluster(
        name=name, roleArn=f"arn:aws:iam::{ACCOUNT}:role/eks-cluster-role",
        resourcesVpcConfig={"subnetIds": ["subnet-0abc", "subnet-0def"]}, tags=tags or {})["cluster"]


def make_role(name: str) -> str:
    import boto3
    iam = boto3.client("iam", region_name=REGION)
    return iam.create_role(RoleName=name, AssumeRolePolicyDocument=json.dumps({
        "Version": "2012-10-17", "Statement": [{
            "Effect": "Allow", "Action": "sts:AssumeRoleWithWebIdentity",
            "Principal": {"Federated": f"arn:aws:iam::{ACCOUNT}:oidc-provider/oidc.eks"}}]}))["Role"]["Arn"]


def key_policy(*extra: dict, account: str = ACCOUNT, grant_eventbridge: bool = True) -> str:
    """A key policy as a customer who set SSE-KMS up correctly writes it: the account's IAM
    delegation (KMS's default) plus events.amazonaws.com GenerateDataKey + Decrypt."""
    statements = [{"Sid": "Enable IAM User Permissions", "Effect": "Allow",
                   "Principal": {"AWS": f"arn:aws:iam::{account}:root"}, "Action": "kms:*",
                   "Resource": "*"}]
    if grant_eventbridge:
        statements.append({"Sid": "AllowEventBridge", "Effect": "Allow",
                           "Principal": {"Service": "events.amazonaws.com"},
                           "Action": ["kms:GenerateDataKey", "kms:Decrypt"], "Resource": "*"})
    return json.dumps({"Version": "2012-10-17", "Statement": statements + list(extra)})


def make_key(region: str = REGION, **kw) -> dict:
    """A customer KMS key EventBridge may use (override ``Policy`` to break it)."""
    import boto3
    kw.setdefault("Policy", key_policy())
    return boto3.client("kms", region_name=region).create_key(**kw)["KeyMetadata"]


def put_metric(queue: str, metric: str, value: float, minutes_ago: int = 2) -> None:
    """An SQS metric datapoint for ``queue``, minutes old as SQS publishes them (a datapoint at
    "now" races a read whose EndTime is sent in whole seconds)."""
    import datetime

    import boto3
    boto3.client("cloudwatch", region_name=REGION).put_metric_data(
        Namespace="AWS/SQS", MetricData=[{
            "MetricName": metric, "Dimensions": [{"Name": "QueueName", "Value": queue}],
            "Value": value, "Timestamp": datetime.datetime.now(datetime.timezone.utc)
            - datetime.timedelta(minutes=minutes_ago)}])


def bus_inbox(bus: str, pattern: dict, name: str, region: str = REGION) -> str:
    """A new event bus with a rule ``name`` copying what matches ``pattern`` to a queue
    ``<name>-inbox``; the queue's URL."""
    import boto3
    events, sqs = boto3.client("events", region_name=region), boto3.client("sqs", region_name=region)
    events.create_event_bus(Name=bus)
    url = sqs.create_queue(QueueName=f"{name}-inbox")["QueueUrl"]
    arn = sqs.get_queue_attributes(QueueUrl=url, AttributeNames=["QueueArn"])["Attributes"][
        "QueueArn"]
    events.put_rule(Name=name, EventBusName=bus, EventPattern=json.dumps(pattern))
    events.put_targets(Rule=name, EventBusName=bus, Targets=[{"Id": "inbox", "Arn": arn}])
    return url


def portal_inbox(bus: str = "kip-portal") -> str:
    """A portal's event bus with a rule forwarding kip's status events to a queue; its URL."""
    return bus_inbox(bus, {"source": ["kip.provisioner"]}, "portal")


@pytest.fixture
def engine(moto_env):
    from tests.support.drive import make_kit
    return make_kit(moto_env)


@pytest.fixture
def cluster(moto_env):
    """An EKS cluster 'payments-prod' and its Karpenter controller role."""
    make_cluster("payments-prod")
    make_role("KarpenterController-payments-prod")
    return "payments-prod"


@pytest.fixture
def api(moto_env):
    """The Chalice app under chalice.test.Client, on a fresh engine for this test's mock."""
    from chalice.test import Client

    import app as service_app
    from tests.support.drive import make_kit
    service_app._kit = make_kit(moto_env)
    with Client(service_app.app, stage_name="local") as client:
        yield client
    service_app._kit = None


class Clock:
    """A settable clock for make_kit(settings, clock=...): tests move it past leases and windows."""

    def __init__(self, now: float = 1_800_000_000.0) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def clock() -> Clock:
    return Clock()


class Calls:
    """Every AWS call chalicelib makes (botocore hook), by operation name."""

    def __init__(self) -> None:
        self.names: list[str] = []
        self._lock = threading.Lock()
        _aws().add_hook("before-call.*.*", self.record)

    def record(self, model, **kw) -> None:
        with self._lock:
            self.names.append(model.name)

    @property
    def writes(self) -> list[str]:
        return [n for n in self.names if _aws().is_write(n)]

    def clear(self) -> None:
        with self._lock:
            self.names.clear()


def _aws():
    from chalicelib import aws
    return aws


@pytest.fixture(scope="session")
def built_package(tmp_path_factory) -> pathlib.Path:
    """`make package STAGE=prod` as on a fresh clone: no KIP_* or POWERTOOLS_* variable (the
    ones this file sets for the other tests are removed). Built once per session; the tests that
    use it carry ``xdist_group("package")`` so that, with ``--dist loadgroup`` (the Makefile),
    they share one worker and one build."""
    import subprocess
    import sys
    out = tmp_path_factory.mktemp("package") / "out"
    env = {k: v for k, v in os.environ.items()
           if not k.startswith(("KIP_", "POWERTOOLS_", "AWS_ENDPOINT"))}
    subprocess.run([sys.executable, str(ROOT / "scripts" / "package.py"), "--build", "--stage",
                    "prod", str(out)], cwd=ROOT, env=env, check=True, capture_output=True,
                   timeout=900)
    return out
