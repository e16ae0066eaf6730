"""The reliability harness: fault injection through botocore event hooks, automatic enumeration of
every AWS call, a normalized snapshot of what exists, and the three scenario phases.

Nothing here patches our own code. Faults enter the way AWS failures do, as botocore sees them:

* ``before-parameter-build.*.*`` labels each API call (service, operation and, for DynamoDB
  ``PutItem``, whether it writes a lease or the final record) and remembers it for the thread;
* ``before-call.*.*`` records the call (this is how the matrix enumerates every call);
* ``before-send.*.*`` answers an attempt instead of AWS: an ``AWSResponse`` in the service's own
  protocol (JSON for DynamoDB/EventBridge/SQS/KMS, rest-JSON for EKS, query-XML for IAM/STS), or
  raises ``ReadTimeoutError`` (a timeout) or :class:`Crash` (a ``BaseException``: the process
  died between two calls, and our code cannot catch it).

All three are registered with :func:`chalicelib.aws.add_hook`, so they reach every session and
client, including ones made later. Retries are botocore's own (``Settings.retry_mode``).

One moto detail: moto's in-process mock is itself a ``before-send`` handler, and botocore calls
every ``before-send`` handler even after one has answered. Ours is registered on a more specific
event name, so it runs first; when it answers, it points that one attempt's request at an
unroutable ``.invalid`` host so moto's handler ignores it (with a real endpoint the returned
response alone already stops the send). Each retry builds a fresh request.
"""
from __future__ import annotations

import contextlib
import dataclasses
import functools
import io
import itertools
import json
import os
import re
import threading
import time
from collections import Counter
from typing import Any, Iterator, Optional

import boto3
from botocore.awsrequest import AWSResponse
from botocore.exceptions import ReadTimeoutError

from chalicelib import aws, errors
from chalicelib.core import naming
from chalicelib.config import Settings
from tests.support.drive import make_kit
from chalicelib.core.spec import ClusterRequest, build_spec, resolve_role
from tests.conftest import ACCOUNT, REGION, key_policy

CLUSTER = "payments-prod"
ROLE = "KarpenterController-payments-prod"
KMS_ALIAS = "alias/kip-payments-prod"
PREFIX = "kip-"
IAM_PATH = "/kip/"
PHASES = ("provision", "reconcile", "teardown")
TRANSIENT = ("throttle", "server_error", "timeout")
FAULT_URL = "https://fault-injected.invalid/"
LEASE_SECONDS = 60

# Botocore's standard-mode backoff, as it would have slept (seconds), before the test scaled it.
BACKOFF_LOG: list[float] = []


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
from tests.support import drive

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

_SESSION_LOCK = threading.Lock()
_CLIENTS: dict = {}


def plain(service: str, region: str = REGION) -> Any:
    """A boto3 client outside chalicelib.aws (so no hook sees it) for setup and snapshots; cached
    per process. moto intercepts it whenever a mock is active; under Stack.environ() it goes to
    the moto server named by AWS_ENDPOINT_URL."""
    key = (service, region, os.environ.get("AWS_ENDPOINT_URL"))
    with _SESSION_LOCK:
        if key not in _CLIENTS:
            _CLIENTS[key] = boto3.session.Session().client(service, region_name=region)
        return _CLIENTS[key]


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


def make_role(name: str) -> str:
    return plain("iam").create_role(RoleName=name, AssumeRolePolicyDocument=TRUST)["Role"]["Arn"]


class Crash(BaseException):
    """The process died here. A BaseException, so no ``except Exception`` in our code stops it."""


class FakeClock:
    """make_kit(settings, clock=...) reads time from this; the test moves it past a lease."""

    def __init__(self, start: Optional[float] = None) -> None:
        self.now = float(start if start is not None else time.time())

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds


def reliability_settings(**overrides: Any) -> Settings:
    """Settings for the matrix: standard retry mode, few attempts, a short lease."""
    base = Settings.from_env()
    values = dict(retry_mode="standard", max_attempts=3, lease_seconds=LEASE_SECONDS)
    values.update(overrides)
    return dataclasses.replace(base, **values)


# ----------------------------------------------------------------------------- labels

