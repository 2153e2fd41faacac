"""The Python SDK's typed methods, its blocking Client and its retries, against a real server."""

from __future__ import annotations

import asyncio
import datetime
import subprocess
import threading
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import grpc
import pytest

from agentflow_payments import (
    AgentflowError,
    AsyncClient,
    Cancelled,
    Client,
    FailedPrecondition,
    InsufficientBalance,
    InvalidArgument,
    NotFound,
    Page,
    PaymentNotCancellable,
    PermissionDenied,
    RateLimited,
    Reason,
    RetryConfig,
    ScopeDenied,
    Unavailable,
)
from agentflow_payments import _convert as convert
from agentflow_payments.v1 import common_pb2, escrow_pb2, payments_pb2, payments_pb2_grpc, webhooks_pb2

from .conftest import ADMIN_KEY, ALICE, BOB, RunningServer, StartServer
from .proxy import FaultyProxy
from .test_payments import CAROL, USDC, Fund, _funder


@pytest.fixture
def fund(server: RunningServer) -> Fund:
    return _funder(server)


@pytest.fixture
async def proxy(server: RunningServer) -> AsyncIterator[FaultyProxy]:
    proxy = await FaultyProxy(server.service.endpoints.grpc_port).start()
    yield proxy
    await proxy.stop()


async def test_typed_methods_take_python_values_and_return_messages(admin: AsyncClient, fund: Fund) -> None:
    await fund(ALICE, 100 * USDC)
    payment = await admin.submit_payment(ALICE, BOB, "USDC", 10 * USDC, priority="high", metadata={"job": "7"})
    assert payment.status == payments_pb2.PAYMENT_STATUS_QUEUED
    assert payment.priority == common_pb2.PRIORITY_HIGH
    assert payment.amount == str(10 * USDC)
    assert payment.request_id, "the SDK gives every submission a request id"

    fee = await admin.quote_fee(ALICE, "USDC", 10 * USDC, priority="PRIORITY_HIGH")
    assert fee.total == payment.fee.total

    assert await admin.get_payment(payment.name) == payment
    page = await admin.list_payments(payer=ALICE, status="queued", page_size=10)
    assert isinstance(page, Page)
    assert [p.name for p in page.items] == [payment.name]
    assert page.next_page_token == ""
    assert (await admin.list_payments(payer=ALICE, status="completed")).items == []

    (balance,) = await admin.get_balances(ALICE, ["USDC"])
    assert int(balance.reserved) == 10 * USDC + int(fee.total)
    assert int(balance.available) + int(balance.reserved) == 100 * USDC

    cancelled = await admin.cancel_payment(payment.name, "changed my mind")
    assert cancelled.status == payments_pb2.PAYMENT_STATUS_CANCELLED
    (balance,) = await admin.get_balances(ALICE, ["USDC"])
    assert int(balance.available) == 100 * USDC

    entries = await admin.list_ledger_entries(ALICE, token="USDC")
    assert entries.items, "the deposit and the reservation are journalled"
    events = await admin.list_events(types=["payment.*"], resource=payment.name)
    assert [e.type for e in events.items] == ["payment.created", "payment.queued", "payment.cancelled"]


async def test_escrow_methods(admin: AsyncClient, fund: Fund) -> None:
    await fund(ALICE, 100 * USDC)
    escrow = await admin.create_escrow(
        ALICE, BOB, "USDC", 20 * USDC, task_id="task-1", expire_time=datetime.timedelta(hours=1)
    )
    assert escrow.status == escrow_pb2.ESCROW_STATUS_ACTIVE
    assert escrow.release_condition == escrow_pb2.RELEASE_CONDITION_PAYER_APPROVAL
    released = await admin.release_escrow(escrow.name, 5 * USDC)
    assert released.payment.amount == str(5 * USDC)
    assert (await admin.get_escrow(escrow.name)).held_amount == str(15 * USDC)
    refunded = await admin.refund_escrow(escrow.name, "task abandoned")
    assert refunded.status == escrow_pb2.ESCROW_STATUS_REFUNDED
    assert [e.name for e in (await admin.list_escrows(task_id="task-1", status="refunded")).items] == [escrow.name]


async def test_webhook_methods(start_server: StartServer) -> None:
    server = await start_server(webhook_allow_private=True)
    async with server.client() as admin:
        await _webhook_methods(admin)


