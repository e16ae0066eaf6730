"""One account's ListRoles answer, kept for ``KIP_ROLE_LIST_SECONDS``: IRSA discovery reads every
role's trust policy, and a backfill or sweep asks once per account, not once per cluster. A
lookup that finds nothing in a list older than a tenth of that reads it again (a role made a
moment ago, e.g. right after its cluster), at most that often."""
from __future__ import annotations

import threading
from typing import Any, Callable, Optional


class RoleList:
    def __init__(self, clock: Callable[[], float], seconds: float) -> None:
        self.clock, self.seconds = clock, seconds
        self._lock = threading.Lock()
        self._cache: dict[str, tuple[float, list]] = {}

    def roles(self, account: str, read: Callable[[], list], missed: bool = False,
              newer_than: Optional[float] = None) -> list[Any]:
        """``missed``: the caller found nothing in the list it got: re-read when it is older
        than a tenth of its life. ``newer_than``: re-read unless it was read at or after that
        time (a request a caller waits on, that would otherwise answer no role at all)."""
        now = self.clock()
        with self._lock:
            hit = self._cache.get(account)
            if newer_than is not None:
                usable = hit is not None and hit[0] >= newer_than
            else:
                usable = hit is not None and now - hit[0] < (
                    self.seconds / 10 if missed else self.seconds)
            if hit and usable:
                return hit[1]
        roles = read()
        with self._lock:
            self._cache[account] = (now, roles)
        return roles