def label_for(service: str, operation: str, params: dict) -> str:
    """``service:Operation``; a DynamoDB PutItem also says whether it takes a lease or writes
    the final record."""
    label = f"{service}:{operation}"
    if service == "dynamodb" and operation == "PutItem":
        item = params.get("Item") or {}
        label += "(lease)" if "lease_owner" in item else "(record)"
    return label


def operation_of(label: str) -> str:
    return label.split(":", 1)[1].split("(")[0]


def service_of(label: str) -> str:
    return label.split(":", 1)[0]


def snake(name: str) -> str:
    """``PutTargets`` -> ``put_targets``: the adapter method the planner's action names."""
    return re.sub(r"(?<!^)(?=[A-Z])", "_", name).lower()


def is_write(label: str) -> bool:
    return aws.is_write(operation_of(label))


# DynamoDB writes whose failure leaves the run's own lease in place (nothing can release it).
RECORD_WRITES = ("dynamodb:PutItem(record)", "dynamodb:DeleteItem")


# ----------------------------------------------------------------------------- fake answers

class _Raw(io.BytesIO):
    def stream(self, **_: Any) -> Iterator[bytes]:
        yield self.getvalue()


THROTTLE_CODES = {"iam": "Throttling", "sts": "Throttling",
                  "dynamodb": "ProvisionedThroughputExceededException"}


def fake_error(protocol: str, url: str, status: int, code: str, message: str) -> AWSResponse:
    """An AWS error answer in the service's wire protocol, as botocore would receive it."""
    if protocol == "query":
        body = (f"<ErrorResponse><Error><Type>{'Receiver' if status >= 500 else 'Sender'}</Type>"
                f"<Code>{code}</Code><Message>{message}</Message></Error>"
                "<RequestId>fault-injected</RequestId></ErrorResponse>").encode()
        headers = {"Content-Type": "text/xml", "x-amzn-RequestId": "fault-injected"}
    elif protocol == "rest-json":
        body = json.dumps({"message": message}).encode()
        headers = {"Content-Type": "application/json", "x-amzn-ErrorType": code,
                   "x-amzn-RequestId": "fault-injected"}
    else:   # json (awsJson1_0 / 1_1): DynamoDB, EventBridge, SQS, KMS
        body = json.dumps({"__type": code, "message": message}).encode()
        headers = {"Content-Type": "application/x-amz-json-1.0",
                   "x-amzn-RequestId": "fault-injected"}
    return AWSResponse(url, status, headers, _Raw(body))


class Strict:
    """Answers the first ``times`` attempts of one operation with an AWS error, as AWS would
    (``protocol`` None: json or query, read from the request's Content-Type)."""

    def __init__(self, service: str, operation: str, protocol: Optional[str], code: str,
                 message: str, times: int = 2, status: int = 400) -> None:
        self.times, self.seen = times, 0
        self.args = (protocol, status, code, message)
        aws.add_hook(f"before-send.{service}.{operation}", self)

    def __call__(self, request, **_):
        self.seen += 1
        if self.seen > self.times:
            return None
        protocol, status, code, message = self.args
        if protocol is None:
            content_type = request.headers.get("Content-Type", b"")
            if isinstance(content_type, bytes):
                content_type = content_type.decode()
            protocol = "json" if "json" in content_type else "query"
        url, request.url = request.url, FAULT_URL   # moto's own handler must pass this one
        return fake_error(protocol, url, status, code, message)


