"""EventService against a real server: the log listed and streamed, resumed without gap or duplicate,
followed live, filtered, limited to what a key may see, and a slow subscriber cut off with its cursor."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

import pytest

from agentflow_payments import (
    AsyncClient,
    InvalidArgument,
    NotFound,
    PermissionDenied,
    Reason,
    SubscriberTooSlow,
    Unavailable,
)
from agentflow_payments.v1 import admin_pb2, events_pb2, payments_pb2
from agentflow_server.events.filter import EventFilter

from .chain import Chain
from .conftest import ADMIN_KEY, ALICE, BOB, CreateKey, RunningServer, StartServer
from .test_payments import CAROL, USDC, Fund, _funder


@pytest.fixture
async def server(ledger_url: str | None, start_server: StartServer) -> RunningServer:
    """A server on each ledger database in turn: every test that takes it runs on SQLite and on PostgreSQL."""
    return await start_server(database_url=ledger_url)


@pytest.fixture
def fund(server: RunningServer) -> Fund:
    return _funder(server)


def pay(payer: str = ALICE, payee: str = BOB, amount: int = USDC) -> payments_pb2.SubmitPaymentRequest:
    return payments_pb2.SubmitPaymentRequest(payer=payer, payee=payee, token="USDC", amount=str(amount))


def subscribe(client: AsyncClient, **fields: object) -> AsyncIterator[events_pb2.SubscribeEventsResponse]:
    request = events_pb2.SubscribeEventsRequest(**fields)  # type: ignore[arg-type]
    return client.events.SubscribeEvents(request).__aiter__()  # type: ignore[no-any-return]


async def take(stream: AsyncIterator[events_pb2.SubscribeEventsResponse], count: int) -> list[events_pb2.Event]:
    """The next ``count`` events of a stream (heartbeats skipped)."""
    found: list[events_pb2.Event] = []
    while len(found) < count:
        response = await asyncio.wait_for(stream.__anext__(), 10)
        if response.HasField("event"):
            found.append(response.event)
    return found


async def all_events(client: AsyncClient, **filter_fields: object) -> list[events_pb2.Event]:
    found: list[events_pb2.Event] = []
    token = ""
    while True:
        page = await client.events.ListEvents(
            events_pb2.ListEventsRequest(
                filter=events_pb2.EventFilter(**filter_fields),  # type: ignore[arg-type]
                page_size=7,
                page_token=token,
            )
        )
        found.extend(page.events)
        token = page.next_page_token
        if not token:
            return found


async def test_list_events_pages_the_log_oldest_first_with_each_resource(admin: AsyncClient, fund: Fund) -> None:
    await fund(ALICE, 100 * USDC)
    payments = [(await admin.payments.SubmitPayment(pay(amount=(i + 1) * USDC))).payment for i in range(5)]
    await admin.payments.CancelPayment(payments_pb2.CancelPaymentRequest(name=payments[0].name))
    events = await all_events(admin)
    assert [e.sequence for e in events] == list(range(1, 13))
    assert events[0].type == "deposit.confirmed"
    assert events[0].deposit.beneficiary == ALICE
    assert [(e.type, e.resource) for e in events[1:3]] == [
        ("payment.created", payments[0].name),
        ("payment.queued", payments[0].name),
    ]
    assert events[2].payment == payments[0]
    assert sorted(events[2].addresses) == sorted([ALICE, BOB])
    cancelled = events[-1]
    assert (cancelled.type, cancelled.payment.status) == ("payment.cancelled", payments_pb2.PAYMENT_STATUS_CANCELLED)
    # Filters: a type wildcard, one type, a resource, an address.
    assert len(await all_events(admin, types=["payment.*"])) == 11
    assert [e.resource for e in await all_events(admin, types=["payment.cancelled"])] == [payments[0].name]
    assert [e.type for e in await all_events(admin, resource=payments[3].name)] == ["payment.created", "payment.queued"]
    assert len(await all_events(admin, address=BOB)) == 11
    after = await admin.events.ListEvents(events_pb2.ListEventsRequest(start_after=10))
    assert [e.sequence for e in after.events] == [11, 12]
    assert after.next_page_token == ""


async def test_a_key_bound_to_addresses_sees_only_their_events(
    server: RunningServer, admin: AsyncClient, fund: Fund, create_key: CreateKey
) -> None:
    await fund(ALICE, 100 * USDC)
    await fund(CAROL, 100 * USDC)
    await admin.payments.SubmitPayment(pay())
    await admin.payments.SubmitPayment(pay(payer=CAROL))
    key = (await create_key(admin_pb2.API_KEY_SCOPE_READ_ONLY, (ALICE,))).secret
    async with server.client(key) as alice:
        seen = await all_events(alice)
        assert {e.resource.partition("/")[0] for e in seen} == {"deposits", "payments"}
        assert all(ALICE in e.addresses for e in seen)
        assert len(seen) == 3
        with pytest.raises(PermissionDenied) as caught:
            await alice.events.ListEvents(events_pb2.ListEventsRequest(filter=events_pb2.EventFilter(address=CAROL)))
        assert caught.value.reason is Reason.ADDRESS_NOT_ALLOWED
        stream = subscribe(alice)
        replayed = await take(stream, 3)
        assert [e.sequence for e in replayed] == [e.sequence for e in seen]


@pytest.mark.parametrize(
    ("filter_fields", "field"),
    [
        ({"types": ["payment.nonsense"]}, "filter.types[0]"),
        ({"types": ["payment.created", "*.created"]}, "filter.types[1]"),
        ({"address": "0x12"}, "filter.address"),
        ({"resource": "not a name"}, "filter.resource"),
    ],
)
async def test_a_bad_filter_is_named(admin: AsyncClient, filter_fields: dict[str, object], field: str) -> None:
    request = events_pb2.EventFilter(**filter_fields)  # type: ignore[arg-type]
    with pytest.raises(InvalidArgument) as listed:
        await admin.events.ListEvents(events_pb2.ListEventsRequest(filter=request))
    assert [v.field for v in listed.value.field_violations] == [field]
    with pytest.raises(InvalidArgument) as streamed:
        await take(subscribe(admin, filter=request), 1)
    assert [v.field for v in streamed.value.field_violations] == [field]


async def test_a_subscriber_replays_then_follows_live_without_gap_or_duplicate(admin: AsyncClient, fund: Fund) -> None:
    await fund(ALICE, 10_000 * USDC)
    for _ in range(20):
        await admin.payments.SubmitPayment(pay())
    stop = asyncio.Event()

    async def keep_paying() -> None:
        while not stop.is_set():
            await admin.payments.SubmitPayment(pay())

    producer = asyncio.create_task(keep_paying())
    try:
        # Joined while payments keep coming: the replay's end and the live start meet somewhere in there.
        events = await take(subscribe(admin, start_after=5), 200)
    finally:
        stop.set()
        await producer
    assert [e.sequence for e in events] == list(range(6, 206))
    payment_events = [e for e in events if e.type.startswith("payment.")]
    for created, queued in zip(payment_events[::2], payment_events[1::2], strict=True):
        assert (created.type, queued.type) == ("payment.created", "payment.queued")
        assert created.resource == queued.resource


async def test_a_subscriber_that_disconnects_resumes_where_it_stopped(admin: AsyncClient, fund: Fund) -> None:
    await fund(ALICE, 10_000 * USDC)
    stream = subscribe(admin, filter=events_pb2.EventFilter(types=["payment.queued"]))
    for _ in range(10):
        await admin.payments.SubmitPayment(pay())
    first = await take(stream, 4)
    await stream.aclose()  # type: ignore[attr-defined]
    for _ in range(10):
        await admin.payments.SubmitPayment(pay())
    rest = await take(
        subscribe(admin, start_after=first[-1].sequence, filter=events_pb2.EventFilter(types=["payment.queued"])), 16
    )
    names = [e.resource for e in first + rest]
    assert len(set(names)) == 20
    listed = await all_events(admin, types=["payment.queued"])
    assert names == [e.resource for e in listed]


async def test_an_idle_stream_gets_heartbeats(start_server: StartServer) -> None:
    server = await start_server(event_heartbeat_interval=0.1)
    async with server.client() as admin:
        stream = subscribe(admin, live_only=True)
        response = await asyncio.wait_for(stream.__anext__(), 5)
        assert response.HasField("heartbeat")
        assert response.heartbeat.head_sequence == 0
        assert response.heartbeat.time.seconds > 0


async def test_a_slow_subscriber_is_cut_off_with_its_cursor_while_a_fast_one_keeps_up(
    start_server: StartServer,
) -> None:
    # Each SubmitPayments of 100 commits 200 events at once: the backlog holds several such commits.
    server = await start_server(event_subscriber_backlog=1000)
    await _funder(server)(ALICE, 10**12)
    # The slow client's transport buffers little (no window growth): its stream backs up into the server.
    slow_client = AsyncClient(server.target, ADMIN_KEY, timeout=10, options=[("grpc.http2.bdp_probe", 0)])
    async with server.client() as admin, slow_client:
        fast = subscribe(admin, live_only=True)
        slow = subscribe(slow_client, live_only=True)
        await asyncio.sleep(0.2)  # both joined
        received: list[events_pb2.Event] = []
        progress = asyncio.Event()

        async def read_fast() -> None:
            while len(received) < 6000:
                received.extend(await take(fast, 1))
                progress.set()

        reading = asyncio.create_task(read_fast())
        for i in range(30):
            await admin.payments.SubmitPayments(
                payments_pb2.SubmitPaymentsRequest(requests=[pay(amount=USDC) for _ in range(100)])
            )
            # The fast one keeps up: it has everything before the next call. The slow one reads nothing.
            while len(received) < 200 * (i + 1):
                progress.clear()
                await progress.wait()
        await reading
        assert [e.sequence for e in received] == list(range(2, 6002))
        got: list[events_pb2.Event] = []

        async def read_slowly() -> None:
            while True:
                got.append((await asyncio.wait_for(slow.__anext__(), 10)).event)

        with pytest.raises(SubscriberTooSlow) as caught:
            await read_slowly()
        last = int(caught.value.metadata["last_sequence"])
        assert last == (got[-1].sequence if got else 1)
        assert last < 6001
        # It resumes from its cursor and gets the rest.
        rest = await take(subscribe(slow_client, start_after=last), 6001 - last)
        assert [e.sequence for e in got + rest] == list(range(2, 6002))


async def test_a_resume_within_the_recent_events_is_served_from_memory(
    start_server: StartServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The hub keeps the newest events serialized: a stream resumed after a cut-off (or any start_after
    near the head) replays them without reading the log; one reaching further back reads it."""
    from agentflow_server.ledger.events import EventReader

    server = await start_server(event_subscriber_backlog=1000)
    await _funder(server)(ALICE, 10**12)
    async with server.client() as admin:
        live = subscribe(admin, live_only=True)
        await asyncio.sleep(0.2)  # joined: the hub follows the log from here
        for _ in range(5):
            await admin.payments.SubmitPayments(
                payments_pb2.SubmitPaymentsRequest(requests=[pay(amount=USDC) for _ in range(100)])
            )
        assert [e.sequence for e in await take(live, 1000)] == list(range(2, 1002))
        reads: list[int] = []
        original = EventReader.after

        async def counted(self: EventReader, after: int, limit: int, **narrowing: object) -> object:
            reads.append(after)
            return await original(self, after, limit, **narrowing)  # type: ignore[arg-type]

        monkeypatch.setattr(EventReader, "after", counted)
        resumed = await take(subscribe(admin, start_after=500), 501)
        assert [e.sequence for e in resumed] == list(range(501, 1002))
        assert resumed[0].payment.amount == str(USDC)
        # From memory: nothing read before the head. (The hub itself polls the log after its head once a
        # second while anyone listens; on a slow machine that poll came during the replay.)
        assert [after for after in reads if after < 1001] == []
        older = await take(subscribe(admin, start_after=0), 1001)
        assert [e.sequence for e in older] == list(range(1, 1002))
        assert 0 in reads  # the deposit came before the hub followed: from the log


