"""The benchmark's "ledger writes alone" (scripts/bench_ledger.py) writes again exactly the rows a server's
engine committed: the same payments, journal entries, idempotency records and events, group by group."""

from __future__ import annotations

import asyncio
import importlib.util
import time
from pathlib import Path
from typing import Any

import sqlalchemy as sa

from agentflow_payments.v1 import payments_pb2
from agentflow_server.ledger.schema import accounts, events, idempotency, payments, transfers, volume_daily

from .conftest import ALICE, BOB, StartServer
from .test_payments import CAROL, _funder, pay

ROOT = Path(__file__).resolve().parent.parent


def _bench_ledger() -> Any:
    spec = importlib.util.spec_from_file_location("bench_ledger", ROOT / "scripts" / "bench_ledger.py")
    assert spec is not None
    assert spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _table(path: Path, table: sa.Table, since_us: int, order: str, leave_out: str = "") -> list[tuple[Any, ...]]:
    """A table's rows made since ``since_us`` (all, for a table without a creation time), by ``order``,
    without the column ``leave_out``."""
    engine = sa.create_engine(f"sqlite:///{path}")
    try:
        with engine.connect() as connection:
            columns = [c for c in table.columns if c.name != leave_out]
            statement = sa.select(*columns).order_by(table.c[order])
            if "create_time_us" in table.c:
                statement = statement.where(table.c.create_time_us >= since_us)
            return [tuple(row) for row in connection.execute(statement)]
    finally:
        engine.dispose()


async def test_the_bulk_phase_groups_are_written_again_as_committed(start_server: StartServer, tmp_path: Path) -> None:
    server = await start_server()
    fund = _funder(server)
    for address in (ALICE, BOB, CAROL):
        await fund(address, 10**12)
    started_us = time.time_ns() // 1000
    async with server.client() as client:
        for call in range(3):
            # Three payers, so a group changes several balances and volumes.
            requests = [
                pay(payer=payer, payee=payee, request_id=f"bulk-{call}-{i}")
                for i, (payer, payee) in enumerate([(ALICE, BOB), (BOB, CAROL), (CAROL, ALICE)] * 10)
            ]
            response = await client.payments.SubmitPayments(payments_pb2.SubmitPaymentsRequest(requests=requests))
            assert all(r.WhichOneof("result") == "payment" for r in response.results)
    ended_us = time.time_ns() // 1000
    await server.service.stop(grace=0)
    ledger = server.settings.data_dir / "agentflow.db"
    bench_ledger = _bench_ledger()
    # On a thread, as the bench runs it: it migrates the new ledger on an event loop of its own.
    measured = await asyncio.to_thread(
        lambda: bench_ledger.write_groups(str(tmp_path), bench_ledger.read_groups(ledger, started_us, ended_us))
    )

    assert measured["ledger_writes_payments"] == 90
    assert measured["ledger_writes_group_size"] <= 30  # one group or more a call
    assert measured["ledger_writes_kb_per_payment"] > 0
    await asyncio.to_thread(_assert_written_again, ledger, started_us, tmp_path)


def _assert_written_again(ledger: Path, started_us: int, directory: Path) -> None:
    (copy,) = directory.glob("ledger-writes-*/agentflow.db")
    # Everything the engine wrote for the payments (the deposits came before) is written again, row for row.
    for table, order, numbered in (
        (payments, "payment_id", ""),
        (idempotency, "key", ""),
        (transfers, "transfer_id", "transfer_id"),
        (events, "sequence", "sequence"),
    ):
        again = _table(copy, table, 0, order, numbered)
        assert again == _table(ledger, table, started_us, order, numbered), table.name
        assert again, table.name
    # Each payer's balance and volume, as they ended (each group writes them as they were after it).
    for table, order, numbered in ((accounts, "address", "update_time_us"), (volume_daily, "payer", "")):
        assert _table(copy, table, 0, order, numbered) == _table(ledger, table, 0, order, numbered), table.name