@dataclasses.dataclass
class Fault:
    """What to do to the calls carrying ``label``.

    kind: throttle | server_error | timeout  -- the first ``times`` attempts of each such call fail,
                                                 then the call passes through to AWS (moto);
          hard                               -- every attempt gets 403 AccessDenied;
          crash                              -- the first such call raises Crash, and so does every
                                                 later call until the test revives the process;
          lost_response                      -- the first attempt reaches AWS and changes it,
                                                 then its answer is lost (ReadTimeoutError);
                                                 botocore retries.
    """
    kind: str
    label: str
    times: int = 2
    _attempts: Counter = dataclasses.field(default_factory=Counter)

    def answer(self, tap: "Tap", request: Any, event_name: str, call_id: int, service: str,
               protocol: str) -> Optional[AWSResponse]:
        n = self._attempts[call_id] = self._attempts[call_id] + 1
        op = event_name.split(".")[-1]
        if self.kind == "crash":
            tap.dead = True
            tap.count_injected(self.label)
            raise Crash(f"process died before {self.label}")
        if self.kind == "hard":
            tap.count_injected(self.label)
            return self._respond(request, protocol, 403,
                                 "AccessDenied" if protocol == "query" else "AccessDeniedException",
                                 f"User: arn:aws:sts::{ACCOUNT}:assumed-role/kip/fault is not "
                                 f"authorized to perform: {service}:{op} (fault injected)")
        if self.kind == "lost_response":
            if n > 1:
                return None
            from moto.core.models import botocore_stubber
            botocore_stubber(event_name=event_name, request=request)   # AWS applies it ...
            tap.count_injected(self.label)
            raise ReadTimeoutError(endpoint_url=request.url)           # ... the answer is lost
        if n > self.times:
            return None
        tap.count_injected(self.label)
        if self.kind == "timeout":
            raise ReadTimeoutError(endpoint_url=request.url)
        if self.kind == "throttle":
            return self._respond(request, protocol, 400,
                                 THROTTLE_CODES.get(service, "ThrottlingException"),
                                 "Rate exceeded (fault injected)")
        if self.kind == "server_error":
            status, code = (500, "InternalFailure") if n % 2 else (503, "ServiceUnavailable")
            if protocol == "query":
                code = "InternalError" if status == 500 else "ServiceUnavailable"
            return self._respond(request, protocol, status, code,
                                 "We encountered an internal error (fault injected)")
        raise ValueError(f"unknown fault kind {self.kind!r}")

    @staticmethod
    def _respond(request: Any, protocol: str, status: int, code: str, message: str) -> AWSResponse:
        url = request.url
        request.url = FAULT_URL      # moto's own before-send handler runs next: make it pass
        return fake_error(protocol, url, status, code, message)


class Tap:
    """Sees every AWS call made through chalicelib.aws and, when armed, injects one fault."""

    def __init__(self) -> None:
        self._tls = threading.local()
        self._lock = threading.Lock()
        self._ids = itertools.count()
        self.calls: list[str] = []          # one label per API call
        self.requests: list[tuple] = []     # (label, API parameters), one per API call
        self.sends: Counter = Counter()     # label -> HTTP attempts (retries included)
        self.injected: Counter = Counter()  # label -> faults injected
        self.fault: Optional[Fault] = None
        self.dead = False

    def install(self) -> "Tap":
        aws.add_hook("before-parameter-build.*.*", self._on_build)
        aws.add_hook("before-call.*.*", self._on_call)
        aws.add_hook("before-send.*.*", self._on_send)
        return self

    def reset(self) -> None:
        with self._lock:
            self.calls, self.sends, self.injected = [], Counter(), Counter()
            self.requests = []
            self.fault, self.dead = None, False

    def arm(self, fault: Fault) -> None:
        self.fault = fault

    def disarm(self) -> None:
        self.fault = None

    def count_injected(self, label: str) -> None:
        with self._lock:
            self.injected[label] += 1

    def call_counts(self) -> Counter:
        with self._lock:
            return Counter(self.calls)

    # -- hooks -------------------------------------------------------------------------------
    def _on_build(self, params: dict, model: Any, **_: Any) -> None:
        sm = model.service_model
        label = label_for(sm.service_name, model.name, params or {})
        self._tls.current = (label, next(self._ids), sm.service_name, sm.protocol)
        with self._lock:
            self.requests.append((label, dict(params or {})))

    def _on_call(self, model: Any, **_: Any) -> None:
        label = getattr(self._tls, "current", ("?",))[0]
        with self._lock:
            self.calls.append(label)

    def _on_send(self, request: Any, event_name: str, **_: Any) -> Optional[AWSResponse]:
        current = getattr(self._tls, "current", None)
        if current is None:                   # a client this tap did not see build the call
            return None
        label, call_id, service, protocol = current
        with self._lock:
            self.sends[label] += 1
        if self.dead:
            raise Crash(f"process already dead at {label}")
        fault = self.fault
        if fault is None or fault.label != label:
            return None
        return fault.answer(self, request, event_name, call_id, service, protocol)