async def test_streams_end_when_the_server_stops(start_server: StartServer) -> None:
    server = await start_server()
    hub = server.service.hub
    assert hub is not None
    async with server.client() as admin:
        stream = subscribe(admin, live_only=True)
        reading = asyncio.create_task(stream.__anext__())
        # (Not a fixed sleep: on a loaded machine the stream may take longer than that to connect.)
        for _ in range(1000):
            if hub.subscriber_count:
                break
            await asyncio.sleep(0.01)
        assert hub.subscriber_count == 1
        stopping = asyncio.create_task(server.service.stop(grace=30))
        with pytest.raises(Unavailable) as caught:
            await asyncio.wait_for(reading, 5)
        assert caught.value.reason is Reason.SHUTTING_DOWN
        # The stream did not hold the server's 30 s of grace.
        await asyncio.wait_for(stopping, 5)


async def test_a_stream_that_joins_while_the_server_stops_ends_at_once(server: RunningServer) -> None:
    hub = server.service.hub
    assert hub is not None
    hub.shut_down()  # as Service.stop does, before it waits for the calls in flight
    late = await hub.subscribe(EventFilter())
    assert late.shutting_down
    assert await asyncio.wait_for(late.next(None), 1) is None  # the stream ends instead of waiting
    assert hub.subscriber_count == 0