async def _webhook_methods(admin: AsyncClient) -> None:
    # Nothing listens there: the endpoint is disabled before anything is sent.
    created = await admin.create_webhook("http://127.0.0.1:9/agentflow", ["payment.*"], description="ops")
    assert created.secret.startswith("whsec_")
    updated = await admin.update_webhook(created.webhook.name, state="disabled", description="paused")
    assert updated.state == webhooks_pb2.WEBHOOK_STATE_DISABLED
    assert updated.description == "paused"
    assert list(updated.event_types) == ["payment.*"], "fields not given are kept"
    assert [w.name for w in (await admin.list_webhooks()).items] == [created.webhook.name]
    assert (await admin.list_webhook_deliveries(created.webhook.name, status="failed")).items == []
    await admin.delete_webhook(created.webhook.name)
    with pytest.raises(NotFound):
        await admin.get_webhook(created.webhook.name)


async def test_submit_payments_returns_each_payment_or_its_error_in_order(admin: AsyncClient, fund: Fund) -> None:
    await fund(ALICE, 100 * USDC)
    results = await admin.submit_payments(
        [
            {"payer": ALICE, "payee": BOB, "token": "USDC", "amount": USDC},
            payments_pb2.SubmitPaymentRequest(payer=ALICE, payee=CAROL, token="USDC", amount="not a number"),
            {"payer": ALICE, "payee": CAROL, "token": "USDC", "amount": 1000 * USDC},
            {"payer": ALICE, "payee": CAROL, "token": "USDC", "amount": 2 * USDC, "priority": "urgent"},
        ]
    )
    first, bad, poor, urgent = results
    assert isinstance(first, payments_pb2.Payment)
    assert isinstance(bad, InvalidArgument)
    assert bad.reason == Reason.INVALID_FIELD
    assert [v.field for v in bad.field_violations] == ["requests[1].amount"]
    assert isinstance(poor, InsufficientBalance)
    assert poor.code == grpc.StatusCode.FAILED_PRECONDITION
    assert isinstance(urgent, payments_pb2.Payment)
    assert urgent.priority == common_pb2.PRIORITY_URGENT


async def test_errors_are_typed_and_name_the_field(server: RunningServer, admin: AsyncClient, fund: Fund) -> None:
    await fund(ALICE, USDC)
    with pytest.raises(InsufficientBalance) as poor:
        await admin.submit_payment(ALICE, BOB, "USDC", 5 * USDC)
    assert poor.value.reason == Reason.INSUFFICIENT_BALANCE
    with pytest.raises(InvalidArgument) as bad:
        await admin.submit_payment(ALICE, "0x1234", "USDC", 1)
    assert [v.field for v in bad.value.field_violations] == ["payee"]
    with pytest.raises(NotFound):
        await admin.get_payment("payments/" + "0" * 22)
    reader = await admin.create_api_key("reader", "read_only")
    async with server.client(reader.secret) as read_only:
        with pytest.raises(ScopeDenied) as denied:
            await read_only.submit_payment(ALICE, BOB, "USDC", 1)
    assert isinstance(denied.value, PermissionDenied)
    (balance,) = await admin.get_balances(ALICE, ["USDC"])
    assert int(balance.available) == USDC, "refused calls change nothing"


async def test_caller_mistakes_fail_before_anything_is_sent(admin: AsyncClient) -> None:
    with pytest.raises(TypeError, match="amount must be an int"):
        await admin.submit_payment(ALICE, BOB, "USDC", 1.5)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="low, normal, high, urgent"):
        await admin.submit_payment(ALICE, BOB, "USDC", 1, priority="asap")
    with pytest.raises(ValueError, match="timezone-aware"):
        await admin.create_escrow(ALICE, BOB, "USDC", 1, task_id="t", expire_time=datetime.datetime(2030, 1, 1))
    with pytest.raises(TypeError, match="not one string"):
        await admin.get_balances(ALICE, "USDC")
    assert (await admin.list_payments()).items == [], "nothing reached the server"


def test_enums_are_taken_by_any_of_their_names() -> None:
    for value in ("high", "HIGH", "PRIORITY_HIGH", common_pb2.PRIORITY_HIGH):
        assert convert.enum(common_pb2.Priority, value, "priority") == common_pb2.PRIORITY_HIGH
    assert convert.enum(common_pb2.Priority, None, "priority") == common_pb2.PRIORITY_UNSPECIFIED
    assert convert.enum(escrow_pb2.ReleaseCondition, "verifier-attestation", "release_condition") == (
        escrow_pb2.RELEASE_CONDITION_VERIFIER_ATTESTATION
    )
    with pytest.raises(ValueError, match="unspecified"):
        convert.enum(common_pb2.Priority, "unspecified", "priority")
    with pytest.raises(ValueError, match="is not a Priority"):
        convert.enum(common_pb2.Priority, 9, "priority")
    assert convert.enum_name(payments_pb2.PaymentStatus, payments_pb2.PAYMENT_STATUS_COMPLETED) == "completed"