# ----------------------------------------------------------------------------- snapshots

VOLATILE_QUEUE_ATTRS = {"CreatedTimestamp", "LastModifiedTimestamp", "ApproximateNumberOfMessages",
                        "ApproximateNumberOfMessagesNotVisible",
                        "ApproximateNumberOfMessagesDelayed"}
RECORD_NOISE = {"version", "write_id", "updated_at", "created_at", "source", "applied", "lease_owner",
                "verified_at", "settling",
                "lease_expires", "spec_hash", "removed"}


def _json(value: Any) -> Any:
    if isinstance(value, str):
        try:
            return json.loads(value)
        except ValueError:
            return value
    return value


def from_ddb(item: Optional[dict]) -> Optional[dict]:
    """A DynamoDB item as plain Python, decoded as the product's store decodes it."""
    from chalicelib.aws.store import _from_ddb
    return _from_ddb(item)


def snapshot(table: str, prefix: str = PREFIX, iam_path: str = IAM_PATH,
             region: str = REGION, substitute: Optional[dict] = None,
             expected_spec_hash: Optional[str] = None, table_region: str = REGION) -> dict:
    """What exists, normalized so two worlds can be compared: SQS, EventBridge, IAM, the record.

    Uses plain boto3 clients (not chalicelib.aws), so the tap never sees these reads.
    """
    sqs, events = plain("sqs", region), plain("events", region)
    iam, ddb = plain("iam", region), plain("dynamodb", table_region)
    out: dict[str, Any] = {"queues": {}, "rules": {}, "policies": {}, "roles": {}, "records": {}}
    for url in sqs.list_queues(QueueNamePrefix=prefix).get("QueueUrls", []):
        attrs = sqs.get_queue_attributes(QueueUrl=url, AttributeNames=["All"])["Attributes"]
        out["queues"][url.rsplit("/", 1)[-1]] = {
            "url": url,
            "attributes": {k: _json(v) for k, v in sorted(attrs.items())
                           if k not in VOLATILE_QUEUE_ATTRS},
            "tags": sqs.list_queue_tags(QueueUrl=url).get("Tags", {}),
        }
    for page in events.get_paginator("list_rules").paginate(NamePrefix=prefix):
        for rule in page["Rules"]:
            name = rule["Name"]
            out["rules"][name] = {
                "arn": rule["Arn"], "state": rule.get("State"),
                "pattern": _json(rule.get("EventPattern")), "description": rule.get("Description"),
                "tags": {t["Key"]: t["Value"] for t in
                         events.list_tags_for_resource(ResourceARN=rule["Arn"])["Tags"]},
                "targets": sorted((t["Id"], t["Arn"]) for t in
                                  events.list_targets_by_rule(Rule=name)["Targets"]),
            }
    for pol in iam.list_policies(Scope="Local", PathPrefix=iam_path)["Policies"]:
        arn = pol["Arn"]
        versions = iam.list_policy_versions(PolicyArn=arn)["Versions"]
        default = iam.get_policy_version(PolicyArn=arn, VersionId=pol["DefaultVersionId"])
        out["policies"][pol["PolicyName"]] = {
            "arn": arn, "path": pol["Path"], "default_version": pol["DefaultVersionId"],
            "document": _json(default["PolicyVersion"]["Document"]),
            "versions": sorted(v["VersionId"] for v in versions),
            "tags": {t["Key"]: t["Value"] for t in iam.list_policy_tags(PolicyArn=arn)["Tags"]},
            "roles": sorted(r["RoleName"] for r in
                            iam.list_entities_for_policy(PolicyArn=arn)["PolicyRoles"]),
        }
    for role in iam.list_roles()["Roles"]:
        out["roles"][role["RoleName"]] = sorted(
            p["PolicyArn"] for p in
            iam.list_attached_role_policies(RoleName=role["RoleName"])["AttachedPolicies"])
    for item in ddb.scan(TableName=table, ConsistentRead=True).get("Items", []):
        rec = from_ddb(item)
        norm = {k: v for k, v in rec.items() if k not in RECORD_NOISE}
        norm["leased"] = bool(rec.get("lease_owner"))
        if expected_spec_hash is not None:
            norm["spec_hash_is_current"] = rec.get("spec_hash") == expected_spec_hash
        out["records"][rec["id"]] = norm
    text = json.dumps(out, sort_keys=True, default=str)
    for actual, placeholder in (substitute or {}).items():
        text = text.replace(actual, placeholder)
    return json.loads(text)


