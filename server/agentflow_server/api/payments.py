"""PaymentService: validates each request, hands the engine a typed command, answers with the result."""

from __future__ import annotations

import re
from collections.abc import AsyncIterator

from agentflow_payments import Reason
from agentflow_payments.v1 import common_pb2, payments_pb2, payments_pb2_grpc

from ..auth import Principal, current_principal
from ..engine.commands import CancelPayment, SubmitPayment
from ..engine.engine import Engine
from ..engine.model import Payment, PaymentKind, PaymentStatus
from ..errors import ApiError, payment_not_found
from ..events import EventFilter, EventHub
from ..ledger.batches import BatchReader
from ..ledger.payments import PaymentFilter, PaymentReader
from ..wire import batch_message, fee_message, payment_message, set_payment
from . import pagination
from .context import Context
from .validation import MAX_MEMO, MAX_REASON, MAX_TASK_ID, Fields, resource_id

_PAYMENT_ID = re.compile(r"[0-9a-f]{22}")
_FINAL = frozenset(
    {payments_pb2.PAYMENT_STATUS_COMPLETED, payments_pb2.PAYMENT_STATUS_FAILED, payments_pb2.PAYMENT_STATUS_CANCELLED}
)


def _sees(principal: Principal) -> frozenset[str] | None:
    """The addresses whose payments the key may read; ``None`` for all."""
    return None if principal.reads_everything else principal.addresses


def _visible(principal: Principal, payment: Payment) -> bool:
    sees = _sees(principal)
    return sees is None or payment.payer in sees or payment.payee in sees


def item_error(error: ApiError) -> common_pb2.ItemError:
    """One bulk item's refusal, carrying what a Status would."""
    return common_pb2.ItemError(
        code=error.reason.code.value[0],
        message=error.message,
        reason=error.reason.value,
        metadata=error.metadata,
        field_violations=[
            common_pb2.FieldViolation(field=v.field, description=v.description) for v in error.field_violations
        ],
    )


