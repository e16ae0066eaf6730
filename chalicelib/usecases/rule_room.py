"""The rule quota check before a new rule."""
from __future__ import annotations

import threading
from typing import Callable, Optional

from chalicelib import aws
from chalicelib.aws.registry import RuleCount
from chalicelib.config import Settings
from chalicelib.converge.executor import Workers, gather
from chalicelib.core import quota


class RuleRoom:
    """The rule quota check before a new rule. The count of rules in use is shared by every
    container (``aws.registry.RuleCount``, in the records table): each new rule takes one with a
    conditional increment, so concurrent containers cannot together eat into the reserve. The
    quota itself (Service Quotas) is kept per container for a minute, and so is when this
    container last read the count (its next run skips the early reads)."""

    TTL = 60.0

    def __init__(self, settings: Settings, clock: Callable[[], float]) -> None:
        self.settings, self.clock = settings, clock
        self._seen: dict[tuple, list] = {}       # (account, region) -> [quota, source, at]
        self._lock = threading.Lock()
        self._count: Optional[RuleCount] = None

    def _fresh(self, key: tuple) -> Optional[list]:
        seen = self._seen.get(key)
        return seen if seen is not None and self.clock() - seen[2] <= self.TTL else None

    def prefetch(self, target: aws.Target, workers: Workers) -> Optional[list]:
        """Start the count and quota reads (alongside a run's second wave) unless read lately."""
        with self._lock:
            if self._fresh((target.account, target.region)) is not None:
                return None
        return [workers.submit(target.count_rules), workers.submit(target.rule_quota)]

    def claim(self, target: aws.Target, workers: Workers,
              reading: Optional[list] = None) -> None:
        """Take one rule from the shared count, or refuse (``RuleQuotaExceeded``) when that
        would leave fewer than KIP_RULE_RESERVE free."""
        key = (target.account, target.region)
        counted: Optional[int] = None
        with self._lock:
            seen = self._fresh(key)
            if seen is None:
                counted, from_sq = gather(reading or [workers.submit(target.count_rules),
                                                      workers.submit(target.rule_quota)])
                limit, source = quota.effective_quota(target.region, from_sq,
                                                      self.settings.rule_quota)
                seen = self._seen[key] = [limit, source, self.clock()]
            elif reading:
                counted = gather(reading)[0]
            if self._count is None:
                self._count = RuleCount(aws.Store(self.settings), self.clock, self.TTL)
            count = self._count
        limit, source = seen[0], seen[1]
        reserve = self.settings.rule_reserve

        taken, used = count.take(target.account, target.region, limit - reserve,
                                 target.count_rules, counted)
        if not taken:
            quota.check_rule_room(max(used, limit - reserve), limit, source, reserve,
                                  target.account, target.region)
