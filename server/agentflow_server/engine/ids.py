"""Ids for the payments and escrows the engine creates: 22 hex digits, unique and in creation order."""

from __future__ import annotations

import secrets

_LOW_BITS = 32


class IdMint:
    """Makes ids of 14 hex digits of time in microseconds, then 8 of a counter.

    Every item of a group is created at the group's one time, so the counter, not chance, keeps a group's
    ids apart: eight random hex digits met twice in about one group of 100 in a million. The counter
    starts at a random point in the lower half of its range at each new microsecond, so ids do not tell
    how many were made, and counts up from there; the time part never goes back, even when the wall clock
    does, so each id sorts after every earlier one of this process.
    """

    def __init__(self) -> None:
        self._time_us = -1
        self._low = 0

    def new(self, now_us: int) -> str:
        """A new id for an item created at ``now_us``, after every id made before."""
        if now_us > self._time_us:
            self._time_us = now_us
            self._low = secrets.randbelow(1 << (_LOW_BITS - 1))
        else:
            self._low += 1
            if self._low >> _LOW_BITS:  # 2^31 ids in one microsecond: borrow the next one
                self._time_us += 1
                self._low = 0
        return f"{self._time_us:014x}{self._low:08x}"
