"""The moto world: the test environment, the account and region, plain boto3 clients outside
chalicelib.aws, and the AWS things a test sets up (clusters, roles, keys, metrics, inboxes).

Importing this module sets the environment (fake credentials, no endpoint from the caller's
shell) and the process-wide speed patches of botocore and moto; tests/conftest.py imports it
first."""
from __future__ import annotations

import contextlib
import datetime
import functools
import json
import os
import pathlib
import threading
from typing import Any, Iterator, Optional

import boto3

ROOT = pathlib.Path(__file__).resolve().parents[2]
SHARED_EVENTS = ROOT.parent / "shared" / "reference" / "events"
ACCOUNT = "123456789012"
OTHER_ACCOUNT = "111122223333"      # also the account in the shared CloudTrail samples
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


# ----------------------------------------------------------------------------- speed
# Each new botocore session (moto resets boto3's default one, chalicelib.aws.reset() drops ours)
# would parse the service models and endpoint rules again: ~0.3 s per world. The loader only
# caches read-only JSON, so one per process is shared (a test-only patch of the library).
import botocore.session as _botocore_session  # noqa: E402

if not hasattr(_botocore_session.create_loader, "cache_info"):
    _botocore_session.create_loader = functools.lru_cache(maxsize=None)(
        _botocore_session.create_loader)

# moto generates an RSA private key for every KMS key, symmetric ones included (~45 ms each);
# the key material is never used here, so one per key spec is generated and reused.
import moto.kms.models as _moto_kms  # noqa: E402

if not hasattr(_moto_kms.generate_private_key, "cache_info"):
    _moto_kms.generate_private_key = functools.lru_cache(maxsize=None)(
        _moto_kms.generate_private_key)

# moto serializes every response by walking the botocore shapes and asking six alias providers,
# for every member of every DynamoDB AttributeValue, which key to read: ~25 ms per GetItem of a
# record. For plain dicts (DynamoDB items) the answer depends only on the key and the shape, so it
# is memoized (shapes are kept referenced by the cache, so their ids stay unique).
from moto.core import serialize as _moto_serialize  # noqa: E402

if not hasattr(_moto_serialize.AttributePicker, "_kip_memo"):
    _original_possible_keys = _moto_serialize.AttributePicker.get_possible_keys
    _POSSIBLE_KEYS: dict = {}

    def _possible_keys(self: Any, context: Any) -> Any:
        if type(context.obj) is not dict:
            return _original_possible_keys(self, context)
        memo = (type(self), id(self.alias_providers), context.key, id(context.shape))
        hit = _POSSIBLE_KEYS.get(memo)
        if hit is None:
            hit = (tuple(_original_possible_keys(self, context)), context.shape,
                   self.alias_providers)
            _POSSIBLE_KEYS[memo] = hit
        return iter(hit[0])
    _moto_serialize.AttributePicker.get_possible_keys = _possible_keys
    _moto_serialize.AttributePicker._kip_memo = True


@contextlib.contextmanager
def moto_like_aws() -> Iterator[None]:
    """Correct two moto 5.2.5 SQS deviations from AWS that would otherwise look like drift:

    * SetQueueAttributes without ``Policy`` clears the queue policy in moto; AWS changes only the
      attributes given.
    * A queue created with ``KmsMasterKeyId`` still reports ``SqsManagedSseEnabled: true`` in moto;
      AWS allows one server-side encryption option, so it reports ``false``.
    """
    from unittest import mock

    from moto.sqs.models import Queue

    from scripts.moto_server import fidelity_set_attributes
    _set_attributes = fidelity_set_attributes(Queue._set_attributes)
    with mock.patch.object(Queue, "_set_attributes", _set_attributes):
        yield


# ----------------------------------------------------------------------------- clients
_SESSION_LOCK = threading.Lock()
_CLIENTS: dict = {}


