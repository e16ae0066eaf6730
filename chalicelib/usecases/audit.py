"""The audit trail: one entry per write, by any path, kept per cluster beyond its record.

Where: one item per cluster in the records table, id ``#audit/<account>/<region>/<cluster>``,
holding the last ``KEEP`` entries oldest first (``Store.append_log``: a conditional UpdateItem
with ``list_append``). Why not an item per entry with a GSI: the table's only key is ``id``, so
listing newest first would need a new index in the table definition of every stage (a
CloudFormation update of a retained table, and every Scan of records would read past them);
one item is one consistent GetItem for ``GET /clusters/{name}/history``, and ``KEEP`` bounds it
(200 entries of ~0.5 KB, far under DynamoDB's 400 KB per item). The id starts with ``#`` and
the item has no ``cluster_name``, so pages of records skip it; its ``expires_at`` (the table's
TTL) is ``KIP_AUDIT_DAYS`` after the last entry, so it outlives the cluster's record.

Who and how come from ``core.actor`` (set by each entry point); an entry never fails the write
it describes: a lost entry is logged as an error (metric-worthy) instead.
"""
from __future__ import annotations

from concurrent.futures import Future
import re
from typing import Iterable, Optional

from aws_lambda_powertools import Logger

from chalicelib import errors
from chalicelib.aws import registry
from chalicelib.core import actor, naming
from chalicelib.usecases.kit import Kit

log = Logger(service="kip", child=True)
KEEP = 200
DAY = 86400
FIELDS = ("at", "actor", "source", "action", "outcome", "resources")
# the record's ``source`` values, as the audit trail names the path
_SOURCES = {"eks-event": "trigger", "reconcile": "api", "backfill": "backfill",
            "sweep": "sweep", "api": "api"}


def key(cid: naming.ClusterId) -> str:
    return f"#audit/{cid.key}"


def record(kit: Kit, cid: naming.ClusterId, action: str, outcome: str,
           resources: Iterable[str] = (), source: Optional[str] = None) -> None:
    """Append one entry: now, the acting caller (``core.actor``), the path (the entry point's,
    else ``source`` as the record names it), ``action``, ``outcome`` and the resources changed."""
    _write(kit, cid, _entry(kit, action, outcome, resources, source))


def begin(kit: Kit, cid: naming.ClusterId, action: str, outcome: str,
          resources: Iterable[str] = (), source: Optional[str] = None) -> Future:
    """``record``, written beside the caller's next write (the record's save): the entry is
    made here, where the acting caller is known; the Future is done once it is written."""
    return kit.workers.submit(_write, kit, cid, _entry(kit, action, outcome, resources, source))


def _entry(kit: Kit, action: str, outcome: str, resources: Iterable[str],
           source: Optional[str]) -> dict:
    who = actor.current()
    path = who.source if who.source != "unknown" else _SOURCES.get(source or "", source)
    return {"at": registry.iso(kit.clock()), "actor": who.who, "source": path or "unknown",
            "action": action, "outcome": outcome, "resources": sorted(set(resources))[:100]}


def _write(kit: Kit, cid: naming.ClusterId, entry: dict) -> None:
    now = kit.clock()
    try:
        kit.registry.store.append_log(key(cid), entry, KEEP,
                                      int(now) + kit.settings.audit_days * DAY)
    except errors.KipError as exc:
        log.error("audit entry not written", extra={"cluster": cid.key, "entry": entry,
                                                    "code": exc.code, "detail": exc.message})


def changed(actions: Iterable) -> list[str]:
    """``<resource>:<name>`` of the actions a run finished (what the entry says changed)."""
    return [f"{a.resource}:{a.name}" for a in actions]


def history(kit: Kit, cid: naming.ClusterId, limit: int = 50,
            next_token: Optional[str] = None) -> tuple[list[dict], Optional[str]]:
    """Newest first. A token is the sequence number of the next (older) entry, so pages stay put
    while entries are appended. 404 when the cluster never had an entry."""
    item = kit.registry.store.get(key(cid))
    if not item:
        raise errors.RecordNotFound(f"no history for cluster {cid.key}", field="cluster_name")
    entries = item.get("entries") or []
    first = int(item.get("n", len(entries))) - len(entries)   # seq of entries[0]
    before = _open(next_token) if next_token else first + len(entries)
    end = max(0, min(len(entries), before - first))
    page = entries[max(0, end - limit):end][::-1]
    start_seq = first + max(0, end - limit)
    token = str(start_seq) if end - limit > 0 else None
    return [{k: e.get(k) for k in FIELDS} for e in page], token


def _open(token: str) -> int:
    if not re.fullmatch(r"[0-9]{1,12}", token):
        raise errors.ValidationError("next_token: not a token this API returned",
                                     field="next_token",
                                     allowed="the next_token of the previous page")
    return int(token)
