"""The engine's group writer: commits sealed groups one at a time, in order, in a process of its own or on a
thread of the server's.

In a process of its own (the default) SQLite's work, and the Python that feeds it (thousands of parameters
bound a group), run on another core beside the gRPC front end instead of taking turns with it for one GIL.
Groups are pickled and sent as soon as they are sealed, so the process finds the next group waiting when it
finishes one; answers come back in order, each after its group's commit, so an acknowledged payment is as
durable as before.

Epochs: a group is applied in memory on top of the groups still committing. When one fails, every group
sent after it with the same or an older epoch is refused too (the engine undoes them all and starts a
new epoch), so nothing built on a failed group is ever written.

The process is forked from a ``multiprocessing`` fork server (started once per server process, with this
module preloaded), not from the server itself: forking a process that runs gRPC's threads is unsafe. It
ignores SIGINT and SIGTERM, so a Ctrl-C or a service manager's SIGTERM to the whole group leaves the server
to drain through it; it ends when its pipe closes, that is when the server stops or dies. While it lives it
holds the ledger's writer lock, and a new writer waits for it: a server restarted after a crash reads the
ledger only once the old writer can no longer commit, and a second server started on the same ledger waits
instead of accepting payments against balances the first one holds. On SQLite the lock is an exclusive
``flock`` of ``<ledger>.writer-lock``; on PostgreSQL a session advisory lock, taken by the connection that
writes and released by the database when that session ends. If that session
is lost, so is the lock, and the process ends rather than write under a new session without it.
"""

from __future__ import annotations

import asyncio
import atexit
import collections
import contextlib
import ctypes
import fcntl
import functools
import logging
import multiprocessing
import multiprocessing.connection
import os
import pickle
import select
import signal
import struct
import sys
import types
from collections.abc import Callable, Iterable, Iterator

from sqlalchemy.engine import URL, Connection, make_url

from .database import StorageError, ThreadConnection, storage_errors, sync_engine
from .group import GroupWrite, RecordWrite, TableRows, group_rows, write_group, write_rows
from .wal import WalLimit

log = logging.getLogger(__name__)

# Each message on the pipes is a frame: its length (8 bytes, big-endian), then the message.
_HEADER = struct.Struct("!Q")
_PIPE_BYTES = 1 << 20
_READY = b"ready"
_OK = b"ok"
# How long a new writer process may take to start, including waiting for an old one's lock.
_START_TIMEOUT = 60.0
_DEPENDS_ON_FAILED = "not written: an earlier group it depends on failed to commit"
# What the writer process is called in `ps -o comm`, top and pgrep (Linux keeps 15 bytes).
PROCESS_NAME = "ledger-writer"
_PR_SET_NAME = 15
# The PostgreSQL advisory lock of the ledger's writer (advisory locks are per database): any constant works,
# so long as nothing else in the database takes it.
_POSTGRES_WRITER_LOCK = 0x61666C6F77  # "aflow"


