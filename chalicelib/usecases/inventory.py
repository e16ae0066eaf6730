"""What the portal reads: one cluster's record with its consumer health read now, and pages of
records (``GET /clusters``, optionally by status or by the consumer state last recorded)."""
from __future__ import annotations

from typing import Optional

from chalicelib.core import naming
from chalicelib.core.records import ClusterRecord
from chalicelib.usecases import clusters, queue_health
from chalicelib.usecases.kit import Kit


FILL_CALLS = 4


def describe(kit: Kit, cid: naming.ClusterId) -> dict:
    """The record as the API shows it, with ``health`` read now."""
    record = clusters.describe(kit, cid)
    return {**record.public(), "health": queue_health.read(kit, record)}


def page(kit: Kit, limit: int, next_token: Optional[str], status: Optional[str],
         consumer: Optional[str],
         handler: Optional[str] = None) -> tuple[list[ClusterRecord], Optional[str]]:
    """``GET /clusters``: with ``consumer``, only records whose last recorded health says so;
    with ``handler``, only clusters handled so (kip, external, auto-mode, none). Items that are
    not records (audit logs, counters) share the table and use up a Scan's ``Limit``: the page
    is topped up with up to ``FILL_CALLS`` more reads, each asking only for what is missing, so
    a page never exceeds ``limit`` and its token resumes after it."""
    items, token = clusters.page(kit, limit, next_token, status, consumer, handler)
    for _ in range(FILL_CALLS):
        if len(items) >= limit or not token:
            break
        more, token = clusters.page(kit, limit - len(items), token, status, consumer, handler)
        items = items + more
    return items, token
