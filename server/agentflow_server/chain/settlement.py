"""The settlement stage: drains the priority queues into batches, one contract call each, and follows each
batch to its confirmations.

A batch is written before its transaction is sent, and every signed version of that transaction is
written before it is broadcast, so after a crash the stage knows exactly what may be on chain. Batches go
to the chain one at a time: the contract executes batch ids in order, and a batch id executes once, so
however often a batch is sent (a retry, a replacement, a re-send after a reorg or a restart) it pays once.
While one batch is on its way, the next one is formed, so that the ledger's work and the chain's overlap.
"""

from __future__ import annotations

import asyncio
import logging
import secrets
import time
from collections.abc import Callable
from dataclasses import dataclass

from ..engine.commands import FailBatch, OpenBatch, RecordBatch, SettleBatch
from ..engine.engine import Engine
from ..engine.model import Batch, BatchStatus, Payment, SentTransaction
from ..ledger.batches import BatchReader
from ..metrics import Metrics
from ..tokens import TokenRegistry
from .contract import ETH_ADDRESS, Item, SettlementContract, decode_batch_logs, encode_call, encode_settle, topic
from .deploy import transact
from .relayer import GAS_CAP, Relayer, SignedTransaction
from .rpc import CallReverted, ChainError, ChainRequestRefused, Receipt

log = logging.getLogger("agentflow.chain.settlement")

# The most gas one item may take: a token transfer to a new holder through a token with a block list, or an
# ETH payout to a new account whose code spends all of its stipend; each with its calldata. A batch's gas
# limit is the sum (the transaction pays only what it uses), so no estimate is needed, and the sum keeps a
# batch under the per-transaction cap.
TOKEN_ITEM_GAS = 40_000
ETH_ITEM_GAS = 70_000
# The call itself (the batch id's first write), and per token: its fees' first write and the cold token.
BATCH_BASE_GAS = 60_000
TOKEN_GROUP_GAS = 30_000


@dataclass(frozen=True)
class SettlementConfig:
    """When batches close and how hard a batch is tried."""

    max_batch_size: int = 100
    batch_timeout: float = 1.0
    """Seconds the first queued payment waits for a fuller batch."""
    confirmations: int = 1
    """Blocks, the batch's own included, before its payments complete."""
    retries: int = 3
    """Attempts after a batch's transaction reverted or was refused, before its payments fail."""
    backoff: float = 0.5
    """Seconds before the first retry; doubled for each next one (up to 30 s)."""
    poll_interval: float = 0.2
    fee_payout_interval: float = 3600.0
    """Seconds between payouts of the accrued fees to the four recipients (0: never; anyone may call
    ``distributeFees`` on the contract themselves)."""


def new_batch_id() -> str:
    """Time-ordered, like payment ids."""
    return f"{time.time_ns() // 1000:014x}{secrets.token_hex(4)}"


class BatchFailed(Exception):
    """A batch's transaction reverted, or the node refused it for good."""


