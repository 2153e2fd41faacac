"""A TCP proxy in front of a real server that breaks the next answer on demand: the network faults a client's
retries are for, made on loopback."""

from __future__ import annotations

import asyncio
import contextlib
from dataclasses import dataclass, field

# HTTP/2 control frames (SETTINGS, PING, WINDOW_UPDATE acks) are under this; an answer's frames are above it.
_ANSWER_BYTES = 64


@dataclass
class FaultyProxy:
    """Forwards 127.0.0.1:``port`` to ``upstream``. Arm ``cut_next_answer`` to close the connection instead of
    passing on the next answer (the server has done the work; the client never hears), or
    ``stall_next_answer`` to hold that answer for so many seconds before passing it on."""

    upstream: int
    port: int = 0
    cut_next_answer: bool = False
    stall_next_answer: float = 0.0
    cuts: int = 0
    stalls: int = 0
    _server: asyncio.Server | None = None
    _tasks: set[asyncio.Task[None]] = field(default_factory=set)

    @property
    def target(self) -> str:
        return f"127.0.0.1:{self.port}"

    async def start(self) -> FaultyProxy:
        self._server = await asyncio.start_server(self._connect, "127.0.0.1", 0)
        self.port = self._server.sockets[0].getsockname()[1]
        return self

    async def stop(self) -> None:
        if self._server is not None:
            self._server.close()
        for task in list(self._tasks):
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)

    async def _connect(self, client_reader: asyncio.StreamReader, client_writer: asyncio.StreamWriter) -> None:
        server_reader, server_writer = await asyncio.open_connection("127.0.0.1", self.upstream)
        up = asyncio.create_task(self._pump(client_reader, server_writer, client_writer, answers=False))
        down = asyncio.create_task(self._pump(server_reader, client_writer, server_writer, answers=True))
        self._tasks |= {up, down}
        up.add_done_callback(self._tasks.discard)
        down.add_done_callback(self._tasks.discard)

    async def _pump(
        self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter, other: asyncio.StreamWriter, *, answers: bool
    ) -> None:
        try:
            while chunk := await reader.read(65536):
                if answers and len(chunk) >= _ANSWER_BYTES:
                    if self.cut_next_answer:
                        self.cut_next_answer = False
                        self.cuts += 1
                        break
                    if self.stall_next_answer:
                        pause, self.stall_next_answer = self.stall_next_answer, 0.0
                        self.stalls += 1
                        await asyncio.sleep(pause)
                writer.write(chunk)
                await writer.drain()
        except (ConnectionError, asyncio.CancelledError):
            pass
        finally:
            for stream in (writer, other):
                stream.close()
                with contextlib.suppress(Exception):
                    await stream.wait_closed()
