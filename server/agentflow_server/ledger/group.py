"""What one engine group reads before it applies its commands, and the rows it writes in one transaction."""

from __future__ import annotations

import json
import operator
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any

import sqlalchemy as sa
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.engine import Connection

from ..engine.model import Balance, Payment
from .payments import payment_row
from .schema import accounts, events, idempotency, payments, transfers, volume_daily
from .types import Amount

AccountKey = tuple[str, str]
"""(address, token)."""


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
    idempotency: list[dict[str, Any]] = field(default_factory=list)
    events: list[dict[str, Any]] = field(default_factory=list)
    volumes: dict[tuple[str, str, int], int] = field(default_factory=dict)

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

    def event(self, type_: str, resource: str, addresses: Iterable[str], task_id: str, payload: bytes) -> None:
        """Record an event; its sequence number comes from the database at commit."""
        self.events.append(
            {
                "type": type_,
                "create_time_us": self.time_us,
                "resource": resource,
                "addresses": json.dumps(sorted(set(addresses))),
                "task_id": task_id,
                "payload": payload,
            }
        )


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
    result = connection.exec_driver_sql(sql, tuple(wanted))
    return {
        (scope, request_id): IdempotencyRecord(request_hash, resource, create_time_us)
        for scope, request_id, request_hash, resource, create_time_us in result
    }


def _upsert(dialect: str, table: sa.Table, keys: list[str]) -> Any:
    # ON CONFLICT ... DO UPDATE exists in both databases, under each dialect's own construct.
    insert = postgresql.insert(table) if dialect == "postgresql" else sqlite.insert(table)
    return insert.on_conflict_do_update(
        index_elements=keys,
        set_={c.name: insert.excluded[c.name] for c in table.columns if c.name not in keys},
    )


def _update_payments() -> Any:
    c = payments.c
    changed = [
        "status",
        "update_time_us",
        "failure_reason",
        "batch_id",
        "transaction_hash",
        "block_number",
        "gas_used",
        "gas_cost_wei",
        "complete_time_us",
    ]
    return (
        payments.update()
        .where(c.payment_id == sa.bindparam("b_payment_id"))
        .values({name: sa.bindparam(f"b_{name}", type_=c[name].type) for name in changed})
    )


_STATEMENTS: dict[str, Callable[[str], Any]] = {
    "payments": lambda _: payments.insert(),
    "payments_update": lambda _: _update_payments(),
    "accounts": lambda dialect: _upsert(dialect, accounts, ["address", "token"]),
    "transfers": lambda _: transfers.insert(),
    "idempotency": lambda _: idempotency.insert(),
    "events": lambda _: events.insert(),
    "volume_daily": lambda dialect: _upsert(dialect, volume_daily, ["payer", "token", "day"]),
}


@dataclass(frozen=True)
class _Compiled:
    sql: str
    order: Callable[[dict[str, Any]], tuple[Any, ...]]
    amounts: tuple[str, ...]


_compiled: dict[tuple[str, str], _Compiled] = {}


def _statement(connection: Connection, name: str, keys: list[str]) -> _Compiled:
    """A statement compiled once per dialect for rows with these ``keys`` (the same every time), with the
    order of its positional parameters."""
    dialect = connection.dialect
    key = (dialect.name, name)
    found = _compiled.get(key)
    if found is None:
        compiled = _STATEMENTS[name](dialect.name).compile(dialect=dialect, column_keys=keys)
        positions = list(compiled.positiontup or ())
        types = {bind.key: bind.type for bind in compiled.binds.values()}
        amounts = tuple(p for p in positions if isinstance(types.get(p), Amount))
        getter = operator.itemgetter(*positions)
        found = _compiled[key] = _Compiled(compiled.string, lambda row: tuple(getter(row)), amounts)
    return found


def _execute_many(connection: Connection, name: str, rows: list[dict[str, Any]]) -> None:
    """Run one statement for many rows straight through the driver.

    SQLAlchemy's per-row parameter processing cost more than SQLite's own work on the hot path; the
    statement is still SQLAlchemy's, compiled for the connection's dialect, and amounts still go through
    :class:`Amount`'s conversion.
    """
    statement = _statement(connection, name, list(rows[0]))
    dialect = connection.dialect
    convert = Amount().process_bind_param
    for row in rows:
        for column in statement.amounts:
            row[column] = convert(row[column], dialect)
    connection.exec_driver_sql(statement.sql, [statement.order(row) for row in rows])


def write_group(connection: Connection, group: GroupWrite) -> None:
    """Write a group's rows; the caller commits them as one transaction."""
    if group.new_payments:
        _execute_many(connection, "payments", [payment_row(p) for p in group.new_payments])
    if group.changed_payments:
        _execute_many(
            connection,
            "payments_update",
            [{f"b_{k}": v for k, v in payment_row(p).items()} for p in group.changed_payments.values()],
        )
    if group.accounts:
        _execute_many(
            connection,
            "accounts",
            [
                {
                    "address": address,
                    "token": token,
                    "available": balance.available,
                    "reserved": balance.reserved,
                    "escrowed": balance.escrowed,
                    "update_time_us": group.time_us,
                }
                for (address, token), balance in group.accounts.items()
            ],
        )
    if group.transfers:
        _execute_many(connection, "transfers", group.transfers)
    if group.idempotency:
        _execute_many(connection, "idempotency", group.idempotency)
    if group.events:
        _execute_many(connection, "events", group.events)
    if group.volumes:
        _execute_many(
            connection,
            "volume_daily",
            [
                {"payer": payer, "token": token, "day": day, "amount": amount}
                for (payer, token, day), amount in group.volumes.items()
            ],
        )
