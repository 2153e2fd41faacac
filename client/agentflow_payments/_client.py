"""``AsyncClient``: one channel to the service, a typed method per RPC, the API key on every call, typed errors.

The methods take Python values (``int`` amounts, enums by name, ``timedelta``
expiries) and return the generated messages, unwrapped where a response holds
one. The six generated stubs stay reachable as attributes for anything the
methods do not cover.
"""

from __future__ import annotations

import asyncio
import datetime
from collections.abc import AsyncIterator, Callable, Mapping, Sequence
from types import TracebackType
from typing import TYPE_CHECKING, Any, TypeVar

import grpc
from google.protobuf import field_mask_pb2
from grpc.aio import ClientCallDetails

from . import _convert as convert
from ._convert import Amount, EnumValue, Page, When
from ._exceptions import AgentflowError, Cancelled, SubscriberTooSlow, Unavailable, from_item_error, from_rpc_error
from ._retry import WAIT_AND_RETRY, RetryConfig, wait_out, with_retries
from .v1 import (
    accounts_pb2,
    accounts_pb2_grpc,
    admin_pb2,
    admin_pb2_grpc,
    common_pb2,
    escrow_pb2,
    escrow_pb2_grpc,
    events_pb2,
    events_pb2_grpc,
    payments_pb2,
    payments_pb2_grpc,
    webhooks_pb2,
    webhooks_pb2_grpc,
)

