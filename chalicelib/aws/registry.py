"""DynamoDB records: one per cluster, written only under a lease and with a version check.

* ``lease`` takes the cluster's lease with a conditional put: it wins only if nobody holds an
  unexpired lease and the record is still the version we read. The loser gets ``InProgress``
  (someone else is working) or ``StaleWrite`` (the record moved on). A crashed run's lease expires.
  A run that stops before any AWS write hands the lease back: the record is as it was.
* ``save`` and ``delete`` succeed only for the lease holder at the version it last wrote: every
  such write is conditional on the holder's lease token (``lease_owner``). A holder whose lease
  expired and was taken over is fenced off: its write fails (``StaleWrite``, saying so) and
  changes nothing.
* ``note`` and ``note_health`` (no lease, no version bump) succeed only at the version read and
  while nobody holds a live lease: a run under lease would overwrite them with its own copy.
"""
from __future__ import annotations

import base64
import binascii
import contextlib
import hashlib
import hmac
import json
import secrets
import threading
import time
import uuid
from concurrent.futures import Future
from typing import Callable, Iterator, Optional

from aws_lambda_powertools import Logger

from chalicelib.aws import ConditionFailed, Store
from chalicelib.config import Settings
from chalicelib.errors import InProgress, KipError, StaleWrite, ValidationError
from chalicelib.core.naming import ClusterId
from chalicelib.core.records import ClusterRecord

# An item of the records table that is not a cluster's record (no ``account_id``: list and scan
# paths skip it): the list tokens' signing secret, when KIP_TOKEN_SECRET is unset.
TOKEN_SECRET_ID = "kip#token-secret"
RETRY_IN_PROGRESS = 10      # seconds: a provision's typical length, well above its median
HOLDER = "attribute_not_exists(lease_owner) OR lease_expires < :now OR lease_owner = :me"
UNLEASED = "(attribute_not_exists(lease_owner) OR lease_expires < :now)"
log = Logger(service="kip", child=True)


def new_token() -> str:
    """A unique id: a run's lease owner, or one write's write_id."""
    return uuid.uuid4().hex


class Lease:
    """A lease being taken (``get`` waits for it) and whether AWS writes have started."""

    def __init__(self, owner: str, taking: Future) -> None:
        self.owner, self._taking, self.writing = owner, taking, False

    def get(self) -> ClusterRecord:
        return self._taking.result()


