"""Recent activity in one-second buckets: what GetMetrics reports over a trailing window (at most 24 hours).

Prometheus counts since the process started; an operator asking "how is it going" wants the last minute.
The engine records what each commit accepted, completed and failed, the API layer records how long
each SubmitPayment took, and the webhook dispatcher each delivery attempt. Response times go into
logarithmic bins (each 10% wider than the last), so a percentile read from them is within 10% of the
exact one, in constant memory per second.

The buckets live in memory: after a restart the window starts empty.
"""

from __future__ import annotations

import bisect
import collections
import math
import time
from collections.abc import Callable
from dataclasses import dataclass, field

MAX_WINDOW_SECONDS = 86_400
# Bin upper bounds in seconds: 50 µs growing by 10% up to 60 s (about 150 bins).
_BOUNDS: tuple[float, ...] = tuple(5e-5 * 1.1**i for i in range(int(math.log(60 / 5e-5, 1.1)) + 2))


@dataclass
class _Second:
    accepted: int = 0
    completed: int = 0
    failed: int = 0
    volume: collections.Counter[str] = field(default_factory=collections.Counter)
    responses: int = 0
    response_seconds: float = 0.0
    bins: collections.Counter[int] = field(default_factory=collections.Counter)
    webhook_attempts: int = 0
    webhook_successes: int = 0
    webhook_seconds: float = 0.0
    webhook_retries: int = 0
    webhook_failures: int = 0


@dataclass(frozen=True)
class WindowFigures:
    """Activity over a window."""

    seconds: float
    accepted: int
    completed: int
    failed: int
    volume: dict[str, int]
    responses: int
    mean_response_seconds: float
    p99_response_seconds: float
    webhook_attempts: int = 0
    webhook_successes: int = 0
    mean_webhook_seconds: float = 0.0
    webhook_retries: int = 0
    webhook_failures: int = 0


class Activity:
    """Counts per second for the last 24 hours."""

    def __init__(self, now: Callable[[], float] = time.time) -> None:
        self._now = now
        self._seconds: collections.OrderedDict[int, _Second] = collections.OrderedDict()

    def _bucket(self) -> _Second:
        second = int(self._now())
        bucket = self._seconds.get(second)
        if bucket is None:
            bucket = self._seconds[second] = _Second()
            while self._seconds and next(iter(self._seconds)) <= second - MAX_WINDOW_SECONDS:
                self._seconds.popitem(last=False)
        return bucket

    def settled(self, accepted: list[tuple[str, int]], completed: int, failed: int) -> None:
        """A commit accepted these (token, amount) payments and completed and failed so many."""
        bucket = self._bucket()
        bucket.accepted += len(accepted)
        for token, amount in accepted:
            bucket.volume[token] += amount
        bucket.completed += completed
        bucket.failed += failed

    def response(self, seconds: float) -> None:
        """A SubmitPayment was answered after ``seconds``."""
        bucket = self._bucket()
        bucket.responses += 1
        bucket.response_seconds += seconds
        bucket.bins[bisect.bisect_left(_BOUNDS, seconds)] += 1

    def webhook_attempt(self, seconds: float, success: bool, *, retry: bool, failed: bool) -> None:
        """A webhook attempt took ``seconds``; ``retry`` when it was not its delivery's first, ``failed`` when
        its delivery failed for good with it."""
        bucket = self._bucket()
        bucket.webhook_attempts += 1
        bucket.webhook_successes += success
        bucket.webhook_seconds += seconds
        bucket.webhook_retries += retry
        bucket.webhook_failures += failed

    def window(self, seconds: float) -> WindowFigures:
        """The figures of the trailing ``seconds`` (the current, partial second included)."""
        start = self._now() - seconds
        accepted = completed = failed = responses = 0
        hook_attempts = hook_successes = hook_retries = hook_failures = 0
        total = hook_seconds = 0.0
        volume: collections.Counter[str] = collections.Counter()
        bins: collections.Counter[int] = collections.Counter()
        for second, bucket in reversed(self._seconds.items()):
            if second < int(start):
                break
            accepted += bucket.accepted
            completed += bucket.completed
            failed += bucket.failed
            volume.update(bucket.volume)
            responses += bucket.responses
            total += bucket.response_seconds
            bins.update(bucket.bins)
            hook_attempts += bucket.webhook_attempts
            hook_successes += bucket.webhook_successes
            hook_seconds += bucket.webhook_seconds
            hook_retries += bucket.webhook_retries
            hook_failures += bucket.webhook_failures
        p99 = 0.0
        if responses:
            rank = math.ceil(responses * 0.99)
            seen = 0
            for index in sorted(bins):
                seen += bins[index]
                if seen >= rank:
                    p99 = _BOUNDS[min(index, len(_BOUNDS) - 1)]
                    break
        return WindowFigures(
            seconds=seconds,
            accepted=accepted,
            completed=completed,
            failed=failed,
            volume=dict(volume),
            responses=responses,
            mean_response_seconds=total / responses if responses else 0.0,
            p99_response_seconds=p99,
            webhook_attempts=hook_attempts,
            webhook_successes=hook_successes,
            mean_webhook_seconds=hook_seconds / hook_attempts if hook_attempts else 0.0,
            webhook_retries=hook_retries,
            webhook_failures=hook_failures,
        )
