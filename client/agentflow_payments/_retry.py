"""When the SDK calls again by itself: ``RetryConfig`` and the loop that applies it.

Only calls that cannot act twice are retried after a failure: reads, and writes
that carry a ``request_id`` (the typed methods always give one), which the server
answers from its idempotency record the second time. Only UNAVAILABLE (the server could
not be reached, or the connection broke), DEADLINE_EXCEEDED (one attempt took
longer than its deadline) and CANCELLED from the other end (an overloaded
server's gRPC core sheds calls it cannot hand to the application in time with
CANCELLED, before they run) are retried, and RATE_LIMIT_EXCEEDED and QUEUE_FULL
(refused before anything was done) when the server's RetryInfo delay is no longer
than the config's longest pause: the call, any call, is made again after that
delay. Every other error is the answer. A call the caller cancels raises
``asyncio.CancelledError`` and is not retried.

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

from ._exceptions import Cancelled, DeadlineExceeded, QueueFull, RateLimited, Unavailable

T = TypeVar("T")

RETRYABLE = (Unavailable, DeadlineExceeded, Cancelled)
# Refused before anything was done, with the server's word on when to come back.
WAIT_AND_RETRY = (RateLimited, QueueFull)


@dataclass(frozen=True)
class RetryConfig:
    """How often and how patiently a retryable call is tried again.

    Attempt ``n`` (from 1) waits a random time up to ``min(max_backoff, initial_backoff * multiplier**(n-1))``
    seconds before the next ("full jitter", so many clients cut off at once do not return at once).
    After RATE_LIMIT_EXCEEDED or QUEUE_FULL it waits the server's RetryInfo delay instead, and gives up at once
    when that is longer than ``max_backoff``.

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


async def with_retries(config: RetryConfig, attempt: Callable[[], Awaitable[T]], *, may_act_twice: bool = False) -> T:
    """The result of ``attempt()``, called again after UNAVAILABLE, DEADLINE_EXCEEDED or CANCELLED as
    ``config`` allows, and after RATE_LIMIT_EXCEEDED or QUEUE_FULL once their RetryInfo delay has passed, if
    it is at most ``config.max_backoff``; the last error is raised when the attempts run out. A call that
    ``may_act_twice`` is made again only after the last two, which refuse it before it does anything."""
    number = 1
    while True:
        try:
            return await attempt()
        except RETRYABLE:
            if may_act_twice or number >= config.max_attempts:
                raise
            await asyncio.sleep(config.pause(number))
        except WAIT_AND_RETRY as error:
            if number >= config.max_attempts:
                raise
            await wait_out(error, config)
        number += 1


async def wait_out(error: RateLimited | QueueFull, config: RetryConfig) -> None:
    """Wait the server's RetryInfo delay for ``error`` and a random part of up to ``config.initial_backoff`` (so
    that clients refused together do not all return in the same instant); raise ``error`` instead when the
    server named no delay or one longer than ``config.max_backoff``."""
    if error.retry_delay is None or error.retry_delay.total_seconds() > config.max_backoff:
        raise error
    await asyncio.sleep(error.retry_delay.total_seconds() + random.uniform(0, config.initial_backoff))
