"""The database handle: engine set-up, migrations at start, and the boundary where driver errors become ours."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import sqlite3
from collections.abc import AsyncIterator, Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any, TypeVar

import sqlalchemy.exc
from alembic import command
from alembic.config import Config
from sqlalchemy import create_engine, event
from sqlalchemy.engine import URL, Connection, Engine, make_url
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine, create_async_engine
from sqlalchemy.pool import NullPool

log = logging.getLogger(__name__)

_MIGRATIONS = Path(__file__).parent / "migrations"

SQLITE_MIN_VERSION = (3, 24, 0)
"""The oldest SQLite library the ledger runs on: accounts, volumes and batches are upserts
(``INSERT ... ON CONFLICT DO UPDATE``)."""


class StorageError(Exception):
    """The ledger database failed: unreachable, full, or refused a statement."""


class WouldWait(StorageError):
    """A :class:`LocalConnection` read found the database locked: it would have had to wait, on the event
    loop, so it was not made. Make it on a thread instead."""


def _sqlite_pragmas(dbapi_connection: Any, _record: Any) -> None:
    # WAL lets readers run beside the writer; FULL makes every commit durable
    # before the caller is answered, which is what "acknowledged" promises.
    cursor = dbapi_connection.cursor()
    cursor.execute("PRAGMA journal_mode=WAL")
    cursor.execute("PRAGMA synchronous=FULL")
    cursor.execute("PRAGMA foreign_keys=ON")
    cursor.execute("PRAGMA busy_timeout=5000")
    cursor.close()


def _sqlite_pragmas_never_waiting(dbapi_connection: Any, record: Any) -> None:
    # For a connection on the event loop: not the 5 s the others wait for a lock.
    _sqlite_pragmas(dbapi_connection, record)
    dbapi_connection.execute("PRAGMA busy_timeout=0")


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
        if database.url.get_backend_name() == "sqlite":
            _require_sqlite(sqlite3.sqlite_version_info)
            if database.url.database:
                Path(database.url.database).parent.mkdir(parents=True, exist_ok=True)
        async with database.connect() as connection:
            await connection.run_sync(_upgrade)
            await connection.commit()
        return database

    @contextlib.asynccontextmanager
    async def connect(self) -> AsyncIterator[AsyncConnection]:
        """A connection; driver errors leave it as :class:`StorageError`."""
        with storage_errors():
            async with self.engine.connect() as connection:
                yield connection

    @contextlib.asynccontextmanager
    async def transaction(self) -> AsyncIterator[AsyncConnection]:
        """A connection inside a transaction, committed when the block ends without an exception."""
        with storage_errors():
            async with self.engine.begin() as connection:
                yield connection

    def thread_connection(self, thread_name: str) -> ThreadConnection:
        """A connection of its own on a thread of its own (see :class:`ThreadConnection`)."""
        return ThreadConnection(self.url, thread_name)

    def local_connection(self) -> LocalConnection | None:
        """A connection of its own for small reads on the calling thread (see :class:`LocalConnection`); none
        unless the ledger is SQLite."""
        return LocalConnection(self.url) if self.url.get_backend_name() == "sqlite" else None

    async def close(self) -> None:
        """Close every pooled connection."""
        await self.engine.dispose()


def _require_sqlite(version: tuple[int, int, int]) -> None:
    # Refused at start: an older library would accept payments and fail at their first settlement.
    if version < SQLITE_MIN_VERSION:
        found, needed = (".".join(map(str, v)) for v in (version, SQLITE_MIN_VERSION))
        raise StorageError(f"the ledger needs SQLite {needed} or newer; this Python uses SQLite {found}")


# The same database through the blocking driver of the same family, for the ledger's threads and its writer.
_SYNC_DRIVERS = {"sqlite": "pysqlite", "postgresql": "psycopg"}

T = TypeVar("T")


def sync_engine(url: URL, *, wait_for_locks: bool = True) -> Engine:
    """An engine over the same database through the blocking driver, one connection at a time (no pool).
    Without ``wait_for_locks`` an SQLite connection never waits for another's lock, not even while it opens."""
    backend = url.get_backend_name()
    connect_args = {} if wait_for_locks or backend != "sqlite" else {"timeout": 0}
    engine = create_engine(
        url.set(drivername=f"{backend}+{_SYNC_DRIVERS[backend]}"), poolclass=NullPool, connect_args=connect_args
    )
    if backend == "sqlite":
        event.listen(engine, "connect", _sqlite_pragmas if wait_for_locks else _sqlite_pragmas_never_waiting)
    return engine


