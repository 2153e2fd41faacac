"""The service's clock: wall time in integer microseconds, which tests may move forward.

Escrow deadlines are days away. A test that wants to see one pass moves this clock instead of waiting;
whatever sleeps until a time on it (the expiry timer) is woken to look again.
"""

from __future__ import annotations

import time
from collections.abc import Callable


class Clock:
    """Wall time in microseconds since the Unix epoch, plus an offset that only ever grows."""

    def __init__(self) -> None:
        self._offset_us = 0
        self._listeners: list[Callable[[], None]] = []

    def now_us(self) -> int:
        """The current time in microseconds since the epoch."""
        return time.time_ns() // 1000 + self._offset_us

    def advance(self, seconds: float) -> None:
        """Move the clock ``seconds`` forward (never back: ids and deadlines rely on time not reversing)."""
        if seconds < 0:
            raise ValueError(f"the clock only moves forward, not by {seconds} s")
        self._offset_us += round(seconds * 1_000_000)
        for listener in list(self._listeners):
            listener()

    def on_advance(self, listener: Callable[[], None]) -> Callable[[], None]:
        """Call ``listener`` whenever the clock is moved; returns a function that stops it."""
        self._listeners.append(listener)
        return lambda: self._listeners.remove(listener)
