"""Reads of balances and of the journal, for the API."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import sqlalchemy as sa

from ..engine.model import Balance, Bucket, TransferKind
from .database import Database
from .schema import accounts, transfers


@dataclass(frozen=True, slots=True)
class Entry:
    """One side of a journal transfer, as seen from one account."""

    entry_id: int
    transfer_id: int
    address: str
    token: str
    bucket: Bucket
    delta: int
    kind: TransferKind
    reference: str
    create_time_us: int


class AccountReader:
    """Balances and journal entries (the engine is the only writer)."""

    def __init__(self, database: Database) -> None:
        self._database = database

    async def balances(self, address: str) -> dict[str, Balance]:
        """The address's balances by token; tokens never credited are absent."""
        async with self._database.connect() as connection:
            result = await connection.execute(sa.select(accounts).where(accounts.c.address == address))
            return {row.token: Balance(row.available, row.reserved, row.escrowed) for row in result}

    async def entries(self, address: str, token: str | None, *, before: int | None, limit: int) -> list[Entry]:
        """The address's journal lines newest first, up to ``limit`` of them before the entry id ``before``
        (from the newest when ``None``; ``limit + 1`` when more follow, so the caller knows).

        Entry ids are ``transfer_id * 2`` for the debit side and ``+ 1`` for the credit side, so both
        sides of a transfer between two buckets of one address are listed, in order.
        """
        c = transfers.c
        # Each transfer gives this address one or two lines (the first maybe none, being half read):
        # limit + 2 transfers always give limit + 1 lines when that many exist.
        wanted = limit + 2
        # One query per side, each walking its (address, transfer_id) index back from the cursor, merged
        # here: with "debit = a OR credit = a" the database gathered and sorted every transfer the address
        # ever made for each page (33 ms for 6,000 of them in SQLite, against 0.4 ms this way).
        rows: dict[int, sa.Row[Any]] = {}
        async with self._database.connect() as connection:
            for column in (c.debit_address, c.credit_address):
                query = sa.select(transfers).where(column == address)
                if before is not None:
                    query = query.where(c.transfer_id <= before // 2)
                if token is not None:
                    query = query.where(c.token == token)
                for row in await connection.execute(query.order_by(c.transfer_id.desc()).limit(wanted)):
                    rows[row.transfer_id] = row  # a transfer between two buckets of the address comes twice
        lines: list[Entry] = []
        for row in (rows[transfer_id] for transfer_id in sorted(rows, reverse=True)[:wanted]):
            for side, (owner, bucket, sign) in (
                (1, (row.credit_address, row.credit_bucket, 1)),
                (0, (row.debit_address, row.debit_bucket, -1)),
            ):
                entry_id = row.transfer_id * 2 + side
                if owner != address or (before is not None and entry_id >= before):
                    continue
                lines.append(
                    Entry(
                        entry_id=entry_id,
                        transfer_id=row.transfer_id,
                        address=owner,
                        token=row.token,
                        bucket=Bucket(bucket),
                        delta=sign * row.amount,
                        kind=TransferKind(row.kind),
                        reference=row.reference,
                        create_time_us=row.create_time_us,
                    )
                )
        return lines[: limit + 1]
