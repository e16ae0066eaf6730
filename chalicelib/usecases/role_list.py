"""One account's ListRoles answer, kept for ``KIP_ROLE_LIST_SECONDS``: IRSA discovery reads every
role's trust policy, and a backfill or sweep asks once per account, not once per cluster."""
from __future__ import annotations

import threading
from typing import Any, Callable


class RoleList:
    def __init__(self, clock: Callable[[], float], seconds: float) -> None:
        self.clock, self.seconds = clock, seconds
        self._lock = threading.Lock()
        self._cache: dict[str, tuple[float, list]] = {}

    def roles(self, account: str, read: Callable[[], list]) -> list[Any]:
        now = self.clock()
        with self._lock:
            hit = self._cache.get(account)
            if hit and now - hit[0] < self.seconds:
                return hit[1]
        roles = read()
        with self._lock:
            self._cache[account] = (now, roles)
        return roles