class GroupWriter:
    """Commits the engine's groups durably, in the order :meth:`commit` is called, through one connection.

    ``in_process``: the connection lives in a writer process (see the module's docstring); otherwise on a
    thread of this process, taking turns with the event loop for the GIL. ``on_lost`` is called on the
    event loop, with the reason, if the writer process is lost: nothing is written after that. On SQLite the
    WAL is restarted once it has grown past ``wal_limit`` bytes (:class:`~agentflow_server.ledger.wal.WalLimit`).
    """

    def __init__(
        self,
        url: URL,
        name: str,
        *,
        in_process: bool,
        on_lost: Callable[[str], None] | None = None,
        wal_limit: int = 1 << 30,
    ) -> None:
        self._url = url
        self._name = name
        self._on_lost = on_lost
        self._wal_limit = wal_limit
        # On the thread (SQLite): bounds the WAL, as the writer process does (ledger.wal).
        self._wal = _wal_limit(url, wal_limit) if not in_process else None
        self._thread: ThreadConnection | None = (
            None if in_process else ThreadConnection(url, name, on_connect=functools.partial(_set_up, self._wal))
        )
        self._process: _WriterProcess | None = None
        self._in_process = in_process
        self._failed_epoch = -1

    @property
    def pid(self) -> int | None:
        """The writer process's id while it runs (None on a thread): for operators, and for tests that kill it."""
        return self._process.pid if self._process is not None else None

    async def start(self) -> None:
        """Start the writer process (waiting for an older one's lock), or set up the thread's connection."""
        if self._in_process:
            process = _WriterProcess(self._url, self._name, asyncio.get_running_loop(), self._on_lost, self._wal_limit)
            await process.start()
            self._process = process
        elif self._thread is not None:
            await self._thread.run(lambda connection: None)  # connects, and sets the connection up

    async def commit(self, group: GroupWrite, epoch: int) -> None:
        """Write a sealed group's rows and commit them; return once they are durable.

        Raises :class:`StorageError` if they were not committed, and for every later group of the same or an
        older ``epoch`` (they were applied on top of it)."""
        if epoch <= self._failed_epoch:
            raise StorageError(_DEPENDS_ON_FAILED)
        try:
            if self._process is not None:
                await self._process.commit(group, epoch)
            else:
                assert self._thread is not None
                await self._thread.run(lambda connection: self._commit_here(connection, group, epoch))
        except Exception:
            # (A cancelled wait is not a failure: the group may still commit.)
            self._failed_epoch = max(self._failed_epoch, epoch)
            raise

    def _commit_here(self, connection: Connection, group: GroupWrite, epoch: int) -> None:
        # On the thread, in order: a group queued behind a failed one finds it failed here.
        if epoch <= self._failed_epoch:
            raise StorageError(_DEPENDS_ON_FAILED)
        try:
            write_group(connection, group)
            connection.commit()
        except BaseException:
            self._failed_epoch = max(self._failed_epoch, epoch)
            raise
        if self._wal is not None:
            self._wal.after_commit(connection)

    async def close(self) -> None:
        """Stop the writer; call it once every commit has returned."""
        if self._process is not None:
            await self._process.close()
        elif self._thread is not None:
            await self._thread.close()


@contextlib.contextmanager
def _main_module_not_inherited() -> Iterator[None]:
    """Start a process without making it import the server's main script first.

    Before it runs its target, a fork server's child imports the parent's main script again (as
    ``__mp_main__``), in case the target or its arguments come from there. The writer's come from this
    module, and the main script is whatever embeds the server: the bench's took 2.4 s of CPU to import again
    and left the whole service in the writer's memory, pytest's is pytest. multiprocessing imports no main
    module that has neither a spec nor a file, and reads it only while it hands the child its start-up data.
    """
    main = sys.modules["__main__"]
    sys.modules["__main__"] = types.ModuleType("__main__")
    try:
        yield
    finally:
        sys.modules["__main__"] = main


def _set_up(wal: WalLimit | None, connection: Connection) -> None:
    """Set up a writing connection (each one: after a failed group the next gets a new connection)."""
    if wal is not None:
        # Checkpoints copy the WAL back into the database file; done by the committing connection whenever
        # the WAL reaches 1,000 pages they stalled a commit for tens of milliseconds now and then. The engine's
        # checkpointer does them beside the writer, and the writer only past the WAL's limit.
        connection.exec_driver_sql("PRAGMA wal_autocheckpoint=0")
        wal.start(connection)


