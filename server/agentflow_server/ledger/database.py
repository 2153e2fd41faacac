"""The database handle: engine set-up, migrations at start, and the boundary where driver errors become ours."""

from __future__ import annotations

import contextlib
import logging
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import sqlalchemy.exc
from alembic import command
from alembic.config import Config
from sqlalchemy import event
from sqlalchemy.engine import Connection, make_url
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine, create_async_engine

log = logging.getLogger(__name__)

_MIGRATIONS = Path(__file__).parent / "migrations"


class StorageError(Exception):
    """The ledger database failed: unreachable, full, or refused a statement."""


def _sqlite_pragmas(dbapi_connection: Any, _record: Any) -> None:
    # WAL lets readers run beside the writer; FULL makes every commit durable
    # before the caller is answered, which is what "acknowledged" promises.
    cursor = dbapi_connection.cursor()
    cursor.execute("PRAGMA journal_mode=WAL")
    cursor.execute("PRAGMA synchronous=FULL")
    cursor.execute("PRAGMA foreign_keys=ON")
    cursor.execute("PRAGMA busy_timeout=5000")
    cursor.close()


class Database:
    """An async SQLAlchemy engine over the ledger, migrated to the newest schema by :meth:`open`."""

    def __init__(self, url: str) -> None:
        self.url = make_url(url)
        self.engine: AsyncEngine = create_async_engine(self.url)
        if self.url.get_backend_name() == "sqlite":
            event.listen(self.engine.sync_engine, "connect", _sqlite_pragmas)

    @classmethod
    async def open(cls, url: str) -> Database:
        """Connect, create the SQLite file's directory if needed, and apply pending migrations."""
        database = cls(url)
        if database.url.get_backend_name() == "sqlite" and database.url.database:
            Path(database.url.database).parent.mkdir(parents=True, exist_ok=True)
        async with database.connect() as connection:
            await connection.run_sync(_upgrade)
            await connection.commit()
        return database

    @contextlib.asynccontextmanager
    async def connect(self) -> AsyncIterator[AsyncConnection]:
        """A connection; driver errors leave it as :class:`StorageError`."""
        with _storage_errors():
            async with self.engine.connect() as connection:
                yield connection

    @contextlib.asynccontextmanager
    async def transaction(self) -> AsyncIterator[AsyncConnection]:
        """A connection inside a transaction, committed when the block ends without an exception."""
        with _storage_errors():
            async with self.engine.begin() as connection:
                yield connection

    async def close(self) -> None:
        """Close every pooled connection."""
        await self.engine.dispose()


@contextlib.contextmanager
def _storage_errors() -> Iterator[None]:
    """The boundary: SQLAlchemy's and the driver's errors become :class:`StorageError`."""
    try:
        yield
    except (sqlalchemy.exc.SQLAlchemyError, OSError) as error:
        raise StorageError(str(error)) from error


def _upgrade(connection: Connection) -> None:
    config = Config()
    config.set_main_option("script_location", str(_MIGRATIONS))
    config.attributes["connection"] = connection
    command.upgrade(config, "head")
