"""Pure: who caused the change being made now, and by which path (the audit trail's actor and
source, and the STS SourceIdentity of sessions into member accounts).

Set once at each entry point (an API route, the EKS trigger, a replay, the sweep, drift repair,
backfill) with :func:`acting`; read by the audit writer and the AWS clients. A context variable,
so concurrent requests and the worker threads they submit to (``Workers`` copies the context)
each see their own.
"""
from __future__ import annotations

import contextlib
import contextvars
import re
from dataclasses import dataclass
from typing import Iterator, Optional

SOURCES = ("api", "trigger", "replay", "sweep", "drift", "backfill", "migration", "unknown")
_SOURCE_IDENTITY_BAD = re.compile(r"[^\w+=,.@-]")


@dataclass(frozen=True)
class Actor:
    who: str = "kip"            # a token subject, an IAM ARN, a CloudTrail userIdentity.arn
    source: str = "unknown"

    @property
    def source_identity(self) -> str:
        """STS ``SourceIdentity`` (2-64 of ``[\\w+=,.@-]``): the actor, with an ARN shortened to
        what names the person (``assumed-role/Role/alice`` -> ``Role@alice``)."""
        who = self.who
        if who.startswith("arn:"):
            resource = who.split(":", 5)[-1]
            parts = resource.split("/")
            who = "@".join(parts[1:3]) if parts[0] == "assumed-role" and len(parts) > 2 \
                else parts[-1]
        cleaned = _SOURCE_IDENTITY_BAD.sub(".", who)[:64]
        return cleaned if len(cleaned) >= 2 else f"kip.{self.source}"[:64]

    @property
    def session_name(self) -> str:
        """STS ``RoleSessionName``: says the path (``kip-api``, ``kip-sweep``...)."""
        return f"kip-{self.source}"[:64]


_current: contextvars.ContextVar[Optional[Actor]] = contextvars.ContextVar("kip_actor",
                                                                           default=None)


def current() -> Actor:
    return _current.get() or Actor()


@contextlib.contextmanager
def acting(who: Optional[str], source: str) -> Iterator[Actor]:
    """Within the block, changes are made by ``who`` (``kip`` when nobody asked) via ``source``."""
    actor = Actor(str(who)[:512] if who else "kip", source if source in SOURCES else "unknown")
    token = _current.set(actor)
    try:
        yield actor
    finally:
        _current.reset(token)
