"""What the portal reads: one cluster's record with its consumer health read now, and pages of
records (``GET /clusters``, optionally by status or by the consumer state last recorded)."""
from __future__ import annotations

from typing import Optional

from chalicelib.core import naming
from chalicelib.core.records import ClusterRecord
from chalicelib.usecases import clusters, queue_health
from chalicelib.usecases.kit import Kit


def describe(kit: Kit, cid: naming.ClusterId) -> dict:
    """The record as the API shows it, with ``health`` read now."""
    record = clusters.describe(kit, cid)
    return {**record.public(), "health": queue_health.read(kit, record)}


def page(kit: Kit, limit: int, next_token: Optional[str], status: Optional[str],
         consumer: Optional[str],
         handler: Optional[str] = None) -> tuple[list[ClusterRecord], Optional[str]]:
    """``GET /clusters``: with ``consumer``, only records whose last recorded health says so;
    with ``handler``, only clusters handled so (kip, external, auto-mode, none)."""
    return clusters.page(kit, limit, next_token, status, consumer, handler)
