"""Backfill: adopt the EKS clusters that exist without a record in given account-regions.

``POST /backfill`` and the sweep's adoption (KIP_ADOPT_EXISTING) share ``run``: list the clusters
of every account-region (``eks:ListClusters`` through the member role for other accounts), then
``Engine.adopt`` each cluster without a record (its opt-out tag honoured, EKS Auto Mode clusters
skipped), at most ``AT_ONCE`` clusters at a time. One outcome per cluster; a dry run changes
nothing and shows each cluster's plan. The account-regions are checked (400/403) before any call.
"""
from __future__ import annotations

import time
from collections import Counter
from concurrent.futures import wait
from typing import Iterable, Optional

from chalicelib import aws, errors
from chalicelib.core import naming, tenancy
from chalicelib.converge.executor import Workers
from chalicelib.core.spec import validate_identity
from chalicelib.usecases import clusters, skeleton
from chalicelib.usecases.kit import Kit

AT_ONCE = 4             # clusters (and listings) in flight at once; each run has its own reads
API_BUDGET = 20.0       # seconds: API Gateway cuts the request at 29 s; the rest is reported
# Final answers that mean "this cluster cannot be adopted now", not a failure of kip's.
SKIP_CODES = {"ClusterNotFound", "Conflict", "ProvisioningInProgress"}


def check_scope(kit: Kit, accounts: Iterable[str], regions: Iterable[str]) -> None:
    """400 naming ``regions`` for a region kip cannot serve, 403 naming ``accounts`` for an
    account outside the allow-list; both before any AWS write."""
    settings, own = kit.settings, aws.own_account(kit.settings)
    for region in regions:
        try:
            validate_identity("backfill", own, region, settings,
                              aws.available_regions(naming.partition_for(region)))
        except errors.ValidationError as exc:
            raise errors.ValidationError(f"regions: {exc.message.split(': ', 1)[-1]}",
                                         field="regions", allowed=exc.allowed) from None
    for account in accounts:
        tenancy.require_allowed(account, own, settings, kit.org.organization_of,
                                field="accounts")


def run(kit: Kit, accounts: list[str], regions: list[str], dry_run: bool = False,
        source: str = "backfill", budget: Optional[float] = None,
        skip: frozenset = frozenset()) -> dict:
    """Every cluster of ``accounts`` x ``regions`` without a record (``skip``: keys known to have
    one), adopted; ``budget``: seconds after which no further cluster is started."""
    check_scope(kit, accounts, regions)
    pool = Workers(AT_ONCE)
    try:
        found, failures = discover(kit, accounts, regions, pool)
        deadline = None if budget is None else time.monotonic() + budget
        runs = [pool.submit(_one, kit, a, r, n, dry_run, source, deadline)
                for a, r, n in found if f"{a}/{r}/{n}" not in skip]
        clusters = [f.result() for f in runs]
    finally:
        pool.shutdown()
    return {"dry_run": dry_run, "clusters": clusters, "errors": failures,
            "counts": dict(Counter(c["outcome"] for c in clusters))}


def discover(kit: Kit, accounts: list[str], regions: list[str],
             pool: Optional[Workers] = None) -> tuple[list[tuple[str, str, str]], list[dict]]:
    """(account, region, cluster name) of every EKS cluster in ``accounts`` x ``regions``
    (ListClusters through the member role, ``AT_ONCE`` at a time), and the account-regions
    that could not be listed, each with its error."""
    own_pool = pool is None
    pool = pool or Workers(AT_ONCE)
    try:
        pairs = [(a, r) for a in accounts for r in regions]
        listings = [pool.submit(_list, kit, a, r) for a, r in pairs]
        wait(listings)
    finally:
        if own_pool:
            pool.shutdown()
    found, failures = [], []
    for (account, region), fut in zip(pairs, listings):
        exc = fut.exception()
        if exc is None:
            found += [(account, region, name) for name in fut.result()]
        elif isinstance(exc, errors.KipError):
            failures.append({"account_id": account, "region": region, "code": exc.code,
                             "message": exc.message})
        else:
            raise exc
    return found, failures


