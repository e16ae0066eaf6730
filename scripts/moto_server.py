"""moto in server mode on 127.0.0.1, optionally adding a fixed latency to every AWS call.

The latency models AWS control-plane round-trips for the benchmark (`make bench`); it is zero for
the local stack and the tests.

Before serving, two moto SQS deviations from AWS are corrected (as the test harness does), so the
local demo reports no drift that AWS would not show: SetQueueAttributes without ``Policy`` keeps the
queue policy, and a queue with a customer KMS key reports ``SqsManagedSseEnabled: false``.
"""
from __future__ import annotations

import argparse
import signal
import time
from typing import Any, Optional

from moto.server import ThreadedMotoServer


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--port", type=int, default=5000)
    ap.add_argument("--latency-ms", type=int, default=0)
    args = ap.parse_args()
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=args.port, verbose=False)
    install_aws_fidelity()
    if args.latency_ms:
        _install_latency(args.latency_ms / 1000.0)

    def _stop(signum: int, frame: Any) -> None:
        raise KeyboardInterrupt
    signal.signal(signal.SIGTERM, _stop)
    signal.signal(signal.SIGHUP, _stop)
    server.start()
    try:
        while True:
            time.sleep(3600)
    except KeyboardInterrupt:
        pass
    finally:
        server.stop()


def fidelity_set_attributes(original: Any) -> Any:
    """moto's ``Queue._set_attributes``, corrected where it differs from AWS (moto 5.2.5):
    SetQueueAttributes without ``Policy`` keeps the policy, and a customer KMS key turns
    SQS-managed encryption off. The local stack installs it; the tests patch it in."""
    def _set_attributes(self: Any, attributes: dict, now: Optional[float] = None) -> None:
        keep = getattr(self, "_policy_json", None) if "Policy" not in attributes else None
        original(self, attributes, now)
        if keep is not None:
            self._policy_json = keep
        if attributes.get("KmsMasterKeyId"):
            self.sqs_managed_sse_enabled = "false"

    _set_attributes._kip_fidelity = True  # type: ignore[attr-defined]
    return _set_attributes


def install_aws_fidelity() -> None:
    """Make moto's SQS behave as AWS where kip would otherwise see false drift (moto 5.2.5),
    answer EKS Pod Identity as AWS does for clusters without associations, and give each EKS
    cluster its own OIDC issuer."""
    from moto.eks.models import Cluster
    from moto.sqs.models import Queue
    original = Queue._set_attributes
    if getattr(original, "_kip_fidelity", False):
        return
    _set_attributes = fidelity_set_attributes(original)
    Queue._set_attributes = _set_attributes  # type: ignore[method-assign]
    Cluster.__init__ = with_own_issuer(Cluster.__init__)  # type: ignore[method-assign]
    _install_pod_identity()


def with_own_issuer(init: Any) -> Any:
    """moto gives every EKS cluster the same OIDC issuer (one random id per process); AWS gives
    each cluster its own, which is what ties an IRSA trust to one cluster: ``init`` (moto's
    ``Cluster.__init__``) followed by a new issuer for the cluster (a cluster made again gets a
    new one, as in AWS)."""
    import hashlib
    import uuid

    def own(self: Any, *args: Any, **kw: Any) -> None:
        init(self, *args, **kw)
        region = self.arn.split(":")[3]
        seed = f"{self.arn}/{uuid.uuid4()}".encode()
        self.identity = {"oidc": {"issuer": f"https://oidc.eks.{region}.amazonaws.com/id/"
                                            f"{hashlib.sha256(seed).hexdigest()[:32].upper()}"}}
    return own


def _install_pod_identity() -> None:
    """moto has no Pod Identity API (404 'Not yet implemented'): the local stack answers
    ListPodIdentityAssociations with no associations and DescribePodIdentityAssociation with
    ResourceNotFoundException, in EKS's rest-json (tests/support/pod_identity.py is the
    in-process fake that also holds associations)."""
    import json
    import re

    from moto.moto_server.werkzeug_app import DomainDispatcherApplication

    original = DomainDispatcherApplication.__call__
    path = re.compile(r"^/clusters/[^/]+/pod-identity-associations(/[^/]+)?/?$")

    def call(self, environ, start_response):  # type: ignore[no-untyped-def]
        m = path.match(environ.get("PATH_INFO", ""))
        if m is None or environ.get("REQUEST_METHOD") != "GET":
            return original(self, environ, start_response)
        if m.group(1):
            status, headers = "404 Not Found", [("x-amzn-ErrorType", "ResourceNotFoundException")]
            body = {"message": "No Pod Identity association found"}
        else:
            status, headers, body = "200 OK", [], {"associations": []}
        start_response(status, [("Content-Type", "application/json"), *headers])
        return [json.dumps(body).encode()]

    DomainDispatcherApplication.__call__ = call  # type: ignore[method-assign]


def _install_latency(delay: float) -> None:
    """Wrap moto's WSGI app so each AWS request (not moto's own /moto-api) waits ``delay``."""
    from moto.moto_server.werkzeug_app import DomainDispatcherApplication

    original = DomainDispatcherApplication.__call__

    def slow(self, environ, start_response):  # type: ignore[no-untyped-def]
        if not environ.get("PATH_INFO", "").startswith("/moto-api"):
            time.sleep(delay)
        return original(self, environ, start_response)

    DomainDispatcherApplication.__call__ = slow  # type: ignore[method-assign]


if __name__ == "__main__":
    main()
