"""Team scopes applied to one request (``core.scopes.Access``): who may read which cluster
(others get the very 404 of a missing record) and who may change it (403 naming the caller's
scopes). The record's ``owner_team`` is read here when the decision needs it."""
from __future__ import annotations

import json
from typing import Iterable, Optional

from chalicelib import errors
from chalicelib.core import naming
from chalicelib.core.records import ClusterRecord
from chalicelib.core.scopes import Access
from chalicelib.usecases import clusters
from chalicelib.usecases.kit import Kit


def _owner(kit: Kit, cid: naming.ClusterId) -> Optional[str]:
    record = kit.registry.get(cid)
    return record.owner_team if record is not None else None


def check_read(kit: Kit, access: Access, cid: naming.ClusterId) -> None:
    """404 (as for a missing record) unless one of the caller's teams covers the cluster or
    owns its record."""
    if access.sees_all or access.covering(cid.account_id, cid.cluster_name):
        return
    if not access.can_read(cid.account_id, cid.cluster_name, _owner(kit, cid)):
        raise clusters.missing(cid)


def visible(access: Access, records: Iterable[ClusterRecord]) -> list[ClusterRecord]:
    """The records of a page the caller may see (a page may hold fewer items, even none)."""
    return [r for r in records if access.can_read(r.account_id, r.cluster_name, r.owner_team)]


def write_team(kit: Kit, access: Access, cid: naming.ClusterId,
               wanted: Optional[str] = None) -> Optional[str]:
    """The team a write acts for (the record's ``owner_team``); 403 naming the caller's team
    scopes when none of its teams may change this cluster."""
    if access.unrestricted:
        return wanted
    try:
        return access.write_team(cid.account_id, cid.cluster_name, _owner(kit, cid), wanted)
    except PermissionError as exc:
        raise refused(access, f"cluster {cid.key} may not be changed by this token: {exc}",
                      "team" if wanted else "cluster_name") from None


def require_admin(access: Access, what: str) -> None:
    if not access.sees_all:
        raise refused(access, f"{what} is for the admin teams only", None)


def refused(access: Access, message: str, field: Optional[str]) -> errors.KipError:
    scopes = access.describe()
    return errors.Forbidden(f"{message}; the token's team scopes: "
                            f"{json.dumps(scopes, sort_keys=True)}"[:2000], field=field,
                            scopes=scopes)
