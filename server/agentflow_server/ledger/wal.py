"""Keeping SQLite's write-ahead log bounded while the writer never stops writing."""

from __future__ import annotations

import logging
import os

from sqlalchemy.engine import Connection

log = logging.getLogger(__name__)


class WalLimit:
    """Restarts the ledger's WAL from its beginning once it has grown past ``limit`` bytes (SQLite only).

    SQLite writes the WAL from its start again only when a write begins after a checkpoint has copied every
    frame back into the database file. The engine's checkpointer copies frames beside the writer (PASSIVE,
    every half second), but under steady load the writer has always appended more by the time a checkpoint
    ends, so the WAL never restarted: it grew by 20-50 KB a payment (3 GB in 25 s of the benchmark) until
    the load paused, and commits into the growing file were slower (bulk ran at two thirds the speed).

    So past the limit the writer runs a PASSIVE checkpoint itself, between two groups. Being the only writer,
    it copies all that is left, and its next write restarts the WAL; ``journal_size_limit`` then cuts the
    file back to the limit. A reader holding an older snapshot can keep the restart from happening: the
    writer tries again once the file has grown by another eighth of the limit, never waiting for the reader.
    Each such checkpoint holds the writer's commits for some 25-45 ms here, so the limit sets how often
    commits take that pause (decision 0004).
    """

    def __init__(self, database: str, limit: int) -> None:
        self._wal = f"{database}-wal"
        self._limit = limit
        self._next_try = limit

    def start(self, connection: Connection) -> None:
        """Set up the writer's connection: after a restart the WAL file is cut back to the limit."""
        connection.exec_driver_sql(f"PRAGMA journal_size_limit={self._limit}")

    def after_commit(self, connection: Connection) -> None:
        """Checkpoint, if the WAL has grown past the limit (or, after a restart that did not happen, past the
        next try). Call it between transactions. It never raises: the group before it is committed whatever
        becomes of the checkpoint, and one that fails is tried again later."""
        try:
            size = os.path.getsize(self._wal)
        except OSError:  # no WAL yet, or it was just removed: nothing to bound
            return
        if size <= self._limit:
            self._next_try = self._limit
            return
        if size <= self._next_try:
            return
        self._next_try = size + self._limit // 8
        try:
            connection.exec_driver_sql("PRAGMA wal_checkpoint(PASSIVE)")
            connection.commit()
        except Exception as error:
            log.warning("the WAL (%d bytes) could not be checkpointed: %s", size, error)
