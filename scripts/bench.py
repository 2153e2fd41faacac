"""The benchmark: how fast the server accepts durable payments, against an empty RPC on the same server.

Starts ``scripts/funded_server.py`` (the embedded default: SQLite with synchronous=FULL) in its own process,
and from this process, as the client, measures in one run:

- the empty RPC (grpc.health.v1 Check) at 64 in flight: the baseline;
- unary SubmitPayment at 64 in flight;
- SubmitPayments in calls of 100;
- SubmitPayment latency (p50, p99) at an offered 1,000 payments a second, against two baselines: the empty
  RPC's at the same offered rate, and, measured first with nothing else running, an ideal group commit on
  the ledger's disk (scripts/bench_disk.py: an fdatasync per lot of arrived payments, nothing else); and how
  many of the cores each load keeps busy (client, server and writer together). The latency probes come
  before the throughput phases: a gigabyte written (or deleted) just before leaves this virtual machine's
  disk with syncs of 100-500 ms for tens of seconds, and the figure is about 1,000/s, not the aftermath of a
  burst. For the same reason no server's data directory is deleted before the run ends;
- the CPU time per call in the first three of the server, its ledger writer process and the client
  (steadier than rates on a shared machine), and what those costs allow on this machine's cores: all three
  processes share them, so SubmitPayment's share of the empty RPC's rate cannot exceed the empty RPC's
  cost over SubmitPayment's, nor bulk calls all the cores' time over a payment's cost;
- the server's RSS with at least 100,000 payments in the queue;
- once that server has stopped, with nothing else running, the bulk phase's own groups read back from its
  ledger and written again into a new one on the same disk (scripts/bench_ledger.py): what SQLite, the
  schema's indexes and the disk alone allow bulk acceptance, whatever the server does;
- on a fresh server, 10,000 escrows with deadlines scattered over 10 s (scripts/bench_escrow.py): how late
  their expiries ran, and SubmitPayment latency meanwhile against the same probe before;
- on anvil, through a server settling on it (scripts/bench_chain.py): gas per payment in a batch of 200
  ERC-20 payments against one transfer alone, and payments from SubmitPayment to COMPLETED.

Both baseline and payments go through the same channel and client code, so the ratio says what the
payment path costs on top of gRPC itself. The client's own garbage collector is paused while it times
calls, so its pauses are not counted as the server's latency. Prints a table, then one JSON line.
"""

from __future__ import annotations

import argparse
import asyncio
import collections
import contextlib
import gc
import json
import os
import platform
import resource
import statistics
import sys
import tempfile
import time
import uuid
from collections.abc import Awaitable, Callable, Iterator
from pathlib import Path
from typing import Any

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc

from agentflow_payments.v1 import payments_pb2, payments_pb2_grpc

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_chain import measure_chain
from bench_disk import measure_disk
from bench_escrow import measure_escrow
from bench_ledger import measure_ledger_writes
from bench_stats import percentile

ROOT = Path(__file__).resolve().parent.parent
ACCOUNTS = 64


async def start_server(
    data_dir: str, settings: dict[str, str] | None = None
) -> tuple[asyncio.subprocess.Process, dict[str, Any]]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("AGENTFLOW_")}
    env.update(
        AGENTFLOW_RATE_LIMIT_PER_MINUTE=str(10**12),
        AGENTFLOW_RATE_LIMIT_BURST=str(10**9),
        AGENTFLOW_MAX_QUEUE_SIZE=str(10**7),
        AGENTFLOW_MAX_BULK_SIZE="1000",
        **(settings or {}),
    )
    process = await asyncio.create_subprocess_exec(
        sys.executable,
        str(ROOT / "scripts" / "funded_server.py"),
        "--data-dir",
        data_dir,
        "--accounts",
        str(ACCOUNTS),
        "--amount",
        str(10**24),
        env=env,
        stdout=asyncio.subprocess.PIPE,
    )
    assert process.stdout is not None
    line = await asyncio.wait_for(process.stdout.readline(), 120)
    if not line:
        raise SystemExit("bench: the server did not start")
    return process, json.loads(line)


async def closed_loop(call: Callable[[int], Awaitable[Any]], in_flight: int, seconds: float) -> tuple[int, float]:
    """``in_flight`` workers calling back to back for ``seconds``: (calls done, elapsed)."""
    deadline = time.perf_counter() + seconds
    done = 0

    async def worker(worker_id: int) -> None:
        nonlocal done
        i = worker_id
        while time.perf_counter() < deadline:
            await call(i)
            done += 1
            i += in_flight

    started = time.perf_counter()
    await asyncio.gather(*(worker(w) for w in range(in_flight)))
    return done, time.perf_counter() - started


