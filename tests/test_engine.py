"""The engine on a real SQLite ledger: settlement outcomes, deposits once, and failed commits undone."""

from __future__ import annotations

import asyncio
import sqlite3
import time
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy.engine import make_url

from agentflow_payments import Reason
from agentflow_server.engine.commands import (
    CompletePayment,
    CreditDeposit,
    FailPayment,
    OpenBatch,
    SettleBatch,
    SubmitPayment,
)
from agentflow_server.engine.engine import Engine, EngineConfig
from agentflow_server.engine.model import CHAIN, FEES, Balance, Batch, Deposit, Payment, PaymentStatus, Priority
from agentflow_server.errors import ApiError
from agentflow_server.ledger import Database, StorageError
from agentflow_server.ledger.database import LocalConnection, ThreadConnection, WouldWait
from agentflow_server.ledger.payments import load_payments
from agentflow_server.ledger.writer import GroupWriter
from agentflow_server.metrics import Metrics
from agentflow_server.tokens import TokenRegistry

from .conftest import ALICE, BOB
from .test_payments import CAROL

TOKENS = TokenRegistry.configure({}, {})
USDC = TOKENS.get("USDC")


@pytest.fixture(params=["process", "thread"])
async def engine(tmp_path: Path, request: pytest.FixtureRequest) -> AsyncIterator[Engine]:
    # Small groups, each pipelined, so that several are applied in memory while earlier ones commit; every
    # test runs with the writer in a process of its own (the default) and on a thread.
    database = await Database.open(f"sqlite+aiosqlite:///{tmp_path / 'ledger.db'}")
    config = EngineConfig(
        max_queue_size=100_000,
        max_group_size=16,
        max_inflight=2,
        pipeline_min_commands=1,
        writer_process=request.param == "process",
    )
    engine = Engine(database, TOKENS, config)
    await engine.start()
    yield engine
    await engine.stop()
    await database.close()


def deposit(address: str, amount: int, tx: int = 1, log_index: int = 0) -> CreditDeposit:
    return CreditDeposit(address, address, USDC, amount, f"0x{tx:064x}", log_index, 7)


def submit(amount: int = 1_000_000, request_id: str = "") -> SubmitPayment:
    return SubmitPayment(ALICE, BOB, USDC, amount, Priority.NORMAL, "", "", (), request_id)


def stored_balances(path: Path) -> dict[tuple[str, str], Balance]:
    with sqlite3.connect(path) as db:
        rows = db.execute("SELECT address, token, available, reserved, escrowed FROM accounts").fetchall()
    return {(a, t): Balance(int(av), int(r), int(e)) for a, t, av, r, e in rows}


def journal_sums(path: Path) -> dict[tuple[str, int], int]:
    """What the journal says each (address, bucket) holds."""
    sums: dict[tuple[str, int], int] = {}
    with sqlite3.connect(path) as db:
        for debit, debit_bucket, credit, credit_bucket, amount in db.execute(
            "SELECT debit_address, debit_bucket, credit_address, credit_bucket, amount FROM transfers"
        ):
            sums[(debit, debit_bucket)] = sums.get((debit, debit_bucket), 0) - int(amount)
            sums[(credit, credit_bucket)] = sums.get((credit, credit_bucket), 0) + int(amount)
    return sums


async def test_a_deposit_is_credited_once_per_log(engine: Engine, tmp_path: Path) -> None:
    first = await engine.execute(deposit(ALICE, 500))
    again = await engine.execute(deposit(ALICE, 500))
    other_log = await engine.execute(deposit(ALICE, 500, log_index=1))
    assert isinstance(first, Deposit)
    assert again == first
    assert other_log.name != first.name
    assert stored_balances(tmp_path / "ledger.db")[(ALICE, "USDC")] == Balance(1000, 0, 0)


