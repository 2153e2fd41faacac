"""WebhookService against a real server and a real HTTP receiver: signed deliveries of every event of a
payment's life in order, retries with the same webhook-id, Retry-After, 410, the circuit breaker, disabling
after a time of failures, restarts, rotation, private addresses refused, and every refused field named."""

from __future__ import annotations

import asyncio
import base64
import json
import logging
from collections.abc import AsyncIterator, Awaitable, Callable

import pytest
from google.protobuf import duration_pb2, field_mask_pb2

from agentflow_payments import (
    AsyncClient,
    FailedPrecondition,
    IdempotencyConflict,
    InvalidArgument,
    NotFound,
    PermissionDenied,
    Reason,
    WebhookVerificationError,
    verify_webhook,
)
from agentflow_payments.v1 import admin_pb2, events_pb2, payments_pb2, webhooks_pb2

from .chain import Chain, until_final, wait_for
from .conftest import ALICE, BOB, RunningServer, StartServer
from .receiver import Answer, Received, Receiver
from .test_payments import CAROL, USDC, Fund, _funder

# Fast retries, a breaker that does not open unless a test wants it, private addresses allowed (the
# receiver is on 127.0.0.1).
FAST_HOOKS: dict[str, object] = {
    "webhook_allow_private": True,
    "webhook_retry_initial": 0.05,
    "webhook_retry_multiplier": 2.0,
    "webhook_breaker_threshold": 100,
    "webhook_timeout_ms": 2000,
}
SECRET = "whsec_" + base64.b64encode(b"0123456789abcdef0123456789abcdef").decode()

Create = Callable[..., Awaitable[webhooks_pb2.CreateWebhookResponse]]


@pytest.fixture
async def hooks_server(ledger_url: str | None, start_server: StartServer) -> RunningServer:
    """A server with quick webhook retries, on each ledger database in turn (SQLite, then PostgreSQL)."""
    return await start_server(database_url=ledger_url, **FAST_HOOKS)


@pytest.fixture
async def client(hooks_server: RunningServer) -> AsyncIterator[AsyncClient]:
    async with hooks_server.client() as client:
        yield client


@pytest.fixture
def fund(hooks_server: RunningServer) -> Fund:
    return _funder(hooks_server)


def create_with(client: AsyncClient, receiver: Receiver) -> Create:
    async def create(**fields: object) -> webhooks_pb2.CreateWebhookResponse:
        values: dict[str, object] = {"url": receiver.url, **fields}
        response: webhooks_pb2.CreateWebhookResponse = await client.webhooks.CreateWebhook(
            webhooks_pb2.CreateWebhookRequest(**values)  # type: ignore[arg-type]
        )
        return response

    return create


@pytest.fixture
def create(client: AsyncClient, receiver: Receiver) -> Create:
    return create_with(client, receiver)


def pay(amount: int = USDC, payer: str = ALICE) -> payments_pb2.SubmitPaymentRequest:
    return payments_pb2.SubmitPaymentRequest(payer=payer, payee=BOB, token="USDC", amount=str(amount))


def events_of(received: list[Received]) -> list[dict[str, object]]:
    return [json.loads(r.body) for r in received]


async def deliveries(client: AsyncClient, webhook: str, **fields: object) -> list[webhooks_pb2.WebhookDelivery]:
    response = await client.webhooks.ListWebhookDeliveries(
        webhooks_pb2.ListWebhookDeliveriesRequest(parent=webhook, **fields)  # type: ignore[arg-type]
    )
    return list(response.deliveries)


# -- delivery ------------------------------------------------------------------------------------------


