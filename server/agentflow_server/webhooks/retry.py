"""When a failed delivery is attempted again: exponential backoff with jitter, by tenacity's wait strategy.

Deliveries must be retried across restarts, so tenacity does not drive the attempts in memory: its wait
strategy computes each delay, and the delivery row keeps the time of its next attempt.
"""

from __future__ import annotations

from dataclasses import dataclass

import tenacity


@dataclass(frozen=True)
class RetryPolicy:
    """How a delivery is retried.

    Attributes:
        max_retries: attempts after the first before the delivery fails for good.
        initial: seconds before the first retry.
        multiplier: how much longer each next wait is.
        max_delay: the longest wait, also for an endpoint's Retry-After.
        jitter: a random part added to each wait, as a fraction of ``initial`` (so that endpoints that
            failed together are not retried together).
    """

    max_retries: int = 3
    initial: float = 5.0
    multiplier: float = 6.0
    max_delay: float = 3600.0
    jitter: float = 0.2

    def __post_init__(self) -> None:
        if self.max_retries < 0 or self.initial < 0 or self.multiplier < 1 or self.max_delay < 0 or self.jitter < 0:
            raise ValueError("retry settings must not be negative, and the multiplier at least 1")

    def delay(self, failed_attempts: int, retry_after: float | None = None) -> float:
        """Seconds to wait after the ``failed_attempts``-th failed attempt; an endpoint's Retry-After, when it
        sent one, takes the place of the backoff (up to ``max_delay``)."""
        if retry_after is not None:
            return min(max(0.0, retry_after), self.max_delay)
        wait = tenacity.wait_exponential_jitter(
            multiplier=self.initial, max=self.max_delay, exp_base=self.multiplier, jitter=self.initial * self.jitter
        )
        state = tenacity.RetryCallState(None, None, (), {})  # type: ignore[arg-type]
        state.attempt_number = failed_attempts
        return float(wait(state))
