"""The chain side of a running server: the node (embedded or JSON-RPC), the ledger's chain identity, the
deposit watcher and the settlement stage."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field

from eth_account import Account
from eth_account.signers.local import LocalAccount

from ..breaker import CircuitBreaker
from ..engine.commands import SetChainState
from ..engine.engine import Engine
from ..ledger.batches import BatchReader
from ..metrics import Metrics
from ..tokens import TokenRegistry
from .contract import ETH_ADDRESS, SettlementContract
from .deposits import CURSOR_KEY, DepositWatcher
from .embedded import start_embedded_chain
from .relayer import Relayer, RelayerConfig
from .rpc import ChainError, Rpc
from .settlement import SettlementConfig, SettlementStage

log = logging.getLogger("agentflow.chain")


class ChainSetupError(Exception):
    """The chain cannot be used: unreachable, another chain than the ledger's, a contract we do not operate."""


@dataclass(frozen=True)
class ChainOptions:
    """How to reach the chain and settle on it (from the settings)."""

    rpc_url: str | None = None
    """None: the embedded in-process chain."""
    chain_id: int | None = None
    contract_address: str | None = None
    operator_key: str | None = None
    token_addresses: dict[str, str] = field(default_factory=dict)
    confirmations: int = 1
    deposits_from_block: int = 0
    poll_interval: float = 1.0
    rpc_timeout: float = 30.0
    rpc_failure_threshold: int = 5
    rpc_reset_timeout: float = 10.0
    relayer: RelayerConfig = field(default_factory=RelayerConfig)
    settlement: SettlementConfig = field(default_factory=SettlementConfig)


@dataclass(frozen=True)
class ChainIdentity:
    """What makes a chain this chain: the ledger records it once and refuses any other."""

    chain_id: int
    genesis_hash: str
    contract: str

    def as_state(self) -> dict[str, str]:
        return {"chain.id": str(self.chain_id), "chain.genesis": self.genesis_hash, "chain.contract": self.contract}


class ChainConnection:
    """A reachable chain with the settlement contract and its operator, before anything runs on it."""

    def __init__(
        self,
        rpc: Rpc,
        operator: LocalAccount,
        identity: ChainIdentity,
        token_addresses: dict[str, str],
        options: ChainOptions,
        embedded: bool,
    ) -> None:
        self.rpc = rpc
        self.operator = operator
        self.identity = identity
        self.token_addresses = token_addresses
        self.options = options
        self.embedded = embedded
        self.relayer = Relayer(rpc, operator, identity.chain_id, options.relayer)
        self.contract = SettlementContract(rpc, identity.contract)

    @classmethod
    async def open(cls, options: ChainOptions) -> ChainConnection:
        """Reach the node (or start the embedded chain) and learn which chain it is."""
        try:
            if options.rpc_url is None:
                embedded = await start_embedded_chain(options.relayer)
                rpc, operator = embedded.rpc, embedded.operator
                contract, tokens = embedded.settlement, dict(embedded.tokens)
            else:
                if not options.contract_address or not options.operator_key:
                    raise ChainSetupError("with chain_rpc_url, contract_address and operator_private_key are required")
                breaker = CircuitBreaker(options.rpc_failure_threshold, options.rpc_reset_timeout)
                rpc = Rpc.http(options.rpc_url, options.rpc_timeout, breaker)
                operator = Account.from_key(options.operator_key)
                contract, tokens = options.contract_address, dict(options.token_addresses)
            chain_id = await rpc.chain_id()
            if options.chain_id is not None and options.chain_id != chain_id:
                raise ChainSetupError(
                    f"the node serves chain {chain_id}, not the configured chain_id {options.chain_id}"
                )
            genesis = await rpc.block(0)
            if genesis is None:
                raise ChainSetupError("the node has no genesis block")
            connection = cls(
                rpc,
                operator,
                ChainIdentity(chain_id, genesis.hash, SettlementContract(rpc, contract).address),
                tokens,
                options,
                options.rpc_url is None,
            )
        except ChainError as error:
            raise ChainSetupError(f"cannot use the chain: {error}") from error
        return connection

    async def check_operator(self) -> None:
        """Refuse a contract the configured key does not operate (it could not settle a thing)."""
        try:
            operating = await self.contract.operator()
        except ChainError as error:
            raise ChainSetupError(f"cannot use the settlement contract: {error}") from error
        if operating != self.operator.address:
            raise ChainSetupError(
                f"the settlement contract {self.contract.address} is operated by {operating}, not by the "
                f"configured key ({self.operator.address})"
            )

    async def close(self) -> None:
        await self.rpc.close()


class ChainRuntime:
    """The deposit watcher and the settlement stage of a started server."""

    def __init__(self, connection: ChainConnection, watcher: DepositWatcher, stage: SettlementStage) -> None:
        self.connection = connection
        self.watcher = watcher
        self.stage = stage
        self._tasks: list[asyncio.Task[None]] = []

    @classmethod
    async def start(
        cls,
        connection: ChainConnection,
        engine: Engine,
        reader: BatchReader,
        tokens: TokenRegistry,
        on_health: Callable[[bool], None],
        metrics: Metrics | None = None,
    ) -> ChainRuntime:
        """Check the ledger belongs to this chain (recording it on first start), then start watching and
        settling."""
        state = await reader.chain_state()
        identity = connection.identity.as_state()
        recorded = {key: state[key] for key in identity if key in state}
        if recorded and recorded != identity:
            hint = " (the embedded chain is new on every start: use a new data_dir, or chain_rpc_url)"
            raise ChainSetupError(
                f"this ledger belongs to chain {recorded.get('chain.id')} (genesis {recorded.get('chain.genesis')}, "
                f"contract {recorded.get('chain.contract')}), not to chain {identity['chain.id']} (genesis "
                f"{identity['chain.genesis']}, contract {identity['chain.contract']})"
                + (hint if connection.embedded else "")
            )
        await connection.check_operator()
        if not recorded:
            await engine.execute(SetChainState(tuple(identity.items())))
        options = connection.options
        by_address = {
            (ETH_ADDRESS if token.native else token.contract_address): token
            for token in tokens
            if token.native or token.contract_address
        }
        watcher = DepositWatcher(
            connection.rpc,
            engine,
            connection.identity.contract,
            by_address,
            options.confirmations,
            int(state.get(CURSOR_KEY, options.deposits_from_block - 1)),
            options.poll_interval,
            metrics=metrics,
        )
        stage = SettlementStage(
            engine, reader, connection.relayer, connection.contract, tokens, options.settlement, on_health, metrics
        )
        runtime = cls(connection, watcher, stage)
        runtime._tasks = [
            asyncio.create_task(_supervised("deposit watcher", watcher.run), name="deposit-watcher"),
            asyncio.create_task(_supervised("settlement stage", stage.run), name="settlement-stage"),
        ]
        return runtime

    async def stop(self) -> None:
        """Stop watching and settling. A batch under way is left as the ledger recorded it; the next start
        reconciles it against the chain."""
        for task in self._tasks:
            task.cancel()
        for task in self._tasks:
            with contextlib.suppress(asyncio.CancelledError):
                await task
        await self.connection.close()


async def _supervised(name: str, run: Callable[[], Awaitable[None]]) -> None:
    """Run a loop for ever: a bug or a storage failure is logged and the loop starts again (from the
    ledger's record) a moment later, instead of settlement silently stopping."""
    while True:
        try:
            await run()
            return
        except Exception:
            log.exception("%s stopped unexpectedly; restarting in 1 s", name)
            await asyncio.sleep(1.0)