class SettlementStage:
    """Forms, sends and confirms settlement batches, one after another. Run :meth:`run` as a task."""

    def __init__(
        self,
        engine: Engine,
        reader: BatchReader,
        relayer: Relayer,
        contract: SettlementContract,
        tokens: TokenRegistry,
        config: SettlementConfig | None = None,
        on_health: Callable[[bool], None] = lambda serving: None,
        metrics: Metrics | None = None,
    ) -> None:
        self._engine = engine
        self._reader = reader
        self._relayer = relayer
        self._rpc = relayer.rpc
        self._contract = contract
        self._tokens = tokens
        self.config = config or SettlementConfig()
        self._on_health = on_health
        self._metrics = metrics
        self._next_chain_id: int | None = None
        self._waiting_since: float | None = None
        self._reconciled = False
        # The last confirmed batch's settlement, committed with the next batch's forming.
        self._settled: SettleBatch | None = None
        # A batch formed (committed) while the one before it was on its way, not yet signed.
        self._formed: Batch | None = None
        self._last_payout = time.monotonic()

    async def run(self) -> None:
        """Reconcile what a previous run left unfinished, then settle for ever. Chain failures are waited
        out (payments keep being accepted and queued meanwhile); health says NOT_SERVING while they last."""
        delay = self.config.backoff
        self._reconciled = False
        self._next_chain_id = None
        while True:
            try:
                if not self._reconciled:
                    await self.reconcile()
                    self._reconciled = True
                settled = await self.settle_next()
                await self._pay_out_fees_when_due()
                self._on_health(True)
                delay = self.config.backoff
                if not settled:
                    await asyncio.sleep(self.config.poll_interval)
            except ChainError as error:
                log.warning("settlement paused: %s", error)
                self._on_health(False)
                # Whatever batch was under way is finished from the ledger's record before anything new.
                self._reconciled = False
                await asyncio.sleep(delay)
                delay = min(delay * 2, 30.0)

    async def reconcile(self) -> None:
        """Finish every batch a previous run formed or sent, checking the chain before sending anything new."""
        self._formed = None  # it is in the ledger, unfinished: driven below in its turn
        await self._flush_settled()
        for batch in await self._reader.unfinished():
            log.info("reconciling %s (contract batch %d)", batch.name, batch.chain_batch_id)
            self._settled = await self._drive(batch)
            await self._flush_settled()

    async def _flush_settled(self) -> bool:
        settled, self._settled = self._settled, None
        if settled is not None:
            await self._engine.execute(settled)
        return settled is not None

    # -- forming batches ----------------------------------------------------------------------------

    def _due(self) -> list[str]:
        """The payment ids of the next batch in item order (grouped by token), or none if nothing is due."""
        queues = self._engine.queues
        queued = sum(len(queue) for queue in queues.values())
        now = time.monotonic()
        if queued == 0:
            self._waiting_since = None
            return []
        if self._waiting_since is None:
            self._waiting_since = now
        size = self.config.max_batch_size
        if queued < size and now - self._waiting_since < self.config.batch_timeout:
            return []
        # No more than the gas cap can hold are looked at: a deep queue must not make every batch sort more.
        size = min(size, (GAS_CAP - BATCH_BASE_GAS - TOKEN_GROUP_GAS) // min(TOKEN_ITEM_GAS, ETH_ITEM_GAS))
        # Earliest deadlines first across tokens; then grouped by token, as the contract takes them.
        candidates = []
        gas = BATCH_BASE_GAS
        symbols: set[str] = set()
        for deadline, symbol, payment_id in sorted(
            (deadline, symbol, payment_id)
            for symbol, queue in queues.items()
            for deadline, payment_id in queue.peek(size)
        )[:size]:
            gas += self._item_gas(symbol) + (TOKEN_GROUP_GAS if symbol not in symbols else 0)
            symbols.add(symbol)
            if gas > GAS_CAP:
                break  # the gas cap closes the batch before max_batch_size
            candidates.append((deadline, symbol, payment_id))
        order = {token.symbol: index for index, token in enumerate(self._tokens)}
        candidates.sort(key=lambda c: (order.get(c[1], len(order)), c[0]))
        return [payment_id for _, _, payment_id in candidates]

    async def settle_next(self) -> bool:
        """Settle the next batch if one is due, forming the one after it meanwhile; whether there was anything
        to do."""
        batch, self._formed = self._formed, None
        settled, self._settled = self._settled, None
        if batch is None:
            batch = await self._form(settled)
            if batch is None:
                return settled is not None
            settled = None
        # The ledger forms the next batch (committing this one's predecessor's settlement with it) while this
        # one goes to the chain. Its contract id is a forecast until it is signed (see _send_and_confirm). It
        # starts once this one's transaction is recorded: the engine commits in order, and a forming ahead of
        # the record would hold the send behind it.
        forming: asyncio.Task[Batch | None] | None = None

        def form() -> None:
            nonlocal forming
            if forming is None:
                forming = asyncio.create_task(self._form(settled))

        try:
            self._settled = await self._drive(batch, on_recorded=form)
        except BaseException as error:
            # What the forming commits is in the ledger, where reconciling finds it: it is let finish first, so
            # that reconciling reads it (a stop cancels it; the next start reconciles).
            if forming is not None:
                if isinstance(error, asyncio.CancelledError):
                    forming.cancel()
                await asyncio.gather(forming, return_exceptions=True)
            raise
        form()
        assert forming is not None
        self._formed = await forming
        return True

    async def _form(self, settled: SettleBatch | None) -> Batch | None:
        """Commit ``settled``, with the next batch's forming when one is due; the batch formed, if any."""
        payment_ids = self._due()
        if not payment_ids:
            if settled is not None:
                await self._engine.execute(settled)
            return None
        if self._next_chain_id is None:
            self._next_chain_id = await self._contract.last_batch_id() + 1
        opening = OpenBatch(new_batch_id(), self._next_chain_id, tuple(payment_ids))
        opened: object
        if settled is None:
            opened = await self._engine.execute(opening)
        else:
            # The confirmed batch's settlement and the next batch's forming share one commit.
            outcomes = await self._engine.execute_many([settled, opening])
            for outcome in outcomes:
                if isinstance(outcome, Exception):
                    raise outcome
            opened = outcomes[1]
        assert isinstance(opened, Batch)
        batch = opened
        if not batch.payment_ids:
            return None
        self._next_chain_id = batch.chain_batch_id + 1
        return batch

    async def _pay_out_fees_when_due(self) -> None:
        """Every ``fee_payout_interval``, pay each token's accrued fees out to the four recipients. The deposit
        watcher records the payouts in the ledger from the contract's logs."""
        interval = self.config.fee_payout_interval
        if interval <= 0 or time.monotonic() - self._last_payout < interval:
            return
        self._last_payout = time.monotonic()
        for token in self._tokens:
            address = ETH_ADDRESS if token.native else token.contract_address
            if await self._contract.accrued_fees(address) > 0:
                await transact(self._relayer, self._contract.address, encode_call("distributeFees", address))
                log.info("paid out the accrued %s fees", token.symbol)

    # -- driving one batch --------------------------------------------------------------------------

    async def _drive(self, batch: Batch, on_recorded: Callable[[], None] = lambda: None) -> SettleBatch | None:
        """Take a batch to its confirmations, or after its retries to FAILED; the settlement to commit (its
        payments COMPLETED), or None when it failed. ``on_recorded`` is called when a version of its
        transaction is recorded, about to be broadcast."""
        payments = self._engine.processing(batch.payment_ids) or await self._reader.payments(batch)
        if [p.payment_id for p in payments] != batch.payment_ids:
            # The contract's events name items by position: a batch that cannot be rebuilt exactly is not sent.
            raise ChainError(f"{batch.name}: its payments cannot all be read back; it is not sent")
        failures = 0
        while True:
            try:
                # After a failure the node estimates the gas: a limit from the bounds that proved too low
                # (a token with costly hooks) must not fail every retry the same way.
                receipt = await self._send_and_confirm(batch, payments, failures > 0, on_recorded)
                return self._settle(batch, receipt)
            except BatchFailed as error:
                # What was sent is spent (reverted, or refused): the next attempt signs afresh.
                batch.transactions.clear()
                await self._engine.execute(RecordBatch(batch))
                failures += 1
                if failures > self.config.retries:
                    log.error("%s failed after %d attempts: %s", batch.name, failures, error)
                    await self._engine.execute(FailBatch(batch, str(error)[:500]))
                    if self._metrics is not None:
                        self._metrics.batches.labels("failed").inc()
                    self._next_chain_id = None  # the id was not used: the next batch takes it
                    return None
                log.warning("%s attempt %d failed, retrying: %s", batch.name, failures, error)
                await asyncio.sleep(min(self.config.backoff * 2 ** (failures - 1), 30.0))

    def _item_gas(self, symbol: str) -> int:
        return ETH_ITEM_GAS if self._tokens.get(symbol).native else TOKEN_ITEM_GAS

    def _gas_limit(self, payments: list[Payment]) -> int:
        groups = len({p.token for p in payments})
        return min(GAS_CAP, BATCH_BASE_GAS + TOKEN_GROUP_GAS * groups + sum(self._item_gas(p.token) for p in payments))

    def _calldata(self, batch: Batch, payments: list[Payment]) -> bytes:
        groups: list[tuple[str, list[Item]]] = []
        for payment in payments:
            token = self._tokens.get(payment.token)
            address = ETH_ADDRESS if token.native else token.contract_address
            if not groups or groups[-1][0] != address:
                groups.append((address, []))
            groups[-1][1].append(Item(payment.payer, payment.payee, payment.amount, payment.fee.total))
        return encode_settle(batch.chain_batch_id, groups)

    async def _record(self, batch: Batch, signed: SignedTransaction) -> None:
        """Write a signed version into the batch before it is broadcast."""
        batch.transactions.append(
            SentTransaction(
                signed.hash,
                signed.raw.hex(),
                signed.nonce,
                int(signed.request["gas"]),
                signed.max_fee_per_gas,
                signed.max_priority_fee_per_gas,
            )
        )
        batch.attempts += 1
        batch.status = BatchStatus.SUBMITTED
        if batch.submit_time_us is None:
            batch.submit_time_us = time.time_ns() // 1000
        await self._engine.execute(RecordBatch(batch))

    def _versions(self, batch: Batch, data: bytes) -> list[SignedTransaction]:
        """The batch's recorded versions, as the relayer knows them, for the current calldata."""
        request = {"from": self._relayer.address, "to": self._contract.address, "data": data, "value": 0}
        return [
            SignedTransaction(
                nonce=t.nonce,
                hash=t.hash,
                raw=bytes.fromhex(t.raw),
                max_fee_per_gas=t.max_fee_per_gas,
                max_priority_fee_per_gas=t.max_priority_fee_per_gas,
                request={**request, "gas": t.gas, "chainId": self._relayer.chain_id},
            )
            for t in batch.transactions
        ]

    async def _send_and_confirm(
        self, batch: Batch, payments: list[Payment], estimate: bool, on_recorded: Callable[[], None]
    ) -> Receipt:
        if batch.attempts == 0:
            # Never signed, so no version of it is anywhere: it takes the contract's next id now. The id it
            # was formed with is a forecast, wrong when a batch before it failed.
            await self._take_next_id(batch)
            receipt = None
            versions: list[SignedTransaction] = []
            data = self._calldata(batch, payments)
        else:
            data = self._calldata(batch, payments)
            versions = self._versions(batch, data)
            receipt = await self._mined_version(versions) or await self._execution_of(batch)
        # Sent before (a restart, or the node was away): send the newest version again; it may never have left.
        if receipt is None and versions and not await self._rebroadcast(versions[-1]):
            versions = []  # its nonce went to another transaction: sign afresh
        if receipt is None and not versions:
            try:
                gas = None if estimate else self._gas_limit(payments)
                signed = await self._relayer.prepare(self._contract.address, data, gas=gas)
            except (CallReverted, ChainRequestRefused) as error:
                # The estimate reverts (or the node will not run it): perhaps because a version of this batch
                # already used its id.
                receipt = await self._execution_of(batch)
                if receipt is None:
                    raise BatchFailed(f"the contract refuses the batch: {error}") from error
            else:
                await self._record(batch, signed)
                on_recorded()
                try:
                    await self._relayer.broadcast(signed)
                except ChainRequestRefused as error:
                    raise BatchFailed(f"the node refused the transaction: {error}") from error
                versions = [signed]
        while True:
            if receipt is None:
                receipt = await self._relayer.wait(
                    versions, lambda signed: self._record(batch, signed), self._contract.address
                )
            if receipt.status != 1:
                # Reverted. If the batch id was used meanwhile, another version of this batch used it.
                executed = await self._execution_of(batch)
                if executed is None:
                    raise BatchFailed(f"transaction {receipt.transaction_hash} reverted")
                receipt = executed
            confirmed = await self._confirm(receipt)
            if confirmed is not None:
                return confirmed
            # Reorganised away: the transaction goes back to the pool (sent again if it was dropped); the
            # contract's batch id keeps it to one execution wherever it lands.
            log.warning("%s: block %d reorganised away; sending again", batch.name, receipt.block_number)
            receipt = None
            if versions and not await self._rebroadcast(versions[-1]):
                receipt = await self._mined_version(versions) or await self._find_execution(batch)
                if receipt is None:
                    raise BatchFailed("the reorganised transaction's nonce was taken by another")

    async def _take_next_id(self, batch: Batch) -> None:
        """Give a batch never signed the contract's next id (recorded with its first signed version)."""
        next_id = await self._contract.last_batch_id() + 1
        if batch.chain_batch_id != next_id:
            log.info("%s takes contract batch %d (formed as %d)", batch.name, next_id, batch.chain_batch_id)
            batch.chain_batch_id = next_id
            self._next_chain_id = None  # the forecast was wrong: the next batch asks the contract

    async def _mined_version(self, versions: list[SignedTransaction]) -> Receipt | None:
        for version in reversed(versions):
            receipt = await self._rpc.receipt(version.hash, self._contract.address)
            if receipt is not None:
                return receipt
        return None

    async def _rebroadcast(self, version: SignedTransaction) -> bool:
        """Send a recorded version again; False when its nonce is used already by something not mined here."""
        try:
            await self._relayer.broadcast(version)
        except ChainRequestRefused as error:
            if "nonce too low" in str(error).lower():
                return await self._rpc.receipt(version.hash, self._contract.address) is not None
            raise
        return True

    async def _find_execution(self, batch: Batch) -> Receipt | None:
        """The receipt of the transaction that executed this batch id, from the contract's log."""
        head = await self._rpc.block_number()
        batch_topic = batch.chain_batch_id.to_bytes(32, "big")
        logs = await self._rpc.logs(
            self._contract.address, [topic("BatchSettled"), batch_topic], max(0, head - 50_000), head
        )
        if not logs:
            return None
        return await self._rpc.receipt(logs[-1].transaction_hash, self._contract.address)

    async def _confirm(self, receipt: Receipt) -> Receipt | None:
        """Wait for the confirmations; the receipt, or None if its block left the chain."""
        wanted = receipt.block_number + self.config.confirmations - 1
        head = await self._rpc.block_number()
        while head < wanted:
            await asyncio.sleep(self.config.poll_interval)
            head = await self._rpc.block_number()
        # The receipt stands while its block is still the chain's block at that height.
        block = await self._rpc.block(receipt.block_number)
        if block is None or block.hash != receipt.block_hash:
            return None
        return receipt

    async def _execution_of(self, batch: Batch) -> Receipt | None:
        """The receipt that executed this batch's id, or None if the contract has not executed it.

        A batch keeps its id from its first signing to the end, and ids are used by one signed batch at a
        time, so an execution of the id is one of this batch's versions: it is settled from it, never sent
        under another id (which would pay twice). A contract behind the ledger (expecting a lower id) stops
        everything.
        """
        last = await self._contract.last_batch_id()
        if last < batch.chain_batch_id - 1:
            raise ChainError(
                f"the contract's last batch is {last}, but {batch.name} is batch {batch.chain_batch_id}: the "
                "ledger records batches the chain never executed; nothing more is sent"
            )
        if last < batch.chain_batch_id:
            return None
        receipt = await self._find_execution(batch)
        if receipt is None:
            raise ChainError(f"contract batch {batch.chain_batch_id} executed, but its transaction is not found")
        return receipt

    def _settle(self, batch: Batch, receipt: Receipt) -> SettleBatch:
        settled, credited, skipped = decode_batch_logs(receipt.logs, self._contract.address)
        if settled is None or settled.batch_id != batch.chain_batch_id:
            raise ChainError(
                f"transaction {receipt.transaction_hash} holds no settlement of batch {batch.chain_batch_id}"
            )
        batch.transaction_hash = receipt.transaction_hash
        batch.block_number = receipt.block_number
        batch.block_hash = receipt.block_hash
        batch.gas_used = receipt.gas_used
        batch.gas_price = receipt.effective_gas_price
        if self._metrics is not None:
            self._metrics.batches.labels("confirmed").inc()
            self._metrics.batch_items.observe(len(batch.payment_ids))
            self._metrics.batch_gas.observe(receipt.gas_used)
            self._metrics.batch_seconds.observe(max(0.0, time.time() - batch.create_time_us / 1e6))
        log.info(
            "%s confirmed: %d payments in block %d (%d gas)",
            batch.name,
            len(batch.payment_ids),
            receipt.block_number,
            receipt.gas_used,
        )
        # Committed with the next batch's forming when one is due (a crash before that is reconciled at start:
        # the batch is recorded as sent, and its receipt is on chain).
        return SettleBatch(batch, frozenset(c.index for c in credited), frozenset(s.index for s in skipped))
