"""The ledger writer process: it commits beside the server, outlives no server, survives the signals a
service manager sends the whole group, and fails closed when it is lost."""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import sqlite3
import sys
import threading
from collections import defaultdict
from pathlib import Path

import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc
from sqlalchemy.engine import make_url

from agentflow_payments import Reason, Unavailable
from agentflow_payments.v1 import payments_pb2
from agentflow_server.app import LEDGER_HEALTH
from agentflow_server.ledger import Database, StorageError
from agentflow_server.ledger.group import GroupWrite
from agentflow_server.ledger.writer import PROCESS_NAME, GroupWriter

from .conftest import ALICE, StartServer
from .postgres import fresh_database
from .test_crash import _gone
from .test_payments import USDC, _funder, pay


def _command_name(pid: int) -> str:
    """What ``ps -o comm``, top and pgrep show for process ``pid``."""
    return Path(f"/proc/{pid}/comm").read_text().strip()


def _ledger_adds_up(path: Path) -> None:
    """Every balance equals its journal's sum, bucket by bucket."""
    with sqlite3.connect(path) as db:
        sums: dict[tuple[str, int], int] = defaultdict(int)
        for debit, debit_bucket, credit, credit_bucket, amount in db.execute(
            "SELECT debit_address, debit_bucket, credit_address, credit_bucket, amount FROM transfers"
        ):
            sums[(debit, debit_bucket)] -= int(amount)
            sums[(credit, credit_bucket)] += int(amount)
        for address, available, reserved in db.execute("SELECT address, available, reserved FROM accounts"):
            assert (int(available), int(reserved)) == (sums[(address, 1)], sums[(address, 2)]), address


async def test_the_writer_is_a_process_of_its_own_and_ends_with_the_server(start_server: StartServer) -> None:
    server = await start_server()
    pid = server.service.engine.writer_pid
    assert pid is not None
    assert pid != os.getpid()
    assert _command_name(pid) == PROCESS_NAME
    await _funder(server)(ALICE, 100 * USDC)
    async with server.client() as client:
        await client.payments.SubmitPayment(pay())
    await server.service.stop(grace=0)
    await _gone(pid)


async def test_the_thread_writer_has_no_process(start_server: StartServer, tmp_path: Path) -> None:
    server = await start_server(ledger_writer="thread")
    assert server.service.engine.writer_pid is None
    await _funder(server)(ALICE, 100 * USDC)
    async with server.client() as client:
        await client.payments.SubmitPayment(pay())
    _ledger_adds_up(tmp_path / "data" / "agentflow.db")


async def test_the_writer_ignores_sigint_and_sigterm(start_server: StartServer) -> None:
    """A Ctrl-C or a service manager's SIGTERM reaches every process of the group; the server drains through
    its writer, so the writer must outlive the signal and leave only when the server closes it."""
    server = await start_server()
    pid = server.service.engine.writer_pid
    assert pid is not None
    await _funder(server)(ALICE, 100 * USDC)
    os.kill(pid, signal.SIGINT)
    os.kill(pid, signal.SIGTERM)
    await asyncio.sleep(0.2)
    async with server.client() as client:
        payment = (await client.payments.SubmitPayment(pay())).payment
    assert payment.status == payments_pb2.PAYMENT_STATUS_QUEUED


async def test_a_lost_writer_fails_writes_closed_and_a_restart_recovers(
    start_server: StartServer, tmp_path: Path
) -> None:
    server = await start_server()
    await _funder(server)(ALICE, 100 * USDC)
    async with server.client() as client:
        health = health_pb2_grpc.HealthStub(client.channel)

        async def status(service: str) -> int:
            return (await health.Check(health_pb2.HealthCheckRequest(service=service))).status

        serving, not_serving = health_pb2.HealthCheckResponse.SERVING, health_pb2.HealthCheckResponse.NOT_SERVING
        assert (await status(""), await status(LEDGER_HEALTH)) == (serving, serving)
        first = (await client.payments.SubmitPayment(pay(request_id="first"))).payment
        pid = server.service.engine.writer_pid
        assert pid is not None
        os.kill(pid, signal.SIGKILL)
        await _gone(pid)
        # Nothing is acknowledged that was not committed; the server refuses writes rather than guess.
        for request_id in ("second", "third"):
            with pytest.raises(Unavailable) as caught:
                await client.payments.SubmitPayment(pay(request_id=request_id))
            assert caught.value.reason == Reason.STORAGE_UNAVAILABLE
        # Reads go on; health tells load balancers and orchestrators that this server needs a restart.
        got = await client.payments.GetPayment(payments_pb2.GetPaymentRequest(name=first.name))
        assert got.payment.request_id == "first"
        assert (await status(""), await status(LEDGER_HEALTH)) == (not_serving, not_serving)
        assert await status("agentflow.payments.v1.PaymentService") == serving  # registered, and reads work
    await server.service.stop(grace=0)

    restarted = await start_server()
    async with restarted.client() as client:
        page = await client.payments.ListPayments(payments_pb2.ListPaymentsRequest())
        assert [p.request_id for p in page.payments] == ["first"]
        await client.payments.SubmitPayment(pay(request_id="second"))
    _ledger_adds_up(tmp_path / "data" / "agentflow.db")