def test_retry_pauses_grow_within_their_bounds() -> None:
    config = RetryConfig(max_attempts=5, initial_backoff=0.1, max_backoff=0.3, multiplier=2)
    for attempt, bound in ((1, 0.1), (2, 0.2), (3, 0.3), (4, 0.3)):
        pauses = [config.pause(attempt) for _ in range(200)]
        assert all(0 <= p <= bound for p in pauses)
        assert max(pauses) > bound / 2, "full jitter spreads over the whole bound"
    with pytest.raises(ValueError, match="max_attempts"):
        RetryConfig(max_attempts=0)


async def test_a_submission_retried_after_a_dropped_connection_pays_once(
    server: RunningServer, fund: Fund, proxy: FaultyProxy
) -> None:
    await fund(ALICE, 100 * USDC)
    async with AsyncClient(proxy.target, ADMIN_KEY, timeout=5) as client:
        await client.get_balances(ALICE)  # the connection is up, so the next big frame is the answer
        proxy.cut_next_answer = True
        payment = await client.submit_payment(ALICE, BOB, "USDC", 10 * USDC)
    assert proxy.cuts == 1, "the first answer was lost on the way"
    async with server.client() as direct:
        payments = (await direct.list_payments(payer=ALICE)).items
        (balance,) = await direct.get_balances(ALICE, ["USDC"])
    assert [p.name for p in payments] == [payment.name], "one payment, though the server was asked twice"
    assert int(balance.available) == 100 * USDC - 10 * USDC - int(payment.fee.total)


async def test_without_retries_the_dropped_answer_is_unavailable_and_the_payment_was_made(
    server: RunningServer, fund: Fund, proxy: FaultyProxy
) -> None:
    """What the retry above recovers from: the server did the work, the client heard nothing."""
    await fund(ALICE, 100 * USDC)
    async with AsyncClient(proxy.target, ADMIN_KEY, timeout=5, retry=RetryConfig(max_attempts=1)) as client:
        await client.get_balances(ALICE)
        proxy.cut_next_answer = True
        with pytest.raises(Unavailable):
            await client.submit_payment(ALICE, BOB, "USDC", 10 * USDC, request_id="req-1")
    async with server.client() as direct:
        # The caller's own retry with the same id is answered from the idempotency record.
        again = await direct.submit_payment(ALICE, BOB, "USDC", 10 * USDC, request_id="req-1")
        assert [p.name for p in (await direct.list_payments(payer=ALICE)).items] == [again.name]


async def test_a_call_that_can_act_twice_is_not_retried(server: RunningServer, fund: Fund, proxy: FaultyProxy) -> None:
    await fund(ALICE, 100 * USDC)
    async with AsyncClient(proxy.target, ADMIN_KEY, timeout=5) as client:
        payment = await client.submit_payment(ALICE, BOB, "USDC", USDC)
        proxy.cut_next_answer = True
        with pytest.raises(Unavailable):
            await client.cancel_payment(payment.name)
    async with server.client() as direct:
        # It was cancelled the first time: a blind retry would have failed on its own success.
        assert (await direct.get_payment(payment.name)).status == payments_pb2.PAYMENT_STATUS_CANCELLED
        with pytest.raises(PaymentNotCancellable) as refused:
            await direct.cancel_payment(payment.name)
    assert refused.value.reason == Reason.PAYMENT_NOT_CANCELLABLE
    assert isinstance(refused.value, FailedPrecondition)


class _LoopHoggingPayments(payments_pb2_grpc.PaymentServiceServicer):
    async def GetPayment(
        self, request: payments_pb2.GetPaymentRequest, context: grpc.aio.ServicerContext[Any, Any]
    ) -> payments_pb2.GetPaymentResponse:
        time.sleep(0.02)  # noqa: ASYNC251 (on purpose: calls arriving meanwhile wait unmatched in gRPC core)
        return payments_pb2.GetPaymentResponse(payment=payments_pb2.Payment(name=request.name))


