"""The one fault injector: AWS failures as botocore sees them, answered in each service's wire
protocol through ``before-send`` hooks registered with chalicelib.aws.add_hook (so they reach
every session and client, including ones made later). Retries stay botocore's own.

* ``before-parameter-build.*.*`` labels each API call (service, operation and, for DynamoDB
  ``PutItem``, whether it writes a lease or the final record) and remembers it for the thread;
* ``before-call.*.*`` records the call (this is how the matrix enumerates every call);
* ``before-send.*.*`` answers an attempt instead of AWS: an ``AWSResponse`` in the service's own
  protocol (JSON for DynamoDB/EventBridge/SQS/KMS, rest-JSON for EKS, query-XML for IAM/STS), or
  raises ``ReadTimeoutError`` (a timeout) or :class:`Crash` (a ``BaseException``: the process
  died between two calls, and our code cannot catch it).

One moto detail: moto's in-process mock is itself a ``before-send`` handler, and botocore calls
every ``before-send`` handler even after one has answered. Ours is registered on a more specific
event name, so it runs first; when it answers, it points that one attempt's request at an
unroutable ``.invalid`` host so moto's handler ignores it (with a real endpoint the returned
response alone already stops the send). Each retry builds a fresh request.

:class:`Strict` answers one operation with a given AWS error; :class:`Fault` + :class:`Tap` run
the reliability matrix; :class:`Calls` only counts the calls.
"""
from __future__ import annotations

import dataclasses
import io
import itertools
import json
import re
import threading
from collections import Counter
from typing import Any, Callable, Iterator, Optional

from botocore.awsrequest import AWSResponse
from botocore.exceptions import ReadTimeoutError

from chalicelib import aws
from tests.support.world import ACCOUNT

FAULT_URL = "https://fault-injected.invalid/"


class Crash(BaseException):
    """The process died here. A BaseException, so no ``except Exception`` in our code stops it."""


# ----------------------------------------------------------------------------- labels

def label_for(service: str, operation: str, params: dict) -> str:
    """``service:Operation``; a DynamoDB PutItem also says whether it takes a lease or writes
    the final record."""
    label = f"{service}:{operation}"
    if service == "dynamodb" and operation == "PutItem":
        item = params.get("Item") or {}
        label += "(lease)" if "lease_owner" in item else "(record)"
    if service == "dynamodb" and operation == "UpdateItem" and \
            str((params.get("Key") or {}).get("id", {}).get("S", "")).startswith("#audit/"):
        label += "(audit)"
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

class Raw(io.BytesIO):
    """A response body botocore can stream."""

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
    return AWSResponse(url, status, headers, Raw(body))


class Strict:
    """Answers the first ``times`` attempts of one operation with an AWS error, as AWS would
    (``protocol`` None: json or query, read from the request's Content-Type; ``match``: only the
    requests it accepts, e.g. one queue's CreateQueue)."""

    def __init__(self, service: str, operation: str, protocol: Optional[str], code: str,
                 message: str, times: int = 2, status: int = 400,
                 match: Optional[Callable[[Any], bool]] = None) -> None:
        self.times, self.seen, self.match = times, 0, match
        self.args = (protocol, status, code, message)
        aws.add_hook(f"before-send.{service}.{operation}", self)

    def __call__(self, request, **_):
        if self.match is not None and not self.match(request):
            return None
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




def json_answer(request: Any, body: dict, content_type: str = "application/x-amz-json-1.1") -> AWSResponse:
    """A 200 answer in the JSON protocol instead of AWS's (moto's own handler skips it)."""
    url, request.url = request.url, FAULT_URL
    return AWSResponse(url, 200, {"Content-Type": content_type}, Raw(json.dumps(body).encode()))


class Calls:
    """Every AWS call chalicelib makes (botocore hook), by operation name."""

    def __init__(self) -> None:
        self.names: list[str] = []
        self._lock = threading.Lock()
        aws.add_hook("before-call.*.*", self.record)

    def record(self, model: Any, **_: Any) -> None:
        with self._lock:
            self.names.append(model.name)

    @property
    def writes(self) -> list[str]:
        return [n for n in self.names if aws.is_write(n)]

    def clear(self) -> None:
        with self._lock:
            self.names.clear()
