"""One account's ListRoles answer, kept for ``KIP_ROLE_LIST_SECONDS``: IRSA discovery reads every
role's trust policy, and a backfill or sweep asks once per account, not once per cluster. A
lookup that finds nothing in a list older than a tenth of that reads it again (a role made a
moment ago, e.g. right after its cluster), at most that often."""
from __future__ import annotations

import threading
from typing import Any, Callable


ASKED_SECONDS = 10


class RoleList:
    def __init__(self, clock: Callable[[], float], seconds: float) -> None:
        self.clock, self.seconds = clock, seconds
        self._lock = threading.Lock()
        self._cache: dict[str, tuple[float, list]] = {}

    def roles(self, account: str, read: Callable[[], list], missed: bool = False,
              now_only: bool = False) -> list[Any]:
        """``missed``: the caller found nothing in the list it got: re-read when it is older
        than a tenth of its life; ``now_only`` with it (a request a caller waits on): when it is
        older than ``ASKED_SECONDS`` (a list read by this request, or a burst of them, is
        not read again)."""
        now = self.clock()
        with self._lock:
            hit = self._cache.get(account)
            fresh = (min(ASKED_SECONDS, self.seconds / 10) if now_only else self.seconds / 10) \
                if missed else self.seconds
            if hit and now - hit[0] < fresh:
                return hit[1]
        roles = read()
        with self._lock:
            self._cache[account] = (now, roles)
        return roles
