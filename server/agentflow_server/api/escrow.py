"""EscrowService: in the v1 contract; each method answers UNIMPLEMENTED until its feature lands."""

from __future__ import annotations

from agentflow_payments.v1 import escrow_pb2, escrow_pb2_grpc

from .context import Context
from .unimplemented import not_served


class EscrowServicer(escrow_pb2_grpc.EscrowServiceServicer):
    """Serves EscrowService."""

    async def CreateEscrow(
        self, request: escrow_pb2.CreateEscrowRequest, context: Context
    ) -> escrow_pb2.CreateEscrowResponse:
        raise not_served("EscrowService.CreateEscrow", "task escrow")

    async def GetEscrow(self, request: escrow_pb2.GetEscrowRequest, context: Context) -> escrow_pb2.GetEscrowResponse:
        raise not_served("EscrowService.GetEscrow", "task escrow")

    async def ListEscrows(
        self, request: escrow_pb2.ListEscrowsRequest, context: Context
    ) -> escrow_pb2.ListEscrowsResponse:
        raise not_served("EscrowService.ListEscrows", "task escrow")

    async def ReleaseEscrow(
        self, request: escrow_pb2.ReleaseEscrowRequest, context: Context
    ) -> escrow_pb2.ReleaseEscrowResponse:
        raise not_served("EscrowService.ReleaseEscrow", "task escrow")

    async def RefundEscrow(
        self, request: escrow_pb2.RefundEscrowRequest, context: Context
    ) -> escrow_pb2.RefundEscrowResponse:
        raise not_served("EscrowService.RefundEscrow", "task escrow")

    async def DisputeEscrow(
        self, request: escrow_pb2.DisputeEscrowRequest, context: Context
    ) -> escrow_pb2.DisputeEscrowResponse:
        raise not_served("EscrowService.DisputeEscrow", "task escrow")

    async def ResolveDispute(
        self, request: escrow_pb2.ResolveDisputeRequest, context: Context
    ) -> escrow_pb2.ResolveDisputeResponse:
        raise not_served("EscrowService.ResolveDispute", "task escrow")

    async def SubmitTaskResult(
        self, request: escrow_pb2.SubmitTaskResultRequest, context: Context
    ) -> escrow_pb2.SubmitTaskResultResponse:
        raise not_served("EscrowService.SubmitTaskResult", "task escrow")
