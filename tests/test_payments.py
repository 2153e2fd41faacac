"""PaymentService and AccountService against a real server and a real SQLite ledger."""

from __future__ import annotations

import base64
import datetime
import json
import random
import secrets
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import grpc
import pytest
import sqlalchemy as sa

from agentflow_payments import (
    AlreadyExists,
    AsyncClient,
    FailedPrecondition,
    IdempotencyConflict,
    InsufficientBalance,
    InvalidArgument,
    InvalidToken,
    NotFound,
    PermissionDenied,
    QueueFull,
    Reason,
)
from agentflow_payments.v1 import accounts_pb2, admin_pb2, common_pb2, escrow_pb2, payments_pb2, payments_pb2_grpc
from agentflow_server.engine.commands import CreditDeposit
from agentflow_server.ledger.writer import GroupWriter

from .conftest import ADMIN_KEY, ALICE, BOB, CreateKey, RunningServer, StartServer

CAROL = "0xdbF03B407c01E7cD3CBea99509d93f8DDDC8C6FB"
USDC = 10**6

Fund = Callable[..., Awaitable[None]]


@pytest.fixture
async def server(ledger_url: str | None, start_server: StartServer) -> RunningServer:
    """This module's server, on each ledger database in turn (SQLite, then PostgreSQL): the rules of
    acceptance hold on both."""
    return await start_server(database_url=ledger_url)


@pytest.fixture
def fund(server: RunningServer) -> Fund:
    """Credit a deposit through the engine, as the chain watcher will."""
    return _funder(server)


def _funder(server: RunningServer) -> Fund:
    async def fund(address: str, amount: int, token: str = "USDC") -> None:
        engine = server.service.engine
        await engine.execute(
            CreditDeposit(
                beneficiary=address,
                depositor=address,
                token=engine.tokens.get(token),
                amount=amount,
                transaction_hash="0x" + secrets.token_hex(32),
                log_index=0,
                block_number=1,
            )
        )

    return fund


def pay(amount: int = 10 * USDC, **fields: object) -> payments_pb2.SubmitPaymentRequest:
    values: dict[str, object] = {"payer": ALICE, "payee": BOB, "token": "USDC", "amount": str(amount), **fields}
    return payments_pb2.SubmitPaymentRequest(**values)  # type: ignore[arg-type]


async def balance(client: AsyncClient, address: str, token: str = "USDC") -> accounts_pb2.Balance:
    response = await client.accounts.GetBalances(accounts_pb2.GetBalancesRequest(address=address, tokens=[token]))
    return response.balances[0]


async def test_a_payment_is_priced_reserved_and_queued(server: RunningServer, admin: AsyncClient, fund: Fund) -> None:
    await fund(ALICE, 100 * USDC)
    quote = await admin.payments.QuoteFee(payments_pb2.QuoteFeeRequest(payer=ALICE, token="USDC", amount="10000000"))
    response = await admin.payments.SubmitPayment(pay(task_id="task-1", memo="thanks", metadata={"k": "v"}))
    payment = response.payment
    assert payment.status == payments_pb2.PAYMENT_STATUS_QUEUED
    assert payment.name.startswith("payments/")
    assert (payment.payer, payment.payee, payment.amount) == (ALICE, BOB, "10000000")
    assert payment.priority == common_pb2.PRIORITY_NORMAL
    # 0.3% of 10 USDC is 0.03 USDC, above the 0.01 USDC minimum; split 40/30/20/10.
    fee = payment.fee
    assert (fee.total, fee.platform, fee.network, fee.agent, fee.staking) == ("30000", "12000", "9000", "6000", "3000")
    assert fee == quote.fee
    held = await balance(admin, ALICE)
    assert (held.available, held.reserved, held.total) == ("89970000", "10030000", "100000000")
    assert (await balance(admin, BOB)).total == "0"
    got = await admin.payments.GetPayment(payments_pb2.GetPaymentRequest(name=payment.name))
    assert got.payment == payment
    entries = await admin.accounts.ListLedgerEntries(accounts_pb2.ListLedgerEntriesRequest(address=ALICE))
    # Newest first.
    assert [(e.kind, e.bucket, e.delta) for e in entries.entries] == [
        (accounts_pb2.LEDGER_ENTRY_KIND_PAYMENT_RESERVE, accounts_pb2.LEDGER_BUCKET_RESERVED, "10030000"),
        (accounts_pb2.LEDGER_ENTRY_KIND_PAYMENT_RESERVE, accounts_pb2.LEDGER_BUCKET_AVAILABLE, "-10030000"),
        (accounts_pb2.LEDGER_ENTRY_KIND_DEPOSIT, accounts_pb2.LEDGER_BUCKET_AVAILABLE, "100000000"),
    ]
    assert entries.entries[0].reference == payment.name