async def test_each_family_carries_its_resource(admin: AsyncClient, fund: Fund) -> None:
    from agentflow_payments.v1 import escrow_pb2

    await fund(ALICE, 100 * USDC)
    escrow = (
        await admin.escrows.CreateEscrow(
            escrow_pb2.CreateEscrowRequest(task_id="t", payer=ALICE, payee=BOB, token="USDC", amount=str(USDC))
        )
    ).escrow
    [created] = await all_events(admin, types=["escrow.*"])
    assert (created.type, created.WhichOneof("data"), created.escrow) == ("escrow.created", "escrow", escrow)
    assert created.task_id == "t"
    [deposit] = await all_events(admin, types=["deposit.confirmed"])
    assert deposit.WhichOneof("data") == "deposit"


async def watch(client: AsyncClient, name: str) -> list[payments_pb2.Payment]:
    """Every state WatchPayment sends until the stream ends."""
    states: list[payments_pb2.Payment] = []
    async for response in client.payments.WatchPayment(payments_pb2.WatchPaymentRequest(name=name)):
        states.append(response.payment)
    return states


async def test_watch_payment_sends_the_state_now_then_each_change_until_final(
    server: RunningServer, admin: AsyncClient, fund: Fund, create_key: CreateKey
) -> None:
    await fund(ALICE, 100 * USDC)
    payment = (await admin.payments.SubmitPayment(pay())).payment
    watching = asyncio.create_task(watch(admin, payment.name))
    await asyncio.sleep(0.2)
    cancelled = (await admin.payments.CancelPayment(payments_pb2.CancelPaymentRequest(name=payment.name))).payment
    states = await asyncio.wait_for(watching, 10)
    assert states == [payment, cancelled]
    # A final payment: its state, and the stream ends.
    assert await watch(admin, payment.name) == [cancelled]
    key = (await create_key(admin_pb2.API_KEY_SCOPE_READ_ONLY, (CAROL,))).secret
    async with server.client(key) as carol:
        with pytest.raises(NotFound):
            await watch(carol, payment.name)
    with pytest.raises(InvalidArgument):
        await watch(admin, "escrows/0000000000000000000000")


