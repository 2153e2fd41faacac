"""The server as an operator and a caller meet it: discovery, health, rate limits, errors, ports, metrics."""

from __future__ import annotations

import asyncio
import datetime
import sqlite3
import urllib.request
from pathlib import Path
from typing import Any

import grpc
import pytest
from google.rpc import error_details_pb2
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_status import rpc_status

from agentflow_payments import ERROR_DOMAIN, AgentflowError, AsyncClient, NotFound, RateLimited, Reason
from agentflow_payments.v1 import accounts_pb2, admin_pb2, admin_pb2_grpc, events_pb2, payments_pb2
from agentflow_server.app import SERVICE_NAMES, StartupError
from agentflow_server.engine.commands import CreditDeposit

from .conftest import ADMIN_KEY, ALICE, BOB, CreateKey, RunningServer, StartServer

READ = accounts_pb2.ListTokensRequest()


def _item() -> payments_pb2.SubmitPaymentRequest:
    return payments_pb2.SubmitPaymentRequest(payer=ALICE, payee=BOB, token="USDC", amount="1")


async def test_health_is_serving_for_the_server_and_each_service(server: RunningServer) -> None:
    async with server.client(api_key=None) as client:
        health = health_pb2_grpc.HealthStub(client.channel)
        for service in ("", *SERVICE_NAMES):
            response = await health.Check(health_pb2.HealthCheckRequest(service=service))
            assert response.status == health_pb2.HealthCheckResponse.SERVING, service
        with pytest.raises(NotFound) as unknown:
            await health.Check(health_pb2.HealthCheckRequest(service="no.such.Service"))
        assert unknown.value.code is grpc.StatusCode.NOT_FOUND


async def test_reflection_describes_all_six_services(server: RunningServer) -> None:
    from grpc_reflection.v1alpha.proto_reflection_descriptor_database import ProtoReflectionDescriptorDatabase

    def discover() -> tuple[set[str], list[str]]:
        # The reflection client is synchronous: run it off the loop that serves.
        with grpc.insecure_channel(server.target) as channel:
            database = ProtoReflectionDescriptorDatabase(channel)
            services = set(database.get_services())
            payment = database.FindFileContainingSymbol("agentflow.payments.v1.PaymentService")
            methods = [m.name for m in payment.service[0].method]
        return services, methods

    services, methods = await asyncio.to_thread(discover)
    assert set(SERVICE_NAMES) <= services
    assert len(SERVICE_NAMES) == 6
    assert "SubmitPayments" in methods
    assert "WatchPayment" in methods


