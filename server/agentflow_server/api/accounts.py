"""AccountService: in the v1 contract; each method answers UNIMPLEMENTED until its feature lands."""

from __future__ import annotations

from agentflow_payments.v1 import accounts_pb2, accounts_pb2_grpc

from .context import Context
from .unimplemented import not_served


class AccountServicer(accounts_pb2_grpc.AccountServiceServicer):
    """Serves AccountService."""

    async def GetBalances(
        self, request: accounts_pb2.GetBalancesRequest, context: Context
    ) -> accounts_pb2.GetBalancesResponse:
        raise not_served("AccountService.GetBalances", "the ledger")

    async def ListLedgerEntries(
        self, request: accounts_pb2.ListLedgerEntriesRequest, context: Context
    ) -> accounts_pb2.ListLedgerEntriesResponse:
        raise not_served("AccountService.ListLedgerEntries", "the ledger")

    async def Withdraw(self, request: accounts_pb2.WithdrawRequest, context: Context) -> accounts_pb2.WithdrawResponse:
        raise not_served("AccountService.Withdraw", "on-chain settlement")

    async def ListTokens(
        self, request: accounts_pb2.ListTokensRequest, context: Context
    ) -> accounts_pb2.ListTokensResponse:
        raise not_served("AccountService.ListTokens", "the ledger")

    async def GetDepositInfo(
        self, request: accounts_pb2.GetDepositInfoRequest, context: Context
    ) -> accounts_pb2.GetDepositInfoResponse:
        raise not_served("AccountService.GetDepositInfo", "on-chain settlement")
