"""The settlement queue of one token: which queued payment goes on chain next.

Each payment gets a virtual deadline when it is queued: the time it was accepted plus the longest wait of
its priority class, brought forward a little for large amounts. The queue hands out the earliest deadline
first. Because the deadline is fixed at entry, waiting *is* the age boost: a low-priority payment that has
waited its class's window is ahead of every urgent payment accepted after its deadline, so its wait is
bounded however steady the stream of urgent ones (earliest-deadline-first scheduling).
"""

from __future__ import annotations

import heapq
import math
from collections.abc import Mapping
from dataclasses import dataclass, field
from types import MappingProxyType

from .model import Priority

_DEFAULT_WINDOWS = MappingProxyType(
    {Priority.URGENT: 0.0, Priority.HIGH: 10.0, Priority.NORMAL: 60.0, Priority.LOW: 300.0}
)


@dataclass(frozen=True)
class QueuePolicy:
    """How long each class may wait (seconds), and how much earlier a large amount goes."""

    max_wait: Mapping[Priority, float] = field(default_factory=lambda: _DEFAULT_WINDOWS)
    # Each power of ten of whole tokens brings the deadline forward this share of the class window...
    amount_boost_per_decade: float = 0.02
    # ...up to this share, so an amount never jumps its class.
    max_amount_boost: float = 0.2

    def deadline(self, priority: Priority, enqueued_at: float, amount: int, decimals: int) -> float:
        """The virtual deadline of a payment queued at ``enqueued_at`` (seconds)."""
        window = self.max_wait[priority]
        whole = amount // 10**decimals
        decades = math.log10(whole) if whole >= 1 else 0.0
        boost = min(self.max_amount_boost, self.amount_boost_per_decade * decades) * window
        return enqueued_at + window - boost


class SettlementQueue:
    """The queued payments of one token, earliest deadline first. Removal is O(1) (lazy)."""

    def __init__(self, policy: QueuePolicy | None = None) -> None:
        self.policy = policy or QueuePolicy()
        self._heap: list[tuple[float, int, str]] = []
        self._live: dict[str, int] = {}
        self._counter = 0

    def push(self, payment_id: str, priority: Priority, enqueued_at: float, amount: int, decimals: int) -> None:
        """Queue a payment (again: a second push replaces the first)."""
        self._counter += 1
        self._live[payment_id] = self._counter
        deadline = self.policy.deadline(priority, enqueued_at, amount, decimals)
        heapq.heappush(self._heap, (deadline, self._counter, payment_id))

    def remove(self, payment_id: str) -> bool:
        """Take a payment out (batched or cancelled); ``False`` if it was not queued."""
        removed = self._live.pop(payment_id, None) is not None
        self._drop_dead_front()
        self._compact()
        return removed

    def pop(self, count: int = 1) -> list[str]:
        """Take up to ``count`` payments off the front, in order."""
        taken: list[str] = []
        while self._heap and len(taken) < count:
            _, counter, payment_id = heapq.heappop(self._heap)
            if self._live.get(payment_id) == counter:
                del self._live[payment_id]
                taken.append(payment_id)
        self._compact()
        return taken

    def peek(self, count: int) -> list[tuple[float, str]]:
        """The first ``count`` payments and their deadlines, in order, left in the queue.

        Walks the heap from its root, smallest first, so it costs O(count log count) however long the queue
        (a backlog of a hundred thousand must not make every batch pay for all of it). Removed entries are
        dropped from the root as they appear, so those a walk passes are only cancellations behind it.
        """
        heap = self._heap
        found: list[tuple[float, str]] = []
        frontier: list[tuple[tuple[float, int, str], int]] = [(heap[0], 0)] if heap else []
        while frontier and len(found) < count:
            (deadline, counter, payment_id), index = heapq.heappop(frontier)
            if self._live.get(payment_id) == counter:
                found.append((deadline, payment_id))
            for child in (2 * index + 1, 2 * index + 2):
                if child < len(heap):
                    heapq.heappush(frontier, (heap[child], child))
        return found

    def _drop_dead_front(self) -> None:
        # Batched payments are the front of the heap: left there, every peek would walk past all of them.
        heap, live = self._heap, self._live
        while heap and live.get(heap[0][2]) != heap[0][1]:
            heapq.heappop(heap)

    def _compact(self) -> None:
        # Removed entries stay in the heap until popped; rebuild when they are most of it.
        if len(self._heap) > 1024 and len(self._heap) > 2 * len(self._live):
            self._heap = [entry for entry in self._heap if self._live.get(entry[2]) == entry[1]]
            heapq.heapify(self._heap)

    def __len__(self) -> int:
        return len(self._live)

    def __contains__(self, payment_id: object) -> bool:
        return payment_id in self._live
