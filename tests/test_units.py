"""Unit tests of the pieces that need no server: rate buckets, addresses, settings, error mapping."""

from __future__ import annotations

import datetime
from pathlib import Path

import grpc
import pytest

from agentflow_payments import FieldViolation, RateLimited, Reason, from_rpc_error
from agentflow_payments.v1 import escrow_pb2, payments_pb2
from agentflow_server.addresses import parse_address
from agentflow_server.api import pagination
from agentflow_server.api.status import to_grpc_status
from agentflow_server.auth.rate_limit import RateLimiter
from agentflow_server.config import load_settings
from agentflow_server.errors import ApiError
from agentflow_server.event_loop import new_event_loop, run, running_kind

from .conftest import ALICE


class FakeClock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def test_bucket_allows_its_burst_then_refills_at_the_rate() -> None:
    clock = FakeClock()
    limiter = RateLimiter(clock)
    assert all(limiter.try_acquire("k", 60, 3) is None for _ in range(3))
    wait = limiter.try_acquire("k", 60, 3)
    assert wait == datetime.timedelta(seconds=1)
    clock.now += 0.5
    assert limiter.try_acquire("k", 60, 3) == datetime.timedelta(seconds=0.5)
    clock.now += 0.5
    assert limiter.try_acquire("k", 60, 3) is None
    # A long pause refills to the burst, never beyond it.
    clock.now += 3600
    assert all(limiter.try_acquire("k", 60, 3) is None for _ in range(3))
    assert limiter.try_acquire("k", 60, 3) is not None


def test_refused_calls_take_nothing() -> None:
    clock = FakeClock()
    limiter = RateLimiter(clock)
    assert limiter.try_acquire("k", 60, 1) is None
    for _ in range(10):
        assert limiter.try_acquire("k", 60, 1) is not None
    clock.now += 1
    assert limiter.try_acquire("k", 60, 1) is None


def test_bulk_cost_beyond_the_burst_goes_through_on_a_full_bucket_and_leaves_debt() -> None:
    clock = FakeClock()
    limiter = RateLimiter(clock)
    assert limiter.try_acquire("k", 60, 3, cost=2) is None
    # One token left: a cost of 10 must wait for a full bucket (2 more tokens)...
    assert limiter.try_acquire("k", 60, 3, cost=10) == datetime.timedelta(seconds=2)
    clock.now += 2
    # ...then goes through, leaving 7 tokens of debt: the next single call waits 8 s.
    assert limiter.try_acquire("k", 60, 3, cost=10) is None
    assert limiter.try_acquire("k", 60, 3) == datetime.timedelta(seconds=8)


def test_a_changed_limit_starts_a_fresh_bucket_and_forget_drops_it() -> None:
    clock = FakeClock()
    limiter = RateLimiter(clock)
    assert limiter.try_acquire("k", 60, 1) is None
    assert limiter.try_acquire("k", 60, 1) is not None
    assert limiter.try_acquire("k", 120, 1) is None
    assert limiter.try_acquire("k", 120, 1) is not None
    limiter.forget("k")
    assert limiter.try_acquire("k", 120, 1) is None


@pytest.mark.parametrize(
    ("raw", "expected"),
    [
        (ALICE, ALICE),
        (ALICE.lower(), ALICE),
        ("0x" + ALICE[2:].upper(), None),  # all upper case is not a checksum form
        ("0x5aAeb6053F3E94C9b9A09f33669435E7Ef1BeAeD", None),
        (ALICE[2:], None),
        (ALICE + "00", None),
        ("0x" + "0" * 40, None),
        ("0x" + "g" * 40, None),
        ("", None),
        (" " + ALICE, None),
    ],
)
def test_parse_address(raw: str, expected: str | None) -> None:
    if expected is None:
        with pytest.raises(ValueError, match=r"must|checksum"):
            parse_address(raw)
    else:
        assert parse_address(raw) == expected


