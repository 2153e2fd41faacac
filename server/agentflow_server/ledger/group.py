"""What one engine group reads before it applies its commands, and the rows it writes in one transaction."""

from __future__ import annotations

import dataclasses
import functools
import json
import operator
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any

import sqlalchemy as sa
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.engine import Connection

from ..engine.model import Balance, Batch, Escrow, Payment
from .escrows import escrow_row
from .payments import payment_row, payment_state_row
from .schema import (
    accounts,
    batches,
    chain_state,
    escrows,
    events,
    idempotency,
    payments,
    transfers,
    volume_daily,
)
from .types import Amount

AccountKey = tuple[str, str]
"""(address, token)."""

RecordWrite = Callable[[Connection], None]
"""Rows kept beside the ledger's own (webhook endpoints and deliveries), written in a group's transaction.

It must pickle (a module-level function, or a ``functools.partial`` of one over plain data): the group
may be written by a writer process."""


@dataclass(frozen=True, slots=True)
class IdempotencyRecord:
    """A request id already used: the hash of what it asked, and the resource it made."""

    request_hash: str
    resource: str
    create_time_us: int


@dataclass
class GroupWrite:
    """Every row a group of commands changes. Accounts and volumes hold their final values."""

    time_us: int
    accounts: dict[AccountKey, Balance] = field(default_factory=dict)
    transfers: list[dict[str, Any]] = field(default_factory=list)
    new_payments: list[Payment] = field(default_factory=list)
    changed_payments: dict[str, Payment] = field(default_factory=dict)
    # Escrows made or changed, as they are at the end of the group.
    escrows: dict[str, Escrow] = field(default_factory=dict)
    idempotency: list[dict[str, Any]] = field(default_factory=list)
    events: list[dict[str, Any]] = field(default_factory=list)
    volumes: dict[tuple[str, str, int], int] = field(default_factory=dict)
    # Rows as they are when staged: batches and chain facts are not changed again within a group.
    batch_rows: dict[str, dict[str, Any]] = field(default_factory=dict)
    chain_state: dict[str, str] = field(default_factory=dict)
    # Written last, in the order the group's commands staged them.
    records: list[RecordWrite] = field(default_factory=list)
    # Filled by seal(): the rows of the objects above as they are at the end of the group.
    payment_rows: list[dict[str, Any]] = field(default_factory=list)
    changed_rows: list[dict[str, Any]] = field(default_factory=list)
    account_rows: list[dict[str, Any]] = field(default_factory=list)
    escrow_rows: list[dict[str, Any]] = field(default_factory=list)

    def seal(self) -> None:
        """Freeze the group's payments and balances into rows.

        The rows are written on another thread while the next group already changes the same objects,
        so they are copied here, on the engine's own thread, when the group is complete.
        """
        self.payment_rows = [payment_row(p) for p in self.new_payments]
        # A payment made and changed in the same group is inserted as it ends.
        new = {p.payment_id for p in self.new_payments}
        self.changed_rows = [payment_state_row(p) for p in self.changed_payments.values() if p.payment_id not in new]
        self.escrow_rows = [escrow_row(e) for e in self.escrows.values()]
        self.account_rows = [
            {
                "address": address,
                "token": token,
                "available": balance.available,
                "reserved": balance.reserved,
                "escrowed": balance.escrowed,
                "update_time_us": self.time_us,
            }
            for (address, token), balance in self.accounts.items()
        ]

    def transfer(
        self,
        kind: int,
        token: str,
        debit: tuple[str, int],
        credit: tuple[str, int],
        amount: int,
        reference: str,
    ) -> None:
        """Journal a movement of ``amount`` from ``debit`` to ``credit`` (each an (address, bucket))."""
        self.transfers.append(
            {
                "kind": kind,
                "token": token,
                "debit_address": debit[0],
                "debit_bucket": debit[1],
                "credit_address": credit[0],
                "credit_bucket": credit[1],
                "amount": amount,
                "reference": reference,
                "create_time_us": self.time_us,
            }
        )

    def batch(self, batch: Batch) -> None:
        """Write the batch as it is now."""
        self.batch_rows[batch.batch_id] = batch_row(batch)

    def event(self, type_: str, resource: str, addresses: Iterable[str], task_id: str, payload: bytes) -> None:
        """Record an event; its sequence number comes from the database at commit."""
        self.events.append(
            {
                "type": type_,
                "create_time_us": self.time_us,
                "resource": resource,
                # EIP-55 addresses need no JSON escaping: join them instead of paying for json.dumps.
                "addresses": '["' + '","'.join(sorted(set(addresses))) + '"]',
                "task_id": task_id,
                "payload": payload,
            }
        )