async def test_small_payments_pay_the_minimum_fee(admin: AsyncClient, fund: Fund) -> None:
    await fund(ALICE, 10**18, token="ETH")
    response = await admin.payments.SubmitPayment(pay(amount=10**15, token="ETH"))
    # 0.3% of 0.001 ETH is 3e12 wei, below the 0.001 ETH minimum.
    assert response.payment.fee.total == str(10**15)
    assert response.payment.fee.base == str(10**15)


async def _events(server: RunningServer) -> list[tuple[int, str, str]]:
    """The event log as stored, on either database."""
    async with server.service.database.connect() as connection:
        result = await connection.execute(sa.text("SELECT sequence, type, resource FROM events ORDER BY sequence"))
        return [(sequence, type_, resource) for sequence, type_, resource in result]


async def test_acceptance_writes_created_and_queued_events_in_order(
    server: RunningServer, admin: AsyncClient, fund: Fund
) -> None:
    await fund(ALICE, 100 * USDC)
    name = (await admin.payments.SubmitPayment(pay())).payment.name
    events = await _events(server)
    assert [e[1] for e in events] == ["deposit.confirmed", "payment.created", "payment.queued"]
    assert [e[0] for e in events] == sorted({e[0] for e in events})
    assert events[1][2] == events[2][2] == name


INVALID = [
    ({"payer": ALICE.lower()[:-1]}, "payer", Reason.INVALID_FIELD),
    ({"payer": "0x5aAeb6053F3E94C9b9A09f33669435E7Ef1BeAeD"}, "payer", Reason.INVALID_FIELD),
    ({"payee": "0x" + "0" * 40}, "payee", Reason.INVALID_FIELD),
    ({"payee": ""}, "payee", Reason.INVALID_FIELD),
    ({"payee": ALICE.lower()}, "payee", Reason.INVALID_FIELD),
    ({"amount": ""}, "amount", Reason.INVALID_FIELD),
    ({"amount": "0"}, "amount", Reason.INVALID_FIELD),
    ({"amount": "-5"}, "amount", Reason.INVALID_FIELD),
    ({"amount": "+5"}, "amount", Reason.INVALID_FIELD),
    ({"amount": " 5"}, "amount", Reason.INVALID_FIELD),
    ({"amount": "1e6"}, "amount", Reason.INVALID_FIELD),
    ({"amount": "1.5"}, "amount", Reason.INVALID_FIELD),
    ({"amount": "1_000"}, "amount", Reason.INVALID_FIELD),
    ({"amount": "\u0661"}, "amount", Reason.INVALID_FIELD),  # ARABIC-INDIC DIGIT ONE: int() would take it
    ({"amount": str(2**256)}, "amount", Reason.INVALID_FIELD),
    ({"token": "BTC"}, "token", Reason.INVALID_TOKEN),
    ({"token": "usdc"}, "token", Reason.INVALID_TOKEN),
    ({"token": ""}, "token", Reason.INVALID_FIELD),
    ({"priority": 9}, "priority", Reason.INVALID_FIELD),
    ({"task_id": "t" * 129}, "task_id", Reason.INVALID_FIELD),
    ({"task_id": "line\nbreak"}, "task_id", Reason.INVALID_FIELD),
    ({"memo": "m" * 513}, "memo", Reason.INVALID_FIELD),
    ({"metadata": {f"k{i}": "v" for i in range(17)}}, "metadata", Reason.INVALID_FIELD),
    ({"metadata": {"k": "v" * 257}}, "metadata['k']", Reason.INVALID_FIELD),
    ({"metadata": {"k" * 65: "v"}}, f"metadata[{'k' * 65!r}]", Reason.INVALID_FIELD),
    ({"request_id": "has space"}, "request_id", Reason.INVALID_FIELD),
    ({"request_id": "r" * 65}, "request_id", Reason.INVALID_FIELD),
]


