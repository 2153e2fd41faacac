"""The batching engine: the one place where ledger state changes.

Services hand it typed commands. It gathers the commands that arrive while the previous group commits (and
for at most ``max_group_wait`` more), applies them in memory one by one (a command that fails fails alone),
writes the group's rows in one transaction, and answers each caller only after the commit: an
acknowledged command is durable. Balances are cached in memory; the engine is their only writer, so the
cache equals the database after every commit, and is rolled back with the transaction when a commit fails.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import dataclasses
import datetime
import functools
import logging
import time
from collections import Counter
from collections.abc import Callable, Collection, Sequence
from dataclasses import dataclass, field

import sqlalchemy as sa
from sqlalchemy.engine import Connection

from agentflow_payments import FieldViolation, Reason

from ..clock import Clock
from ..errors import ApiError, payment_not_found
from ..ledger import Database, StorageError
from ..ledger.database import ThreadConnection, WouldWait
from ..ledger.escrows import load_deadlines, load_escrows
from ..ledger.group import (
    AccountKey,
    GroupWrite,
    IdempotencyRecord,
    end_read,
    idempotency_key,
    load_accounts,
    load_idempotency,
)
from ..ledger.payments import load_payments
from ..ledger.schema import payments, volume_daily
from ..ledger.writer import GroupWriter
from ..metrics import Metrics
from ..tokens import Token, TokenRegistry
from ..wire import batch_message, deposit_message, escrow_message, payment_bytes, withdrawal_message
from . import escrows as rules
from .commands import (
    AttestTaskResult,
    CancelPayment,
    Command,
    CompletePayment,
    CreateEscrow,
    CreditDeposit,
    DisputeEscrow,
    EscrowStep,
    ExpireEscrow,
    FailBatch,
    FailPayment,
    OpenBatch,
    RecordBatch,
    RecordExit,
    RecordFeePayout,
    RefundEscrow,
    ReleaseEscrow,
    ResolveDispute,
    SetChainState,
    SettleBatch,
    StoreRecords,
    SubmitPayment,
    Withdraw,
)
from .expiry import Deadlines
from .fees import (
    Fee,
    FeeSchedule,
    batch_discount_bps,
    compute_fee,
    congestion_adjustment_bps,
    fee_share,
    highest_fee,
    volume_discount_bps,
)
from .ids import IdMint
from .model import (
    CHAIN,
    FEES,
    Balance,
    Batch,
    BatchStatus,
    Bucket,
    Deposit,
    Dispute,
    Escrow,
    EscrowOutcome,
    EscrowStatus,
    ExpiryAction,
    Payment,
    PaymentKind,
    PaymentStatus,
    Priority,
    Settlement,
    TransferKind,
)
from .queue import QueuePolicy, SettlementQueue
from .volume import WINDOW_DAYS, VolumeWindow, day_of

log = logging.getLogger("agentflow.engine")
# The most rows a group may look up on the event loop itself (SQLite): up to this many the read costs less than
# the hand-off to the reader's thread; above it the thread reads while the loop serves calls.
_LOCAL_READ_MOST = 16

Result = Payment | Deposit | Batch | Escrow | EscrowOutcome | None


@dataclass(frozen=True)
class EngineConfig:
    """The engine's knobs."""

    max_group_size: int = 1000
    # Seconds a group may wait for more commands after the first. Commands that arrive while a group commits
    # join the next one anyway, so by default a group takes what is waiting and goes: waiting longer left
    # the writer idle meanwhile, and cost SubmitPayment latency and throughput alike (decision 0004).
    max_group_wait: float = 0.0
    max_queue_size: int = 10_000
    fee_schedule: FeeSchedule = field(default_factory=FeeSchedule)
    queue_policy: QueuePolicy = field(default_factory=QueuePolicy)
    queue_full_retry: datetime.timedelta = datetime.timedelta(seconds=1)
    # When an escrow created without an expiry expires.
    escrow_default_expiry: datetime.timedelta = datetime.timedelta(days=7)
    # Groups committing at once. Above 1, the next group is applied in memory while earlier ones commit,
    # so the loop and the ledger writer work side by side.
    max_inflight: int = 2
    # Commands that must be waiting for a group to start while an earlier one commits. Fewer wait for the
    # commits instead and gather into one larger group: pipelining a trickle of unary calls made many small
    # groups, whose per-group costs outweighed what the overlap won (decision 0004), while bulk calls,
    # which arrive a hundred commands at a time, gain from it.
    pipeline_min_commands: int = 100
    # Commit in a writer process of its own (beside the event loop, not sharing its GIL), or on a thread.
    writer_process: bool = True
    # Seconds between WAL checkpoints (SQLite).
    checkpoint_interval: float = 0.5
    # Bytes the WAL may grow to before the writer checkpoints it and starts it again (SQLite; ledger.wal).
    wal_limit: int = 1 << 30


@dataclass(eq=False)
class _Call:
    """The payments of one SubmitPayments call: applied in one group and priced together."""

    commands: Sequence[SubmitPayment]
    # Its last command's place in the inbox: the group that takes the first takes every one up to it.
    last: _Pending | None = None
    # How many of them are accepted whatever happens to the rest, worked out before the first is applied
    # (None until then); their batch discount is that number's.
    surely_accepted: int | None = None


@dataclass(slots=True)
class _Pending:
    command: Command
    future: asyncio.Future[Result]
    call: _Call | None = None


@dataclass
class _Group:
    """What one group has read and staged, and how to undo its in-memory changes."""

    write: GroupWrite
    idempotency: dict[tuple[str, str], IdempotencyRecord] = field(default_factory=dict)
    payments: dict[str, Payment] = field(default_factory=dict)
    escrows: dict[str, Escrow] = field(default_factory=dict)
    # (expire_time_us, escrow_id) of escrows this group created: the timer learns them once committed.
    new_deadlines: list[tuple[int, str]] = field(default_factory=list)
    # For the metrics once committed: escrow events by step, and the deadlines of escrows expired.
    escrow_steps: Counter[str] = field(default_factory=Counter)
    expired_deadlines: list[int] = field(default_factory=list)
    balance_undo: dict[AccountKey, Balance | None] = field(default_factory=dict)
    volume_undo: list[tuple[str, str, int, int]] = field(default_factory=list)
    queued: Counter[str] = field(default_factory=Counter)
    pushes: list[Payment] = field(default_factory=list)
    pushed_ids: set[str] = field(default_factory=set)
    removals: list[Payment] = field(default_factory=list)
    pending: list[_Pending] = field(default_factory=list)
    results: list[Result | ApiError] = field(default_factory=list)
    # Set when the group will not commit (it, or a group it was built on, failed); already undone.
    failure: BaseException | None = None
    epoch: int = 0
    seq: int = 0
    created_keys: list[tuple[str, str]] = field(default_factory=list)


