"""EventService: the event log, listed in pages or streamed from a cursor and then live.

SubscribeEvents yields serialized responses: the hub serializes each event once for all its subscribers,
and the handler registered by :func:`add_event_service` passes the bytes through instead of serializing
a message per stream.
"""

from __future__ import annotations

import re
from collections.abc import AsyncIterator, Sequence
from typing import Any

import grpc

from agentflow_payments import Reason
from agentflow_payments.v1 import events_pb2

from ..auth import current_principal
from ..clock import Clock
from ..errors import ApiError
from ..events import EventFilter, EventHub, check_type_pattern
from ..ledger.events import EventReader, StoredEvent
from ..tokens import TokenRegistry
from ..wire import event_message, subscribe_response_bytes, timestamp
from . import pagination
from .context import Context
from .validation import MAX_TASK_ID, Fields

_RESOURCE = re.compile(r"[a-z]+/[0-9A-Za-z_-]{1,88}")
_MAX_TYPES = 32
_PAGE = 1000
# Most log rows one ListEvents call reads looking for matches; it answers with fewer and a token past them.
_SCAN_LIMIT = 10_000


def event_type_patterns(fields: Fields, field: str, patterns: Sequence[str]) -> tuple[str, ...]:
    """Checked event type patterns (types or ``family.*`` wildcards, at most 32), without repeats."""
    if len(patterns) > _MAX_TYPES:
        fields.add(field, f"must hold at most {_MAX_TYPES} types")
    for index, pattern in enumerate(patterns):
        problem = check_type_pattern(pattern)
        if problem is not None:
            fields.add(f"{field}[{index}]", problem)
    return tuple(dict.fromkeys(patterns))


def event_filter(tokens: TokenRegistry, request_filter: events_pb2.EventFilter) -> EventFilter:
    """The checked filter of a request, limited to what the caller's key may see."""
    fields = Fields(tokens)
    event_type_patterns(fields, "filter.types", request_filter.types)
    address = fields.optional_address("filter.address", request_filter.address)
    task_id = fields.text("filter.task_id", request_filter.task_id, MAX_TASK_ID) or None
    resource = request_filter.resource or None
    if resource is not None and not _RESOURCE.fullmatch(resource):
        fields.add("filter.resource", "must be a resource name such as payments/{id} or escrows/{id}")
    fields.check()
    principal = current_principal()
    if address is not None and not principal.reads_everything:
        principal.require_address(address, "filter.address")
    return EventFilter.of(
        request_filter.types,
        address=address,
        task_id=task_id,
        resource=resource,
        visible_to=None if principal.reads_everything else principal.addresses,
    )


async def read_events(log: EventReader, after: int, limit: int, where: EventFilter) -> list[StoredEvent]:
    """Up to ``limit`` log rows after ``after``, oldest first, narrowed in SQL by the filter (the caller
    still checks each with ``where.matches``)."""
    addresses = where.visible_to
    if where.address is not None:
        addresses = frozenset({where.address})
    return await log.after(
        after,
        limit,
        resource=where.resource,
        task_id=where.task_id,
        types=where.types,
        families=where.families,
        addresses=addresses,
    )