def batch_row(batch: Batch) -> dict[str, Any]:
    """The row of a batch."""
    return {
        "batch_id": batch.batch_id,
        "chain_batch_id": batch.chain_batch_id,
        "status": int(batch.status),
        "payment_ids": json.dumps(batch.payment_ids, separators=(",", ":")),
        "transactions": json.dumps([dataclasses.asdict(t) for t in batch.transactions], separators=(",", ":")),
        "attempts": batch.attempts,
        "transaction_hash": batch.transaction_hash,
        "block_number": batch.block_number,
        "block_hash": batch.block_hash,
        "gas_used": batch.gas_used,
        "gas_price": batch.gas_price,
        "failure_reason": batch.failure_reason,
        "create_time_us": batch.create_time_us,
        "update_time_us": batch.update_time_us,
        "submit_time_us": batch.submit_time_us,
        "confirm_time_us": batch.confirm_time_us,
    }


def load_accounts(connection: Connection, keys: Iterable[AccountKey]) -> dict[AccountKey, Balance]:
    """The stored balances of these accounts; accounts never credited are absent."""
    wanted = set(keys)
    if not wanted:
        return {}
    addresses = {address for address, _ in wanted}
    result = connection.execute(sa.select(accounts).where(accounts.c.address.in_(addresses)))
    found: dict[AccountKey, Balance] = {}
    for row in result:
        key = (row.address, row.token)
        if key in wanted:
            found[key] = Balance(row.available, row.reserved, row.escrowed)
    return found


def idempotency_key(scope: str, request_id: str) -> str:
    """The stored key of a request id within its scope."""
    return f"{scope}|{request_id}"


_SELECT_IDEMPOTENCY: dict[tuple[str, int], str] = {}


def load_idempotency(
    connection: Connection, keys: Iterable[tuple[str, str]]
) -> dict[tuple[str, str], IdempotencyRecord]:
    """The records of these (scope, request id) pairs that exist."""
    wanted = sorted({idempotency_key(scope, request_id) for scope, request_id in keys})
    if not wanted:
        return {}
    # One primary-key IN list, compiled once per dialect and length and run through the driver: SQLAlchemy's
    # expansion of a long IN list cost more than the lookup.
    cache_key = (connection.dialect.name, len(wanted))
    sql = _SELECT_IDEMPOTENCY.get(cache_key)
    if sql is None:
        c = idempotency.c
        statement = sa.select(c.scope, c.request_id, c.request_hash, c.resource, c.create_time_us).where(
            c.key.in_([sa.bindparam(f"k{i}") for i in range(len(wanted))])
        )
        sql = _SELECT_IDEMPOTENCY[cache_key] = statement.compile(dialect=connection.dialect).string
    # Positional (SQLite's qmark) or named (psycopg's pyformat) parameters, as the driver takes them.
    parameters = tuple(wanted) if connection.dialect.positional else {f"k{i}": key for i, key in enumerate(wanted)}
    # Straight through the driver's cursor: SQLAlchemy's execution path (its context and result objects) took
    # about three times as long as the lookup itself, once for every group. The driver's errors are turned
    # into ours by the connection this runs on (database.storage_errors), and end_read ends what it begins.
    cursor = connection.connection.cursor()
    try:
        cursor.execute(sql, parameters)
        rows = cursor.fetchall()
    finally:
        cursor.close()
    return {
        (scope, request_id): IdempotencyRecord(request_hash, resource, create_time_us)
        for scope, request_id, request_hash, resource, create_time_us in rows
    }


def end_read(connection: Connection) -> None:
    """End a read's transaction, so that the next read sees newer commits: SQLAlchemy's, and the one a read
    made straight through the driver began there (psycopg's; the driver does nothing when none is open)."""
    connection.rollback()
    connection.connection.rollback()


# The tables a group inserts into, and the keys of those it upserts.
_INSERTS: dict[str, tuple[sa.Table, tuple[str, ...] | None]] = {
    "payments": (payments, None),
    "escrows": (escrows, ("escrow_id",)),
    "accounts": (accounts, ("address", "token")),
    "transfers": (transfers, None),
    "idempotency": (idempotency, None),
    "events": (events, None),
    "volume_daily": (volume_daily, ("payer", "token", "day")),
    "batches": (batches, ("batch_id",)),
    "chain_state": (chain_state, ("key",)),
}
# The tables a group updates by key: changed payments, by their state columns only (a whole-row upsert bound
# three times the values and rewrote the payer, payee and task index entries for nothing).
_UPDATES: dict[str, tuple[sa.Table, str]] = {"payments_changed": (payments, "payment_id")}


def _row_statement(dialect: str, name: str, keys: tuple[str, ...]) -> Any:
    """The statement that writes one row with these keys; its parameters are named ``r_{key}``."""
    if name in _UPDATES:
        table, key = _UPDATES[name]
        return (
            sa.update(table)
            .where(table.c[key] == sa.bindparam(f"r_{key}", type_=table.c[key].type))
            .values({k: sa.bindparam(f"r_{k}", type_=table.c[k].type) for k in keys if k != key})
        )
    table, conflict = _INSERTS[name]
    # ON CONFLICT ... DO UPDATE exists in both databases, under each dialect's own construct.
    insert = postgresql.insert(table) if dialect == "postgresql" else sqlite.insert(table)
    insert = insert.values({key: sa.bindparam(f"r_{key}", type_=table.c[key].type) for key in keys})
    if conflict is not None:
        insert = insert.on_conflict_do_update(
            index_elements=list(conflict),
            set_={key: insert.excluded[key] for key in keys if key not in conflict},
        )
    return insert


