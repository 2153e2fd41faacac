"""Settlement batches and chain facts in the database: reads (the engine is the only writer)."""

from __future__ import annotations

import json
from collections.abc import Mapping
from typing import Any

import sqlalchemy as sa

from ..engine.model import Batch, BatchStatus, Payment, SentTransaction
from .database import Database
from .payments import load_payments
from .schema import batches, chain_state


def batch_from_row(row: Mapping[Any, Any]) -> Batch:
    """The batch a row holds."""
    return Batch(
        batch_id=row["batch_id"],
        chain_batch_id=row["chain_batch_id"],
        status=BatchStatus(row["status"]),
        payment_ids=list(json.loads(row["payment_ids"])),
        create_time_us=row["create_time_us"],
        update_time_us=row["update_time_us"],
        transactions=[SentTransaction(**t) for t in json.loads(row["transactions"])],
        attempts=row["attempts"],
        transaction_hash=row["transaction_hash"],
        block_number=row["block_number"],
        block_hash=row["block_hash"],
        gas_used=row["gas_used"],
        gas_price=row["gas_price"],
        failure_reason=row["failure_reason"],
        submit_time_us=row["submit_time_us"],
        confirm_time_us=row["confirm_time_us"],
    )


class BatchReader:
    """Reads batches, their payments, and the chain facts the ledger keeps."""

    def __init__(self, database: Database) -> None:
        self._database = database

    async def get(self, batch_id: str) -> Batch | None:
        async with self._database.connect() as connection:
            row = (await connection.execute(sa.select(batches).where(batches.c.batch_id == batch_id))).first()
        return batch_from_row(row._mapping) if row is not None else None

    async def unfinished(self) -> list[Batch]:
        """Batches formed or sent but not confirmed or failed, oldest first."""
        status = batches.c.status
        query = (
            sa.select(batches)
            .where(status.in_([int(BatchStatus.PENDING), int(BatchStatus.SUBMITTED)]))
            .order_by(batches.c.batch_id)
        )
        async with self._database.connect() as connection:
            return [batch_from_row(row._mapping) for row in await connection.execute(query)]

    async def payments(self, batch: Batch) -> list[Payment]:
        """The batch's payments in item order."""
        async with self._database.connect() as connection:
            found = await connection.run_sync(load_payments, batch.payment_ids)
        return [found[payment_id] for payment_id in batch.payment_ids if payment_id in found]

    async def chain_state(self) -> dict[str, str]:
        """Every chain fact recorded: identity, watcher positions."""
        async with self._database.connect() as connection:
            rows = await connection.execute(sa.select(chain_state.c.key, chain_state.c.value))
            return {key: value for key, value in rows}