async def test_watch_payment_follows_a_payment_to_completed_on_chain(embedded: RunningServer) -> None:
    chain = Chain(embedded)
    alice = await chain.fund("alice", {"USDC": 100 * USDC})
    async with embedded.client() as client:
        payment = (await client.payments.SubmitPayment(pay(payer=alice.address, amount=5 * USDC))).payment
        states = await asyncio.wait_for(watch(client, payment.name), 30)
    statuses = [s.status for s in states]
    assert statuses[-1] == payments_pb2.PAYMENT_STATUS_COMPLETED
    assert statuses == sorted(set(statuses))  # each state once, in order
    assert states[-1].settlement.transaction_hash.startswith("0x")


async def test_the_sdk_subscription_resumes_across_a_restart_without_gap_or_duplicate(
    start_server: StartServer,
) -> None:
    from .anvil import free_port

    listen = f"127.0.0.1:{free_port()}"
    server = await start_server(listen=listen, event_heartbeat_interval=0.2)
    fund = _funder(server)
    await fund(ALICE, 1_000 * USDC)
    received: list[events_pb2.Event] = []
    four = asyncio.Event()
    async with AsyncClient(listen, ADMIN_KEY) as client:

        async def follow() -> None:
            async for event in client.subscribe_events(events_pb2.EventFilter(types=["payment.queued"])):
                received.append(event)
                if len(received) == 4:
                    four.set()
                if len(received) == 10:
                    return

        following = asyncio.create_task(follow())
        async with server.client() as admin:
            for _ in range(4):
                await admin.payments.SubmitPayment(pay())
        await asyncio.wait_for(four.wait(), 10)
        await server.service.stop()
        # While the server is down, the subscription keeps trying; it comes back on the same ledger.
        again = await start_server(listen=listen, event_heartbeat_interval=0.2)
        async with again.client() as admin:
            for _ in range(6):
                # wait_for_ready: this process's channels share gRPC's connection to the address, which the
                # subscription may have left waiting out a reconnect backoff while the server was down.
                await admin.payments.SubmitPayment(pay(), wait_for_ready=True)
        await asyncio.wait_for(following, 20)
    async with again.client() as admin:
        listed = await all_events(admin, types=["payment.queued"])
    assert [e.sequence for e in received] == [e.sequence for e in listed]


