"""``RecentCounts``: counts kept for a moment, so a hot path skips a query without missing other processes' writes
for long."""

from __future__ import annotations

import time
from typing import Callable, Hashable


class RecentCounts:
    """Per-key counts trusted for ``ttl`` seconds. Failure logs use it: most writes find no failures to clear, and
    asking the database each time would cost a query per batch; but workers and other clients record failures too,
    and a count cached forever would hide them (their rows would never be retried nor cleared here)."""

    def __init__(self, ttl: float = 1.0):
        self.ttl = ttl
        self._seen: dict[Hashable, tuple[int, float]] = {}

    def get(self, key: Hashable, fetch: Callable[[], int]) -> int:
        now = time.monotonic()
        hit = self._seen.get(key)
        if hit is None or now - hit[1] > self.ttl:
            hit = (fetch(), now)
            self._seen[key] = hit
        return hit[0]

    def forget(self, key: Hashable | None = None) -> None:
        """Forget one key's count (this process changed it), or every count."""
        if key is None:
            self._seen.clear()
        else:
            self._seen.pop(key, None)