async def test_completed_payments_leave_the_ledger_and_failed_ones_come_back(engine: Engine, tmp_path: Path) -> None:
    await engine.execute(deposit(ALICE, 100_000_000))
    paid = await engine.execute(submit())
    failed = await engine.execute(submit())
    assert isinstance(paid, Payment)
    assert isinstance(failed, Payment)
    done = await engine.execute(CompletePayment(paid.payment_id, "b1", "0x" + "ab" * 32, 12, 21_000, 10**12))
    assert isinstance(done, Payment)
    assert done.status is PaymentStatus.COMPLETED
    assert done.settlement is not None
    assert done.settlement.transaction_hash == "0x" + "ab" * 32
    back = await engine.execute(FailPayment(failed.payment_id, "payee rejected"))
    assert isinstance(back, Payment)
    assert (back.status, back.failure_reason) == (PaymentStatus.FAILED, "payee rejected")
    assert len(engine.queues["USDC"]) == 0
    with pytest.raises(ApiError) as final:
        await engine.execute(FailPayment(paid.payment_id, "late"))
    assert final.value.reason is Reason.PAYMENT_NOT_CANCELLABLE
    path = tmp_path / "ledger.db"
    # Alice keeps what did not settle; the settled amount went to the chain and its fee (the 0.01 USDC
    # minimum) to the fees the contract holds until it pays them out.
    assert stored_balances(path)[(ALICE, "USDC")] == Balance(100_000_000 - 1_010_000, 0, 0)
    assert stored_balances(path)[(FEES, "USDC")] == Balance(10_000, 0, 0)
    sums = journal_sums(path)
    assert sums[(ALICE, 1)] == 100_000_000 - 1_010_000
    assert sums[(ALICE, 2)] == 0
    assert sums[(FEES, 1)] == 10_000
    assert sums[(CHAIN, 1)] == -100_000_000 + 1_000_000
    assert sum(sums.values()) == 0


async def test_what_the_ledger_stores_of_a_changed_payment_reads_back_as_the_engine_holds_it(
    engine: Engine, tmp_path: Path
) -> None:
    # Changed payments are written by their state columns alone: each state must read back whole.
    await engine.execute(deposit(ALICE, 100_000_000))
    submitted = [await engine.execute(submit()) for _ in range(3)]
    ids = [p.payment_id for p in submitted if isinstance(p, Payment)]
    batch = await engine.execute(OpenBatch("b1", 1, tuple(ids[:2])))
    assert isinstance(batch, Batch)
    batch.transaction_hash, batch.block_number, batch.block_hash = "0x" + "ab" * 32, 12, "0x" + "cd" * 32
    batch.gas_used, batch.gas_price = 90_001, 10**9
    settled = await engine.execute(SettleBatch(batch, frozenset(), frozenset({1})))
    assert isinstance(settled, Batch)
    failed = await engine.execute(FailPayment(ids[2], "payee rejected"))
    assert isinstance(failed, Payment)
    database = await Database.open(f"sqlite+aiosqlite:///{tmp_path / 'ledger.db'}")
    try:
        async with database.connect() as connection:
            stored = await connection.run_sync(load_payments, ids)
    finally:
        await database.close()
    completed, skipped = stored[ids[0]], stored[ids[1]]
    assert (completed.status, completed.batch_id) == (PaymentStatus.COMPLETED, "b1")
    assert completed.settlement is not None
    assert (completed.settlement.transaction_hash, completed.settlement.block_number) == ("0x" + "ab" * 32, 12)
    assert completed.settlement.gas_used == 45_001  # half the batch's gas, the first item its remainder
    assert completed.settlement.gas_cost_wei == 45_001 * 10**9
    assert completed.update_time_us == completed.settlement.complete_time_us > completed.create_time_us
    assert (skipped.status, skipped.batch_id, skipped.settlement) == (PaymentStatus.FAILED, "b1", None)
    assert "skipped" in skipped.failure_reason
    assert stored[ids[2]] == failed
    for payment in stored.values():
        assert (payment.payer, payment.amount, payment.fee) == (ALICE, 1_000_000, submitted[0].fee)  # type: ignore[union-attr]


