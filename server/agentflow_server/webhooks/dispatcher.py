"""Webhook endpoints, and the delivery of every event to every endpoint that wants it.

The dispatcher follows the event log from each endpoint's durable cursor (the engine says when a commit
added events). For each matching event it writes a delivery row and moves the cursor in the same
transaction, so after a crash the log is fanned out again from where it was, and each (event, endpoint)
has exactly one delivery. Each endpoint then has a lane of its own: its deliveries are attempted one at a
time in event order, retried on the :class:`RetryPolicy`'s schedule (kept in the row, so retries survive
restarts), and held back by the endpoint's circuit breaker while it keeps failing. A slow or dead endpoint
holds up only its own lane.

Every write goes through the engine (``StoreRecords``), the database's one writer; the endpoints are held
in memory, changed only after their write commits.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import dataclasses
import functools
import heapq
import json
import logging
import secrets
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from google.protobuf import json_format

from agentflow_payments import FieldViolation, Reason
from agentflow_payments.v1 import events_pb2

from ..activity import Activity
from ..breaker import CircuitBreaker
from ..clock import Clock
from ..engine.commands import NewEvent, StoreRecords
from ..errors import ApiError, webhook_not_found
from ..events.filter import EventFilter
from ..ledger import StorageError
from ..ledger import webhooks as store
from ..ledger.events import EventReader, StoredEvent
from ..ledger.group import RecordWrite
from ..ledger.webhooks import WebhookReader
from ..metrics import Metrics
from ..wire import event_message, timestamp
from .messages import webhook_message
from .model import Attempt, Delivery, DeliveryStatus, Endpoint, EndpointState, SigningSecret
from .retry import RetryPolicy
from .secrets import new_secret
from .sender import Sender
from .urls import DestinationRefused, check_destination

if TYPE_CHECKING:  # the engine imports wire, which imports this package's model
    from ..engine.engine import Engine

log = logging.getLogger("agentflow.webhooks")

_PAGE = 1000
# Event bodies kept in memory for lanes that will send them soon; older ones are read back from the log.
_BODY_CACHE = 10_000
_MAX_SECRETS = 5
# After a failed write of an attempt's outcome, the delivery is attempted again this much later.
_STORAGE_RETRY = 1.0

Visibility = frozenset[str] | None
"""What an endpoint's owner may see: the addresses of its key, or None for everything."""
OwnerLookup = Callable[[str], tuple[bool, Visibility]]
"""For an owner key id: whether the key is still active, and what it may see."""


@dataclass(frozen=True)
class WebhookConfig:
    """How deliveries are made.

    Attributes:
        timeout: seconds one attempt may take, connection and answer included.
        retry: the schedule of attempts after a failure.
        breaker_threshold: failed attempts in a row that open an endpoint's circuit breaker.
        breaker_reset: seconds an open breaker waits before one probe attempt.
        disable_after: seconds of nothing but failures after which an endpoint is disabled.
        allow_private: whether URLs may reach loopback, private and link-local addresses.
    """

    timeout: float = 5.0
    retry: RetryPolicy = field(default_factory=RetryPolicy)
    breaker_threshold: int = 5
    breaker_reset: float = 30.0
    disable_after: float = 5 * 86_400.0
    allow_private: bool = False


@dataclass
class _Lane:
    """One enabled endpoint's pending deliveries, by when they are due."""

    breaker: CircuitBreaker
    deliveries: dict[str, Delivery] = field(default_factory=dict)
    # (next attempt time, event sequence, delivery id); an entry whose time is no longer the delivery's
    # is stale and skipped.
    due: list[tuple[int, int, str]] = field(default_factory=list)
    # Deliveries retried by hand: attempted when due even while the breaker is open.
    manual: set[str] = field(default_factory=set)
    sending: str | None = None
    wake: asyncio.Event = field(default_factory=asyncio.Event)
    task: asyncio.Task[None] | None = None

    def schedule(self, delivery: Delivery) -> None:
        assert delivery.next_attempt_time_us is not None
        self.deliveries[delivery.delivery_id] = delivery
        heapq.heappush(self.due, (delivery.next_attempt_time_us, delivery.event_sequence, delivery.delivery_id))
        self.wake.set()


