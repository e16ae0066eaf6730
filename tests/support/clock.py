"""The one settable clock: make_kit(settings, clock=Clock()) reads time from it, and a test moves
it past leases, grace periods and windows."""
from __future__ import annotations

import time
from typing import Optional

START = 1_800_000_000.0


class Clock:
    """Stands still at ``now`` (``START`` by default; ``Clock(time.time())`` for the wall clock's
    present) until the test advances it."""

    def __init__(self, now: Optional[float] = START) -> None:
        self.now = float(time.time() if now is None else now)

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds
