"""When the SDK calls again by itself: ``RetryConfig`` and the loop that applies it.

Only calls that cannot act twice are retried: reads, and writes that carry a
``request_id`` (the typed methods always give one), which the server answers
from its idempotency record the second time. Only UNAVAILABLE (the server could
not be reached, or the connection broke), DEADLINE_EXCEEDED (one attempt took
longer than its deadline) and CANCELLED from the other end (an overloaded
server's gRPC core sheds calls it cannot hand to the application in time with
CANCELLED, before they run) are retried; every other error is the answer. A
call the caller cancels raises ``asyncio.CancelledError`` and is not retried.

The loop is ours rather than gRPC's service-config retry policy because gRPC
retries within one overall deadline and never retries DEADLINE_EXCEEDED, while
here each attempt gets the call's timeout; and rather than tenacity's because
the SDK depends on grpcio and protobuf alone.
"""

from __future__ import annotations

import asyncio
import random
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import TypeVar

from ._exceptions import Cancelled, DeadlineExceeded, Unavailable

T = TypeVar("T")

RETRYABLE = (Unavailable, DeadlineExceeded, Cancelled)


@dataclass(frozen=True)
class RetryConfig:
    """How often and how patiently a retryable call is tried again.

    Attempt ``n`` (from 1) waits a random time up to ``min(max_backoff, initial_backoff * multiplier**(n-1))``
    seconds before the next ("full jitter", so many clients cut off at once do not return at once).

    Attributes:
        max_attempts: attempts in all, the first included; 1 turns retries off.
        initial_backoff: the bound of the first pause, in seconds.
        max_backoff: the largest bound of a pause, in seconds.
        multiplier: how the bound grows from one pause to the next.
    """

    max_attempts: int = 4
    initial_backoff: float = 0.2
    max_backoff: float = 5.0
    multiplier: float = 2.0

    def __post_init__(self) -> None:
        if self.max_attempts < 1:
            raise ValueError("max_attempts must be at least 1")
        if self.initial_backoff < 0 or self.max_backoff < 0 or self.multiplier < 1:
            raise ValueError("backoffs must be non-negative and multiplier at least 1")

    def pause(self, attempt: int) -> float:
        """The pause after failed attempt number ``attempt`` (from 1), in seconds."""
        bound = min(self.max_backoff, self.initial_backoff * self.multiplier ** (attempt - 1))
        return random.uniform(0, bound)


NO_RETRY = RetryConfig(max_attempts=1)
"""A ``RetryConfig`` that makes one attempt."""


async def with_retries(config: RetryConfig, attempt: Callable[[], Awaitable[T]]) -> T:
    """The result of ``attempt()``, called again after UNAVAILABLE, DEADLINE_EXCEEDED or CANCELLED as
    ``config`` allows; the last error is raised when the attempts run out."""
    number = 1
    while True:
        try:
            return await attempt()
        except RETRYABLE:
            if number >= config.max_attempts:
                raise
        await asyncio.sleep(config.pause(number))
        number += 1
