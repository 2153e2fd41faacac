"""AccountService: balances, the journal, the accepted tokens, where to deposit, and withdrawals."""

from __future__ import annotations

from dataclasses import dataclass

from agentflow_payments import Reason
from agentflow_payments.v1 import accounts_pb2, accounts_pb2_grpc

from ..auth import current_principal
from ..engine.commands import Withdraw
from ..engine.engine import Engine
from ..engine.model import Balance, Payment
from ..errors import ApiError
from ..ledger.accounts import AccountReader
from ..tokens import TokenRegistry
from ..wire import timestamp, withdrawal_message
from . import pagination
from .context import Context
from .validation import Fields


@dataclass(frozen=True)
class DepositTarget:
    """Where agents deposit: the chain and the settlement contract, and how long a deposit waits."""

    chain_id: int
    contract_address: str
    confirmations: int


class AccountServicer(accounts_pb2_grpc.AccountServiceServicer):
    """Serves AccountService. ``deposits`` is None on a replica that does not settle."""

    def __init__(
        self,
        engine: Engine,
        reader: AccountReader,
        tokens: TokenRegistry,
        chain_id: int,
        deposits: DepositTarget | None,
    ) -> None:
        self._engine = engine
        self._reader = reader
        self._tokens = tokens
        self._chain_id = chain_id
        self._deposits = deposits

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
        asked = set(request.tokens)
        wanted = [token.symbol for token in self._tokens if not asked or token.symbol in asked]  # ListTokens' order
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
        cursor = pagination.decode_token(request, 1)
        if cursor is not None and not (isinstance(cursor[0], int) and cursor[0] >= 0):
            fields.add("page_token", "is not a token this server issued")
        address = self._readable_address(fields, request.address)
        size = pagination.page_size(request.page_size)
        entries = await self._reader.entries(
            address, token.symbol if token else None, before=cursor[0] if cursor else None, limit=size
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
            response.next_page_token = pagination.encode_token(request, [entries[size - 1].entry_id])
        return response

    async def Withdraw(self, request: accounts_pb2.WithdrawRequest, context: Context) -> accounts_pb2.WithdrawResponse:
        fields = Fields(self._tokens)
        address = fields.address("address", request.address)
        token = fields.token("token", request.token)
        amount = fields.amount("amount", request.amount)
        destination = fields.address("destination", request.destination) if request.destination else address
        request_id = fields.request_id("request_id", request.request_id)
        fields.check()
        assert token is not None
        current_principal().require_address(address, "address")
        if self._deposits is None:
            raise ApiError(
                Reason.SETTLEMENT_UNAVAILABLE,
                "this server does not settle on chain (settlement_enabled is off); withdraw through one that does",
            )
        withdrawal = await self._engine.execute(Withdraw(address, destination, token, amount, request_id))
        assert isinstance(withdrawal, Payment)
        return accounts_pb2.WithdrawResponse(withdrawal=withdrawal_message(withdrawal))

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
        fields = Fields(self._tokens)
        token = fields.token("token", request.token)
        # Anyone may deposit for any address: nothing here needs the key to act for it.
        address = fields.address("address", request.address)
        fields.check()
        assert token is not None
        target = self._deposits
        if target is None:
            raise ApiError(
                Reason.SETTLEMENT_UNAVAILABLE,
                "this server does not settle on chain (settlement_enabled is off); ask one that does",
            )
        message = accounts_pb2.Token(
            symbol=token.symbol,
            display_name=token.display_name,
            decimals=token.decimals,
            contract_address=token.contract_address,
            native=token.native,
            min_fee=str(token.min_fee),
        )
        contract = target.contract_address
        if token.native:
            method = "depositETH(address)"
            steps = (
                f"Call depositETH({address}) on {contract} (chain {target.chain_id}) with the ETH to deposit "
                "as the value; plain ETH sent to the contract is credited to the sender."
            )
        else:
            method = "depositToken(address,address,uint256)"
            steps = (
                f"1. approve({contract}, amount) on the {token.symbol} contract {token.contract_address}. "
                f"2. depositToken({token.contract_address}, {address}, amount) on {contract} "
                f"(chain {target.chain_id}). What arrives is credited."
            )
        return accounts_pb2.GetDepositInfoResponse(
            chain_id=target.chain_id,
            contract_address=contract,
            token=message,
            method=method,
            confirmations=target.confirmations,
            instructions=f"{steps} The deposit is credited to {address} after {target.confirmations} "
            "confirmation(s), with a deposit.confirmed event.",
        )