class EventServicer:
    """Serves EventService (registered by :func:`add_event_service`)."""

    def __init__(
        self, hub: EventHub, log: EventReader, tokens: TokenRegistry, clock: Clock, heartbeat_interval: float
    ) -> None:
        self._hub = hub
        self._log = log
        self._tokens = tokens
        self._clock = clock
        self._heartbeat_interval = heartbeat_interval

    async def SubscribeEvents(
        self, request: events_pb2.SubscribeEventsRequest, context: Context
    ) -> AsyncIterator[bytes]:
        """The log after ``start_after``, then live; serialized SubscribeEventsResponse messages."""
        where = event_filter(self._tokens, request.filter)
        subscription = await self._hub.subscribe(where)
        try:
            joined = subscription.joined_at
            last = request.start_after
            if request.live_only:
                # From what is committed now: the hub may not have read the newest commits yet.
                last = max(last, await self._log.head())
            # The log up to where the subscription joined comes from the hub's recent events when they reach
            # back far enough (a resume after a cut-off), else from the database; the rest comes live.
            remembered = self._hub.recent(last, joined, where)
            if remembered is not None:
                for _event, response in remembered:
                    yield response
                last = max(last, joined)
            while last < joined:
                page = await read_events(self._log, last, _PAGE, where)
                replayed = [event for event in page if event.sequence <= joined]
                for event in replayed:
                    if where.matches(event):
                        yield subscribe_response_bytes(event)
                    last = event.sequence
                if len(replayed) < _PAGE:  # nothing more (that the SQL narrowing lets through) up to there
                    break
            last = max(last, joined)
            while True:
                item = await subscription.next(self._heartbeat_interval)
                if subscription.shutting_down:
                    raise ApiError(
                        Reason.SHUTTING_DOWN,
                        f"the server is shutting down; resume with start_after={last}",
                        metadata={"last_sequence": str(last)},
                    )
                if subscription.too_slow:
                    raise ApiError(
                        Reason.SUBSCRIBER_TOO_SLOW,
                        f"this stream fell more than {self._hub.max_backlog} events behind; resume with "
                        f"start_after={last}",
                        metadata={"last_sequence": str(last)},
                    )
                if item is None:
                    heartbeat = events_pb2.Heartbeat(time=timestamp(self._clock.now_us()), head_sequence=self._hub.head)
                    yield events_pb2.SubscribeEventsResponse(heartbeat=heartbeat).SerializeToString()
                    continue
                event, response = item
                if event.sequence <= last:
                    continue
                last = event.sequence
                yield response
        finally:
            subscription.close()

    async def ListEvents(
        self, request: events_pb2.ListEventsRequest, context: Context
    ) -> events_pb2.ListEventsResponse:
        """A page of the log, oldest first."""
        where = event_filter(self._tokens, request.filter)
        size = pagination.page_size(request.page_size)
        after = request.start_after
        cursor = pagination.decode_token(request, 1)
        if cursor is not None:
            if not isinstance(cursor[0], int) or cursor[0] < 0:
                fields = Fields(self._tokens)
                fields.add("page_token", "is not a token this server issued")
                fields.check()
            after = cursor[0]
        found: list[StoredEvent] = []
        scanned = 0
        more = True
        while len(found) < size and scanned < _SCAN_LIMIT:
            page = await read_events(self._log, after, _PAGE, where)
            for event in page:
                after = event.sequence
                if where.matches(event):
                    found.append(event)
                    if len(found) == size:
                        break
            scanned += len(page)
            if len(page) < _PAGE and len(found) < size:
                more = False
                break
        response = events_pb2.ListEventsResponse(events=[event_message(e) for e in found])
        if more:
            response.next_page_token = pagination.encode_token(request, [after])
        return response


def _passthrough(message: bytes) -> bytes:
    return message


def add_event_service(server: grpc.aio.Server, servicer: EventServicer) -> None:
    """Register EventService; SubscribeEvents' responses are sent as the servicer serialized them."""
    name = events_pb2.DESCRIPTOR.services_by_name["EventService"].full_name
    handlers: dict[str, Any] = {
        "SubscribeEvents": grpc.unary_stream_rpc_method_handler(
            servicer.SubscribeEvents,
            request_deserializer=events_pb2.SubscribeEventsRequest.FromString,
            response_serializer=_passthrough,
        ),
        "ListEvents": grpc.unary_unary_rpc_method_handler(
            servicer.ListEvents,
            request_deserializer=events_pb2.ListEventsRequest.FromString,
            response_serializer=events_pb2.ListEventsResponse.SerializeToString,
        ),
    }
    server.add_generic_rpc_handlers((grpc.method_handlers_generic_handler(name, handlers),))