@pytest.mark.parametrize(("fields", "field", "reason"), INVALID)
async def test_each_invalid_field_is_named_and_changes_nothing(
    server: RunningServer, admin: AsyncClient, fund: Fund, fields: dict[str, object], field: str, reason: Reason
) -> None:
    await fund(ALICE, 100 * USDC)
    before = await balance(admin, ALICE)
    with pytest.raises(InvalidArgument) as caught:
        await admin.payments.SubmitPayment(pay(**fields))
    assert caught.value.code is grpc.StatusCode.INVALID_ARGUMENT
    assert caught.value.reason is reason
    assert [v.field for v in caught.value.field_violations] == [field]
    if reason is Reason.INVALID_TOKEN:
        assert isinstance(caught.value, InvalidToken)
    assert await balance(admin, ALICE) == before
    listed = await admin.payments.ListPayments(payments_pb2.ListPaymentsRequest())
    assert list(listed.payments) == []
    assert [e[1] for e in await _events(server)] == ["deposit.confirmed"]


async def test_every_invalid_field_is_named_at_once(admin: AsyncClient) -> None:
    with pytest.raises(InvalidArgument) as caught:
        await admin.payments.SubmitPayment(payments_pb2.SubmitPaymentRequest(amount="x", token="BTC"))
    assert {v.field for v in caught.value.field_violations} == {"payer", "payee", "token", "amount"}
    assert caught.value.reason is Reason.INVALID_FIELD


async def test_insufficient_balance_changes_nothing(server: RunningServer, admin: AsyncClient, fund: Fund) -> None:
    await fund(ALICE, 10 * USDC)
    before = await balance(admin, ALICE)
    with pytest.raises(InsufficientBalance) as caught:
        await admin.payments.SubmitPayment(pay(amount=10 * USDC))  # the fee does not fit
    assert caught.value.code is grpc.StatusCode.FAILED_PRECONDITION
    assert caught.value.metadata == {"available": "10000000", "required": "10030000", "fee": "30000"}
    assert await balance(admin, ALICE) == before
    assert [e[1] for e in await _events(server)] == ["deposit.confirmed"]
    with pytest.raises(InsufficientBalance):
        await admin.payments.SubmitPayment(pay(payer=CAROL))  # never deposited


async def test_same_request_id_replays_and_a_different_request_conflicts(admin: AsyncClient, fund: Fund) -> None:
    await fund(ALICE, 100 * USDC)
    first = await admin.payments.SubmitPayment(pay(request_id="order-42"))
    again = await admin.payments.SubmitPayment(pay(request_id="order-42", payer=ALICE.lower()))
    assert again.payment == first.payment
    assert (await balance(admin, ALICE)).reserved == "10030000"  # once
    with pytest.raises(IdempotencyConflict) as caught:
        await admin.payments.SubmitPayment(pay(amount=11 * USDC, request_id="order-42"))
    assert isinstance(caught.value, AlreadyExists)
    assert caught.value.code is grpc.StatusCode.ALREADY_EXISTS
    assert caught.value.metadata == {"request_id": "order-42", "resource": first.payment.name}
    listed = await admin.payments.ListPayments(payments_pb2.ListPaymentsRequest())
    assert len(listed.payments) == 1


async def test_request_ids_are_per_payer(admin: AsyncClient, fund: Fund) -> None:
    await fund(ALICE, 100 * USDC)
    await fund(BOB, 100 * USDC)
    a = await admin.payments.SubmitPayment(pay(request_id="same"))
    b = await admin.payments.SubmitPayment(pay(payer=BOB, payee=ALICE, request_id="same"))
    assert a.payment.name != b.payment.name


async def test_concurrent_duplicates_in_one_group_pay_once(admin: AsyncClient, fund: Fund) -> None:
    import asyncio

    await fund(ALICE, 100 * USDC)
    answers = await asyncio.gather(*(admin.payments.SubmitPayment(pay(request_id="dup")) for _ in range(20)))
    assert len({a.payment.name for a in answers}) == 1
    assert (await balance(admin, ALICE)).reserved == "10030000"


