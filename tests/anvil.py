"""anvil as a real Ethereum node for chain tests, and a TCP proxy in front of it to take it away."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Iterator
from pathlib import Path

from web3 import Web3

from agentflow_server.chain.anvil import ANVIL_KEYS, anvil_node, free_port

__all__ = ["ANVIL_KEYS", "ROOT", "TcpProxy", "anvil", "free_port"]

ROOT = Path(__file__).resolve().parent.parent


@contextlib.contextmanager
def anvil(*args: str) -> Iterator[Web3]:
    """A fresh anvil chain (prague, automine) and a Web3 connected to it."""
    with anvil_node(*args) as url:
        yield Web3(Web3.HTTPProvider(url, request_kwargs={"timeout": 30}))


class TcpProxy:
    """A TCP forwarder in front of a node, which a test can take down and bring back: a real outage of the
    RPC endpoint, as the server sees it."""

    def __init__(self, target_port: int) -> None:
        self.target_port = target_port
        self.port = free_port()
        self._server: asyncio.base_events.Server | None = None
        self._writers: set[asyncio.StreamWriter] = set()

    async def start(self) -> None:
        self._server = await asyncio.start_server(self._serve, "127.0.0.1", self.port)

    async def stop(self) -> None:
        """Refuse new connections and cut the open ones."""
        if self._server is not None:
            self._server.close()
            self._server = None
        for writer in list(self._writers):
            writer.transport.abort()
        self._writers.clear()

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            upstream_reader, upstream_writer = await asyncio.open_connection("127.0.0.1", self.target_port)
        except OSError:
            writer.transport.abort()
            return
        self._writers.update((writer, upstream_writer))

        async def pipe(source: asyncio.StreamReader, sink: asyncio.StreamWriter) -> None:
            try:
                while data := await source.read(65536):
                    sink.write(data)
                    await sink.drain()
            except (ConnectionError, OSError):
                pass
            finally:
                sink.transport.abort()

        await asyncio.gather(pipe(reader, upstream_writer), pipe(upstream_reader, writer))
        self._writers.difference_update((writer, upstream_writer))