@dataclass(frozen=True)
class _Compiled:
    sql: str
    # A row's parameters as the driver takes them: a tuple in the statement's order (SQLite's qmark), or a
    # mapping by name (psycopg's pyformat).
    row: Callable[[dict[str, Any]], tuple[Any, ...] | dict[str, Any]]


_compiled: dict[tuple[str, str, tuple[str, ...]], _Compiled] = {}


def _statement(connection: Connection, name: str, keys: tuple[str, ...]) -> _Compiled:
    """The statement for a row with these keys, compiled once per dialect."""
    dialect = connection.dialect
    cache_key = (dialect.name, name, keys)
    found = _compiled.get(cache_key)
    if found is None:
        compiled = _row_statement(dialect.name, name, keys).compile(dialect=dialect)
        found = _compiled[cache_key] = _Compiled(compiled.string, _row_parameters(compiled.positiontup, keys))
    return found


def _row_parameters(
    positions: list[str] | None, keys: tuple[str, ...]
) -> Callable[[dict[str, Any]], tuple[Any, ...] | dict[str, Any]]:
    """How a row becomes the parameters of its statement (whose parameters are named ``r_{key}``)."""
    if positions is None:  # named parameters
        return lambda row: {f"r_{key}": row[key] for key in keys}
    order = [p.removeprefix("r_") for p in positions]
    assert sorted(order) == sorted(keys)
    getter = operator.itemgetter(*order)
    # itemgetter of one key returns the value itself, not a 1-tuple.
    return (lambda row: (getter(row),)) if len(order) == 1 else getter


def _execute_many(connection: Connection, name: str, rows: list[dict[str, Any]]) -> None:
    """Write rows with one statement run for each, straight through the driver's ``executemany``.

    The statement is SQLAlchemy's, compiled once for the connection's dialect; amounts still go through
    :class:`Amount`'s conversion. In the writer process, ``executemany`` of the one-row statement measured
    about a quarter less time than multi-row ``INSERT ... VALUES (...), (...)`` in chunks, which had been
    chosen when the writer was a thread taking turns with the event loop for the GIL (decision 0004).
    """
    keys = tuple(rows[0])
    nullable = _null_by_default(name)
    if nullable:
        # A plain insert leaves out the columns that are NULL in every row (a new payment's settlement, say):
        # the driver binds None through Python's adaptation protocol, about half a microsecond each.
        keys = tuple(key for key in keys if key not in nullable or any(row[key] is not None for row in rows))
    dialect = connection.dialect
    convert = Amount().process_bind_param
    amounts = [key for key in keys if key in _amount_columns(name)]
    for row in rows:
        for column in amounts:
            row[column] = convert(row[column], dialect)
    statement = _statement(connection, name, keys)
    connection.exec_driver_sql(statement.sql, [statement.row(row) for row in rows])


@functools.cache
def _null_by_default(name: str) -> frozenset[str]:
    """The columns a plain insert into this table may leave out to write NULL (none for updates and upserts,
    which would then keep the old value)."""
    if name in _UPDATES or _INSERTS[name][1] is not None:
        return frozenset()
    table = _INSERTS[name][0]
    return frozenset(c.name for c in table.columns if c.nullable and c.server_default is None and c.default is None)


@functools.cache
def _amount_columns(name: str) -> frozenset[str]:
    table = _UPDATES[name][0] if name in _UPDATES else _INSERTS[name][0]
    return frozenset(c.name for c in table.columns if isinstance(c.type, Amount))


TableRows = list[tuple[str, list[dict[str, Any]]]]
"""A group's rows by table, in the order they are written."""


def group_rows(group: GroupWrite) -> TableRows:
    """A sealed group's rows by table, in the order they are written; tables with none are left out.

    Plain data (names, dicts of ints, strings and bytes), so they can cross to a writer process."""
    tables: TableRows = [
        ("payments", group.payment_rows),
        ("payments_changed", group.changed_rows),
        ("escrows", group.escrow_rows),
        ("accounts", group.account_rows),
        ("transfers", group.transfers),
        ("idempotency", group.idempotency),
        ("events", group.events),
        (
            "volume_daily",
            [
                {"payer": payer, "token": token, "day": day, "amount": amount}
                for (payer, token, day), amount in group.volumes.items()
            ],
        ),
        ("batches", list(group.batch_rows.values())),
        (
            "chain_state",
            [{"key": k, "value": v, "update_time_us": group.time_us} for k, v in group.chain_state.items()],
        ),
    ]
    return [(name, rows) for name, rows in tables if rows]


def write_rows(connection: Connection, tables: TableRows, records: Iterable[RecordWrite]) -> None:
    """Write a group's rows and then its records; the caller commits them as one transaction."""
    for name, rows in tables:
        _execute_many(connection, name, rows)
    for write in records:
        write(connection)


def write_group(connection: Connection, group: GroupWrite) -> None:
    """Write a sealed group's rows; the caller commits them as one transaction."""
    write_rows(connection, group_rows(group), group.records)