@pytest.mark.parametrize("backend", ["sqlite", "postgresql"])
async def test_a_new_writer_waits_until_the_old_one_is_gone(tmp_path: Path, backend: str) -> None:
    """A server restarted while its predecessor's writer still lives reads the ledger only after that writer
    can no longer commit (the writer's lock: a lock file on SQLite, an advisory lock on PostgreSQL). Two
    servers on one ledger would otherwise each accept payments against the balances they hold in memory."""
    with contextlib.ExitStack() as stack:
        url = (
            f"sqlite+aiosqlite:///{tmp_path / 'ledger.db'}"
            if backend == "sqlite"
            else stack.enter_context(fresh_database())
        )
        await _new_writer_waits(url)


@pytest.mark.parametrize("backend", ["sqlite", "postgresql"])
async def test_payments_read_back_as_written_whichever_columns_their_group_leaves_null(
    tmp_path: Path, backend: str
) -> None:
    """A plain insert leaves out the columns that are NULL in every row of its group (a new payment's
    settlement, escrow and batch: the driver binds each None through Python's adaptation protocol), and
    binds them where some row has a value: each payment reads back as it was written, alone in its group or
    beside payments that have those columns."""
    import dataclasses

    from sqlalchemy import event

    from agentflow_server.engine.fees import Fee
    from agentflow_server.engine.model import Payment, PaymentStatus, Priority, Settlement
    from agentflow_server.ledger.database import sync_engine
    from agentflow_server.ledger.group import group_rows, write_rows
    from agentflow_server.ledger.payments import load_payments

    queued = Payment(
        payment_id="0190abcdef0123456789ab01",
        payer=ALICE,
        payee="0x" + "b" * 40,
        token="USDC",
        amount=10**6,
        fee=Fee(3_000, 1_200, 900, 600, 300, 3_000, 30, -5, 10, 0),
        priority=Priority.HIGH,
        status=PaymentStatus.QUEUED,
        task_id="task-7",
        memo="",
        metadata={},
        request_id="",
        create_time_us=1_764_000_000_000_001,
        update_time_us=1_764_000_000_000_001,
    )
    settled = dataclasses.replace(
        queued,
        payment_id="0190abcdef0123456789ab02",
        status=PaymentStatus.COMPLETED,
        batch_id="b1",
        escrow_id="e1",
        settlement=Settlement("b1", "0x" + "ab" * 32, 12, 10_900, 10_900 * 10**9, 1_764_000_001_000_000),
    )
    beside = dataclasses.replace(queued, payment_id="0190abcdef0123456789ab03")
    with contextlib.ExitStack() as stack:
        url = (
            f"sqlite+aiosqlite:///{tmp_path / 'ledger.db'}"
            if backend == "sqlite"
            else stack.enter_context(fresh_database())
        )
        database = await Database.open(url)
        await database.close()
        engine = sync_engine(database.url)
        inserts: list[str] = []

        @event.listens_for(engine, "before_cursor_execute")
        def _record(_conn: object, _cursor: object, statement: str, *_args: object) -> None:
            if statement.startswith("INSERT INTO payments"):
                inserts.append(statement)

        with engine.connect() as connection:
            for time_us, payments in enumerate([[queued], [settled, beside]], start=1):
                group = GroupWrite(time_us=time_us)
                group.new_payments.extend(payments)
                group.seal()
                write_rows(connection, group_rows(group), [])
                connection.commit()
            found = load_payments(connection, [queued.payment_id, settled.payment_id, beside.payment_id])
        engine.dispose()
    assert found == {p.payment_id: p for p in (queued, settled, beside)}
    assert "transaction_hash" not in inserts[0]
    assert "escrow_id" not in inserts[0]
    assert "transaction_hash" in inserts[1]
    assert "escrow_id" in inserts[1]


async def _new_writer_waits(url: str) -> None:
    database = await Database.open(url)
    old = GroupWriter(database.url, "old-writer", in_process=True)
    new = GroupWriter(database.url, "new-writer", in_process=True)
    try:
        await old.start()
        starting = asyncio.create_task(new.start())
        await asyncio.sleep(1.0)
        assert not starting.done()
        await old.close()
        await asyncio.wait_for(starting, 10)
        assert new.pid is not None
    finally:
        await new.close()
        await database.close()