async def test_every_event_of_a_payments_life_arrives_signed_and_in_order(
    start_server: StartServer, receiver: Receiver
) -> None:
    from .chain import FAST

    server = await start_server(settlement_enabled=True, **FAST, **FAST_HOOKS)
    alice = await Chain(server).fund("alice", {"USDC": 100 * USDC})
    async with server.client() as client:
        created = await create_with(client, receiver)(event_types=["payment.*"], secret=SECRET)
        assert created.secret == SECRET
        assert created.webhook.secret_prefixes == [SECRET[:10]]
        payment = (await client.payments.SubmitPayment(pay(payer=alice.address))).payment
        (final,) = await until_final(client, [payment.name])
        assert final.status == payments_pb2.PAYMENT_STATUS_COMPLETED
        received = await receiver.wait_for(4)
    bodies = [verify_webhook(r.headers, r.body, SECRET) for r in received]
    assert [(b["type"], b["resource"]) for b in bodies] == [
        ("payment.created", payment.name),
        ("payment.queued", payment.name),
        ("payment.processing", payment.name),
        ("payment.completed", payment.name),
    ]
    sequences = [int(b["sequence"]) for b in bodies]
    assert sequences == sorted(sequences)
    assert bodies[-1]["payment"]["status"] == "PAYMENT_STATUS_COMPLETED"
    assert bodies[-1]["payment"]["amount"] == str(USDC)
    # Each delivery has its own id, which ListWebhookDeliveries names too.
    ids = [r.headers["webhook-id"] for r in received]
    assert len(set(ids)) == 4
    async with server.client() as client:

        async def recorded() -> bool:
            listed = await deliveries(client, created.webhook.name)
            assert sorted(d.name.rpartition("/")[2] for d in listed) == sorted(ids)
            return all(d.status == webhooks_pb2.WEBHOOK_DELIVERY_STATUS_SUCCEEDED for d in listed)

        await wait_for(recorded, "the deliveries recorded", 10)
        listed = await deliveries(client, created.webhook.name)
        assert {d.attempt_count for d in listed} == {1}
        assert [d.event_sequence for d in listed] == sorted(sequences, reverse=True)  # newest first
    assert {r.headers["Content-Type"] for r in received} == {"application/json"}


async def test_a_signature_verifies_with_the_sdk_and_fails_after_one_byte_changes(
    create: Create, client: AsyncClient, fund: Fund, receiver: Receiver
) -> None:
    created = await create()
    assert created.secret.startswith("whsec_")
    await fund(ALICE, 10 * USDC)
    (delivered,) = await receiver.wait_for(1)
    event = verify_webhook(delivered.headers, delivered.body, created.secret)
    assert event["type"] == "deposit.confirmed"
    tampered = bytearray(delivered.body)
    tampered[10] ^= 1
    with pytest.raises(WebhookVerificationError):
        verify_webhook(delivered.headers, bytes(tampered), created.secret)
    with pytest.raises(WebhookVerificationError):
        verify_webhook(delivered.headers, delivered.body, SECRET)


async def test_a_receiver_failing_twice_gets_the_event_on_the_third_attempt_with_the_same_id(
    create: Create, client: AsyncClient, fund: Fund, receiver: Receiver
) -> None:
    receiver.script = [Answer(500, body=b"down"), Answer(500, body=b"still down")]
    created = await create(event_types=["deposit.confirmed"])
    await fund(ALICE, 10 * USDC)
    received = await receiver.wait_for(3)
    assert len({r.headers["webhook-id"] for r in received}) == 1
    assert len({r.body for r in received}) == 1
    for r in received:  # each attempt is signed anew, with its own timestamp
        verify_webhook(r.headers, r.body, created.secret)

    async def succeeded() -> bool:
        found = await deliveries(client, created.webhook.name)
        return bool(found) and found[0].status == webhooks_pb2.WEBHOOK_DELIVERY_STATUS_SUCCEEDED

    await wait_for(succeeded, "succeeded", 10)
    (delivery,) = await deliveries(client, created.webhook.name)
    assert delivery.attempt_count == 3
    assert delivery.last_attempt.http_status == 200
    assert delivery.last_attempt.success
    assert delivery.HasField("complete_time")
    assert not delivery.HasField("next_attempt_time")
    metrics = (await client.admin.GetMetrics(admin_pb2.GetMetricsRequest())).webhooks
    assert (metrics.attempts, metrics.retries, metrics.failures) == (3, 2, 0)
    assert metrics.delivery_success_rate == pytest.approx(1 / 3)
    assert metrics.mean_delivery_ms > 0


async def test_attempts_stop_after_the_retry_limit_and_a_manual_retry_delivers(
    start_server: StartServer, receiver: Receiver
) -> None:
    server = await start_server(**{**FAST_HOOKS, "webhook_max_retries": 1})
    receiver.default = Answer(503, body=b"maintenance")
    async with server.client() as client:
        created = await create_with(client, receiver)()
        await _funder(server)(ALICE, 10 * USDC)
        await receiver.wait_for(2)

        async def failed() -> bool:
            found = await deliveries(client, created.webhook.name, status=webhooks_pb2.WEBHOOK_DELIVERY_STATUS_FAILED)
            return len(found) == 1

        await wait_for(failed, "failed", 10)
        (delivery,) = await deliveries(client, created.webhook.name)
        assert (delivery.attempt_count, delivery.last_attempt.http_status) == (2, 503)
        assert delivery.last_attempt.response_body_excerpt == "maintenance"
        assert delivery.last_attempt.error == "HTTP 503"
        await asyncio.sleep(0.3)
        assert len(receiver.received) == 2  # no third attempt
        receiver.default = Answer(204, body=b"")
        retried = await client.webhooks.RetryWebhookDelivery(
            webhooks_pb2.RetryWebhookDeliveryRequest(name=delivery.name)
        )
        assert retried.delivery.status == webhooks_pb2.WEBHOOK_DELIVERY_STATUS_PENDING
        received = await receiver.wait_for(3)
        assert received[2].headers["webhook-id"] == delivery.name.rpartition("/")[2]

        async def succeeded() -> bool:
            (found,) = await deliveries(client, created.webhook.name)
            return found.status == webhooks_pb2.WEBHOOK_DELIVERY_STATUS_SUCCEEDED

        await wait_for(succeeded, "succeeded", 10)
        with pytest.raises(FailedPrecondition) as caught:
            await client.webhooks.RetryWebhookDelivery(webhooks_pb2.RetryWebhookDeliveryRequest(name=delivery.name))
        assert caught.value.reason is Reason.WEBHOOK_DELIVERY_SUCCEEDED
        metrics = (await client.admin.GetMetrics(admin_pb2.GetMetricsRequest())).webhooks
        assert (metrics.attempts, metrics.failures) == (3, 1)