def nothing_left(snap: dict) -> list[str]:
    """What a teardown left behind (empty = nothing)."""
    left = [f"queue {q}" for q in snap["queues"]] + [f"rule {r}" for r in snap["rules"]]
    left += [f"policy {p}" for p in snap["policies"]] + [f"record {r}" for r in snap["records"]]
    for role, attached in snap["roles"].items():
        left += [f"attachment {role} -> {a}" for a in attached if f":policy{IAM_PATH}" in a]
    return left


def leftovers(table: str, prefix: str = PREFIX, iam_path: str = IAM_PATH,
              region: str = REGION, roles: tuple = (ROLE,)) -> list[str]:
    """What of ours exists, with few calls (no item bodies read)."""
    sqs, events, iam, ddb = plain("sqs", region), plain("events", region), plain("iam", region), \
        plain("dynamodb", region)
    left = [f"queue {u.rsplit('/', 1)[-1]}"
            for u in sqs.list_queues(QueueNamePrefix=prefix).get("QueueUrls", [])]
    left += [f"rule {r['Name']}" for r in events.list_rules(NamePrefix=prefix)["Rules"]]
    left += [f"policy {p['PolicyName']}"
             for p in iam.list_policies(Scope="Local", PathPrefix=iam_path)["Policies"]]
    for role in roles:
        with contextlib.suppress(iam.exceptions.NoSuchEntityException):
            left += [f"attachment {role} -> {a['PolicyArn']}" for a in
                     iam.list_attached_role_policies(RoleName=role)["AttachedPolicies"]
                     if f":policy{iam_path}" in a["PolicyArn"]]
    count = ddb.scan(TableName=table, Select="COUNT", ConsistentRead=True)["Count"]
    left += [f"{count} record(s)"] if count else []
    return left


def owned_by(snap: dict, cluster_key: str) -> dict:
    """The part of a snapshot tagged as one cluster's (whatever the names), and its record."""
    def ours(tags: Optional[dict]) -> bool:
        return (tags or {}).get(naming.CLUSTER_TAG) == cluster_key
    policies = {k: v for k, v in snap["policies"].items() if ours(v["tags"])}
    arns = {p["arn"] for p in policies.values()}
    return {
        "queues": {k: v for k, v in snap["queues"].items() if ours(v["tags"])},
        "rules": {k: v for k, v in snap["rules"].items() if ours(v["tags"])},
        "policies": policies,
        "attachments": {role: [a for a in attached if a in arns]
                        for role, attached in snap["roles"].items()
                        if any(a in arns for a in attached)},
        "record": snap["records"].get(cluster_key),
    }


def diff(a: Any, b: Any, path: str = "") -> list[str]:
    """Readable differences between two snapshots (for assertion messages)."""
    if isinstance(a, dict) and isinstance(b, dict):
        out = []
        for k in sorted(set(a) | set(b), key=str):
            if k not in a:
                out.append(f"{path}/{k}: only in actual")
            elif k not in b:
                out.append(f"{path}/{k}: missing (expected {json.dumps(a[k], default=str)[:120]})")
            else:
                out.extend(diff(a[k], b[k], f"{path}/{k}"))
        return out
    if a != b:
        return [f"{path}: expected {json.dumps(a, default=str)[:160]} got "
                f"{json.dumps(b, default=str)[:160]}"]
    return []


# ----------------------------------------------------------------------------- scenario

_WORLDS: list = []


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


@contextlib.contextmanager
def world(settings: Optional[Settings] = None) -> Iterator["Scenario"]:
    """A fresh in-process AWS (moto), fresh clients, the records table and an installed tap."""
    from moto import mock_aws
    settings = settings or reliability_settings()
    from tests.support.pod_identity import distinct_issuers
    with mock_aws(), moto_like_aws(), distinct_issuers():
        _WORLDS.append(settings)
        aws.reset()
        aws.Store(settings).create_table()
        from tests.support.pod_identity import PodIdentity
        PodIdentity(ACCOUNT, REGION)    # moto has no Pod Identity API: the strict-AWS fake
        sc = Scenario(settings)
        try:
            yield sc
        finally:
            sc.shutdown_engines()
            aws.reset()
            _WORLDS.pop()