def adoption_scope(kit: Kit, problems: list) -> tuple[list[str], list[str]]:
    """The accounts and regions the sweep's adoption (KIP_ADOPT_EXISTING) covers: this account
    and KIP_ALLOWED_ACCOUNTS, or with only KIP_ORG_ID the organization's active accounts
    (``ListAccounts``), in KIP_ADOPT_REGIONS (default: kip's own region). A listing that fails
    is reported in ``problems``; this account is still covered."""
    settings = kit.settings
    own = aws.own_account(settings)
    members = settings.allowed_accounts
    if settings.org_id and not members:
        try:
            members = frozenset(kit.org.member_accounts())
        except errors.KipError as exc:
            problems.append({"cluster": "adoption", "code": exc.code, "message": exc.message})
    return [own, *sorted(members - {own})], list(settings.adopt_regions or (settings.region,))


def _list(kit: Kit, account: str, region: str) -> list[str]:
    return aws.Target(account, region, kit.settings).list_clusters()


def _one(kit: Kit, account: str, region: str, name: str, dry_run: bool, source: str,
         deadline: Optional[float]) -> dict:
    base = {"cluster": f"{account}/{region}/{name}", "account_id": account, "region": region,
            "cluster_name": name}
    if deadline is not None and time.monotonic() > deadline:
        return {**base, "outcome": "skipped", "reason": "not started within this request's time "
                "budget; run the backfill again (clusters done by now are already_managed)"}
    try:
        cid = skeleton.identity(kit, name, account, region)
        record = kit.registry.get(cid)
        if record is not None and record.handler == "auto-mode":
            return {**base, "outcome": "auto_mode", "reason": "EKS Auto Mode handles its "
                    "interruptions (recorded with handler auto-mode)"}
        if record is not None:
            return {**base, "outcome": "already_managed", "status": record.status}
        out = clusters.adopt(kit, cid, source, dry_run=dry_run)
    except errors.AutoModeCluster as exc:
        return {**base, "outcome": "auto_mode", "reason": exc.message}
    except errors.KipError as exc:
        if exc.code in SKIP_CODES:
            return {**base, "outcome": "skipped", "reason": exc.message, "code": exc.code}
        return {**base, "outcome": "failed", "code": exc.code, "message": exc.message}
    if out.opted_out:
        return {**base, "outcome": "opted_out",
                "reason": f"the cluster's {kit.settings.opt_out_tag} tag opts it out"}
    if out.parked:      # "external" (another tool's handler) or "no_karpenter"
        return {**base, "outcome": out.parked,
                **({"existing_handler": out.record.existing_handler}
                   if out.record is not None and out.record.existing_handler else {})}
    if dry_run:
        return {**base, "outcome": "would_provision",
                "plan": [f"{a['op']} {a['name']}" for a in out.actions]}
    return {**base, "outcome": "provisioned", "status": out.record.status,
            "changed": out.changed}


def adopt_configured(kit: Kit, summary: dict, known: set) -> None:
    """The inline sweep's adoption of ``adoption_scope``; results go into its summary."""
    accounts, regions = adoption_scope(kit, summary["errors"])
    try:
        result = run(kit, accounts, regions, source="reconcile", skip=frozenset(known))
    except errors.KipError as exc:
        summary["errors"].append({"cluster": "adoption", "code": exc.code,
                                  "message": exc.message})
        return
    for c in result["clusters"]:
        if c["outcome"] == "provisioned":
            summary["adopted"].append(c["cluster"])
        elif c["outcome"] in ("external", "no_karpenter"):   # recorded, nothing created
            summary.setdefault("recorded", []).append(
                {"cluster": c["cluster"], "status": c["outcome"]})
        elif c["outcome"] == "failed":
            summary["errors"].append({"cluster": c["cluster"], "code": c["code"],
                                      "message": c["message"]})
    for e in result["errors"]:
        summary["errors"].append({"cluster": f"{e['account_id']}/{e['region']}",
                                  "code": e["code"], "message": e["message"]})
