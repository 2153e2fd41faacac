"""What one engine group reads before it applies its commands, and the rows it writes in one transaction."""

from __future__ import annotations

import json
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

import sqlalchemy as sa
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.ext.asyncio import AsyncConnection

from ..engine.model import Balance, Payment
from .payments import payment_row
from .schema import accounts, events, idempotency, payments, transfers, volume_daily

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


async def load_accounts(connection: AsyncConnection, keys: Iterable[AccountKey]) -> dict[AccountKey, Balance]:
    """The stored balances of these accounts; accounts never credited are absent."""
    wanted = set(keys)
    if not wanted:
        return {}
    addresses = {address for address, _ in wanted}
    result = await connection.execute(sa.select(accounts).where(accounts.c.address.in_(addresses)))
    found: dict[AccountKey, Balance] = {}
    for row in result:
        key = (row.address, row.token)
        if key in wanted:
            found[key] = Balance(row.available, row.reserved, row.escrowed)
    return found


async def load_idempotency(
    connection: AsyncConnection, keys: Iterable[tuple[str, str]]
) -> dict[tuple[str, str], IdempotencyRecord]:
    """The records of these (scope, request id) pairs that exist."""
    wanted = set(keys)
    if not wanted:
        return {}
    ids = {request_id for _, request_id in wanted}
    result = await connection.execute(sa.select(idempotency).where(idempotency.c.request_id.in_(ids)))
    return {
        (row.scope, row.request_id): IdempotencyRecord(row.request_hash, row.resource, row.create_time_us)
        for row in result
        if (row.scope, row.request_id) in wanted
    }


def _upsert(connection: AsyncConnection, table: sa.Table, keys: list[str]) -> Any:
    # ON CONFLICT ... DO UPDATE exists in both databases, under each dialect's own construct.
    insert = postgresql.insert(table) if connection.dialect.name == "postgresql" else sqlite.insert(table)
    return insert.on_conflict_do_update(
        index_elements=keys,
        set_={c.name: insert.excluded[c.name] for c in table.columns if c.name not in keys},
    )


async def write_group(connection: AsyncConnection, group: GroupWrite) -> None:
    """Write a group's rows; the caller's transaction makes them one commit."""
    if group.new_payments:
        await connection.execute(payments.insert(), [payment_row(p) for p in group.new_payments])
    if group.changed_payments:
        c = payments.c
        rows = [payment_row(p) for p in group.changed_payments.values()]
        changed = ("status", "update_time_us", "failure_reason", "batch_id", "transaction_hash", "block_number")
        await connection.execute(
            payments.update()
            .where(c.payment_id == sa.bindparam("b_payment_id"))
            .values(
                {
                    **{name: sa.bindparam(f"b_{name}") for name in changed},
                    "gas_used": sa.bindparam("b_gas_used", type_=c.gas_used.type),
                    "gas_cost_wei": sa.bindparam("b_gas_cost_wei", type_=c.gas_cost_wei.type),
                    "complete_time_us": sa.bindparam("b_complete_time_us"),
                }
            ),
            [{f"b_{key}": value for key, value in row.items()} for row in rows],
        )
    if group.accounts:
        await connection.execute(
            _upsert(connection, accounts, ["address", "token"]),
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
        await connection.execute(transfers.insert(), group.transfers)
    if group.idempotency:
        await connection.execute(idempotency.insert(), group.idempotency)
    if group.events:
        await connection.execute(events.insert(), group.events)
    if group.volumes:
        await connection.execute(
            _upsert(connection, volume_daily, ["payer", "token", "day"]),
            [
                {"payer": payer, "token": token, "day": day, "amount": amount}
                for (payer, token, day), amount in group.volumes.items()
            ],
        )