async def test_a_payment_whose_deadline_passes_before_it_is_applied_is_not_made(
    server: RunningServer, admin: AsyncClient, fund: Fund, monkeypatch: pytest.MonkeyPatch
) -> None:
    """While a commit is held, a SubmitPayment and a SubmitPayments call wait for the engine until their
    deadlines pass: DEADLINE_EXCEEDED, and nothing of them is made. Retried, each is made once."""
    import asyncio

    await fund(ALICE, 100 * USDC)
    original = GroupWriter.commit
    gate = asyncio.Event()
    held = asyncio.Event()

    async def held_commit(self: GroupWriter, group: Any, epoch: int) -> None:
        held.set()
        await gate.wait()
        await original(self, group, epoch)

    monkeypatch.setattr(GroupWriter, "commit", held_commit)
    metadata = (("authorization", f"Bearer {ADMIN_KEY}"),)
    late = pay(request_id="late")
    late_call = payments_pb2.SubmitPaymentsRequest(requests=[pay(request_id=f"call-{i}") for i in range(3)])
    async with grpc.aio.insecure_channel(server.target) as channel:
        stub = payments_pb2_grpc.PaymentServiceStub(channel)
        first = asyncio.ensure_future(stub.SubmitPayment(pay(request_id="first"), metadata=metadata))
        await asyncio.wait_for(held.wait(), 10)
        outcomes = await asyncio.gather(
            stub.SubmitPayment(late, metadata=metadata, timeout=1.0),
            stub.SubmitPayments(late_call, metadata=metadata, timeout=1.0),
            return_exceptions=True,
        )
        for outcome in outcomes:
            assert isinstance(outcome, grpc.aio.AioRpcError)
            assert outcome.code() is grpc.StatusCode.DEADLINE_EXCEEDED
        gate.set()
        await first
    await admin.payments.SubmitPayment(pay(request_id="after"))  # through the engine after the two
    listed = await admin.payments.ListPayments(payments_pb2.ListPaymentsRequest(payer=ALICE))
    assert {p.request_id for p in listed.payments} == {"first", "after"}
    assert (await balance(admin, ALICE)).reserved == str(2 * 10_030_000)
    # Retried with the same request ids, they are made now, once.
    again = await admin.payments.SubmitPayment(late)
    assert (await admin.payments.SubmitPayment(late)).payment.name == again.payment.name
    call = await admin.payments.SubmitPayments(late_call)
    assert [r.WhichOneof("result") for r in call.results] == ["payment"] * 3
    assert (await balance(admin, ALICE)).reserved == str(6 * 10_030_000)


async def test_full_queue_is_resource_exhausted_and_reserves_nothing(start_server: StartServer) -> None:
    server = await start_server(max_queue_size=2)
    fund = _funder(server)
    await fund(ALICE, 100 * USDC)
    async with server.client() as client:
        for _ in range(2):
            await client.payments.SubmitPayment(pay(amount=USDC))
        before = await balance(client, ALICE)
        with pytest.raises(QueueFull) as caught:
            await client.payments.SubmitPayment(pay(amount=USDC))
        assert caught.value.code is grpc.StatusCode.RESOURCE_EXHAUSTED
        assert caught.value.reason is Reason.QUEUE_FULL
        assert caught.value.retry_delay == datetime.timedelta(seconds=1)
        assert await balance(client, ALICE) == before
        # Another token has its own queue.
        await fund(ALICE, 10**18, token="ETH")
        await client.payments.SubmitPayment(pay(amount=10**16, token="ETH"))


async def test_cancel_returns_the_reservation_once(server: RunningServer, admin: AsyncClient, fund: Fund) -> None:
    await fund(ALICE, 100 * USDC)
    payment = (await admin.payments.SubmitPayment(pay())).payment
    cancelled = await admin.payments.CancelPayment(
        payments_pb2.CancelPaymentRequest(name=payment.name, reason="changed my mind")
    )
    assert cancelled.payment.status == payments_pb2.PAYMENT_STATUS_CANCELLED
    assert cancelled.payment.failure_reason == "changed my mind"
    after = await balance(admin, ALICE)
    assert (after.available, after.reserved) == ("100000000", "0")
    with pytest.raises(FailedPrecondition) as again:
        await admin.payments.CancelPayment(payments_pb2.CancelPaymentRequest(name=payment.name))
    assert again.value.reason is Reason.PAYMENT_NOT_CANCELLABLE
    assert again.value.metadata["status"] == "PAYMENT_STATUS_CANCELLED"
    assert [e[1] for e in await _events(server)][-1] == "payment.cancelled"
    with pytest.raises(NotFound) as unknown:
        await admin.payments.CancelPayment(payments_pb2.CancelPaymentRequest(name="payments/" + "0" * 22))
    assert unknown.value.reason is Reason.PAYMENT_NOT_FOUND
    with pytest.raises(InvalidArgument):
        await admin.payments.CancelPayment(payments_pb2.CancelPaymentRequest(name="payments/../x"))