async def test_retry_after_of_a_429_sets_the_next_attempt(
    create: Create, client: AsyncClient, fund: Fund, receiver: Receiver
) -> None:
    receiver.script = [Answer(429, headers={"Retry-After": "1"})]
    created = await create()
    await fund(ALICE, 10 * USDC)
    (first,) = await receiver.wait_for(1)

    async def scheduled() -> bool:
        found = await deliveries(client, created.webhook.name)
        return bool(found) and found[0].attempt_count == 1

    await wait_for(scheduled, "scheduled", 10)
    (delivery,) = await deliveries(client, created.webhook.name)
    wait = delivery.next_attempt_time.ToMicroseconds() - delivery.last_attempt.attempt_time.ToMicroseconds()
    assert wait == 1_000_000  # the endpoint's Retry-After, not the 50 ms backoff
    second = (await receiver.wait_for(2))[1]
    assert second.time - first.time >= 0.9


async def test_a_redirect_is_a_failure_not_followed(
    create: Create, client: AsyncClient, fund: Fund, receiver: Receiver
) -> None:
    receiver.script = [Answer(307, headers={"Location": "http://127.0.0.1:1/elsewhere"})]
    created = await create()
    await fund(ALICE, 10 * USDC)
    received = await receiver.wait_for(2)
    assert [r.headers["webhook-id"] for r in received] == [received[0].headers["webhook-id"]] * 2

    async def done() -> bool:
        found = await deliveries(client, created.webhook.name)
        return found[0].status == webhooks_pb2.WEBHOOK_DELIVERY_STATUS_SUCCEEDED

    await wait_for(done, "done", 10)


async def test_410_gone_disables_the_endpoint_with_an_event(
    create: Create, client: AsyncClient, fund: Fund, receiver: Receiver
) -> None:
    receiver.script = [Answer(410, body=b"gone")]
    created = await create()
    await fund(ALICE, 10 * USDC)
    await fund(ALICE, 10 * USDC)
    await receiver.wait_for(1)

    async def disabled() -> bool:
        found = await client.webhooks.GetWebhook(webhooks_pb2.GetWebhookRequest(name=created.webhook.name))
        return found.webhook.state == webhooks_pb2.WEBHOOK_STATE_DISABLED_BY_FAILURE

    await wait_for(disabled, "disabled", 10)
    webhook = (await client.webhooks.GetWebhook(webhooks_pb2.GetWebhookRequest(name=created.webhook.name))).webhook
    assert webhook.disabled_reason == "the endpoint answered 410 Gone"
    listed = await deliveries(client, created.webhook.name)
    assert {d.status for d in listed} == {webhooks_pb2.WEBHOOK_DELIVERY_STATUS_FAILED}
    log = await client.events.ListEvents(
        events_pb2.ListEventsRequest(filter=events_pb2.EventFilter(types=["webhook.*"]))
    )
    (event,) = log.events
    assert (event.type, event.resource) == ("webhook.disabled", created.webhook.name)
    assert event.webhook.state == webhooks_pb2.WEBHOOK_STATE_DISABLED_BY_FAILURE
    await asyncio.sleep(0.2)
    assert len(receiver.received) == 1  # nothing more after 410
    with pytest.raises(FailedPrecondition) as caught:
        await client.webhooks.RetryWebhookDelivery(webhooks_pb2.RetryWebhookDeliveryRequest(name=listed[0].name))
    assert caught.value.reason is Reason.WEBHOOK_DISABLED
    # Enabled again, it receives what happens from then on.
    mask = field_mask_pb2.FieldMask(paths=["state"])
    enabled = await client.webhooks.UpdateWebhook(
        webhooks_pb2.UpdateWebhookRequest(
            webhook=webhooks_pb2.Webhook(name=created.webhook.name, state=webhooks_pb2.WEBHOOK_STATE_ENABLED),
            update_mask=mask,
        )
    )
    assert (enabled.webhook.state, enabled.webhook.disabled_reason) == (webhooks_pb2.WEBHOOK_STATE_ENABLED, "")
    await fund(BOB, 10 * USDC)
    received = await receiver.wait_for(2)
    assert json.loads(received[1].body)["deposit"]["beneficiary"] == BOB