_Request = TypeVar("_Request")
_Response = TypeVar("_Response")

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
    """A connection to AgentFlow Payments, for ``asyncio`` programs.

    There is one method per RPC (``submit_payment``, ``create_escrow``, ``subscribe_events``...). Every call
    carries ``authorization: Bearer <api_key>``, gets ``timeout`` seconds unless the method is given its own
    (streams get none), and raises an :class:`~agentflow_payments.AgentflowError` subclass on failure.

    Reads, and writes that carry a ``request_id`` (the methods make one when none is given), are retried
    after UNAVAILABLE, DEADLINE_EXCEEDED or CANCELLED from the server as ``retry`` says, each attempt with the
    full timeout: the server applies a request id once, so a retried payment never pays twice. Other calls
    are made once.

    The generated ``grpc.aio`` stubs are attributes too (``payments``, ``escrows``, ``webhooks``,
    ``events``, ``accounts``, ``admin``), with the same key, deadline and errors but no retries.

    Args:
        target: ``host:port`` of the server.
        api_key: the API key; ``None`` for calls that need none (health).
        tls: use TLS; ``root_certificates`` (PEM) overrides the system CA bundle.
        timeout: the default deadline of each unary attempt, in seconds; ``None`` for none.
        options: extra gRPC channel options, added to the keepalive defaults.
        retry: when to try a retryable call again; ``RetryConfig(max_attempts=1)`` never does.
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
        retry: RetryConfig = RetryConfig(),  # noqa: B008 (frozen, so one shared default is safe)
    ) -> None:
        self._retry = retry
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

    async def _call(
        self,
        method: grpc.aio.UnaryUnaryMultiCallable[_Request, _Response],
        request: _Request,
        timeout: float | None,
        *,
        retry: bool,
    ) -> _Response:
        async def attempt() -> _Response:
            return await method(request, timeout=timeout)

        # A call without a request id may act twice if made again after a failure; a rate limit or a full
        # queue refused it before it did anything, so it is made again after those in any case.
        return await with_retries(self._retry, attempt, may_act_twice=not retry)

    # Payments

    async def submit_payment(
        self,
        payer: str,
        payee: str,
        token: str,
        amount: Amount,
        *,
        priority: EnumValue | None = None,
        task_id: str = "",
        memo: str = "",
        metadata: Mapping[str, str] | None = None,
        request_id: str | None = None,
        timeout: float | None = None,
    ) -> payments_pb2.Payment:
        """Pay ``amount`` base units of ``token`` from ``payer`` to ``payee``; the answer comes once the payment
        is durably queued (status QUEUED, with its fee and name).

        ``priority`` is ``"low"``, ``"normal"`` (the default), ``"high"`` or ``"urgent"``. A ``request_id`` makes
        the call idempotent; without one a new id is made, so the SDK's own retries pay once.
        Raises ``InsufficientBalance``, ``QueueFull``, ``InvalidArgument`` (naming the field),
        ``IdempotencyConflict``...
        """
        request = _payment_request(
            payer, payee, token, amount, priority, task_id, memo, metadata, convert.request_id(request_id)
        )
        response = await self._call(self.payments.SubmitPayment, request, timeout, retry=True)
        return response.payment

    async def submit_payments(
        self,
        requests: Sequence[payments_pb2.SubmitPaymentRequest | Mapping[str, Any]],
        *,
        timeout: float | None = None,
    ) -> list[payments_pb2.Payment | AgentflowError]:
        """Submit many payments in one call: for each request, in order, its ``Payment`` or the
        :class:`AgentflowError` that refused it (one item's refusal does not refuse the others).

        A request is a ``SubmitPaymentRequest`` or a mapping of :meth:`submit_payment`'s parameters. Each
        without a ``request_id`` gets one, so a retried call pays each item once.
        """
        items: list[payments_pb2.SubmitPaymentRequest] = []
        for index, item in enumerate(requests):
            if isinstance(item, payments_pb2.SubmitPaymentRequest):
                message = payments_pb2.SubmitPaymentRequest()
                message.CopyFrom(item)
                message.request_id = convert.request_id(message.request_id)
            elif isinstance(item, Mapping):
                fields = dict(item)
                try:
                    message = _payment_request(
                        fields.pop("payer"),
                        fields.pop("payee"),
                        fields.pop("token"),
                        fields.pop("amount"),
                        fields.pop("priority", None),
                        fields.pop("task_id", ""),
                        fields.pop("memo", ""),
                        fields.pop("metadata", None),
                        convert.request_id(fields.pop("request_id", None)),
                    )
                except KeyError as missing:
                    raise TypeError(f"requests[{index}] has no {missing.args[0]}") from None
                if fields:
                    raise TypeError(f"requests[{index}] has unknown keys: {', '.join(sorted(fields))}")
            else:
                raise TypeError(f"requests[{index}] must be a SubmitPaymentRequest or a mapping")
            items.append(message)
        request = payments_pb2.SubmitPaymentsRequest(requests=items)
        response = await self._call(self.payments.SubmitPayments, request, timeout, retry=True)
        results: list[payments_pb2.Payment | AgentflowError] = [
            AgentflowError(grpc.StatusCode.INTERNAL, "MISSING_RESULT", "the server sent no result for this item")
        ] * len(items)
        for result in response.results:
            results[result.index] = result.payment if result.HasField("payment") else from_item_error(result.error)
        return results

    async def get_payment(self, name: str, *, timeout: float | None = None) -> payments_pb2.Payment:
        """The payment named ``name`` (``payments/...``). Raises ``NotFound`` when unknown."""
        request = payments_pb2.GetPaymentRequest(name=name)
        return (await self._call(self.payments.GetPayment, request, timeout, retry=True)).payment

    async def list_payments(
        self,
        *,
        payer: str = "",
        payee: str = "",
        task_id: str = "",
        status: EnumValue | None = None,
        token: str = "",
        page_size: int = 0,
        page_token: str = "",
        timeout: float | None = None,
    ) -> Page[payments_pb2.Payment]:
        """One page of payments, newest first, filtered by what is given (``status`` by name: ``"queued"``...)."""
        request = payments_pb2.ListPaymentsRequest(
            payer=payer,
            payee=payee,
            task_id=task_id,
            status=convert.enum(payments_pb2.PaymentStatus, status, "status"),  # type: ignore[arg-type]
            token=token,
            page_size=page_size,
            page_token=page_token,
        )
        response = await self._call(self.payments.ListPayments, request, timeout, retry=True)
        return Page(list(response.payments), response.next_page_token)

    async def cancel_payment(
        self, name: str, reason: str = "", *, timeout: float | None = None
    ) -> payments_pb2.Payment:
        """Cancel a payment that is still queued; its funds go back to the payer's available balance.
        Raises ``FailedPrecondition`` (PAYMENT_NOT_CANCELLABLE) once it is processing or final."""
        request = payments_pb2.CancelPaymentRequest(name=name, reason=reason)
        return (await self._call(self.payments.CancelPayment, request, timeout, retry=False)).payment

    async def quote_fee(
        self,
        payer: str,
        token: str,
        amount: Amount,
        *,
        priority: EnumValue | None = None,
        timeout: float | None = None,
    ) -> common_pb2.FeeBreakdown:
        """The fee a payment of ``amount`` would be charged now: the same breakdown acceptance would fix."""
        request = payments_pb2.QuoteFeeRequest(
            payer=payer,
            token=token,
            amount=convert.amount(amount),
            priority=convert.enum(common_pb2.Priority, priority, "priority"),  # type: ignore[arg-type]
        )
        return (await self._call(self.payments.QuoteFee, request, timeout, retry=True)).fee

    async def get_batch(self, name: str, *, timeout: float | None = None) -> payments_pb2.Batch:
        """The settlement batch named ``name`` (a payment's ``settlement.batch``)."""
        request = payments_pb2.GetBatchRequest(name=name)
        return (await self._call(self.payments.GetBatch, request, timeout, retry=True)).batch

    # Escrow

    async def create_escrow(
        self,
        payer: str,
        payee: str,
        token: str,
        amount: Amount,
        *,
        task_id: str,
        expire_time: When | None = None,
        release_condition: EnumValue | None = None,
        arbiter: str = "",
        verifier: str = "",
        expiry_action: EnumValue | None = None,
        priority: EnumValue | None = None,
        metadata: Mapping[str, str] | None = None,
        request_id: str | None = None,
        timeout: float | None = None,
    ) -> escrow_pb2.Escrow:
        """Hold ``amount`` of the payer's ``token`` for the task ``task_id`` until it is released, refunded or
        resolved.

        ``expire_time`` is a moment or a ``timedelta`` from now. ``release_condition`` is ``"payer_approval"``,
        ``"verifier_attestation"`` (give ``verifier``) or ``"arbiter"`` (give ``arbiter``); ``expiry_action`` is
        ``"refund_payer"`` or ``"release_to_payee"``.
        """
        request = escrow_pb2.CreateEscrowRequest(
            task_id=task_id,
            payer=payer,
            payee=payee,
            token=token,
            amount=convert.amount(amount),
            expire_time=convert.timestamp(expire_time, "expire_time"),
            release_condition=convert.enum(  # type: ignore[arg-type]
                escrow_pb2.ReleaseCondition, release_condition, "release_condition"
            ),
            arbiter=arbiter,
            verifier=verifier,
            expiry_action=convert.enum(escrow_pb2.ExpiryAction, expiry_action, "expiry_action"),  # type: ignore[arg-type]
            priority=convert.enum(common_pb2.Priority, priority, "priority"),  # type: ignore[arg-type]
            metadata=dict(metadata or {}),
            request_id=convert.request_id(request_id),
        )
        return (await self._call(self.escrows.CreateEscrow, request, timeout, retry=True)).escrow

    async def get_escrow(self, name: str, *, timeout: float | None = None) -> escrow_pb2.Escrow:
        """The escrow named ``name`` (``escrows/...``)."""
        request = escrow_pb2.GetEscrowRequest(name=name)
        return (await self._call(self.escrows.GetEscrow, request, timeout, retry=True)).escrow

    async def list_escrows(
        self,
        *,
        payer: str = "",
        payee: str = "",
        task_id: str = "",
        status: EnumValue | None = None,
        page_size: int = 0,
        page_token: str = "",
        timeout: float | None = None,
    ) -> Page[escrow_pb2.Escrow]:
        """One page of escrows, newest first, filtered by what is given (``status`` by name: ``"active"``...)."""
        request = escrow_pb2.ListEscrowsRequest(
            payer=payer,
            payee=payee,
            task_id=task_id,
            status=convert.enum(escrow_pb2.EscrowStatus, status, "status"),  # type: ignore[arg-type]
            page_size=page_size,
            page_token=page_token,
        )
        response = await self._call(self.escrows.ListEscrows, request, timeout, retry=True)
        return Page(list(response.escrows), response.next_page_token)

    async def release_escrow(
        self,
        name: str,
        amount: Amount | None = None,
        *,
        request_id: str | None = None,
        timeout: float | None = None,
    ) -> escrow_pb2.ReleaseEscrowResponse:
        """Pay the payee ``amount`` of the held funds (all that is held when ``None``): the escrow and the
        payment that carries the release."""
        request = escrow_pb2.ReleaseEscrowRequest(
            name=name,
            amount="" if amount is None else convert.amount(amount),
            request_id=convert.request_id(request_id),
        )
        return await self._call(self.escrows.ReleaseEscrow, request, timeout, retry=True)

    async def refund_escrow(
        self, name: str, reason: str = "", *, request_id: str | None = None, timeout: float | None = None
    ) -> escrow_pb2.Escrow:
        """Give what the escrow holds back to the payer's available balance."""
        request = escrow_pb2.RefundEscrowRequest(name=name, reason=reason, request_id=convert.request_id(request_id))
        return (await self._call(self.escrows.RefundEscrow, request, timeout, retry=True)).escrow

    async def dispute_escrow(
        self,
        name: str,
        reason: str,
        *,
        raised_by: str = "",
        request_id: str | None = None,
        timeout: float | None = None,
    ) -> escrow_pb2.Escrow:
        """Freeze the escrow for its arbiter, saying why."""
        request = escrow_pb2.DisputeEscrowRequest(
            name=name, reason=reason, raised_by=raised_by, request_id=convert.request_id(request_id)
        )
        return (await self._call(self.escrows.DisputeEscrow, request, timeout, retry=True)).escrow

    async def resolve_dispute(
        self,
        name: str,
        *,
        payee_amount: Amount,
        payer_amount: Amount,
        resolution_note: str = "",
        request_id: str | None = None,
        timeout: float | None = None,
    ) -> escrow_pb2.ResolveDisputeResponse:
        """Split a disputed escrow (the arbiter's call): the two amounts add up to what is held."""
        request = escrow_pb2.ResolveDisputeRequest(
            name=name,
            payee_amount=convert.amount(payee_amount, "payee_amount"),
            payer_amount=convert.amount(payer_amount, "payer_amount"),
            resolution_note=resolution_note,
            request_id=convert.request_id(request_id),
        )
        return await self._call(self.escrows.ResolveDispute, request, timeout, retry=True)

    async def submit_task_result(
        self,
        name: str,
        result_hash: str,
        signature: str,
        *,
        request_id: str | None = None,
        timeout: float | None = None,
    ) -> escrow_pb2.SubmitTaskResultResponse:
        """Release an escrow on the verifier's signed attestation of the task's result
        (see :func:`~agentflow_payments.attestation_message`)."""
        request = escrow_pb2.SubmitTaskResultRequest(
            name=name, result_hash=result_hash, signature=signature, request_id=convert.request_id(request_id)
        )
        return await self._call(self.escrows.SubmitTaskResult, request, timeout, retry=True)

    # Accounts

    async def get_balances(
        self, address: str, tokens: Sequence[str] = (), *, timeout: float | None = None
    ) -> list[accounts_pb2.Balance]:
        """The address's available, reserved and escrowed balance of each token (of ``tokens`` when given)."""
        request = accounts_pb2.GetBalancesRequest(address=address, tokens=convert.strings(tokens, "tokens"))
        return list((await self._call(self.accounts.GetBalances, request, timeout, retry=True)).balances)

    async def list_ledger_entries(
        self,
        address: str,
        *,
        token: str = "",
        page_size: int = 0,
        page_token: str = "",
        timeout: float | None = None,
    ) -> Page[accounts_pb2.LedgerEntry]:
        """One page of the address's journal entries, newest first."""
        request = accounts_pb2.ListLedgerEntriesRequest(
            address=address, token=token, page_size=page_size, page_token=page_token
        )
        response = await self._call(self.accounts.ListLedgerEntries, request, timeout, retry=True)
        return Page(list(response.entries), response.next_page_token)

    async def withdraw(
        self,
        address: str,
        token: str,
        amount: Amount,
        *,
        destination: str = "",
        request_id: str | None = None,
        timeout: float | None = None,
    ) -> accounts_pb2.Withdrawal:
        """Send ``amount`` of the address's available ``token`` out on chain (to ``destination``, or back to
        the address)."""
        request = accounts_pb2.WithdrawRequest(
            address=address,
            token=token,
            amount=convert.amount(amount),
            destination=destination,
            request_id=convert.request_id(request_id),
        )
        return (await self._call(self.accounts.Withdraw, request, timeout, retry=True)).withdrawal

    async def list_tokens(self, *, timeout: float | None = None) -> accounts_pb2.ListTokensResponse:
        """The tokens the service accepts, with their decimals and contract addresses, and the chain id."""
        return await self._call(self.accounts.ListTokens, accounts_pb2.ListTokensRequest(), timeout, retry=True)

    async def get_deposit_info(
        self, address: str, token: str, *, timeout: float | None = None
    ) -> accounts_pb2.GetDepositInfoResponse:
        """How to deposit ``token`` for ``address``: the settlement contract, its method and confirmations."""
        request = accounts_pb2.GetDepositInfoRequest(address=address, token=token)
        return await self._call(self.accounts.GetDepositInfo, request, timeout, retry=True)

    # Admin

    async def create_api_key(
        self,
        display_name: str,
        scope: EnumValue,
        *,
        addresses: Sequence[str] = (),
        requests_per_minute: int = 0,
        burst: int = 0,
        expire_time: When | None = None,
        timeout: float | None = None,
    ) -> admin_pb2.CreateApiKeyResponse:
        """Make an API key (an admin's call): the key and its secret, which is shown this once.

        ``scope`` is ``"admin"``, ``"payer"`` (give the ``addresses`` it may pay from), ``"arbiter"`` or
        ``"read_only"``. Without ``requests_per_minute`` and ``burst`` the server's default limits apply. Not
        retried: it has no request id.
        """
        request = admin_pb2.CreateApiKeyRequest(
            display_name=display_name,
            scope=convert.enum(admin_pb2.ApiKeyScope, scope, "scope"),  # type: ignore[arg-type]
            addresses=convert.strings(addresses, "addresses"),
            expire_time=convert.timestamp(expire_time, "expire_time"),
        )
        # No rate limit at all means the server's defaults; a partial one is sent, for the server to name.
        if requests_per_minute or burst:
            request.rate_limit.CopyFrom(admin_pb2.RateLimit(requests_per_minute=requests_per_minute, burst=burst))
        return await self._call(self.admin.CreateApiKey, request, timeout, retry=False)

    async def list_api_keys(
        self, *, show_revoked: bool = False, page_size: int = 0, page_token: str = "", timeout: float | None = None
    ) -> Page[admin_pb2.ApiKey]:
        """One page of API keys (never their secrets)."""
        request = admin_pb2.ListApiKeysRequest(show_revoked=show_revoked, page_size=page_size, page_token=page_token)
        response = await self._call(self.admin.ListApiKeys, request, timeout, retry=True)
        return Page(list(response.api_keys), response.next_page_token)

    async def revoke_api_key(self, name: str, *, timeout: float | None = None) -> admin_pb2.ApiKey:
        """Revoke the key named ``name`` (``apiKeys/...``); its next call is refused."""
        request = admin_pb2.RevokeApiKeyRequest(name=name)
        return (await self._call(self.admin.RevokeApiKey, request, timeout, retry=True)).api_key

    async def get_metrics(
        self, window: datetime.timedelta | None = None, *, timeout: float | None = None
    ) -> admin_pb2.GetMetricsResponse:
        """Payment, escrow and webhook figures over ``window`` (the server's default when ``None``)."""
        request = admin_pb2.GetMetricsRequest(window=convert.duration(window))
        return await self._call(self.admin.GetMetrics, request, timeout, retry=True)

    # Webhooks

    async def create_webhook(
        self,
        url: str,
        event_types: Sequence[str] = (),
        *,
        secret: str = "",
        description: str = "",
        request_id: str | None = None,
        timeout: float | None = None,
    ) -> webhooks_pb2.CreateWebhookResponse:
        """Register an endpoint for the events of ``event_types`` (every type the key may see when empty;
        ``payment.*`` wildcards work): the endpoint and its signing secret, which is shown this once."""
        request = webhooks_pb2.CreateWebhookRequest(
            url=url,
            event_types=convert.strings(event_types, "event_types"),
            secret=secret,
            description=description,
            request_id=convert.request_id(request_id),
        )
        return await self._call(self.webhooks.CreateWebhook, request, timeout, retry=True)

    async def get_webhook(self, name: str, *, timeout: float | None = None) -> webhooks_pb2.Webhook:
        """The webhook endpoint named ``name`` (``webhooks/...``)."""
        request = webhooks_pb2.GetWebhookRequest(name=name)
        return (await self._call(self.webhooks.GetWebhook, request, timeout, retry=True)).webhook

    async def list_webhooks(
        self, *, page_size: int = 0, page_token: str = "", timeout: float | None = None
    ) -> Page[webhooks_pb2.Webhook]:
        """One page of the key's webhook endpoints (an admin's: all)."""
        request = webhooks_pb2.ListWebhooksRequest(page_size=page_size, page_token=page_token)
        response = await self._call(self.webhooks.ListWebhooks, request, timeout, retry=True)
        return Page(list(response.webhooks), response.next_page_token)

    async def update_webhook(
        self,
        name: str,
        *,
        url: str | None = None,
        event_types: Sequence[str] | None = None,
        description: str | None = None,
        state: EnumValue | None = None,
        timeout: float | None = None,
    ) -> webhooks_pb2.Webhook:
        """Change the fields given (``state`` is ``"enabled"`` or ``"disabled"``); the others stay."""
        webhook = webhooks_pb2.Webhook(name=name)
        mask = field_mask_pb2.FieldMask()
        if url is not None:
            webhook.url = url
            mask.paths.append("url")
        if event_types is not None:
            webhook.event_types.extend(convert.strings(event_types, "event_types"))
            mask.paths.append("event_types")
        if description is not None:
            webhook.description = description
            mask.paths.append("description")
        if state is not None:
            webhook.state = convert.enum(webhooks_pb2.WebhookState, state, "state")  # type: ignore[assignment]
            mask.paths.append("state")
        request = webhooks_pb2.UpdateWebhookRequest(webhook=webhook, update_mask=mask)
        # Setting fields to given values is idempotent, so a retry is safe.
        return (await self._call(self.webhooks.UpdateWebhook, request, timeout, retry=True)).webhook

    async def delete_webhook(self, name: str, *, timeout: float | None = None) -> None:
        """Delete the endpoint; its pending deliveries are not made."""
        await self._call(
            self.webhooks.DeleteWebhook, webhooks_pb2.DeleteWebhookRequest(name=name), timeout, retry=False
        )

    async def rotate_webhook_secret(
        self,
        name: str,
        *,
        secret: str = "",
        grace_period: datetime.timedelta | None = None,
        timeout: float | None = None,
    ) -> webhooks_pb2.RotateWebhookSecretResponse:
        """A new signing secret (``secret``, or a generated one, shown this once); the old one keeps signing
        for ``grace_period`` (the server's 24 h when ``None``; zero retires it now)."""
        request = webhooks_pb2.RotateWebhookSecretRequest(
            name=name, secret=secret, grace_period=convert.duration(grace_period)
        )
        return await self._call(self.webhooks.RotateWebhookSecret, request, timeout, retry=False)

    async def test_webhook(
        self, name: str, event_type: str = "", *, timeout: float | None = None
    ) -> webhooks_pb2.WebhookAttempt:
        """Send a test event (``webhook.test``, or ``event_type``) to the endpoint now: how it answered."""
        request = webhooks_pb2.TestWebhookRequest(name=name, event_type=event_type)
        return (await self._call(self.webhooks.TestWebhook, request, timeout, retry=False)).attempt

    async def list_webhook_deliveries(
        self,
        webhook: str,
        *,
        status: EnumValue | None = None,
        page_size: int = 0,
        page_token: str = "",
        timeout: float | None = None,
    ) -> Page[webhooks_pb2.WebhookDelivery]:
        """One page of the endpoint's deliveries, newest first (``status``: ``"pending"``, ``"succeeded"`` or
        ``"failed"``)."""
        request = webhooks_pb2.ListWebhookDeliveriesRequest(
            parent=webhook,
            status=convert.enum(webhooks_pb2.WebhookDeliveryStatus, status, "status"),  # type: ignore[arg-type]
            page_size=page_size,
            page_token=page_token,
        )
        response = await self._call(self.webhooks.ListWebhookDeliveries, request, timeout, retry=True)
        return Page(list(response.deliveries), response.next_page_token)

    async def retry_webhook_delivery(self, name: str, *, timeout: float | None = None) -> webhooks_pb2.WebhookDelivery:
        """Attempt a failed or pending delivery once more, now."""
        request = webhooks_pb2.RetryWebhookDeliveryRequest(name=name)
        return (await self._call(self.webhooks.RetryWebhookDelivery, request, timeout, retry=False)).delivery

    # Events

    async def list_events(
        self,
        *,
        types: Sequence[str] = (),
        address: str = "",
        task_id: str = "",
        resource: str = "",
        start_after: int = 0,
        page_size: int = 0,
        page_token: str = "",
        timeout: float | None = None,
    ) -> Page[events_pb2.Event]:
        """One page of past events after ``start_after``, oldest first, filtered like :meth:`subscribe_events`."""
        request = events_pb2.ListEventsRequest(
            filter=_event_filter(types, address, task_id, resource),
            start_after=start_after,
            page_size=page_size,
            page_token=page_token,
        )
        response = await self._call(self.events.ListEvents, request, timeout, retry=True)
        return Page(list(response.events), response.next_page_token)

    async def subscribe_events(
        self,
        filter: events_pb2.EventFilter | None = None,
        *,
        types: Sequence[str] = (),
        address: str = "",
        task_id: str = "",
        resource: str = "",
        start_after: int = 0,
        live_only: bool = False,
        max_backoff: float = 5.0,
    ) -> AsyncIterator[events_pb2.Event]:
        """The events matching the filter after ``start_after`` (from now with ``live_only``), then live, for
        as long as the caller iterates.

        The filter is ``filter``, or built from ``types`` (``payment.*`` wildcards work), ``address``,
        ``task_id`` and ``resource``; an event must match every part given.

        When the stream breaks (the server restarts, is unreachable or ends it as too slow, or the
        connection is cut), it reconnects with growing pauses up to ``max_backoff`` seconds and resumes
        after the last event it yielded: no event is skipped or yielded twice. A server that cannot be
        reached at all raises ``Unavailable`` after the retry policy's ``max_attempts``. Heartbeats are
        consumed here; an idle heartbeat moves the cursor to the log's head, so a resume does not replay
        what the filter passed over. A rate limit is waited out as ``retry`` allows (see :class:`RetryConfig`).
        Other errors (a bad filter, a key that may not) are raised.
        """
        if filter is None:
            filter = _event_filter(types, address, task_id, resource)
        last = start_after
        # With live_only the cursor is unknown until the first event or heartbeat: a reconnect before that
        # starts from "now" again.
        known = not live_only
        pause = 0.1
        failures, reached = 0, False
        while True:
            request = events_pb2.SubscribeEventsRequest(start_after=last, live_only=not known)
            request.filter.CopyFrom(filter)
            opened = asyncio.get_running_loop().time()
            try:
                async for response in self.events.SubscribeEvents(request):
                    pause, reached = 0.1, True
                    if response.HasField("event"):
                        if known and response.event.sequence <= last:
                            continue
                        last, known = response.event.sequence, True
                        yield response.event
                    else:
                        last, known = max(last, response.heartbeat.head_sequence), True
            except (Unavailable, SubscriberTooSlow, Cancelled):
                failures += 1
                # A server never reached is an error, after the retry policy's attempts; one that was reached is
                # reconnected to for as long as the caller iterates. A quiet stream sends nothing until its first
                # heartbeat, so one that stayed open a while counts as reached (a refused connection fails at once).
                reached = reached or asyncio.get_running_loop().time() - opened > 1.0
                if not reached and failures >= self._retry.max_attempts:
                    raise
            except WAIT_AND_RETRY as error:
                await wait_out(error, self._retry)  # the key's rate limit: opened again when the server says
                continue
            await asyncio.sleep(pause)
            pause = min(max_backoff, pause * 2)

    async def watch_payment(self, name: str, *, max_backoff: float = 5.0) -> AsyncIterator[payments_pb2.Payment]:
        """A payment's state now, then each change until it is COMPLETED, FAILED or CANCELLED.

        When the stream breaks it reconnects with growing pauses up to ``max_backoff`` seconds; the server
        sends the current state again, which is yielded only if it changed. A server that cannot be reached
        before the first state raises ``Unavailable`` after the retry policy's ``max_attempts``. A rate limit
        is waited out as the retry policy allows. Other errors (NOT_FOUND, a key that may not see it) are
        raised.
        """
        last: payments_pb2.Payment | None = None
        pause = 0.1
        failures = 0
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
                failures += 1
                # A server never reached is an error, after the retry policy's attempts; one that was reached
                # is reconnected to for as long as the caller iterates.
                if last is None and failures >= self._retry.max_attempts:
                    raise
            except WAIT_AND_RETRY as error:
                await wait_out(error, self._retry)  # the key's rate limit: opened again when the server says
                continue
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


def _payment_request(
    payer: str,
    payee: str,
    token: str,
    amount: Amount,
    priority: EnumValue | None,
    task_id: str,
    memo: str,
    metadata: Mapping[str, str] | None,
    request_id: str,
) -> payments_pb2.SubmitPaymentRequest:
    return payments_pb2.SubmitPaymentRequest(
        payer=payer,
        payee=payee,
        token=token,
        amount=convert.amount(amount),
        priority=convert.enum(common_pb2.Priority, priority, "priority"),  # type: ignore[arg-type]
        task_id=task_id,
        memo=memo,
        metadata=dict(metadata or {}),
        request_id=request_id,
    )


def _event_filter(types: Sequence[str], address: str, task_id: str, resource: str) -> events_pb2.EventFilter:
    return events_pb2.EventFilter(
        types=convert.strings(types, "types"), address=address, task_id=task_id, resource=resource
    )