def plain(service: str, region: str = REGION, session: Optional[boto3.Session] = None) -> Any:
    """A boto3 client outside chalicelib.aws (so no hook sees it) for setup and snapshots; cached
    per process. moto intercepts it whenever a mock is active; under Stack.environ() it goes to
    the moto server named by AWS_ENDPOINT_URL. With ``session``: that session's client (another
    account's credentials), not cached."""
    if session is not None:
        return session.client(service, region_name=region)
    key = (service, region, os.environ.get("AWS_ENDPOINT_URL"))
    with _SESSION_LOCK:
        if key not in _CLIENTS:
            _CLIENTS[key] = boto3.session.Session().client(service, region_name=region)
        return _CLIENTS[key]


def other_account_session(account: str = OTHER_ACCOUNT, region: str = REGION) -> boto3.Session:
    """Another (moto) account, as kip reaches it: STS AssumeRole of kip-provisioner."""
    creds = plain("sts").assume_role(
        RoleArn=f"arn:aws:iam::{account}:role/kip-provisioner",
        RoleSessionName="test-setup")["Credentials"]
    return boto3.session.Session(aws_access_key_id=creds["AccessKeyId"],
                                 aws_secret_access_key=creds["SecretAccessKey"],
                                 aws_session_token=creds["SessionToken"], region_name=region)


# ----------------------------------------------------------------------------- things
def load_event(name: str) -> dict:
    return json.loads((SHARED_EVENTS / name).read_text())


def sample(name: str) -> dict:
    """A shared sample event as EventBridge delivers it to a Lambda."""
    event = load_event(name)
    event["version"] = "0"          # real EventBridge sends a string
    return event


TRUST = json.dumps({"Version": "2012-10-17", "Statement": [{
    "Effect": "Allow", "Action": "sts:AssumeRoleWithWebIdentity",
    "Principal": {"Federated": f"arn:aws:iam::{ACCOUNT}:oidc-provider/oidc.eks"}}]})


def make_cluster(name: str, region: str = REGION, tags: Optional[dict] = None) -> dict:
    iam = plain("iam", region)
    try:
        iam.create_role(RoleName="eks-cluster-role", AssumeRolePolicyDocument=TRUST)
    except iam.exceptions.EntityAlreadyExistsException:
        pass
    return plain("eks", region).create_cluster(
        name=name, roleArn=f"arn:aws:iam::{ACCOUNT}:role/eks-cluster-role",
        resourcesVpcConfig={"subnetIds": ["subnet-0abc", "subnet-0def"]},
        tags=tags or {})["cluster"]


EKS_TRUST = json.dumps({"Version": "2012-10-17", "Statement": [{
    "Effect": "Allow", "Principal": {"Service": "eks.amazonaws.com"}, "Action": "sts:AssumeRole"}]})


def make_cluster_in(account: str, region: str, name: str, tags: Optional[dict] = None,
                    role: bool = True) -> boto3.Session:
    """A cluster (and, with ``role``, its controller role) in another account; its session."""
    sess = other_account_session(account, region)
    iam = sess.client("iam")
    try:
        iam.create_role(RoleName="eks-cluster", AssumeRolePolicyDocument=EKS_TRUST)
    except iam.exceptions.EntityAlreadyExistsException:
        pass
    sess.client("eks").create_cluster(
        name=name, roleArn=f"arn:aws:iam::{account}:role/eks-cluster", tags=tags or {},
        resourcesVpcConfig={"subnetIds": ["subnet-0abc"]})
    if role:
        iam.create_role(RoleName=f"KarpenterController-{name}", AssumeRolePolicyDocument=EKS_TRUST)
    return sess


def make_role(name: str) -> str:
    return plain("iam").create_role(RoleName=name, AssumeRolePolicyDocument=TRUST)["Role"]["Arn"]


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


def make_key(region: str = REGION, **kw: Any) -> dict:
    """A customer KMS key EventBridge may use (override ``Policy`` to break it)."""
    kw.setdefault("Policy", key_policy())
    return plain("kms", region).create_key(**kw)["KeyMetadata"]