class PaymentServicer(payments_pb2_grpc.PaymentServiceServicer):
    """Serves PaymentService."""

    def __init__(
        self, engine: Engine, reader: PaymentReader, batches: BatchReader, hub: EventHub, max_bulk_size: int
    ) -> None:
        self._engine = engine
        self._hub = hub
        self._reader = reader
        self._batches = batches
        self._max_bulk_size = max_bulk_size

    def _command(self, request: payments_pb2.SubmitPaymentRequest, principal: Principal, prefix: str) -> SubmitPayment:
        """The command for a valid request, or the ApiError refusing it."""
        fields = Fields(self._engine.tokens, prefix)
        payer = fields.address("payer", request.payer)
        payee = fields.address("payee", request.payee)
        if payer and payer == payee:
            fields.add("payee", "must differ from the payer")
        token = fields.token("token", request.token)
        amount = fields.amount("amount", request.amount)
        priority = fields.priority("priority", request.priority)
        task_id = fields.text("task_id", request.task_id, MAX_TASK_ID, single_line=True)
        memo = fields.text("memo", request.memo, MAX_MEMO)
        metadata = fields.metadata("metadata", request.metadata)
        request_id = fields.request_id("request_id", request.request_id)
        fields.check()
        assert token is not None
        principal.require_address(payer, prefix + "payer")
        return SubmitPayment(
            payer=payer,
            payee=payee,
            token=token,
            amount=amount,
            priority=priority,
            task_id=task_id,
            memo=memo,
            metadata=metadata,
            request_id=request_id,
        )

    async def SubmitPayment(
        self, request: payments_pb2.SubmitPaymentRequest, context: Context
    ) -> payments_pb2.SubmitPaymentResponse:
        command = self._command(request, current_principal(), "")
        payment = await self._engine.execute(command)
        assert isinstance(payment, Payment)
        response = payments_pb2.SubmitPaymentResponse()
        set_payment(response.payment, payment)
        return response

    async def SubmitPayments(
        self, request: payments_pb2.SubmitPaymentsRequest, context: Context
    ) -> payments_pb2.SubmitPaymentsResponse:
        count = len(request.requests)
        if not 1 <= count <= self._max_bulk_size:
            fields = Fields(self._engine.tokens)
            fields.add("requests", f"must hold 1 to {self._max_bulk_size} payments, not {count}")
            fields.check()
        principal = current_principal()
        response = payments_pb2.SubmitPaymentsResponse()
        results = [response.results.add(index=i) for i in range(count)]
        commands: list[SubmitPayment] = []
        positions: list[int] = []
        for index, item in enumerate(request.requests):
            try:
                commands.append(self._command(item, principal, f"requests[{index}]."))
                positions.append(index)
            except ApiError as error:
                results[index].error.CopyFrom(item_error(error))
        if commands:
            # Priced together: the batch discount counts only the payments that are surely accepted.
            for index, outcome in zip(positions, await self._engine.submit_payments(commands), strict=True):
                if isinstance(outcome, ApiError):
                    results[index].error.CopyFrom(item_error(outcome))
                else:
                    assert isinstance(outcome, Payment)
                    set_payment(results[index].payment, outcome)
        return response

    async def GetPayment(
        self, request: payments_pb2.GetPaymentRequest, context: Context
    ) -> payments_pb2.GetPaymentResponse:
        fields = Fields(self._engine.tokens)
        payment_id = resource_id(fields, "name", request.name, "payments", _PAYMENT_ID)
        fields.check()
        payment = await self._reader.get(payment_id)
        if payment is None or payment.kind is not PaymentKind.PAYMENT or not _visible(current_principal(), payment):
            raise payment_not_found(request.name)
        return payments_pb2.GetPaymentResponse(payment=payment_message(payment))

    async def ListPayments(
        self, request: payments_pb2.ListPaymentsRequest, context: Context
    ) -> payments_pb2.ListPaymentsResponse:
        fields = Fields(self._engine.tokens)
        payer = fields.optional_address("payer", request.payer)
        payee = fields.optional_address("payee", request.payee)
        task_id = fields.text("task_id", request.task_id, MAX_TASK_ID) or None
        listed = fields.token("token", request.token) if request.token else None
        token = listed.symbol if listed is not None else None
        status = fields.choice("status", request.status, PaymentStatus, None, "is not a PaymentStatus")
        fields.page_size(request.page_size)
        before = fields.id_cursor(request, _PAYMENT_ID)
        fields.check()
        size = pagination.page_size(request.page_size)
        where = PaymentFilter(
            payer=payer,
            payee=payee,
            task_id=task_id,
            status=status,
            token=token,
            visible_to=_sees(current_principal()),
        )
        found = await self._reader.page(where, limit=size + 1, before=before)
        response = payments_pb2.ListPaymentsResponse(payments=[payment_message(p) for p in found[:size]])
        if len(found) > size:
            response.next_page_token = pagination.encode_token(request, [found[size - 1].payment_id])
        return response

    async def CancelPayment(
        self, request: payments_pb2.CancelPaymentRequest, context: Context
    ) -> payments_pb2.CancelPaymentResponse:
        fields = Fields(self._engine.tokens)
        payment_id = resource_id(fields, "name", request.name, "payments", _PAYMENT_ID)
        reason = fields.text("reason", request.reason, MAX_REASON)
        fields.check()
        principal = current_principal()
        payment = await self._engine.execute(
            CancelPayment(
                payment_id=payment_id,
                reason=reason,
                acts_for=None if principal.is_admin else principal.addresses,
                sees=_sees(principal),
            )
        )
        assert isinstance(payment, Payment)
        return payments_pb2.CancelPaymentResponse(payment=payment_message(payment))

    async def QuoteFee(self, request: payments_pb2.QuoteFeeRequest, context: Context) -> payments_pb2.QuoteFeeResponse:
        fields = Fields(self._engine.tokens)
        payer = fields.address("payer", request.payer)
        token = fields.token("token", request.token)
        amount = fields.amount("amount", request.amount)
        fields.priority("priority", request.priority)
        fields.check()
        assert token is not None
        principal = current_principal()
        # The volume discount tells something of a payer's volume: only its own keys may ask.
        if not principal.reads_everything:
            principal.require_address(payer, "payer")
        fee = self._engine.quote(payer, token, amount)
        return payments_pb2.QuoteFeeResponse(fee=fee_message(fee, token.symbol))

    async def WatchPayment(
        self, request: payments_pb2.WatchPaymentRequest, context: Context
    ) -> AsyncIterator[payments_pb2.WatchPaymentResponse]:
        fields = Fields(self._engine.tokens)
        payment_id = resource_id(fields, "name", request.name, "payments", _PAYMENT_ID)
        fields.check()
        # Joined before the read: a change committed after it comes live, one before it is in the read.
        subscription = await self._hub.subscribe(EventFilter(resource=request.name))
        try:
            payment = await self._reader.get(payment_id)
            if payment is None or payment.kind is not PaymentKind.PAYMENT or not _visible(current_principal(), payment):
                raise payment_not_found(request.name)
            message = payment_message(payment)
            yield payments_pb2.WatchPaymentResponse(payment=message)
            while message.status not in _FINAL:
                item = await subscription.next(None)
                if item is None:  # the server is stopping (a payment's few events never fill a backlog)
                    raise ApiError(Reason.SHUTTING_DOWN, "the server is shutting down; watch again elsewhere or later")
                changed = payments_pb2.Payment.FromString(item[0].payload)
                # The read may already show this change, and payment.created and .queued show one state.
                seen = (message.update_time.seconds, message.update_time.nanos)
                now = (changed.update_time.seconds, changed.update_time.nanos)
                if now < seen or (now == seen and changed.status == message.status):
                    continue
                message = changed
                yield payments_pb2.WatchPaymentResponse(payment=message)
        finally:
            subscription.close()

    async def GetBatch(self, request: payments_pb2.GetBatchRequest, context: Context) -> payments_pb2.GetBatchResponse:
        fields = Fields(self._engine.tokens)
        batch_id = resource_id(fields, "name", request.name, "batches", _PAYMENT_ID)
        fields.check()
        batch = await self._batches.get(batch_id)
        payments = await self._batches.payments(batch) if batch is not None else []
        principal = current_principal()
        # A key bound to addresses sees a batch only if it carries one of its payments.
        if batch is None or not (principal.reads_everything or any(_visible(principal, p) for p in payments)):
            raise ApiError(Reason.BATCH_NOT_FOUND, f"no batch {request.name}", metadata={"name": request.name})
        return payments_pb2.GetBatchResponse(batch=batch_message(batch, payments))
