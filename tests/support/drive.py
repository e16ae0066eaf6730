"""The kit factory and one-line drivers of the use cases, so a test reads like the API call it
stands for: ``provision(kit, ClusterRequest(cluster_name="a"))``. Each driver builds the cluster
identity the way the edge does (``skeleton.identity``) and calls the use case itself."""
from __future__ import annotations

import time
from typing import Any, Callable, Optional

from chalicelib.config import Settings
from chalicelib.core.spec import ClusterRequest
from chalicelib.usecases import clusters, skeleton, sweep as sweep_uc, teardown as teardown_uc
from chalicelib.usecases.kit import Kit, build


def make_kit(settings: Optional[Settings] = None, clock: Callable[[], float] = time.time) -> Kit:
    return build(settings, clock)


def identity(kit: Kit, name: str, account_id: Optional[str] = None,
             region: Optional[str] = None) -> Any:
    return skeleton.identity(kit, name, account_id, region)


def provision(kit: Kit, req: ClusterRequest, source: str = "api",
              requested_by: Optional[str] = None) -> skeleton.Outcome:
    cid = identity(kit, req.cluster_name, req.account_id, req.region)
    return clusters.provision(kit, cid, req, source, requested_by)


def adopt(kit: Kit, cid: Any, source: str, dry_run: bool = False) -> skeleton.Outcome:
    return clusters.adopt(kit, cid, source, dry_run)


def reconcile(kit: Kit, cid: Any, **kw: Any) -> skeleton.Outcome:
    return clusters.reconcile(kit, cid, **kw)


def teardown(kit: Kit, cid: Any, source: str = "api", dry_run: bool = False,
             requested_by: Optional[str] = None) -> skeleton.Outcome:
    return teardown_uc.teardown(kit, cid, source, dry_run, requested_by)


def describe(kit: Kit, cid: Any) -> Any:
    return clusters.describe(kit, cid)


def page(kit: Kit, limit: int = 50, next_token: Optional[str] = None,
         status: Optional[str] = None) -> Any:
    return clusters.page(kit, limit, next_token, status)


def sweep(kit: Kit, max_records: int = 1000) -> dict:
    return sweep_uc.sweep(kit, max_records)
