"""The event log in the database: what every stream, listing and (later) webhook reads.

The engine writes events in the transaction of the change they record; sequence numbers come from the
database and, with one writer, grow in commit order. So "every event after N" read after a commit is
complete: no event with a smaller number can appear later.
"""

from __future__ import annotations

import json
from collections.abc import Collection
from dataclasses import dataclass

import sqlalchemy as sa
from sqlalchemy.engine import Connection

from .database import Database
from .schema import events


@dataclass(frozen=True, slots=True)
class StoredEvent:
    """One event as the log holds it: its header and the serialized resource after the change."""

    sequence: int
    type: str
    create_time_us: int
    resource: str
    addresses: tuple[str, ...]
    task_id: str
    payload: bytes


def load_events(
    connection: Connection,
    after: int,
    limit: int,
    *,
    resource: str | None = None,
    task_id: str | None = None,
    types: Collection[str] = (),
    families: Collection[str] = (),
    addresses: Collection[str] | None = None,
) -> list[StoredEvent]:
    """Up to ``limit`` events with a sequence above ``after``, oldest first, narrowed in SQL: by resource,
    task, types or type families (either matches), and ``addresses`` (any of them named; the column is a
    JSON list of EIP-55 addresses, which hold no LIKE wildcard)."""
    c = events.c
    query = sa.select(events).where(c.sequence > after)
    if resource is not None:
        query = query.where(c.resource == resource)
    if task_id is not None:
        query = query.where(c.task_id == task_id)
    if types or families:
        query = query.where(sa.or_(c.type.in_(list(types)), *(c.type.like(f"{family}.%") for family in families)))
    if addresses is not None:
        query = query.where(sa.or_(sa.false(), *(c.addresses.like(f'%"{address}"%') for address in addresses)))
    rows = connection.execute(query.order_by(c.sequence).limit(limit))
    return [
        StoredEvent(
            sequence=row.sequence,
            type=row.type,
            create_time_us=row.create_time_us,
            resource=row.resource,
            addresses=tuple(json.loads(row.addresses)),
            task_id=row.task_id,
            payload=row.payload,
        )
        for row in rows
    ]


def head_sequence(connection: Connection) -> int:
    """The newest sequence in the log; 0 when it is empty."""
    return int(connection.execute(sa.select(sa.func.coalesce(sa.func.max(events.c.sequence), 0))).scalar_one())


class EventReader:
    """Reads the event log for streams and listings (the engine is the only writer)."""

    def __init__(self, database: Database) -> None:
        self._database = database

    async def head(self) -> int:
        """The newest sequence in the log; 0 when it is empty."""
        async with self._database.connect() as connection:
            return await connection.run_sync(head_sequence)

    async def after(
        self,
        after: int,
        limit: int,
        *,
        resource: str | None = None,
        task_id: str | None = None,
        types: Collection[str] = (),
        families: Collection[str] = (),
        addresses: Collection[str] | None = None,
    ) -> list[StoredEvent]:
        """Up to ``limit`` events after the sequence ``after``, oldest first, narrowed as :func:`load_events`."""
        async with self._database.connect() as connection:
            return await connection.run_sync(
                lambda c: load_events(
                    c,
                    after,
                    limit,
                    resource=resource,
                    task_id=task_id,
                    types=types,
                    families=families,
                    addresses=addresses,
                )
            )
