"""The ledger's part of bulk acceptance: the bulk phase's own groups, written again with nothing else running.

After ``./scripts/bench`` has stopped its server, this reads back from that server's ledger the groups its
engine committed during the bulk phase (every row of a group carries the group's one time), and writes them
again, group by group, into a new ledger on the same disk: the same rows of the same tables (payments, the
journal, idempotency records, events, balances, volumes), through the same code the writer process runs
(``ledger.group.write_rows``), each group committed with SQLite's ``synchronous=FULL`` and the WAL
checkpointed every half second, as the server's checkpointer does. No server, no gRPC,
no engine, no pickling: what is left is SQLite, its indexes and the disk, so bulk acceptance cannot run
faster than this on this machine with this schema, whatever the server does.

The secondary indexes behind ListPayments and ListLedgerEntries (payer, payee, task, status; a journal
entry's two addresses) and the idempotency records' key are written with every payment; each group rewrites
whole pages of each, which is why a payment writes tens of kilobytes to the WAL.
"""

from __future__ import annotations

import asyncio
import collections
import sys
import tempfile
import time
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import sqlalchemy as sa
from sqlalchemy.engine import Connection, make_url

from agentflow_server.engine.engine import EngineConfig
from agentflow_server.ledger.database import Database, sync_engine
from agentflow_server.ledger.group import TableRows, write_rows
from agentflow_server.ledger.schema import accounts, events, idempotency, payments, transfers, volume_daily

# Enough groups for a steady rate (a few seconds of writes); memory stays small.
_MAX_PAYMENTS = 30_000
_CHECKPOINT_INTERVAL = EngineConfig().checkpoint_interval


def read_groups(ledger: Path, start_us: int, end_us: int) -> list[TableRows]:
    """The groups the engine committed between ``start_us`` and ``end_us`` that made payments, in order, as
    the writer process receives them (the table order of ``ledger.group.group_rows``), up to about
    30,000 payments. Balances and volumes are as the ledger holds them at the end."""
    engine = sync_engine(make_url(f"sqlite:///{ledger}"))
    try:
        with engine.connect() as connection:
            sizes = connection.execute(
                sa.select(payments.c.create_time_us, sa.func.count())
                .where(payments.c.create_time_us.between(start_us, end_us))
                .group_by(payments.c.create_time_us)
                .order_by(payments.c.create_time_us)
            ).all()
            times, total = [], 0
            for time_us, count in sizes:
                if total >= _MAX_PAYMENTS:
                    break
                times.append(time_us)
                total += count
            if not times:
                return []
            window = (times[0], times[-1])
            by_time = {
                name: _rows_by_time(connection, table, window, drop)
                for name, table, drop in (
                    ("payments", payments, ()),
                    ("transfers", transfers, ("transfer_id",)),  # assigned by the database
                    ("idempotency", idempotency, ()),
                    ("events", events, ("sequence",)),  # assigned by the database
                )
            }
            balances = {(r["address"], r["token"]): r for r in _rows(connection, sa.select(accounts))}
            volumes = collections.defaultdict(list)
            for row in _rows(connection, sa.select(volume_daily)):
                volumes[row["payer"], row["token"]].append(row)
    finally:
        engine.dispose()
    groups = []
    for time_us in times:
        made = by_time["payments"].get(time_us, [])
        # Accepting a payment changes its payer's balance (available to reserved) and volume, nothing else.
        payers = {(p["payer"], p["token"]) for p in made}
        tables: TableRows = [
            ("payments", made),
            ("accounts", [{**balances[key], "update_time_us": time_us} for key in sorted(payers) if key in balances]),
            ("transfers", by_time["transfers"].get(time_us, [])),
            ("idempotency", by_time["idempotency"].get(time_us, [])),
            ("events", by_time["events"].get(time_us, [])),
            ("volume_daily", [row for key in sorted(payers) for row in volumes.get(key, [])]),
        ]
        groups.append([(name, rows) for name, rows in tables if rows])
    return groups