class Engine:
    """Applies commands to the ledger in group commits. Start with :meth:`start`, stop with :meth:`stop`."""

    def __init__(
        self,
        database: Database,
        tokens: TokenRegistry,
        config: EngineConfig | None = None,
        base_fee_ratio_bps: Callable[[], int | None] = lambda: None,
        metrics: Metrics | None = None,
        clock: Clock | None = None,
    ) -> None:
        self._database = database
        self.clock = clock or Clock()
        self._ids = IdMint()
        # The deadlines of active escrows, for the expiry timer (filled at start and by each new escrow).
        self.deadlines = Deadlines()
        self.tokens = tokens
        self.config = config or EngineConfig()
        self._base_fee_ratio_bps = base_fee_ratio_bps
        self._metrics = metrics
        self.queues: dict[str, SettlementQueue] = {
            token.symbol: SettlementQueue(self.config.queue_policy) for token in tokens
        }
        self._balances: dict[AccountKey, Balance] = {}
        self._volume = VolumeWindow()
        self._inbox: asyncio.Queue[_Pending | None] = asyncio.Queue()
        self._task: asyncio.Task[None] | None = None
        self._accepting = False
        self._writer = GroupWriter(
            database.url,
            "agentflow-ledger-writer",
            in_process=self.config.writer_process,
            on_lost=self._writer_lost,
            wal_limit=self.config.wal_limit,
        )
        self._reader = database.thread_connection("agentflow-ledger-reader")
        # Small reads on the loop itself (SQLite only): cheaper than the hand-off to the reader's thread.
        self._local_reader = database.local_connection()
        self._checkpointer: ThreadConnection | None = None
        self._checkpoints: asyncio.Task[None] | None = None
        # Groups applied in memory whose commit has not been confirmed yet, oldest first: the next group is
        # applied on top of them while they commit (a pipeline of depth max_inflight).
        self._inflight: list[_Group] = []
        # What in-flight groups made, by the group that last touched it (seq), for the reads of the next.
        self._inflight_records: dict[tuple[str, str], tuple[int, IdempotencyRecord]] = {}
        self._inflight_payments: dict[str, tuple[int, Payment]] = {}
        self._inflight_escrows: dict[str, tuple[int, Escrow]] = {}
        # Committed payments in a batch under way, as committed: the batch's settlement names them all again,
        # and reading hundreds back from the database for it cost more than settling them.
        self._processing: dict[str, Payment] = {}
        self._group_seq = 0
        # Payments accepted by groups still committing: the queue holds them only once they commit.
        self._inflight_queued: Counter[str] = Counter()
        # Commit tasks in the order they were started (commits happen in that order too).
        self._commits: collections.deque[asyncio.Task[None]] = collections.deque()
        # Bumped after a failed commit; the writer refuses groups of older epochs queued behind it.
        self._epoch = 0
        self._commit_listeners: list[Callable[[], None]] = []
        self._lost_listeners: list[Callable[[str], None]] = []

    @property
    def writer_pid(self) -> int | None:
        """The ledger writer process's id while it runs; None when the engine commits on a thread."""
        return self._writer.pid

    def add_commit_listener(self, listener: Callable[[], None]) -> None:
        """Call ``listener`` after each commit that wrote events (the event hub reads them then)."""
        self._commit_listeners.append(listener)

    def add_writer_lost_listener(self, listener: Callable[[str], None]) -> None:
        """Call ``listener`` with the reason if the ledger writer process is lost: from then on every write
        fails with STORAGE_UNAVAILABLE until the server restarts (reads go on)."""
        self._lost_listeners.append(listener)

    def _writer_lost(self, reason: str) -> None:
        for listener in self._lost_listeners:
            listener(reason)

    # -- life cycle ---------------------------------------------------------------------------------

    async def start(self) -> None:
        """Start the writer, rebuild the queues and volumes from the ledger, then start applying commands."""
        # First: a writer process waits here for one left by a crashed server, so what is read below is final.
        await self._writer.start()
        try:
            count = await self._load_state()
        except BaseException:
            await self._writer.close()
            raise
        if self._database.url.get_backend_name() == "sqlite":
            # The writer does not checkpoint the WAL (a checkpoint stalled a commit for tens of milliseconds
            # now and then); a thread of its own does.
            self._checkpointer = self._database.thread_connection("agentflow-ledger-checkpoint")
            self._checkpoints = asyncio.create_task(self._checkpoint_forever(), name="agentflow-checkpoints")
        if self._metrics is not None:
            for symbol, queue in self.queues.items():
                self._metrics.queue_depth.labels(symbol).set_function(queue.__len__)
        self._accepting = True
        self._task = asyncio.create_task(self._run(), name="agentflow-engine")
        log.info("engine started", extra={"event": "engine.started", "queued_payments": count})

    async def _load_state(self) -> int:
        """The queues, the volume window and the escrow deadlines from the ledger; the number queued."""
        now_us = self.clock.now_us()
        async with self._database.connect() as connection:
            queued = await connection.execute(
                sa.select(
                    payments.c.payment_id,
                    payments.c.token,
                    payments.c.priority,
                    payments.c.create_time_us,
                    payments.c.amount,
                )
                .where(payments.c.status == int(PaymentStatus.QUEUED))
                .order_by(payments.c.payment_id)
            )
            count = 0
            for row in queued:
                token = self.tokens.get(row.token)
                self.queues[row.token].push(
                    row.payment_id, Priority(row.priority), row.create_time_us / 1e6, row.amount, token.decimals
                )
                count += 1
            volumes = await connection.execute(
                sa.select(volume_daily).where(volume_daily.c.day > day_of(now_us) - WINDOW_DAYS)
            )
            for row in volumes:
                self._volume.load(row.payer, row.token, row.day, row.amount)
            self.deadlines.add(await connection.run_sync(load_deadlines))
        return count

    async def stop(self) -> None:
        """Refuse new commands, apply every command already handed over, then stop."""
        self._accepting = False
        if self._task is None:
            return
        await self._inbox.put(None)
        await self._task
        self._task = None
        await self._writer.close()
        await self._reader.close()
        if self._local_reader is not None:
            self._local_reader.close()
        if self._checkpoints is not None:
            self._checkpoints.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._checkpoints
            assert self._checkpointer is not None
            await self._checkpointer.run(_checkpoint)
            await self._checkpointer.close()

    async def _checkpoint_forever(self) -> None:
        """Copy the WAL into the database file every so often, beside the writer (never blocking it)."""
        assert self._checkpointer is not None
        while True:
            await asyncio.sleep(self.config.checkpoint_interval)
            try:
                await self._checkpointer.run(_checkpoint)
            except StorageError as error:
                log.warning("checkpoint failed: %s", error)

    # -- commands -----------------------------------------------------------------------------------

    async def execute(self, command: Command) -> Result:
        """Apply one command; returns once it is committed. Refusals raise :class:`ApiError`.

        Cancelled before its group is applied, the command is not applied; after that it stands or falls
        with its group, answered or not."""
        return await self._submit([command])[0]

    async def execute_many(self, commands: Sequence[Command]) -> list[Result | ApiError]:
        """Apply several commands, which join the same group; each succeeds or fails alone."""
        return await self._outcomes(self._submit(commands))

    async def submit_payments(self, commands: Sequence[SubmitPayment]) -> list[Result | ApiError]:
        """Accept the payments of one SubmitPayments call, each succeeding or failing alone.

        They are applied in one group, and each earns the batch discount of the number of them that are
        accepted whatever happens to the others: counted before any is applied, in order, each only if its
        payer's available balance covers it and every earlier one of that payer at the highest fee they
        could be charged, the queue has room for it and every earlier one, and its request id is new. A
        call padded with payments that are refused (unfunded, replayed, beyond the queue) earns nothing
        for them, and one of honest payments earns its full size.
        """
        call = _Call(commands)
        return await self._outcomes(self._submit(commands, call))

    async def _outcomes(self, futures: list[asyncio.Future[Result]]) -> list[Result | ApiError]:
        results: list[Result | ApiError] = []
        # Awaited one by one, in order: most are done by the time the first is (one group answers them all),
        # and asyncio.wait would build a set and a callback for each.
        for index, future in enumerate(futures):
            try:
                results.append(await future)
            except ApiError as error:
                results.append(error)
            except BaseException:
                # The group failed as a whole: the caller gets this error, and the others are consumed.
                for rest in futures[index + 1 :]:
                    rest.add_done_callback(_consume)
                raise
        return results

    def _submit(self, commands: Sequence[Command], call: _Call | None = None) -> list[asyncio.Future[Result]]:
        if not self._accepting:
            raise ApiError(Reason.SHUTTING_DOWN, "the server is shutting down; retry against another replica")
        loop = asyncio.get_running_loop()
        futures: list[asyncio.Future[Result]] = []
        for command in commands:
            future: asyncio.Future[Result] = loop.create_future()
            item = _Pending(command, future, call)
            self._inbox.put_nowait(item)
            futures.append(future)
        if call is not None and commands:
            call.last = item
        return futures

    # -- reads of engine state ----------------------------------------------------------------------

    def quote(self, payer: str, token: Token, amount: int, batch_size: int = 1, queued: int = 0) -> Fee:
        """The fee the engine would fix now for this payment (``queued``: payments of this token staged
        ahead of it in the current group)."""
        schedule = self.config.fee_schedule
        depth = self._queue_depth(token.symbol, queued)
        today = day_of(self.clock.now_us())
        return compute_fee(
            schedule,
            amount,
            min_fee=token.min_fee,
            congestion_bps=congestion_adjustment_bps(
                schedule,
                queue_depth=depth,
                max_queue_size=self.config.max_queue_size,
                base_fee_ratio_bps=self._base_fee_ratio_bps(),
            ),
            volume_discount_bps=volume_discount_bps(
                schedule, token.volume_tiers, self._volume.trailing(payer, token.symbol, today)
            ),
            batch_discount_bps=batch_discount_bps(schedule, batch_size),
        )

    # -- the group loop -----------------------------------------------------------------------------

    async def _run(self) -> None:
        loop = asyncio.get_running_loop()
        inbox = self._inbox
        stopping = False
        while not stopping:
            first = await inbox.get()
            if first is None:
                break
            # Wait for room in the pipeline before gathering the rest: commands keep arriving meanwhile,
            # so a busy engine commits fewer, larger groups instead of queueing many small ones. A group
            # too small to be worth overlapping waits for every commit.
            if inbox.qsize() + 1 < self.config.pipeline_min_commands:
                await self._wait_for_commits(0)
            else:
                await self._wait_for_commits(self.config.max_inflight - 1)
            group = [first]
            deadline = loop.time() + self.config.max_group_wait
            while len(group) < self.config.max_group_size:
                try:
                    item = inbox.get_nowait()
                except asyncio.QueueEmpty:
                    remaining = deadline - loop.time()
                    if remaining <= 0:
                        break
                    try:
                        item = await asyncio.wait_for(inbox.get(), remaining)
                    except TimeoutError:
                        break
                if item is None:
                    stopping = True
                    break
                group.append(item)
            # A call priced together goes in one group: the rest of it was queued with its first command.
            call = group[-1].call
            while call is not None and group[-1] is not call.last:
                rest = inbox.get_nowait()
                assert rest is not None
                assert rest.call is call
                group.append(rest)
            try:
                await self._apply(group)
            except Exception:
                # _apply answers every caller itself; anything reaching here is a bug, not a reason to stop.
                log.exception("engine group failed")
        await self._wait_for_commits(0)

    async def _wait_for_commits(self, most: int) -> None:
        """Wait until at most ``most`` commits are under way (they finish in the order they started)."""
        commits = self._commits
        while commits and commits[0].done():
            commits.popleft()
        while len(commits) > most:
            await commits.popleft()  # _commit answers its callers itself and raises no Exception

    async def _apply(self, pending: list[_Pending]) -> None:
        """Apply a group in memory and start its commit; the callers are answered when it commits."""
        pending = self._still_awaited(pending)
        if not pending:
            return
        self._group_seq += 1
        group = _Group(GroupWrite(self.clock.now_us()), pending=pending, epoch=self._epoch, seq=self._group_seq)
        try:
            await self._preload(pending, group)
        except BaseException as error:
            for item in pending:
                if not item.future.done():
                    item.future.set_exception(error)
            if not isinstance(error, Exception):
                raise
            log.error("group of %d commands not read: %s", len(pending), error)
            return
        try:
            for item in pending:
                call = item.call
                if call is not None and call.surely_accepted is None:
                    call.surely_accepted = self._surely_accepted(call.commands, group)
                try:
                    group.results.append(self._apply_one(item.command, group, call))
                except ApiError as error:
                    group.results.append(error)
            group.write.seal()
        except Exception as error:
            # A bug, not a refusal: nothing of this group may stand.
            self._undo(group)
            group.failure = error
            self._answer(group)
            raise
        self._inflight.append(group)
        self._inflight_queued.update(group.queued)
        for key in group.created_keys:
            self._inflight_records[key] = (group.seq, group.idempotency[key])
        for payment in (*group.write.new_payments, *group.write.changed_payments.values()):
            self._inflight_payments[payment.payment_id] = (group.seq, payment)
        for escrow in group.write.escrows.values():
            self._inflight_escrows[escrow.escrow_id] = (group.seq, escrow)
        task = asyncio.create_task(self._commit(group))
        self._commits.append(task)

    def _still_awaited(self, pending: list[_Pending]) -> list[_Pending]:
        """The commands whose callers still wait for them. One whose caller went away before its group was
        applied (its deadline passed, the client cancelled, the server is stopping) is not applied, and with
        one of a SubmitPayments call the whole call: nobody is there to hear the answer, and a client that
        gave up on a payment has it made only if it asks again (with the same request id, once, as after any
        answer lost). Whatever was applied before its caller left stands or falls with its group."""
        abandoned = {id(item.call or item) for item in pending if item.future.cancelled()}
        if not abandoned:
            return pending
        kept = [item for item in pending if id(item.call or item) not in abandoned]
        if self._metrics is not None:
            self._metrics.abandoned_commands.inc(len(pending) - len(kept))
        return kept

    async def _commit(self, group: _Group) -> None:
        started = time.perf_counter()
        try:
            await self._writer.commit(group.write, group.epoch)
        except BaseException as error:
            if self._metrics is not None:
                self._metrics.group_failures.inc()
            if group.failure is None:
                self._fail_from(group, error)
            self._answer(group)
            if not isinstance(error, Exception):
                raise
            return
        if self._metrics is not None:
            self._metrics.group_commit_seconds.observe(time.perf_counter() - started)
            self._metrics.group_commands.observe(len(group.pending))
            self._record_activity(group)
        # Commits happen in order, so this group is the oldest in flight.
        assert self._inflight[0] is group
        self._inflight.pop(0)
        self._forget_inflight(group)
        for changed in group.write.changed_payments.values():
            if changed.status is PaymentStatus.PROCESSING:
                self._processing[changed.payment_id] = changed
            else:
                self._processing.pop(changed.payment_id, None)
        for payment in group.removals:
            self.queues[payment.token].remove(payment.payment_id)
        for payment in group.pushes:
            if payment.status is PaymentStatus.QUEUED:
                token = self.tokens.get(payment.token)
                self.queues[payment.token].push(
                    payment.payment_id, payment.priority, payment.create_time_us / 1e6, payment.amount, token.decimals
                )
        if group.new_deadlines:
            self.deadlines.add(group.new_deadlines)
        if group.write.events:
            for listener in self._commit_listeners:
                listener()
        self._answer(group)

    def _record_activity(self, group: _Group) -> None:
        """Count what a committed group did, for Prometheus and GetMetrics' windows."""
        assert self._metrics is not None
        write = group.write
        accepted = [(p.token, p.amount) for p in write.new_payments if p.kind is PaymentKind.PAYMENT]
        completed = failed = 0
        for payment in write.changed_payments.values():
            if payment.kind is PaymentKind.PAYMENT:
                if payment.status is PaymentStatus.COMPLETED:
                    completed += 1
                elif payment.status is PaymentStatus.FAILED:
                    failed += 1
        self._metrics.activity.settled(accepted, completed, failed)
        for step, count in group.escrow_steps.items():
            self._metrics.escrow_steps.labels(step).inc(count)
        if group.expired_deadlines:
            now_us = self.clock.now_us()
            for deadline in group.expired_deadlines:
                self._metrics.escrow_expiry_lateness.observe(max(0, now_us - deadline) / 1e6)

    def _fail_from(self, group: _Group, error: BaseException) -> None:
        """A group failed to commit: undo it and every group applied on top of it, newest first."""
        index = self._inflight.index(group)
        failed = self._inflight[index:]
        del self._inflight[index:]
        for later in reversed(failed):
            self._undo(later)
            self._forget_inflight(later)
            later.failure = error
        self._epoch += 1
        log.error("%d groups not committed: %s", len(failed), error)

    def _forget_inflight(self, group: _Group) -> None:
        self._inflight_queued.subtract(group.queued)
        for key in group.created_keys:
            if self._inflight_records.get(key, (0,))[0] == group.seq:
                del self._inflight_records[key]
        for payment in (*group.write.new_payments, *group.write.changed_payments.values()):
            if self._inflight_payments.get(payment.payment_id, (0,))[0] == group.seq:
                del self._inflight_payments[payment.payment_id]
        for escrow_id in group.write.escrows:
            if self._inflight_escrows.get(escrow_id, (0,))[0] == group.seq:
                del self._inflight_escrows[escrow_id]

    def _answer(self, group: _Group) -> None:
        for index, item in enumerate(group.pending):
            if item.future.done():  # the caller went away once it was applied: it stands or falls anyway
                continue
            if group.failure is not None:
                item.future.set_exception(group.failure)
                continue
            result = group.results[index]
            if isinstance(result, ApiError):
                item.future.set_exception(result)
            else:
                item.future.set_result(result)

    async def _preload(self, pending: list[_Pending], group: _Group) -> None:
        """Read what the group's commands need and the engine does not hold: request ids already used,
        the payments they name, and balances not cached yet. One hand-off to the reader's thread."""
        idempotency_keys: list[tuple[str, str]] = []
        payment_ids: set[str] = set()
        escrow_ids: set[str] = set()
        account_keys: set[AccountKey] = set()
        queued_of: set[AccountKey] = set()
        for item in pending:
            command = item.command
            if isinstance(command, SubmitPayment):
                account_keys.add((command.payer, command.token.symbol))
                if command.request_id:
                    idempotency_keys.append((_payment_scope(command.payer), command.request_id))
            elif isinstance(command, Withdraw):
                account_keys.add((command.address, command.token.symbol))
                if command.request_id:
                    idempotency_keys.append((_withdrawal_scope(command.address), command.request_id))
            elif isinstance(command, RecordExit):
                idempotency_keys.append(_exit_key(command))
                account_keys.add((command.address, command.token.symbol))
                queued_of.add((command.address, command.token.symbol))
            elif isinstance(command, RecordFeePayout):
                idempotency_keys.append(_fee_payout_key(command))
                account_keys.add((command.recipient or FEES, command.token.symbol))
            elif isinstance(command, CreditDeposit):
                idempotency_keys.append(_deposit_key(command))
                account_keys.add((command.beneficiary, command.token.symbol))
            elif isinstance(command, OpenBatch):
                payment_ids.update(command.payment_ids)
            elif isinstance(command, (SettleBatch, FailBatch)):
                payment_ids.update(command.batch.payment_ids)
            elif isinstance(command, (CancelPayment, CompletePayment, FailPayment)):
                payment_ids.add(command.payment_id)
            elif isinstance(command, CreateEscrow):
                account_keys.add((command.payer, command.token.symbol))
                if command.request_id:
                    idempotency_keys.append((_escrow_scope(command.payer), command.request_id))
            elif isinstance(command, ExpireEscrow):
                escrow_ids.add(command.escrow_id)
            elif isinstance(command, (ReleaseEscrow, RefundEscrow, DisputeEscrow, ResolveDispute, AttestTaskResult)):
                escrow_ids.add(command.escrow_id)
                if command.request_id:
                    idempotency_keys.append((_escrow_step_scope(command.escrow_id), command.request_id))
        missing = {key for key in account_keys if key not in self._balances}
        # What groups still committing made is not in the database yet: take it from them. (Taken before the
        # read: whatever leaves this overlay meanwhile has committed, and the read sees it.)
        records = {k: self._inflight_records[k][1] for k in idempotency_keys if k in self._inflight_records}
        inflight = {payment_id: payment for payment_id, (_, payment) in self._inflight_payments.items()}
        inflight_escrows = {escrow_id: escrow for escrow_id, (_, escrow) in self._inflight_escrows.items()}
        # Replays of CreateEscrow name their escrow only in the record.
        escrow_ids.update(i for i in (_escrow_id(r.resource) for r in records.values()) if i is not None)
        escrows = {i: inflight_escrows[i] for i in escrow_ids if i in inflight_escrows}
        to_read = [k for k in idempotency_keys if k not in records]
        payments = {i: inflight[i] for i in payment_ids if i in inflight}
        # A copy: this group's changes must not reach the committed state unless it commits.
        payments.update(
            (i, dataclasses.replace(self._processing[i]))
            for i in payment_ids
            if i not in payments and i in self._processing
        )
        payments.update(
            (pid, inflight[pid])
            for pid in (_settled_item_id(r.resource) for r in records.values())
            if pid is not None and pid in inflight
        )
        if to_read or payment_ids - payments.keys() or missing or queued_of or escrow_ids - escrows.keys():
            read = functools.partial(
                _load,
                to_read,
                payment_ids - payments.keys(),
                missing,
                set(payments),
                queued_of=queued_of,
                escrow_ids=escrow_ids - escrows.keys(),
                known_escrows=set(escrows),
            )
            # (An exit reads all its account's queued payments, however many: on the thread.)
            rows = len(to_read) + len(payment_ids) + len(missing) + len(escrow_ids)
            loaded = None
            if self._local_reader is not None and not queued_of and rows <= _LOCAL_READ_MOST:
                with contextlib.suppress(WouldWait):  # then on the thread, which may wait
                    loaded = self._local_reader.run(read)
            if loaded is None:
                loaded = await self._reader.run(read)
            loaded_records, loaded_payments, balances, loaded_escrows = loaded
            records.update(loaded_records)
            # A payment an in-flight group changed is newer in memory than in the database.
            payments.update({pid: inflight.get(pid, payment) for pid, payment in loaded_payments.items()})
            escrows.update({eid: inflight_escrows.get(eid, escrow) for eid, escrow in loaded_escrows.items()})
            for key, balance in balances.items():
                self._balances.setdefault(key, balance)
        group.idempotency, group.payments, group.escrows = records, payments, escrows

    def processing(self, payment_ids: Sequence[str]) -> list[Payment] | None:
        """Copies of these committed PROCESSING payments, in order, if the engine holds them all."""
        found = [self._processing.get(payment_id) for payment_id in payment_ids]
        if any(payment is None for payment in found):
            return None
        return [dataclasses.replace(payment) for payment in found if payment is not None]

    def _undo(self, group: _Group) -> None:
        for key, before in group.balance_undo.items():
            if before is None:
                self._balances.pop(key, None)
            else:
                self._balances[key] = before
        for payer, token, day, amount in reversed(group.volume_undo):
            self._volume.add(payer, token, day, -amount)

    def _balance(self, group: _Group, address: str, token: str) -> Balance:
        """The account's balance, to change: saved for undo and written with the group."""
        key = (address, token)
        balance = self._balances.get(key)
        if key not in group.balance_undo:
            group.balance_undo[key] = dataclasses.replace(balance) if balance is not None else None
        if balance is None:
            balance = self._balances[key] = Balance()
        group.write.accounts[key] = balance
        return balance

    def _add_volume(self, group: _Group, payer: str, token: str, day: int, amount: int) -> None:
        value = self._volume.add(payer, token, day, amount)
        group.volume_undo.append((payer, token, day, amount))
        group.write.volumes[(payer, token, day)] = value

    def _apply_one(self, command: Command, group: _Group, call: _Call | None = None) -> Result:
        if isinstance(command, SubmitPayment):
            return self._submit_payment(command, group, max(1, call.surely_accepted or 0) if call is not None else 1)
        if isinstance(command, CancelPayment):
            return self._cancel_payment(command, group)
        if isinstance(command, Withdraw):
            return self._withdraw(command, group)
        if isinstance(command, CreditDeposit):
            return self._credit_deposit(command, group)
        if isinstance(command, CompletePayment):
            return self._complete_payment(command, group)
        if isinstance(command, FailPayment):
            return self._fail_payment(command, group)
        if isinstance(command, RecordFeePayout):
            self._record_fee_payout(command, group)
            return None
        if isinstance(command, RecordExit):
            self._record_exit(command, group)
            return None
        if isinstance(command, StoreRecords):
            group.write.records.append(command.write)
            for event in command.events:
                group.write.event(event.type, event.resource, event.addresses, event.task_id, event.payload)
            return None
        if isinstance(command, SetChainState):
            group.write.chain_state.update(command.values)
            return None
        if isinstance(command, OpenBatch):
            return self._open_batch(command, group)
        if isinstance(command, RecordBatch):
            command.batch.update_time_us = group.write.time_us
            group.write.batch(command.batch)
            return command.batch
        if isinstance(command, SettleBatch):
            return self._settle_batch(command, group)
        if isinstance(command, FailBatch):
            return self._fail_batch(command, group)
        if isinstance(command, CreateEscrow):
            return self._create_escrow(command, group)
        if isinstance(command, ExpireEscrow):
            return self._expire_escrow(command, group)
        return self._escrow_step(command, group)

    # -- the commands -------------------------------------------------------------------------------

    def _surely_accepted(self, commands: Sequence[SubmitPayment], group: _Group) -> int:
        """How many of a call's payments will be accepted whatever becomes of the others (see
        :meth:`submit_payments`), worked out before any is applied.

        Each payment that might be accepted is taken to cost its payer its amount and the highest fee it could
        be charged, and a place in the queue, whether it is counted or not; so each one counted is accepted
        when it is applied. A payment that cannot be (its amount and the token's minimum fee above what its
        payer has, or its request id already used before the call) takes nothing.
        """
        schedule = self.config.fee_schedule
        most: Counter[AccountKey] = Counter()
        places: Counter[str] = Counter()
        seen: set[tuple[str, str]] = set()
        counted = 0
        for command in commands:
            symbol = command.token.symbol
            account = (command.payer, symbol)
            key = (_payment_scope(command.payer), command.request_id) if command.request_id else None
            if key is not None and key in group.idempotency:
                continue  # the original's answer, or a conflict: no new payment
            available = self._available(account)
            if command.amount + command.token.min_fee > available:
                continue  # refused at any fee: the call's payments only ever lower the payer's balance
            most[account] += command.amount + highest_fee(schedule, command.amount, command.token.min_fee)
            places[symbol] += 1
            if key is not None:
                if key in seen:
                    continue  # a second use within the call: a replay, or new if the first was refused
                seen.add(key)
            depth = self._queue_depth(symbol, group.queued[symbol])
            if most[account] <= available and depth + places[symbol] <= self.config.max_queue_size:
                counted += 1
        return counted

    def _submit_payment(self, command: SubmitPayment, group: _Group, batch_size: int) -> Payment:
        write = group.write
        now_us = write.time_us
        request_hash = ""
        if command.request_id:
            key = (_payment_scope(command.payer), command.request_id)
            request_hash = command.request_hash()
            original = _replayed(group, key, request_hash, "payment")
            if original is not None:
                return original
        token = command.token
        symbol = token.symbol
        queued = group.queued[symbol]
        self._require_queue_room(group, symbol, "payments")
        fee = self.quote(command.payer, token, command.amount, batch_size, queued)
        debit = command.amount + fee.total
        self._require_available(command.payer, symbol, command.amount, fee.total, "payment")
        balance = self._balance(group, command.payer, symbol)
        balance.available -= debit
        balance.reserved += debit
        payment = Payment(
            payment_id=self._ids.new(now_us),
            payer=command.payer,
            payee=command.payee,
            token=symbol,
            amount=command.amount,
            fee=fee,
            priority=command.priority,
            status=PaymentStatus.QUEUED,
            task_id=command.task_id,
            memo=command.memo,
            metadata=dict(command.metadata),
            request_id=command.request_id,
            create_time_us=now_us,
            update_time_us=now_us,
        )
        write.transfer(
            TransferKind.PAYMENT_RESERVE,
            symbol,
            (command.payer, Bucket.AVAILABLE),
            (command.payer, Bucket.RESERVED),
            debit,
            payment.name,
        )
        self._queue_payment(group, payment)
        if command.request_id:
            key = (_payment_scope(command.payer), command.request_id)
            _remember(group, key, request_hash, payment.name)
            group.payments[payment.payment_id] = payment
        return payment

    def _queue_payment(self, group: _Group, payment: Payment) -> None:
        """Stage an accepted payment, its money already reserved: its row, its created and queued events,
        its payer's volume, and its place in the queue once the group commits."""
        write = group.write
        write.new_payments.append(payment)
        payload = payment_bytes(payment)
        addresses = (payment.payer, payment.payee)
        write.event("payment.created", payment.name, addresses, payment.task_id, payload)
        write.event("payment.queued", payment.name, addresses, payment.task_id, payload)
        self._add_volume(group, payment.payer, payment.token, day_of(payment.create_time_us), payment.amount)
        group.queued[payment.token] += 1
        group.pushes.append(payment)
        group.pushed_ids.add(payment.payment_id)

    def _withdraw(self, command: Withdraw, group: _Group) -> Payment:
        write = group.write
        now_us = write.time_us
        symbol = command.token.symbol
        key = (_withdrawal_scope(command.address), command.request_id)
        request_hash = command.request_hash() if command.request_id else ""
        if command.request_id:
            original = _replayed(group, key, request_hash, "withdrawal")
            if original is not None:
                return original
        self._require_queue_room(group, symbol, "items")
        self._require_available(command.address, symbol, command.amount, 0, "withdrawal")
        balance = self._balance(group, command.address, symbol)
        balance.available -= command.amount
        balance.reserved += command.amount
        withdrawal = Payment(
            payment_id=self._ids.new(now_us),
            payer=command.address,
            payee=command.destination,
            token=symbol,
            amount=command.amount,
            # The operator pays the gas; a withdrawal carries no service fee.
            fee=Fee(0, 0, 0, 0, 0, 0, 0, 0, 0, 0),
            priority=Priority.NORMAL,
            status=PaymentStatus.QUEUED,
            task_id="",
            memo="",
            metadata={},
            request_id=command.request_id,
            create_time_us=now_us,
            update_time_us=now_us,
            kind=PaymentKind.WITHDRAWAL,
        )
        write.new_payments.append(withdrawal)
        write.transfer(
            TransferKind.WITHDRAWAL,
            symbol,
            (command.address, Bucket.AVAILABLE),
            (command.address, Bucket.RESERVED),
            command.amount,
            withdrawal.name,
        )
        write.event(
            "withdrawal.queued",
            withdrawal.name,
            (command.address, command.destination),
            "",
            withdrawal_message(withdrawal).SerializeToString(),
        )
        if command.request_id:
            _remember(group, key, request_hash, withdrawal.name)
            group.payments[withdrawal.payment_id] = withdrawal
        group.queued[symbol] += 1
        group.pushes.append(withdrawal)
        group.pushed_ids.add(withdrawal.payment_id)
        return withdrawal

    def _available(self, account: AccountKey) -> int:
        """The account's available balance as the engine holds it now (0 for one never credited)."""
        balance = self._balances.get(account)
        return balance.available if balance is not None else 0

    def _queue_depth(self, symbol: str, staged: int) -> int:
        """The token's queue: committed, in groups still committing, and ``staged`` in the current group."""
        return len(self.queues[symbol]) + self._inflight_queued[symbol] + staged

    def _require_available(self, address: str, symbol: str, amount: int, fee: int, what: str) -> None:
        """INSUFFICIENT_BALANCE unless ``address`` has ``amount + fee`` of the token available."""
        available = self._available((address, symbol))
        if available < amount + fee:
            detail = f" (amount {amount} + fee {fee})" if fee else ""
            raise ApiError(
                Reason.INSUFFICIENT_BALANCE,
                f"{address} has {available} {symbol} base units available; the {what} needs {amount + fee}{detail}",
                metadata={"available": str(available), "required": str(amount + fee), "fee": str(fee)},
            )

    def _require_queue_room(self, group: _Group, symbol: str, what: str) -> None:
        """QUEUE_FULL unless the token's queue (committed, in flight and this group) has room for one more."""
        depth = self._queue_depth(symbol, group.queued[symbol])
        if depth >= self.config.max_queue_size:
            raise ApiError(
                Reason.QUEUE_FULL,
                f"the {symbol} settlement queue holds its maximum of {self.config.max_queue_size} {what}",
                metadata={"token": symbol, "max_queue_size": str(self.config.max_queue_size)},
                retry_delay=self.config.queue_full_retry,
            )

    def _find_payment(self, group: _Group, payment_id: str) -> Payment:
        payment = group.payments.get(payment_id)
        if payment is None:
            raise payment_not_found(f"payments/{payment_id}")
        return payment

    def _in_queue(self, group: _Group, payment: Payment) -> bool:
        return payment.payment_id in self.queues[payment.token] or payment.payment_id in group.pushed_ids

    def _cancel_payment(self, command: CancelPayment, group: _Group) -> Payment:
        payment = group.payments.get(command.payment_id)
        if (
            payment is None
            or payment.kind is not PaymentKind.PAYMENT
            or (command.sees is not None and payment.payer not in command.sees and payment.payee not in command.sees)
        ):
            raise payment_not_found(f"payments/{command.payment_id}")
        if command.acts_for is not None and payment.payer not in command.acts_for:
            raise ApiError(
                Reason.ADDRESS_NOT_ALLOWED,
                f"only the payer {payment.payer} may cancel {payment.name}",
                metadata={"field": "name", "address": payment.payer},
            )
        if payment.status is not PaymentStatus.QUEUED or not self._in_queue(group, payment):
            raise _not_open(payment, "only a queued payment can be cancelled")
        if payment.escrow_id is not None:
            raise _not_open(payment, f"it releases escrows/{payment.escrow_id}, whose money is the payee's now")
        self._release(group, payment, PaymentStatus.CANCELLED, command.reason, "cancelled")
        return payment

    def _release(self, group: _Group, payment: Payment, status: PaymentStatus, reason: str, event: str) -> None:
        """Give a payment's reservation back to its payer and end it with ``status``."""
        write = group.write
        debit = payment.debit
        balance = self._balance(group, payment.payer, payment.token)
        balance.reserved -= debit
        balance.available += debit
        write.transfer(
            TransferKind.PAYMENT_RELEASE,
            payment.token,
            (payment.payer, Bucket.RESERVED),
            (payment.payer, Bucket.AVAILABLE),
            debit,
            payment.name,
        )
        # Money that never moved is not volume (withdrawals never were).
        day = day_of(payment.create_time_us)
        if payment.kind is PaymentKind.PAYMENT and day > day_of(write.time_us) - WINDOW_DAYS:
            self._add_volume(group, payment.payer, payment.token, day, -payment.amount)
        self._finish(group, payment, status, reason, event)

    def _finish(self, group: _Group, payment: Payment, status: PaymentStatus, reason: str, event: str) -> None:
        """End a payment (or withdrawal) with ``status`` and record its ``event`` ("completed"...)."""
        write = group.write
        payment.status = status
        payment.update_time_us = write.time_us
        payment.failure_reason = reason
        write.changed_payments[payment.payment_id] = payment
        write.event(
            f"{payment.event_prefix}.{event}",
            payment.name,
            (payment.payer, payment.payee),
            payment.task_id,
            _payload(payment),
        )
        if payment.payment_id in self.queues[payment.token]:
            group.removals.append(payment)
        if payment.payment_id in group.pushed_ids:
            group.queued[payment.token] -= 1

    def _complete_payment(self, command: CompletePayment, group: _Group) -> Payment:
        payment = self._find_payment(group, command.payment_id)
        if payment.status not in (PaymentStatus.QUEUED, PaymentStatus.PROCESSING):
            raise _not_open(payment, "it is settled or ended already")
        settlement = Settlement(
            batch_id=command.batch_id,
            transaction_hash=command.transaction_hash,
            block_number=command.block_number,
            gas_used=command.gas_used,
            gas_cost_wei=command.gas_cost_wei,
            complete_time_us=group.write.time_us,
        )
        self._settle(group, payment, settlement, payee_credited=False)
        return payment

    def _settle(self, group: _Group, payment: Payment, settlement: Settlement, payee_credited: bool) -> None:
        """The payment reached the chain: its reservation leaves the payer. The amount left the contract to
        the payee (or stayed in it, credited to the payee, when the payee could not receive); the fee
        stays in the contract as accrued fees until paid out."""
        write = group.write
        balance = self._balance(group, payment.payer, payment.token)
        balance.reserved -= payment.debit
        reserved = (payment.payer, Bucket.RESERVED)
        if payee_credited:
            self._balance(group, payment.payee, payment.token).available += payment.amount
            destination = (payment.payee, Bucket.AVAILABLE)
        else:
            destination = (CHAIN, Bucket.AVAILABLE)
        kind = TransferKind.WITHDRAWAL if payment.kind is PaymentKind.WITHDRAWAL else TransferKind.PAYMENT_SETTLE
        write.transfer(kind, payment.token, reserved, destination, payment.amount, payment.name)
        if payment.fee.total:
            self._balance(group, FEES, payment.token).available += payment.fee.total
            write.transfer(
                TransferKind.FEE, payment.token, reserved, (FEES, Bucket.AVAILABLE), payment.fee.total, payment.name
            )
        payment.batch_id = settlement.batch_id
        payment.settlement = settlement
        self._finish(group, payment, PaymentStatus.COMPLETED, "", "completed")

    def _record_exit(self, command: RecordExit, group: _Group) -> None:
        key = _exit_key(command)
        if key in group.idempotency:
            return  # this log was recorded already
        write = group.write
        symbol = command.token.symbol
        reference = f"exits/{command.transaction_hash}-{command.log_index}"
        # What is still queued would be skipped by the contract: it fails now, its reservation released.
        inflight = [payment for _, payment in self._inflight_payments.values()]
        for payment in (*group.payments.values(), *inflight):
            if (
                payment.payer == command.address
                and payment.token == symbol
                and payment.status is PaymentStatus.QUEUED
                and self._in_queue(group, payment)
            ):
                self._release(
                    group, payment, PaymentStatus.FAILED, "the payer left the settlement contract (exit)", "failed"
                )
        # The exit took everything the contract held for the address. Items already in a batch are still
        # reserved: if the contract skips them, their release brings the balance back to zero.
        self._balance(group, command.address, symbol).available -= command.amount
        write.transfer(
            TransferKind.WITHDRAWAL,
            symbol,
            (command.address, Bucket.AVAILABLE),
            (CHAIN, Bucket.AVAILABLE),
            command.amount,
            reference,
        )
        _remember(group, key, "", reference)

    def _record_fee_payout(self, command: RecordFeePayout, group: _Group) -> None:
        key = _fee_payout_key(command)
        if key in group.idempotency:
            return  # this log was recorded already
        write = group.write
        symbol = command.token.symbol
        reference = f"fee-payouts/{command.transaction_hash}-{command.log_index}"
        if command.recipient is None:
            # Paid out of the contract: the settled fees leave the ledger.
            self._balance(group, FEES, symbol).available -= command.amount
            debit, credit = (FEES, Bucket.AVAILABLE), (CHAIN, Bucket.AVAILABLE)
        else:
            # A recipient that could not receive keeps its part in the contract, as its own balance.
            self._balance(group, command.recipient, symbol).available += command.amount
            debit, credit = (CHAIN, Bucket.AVAILABLE), (command.recipient, Bucket.AVAILABLE)
        write.transfer(TransferKind.FEE, symbol, debit, credit, command.amount, reference)
        _remember(group, key, "", reference)

    # -- escrows --------------------------------------------------------------------------------------

    def _create_escrow(self, command: CreateEscrow, group: _Group) -> Escrow:
        write = group.write
        now_us = write.time_us
        key = (_escrow_scope(command.payer), command.request_id)
        request_hash = command.request_hash() if command.request_id else ""
        if command.request_id:
            record = group.idempotency.get(key)
            if record is not None:
                _require_same_request(record, key, request_hash, "escrow")
                escrow_id = _escrow_id(record.resource)
                assert escrow_id is not None, record.resource
                return group.escrows[escrow_id].snapshot()
        expire_time_us = command.expire_time_us
        if expire_time_us is None:
            expire_time_us = now_us + round(self.config.escrow_default_expiry.total_seconds() * 1_000_000)
        elif expire_time_us <= now_us:
            raise ApiError(
                Reason.INVALID_FIELD,
                "expire_time: must be in the future",
                field_violations=[FieldViolation("expire_time", "must be in the future")],
            )
        token = command.token
        symbol = token.symbol
        fee = self.quote(command.payer, token, command.amount, 1, group.queued[symbol])
        debit = command.amount + fee.total
        self._require_available(command.payer, symbol, command.amount, fee.total, "escrow")
        balance = self._balance(group, command.payer, symbol)
        balance.available -= debit
        balance.escrowed += debit
        escrow = Escrow(
            escrow_id=self._ids.new(now_us),
            task_id=command.task_id,
            payer=command.payer,
            payee=command.payee,
            token=symbol,
            amount=command.amount,
            fee=fee,
            release_condition=command.release_condition,
            arbiter=command.arbiter,
            verifier=command.verifier,
            expiry_action=command.expiry_action,
            expire_time_us=expire_time_us,
            priority=command.priority,
            metadata=dict(command.metadata),
            request_id=command.request_id,
            create_time_us=now_us,
            update_time_us=now_us,
        )
        write.transfer(
            TransferKind.ESCROW_HOLD,
            symbol,
            (command.payer, Bucket.AVAILABLE),
            (command.payer, Bucket.ESCROWED),
            debit,
            escrow.name,
        )
        group.escrows[escrow.escrow_id] = escrow
        self._escrow_event(group, escrow, "created")
        group.new_deadlines.append((escrow.expire_time_us, escrow.escrow_id))
        if command.request_id:
            _remember(group, key, request_hash, escrow.name)
        return escrow.snapshot()

    def _escrow_step(self, command: EscrowStep, group: _Group) -> EscrowOutcome:
        """A caller's step on an escrow: found, allowed, replayed or applied, in that order."""
        escrow = group.escrows.get(command.escrow_id)
        name = f"escrows/{command.escrow_id}"
        if escrow is None or not command.actor.sees(escrow.parties):
            raise rules.escrow_not_found(name)
        now_us = group.write.time_us
        if isinstance(command, ReleaseEscrow):
            rules.check_release(escrow, command.actor)
        elif isinstance(command, RefundEscrow):
            rules.check_refund(escrow, command.actor)
        elif isinstance(command, ResolveDispute):
            rules.check_resolve(escrow, command.actor)
        key = (_escrow_step_scope(escrow.escrow_id), command.request_id)
        request_hash = command.request_hash() if command.request_id else ""
        if command.request_id:
            record = group.idempotency.get(key)
            if record is not None:
                _require_same_request(record, key, request_hash, "step on this escrow")
                payment_id = _settled_item_id(record.resource)
                return EscrowOutcome(escrow.snapshot(), group.payments[payment_id] if payment_id else None)
        payment: Payment | None = None
        if isinstance(command, ReleaseEscrow):
            rules.require_active(escrow, now_us, "released")
            amount = escrow.held if command.amount is None else command.amount
            if amount > escrow.held:
                raise ApiError(
                    Reason.INVALID_FIELD,
                    f"amount: {amount} is more than the {escrow.held} base units {escrow.name} holds",
                    field_violations=[FieldViolation("amount", f"must be at most what is held ({escrow.held})")],
                    metadata={"held_amount": str(escrow.held)},
                )
            self._require_queue_room(group, escrow.token, "payments")
            payment = self._release_part(group, escrow, amount)
            if escrow.held == 0:
                escrow.status = EscrowStatus.RELEASED
            self._escrow_event(group, escrow, "released")
        elif isinstance(command, AttestTaskResult):
            rules.require_active(escrow, now_us, "released")
            rules.check_attestation(escrow, command.signer)
            self._require_queue_room(group, escrow.token, "payments")
            escrow.result_hash = command.result_hash
            payment = self._release_part(group, escrow, escrow.held)
            escrow.status = EscrowStatus.RELEASED
            self._escrow_event(group, escrow, "released")
        elif isinstance(command, RefundEscrow):
            rules.require_active(escrow, now_us, "refunded")
            escrow.refund_reason = command.reason
            self._refund_rest(group, escrow)
            escrow.status = EscrowStatus.REFUNDED
            self._escrow_event(group, escrow, "refunded")
        elif isinstance(command, DisputeEscrow):
            raised_by = rules.dispute_party(escrow, command.actor, command.raised_by)
            rules.require_active(escrow, now_us, "disputed")
            escrow.dispute = Dispute(raised_by=raised_by, reason=command.reason, create_time_us=now_us)
            escrow.status = EscrowStatus.DISPUTED
            self._escrow_event(group, escrow, "disputed")
        else:
            payment = self._resolve_dispute(command, group, escrow)
        if command.request_id:
            _remember(group, key, request_hash, payment.name if payment is not None else escrow.name)
        return EscrowOutcome(escrow.snapshot(), payment)

    def _resolve_dispute(self, command: ResolveDispute, group: _Group, escrow: Escrow) -> Payment | None:
        if escrow.status is not EscrowStatus.DISPUTED or escrow.dispute is None:
            raise rules.not_active(escrow, "only a disputed escrow can be resolved")
        if command.payee_amount + command.payer_amount != escrow.held:
            description = f"payee_amount + payer_amount must equal what is held ({escrow.held})"
            raise ApiError(
                Reason.INVALID_FIELD,
                f"payee_amount, payer_amount: {description}",
                field_violations=[
                    FieldViolation("payee_amount", description),
                    FieldViolation("payer_amount", description),
                ],
                metadata={"held_amount": str(escrow.held)},
            )
        payment = self._release_part(group, escrow, command.payee_amount) if command.payee_amount else None
        self._refund_rest(group, escrow)
        dispute = escrow.dispute
        dispute.payee_amount, dispute.payer_amount = command.payee_amount, command.payer_amount
        dispute.resolution_note = command.note
        dispute.resolve_time_us = group.write.time_us
        escrow.status = EscrowStatus.RESOLVED
        self._escrow_event(group, escrow, "resolved")
        return payment

    def _expire_escrow(self, command: ExpireEscrow, group: _Group) -> EscrowOutcome | None:
        """Run an escrow's expiry action, if it is still active and due; otherwise nothing."""
        escrow = group.escrows.get(command.escrow_id)
        if escrow is None or escrow.status is not EscrowStatus.ACTIVE or group.write.time_us < escrow.expire_time_us:
            return None
        escrow.expired = True
        group.expired_deadlines.append(escrow.expire_time_us)
        self._escrow_event(group, escrow, "expired")
        payment = None
        if escrow.expiry_action is ExpiryAction.RELEASE_TO_PAYEE:
            # No queue-size check: the money is already held and its release is owed, not a new request.
            payment = self._release_part(group, escrow, escrow.held) if escrow.held else None
            escrow.status = EscrowStatus.RELEASED
            self._escrow_event(group, escrow, "released")
        else:
            self._refund_rest(group, escrow)
            escrow.status = EscrowStatus.REFUNDED
            self._escrow_event(group, escrow, "refunded")
        return EscrowOutcome(escrow.snapshot(), payment)

    def _release_part(self, group: _Group, escrow: Escrow, amount: int) -> Payment:
        """Turn ``amount`` of what the escrow holds, with its share of the fee, into a queued settlement
        payment from the payer to the payee: escrowed money becomes reserved, as an accepted payment's is."""
        write = group.write
        now_us = write.time_us
        symbol = escrow.token
        fee = fee_share(
            self.config.fee_schedule, escrow.fee, before=escrow.released_amount, part=amount, whole=escrow.amount
        )
        debit = amount + fee.total
        balance = self._balance(group, escrow.payer, symbol)
        balance.escrowed -= debit
        balance.reserved += debit
        payment = Payment(
            payment_id=self._ids.new(now_us),
            payer=escrow.payer,
            payee=escrow.payee,
            token=symbol,
            amount=amount,
            fee=fee,
            priority=escrow.priority,
            status=PaymentStatus.QUEUED,
            task_id=escrow.task_id,
            memo="",
            metadata={},
            request_id="",
            create_time_us=now_us,
            update_time_us=now_us,
            escrow_id=escrow.escrow_id,
        )
        write.transfer(
            TransferKind.ESCROW_RELEASE,
            symbol,
            (escrow.payer, Bucket.ESCROWED),
            (escrow.payer, Bucket.RESERVED),
            debit,
            escrow.name,
        )
        self._queue_payment(group, payment)
        group.payments[payment.payment_id] = payment
        escrow.released_amount += amount
        escrow.fee_charged += fee.total
        escrow.release_payments.append(payment.payment_id)
        return payment

    def _refund_rest(self, group: _Group, escrow: Escrow) -> None:
        """Give what the escrow still holds, and the fee held for it, back to the payer's available balance."""
        amount, fee = escrow.held, escrow.held_fee
        if amount + fee:
            balance = self._balance(group, escrow.payer, escrow.token)
            balance.escrowed -= amount + fee
            balance.available += amount + fee
            group.write.transfer(
                TransferKind.ESCROW_REFUND,
                escrow.token,
                (escrow.payer, Bucket.ESCROWED),
                (escrow.payer, Bucket.AVAILABLE),
                amount + fee,
                escrow.name,
            )
        escrow.refunded_amount += amount

    def _escrow_event(self, group: _Group, escrow: Escrow, event: str) -> None:
        """Record ``escrow.{event}`` with the escrow as it is now, and stage its row."""
        write = group.write
        escrow.update_time_us = write.time_us
        write.escrows[escrow.escrow_id] = escrow
        group.escrow_steps[event] += 1
        write.event(
            f"escrow.{event}",
            escrow.name,
            escrow.parties,
            escrow.task_id,
            escrow_message(escrow).SerializeToString(),
        )

    # -- batches --------------------------------------------------------------------------------------

    def _open_batch(self, command: OpenBatch, group: _Group) -> Batch:
        write = group.write
        accepted: list[str] = []
        for payment_id in command.payment_ids:
            payment = group.payments.get(payment_id)
            # Cancelled (or taken by another batch) since the stage picked it: left out.
            if payment is None or payment.status is not PaymentStatus.QUEUED or not self._in_queue(group, payment):
                continue
            payment.status = PaymentStatus.PROCESSING
            payment.batch_id = command.batch_id
            payment.update_time_us = write.time_us
            write.changed_payments[payment_id] = payment
            write.event(
                f"{payment.event_prefix}.processing",
                payment.name,
                (payment.payer, payment.payee),
                payment.task_id,
                _payload(payment),
            )
            if payment_id in self.queues[payment.token]:
                group.removals.append(payment)
            accepted.append(payment_id)
        batch = Batch(
            batch_id=command.batch_id,
            chain_batch_id=command.chain_batch_id,
            status=BatchStatus.PENDING,
            payment_ids=accepted,
            create_time_us=write.time_us,
            update_time_us=write.time_us,
        )
        if accepted:
            write.batch(batch)
        return batch

    def _batch_payments(self, group: _Group, batch: Batch) -> list[Payment | None]:
        """The batch's payments in item order; None for one already ended (a settlement recorded twice)."""
        found: list[Payment | None] = []
        for payment_id in batch.payment_ids:
            payment = group.payments.get(payment_id)
            if payment is None or payment.status is not PaymentStatus.PROCESSING or payment.batch_id != batch.batch_id:
                found.append(None)
            else:
                found.append(payment)
        return found

    def _settle_batch(self, command: SettleBatch, group: _Group) -> Batch:
        write = group.write
        batch = command.batch
        if batch.transaction_hash is None or batch.block_number is None:
            raise ValueError(f"{batch.name} has no mined transaction to settle with")
        count = len(batch.payment_ids)
        gas_used, gas_price = batch.gas_used or 0, batch.gas_price or 0
        for index, payment in enumerate(self._batch_payments(group, batch)):
            if payment is None:
                continue
            if index in command.skipped:
                self._release(
                    group,
                    payment,
                    PaymentStatus.FAILED,
                    "the payer's deposit no longer covered it on chain (an exit), so the contract skipped it",
                    "failed",
                )
                continue
            # Each payment's share of the gas; the first ones carry the remainder.
            share = gas_used // count + (1 if index < gas_used % count else 0)
            settlement = Settlement(
                batch_id=batch.batch_id,
                transaction_hash=batch.transaction_hash,
                block_number=batch.block_number,
                gas_used=share,
                gas_cost_wei=share * gas_price,
                complete_time_us=write.time_us,
            )
            self._settle(group, payment, settlement, payee_credited=index in command.credited)
        batch.status = BatchStatus.CONFIRMED
        batch.confirm_time_us = batch.update_time_us = write.time_us
        write.batch(batch)
        payments = [p for p in group.payments.values() if p.batch_id == batch.batch_id]
        write.event("batch.completed", batch.name, (), "", batch_message(batch, payments).SerializeToString())
        return batch

    def _fail_batch(self, command: FailBatch, group: _Group) -> Batch:
        write = group.write
        batch = command.batch
        for payment in self._batch_payments(group, batch):
            if payment is not None:
                self._release(group, payment, PaymentStatus.FAILED, command.reason, "failed")
        batch.status = BatchStatus.FAILED
        batch.failure_reason = command.reason
        batch.update_time_us = write.time_us
        write.batch(batch)
        payments = [p for p in group.payments.values() if p.batch_id == batch.batch_id]
        write.event("batch.failed", batch.name, (), "", batch_message(batch, payments).SerializeToString())
        return batch

    def _fail_payment(self, command: FailPayment, group: _Group) -> Payment:
        payment = self._find_payment(group, command.payment_id)
        if payment.status not in (PaymentStatus.QUEUED, PaymentStatus.PROCESSING):
            raise _not_open(payment, "it is settled or ended already")
        self._release(group, payment, PaymentStatus.FAILED, command.reason, "failed")
        return payment

    def _credit_deposit(self, command: CreditDeposit, group: _Group) -> Deposit:
        write = group.write
        key = _deposit_key(command)
        record = group.idempotency.get(key)
        deposit = Deposit(
            beneficiary=command.beneficiary,
            depositor=command.depositor,
            token=command.token.symbol,
            amount=command.amount,
            transaction_hash=command.transaction_hash,
            log_index=command.log_index,
            block_number=command.block_number,
            confirm_time_us=record.create_time_us if record is not None else write.time_us,
        )
        if record is not None:  # this log was credited already: once only
            return deposit
        balance = self._balance(group, command.beneficiary, command.token.symbol)
        balance.available += command.amount
        write.transfer(
            TransferKind.DEPOSIT,
            command.token.symbol,
            (CHAIN, Bucket.AVAILABLE),
            (command.beneficiary, Bucket.AVAILABLE),
            command.amount,
            deposit.name,
        )
        write.event(
            "deposit.confirmed",
            deposit.name,
            (command.beneficiary, command.depositor),
            "",
            deposit_message(deposit).SerializeToString(),
        )
        _remember(group, key, "", deposit.name)
        return deposit