async def test_calls_an_overloaded_server_sheds_are_tried_again() -> None:
    """When more calls wait in gRPC core than the application takes (``grpc.server.max_pending_requests``),
    the server sheds new ones with CANCELLED before they run; the SDK tries them again, as it does after
    UNAVAILABLE (the bench saw a third of its calls shed this way at 1,500/s offered)."""
    server = grpc.aio.server(
        options=[("grpc.server.max_pending_requests", 0), ("grpc.server.max_pending_requests_hard_limit", 1)]
    )
    payments_pb2_grpc.add_PaymentServiceServicer_to_server(_LoopHoggingPayments(), server)
    target = f"127.0.0.1:{server.add_insecure_port('127.0.0.1:0')}"
    await server.start()
    names = [f"payments/{i:022x}" for i in range(20)]
    try:
        async with AsyncClient(target, retry=RetryConfig(max_attempts=1)) as once:
            outcomes = await asyncio.gather(*(once.get_payment(n) for n in names), return_exceptions=True)
        assert any(isinstance(o, Cancelled) for o in outcomes), outcomes
        patient = RetryConfig(max_attempts=50, initial_backoff=0.01, max_backoff=0.2)
        async with AsyncClient(target, retry=patient) as client:
            answered = await asyncio.gather(*(client.get_payment(n) for n in names))
        assert [p.name for p in answered] == names
    finally:
        await server.stop(None)


async def test_an_attempt_past_its_deadline_is_retried_with_the_same_request_id(
    server: RunningServer, fund: Fund, proxy: FaultyProxy
) -> None:
    await fund(ALICE, 100 * USDC)
    retry = RetryConfig(max_attempts=3, initial_backoff=0.05)
    async with AsyncClient(proxy.target, ADMIN_KEY, timeout=1.0, retry=retry) as client:
        await client.get_balances(ALICE)
        proxy.stall_next_answer = 1.5
        payment = await client.submit_payment(ALICE, BOB, "USDC", 3 * USDC)
    assert proxy.stalls == 1
    async with server.client() as direct:
        assert [p.name for p in (await direct.list_payments(payer=ALICE)).items] == [payment.name]


async def test_the_blocking_client_has_the_same_methods(server: RunningServer, fund: Fund) -> None:
    await fund(ALICE, 100 * USDC)

    def script() -> tuple[payments_pb2.Payment, list[str], AgentflowError]:
        with Client(server.target, ADMIN_KEY, timeout=10) as client:
            payment = client.submit_payment(ALICE, BOB, "USDC", 4 * USDC, memo="from a thread")
            client.cancel_payment(payment.name)
            states = [common_pb2.Priority.Name(payment.priority)]
            states += [payments_pb2.PaymentStatus.Name(p.status) for p in client.watch_payment(payment.name)]
            try:
                client.submit_payment(ALICE, BOB, "USDC", 1000 * USDC)
            except AgentflowError as error:
                return payment, states, error
            raise AssertionError("an overdraft was accepted")

    payment, states, error = await asyncio.to_thread(script)
    assert payment.memo == "from a thread"
    assert states == ["PRIORITY_NORMAL", "PAYMENT_STATUS_CANCELLED"]
    assert isinstance(error, InsufficientBalance)


def test_a_closed_blocking_client_says_so() -> None:
    client = Client("127.0.0.1:1")
    client.close()
    client.close()  # twice is harmless
    with pytest.raises(RuntimeError, match="closed"):
        client.get_payment("payments/x")


@pytest.fixture
def certificate(tmp_path: Path) -> tuple[Path, Path]:
    """A self-signed certificate for 127.0.0.1 and its key: a private CA of one."""
    cert, key = tmp_path / "server.pem", tmp_path / "server.key"
    subprocess.run(
        [
            *("openssl", "req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes"),
            *("-keyout", str(key), "-out", str(cert), "-days", "1", "-subj", "/CN=localhost"),
            *("-addext", "subjectAltName=DNS:localhost,IP:127.0.0.1"),
        ],
        check=True,
        capture_output=True,
    )
    return cert, key


async def test_tls_with_a_private_ca(start_server: StartServer, certificate: tuple[Path, Path]) -> None:
    """The SDK trusts the CA bundle it is given, and refuses a server its CAs did not sign."""
    cert, key = certificate
    server = await start_server(tls_cert_file=cert, tls_key_file=key)
    async with AsyncClient(server.target, ADMIN_KEY, root_certificates=cert.read_bytes(), timeout=5) as client:
        assert (await client.list_tokens()).tokens
    # The system CA bundle does not know this server: the handshake fails, after the retries.
    quick = RetryConfig(max_attempts=2, initial_backoff=0.01)
    async with AsyncClient(server.target, ADMIN_KEY, tls=True, timeout=2, retry=quick) as client:
        with pytest.raises(Unavailable):
            await client.list_tokens()


