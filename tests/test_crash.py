"""Durability: a server killed with SIGKILL mid-stream loses no acknowledged payment and half-writes none."""

from __future__ import annotations

import asyncio
import functools
import json
import os
import signal
import sqlite3
import subprocess
import sys
import uuid
from collections import defaultdict
from collections.abc import Awaitable, Callable
from pathlib import Path

from agentflow_payments import AsyncClient, DeadlineExceeded, Unavailable
from agentflow_payments.v1 import escrow_pb2, payments_pb2

ROOT = Path(__file__).resolve().parent.parent
ACCOUNTS = 4
DEPOSIT = 10**15


async def _start(data_dir: Path) -> tuple[subprocess.Popen[bytes], dict[str, object]]:
    # A plain Popen, waited on in a thread: asyncio's child watcher can lose the exit status of a child
    # killed with SIGKILL (it then reports 255).
    env = {k: v for k, v in os.environ.items() if not k.startswith("AGENTFLOW_")}
    env.update(AGENTFLOW_RATE_LIMIT_PER_MINUTE="100000000", AGENTFLOW_RATE_LIMIT_BURST="1000000")
    command = [
        sys.executable,
        str(ROOT / "scripts" / "funded_server.py"),
        "--data-dir",
        str(data_dir),
        "--accounts",
        str(ACCOUNTS),
        "--amount",
        str(DEPOSIT),
    ]
    process = await asyncio.to_thread(functools.partial(subprocess.Popen, command, env=env, stdout=subprocess.PIPE))
    assert process.stdout is not None
    line = await asyncio.wait_for(asyncio.to_thread(process.stdout.readline), 60)
    assert line, "the server did not start"
    return process, json.loads(line)


async def _wait(process: subprocess.Popen[bytes]) -> int:
    return await asyncio.wait_for(asyncio.to_thread(process.wait), 30)


def _running(pid: int) -> bool:
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except FileNotFoundError:
        return False
    return stat.rpartition(")")[2].split()[0] != "Z"  # a zombie has ended


async def _gone(pid: int) -> None:
    """Wait up to 10 s for process ``pid`` to end."""
    for _ in range(200):
        if not _running(pid):
            return
        await asyncio.sleep(0.05)
    raise AssertionError(f"process {pid} is still running")


async def _kill_during(
    process: subprocess.Popen[bytes],
    ready: dict[str, object],
    work: Callable[[AsyncClient, int], Awaitable[None]],
    enough: asyncio.Event,
) -> None:
    """Run 8 workers against the server until ``enough`` is set, then SIGKILL it under them."""
    try:
        async with AsyncClient(str(ready["target"]), str(ready["admin_key"]), timeout=5) as client:
            workers = [asyncio.create_task(work(client, w)) for w in range(8)]
            waiting = asyncio.create_task(enough.wait())
            await asyncio.wait([waiting, *workers], timeout=60, return_when=asyncio.FIRST_COMPLETED)
            assert enough.is_set(), [w.exception() for w in workers if w.done()]
            process.send_signal(signal.SIGKILL)
            await asyncio.wait_for(asyncio.gather(*workers), 30)
    finally:
        if process.poll() is None:
            process.kill()
        await _wait(process)
    assert process.returncode == -signal.SIGKILL


async def test_sigkill_loses_no_acknowledged_payment_and_half_writes_none(tmp_path: Path) -> None:
    process, ready = await _start(tmp_path)
    accounts = list(ready["accounts"])  # type: ignore[call-overload]
    acknowledged: dict[str, str] = {}  # request_id -> payment name
    attempted: set[str] = set()
    enough = asyncio.Event()

    async def submit_forever(client: AsyncClient, worker: int) -> None:
        # Half the workers send one payment a call, half 150: a group of those is applied while the one
        # before it commits, so the kill can land with two groups in flight.
        size = 1 if worker % 2 else 150
        i = 0
        while True:
            payer, payee = accounts[worker % ACCOUNTS], accounts[(worker + 1) % ACCOUNTS]
            requests = [
                payments_pb2.SubmitPaymentRequest(
                    payer=payer, payee=payee, token="USDC", amount=str(1000 + i + k), request_id=str(uuid.uuid4())
                )
                for k in range(size)
            ]
            attempted.update(r.request_id for r in requests)
            try:
                if size == 1:
                    payments = [(await client.payments.SubmitPayment(requests[0])).payment]
                else:
                    response = await client.payments.SubmitPayments(
                        payments_pb2.SubmitPaymentsRequest(requests=requests)
                    )
                    assert all(r.WhichOneof("result") == "payment" for r in response.results)
                    payments = [r.payment for r in response.results]
            except (Unavailable, DeadlineExceeded):
                return  # the server is gone
            for payment in payments:
                acknowledged[payment.request_id] = payment.name
            if len(acknowledged) >= 3000:
                enough.set()
            i += size

    await _kill_during(process, ready, submit_forever, enough)
    assert len(acknowledged) >= 3000
    # The ledger writer process saw its pipe close and ended with the server.
    await _gone(int(ready["writer_pid"]))  # type: ignore[call-overload]

    # Restart on the same data directory: every acknowledged payment is there, once.
    process, ready = await _start(tmp_path)
    try:
        async with AsyncClient(str(ready["target"]), str(ready["admin_key"])) as client:
            for request_id, name in acknowledged.items():
                got = await client.payments.GetPayment(payments_pb2.GetPaymentRequest(name=name))
                assert got.payment.request_id == request_id
                assert got.payment.status == payments_pb2.PAYMENT_STATUS_QUEUED
    finally:
        process.send_signal(signal.SIGTERM)
        assert await _wait(process) == 0

    with sqlite3.connect(tmp_path / "agentflow.db") as db:
        rows = db.execute("SELECT payment_id, request_id, payer, amount, fee_total FROM payments").fetchall()
        by_request: dict[str, int] = defaultdict(int)
        for _, request_id, _, _, _ in rows:
            by_request[request_id] += 1
        # Exactly once each, and nothing the client did not send.
        assert all(count == 1 for count in by_request.values())
        assert set(acknowledged) <= set(by_request) <= attempted
        # Whole or absent: each payment has its reservation in the journal and its two events.
        reserves = dict(
            db.execute("SELECT reference, COUNT(*) FROM transfers WHERE kind = 2 GROUP BY reference").fetchall()
        )
        events = dict(db.execute("SELECT resource, COUNT(*) FROM events GROUP BY resource").fetchall())
        for payment_id, *_ in rows:
            assert reserves[f"payments/{payment_id}"] == 1
            assert events[f"payments/{payment_id}"] == 2
        assert len(reserves) == len(rows)
        # The money adds up: balances hold every deposit, and each payer's reserved is its payments' debits.
        balances = db.execute("SELECT address, available, reserved, escrowed FROM accounts").fetchall()
        assert sum(int(a) + int(r) + int(e) for _, a, r, e in balances) == ACCOUNTS * DEPOSIT
        debits: dict[str, int] = defaultdict(int)
        for _, _, payer, amount, fee in rows:
            debits[payer] += int(amount) + int(fee)
        assert {address: int(reserved) for address, _, reserved, _ in balances if int(reserved)} == dict(debits)