async def test_an_endpoint_failing_for_the_configured_time_is_disabled(
    start_server: StartServer, receiver: Receiver
) -> None:
    server = await start_server(**{**FAST_HOOKS, "webhook_disable_after": 0.3, "webhook_max_retries": 20})
    receiver.default = Answer(500)
    async with server.client() as client:
        created = await create_with(client, receiver)()
        await _funder(server)(ALICE, 10 * USDC)

        async def disabled() -> bool:
            found = await client.webhooks.GetWebhook(webhooks_pb2.GetWebhookRequest(name=created.webhook.name))
            return found.webhook.state == webhooks_pb2.WEBHOOK_STATE_DISABLED_BY_FAILURE

        await wait_for(disabled, "disabled", 10)
        webhook = (await client.webhooks.GetWebhook(webhooks_pb2.GetWebhookRequest(name=created.webhook.name))).webhook
        assert webhook.disabled_reason.startswith("every attempt failed for")
        assert "HTTP 500" in webhook.disabled_reason


async def test_the_circuit_breaker_stops_attempts_then_probes(start_server: StartServer, receiver: Receiver) -> None:
    server = await start_server(
        **{**FAST_HOOKS, "webhook_breaker_threshold": 2, "webhook_breaker_reset": 0.5, "webhook_max_retries": 0}
    )
    receiver.default = Answer(500)
    async with server.client() as client:
        created = await create_with(client, receiver)(event_types=["deposit.confirmed"])
        fund = _funder(server)
        for _ in range(4):
            await fund(ALICE, USDC)
        await receiver.wait_for(2)
        await asyncio.sleep(0.3)
        assert len(receiver.received) == 2  # open: the other two wait
        receiver.default = Answer(200)
        received = await receiver.wait_for(4, within=5)
        # The probe came after the reset time, then the closed breaker let the last one through.
        assert received[2].time - received[1].time >= 0.45
        expected = sorted(
            [webhooks_pb2.WEBHOOK_DELIVERY_STATUS_FAILED] * 2 + [webhooks_pb2.WEBHOOK_DELIVERY_STATUS_SUCCEEDED] * 2
        )

        async def settled() -> bool:
            return sorted(d.status for d in await deliveries(client, created.webhook.name)) == expected

        await wait_for(settled, "settled", 10)


async def test_a_slow_endpoint_does_not_hold_up_another(
    create: Create, client: AsyncClient, fund: Fund, receiver: Receiver
) -> None:
    slow = Receiver()
    await slow.start()
    try:
        slow.default = Answer(200, delay=1.5)
        await create_with(client, slow)()
        await create()
        for _ in range(3):
            await fund(ALICE, USDC)
        started = asyncio.get_running_loop().time()
        await receiver.wait_for(3, within=5)
        assert asyncio.get_running_loop().time() - started < 1.0
        assert len(slow.received) == 1  # still answering the first
    finally:
        await slow.stop()


async def test_deliveries_survive_a_restart_while_the_receiver_is_down(
    start_server: StartServer, receiver: Receiver
) -> None:
    server = await start_server(**FAST_HOOKS)
    async with server.client() as client:
        created = await create_with(client, receiver)()
    await receiver.stop()  # down: connections are refused
    await _funder(server)(ALICE, 10 * USDC)
    await _funder(server)(BOB, 10 * USDC)
    async with server.client() as client:

        async def tried() -> bool:
            found = await deliveries(client, created.webhook.name)
            return len(found) == 2 and all(d.attempt_count >= 1 for d in found)

        await wait_for(tried, "tried", 10)
        listed = await deliveries(client, created.webhook.name)
        assert all("connection failed" in d.last_attempt.error for d in listed)
    await server.service.stop()
    await receiver.start()
    restarted = await start_server(**FAST_HOOKS)
    received = await receiver.wait_for(2)
    assert sorted(json.loads(r.body)["deposit"]["beneficiary"] for r in received) == sorted([ALICE, BOB])
    assert {r.headers["webhook-id"] for r in received} == {d.name.rpartition("/")[2] for d in listed}
    async with restarted.client() as client:
        await _funder(restarted)(CAROL, 10 * USDC)
        await receiver.wait_for(3)


