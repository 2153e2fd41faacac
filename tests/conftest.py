"""Fixtures: a real server on a free port with a real SQLite ledger, and SDK clients for it."""

from __future__ import annotations

import functools
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import pytest

from agentflow_payments import AsyncClient
from agentflow_payments.v1 import admin_pb2
from agentflow_server.app import Service
from agentflow_server.config import Settings
from agentflow_server.event_loop import new_event_loop

if TYPE_CHECKING:
    from .chain import Anvil
    from .receiver import Receiver

ADMIN_KEY = "afk_test_admin_0123456789abcdefghijklmnopqrstuv"
# Addresses from the EIP-55 specification's test vectors.
ALICE = "0x5aAeb6053F3E94C9b9A09f33669435E7Ef1BeAed"
BOB = "0xfB6916095ca1df60bB79Ce92cE3Ea74c37c5d359"
DEFAULT_LOOP = Settings.model_fields["event_loop"].default


@dataclass
class RunningServer:
    """A started server and what a test needs to reach it."""

    service: Service
    settings: Settings

    @property
    def target(self) -> str:
        return f"127.0.0.1:{self.service.endpoints.grpc_port}"

    def client(self, api_key: str | None = ADMIN_KEY) -> AsyncClient:
        return AsyncClient(self.target, api_key, timeout=10)


def make_settings(data_dir: Path, **overrides: object) -> Settings:
    """Settings for a test server: a free port, its own ledger, no metrics endpoint."""
    values: dict[str, object] = {
        "listen": "127.0.0.1:0",
        "data_dir": data_dir,
        "admin_api_key": ADMIN_KEY,
        "metrics_listen": "",  # the metrics tests turn it on
        "shutdown_grace": 2.0,
        # Tests of rate limits create keys with their own; the rest must not trip over the default.
        "rate_limit_per_minute": 60_000,
        "rate_limit_burst": 10_000,
        # Ledger tests run without a chain; the settlement tests turn it on.
        "settlement_enabled": False,
        **overrides,
    }
    return Settings(**values)  # type: ignore[arg-type]


StartServer = Callable[..., Awaitable[RunningServer]]


def pytest_asyncio_loop_factories(config: pytest.Config, item: pytest.Item) -> dict[str, Callable[[], object]]:
    """Async tests, and the servers they start in-process, run on the loop `agentflow serve` runs on."""
    return {DEFAULT_LOOP: functools.partial(new_event_loop, DEFAULT_LOOP)}


@pytest.fixture
async def start_server(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> AsyncIterator[StartServer]:
    """Start servers on ``tmp_path`` (the same ledger each time unless ``data_dir`` is given, with the
    service's own clock unless ``clock`` is given); all are stopped at the end of the test."""
    # The developer's own AGENTFLOW_* variables must not leak into tests.
    import os

    for name in list(os.environ):
        if name.startswith("AGENTFLOW_"):
            monkeypatch.delenv(name)
    started: list[Service] = []

    async def start(**overrides: object) -> RunningServer:
        data_dir = overrides.pop("data_dir", tmp_path / "data")
        clock = overrides.pop("clock", None)
        settings = make_settings(data_dir, **overrides)  # type: ignore[arg-type]
        service = await Service.start(settings, clock)  # type: ignore[arg-type]
        started.append(service)
        return RunningServer(service, settings)

    yield start
    for service in started:
        await service.stop(grace=0)


@pytest.fixture(params=["sqlite", "postgresql"])
def ledger_url(request: pytest.FixtureRequest) -> Iterator[str | None]:
    """Each ledger database in turn: None (SQLite in the server's data dir) or a new PostgreSQL database.
    Request it before ``start_server``, so that its servers stop before the database is dropped."""
    if request.param == "sqlite":
        yield None
        return
    from .postgres import fresh_database

    with fresh_database() as url:
        yield url


@pytest.fixture
async def server(start_server: StartServer) -> RunningServer:
    """One running server with the bootstrap admin key ``ADMIN_KEY``."""
    return await start_server()


@pytest.fixture
async def admin(server: RunningServer) -> AsyncIterator[AsyncClient]:
    """An SDK client holding the admin key."""
    async with server.client() as client:
        yield client


CreateKey = Callable[..., Awaitable[admin_pb2.CreateApiKeyResponse]]


@pytest.fixture
def create_key(admin: AsyncClient) -> CreateKey:
    """Create an API key through AdminService.CreateApiKey."""

    async def create(
        scope: int,
        addresses: tuple[str, ...] = (),
        rate_limit: tuple[int, int] | None = None,
        display_name: str = "test key",
    ) -> admin_pb2.CreateApiKeyResponse:
        request = admin_pb2.CreateApiKeyRequest(display_name=display_name, scope=scope, addresses=addresses)
        if rate_limit is not None:
            request.rate_limit.CopyFrom(admin_pb2.RateLimit(requests_per_minute=rate_limit[0], burst=rate_limit[1]))
        response: admin_pb2.CreateApiKeyResponse = await admin.admin.CreateApiKey(request)
        return response

    return create


@pytest.fixture
async def embedded(ledger_url: str | None, start_server: StartServer) -> RunningServer:
    """A server settling on the embedded chain, on each ledger database in turn (SQLite, then PostgreSQL)."""
    from .chain import FAST

    return await start_server(database_url=ledger_url, settlement_enabled=True, **FAST)


@pytest.fixture
async def receiver() -> AsyncIterator[Receiver]:
    """A real HTTP server receiving webhook deliveries."""
    from .receiver import Receiver

    receiver = Receiver()
    await receiver.start()
    yield receiver
    await receiver.stop()


@pytest.fixture
def anvil_node() -> Iterator[Anvil]:
    """A fresh anvil node, nothing deployed."""
    from .anvil import anvil
    from .chain import Anvil

    with anvil() as w3:
        url = w3.provider.endpoint_uri  # type: ignore[attr-defined]
        yield Anvil(str(url), int(str(url).rsplit(":", 1)[1]))


@pytest.fixture
async def on_anvil(anvil_node: Anvil) -> Anvil:
    """An anvil node with the settlement contract and the dev tokens deployed."""
    await anvil_node.deploy()
    return anvil_node