async def test_a_failed_commit_undoes_its_group_and_those_built_on_it(engine: Engine, tmp_path: Path) -> None:
    path = tmp_path / "ledger.db"
    await engine.execute(deposit(ALICE, 10**12))
    before = stored_balances(path)
    # Another writer takes the events table away: every group's commit fails until it is back.
    with sqlite3.connect(path) as db:
        db.execute("ALTER TABLE events RENAME TO events_away")
    results = await asyncio.gather(
        *(engine.execute(submit(request_id=f"r{i}")) for i in range(200)), return_exceptions=True
    )
    assert results
    assert all(isinstance(r, StorageError) for r in results)
    assert stored_balances(path) == before
    with sqlite3.connect(path) as db:
        db.execute("ALTER TABLE events_away RENAME TO events")
    # The engine's memory was rolled back with the transactions: the same requests now succeed, once.
    accepted = await asyncio.gather(*(engine.execute(submit(request_id=f"r{i}")) for i in range(200)))
    assert len({p.payment_id for p in accepted if isinstance(p, Payment)}) == 200
    stored = stored_balances(path)[(ALICE, "USDC")]
    assert stored == Balance(10**12 - 200 * 1_010_000, 200 * 1_010_000, 0)
    assert len(engine.queues["USDC"]) == 200
    sums = journal_sums(path)
    assert (sums[(ALICE, 1)], sums[(ALICE, 2)]) == (stored.available, stored.reserved)


async def test_groups_in_flight_fail_together(engine: Engine, tmp_path: Path) -> None:
    """When a commit fails while later groups are already applied on top of it, all of them are undone."""
    path = tmp_path / "ledger.db"
    await engine.execute(deposit(ALICE, 10**12))
    # The ledger refuses one payment's row, as a full disk would refuse its whole group.
    with sqlite3.connect(path) as db:
        db.execute(
            "CREATE TRIGGER refuse BEFORE INSERT ON payments WHEN NEW.task_id = 'poison' "
            "BEGIN SELECT RAISE(ABORT, 'disk full'); END"
        )
    poison = SubmitPayment(ALICE, BOB, USDC, 1_000_000, Priority.NORMAL, "poison", "", (), "")
    commands = [poison if i == 40 else submit() for i in range(100)]
    results = await asyncio.gather(*(engine.execute(c) for c in commands), return_exceptions=True)
    accepted = [r for r in results if isinstance(r, Payment)]
    refused = [r for r in results if isinstance(r, StorageError)]
    assert len(accepted) + len(refused) == 100
    assert accepted  # the groups before the failure committed
    assert isinstance(results[40], StorageError)
    assert "disk full" in str(results[40])
    stored = stored_balances(path)[(ALICE, "USDC")]
    assert stored.reserved == len(accepted) * 1_010_000
    # Memory agrees with the database: the next payment is checked against the committed balance.
    await engine.execute(submit())
    assert stored_balances(path)[(ALICE, "USDC")].reserved == (len(accepted) + 1) * 1_010_000
    assert len(engine.queues["USDC"]) == len(accepted) + 1