async def open_loop(
    call: Callable[[int], Awaitable[Any]], rate: float, seconds: float
) -> tuple[list[float], collections.Counter[str]]:
    """Calls started at a fixed ``rate`` a second whatever the answers do: each answered call's latency in ms,
    and the failed calls by status code. (Beyond what the machine can serve, gRPC itself fails calls with
    CANCELLED, the empty RPC's too: they are counted, not let to end the run.)"""
    latencies: list[float] = []
    failures: collections.Counter[str] = collections.Counter()

    async def one(i: int) -> None:
        started = time.perf_counter()
        try:
            await call(i)
        except grpc.aio.AioRpcError as error:
            failures[error.code().name] += 1
            return
        latencies.append((time.perf_counter() - started) * 1000)

    tasks = []
    start = time.perf_counter()
    total = int(rate * seconds)
    for i in range(total):
        delay = start + i / rate - time.perf_counter()
        if delay > 0:
            await asyncio.sleep(delay)
        tasks.append(asyncio.create_task(one(i)))
    await asyncio.gather(*tasks)
    return latencies, failures


def cpu_seconds(pid: int) -> float:
    """User and system CPU time process ``pid`` has used."""
    fields = Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


class Cpu:
    """CPU time of the server's process, of its ledger writer process (none when it writes on a thread), and of
    this one, the client: on this machine all three share the same cores."""

    def __init__(self, pid: int, writer_pid: int | None) -> None:
        self._pids = (pid, writer_pid)
        self._last = self._now()

    def _now(self) -> tuple[float, float, float]:
        pid, writer = self._pids
        client = resource.getrusage(resource.RUSAGE_SELF)
        return cpu_seconds(pid), cpu_seconds(writer) if writer else 0.0, client.ru_utime + client.ru_stime

    def lap(self) -> tuple[float, float, float]:
        """(server, writer, client) CPU seconds since the last lap."""
        now = self._now()
        spent = (now[0] - self._last[0], now[1] - self._last[1], now[2] - self._last[2])
        self._last = now
        return spent


@contextlib.contextmanager
def client_gc_paused() -> Iterator[None]:
    """Pause this process's (the client's) garbage collector: its gen-2 collections took 25-45 ms here, and
    every call in flight meanwhile was counted as that much slower, though the server had answered."""
    gc.collect()
    gc.freeze()
    gc.disable()
    try:
        yield
    finally:
        gc.enable()
        gc.unfreeze()


def rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    raise RuntimeError("no VmRSS")


async def on_fresh_server(
    measure: Callable[[dict[str, Any]], Awaitable[dict[str, Any]]],
    settings: dict[str, str] | None = None,
    parent: str | None = None,
    after_stop: Callable[[Path, dict[str, Any]], dict[str, Any]] | None = None,
) -> dict[str, Any]:
    """Start a funded server on a new ledger (with these AGENTFLOW_* variables), measure against it, stop it,
    and then, if given, measure ``after_stop(ledger file, measures)`` on a thread, with nothing else running.
    The ledger is made in ``parent`` and left for its owner to delete, or, without one, deleted at once."""
    with contextlib.ExitStack() as stack:
        if parent is None:
            data_dir = stack.enter_context(tempfile.TemporaryDirectory(prefix="agentflow-bench-"))
        else:
            data_dir = tempfile.mkdtemp(prefix="ledger-", dir=parent)
        process, ready = await start_server(data_dir, settings)
        try:
            result = await measure(ready)
        finally:
            process.terminate()
            await process.wait()
        if after_stop is not None:
            result.update(await asyncio.to_thread(after_stop, Path(data_dir) / "agentflow.db", result))
        return result


