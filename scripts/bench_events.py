"""The event part of the benchmark: many live subscribers, every event to each, and how late it arrives.

Against a running funded server (``scripts/funded_server.py``), opens ``subscribers`` subscriptions to the
``payment.*`` events from the head of the log, through the SDK's ``subscribe_events`` (which resumes a
stream the server ended as too slow, as an agent's would), spread over several channels, then accepts
``payments`` payments in SubmitPayments calls of 100 and waits until every subscriber has every event.
Reports whether any event was lost or repeated, the delivery lag (arrival at the subscriber minus the
event's commit time, as the server recorded it; every tenth subscriber's deliveries), and the server's CPU
time per delivery.

Run alone: ``python scripts/bench_events.py [subscribers] [payments]``, which starts its own server.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import statistics
import sys
import time
from pathlib import Path
from typing import Any

import grpc

from agentflow_payments import AsyncClient
from agentflow_payments.v1 import events_pb2, payments_pb2, payments_pb2_grpc

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_stats import percentile

ROOT = Path(__file__).resolve().parent.parent
_STREAMS_PER_CHANNEL = 100


def _peak_rss_mb(pid: int) -> float:
    """The most memory a process has held so far (VmHWM), in MB."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    return 0.0


def _cpu_seconds(pid: int) -> float:
    """CPU time (user and system) a process has used so far."""
    fields = Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


async def submit_in_calls_of_100(
    stub: payments_pb2_grpc.PaymentServiceStub, accounts: list[str], payments: int, metadata: Any
) -> None:
    """Accept ``payments`` payments of 1 USDC between the funded accounts, in SubmitPayments calls of 100."""
    for call in range(payments // 100):
        requests = [
            payments_pb2.SubmitPaymentRequest(
                payer=accounts[(call + i) % len(accounts)],
                payee=accounts[(call + i + 1) % len(accounts)],
                token="USDC",
                amount="1000000",
            )
            for i in range(100)
        ]
        await stub.SubmitPayments(payments_pb2.SubmitPaymentsRequest(requests=requests), metadata=metadata)


async def _head(ready: dict[str, Any]) -> int:
    """The newest sequence in the log now."""
    async with AsyncClient(ready["target"], ready["admin_key"]) as client:
        head = 0
        token = ""
        while True:
            page = await client.events.ListEvents(events_pb2.ListEventsRequest(page_size=1000, page_token=token))
            if page.events:
                head = page.events[-1].sequence
            token = page.next_page_token
            if not token:
                return head


async def measure_events(ready: dict[str, Any], subscribers: int = 1_000, payments: int = 10_000) -> dict[str, Any]:
    """``subscribers`` live streams of every payment event while ``payments`` payments are accepted."""
    accounts: list[str] = ready["accounts"]
    metadata = (("authorization", f"Bearer {ready['admin_key']}"),)
    expected = 2 * payments  # payment.created and payment.queued (this server does not settle)
    clients = [
        AsyncClient(ready["target"], ready["admin_key"], timeout=60)
        for _ in range(-(-subscribers // _STREAMS_PER_CHANNEL))
    ]
    lags: list[float] = []
    counts = [0] * subscribers
    broken = [0] * subscribers  # deliveries out of sequence order (a duplicate or a step back)
    done = asyncio.Event()
    finished = 0
    joined = 0
    all_joined = asyncio.Event()
    head = await _head(ready)

    async def subscriber(index: int) -> None:
        # The SDK's subscription, as an agent would hold it: a stream the server ends as too slow (a burst of
        # payments puts each subscriber far behind) resumes after the last event it yielded.
        nonlocal finished, joined
        client = clients[index // _STREAMS_PER_CHANNEL]
        sample = index % 10 == 0  # every tenth subscriber's lags: enough for percentiles, cheaper to collect
        joined += 1
        if joined == subscribers:
            all_joined.set()
        events = client.subscribe_events(events_pb2.EventFilter(types=["payment.*"]), start_after=head)
        async with contextlib.aclosing(events):  # type: ignore[type-var]
            await _follow(index, events, sample)

    async def _follow(index: int, events: Any, sample: bool) -> None:
        nonlocal finished
        last = 0
        async for event in events:
            if sample:
                created = event.create_time.seconds + event.create_time.nanos / 1e9
                lags.append(time.time() - created)
            if event.sequence <= last:
                broken[index] += 1
            last = event.sequence
            counts[index] += 1
            if counts[index] == expected:
                finished += 1
                if finished == subscribers:
                    done.set()
                return

    tasks = [asyncio.create_task(subscriber(i)) for i in range(subscribers)]
    await asyncio.wait_for(all_joined.wait(), 120)
    await asyncio.sleep(2.0)  # every stream connected and registered with the hub
    async with grpc.aio.insecure_channel(ready["target"]) as channel:
        stub = payments_pb2_grpc.PaymentServiceStub(channel)
        server_cpu = _cpu_seconds(int(ready["pid"]))
        started = time.perf_counter()
        await submit_in_calls_of_100(stub, accounts, payments, metadata)
        submit_seconds = time.perf_counter() - started
    try:
        # Until every subscriber has every event, or nothing has arrived for a minute (then the counts
        # say who is missing what).
        seen = -1
        while not done.is_set() and sum(counts) != seen:
            seen = sum(counts)
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(done.wait(), 60)
        if not done.is_set():
            failed = [t.exception() for t in tasks if t.done() and not t.cancelled() and t.exception()]
            short = sorted(c for c in counts if c < expected)
            print(
                f"bench_events: stalled with {len(short)} subscribers short (fewest {short[:5]}), "
                f"{len(failed)} failed: {failed[:3]}",
                file=sys.stderr,
            )
    finally:
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        for client in clients:
            await client.close()
    deliver_seconds = time.perf_counter() - started
    server_cpu = _cpu_seconds(int(ready["pid"])) - server_cpu
    return {
        "subscribers": subscribers,
        "events_each": expected,
        "deliveries": sum(counts),
        "lost": subscribers * expected - sum(counts),
        "out_of_order": sum(broken),
        "submit_seconds": round(submit_seconds, 1),
        "all_delivered_seconds": round(deliver_seconds, 1),
        "deliveries_per_s": round(sum(counts) / deliver_seconds),
        # What the server spent, accepting the payments included: the subscribers' process is the one
        # that limits the rate when both share two cores.
        "server_cpu_us_per_delivery": round(server_cpu / max(1, sum(counts)) * 1e6, 1),
        "server_cpu_share": round(server_cpu / deliver_seconds, 2),
        "lag_p50_ms": round(statistics.median(lags) * 1000, 1),
        "lag_p99_ms": round(percentile(lags, 0.99) * 1000, 1),
        "lag_max_ms": round(max(lags) * 1000, 1),
        "server_peak_rss_mb": round(_peak_rss_mb(int(ready["pid"]))),
    }


async def _main(subscribers: int, payments: int) -> None:
    from bench import on_fresh_server  # bench imports this module; this one needs bench only when run alone

    result = await on_fresh_server(lambda ready: measure_events(ready, subscribers, payments))
    print(json.dumps(result))


if __name__ == "__main__":
    sys.path.insert(0, str(ROOT / "scripts"))
    os.chdir(ROOT)
    asyncio.run(
        _main(int(sys.argv[1]) if len(sys.argv) > 1 else 1_000, int(sys.argv[2]) if len(sys.argv) > 2 else 10_000)
    )