class _HeldConnection:
    """One connection, opened on first use and replaced after a driver error; driver errors become
    :class:`StorageError`. Used from one thread only. ``on_connect`` sets up each connection it opens."""

    def __init__(
        self, url: URL, on_connect: Callable[[Connection], None] | None = None, *, wait_for_locks: bool = True
    ) -> None:
        self._engine = sync_engine(url, wait_for_locks=wait_for_locks)
        # Work may read straight through the driver (ledger.group.load_idempotency): its errors are ours too.
        self._driver_error: type[Exception] = self._engine.dialect.loaded_dbapi.Error
        self._on_connect = on_connect
        self._connection: Connection | None = None

    def _run(self, work: Callable[[Connection], T]) -> T:
        with storage_errors(self._driver_error):
            if self._connection is None:
                connection = self._engine.connect()
                if self._on_connect is not None:
                    try:
                        self._on_connect(connection)
                    except BaseException:
                        connection.close()
                        raise
                self._connection = connection
            try:
                return work(self._connection)
            except BaseException:
                connection, self._connection = self._connection, None
                with contextlib.suppress(Exception):
                    connection.close()
                raise

    def _close(self) -> None:
        connection, self._connection = self._connection, None
        if connection is not None:
            with storage_errors():
                connection.close()
        self._engine.dispose()


class ThreadConnection(_HeldConnection):
    """One connection, used from one dedicated thread, synchronously: the engine's reader and checkpointer are
    each one, and its writer when it commits on a thread (``ledger.writer``).

    The engine writes many groups a second, one at a time. Through the async driver every statement is a
    round trip between the event loop and the driver's thread; here a whole step of a group (its reads,
    or its writes and commit) is one hand-off, and the database work runs off the event loop, so the
    loop keeps serving calls meanwhile. It is SQLAlchemy Core all the same: the code is the same for
    both databases.
    """

    def __init__(self, url: URL, thread_name: str, on_connect: Callable[[Connection], None] | None = None) -> None:
        super().__init__(url, on_connect)
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix=thread_name)

    async def run(self, work: Callable[[Connection], T]) -> T:
        """Run ``work`` with the connection on its thread; driver errors become
        :class:`StorageError`, and the connection is replaced after one."""
        return await asyncio.get_running_loop().run_in_executor(self._executor, self._run, work)

    async def close(self) -> None:
        """Close the connection (if one is open) and stop the thread."""
        await asyncio.get_running_loop().run_in_executor(self._executor, self._close)
        self._executor.shutdown(wait=True)


class LocalConnection(_HeldConnection):
    """One connection, used synchronously on the thread that calls it: the event loop's.

    For SQLite reads of a few rows, which the engine makes for every small group: handing them to a
    :class:`ThreadConnection` (two threads woken, the GIL passed twice) cost more than the read itself,
    some 15-60 µs from a local file. A reader in WAL mode does not wait for the writer; in the rare cases
    where SQLite would still have it wait (a recovery, an exclusive lock taken outside the server), it
    raises :class:`WouldWait` at once instead of blocking the loop. Not for PostgreSQL, where every read is a
    round trip over the network.
    """

    def __init__(self, url: URL) -> None:
        super().__init__(url, wait_for_locks=False)

    def run(self, work: Callable[[Connection], T]) -> T:
        """Run ``work`` with the connection, here and now; driver errors become :class:`StorageError` (a lock
        held elsewhere :class:`WouldWait`), and the connection is replaced after one."""
        try:
            return self._run(work)
        except StorageError as error:
            # SQLAlchemy's error wraps the driver's; a read straight through the driver raised its own.
            original = getattr(error.__cause__, "orig", error.__cause__)
            if getattr(original, "sqlite_errorcode", 0) & 0xFF == sqlite3.SQLITE_BUSY:
                raise WouldWait(str(error)) from error
            raise

    def close(self) -> None:
        """Close the connection, if one is open."""
        self._close()


@contextlib.contextmanager
def storage_errors(*driver_errors: type[Exception]) -> Iterator[None]:
    """The boundary: SQLAlchemy's errors, and ``driver_errors`` (the driver's own, where work goes straight
    to it), become :class:`StorageError`."""
    caught: tuple[type[Exception], ...] = (sqlalchemy.exc.SQLAlchemyError, OSError, *driver_errors)
    try:
        yield
    except caught as error:
        raise StorageError(str(error)) from error


def _upgrade(connection: Connection) -> None:
    config = Config()
    config.set_main_option("script_location", str(_MIGRATIONS))
    config.attributes["connection"] = connection
    command.upgrade(config, "head")
