"""Pure: conditional requests on a cluster's record (RFC 9110 section 13.1.1, RFC 6585).

The record's ETag is its version, quoted (``"7"``): ``GET /clusters/{name}`` answers it, and a
change made against what the caller saw sends it back in ``If-Match``. ``DELETE`` requires it
(428 without), ``POST /clusters`` and reconcile accept it; a version that is no longer current
is 412 and nothing changes. ``If-Match: *`` matches any current record (none: 412).
"""
from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Optional

from chalicelib.errors import PreconditionFailed, PreconditionRequired, ValidationError

HEADER = "If-Match"
_TAG = re.compile(r'\s*(W/)?"([^"]*)"\s*')


@dataclass(frozen=True)
class IfMatch:
    any: bool = False
    versions: frozenset = frozenset()   # the strong tags' versions (weak tags never match)


def etag(version: int) -> str:
    return f'"{version}"'


def parse(header: Optional[str]) -> Optional[IfMatch]:
    """The header's value as sent (None: absent); 400 when it is not a list of entity tags."""
    if header is None:
        return None
    text = header.strip()
    if text == "*":
        return IfMatch(any=True)
    versions, rest = set(), text
    while rest:
        m = _TAG.match(rest)
        if not m:
            raise ValidationError(f"{HEADER}: {header[:60]!r} is not an entity tag", field=HEADER,
                                  allowed='the ETag of GET /clusters/{name}, e.g. "7", or *')
        if not m.group(1) and m.group(2).isdecimal() and m.group(2).isascii():
            versions.add(int(m.group(2)))
        rest = rest[m.end():].lstrip()
        if rest.startswith(","):
            rest = rest[1:]
        elif rest:
            raise ValidationError(f"{HEADER}: entity tags are separated by commas", field=HEADER,
                                  allowed='"7" or "6", "7" or *')
    return IfMatch(versions=frozenset(versions))


def check(current: Optional[int], condition: Optional[IfMatch], required: bool,
          what: str) -> None:
    """Refuse ``what`` before any write: 428 when required and absent, 412 when the record's
    current version (None: no record) does not match."""
    if condition is None:
        if required:
            raise PreconditionRequired(
                f"{what} needs the header {HEADER} with the record's ETag (from GET "
                "/clusters/{name}), so a change made since is never overwritten; nothing was "
                "changed", field=HEADER, allowed='the ETag, e.g. "7"')
        return
    if current is not None and (condition.any or current in condition.versions):
        return
    now = etag(current) if current is not None else "none (no record)"
    raise PreconditionFailed(
        f"{what}: {HEADER} does not match the record's current ETag {now}; read it again "
        "(GET /clusters/{name}) and decide again; nothing was changed", field=HEADER,
        allowed=etag(current) if current is not None else "no If-Match: there is no record")
