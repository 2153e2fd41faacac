"""Reads of balances and of the journal, for the API."""

from __future__ import annotations

from dataclasses import dataclass

import sqlalchemy as sa

from ..engine.model import Balance, Bucket, TransferKind
from .database import Database
from .newest import newest_matching_any
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
        query = sa.select(transfers)
        if before is not None:
            query = query.where(c.transfer_id <= before // 2)
        if token is not None:
            query = query.where(c.token == token)
        # Each transfer gives this address one or two lines (the first maybe none, being half read):
        # limit + 2 transfers always give limit + 1 lines when that many exist.
        async with self._database.connect() as connection:
            rows = await newest_matching_any(
                connection, query, c.transfer_id, [c.debit_address == address, c.credit_address == address], limit + 2
            )
        lines: list[Entry] = []
        for row in rows:
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