async def test_sigkill_loses_no_acknowledged_escrow_step(tmp_path: Path) -> None:
    process, ready = await _start(tmp_path)
    accounts = list(ready["accounts"])  # type: ignore[call-overload]
    created: dict[str, str] = {}  # request_id -> escrow name
    releases: dict[str, str] = {}  # payment name -> escrow name, for acknowledged releases
    enough = asyncio.Event()

    async def hold_and_release_forever(client: AsyncClient, worker: int) -> None:
        payer, payee = accounts[worker % ACCOUNTS], accounts[(worker + 1) % ACCOUNTS]
        try:
            while True:
                request_id = str(uuid.uuid4())
                escrow = (
                    await client.escrows.CreateEscrow(
                        escrow_pb2.CreateEscrowRequest(
                            task_id=f"task-{request_id}",
                            payer=payer,
                            payee=payee,
                            token="USDC",
                            amount="3000000",
                            request_id=request_id,
                        )
                    )
                ).escrow
                created[request_id] = escrow.name
                for amount in ("1000000", ""):
                    released = await client.escrows.ReleaseEscrow(
                        escrow_pb2.ReleaseEscrowRequest(name=escrow.name, amount=amount)
                    )
                    releases[released.payment.name] = escrow.name
                if len(created) + len(releases) >= 300:
                    enough.set()
        except (Unavailable, DeadlineExceeded):
            return  # the server is gone

    await _kill_during(process, ready, hold_and_release_forever, enough)

    process, ready = await _start(tmp_path)
    try:
        async with AsyncClient(str(ready["target"]), str(ready["admin_key"])) as client:
            for request_id, name in created.items():
                escrow = (await client.escrows.GetEscrow(escrow_pb2.GetEscrowRequest(name=name))).escrow
                assert escrow.request_id == request_id
            for payment_name, escrow_name in releases.items():
                payment = (await client.payments.GetPayment(payments_pb2.GetPaymentRequest(name=payment_name))).payment
                assert payment.escrow == escrow_name
                escrow = (await client.escrows.GetEscrow(escrow_pb2.GetEscrowRequest(name=escrow_name))).escrow
                assert payment_name in escrow.release_payments
    finally:
        process.send_signal(signal.SIGTERM)
        assert await _wait(process) == 0

    with sqlite3.connect(tmp_path / "agentflow.db") as db:
        # Each escrow once; what it released is exactly the payments naming it, and what it still holds
        # (with the rest of its fee) is its payer's escrowed balance.
        escrows = db.execute(
            "SELECT escrow_id, request_id, payer, amount, fee_total, released_amount, fee_charged FROM escrows"
        ).fetchall()
        assert len({request_id for _, request_id, *_ in escrows}) == len(escrows)
        assert set(created) <= {request_id for _, request_id, *_ in escrows}
        released: dict[str, int] = defaultdict(int)
        for escrow_id, amount in db.execute("SELECT escrow_id, amount FROM payments WHERE escrow_id IS NOT NULL"):
            released[escrow_id] += int(amount)
        held: dict[str, int] = defaultdict(int)
        for escrow_id, _, payer, amount, fee, released_amount, fee_charged in escrows:
            assert released[escrow_id] == int(released_amount)
            held[payer] += int(amount) - int(released_amount) + int(fee) - int(fee_charged)
        balances = db.execute("SELECT address, available, reserved, escrowed FROM accounts").fetchall()
        assert sum(int(a) + int(r) + int(e) for _, a, r, e in balances) == ACCOUNTS * DEPOSIT
        assert {address: int(escrowed) for address, _, _, escrowed in balances if int(escrowed)} == {
            payer: amount for payer, amount in held.items() if amount
        }
