"""EscrowService against a real server and a real SQLite ledger: holds, releases, refunds, expiry on the
service's clock, disputes, attestations, and the races where exactly one step may win."""

from __future__ import annotations

import asyncio
import secrets
from collections import defaultdict
from pathlib import Path

import pytest
import sqlalchemy as sa
from eth_account import Account
from eth_account.messages import encode_defunct
from google.protobuf import duration_pb2, timestamp_pb2

from agentflow_payments import (
    AsyncClient,
    EscrowNotActive,
    FailedPrecondition,
    IdempotencyConflict,
    InsufficientBalance,
    InvalidArgument,
    InvalidAttestation,
    NotFound,
    PermissionDenied,
    Reason,
    attestation_message,
)
from agentflow_payments.v1 import accounts_pb2, admin_pb2, common_pb2, escrow_pb2, payments_pb2
from agentflow_server.chain.deploy import dev_account
from agentflow_server.clock import Clock

from .chain import Anvil, Chain, assert_ledger_matches_chain, until_final
from .conftest import ALICE, BOB, CreateKey, RunningServer, StartServer
from .test_payments import CAROL, USDC, Fund, _funder, balance

VERIFIER = Account.from_key("0x" + "42" * 32)
STRANGER = Account.from_key("0x" + "43" * 32)
DAY = 86_400


@pytest.fixture
async def server(ledger_url: str | None, start_server: StartServer) -> RunningServer:
    """A server on each ledger database in turn: every test that takes it runs on SQLite and on PostgreSQL."""
    return await start_server(database_url=ledger_url)


@pytest.fixture
def fund(server: RunningServer) -> Fund:
    return _funder(server)


def create(amount: int = 100 * USDC, **fields: object) -> escrow_pb2.CreateEscrowRequest:
    values: dict[str, object] = {
        "task_id": "task-1",
        "payer": ALICE,
        "payee": BOB,
        "token": "USDC",
        "amount": str(amount),
        **fields,
    }
    return escrow_pb2.CreateEscrowRequest(**values)  # type: ignore[arg-type]


