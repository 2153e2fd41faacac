"""The ledger and the batching engine on PostgreSQL: the same code as on SQLite, through a real server.

Each test gets a new database on the PostgreSQL server ``./scripts/test`` found or started
(``tests/postgres.py``). ``test_payments`` runs every rule of acceptance on both databases (its ``server``
takes conftest's ``ledger_url``), and ``test_writer`` the writer's lock; here is what is particular to
PostgreSQL: the thread writer, amounts up to 2^256-1 in ``NUMERIC(78,0)``, and the writer's lock when its
session fails or is lost. Settlement, escrow and webhooks are tested on SQLite only.
"""

from __future__ import annotations

import asyncio
from collections.abc import Iterator

import grpc
import psycopg
import pytest
from sqlalchemy.engine import make_url

from agentflow_payments import IdempotencyConflict, InsufficientBalance
from agentflow_payments.v1 import accounts_pb2, events_pb2, payments_pb2
from agentflow_server.engine.engine import Engine, EngineConfig
from agentflow_server.engine.model import Payment
from agentflow_server.ledger import Database, StorageError
from agentflow_server.ledger.writer import GroupWriter

from .conftest import ALICE, BOB, RunningServer, StartServer
from .postgres import fresh_database
from .test_engine import TOKENS, deposit, submit
from .test_payments import CAROL, USDC, _funder, balance, pay


@pytest.fixture
def postgres_url() -> Iterator[str]:
    with fresh_database() as url:
        yield url


@pytest.fixture
def start_on_postgres(postgres_url: str, start_server: StartServer) -> StartServer:
    """Start servers on the test's database (stopped before it is dropped)."""

    async def start(**overrides: object) -> RunningServer:
        return await start_server(database_url=postgres_url, **overrides)

    return start


def _connect(url: str) -> psycopg.Connection[tuple[object, ...]]:
    return psycopg.connect(make_url(url).set(drivername="postgresql").render_as_string(hide_password=False))


def rows(url: str, query: str) -> list[tuple[object, ...]]:
    with _connect(url) as connection:
        return connection.execute(query).fetchall()


def execute(url: str, statement: str) -> None:
    with _connect(url) as connection:
        connection.execute(statement)


async def test_payments_on_postgres_with_the_writer_on_a_thread(
    start_on_postgres: StartServer, postgres_url: str
) -> None:
    # test_payments runs every rule on PostgreSQL with the writer process (the default); this is the
    # other writer, end to end.
    server = await start_on_postgres(ledger_writer="thread")
    fund = _funder(server)
    await fund(ALICE, 100 * USDC)
    async with server.client() as client:
        first = (await client.payments.SubmitPayment(pay(request_id="r-1", task_id="t"))).payment
        assert first.status == payments_pb2.PAYMENT_STATUS_QUEUED
        assert (await client.payments.SubmitPayment(pay(request_id="r-1", task_id="t"))).payment == first
        with pytest.raises(IdempotencyConflict):
            await client.payments.SubmitPayment(pay(request_id="r-1", task_id="other"))
        with pytest.raises(InsufficientBalance) as caught:
            await client.payments.SubmitPayment(pay(amount=1000 * USDC))
        assert caught.value.code is grpc.StatusCode.FAILED_PRECONDITION
        bulk = await client.payments.SubmitPayments(
            payments_pb2.SubmitPaymentsRequest(requests=[pay(USDC, payee=CAROL) for _ in range(10)])
        )
        made = [r.payment for r in bulk.results]
        assert len({p.name for p in made}) == 10
        assert {p.fee.batch_discount_bps for p in made} == {1000}  # ten accepted in one call
        cancelled = (await client.payments.CancelPayment(payments_pb2.CancelPaymentRequest(name=first.name))).payment
        assert cancelled.status == payments_pb2.PAYMENT_STATUS_CANCELLED

        held = await balance(client, ALICE)
        reserved = sum(int(p.amount) + int(p.fee.total) for p in made)
        assert (int(held.available), int(held.reserved)) == (100 * USDC - reserved, reserved)
        # The journal agrees with the balance, newest first across pages.
        entries, token = [], ""
        while True:
            page = await client.accounts.ListLedgerEntries(
                accounts_pb2.ListLedgerEntriesRequest(address=ALICE, page_size=4, page_token=token)
            )
            entries += page.entries
            token = page.next_page_token
            if not token:
                break
        assert [e.entry_id for e in entries] == sorted((e.entry_id for e in entries), reverse=True)
        assert sum(int(e.delta) for e in entries) == int(held.total) == 100 * USDC
        listed = await client.payments.ListPayments(payments_pb2.ListPaymentsRequest(payer=ALICE, page_size=100))
        assert [p.name for p in listed.payments] == [p.name for p in reversed([first, *made])]
        events = await client.events.ListEvents(events_pb2.ListEventsRequest(page_size=100))
        assert [e.type for e in events.events].count("payment.queued") == 11
        assert [e.sequence for e in events.events] == sorted(e.sequence for e in events.events)

    # What the server said is what PostgreSQL holds.
    assert rows(postgres_url, "SELECT count(*) FROM payments") == [(11,)]
    assert rows(postgres_url, "SELECT count(*) FROM idempotency WHERE request_id = 'r-1'") == [(1,)]