_EMBEDDING_SCRIPT = """
import asyncio, os, sys
with open(sys.argv[2], "a") as imports:
    imports.write(f"{__name__}\\n")

async def main():
    from agentflow_server.ledger import Database
    from agentflow_server.ledger.writer import GroupWriter

    database = await Database.open(f"sqlite+aiosqlite:///{sys.argv[1]}")
    writer = GroupWriter(database.url, "writer", in_process=True)
    await writer.start()
    assert writer.pid not in (None, os.getpid())
    await writer.close()
    await database.close()

if __name__ == "__main__":
    asyncio.run(main())
"""


async def test_the_writer_does_not_import_the_main_script_again(tmp_path: Path) -> None:
    """A script that embeds the server is imported once: the writer process does not run it again as
    ``__mp_main__`` (the bench's took seconds, and left the whole service in the writer's memory)."""
    script, imports = tmp_path / "embedding.py", tmp_path / "imports.txt"
    script.write_text(_EMBEDDING_SCRIPT)
    process = await asyncio.create_subprocess_exec(
        sys.executable, str(script), str(tmp_path / "ledger.db"), str(imports)
    )
    assert await asyncio.wait_for(process.wait(), 60) == 0
    assert imports.read_text().split() == ["__main__"]


async def test_a_writer_that_cannot_open_the_ledger_fails_the_start(tmp_path: Path) -> None:
    writer = GroupWriter(make_url(f"sqlite:///{tmp_path / 'missing' / 'ledger.db'}"), "writer", in_process=True)
    with pytest.raises(StorageError, match="could not open the ledger"):
        await writer.start()
    await writer.close()


async def test_an_in_memory_ledger_needs_the_thread_writer() -> None:
    writer = GroupWriter(make_url("sqlite://"), "writer", in_process=True)
    with pytest.raises(StorageError, match="in-memory"):
        await writer.start()