async def test_keys_act_only_for_their_addresses(
    server: RunningServer, admin: AsyncClient, fund: Fund, create_key: CreateKey
) -> None:
    await fund(ALICE, 100 * USDC)
    alice = await create_key(admin_pb2.API_KEY_SCOPE_PAYER, addresses=(ALICE,))
    bob = await create_key(admin_pb2.API_KEY_SCOPE_PAYER, addresses=(BOB,))
    carol = await create_key(admin_pb2.API_KEY_SCOPE_PAYER, addresses=(CAROL,))
    async with server.client(alice.secret) as as_alice, server.client(bob.secret) as as_bob:
        payment = (await as_alice.payments.SubmitPayment(pay())).payment
        with pytest.raises(PermissionDenied) as foreign:
            await as_bob.payments.SubmitPayment(pay())  # paying from Alice's address
        assert foreign.value.reason is Reason.ADDRESS_NOT_ALLOWED
        assert foreign.value.metadata["field"] == "payer"
        # Bob, the payee, sees the payment but may not cancel it.
        seen = await as_bob.payments.GetPayment(payments_pb2.GetPaymentRequest(name=payment.name))
        assert seen.payment.name == payment.name
        with pytest.raises(PermissionDenied):
            await as_bob.payments.CancelPayment(payments_pb2.CancelPaymentRequest(name=payment.name))
        with pytest.raises(PermissionDenied):
            await as_bob.accounts.GetBalances(accounts_pb2.GetBalancesRequest(address=ALICE))
    async with server.client(carol.secret) as as_carol:
        # Carol has nothing to do with it: it does not exist for her.
        with pytest.raises(NotFound):
            await as_carol.payments.GetPayment(payments_pb2.GetPaymentRequest(name=payment.name))
        with pytest.raises(NotFound):
            await as_carol.payments.CancelPayment(payments_pb2.CancelPaymentRequest(name=payment.name))
        assert list((await as_carol.payments.ListPayments(payments_pb2.ListPaymentsRequest())).payments) == []


async def test_a_bound_key_pages_through_exactly_the_payments_naming_its_addresses(
    server: RunningServer, admin: AsyncClient, fund: Fund, create_key: CreateKey
) -> None:
    """A key bound to addresses lists every payment that names one of them (payer or payee, both at once
    too) and no other, newest first, at any page size."""
    dave = "0x" + "d" * 40
    for address in (ALICE, BOB, CAROL):
        await fund(address, 100 * USDC)
    rng = random.Random(3)
    for _ in range(30):
        payer, payee = rng.sample([ALICE, BOB, CAROL, dave.lower()], 2)
        if payer != dave.lower():
            await admin.payments.SubmitPayment(pay(USDC, payer=payer, payee=payee))
    everything = (await admin.payments.ListPayments(payments_pb2.ListPaymentsRequest(page_size=1000))).payments
    key = await create_key(admin_pb2.API_KEY_SCOPE_PAYER, addresses=(ALICE, BOB))
    expected = [p.name for p in everything if {p.payer, p.payee} & {ALICE, BOB}]
    assert 0 < len(expected) < len(everything)
    async with server.client(key.secret) as client:
        for size in (1, 4, 100):
            seen: list[str] = []
            token = ""
            while True:
                page = await client.payments.ListPayments(
                    payments_pb2.ListPaymentsRequest(page_size=size, page_token=token)
                )
                seen += [p.name for p in page.payments]
                token = page.next_page_token
                if not token:
                    break
            assert seen == expected, size


