"""Token buckets per API key, in process.

A bucket holds at most ``burst`` tokens and refills at ``requests_per_minute``
a minute; a call takes one token (a bulk call one per item). Several replicas
will share buckets through Redis in a later issue; until then each process
limits on its own.
"""

from __future__ import annotations

import datetime
import time
from collections.abc import Callable
from dataclasses import dataclass


@dataclass
class _Bucket:
    tokens: float
    updated: float
    rate_per_second: float
    capacity: float


class RateLimiter:
    """Decides whether a key may make a call now, and if not, how long until it may."""

    def __init__(self, clock: Callable[[], float] = time.monotonic) -> None:
        self._clock = clock
        self._buckets: dict[str, _Bucket] = {}

    def try_acquire(
        self, key_id: str, requests_per_minute: int, burst: int, cost: int = 1
    ) -> datetime.timedelta | None:
        """Take ``cost`` tokens from the key's bucket.

        Returns ``None`` when the call may go ahead, else the wait after which
        it would. A bulk call costing more than the bucket holds goes ahead
        when the bucket is full and leaves it in debt, so it still counts by
        its size: the key then waits until the debt is refilled.
        """
        now = self._clock()
        rate = requests_per_minute / 60.0
        bucket = self._buckets.get(key_id)
        if bucket is None or bucket.rate_per_second != rate or bucket.capacity != burst:
            # New key, or its limit changed: start from a full bucket of the new size.
            bucket = _Bucket(tokens=float(burst), updated=now, rate_per_second=rate, capacity=float(burst))
            self._buckets[key_id] = bucket
        bucket.tokens = min(bucket.capacity, bucket.tokens + (now - bucket.updated) * rate)
        bucket.updated = now
        if cost <= bucket.tokens or (cost > bucket.capacity and bucket.tokens >= bucket.capacity):
            bucket.tokens -= cost
            return None
        missing = min(float(cost), bucket.capacity) - bucket.tokens
        return datetime.timedelta(seconds=max(missing / rate, 0.001))

    def forget(self, key_id: str) -> None:
        """Drop a key's bucket (when the key is revoked)."""
        self._buckets.pop(key_id, None)