class _WriterProcess:
    """The server's side of a writer process. Groups are pickled and written to the process's pipe by the
    event loop itself, without blocking: what the pipe cannot take yet waits in a buffer until it can. Answers
    are read by the loop too, as they arrive, each resolving the oldest group waiting.

    (Until 2026-12-01 a sender and a receiver thread did this: each group then cost two more threads' wake-ups
    and hand-offs of the GIL, about a fifth of a millisecond of CPU a group at a few hundred calls a second.)
    """

    def __init__(
        self,
        url: URL,
        name: str,
        loop: asyncio.AbstractEventLoop,
        on_lost: Callable[[str], None] | None,
        wal_limit: int,
    ) -> None:
        self._url = url
        self._name = name
        self._loop = loop
        self._on_lost = on_lost
        self._wal_limit = wal_limit
        self._child: multiprocessing.process.BaseProcess | None = None
        # Our ends of the two pipes, while they are open.
        self._to_child: int | None = None
        self._from_child: int | None = None
        # What the pipe has not taken yet, and what has come back but is not a whole answer yet.
        self._unsent = bytearray()
        self._unread = bytearray()
        # The answers still to come, in the order their groups were sent.
        self._waiting: collections.deque[asyncio.Future[None]] = collections.deque()
        # Why the process is gone, once it is: a group may then have committed without an answer, so the
        # engine's memory may differ from the ledger, and nothing more is written until the server restarts.
        self._lost: str | None = None
        self._closing = False

    @property
    def pid(self) -> int | None:
        return self._child.pid if self._child is not None and self._lost is None else None

    async def start(self) -> None:
        """Start the process, wait (off the loop) until it holds the ledger, then serve its pipes on the loop."""
        await asyncio.to_thread(self._start)
        to_child, from_child = self._to_child, self._from_child
        assert to_child is not None
        assert from_child is not None
        os.set_blocking(to_child, False)
        os.set_blocking(from_child, False)
        # Room for several whole groups, so that the process finds them waiting and the loop seldom has to come
        # back to finish one (a pickled payment is about 1.3 KB; Linux's pipes hold 64 KiB unless asked).
        # Unprivileged processes may ask for up to /proc/sys/fs/pipe-max-size, 1 MiB by default; if refused,
        # the pipe keeps its size.
        with contextlib.suppress(OSError, AttributeError):
            fcntl.fcntl(to_child, fcntl.F_SETPIPE_SZ, _PIPE_BYTES)
        self._loop.add_reader(from_child, self._read_answers)

    def _start(self) -> None:
        lock = None
        if self._url.get_backend_name() == "sqlite":
            if self._url.database in (None, "", ":memory:"):
                raise StorageError("an in-memory SQLite ledger cannot be written by a writer process")
            lock = f"{self._url.database}.writer-lock"
        context = multiprocessing.get_context("forkserver")
        context.set_forkserver_preload([__name__])
        commands, to_child = context.Pipe(duplex=False)
        from_child, answers = context.Pipe(duplex=False)
        child = context.Process(
            target=_serve,
            args=(self._url.render_as_string(hide_password=False), lock, self._wal_limit, commands, answers),
            name=self._name,
        )
        with _main_module_not_inherited():
            child.start()
        commands.close()
        answers.close()
        self._child = child
        self._to_child, self._from_child = _own(to_child), _own(from_child)
        # If the server exits without close(), the pipe still closes and the process ends. (Registered after
        # multiprocessing's own exit hook, so it runs before that one waits for the process.)
        atexit.register(self._at_exit)
        try:
            ready, _, _ = select.select([self._from_child], [], [], _START_TIMEOUT)
            if not ready:
                raise StorageError(f"the ledger writer process did not start within {_START_TIMEOUT:.0f} s")
            try:
                reply = _read_frame(self._from_child)
            except OSError:
                reply = None
            if reply is None:
                raise StorageError("the ledger writer process exited while starting")
            if reply != _READY:
                raise StorageError(f"the ledger writer process could not open the ledger: {pickle.loads(reply)}")
        except BaseException:
            # Off the loop, and nothing of the loop's is set up yet: the descriptors are only closed.
            for fd in (self._to_child, self._from_child):
                if fd is not None:
                    with contextlib.suppress(OSError):
                        os.close(fd)
            self._to_child = self._from_child = None
            self._join(0)
            raise

    async def commit(self, group: GroupWrite, epoch: int) -> None:
        if self._lost is not None:
            raise StorageError(self._lost)
        # Pickled here, so a group that does not pickle (a bug) fails alone and before anything after it is
        # sent; its epoch is then refused by GroupWriter.
        message = pickle.dumps((epoch, group_rows(group), group.records), protocol=pickle.HIGHEST_PROTOCOL)
        if self._to_child is None:
            raise StorageError("the ledger writer is closed")
        answer = self._loop.create_future()
        self._waiting.append(answer)
        self._send(_HEADER.pack(len(message)), message)
        await answer

    def _send(self, *parts: bytes) -> None:
        """Write to the pipe what it takes now, in order; keep the rest until it has room."""
        if self._unsent:
            for part in parts:
                self._unsent += part
            return
        try:
            written = os.writev(self._to_child, parts) if self._to_child is not None else 0
        except BlockingIOError:
            written = 0
        except OSError as error:
            # Not sent, so nothing after it may be written either: the writer is lost.
            self._lose(f"a group could not be handed to the ledger writer process ({error!r})")
            return
        for part in parts:
            if written >= len(part):
                written -= len(part)
                continue
            self._unsent += memoryview(part)[written:]
            written = 0
        if self._unsent and self._to_child is not None:
            self._loop.add_writer(self._to_child, self._send_unsent)

    def _send_unsent(self) -> None:
        try:
            written = os.write(self._to_child, self._unsent) if self._to_child is not None else 0
        except BlockingIOError:
            return
        except OSError as error:
            self._lose(f"a group could not be handed to the ledger writer process ({error!r})")
            return
        del self._unsent[:written]
        if not self._unsent and self._to_child is not None:
            self._loop.remove_writer(self._to_child)

    def _read_answers(self) -> None:
        """Each whole answer resolves the oldest group waiting; the end of the pipe means the process is gone."""
        try:
            data = os.read(self._from_child, 65536) if self._from_child is not None else b""
        except BlockingIOError:
            return
        except OSError:
            data = b""
        if not data:
            self._stop_reading()
            if not self._closing:
                self._lose("the ledger writer process exited")
            self._fail_waiting()
            return
        unread = self._unread
        unread += data
        while len(unread) >= _HEADER.size:
            (size,) = _HEADER.unpack_from(unread)
            end = _HEADER.size + size
            if len(unread) < end:
                break
            reply = bytes(unread[_HEADER.size : end])
            del unread[:end]
            self._answer(None if reply == _OK else StorageError(pickle.loads(reply)))

    def _answer(self, error: StorageError | None) -> None:
        answer = self._waiting.popleft()
        if answer.done():
            return
        if error is None:
            answer.set_result(None)
        else:
            answer.set_exception(error)

    def _fail_waiting(self) -> None:
        while self._waiting:
            answer = self._waiting.popleft()
            if not answer.done():
                answer.set_exception(StorageError(self._lost or "the ledger writer process was closed"))

    def _lose(self, reason: str) -> None:
        if self._lost is not None:
            return
        self._lost = f"{reason}; restart the server to write again"
        log.critical(self._lost, extra={"event": "ledger.writer_lost"})
        # Closing our end ends the process, if it still runs; its answers then end too, and with them
        # every group still waiting fails.
        self._stop_writing()
        if self._on_lost is not None:
            self._loop.call_soon(self._on_lost, self._lost)

    def _stop_writing(self) -> None:
        if self._to_child is not None:
            if self._unsent:
                self._unsent.clear()
                with contextlib.suppress(RuntimeError):  # the loop is closed
                    self._loop.remove_writer(self._to_child)
            fd, self._to_child = self._to_child, None
            with contextlib.suppress(OSError):
                os.close(fd)

    def _stop_reading(self) -> None:
        if self._from_child is not None:
            with contextlib.suppress(RuntimeError):  # the loop is closed, or the reader was never added
                self._loop.remove_reader(self._from_child)
            fd, self._from_child = self._from_child, None
            with contextlib.suppress(OSError):
                os.close(fd)

    def _at_exit(self) -> None:
        self._closing = True
        self._stop_writing()

    async def close(self) -> None:
        """Close the pipe (the process ends once it has answered what it was sent), wait for the process to
        end, and fail whatever is still waiting. Call it once every commit has returned."""
        atexit.unregister(self._at_exit)
        self._closing = True
        self._stop_writing()
        await asyncio.to_thread(self._join, _START_TIMEOUT)
        self._stop_reading()
        self._fail_waiting()

    def _join(self, timeout: float) -> None:
        """Wait for the process to end; past ``timeout``, kill it (a start that failed may be waiting for
        another's lock)."""
        if self._child is not None:
            self._child.join(timeout)
            if self._child.is_alive():
                self._child.kill()
                self._child.join()