async def test_events_committed_while_the_server_was_down_are_fanned_out_at_start(
    start_server: StartServer, receiver: Receiver
) -> None:
    """The fan-out cursor is durable: events committed but not yet fanned out when the server stopped
    reach the endpoint after it starts again."""
    server = await start_server(**FAST_HOOKS)
    async with server.client() as client:
        created = await create_with(client, receiver)()
    webhooks = server.service.webhooks
    assert webhooks is not None
    await webhooks.stop()  # no more fan-out in this process
    await _funder(server)(ALICE, 10 * USDC)
    await server.service.stop()
    restarted = await start_server(**FAST_HOOKS)
    (received,) = await receiver.wait_for(1)
    assert json.loads(received.body)["type"] == "deposit.confirmed"
    async with restarted.client() as client:
        assert len(await deliveries(client, created.webhook.name)) == 1


async def test_rotation_signs_with_both_secrets_during_the_grace_period(
    create: Create, client: AsyncClient, fund: Fund, receiver: Receiver
) -> None:
    created = await create(secret=SECRET)
    rotated = await client.webhooks.RotateWebhookSecret(
        webhooks_pb2.RotateWebhookSecretRequest(
            name=created.webhook.name, grace_period=duration_pb2.Duration(seconds=3600)
        )
    )
    assert rotated.secret.startswith("whsec_")
    assert rotated.secret != SECRET
    assert list(rotated.webhook.secret_prefixes) == [SECRET[:10], rotated.secret[:10]]
    await fund(ALICE, USDC)
    (delivered,) = await receiver.wait_for(1)
    assert len(delivered.headers["webhook-signature"].split(" ")) == 2
    verify_webhook(delivered.headers, delivered.body, SECRET)
    verify_webhook(delivered.headers, delivered.body, rotated.secret)
    # A grace of zero retires the old secret at once.
    again = await client.webhooks.RotateWebhookSecret(
        webhooks_pb2.RotateWebhookSecretRequest(name=created.webhook.name, grace_period=duration_pb2.Duration())
    )
    assert list(again.webhook.secret_prefixes) == [again.secret[:10]]
    await fund(ALICE, USDC)
    second = (await receiver.wait_for(2))[1]
    verify_webhook(second.headers, second.body, again.secret)
    for old in (SECRET, rotated.secret):
        with pytest.raises(WebhookVerificationError):
            verify_webhook(second.headers, second.body, old)


async def test_test_webhook_sends_now_and_returns_the_answer(
    create: Create, client: AsyncClient, receiver: Receiver
) -> None:
    created = await create(secret=SECRET)
    receiver.script = [Answer(500, body=b"x" * 100_000)]
    answer = await client.webhooks.TestWebhook(webhooks_pb2.TestWebhookRequest(name=created.webhook.name))
    assert (answer.attempt.http_status, answer.attempt.success) == (500, False)
    assert answer.attempt.response_body_excerpt == "x" * 1024
    assert answer.attempt.duration.ToNanoseconds() > 0
    answer = await client.webhooks.TestWebhook(
        webhooks_pb2.TestWebhookRequest(name=created.webhook.name, event_type="payment.completed")
    )
    assert (answer.attempt.http_status, answer.attempt.success, answer.attempt.response_body_excerpt) == (
        200,
        True,
        "ok",
    )
    test_event = verify_webhook(receiver.received[1].headers, receiver.received[1].body, SECRET)
    assert (test_event["type"], test_event["resource"]) == ("payment.completed", created.webhook.name)
    assert test_event["webhook"]["url"] == receiver.url
    # Tests leave no delivery behind.
    assert await deliveries(client, created.webhook.name) == []


async def test_an_endpoint_that_is_deleted_gets_nothing_more(
    create: Create, client: AsyncClient, fund: Fund, receiver: Receiver
) -> None:
    receiver.default = Answer(500)
    created = await create()
    await fund(ALICE, USDC)
    await receiver.wait_for(1)
    await client.webhooks.DeleteWebhook(webhooks_pb2.DeleteWebhookRequest(name=created.webhook.name))
    count = len(receiver.received)
    await fund(ALICE, USDC)
    await asyncio.sleep(0.3)
    assert len(receiver.received) <= count + 1  # at most the attempt already under way
    with pytest.raises(NotFound) as caught:
        await client.webhooks.GetWebhook(webhooks_pb2.GetWebhookRequest(name=created.webhook.name))
    assert caught.value.reason is Reason.WEBHOOK_NOT_FOUND


# -- who sees what -------------------------------------------------------------------------------------


