"""DynamoDB records: one per cluster, written only under a lease and with a version check.

* ``acquire`` takes the cluster's lease with a conditional put: it wins only if nobody holds an
  unexpired lease and the record is still the version we read. The loser gets ``InProgress``
  (someone else is working) or ``StaleWrite`` (the record moved on). A crashed run's lease expires.
* ``save`` and ``delete`` succeed only for the lease holder at the version it last wrote.
"""
from __future__ import annotations

import base64
import binascii
import json
import time
import uuid
from typing import Any, Callable, Optional

from chalicelib.aws import ConditionFailed, Store
from chalicelib.config import Settings
from chalicelib.errors import InProgress, StaleWrite, ValidationError
from chalicelib.naming import ClusterId

HOLDER = "attribute_not_exists(lease_owner) OR lease_expires < :now OR lease_owner = :me"


def new_token() -> str:
    """A unique id: a run's lease owner, or one write's write_id."""
    return uuid.uuid4().hex


class Registry:
    def __init__(self, store: Store, settings: Settings,
                 clock: Callable[[], float] = time.time) -> None:
        self.store, self.settings, self.clock = store, settings, clock

    def get(self, cid: ClusterId) -> Optional[dict]:
        return self.store.get(cid.key)

    def acquire(self, cid: ClusterId, owner: str, current: Optional[dict], fields: dict) -> dict:
        """Take the lease on top of ``current`` (the record as read, or None)."""
        now = self.clock()
        item = dict(current or {})
        item.update(fields)
        item.update(id=cid.key, account_id=cid.account_id, region=cid.region,
                    cluster_name=cid.cluster_name, lease_owner=owner,
                    lease_expires=int(now + self.settings.lease_seconds),
                    version=int((current or {}).get("version", 0)) + 1, write_id=new_token())
        if current is None:
            cond, values = "attribute_not_exists(id)", {}
        else:
            cond = f"version = :v AND ({HOLDER})"
            values = {":v": int(current["version"]), ":now": int(now), ":me": owner}
        try:
            self.store.put(item, cond, values)
        except ConditionFailed as lost:
            if not _is_ours(lost.item, item):
                raise self.lost(cid, lost.item, now) from None
        return item

    def lost(self, cid: ClusterId, item: Optional[dict], now: float) -> Exception:
        if item and item.get("lease_owner") and int(item.get("lease_expires", 0)) >= now:
            return InProgress(
                f"cluster {cid.key} is being changed by another run (status "
                f"{item.get('status')!r}); retry after its lease expires or it finishes",
                lease_expires=int(item["lease_expires"]), status=item.get("status"),
                retry_after=max(1, int(item["lease_expires"] - now)))
        return StaleWrite(f"the record of cluster {cid.key} changed while this run was working "
                          f"(now version {item.get('version') if item else None}); re-read "
                          "and retry")

    def save(self, record: dict, owner: str, release: bool = True) -> dict:
        """Write ``record`` (a version we hold); returns it with the new version."""
        now = self.clock()
        item = dict(record)
        item["version"] = int(record["version"]) + 1
        item["updated_at"] = _iso(now)
        item["write_id"] = new_token()
        if release:
            item.pop("lease_owner", None)
            item.pop("lease_expires", None)
        try:
            self.store.put(item, "version = :v AND lease_owner = :me",
                           {":v": int(record["version"]), ":me": owner})
        except ConditionFailed as lost:
            if not _is_ours(lost.item, item):
                cid = ClusterId(record["account_id"], record["region"], record["cluster_name"])
                raise self._stale(cid, lost.item) from None
        return item

    def delete(self, record: dict, owner: str) -> None:
        try:
            self.store.delete(record["id"], "version = :v AND lease_owner = :me",
                              {":v": int(record["version"]), ":me": owner})
        except ConditionFailed as lost:
            if lost.item is None:   # already gone: our own delete whose answer was lost
                return
            cid = ClusterId(record["account_id"], record["region"], record["cluster_name"])
            raise self._stale(cid, lost.item) from None

    @staticmethod
    def _stale(cid: ClusterId, item: Optional[dict]) -> StaleWrite:
        return StaleWrite(f"lost the write to the record of cluster {cid.key}: another run "
                          f"took it over (version {item.get('version') if item else None}, "
                          f"status {item.get('status') if item else None!r})")

    def page(self, limit: int, next_token: Optional[str], status: Optional[str]
             ) -> tuple[list[dict], Optional[str]]:
        start = None
        if next_token:
            try:
                start = json.loads(base64.urlsafe_b64decode(next_token.encode()))
                if not isinstance(start, dict) or not isinstance(start.get("id"), str):
                    raise ValueError
            except (ValueError, binascii.Error, UnicodeDecodeError, RecursionError):
                raise ValidationError("next_token: not a token this API returned",
                                      field="next_token",
                                      allowed="the next_token of a previous page") from None
        items, last = self.store.page(limit, start, status)
        token = base64.urlsafe_b64encode(json.dumps(last).encode()).decode() if last else None
        return items, token


def _is_ours(found: Optional[dict], written: dict) -> bool:
    """A conditional write that 'lost' against the very item it wrote: botocore retried a write
    whose answer was lost after DynamoDB had applied it. Each write carries a unique write_id."""
    return bool(found) and found.get("write_id") == written["write_id"]


def _iso(ts: float) -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(ts))


def iso_now(clock: Callable[[], float] = time.time) -> str:
    return _iso(clock())


def is_lease_live(record: dict, now: float) -> bool:
    return bool(record.get("lease_owner")) and int(record.get("lease_expires", 0)) >= now


def public_view(record: dict) -> dict[str, Any]:
    """The record as the API shows it (no lease internals)."""
    return {k: v for k, v in record.items() if k not in ("lease_owner", "write_id")}