async def run(quick: bool) -> dict[str, Any]:
    # --quick: 2 s phases (1.5 s for each of the latency probes, 1 s and 0.5 s for the disk's) keep the whole
    # run under a minute on a machine running at half its usual speed.
    seconds = 2.0 if quick else 10.0
    latency_seconds = 1.5 if quick else 10.0
    disk_seconds = 1.0 if quick else 10.0
    # Every ledger of the run lives here until the end: deleting gigabytes mid-run stalls the disk's syncs
    # (this machine's file system discards freed blocks) while the next phase measures.
    with tempfile.TemporaryDirectory(prefix="agentflow-bench-") as root:
        result = await asyncio.to_thread(measure_disk, root, disk_seconds)
        result.update(
            await on_fresh_server(
                lambda ready: measure(ready, seconds, latency_seconds),
                parent=root,
                # The bulk phase's groups written again into a new ledger beside it: the ledger's part of bulk.
                after_stop=lambda ledger, measured: measure_ledger_writes(
                    ledger, root, *measured.pop("bulk_window_us")
                ),
            )
        )
        count, spread = (2_000, 2.0) if quick else (10_000, 10.0)
        # The disk as the escrow phase finds it, after the acceptance phases' gigabytes.
        disk = await asyncio.to_thread(measure_disk, root, disk_seconds / 2)
        result["escrow_disk_floor_p99_ms_at_1000"] = disk["disk_floor_p99_ms_at_1000"]
        result.update(await on_fresh_server(lambda ready: measure_escrow(ready, count, spread), parent=root))
        result.update(await measure_chain(5.0 if quick else 30.0))
    return result


