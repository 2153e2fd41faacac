"""The deposit watcher: follows the settlement contract's ``Deposited`` logs and credits each one through
the engine once it has its confirmations, exactly once per (transaction hash, log index). It follows the
contract's fee payouts (``FeesDistributed``, ``FeeCredited``) and exits (``Exited``) the same way, so the
ledger keeps adding up to what the contract holds."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Mapping

from ..engine.commands import Command, CreditDeposit, RecordExit, RecordFeePayout, SetChainState
from ..engine.engine import Engine
from ..metrics import Metrics
from ..tokens import Token
from .contract import decode_deposited, decode_exited, decode_fee_payout, topic
from .rpc import ChainError, Rpc

log = logging.getLogger("agentflow.chain.deposits")

CURSOR_KEY = "deposits.block"
"""chain_state key: the last block whose deposits are all credited."""


class DepositWatcher:
    """Credits confirmed deposits. Its position is committed after what it credited, and credits are
    idempotent per log, so a crash anywhere credits nothing twice and misses nothing.

    Only blocks with ``confirmations`` (their own included) are read, so a reorganisation shallower than
    that never reaches the ledger.
    """

    def __init__(
        self,
        rpc: Rpc,
        engine: Engine,
        contract: str,
        tokens: Mapping[str, Token],
        confirmations: int,
        start_block: int,
        poll_interval: float = 1.0,
        max_range: int = 2_000,
        metrics: Metrics | None = None,
    ) -> None:
        self._rpc = rpc
        self._engine = engine
        self._contract = contract
        # By contract address, lowercased; ETH under the zero address.
        self._tokens = {address.lower(): token for address, token in tokens.items()}
        self.confirmations = confirmations
        self.cursor = start_block
        self._poll_interval = poll_interval
        self._max_range = max_range
        self._advanced = asyncio.Event()
        self._metrics = metrics

    async def credited_through(self, block: int) -> None:
        """Wait until every confirmed deposit up to ``block`` is credited."""
        while self.cursor < block:
            await self._advanced.wait()

    async def run(self) -> None:
        """Poll until cancelled; chain failures are logged and retried at the next poll."""
        while True:
            try:
                while await self.poll():
                    pass  # more ranges to catch up on
            except ChainError as error:
                log.warning("deposit watcher: %s", error)
            await asyncio.sleep(self._poll_interval)

    async def poll(self) -> bool:
        """Credit the deposits of the next confirmed range; whether there may be more to read."""
        head = await self._rpc.block_number()
        confirmed = head - self.confirmations + 1
        if confirmed <= self.cursor:
            return False
        last = min(confirmed, self.cursor + self._max_range)
        wanted = [topic("Deposited"), topic("FeesDistributed"), topic("FeeCredited"), topic("Exited")]
        logs = await self._rpc.logs(self._contract, [wanted], self.cursor + 1, last)
        commands: list[Command] = []
        for log_entry in logs:
            if log_entry.topics[0] == topic("Exited"):
                exited = decode_exited(log_entry)
                exit_token = self._tokens.get(exited.token.lower())
                if exit_token is not None:
                    commands.append(
                        RecordExit(
                            exited.account,
                            exit_token,
                            exited.amount,
                            log_entry.transaction_hash,
                            log_entry.log_index,
                        )
                    )
                continue
            if log_entry.topics[0] != topic("Deposited"):
                payout = decode_fee_payout(log_entry)
                fee_token = self._tokens.get(payout.token.lower())
                if fee_token is not None:
                    commands.append(
                        RecordFeePayout(
                            fee_token,
                            payout.amount,
                            payout.recipient,
                            log_entry.transaction_hash,
                            log_entry.log_index,
                        )
                    )
                continue
            deposit = decode_deposited(log_entry)
            token = self._tokens.get(deposit.token.lower())
            if token is None:
                # Not a token this service accepts: the depositor gets it back through the contract's exit.
                log.warning(
                    "deposit of unaccepted token %s in %s (log %d) not credited",
                    deposit.token,
                    log_entry.transaction_hash,
                    log_entry.log_index,
                )
                continue
            commands.append(
                CreditDeposit(
                    beneficiary=deposit.beneficiary,
                    depositor=deposit.sender,
                    token=token,
                    amount=deposit.amount,
                    transaction_hash=log_entry.transaction_hash,
                    log_index=log_entry.log_index,
                    block_number=log_entry.block_number,
                )
            )
        if commands:
            results = await self._engine.execute_many(commands)
            failed = [result for result in results if isinstance(result, Exception)]
            if failed:
                raise ChainError(f"deposits in blocks {self.cursor + 1}-{last} not credited: {failed[0]}")
            log.info("recorded %d deposits and fee payouts up to block %d", len(commands), last)
        # Only once every credit is committed does the position move past them.
        await self._engine.execute(SetChainState(((CURSOR_KEY, str(last)),)))
        self.cursor = last
        if self._metrics is not None:
            self._metrics.deposits_block.set(last)
        self._advanced.set()
        self._advanced = asyncio.Event()
        return last < confirmed