async def test_services_are_added_as_generic_handlers_only(
    start_server: StartServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    """grpcio's asyncio server waits on every registered method's pending request for each call it accepts
    (api/registration.py), so the server registers none: every service still answers."""
    registered: list[str] = []
    original = grpc.aio._server.Server.add_registered_method_handlers

    def spy(self: grpc.aio.Server, service: str, handlers: Any) -> None:
        registered.append(service)
        original(self, service, handlers)

    monkeypatch.setattr(grpc.aio._server.Server, "add_registered_method_handlers", spy)
    server = await start_server()
    assert registered == []
    async with grpc.aio.insecure_channel(server.target) as channel:
        health = health_pb2_grpc.HealthStub(channel)
        answer = await health.Check(health_pb2.HealthCheckRequest(service="agentflow.payments.v1.PaymentService"))
        assert answer.status == health_pb2.HealthCheckResponse.SERVING
    async with server.client(ADMIN_KEY) as client:
        assert "USDC" in {t.symbol for t in (await client.accounts.ListTokens(READ)).tokens}
    await test_reflection_describes_all_six_services(server)


async def test_rate_limit_answers_resource_exhausted_with_retry_info(
    server: RunningServer, create_key: CreateKey
) -> None:
    key = await create_key(admin_pb2.API_KEY_SCOPE_READ_ONLY, rate_limit=(60, 3))
    async with server.client(key.secret) as client:
        for _ in range(3):
            await client.accounts.ListTokens(READ)
        with pytest.raises(RateLimited) as caught:
            await client.accounts.ListTokens(READ)
    error = caught.value
    assert error.code is grpc.StatusCode.RESOURCE_EXHAUSTED
    assert error.reason is Reason.RATE_LIMIT_EXCEEDED
    # 60 a minute is one a second: the next token is at most a second away.
    assert error.retry_delay is not None
    assert datetime.timedelta(0) < error.retry_delay <= datetime.timedelta(seconds=1)
    assert 0 < int(error.metadata["retry_after_ms"]) <= 1000
    assert error.metadata["requests_per_minute"] == "60"


async def test_bulk_call_counts_by_its_size(server: RunningServer, create_key: CreateKey) -> None:
    key = await create_key(admin_pb2.API_KEY_SCOPE_PAYER, addresses=(ALICE,), rate_limit=(60, 3))
    async with server.client(key.secret) as client:
        bulk = payments_pb2.SubmitPaymentsRequest(requests=[_item() for _ in range(5)])
        # A bulk larger than the burst goes through on a full bucket and leaves it 2 in debt...
        response = await client.payments.SubmitPayments(bulk)
        assert [r.error.reason for r in response.results] == ["INSUFFICIENT_BALANCE"] * 5
        # ...so the next single call waits for 3 tokens at one a second.
        with pytest.raises(RateLimited) as caught:
            await client.accounts.ListTokens(READ)
    assert caught.value.retry_delay is not None
    assert caught.value.retry_delay > datetime.timedelta(seconds=2)


async def test_keys_have_separate_buckets(server: RunningServer, create_key: CreateKey) -> None:
    slow = await create_key(admin_pb2.API_KEY_SCOPE_READ_ONLY, rate_limit=(1, 1))
    other = await create_key(admin_pb2.API_KEY_SCOPE_READ_ONLY, rate_limit=(1, 1))
    async with server.client(slow.secret) as first, server.client(other.secret) as second:
        await first.accounts.ListTokens(READ)
        with pytest.raises(RateLimited):
            await first.accounts.ListTokens(READ)
        await second.accounts.ListTokens(READ)


async def test_errors_are_rich_statuses_on_the_wire(server: RunningServer) -> None:
    """What a client without our SDK sees: a google.rpc.Status with ErrorInfo and BadRequest."""
    async with grpc.aio.insecure_channel(server.target) as channel:
        stub = admin_pb2_grpc.AdminServiceStub(channel)
        call = stub.CreateApiKey(
            admin_pb2.CreateApiKeyRequest(scope=admin_pb2.API_KEY_SCOPE_PAYER, addresses=["not-an-address"]),
            metadata=(("authorization", f"Bearer {server.settings.admin_api_key.get_secret_value()}"),),  # type: ignore[union-attr]
        )
        with pytest.raises(grpc.aio.AioRpcError) as caught:
            await call
    status = await rpc_status.aio.from_call(call)
    assert status is not None
    assert status.code == grpc.StatusCode.INVALID_ARGUMENT.value[0]
    assert caught.value.code() is grpc.StatusCode.INVALID_ARGUMENT
    info = error_details_pb2.ErrorInfo()
    bad = error_details_pb2.BadRequest()
    assert status.details[0].Unpack(info)
    assert status.details[1].Unpack(bad)
    assert (info.domain, info.reason) == (ERROR_DOMAIN, "INVALID_FIELD")
    assert [v.field for v in bad.field_violations] == ["addresses[0]"]


async def test_a_second_server_on_the_same_port_fails_loudly(
    server: RunningServer, start_server: StartServer, tmp_path: Path
) -> None:
    with pytest.raises(StartupError, match="cannot listen on"):
        await start_server(listen=server.target, data_dir=tmp_path / "other")
    async with server.client(api_key=None) as client:  # the first one is unharmed
        health = health_pb2_grpc.HealthStub(client.channel)
        assert (await health.Check(health_pb2.HealthCheckRequest())).status == health_pb2.HealthCheckResponse.SERVING


async def test_a_sqlite_library_too_old_for_the_ledger_stops_the_start(
    start_server: StartServer, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # An older library cannot be installed beside this one; the version it reports is what the check reads.
    monkeypatch.setattr(sqlite3, "sqlite_version_info", (3, 22, 0))
    with pytest.raises(StartupError, match=r"needs SQLite 3\.24\.0 or newer; this Python uses SQLite 3\.22\.0"):
        await start_server(data_dir=tmp_path / "old")
    assert not (tmp_path / "old").exists()  # nothing created


async def test_metrics_endpoint_serves_prometheus_text(start_server: StartServer) -> None:
    server = await start_server(metrics_listen="127.0.0.1:0")
    engine = server.service.engine
    await engine.execute(CreditDeposit(ALICE, ALICE, engine.tokens.get("USDC"), 5 * 10**6, "0x" + "1" * 64, 0, 1))
    async with server.client() as client:
        await client.accounts.ListTokens(READ)
        await client.payments.SubmitPayment(_item())
    async with server.client(api_key=None) as anonymous:
        with pytest.raises(AgentflowError):
            await anonymous.accounts.ListTokens(READ)
        # A handler that ends the call itself (the health service's abort) is counted by its own code.
        with pytest.raises(NotFound):
            await health_pb2_grpc.HealthStub(anonymous.channel).Check(health_pb2.HealthCheckRequest(service="nope"))
        with pytest.raises(AgentflowError):
            async for _ in anonymous.events.SubscribeEvents(events_pb2.SubscribeEventsRequest()):
                pass
    url = f"http://127.0.0.1:{server.service.endpoints.metrics_port}/metrics"
    body = await asyncio.to_thread(lambda: urllib.request.urlopen(url, timeout=5).read().decode())
    method = "/agentflow.payments.v1.AccountService/ListTokens"
    assert f'agentflow_rpc_requests_total{{code="OK",method="{method}"}} 1.0' in body
    assert f'agentflow_rpc_requests_total{{code="UNAUTHENTICATED",method="{method}"}} 1.0' in body
    assert 'agentflow_auth_failures_total{reason="API_KEY_MISSING"} 2.0' in body  # ListTokens, SubscribeEvents
    assert "agentflow_api_keys_active 1.0" in body
    assert f'agentflow_rpc_duration_seconds_count{{method="{method}"}}' in body
    assert 'agentflow_rpc_requests_total{code="NOT_FOUND",method="/grpc.health.v1.Health/Check"} 1.0' in body
    subscribe = "/agentflow.payments.v1.EventService/SubscribeEvents"
    assert f'agentflow_rpc_requests_total{{code="UNAUTHENTICATED",method="{subscribe}"}} 1.0' in body
    assert f'agentflow_rpc_duration_seconds_count{{method="{subscribe}"}}' not in body
    assert 'agentflow_settlement_queue_depth{token="USDC"} 1.0' in body
    assert 'agentflow_settlement_queue_depth{token="ETH"} 0.0' in body
    assert "agentflow_engine_commit_seconds_count 2.0" in body  # the deposit's group, the payment's group
    assert "agentflow_engine_group_commands_sum 2.0" in body


async def test_a_ledger_that_refuses_writes_answers_unavailable_and_changes_nothing(
    server: RunningServer, admin: AsyncClient
) -> None:
    import sqlite3

    from agentflow_payments import Unavailable

    before = await admin.admin.ListApiKeys(admin_pb2.ListApiKeysRequest(show_revoked=True))
    # Another writer holds the SQLite write lock past the server's busy timeout (5 s).
    blocker = sqlite3.connect(server.settings.data_dir / "agentflow.db", isolation_level=None)
    blocker.execute("BEGIN IMMEDIATE")
    try:
        with pytest.raises(Unavailable) as caught:
            await admin.admin.CreateApiKey(admin_pb2.CreateApiKeyRequest(scope=admin_pb2.API_KEY_SCOPE_READ_ONLY))
    finally:
        blocker.execute("ROLLBACK")
        blocker.close()
    assert caught.value.reason is Reason.STORAGE_UNAVAILABLE
    assert caught.value.retry_delay == datetime.timedelta(seconds=1)
    assert "database is locked" not in caught.value.message  # driver details stay in the server log
    after = await admin.admin.ListApiKeys(admin_pb2.ListApiKeysRequest(show_revoked=True))
    assert after == before


async def test_graceful_stop_finishes_calls_in_flight_and_refuses_new_ones(
    server: RunningServer, admin: AsyncClient
) -> None:
    import sqlite3

    from agentflow_payments import Unavailable

    # Hold the write lock so that a CreateApiKey is still in flight when the stop begins.
    blocker = sqlite3.connect(server.settings.data_dir / "agentflow.db", isolation_level=None)
    blocker.execute("BEGIN IMMEDIATE")
    in_flight = asyncio.ensure_future(
        admin.admin.CreateApiKey(admin_pb2.CreateApiKeyRequest(scope=admin_pb2.API_KEY_SCOPE_READ_ONLY))
    )
    await asyncio.sleep(0.3)
    stopping = asyncio.ensure_future(server.service.stop(grace=10))
    await asyncio.sleep(0.3)
    assert not in_flight.done()
    async with server.client() as late:
        with pytest.raises(Unavailable):
            await late.admin.ListApiKeys(admin_pb2.ListApiKeysRequest())
    blocker.execute("ROLLBACK")
    blocker.close()
    created = await asyncio.wait_for(in_flight, 10)
    assert created.secret.startswith("afk_")
    await asyncio.wait_for(stopping, 10)