async def test_bulk_items_fail_alone_and_earn_the_batch_discount(admin: AsyncClient, fund: Fund) -> None:
    await fund(ALICE, 1000 * USDC)
    items = [pay(amount=10 * USDC) for _ in range(12)]
    items[3] = pay(amount="0")  # type: ignore[arg-type]
    items[7] = pay(amount=10_000 * USDC)
    response = await admin.payments.SubmitPayments(payments_pb2.SubmitPaymentsRequest(requests=items))
    assert [r.index for r in response.results] == list(range(12))
    kinds = [r.WhichOneof("result") for r in response.results]
    assert kinds == ["payment"] * 3 + ["error"] + ["payment"] * 3 + ["error"] + ["payment"] * 4
    invalid, poor = response.results[3].error, response.results[7].error
    assert (invalid.code, invalid.reason) == (grpc.StatusCode.INVALID_ARGUMENT.value[0], "INVALID_FIELD")
    assert [v.field for v in invalid.field_violations] == ["requests[3].amount"]
    assert (poor.code, poor.reason) == (grpc.StatusCode.FAILED_PRECONDITION.value[0], "INSUFFICIENT_BALANCE")
    # One group, one time: the ids still differ, and sort in the order the payments were accepted.
    names = [r.payment.name for r in response.results if r.WhichOneof("result") == "payment"]
    assert names == sorted(set(names))
    # Ten payments accepted in one call (the two refused do not count): 10% off 30_000, for each of them.
    fees = {(r.payment.fee.batch_discount_bps, r.payment.fee.total) for r in response.results if r.payment.name}
    assert fees == {(1000, "27000")}
    assert (await balance(admin, ALICE)).reserved == str(10 * (10 * USDC + 27_000))


async def test_refused_items_buy_no_batch_discount(admin: AsyncClient, fund: Fund) -> None:
    """A call padded with items that are refused (invalid, unfunded, or replays of an earlier payment) is
    priced as the payments it really makes: one payment among nine refused items pays the full fee."""
    await fund(ALICE, 1000 * USDC)
    earlier = pay(amount=USDC, request_id="paid-before")
    await admin.payments.SubmitPayment(earlier)
    for padding in (
        pay(amount="0"),  # type: ignore[arg-type]
        pay(amount=10**9 * USDC),
        earlier,
    ):
        response = await admin.payments.SubmitPayments(
            payments_pb2.SubmitPaymentsRequest(requests=[pay(amount=10 * USDC)] + [padding] * 9)
        )
        fee = response.results[0].payment.fee
        assert (fee.batch_discount_bps, fee.total) == (0, "30000"), padding
    # The same ten payments, all of them real, earn their 10%.
    response = await admin.payments.SubmitPayments(
        payments_pb2.SubmitPaymentsRequest(requests=[pay(amount=10 * USDC) for _ in range(10)])
    )
    assert {r.payment.fee.batch_discount_bps for r in response.results} == {1000}


async def test_the_batch_discount_counts_each_payment_at_its_highest_possible_fee(
    admin: AsyncClient, fund: Fund
) -> None:
    """Counted before any is applied, a payment counts only if the payer can pay it and every earlier one at
    the highest fee they could be charged, so every payment counted is accepted."""
    # Ten payments of 10 USDC cost 100.3 USDC at the plain fee and 100.45 at the highest congestion (+50%).
    await fund(ALICE, 100_400_000)
    response = await admin.payments.SubmitPayments(
        payments_pb2.SubmitPaymentsRequest(requests=[pay(amount=10 * USDC) for _ in range(10)])
    )
    # All ten are accepted at the fee they are charged, but only nine were sure to be: no 10% discount.
    assert [r.WhichOneof("result") for r in response.results] == ["payment"] * 10
    assert {r.payment.fee.batch_discount_bps for r in response.results} == {0}


async def test_bulk_size_is_bounded(start_server: StartServer) -> None:
    server = await start_server(max_bulk_size=3)
    async with server.client() as client:
        for count in (0, 4):
            with pytest.raises(InvalidArgument) as caught:
                await client.payments.SubmitPayments(
                    payments_pb2.SubmitPaymentsRequest(requests=[pay() for _ in range(count)])
                )
            assert caught.value.field_violations[0].field == "requests"


