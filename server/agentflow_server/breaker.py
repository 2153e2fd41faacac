"""A circuit breaker: after repeated failures, stop calling a dependency for a while, then let one probe
through. Used for the chain's RPC endpoint (and, later, per webhook endpoint)."""

from __future__ import annotations

import time
from collections.abc import Callable
from enum import Enum


class BreakerState(Enum):
    CLOSED = "closed"
    OPEN = "open"
    HALF_OPEN = "half_open"


class CircuitBreaker:
    """Opens after ``failure_threshold`` failures in a row; after ``reset_timeout`` seconds one call is let
    through (half-open): its success closes the breaker, its failure opens it again."""

    def __init__(
        self,
        failure_threshold: int = 5,
        reset_timeout: float = 10.0,
        clock: Callable[[], float] = time.monotonic,
        on_change: Callable[[BreakerState], None] | None = None,
    ) -> None:
        if failure_threshold < 1 or reset_timeout < 0:
            raise ValueError("failure_threshold must be at least 1 and reset_timeout not negative")
        self.failure_threshold = failure_threshold
        self.reset_timeout = reset_timeout
        self._clock = clock
        self._on_change = on_change
        self._failures = 0
        self._opened_at = 0.0
        self._state = BreakerState.CLOSED
        self._probing = False

    @property
    def state(self) -> BreakerState:
        if self._state is BreakerState.OPEN and self._clock() - self._opened_at >= self.reset_timeout:
            return BreakerState.HALF_OPEN
        return self._state

    def allow(self) -> bool:
        """Whether a call may go through now. In half-open, only one probe at a time."""
        state = self.state
        if state is BreakerState.CLOSED:
            return True
        if state is BreakerState.HALF_OPEN and not self._probing:
            self._probing = True
            return True
        return False

    def retry_after(self) -> float:
        """Seconds until the breaker lets a probe through (0 when it would now)."""
        if self._state is not BreakerState.OPEN:
            return 0.0
        return max(0.0, self.reset_timeout - (self._clock() - self._opened_at))

    def abandon(self) -> None:
        """A call that was let through ended without telling anything (cancelled): free the probe."""
        self._probing = False

    def record_success(self) -> None:
        self._failures = 0
        self._probing = False
        self._set(BreakerState.CLOSED)

    def record_failure(self) -> None:
        self._failures += 1
        was_probe = self._probing
        self._probing = False
        if was_probe or self._failures >= self.failure_threshold:
            self._opened_at = self._clock()
            self._set(BreakerState.OPEN)

    def _set(self, state: BreakerState) -> None:
        if state is not self._state:
            self._state = state
            if self._on_change is not None:
                self._on_change(state)
