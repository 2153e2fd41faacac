"""Each payer's accepted volume per token over the trailing 30 days, which sets the volume discount."""

from __future__ import annotations

from collections import defaultdict

WINDOW_DAYS = 30
_US_PER_DAY = 86_400_000_000


def day_of(time_us: int) -> int:
    """Days since the Unix epoch (UTC) of a time in microseconds."""
    return time_us // _US_PER_DAY


class VolumeWindow:
    """Daily volumes per (payer, token), kept for the last 30 days.

    The engine changes it while it applies a group and reads it for every fee; the database keeps the same
    daily figures (``volume_daily``) so that a restart loads them instead of re-reading every payment.
    """

    def __init__(self) -> None:
        self._days: dict[tuple[str, str], dict[int, int]] = defaultdict(dict)

    def load(self, payer: str, token: str, day: int, amount: int) -> None:
        """Set one stored daily figure (at start)."""
        self._days[(payer, token)][day] = amount

    def trailing(self, payer: str, token: str, today: int) -> int:
        """The payer's volume in this token over the 30 days ending ``today``, today included."""
        days = self._days.get((payer, token))
        if not days:
            return 0
        first = today - WINDOW_DAYS + 1
        return sum(amount for day, amount in days.items() if day >= first)

    def add(self, payer: str, token: str, day: int, amount: int) -> int:
        """Add (or, negative, take back) volume on ``day``; returns that day's new figure."""
        days = self._days[(payer, token)]
        value = days.get(day, 0) + amount
        days[day] = value
        # Forget days that left the window, so memory stays bounded by active payers.
        for old in [d for d in days if d <= day - WINDOW_DAYS]:
            del days[old]
        return value