async def test_an_endpoint_belongs_to_its_key_and_carries_only_what_the_key_sees(
    hooks_server: RunningServer, client: AsyncClient, fund: Fund, receiver: Receiver, start_server: StartServer
) -> None:
    response = await client.admin.CreateApiKey(
        admin_pb2.CreateApiKeyRequest(display_name="alice", scope=admin_pb2.API_KEY_SCOPE_PAYER, addresses=[ALICE])
    )
    async with hooks_server.client(response.secret) as alice:
        mine = await create_with(alice, receiver)()
        listed = await alice.webhooks.ListWebhooks(webhooks_pb2.ListWebhooksRequest())
        assert [w.name for w in listed.webhooks] == [mine.webhook.name]
        admins = await create_with(client, receiver)(description="the admin's")
        with pytest.raises(NotFound):
            await alice.webhooks.GetWebhook(webhooks_pb2.GetWebhookRequest(name=admins.webhook.name))
        with pytest.raises(NotFound):
            await alice.webhooks.DeleteWebhook(webhooks_pb2.DeleteWebhookRequest(name=admins.webhook.name))
        everything = await client.webhooks.ListWebhooks(webhooks_pb2.ListWebhooksRequest())
        assert {w.name for w in everything.webhooks} == {mine.webhook.name, admins.webhook.name}
    await fund(CAROL, USDC)
    await fund(ALICE, USDC)
    received = await receiver.wait_for(3)
    await asyncio.sleep(0.2)
    assert len(receiver.received) == 3  # the admin's endpoint gets both, Alice's only her own
    beneficiaries = sorted(json.loads(r.body)["deposit"]["beneficiary"] for r in received)
    assert beneficiaries == sorted([CAROL, ALICE, ALICE])


async def test_list_webhooks_pages(client: AsyncClient, create: Create) -> None:
    names = [(await create(description=f"n{i}")).webhook.name for i in range(5)]
    seen: list[str] = []
    token = ""
    while True:
        page = await client.webhooks.ListWebhooks(webhooks_pb2.ListWebhooksRequest(page_size=2, page_token=token))
        seen.extend(w.name for w in page.webhooks)
        token = page.next_page_token
        if not token:
            break
    assert seen == names[::-1]


async def test_create_with_a_request_id_is_idempotent(client: AsyncClient, create: Create) -> None:
    first = await create(request_id="hook-1")
    again = await create(request_id="hook-1")
    assert (again.webhook.name, again.secret) == (first.webhook.name, first.secret)
    with pytest.raises(IdempotencyConflict):
        await create(request_id="hook-1", description="something else")
    assert len((await client.webhooks.ListWebhooks(webhooks_pb2.ListWebhooksRequest())).webhooks) == 1


async def test_update_changes_the_fields_named_in_the_mask(
    client: AsyncClient, create: Create, fund: Fund, receiver: Receiver
) -> None:
    created = await create(event_types=["payment.*"], description="before")
    updated = await client.webhooks.UpdateWebhook(
        webhooks_pb2.UpdateWebhookRequest(
            webhook=webhooks_pb2.Webhook(
                name=created.webhook.name, event_types=["deposit.confirmed"], description="after", url="ignored"
            ),
            update_mask=field_mask_pb2.FieldMask(paths=["event_types", "description"]),
        )
    )
    assert list(updated.webhook.event_types) == ["deposit.confirmed"]
    assert (updated.webhook.description, updated.webhook.url) == ("after", receiver.url)
    await fund(ALICE, USDC)
    (delivered,) = await receiver.wait_for(1)
    assert json.loads(delivered.body)["type"] == "deposit.confirmed"
    # Disabled by its owner: nothing is delivered.
    await client.webhooks.UpdateWebhook(
        webhooks_pb2.UpdateWebhookRequest(
            webhook=webhooks_pb2.Webhook(name=created.webhook.name, state=webhooks_pb2.WEBHOOK_STATE_DISABLED),
            update_mask=field_mask_pb2.FieldMask(paths=["state"]),
        )
    )
    await fund(ALICE, USDC)
    await asyncio.sleep(0.3)
    assert len(receiver.received) == 1


# -- refusals ------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "url",
    [
        "http://127.0.0.1:8080/hook",
        "http://localhost/hook",
        "https://10.1.2.3/hook",
        "https://192.168.0.10/hook",
        "http://169.254.169.254/latest/meta-data/",
        "http://[::1]/hook",
        "http://[::ffff:127.0.0.1]/hook",
        "http://[fd00:ec2::254]/",
        "http://0.0.0.0/",
    ],
)
async def test_private_addresses_are_refused_without_the_setting(server: RunningServer, url: str) -> None:
    async with server.client() as client:
        with pytest.raises(InvalidArgument) as caught:
            await client.webhooks.CreateWebhook(webhooks_pb2.CreateWebhookRequest(url=url))
        assert caught.value.reason is Reason.WEBHOOK_URL_NOT_ALLOWED
        assert caught.value.metadata["field"] == "url"
        assert [v.field for v in caught.value.field_violations] == ["url"]
        assert "public addresses only" in caught.value.message
        assert (await client.webhooks.ListWebhooks(webhooks_pb2.ListWebhooksRequest())).webhooks == []


