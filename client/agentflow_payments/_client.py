"""``AsyncClient``: one channel to the service, its six stubs, the API key on every call, typed errors."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable, Sequence
from types import TracebackType
from typing import TYPE_CHECKING, Any

import grpc
from grpc.aio import ClientCallDetails

from ._exceptions import Cancelled, SubscriberTooSlow, Unavailable, from_rpc_error
from .v1 import (
    accounts_pb2_grpc,
    admin_pb2_grpc,
    escrow_pb2_grpc,
    events_pb2,
    events_pb2_grpc,
    payments_pb2,
    payments_pb2_grpc,
    webhooks_pb2_grpc,
)

_FINAL = frozenset(
    {payments_pb2.PAYMENT_STATUS_COMPLETED, payments_pb2.PAYMENT_STATUS_FAILED, payments_pb2.PAYMENT_STATUS_CANCELLED}
)

DEFAULT_TIMEOUT = 30.0
"""Seconds a unary call may take when the caller sets no deadline. Streams have none."""

# Long event streams sit idle for minutes: ping so that a dead connection is
# noticed (the server's heartbeats cover the application level).
_CHANNEL_OPTIONS: tuple[tuple[str, Any], ...] = (
    ("grpc.keepalive_time_ms", 60_000),
    ("grpc.keepalive_timeout_ms", 20_000),
    ("grpc.http2.max_pings_without_data", 0),
)


# grpc-stubs makes the interceptor bases generic; grpcio's classes are not subscriptable at runtime.
if TYPE_CHECKING:
    _UnaryBase = grpc.aio.UnaryUnaryClientInterceptor[Any, Any]
    _StreamBase = grpc.aio.UnaryStreamClientInterceptor[Any, Any]
else:
    _UnaryBase = grpc.aio.UnaryUnaryClientInterceptor
    _StreamBase = grpc.aio.UnaryStreamClientInterceptor


def _details(details: ClientCallDetails, api_key: str | None, timeout: float | None) -> ClientCallDetails:
    metadata = grpc.aio.Metadata(*(details.metadata or ()))
    if api_key is not None and "authorization" not in metadata:
        metadata["authorization"] = f"Bearer {api_key}"
    return ClientCallDetails(
        method=details.method,
        timeout=details.timeout if details.timeout is not None else timeout,
        metadata=metadata,
        credentials=details.credentials,
        wait_for_ready=details.wait_for_ready,
    )


class _UnaryInterceptor(_UnaryBase):
    def __init__(self, api_key: str | None, timeout: float | None) -> None:
        self._api_key = api_key
        self._timeout = timeout

    async def intercept_unary_unary(
        self, continuation: Callable[..., Any], client_call_details: ClientCallDetails, request: Any
    ) -> Any:
        call = await continuation(_details(client_call_details, self._api_key, self._timeout), request)
        try:
            return await call
        except grpc.aio.AioRpcError as error:
            raise from_rpc_error(error) from error


class _StreamInterceptor(_StreamBase):
    def __init__(self, api_key: str | None) -> None:
        self._api_key = api_key

    async def intercept_unary_stream(
        self, continuation: Callable[..., Any], client_call_details: ClientCallDetails, request: Any
    ) -> AsyncIterator[Any]:
        call = await continuation(_details(client_call_details, self._api_key, None), request)

        async def responses() -> AsyncIterator[Any]:
            try:
                async for response in call:
                    yield response
            except grpc.aio.AioRpcError as error:
                raise from_rpc_error(error) from error

        return responses()


class AsyncClient:
    """A connection to AgentFlow Payments.

    Each service of the v1 API is an attribute holding its generated ``grpc.aio``
    stub: ``payments``, ``escrows``, ``webhooks``, ``events``, ``accounts`` and
    ``admin``. Every call carries ``authorization: Bearer <api_key>``, gets
    ``timeout`` seconds unless it sets its own deadline (streams get none), and
    raises an :class:`~agentflow_payments.AgentflowError` subclass on failure.

    Args:
        target: ``host:port`` of the server.
        api_key: the API key; ``None`` for calls that need none (health).
        tls: use TLS; ``root_certificates`` (PEM) overrides the system CA bundle.
        timeout: the default deadline of unary calls, in seconds; ``None`` for none.
        options: extra gRPC channel options, added to the keepalive defaults.
    """

    def __init__(
        self,
        target: str,
        api_key: str | None = None,
        *,
        tls: bool = False,
        root_certificates: bytes | None = None,
        timeout: float | None = DEFAULT_TIMEOUT,
        options: Sequence[tuple[str, Any]] = (),
    ) -> None:
        # grpc-stubs types the interceptors parameter too narrowly for a mixed list.
        interceptors: Sequence[Any] = [_UnaryInterceptor(api_key, timeout), _StreamInterceptor(api_key)]
        channel_options = [*_CHANNEL_OPTIONS, *options]
        if tls or root_certificates is not None:
            credentials = grpc.ssl_channel_credentials(root_certificates=root_certificates)
            self.channel = grpc.aio.secure_channel(target, credentials, channel_options, interceptors=interceptors)
        else:
            self.channel = grpc.aio.insecure_channel(target, channel_options, interceptors=interceptors)
        self.payments = payments_pb2_grpc.PaymentServiceStub(self.channel)
        self.escrows = escrow_pb2_grpc.EscrowServiceStub(self.channel)
        self.webhooks = webhooks_pb2_grpc.WebhookServiceStub(self.channel)
        self.events = events_pb2_grpc.EventServiceStub(self.channel)
        self.accounts = accounts_pb2_grpc.AccountServiceStub(self.channel)
        self.admin = admin_pb2_grpc.AdminServiceStub(self.channel)

    async def subscribe_events(
        self,
        filter: events_pb2.EventFilter | None = None,
        *,
        start_after: int = 0,
        live_only: bool = False,
        max_backoff: float = 5.0,
    ) -> AsyncIterator[events_pb2.Event]:
        """The events matching ``filter`` after ``start_after`` (from now with ``live_only``), then live, for
        as long as the caller iterates.

        When the stream breaks (the server restarts, is unreachable or ends it as too slow, or the
        connection is cut), it reconnects with growing pauses up to ``max_backoff`` seconds and resumes
        after the last event it yielded: no event is skipped or yielded twice. Heartbeats are consumed here;
        an idle heartbeat moves the cursor to the log's head, so a resume does not replay what the filter
        passed over.
        Other errors (a bad filter, a key that may not) are raised.
        """
        last = start_after
        # With live_only the cursor is unknown until the first event or heartbeat: a reconnect before that
        # starts from "now" again.
        known = not live_only
        pause = 0.1
        while True:
            request = events_pb2.SubscribeEventsRequest(start_after=last, live_only=not known)
            if filter is not None:
                request.filter.CopyFrom(filter)
            try:
                async for response in self.events.SubscribeEvents(request):
                    pause = 0.1
                    if response.HasField("event"):
                        if known and response.event.sequence <= last:
                            continue
                        last, known = response.event.sequence, True
                        yield response.event
                    else:
                        last, known = max(last, response.heartbeat.head_sequence), True
            except (Unavailable, SubscriberTooSlow, Cancelled):
                pass
            await asyncio.sleep(pause)
            pause = min(max_backoff, pause * 2)

    async def watch_payment(self, name: str, *, max_backoff: float = 5.0) -> AsyncIterator[payments_pb2.Payment]:
        """A payment's state now, then each change until it is COMPLETED, FAILED or CANCELLED.

        When the stream breaks it reconnects with growing pauses up to ``max_backoff`` seconds; the server
        sends the current state again, which is yielded only if it changed. Other errors (NOT_FOUND, a key
        that may not see it) are raised.
        """
        last: payments_pb2.Payment | None = None
        pause = 0.1
        while True:
            try:
                async for response in self.payments.WatchPayment(payments_pb2.WatchPaymentRequest(name=name)):
                    pause = 0.1
                    payment = response.payment
                    if last is None or (payment.status, payment.update_time) != (last.status, last.update_time):
                        last = payment
                        yield payment
                    if payment.status in _FINAL:
                        return
            except (Unavailable, Cancelled):
                pass
            await asyncio.sleep(pause)
            pause = min(max_backoff, pause * 2)

    async def close(self) -> None:
        """Close the channel; calls in flight are cancelled."""
        await self.channel.close(None)

    async def __aenter__(self) -> AsyncClient:
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.close()
