"""A real HTTP server that receives webhooks in the tests: it records every request and answers as scripted."""

from __future__ import annotations

import asyncio
import socket
from collections.abc import Callable
from dataclasses import dataclass, field

from aiohttp import web


@dataclass(frozen=True)
class Received:
    """One request as it arrived."""

    headers: dict[str, str]
    body: bytes
    time: float


@dataclass
class Answer:
    """What the receiver answers: a status, headers, a body, after an optional delay."""

    status: int = 200
    headers: dict[str, str] = field(default_factory=dict)
    body: bytes = b"ok"
    delay: float = 0.0


class Receiver:
    """An aiohttp server on a free port of 127.0.0.1. ``script`` answers requests in turn; once it is spent,
    ``default`` answers. It can be stopped and started again on the same port."""

    def __init__(self) -> None:
        self.received: list[Received] = []
        self.script: list[Answer] = []
        self.default: Answer | Callable[[Received], Answer] = Answer()
        with socket.socket() as probe:
            probe.bind(("127.0.0.1", 0))
            self.port = probe.getsockname()[1]
        self._runner: web.AppRunner | None = None
        self._arrived = asyncio.Condition()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}/hooks"

    async def start(self) -> None:
        app = web.Application()
        app.router.add_route("*", "/{tail:.*}", self._handle)
        self._runner = web.AppRunner(app)
        await self._runner.setup()
        await web.TCPSite(self._runner, "127.0.0.1", self.port, reuse_address=True).start()

    async def stop(self) -> None:
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None

    async def _handle(self, request: web.Request) -> web.Response:
        received = Received(dict(request.headers), await request.read(), asyncio.get_running_loop().time())
        async with self._arrived:
            self.received.append(received)
            self._arrived.notify_all()
        answer = self.script.pop(0) if self.script else self.default
        if callable(answer):
            answer = answer(received)
        if answer.delay:
            await asyncio.sleep(answer.delay)
        return web.Response(status=answer.status, headers=answer.headers, body=answer.body)

    async def wait_for(self, count: int, within: float = 15.0) -> list[Received]:
        """Wait until ``count`` requests have arrived in all (at most ``within`` seconds); returns them."""
        async with asyncio.timeout(within), self._arrived:
            await self._arrived.wait_for(lambda: len(self.received) >= count)
        return list(self.received)