class Scenario:
    """The cluster ``payments-prod`` with its controller role and a customer KMS key (so every
    kind of call, kms:DescribeKey included, is made), driven through the use cases directly."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.clock = FakeClock()
        self.tap = Tap().install()
        self.cid = naming.ClusterId(ACCOUNT, REGION, CLUSTER)
        self.names = naming.names_for(self.cid, settings.prefix, settings.iam_path)
        self.kms_arn: Optional[str] = None
        self._engines: list = []

    # -- world ------------------------------------------------------------------------------
    def engine(self) -> Any:
        e = make_kit(self.settings, clock=self.clock)
        self._engines.append(e)
        return e

    def crash(self, phase: str, label: str) -> Any:
        """Run ``phase`` in a fresh engine whose process 'dies' just before ``label``: the crash
        propagates, the dead process's other threads stop, and the injector is reset."""
        import pytest
        engine = self.engine()
        self.tap.arm(Fault("crash", label))
        with pytest.raises(Crash):
            self.run(phase, engine)
        engine.workers.shutdown()
        self.tap.disarm()
        self.tap.dead = False
        return engine

    def shutdown_engines(self) -> None:
        for e in self._engines:
            e.workers.shutdown()
        self._engines.clear()

    def request(self) -> ClusterRequest:
        return ClusterRequest(cluster_name=CLUSTER, kms_key_id=KMS_ALIAS)

    def expected_spec_hash(self) -> str:
        req = self.request()
        resolve_role(req, self.cid, self.settings)
        return build_spec(req, self.cid, self.names, self.settings, self.kms_arn).spec_hash

    def snapshot(self) -> dict:
        subs = {self.kms_arn: "<kms-key-arn>"} if self.kms_arn else {}
        return snapshot(self.settings.table_name, self.settings.prefix, self.settings.iam_path,
                        substitute=subs, expected_spec_hash=self.expected_spec_hash())

    def record(self) -> Optional[dict]:
        return aws.Store(self.settings).get(self.cid.key)

    def lease_live(self, rec: Any = "read") -> bool:
        rec = self.record() if rec == "read" else rec
        return bool(rec) and bool(rec.get("lease_owner")) and int(rec.get("lease_expires", 0)) >= self.clock()

    def expire_lease(self) -> None:
        self.clock.advance(self.settings.lease_seconds + 1)

    # -- phases -----------------------------------------------------------------------------
    def setup(self, phase: str) -> None:
        """Bring the world to the start of ``phase`` (no fault armed), then clear the tap."""
        make_cluster(CLUSTER)
        make_role(ROLE)
        kms = plain("kms")
        key = kms.create_key(Description="karpenter interruption queue key",
                             Policy=key_policy())["KeyMetadata"]
        kms.create_alias(AliasName=KMS_ALIAS, TargetKeyId=key["KeyId"])
        self.kms_arn = key["Arn"]
        if phase in ("reconcile", "teardown"):
            drive.provision(self.engine(), self.request())
        if phase == "reconcile":
            self.drift()
        self.tap.reset()

    def drift(self) -> None:
        """Changes made behind the service's back, which a reconcile must repair: a deleted rule,
        a changed queue attribute, a removed tag, a widened controller policy, a detached role."""
        n = self.names
        events, sqs, iam = plain("events"), plain("sqs"), plain("iam")
        events.remove_targets(Rule=n.rule, Ids=[naming.TARGET_ID])
        events.delete_rule(Name=n.rule)
        sqs.set_queue_attributes(QueueUrl=sqs.get_queue_url(QueueName=n.queue)["QueueUrl"],
                                 Attributes={"VisibilityTimeout": "42"})
        sqs.untag_queue(QueueUrl=sqs.get_queue_url(QueueName=n.dlq)["QueueUrl"],
                        TagKeys=[naming.DISCOVERY_TAG])
        wide = {"Version": "2012-10-17", "Statement": [{
            "Effect": "Allow", "Action": ["sqs:*"], "Resource": n.queue_arn}]}
        iam.create_policy_version(PolicyArn=n.policy_arn, PolicyDocument=json.dumps(wide),
                                  SetAsDefault=True)
        iam.detach_role_policy(RoleName=ROLE, PolicyArn=n.policy_arn)

    def run(self, phase: str, engine: Optional[Any] = None) -> Any:
        engine = engine or self.engine()
        if phase == "provision":
            return drive.provision(engine, self.request())
        if phase == "reconcile":
            return drive.reconcile(engine, self.cid)
        if phase == "teardown":
            return drive.teardown(engine, self.cid)
        raise ValueError(phase)

    def run_again(self, phase: str, may_wait_for_lease: bool) -> str:
        """The next run after a failure. Returns how it went (for the report)."""
        try:
            self.run(phase)
            return "next run converged"
        except errors.InProgress:
            if not may_wait_for_lease:
                raise
        self.expire_lease()
        self.run(phase)
        return "next run (after the lease expired) converged"

    def leftovers(self) -> list[str]:
        """A cheap look at whether anything of ours is left (queues, rules, policies, the role's
        attachments, records)."""
        return leftovers(self.settings.table_name, self.settings.prefix, self.settings.iam_path)

    def teardown_leaves_nothing(self) -> list[str]:
        """Tear down (without a fault) and return what is left; [] = nothing."""
        with contextlib.suppress(errors.RecordNotFound):     # nothing there at all
            drive.teardown(self.engine(), self.cid)
        return self.leftovers()

    def record_vs_reality(self, record: dict) -> list[str]:
        """Where the record's resources.*.exists disagrees with what exists."""
        snap = self.snapshot()
        res = record.get("resources") or {}
        wrong = []

        def check(what: str, claimed: Any, actual: bool) -> None:
            if claimed is None:
                wrong.append(f"{what}: not in the record")
            elif bool(claimed) != actual:
                wrong.append(f"{what}: record says {claimed}, reality {actual}")
        check("queue", (res.get("queue") or {}).get("exists"), self.names.queue in snap["queues"])
        check("dlq", (res.get("dlq") or {}).get("exists"), self.names.dlq in snap["queues"])
        for kind, rule in self.names.rules.items():
            r = (res.get("rules") or {}).get(kind) or {}
            check(f"rule {kind}", r.get("exists"), rule in snap["rules"])
            has_target = any(t[0] == naming.TARGET_ID
                             for t in (snap["rules"].get(rule) or {}).get("targets", []))
            check(f"rule {kind} target", r.get("target"), has_target)
        check("policy", (res.get("policy") or {}).get("exists"),
              self.names.policy in snap["policies"])
        check("attachment", (res.get("attachment") or {}).get("attached"),
              self.names.policy_arn in snap["roles"].get(ROLE, []))
        return wrong