class Registry:
    def __init__(self, store: Store, settings: Settings,
                 clock: Callable[[], float] = time.time) -> None:
        self.store, self.settings, self.clock = store, settings, clock
        self._secret: Optional[bytes] = None
        self._secret_lock = threading.Lock()

    def get(self, cid: ClusterId) -> Optional[ClusterRecord]:
        item = self.store.get(cid.key)
        return ClusterRecord.model_validate(item) if item else None

    @contextlib.contextmanager
    def lease(self, cid: ClusterId, current: Optional[ClusterRecord], changes: dict,
              submit: Callable[..., Future]) -> Iterator[Lease]:
        """Take the lease (in the background through ``submit``, so reads can overlap it); if the
        block raises before ``lease.writing`` is set, give the lease back."""
        owner = new_token()
        held = Lease(owner, submit(self.acquire, cid, owner, current, changes))
        try:
            yield held
        except BaseException:
            if not held.writing:
                self._give_back(current, held)
            raise

    def _give_back(self, current: Optional[ClusterRecord], held: Lease) -> None:
        try:
            taken = held.get()
        except BaseException:
            return                      # never taken: nothing to give back
        try:
            if current is None:
                self.delete(taken, held.owner)
            else:
                self.save(current.model_copy(update={"version": taken.version}), held.owner)
        except KipError as exc:
            log.warning("lease not released (it expires on its own)", extra={"detail": exc.message})

    def acquire(self, cid: ClusterId, owner: str, current: Optional[ClusterRecord],
                changes: dict) -> ClusterRecord:
        """Take the lease on top of ``current`` (the record as read, or None)."""
        now = self.clock()
        item = current.item() if current else {}
        item.update(changes)
        item.update(id=cid.key, account_id=cid.account_id, region=cid.region,
                    cluster_name=cid.cluster_name, lease_owner=owner,
                    lease_expires=int(now + self.settings.lease_seconds),
                    version=(current.version if current else 0) + 1, write_id=new_token())
        record = ClusterRecord.model_validate(item)
        if current is None:
            cond, values = "attribute_not_exists(id)", {}
        else:
            cond = f"version = :v AND ({HOLDER})"
            values = {":v": current.version, ":now": int(now), ":me": owner}
        try:
            self.store.put(record.item(), cond, values)
        except ConditionFailed as lost:
            if not _is_ours(lost.item, record.write_id):
                raise self.lost(cid, lost.item, now) from None
        return record

    def lost(self, cid: ClusterId, item: Optional[dict], now: float) -> KipError:
        if item and item.get("lease_owner") and int(item.get("lease_expires", 0)) >= now:
            return InProgress(
                f"cluster {cid.key} is being changed by another run (status "
                f"{item.get('status')!r}); retry after its lease expires or it finishes",
                lease_expires=int(item["lease_expires"]), status=item.get("status"),
                # a run takes seconds, not the lease's length: ask again soon (capped by it)
                retry_after=max(1, min(RETRY_IN_PROGRESS, int(item["lease_expires"] - now))))
        return StaleWrite(f"the record of cluster {cid.key} changed while this run was working "
                          f"(now version {item.get('version') if item else None}); re-read "
                          "and retry")

    def check_free(self, record: Optional[ClusterRecord]) -> None:
        """Refuse at once when another run holds the record's lease."""
        now = self.clock()
        if record is not None and record.lease_live(now):
            raise self.lost(record.cid, record.item(), now)

    def save(self, record: ClusterRecord, owner: str) -> ClusterRecord:
        """Write ``record`` (a version we hold) and release the lease; returns what was written."""
        saved = record.model_copy(update={
            "version": record.version + 1, "updated_at": iso(self.clock()),
            "write_id": new_token(), "lease_owner": None, "lease_expires": None})
        try:
            self.store.put(saved.item(), "version = :v AND lease_owner = :me",
                           {":v": record.version, ":me": owner})
        except ConditionFailed as lost:
            if not _is_ours(lost.item, saved.write_id):
                raise self._stale(record.cid, lost.item, owner) from None
        return saved

    def delete(self, record: ClusterRecord, owner: str) -> None:
        try:
            self.store.delete(record.id, "version = :v AND lease_owner = :me",
                              {":v": record.version, ":me": owner})
        except ConditionFailed as lost:
            if lost.item is None:   # already gone: our own delete whose answer was lost
                return
            raise self._stale(record.cid, lost.item, owner) from None

    def _stale(self, cid: ClusterId, item: Optional[dict], owner: str) -> StaleWrite:
        found = item or {}
        holder, until = found.get("lease_owner"), int(found.get("lease_expires") or 0)
        if holder and holder != owner:
            return StaleWrite(
                f"the record of cluster {cid.key} was not written: this run's lease expired and "
                f"another run took the record over (its lease until {iso(until)}); this write "
                "changed nothing. Re-read the record and retry.",
                version=found.get("version"), status=found.get("status"))
        return StaleWrite(f"lost the write to the record of cluster {cid.key}: another run "
                          f"took it over (version {found.get('version')}, status "
                          f"{found.get('status')!r}); this write changed nothing")

    def page(self, limit: int, next_token: Optional[str], status: Optional[str],
             consumer: Optional[str] = None,
             handler: Optional[str] = None) -> tuple[list[ClusterRecord], Optional[str]]:
        start = _open_token(next_token, status, self._key(), consumer, handler) \
            if next_token else None
        items, last = self.store.page(limit, start, status, consumer, handler)
        token = _seal_token(last, status, self._key(), consumer, handler) if last else None
        return [ClusterRecord.model_validate(i) for i in items], token

    def note_health(self, record: ClusterRecord, health: dict) -> bool:
        """Record the consumer's health on ``record`` as read (``note``); False when the record
        moved on meanwhile (the next sweep looks again)."""
        return self.note(record, {"health": health})

    def block(self, cid: ClusterId, fields: dict) -> Optional[ClusterRecord]:
        """Write a ``blocked`` record (no lease: nothing exists to guard) where the cluster has
        none, or has only a blocked one; a record of any other status is left as it is (its own
        last_error says what failed). None when another run wrote first."""
        parked = self.park(cid, "blocked", fields, ("blocked",))
        return parked[0] if parked else None

    def park(self, cid: ClusterId, status: str, fields: dict, replaceable: tuple,
             same: tuple = ()) -> Optional[tuple[ClusterRecord, Optional[ClusterRecord]]]:
        """Record a cluster kip created nothing for (``blocked``, ``external``,
        ``no_karpenter``), with no lease (nothing exists to guard): written where the cluster has
        no record or one whose status is in ``replaceable``; the record written and the one it
        replaced. None otherwise, or when another run wrote first. A record that already has
        ``status`` and the ``same`` fields as given is not written: (it, it)."""
        current = self.get(cid)
        if current is not None and current.status not in replaceable:
            return None
        wanted = {"status": status, "last_error": None, **fields}
        if current is not None and same and all(
                current.get(k) == wanted.get(k) for k in same):
            return current, current
        item = {**(current.item() if current else {}), "last_error": None, **fields,
                "id": cid.key, "account_id": cid.account_id, "region": cid.region,
                "cluster_name": cid.cluster_name, "status": status,
                "version": (current.version if current else 0) + 1, "write_id": new_token(),
                "lease_owner": None, "lease_expires": None}
        if current is not None:
            item["created_at"] = current.created_at or item.get("created_at")
        record = ClusterRecord.model_validate(item)
        cond, values = (("attribute_not_exists(id)", {}) if current is None else
                        ("version = :v", {":v": current.version}))
        try:
            self.store.put(record.item(), cond, values)
        except ConditionFailed:
            return None
        return record, current

    def note(self, record: ClusterRecord, fields: dict) -> bool:
        """Set (or, with None, remove) top-level ``fields`` of ``record`` as read, without a
        lease or a version bump; False when the record moved on meanwhile or another run holds
        its lease."""
        try:
            self.store.set_fields(record.id, fields, record.version, UNLEASED,
                                  {":now": int(self.clock())})
        except ConditionFailed:
            return False
        return True

    def _key(self) -> bytes:
        """The list tokens' signing key: KIP_TOKEN_SECRET, else the deployment's own secret,
        generated once (256 random bits) and kept in the records table; the first container to
        need it creates it (a conditional put), every other one reads that one."""
        if self.settings.token_secret:
            return self.settings.token_secret.encode()
        with self._secret_lock:
            if self._secret is None:
                item = self.store.get(TOKEN_SECRET_ID)
                if not item:
                    item = {"id": TOKEN_SECRET_ID, "secret": secrets.token_hex(32),
                            "created_at": iso(self.clock())}
                    try:
                        self.store.put(item, "attribute_not_exists(id)", {})
                    except ConditionFailed as lost:     # another container made it first
                        item = lost.item or self.store.get(TOKEN_SECRET_ID) or {}
                if not item.get("secret"):
                    raise KipError(f"the list token secret item {TOKEN_SECRET_ID!r} in table "
                                   f"{self.settings.table_name} has no secret; delete it")
                self._secret = str(item["secret"]).encode()
            return self._secret


