"""The benchmark's chain half: gas per payment in a batch against a single transfer, and payments from
SubmitPayment to COMPLETED on anvil (automine), both through a real server (``agentflow serve``) in its own
process against a real node, as a deployment would run."""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys
import time
import uuid
from pathlib import Path
from typing import Any

from eth_account import Account

from agentflow_payments import AsyncClient
from agentflow_payments.v1 import accounts_pb2, payments_pb2
from agentflow_server.chain.anvil import ANVIL_KEYS, anvil_node, free_port
from agentflow_server.chain.contract import encode_call
from agentflow_server.chain.deploy import deploy, deploy_dev_tokens, deploy_settlement, dev_account, transact
from agentflow_server.chain.relayer import Relayer
from agentflow_server.chain.rpc import Rpc

PAYERS = 16
PAYEES = 200
ADMIN_KEY = "afk_bench_chain_admin_key_0123456789abcdef"
USDC = 10**6


async def _prepare(url: str) -> dict[str, Any]:
    """Deploy, make the payees holders of USDC already, fund the payers' deposits, and measure one plain
    transfer to an existing holder."""
    rpc = Rpc.http(url)
    try:
        operator = Relayer(rpc, Account.from_key(ANVIL_KEYS[0]), await rpc.chain_id())
        recipients = [dev_account(f"bench fees {i}").address for i in range(4)]
        contract = await deploy_settlement(operator, recipients, 3600)
        tokens = await deploy_dev_tokens(operator)
        usdc = tokens["USDC"]
        payees = [dev_account(f"bench payee {i}").address for i in range(PAYEES)]
        payers = [dev_account(f"bench payer {i}") for i in range(PAYERS)]
        # Payees hold USDC already: one batch transfer from the operator.
        batch = await deploy(operator, "BatchTransfer")
        await transact(operator, usdc, encode_call("mint", operator.address, 10**15, contract="TestToken"))
        await transact(operator, usdc, encode_call("approve", batch, 2**256 - 1, contract="TestToken"))
        await transact(
            operator, batch, encode_call("transferMany", usdc, payees, [1] * PAYEES, contract="BatchTransfer")
        )
        # The yardstick: one ERC-20 transfer, alone in its transaction, to an existing holder.
        single = await transact(operator, usdc, encode_call("transfer", payees[0], USDC, contract="TestToken"))
        deposit = 10**9 * USDC
        for payer in payers:
            agent = Relayer(rpc, payer, operator.chain_id)
            await transact(operator, payer.address, b"", value=10**18)
            await transact(operator, usdc, encode_call("mint", payer.address, deposit, contract="TestToken"))
            await transact(agent, usdc, encode_call("approve", contract, deposit, contract="TestToken"))
            await transact(agent, contract, encode_call("depositToken", usdc, payer.address, deposit))
        return {
            "contract": contract,
            "tokens": tokens,
            "payers": [p.address for p in payers],
            "payees": payees,
            "single_gas": single.gas_used,
        }
    finally:
        await rpc.close()


def _start_server(url: str, setup: dict[str, Any], data_dir: str, port: int) -> subprocess.Popen[bytes]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("AGENTFLOW_")}
    env.update(
        AGENTFLOW_LISTEN=f"127.0.0.1:{port}",
        AGENTFLOW_DATA_DIR=data_dir,
        AGENTFLOW_ADMIN_API_KEY=ADMIN_KEY,
        AGENTFLOW_METRICS_LISTEN="",
        AGENTFLOW_LOG_LEVEL="WARNING",
        AGENTFLOW_CHAIN_RPC_URL=url,
        AGENTFLOW_CONTRACT_ADDRESS=setup["contract"],
        AGENTFLOW_OPERATOR_PRIVATE_KEY=ANVIL_KEYS[0],
        AGENTFLOW_TOKEN_ADDRESSES=json.dumps(setup["tokens"]),
        AGENTFLOW_RATE_LIMIT_PER_MINUTE=str(10**12),
        AGENTFLOW_RATE_LIMIT_BURST=str(10**9),
        AGENTFLOW_MAX_QUEUE_SIZE=str(10**7),
        AGENTFLOW_MAX_BULK_SIZE="1000",
        AGENTFLOW_MAX_BATCH_SIZE="1000",
        AGENTFLOW_BATCH_TIMEOUT_MS="200",
        AGENTFLOW_CHAIN_POLL_INTERVAL="0.05",
    )
    agentflow = Path(sys.executable).parent / "agentflow"
    return subprocess.Popen([str(agentflow), "serve"], env=env)


def _request(payer: str, payee: str) -> payments_pb2.SubmitPaymentRequest:
    return payments_pb2.SubmitPaymentRequest(
        payer=payer, payee=payee, token="USDC", amount=str(USDC), request_id=uuid.uuid4().hex
    )