def at(clock: Clock, seconds: float) -> timestamp_pb2.Timestamp:
    """A timestamp ``seconds`` from the clock's now."""
    micros = clock.now_us() + round(seconds * 1e6)
    return timestamp_pb2.Timestamp(seconds=micros // 1_000_000, nanos=micros % 1_000_000 * 1000)


async def get(client: AsyncClient, name: str) -> escrow_pb2.Escrow:
    return (await client.escrows.GetEscrow(escrow_pb2.GetEscrowRequest(name=name))).escrow


async def events(server: RunningServer, resource: str) -> list[str]:
    """The types of the stored events about ``resource``, in order, on either database."""
    query = sa.text("SELECT type FROM events WHERE resource = :resource ORDER BY sequence")
    async with server.service.database.connect() as connection:
        return [t for (t,) in await connection.execute(query, {"resource": resource})]


async def assert_journal_matches_balances(server: RunningServer) -> None:
    """Every balance is what the double-entry journal says it is, on either database."""
    sums: dict[tuple[str, int], int] = defaultdict(int)
    async with server.service.database.connect() as connection:
        transfers = await connection.execute(
            sa.text("SELECT debit_address, debit_bucket, credit_address, credit_bucket, amount FROM transfers")
        )
        for debit, debit_bucket, credit, credit_bucket, amount in transfers:
            sums[(debit, debit_bucket)] -= int(amount)
            sums[(credit, credit_bucket)] += int(amount)
        accounts = await connection.execute(sa.text("SELECT address, available, reserved, escrowed FROM accounts"))
        for address, *buckets in accounts:
            for bucket, value in enumerate(buckets, start=1):
                assert sums[(address, bucket)] == int(value), (address, bucket)


def sign(account: object, name: str, result_hash: str) -> str:
    signed = Account.sign_message(encode_defunct(text=attestation_message(name, result_hash)), account.key)  # type: ignore[attr-defined]
    return "0x" + bytes(signed.signature).hex()


async def key_for(create_key: CreateKey, scope: int, *addresses: str) -> str:
    return str((await create_key(scope, addresses)).secret)


async def wait_until(check: object, seconds: float = 10.0) -> None:
    loop = asyncio.get_running_loop()
    deadline = loop.time() + seconds
    while not await check():  # type: ignore[operator]
        if loop.time() > deadline:
            raise AssertionError("timed out")
        await asyncio.sleep(0.02)


# -- holding ------------------------------------------------------------------------------------------------


async def test_an_escrow_holds_amount_and_fee_from_available(
    server: RunningServer, admin: AsyncClient, fund: Fund
) -> None:
    await fund(ALICE, 200 * USDC)
    escrow = (await admin.escrows.CreateEscrow(create(metadata={"k": "v"}, priority=common_pb2.PRIORITY_HIGH))).escrow
    assert escrow.status == escrow_pb2.ESCROW_STATUS_ACTIVE
    assert (escrow.amount, escrow.held_amount, escrow.released_amount) == ("100000000", "100000000", "0")
    assert escrow.fee.total == "300000"  # 0.3%, as a payment of the same amount
    assert escrow.release_condition == escrow_pb2.RELEASE_CONDITION_PAYER_APPROVAL
    assert escrow.expiry_action == escrow_pb2.EXPIRY_ACTION_REFUND_PAYER
    # The default expiry is 7 days from creation.
    assert escrow.expire_time.seconds - escrow.create_time.seconds in (7 * DAY, 7 * DAY - 1)
    held = await balance(admin, ALICE)
    assert (held.available, held.reserved, held.escrowed, held.total) == ("99700000", "0", "100300000", "200000000")
    assert await get(admin, escrow.name) == escrow
    assert await events(server, escrow.name) == ["escrow.created"]
    entries = await admin.accounts.ListLedgerEntries(accounts_pb2.ListLedgerEntriesRequest(address=ALICE))
    assert [(e.kind, e.bucket, e.delta) for e in entries.entries][:2] == [
        (accounts_pb2.LEDGER_ENTRY_KIND_ESCROW_HOLD, accounts_pb2.LEDGER_BUCKET_ESCROWED, "100300000"),
        (accounts_pb2.LEDGER_ENTRY_KIND_ESCROW_HOLD, accounts_pb2.LEDGER_BUCKET_AVAILABLE, "-100300000"),
    ]


async def test_escrowed_funds_cannot_be_spent(admin: AsyncClient, fund: Fund) -> None:
    await fund(ALICE, 101 * USDC)
    await admin.escrows.CreateEscrow(create(amount=100 * USDC))
    with pytest.raises(InsufficientBalance):
        await admin.payments.SubmitPayment(
            payments_pb2.SubmitPaymentRequest(payer=ALICE, payee=BOB, token="USDC", amount=str(USDC))
        )
    with pytest.raises(InsufficientBalance):
        await admin.escrows.CreateEscrow(create(amount=USDC))
    held = await balance(admin, ALICE)
    assert (held.available, held.escrowed) == ("700000", "100300000")


@pytest.mark.parametrize(
    ("fields", "field"),
    [
        ({"task_id": ""}, "task_id"),
        ({"payer": "0x123"}, "payer"),
        ({"payee": ALICE}, "payee"),
        ({"amount": "-5"}, "amount"),
        ({"amount": "0"}, "amount"),
        ({"release_condition": 9}, "release_condition"),
        ({"release_condition": escrow_pb2.RELEASE_CONDITION_ARBITER}, "arbiter"),
        ({"arbiter": BOB}, "arbiter"),
        ({"release_condition": escrow_pb2.RELEASE_CONDITION_VERIFIER_ATTESTATION}, "verifier"),
        ({"verifier": VERIFIER.address}, "verifier"),
        ({"release_condition": escrow_pb2.RELEASE_CONDITION_VERIFIER_ATTESTATION, "verifier": BOB}, "verifier"),
        ({"expiry_action": 7}, "expiry_action"),
        ({"priority": 9}, "priority"),
        ({"request_id": "has space"}, "request_id"),
        ({"metadata": {"": "v"}}, "metadata['']"),
    ],
)
async def test_each_invalid_field_is_named_and_changes_nothing(
    server: RunningServer, admin: AsyncClient, fund: Fund, fields: dict[str, object], field: str
) -> None:
    await fund(ALICE, 200 * USDC)
    request = create()
    for name, value in fields.items():
        if name == "metadata":
            request.metadata.update(value)  # type: ignore[arg-type]
        else:
            setattr(request, name, value)
    with pytest.raises(InvalidArgument) as caught:
        await admin.escrows.CreateEscrow(request)
    assert caught.value.reason is Reason.INVALID_FIELD
    assert [v.field for v in caught.value.field_violations] == [field]
    assert (await balance(admin, ALICE)).escrowed == "0"
    assert await events(server, "") == []


async def test_an_expiry_in_the_past_or_beyond_the_maximum_is_refused(start_server: StartServer) -> None:
    clock = Clock()
    server = await start_server(clock=clock, escrow_max_expiry=30 * DAY)
    await _funder(server)(ALICE, 200 * USDC)
    async with server.client() as admin:
        for seconds, why in ((-1, "must be in the future"), (31 * DAY, "must be at most 2592000 seconds from now")):
            with pytest.raises(InvalidArgument) as caught:
                await admin.escrows.CreateEscrow(create(expire_time=at(clock, seconds)))
            assert [(v.field, v.description) for v in caught.value.field_violations] == [("expire_time", why)]
        expire_time = at(clock, 29 * DAY)
        escrow = (await admin.escrows.CreateEscrow(create(expire_time=expire_time))).escrow
        assert escrow.expire_time == expire_time


async def test_a_key_holds_only_its_own_funds_and_request_ids_replay(
    admin: AsyncClient, fund: Fund, create_key: CreateKey, server: RunningServer
) -> None:
    await fund(ALICE, 500 * USDC)
    bob_key = await key_for(create_key, admin_pb2.API_KEY_SCOPE_PAYER, BOB)
    async with server.client(bob_key) as bob:
        with pytest.raises(PermissionDenied) as caught:
            await bob.escrows.CreateEscrow(create())
        assert caught.value.reason is Reason.ADDRESS_NOT_ALLOWED
    first = (await admin.escrows.CreateEscrow(create(request_id="hire-1"))).escrow
    again = (await admin.escrows.CreateEscrow(create(request_id="hire-1"))).escrow
    assert again == first
    with pytest.raises(IdempotencyConflict):
        await admin.escrows.CreateEscrow(create(amount=USDC, request_id="hire-1"))
    assert (await balance(admin, ALICE)).escrowed == "100300000"


# -- releasing ----------------------------------------------------------------------------------------------


async def test_the_payer_releases_and_the_release_settles_as_a_payment(
    server: RunningServer, admin: AsyncClient, fund: Fund, create_key: CreateKey
) -> None:
    await fund(ALICE, 200 * USDC)
    escrow = (await admin.escrows.CreateEscrow(create(priority=common_pb2.PRIORITY_URGENT))).escrow
    alice_key = await key_for(create_key, admin_pb2.API_KEY_SCOPE_PAYER, ALICE)
    bob_key = await key_for(create_key, admin_pb2.API_KEY_SCOPE_PAYER, BOB)
    async with server.client(bob_key) as bob:
        with pytest.raises(PermissionDenied) as caught:
            await bob.escrows.ReleaseEscrow(escrow_pb2.ReleaseEscrowRequest(name=escrow.name))
        assert caught.value.reason is Reason.ADDRESS_NOT_ALLOWED
    async with server.client(alice_key) as alice:
        released = await alice.escrows.ReleaseEscrow(escrow_pb2.ReleaseEscrowRequest(name=escrow.name))
    assert released.escrow.status == escrow_pb2.ESCROW_STATUS_RELEASED
    assert (released.escrow.released_amount, released.escrow.held_amount) == ("100000000", "0")
    payment = released.payment
    assert (payment.payer, payment.payee, payment.amount, payment.escrow) == (ALICE, BOB, "100000000", escrow.name)
    assert payment.status == payments_pb2.PAYMENT_STATUS_QUEUED
    assert payment.priority == common_pb2.PRIORITY_URGENT
    assert payment.fee == escrow.fee
    assert list(released.escrow.release_payments) == [payment.name]
    held = await balance(admin, ALICE)
    assert (held.available, held.reserved, held.escrowed) == ("99700000", "100300000", "0")
    assert await events(server, escrow.name) == ["escrow.created", "escrow.released"]
    assert await events(server, payment.name) == ["payment.created", "payment.queued"]
    # The release is the payee's money now: the payer cannot take it back by cancelling the payment.
    with pytest.raises(EscrowNotActive):
        await admin.escrows.ReleaseEscrow(escrow_pb2.ReleaseEscrowRequest(name=escrow.name))
    with pytest.raises(FailedPrecondition) as cancel:
        await admin.payments.CancelPayment(payments_pb2.CancelPaymentRequest(name=payment.name))
    assert cancel.value.reason is Reason.PAYMENT_NOT_CANCELLABLE


async def test_partial_releases_sum_to_the_amount_and_their_fees_to_the_fee(admin: AsyncClient, fund: Fund) -> None:
    await fund(ALICE, 10 * USDC)
    # An amount and fee that do not divide evenly: 7 parts of an odd amount.
    escrow = (await admin.escrows.CreateEscrow(create(amount=3_333_337))).escrow
    fee = int(escrow.fee.total)
    parts = [476_191] * 6
    payments = []
    for part in parts:
        response = await admin.escrows.ReleaseEscrow(
            escrow_pb2.ReleaseEscrowRequest(name=escrow.name, amount=str(part))
        )
        assert response.escrow.status == escrow_pb2.ESCROW_STATUS_ACTIVE
        payments.append(response.payment)
    with pytest.raises(InvalidArgument) as caught:
        await admin.escrows.ReleaseEscrow(escrow_pb2.ReleaseEscrowRequest(name=escrow.name, amount="3333337"))
    assert [v.field for v in caught.value.field_violations] == ["amount"]
    last = await admin.escrows.ReleaseEscrow(escrow_pb2.ReleaseEscrowRequest(name=escrow.name))
    payments.append(last.payment)
    assert last.escrow.status == escrow_pb2.ESCROW_STATUS_RELEASED
    assert sum(int(p.amount) for p in payments) == 3_333_337
    assert int(last.payment.amount) == 3_333_337 - sum(parts)
    assert sum(int(p.fee.total) for p in payments) == fee
    for p in payments:
        f = p.fee
        assert int(f.platform) + int(f.network) + int(f.agent) + int(f.staking) == int(f.total)
    held = await balance(admin, ALICE)
    assert (int(held.reserved), held.escrowed) == (3_333_337 + fee, "0")
    assert [p.name for p in payments] == list(last.escrow.release_payments)


async def test_a_verifier_signature_releases_and_any_other_is_refused(
    server: RunningServer, admin: AsyncClient, fund: Fund, create_key: CreateKey
) -> None:
    await fund(ALICE, 200 * USDC)
    escrow = (
        await admin.escrows.CreateEscrow(
            create(
                release_condition=escrow_pb2.RELEASE_CONDITION_VERIFIER_ATTESTATION,
                verifier=VERIFIER.address,
            )
        )
    ).escrow
    result = "0x" + secrets.token_hex(32)
    bob_key = await key_for(create_key, admin_pb2.API_KEY_SCOPE_PAYER, BOB)
    async with server.client(bob_key) as bob:
        for signature in (
            sign(STRANGER, escrow.name, result),  # someone else's key
            sign(VERIFIER, escrow.name, "0x" + secrets.token_hex(32)),  # another result
            sign(VERIFIER, "escrows/0000000000000000000000", result),  # another escrow
            "0x" + "00" * 65,  # no signature at all
        ):
            with pytest.raises(InvalidAttestation) as caught:
                await bob.escrows.SubmitTaskResult(
                    escrow_pb2.SubmitTaskResultRequest(name=escrow.name, result_hash=result, signature=signature)
                )
            assert caught.value.reason is Reason.ESCROW_INVALID_ATTESTATION
        with pytest.raises(InvalidArgument) as malformed:
            await bob.escrows.SubmitTaskResult(
                escrow_pb2.SubmitTaskResultRequest(name=escrow.name, result_hash="0x12", signature="0x34")
            )
        assert [v.field for v in malformed.value.field_violations] == ["result_hash", "signature"]
        assert (await get(bob, escrow.name)).status == escrow_pb2.ESCROW_STATUS_ACTIVE
        assert (await balance(admin, ALICE)).escrowed == "100300000"
        good = sign(VERIFIER, escrow.name, result.upper().replace("0X", "0x"))
        released = await bob.escrows.SubmitTaskResult(
            escrow_pb2.SubmitTaskResultRequest(name=escrow.name, result_hash=result, signature=good)
        )
    assert released.escrow.status == escrow_pb2.ESCROW_STATUS_RELEASED
    assert released.payment.amount == "100000000"
    assert released.escrow.result_hash == result
    assert await events(server, escrow.name) == ["escrow.created", "escrow.released"]


async def test_under_an_arbiter_only_the_arbiter_releases_or_refunds(
    server: RunningServer, admin: AsyncClient, fund: Fund, create_key: CreateKey
) -> None:
    await fund(ALICE, 300 * USDC)
    arbitrated = create(release_condition=escrow_pb2.RELEASE_CONDITION_ARBITER, arbiter=CAROL)
    first = (await admin.escrows.CreateEscrow(arbitrated)).escrow
    second = (await admin.escrows.CreateEscrow(arbitrated)).escrow
    alice_key = await key_for(create_key, admin_pb2.API_KEY_SCOPE_PAYER, ALICE)
    bob_key = await key_for(create_key, admin_pb2.API_KEY_SCOPE_PAYER, BOB)
    carol_key = await key_for(create_key, admin_pb2.API_KEY_SCOPE_ARBITER, CAROL)
    for key in (alice_key, bob_key):
        async with server.client(key) as party:
            with pytest.raises(PermissionDenied):
                await party.escrows.ReleaseEscrow(escrow_pb2.ReleaseEscrowRequest(name=first.name))
            with pytest.raises(PermissionDenied):
                await party.escrows.RefundEscrow(escrow_pb2.RefundEscrowRequest(name=first.name))
    with pytest.raises(PermissionDenied):  # not even an admin key: the escrow names its arbiter
        await admin.escrows.ReleaseEscrow(escrow_pb2.ReleaseEscrowRequest(name=first.name))
    async with server.client(carol_key) as carol:
        released = await carol.escrows.ReleaseEscrow(escrow_pb2.ReleaseEscrowRequest(name=first.name))
        refunded = await carol.escrows.RefundEscrow(escrow_pb2.RefundEscrowRequest(name=second.name, reason="no"))
        # An arbiter-scope key sees the escrows it arbitrates, and only those.
        listed = await carol.escrows.ListEscrows(escrow_pb2.ListEscrowsRequest())
        assert sorted(e.name for e in listed.escrows) == sorted([first.name, second.name])
    assert released.escrow.status == escrow_pb2.ESCROW_STATUS_RELEASED
    assert refunded.escrow.status == escrow_pb2.ESCROW_STATUS_REFUNDED
    assert (refunded.escrow.refunded_amount, refunded.escrow.refund_reason) == ("100000000", "no")
    held = await balance(admin, ALICE)
    assert (held.available, held.reserved, held.escrowed) == ("199700000", "100300000", "0")


async def test_the_payee_refunds_and_the_payer_cannot_take_the_money_back_alone(
    server: RunningServer, admin: AsyncClient, fund: Fund, create_key: CreateKey
) -> None:
    await fund(ALICE, 200 * USDC)
    escrow = (await admin.escrows.CreateEscrow(create())).escrow
    await admin.escrows.ReleaseEscrow(escrow_pb2.ReleaseEscrowRequest(name=escrow.name, amount=str(40 * USDC)))
    alice_key = await key_for(create_key, admin_pb2.API_KEY_SCOPE_PAYER, ALICE)
    bob_key = await key_for(create_key, admin_pb2.API_KEY_SCOPE_PAYER, BOB)
    async with server.client(alice_key) as alice:
        with pytest.raises(PermissionDenied):
            await alice.escrows.RefundEscrow(escrow_pb2.RefundEscrowRequest(name=escrow.name))
    async with server.client(bob_key) as bob:
        refunded = (await bob.escrows.RefundEscrow(escrow_pb2.RefundEscrowRequest(name=escrow.name))).escrow
    assert refunded.status == escrow_pb2.ESCROW_STATUS_REFUNDED
    assert (refunded.released_amount, refunded.refunded_amount, refunded.held_amount) == ("40000000", "60000000", "0")
    held = await balance(admin, ALICE)
    # 40 USDC and its fee (0.12) went to a payment; 60 USDC and the rest of the fee (0.18) came back.
    assert (held.available, held.reserved, held.escrowed) == ("159880000", "40120000", "0")
    assert await events(server, escrow.name) == ["escrow.created", "escrow.released", "escrow.refunded"]
    await assert_journal_matches_balances(server)


async def test_a_key_that_is_no_party_does_not_see_the_escrow(
    server: RunningServer, admin: AsyncClient, fund: Fund, create_key: CreateKey
) -> None:
    await fund(ALICE, 200 * USDC)
    escrow = (await admin.escrows.CreateEscrow(create())).escrow
    carol_key = await key_for(create_key, admin_pb2.API_KEY_SCOPE_PAYER, CAROL)
    async with server.client(carol_key) as carol:
        for call in (
            carol.escrows.GetEscrow(escrow_pb2.GetEscrowRequest(name=escrow.name)),
            carol.escrows.ReleaseEscrow(escrow_pb2.ReleaseEscrowRequest(name=escrow.name)),
            carol.escrows.DisputeEscrow(escrow_pb2.DisputeEscrowRequest(name=escrow.name, reason="mine")),
        ):
            with pytest.raises(NotFound) as caught:
                await call
            assert caught.value.reason is Reason.ESCROW_NOT_FOUND
        assert list((await carol.escrows.ListEscrows(escrow_pb2.ListEscrowsRequest())).escrows) == []
    with pytest.raises(NotFound):
        await admin.escrows.GetEscrow(escrow_pb2.GetEscrowRequest(name="escrows/0000000000000000000000"))
    with pytest.raises(InvalidArgument):
        await admin.escrows.GetEscrow(escrow_pb2.GetEscrowRequest(name="payments/0000000000000000000000"))


async def test_list_escrows_filters_and_pages(admin: AsyncClient, fund: Fund) -> None:
    await fund(ALICE, 1_000 * USDC)
    await fund(BOB, 1_000 * USDC)
    made = [(await admin.escrows.CreateEscrow(create(amount=USDC, task_id=f"t{i}"))).escrow for i in range(5)]
    other = (await admin.escrows.CreateEscrow(create(amount=USDC, payer=BOB, payee=CAROL))).escrow
    await admin.escrows.RefundEscrow(escrow_pb2.RefundEscrowRequest(name=made[0].name))
    seen: list[str] = []
    token = ""
    while True:
        page = await admin.escrows.ListEscrows(
            escrow_pb2.ListEscrowsRequest(payer=ALICE, page_size=2, page_token=token)
        )
        seen.extend(e.name for e in page.escrows)
        token = page.next_page_token
        if not token:
            break
    assert seen == [e.name for e in reversed(made)]
    by_status = await admin.escrows.ListEscrows(escrow_pb2.ListEscrowsRequest(status=escrow_pb2.ESCROW_STATUS_REFUNDED))
    assert [e.name for e in by_status.escrows] == [made[0].name]
    by_task = await admin.escrows.ListEscrows(escrow_pb2.ListEscrowsRequest(task_id="t3"))
    assert [e.name for e in by_task.escrows] == [made[3].name]
    by_payee = await admin.escrows.ListEscrows(escrow_pb2.ListEscrowsRequest(payee=CAROL))
    assert [e.name for e in by_payee.escrows] == [other.name]
    with pytest.raises(InvalidArgument):
        await admin.escrows.ListEscrows(escrow_pb2.ListEscrowsRequest(page_token="bm90IGEgdG9rZW4"))


# -- expiry -------------------------------------------------------------------------------------------------


async def test_at_its_deadline_an_escrow_refunds_or_releases_as_it_says(start_server: StartServer) -> None:
    clock = Clock()
    server = await start_server(clock=clock)
    await _funder(server)(ALICE, 300 * USDC)
    async with server.client() as admin:
        refund = (await admin.escrows.CreateEscrow(create(expire_time=at(clock, 2 * DAY)))).escrow
        release = (
            await admin.escrows.CreateEscrow(
                create(expire_time=at(clock, 3 * DAY), expiry_action=escrow_pb2.EXPIRY_ACTION_RELEASE_TO_PAYEE)
            )
        ).escrow
        clock.advance(DAY)
        await asyncio.sleep(0.2)
        assert (await get(admin, refund.name)).status == escrow_pb2.ESCROW_STATUS_ACTIVE
        clock.advance(DAY)

        async def refunded() -> bool:
            return (await get(admin, refund.name)).status == escrow_pb2.ESCROW_STATUS_REFUNDED

        await wait_until(refunded)
        assert (await get(admin, release.name)).status == escrow_pb2.ESCROW_STATUS_ACTIVE
        clock.advance(DAY)

        async def released() -> bool:
            return (await get(admin, release.name)).status == escrow_pb2.ESCROW_STATUS_RELEASED

        await wait_until(released)
        gone, paid = await get(admin, refund.name), await get(admin, release.name)
        assert gone.expired
        assert paid.expired
        assert (gone.refunded_amount, paid.released_amount) == ("100000000", "100000000")
        [payment] = paid.release_payments
        got = (await admin.payments.GetPayment(payments_pb2.GetPaymentRequest(name=payment))).payment
        assert (got.payee, got.amount, got.status) == (BOB, "100000000", payments_pb2.PAYMENT_STATUS_QUEUED)
        held = await balance(admin, ALICE)
        assert (held.available, held.reserved, held.escrowed) == ("199700000", "100300000", "0")
        # Past its deadline nothing else may happen to an escrow.
        with pytest.raises(EscrowNotActive):
            await admin.escrows.ReleaseEscrow(escrow_pb2.ReleaseEscrowRequest(name=refund.name))
    assert await events(server, refund.name) == ["escrow.created", "escrow.expired", "escrow.refunded"]
    assert await events(server, release.name) == ["escrow.created", "escrow.expired", "escrow.released"]
    await assert_journal_matches_balances(server)
    registry = server.service.metrics.registry
    assert registry.get_sample_value("agentflow_escrow_steps_total", {"step": "expired"}) == 2
    assert registry.get_sample_value("agentflow_escrow_steps_total", {"step": "created"}) == 2
    assert registry.get_sample_value("agentflow_escrow_expiry_lateness_seconds_count") == 2


async def test_a_deadline_that_passed_while_the_server_was_down_is_met_at_start(
    start_server: StartServer, tmp_path: Path
) -> None:
    clock = Clock()
    server = await start_server(clock=clock)
    await _funder(server)(ALICE, 300 * USDC)
    async with server.client() as admin:
        escrow = (await admin.escrows.CreateEscrow(create(expire_time=at(clock, DAY)))).escrow
        later = (await admin.escrows.CreateEscrow(create(expire_time=at(clock, 3 * DAY)))).escrow
    await server.service.stop()
    clock.advance(2 * DAY)
    again = await start_server(clock=clock)
    async with again.client() as admin:

        async def expired() -> bool:
            return (await get(admin, escrow.name)).status == escrow_pb2.ESCROW_STATUS_REFUNDED

        await wait_until(expired)
        assert (await get(admin, later.name)).status == escrow_pb2.ESCROW_STATUS_ACTIVE
        held = await balance(admin, ALICE)
        assert (held.available, held.escrowed) == ("199700000", "100300000")


# -- disputes -----------------------------------------------------------------------------------------------


async def test_a_dispute_freezes_the_escrow_until_its_arbiter_splits_it(
    start_server: StartServer,
) -> None:
    clock = Clock()
    server = await start_server(clock=clock)
    await _funder(server)(ALICE, 200 * USDC)
    async with server.client() as admin:
        keys = {}
        for name, scope, address in (
            ("alice", admin_pb2.API_KEY_SCOPE_PAYER, ALICE),
            ("bob", admin_pb2.API_KEY_SCOPE_PAYER, BOB),
            ("carol", admin_pb2.API_KEY_SCOPE_ARBITER, CAROL),
        ):
            request = admin_pb2.CreateApiKeyRequest(display_name=name, scope=scope, addresses=[address])
            keys[name] = (await admin.admin.CreateApiKey(request)).secret
        escrow = (await admin.escrows.CreateEscrow(create(arbiter=CAROL, expire_time=at(clock, DAY)))).escrow
    async with server.client(keys["bob"]) as bob:
        with pytest.raises(InvalidArgument):
            await bob.escrows.DisputeEscrow(escrow_pb2.DisputeEscrowRequest(name=escrow.name, reason=" "))
        disputed = await bob.escrows.DisputeEscrow(escrow_pb2.DisputeEscrowRequest(name=escrow.name, reason="unpaid"))
        assert disputed.escrow.status == escrow_pb2.ESCROW_STATUS_DISPUTED
        assert (disputed.escrow.dispute.raised_by, disputed.escrow.dispute.reason) == (BOB, "unpaid")
        with pytest.raises(PermissionDenied):  # only the arbiter resolves (and the policy admits arbiters only)
            await bob.escrows.ResolveDispute(
                escrow_pb2.ResolveDisputeRequest(name=escrow.name, payee_amount="1", payer_amount="99999999")
            )
    async with server.client(keys["alice"]) as alice:
        for call in (
            alice.escrows.ReleaseEscrow(escrow_pb2.ReleaseEscrowRequest(name=escrow.name)),
            alice.escrows.DisputeEscrow(escrow_pb2.DisputeEscrowRequest(name=escrow.name, reason="again")),
        ):
            with pytest.raises(EscrowNotActive):
                await call
    # A disputed escrow does not expire.
    clock.advance(2 * DAY)
    await asyncio.sleep(0.3)
    async with server.client(keys["carol"]) as carol:
        assert (await get(carol, escrow.name)).status == escrow_pb2.ESCROW_STATUS_DISPUTED
        with pytest.raises(InvalidArgument) as caught:
            await carol.escrows.ResolveDispute(
                escrow_pb2.ResolveDisputeRequest(name=escrow.name, payee_amount="70000000", payer_amount="20000000")
            )
        assert [v.field for v in caught.value.field_violations] == ["payee_amount", "payer_amount"]
        resolved = await carol.escrows.ResolveDispute(
            escrow_pb2.ResolveDisputeRequest(
                name=escrow.name, payee_amount="70000000", payer_amount="30000000", resolution_note="70/30"
            )
        )
    escrow_after = resolved.escrow
    assert escrow_after.status == escrow_pb2.ESCROW_STATUS_RESOLVED
    assert (escrow_after.released_amount, escrow_after.refunded_amount) == ("70000000", "30000000")
    dispute = escrow_after.dispute
    assert (dispute.payee_amount, dispute.payer_amount, dispute.resolution_note) == ("70000000", "30000000", "70/30")
    assert dispute.resolve_time.seconds > 0
    assert (resolved.payment.payee, resolved.payment.amount, resolved.payment.fee.total) == (BOB, "70000000", "210000")
    async with server.client() as admin:
        held = await balance(admin, ALICE)
    assert (held.available, held.reserved, held.escrowed) == ("129790000", "70210000", "0")
    assert await events(server, escrow.name) == ["escrow.created", "escrow.disputed", "escrow.resolved"]
    await assert_journal_matches_balances(server)


async def test_without_an_arbiter_an_admin_resolves(admin: AsyncClient, fund: Fund) -> None:
    await fund(ALICE, 200 * USDC)
    escrow = (await admin.escrows.CreateEscrow(create())).escrow
    with pytest.raises(InvalidArgument) as caught:  # an admin key may act for both parties: it must say which
        await admin.escrows.DisputeEscrow(escrow_pb2.DisputeEscrowRequest(name=escrow.name, reason="late"))
    assert [v.field for v in caught.value.field_violations] == ["raised_by"]
    await admin.escrows.DisputeEscrow(escrow_pb2.DisputeEscrowRequest(name=escrow.name, reason="late", raised_by=ALICE))
    resolved = await admin.escrows.ResolveDispute(
        escrow_pb2.ResolveDisputeRequest(name=escrow.name, payee_amount="0", payer_amount="100000000")
    )
    assert resolved.escrow.status == escrow_pb2.ESCROW_STATUS_RESOLVED
    assert not resolved.HasField("payment")
    held = await balance(admin, ALICE)
    assert (held.available, held.escrowed) == ("200000000", "0")


# -- exactly once -------------------------------------------------------------------------------------------


async def test_concurrent_release_and_refund_have_one_winner(admin: AsyncClient, fund: Fund) -> None:
    await fund(ALICE, 1_000 * USDC)
    for _ in range(5):
        escrow = (await admin.escrows.CreateEscrow(create())).escrow
        outcomes = await asyncio.gather(
            admin.escrows.ReleaseEscrow(escrow_pb2.ReleaseEscrowRequest(name=escrow.name)),
            admin.escrows.RefundEscrow(escrow_pb2.RefundEscrowRequest(name=escrow.name)),
            admin.escrows.ReleaseEscrow(escrow_pb2.ReleaseEscrowRequest(name=escrow.name)),
            return_exceptions=True,
        )
        won = [o for o in outcomes if not isinstance(o, BaseException)]
        lost = [o for o in outcomes if isinstance(o, BaseException)]
        assert len(won) == 1
        assert all(isinstance(e, EscrowNotActive) and e.reason is Reason.ESCROW_NOT_ACTIVE for e in lost)
        final = await get(admin, escrow.name)
        assert int(final.released_amount) + int(final.refunded_amount) == 100 * USDC
    held = await balance(admin, ALICE)
    assert held.escrowed == "0"
    assert int(held.available) + int(held.reserved) == 1_000 * USDC


async def test_a_retried_release_answers_as_the_first_and_pays_once(admin: AsyncClient, fund: Fund) -> None:
    await fund(ALICE, 200 * USDC)
    escrow = (await admin.escrows.CreateEscrow(create())).escrow
    request = escrow_pb2.ReleaseEscrowRequest(name=escrow.name, amount=str(10 * USDC), request_id="milestone-1")
    first, again, *_ = await asyncio.gather(*(admin.escrows.ReleaseEscrow(request) for _ in range(4)))
    assert again.payment == first.payment
    final = await get(admin, escrow.name)
    assert (final.released_amount, list(final.release_payments)) == ("10000000", [first.payment.name])
    with pytest.raises(IdempotencyConflict):
        await admin.escrows.ReleaseEscrow(
            escrow_pb2.ReleaseEscrowRequest(name=escrow.name, amount=str(USDC), request_id="milestone-1")
        )
    # After the escrow is final, the same request still gets its original answer.
    await admin.escrows.ReleaseEscrow(escrow_pb2.ReleaseEscrowRequest(name=escrow.name))
    replay = await admin.escrows.ReleaseEscrow(request)
    assert replay.payment == first.payment
    assert replay.escrow.status == escrow_pb2.ESCROW_STATUS_RELEASED


async def test_a_release_racing_the_expiry_has_one_winner(server: RunningServer, fund: Fund) -> None:
    await fund(ALICE, 2_000 * USDC)
    clock = server.service.clock
    async with server.client() as admin:
        # Deadlines a few milliseconds apart, and a release sent to each around its deadline: some arrive
        # before it, some after.
        made = [
            (await admin.escrows.CreateEscrow(create(amount=USDC, expire_time=at(clock, 1 + i * 0.003)))).escrow
            for i in range(20)
        ]
        first_deadline = made[0].expire_time.seconds + made[0].expire_time.nanos / 1e9
        await asyncio.sleep(max(0.0, first_deadline + 0.03 - clock.now_us() / 1e6))
        outcomes = await asyncio.gather(
            *(admin.escrows.ReleaseEscrow(escrow_pb2.ReleaseEscrowRequest(name=e.name)) for e in made),
            return_exceptions=True,
        )

        async def all_final() -> bool:
            found = [await get(admin, e.name) for e in made]
            return all(e.status != escrow_pb2.ESCROW_STATUS_ACTIVE for e in found)

        await wait_until(all_final)
        for escrow, outcome in zip(made, outcomes, strict=True):
            final = await get(admin, escrow.name)
            if isinstance(outcome, BaseException):
                assert isinstance(outcome, EscrowNotActive)
                assert final.status == escrow_pb2.ESCROW_STATUS_REFUNDED
                assert final.expired
                assert await events(server, escrow.name) == ["escrow.created", "escrow.expired", "escrow.refunded"]
            else:
                assert final.status == escrow_pb2.ESCROW_STATUS_RELEASED
                assert not final.expired
                assert await events(server, escrow.name) == ["escrow.created", "escrow.released"]
        released = sum(1 for o in outcomes if not isinstance(o, BaseException))
        held = await balance(admin, ALICE)
        assert int(held.reserved) == released * (USDC + 10_000)
        assert (int(held.available), held.escrowed) == (2_000 * USDC - released * (USDC + 10_000), "0")
    await assert_journal_matches_balances(server)


# -- on chain -----------------------------------------------------------------------------------------------


async def test_on_the_embedded_chain_each_release_reaches_the_payee(embedded: RunningServer) -> None:
    chain = Chain(embedded)
    alice = await chain.fund("alice", {"USDC": 500 * USDC})
    bob = dev_account("bob").address
    before = await chain.token_balance("USDC", bob)
    async with embedded.client() as client:
        by_payer = (await client.escrows.CreateEscrow(create(payer=alice.address, payee=bob))).escrow
        attested = (
            await client.escrows.CreateEscrow(
                create(
                    payer=alice.address,
                    payee=bob,
                    release_condition=escrow_pb2.RELEASE_CONDITION_VERIFIER_ATTESTATION,
                    verifier=VERIFIER.address,
                )
            )
        ).escrow
        first = await client.escrows.ReleaseEscrow(
            escrow_pb2.ReleaseEscrowRequest(name=by_payer.name, amount=str(30 * USDC))
        )
        rest = await client.escrows.ReleaseEscrow(escrow_pb2.ReleaseEscrowRequest(name=by_payer.name))
        result = "0x" + "ab" * 32
        signed = await client.escrows.SubmitTaskResult(
            escrow_pb2.SubmitTaskResultRequest(
                name=attested.name, result_hash=result, signature=sign(VERIFIER, attested.name, result)
            )
        )
        names = [first.payment.name, rest.payment.name, signed.payment.name]
        settled = await until_final(client, names)
    assert {p.status for p in settled} == {payments_pb2.PAYMENT_STATUS_COMPLETED}
    assert await chain.token_balance("USDC", bob) == before + 200 * USDC
    await assert_ledger_matches_chain(chain)


async def test_on_anvil_a_dispute_split_arrives_on_chain_as_split(on_anvil: Anvil, start_server: StartServer) -> None:
    server = await start_server(**on_anvil.settings())
    chain = Chain(server)
    alice = await chain.fund("alice", {"USDC": 200 * USDC})
    bob = dev_account("bob").address
    before = await chain.token_balance("USDC", bob)
    async with server.client() as client:
        escrow = (await client.escrows.CreateEscrow(create(payer=alice.address, payee=bob, arbiter=CAROL))).escrow
        request = admin_pb2.CreateApiKeyRequest(
            display_name="carol", scope=admin_pb2.API_KEY_SCOPE_ARBITER, addresses=[CAROL]
        )
        carol_key = (await client.admin.CreateApiKey(request)).secret
        await client.escrows.DisputeEscrow(
            escrow_pb2.DisputeEscrowRequest(name=escrow.name, reason="half done", raised_by=alice.address)
        )
        async with server.client(carol_key) as carol:
            resolved = await carol.escrows.ResolveDispute(
                escrow_pb2.ResolveDisputeRequest(name=escrow.name, payee_amount="64000000", payer_amount="36000000")
            )
        [settled] = await until_final(client, [resolved.payment.name])
        assert settled.status == payments_pb2.PAYMENT_STATUS_COMPLETED
        held = await balance(client, alice.address)
    # The payee's part left the contract to the payee; the payer's part (and its share of the fee) is the
    # payer's to spend again, still deposited in the contract.
    assert await chain.token_balance("USDC", bob) == before + 64 * USDC
    fee = int(resolved.payment.fee.total)
    assert fee == 192_000
    assert (held.available, held.reserved, held.escrowed) == (str(200 * USDC - 64 * USDC - fee), "0", "0")
    await assert_ledger_matches_chain(chain)


# -- figures ------------------------------------------------------------------------------------------------


async def test_get_metrics_counts_escrows_and_the_value_they_lock(admin: AsyncClient, fund: Fund) -> None:
    await fund(ALICE, 1_000 * USDC)
    await fund(ALICE, 10**18, token="ETH")
    made = [(await admin.escrows.CreateEscrow(create(amount=(i + 1) * USDC))).escrow for i in range(5)]
    eth = (await admin.escrows.CreateEscrow(create(token="ETH", amount=str(10**17)))).escrow
    await admin.escrows.ReleaseEscrow(escrow_pb2.ReleaseEscrowRequest(name=made[0].name))
    await admin.escrows.ReleaseEscrow(escrow_pb2.ReleaseEscrowRequest(name=made[1].name, amount=str(USDC)))
    await admin.escrows.RefundEscrow(escrow_pb2.RefundEscrowRequest(name=made[2].name))
    await admin.escrows.DisputeEscrow(escrow_pb2.DisputeEscrowRequest(name=made[3].name, reason="late", raised_by=BOB))
    await admin.payments.SubmitPayment(
        payments_pb2.SubmitPaymentRequest(payer=ALICE, payee=BOB, token="USDC", amount=str(7 * USDC))
    )
    figures = await admin.admin.GetMetrics(admin_pb2.GetMetricsRequest())
    escrows = figures.escrows
    assert (escrows.total, escrows.active, escrows.released, escrows.refunded, escrows.disputed) == (6, 3, 1, 1, 1)
    # Held: 1 of escrow 2 (after its 1 USDC release), 4 (disputed), 5, and the ETH one.
    assert {t.token: t.amount for t in escrows.value_locked} == {"USDC": str(10 * USDC), "ETH": str(10**17)}
    payments = figures.payments
    # Two releases and one payment were accepted, all queued on a server that does not settle.
    assert (payments.accepted, payments.completed, payments.failed, payments.queue_depth) == (3, 0, 0, 3)
    assert {t.token: t.amount for t in payments.volume} == {"USDC": str(9 * USDC)}
    assert payments.success_rate == 1.0
    assert payments.p99_response_ms >= payments.mean_response_ms > 0
    assert figures.window.seconds == 60
    assert eth.status == escrow_pb2.ESCROW_STATUS_ACTIVE
    with pytest.raises(InvalidArgument) as caught:
        await admin.admin.GetMetrics(admin_pb2.GetMetricsRequest(window=duration_pb2.Duration(seconds=86_401)))
    assert [v.field for v in caught.value.field_violations] == ["window"]


async def test_an_expiry_whose_commit_fails_is_tried_again(
    start_server: StartServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    from agentflow_server.ledger import StorageError
    from agentflow_server.ledger.group import GroupWrite
    from agentflow_server.ledger.writer import GroupWriter

    clock = Clock()
    server = await start_server(clock=clock)
    await _funder(server)(ALICE, 200 * USDC)
    async with server.client() as admin:
        escrow = (await admin.escrows.CreateEscrow(create(expire_time=at(clock, DAY)))).escrow
        original = GroupWriter.commit
        failures: list[int] = []

        async def fail_once(self: GroupWriter, group: GroupWrite, epoch: int) -> None:
            if not failures:
                failures.append(epoch)
                self._failed_epoch = epoch  # as a failure inside the writer does
                raise StorageError("disk full")
            await original(self, group, epoch)

        monkeypatch.setattr(GroupWriter, "commit", fail_once)
        clock.advance(DAY)

        async def refunded() -> bool:
            return (await get(admin, escrow.name)).status == escrow_pb2.ESCROW_STATUS_REFUNDED

        await wait_until(refunded)
        assert failures
    assert await events(server, escrow.name) == ["escrow.created", "escrow.expired", "escrow.refunded"]