@dataclass(frozen=True)
class EndpointChanges:
    """What UpdateWebhook changes; None leaves a field as it is."""

    url: str | None = None
    event_types: tuple[str, ...] | None = None
    description: str | None = None
    state: EndpointState | None = None


class WebhookDispatcher:
    """Holds the endpoints, fans the log out to them and delivers. Start with :meth:`start`."""

    def __init__(
        self,
        engine: Engine,
        reader: WebhookReader,
        log_reader: EventReader,
        owners: OwnerLookup,
        config: WebhookConfig,
        metrics: Metrics | None = None,
    ) -> None:
        self._engine = engine
        self._reader = reader
        self._log = log_reader
        self._owners = owners
        self.config = config
        self._metrics = metrics
        self._clock: Clock = engine.clock
        self._sender = Sender(config.timeout, self._clock, allow_private=config.allow_private)
        self._endpoints: dict[str, Endpoint] = {}
        self._lanes: dict[str, _Lane] = {}
        self._bodies: collections.OrderedDict[int, bytes] = collections.OrderedDict()
        # Endpoint changes and fan-out pages one at a time: a page never writes for an endpoint that a
        # change has just deleted or disabled.
        self._lock = asyncio.Lock()
        self._log_moved = asyncio.Event()
        self._fan_out_task: asyncio.Task[None] | None = None
        # Every lane's task, closed lanes' included: one may still be finishing an attempt.
        self._lane_tasks: set[asyncio.Task[None]] = set()
        # Attempt outcomes handed to the engine and not yet committed.
        self._recording: set[asyncio.Future[Any]] = set()
        self._stopping = False
        self._last_id_us = 0

    # -- life cycle ---------------------------------------------------------------------------------

    async def start(self) -> None:
        """Load the endpoints and pending deliveries, and catch up with the log from each cursor."""
        endpoints, pending = await self._reader.load()
        self._endpoints = {e.webhook_id: e for e in endpoints}
        for endpoint in endpoints:
            if endpoint.state is EndpointState.ENABLED:
                self._open_lane(endpoint.webhook_id)
        for delivery in pending:
            lane = self._lanes.get(delivery.webhook_id)
            if lane is not None:
                lane.schedule(delivery)
        self._fan_out_task = asyncio.create_task(self._fan_out_forever(), name="agentflow-webhook-fan-out")
        self._log_moved.set()
        log.info(
            "webhooks started",
            extra={"event": "webhooks.started", "endpoints": len(endpoints), "pending_deliveries": len(pending)},
        )

    async def stop(self) -> None:
        """Stop fanning out and delivering (an attempt under way is abandoned: it is made again at start)."""
        self._stopping = True
        tasks = list(self._lane_tasks)
        if self._fan_out_task is not None:
            tasks.append(self._fan_out_task)
        for task in tasks:
            task.cancel()
        for task in tasks:
            with contextlib.suppress(asyncio.CancelledError):
                await task
        # Outcomes already handed over are committed before the engine stops.
        await asyncio.gather(*self._recording, return_exceptions=True)
        await self._sender.close()

    def committed(self) -> None:
        """The engine committed events (its commit listener): fan them out."""
        self._log_moved.set()

    # -- endpoints ----------------------------------------------------------------------------------

    def endpoint(self, webhook_id: str) -> Endpoint | None:
        """An endpoint by id, as it is now."""
        return self._endpoints.get(webhook_id)

    def endpoints(self) -> list[Endpoint]:
        """Every endpoint, newest first."""
        return sorted(self._endpoints.values(), key=lambda e: e.webhook_id, reverse=True)

    async def check_url(self, url: str, field: str) -> None:
        """Refuse a URL whose host is not public (unless private addresses are allowed); ``field`` is the
        request field that carries it."""
        if self.config.allow_private:
            return
        try:
            await check_destination(url)
        except DestinationRefused as refused:
            raise ApiError(
                Reason.WEBHOOK_URL_NOT_ALLOWED,
                f"{field}: {refused}",
                metadata={"field": field},
                field_violations=[FieldViolation(field, str(refused))],
            ) from None

    async def create(
        self,
        *,
        owner_key_id: str,
        url: str,
        event_types: tuple[str, ...],
        secret: str,
        description: str,
        request_id: str,
        request_hash: str,
    ) -> tuple[Endpoint, str]:
        """Register an endpoint (its URL already checked); returns it with its secret. It receives the
        events committed from now on. The same ``request_id`` again returns the endpoint it made."""
        async with self._lock:
            if request_id:
                for existing in self._endpoints.values():
                    if existing.owner_key_id == owner_key_id and existing.request_id == request_id:
                        if existing.request_hash != request_hash:
                            raise ApiError(
                                Reason.IDEMPOTENCY_CONFLICT,
                                f"request_id {request_id!r} was used for another CreateWebhook request",
                                metadata={"request_id": request_id, "resource": existing.name},
                            )
                        return existing, existing.secrets[-1].secret
            now_us = self._clock.now_us()
            endpoint = Endpoint(
                webhook_id=f"{now_us:014x}{secrets.token_hex(4)}",
                owner_key_id=owner_key_id,
                url=url,
                event_types=event_types,
                description=description,
                state=EndpointState.ENABLED,
                disabled_reason="",
                secrets=(SigningSecret(secret or new_secret()),),
                cursor=await self._log.head(),
                failing_since_us=None,
                request_id=request_id,
                request_hash=request_hash,
                create_time_us=now_us,
                update_time_us=now_us,
            )
            await self._engine.execute(StoreRecords(store.insert_endpoint(endpoint)))
            self._endpoints[endpoint.webhook_id] = endpoint
            self._open_lane(endpoint.webhook_id)
        log.info("webhook created", extra={"event": "webhook.created", "webhook": endpoint.name})
        return endpoint, endpoint.secrets[-1].secret

    async def update(self, webhook_id: str, changes: EndpointChanges) -> Endpoint:
        """Change an endpoint (its new URL already checked). Enabling it delivers the events committed from
        then on; disabling it fails its pending deliveries."""
        async with self._lock:
            endpoint = self._require(webhook_id)
            now_us = self._clock.now_us()
            columns: dict[str, object] = {"update_time_us": now_us}
            writes: list[RecordWrite] = []
            if changes.url is not None and changes.url != endpoint.url:
                # Another endpoint as far as failures go: its record starts clean.
                columns.update(url=changes.url, failing_since_us=None)
                lane = self._lanes.get(webhook_id)
                if lane is not None:
                    lane.breaker = CircuitBreaker(self.config.breaker_threshold, self.config.breaker_reset)
            if changes.event_types is not None:
                columns["event_types"] = changes.event_types
            if changes.description is not None:
                columns["description"] = changes.description
            state = changes.state
            if state is not None and state is not endpoint.state:
                columns["state"] = state
                if state is EndpointState.ENABLED:
                    columns.update(disabled_reason="", cursor=await self._log.head(), failing_since_us=None)
                elif endpoint.state is EndpointState.ENABLED:
                    writes.append(store.fail_pending(webhook_id, now_us))
            await self._engine.execute(
                StoreRecords(store.together(store.update_endpoint(webhook_id, columns), *writes))
            )
            endpoint = self._changed(webhook_id, columns)
        return endpoint

    async def delete(self, webhook_id: str) -> None:
        """Delete an endpoint with its deliveries."""
        async with self._lock:
            endpoint = self._require(webhook_id)
            await self._engine.execute(StoreRecords(store.delete_endpoint(webhook_id)))
            del self._endpoints[webhook_id]
            self._close_lane(webhook_id)
        log.info("webhook deleted", extra={"event": "webhook.deleted", "webhook": endpoint.name})

    async def rotate(self, webhook_id: str, secret: str, grace_us: int) -> tuple[Endpoint, str, int]:
        """Replace the signing secret; the current one keeps signing for ``grace_us``. Returns the endpoint,
        the new secret and when the old one stops signing."""
        async with self._lock:
            endpoint = self._require(webhook_id)
            now_us = self._clock.now_us()
            expire_us = now_us + grace_us
            # Every older secret stops signing by the end of this grace at the latest: a rotation with no
            # grace retires them all at once (a leaked secret is replaced that way).
            kept = [
                SigningSecret(s.secret, min(s.expire_time_us or expire_us, expire_us))
                for s in endpoint.active_secrets(now_us)
                if grace_us > 0
            ]
            fresh = SigningSecret(secret or new_secret())
            rotated = (*kept[-(_MAX_SECRETS - 1) :], fresh)
            columns: dict[str, object] = {"secrets": rotated, "update_time_us": now_us}
            await self._engine.execute(StoreRecords(store.update_endpoint(webhook_id, columns)))
            endpoint = self._changed(webhook_id, columns)
        log.info("webhook secret rotated", extra={"event": "webhook.secret_rotated", "webhook": endpoint.name})
        return endpoint, fresh.secret, expire_us

    async def test(self, webhook_id: str, event_type: str) -> Attempt:
        """Send a test event to the endpoint now, whatever its state and breaker, and return the answer.
        It is not an event of the log and leaves no delivery behind."""
        endpoint = self._require(webhook_id)
        now_us = self._clock.now_us()
        event = events_pb2.Event(
            sequence=0,
            type=event_type,
            create_time=timestamp(now_us),
            resource=endpoint.name,
            webhook=webhook_message(endpoint, now_us),
        )
        body = _json(event)
        secrets_now = [s.secret for s in endpoint.active_secrets(now_us)]
        return await self._sender.send(endpoint.url, f"msg_test_{secrets.token_hex(8)}", body, secrets_now)

    async def retry(self, webhook_id: str, delivery_id: str) -> Delivery:
        """Attempt a pending or failed delivery again now, even while the endpoint's breaker is open; a
        failed one gets one more attempt."""
        async with self._lock:
            endpoint = self._require(webhook_id)
            lane = self._lanes.get(webhook_id)
            if endpoint.state is not EndpointState.ENABLED or lane is None:
                raise ApiError(
                    Reason.WEBHOOK_DISABLED,
                    f"{endpoint.name} is disabled; enable it with UpdateWebhook, then retry",
                    metadata={"name": endpoint.name},
                )
            delivery = lane.deliveries.get(delivery_id) or await self._reader.delivery(webhook_id, delivery_id)
            name = f"{endpoint.name}/deliveries/{delivery_id}"
            if delivery is None:
                raise ApiError(Reason.WEBHOOK_DELIVERY_NOT_FOUND, f"no delivery {name}", metadata={"name": name})
            if delivery.status is DeliveryStatus.SUCCEEDED:
                raise ApiError(
                    Reason.WEBHOOK_DELIVERY_SUCCEEDED,
                    f"{name} already succeeded; there is nothing to retry",
                    metadata={"name": name},
                )
            if lane.sending == delivery_id:
                return delivery  # being attempted right now
            now_us = self._clock.now_us()
            retried = dataclasses.replace(
                delivery,
                status=DeliveryStatus.PENDING,
                next_attempt_time_us=now_us,
                attempt_limit=max(delivery.attempt_limit, delivery.attempt_count + 1),
                complete_time_us=None,
            )
            await self._engine.execute(StoreRecords(store.save_delivery(retried)))
            lane.manual.add(delivery_id)
            lane.schedule(retried)
        return retried

    # -- fan-out ------------------------------------------------------------------------------------

    async def _fan_out_forever(self) -> None:
        while True:
            await self._log_moved.wait()
            self._log_moved.clear()
            try:
                while await self._fan_out_page():
                    pass
            except (StorageError, ApiError) as error:
                log.warning("webhook fan-out failed, retrying: %s", error)
                await asyncio.sleep(_STORAGE_RETRY)
                self._log_moved.set()

    async def _fan_out_page(self) -> bool:
        """Fan out one page of the log; whether there may be more."""
        async with self._lock:
            targets = [e for e in self._endpoints.values() if e.state is EndpointState.ENABLED]
            if not targets:
                return False
            events = await self._log.after(min(e.cursor for e in targets), _PAGE)
            if not events:
                return False
            head = events[-1].sequence
            now_us = self._clock.now_us()
            limit = self.config.retry.max_retries + 1
            made: list[Delivery] = []
            cursors: dict[str, int] = {}
            for endpoint in targets:
                if endpoint.cursor >= head:
                    continue
                cursors[endpoint.webhook_id] = head
                active, visible_to = self._owners(endpoint.owner_key_id)
                if not active:  # the key that registered it was revoked: its events are no longer its
                    continue
                wants = EventFilter.of(endpoint.event_types, visible_to=visible_to)
                made.extend(
                    Delivery(
                        delivery_id="",
                        webhook_id=endpoint.webhook_id,
                        event_sequence=event.sequence,
                        event_type=event.type,
                        status=DeliveryStatus.PENDING,
                        attempt_count=0,
                        attempt_limit=limit,
                        next_attempt_time_us=now_us,
                        last_attempt=None,
                        create_time_us=now_us,
                        complete_time_us=None,
                    )
                    for event in events
                    if event.sequence > endpoint.cursor and wants.matches(event)
                )
            made.sort(key=lambda d: (d.event_sequence, d.webhook_id))
            made = [dataclasses.replace(d, delivery_id=self._delivery_id(now_us)) for d in made]
            await self._engine.execute(StoreRecords(store.fan_out(made, cursors)))
            for webhook_id, cursor in cursors.items():
                self._changed(webhook_id, {"cursor": cursor})
            by_sequence = {event.sequence: event for event in events}
            for delivery in made:
                self._remember_body(by_sequence[delivery.event_sequence])
                self._lanes[delivery.webhook_id].schedule(delivery)
            return len(events) == _PAGE

    # -- lanes --------------------------------------------------------------------------------------

    def _open_lane(self, webhook_id: str) -> None:
        if webhook_id in self._lanes or self._stopping:
            return
        breaker = CircuitBreaker(self.config.breaker_threshold, self.config.breaker_reset)
        lane = self._lanes[webhook_id] = _Lane(breaker)
        lane.task = asyncio.create_task(self._deliver_forever(webhook_id, lane), name=f"agentflow-webhook-{webhook_id}")
        self._lane_tasks.add(lane.task)
        lane.task.add_done_callback(self._lane_tasks.discard)

    def _close_lane(self, webhook_id: str) -> None:
        lane = self._lanes.pop(webhook_id, None)
        if lane is not None and lane.task is not None:
            # An attempt under way finishes; its outcome is not recorded for a closed lane.
            lane.wake.set()

    async def _deliver_forever(self, webhook_id: str, lane: _Lane) -> None:
        while self._lanes.get(webhook_id) is lane:
            delivery = self._next_due(lane)
            if delivery is None:
                await self._sleep(lane, None if not lane.due else (lane.due[0][0] - self._clock.now_us()) / 1e6)
                continue
            manual = delivery.delivery_id in lane.manual
            if not manual and not lane.breaker.allow():
                await self._sleep(lane, max(lane.breaker.retry_after(), 0.01))
                continue
            heapq.heappop(lane.due)
            lane.manual.discard(delivery.delivery_id)
            lane.sending = delivery.delivery_id
            try:
                await self._attempt(webhook_id, lane, delivery)
            except asyncio.CancelledError:
                lane.breaker.abandon()
                raise
            except Exception:
                log.exception("webhook delivery %s failed unexpectedly", delivery.delivery_id)
                lane.breaker.abandon()
                lane.schedule(dataclasses.replace(delivery, next_attempt_time_us=self._later(_STORAGE_RETRY)))
            finally:
                lane.sending = None

    def _next_due(self, lane: _Lane) -> Delivery | None:
        """The delivery due now, if any (stale heap entries are dropped on the way)."""
        now_us = self._clock.now_us()
        while lane.due:
            due_us, _, delivery_id = lane.due[0]
            delivery = lane.deliveries.get(delivery_id)
            if delivery is None or delivery.next_attempt_time_us != due_us:
                heapq.heappop(lane.due)
                continue
            return delivery if due_us <= now_us else None
        return None

    @staticmethod
    async def _sleep(lane: _Lane, seconds: float | None) -> None:
        lane.wake.clear()
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(None if seconds is None else max(seconds, 0.0)):
                await lane.wake.wait()

    async def _attempt(self, webhook_id: str, lane: _Lane, delivery: Delivery) -> None:
        endpoint = self._endpoints.get(webhook_id)
        if endpoint is None or endpoint.state is not EndpointState.ENABLED:
            return
        body = await self._body(delivery.event_sequence)
        now_us = self._clock.now_us()
        attempt = await self._sender.send(
            endpoint.url, delivery.delivery_id, body, [s.secret for s in endpoint.active_secrets(now_us)]
        )
        if self._lanes.get(webhook_id) is not lane:
            return  # deleted or disabled meanwhile: nothing left to record it on
        endpoint = self._endpoints[webhook_id]
        count = delivery.attempt_count + 1
        columns: dict[str, object] = {}
        disabled_reason = ""
        if attempt.success:
            lane.breaker.record_success()
            outcome = dataclasses.replace(
                delivery,
                status=DeliveryStatus.SUCCEEDED,
                attempt_count=count,
                next_attempt_time_us=None,
                last_attempt=attempt,
                complete_time_us=attempt.attempt_time_us,
            )
            if endpoint.failing_since_us is not None:
                columns["failing_since_us"] = None
        else:
            lane.breaker.record_failure()
            failing_since = endpoint.failing_since_us
            if failing_since is None:
                failing_since = columns["failing_since_us"] = attempt.attempt_time_us
            if attempt.http_status == 410:
                disabled_reason = "the endpoint answered 410 Gone"
            elif attempt.attempt_time_us - failing_since >= self.config.disable_after * 1e6:
                disabled_reason = (
                    f"every attempt failed for {(attempt.attempt_time_us - failing_since) / 3.6e9:.1f} hours "
                    f"(last: {attempt.error})"
                )
            final = count >= delivery.attempt_limit or bool(disabled_reason)
            outcome = dataclasses.replace(
                delivery,
                status=DeliveryStatus.FAILED if final else DeliveryStatus.PENDING,
                attempt_count=count,
                next_attempt_time_us=None
                if final
                else self._later(self.config.retry.delay(count, attempt.retry_after), attempt.attempt_time_us),
                last_attempt=attempt,
                complete_time_us=attempt.attempt_time_us if final else None,
            )
        if disabled_reason:
            async with self._lock:
                if self._lanes.get(webhook_id) is not lane:
                    return  # deleted or disabled by its owner while the attempt was made
                endpoint = self._endpoints[webhook_id]
                columns.update(
                    state=EndpointState.DISABLED_BY_FAILURE,
                    disabled_reason=disabled_reason,
                    update_time_us=attempt.attempt_time_us,
                )
                disabled = dataclasses.replace(endpoint, **columns)  # type: ignore[arg-type]
                write = store.together(
                    store.save_delivery(outcome, columns),
                    store.fail_pending(webhook_id, attempt.attempt_time_us),
                )
                if not await self._store_outcome(lane, delivery, write, (self._disabled_event(disabled),)):
                    return
                self._changed(webhook_id, columns)
            log.warning(
                "webhook disabled",
                extra={"event": "webhook.disabled", "webhook": endpoint.name, "reason": disabled_reason},
            )
        elif columns:
            if not await self._store_outcome(lane, delivery, store.save_delivery(outcome, columns), ()):
                return
            if webhook_id in self._endpoints:
                self._changed(webhook_id, columns)
        else:
            # Nothing of the endpoint changes, so the next attempt need not wait for this outcome's commit
            # (outcomes commit in the order they are handed over). Should the server stop before it
            # commits, the attempt is made again at start, with the same webhook-id.
            recording = asyncio.ensure_future(self._engine.execute(StoreRecords(store.save_delivery(outcome))))
            self._recording.add(recording)
            recording.add_done_callback(functools.partial(self._recorded, lane, delivery))
        self._count(attempt, count, outcome.status is DeliveryStatus.FAILED)
        lane.deliveries.pop(delivery.delivery_id, None)
        if outcome.status is DeliveryStatus.PENDING:
            lane.schedule(outcome)

    def _recorded(self, lane: _Lane, delivery: Delivery, recording: asyncio.Future[Any]) -> None:
        """An outcome handed over without waiting has committed, or failed to: then the delivery is
        attempted again a little later, as the ledger still has it."""
        self._recording.discard(recording)
        if recording.cancelled() or recording.exception() is None:
            return
        log.warning(
            "webhook delivery %s not recorded, attempting again: %s", delivery.delivery_id, recording.exception()
        )
        if self._lanes.get(delivery.webhook_id) is lane:
            lane.schedule(dataclasses.replace(delivery, next_attempt_time_us=self._later(_STORAGE_RETRY)))

    async def _store_outcome(
        self, lane: _Lane, delivery: Delivery, write: RecordWrite, events: tuple[NewEvent, ...]
    ) -> bool:
        """Write an attempt's outcome; if that fails, the delivery is attempted again a little later."""
        try:
            await self._engine.execute(StoreRecords(write, events))
        except (StorageError, ApiError) as error:
            log.warning("webhook delivery %s not recorded, attempting again: %s", delivery.delivery_id, error)
            lane.schedule(dataclasses.replace(delivery, next_attempt_time_us=self._later(_STORAGE_RETRY)))
            return False
        return True

    def _disabled_event(self, endpoint: Endpoint) -> NewEvent:
        active, visible_to = self._owners(endpoint.owner_key_id)
        addresses = tuple(sorted(visible_to)) if active and visible_to is not None else ()
        return NewEvent(
            type="webhook.disabled",
            resource=endpoint.name,
            addresses=addresses,
            task_id="",
            payload=webhook_message(endpoint, self._clock.now_us()).SerializeToString(),
        )

    def _count(self, attempt: Attempt, count: int, failed: bool) -> None:
        if self._metrics is None:
            return
        seconds = attempt.duration_us / 1e6
        self._metrics.webhook_attempts.labels("success" if attempt.success else "failure").inc()
        self._metrics.webhook_attempt_seconds.observe(seconds)
        if failed:
            self._metrics.webhook_failures.inc()
        activity: Activity = self._metrics.activity
        activity.webhook_attempt(seconds, attempt.success, retry=count > 1, failed=failed)

    # -- helpers ------------------------------------------------------------------------------------

    def _require(self, webhook_id: str) -> Endpoint:
        endpoint = self._endpoints.get(webhook_id)
        if endpoint is None:
            raise webhook_not_found(webhook_id)
        return endpoint

    def _changed(self, webhook_id: str, columns: dict[str, object]) -> Endpoint:
        """Apply committed column changes to the endpoint in memory, and open or close its lane. (An
        endpoint deleted meanwhile stays deleted: its row's update changed nothing either.)"""
        endpoint = self._endpoints.get(webhook_id)
        if endpoint is None:
            raise webhook_not_found(webhook_id)
        if columns:
            endpoint = dataclasses.replace(endpoint, **columns)  # type: ignore[arg-type]
            self._endpoints[webhook_id] = endpoint
        if endpoint.state is EndpointState.ENABLED:
            self._open_lane(webhook_id)
            if "cursor" in columns and "state" in columns:
                self._log_moved.set()
        else:
            self._close_lane(webhook_id)
        return endpoint

    def _delivery_id(self, now_us: int) -> str:
        """A new delivery id. Time-ordered and strictly growing (at least a microsecond apart), so "newest
        first" lists an endpoint's deliveries in reverse event order."""
        self._last_id_us = max(now_us, self._last_id_us + 1)
        return f"msg_{self._last_id_us:014x}{secrets.token_hex(6)}"

    def _later(self, seconds: float, from_us: int | None = None) -> int:
        return (self._clock.now_us() if from_us is None else from_us) + round(seconds * 1e6)

    def _remember_body(self, event: StoredEvent) -> None:
        if event.sequence not in self._bodies:
            self._bodies[event.sequence] = _json(event_message(event))
            while len(self._bodies) > _BODY_CACHE:
                self._bodies.popitem(last=False)

    async def _body(self, sequence: int) -> bytes:
        body = self._bodies.get(sequence)
        if body is None:
            found = await self._log.after(sequence - 1, 1)
            if not found or found[0].sequence != sequence:
                raise StorageError(f"event {sequence} is not in the log")
            self._remember_body(found[0])
            body = self._bodies[sequence]
        return body


def _json(event: events_pb2.Event) -> bytes:
    """The delivery body: the event in protobuf's JSON mapping, compact."""
    return json.dumps(json_format.MessageToDict(event), separators=(",", ":")).encode()
