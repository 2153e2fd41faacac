"""The webhook part of the benchmark: every payment event delivered to local endpoints, and how late.

Against a funded server with private addresses allowed, registers ``endpoints`` webhooks (``payment.*``)
pointing at an HTTP receiver in this process, accepts ``payments`` payments in SubmitPayments calls of 100,
and waits until each endpoint has every event. Reports deliveries lost or repeated, deliveries per second
per endpoint, and the lag (arrival minus the event's commit time). The baseline, measured first in the same
run: one client posting the same body to the same receiver one request at a time, as a lane does. The
ratio says how much of that the service keeps while it also signs, schedules and records every delivery.

Run alone: ``python scripts/bench_webhooks.py [endpoints] [payments]``, which starts its own server.
"""

from __future__ import annotations

import asyncio
import json
import os
import socket
import statistics
import sys
import time
from pathlib import Path
from typing import Any

import grpc
import httpx
from aiohttp import web

from agentflow_payments.v1 import payments_pb2_grpc, webhooks_pb2, webhooks_pb2_grpc

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_events import submit_in_calls_of_100
from bench_stats import percentile

ROOT = Path(__file__).resolve().parent.parent
SETTINGS = {"AGENTFLOW_WEBHOOK_ALLOW_PRIVATE": "true"}
_BASELINE_SECONDS = 2.0


class _Receiver:
    """Counts deliveries per endpoint path and their lags; answers 200 at once."""

    def __init__(self) -> None:
        self.by_path: dict[str, set[str]] = {}
        self.repeated = 0
        self.lags: list[float] = []
        self.last_arrival = 0.0
        self.arrived = asyncio.Event()
        with socket.socket() as probe:
            probe.bind(("127.0.0.1", 0))
            self.port = probe.getsockname()[1]

    async def handle(self, request: web.Request) -> web.Response:
        body = await request.read()
        now = time.time()
        if request.path != "/baseline":
            seen = self.by_path.setdefault(request.path, set())
            webhook_id = request.headers["webhook-id"]
            if webhook_id in seen:
                self.repeated += 1
            seen.add(webhook_id)
            created = json.loads(body)["createTime"]
            self.lags.append(now - _seconds(created))
            self.last_arrival = time.perf_counter()
            self.arrived.set()
        return web.Response(text="ok")


def _seconds(rfc3339: str) -> float:
    from datetime import datetime

    return datetime.fromisoformat(rfc3339.replace("Z", "+00:00")).timestamp()


async def measure_webhooks(ready: dict[str, Any], endpoints: int = 1, payments: int = 2_000) -> dict[str, Any]:
    """Deliveries of ``payments`` payments' events to ``endpoints`` local endpoints."""
    accounts: list[str] = ready["accounts"]
    metadata = (("authorization", f"Bearer {ready['admin_key']}"),)
    expected = 2 * payments  # payment.created and payment.queued (this server does not settle)
    receiver = _Receiver()
    app = web.Application()
    app.router.add_post("/{tail:.*}", receiver.handle)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    await web.TCPSite(runner, "127.0.0.1", receiver.port).start()
    try:
        base = f"http://127.0.0.1:{receiver.port}"
        sample = json.dumps({"sequence": "1", "type": "payment.queued", "createTime": "2026-11-25T00:00:00Z"})
        async with httpx.AsyncClient(trust_env=False) as client:
            posts = 0
            started = time.perf_counter()
            while time.perf_counter() - started < _BASELINE_SECONDS:
                await client.post(f"{base}/baseline", content=sample, headers={"content-type": "application/json"})
                posts += 1
            baseline = posts / (time.perf_counter() - started)
        async with grpc.aio.insecure_channel(ready["target"]) as channel:
            hooks = webhooks_pb2_grpc.WebhookServiceStub(channel)
            for index in range(endpoints):
                await hooks.CreateWebhook(
                    webhooks_pb2.CreateWebhookRequest(url=f"{base}/endpoint-{index}", event_types=["payment.*"]),
                    metadata=metadata,
                )
            stub = payments_pb2_grpc.PaymentServiceStub(channel)
            started = time.perf_counter()
            await submit_in_calls_of_100(stub, accounts, payments, metadata)
            submit_seconds = time.perf_counter() - started

            def total() -> int:
                return sum(len(ids) for ids in receiver.by_path.values())

            deadline = time.perf_counter() + 1800
            while total() < expected * endpoints and time.perf_counter() < deadline:
                receiver.arrived.clear()
                try:
                    await asyncio.wait_for(receiver.arrived.wait(), 30)
                except TimeoutError:
                    break
            deliver_seconds = receiver.last_arrival - started
    finally:
        await runner.cleanup()
    delivered = total()
    per_endpoint = delivered / endpoints / deliver_seconds
    return {
        "webhook_endpoints": endpoints,
        "webhook_events_each": expected,
        "webhook_lost": expected * endpoints - delivered,
        "webhook_repeated": receiver.repeated,
        "webhook_submit_seconds": round(submit_seconds, 1),
        "webhook_all_delivered_seconds": round(deliver_seconds, 1),
        "webhook_baseline_posts_per_s": round(baseline),
        "webhook_deliveries_per_s_per_endpoint": round(per_endpoint),
        "webhook_ratio": round(per_endpoint / baseline, 2),
        "webhook_lag_p50_ms": round(statistics.median(receiver.lags) * 1000, 1),
        "webhook_lag_p99_ms": round(percentile(receiver.lags, 0.99) * 1000, 1),
    }


async def _main(endpoints: int, payments: int) -> None:
    from bench import on_fresh_server  # bench imports this module; this one needs bench only when run alone

    result = await on_fresh_server(lambda ready: measure_webhooks(ready, endpoints, payments), SETTINGS)
    print(json.dumps(result))


if __name__ == "__main__":
    sys.path.insert(0, str(ROOT / "scripts"))
    os.chdir(ROOT)
    asyncio.run(_main(int(sys.argv[1]) if len(sys.argv) > 1 else 1, int(sys.argv[2]) if len(sys.argv) > 2 else 2_000))