def put_metric(queue: str, metric: str, value: float, minutes_ago: int = 2) -> None:
    """An SQS metric datapoint for ``queue``, minutes old as SQS publishes them (a datapoint at
    "now" races a read whose EndTime is sent in whole seconds)."""
    plain("cloudwatch").put_metric_data(
        Namespace="AWS/SQS", MetricData=[{
            "MetricName": metric, "Dimensions": [{"Name": "QueueName", "Value": queue}],
            "Value": value, "Timestamp": datetime.datetime.now(datetime.timezone.utc)
            - datetime.timedelta(minutes=minutes_ago)}])


def bus_inbox(bus: str, pattern: dict, name: str, region: str = REGION) -> str:
    """A new event bus with a rule ``name`` copying what matches ``pattern`` to a queue
    ``<name>-inbox``; the queue's URL."""
    events, sqs = plain("events", region), plain("sqs", region)
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


# ----------------------------------------------------------------------------- payments-prod
# The cluster most tests provision, its controller role, and the names kip gives its resources
# (default prefix "kip-" and IAM path "/kip/").
CLUSTER = "payments-prod"
ROLE = "KarpenterController-payments-prod"
PREFIX = "kip-"
IAM_PATH = "/kip/"
QUEUE = "kip-payments-prod"
DLQ = "kip-_payments-prod-dlq"
POLICY = "kip-eu-west-1-payments-prod"
POLICY_ARN = f"arn:aws:iam::{ACCOUNT}:policy/kip/{POLICY}"
RULE = "kip-payments-prod-events"
RULE_ARN = f"arn:aws:events:{REGION}:{ACCOUNT}:rule/{RULE}"


# ----------------------------------------------------------------------------- by hand
# Changes made to payments-prod's resources behind kip's back (drift, deletions by hand).

def _queue_url(name: str) -> str:
    return plain("sqs").get_queue_url(QueueName=name)["QueueUrl"]


def drop_target() -> None:
    plain("events").remove_targets(Rule=RULE, Ids=["KarpenterInterruptionQueueTarget"])


def drop_rule() -> None:
    drop_target()
    plain("events").delete_rule(Name=RULE)


def change_visibility() -> None:
    plain("sqs").set_queue_attributes(QueueUrl=_queue_url(QUEUE),
                                      Attributes={"VisibilityTimeout": "30"})


def detach() -> None:
    plain("iam").detach_role_policy(RoleName=ROLE, PolicyArn=POLICY_ARN)


def delete_queue_by_hand() -> None:
    plain("sqs").delete_queue(QueueUrl=_queue_url(QUEUE))


def delete_dlq_by_hand() -> None:
    plain("sqs").delete_queue(QueueUrl=_queue_url(DLQ))


def delete_policy_by_hand() -> None:
    detach()
    plain("iam").delete_policy(PolicyArn=POLICY_ARN)


# ----------------------------------------------------------------------------- requests
from chalicelib.core import naming  # noqa: E402  (after the environment is set)
from chalicelib.core.spec import ClusterRequest  # noqa: E402


def cid(name: str = CLUSTER, account: str = ACCOUNT, region: str = REGION) -> naming.ClusterId:
    """A cluster's identity as the edge builds it, without asking AWS (payments-prod by default)."""
    return naming.ClusterId(account, region, name)


def req(name: str = CLUSTER, **kw: Any) -> ClusterRequest:
    """A provisioning request (payments-prod by default)."""
    return ClusterRequest(cluster_name=name, **kw)


def auto_mode(*names: str) -> None:
    """moto drops computeConfig from DescribeCluster: put it back, as EKS answers for an Auto
    Mode cluster (ComputeConfigResponse: enabled, nodePools, nodeRoleArn)."""
    from chalicelib import aws

    def hook(parsed, **_):
        cluster = (parsed or {}).get("cluster") or {}
        if cluster.get("name") in names:
            cluster["computeConfig"] = {"enabled": True, "nodePools": ["general-purpose"],
                                        "nodeRoleArn": f"arn:aws:iam::{ACCOUNT}:role/auto-node"}
    aws.add_hook("after-call.eks.DescribeCluster", hook)