def _load(
    idempotency_keys: list[tuple[str, str]],
    payment_ids: set[str],
    account_keys: set[AccountKey],
    known_payments: set[str],
    connection: Connection,
    queued_of: Collection[AccountKey] = (),
    escrow_ids: Collection[str] = (),
    known_escrows: Collection[str] = (),
) -> tuple[dict[tuple[str, str], IdempotencyRecord], dict[str, Payment], dict[AccountKey, Balance], dict[str, Escrow]]:
    """On the reader's thread: the records, payments, escrows and balances a group needs; with
    ``queued_of``, also every queued item of those (payer, token) accounts."""
    records = load_idempotency(connection, idempotency_keys)
    replayed = {pid for r in records.values() if (pid := _settled_item_id(r.resource)) is not None}
    for payer, token in queued_of:
        c = payments.c
        query = sa.select(c.payment_id).where(c.payer == payer, c.token == token, c.status == int(PaymentStatus.QUEUED))
        replayed.update(payment_id for (payment_id,) in connection.execute(query))
    found = load_payments(connection, (payment_ids | replayed) - known_payments)
    named = {i for r in records.values() if (i := _escrow_id(r.resource)) is not None}
    escrows = load_escrows(connection, (set(escrow_ids) | named) - set(known_escrows))
    # The payers of named payments and escrows may not be cached yet: load them too (the caller keeps
    # cached ones).
    keys = account_keys | {(p.payer, p.token) for p in found.values()} | {(e.payer, e.token) for e in escrows.values()}
    balances = load_accounts(connection, keys)
    end_read(connection)
    return records, found, balances, escrows