async def test_list_payments_filters_and_pages(admin: AsyncClient, fund: Fund) -> None:
    await fund(ALICE, 1000 * USDC)
    await fund(BOB, 1000 * USDC)
    names = []
    for i in range(5):
        names.append((await admin.payments.SubmitPayment(pay(task_id=f"t{i % 2}"))).payment.name)
    names.append((await admin.payments.SubmitPayment(pay(payer=BOB, payee=CAROL))).payment.name)
    seen, token = [], ""
    while True:
        page = await admin.payments.ListPayments(payments_pb2.ListPaymentsRequest(page_size=2, page_token=token))
        seen += [p.name for p in page.payments]
        token = page.next_page_token
        if not token:
            break
    assert seen == list(reversed(names))
    by_task = await admin.payments.ListPayments(payments_pb2.ListPaymentsRequest(task_id="t1"))
    assert [p.name for p in by_task.payments] == [names[3], names[1]]
    by_payee = await admin.payments.ListPayments(payments_pb2.ListPaymentsRequest(payee=CAROL.lower()))
    assert [p.name for p in by_payee.payments] == [names[5]]
    by_status = await admin.payments.ListPayments(
        payments_pb2.ListPaymentsRequest(status=payments_pb2.PAYMENT_STATUS_CANCELLED)
    )
    assert list(by_status.payments) == []
    with pytest.raises(InvalidToken):
        await admin.payments.ListPayments(payments_pb2.ListPaymentsRequest(token="DOGE"))


async def test_a_page_token_holds_only_for_the_request_that_returned_it(admin: AsyncClient, fund: Fund) -> None:
    await fund(ALICE, 1000 * USDC)
    names = [(await admin.payments.SubmitPayment(pay(task_id=f"t{i % 2}"))).payment.name for i in range(6)]
    first = await admin.payments.ListPayments(payments_pb2.ListPaymentsRequest(page_size=2))
    token = first.next_page_token
    # AIP-158: only page_size may change between pages.
    rest = await admin.payments.ListPayments(payments_pb2.ListPaymentsRequest(page_size=10, page_token=token))
    assert [p.name for p in (*first.payments, *rest.payments)] == list(reversed(names))
    assert rest.next_page_token == ""
    # Carried over to other filters, it would page through a listing it was not cut from.
    other_requests = [
        admin.payments.ListPayments(payments_pb2.ListPaymentsRequest(page_size=2, task_id="t1", page_token=token)),
        admin.payments.ListPayments(payments_pb2.ListPaymentsRequest(page_size=2, payer=ALICE, page_token=token)),
        admin.escrows.ListEscrows(escrow_pb2.ListEscrowsRequest(page_size=2, page_token=token)),
        admin.accounts.ListLedgerEntries(accounts_pb2.ListLedgerEntriesRequest(address=ALICE, page_token=token)),
    ]
    for call in other_requests:
        with pytest.raises(InvalidArgument) as caught:
            await call
        (violation,) = caught.value.field_violations
        assert violation.field == "page_token"
        assert "another request" in violation.description
    # A token from before tokens were bound to their request (a bare cursor) is not taken for one.
    bare = base64.urlsafe_b64encode(json.dumps([names[3].removeprefix("payments/")]).encode()).decode()
    with pytest.raises(InvalidArgument) as caught:
        await admin.payments.ListPayments(payments_pb2.ListPaymentsRequest(page_token=bare))
    assert caught.value.field_violations[0].description == "is not a token this server issued"


async def test_list_tokens(admin: AsyncClient) -> None:
    response = await admin.accounts.ListTokens(accounts_pb2.ListTokensRequest())
    assert [(t.symbol, t.decimals, t.native) for t in response.tokens] == [
        ("ETH", 18, True),
        ("USDC", 6, False),
        ("USDT", 6, False),
        ("DAI", 18, False),
        ("WETH", 18, False),
    ]
    assert response.tokens[0].min_fee == str(10**15)
    assert response.chain_id == 0  # this server settles on no chain and was given no chain_id
    # Balances come in the same order, a token never held at zero, whatever order they are asked in.
    asked = await admin.accounts.GetBalances(accounts_pb2.GetBalancesRequest(address=BOB, tokens=["WETH", "ETH"]))
    assert [(b.token, b.total) for b in asked.balances] == [("ETH", "0"), ("WETH", "0")]
    every = await admin.accounts.GetBalances(accounts_pb2.GetBalancesRequest(address=BOB))
    assert [b.token for b in every.balances] == [t.symbol for t in response.tokens]