@pytest.mark.parametrize(
    ("fields", "field"),
    [
        ({"url": ""}, "url"),
        ({"url": "ftp://example.com/x"}, "url"),
        ({"url": "https://user:pass@example.com/x"}, "url"),
        ({"url": "https://example.com/" + "a" * 2048}, "url"),
        ({"url": "not a url"}, "url"),
        ({"event_types": ["payment.nonsense"]}, "event_types[0]"),
        ({"secret": "whsec_short"}, "secret"),
        ({"secret": "plain-secret"}, "secret"),
        ({"description": "d" * 257}, "description"),
        ({"request_id": "has space"}, "request_id"),
    ],
)
async def test_create_refuses_each_bad_field(
    client: AsyncClient, receiver: Receiver, fields: dict[str, object], field: str
) -> None:
    with pytest.raises(InvalidArgument) as caught:
        await create_with(client, receiver)(**fields)
    assert caught.value.reason is Reason.INVALID_FIELD
    assert [v.field for v in caught.value.field_violations] == [field]
    assert (await client.webhooks.ListWebhooks(webhooks_pb2.ListWebhooksRequest())).webhooks == []


async def test_other_calls_refuse_bad_fields(client: AsyncClient, create: Create) -> None:
    created = await create()
    name = created.webhook.name
    cases: list[tuple[Awaitable[object], str]] = [
        (client.webhooks.GetWebhook(webhooks_pb2.GetWebhookRequest(name="webhook/x")), "name"),
        (
            client.webhooks.UpdateWebhook(
                webhooks_pb2.UpdateWebhookRequest(webhook=webhooks_pb2.Webhook(name=name, url="x"))
            ),
            "update_mask",
        ),
        (
            client.webhooks.UpdateWebhook(
                webhooks_pb2.UpdateWebhookRequest(
                    webhook=webhooks_pb2.Webhook(name=name), update_mask=field_mask_pb2.FieldMask(paths=["secret"])
                )
            ),
            "update_mask.paths[0]",
        ),
        (
            client.webhooks.UpdateWebhook(
                webhooks_pb2.UpdateWebhookRequest(
                    webhook=webhooks_pb2.Webhook(name=name, state=webhooks_pb2.WEBHOOK_STATE_DISABLED_BY_FAILURE),
                    update_mask=field_mask_pb2.FieldMask(paths=["state"]),
                )
            ),
            "webhook.state",
        ),
        (
            client.webhooks.RotateWebhookSecret(
                webhooks_pb2.RotateWebhookSecretRequest(
                    name=name, grace_period=duration_pb2.Duration(seconds=8 * 86400)
                )
            ),
            "grace_period",
        ),
        (client.webhooks.TestWebhook(webhooks_pb2.TestWebhookRequest(name=name, event_type="nope")), "event_type"),
        (
            client.webhooks.ListWebhookDeliveries(webhooks_pb2.ListWebhookDeliveriesRequest(parent=name, status=9)),
            "status",
        ),
        (client.webhooks.RetryWebhookDelivery(webhooks_pb2.RetryWebhookDeliveryRequest(name=name)), "name"),
    ]
    for call, field in cases:
        with pytest.raises(InvalidArgument) as caught:
            await call
        assert [v.field for v in caught.value.field_violations] == [field], field
    unchanged = await client.webhooks.GetWebhook(webhooks_pb2.GetWebhookRequest(name=name))
    assert unchanged.webhook == created.webhook
    with pytest.raises(NotFound) as missing:
        await client.webhooks.RetryWebhookDelivery(
            webhooks_pb2.RetryWebhookDeliveryRequest(name=f"{name}/deliveries/msg_{'0' * 26}")
        )
    assert missing.value.reason is Reason.WEBHOOK_DELIVERY_NOT_FOUND


async def test_a_read_only_key_may_list_but_not_create(
    hooks_server: RunningServer, client: AsyncClient, receiver: Receiver
) -> None:
    key = (
        await client.admin.CreateApiKey(
            admin_pb2.CreateApiKeyRequest(display_name="reader", scope=admin_pb2.API_KEY_SCOPE_READ_ONLY)
        )
    ).secret
    async with hooks_server.client(key) as reader:
        assert (await reader.webhooks.ListWebhooks(webhooks_pb2.ListWebhooksRequest())).webhooks == []
        with pytest.raises(PermissionDenied) as caught:
            await create_with(reader, receiver)()
        assert caught.value.reason is Reason.SCOPE_DENIED