# ----------------------------------------------------------------------------- rule count

class RuleCount:
    """The rules in use on one account-region's default bus, shared by every container: an item
    of the records table (``quota#<account>#<region>``, no ``account_id``: never listed). Each
    new rule is counted with a conditional increment that fails once ``room`` rules are in use,
    so containers cannot spend the reserve together. The count is taken from ListRules again
    once it is older than ``fresh_seconds`` (rules deleted, or claimed by runs that failed,
    drop out then); one container re-counts, the others count on top of it."""

    NAMES = {"#u": "used", "#t": "counted_at"}

    def __init__(self, store: Store, clock: Callable[[], float], fresh_seconds: float) -> None:
        self.store, self.clock, self.fresh = store, clock, fresh_seconds

    def take(self, account: str, region: str, room: int, recount: Callable[[], int],
             counted: Optional[int] = None) -> tuple[bool, int]:
        """Count one more rule if fewer than ``room`` are in use: (taken, in use before).
        ``counted``: a count the caller read just now (it starts a stale shared count)."""
        key = f"quota#{account}#{region}"
        for _ in range(3):
            now = int(self.clock())
            fresh_after = now - int(self.fresh)
            if counted is None:
                try:
                    item = self.store.update(
                        key, "SET #u = #u + :one",
                        "attribute_exists(#u) AND #t >= :fresh AND #u < :room",
                        {":one": 1, ":fresh": fresh_after, ":room": room}, self.NAMES)
                    return True, int(item["used"]) - 1
                except ConditionFailed as lost:
                    seen = lost.item if lost.item is not None else self.store.get(key)
                    if seen and int(seen.get("counted_at", 0)) >= fresh_after:
                        return False, int(seen.get("used", 0))      # a fresh count: no room
                counted = recount()
            if counted >= room:
                return False, counted
            try:
                self.store.update(key, "SET #u = :used, #t = :now",
                                  "attribute_not_exists(#t) OR #t < :fresh",
                                  {":used": counted + 1, ":now": now, ":fresh": fresh_after},
                                  self.NAMES)
                return True, counted
            except ConditionFailed:
                counted = None      # another container's count is fresh: count on top of it
        raise StaleWrite(f"the shared rule count of account {account} in {region} kept "
                         "changing under this run; retry")


