"""The rule quota check before a new rule."""
from __future__ import annotations

import threading
from typing import Callable, Optional

from chalicelib import aws
from chalicelib.config import Settings
from chalicelib.converge.executor import Workers, gather
from chalicelib.core import quota


class RuleRoom:
    """The rule quota check before a new rule, with the bus's rule count cached per
    account-region for a minute (a sweep creating many rules counts once, then adds)."""

    TTL = 60.0

    def __init__(self, settings: Settings, clock: Callable[[], float]) -> None:
        self.settings, self.clock = settings, clock
        self._seen: dict[tuple, list] = {}       # (account, region) -> [used, quota, source, at]
        self._lock = threading.Lock()

    def prefetch(self, target: aws.Target, workers: Workers) -> Optional[list]:
        """Start the count and quota reads (alongside a run's second wave) unless cached."""
        with self._lock:
            seen = self._seen.get((target.account, target.region))
            if seen is not None and self.clock() - seen[3] <= self.TTL:
                return None
        return [workers.submit(target.count_rules), workers.submit(target.rule_quota)]

    def claim(self, target: aws.Target, workers: Workers,
              reading: Optional[list] = None) -> None:
        key = (target.account, target.region)
        with self._lock:
            seen = self._seen.get(key)
            if seen is None or self.clock() - seen[3] > self.TTL:
                used, from_sq = gather(reading or [workers.submit(target.count_rules),
                                                   workers.submit(target.rule_quota)])
                limit, source = quota.effective_quota(target.region, from_sq,
                                                      self.settings.rule_quota)
                seen = self._seen[key] = [used, limit, source, self.clock()]
            quota.check_rule_room(seen[0], seen[1], seen[2], self.settings.rule_reserve,
                                  target.account, target.region)
            seen[0] += 1