def _not_open(payment: Payment, why: str) -> ApiError:
    """FAILED_PRECONDITION: the payment is past the state the command needs."""
    return ApiError(
        Reason.PAYMENT_NOT_CANCELLABLE,
        f"{payment.name} is {payment.status.name.lower()}; {why}",
        metadata={"name": payment.name, "status": f"PAYMENT_STATUS_{payment.status.name}"},
    )


def _consume(future: asyncio.Future[Result]) -> None:
    if not future.cancelled():
        future.exception()


def _checkpoint(connection: Connection) -> None:
    # PASSIVE: copy what no reader still needs, wait for nobody. The writer restarts the WAL from its
    # beginning once a checkpoint has copied all of it, so the file stays small.
    connection.exec_driver_sql("PRAGMA wal_checkpoint(PASSIVE)")


def _require_same_request(record: IdempotencyRecord, key: tuple[str, str], request_hash: str, what: str) -> None:
    """IDEMPOTENCY_CONFLICT unless the request id's record was made by this same request."""
    if record.request_hash != request_hash:
        raise ApiError(
            Reason.IDEMPOTENCY_CONFLICT,
            f"request_id {key[1]!r} was already used for a different {what}",
            metadata={"request_id": key[1], "resource": record.resource},
        )


def _replayed(group: _Group, key: tuple[str, str], request_hash: str, what: str) -> Payment | None:
    """What the request id ``key`` made already (a payment or a withdrawal), or None if it is new;
    IDEMPOTENCY_CONFLICT when it was used for a different request."""
    record = group.idempotency.get(key)
    if record is None:
        return None
    _require_same_request(record, key, request_hash, what)
    payment_id = _settled_item_id(record.resource)
    assert payment_id is not None, record.resource
    return group.payments[payment_id]