async def test_amounts_up_to_2_256_are_exact_on_postgres(start_on_postgres: StartServer, postgres_url: str) -> None:
    most = 2**256 - 1
    server = await start_on_postgres()
    await _funder(server)(BOB, most, "WETH")
    async with server.client() as client:
        payment = (await client.payments.SubmitPayment(pay(2**255, payer=BOB, payee=ALICE, token="WETH"))).payment
        assert payment.amount == str(2**255)
    await server.service.stop(grace=0)

    again = await start_on_postgres()  # balances read back from the database
    async with again.client() as client:
        held = await balance(client, BOB, "WETH")
        fee = int(payment.fee.total)
        assert (int(held.available), int(held.reserved), int(held.total)) == (most - 2**255 - fee, 2**255 + fee, most)
    assert rows(postgres_url, "SELECT amount::text FROM payments") == [(str(2**255),)]


async def test_a_writer_that_loses_its_lock_writes_nothing_more(postgres_url: str) -> None:
    """On PostgreSQL the writer's lock belongs to the session that writes. When that session is gone (the
    database restarted, an administrator ended it), another server may take the ledger at once, so the
    writer ends rather than go on writing under a new session; the server then refuses writes until it is
    restarted and has read the ledger again, as for any lost writer."""
    database = await Database.open(postgres_url)
    engine = Engine(database, TOKENS, EngineConfig())
    lost: list[str] = []
    engine.add_writer_lost_listener(lost.append)
    await engine.start()
    second = GroupWriter(database.url, "second-writer", in_process=True)
    try:
        await engine.execute(deposit(ALICE, 10**9, tx=1))
        starting = asyncio.create_task(second.start())
        await asyncio.sleep(0.5)
        assert not starting.done()
        ended = "SELECT pg_terminate_backend(pid) FROM pg_locks WHERE locktype = 'advisory' AND granted"
        assert rows(postgres_url, ended) == [(True,)]
        await asyncio.wait_for(starting, 10)  # the second writer holds the ledger now
        for tx in (2, 3):
            with pytest.raises(StorageError):
                await engine.execute(deposit(ALICE, 10**9, tx=tx))
        for _ in range(100):
            if lost:
                break
            await asyncio.sleep(0.1)
        assert lost
    finally:
        await second.close()
        await engine.stop()
        await database.close()
    assert rows(postgres_url, "SELECT count(*) FROM transfers") == [(1,)]


async def test_a_failed_commit_keeps_the_writers_session_and_lock(postgres_url: str) -> None:
    """A group that fails to commit is rolled back on the same session (a new one would not hold the writer's
    lock), and the groups after it commit once the cause is gone."""
    database = await Database.open(postgres_url)
    engine = Engine(database, TOKENS, EngineConfig())
    lost: list[str] = []
    engine.add_writer_lost_listener(lost.append)
    await engine.start()
    try:
        await engine.execute(deposit(ALICE, 10**12))
        execute(postgres_url, "ALTER TABLE events RENAME TO events_away")
        failed = await asyncio.gather(
            *(engine.execute(submit(request_id=f"r{i}")) for i in range(50)), return_exceptions=True
        )
        assert all(isinstance(r, StorageError) for r in failed)
        execute(postgres_url, "ALTER TABLE events_away RENAME TO events")
        accepted = await asyncio.gather(*(engine.execute(submit(request_id=f"r{i}")) for i in range(50)))
        assert len({p.payment_id for p in accepted if isinstance(p, Payment)}) == 50
        assert not lost
        held = "SELECT count(*) FROM pg_locks WHERE locktype = 'advisory' AND granted"
        assert rows(postgres_url, held) == [(1,)]
    finally:
        await engine.stop()
        await database.close()
    assert rows(postgres_url, "SELECT count(*) FROM payments") == [(50,)]
