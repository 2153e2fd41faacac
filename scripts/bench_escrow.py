"""The escrow part of the benchmark: many active escrows with scattered deadlines, met on time.

Against a running funded server (``scripts/funded_server.py``), creates ``count`` escrows whose deadlines
are spread over ``spread`` seconds, then measures:

- how late each expiry ran: its ``update_time`` (the time of the engine group that expired it, which the
  server records; the commit follows within milliseconds) minus its ``expire_time``;
- whether the server stayed responsive meanwhile: SubmitPayment latency at an offered 100 a second during
  the expiries, against the same probe before any escrow existed.

Run alone: ``python scripts/bench_escrow.py [count] [spread]``, which starts its own server.
"""

from __future__ import annotations

import asyncio
import json
import os
import random
import statistics
import sys
import time
import uuid
from pathlib import Path
from typing import Any

import grpc
from google.protobuf import timestamp_pb2

from agentflow_payments.v1 import escrow_pb2, escrow_pb2_grpc, payments_pb2, payments_pb2_grpc

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_stats import percentile

ROOT = Path(__file__).resolve().parent.parent


def _timestamp(seconds: float) -> timestamp_pb2.Timestamp:
    micros = round(seconds * 1e6)
    return timestamp_pb2.Timestamp(seconds=micros // 1_000_000, nanos=micros % 1_000_000 * 1000)


def _us(ts: timestamp_pb2.Timestamp) -> int:
    return ts.seconds * 1_000_000 + ts.nanos // 1000


async def measure_escrow(ready: dict[str, Any], count: int = 10_000, spread: float = 10.0) -> dict[str, Any]:
    """Create ``count`` escrows expiring over ``spread`` seconds and measure how late their expiries ran."""
    accounts: list[str] = ready["accounts"]
    metadata = (("authorization", f"Bearer {ready['admin_key']}"),)
    async with grpc.aio.insecure_channel(ready["target"]) as channel:
        escrows = escrow_pb2_grpc.EscrowServiceStub(channel)
        payments = payments_pb2_grpc.PaymentServiceStub(channel)

        async def probe(seconds: float) -> list[float]:
            """SubmitPayment latencies (ms) at an offered 100 a second."""
            latencies: list[float] = []

            async def one(i: int) -> None:
                request = payments_pb2.SubmitPaymentRequest(
                    payer=accounts[i % len(accounts)],
                    payee=accounts[(i + 1) % len(accounts)],
                    token="USDC",
                    amount="1000000",
                    request_id=uuid.uuid4().hex,
                )
                started = time.perf_counter()
                await payments.SubmitPayment(request, metadata=metadata)
                latencies.append((time.perf_counter() - started) * 1000)

            tasks = []
            start = time.perf_counter()
            for i in range(int(100 * seconds)):
                delay = start + i / 100 - time.perf_counter()
                if delay > 0:
                    await asyncio.sleep(delay)
                tasks.append(asyncio.create_task(one(i)))
            await asyncio.gather(*tasks)
            return latencies

        idle = await probe(min(3.0, spread))

        # Creation at 64 in flight takes a while: the first deadline leaves room for it.
        rng = random.Random(7)
        created = 0
        create_started = time.time()
        first_deadline = create_started + 2.0 + count / 1000
        deadlines = [first_deadline + rng.random() * spread for _ in range(count)]

        async def creator(worker: int) -> None:
            nonlocal created
            for i in range(worker, count, 64):
                await escrows.CreateEscrow(
                    escrow_pb2.CreateEscrowRequest(
                        task_id=f"bench-{i}",
                        payer=accounts[i % len(accounts)],
                        payee=accounts[(i + 1) % len(accounts)],
                        token="USDC",
                        amount="1000000",
                        expire_time=_timestamp(deadlines[i]),
                    ),
                    metadata=metadata,
                )
                created += 1

        await asyncio.gather(*(creator(w) for w in range(64)))
        create_seconds = time.time() - create_started
        if time.time() > first_deadline:
            raise RuntimeError("escrow creation ran past the first deadline; use fewer escrows")
        await asyncio.sleep(first_deadline - time.time())
        during = await probe(spread)
        await asyncio.sleep(1.5)

        lateness_ms: list[float] = []
        active = 0
        token = ""
        while True:
            page = await escrows.ListEscrows(
                escrow_pb2.ListEscrowsRequest(page_size=1000, page_token=token), metadata=metadata
            )
            for escrow in page.escrows:
                if escrow.expired:
                    lateness_ms.append((_us(escrow.update_time) - _us(escrow.expire_time)) / 1000)
                else:
                    active += 1
            token = page.next_page_token
            if not token:
                break
    return {
        "escrows": count,
        "escrow_deadline_spread_s": spread,
        "escrow_create_per_s": round(count / create_seconds, 1),
        "escrows_expired": len(lateness_ms),
        "escrows_not_expired": active,
        "expiry_late_p50_ms": round(statistics.median(lateness_ms), 1) if lateness_ms else None,
        "expiry_late_p99_ms": round(percentile(lateness_ms, 0.99), 1) if lateness_ms else None,
        "expiry_late_max_ms": round(max(lateness_ms), 1) if lateness_ms else None,
        "probe_p99_ms_idle": round(percentile(idle, 0.99), 2),
        "probe_p99_ms_during_expiry": round(percentile(during, 0.99), 2),
    }


async def _main(count: int, spread: float) -> None:
    from bench import on_fresh_server  # bench imports this module; this one needs bench only when run alone

    result = await on_fresh_server(lambda ready: measure_escrow(ready, count, spread))
    print(json.dumps(result))


if __name__ == "__main__":
    sys.path.insert(0, str(ROOT / "scripts"))
    os.chdir(ROOT)
    asyncio.run(
        _main(int(sys.argv[1]) if len(sys.argv) > 1 else 10_000, float(sys.argv[2]) if len(sys.argv) > 2 else 10.0)
    )
