"""An agent pays another for a task through escrow, with the Python SDK.

The payer puts the price in escrow, the worker sees it on its event stream, does the work, and the payer
releases the escrow once satisfied; the release is a payment settled on chain to the worker's wallet,
followed here until COMPLETED.

Against `./scripts/dev`, with two dev agents from its banner:

    AGENTFLOW_TARGET=127.0.0.1:50051 \\
    PAYER=0x3017... PAYER_KEY=afk_... WORKER=0xF173... WORKER_KEY=afk_... \\
    .venv/bin/python examples/python/escrow_task.py
"""

from __future__ import annotations

import asyncio
import datetime
import hashlib
import os
import uuid

from agentflow_payments import AsyncClient
from agentflow_payments.v1 import payments_pb2

PRICE = 5_000_000  # 5 USDC, in base units (USDC has 6 decimals)


async def worker(client: AsyncClient, address: str, task_id: str) -> str:
    """Wait for an escrow that pays this worker for the task, do the work, return the result's hash."""
    async for event in client.subscribe_events(types=["escrow.created"], address=address, task_id=task_id):
        print(f"worker: {event.type} {event.resource}, {event.escrow.held_amount} {event.escrow.token} held for me")
        result = f"summary of report {task_id}: revenue up 12%"
        digest = hashlib.sha256(result.encode()).hexdigest()
        print(f"worker: done, result sha256 {digest[:16]}...")
        return digest
    raise RuntimeError("the event stream ended")


async def main() -> None:
    target = os.environ.get("AGENTFLOW_TARGET", "127.0.0.1:50051")
    payer_address, worker_address = os.environ["PAYER"], os.environ["WORKER"]
    task_id = f"summarise-report-{uuid.uuid4().hex[:8]}"

    async with (
        AsyncClient(target, os.environ["PAYER_KEY"]) as payer,
        AsyncClient(target, os.environ["WORKER_KEY"]) as worker_client,
    ):
        work = asyncio.create_task(worker(worker_client, worker_address, task_id))
        escrow = await payer.create_escrow(
            payer_address,
            worker_address,
            "USDC",
            PRICE,
            task_id=task_id,
            expire_time=datetime.timedelta(hours=1),  # refunded to the payer if never released
        )
        print(f"payer:  {escrow.name} holds {escrow.held_amount} USDC for {task_id} (fee {escrow.fee.total})")

        await work  # a real payer would check the result here
        released = await payer.release_escrow(escrow.name)
        print(f"payer:  released, {released.payment.name}")

        async for payment in payer.watch_payment(released.payment.name):
            status = payments_pb2.PaymentStatus.Name(payment.status).removeprefix("PAYMENT_STATUS_")
            print(f"payment {status}")
        print(f"settled in block {payment.settlement.block_number}, tx {payment.settlement.transaction_hash[:18]}...")
        # The settlement contract pays the worker's wallet directly; the payer's ledger balance shows the cost.
        (balance,) = await payer.get_balances(payer_address, ["USDC"])
        print(f"payer:  USDC available {balance.available}, escrowed {balance.escrowed}")


if __name__ == "__main__":
    asyncio.run(main())