async def test_an_engine_that_fails_to_start_stops_its_writer(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from agentflow_server.engine.engine import Engine, EngineConfig
    from agentflow_server.tokens import TokenRegistry

    started: list[int] = []
    original = GroupWriter.start

    async def start(self: GroupWriter) -> None:
        await original(self)
        assert self.pid is not None
        started.append(self.pid)

    async def unreadable(self: Engine) -> int:
        raise StorageError("the ledger cannot be read")

    monkeypatch.setattr(GroupWriter, "start", start)
    monkeypatch.setattr(Engine, "_load_state", unreadable)
    database = await Database.open(f"sqlite+aiosqlite:///{tmp_path / 'ledger.db'}")
    engine = Engine(database, TokenRegistry.configure({}, {}), EngineConfig())
    try:
        with pytest.raises(StorageError, match="cannot be read"):
            await engine.start()
        assert len(started) == 1
        await _gone(started[0])
    finally:
        await database.close()


async def test_a_group_that_does_not_pickle_fails_alone(start_server: StartServer) -> None:
    """A record write that cannot cross to the writer process (a bug) fails its own group, not the writer."""
    from agentflow_server.engine.commands import StoreRecords

    server = await start_server()
    with pytest.raises(AttributeError, match="pickle"):
        await server.service.engine.execute(StoreRecords(lambda connection: None))
    await _funder(server)(ALICE, 100 * USDC)
    async with server.client() as client:
        payment = (await client.payments.SubmitPayment(pay())).payment
    assert payment.status == payments_pb2.PAYMENT_STATUS_QUEUED


def _large_group(tag: str, rows: int = 6000) -> GroupWrite:
    """A group that pickles to about 1.4 MB: more than the writer's pipe holds (it asks Linux for 1 MiB)."""
    group = GroupWrite(time_us=1)
    group.chain_state = {f"{tag}-{i}": "x" * 200 for i in range(rows)}
    return group


async def test_groups_larger_than_the_pipe_go_in_parts_and_are_answered_in_order(tmp_path: Path) -> None:
    """The event loop hands groups to the writer process without blocking and without threads of its own:
    what the pipe cannot take yet waits until it drains, several groups may be on their way at once, and
    each is answered after its own commit, in the order they were sent."""
    path = tmp_path / "ledger.db"
    database = await Database.open(f"sqlite+aiosqlite:///{path}")
    writer = GroupWriter(database.url, "big-writer", in_process=True)
    await writer.start()
    answered: list[int] = []

    async def commit(index: int) -> None:
        await writer.commit(_large_group(f"g{index}"), epoch=0)
        answered.append(index)

    try:
        await asyncio.gather(*(commit(index) for index in range(4)))
        assert [t.name for t in threading.enumerate() if t.name.startswith("big-writer")] == []
    finally:
        await writer.close()
        await database.close()
    assert answered == [0, 1, 2, 3]
    with sqlite3.connect(path) as db:
        assert db.execute("SELECT count(*), sum(length(value)) FROM chain_state").fetchone() == (24_000, 24_000 * 200)


async def test_a_writer_lost_while_groups_are_half_sent_fails_them_all(tmp_path: Path) -> None:
    """Killed while the loop still holds parts of groups the pipe had no room for: every group waiting fails
    (none is acknowledged), the loss is reported once, and later groups are refused at once."""
    database = await Database.open(f"sqlite+aiosqlite:///{tmp_path / 'ledger.db'}")
    lost: list[str] = []
    writer = GroupWriter(database.url, "writer", in_process=True, on_lost=lost.append)
    await writer.start()
    pid = writer.pid
    assert pid is not None
    try:
        os.kill(pid, signal.SIGSTOP)  # it reads nothing more: the pipe fills and the rest waits with us
        commits = [asyncio.create_task(writer.commit(_large_group(f"g{index}"), epoch=0)) for index in range(3)]
        await asyncio.sleep(0.2)
        assert not any(commit.done() for commit in commits)
        os.kill(pid, signal.SIGKILL)
        results = await asyncio.wait_for(asyncio.gather(*commits, return_exceptions=True), 10)
        assert all(isinstance(result, StorageError) for result in results), results
        await asyncio.sleep(0)  # the loss is reported through the loop
        assert len(lost) == 1
        assert "restart the server" in lost[0]
        with pytest.raises(StorageError, match="restart the server"):
            await writer.commit(GroupWrite(time_us=2), epoch=1)
    finally:
        await writer.close()
        await database.close()


def _file_size(path: Path) -> int:
    return path.stat().st_size


async def _wal_sizes(path: Path, in_process: bool, limit: int) -> list[int]:
    """The WAL's size after each of 40 groups written back to back, with no other checkpointer."""
    database = await Database.open(f"sqlite+aiosqlite:///{path}")
    writer = GroupWriter(database.url, "writer", in_process=in_process, wal_limit=limit)
    await writer.start()
    wal = Path(f"{path}-wal")
    sizes = []
    try:
        for index in range(40):
            await writer.commit(_large_group(f"g{index}", rows=500), epoch=0)
            sizes.append(_file_size(wal))
    finally:
        await writer.close()
        await database.close()
    with sqlite3.connect(path) as db:
        assert db.execute("SELECT count(*) FROM chain_state").fetchone() == (40 * 500,)
    return sizes


@pytest.mark.parametrize("in_process", [True, False], ids=["process", "thread"])
async def test_the_wal_stays_within_its_limit_under_writes_that_never_pause(tmp_path: Path, in_process: bool) -> None:
    """SQLite writes its WAL from the start again only when a write begins after a checkpoint has copied all
    of it, so under writes that never pause it grew with every group. Past its limit the writer checkpoints
    and starts it again, and the file is cut back to the limit; nothing written is lost."""
    limit = 1 << 20
    bounded = await _wal_sizes(tmp_path / "bounded.db", in_process, limit)
    assert max(bounded) < 1.25 * limit
    assert bounded[-1] <= 1.25 * limit
    # The same groups under a limit they never reach: the WAL holds all of them.
    unbounded = await _wal_sizes(tmp_path / "unbounded.db", in_process, 1 << 30)
    assert unbounded[-1] > 4 * limit


def test_a_checkpoint_that_fails_leaves_the_commit_standing(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    """The writer checkpoints after a group has committed: if the checkpoint fails, the group still stands
    (it is not answered as failed, which would undo it in the engine's memory only), and a warning says so."""
    from agentflow_server.ledger.database import sync_engine
    from agentflow_server.ledger.wal import WalLimit

    path = tmp_path / "ledger.db"
    engine = sync_engine(make_url(f"sqlite:///{path}"))
    with engine.connect() as connection:
        connection.exec_driver_sql("PRAGMA wal_autocheckpoint=0")
        connection.exec_driver_sql("CREATE TABLE t (v TEXT)")
        connection.commit()
        wal = WalLimit(str(path), limit=4096)
        wal.start(connection)
        connection.exec_driver_sql("INSERT INTO t VALUES (?)", [("x" * 10_000,)])
        connection.commit()
        # A write still open on the connection: SQLite refuses to checkpoint ("database table is locked").
        connection.exec_driver_sql("INSERT INTO t VALUES ('open')")
        with caplog.at_level("WARNING", logger="agentflow_server.ledger.wal"):
            wal.after_commit(connection)
        assert "could not be checkpointed" in caplog.text
        connection.rollback()
        assert connection.exec_driver_sql("SELECT count(*) FROM t").scalar() == 1
    engine.dispose()
