"""EKS Pod Identity as AWS answers it, for moto (which has no Pod Identity API: its mock answers
404 "Not yet implemented"). A ``before-send`` hook on ListPodIdentityAssociations and
DescribePodIdentityAssociation answers in EKS's wire protocol (rest-json: ``GET
/clusters/{name}/pod-identity-associations[/{associationId}]``, filters and paging in the query
string, errors as ``x-amzn-ErrorType``), from associations a test adds with :meth:`associate`.

Registered through ``chalicelib.aws.add_hook`` like the strict-AWS layer's other answers
(tests/reliability/harness.py), so it reaches every session and client, made now or later.
"""
from __future__ import annotations

import contextlib
import json
import threading
import uuid
from typing import Iterator
from typing import Optional
from urllib.parse import parse_qs, unquote, urlsplit

from botocore.awsrequest import AWSResponse

from chalicelib import aws
from tests.support.faults import FAULT_URL, Raw as _Raw, fake_error

PAGE = 100      # ListPodIdentityAssociations' default and largest maxResults
_CURRENT: list = []


def current() -> "PodIdentity":
    """The fake of the running world (the last one made)."""
    return _CURRENT[-1]


class PodIdentity:
    """The account-region's associations: ``{cluster: [association]}``."""

    def __init__(self, account: str, region: str) -> None:
        self.account, self.region = account, region
        self.associations: dict[str, list[dict]] = {}
        self.calls: list[str] = []
        self._lock = threading.Lock()
        aws.add_hook("before-send.eks.ListPodIdentityAssociations", self._list)
        aws.add_hook("before-send.eks.DescribePodIdentityAssociation", self._describe)
        _CURRENT[:] = [self]

    def associate(self, cluster: str, namespace: str, service_account: str, role_arn: str,
                  target_role_arn: Optional[str] = None) -> str:
        aid = "a-" + uuid.uuid4().hex[:17]
        assoc = {"clusterName": cluster, "namespace": namespace,
                 "serviceAccount": service_account, "roleArn": role_arn, "associationId": aid,
                 "associationArn": f"arn:aws:eks:{self.region}:{self.account}:"
                                   f"podidentityassociation/{cluster}/{aid}",
                 "tags": {}, "createdAt": 1.8e9, "modifiedAt": 1.8e9, "disableSessionTags": False}
        if target_role_arn:
            assoc["targetRoleArn"] = target_role_arn
        with self._lock:
            self.associations.setdefault(cluster, []).append(assoc)
        return aid

    # -- the wire --------------------------------------------------------------------------
    @staticmethod
    def _answer(request, status: int, body: dict) -> AWSResponse:
        url, request.url = request.url, FAULT_URL       # moto's own before-send must pass it
        return AWSResponse(url, status, {"Content-Type": "application/json",
                                         "x-amzn-RequestId": "pod-identity-fake"},
                           _Raw(json.dumps(body).encode()))

    def _parts(self, request) -> tuple[list[str], dict]:
        split = urlsplit(request.url)
        parts = [unquote(p) for p in split.path.strip("/").split("/")]
        return parts, {k: v[0] for k, v in parse_qs(split.query).items()}

    def _list(self, request, **_):
        if request.url.startswith(FAULT_URL):   # a fault hook (``before-send.*.*``, which runs
            return None                         # first) answered this attempt already
        parts, query = self._parts(request)     # clusters/{name}/pod-identity-associations
        self.calls.append("ListPodIdentityAssociations")
        with self._lock:
            found = [a for a in self.associations.get(parts[1], [])
                     if query.get("namespace") in (None, a["namespace"]) and
                     query.get("serviceAccount") in (None, a["serviceAccount"])]
        size = int(query.get("maxResults", PAGE))
        if not 1 <= size <= PAGE:
            url, request.url = request.url, FAULT_URL
            return fake_error("rest-json", url, 400, "InvalidParameterException",
                              "maxResults must be between 1 and 100")
        start = int(query.get("nextToken", "0"))
        page = found[start:start + size]
        keys = ("clusterName", "namespace", "serviceAccount", "associationArn",
                "associationId", "ownerArn")
        body: dict = {"associations": [{k: a[k] for k in keys if k in a} for a in page]}
        if start + size < len(found):
            body["nextToken"] = str(start + size)
        return self._answer(request, 200, body)

    def _describe(self, request, **_):
        if request.url.startswith(FAULT_URL):
            return None
        parts, _query = self._parts(request)    # clusters/{name}/pod-identity-associations/{id}
        self.calls.append("DescribePodIdentityAssociation")
        with self._lock:
            match = [a for a in self.associations.get(parts[1], [])
                     if a["associationId"] == parts[3]]
        if not match:
            url, request.url = request.url, FAULT_URL
            return fake_error("rest-json", url, 404, "ResourceNotFoundException",
                              f"No association found for id {parts[3]}")
        return self._answer(request, 200, {"association": match[0]})


@contextlib.contextmanager
def distinct_issuers() -> Iterator[None]:
    """moto gives every EKS cluster the same OIDC issuer (one random id per process); AWS gives
    each cluster its own, which is what ties an IRSA trust to one cluster. Each cluster made
    while this holds gets its own issuer."""
    from unittest import mock

    from moto.eks.models import Cluster
    from scripts.moto_server import with_own_issuer
    with mock.patch.object(Cluster, "__init__", with_own_issuer(Cluster.__init__)):
        yield
