"""AccountService: balances, the journal and the accepted tokens.

Withdraw and GetDepositInfo arrive with on-chain settlement and answer UNIMPLEMENTED until then.
"""

from __future__ import annotations

from agentflow_payments.v1 import accounts_pb2, accounts_pb2_grpc

from ..auth import current_principal
from ..engine.model import Balance
from ..ledger.accounts import AccountReader
from ..tokens import TokenRegistry
from ..wire import timestamp
from . import pagination
from .context import Context
from .unimplemented import not_served
from .validation import Fields


class AccountServicer(accounts_pb2_grpc.AccountServiceServicer):
    """Serves AccountService."""

    def __init__(self, reader: AccountReader, tokens: TokenRegistry, chain_id: int) -> None:
        self._reader = reader
        self._tokens = tokens
        self._chain_id = chain_id

    def _readable_address(self, fields: Fields, value: str) -> str:
        address = fields.address("address", value)
        fields.check()
        principal = current_principal()
        if not principal.reads_everything:
            principal.require_address(address, "address")
        return address

    async def GetBalances(
        self, request: accounts_pb2.GetBalancesRequest, context: Context
    ) -> accounts_pb2.GetBalancesResponse:
        fields = Fields(self._tokens)
        for i, symbol in enumerate(request.tokens):
            fields.token(f"tokens[{i}]", symbol)
        address = self._readable_address(fields, request.address)
        wanted = list(dict.fromkeys(request.tokens)) or [token.symbol for token in self._tokens]
        stored = await self._reader.balances(address)
        balances = []
        for symbol in wanted:
            balance = stored.get(symbol, Balance())
            balances.append(
                accounts_pb2.Balance(
                    address=address,
                    token=symbol,
                    available=str(balance.available),
                    reserved=str(balance.reserved),
                    escrowed=str(balance.escrowed),
                    total=str(balance.available + balance.reserved + balance.escrowed),
                )
            )
        return accounts_pb2.GetBalancesResponse(balances=balances)

    async def ListLedgerEntries(
        self, request: accounts_pb2.ListLedgerEntriesRequest, context: Context
    ) -> accounts_pb2.ListLedgerEntriesResponse:
        fields = Fields(self._tokens)
        token = fields.token("token", request.token) if request.token else None
        fields.page_size(request.page_size)
        cursor = pagination.decode_token(request.page_token, 1)
        if cursor is not None and not (isinstance(cursor[0], int) and cursor[0] >= 0):
            fields.add("page_token", "is not a token this server issued")
        address = self._readable_address(fields, request.address)
        size = pagination.page_size(request.page_size)
        entries = await self._reader.entries(
            address, token.symbol if token else None, after=cursor[0] if cursor else -1, limit=size
        )
        response = accounts_pb2.ListLedgerEntriesResponse(
            entries=[
                accounts_pb2.LedgerEntry(
                    entry_id=e.entry_id,
                    transfer_id=str(e.transfer_id),
                    address=e.address,
                    token=e.token,
                    bucket=int(e.bucket),  # type: ignore[arg-type]
                    delta=str(e.delta),
                    kind=int(e.kind),  # type: ignore[arg-type]
                    reference=e.reference,
                    create_time=timestamp(e.create_time_us),
                )
                for e in entries[:size]
            ]
        )
        if len(entries) > size:
            response.next_page_token = pagination.encode_token([entries[size - 1].entry_id])
        return response

    async def Withdraw(self, request: accounts_pb2.WithdrawRequest, context: Context) -> accounts_pb2.WithdrawResponse:
        raise not_served("AccountService.Withdraw", "on-chain settlement")

    async def ListTokens(
        self, request: accounts_pb2.ListTokensRequest, context: Context
    ) -> accounts_pb2.ListTokensResponse:
        return accounts_pb2.ListTokensResponse(
            tokens=[
                accounts_pb2.Token(
                    symbol=token.symbol,
                    display_name=token.display_name,
                    decimals=token.decimals,
                    contract_address=token.contract_address,
                    native=token.native,
                    min_fee=str(token.min_fee),
                )
                for token in self._tokens
            ],
            chain_id=self._chain_id,
        )

    async def GetDepositInfo(
        self, request: accounts_pb2.GetDepositInfoRequest, context: Context
    ) -> accounts_pb2.GetDepositInfoResponse:
        raise not_served("AccountService.GetDepositInfo", "on-chain settlement")
