"""PaymentService: in the v1 contract; each method answers UNIMPLEMENTED until its feature lands."""

from __future__ import annotations

from collections.abc import AsyncIterator

from agentflow_payments.v1 import payments_pb2, payments_pb2_grpc

from .context import Context
from .unimplemented import not_served


class PaymentServicer(payments_pb2_grpc.PaymentServiceServicer):
    """Serves PaymentService."""

    async def SubmitPayment(
        self, request: payments_pb2.SubmitPaymentRequest, context: Context
    ) -> payments_pb2.SubmitPaymentResponse:
        raise not_served("PaymentService.SubmitPayment", "the ledger and batching engine")

    async def SubmitPayments(
        self, request: payments_pb2.SubmitPaymentsRequest, context: Context
    ) -> payments_pb2.SubmitPaymentsResponse:
        raise not_served("PaymentService.SubmitPayments", "the ledger and batching engine")

    async def GetPayment(
        self, request: payments_pb2.GetPaymentRequest, context: Context
    ) -> payments_pb2.GetPaymentResponse:
        raise not_served("PaymentService.GetPayment", "the ledger and batching engine")

    async def ListPayments(
        self, request: payments_pb2.ListPaymentsRequest, context: Context
    ) -> payments_pb2.ListPaymentsResponse:
        raise not_served("PaymentService.ListPayments", "the ledger and batching engine")

    async def CancelPayment(
        self, request: payments_pb2.CancelPaymentRequest, context: Context
    ) -> payments_pb2.CancelPaymentResponse:
        raise not_served("PaymentService.CancelPayment", "the ledger and batching engine")

    async def QuoteFee(self, request: payments_pb2.QuoteFeeRequest, context: Context) -> payments_pb2.QuoteFeeResponse:
        raise not_served("PaymentService.QuoteFee", "the ledger and batching engine")

    async def WatchPayment(
        self, request: payments_pb2.WatchPaymentRequest, context: Context
    ) -> AsyncIterator[payments_pb2.WatchPaymentResponse]:
        raise not_served("PaymentService.WatchPayment", "event streams")
        yield  # unreachable: makes this the async generator a server stream needs

    async def GetBatch(self, request: payments_pb2.GetBatchRequest, context: Context) -> payments_pb2.GetBatchResponse:
        raise not_served("PaymentService.GetBatch", "on-chain settlement")