def _rows(connection: Connection, statement: Any) -> Iterable[dict[str, Any]]:
    return (dict(row) for row in connection.execute(statement).mappings())


def _rows_by_time(
    connection: Connection, table: sa.Table, window: tuple[int, int], drop: tuple[str, ...]
) -> dict[int, list[dict[str, Any]]]:
    found: dict[int, list[dict[str, Any]]] = collections.defaultdict(list)
    statement = sa.select(table).where(table.c.create_time_us.between(*window))
    for row in _rows(connection, statement):
        for key in drop:
            del row[key]
        found[row["create_time_us"]].append(row)
    return found


def _written_bytes() -> int:
    """Bytes this thread has handed to write(2) and its kind so far."""
    for line in Path("/proc/thread-self/io").read_text().splitlines():
        if line.startswith("wchar:"):
            return int(line.split()[1])
    raise RuntimeError("no wchar in /proc/thread-self/io")


def write_groups(directory: str, groups: list[TableRows]) -> dict[str, Any]:
    """Write ``groups`` into a new ledger in ``directory``, committing each: rate, CPU and bytes a payment.
    The ledger is left there for the directory's owner to delete (deleting it mid-run stalls the disk)."""
    path = Path(tempfile.mkdtemp(prefix="ledger-writes-", dir=directory)) / "agentflow.db"
    # Migrated as the server migrates its ledger; then written through the writer's own kind of connection.
    asyncio.run(_migrate(f"sqlite+aiosqlite:///{path}"))
    engine = sync_engine(make_url(f"sqlite:///{path}"))
    count = sum(len(rows) for tables in groups for name, rows in tables if name == "payments")
    try:
        with engine.connect() as connection:
            # The WAL copied back into the database file as the server does it, at the engine's checkpoint
            # interval (here between two groups rather than beside them), not by SQLite's commits.
            connection.exec_driver_sql("PRAGMA wal_autocheckpoint=0")
            written, cpu, started = _written_bytes(), time.thread_time(), time.perf_counter()
            checkpointed = started
            for tables in groups:
                write_rows(connection, tables, ())
                connection.commit()
                if time.perf_counter() - checkpointed >= _CHECKPOINT_INTERVAL:
                    connection.exec_driver_sql("PRAGMA wal_checkpoint(PASSIVE)")
                    connection.commit()
                    checkpointed = time.perf_counter()
            elapsed = time.perf_counter() - started
            cpu, written = time.thread_time() - cpu, _written_bytes() - written
    finally:
        engine.dispose()
    return {
        "ledger_writes_payments_per_s": round(count / elapsed, 1),
        "ledger_writes_cpu_us": round(cpu / count * 1e6, 1),
        "ledger_writes_kb_per_payment": round(written / count / 1024, 1),
        "ledger_writes_group_size": round(count / len(groups), 1),
        "ledger_writes_payments": count,
    }


async def _migrate(url: str) -> None:
    database = await Database.open(url)
    await database.close()


def measure_ledger_writes(ledger: Path, directory: str, start_us: int, end_us: int) -> dict[str, Any]:
    """Read the groups committed to ``ledger`` between ``start_us`` and ``end_us`` and write them again into a
    new ledger in ``directory``; ``./scripts/bench`` calls it with its bulk phase's window."""
    groups = read_groups(ledger, start_us, end_us)
    if not groups:
        raise SystemExit(f"bench: no payments in {ledger} between {start_us} and {end_us}")
    return write_groups(directory, groups)


if __name__ == "__main__":
    import json

    if len(sys.argv) != 4:
        raise SystemExit("usage: bench_ledger.py LEDGER START_US END_US  (times in microseconds since the epoch)")
    with tempfile.TemporaryDirectory(prefix="agentflow-bench-") as root:
        print(json.dumps(measure_ledger_writes(Path(sys.argv[1]), root, int(sys.argv[2]), int(sys.argv[3]))))
