"""Driving a chain in tests: the running server's chain, an anvil node with the contracts deployed, and
waiting for payments to settle."""

from __future__ import annotations

import asyncio
import sqlite3
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import sqlalchemy as sa
from eth_account import Account
from eth_account.signers.local import LocalAccount

from agentflow_payments import AsyncClient
from agentflow_payments.v1 import payments_pb2
from agentflow_server.chain.contract import read
from agentflow_server.chain.deploy import deploy_dev_tokens, deploy_settlement, dev_account, fund_dev_agent
from agentflow_server.chain.relayer import Relayer
from agentflow_server.chain.rpc import Rpc
from agentflow_server.engine.model import CHAIN

from .anvil import ANVIL_KEYS
from .conftest import RunningServer

FAST = {"chain_poll_interval": 0.05, "batch_timeout_ms": 50}
"""Settings that make a settling test server look at the chain often and close batches quickly."""


async def wait_for(check: Callable[[], Awaitable[Any]], what: str, seconds: float = 30.0) -> Any:
    deadline = time.monotonic() + seconds
    while True:
        result = await check()
        if result:
            return result
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        await asyncio.sleep(0.05)


class Chain:
    """The running server's chain, as a test drives it."""

    def __init__(self, server: RunningServer) -> None:
        assert server.service.chain is not None
        self.server = server
        self.connection = server.service.chain.connection
        self.rpc = self.connection.rpc
        self.contract = self.connection.identity.contract
        self.tokens = self.connection.token_addresses

    async def fund(self, name: str, deposits: dict[str, int]) -> LocalAccount:
        """A dev agent with ``deposits`` in the settlement contract, credited by the server's watcher."""
        agent = dev_account(name)
        relayer = Relayer(self.rpc, agent, self.connection.identity.chain_id)
        await fund_dev_agent(self.connection.relayer, relayer, self.contract, self.tokens, deposits)
        await self.caught_up()
        return agent

    async def caught_up(self) -> None:
        """Wait until the deposit watcher has read every block with its confirmations."""
        watcher = self.server.service.chain.watcher  # type: ignore[union-attr]

        async def done() -> bool:
            head = await self.rpc.block_number()
            return watcher.cursor >= head - watcher.confirmations + 1

        await wait_for(done, "the deposit watcher")

    async def held(self, symbol: str) -> int:
        """What the contract holds of a token (ETH included)."""
        if symbol == "ETH":
            return await self.rpc.balance(self.contract)
        return int(await read(self.rpc, self.tokens[symbol], "balanceOf", self.contract, contract="TestToken"))

    async def token_balance(self, symbol: str, who: str) -> int:
        if symbol == "ETH":
            return await self.rpc.balance(who)
        return int(await read(self.rpc, self.tokens[symbol], "balanceOf", who, contract="TestToken"))


def ledger(server: RunningServer) -> sqlite3.Connection:
    return sqlite3.connect(Path(server.settings.data_dir) / "agentflow.db")


async def query(server: RunningServer, sql: str, **parameters: object) -> list[tuple[Any, ...]]:
    """The rows of ``sql`` (with ``:name`` parameters) in a running server's ledger, on either database."""
    async with server.service.database.connect() as connection:
        return [tuple(row) for row in await connection.execute(sa.text(sql), parameters)]


_ACCOUNTS = "SELECT address, token, available, reserved, escrowed FROM accounts"


async def assert_ledger_matches_chain(chain: Chain) -> None:
    """Per token, the contract holds exactly what the ledger's accounts hold (settled fees included)."""
    await chain.caught_up()
    await _accounts_match(await query(chain.server, _ACCOUNTS), chain.rpc, chain.contract, chain.tokens)


async def ledger_matches(path: Path, rpc: Rpc, contract: str, tokens: dict[str, str]) -> None:
    """As :func:`assert_ledger_matches_chain`, for the SQLite ledger at ``path`` of a server that is gone."""
    with sqlite3.connect(path) as db:
        rows = db.execute(_ACCOUNTS).fetchall()
    await _accounts_match(rows, rpc, contract, tokens)


async def _accounts_match(rows: list[tuple[Any, ...]], rpc: Rpc, contract: str, tokens: dict[str, str]) -> None:
    totals: dict[str, int] = {}
    for address, token, available, reserved, escrowed in rows:
        if address != CHAIN:
            totals[token] = totals.get(token, 0) + int(available) + int(reserved) + int(escrowed)
    for symbol in ("ETH", *tokens):
        if symbol == "ETH":
            held = await rpc.balance(contract)
        else:
            held = int(await read(rpc, tokens[symbol], "balanceOf", contract, contract="TestToken"))
        assert held == totals.get(symbol, 0), symbol


async def payment_status(client: AsyncClient, name: str) -> payments_pb2.Payment:
    return (await client.payments.GetPayment(payments_pb2.GetPaymentRequest(name=name))).payment


async def until_final(client: AsyncClient, names: list[str]) -> list[payments_pb2.Payment]:
    final = (payments_pb2.PAYMENT_STATUS_COMPLETED, payments_pb2.PAYMENT_STATUS_FAILED)

    async def check() -> list[payments_pb2.Payment] | None:
        found = [await payment_status(client, name) for name in names]
        return found if all(p.status in final for p in found) else None

    result: list[payments_pb2.Payment] = await wait_for(check, "payments to settle")
    return result


def pay(payer: str, payee: str, token: str, amount: int) -> payments_pb2.SubmitPaymentRequest:
    return payments_pb2.SubmitPaymentRequest(payer=payer, payee=payee, token=token, amount=str(amount))


class Anvil:
    """An anvil node with the settlement contract and the dev tokens deployed by ``ANVIL_KEYS[0]``."""

    def __init__(self, url: str, port: int) -> None:
        self.url = url
        self.port = port
        self.operator = Account.from_key(ANVIL_KEYS[0])
        self.contract = ""
        self.tokens: dict[str, str] = {}

    async def deploy(self) -> None:
        rpc = Rpc.http(self.url)
        try:
            relayer = Relayer(rpc, self.operator, await rpc.chain_id())
            recipients = [dev_account(f"fees {i}").address for i in range(4)]
            self.contract = await deploy_settlement(relayer, recipients, 3600)
            self.tokens = await deploy_dev_tokens(relayer)
        finally:
            await rpc.close()

    def settings(self, url: str | None = None, **overrides: object) -> dict[str, object]:
        return {
            "settlement_enabled": True,
            "chain_rpc_url": url or self.url,
            "contract_address": self.contract,
            "operator_private_key": ANVIL_KEYS[0],
            "token_addresses": self.tokens,
            **FAST,
            **overrides,
        }

    async def request(self, method: str, params: list[Any]) -> Any:
        rpc = Rpc.http(self.url)
        try:
            return await rpc.request(method, params)
        finally:
            await rpc.close()
