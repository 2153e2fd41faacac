"""EventService: in the v1 contract; each method answers UNIMPLEMENTED until its feature lands."""

from __future__ import annotations

from collections.abc import AsyncIterator

from agentflow_payments.v1 import events_pb2, events_pb2_grpc

from .context import Context
from .unimplemented import not_served


class EventServicer(events_pb2_grpc.EventServiceServicer):
    """Serves EventService."""

    async def SubscribeEvents(
        self, request: events_pb2.SubscribeEventsRequest, context: Context
    ) -> AsyncIterator[events_pb2.SubscribeEventsResponse]:
        raise not_served("EventService.SubscribeEvents", "event streams")
        yield  # unreachable: makes this the async generator a server stream needs

    async def ListEvents(
        self, request: events_pb2.ListEventsRequest, context: Context
    ) -> events_pb2.ListEventsResponse:
        raise not_served("EventService.ListEvents", "event streams")