# ----------------------------------------------------------------------------- enumeration

_ENUMERATION: Optional[dict] = None


def enumerate_calls() -> dict:
    """Run a clean provision, reconcile (of drift) and teardown with the recording hook.

    Returns {phase: {"calls": Counter(label -> number of calls), "order": [labels, first-seen
    order], "reference": normalized snapshot after the phase}}. A new AWS call in the code shows
    up here, and so in the matrix, without touching the tests.
    """
    global _ENUMERATION
    if _ENUMERATION is None:
        if _WORLDS:
            raise RuntimeError("enumerate_calls() inside a world would share its moto state")
        result = {}
        for phase in PHASES:
            with world() as sc:
                sc.setup(phase)
                sc.run(phase)
                calls = list(sc.tap.calls)
                result[phase] = {"calls": Counter(calls), "order": list(dict.fromkeys(calls)),
                                 "reference": sc.snapshot()}
        _ENUMERATION = result
    return _ENUMERATION


def matrix_cases(kinds: tuple) -> list[tuple[str, str, str]]:
    cases = []
    for phase, info in enumerate_calls().items():
        for label in sorted(info["calls"]):     # sorted: every xdist worker collects the same
            for kind in kinds:
                if kind == "lost_response" and not is_write(label):
                    continue
                cases.append((phase, label, kind))
    return cases