def _own(connection: multiprocessing.connection.Connection) -> int:
    """The connection's descriptor, as one of our own: the connection is closed."""
    try:
        return os.dup(connection.fileno())
    finally:
        connection.close()


def _write_frame(fd: int, data: bytes) -> None:
    """Write ``data`` to blocking ``fd`` as one frame: its length, then itself."""
    view = memoryview(_HEADER.pack(len(data)) + data)
    while view:
        view = view[os.write(fd, view) :]


def _read_frame(fd: int) -> bytes | None:
    """The next frame from blocking ``fd``, or None at the end of the pipe."""
    header = _read_exactly(fd, _HEADER.size)
    if header is None:
        return None
    return _read_exactly(fd, _HEADER.unpack(header)[0])


def _read_exactly(fd: int, size: int) -> bytes | None:
    data = bytearray()
    while len(data) < size:
        chunk = os.read(fd, size - len(data))
        if not chunk:
            return None
        data += chunk
    return bytes(data)


def _serve(
    url: str,
    lock_path: str | None,
    wal_limit: int,
    commands: multiprocessing.connection.Connection,
    answers: multiprocessing.connection.Connection,
) -> None:
    """The writer process: commit each group received and answer ``ok`` or the error, until the pipe closes."""
    commands_fd, answers_fd = _own(commands), _own(answers)
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    _name_process(PROCESS_NAME)
    engine = sync_engine(make_url(url))
    postgres = engine.dialect.name == "postgresql"
    wal = _wal_limit(engine.url, wal_limit)
    connection: Connection | None = None
    try:
        if lock_path is not None:
            # Held until this process ends: never closed here, released by the kernel.
            lock = os.open(lock_path, os.O_RDWR | os.O_CREAT, 0o600)
            fcntl.flock(lock, fcntl.LOCK_EX)
        with storage_errors():
            connection = engine.connect()
            if postgres:
                # The lock is taken by the session that writes, so every write is made under it; committed
                # at once, so that the session holds no snapshot meanwhile.
                connection.exec_driver_sql(f"SELECT pg_advisory_lock({_POSTGRES_WRITER_LOCK})")
                connection.commit()
            _set_up(wal, connection)
    except Exception as error:
        _write_frame(answers_fd, pickle.dumps(str(error)))
        return
    _write_frame(answers_fd, _READY)
    failed_epoch = -1
    while True:
        try:
            message = _read_frame(commands_fd)
        except OSError:
            break
        if message is None:
            break
        try:
            epoch, tables, records = pickle.loads(message)
        except Exception as error:
            # A bug: the groups after this one may build on it, so none is written any more.
            failed_epoch = sys.maxsize
            _write_frame(answers_fd, pickle.dumps(f"a group could not be read: {error!r}"))
            continue
        if epoch <= failed_epoch:
            # Sent before the server learnt of a failure, so built on the failed group: refused.
            _write_frame(answers_fd, pickle.dumps(_DEPENDS_ON_FAILED))
            continue
        try:
            if connection is None:
                connection = engine.connect()
                _set_up(wal, connection)
            _commit(connection, tables, records, wal)
            reply = _OK
        except Exception as error:
            failed_epoch = epoch
            reply = pickle.dumps(str(error) or type(error).__name__)
            if postgres and connection is not None:
                # The session holds the writer lock, so it is kept; if it is gone, so is the lock, and
                # another server may have taken the ledger since: this process ends, and the server refuses
                # writes until it is restarted and has read the ledger again (as for any lost writer).
                # (SQLAlchemy invalidates a connection whose session dropped, and would quietly open a new
                # session for the next group.)
                try:
                    connection.rollback()
                    session_lost = connection.invalidated
                except Exception:
                    session_lost = True
                if session_lost:
                    _write_frame(answers_fd, reply)
                    break
            else:
                # Like the writer thread: nothing of the group is committed, and the next one gets a new
                # connection.
                if connection is not None:
                    with contextlib.suppress(Exception):
                        connection.close()
                connection = None
        _write_frame(answers_fd, reply)
    if connection is not None:
        connection.close()
    engine.dispose()


def _name_process(name: str) -> None:
    # Otherwise it shows as one more python beside the server; its command line stays the fork server's.
    if sys.platform == "linux":
        with contextlib.suppress(OSError, AttributeError):
            ctypes.CDLL(None).prctl(_PR_SET_NAME, name.encode(), 0, 0, 0)


def _commit(connection: Connection, tables: TableRows, records: Iterable[RecordWrite], wal: WalLimit | None) -> None:
    with storage_errors():
        write_rows(connection, tables, records)
        connection.commit()
    if wal is not None:
        wal.after_commit(connection)


def _wal_limit(url: URL, limit: int) -> WalLimit | None:
    """What bounds the WAL of this ledger: nothing unless it is an SQLite file."""
    if url.get_backend_name() != "sqlite" or url.database in (None, "", ":memory:"):
        return None
    return WalLimit(url.database, limit)