def _remember(group: _Group, key: tuple[str, str], request_hash: str, resource: str) -> None:
    """Record that ``key`` (scope, request id or log) made ``resource``: in the group, and as a row."""
    write = group.write
    group.idempotency[key] = IdempotencyRecord(request_hash, resource, write.time_us)
    group.created_keys.append(key)
    write.idempotency.append(
        {
            "key": idempotency_key(*key),
            "scope": key[0],
            "request_id": key[1],
            "request_hash": request_hash,
            "resource": resource,
            "create_time_us": write.time_us,
        }
    )


def _payload(payment: Payment) -> bytes:
    """The event payload of a payment or a withdrawal: the resource as the API shows it."""
    if payment.kind is PaymentKind.WITHDRAWAL:
        return withdrawal_message(payment).SerializeToString()
    return payment_bytes(payment)


def _settled_item_id(resource: str) -> str | None:
    """The payments-table id of a resource name: a payment's or a withdrawal's."""
    for prefix in ("payments/", "withdrawals/"):
        if resource.startswith(prefix):
            return resource[len(prefix) :]
    return None


def _escrow_id(resource: str) -> str | None:
    return resource[len("escrows/") :] if resource.startswith("escrows/") else None


def _escrow_scope(payer: str) -> str:
    # CreateEscrow's request ids are the payer's own, as for payments.
    return f"escrow-create:{payer}"


def _escrow_step_scope(escrow_id: str) -> str:
    # The steps taken on one escrow share its request ids: the same id for a release and a refund conflicts.
    return f"escrow:{escrow_id}"


def _withdrawal_scope(address: str) -> str:
    return f"withdrawal:{address}"


def _payment_scope(payer: str) -> str:
    # Request ids are the payer's own: two agents may pick the same one without colliding.
    return f"payment:{payer}"


def _exit_key(command: RecordExit) -> tuple[str, str]:
    return ("exit", f"{command.transaction_hash}:{command.log_index}")


def _fee_payout_key(command: RecordFeePayout) -> tuple[str, str]:
    return ("fee-payout", f"{command.transaction_hash}:{command.log_index}")


def _deposit_key(command: CreditDeposit) -> tuple[str, str]:
    return ("deposit", f"{command.transaction_hash}:{command.log_index}")