async def test_an_attempt_longer_than_the_timeout_fails_as_a_timeout(
    start_server: StartServer, receiver: Receiver
) -> None:
    server = await start_server(**{**FAST_HOOKS, "webhook_timeout_ms": 300, "webhook_max_retries": 0})
    receiver.default = Answer(200, delay=2.0)
    async with server.client() as client:
        created = await create_with(client, receiver)()
        await _funder(server)(ALICE, USDC)

        async def failed() -> bool:
            found = await deliveries(client, created.webhook.name)
            return bool(found) and found[0].status == webhooks_pb2.WEBHOOK_DELIVERY_STATUS_FAILED

        await wait_for(failed, "the delivery to time out", 10)
        (delivery,) = await deliveries(client, created.webhook.name)
        assert (delivery.last_attempt.error, delivery.last_attempt.http_status) == ("timeout", 0)
        assert delivery.last_attempt.duration.ToMilliseconds() < 1500


async def test_an_address_allowed_once_is_checked_again_before_each_attempt(
    start_server: StartServer, receiver: Receiver
) -> None:
    """Registered while private addresses were allowed, an endpoint on 127.0.0.1 gets no request from a
    server that no longer allows them: the destination is checked before every attempt."""
    server = await start_server(**FAST_HOOKS)
    async with server.client() as client:
        created = await create_with(client, receiver)()
    await server.service.stop()
    strict = await start_server(**{**FAST_HOOKS, "webhook_allow_private": False, "webhook_max_retries": 0})
    await _funder(strict)(ALICE, USDC)
    async with strict.client() as client:

        async def failed() -> bool:
            found = await deliveries(client, created.webhook.name)
            return bool(found) and found[0].status == webhooks_pb2.WEBHOOK_DELIVERY_STATUS_FAILED

        await wait_for(failed, "the delivery to be refused", 10)
        (delivery,) = await deliveries(client, created.webhook.name)
        assert delivery.last_attempt.error.startswith("destination refused: 127.0.0.1: 127.0.0.1 is a loopback")
    assert receiver.received == []


async def test_secrets_are_never_logged(
    create: Create, client: AsyncClient, fund: Fund, receiver: Receiver, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    created = await create(secret=SECRET)
    rotated = await client.webhooks.RotateWebhookSecret(
        webhooks_pb2.RotateWebhookSecretRequest(name=created.webhook.name)
    )
    receiver.script = [Answer(500)]
    await fund(ALICE, USDC)
    await receiver.wait_for(2)
    await client.webhooks.TestWebhook(webhooks_pb2.TestWebhookRequest(name=created.webhook.name))
    logged = "\n".join(f"{r.getMessage()} {r.__dict__}" for r in caplog.records)
    assert "webhook.created" in logged  # the audit log names the endpoint
    for secret in (SECRET, rotated.secret):
        assert secret not in logged
        assert secret.removeprefix("whsec_") not in logged


async def test_the_development_receiver_script_verifies_deliveries(
    hooks_server: RunningServer, client: AsyncClient, fund: Fund
) -> None:
    """scripts/webhook_receiver.py, as the README runs it: --fail answers 500 first, then it verifies."""
    import sys
    from pathlib import Path

    from .anvil import free_port

    port = free_port()
    created = await client.webhooks.CreateWebhook(
        webhooks_pb2.CreateWebhookRequest(url=f"http://127.0.0.1:{port}/hooks", secret=SECRET)
    )
    script = Path(__file__).parent.parent / "scripts" / "webhook_receiver.py"
    process = await asyncio.create_subprocess_exec(
        sys.executable,
        str(script),
        "--port",
        str(port),
        "--secret",
        SECRET,
        "--fail",
        "1",
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    try:
        assert process.stderr is not None
        assert process.stdout is not None
        assert b"receiving webhooks" in await asyncio.wait_for(process.stderr.readline(), 10)
        await fund(ALICE, USDC)
        failed = (await asyncio.wait_for(process.stdout.readline(), 10)).decode()
        verified = (await asyncio.wait_for(process.stdout.readline(), 10)).decode()
    finally:
        process.terminate()
        await process.wait()
    delivery_id = failed.split(" ")[0]
    assert failed.strip() == f"{delivery_id} answered 500 (--fail)"
    assert verified.startswith(f"{delivery_id} verified: #1 deposit.confirmed deposits/")
    assert created.webhook.name