async def _submit(client: AsyncClient, items: list[payments_pb2.SubmitPaymentRequest]) -> None:
    response = await client.payments.SubmitPayments(payments_pb2.SubmitPaymentsRequest(requests=items))
    refused = [r.error for r in response.results if r.WhichOneof("result") == "error"]
    if refused:
        raise RuntimeError(f"bench: payments refused: {refused[0]}")


async def _wait_credited(client: AsyncClient, payers: list[str], process: subprocess.Popen[bytes]) -> None:
    deadline = time.monotonic() + 120
    while True:
        if process.poll() is not None:
            raise SystemExit("bench: the server exited")
        try:
            request = accounts_pb2.GetBalancesRequest(address=payers[-1], tokens=["USDC"])
            if (await client.accounts.GetBalances(request)).balances[0].available != "0":
                return
        except Exception:
            if time.monotonic() > deadline:
                raise
        await asyncio.sleep(0.2)


async def _all_completed(client: AsyncClient, count: int) -> list[payments_pb2.Payment]:
    """Wait until nothing is queued or processing (a cheap look), then list the ``count`` COMPLETED ones."""
    while True:
        open_ones = 0
        for status in (payments_pb2.PAYMENT_STATUS_QUEUED, payments_pb2.PAYMENT_STATUS_PROCESSING):
            page = await client.payments.ListPayments(payments_pb2.ListPaymentsRequest(status=status, page_size=1))
            open_ones += len(page.payments)
        if not open_ones:
            break
        await asyncio.sleep(0.25)
    done: list[payments_pb2.Payment] = []
    token = ""
    while True:
        page = await client.payments.ListPayments(
            payments_pb2.ListPaymentsRequest(
                status=payments_pb2.PAYMENT_STATUS_COMPLETED, page_size=1000, page_token=token
            )
        )
        done.extend(page.payments)
        token = page.next_page_token
        if not token:
            break
    if len(done) != count:
        raise RuntimeError(f"bench: {count} payments submitted, {len(done)} completed")
    return done


async def measure_chain(seconds: float, rate: float = 2500.0) -> dict[str, Any]:
    """Start anvil, deploy, run a server against it, and measure the batch gas and end-to-end rate."""
    import tempfile

    with (
        anvil_node("--gas-limit", "60000000") as url,
        tempfile.TemporaryDirectory(prefix="agentflow-bench-chain-") as data,
    ):
        setup = await _prepare(url)
        port = free_port()
        process = _start_server(url, setup, data, port)
        try:
            async with AsyncClient(f"127.0.0.1:{port}", ADMIN_KEY, timeout=60) as client:
                await _wait_credited(client, setup["payers"], process)
                payers, payees = setup["payers"], setup["payees"]
                # Gas: one call of 200 payments to 200 existing holders becomes one batch of 200.
                await client.payments.SubmitPayments(
                    payments_pb2.SubmitPaymentsRequest(
                        requests=[_request(payers[i % PAYERS], payees[i]) for i in range(PAYEES)]
                    )
                )
                first = await _all_completed(client, PAYEES)
                batches = {p.settlement.batch for p in first}
                gas = 0
                for name in batches:
                    batch = (await client.payments.GetBatch(payments_pb2.GetBatchRequest(name=name))).batch
                    gas += int(batch.gas_used)
                gas_per_payment = gas / PAYEES

                # End to end: calls of 100 offered at ``rate`` payments a second for ``seconds``.
                calls = int(rate * seconds / 100)
                started = time.perf_counter()
                tasks = []
                for i in range(calls):
                    delay = started + i * 100 / rate - time.perf_counter()
                    if delay > 0:
                        await asyncio.sleep(delay)
                    items = [_request(payers[(i + j) % PAYERS], payees[(i * 100 + j) % PAYEES]) for j in range(100)]
                    tasks.append(asyncio.ensure_future(_submit(client, items)))
                await asyncio.gather(*tasks)
                total = PAYEES + calls * 100
                done = await _all_completed(client, total)
        finally:
            process.terminate()
            process.wait(30)
    run = [p for p in done if p.name not in {q.name for q in first}]
    create = [p.create_time.ToMicroseconds() / 1e6 for p in run]
    complete = [p.settlement.complete_time.ToMicroseconds() / 1e6 for p in run]
    to_completed = sorted(c - s for s, c in zip(create, complete, strict=True))
    return {
        "gas_per_payment_batch200": round(gas_per_payment, 1),
        "gas_per_transfer_single": setup["single_gas"],
        "gas_ratio": round(gas_per_payment / setup["single_gas"], 3),
        "batches_for_200": len(batches),
        "e2e_offered_per_s": rate,
        "e2e_completed_per_s": round(len(run) / (max(complete) - min(create)), 1),
        "e2e_p50_s": round(to_completed[len(to_completed) // 2], 3),
        "e2e_p99_s": round(to_completed[min(len(to_completed) - 1, int(len(to_completed) * 0.99))], 3),
        "e2e_seconds": seconds,
    }


if __name__ == "__main__":
    print(json.dumps(asyncio.run(measure_chain(float(sys.argv[1]) if len(sys.argv) > 1 else 5.0))))
