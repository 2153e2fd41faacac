"""Settlement end to end: deposits credited from the chain, queued payments settled in batches, and the
ledger agreeing with the chain after each test. The embedded chain where speed matters; anvil for what
only a real node does (reorgs, stuck transactions, an RPC endpoint that goes away, restarts)."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import sqlite3
import subprocess
import sys
import urllib.request
from pathlib import Path
from typing import Any

import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc

from agentflow_payments import (
    AlreadyExists,
    AsyncClient,
    FailedPrecondition,
    InvalidArgument,
    NotFound,
    PermissionDenied,
    Reason,
)
from agentflow_payments.v1 import accounts_pb2, admin_pb2, payments_pb2
from agentflow_server.app import SETTLEMENT_HEALTH, StartupError
from agentflow_server.chain.contract import ETH_ADDRESS, SettlementContract, encode_call, read, topic
from agentflow_server.chain.deploy import (
    deploy,
    deploy_dev_tokens,
    deploy_settlement,
    dev_account,
    fund_dev_agent,
    transact,
)
from agentflow_server.chain.relayer import Relayer
from agentflow_server.chain.rpc import Rpc
from agentflow_server.chain.settlement import new_batch_id
from agentflow_server.engine.commands import OpenBatch
from agentflow_server.engine.model import Batch

from .anvil import ANVIL_KEYS, TcpProxy, anvil, free_port
from .chain import (
    FAST,
    Anvil,
    Chain,
    assert_ledger_matches_chain,
    ledger,
    ledger_matches,
    pay,
    payment_status,
    query,
    until_final,
    wait_for,
)
from .conftest import ADMIN_KEY, RunningServer, StartServer

USDC = 10**6
BOB = dev_account("bob").address


# -- the embedded chain -------------------------------------------------------------------------------------


async def test_deposits_credit_once_and_payments_of_every_token_settle(embedded: RunningServer) -> None:
    chain = Chain(embedded)
    deposits = {"ETH": 5 * 10**18, "USDC": 1_000 * USDC, "USDT": 1_000 * USDC, "DAI": 10**21, "WETH": 10**18}
    alice = await chain.fund("alice", deposits)
    bob = dev_account("bob").address
    async with embedded.client() as client:
        balances = await client.accounts.GetBalances(accounts_pb2.GetBalancesRequest(address=alice.address))
        assert {b.token: int(b.available) for b in balances.balances} == deposits
        # The watcher reads the same blocks again (a restart would): nothing is credited twice.
        watcher = embedded.service.chain.watcher  # type: ignore[union-attr]
        watcher.cursor = -1
        await chain.caught_up()
        again = await client.accounts.GetBalances(accounts_pb2.GetBalancesRequest(address=alice.address))
        assert again == balances

        amounts = {"ETH": 10**17, "USDC": 7 * USDC, "USDT": 3 * USDC, "DAI": 2 * 10**18, "WETH": 10**16}
        before = {symbol: await chain.token_balance(symbol, bob) for symbol in amounts}
        submitted = [
            (await client.payments.SubmitPayment(pay(alice.address, bob, symbol, amount))).payment
            for symbol, amount in amounts.items()
        ]
        settled = await until_final(client, [p.name for p in submitted])
        assert {p.status for p in settled} == {payments_pb2.PAYMENT_STATUS_COMPLETED}
        for symbol, amount in amounts.items():
            assert await chain.token_balance(symbol, bob) == before[symbol] + amount, symbol
        balances = await client.accounts.GetBalances(accounts_pb2.GetBalancesRequest(address=alice.address))
        for balance, payment in zip(balances.balances, submitted, strict=True):
            expected = deposits[balance.token] - amounts[balance.token] - int(payment.fee.total)
            assert (int(balance.available), int(balance.reserved)) == (expected, 0), balance.token
        # Each payment knows its transaction, block and share of the gas; the batch shows them all.
        first = settled[0].settlement
        assert first.transaction_hash.startswith("0x")
        assert first.block_number > 0
        assert int(first.gas_used) > 0
        batch = (await client.payments.GetBatch(payments_pb2.GetBatchRequest(name=first.batch))).batch
        assert batch.status == payments_pb2.BATCH_STATUS_CONFIRMED
        assert batch.chain_batch_id == 1
        assert sorted(batch.payments) == sorted(p.name for p in submitted)
        assert sum(int(p.settlement.gas_used) for p in settled) == int(batch.gas_used)
        assert {t.token: int(t.amount) for t in batch.totals} == amounts
        # The fees stay in the contract, accrued, until it pays them out.
        contract = SettlementContract(chain.rpc, chain.contract)
        assert await contract.accrued_fees(chain.tokens["USDC"]) == int(submitted[1].fee.total)
    rows = await query(embedded, "SELECT type FROM events WHERE resource = :name", name=submitted[0].name)
    assert [t for (t,) in rows] == ["payment.created", "payment.queued", "payment.processing", "payment.completed"]
    await assert_ledger_matches_chain(chain)


async def test_deposit_info_tells_where_to_deposit(embedded: RunningServer) -> None:
    chain = Chain(embedded)
    async with embedded.client() as client:
        info = await client.accounts.GetDepositInfo(
            accounts_pb2.GetDepositInfoRequest(address=dev_account("carol").address, token="USDT")
        )
        tokens = await client.accounts.ListTokens(accounts_pb2.ListTokensRequest())
    assert info.contract_address == chain.contract
    assert info.chain_id == tokens.chain_id == chain.connection.identity.chain_id
    assert info.token.contract_address == chain.tokens["USDT"]
    assert info.method == "depositToken(address,address,uint256)"
    assert info.confirmations == 1
    assert chain.tokens["USDT"] in info.instructions


async def test_a_payee_that_cannot_receive_is_credited_in_the_ledger(embedded: RunningServer) -> None:
    chain = Chain(embedded)
    alice = await chain.fund("alice", {"ETH": 10**18})
    rejecting = await deploy(chain.connection.relayer, "RejectingPayee", False)
    carol = dev_account("carol").address
    async with embedded.client() as client:
        bad = (await client.payments.SubmitPayment(pay(alice.address, rejecting, "ETH", 10**17))).payment
        good = (await client.payments.SubmitPayment(pay(alice.address, carol, "ETH", 10**17))).payment
        settled = await until_final(client, [bad.name, good.name])
        assert [p.status for p in settled] == [payments_pb2.PAYMENT_STATUS_COMPLETED] * 2
        # The contract kept the payee's money for it; the ledger says the same, so the payee can spend it.
        balances = await client.accounts.GetBalances(accounts_pb2.GetBalancesRequest(address=rejecting))
        assert int(balances.balances[0].available) == 10**17
    assert await chain.token_balance("ETH", rejecting) == 0
    await assert_ledger_matches_chain(chain)


async def test_batches_close_at_their_size(start_server: StartServer) -> None:
    server = await start_server(settlement_enabled=True, max_batch_size=2, **FAST)
    chain = Chain(server)
    alice = await chain.fund("alice", {"USDC": 100 * USDC})
    async with server.client() as client:
        names = [
            (
                await client.payments.SubmitPayment(pay(alice.address, dev_account("bob").address, "USDC", USDC))
            ).payment.name
            for _ in range(5)
        ]
        settled = await until_final(client, names)
    batches = {p.settlement.batch for p in settled}
    assert len(batches) >= 3
    with ledger(server) as db:
        sizes = [len(json.loads(ids)) for (ids,) in db.execute("SELECT payment_ids FROM batches")]
        chain_ids = sorted(n for (n,) in db.execute("SELECT chain_batch_id FROM batches"))
    assert max(sizes) <= 2
    assert chain_ids == list(range(1, len(chain_ids) + 1))
    await assert_ledger_matches_chain(chain)


async def test_the_embedded_chain_is_not_taken_for_an_old_ledger(start_server: StartServer, tmp_path: Path) -> None:
    first = await start_server(settlement_enabled=True, data_dir=tmp_path / "data", **FAST)
    await first.service.stop()
    with pytest.raises(StartupError, match="this ledger belongs to chain"):
        await start_server(settlement_enabled=True, data_dir=tmp_path / "data", **FAST)


async def test_a_replica_that_does_not_settle_says_so(server: RunningServer) -> None:
    async with server.client() as client:
        with pytest.raises(FailedPrecondition) as refused:
            await client.accounts.GetDepositInfo(
                accounts_pb2.GetDepositInfoRequest(address=dev_account("carol").address, token="USDC")
            )
    assert refused.value.reason.value == "SETTLEMENT_UNAVAILABLE"


# -- anvil ----------------------------------------------------------------------------------------------------


async def test_on_anvil_a_restart_credits_nothing_twice_and_settles(
    on_anvil: Anvil, ledger_url: str | None, start_server: StartServer
) -> None:
    server = await start_server(database_url=ledger_url, **on_anvil.settings())
    chain = Chain(server)
    alice = await chain.fund("alice", {"USDC": 50 * USDC, "ETH": 10**18})
    await server.service.stop()
    again = await start_server(database_url=ledger_url, **on_anvil.settings())
    chain = Chain(again)
    await chain.caught_up()
    async with again.client() as client:
        balances = await client.accounts.GetBalances(accounts_pb2.GetBalancesRequest(address=alice.address))
        assert {b.token: int(b.available) for b in balances.balances if b.available != "0"} == {
            "USDC": 50 * USDC,
            "ETH": 10**18,
        }
        payment = (
            await client.payments.SubmitPayment(pay(alice.address, dev_account("bob").address, "USDC", USDC))
        ).payment
        [settled] = await until_final(client, [payment.name])
    assert settled.status == payments_pb2.PAYMENT_STATUS_COMPLETED
    await assert_ledger_matches_chain(chain)


async def test_a_server_refuses_another_chains_ledger_or_a_contract_it_does_not_operate(
    on_anvil: Anvil, start_server: StartServer, tmp_path: Path
) -> None:
    first = await start_server(**on_anvil.settings())
    await first.service.stop()
    with anvil("--chain-id", "31338") as other, pytest.raises(StartupError, match="this ledger belongs to chain"):
        await start_server(**on_anvil.settings(url=str(other.provider.endpoint_uri)))  # type: ignore[attr-defined]
    with pytest.raises(StartupError, match="is operated by"):
        await start_server(data_dir=tmp_path / "other", **on_anvil.settings(operator_private_key=ANVIL_KEYS[1]))


async def test_a_reorg_that_drops_a_settled_batch_leads_to_one_execution(
    on_anvil: Anvil, start_server: StartServer
) -> None:
    server = await start_server(**on_anvil.settings(confirmations=3))
    chain = Chain(server)
    alice = await chain.fund("alice", {"USDC": 50 * USDC})
    bob = dev_account("bob").address
    async with server.client() as client:
        # The deposit is in the newest block: with 3 confirmations it is not credited yet...
        request = accounts_pb2.GetBalancesRequest(address=alice.address, tokens=["USDC"])
        assert (await client.accounts.GetBalances(request)).balances[0].available == "0"
        for _ in range(2):
            await on_anvil.request("evm_mine", [])
        await chain.caught_up()
        # ...and is once two more blocks are on top of it.
        assert (await client.accounts.GetBalances(request)).balances[0].available == str(50 * USDC)
        payment = (await client.payments.SubmitPayment(pay(alice.address, bob, "USDC", 5 * USDC))).payment

        async def settled_logs() -> list[Any]:
            head = await chain.rpc.block_number()
            return await chain.rpc.logs(chain.contract, [topic("BatchSettled")], 0, head)

        [first] = await wait_for(settled_logs, "the batch to be mined")
        # The block holding the batch is replaced by an empty one: the batch is no longer on chain.
        await on_anvil.request("anvil_reorg", [1, []])
        assert await settled_logs() == [] or (await settled_logs())[0].block_hash != first.block_hash

        async def completed() -> bool:
            await on_anvil.request("evm_mine", [])
            return (await payment_status(client, payment.name)).status == payments_pb2.PAYMENT_STATUS_COMPLETED

        await wait_for(completed, "the batch to be sent again and confirmed")
    contract = SettlementContract(chain.rpc, chain.contract)
    assert await contract.last_batch_id() == 1
    assert len(await settled_logs()) == 1
    assert await chain.token_balance("USDC", bob) == 5 * USDC
    await assert_ledger_matches_chain(chain)


async def test_a_batch_that_runs_out_of_its_gas_budget_is_sent_again_with_an_estimate(
    anvil_node: Anvil, start_server: StartServer
) -> None:
    rpc = Rpc.http(anvil_node.url)
    try:
        relayer = Relayer(rpc, anvil_node.operator, await rpc.chain_id())
        anvil_node.contract = await deploy_settlement(
            relayer, [dev_account(f"fees {i}").address for i in range(4)], 3600
        )
        # "USDC" here is a token whose transfers cost 60,000 gas more than the per-item budget allows for.
        anvil_node.tokens = {"USDC": await deploy(relayer, "CostlyToken", 60_000)}
    finally:
        await rpc.close()
    server = await start_server(**anvil_node.settings())
    chain = Chain(server)
    alice = await chain.fund("alice", {"USDC": 50 * USDC})
    async with server.client() as client:
        payment = (await client.payments.SubmitPayment(pay(alice.address, BOB, "USDC", USDC))).payment
        [settled] = await until_final(client, [payment.name])
        assert settled.status == payments_pb2.PAYMENT_STATUS_COMPLETED
        batch = (await client.payments.GetBatch(payments_pb2.GetBatchRequest(name=settled.settlement.batch))).batch
    # The first transaction ran out of gas and reverted; the second was sized by the node's estimate.
    assert batch.attempts == 2
    assert await SettlementContract(chain.rpc, chain.contract).last_batch_id() == 1
    assert await chain.token_balance("USDC", BOB) == USDC
    await assert_ledger_matches_chain(chain)


async def test_a_stuck_transaction_is_replaced_with_higher_fees(on_anvil: Anvil, start_server: StartServer) -> None:
    server = await start_server(**on_anvil.settings(tx_replace_after=0.3))
    chain = Chain(server)
    alice = await chain.fund("alice", {"USDC": 50 * USDC})
    await on_anvil.request("evm_setAutomine", [False])
    async with server.client() as client:
        payment = (
            await client.payments.SubmitPayment(pay(alice.address, dev_account("bob").address, "USDC", USDC))
        ).payment

        def versions() -> list[tuple[str, int]]:
            with ledger(server) as db:
                row = db.execute("SELECT transactions FROM batches").fetchone()
            return [(t["hash"], t["max_fee_per_gas"]) for t in json.loads(row[0])] if row else []

        async def replaced() -> bool:
            return len(versions()) >= 2

        await wait_for(replaced, "a replacement")
        sent = versions()
        assert sent[1][1] >= sent[0][1] * 1125 // 1000
        await on_anvil.request("evm_mine", [])
        await on_anvil.request("evm_setAutomine", [True])
        [settled] = await until_final(client, [payment.name])
    assert settled.status == payments_pb2.PAYMENT_STATUS_COMPLETED
    assert settled.settlement.transaction_hash in {h for h, _ in versions()}
    assert await SettlementContract(chain.rpc, chain.contract).last_batch_id() == 1
    await assert_ledger_matches_chain(chain)


async def test_while_the_rpc_is_away_payments_queue_and_nothing_is_lost(
    on_anvil: Anvil, start_server: StartServer
) -> None:
    proxy = TcpProxy(on_anvil.port)
    await proxy.start()
    try:
        url = f"http://127.0.0.1:{proxy.port}"
        server = await start_server(**on_anvil.settings(url=url, rpc_failure_threshold=2, rpc_reset_timeout=0.3))
        chain = Chain(server)
        alice = await chain.fund("alice", {"USDC": 50 * USDC})
        bob = dev_account("bob").address
        async with server.client() as client:
            health = health_pb2_grpc.HealthStub(client.channel)

            async def settlement_health() -> int:
                request = health_pb2.HealthCheckRequest(service=SETTLEMENT_HEALTH)
                return int((await health.Check(request)).status)

            assert await settlement_health() == health_pb2.HealthCheckResponse.SERVING
            await proxy.stop()
            names = [
                (await client.payments.SubmitPayment(pay(alice.address, bob, "USDC", USDC))).payment.name
                for _ in range(3)
            ]

            async def not_serving() -> bool:
                return await settlement_health() == health_pb2.HealthCheckResponse.NOT_SERVING

            await wait_for(not_serving, "settlement to report NOT_SERVING")
            assert {(await payment_status(client, n)).status for n in names} <= {
                payments_pb2.PAYMENT_STATUS_QUEUED,
                payments_pb2.PAYMENT_STATUS_PROCESSING,
            }
            await proxy.start()
            settled = await until_final(client, names)
            assert {p.status for p in settled} == {payments_pb2.PAYMENT_STATUS_COMPLETED}

            async def serving() -> bool:
                return await settlement_health() == health_pb2.HealthCheckResponse.SERVING

            await wait_for(serving, "settlement to report SERVING again")
        assert await chain.token_balance("USDC", bob) == 3 * USDC
        await assert_ledger_matches_chain(chain)
    finally:
        await proxy.stop()


async def test_an_exit_returns_what_the_service_has_not_settled_and_the_ledger_follows(
    on_anvil: Anvil, start_server: StartServer
) -> None:
    # Batches close only when full here: the payment below stays queued while alice exits.
    server = await start_server(**on_anvil.settings(batch_timeout_ms=600_000))
    chain = Chain(server)
    alice = await chain.fund("alice", {"USDC": 10 * USDC})
    async with server.client() as client:
        queued = (await client.payments.SubmitPayment(pay(alice.address, BOB, "USDC", 2 * USDC))).payment
    agent = Relayer(chain.rpc, alice, chain.connection.identity.chain_id)
    await transact(agent, chain.contract, encode_call("requestExit"))
    await on_anvil.request("evm_increaseTime", [3600])
    await on_anvil.request("evm_mine", [])
    before = await chain.token_balance("USDC", alice.address)
    await transact(agent, chain.contract, encode_call("exit", chain.tokens["USDC"]))
    # Everything alice held in the contract came back to her, the queued payment included...
    assert await chain.token_balance("USDC", alice.address) == before + 10 * USDC
    assert await SettlementContract(chain.rpc, chain.contract).balance_of(chain.tokens["USDC"], alice.address) == 0
    await chain.caught_up()
    async with server.client() as client:
        # ...so the ledger fails the payment and takes the amount out of her balance.
        failed = await payment_status(client, queued.name)
        assert failed.status == payments_pb2.PAYMENT_STATUS_FAILED
        assert "exit" in failed.failure_reason
        request = accounts_pb2.GetBalancesRequest(address=alice.address, tokens=["USDC"])
        balance = (await client.accounts.GetBalances(request)).balances[0]
        assert (balance.available, balance.reserved) == ("0", "0")
        with pytest.raises(FailedPrecondition) as refused:
            await client.payments.SubmitPayment(pay(alice.address, BOB, "USDC", USDC))
        assert refused.value.reason is Reason.INSUFFICIENT_BALANCE
    await assert_ledger_matches_chain(chain)


async def test_a_batch_formed_under_a_wrong_id_takes_the_contracts_next_one_when_it_is_signed(
    on_anvil: Anvil, start_server: StartServer
) -> None:
    # The next batch is formed while the one before it is on its way, under the id that one leaves next: a
    # forecast, wrong when that batch fails. A batch never signed takes the contract's next id instead.
    server = await start_server(**on_anvil.settings(batch_timeout_ms=3_600_000, max_batch_size=1_000))
    chain = Chain(server)
    alice = await chain.fund("alice", {"USDC": 10 * USDC})
    async with server.client() as client:
        names = [
            (await client.payments.SubmitPayment(pay(alice.address, BOB, "USDC", USDC))).payment.name for _ in "ab"
        ]
    # Formed here, not by the stage (which waits an hour for a fuller batch): one ahead of the contract (it
    # expects 1) and one at the id the first will take.
    for forecast, name in zip((7, 1), names, strict=True):
        batch = await server.service.engine.execute(OpenBatch(new_batch_id(), forecast, (name.split("/")[1],)))
        assert isinstance(batch, Batch)
        assert batch.payment_ids
    await server.service.stop()
    # At start the stage finishes what the ledger holds unfinished, oldest first.
    again = await start_server(**on_anvil.settings())
    chain = Chain(again)
    async with again.client() as client:
        settled = await until_final(client, names)
    assert {p.status for p in settled} == {payments_pb2.PAYMENT_STATUS_COMPLETED}
    assert await SettlementContract(chain.rpc, chain.contract).last_batch_id() == 2
    with ledger(again) as db:
        assert [row for row in db.execute("SELECT chain_batch_id, status FROM batches ORDER BY batch_id")] == [
            (1, 3),  # BATCH_STATUS_CONFIRMED
            (2, 3),
        ]
    assert await chain.token_balance("USDC", BOB) == 2 * USDC
    await assert_ledger_matches_chain(chain)


async def test_a_server_killed_between_sending_a_batch_and_its_receipt_settles_it_once(
    on_anvil: Anvil, tmp_path: Path
) -> None:
    rpc = Rpc.http(on_anvil.url)
    processes: list[subprocess.Popen[bytes]] = []
    try:
        operator = Relayer(rpc, on_anvil.operator, await rpc.chain_id())
        alice = dev_account("alice")
        agent = Relayer(rpc, alice, operator.chain_id)
        await fund_dev_agent(operator, agent, on_anvil.contract, on_anvil.tokens, {"USDC": 100 * USDC})
        port = free_port()
        env = {k: v for k, v in os.environ.items() if not k.startswith("AGENTFLOW_")}
        env.update(
            {
                f"AGENTFLOW_{k.upper()}": json.dumps(v) if isinstance(v, dict) else str(v)
                for k, v in on_anvil.settings().items()
            }
        )
        env.update(
            AGENTFLOW_LISTEN=f"127.0.0.1:{port}",
            AGENTFLOW_DATA_DIR=str(tmp_path / "data"),
            AGENTFLOW_ADMIN_API_KEY=ADMIN_KEY,
            AGENTFLOW_METRICS_LISTEN="",
            AGENTFLOW_LOG_LEVEL="WARNING",
        )

        async def start() -> subprocess.Popen[bytes]:
            process = _spawn_server(env)
            processes.append(process)

            async def healthy() -> bool:
                try:
                    async with AsyncClient(f"127.0.0.1:{port}", ADMIN_KEY, timeout=2) as client:
                        request = accounts_pb2.GetBalancesRequest(address=alice.address, tokens=["USDC"])
                        return (await client.accounts.GetBalances(request)).balances[0].available != "0"
                except Exception:
                    assert process.poll() is None, "the server exited"
                    return False

            await wait_for(healthy, "the server to start and credit the deposit")
            return process

        process = await start()
        await on_anvil.request("evm_setAutomine", [False])
        async with AsyncClient(f"127.0.0.1:{port}", ADMIN_KEY, timeout=10) as client:
            names = [
                (await client.payments.SubmitPayment(pay(alice.address, BOB, "USDC", 2 * USDC))).payment.name
                for _ in range(3)
            ]

        def sent() -> bool:
            with sqlite3.connect(tmp_path / "data" / "agentflow.db") as db:
                rows = db.execute("SELECT transactions FROM batches").fetchall()
            return any(json.loads(row[0]) for row in rows)

        async def batch_sent() -> bool:
            return sent()

        await wait_for(batch_sent, "the batch transaction to be recorded and sent")
        process.send_signal(signal.SIGKILL)
        process.wait(10)
        # The transaction the dead server sent is mined; it never saw the receipt.
        await on_anvil.request("evm_mine", [])
        await on_anvil.request("evm_setAutomine", [True])
        await start()
        async with AsyncClient(f"127.0.0.1:{port}", ADMIN_KEY, timeout=10) as client:
            settled = await until_final(client, names)
        assert {p.status for p in settled} == {payments_pb2.PAYMENT_STATUS_COMPLETED}
        assert await SettlementContract(rpc, on_anvil.contract).last_batch_id() == 1
        assert int(await read(rpc, on_anvil.tokens["USDC"], "balanceOf", BOB, contract="TestToken")) == 6 * USDC
        await ledger_matches(tmp_path / "data" / "agentflow.db", rpc, on_anvil.contract, on_anvil.tokens)
    finally:
        for process in processes:
            if process.poll() is None:
                process.terminate()
                process.wait(10)
        await rpc.close()


def _env_value(value: object) -> str:
    if isinstance(value, bool):
        return str(value).lower()
    return json.dumps(value) if isinstance(value, dict) else str(value)


def _spawn_server(env: dict[str, str]) -> subprocess.Popen[bytes]:
    """``agentflow serve`` in its own process, so that it can be killed outright."""
    return subprocess.Popen([str(Path(sys.executable).parent / "agentflow"), "serve"], env=env)


# -- withdrawals ----------------------------------------------------------------------------------------------


async def payer_key(server: RunningServer, address: str) -> str:
    async with server.client() as admin:
        request = admin_pb2.CreateApiKeyRequest(
            display_name="payer", scope=admin_pb2.API_KEY_SCOPE_PAYER, addresses=[address]
        )
        return str((await admin.admin.CreateApiKey(request)).secret)


async def test_a_withdrawal_pays_out_on_chain_once_and_is_refused_what_it_may_not_do(embedded: RunningServer) -> None:
    chain = Chain(embedded)
    alice = await chain.fund("alice", {"USDC": 100 * USDC, "ETH": 10**18})
    carol = dev_account("carol").address
    own_key = await payer_key(embedded, alice.address)
    other_key = await payer_key(embedded, carol)

    def withdraw(amount: int, **fields: str) -> accounts_pb2.WithdrawRequest:
        values = {"address": alice.address, "token": "USDC", "amount": str(amount), **fields}
        return accounts_pb2.WithdrawRequest(**values)

    before_alice = await chain.token_balance("USDC", alice.address)
    async with embedded.client(own_key) as client:
        first = (await client.accounts.Withdraw(withdraw(30 * USDC, request_id="w-1"))).withdrawal
        assert first.name.startswith("withdrawals/")
        assert first.status == accounts_pb2.WITHDRAWAL_STATUS_QUEUED
        assert (first.destination, first.amount) == (alice.address, str(30 * USDC))
        # The same request again is the same withdrawal; another request under its id is a conflict.
        again = (await client.accounts.Withdraw(withdraw(30 * USDC, request_id="w-1"))).withdrawal
        assert again.name == first.name
        with pytest.raises(AlreadyExists) as conflict:
            await client.accounts.Withdraw(withdraw(31 * USDC, request_id="w-1"))
        assert conflict.value.reason is Reason.IDEMPOTENCY_CONFLICT
        elsewhere = (await client.accounts.Withdraw(withdraw(20 * USDC, destination=carol.lower()))).withdrawal
        assert elsewhere.destination == carol
        with pytest.raises(FailedPrecondition) as short:
            await client.accounts.Withdraw(withdraw(51 * USDC))
        assert short.value.reason is Reason.INSUFFICIENT_BALANCE
        for bad, field in (
            (withdraw(0), "amount"),
            (withdraw(1, token="DOGE"), "token"),
            (withdraw(1, destination="0x12"), "destination"),
        ):
            with pytest.raises(InvalidArgument) as invalid:
                await client.accounts.Withdraw(bad)
            assert [v.field for v in invalid.value.field_violations] == [field]
        # A withdrawal is not a payment: payment reads do not show it.
        listed = await client.payments.ListPayments(payments_pb2.ListPaymentsRequest(payer=alice.address))
        assert list(listed.payments) == []
        with pytest.raises(NotFound):
            await client.payments.GetPayment(
                payments_pb2.GetPaymentRequest(name="payments/" + first.name.removeprefix("withdrawals/"))
            )
    async with embedded.client(other_key) as client:
        with pytest.raises(PermissionDenied):
            await client.accounts.Withdraw(withdraw(USDC))

    async def both_completed() -> bool:
        rows = await query(embedded, "SELECT resource FROM events WHERE type = 'withdrawal.completed'")
        return {resource for (resource,) in rows} == {first.name, elsewhere.name}

    await wait_for(both_completed, "the withdrawals to complete")
    assert await chain.token_balance("USDC", alice.address) == before_alice + 30 * USDC
    assert await chain.token_balance("USDC", carol) == 20 * USDC
    async with embedded.client() as client:
        balances = await client.accounts.GetBalances(
            accounts_pb2.GetBalancesRequest(address=alice.address, tokens=["USDC"])
        )
        assert (balances.balances[0].available, balances.balances[0].reserved) == (str(50 * USDC), "0")
        entries = await client.accounts.ListLedgerEntries(
            accounts_pb2.ListLedgerEntriesRequest(address=alice.address, token="USDC")
        )
        assert {e.kind for e in entries.entries} >= {accounts_pb2.LEDGER_ENTRY_KIND_WITHDRAWAL}
    rows = await query(embedded, "SELECT type FROM events WHERE resource = :name", name=first.name)
    assert [t for (t,) in rows] == ["withdrawal.queued", "withdrawal.processing", "withdrawal.completed"]
    await assert_ledger_matches_chain(chain)


async def test_a_replica_that_does_not_settle_refuses_withdrawals(server: RunningServer) -> None:
    async with server.client() as client:
        with pytest.raises(FailedPrecondition) as refused:
            await client.accounts.Withdraw(
                accounts_pb2.WithdrawRequest(address=dev_account("carol").address, token="USDC", amount="1")
            )
    assert refused.value.reason is Reason.SETTLEMENT_UNAVAILABLE


async def test_settled_fees_are_paid_out_to_the_four_recipients_and_the_ledger_follows(
    anvil_node: Anvil, start_server: StartServer
) -> None:
    rpc = Rpc.http(anvil_node.url)
    try:
        relayer = Relayer(rpc, anvil_node.operator, await rpc.chain_id())
        # The network's fee recipient cannot receive ETH: its part stays in the contract, as its own.
        rejecting = await deploy(relayer, "RejectingPayee", False)
        recipients = [
            dev_account("platform").address,
            rejecting,
            dev_account("agent").address,
            dev_account("staking").address,
        ]
        anvil_node.contract = await deploy_settlement(relayer, recipients, 3600)
        anvil_node.tokens = await deploy_dev_tokens(relayer)
    finally:
        await rpc.close()
    server = await start_server(**anvil_node.settings(fee_payout_interval=0.5))
    chain = Chain(server)
    alice = await chain.fund("alice", {"USDC": 100 * USDC, "ETH": 10**18})
    async with server.client() as client:
        names = [
            (await client.payments.SubmitPayment(pay(alice.address, BOB, "USDC", 50 * USDC))).payment.name,
            (await client.payments.SubmitPayment(pay(alice.address, BOB, "ETH", 10**17))).payment.name,
        ]
        settled = await until_final(client, names)
    usdc_fee, eth_fee = (int(p.fee.total) for p in settled)
    contract = SettlementContract(chain.rpc, chain.contract)

    async def paid_out() -> bool:
        fees = [await contract.accrued_fees(chain.tokens["USDC"]), await contract.accrued_fees(ETH_ADDRESS)]
        return fees == [0, 0]

    await wait_for(paid_out, "the fees to be paid out")
    network, agent, staking = (usdc_fee * bps // 10_000 for bps in (3_000, 2_000, 1_000))
    received = [await chain.token_balance("USDC", r) for r in recipients]
    assert received == [usdc_fee - network - agent - staking, network, agent, staking]
    assert await contract.balance_of(ETH_ADDRESS, rejecting) == eth_fee * 3_000 // 10_000
    await chain.caught_up()
    with ledger(server) as db:
        fees_left = dict(db.execute("SELECT token, available FROM accounts WHERE address = '@fees'").fetchall())
        kept = db.execute("SELECT available FROM accounts WHERE address = ? AND token = 'ETH'", (rejecting,)).fetchone()
    assert {token: int(amount) for token, amount in fees_left.items()} == {"USDC": 0, "ETH": 0}
    assert int(kept[0]) == eth_fee * 3_000 // 10_000
    await assert_ledger_matches_chain(chain)


async def test_settlement_shows_in_the_metrics(start_server: StartServer) -> None:
    server = await start_server(settlement_enabled=True, metrics_listen="127.0.0.1:0", **FAST)
    chain = Chain(server)
    alice = await chain.fund("alice", {"USDC": 10 * USDC})
    async with server.client() as client:
        payment = (await client.payments.SubmitPayment(pay(alice.address, BOB, "USDC", USDC))).payment
        await until_final(client, [payment.name])
    url = f"http://127.0.0.1:{server.service.endpoints.metrics_port}/metrics"
    text = (await asyncio.to_thread(lambda: urllib.request.urlopen(url, timeout=5).read())).decode()
    samples = {line.split(" ")[0]: float(line.split(" ")[1]) for line in text.splitlines() if line and line[0] != "#"}
    assert samples['agentflow_settlement_batches_total{outcome="confirmed"}'] == 1
    assert samples["agentflow_settlement_batch_items_sum"] == 1
    assert samples["agentflow_settlement_batch_gas_sum"] > 21_000
    assert samples["agentflow_deposits_block"] >= 1


async def test_a_batch_the_contract_keeps_refusing_fails_its_payments_after_the_retries(
    on_anvil: Anvil, start_server: StartServer
) -> None:
    server = await start_server(**on_anvil.settings(chain_retries=1))
    chain = Chain(server)
    alice = await chain.fund("alice", {"USDC": 10 * USDC})
    # The owner hands the operator role to another key: this server's batches now revert.
    owner = Relayer(chain.rpc, on_anvil.operator, chain.connection.identity.chain_id)
    await transact(owner, chain.contract, encode_call("setOperator", dev_account("new operator").address))
    async with server.client() as client:
        payment = (await client.payments.SubmitPayment(pay(alice.address, BOB, "USDC", 2 * USDC))).payment
        [failed] = await until_final(client, [payment.name])
        assert failed.status == payments_pb2.PAYMENT_STATUS_FAILED
        assert failed.failure_reason
        balance = (
            await client.accounts.GetBalances(accounts_pb2.GetBalancesRequest(address=alice.address, tokens=["USDC"]))
        ).balances[0]
        # The reservation is back: amount and fee are available again.
        assert (balance.available, balance.reserved) == (str(10 * USDC), "0")
    with ledger(server) as db:
        status, attempts = db.execute("SELECT status, attempts FROM batches").fetchone()
        types = [t for (t,) in db.execute("SELECT type FROM events WHERE resource = ?", (payment.name,))]
    assert status == 4  # BATCH_STATUS_FAILED
    assert attempts >= 1
    assert types[-1] == "payment.failed"
    assert await SettlementContract(chain.rpc, chain.contract).last_batch_id() == 0
    assert await chain.token_balance("USDC", BOB) == 0
    await assert_ledger_matches_chain(chain)