def test_settings_come_from_toml_then_environment(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    config = tmp_path / "agentflow.toml"
    config.write_text('listen = "0.0.0.0:6000"\nrate_limit_per_minute = 30\nlog_format = "text"\n')
    monkeypatch.setenv("AGENTFLOW_CONFIG", str(config))
    monkeypatch.setenv("AGENTFLOW_RATE_LIMIT_PER_MINUTE", "45")
    monkeypatch.setenv("AGENTFLOW_DATA_DIR", str(tmp_path / "ledger"))
    settings = load_settings()
    assert settings.listen == "0.0.0.0:6000"
    assert settings.rate_limit_per_minute == 45  # the environment wins over the file
    assert settings.log_format == "text"
    assert settings.ledger_url == f"sqlite+aiosqlite:///{tmp_path / 'ledger' / 'agentflow.db'}"
    assert load_settings(listen="127.0.0.1:7").listen == "127.0.0.1:7"


def test_settings_defaults(monkeypatch: pytest.MonkeyPatch) -> None:
    import os

    for name in list(os.environ):
        if name.startswith("AGENTFLOW_"):
            monkeypatch.delenv(name)
    settings = load_settings()
    assert settings.listen == "127.0.0.1:50051"
    assert settings.metrics_listen == "127.0.0.1:9464"
    assert settings.admin_api_key is None
    assert (settings.rate_limit_per_minute, settings.rate_limit_burst) == (100, 20)


def test_secrets_do_not_appear_in_the_settings_repr(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("AGENTFLOW_ADMIN_API_KEY", "afk_super_secret_value")
    assert "afk_super_secret_value" not in repr(load_settings())


def _rpc_error(
    code: grpc.StatusCode, details: str, trailing: tuple[tuple[str, object], ...] = ()
) -> grpc.aio.AioRpcError:
    """An AioRpcError as grpc.aio raises it, carrying a status the server built."""
    return grpc.aio.AioRpcError(code, grpc.aio.Metadata(), grpc.aio.Metadata(*trailing), details)


def test_server_status_decodes_to_the_sdk_exception_with_every_detail() -> None:
    error = ApiError(
        Reason.RATE_LIMIT_EXCEEDED,
        "slow down",
        metadata={"retry_after_ms": "1500"},
        field_violations=[FieldViolation("requests[2].amount", "must be positive")],
        retry_delay=datetime.timedelta(milliseconds=1500),
    )
    status = to_grpc_status(error)
    decoded = from_rpc_error(_rpc_error(status.code, status.details, status.trailing_metadata))
    assert isinstance(decoded, RateLimited)
    assert decoded.code is grpc.StatusCode.RESOURCE_EXHAUSTED
    assert decoded.reason is Reason.RATE_LIMIT_EXCEEDED
    assert decoded.message == "slow down"
    assert decoded.metadata == {"retry_after_ms": "1500"}
    assert decoded.field_violations == (FieldViolation("requests[2].amount", "must be positive"),)
    assert decoded.retry_delay == datetime.timedelta(milliseconds=1500)


def test_status_without_details_decodes_by_code() -> None:
    from agentflow_payments import NotFound

    decoded = from_rpc_error(_rpc_error(grpc.StatusCode.NOT_FOUND, "gone"))
    assert isinstance(decoded, NotFound)
    assert decoded.reason == "NOT_FOUND"


def test_every_reason_has_a_code_and_a_description() -> None:
    for reason in Reason:
        assert isinstance(reason.code, grpc.StatusCode)
        assert reason.code is not grpc.StatusCode.OK
        assert reason.description.endswith(".")


@pytest.mark.parametrize("time_us", [0, 1, 999_999, 1_000_000, 1_795_535_137_866_845, -1, -1_500_000])
def test_timestamps_match_protobufs_own_conversion(time_us: int) -> None:
    from google.protobuf.timestamp_pb2 import Timestamp

    from agentflow_server.wire import timestamp

    expected = Timestamp()
    expected.FromMicroseconds(time_us)
    assert timestamp(time_us) == expected


def test_ids_differ_and_sort_in_creation_order_within_a_microsecond_and_when_the_clock_goes_back() -> None:
    from agentflow_server.engine.ids import IdMint

    mint = IdMint()
    ids = [mint.new(1_764_000_000_000_000) for _ in range(100_000)]
    ids += [mint.new(1_763_000_000_000_000) for _ in range(10)]  # the wall clock stepped back
    ids += [mint.new(1_764_000_000_000_007)]
    assert ids == sorted(set(ids))
    assert all(len(i) == 22 and int(i, 16) >= 0 for i in ids)
    assert ids[0][:14] == f"{1_764_000_000_000_000:014x}"
    assert ids[-1][:14] == f"{1_764_000_000_000_007:014x}"


def test_a_payment_serialized_in_two_parts_reads_as_the_whole_payment_in_each_of_its_states() -> None:
    import dataclasses

    from agentflow_payments.v1 import common_pb2, payments_pb2
    from agentflow_server.engine.fees import Fee
    from agentflow_server.engine.model import Payment, PaymentStatus, Priority, Settlement
    from agentflow_server.wire import payment_bytes, timestamp

    fee = Fee(3_000, 1_200, 900, 600, 300, 3_000, 30, -5, 10, 0)
    queued = Payment(
        payment_id="0190abcdef0123456789abcd",
        payer=ALICE,
        payee="0x" + "b" * 40,
        token="USDC",
        amount=10**6,
        fee=fee,
        priority=Priority.HIGH,
        status=PaymentStatus.QUEUED,
        task_id="task-7",
        memo="for the summary",
        metadata={"run": "42"},
        request_id="req-1",
        create_time_us=1_764_000_000_000_001,
        update_time_us=1_764_000_000_000_001,
        failure_reason="",
        escrow_id="e1",
    )
    processing = dataclasses.replace(
        queued, status=PaymentStatus.PROCESSING, update_time_us=1_764_000_000_500_000, batch_id="b1"
    )
    settlement = Settlement("b1", "0x" + "ab" * 32, 12, 10_900, 10_900 * 10**9, 1_764_000_001_000_000)
    completed = dataclasses.replace(
        processing, status=PaymentStatus.COMPLETED, update_time_us=1_764_000_001_000_000, settlement=settlement
    )
    failed = dataclasses.replace(
        processing, status=PaymentStatus.FAILED, update_time_us=1_764_000_002_000_000, failure_reason="reverted"
    )
    for payment in (queued, processing, completed, failed):
        expected = payments_pb2.Payment(
            name="payments/0190abcdef0123456789abcd",
            payer=ALICE,
            payee="0x" + "b" * 40,
            token="USDC",
            amount="1000000",
            fee=common_pb2.FeeBreakdown(
                total="3000",
                platform="1200",
                network="900",
                agent="600",
                staking="300",
                base="3000",
                rate_bps=30,
                congestion_adjustment_bps=-5,
                volume_discount_bps=10,
                token="USDC",
            ),
            priority=common_pb2.PRIORITY_HIGH,
            status=int(payment.status),  # type: ignore[arg-type]
            task_id="task-7",
            memo="for the summary",
            metadata={"run": "42"},
            request_id="req-1",
            create_time=timestamp(1_764_000_000_000_001),
            update_time=timestamp(payment.update_time_us),
            failure_reason=payment.failure_reason,
            escrow="escrows/e1",
        )
        if payment.batch_id is not None:
            # Processing, failed in its batch or completed: the batch is named from the moment it is known.
            expected.settlement.batch = "batches/b1"
        if payment.settlement is not None:
            expected.settlement.CopyFrom(
                payments_pb2.PaymentSettlement(
                    batch="batches/b1",
                    transaction_hash="0x" + "ab" * 32,
                    block_number=12,
                    gas_used="10900",
                    gas_cost_wei=str(10_900 * 10**9),
                    complete_time=timestamp(1_764_000_001_000_000),
                )
            )
        assert payments_pb2.Payment.FromString(payment_bytes(payment)) == expected, payment.status


def test_attestation_signers_are_recovered_by_the_c_backend() -> None:
    # The pure-Python backend takes about 5 ms of event loop per attestation; coincurve about 0.1 ms.
    from eth_keys.backends import get_backend
    from eth_keys.backends.coincurve import CoinCurveECCBackend

    assert isinstance(get_backend(), CoinCurveECCBackend)


# The example of the Standard Webhooks specification.
_WH_SECRET = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw"
_WH_HEADERS = {
    "Webhook-Id": "msg_p5jXN8AQM9LWM0D4loKWxJek",
    "Webhook-Timestamp": "1614265330",
    "Webhook-Signature": "v1,g0hM9SsE+OTPJTGt/tmIKtSyZlE3uFJELVlNIOLJ1OE=",
}
_WH_BODY = b'{"test": 2432232314}'


def test_verify_webhook_accepts_the_specifications_example() -> None:
    from agentflow_payments import sign_webhook, verify_webhook

    assert verify_webhook(_WH_HEADERS, _WH_BODY, _WH_SECRET, now=1614265330) == {"test": 2432232314}
    assert (
        sign_webhook(_WH_SECRET, "msg_p5jXN8AQM9LWM0D4loKWxJek", 1614265330, _WH_BODY)
        == _WH_HEADERS["Webhook-Signature"]
    )
    # While a secret rotates, the old and the new sign: either secret verifies, in any order.
    other = "whsec_" + "QUFBQUFBQUFBQUFBQUFBQUFBQUFBQUFBQUFBQUFBQUE="
    rotated = sign_webhook(other, "msg_p5jXN8AQM9LWM0D4loKWxJek", 1614265330, _WH_BODY)
    both = {**_WH_HEADERS, "Webhook-Signature": f"{rotated} {_WH_HEADERS['Webhook-Signature']}"}
    assert verify_webhook(both, _WH_BODY, [other], now=1614265330) == {"test": 2432232314}
    assert verify_webhook(both, _WH_BODY, _WH_SECRET, now=1614265330) == {"test": 2432232314}


@pytest.mark.parametrize(
    ("headers", "body", "now", "why"),
    [
        (_WH_HEADERS, b'{"test": 2432232315}', 1614265330, "no signature matches"),
        ({**_WH_HEADERS, "Webhook-Id": "msg_other"}, _WH_BODY, 1614265330, "no signature matches"),
        (_WH_HEADERS, _WH_BODY, 1614265330 + 301, "more than 300 s"),
        (_WH_HEADERS, _WH_BODY, 1614265330 - 301, "more than 300 s"),
        ({k: v for k, v in _WH_HEADERS.items() if k != "Webhook-Signature"}, _WH_BODY, 1614265330, "missing"),
        ({**_WH_HEADERS, "Webhook-Timestamp": "soon"}, _WH_BODY, 1614265330, "whole number"),
    ],
)
def test_verify_webhook_refuses_what_the_secret_did_not_sign(
    headers: dict[str, str], body: bytes, now: float, why: str
) -> None:
    from agentflow_payments import WebhookVerificationError, verify_webhook

    with pytest.raises(WebhookVerificationError, match=why):
        verify_webhook(headers, body, _WH_SECRET, now=now)


def test_page_size_defaults_caps_and_refuses_negatives() -> None:
    assert pagination.page_size(0) == pagination.DEFAULT_PAGE_SIZE == 100
    assert pagination.page_size(7) == 7
    assert pagination.page_size(5000) == pagination.MAX_PAGE_SIZE == 1000  # AIP-158: coerced, not refused
    with pytest.raises(ApiError) as caught:
        pagination.page_size(-1)
    assert caught.value.field_violations[0].field == "page_size"


def test_a_page_token_is_bound_to_every_field_but_page_size() -> None:
    request = payments_pb2.ListPaymentsRequest(payer=ALICE, task_id="t", page_size=2)
    token = pagination.encode_token(request, ["0661"])
    again = payments_pb2.ListPaymentsRequest(payer=ALICE, task_id="t", page_size=50, page_token=token)
    assert pagination.decode_token(again, 1) == ["0661"]
    assert pagination.decode_token(payments_pb2.ListPaymentsRequest(), 1) is None
    for other in (
        payments_pb2.ListPaymentsRequest(payer=ALICE, task_id="u", page_token=token),
        payments_pb2.ListPaymentsRequest(payer=ALICE, task_id="t", status=1, page_token=token),
        escrow_pb2.ListEscrowsRequest(payer=ALICE, task_id="t", page_token=token),  # the same fields, another RPC
    ):
        with pytest.raises(ApiError) as caught:
            pagination.decode_token(other, 1)
        assert caught.value.field_violations[0].field == "page_token"
    for forged in ("x", "bm90IGEgdG9rZW4", token[:-4]):
        with pytest.raises(ApiError):
            pagination.decode_token(payments_pb2.ListPaymentsRequest(page_token=forged), 1)


async def test_tests_run_on_the_loop_the_server_runs_on() -> None:
    # conftest's pytest_asyncio_loop_factories: what passes here passed on the loop `agentflow serve` uses.
    assert running_kind() == load_settings().event_loop == "uvloop"


def test_the_event_loop_is_the_configured_kind() -> None:
    assert run(_kind(), "uvloop") == "uvloop"
    assert run(_kind(), "asyncio") == "asyncio"
    loop = new_event_loop("asyncio")
    try:
        assert loop.run_until_complete(_kind()) == "asyncio"
    finally:
        loop.close()


async def _kind() -> str:
    return running_kind()
