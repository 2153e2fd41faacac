"""Which events a subscriber or a listing wants, and may see."""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

from ..ledger.events import StoredEvent

EVENT_TYPES: tuple[str, ...] = (
    "payment.created",
    "payment.queued",
    "payment.processing",
    "payment.completed",
    "payment.failed",
    "payment.cancelled",
    "withdrawal.queued",
    "withdrawal.processing",
    "withdrawal.completed",
    "withdrawal.failed",
    "batch.completed",
    "batch.failed",
    "deposit.confirmed",
    "escrow.created",
    "escrow.released",
    "escrow.refunded",
    "escrow.disputed",
    "escrow.resolved",
    "escrow.expired",
    "webhook.disabled",
)
"""Every event type the server writes."""

FAMILIES: frozenset[str] = frozenset(t.partition(".")[0] for t in EVENT_TYPES)


def check_type_pattern(pattern: str) -> str | None:
    """Why ``pattern`` is not an event type or a ``family.*`` wildcard, or None when it is one."""
    family, dot, name = pattern.partition(".")
    if pattern == "*" or (dot and name == "*" and family in FAMILIES) or pattern in EVENT_TYPES:
        return None
    return f"must be an event type ({', '.join(sorted(FAMILIES))} families) or a wildcard such as payment.*"


@dataclass(frozen=True)
class EventFilter:
    """What a subscription matches. Empty fields match everything; ``visible_to`` None is an admin's view."""

    types: frozenset[str] = frozenset()
    families: frozenset[str] = frozenset()
    address: str | None = None
    task_id: str | None = None
    resource: str | None = None
    visible_to: frozenset[str] | None = None

    @classmethod
    def of(
        cls,
        patterns: Iterable[str] = (),
        *,
        address: str | None = None,
        task_id: str | None = None,
        resource: str | None = None,
        visible_to: frozenset[str] | None = None,
    ) -> EventFilter:
        """A filter from checked type patterns (see :func:`check_type_pattern`)."""
        types: set[str] = set()
        families: set[str] = set()
        for pattern in patterns:
            if pattern == "*":
                families.update(FAMILIES)
            elif pattern.endswith(".*"):
                families.add(pattern[:-2])
            else:
                types.add(pattern)
        return cls(frozenset(types), frozenset(families), address, task_id, resource, visible_to)

    def matches(self, event: StoredEvent) -> bool:
        """Whether the event passes every filter and the caller may see it."""
        if (self.types or self.families) and not (
            event.type in self.types or event.type.partition(".")[0] in self.families
        ):
            return False
        if self.resource is not None and event.resource != self.resource:
            return False
        if self.task_id is not None and event.task_id != self.task_id:
            return False
        if self.address is not None and self.address not in event.addresses:
            return False
        return self.visible_to is None or not self.visible_to.isdisjoint(event.addresses)