async def test_a_command_whose_caller_went_away_before_its_group_is_not_applied(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A payment cancelled while it waits (a deadline passed, the client went away) is not made, nor is any
    payment of a SubmitPayments call cancelled so; the rest of the group is. Retried, it is made once."""
    path = tmp_path / "abandoned.db"
    database = await Database.open(f"sqlite+aiosqlite:///{path}")
    metrics = Metrics()
    engine = Engine(database, TOKENS, EngineConfig(max_inflight=2, pipeline_min_commands=100), metrics=metrics)
    await engine.start()
    commits = HeldCommits(monkeypatch)
    try:
        await engine.execute(deposit(ALICE, 10**15))
        commits.hold()
        first = asyncio.create_task(engine.execute(submit(request_id="first")))
        assert await commits.next() == 1
        # These wait for the held commit, in the inbox and in the engine's next group.
        gone = asyncio.create_task(engine.execute(submit(request_id="gone")))
        call = asyncio.create_task(engine.submit_payments([submit(request_id=f"call-{i}") for i in range(3)]))
        kept = asyncio.create_task(engine.execute(submit(request_id="kept")))
        await asyncio.sleep(0.1)
        gone.cancel()
        call.cancel()
        commits.gate.set()
        assert await commits.next() == 1  # only "kept" went on
        await asyncio.gather(first, kept)
        for task in (gone, call):
            with pytest.raises(asyncio.CancelledError):
                await task
        assert stored_request_ids(path) == {"first", "kept"}
        assert stored_balances(path)[(ALICE, "USDC")].reserved == 2 * 1_010_000
        assert metrics.registry.get_sample_value("agentflow_engine_abandoned_commands_total") == 4
        # Retried with the same request id: made now, and once.
        again = await engine.execute(submit(request_id="gone"))
        replayed = await engine.execute(submit(request_id="gone"))
        assert isinstance(again, Payment)
        assert isinstance(replayed, Payment)
        assert replayed.payment_id == again.payment_id
        assert stored_balances(path)[(ALICE, "USDC")].reserved == 3 * 1_010_000
    finally:
        commits.gate.set()
        await engine.stop()
        await database.close()


class HeldCommits:
    """GroupWriter.commit held at a gate once :meth:`hold` is called: each commit reports its number of new
    payments as it starts, then waits for ``gate`` (waiters wake in order, so the commits still reach the
    writer in order)."""

    def __init__(self, monkeypatch: pytest.MonkeyPatch) -> None:
        self.gate = asyncio.Event()
        self._started: asyncio.Queue[int] = asyncio.Queue()
        self._monkeypatch = monkeypatch

    def hold(self) -> None:
        original = GroupWriter.commit

        async def held_commit(writer: GroupWriter, group: Any, epoch: int) -> None:
            self._started.put_nowait(len(group.new_payments))
            await self.gate.wait()
            await original(writer, group, epoch)

        self._monkeypatch.setattr(GroupWriter, "commit", held_commit)

    def idle(self) -> bool:
        """No commit has started since the last :meth:`next`."""
        return self._started.empty()

    async def next(self) -> int:
        """The number of new payments in the next commit to start."""
        return await asyncio.wait_for(self._started.get(), 10)


def stored_request_ids(path: Path) -> set[str]:
    with sqlite3.connect(path) as db:
        return {request_id for (request_id,) in db.execute("SELECT request_id FROM payments")}


async def test_fees_follow_the_payers_volume_and_the_queue_depth(tmp_path: Path) -> None:
    database = await Database.open(f"sqlite+aiosqlite:///{tmp_path / 'fees.db'}")
    engine = Engine(database, TOKENS, EngineConfig(max_queue_size=10))
    await engine.start()
    try:
        await engine.execute(deposit(ALICE, 10**15))
        first = await engine.execute(submit(amount=10_000 * 10**6))  # $10k: the first volume tier
        assert isinstance(first, Payment)
        assert (first.fee.volume_discount_bps, first.fee.congestion_adjustment_bps) == (0, 0)
        second = await engine.execute(submit(amount=10**6))
        assert isinstance(second, Payment)
        assert second.fee.volume_discount_bps == 1000
        assert engine.quote(ALICE, USDC, 10**6) == second.fee
        assert engine.quote(BOB, USDC, 10**6).volume_discount_bps == 0  # volume is the payer's own
        for _ in range(3):
            await engine.execute(submit(amount=10**6))
        # Five of ten queue places taken: +10% for congestion.
        fifth = await engine.execute(submit(amount=10**6))
        assert isinstance(fifth, Payment)
        assert fifth.fee.congestion_adjustment_bps == 1000
    finally:
        await engine.stop()
    # Volume survives a restart (it is kept per day in the ledger).
    engine = Engine(database, TOKENS, EngineConfig(max_queue_size=10))
    await engine.start()
    try:
        assert engine.quote(ALICE, USDC, 10**6).volume_discount_bps == 1000
        assert len(engine.queues["USDC"]) == 6
    finally:
        await engine.stop()
        await database.close()


async def test_the_queue_bound_holds_while_groups_commit(tmp_path: Path) -> None:
    database = await Database.open(f"sqlite+aiosqlite:///{tmp_path / 'bound.db'}")
    engine = Engine(database, TOKENS, EngineConfig(max_queue_size=50, max_group_size=16, pipeline_min_commands=1))
    await engine.start()
    try:
        await engine.execute(deposit(ALICE, 10**15))
        results = await asyncio.gather(*(engine.execute(submit()) for _ in range(200)), return_exceptions=True)
        accepted = [r for r in results if isinstance(r, Payment)]
        full = [r for r in results if isinstance(r, ApiError) and r.reason is Reason.QUEUE_FULL]
        assert (len(accepted), len(full)) == (50, 150)
        assert len(engine.queues["USDC"]) == 50
    finally:
        await engine.stop()
        await database.close()


async def test_the_payments_of_one_call_are_applied_in_one_group_and_priced_together(engine: Engine) -> None:
    """A call larger than the engine's group size still goes in one group (one time for all its payments),
    and each payment earns the discount of the whole call's size."""
    await engine.execute(deposit(ALICE, 10_000 * 10**6))
    created = await engine.submit_payments([submit() for _ in range(40)])  # the fixture's groups hold 16
    assert all(isinstance(p, Payment) for p in created)
    payments = [p for p in created if isinstance(p, Payment)]
    assert len({p.create_time_us for p in payments}) == 1
    assert {p.fee.batch_discount_bps for p in payments} == {1000}  # 10 to 49 payments: 10%
    alone = await engine.execute(submit())
    assert isinstance(alone, Payment)
    assert alone.fee.batch_discount_bps == 0


async def test_small_reads_are_made_on_the_loop_and_large_ones_on_the_readers_thread(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A group that looks up a few rows (here its request ids) reads them on the event loop itself, on
    SQLite: the hand-off to the reader's thread cost more than such a read. A group that looks up many
    reads on the thread, beside the loop. Either way a request id used before is found."""
    database = await Database.open(f"sqlite+aiosqlite:///{tmp_path / 'ledger.db'}")
    engine = Engine(database, TOKENS, EngineConfig(max_queue_size=100_000))
    await engine.start()
    on_thread: list[object] = []
    reader = engine._reader
    thread_run = reader.run

    async def counted(work: Any) -> Any:
        on_thread.append(work)
        return await thread_run(work)

    monkeypatch.setattr(reader, "run", counted)
    try:
        await engine.execute(deposit(ALICE, 10**12))
        first = await engine.execute(submit(request_id="once"))
        replayed = await engine.execute(submit(request_id="once"))
        assert isinstance(first, Payment)
        assert isinstance(replayed, Payment)
        assert replayed.payment_id == first.payment_id
        assert on_thread == []
        many = await engine.submit_payments([submit(request_id=f"r{i}") for i in range(17)])
        assert len(on_thread) == 1
        again = await engine.submit_payments([submit(request_id=f"r{i}") for i in range(17)])
        assert [p.payment_id for p in again if isinstance(p, Payment)] == [
            p.payment_id for p in many if isinstance(p, Payment)
        ]
    finally:
        await engine.stop()
        await database.close()
    # PostgreSQL's every read is a round trip over the network: always on the thread.
    assert Database("postgresql+psycopg://agentflow@127.0.0.1/test").local_connection() is None


async def test_only_a_group_worth_it_is_applied_while_another_commits(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A few commands wait for the commit under way and then go as one group; a hundred go at once."""
    database = await Database.open(f"sqlite+aiosqlite:///{tmp_path / 'pipeline.db'}")
    engine = Engine(database, TOKENS, EngineConfig(max_inflight=2, pipeline_min_commands=100))
    await engine.start()
    commits = HeldCommits(monkeypatch)
    try:
        await engine.execute(deposit(ALICE, 10**15))
        commits.hold()
        first = asyncio.create_task(engine.execute(submit()))
        assert await commits.next() == 1
        five = [submit() for _ in range(5)]
        few = asyncio.create_task(engine.execute_many(five))
        await asyncio.sleep(0.1)
        assert commits.idle()  # the five wait for the held commit...
        commits.gate.set()
        assert await commits.next() == 5  # ...and then commit together
        await asyncio.gather(first, few)

        commits.gate.clear()
        first = asyncio.create_task(engine.execute(submit()))
        assert await commits.next() == 1
        commands = [submit() for _ in range(150)]
        many = asyncio.create_task(engine.execute_many(commands))
        assert await commits.next() == 150  # applied and on its way while the first is still held
        assert not first.done()
        commits.gate.set()
        results = await asyncio.gather(first, many)
        assert all(isinstance(p, Payment) for p in [results[0], *results[1]])
    finally:
        commits.gate.set()
        await engine.stop()
        await database.close()
    assert stored_balances(tmp_path / "pipeline.db")[(ALICE, "USDC")].reserved == 157 * 1_010_000


async def test_amounts_up_to_2_256_are_exact(engine: Engine, tmp_path: Path) -> None:
    top = 2**256 - 1
    await engine.execute(deposit(ALICE, top))
    payment = await engine.execute(submit(amount=2**255))
    assert isinstance(payment, Payment)
    debit = 2**255 + payment.fee.total
    assert stored_balances(tmp_path / "ledger.db")[(ALICE, "USDC")] == Balance(top - debit, debit, 0)
    with sqlite3.connect(tmp_path / "ledger.db") as db:
        (stored,) = db.execute("SELECT amount FROM payments").fetchone()
    assert stored == str(2**255)  # 77 digits, not a float, not truncated at 2^63


def test_request_hash_tells_every_field_apart() -> None:
    base = SubmitPayment(ALICE, BOB, USDC, 10, Priority.NORMAL, "task", "memo", (("k", "v"),), "r")
    variants = [
        SubmitPayment(BOB, ALICE, USDC, 10, Priority.NORMAL, "task", "memo", (("k", "v"),), "r"),
        SubmitPayment(ALICE, BOB, TOKENS.get("DAI"), 10, Priority.NORMAL, "task", "memo", (("k", "v"),), "r"),
        SubmitPayment(ALICE, BOB, USDC, 11, Priority.NORMAL, "task", "memo", (("k", "v"),), "r"),
        SubmitPayment(ALICE, BOB, USDC, 10, Priority.HIGH, "task", "memo", (("k", "v"),), "r"),
        # The same characters split differently between fields must not collide.
        SubmitPayment(ALICE, BOB, USDC, 10, Priority.NORMAL, "taskm", "emo", (("k", "v"),), "r"),
        SubmitPayment(ALICE, BOB, USDC, 10, Priority.NORMAL, "task", "memo", (("kv", ""),), "r"),
        SubmitPayment(ALICE, BOB, USDC, 10, Priority.NORMAL, "task", "memo", (), "r"),
    ]
    hashes = {base.request_hash(), *(v.request_hash() for v in variants)}
    assert len(hashes) == 1 + len(variants)
    # The request id itself is not part of what the request means.
    same = SubmitPayment(ALICE, BOB, USDC, 10, Priority.NORMAL, "task", "memo", (("k", "v"),), "other")
    assert same.request_hash() == base.request_hash()


async def test_escrow_steps_in_pipelined_groups_see_each_other(
    engine: Engine, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:

    from agentflow_server.engine.commands import Actor, CreateEscrow, RefundEscrow, ReleaseEscrow
    from agentflow_server.engine.model import Escrow, EscrowOutcome, EscrowStatus, ExpiryAction, ReleaseCondition
    from agentflow_server.ledger.escrows import load_escrows

    await engine.execute(deposit(ALICE, 10**9))
    admin = Actor(frozenset(), admin=True)

    def create(i: int) -> CreateEscrow:
        return CreateEscrow(
            ALICE, BOB, USDC, 1_000_000, f"t{i}", None, ReleaseCondition.PAYER_APPROVAL, None, None,
            ExpiryAction.REFUND_PAYER, Priority.NORMAL, (), f"create-{i}",
        )  # fmt: skip

    created = await engine.execute_many([create(i) for i in range(40)])
    ids = [e.escrow_id for e in created if isinstance(e, Escrow)]
    assert len(ids) == 40
    # Each escrow's steps land in different groups of 16, applied while earlier ones commit (slowly, so
    # that the next group's reads always find the database behind).
    original = GroupWriter.commit

    async def slow_commit(self: GroupWriter, *args: Any) -> None:
        await asyncio.sleep(0.01)  # the same delay for each, so they still reach the writer in order
        await original(self, *args)

    monkeypatch.setattr(GroupWriter, "commit", slow_commit)
    steps = [
        step
        for escrow_id in ids
        for step in (
            ReleaseEscrow(escrow_id, 300_000, admin, "m1"),
            ReleaseEscrow(escrow_id, 200_000, admin, "m2"),
            ReleaseEscrow(escrow_id, 300_000, admin, "m1"),  # a replay of the first
            RefundEscrow(escrow_id, "", admin, ""),
        )
    ]
    # One command first, so that the groups' boundaries fall between the steps of one escrow.
    outcomes = await asyncio.gather(engine.execute(deposit(CAROL, 1)), *(engine.execute(step) for step in steps))
    assert all(isinstance(o, EscrowOutcome) for o in outcomes[1:])
    database = engine._database
    async with database.connect() as connection:
        stored = await connection.run_sync(load_escrows, ids)
    for escrow in stored.values():
        assert escrow.status is EscrowStatus.REFUNDED
        assert (escrow.released_amount, escrow.refunded_amount) == (500_000, 500_000)
        assert len(escrow.release_payments) == 2
    balance = stored_balances(tmp_path / "ledger.db")[(ALICE, "USDC")]
    assert balance.escrowed == 0
    assert balance.available + balance.reserved == 10**9
    sums = journal_sums(tmp_path / "ledger.db")
    assert (sums[(ALICE, 1)], sums[(ALICE, 2)], sums.get((ALICE, 3), 0)) == (
        balance.available,
        balance.reserved,
        0,
    )


def test_a_read_on_the_loop_never_waits_for_a_lock(tmp_path: Path) -> None:
    """Where SQLite would have a reader wait (here another connection holds the database in exclusive locking
    mode; in the server, a recovery), a read on the event loop does not block it for the 5 s other connections
    wait: it raises WouldWait at once, and the engine then reads on its thread, which may wait."""
    path = tmp_path / "ledger.db"
    db = sqlite3.connect(path)
    db.execute("PRAGMA journal_mode=WAL")
    db.execute("CREATE TABLE t (v INTEGER)")
    db.close()
    holder = sqlite3.connect(path)
    holder.execute("PRAGMA locking_mode=EXCLUSIVE")
    holder.execute("BEGIN EXCLUSIVE")
    local = LocalConnection(make_url(f"sqlite:///{path}"))

    def count(connection: Any) -> int:
        return int(connection.exec_driver_sql("SELECT count(*) FROM t").scalar())

    try:
        started = time.monotonic()
        with pytest.raises(WouldWait):
            local.run(count)
        assert time.monotonic() - started < 1
        holder.rollback()
        holder.close()  # the lock goes with the connection
        assert local.run(count) == 0
    finally:
        local.close()


async def test_the_driver_s_own_errors_become_storage_errors(tmp_path: Path) -> None:
    """The engine's reads go partly straight through the driver (ledger.group.load_idempotency), where
    SQLAlchemy never sees its errors: on either reading connection they are StorageError all the same, and
    the connection is replaced."""
    path = tmp_path / "ledger.db"
    sqlite3.connect(path).close()
    url = make_url(f"sqlite:///{path}")

    def count(table: str) -> Callable[[Any], int]:
        def read(connection: Any) -> int:
            cursor = connection.connection.cursor()
            try:
                return int(cursor.execute(f"SELECT count(*) FROM {table}").fetchone()[0])
            finally:
                cursor.close()

        return read

    local = LocalConnection(url)
    thread = ThreadConnection(url, "test-reader")
    try:
        for run in (local.run, thread.run):
            with pytest.raises(StorageError, match="no such table"):
                await _result(run(count("missing")))
        created = sqlite3.connect(path)
        created.execute("CREATE TABLE missing (v INTEGER)")
        created.close()
        assert local.run(count("missing")) == 0
        assert await thread.run(count("missing")) == 0
    finally:
        local.close()
        await thread.close()


async def _result(value: Any) -> Any:
    return await value if asyncio.iscoroutine(value) else value


async def test_a_read_the_loop_may_not_wait_for_is_made_on_the_readers_thread(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The engine's side of WouldWait: the group's read goes to the reader's thread, and the group commits.
    (The lock itself cannot be taken while the engine's own connections hold the ledger, so the loop's
    connection is made to answer as it does under one.)"""
    database = await Database.open(f"sqlite+aiosqlite:///{tmp_path / 'ledger.db'}")
    engine = Engine(database, TOKENS, EngineConfig(max_queue_size=100_000))
    await engine.start()
    try:
        await engine.execute(deposit(ALICE, 10**12))
        local = engine._local_reader
        assert local is not None

        def locked(work: Any) -> Any:
            raise WouldWait("database is locked")

        on_thread: list[object] = []
        thread_run = engine._reader.run

        async def counted(work: Any) -> Any:
            on_thread.append(work)
            return await thread_run(work)

        monkeypatch.setattr(local, "run", locked)
        monkeypatch.setattr(engine._reader, "run", counted)
        first = await engine.execute(submit(request_id="locked"))
        again = await engine.execute(submit(request_id="locked"))
        assert isinstance(first, Payment)
        assert isinstance(again, Payment)
        assert again.payment_id == first.payment_id
        assert len(on_thread) == 2
    finally:
        await engine.stop()
        await database.close()