async def test_an_api_key_without_rate_limits_takes_the_server_defaults(admin: AsyncClient) -> None:
    created = await admin.create_api_key("ops", "read_only", expire_time=datetime.timedelta(days=1))
    assert created.secret.startswith("afk_")
    assert created.api_key.rate_limit.requests_per_minute > 0, "the server's default applies"
    limited = await admin.create_api_key("bot", "payer", addresses=[ALICE], requests_per_minute=60, burst=5)
    assert (limited.api_key.rate_limit.requests_per_minute, limited.api_key.rate_limit.burst) == (60, 5)
    with pytest.raises(InvalidArgument) as partial:
        await admin.create_api_key("half", "read_only", requests_per_minute=60)
    assert [v.field for v in partial.value.field_violations] == ["rate_limit.burst"]
    revoked = await admin.revoke_api_key(created.api_key.name)
    assert revoked.HasField("revoke_time")
    assert [k.name for k in (await admin.list_api_keys()).items if k.name == created.api_key.name] == []


async def test_a_rate_limited_call_is_made_again_after_the_delay_the_server_asks(
    server: RunningServer, admin: AsyncClient, fund: Fund
) -> None:
    """RATE_LIMIT_EXCEEDED refuses a call before it does anything, and RetryInfo says when the key may call
    again: the SDK waits that long and calls again (streams are opened again), when the delay is within the
    retry policy's longest pause. With retries off, or a longer delay, the caller gets RateLimited."""
    await fund(ALICE, 100 * USDC)
    payment = await admin.submit_payment(ALICE, BOB, "USDC", USDC)
    # Two calls a second, one at a time: each call after the first waits about half a second.
    created = await admin.create_api_key("slow", "read_only", requests_per_minute=120, burst=1)
    async with AsyncClient(server.target, created.secret, timeout=5) as client:
        started = time.monotonic()
        for _ in range(3):
            assert (await client.list_tokens()).tokens
        assert time.monotonic() - started >= 0.8
        async for watched in client.watch_payment(payment.name):
            assert watched.name == payment.name
            break
    # A call that is never made again after a failure (it might act twice) is after a rate limit: it did nothing.
    slow_admin = await admin.create_api_key("slow admin", "admin", requests_per_minute=120, burst=1)
    async with AsyncClient(server.target, slow_admin.secret, timeout=5) as client:
        started = time.monotonic()
        made = [await client.create_api_key(f"k{i}", "read_only") for i in range(2)]
        assert time.monotonic() - started >= 0.4
    assert len({k.api_key.name for k in made}) == 2
    await asyncio.sleep(0.6)
    for retry in (RetryConfig(max_attempts=1), RetryConfig(max_backoff=0.1)):
        async with AsyncClient(server.target, created.secret, timeout=5, retry=retry) as client:
            await asyncio.sleep(0.6)
            await client.list_tokens()
            with pytest.raises(RateLimited) as refused:
                await client.list_tokens()
            assert refused.value.retry_delay is not None


async def test_streams_raise_when_no_server_is_ever_reached() -> None:
    quick = RetryConfig(max_attempts=3, initial_backoff=0.01)
    async with AsyncClient("127.0.0.1:1", ADMIN_KEY, retry=quick) as client:
        with pytest.raises(Unavailable):
            async for _ in client.subscribe_events():
                pass
        with pytest.raises(Unavailable):
            async for _ in client.watch_payment("payments/" + "0" * 22):
                pass


async def test_closing_the_blocking_client_ends_an_iteration_in_another_thread(server: RunningServer) -> None:
    client = Client(server.target, ADMIN_KEY)
    started = threading.Event()

    def follow() -> list[int]:
        seen = []
        started.set()
        for event in client.subscribe_events(types=["payment.*"]):
            seen.append(event.sequence)
        return seen

    follower = asyncio.create_task(asyncio.to_thread(follow))
    await asyncio.to_thread(started.wait)
    await asyncio.sleep(0.3)  # the stream is open and waiting
    await asyncio.to_thread(client.close)
    assert await asyncio.wait_for(follower, 5) == [], "the iteration ended instead of hanging"
    with pytest.raises(RuntimeError, match="closed"):
        client.list_tokens()