async def measure(ready: dict[str, Any], seconds: float, latency_seconds: float) -> dict[str, Any]:
    accounts: list[str] = ready["accounts"]
    metadata = (("authorization", f"Bearer {ready['admin_key']}"),)
    async with grpc.aio.insecure_channel(ready["target"]) as channel:
        health = health_pb2_grpc.HealthStub(channel)
        payments = payments_pb2_grpc.PaymentServiceStub(channel)
        check = health_pb2.HealthCheckRequest()

        def request(i: int) -> payments_pb2.SubmitPaymentRequest:
            return payments_pb2.SubmitPaymentRequest(
                payer=accounts[i % ACCOUNTS],
                payee=accounts[(i + 1) % ACCOUNTS],
                token="USDC",
                amount="1000000",
                request_id=uuid.uuid4().hex,
            )

        async def empty(_: int) -> None:
            await health.Check(check, metadata=metadata)

        async def submit(i: int) -> None:
            await payments.SubmitPayment(request(i), metadata=metadata)

        async def bulk(i: int, size: int = 100) -> None:
            response = await payments.SubmitPayments(
                payments_pb2.SubmitPaymentsRequest(requests=[request(i * size + j) for j in range(size)]),
                metadata=metadata,
            )
            failed = [r.error for r in response.results if r.WhichOneof("result") == "error"]
            if failed:
                raise RuntimeError(f"bulk items refused: {failed[0]}")

        # Warm both paths (connections, caches, the first groups) before measuring.
        await closed_loop(empty, 16, 0.5)
        await closed_loop(submit, 16, 0.5)

        # Latency first, before the throughput phases' writes (see the module's docstring). The empty RPC at
        # the same offered rate first: the latency this client, gRPC and these cores give without the payment
        # path. And how much of the cores each offered load keeps busy: a slow call waits for a core, and
        # SubmitPayment's load takes more of them.
        with client_gc_paused():
            cpu = Cpu(int(ready["pid"]), ready.get("writer_pid"))
            started = time.perf_counter()
            empty_latencies, _ = await open_loop(empty, 1000.0, latency_seconds)
            empty_cores = sum(cpu.lap()) / (time.perf_counter() - started)
            cpu = Cpu(int(ready["pid"]), ready.get("writer_pid"))
            started = time.perf_counter()
            latencies, failures = await open_loop(submit, 1000.0, latency_seconds)
            submit_cores = sum(cpu.lap()) / (time.perf_counter() - started)
        if not latencies or not empty_latencies:
            raise SystemExit(f"bench: no SubmitPayment or empty RPC at 1,000/s was answered: {dict(failures)}")

        # CPU seconds the server, its ledger writer process and this client spend per call: steadier than
        # rates on a shared machine, and where the time goes.
        with client_gc_paused():
            cpu = Cpu(int(ready["pid"]), ready.get("writer_pid"))
            empty_calls, empty_time = await closed_loop(empty, 64, seconds)
            empty_cpu = cpu.lap()
            submit_calls, submit_time = await closed_loop(submit, 64, seconds)
            submit_cpu = cpu.lap()
            bulk_started_us = time.time_ns() // 1000
            bulk_calls, bulk_time = await closed_loop(bulk, 4, seconds)
            bulk_window_us = (bulk_started_us, time.time_ns() // 1000)
            bulk_cpu = cpu.lap()
        queued = 0.5 * 16 + submit_calls + bulk_calls * 100 + len(latencies)

        async def fill() -> None:
            # Calls of 1,000 (the bench server's largest), four at a time: the quickest way to the queue.
            nonlocal queued
            while queued < 100_000:
                queued += 1000
                await bulk(int(queued), 1000)

        await asyncio.gather(*(fill() for _ in range(4)))
        rss = rss_mb(int(ready["pid"]))

    empty_rps = empty_calls / empty_time
    submit_rps = submit_calls / submit_time
    # What a call costs the whole machine. When the cores are the limit (client, server and writer share
    # them), the ratio of SubmitPayment's rate to the empty RPC's cannot exceed the ratio of their costs,
    # nor bulk calls exceed all the cores' time over a payment's cost.
    empty_cost = (empty_cpu[0] + empty_cpu[2]) / empty_calls
    submit_cost = sum(submit_cpu) / submit_calls
    bulk_cost = sum(bulk_cpu) / (bulk_calls * 100)
    cpus = os.cpu_count() or 1
    return {
        "empty_rps": round(empty_rps, 1),
        "submit_rps": round(submit_rps, 1),
        "submit_ratio": round(submit_rps / empty_rps, 3),
        "bulk_payments_per_s": round(bulk_calls * 100 / bulk_time, 1),
        "empty_p50_ms_at_1000": round(statistics.median(empty_latencies), 2),
        "empty_p99_ms_at_1000": round(percentile(empty_latencies, 0.99), 2),
        "empty_cores_busy_at_1000": round(empty_cores, 2),
        "submit_cores_busy_at_1000": round(submit_cores, 2),
        "submit_p50_ms_at_1000": round(statistics.median(latencies), 2),
        "submit_p99_ms_at_1000": round(percentile(latencies, 0.99), 2),
        "submit_failed_at_1000": dict(failures),
        "rss_mb_100k_queued": round(rss, 1),
        "empty_server_cpu_us": round(empty_cpu[0] / empty_calls * 1e6, 1),
        "submit_server_cpu_us": round(submit_cpu[0] / submit_calls * 1e6, 1),
        "submit_writer_cpu_us": round(submit_cpu[1] / submit_calls * 1e6, 1),
        "bulk_server_cpu_us": round(bulk_cpu[0] / (bulk_calls * 100) * 1e6, 1),
        "bulk_writer_cpu_us": round(bulk_cpu[1] / (bulk_calls * 100) * 1e6, 1),
        "empty_client_cpu_us": round(empty_cpu[2] / empty_calls * 1e6, 1),
        "submit_client_cpu_us": round(submit_cpu[2] / submit_calls * 1e6, 1),
        "bulk_client_cpu_us": round(bulk_cpu[2] / (bulk_calls * 100) * 1e6, 1),
        "submit_ratio_cpu_bound": round(empty_cost / submit_cost, 3),
        "bulk_cpu_bound_per_s": round(cpus / bulk_cost, 1),
        "queued_payments": int(queued),
        "seconds_per_phase": seconds,
        "machine": f"{platform.machine()}, {os.cpu_count()} CPUs, Python {platform.python_version()}",
        # Not printed: when the bulk phase ran, for measure_ledger_writes (the server's clock is this one).
        "bulk_window_us": bulk_window_us,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="2 s phases: the whole run in under a minute")
    args = parser.parse_args()
    result = asyncio.run(run(args.quick))
    rows = [
        ("empty RPC (Health/Check), 64 in flight", f"{result['empty_rps']:,.0f} calls/s", "baseline"),
        (
            "SubmitPayment, 64 in flight",
            f"{result['submit_rps']:,.0f} payments/s",
            f"{result['submit_ratio']:.0%} of baseline (target >= 75%)",
        ),
        ("SubmitPayments, calls of 100", f"{result['bulk_payments_per_s']:,.0f} payments/s", "target >= 20,000"),
        (
            "server CPU per call: empty / SubmitPayment",
            f"{result['empty_server_cpu_us']:,.0f} / {result['submit_server_cpu_us']:,.0f} µs",
            f"+ {result['submit_writer_cpu_us']:,.0f} µs in the ledger writer process",
        ),
        (
            "server CPU per payment, calls of 100",
            f"{result['bulk_server_cpu_us']:,.0f} µs",
            f"+ {result['bulk_writer_cpu_us']:,.0f} µs in the ledger writer process",
        ),
        (
            "client CPU per call: empty / SubmitPayment",
            f"{result['empty_client_cpu_us']:,.0f} / {result['submit_client_cpu_us']:,.0f} µs",
            f"all CPU per call then allows SubmitPayment at most {result['submit_ratio_cpu_bound']:.0%} of baseline",
        ),
        (
            "client CPU per payment, calls of 100",
            f"{result['bulk_client_cpu_us']:,.0f} µs",
            f"all CPU per payment then allows at most {result['bulk_cpu_bound_per_s']:,.0f} payments/s "
            f"on {os.cpu_count()} CPUs",
        ),
        (
            f"ledger writes alone: the bulk phase's groups again ({result['ledger_writes_group_size']:,.0f} a group)",
            f"{result['ledger_writes_payments_per_s']:,.0f} payments/s",
            f"no server: SQLite and this disk allow bulk at most this; {result['ledger_writes_cpu_us']:,.0f} µs CPU "
            f"and {result['ledger_writes_kb_per_payment']:,.1f} KB written a payment",
        ),
        (
            "empty RPC p50 / p99 at 1,000/s offered",
            f"{result['empty_p50_ms_at_1000']:.2f} / {result['empty_p99_ms_at_1000']:.2f} ms",
            "baseline",
        ),
        (
            "disk: ideal group commit p50 / p99 at 1,000/s offered",
            f"{result['disk_floor_p50_ms_at_1000']:.2f} / {result['disk_floor_p99_ms_at_1000']:.2f} ms",
            f"baseline: an fdatasync per lot, nothing else; syncs p99 / max {result['disk_sync_p99_ms']:.1f} / "
            f"{result['disk_sync_max_ms']:.1f} ms",
        ),
        ("SubmitPayment p50 at 1,000/s offered", f"{result['submit_p50_ms_at_1000']:.2f} ms", ""),
        (
            "SubmitPayment p99 at 1,000/s offered",
            f"{result['submit_p99_ms_at_1000']:.2f} ms",
            f"target < 10 ms; {result['submit_p99_ms_at_1000'] / result['empty_p99_ms_at_1000']:.1f}x empty RPC's, "
            f"{result['submit_p99_ms_at_1000'] / result['disk_floor_p99_ms_at_1000']:.1f}x disk's"
            + "".join(f"; {n:,} failed {code}" for code, n in sorted(result["submit_failed_at_1000"].items())),
        ),
        (
            "CPUs busy at 1,000/s offered: empty / SubmitPayment",
            f"{result['empty_cores_busy_at_1000']:.2f} / {result['submit_cores_busy_at_1000']:.2f}",
            f"of {os.cpu_count()}: client, server and ledger writer process together",
        ),
        (
            f"server RSS, {result['queued_payments']:,} payments queued",
            f"{result['rss_mb_100k_queued']:.0f} MB",
            "target < 300 MB",
        ),
        (
            f"escrows: {result['escrows']:,} expiring over {result['escrow_deadline_spread_s']:.0f} s, "
            "late by p50 / p99 / max",
            f"{result['expiry_late_p50_ms']:.0f} / {result['expiry_late_p99_ms']:.0f} / "
            f"{result['expiry_late_max_ms']:.0f} ms",
            f"{result['escrows_expired']:,} expired (target: within 1 s); disk floor p99 "
            f"{result['escrow_disk_floor_p99_ms_at_1000']:.1f} ms just before",
        ),
        (
            "escrows: SubmitPayment p99 at 100/s, idle / during expiries",
            f"{result['probe_p99_ms_idle']:.1f} / {result['probe_p99_ms_during_expiry']:.1f} ms",
            "the server stays responsive",
        ),
        ("anvil: one ERC-20 transfer alone", f"{result['gas_per_transfer_single']:,} gas", "baseline"),
        (
            "anvil: per payment, batch of 200 ERC-20",
            f"{result['gas_per_payment_batch200']:,.0f} gas",
            f"{result['gas_ratio']:.1%} of one transfer (target <= 35%)",
        ),
        (
            f"anvil: SubmitPayment to COMPLETED, {result['e2e_offered_per_s']:,.0f}/s offered "
            f"for {result['e2e_seconds']:.0f} s",
            f"{result['e2e_completed_per_s']:,.0f} payments/s",
            "target >= 2,000",
        ),
        ("anvil: time to COMPLETED p50 / p99", f"{result['e2e_p50_s']:.2f} / {result['e2e_p99_s']:.2f} s", ""),
    ]
    width = max(len(r[0]) for r in rows)
    print(f"{'measure':<{width}}  {'result':>20}  note")
    for name, value, note in rows:
        print(f"{name:<{width}}  {value:>20}  {note}")
    print(json.dumps(result))


if __name__ == "__main__":
    main()