async def test_state_survives_a_restart(ledger_url: str | None, start_server: StartServer) -> None:
    first = await start_server(database_url=ledger_url)
    await _funder(first)(ALICE, 100 * USDC)
    async with first.client() as client:
        kept = (await client.payments.SubmitPayment(pay(request_id="r1"))).payment
        await client.payments.SubmitPayment(pay())
    await first.service.stop(grace=0)
    second = await start_server(database_url=ledger_url)
    assert len(second.service.engine.queues["USDC"]) == 2
    async with second.client() as client:
        assert (await balance(client, ALICE)).reserved == str(2 * 10_030_000)
        replay = await client.payments.SubmitPayment(pay(request_id="r1"))
        assert replay.payment == kept
        cancelled = await client.payments.CancelPayment(payments_pb2.CancelPaymentRequest(name=kept.name))
        assert cancelled.payment.status == payments_pb2.PAYMENT_STATUS_CANCELLED
    assert len(second.service.engine.queues["USDC"]) == 1


async def test_ledger_entries_of_any_mix_of_transfers_page_newest_first(tmp_path: Path) -> None:
    """Transfers into, out of and within an address, in two tokens, interleaved with others': every page
    size gives each of its lines once, newest first, as a naive reading of the whole journal does."""
    from agentflow_server.ledger import Database
    from agentflow_server.ledger.accounts import AccountReader
    from agentflow_server.ledger.schema import transfers

    database = await Database.open(f"sqlite+aiosqlite:///{tmp_path / 'ledger.db'}")
    rng = random.Random(5)
    parties = [ALICE, BOB, CAROL]
    rows = []
    for transfer_id in range(1, 121):
        debit, credit = rng.choice(parties), rng.choice(parties)
        rows.append(
            {
                "transfer_id": transfer_id,
                "kind": 2,
                "token": rng.choice(["USDC", "DAI"]),
                "debit_address": debit,
                "debit_bucket": 1,
                "credit_address": credit,
                "credit_bucket": 1 if debit != credit else 2,
                "amount": transfer_id,
                "reference": f"r{transfer_id}",
                "create_time_us": transfer_id,
            }
        )
    async with database.transaction() as connection:
        await connection.execute(transfers.insert(), rows)
    reader = AccountReader(database)
    try:
        for token in (None, "DAI"):
            expected = [
                (row["transfer_id"] * 2 + side, sign * row["amount"])
                for row in reversed(rows)
                if token is None or row["token"] == token
                for side, owner, sign in ((1, row["credit_address"], 1), (0, row["debit_address"], -1))
                if owner == ALICE
            ]
            for size in (1, 2, 3, 7, 100):
                seen: list[tuple[int, int]] = []
                before = None
                while True:
                    page = await reader.entries(ALICE, token, before=before, limit=size)
                    seen += [(e.entry_id, e.delta) for e in page[:size]]
                    if len(page) <= size:
                        break
                    before = page[size - 1].entry_id
                assert seen == expected, (token, size)
    finally:
        await database.close()


async def test_ledger_entries_page_through_the_journal(admin: AsyncClient, fund: Fund) -> None:
    await fund(ALICE, 1000 * USDC)
    for _ in range(4):
        payment = (await admin.payments.SubmitPayment(pay())).payment
    await admin.payments.CancelPayment(payments_pb2.CancelPaymentRequest(name=payment.name))
    seen, token = [], ""
    while True:
        page = await admin.accounts.ListLedgerEntries(
            accounts_pb2.ListLedgerEntriesRequest(address=ALICE, token="USDC", page_size=3, page_token=token)
        )
        assert len(page.entries) <= 3
        seen += list(page.entries)
        token = page.next_page_token
        if not token:
            break
    # A deposit, four reservations and a release, two sides each but the deposit's.
    assert len(seen) == 1 + 4 * 2 + 2
    # Newest first, each once, across pages that end inside a transfer's two lines too.
    assert [e.entry_id for e in seen] == sorted({e.entry_id for e in seen}, reverse=True)
    assert sum(int(e.delta) for e in seen) == 1000 * USDC
    by_transfer: dict[str, int] = {}
    for entry in seen[:-1]:
        by_transfer[entry.transfer_id] = by_transfer.get(entry.transfer_id, 0) + int(entry.delta)
    assert set(by_transfer.values()) == {0}  # within one address, each transfer's lines cancel out
    assert seen[0].kind == accounts_pb2.LEDGER_ENTRY_KIND_PAYMENT_RELEASE
    assert seen[-1].kind == accounts_pb2.LEDGER_ENTRY_KIND_DEPOSIT
    with pytest.raises(InvalidArgument):
        await admin.accounts.ListLedgerEntries(accounts_pb2.ListLedgerEntriesRequest(address="nope"))
