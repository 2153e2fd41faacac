"""Following the event log live, and handing each new event to every subscriber that wants it.

One task reads what each commit added to the log (the engine says when) and puts each event, serialized
once, into the queue of every subscriber whose filter matches. Putting never waits: a subscriber whose
queue is full is marked too slow and dropped from the hub, so one slow reader never holds up the engine
or another reader. A subscription remembers the head of the log when it joined: the log up to there is
the subscriber's to replay from the database, and everything after comes through its queue, so the seam
has no gap and no duplicate.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import logging

from ..ledger import StorageError
from ..ledger.events import EventReader, StoredEvent
from ..wire import subscribe_response_bytes
from .filter import EventFilter

log = logging.getLogger("agentflow.events")

_PAGE = 1000


class Subscription:
    """One subscriber's place in the hub: the live events it matched, and whether it fell behind."""

    def __init__(self, hub: EventHub, where: EventFilter, joined_at: int, max_backlog: int) -> None:
        self.where = where
        self.joined_at = joined_at
        """The head of the log when it joined: later events come through the queue."""
        self.too_slow = False
        self.shutting_down = False
        self._hub = hub
        self._max_backlog = max_backlog
        self._queue: collections.deque[tuple[StoredEvent, bytes]] = collections.deque()
        self._ready = asyncio.Event()

    def offer(self, item: tuple[StoredEvent, bytes]) -> None:
        """Queue a live event and its serialized response (the hub's call; one tuple shared by every
        subscriber, since 1,000 backlogs of 10,000 events are 10 million entries); past the backlog, the
        subscription is too slow instead."""
        if len(self._queue) >= self._max_backlog:
            self.too_slow = True
            self._hub.unsubscribe(self)
        else:
            self._queue.append(item)
        self._ready.set()

    async def next(self, wait: float | None) -> tuple[StoredEvent, bytes] | None:
        """The next live event, or None after ``wait`` seconds without one (or once too slow)."""
        while not self._queue and not self.too_slow and not self.shutting_down:
            self._ready.clear()
            try:
                async with asyncio.timeout(wait):
                    await self._ready.wait()
            except TimeoutError:
                return None
        if self.too_slow or self.shutting_down:
            return None
        return self._queue.popleft()

    def end(self) -> None:
        """The server is shutting down: wake the subscriber, who ends its stream."""
        self.shutting_down = True
        self._ready.set()

    def close(self) -> None:
        """Leave the hub."""
        self._hub.unsubscribe(self)


class EventHub:
    """Follows the log and fans its new events out. Start with :meth:`start`, stop with :meth:`stop`."""

    def __init__(
        self, log: EventReader, max_backlog: int = 10_000, poll_interval: float = 1.0, recent: int | None = None
    ) -> None:
        self._log = log
        self.max_backlog = max_backlog
        self._poll_interval = poll_interval
        self._subscriptions: set[Subscription] = set()
        self._shut_down = False
        self._changed = asyncio.Event()
        self._task: asyncio.Task[None] | None = None
        self.head = 0
        """The newest sequence handed out to the subscribers."""
        # The newest events read, serialized, for replays: a subscriber ended as too slow resumes from
        # here instead of reading and serializing the log again for itself (twice the backlog by default,
        # so that the resume of a stream cut off at the backlog finds its events here).
        self._recent: collections.deque[tuple[StoredEvent, bytes]] = collections.deque()
        self._recent_size = 2 * max_backlog if recent is None else recent
        self._recent_after = 0
        """``_recent`` holds every event after this sequence, up to ``head``."""

    async def start(self) -> None:
        """Start from the log's current head."""
        self.head = self._recent_after = await self._log.head()
        self._task = asyncio.create_task(self._follow(), name="agentflow-event-hub")

    def recent(self, after: int, until: int, where: EventFilter) -> list[tuple[StoredEvent, bytes]] | None:
        """The events after ``after`` up to ``until`` that match ``where``, from memory; None when memory
        does not reach back that far (read the log then)."""
        if after < self._recent_after or until > self.head:
            return None
        return [
            (event, response)
            for event, response in self._recent
            if after < event.sequence <= until and where.matches(event)
        ]

    async def stop(self) -> None:
        """Stop following; subscribers see no more live events."""
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None

    @property
    def subscriber_count(self) -> int:
        """How many subscriptions are in."""
        return len(self._subscriptions)

    def shut_down(self) -> None:
        """End every subscription, and every one that joins from now on (the server is stopping; clients
        resume elsewhere or later)."""
        self._shut_down = True
        for subscription in list(self._subscriptions):
            subscription.end()
        self._subscriptions.clear()

    def committed(self) -> None:
        """The engine committed new events: read them."""
        self._changed.set()

    async def subscribe(self, where: EventFilter) -> Subscription:
        """Join: live events after the current head that match ``where`` come through the subscription."""
        if not self._subscriptions:
            # Nobody was listening, so the hub did not read the log: its head is behind. Whatever commits
            # after this read is read and handed out once the subscription is in.
            head = await self._log.head()
            if head > self.head:
                self.head = self._recent_after = head
                self._recent.clear()  # no longer the events just before the head
        subscription = Subscription(self, where, self.head, self.max_backlog)
        if self._shut_down:
            # A stream that was starting when the server began to stop: ended at once, so that it does not
            # hold the server's grace period.
            subscription.end()
            return subscription
        self._subscriptions.add(subscription)
        return subscription

    def unsubscribe(self, subscription: Subscription) -> None:
        """Leave (again is harmless)."""
        self._subscriptions.discard(subscription)

    async def _follow(self) -> None:
        while True:
            # The engine's word after each commit; the poll covers a notification lost in a race.
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(self._poll_interval):
                    await self._changed.wait()
            self._changed.clear()
            if not self._subscriptions:
                continue  # nobody to hand events to: the log is not read (a subscriber reads the head)
            try:
                while await self._read_more():
                    pass
            except StorageError as error:
                log.warning("event log not read: %s", error)

    async def _read_more(self) -> bool:
        """Hand out the next page of new events; whether a full page came (more may follow)."""
        found = await self._log.after(self.head, _PAGE)
        recent = self._recent
        for event in found:
            if event.sequence <= self.head:
                continue  # a subscriber moved the head past it while this page was read
            item = (event, subscribe_response_bytes(event))  # once, for every subscriber and replay
            for subscription in list(self._subscriptions):
                if subscription.where.matches(event):
                    subscription.offer(item)
            self.head = event.sequence
            recent.append(item)
            if len(recent) > self._recent_size:
                self._recent_after = recent.popleft()[0].sequence
        return len(found) == _PAGE
