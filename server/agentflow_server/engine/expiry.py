"""Escrow expiry: a timer on the nearest deadline, never a scan of every escrow.

The deadlines of active escrows sit in a heap in memory, rebuilt from the ledger at start (so a deadline
that passed while the server was down is met at once). The timer sleeps until the earliest one, then hands
the engine an :class:`~agentflow_server.engine.commands.ExpireEscrow` for every escrow due. An escrow
released, refunded or disputed meanwhile stays in the heap until its time comes; the engine then finds it
no longer active and does nothing, which is cheaper than removing it from the heap.
"""

from __future__ import annotations

import asyncio
import contextlib
import heapq
import logging
from collections.abc import Iterable, Sequence
from typing import Protocol

from agentflow_payments import Reason

from ..clock import Clock
from ..errors import ApiError
from .commands import Command, ExpireEscrow

log = logging.getLogger("agentflow.escrow")

# Most expiries handed to the engine at once: they join its groups like any commands.
_CHUNK = 1000


class Deadlines:
    """The deadlines of active escrows, earliest first; the engine adds one per escrow it creates."""

    def __init__(self) -> None:
        self._heap: list[tuple[int, str]] = []
        self._changed = asyncio.Event()

    def add(self, deadlines: Iterable[tuple[int, str]]) -> None:
        """Add (expire_time_us, escrow_id) pairs, waking the timer if one is earlier than its wait."""
        earliest = self._heap[0][0] if self._heap else None
        for deadline in deadlines:
            heapq.heappush(self._heap, deadline)
        if self._heap and (earliest is None or self._heap[0][0] < earliest):
            self._changed.set()

    def wake(self) -> None:
        """Make the timer look again (the clock moved)."""
        self._changed.set()

    def next_time(self) -> int | None:
        """The earliest deadline, if any."""
        return self._heap[0][0] if self._heap else None

    def pop_due(self, now_us: int, most: int) -> list[str]:
        """Remove and return up to ``most`` escrow ids whose deadline is at or before ``now_us``."""
        due: list[str] = []
        while self._heap and self._heap[0][0] <= now_us and len(due) < most:
            due.append(heapq.heappop(self._heap)[1])
        return due

    async def changed(self, seconds: float | None) -> None:
        """Wait until a deadline is added earlier than the current first, the clock moves, or ``seconds``
        pass."""
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(seconds):
                await self._changed.wait()
        self._changed.clear()


class _Executor(Protocol):
    async def execute_many(self, commands: Sequence[Command]) -> Sequence[object]: ...


class ExpiryTimer:
    """Runs expiry actions at their deadlines. Start with :meth:`start`, stop with :meth:`stop`."""

    def __init__(self, engine: _Executor, deadlines: Deadlines, clock: Clock, coalesce: float = 0.02) -> None:
        self._engine = engine
        self._deadlines = deadlines
        self._clock = clock
        # Seconds a deadline may wait for the ones right after it, so that they expire in one engine group:
        # a commit per escrow, at a thousand deadlines a second, left little room for anything else.
        self._coalesce_us = round(coalesce * 1_000_000)
        self._task: asyncio.Task[None] | None = None
        self._unsubscribe = clock.on_advance(deadlines.wake)

    def start(self) -> None:
        """Start waiting for deadlines."""
        self._task = asyncio.create_task(self._run(), name="agentflow-escrow-expiry")

    async def stop(self) -> None:
        """Stop the timer; deadlines not yet met are met after the next start."""
        self._unsubscribe()
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None

    async def _run(self) -> None:
        deadlines = self._deadlines
        while True:
            now_us = self._clock.now_us()
            due = deadlines.pop_due(now_us, _CHUNK)
            if due:
                if not await self._expire(due):
                    return
                continue
            first = deadlines.next_time()
            wait = None if first is None else max(0.0, (first + self._coalesce_us - now_us) / 1e6)
            await deadlines.changed(wait)

    async def _expire(self, escrow_ids: list[str]) -> bool:
        """Expire these escrows; False once the engine is shutting down (the rest wait for next start)."""
        try:
            outcomes = await self._engine.execute_many([ExpireEscrow(escrow_id) for escrow_id in escrow_ids])
        except ApiError as error:
            if error.reason is Reason.SHUTTING_DOWN:
                return False
            self._retry_later(escrow_ids, error)
            await asyncio.sleep(1.0)
            return True
        except Exception as error:  # the group failed to commit (the ledger is down, say)
            self._retry_later(escrow_ids, error)
            await asyncio.sleep(1.0)
            return True
        for escrow_id, outcome in zip(escrow_ids, outcomes, strict=True):
            # An expiry that fails alone (not a refusal the engine makes today) is logged, not retried.
            if isinstance(outcome, ApiError):
                log.error("escrow %s did not expire: %s", escrow_id, outcome.message)
        return True

    def _retry_later(self, escrow_ids: list[str], error: BaseException) -> None:
        """Put deadlines back after their group failed as a whole; the next attempt is a second later."""
        log.error("expiry of %d escrows failed, retrying in 1 s: %s", len(escrow_ids), error)
        self._deadlines.add((self._clock.now_us(), escrow_id) for escrow_id in escrow_ids)