async def test_the_sdk_watch_resumes_across_a_restart_and_ends_when_final(start_server: StartServer) -> None:
    from .anvil import free_port

    listen = f"127.0.0.1:{free_port()}"
    server = await start_server(listen=listen)
    await _funder(server)(ALICE, 100 * USDC)
    async with server.client() as admin:
        payment = (await admin.payments.SubmitPayment(pay())).payment
    seen: list[payments_pb2.Payment] = []
    first = asyncio.Event()
    async with AsyncClient(listen, ADMIN_KEY) as client:

        async def follow() -> None:
            async for state in client.watch_payment(payment.name):
                seen.append(state)
                first.set()

        following = asyncio.create_task(follow())
        await asyncio.wait_for(first.wait(), 10)
        await server.service.stop()
        again = await start_server(listen=listen)
        async with again.client() as admin:
            request = payments_pb2.CancelPaymentRequest(name=payment.name)
            # wait_for_ready: see the test above.
            cancelled = (await admin.payments.CancelPayment(request, wait_for_ready=True)).payment
        await asyncio.wait_for(following, 20)
    assert seen == [payment, cancelled]


async def test_the_sdk_subscription_resumes_after_a_stream_ends_cancelled() -> None:
    """A stream ended with CANCELLED (the server cancelled it, or a keepalive went unanswered and the
    connection was cut) is resumed like an UNAVAILABLE one. The server here is a real gRPC server whose
    EventService cancels the first stream after two events: the service itself never does that on purpose."""
    import grpc

    from agentflow_payments.v1 import events_pb2_grpc

    from .anvil import free_port

    requests: list[int] = []

    class Cancelling(events_pb2_grpc.EventServiceServicer):
        async def SubscribeEvents(  # type: ignore[override]
            self, request: events_pb2.SubscribeEventsRequest, context: grpc.aio.ServicerContext[object, object]
        ) -> AsyncIterator[events_pb2.SubscribeEventsResponse]:
            requests.append(request.start_after)
            for sequence in range(request.start_after + 1, 6):
                yield events_pb2.SubscribeEventsResponse(
                    event=events_pb2.Event(sequence=sequence, type="payment.queued")
                )
                if len(requests) == 1 and sequence == 2:
                    await context.abort(grpc.StatusCode.CANCELLED, "cancelled")
            await asyncio.sleep(30)

    port = free_port()
    server = grpc.aio.server()
    events_pb2_grpc.add_EventServiceServicer_to_server(Cancelling(), server)
    server.add_insecure_port(f"127.0.0.1:{port}")
    await server.start()
    try:
        async with AsyncClient(f"127.0.0.1:{port}", ADMIN_KEY) as client:
            stream = client.subscribe_events()
            sequences = [(await asyncio.wait_for(stream.__anext__(), 10)).sequence for _ in range(5)]
            await stream.aclose()  # type: ignore[attr-defined]
    finally:
        await server.stop(0)
    assert sequences == [1, 2, 3, 4, 5]
    assert requests == [0, 2]


async def test_a_stream_the_client_cancels_ends_without_an_error_on_the_server(start_server: StartServer) -> None:
    """A client that goes away while the server is blocked sending it events: the server's stream is then
    closed by the event loop's async-generator finalizer, in another context, and that must not raise (it
    did: resetting the caller's key outside the RPC's context)."""
    import gc

    server = await start_server()
    await _funder(server)(ALICE, 10**12)
    loop_errors: list[dict[str, object]] = []
    asyncio.get_running_loop().set_exception_handler(lambda _loop, context: loop_errors.append(context))
    async with server.client() as admin:
        for _ in range(10):
            await admin.payments.SubmitPayments(
                payments_pb2.SubmitPaymentsRequest(requests=[pay(amount=USDC) for _ in range(100)])
            )
    for _ in range(3):
        # Small transport windows: the server's writes block on flow control after a few events.
        slow = AsyncClient(server.target, ADMIN_KEY, options=[("grpc.http2.bdp_probe", 0)])
        stream = subscribe(slow)
        await take(stream, 1)
        await slow.close()
    await asyncio.sleep(0.5)
    gc.collect()
    await asyncio.sleep(0.2)
    assert [str(c.get("exception")) for c in loop_errors] == []