# ----------------------------------------------------------------------------- list tokens
# A token is the DynamoDB start key, bound to the filter it was issued for and signed, so a
# client can neither forge a start key nor reuse a token under another filter.

def _mac(body: bytes, key: bytes) -> str:
    return hmac.new(key, body, hashlib.sha256).hexdigest()[:32]


def _seal_token(start: dict, status: Optional[str], key: bytes,
                consumer: Optional[str] = None, handler: Optional[str] = None) -> str:
    bound = {"k": start, "s": status, **({"c": consumer} if consumer else {}),
             **({"h": handler} if handler else {})}
    body = json.dumps(bound, sort_keys=True, separators=(",", ":")).encode()
    return base64.urlsafe_b64encode(body).decode().rstrip("=") + "." + _mac(body, key)


def _open_token(token: str, status: Optional[str], key: bytes,
                consumer: Optional[str] = None, handler: Optional[str] = None) -> dict:
    bad = ValidationError("next_token: not a token this API returned for this query",
                          field="next_token",
                          allowed="the next_token of the previous page of the same query")
    try:
        encoded, mac = token.rsplit(".", 1)
        body = base64.urlsafe_b64decode(encoded + "=" * (-len(encoded) % 4))
        if not hmac.compare_digest(_mac(body, key), mac):
            raise ValueError
        data = json.loads(body)
        start = data["k"]
        if data.get("s") != status or data.get("c") != consumer or data.get("h") != handler or \
                not isinstance(start, dict) or \
                not all(isinstance(v, str) for v in start.values()):
            raise ValueError
    except (ValueError, KeyError, TypeError, binascii.Error, UnicodeDecodeError, RecursionError):
        raise bad from None
    return start


def _is_ours(found: Optional[dict], write_id: Optional[str]) -> bool:
    """A conditional write that 'lost' against the very item it wrote: botocore retried a write
    whose answer was lost after DynamoDB had applied it. Each write carries a unique write_id."""
    return bool(found) and found.get("write_id") == write_id


def iso(ts: float) -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(ts))
