"""The operator's ``agentflow`` client commands against real servers: pay, payments, escrow, events, balance,
tokens, withdraw, deposit (on anvil), keys and webhooks; their tables and their --json; and errors that name
the field at fault and exit with the code they document. Most run ``main`` in a thread (the servers live in
the test's event loop); a few run the installed command in a subprocess, for exit codes and Ctrl-C."""

from __future__ import annotations

import asyncio
import contextlib
import io
import json
import os
import pty
import re
import signal
import sys
import threading
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from eth_account import Account

from agentflow_payments import verify_webhook
from agentflow_server.chain.contract import encode_call
from agentflow_server.chain.deploy import dev_account, transact
from agentflow_server.chain.relayer import Relayer
from agentflow_server.chain.rpc import Rpc
from agentflow_server.cli import main

from .anvil import ANVIL_KEYS, free_port
from .chain import Anvil, Chain
from .conftest import ADMIN_KEY, ALICE, BOB, RunningServer, StartServer
from .receiver import Answer, Receiver
from .test_cli import _run
from .test_payments import USDC, Fund, _funder

AGENTFLOW = str(Path(sys.executable).parent / "agentflow")
UNKNOWN_PAYMENT = "payments/0661842ed33da00eb8e0bc"


@dataclass
class Result:
    code: int
    out: str
    err: str

    def json(self) -> Any:
        return json.loads(self.out)

    def lines(self) -> list[Any]:
        return [json.loads(line) for line in self.out.splitlines()]

    def error(self) -> dict[str, Any]:
        document: dict[str, Any] = json.loads(self.err)["error"]
        return document


def environment(server: RunningServer, api_key: str | None = ADMIN_KEY, **extra: str) -> dict[str, str]:
    env = {"AGENTFLOW_TARGET": server.target, **extra}
    if api_key is not None:
        env["AGENTFLOW_API_KEY"] = api_key
    return env


async def agentflow(*argv: str, env: Mapping[str, str]) -> Result:
    """``agentflow ARGV`` in-process, in a thread of its own (it runs its own event loop)."""
    out, err = io.StringIO(), io.StringIO()
    code = await asyncio.to_thread(main, list(argv), stdout=out, stderr=err, environ=dict(env))
    return Result(code, out.getvalue(), err.getvalue())


def process_env(env: Mapping[str, str]) -> dict[str, str]:
    """The test process's environment without its AGENTFLOW_* settings or a COLUMNS that would wrap lines."""
    inherited = {k: v for k, v in os.environ.items() if not k.startswith("AGENTFLOW_") and k != "COLUMNS"}
    return inherited | dict(env)


async def installed(*argv: str, env: Mapping[str, str]) -> Result:
    """The installed ``agentflow`` in a subprocess (killed after 30 s)."""
    return Result(*await _run(AGENTFLOW, *argv, env=process_env(env)))


@pytest.fixture
def fund(server: RunningServer) -> Fund:
    return _funder(server)


# -- payments ----------------------------------------------------------------------------------------------


async def test_pay_get_and_list_print_tables_and_json(server: RunningServer, fund: Fund) -> None:
    await fund(ALICE, 100 * USDC)
    env = environment(server)
    paid = await agentflow(
        "pay", ALICE, BOB, "1.5", "USDC", "--decimal", "--task-id", "job-7", "--memo", "thanks",
        "--metadata", "customer=acme", "--request-id", "cli-1", "--json", env=env,
    )  # fmt: skip
    assert paid.code == 0, paid.err
    payment = paid.json()
    assert payment["amount"] == "1500000"  # exact: whole tokens scaled by USDC's 6 decimals, never a float
    assert payment["status"] == "PAYMENT_STATUS_QUEUED"
    assert (payment["task_id"], payment["memo"], payment["metadata"]) == ("job-7", "thanks", {"customer": "acme"})
    assert payment["fee"]["total"] == "10000"
    assert payment["escrow"] == ""  # every field is there, empty ones too
    # The same request id is the same payment.
    again = await agentflow(
        "pay", ALICE, BOB, "1500000", "USDC", "--task-id", "job-7", "--memo", "thanks",
        "--metadata", "customer=acme", "--request-id", "cli-1", "--json", env=env,
    )  # fmt: skip
    assert again.json()["name"] == payment["name"]

    human = await agentflow("pay", ALICE, BOB, "2000000", "USDC", "--priority", "high", env=env)
    assert human.code == 0, human.err
    assert "QUEUED" in human.out
    assert "2 USDC (2000000)" in human.out
    assert "high" in human.out
    assert "agentflow payments watch payments/" in human.err

    got = await agentflow("payments", "get", payment["name"].removeprefix("payments/"), "--json", env=env)
    assert got.json() == payment
    shown = await agentflow("payments", "get", payment["name"], env=env)
    assert payment["name"] in shown.out
    assert "1.5 USDC (1500000)" in shown.out
    assert "customer=acme" in shown.out

    listed = await agentflow("payments", "list", "--payer", ALICE, "--json", env=env)
    assert [p["amount"] for p in listed.json()["payments"]] == ["2000000", "1500000"]
    assert listed.json()["next_page_token"] == ""
    page = await agentflow("payments", "list", "--page-size", "1", env=env)
    assert page.out.count("payments/") == 1
    assert "--page-token" in page.err
    table = await agentflow("payments", "list", "--status", "queued", env=env)
    assert payment["name"] in table.out
    assert ALICE in table.out  # addresses are never cut


async def test_bad_fields_are_named_with_the_argument_and_exit_2(server: RunningServer) -> None:
    env = environment(server)
    bad = await agentflow("pay", "0x123", BOB, "1", "USDC", env=env)
    assert bad.code == 2
    assert "payer (PAYER): must be a 0x-prefixed 20-byte hex address" in bad.err
    assert "Traceback" not in bad.err

    as_json = await agentflow("pay", ALICE, ALICE, "1", "BTC", "--json", env=env)
    assert as_json.code == 2
    assert as_json.out == ""
    error = as_json.error()
    assert {v["field"] for v in error["field_violations"]} >= {"payee (PAYEE)", "token (TOKEN)"}
    assert error["exit_code"] == 2

    for argv, message in [
        (("1.5", "USDC"), "add --decimal"),
        (("1.0000001", "USDC", "--decimal"), "more decimal places than USDC has (6)"),
        (("1e6", "USDC"), "not a number of base units"),
        (("1", "BTC", "--decimal"), "'BTC' is not an accepted token"),
        (("1", "USDC", "--metadata", "novalue"), "is not key=value"),
        (("1", "USDC", "--priority", "asap"), "invalid choice"),
    ]:
        result = await agentflow("pay", ALICE, BOB, *argv, env=env)
        assert (result.code, message in result.err) == (2, True), (argv, result.err)
        assert "Traceback" not in result.err


async def test_insufficient_balance_says_deposit_more_and_exits_1(server: RunningServer, fund: Fund) -> None:
    await fund(ALICE, 5 * USDC)
    env = environment(server)
    refused = await agentflow("pay", ALICE, BOB, "5", "USDC", "--decimal", env=env)
    assert refused.code == 1
    assert "INSUFFICIENT_BALANCE" in refused.err
    assert "deposit more (agentflow deposit) or lower the amount" in refused.err
    as_json = await agentflow("pay", ALICE, BOB, "5000000", "USDC", "--json", env=env)
    assert as_json.code == 1
    assert as_json.error()["reason"] == "INSUFFICIENT_BALANCE"
    assert as_json.error()["metadata"]["required"] == "5015000"  # and the fee, 0.3%


async def test_not_found_missing_invalid_and_unscoped_keys(server: RunningServer, create_key: Any) -> None:
    missing = await agentflow("payments", "get", UNKNOWN_PAYMENT, env=environment(server))
    assert missing.code == 6
    assert "PAYMENT_NOT_FOUND" in missing.err

    no_key = await agentflow("payments", "get", UNKNOWN_PAYMENT, env=environment(server, None))
    assert no_key.code == 5
    assert "API_KEY_MISSING" in no_key.err
    assert "--api-key KEY or set AGENTFLOW_API_KEY" in no_key.err

    wrong = await agentflow("balance", ALICE, "--api-key", "afk_not_a_key_of_this_server", env=environment(server))
    assert wrong.code == 5
    assert "API_KEY_INVALID" in wrong.err

    payer = (await create_key(2, (ALICE,))).secret  # PAYER
    unscoped = await agentflow("keys", "list", env=environment(server, payer))
    assert unscoped.code == 5
    assert "use a key of scope admin" in unscoped.err
    not_bound = await agentflow("pay", BOB, ALICE, "1", "USDC", env=environment(server, payer))
    assert not_bound.code == 5
    assert "ADDRESS_NOT_ALLOWED" in not_bound.err


async def test_the_installed_command_exits_with_its_codes_and_never_a_traceback(server: RunningServer) -> None:
    env = environment(server)
    down = f"127.0.0.1:{free_port()}"
    results = await asyncio.gather(
        installed("pay", "not-an-address", BOB, "1", "USDC", env=env),
        installed("balance", ALICE, "--target", down, env=env),
        installed("payments", "get", UNKNOWN_PAYMENT, env=environment(server, None)),
        installed("payments", "watch", UNKNOWN_PAYMENT, env=env),
        installed("pay", ALICE, env=env),
        installed("balance", ALICE, "--target", "http://example.com", env=env),
        installed("--help", env=env),
    )
    codes = [result.code for result in results]
    assert codes == [2, 4, 5, 6, 2, 2, 0], [(r.code, r.err) for r in results]
    assert "payer (PAYER)" in results[0].err
    assert f"cannot reach the server at {down}: connection refused" in results[1].err
    assert "agentflow dev" in results[1].err
    assert "the following arguments are required: PAYEE, AMOUNT, TOKEN" in results[4].err
    assert "is not host:port" in results[5].err
    assert "exit codes:" in results[6].out
    assert "130  interrupted" in results[6].out
    for result in results:
        assert "Traceback" not in result.err


async def test_ctrl_c_stops_a_tail_with_130_and_no_traceback(server: RunningServer) -> None:
    full = process_env(environment(server))
    process = await asyncio.create_subprocess_exec(
        AGENTFLOW, "events", "tail", env=full, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE
    )
    assert process.stderr is not None
    try:
        following = await asyncio.wait_for(process.stderr.readline(), 15)
        assert b"following the event log (Ctrl-C stops)" in following
        process.send_signal(signal.SIGINT)
        _, err = await asyncio.wait_for(process.communicate(), 15)
    finally:
        if process.returncode is None:
            process.kill()
            await process.wait()
    assert process.returncode == 130
    assert "interrupted" in err.decode()
    assert "Traceback" not in err.decode()


# -- payments that settle, watches and withdrawals on the embedded chain -----------------------------------


async def test_pay_wait_follows_the_payment_to_completed_on_the_embedded_chain(embedded: RunningServer) -> None:
    alice = (await Chain(embedded).fund("alice", {"USDC": 100 * USDC})).address
    bob = dev_account("bob").address
    env = environment(embedded)
    waited = await agentflow("pay", alice, bob, "1.5", "USDC", "--decimal", "--wait", env=env)
    assert waited.code == 0, waited.err
    lines = waited.out.splitlines()
    assert lines[0].startswith("accepted payments/")
    assert "1.5 USDC + fee 0.01 USDC" in lines[0]
    states = [line.split()[2] for line in lines[1:]]
    assert states[0] == "QUEUED"
    assert states[-1] == "COMPLETED"
    # While it is processing, the batch carrying it is named.
    processing = [line for line in lines[1:] if "PROCESSING" in line]
    assert processing, lines
    assert all(re.search(r"PROCESSING payments/\S+  in batches/", line) for line in processing), lines
    assert "transaction 0x" in lines[-1]

    as_json = await agentflow("pay", alice, bob, "2500000", "USDC", "--wait", "--json", env=env)
    assert as_json.code == 0, as_json.err
    final = as_json.json()
    assert final["status"] == "PAYMENT_STATUS_COMPLETED"
    assert final["settlement"]["transaction_hash"].startswith("0x")
    assert int(final["settlement"]["block_number"]) > 0

    watched = await agentflow("payments", "watch", final["name"], "--json", env=env)
    assert watched.code == 0
    assert [p["status"] for p in watched.lines()] == ["PAYMENT_STATUS_COMPLETED"]

    withdrawn = await agentflow("withdraw", alice, "10", "USDC", "--decimal", "--json", env=env)
    assert withdrawn.code == 0, withdrawn.err
    assert (withdrawn.json()["amount"], withdrawn.json()["status"]) == ("10000000", "WITHDRAWAL_STATUS_QUEUED")

    # The embedded chain lives inside the server: no node takes a deposit for it.
    deposit = await agentflow(
        "deposit", "1", "USDC", env=environment(embedded, AGENTFLOW_PRIVATE_KEY=dev_account("carol").key.hex())
    )
    assert deposit.code == 2
    assert "embedded in-process chain" in deposit.err
    assert "anvil" in deposit.err
    assert "AGENTFLOW_CHAIN_RPC_URL" in deposit.err


async def test_pay_wait_shows_a_progress_bar_on_a_terminal_and_keeps_stdout_clean(embedded: RunningServer) -> None:
    alice = (await Chain(embedded).fund("alice", {"USDC": 100 * USDC})).address
    controller, terminal_fd = pty.openpty()
    terminal = os.fdopen(terminal_fd, "w", encoding="utf-8")
    shown: list[bytes] = []

    def read_terminal() -> None:
        with contextlib.suppress(OSError):  # EIO once the terminal side is closed
            while data := os.read(controller, 65536):
                shown.append(data)

    reader = threading.Thread(target=read_terminal)
    reader.start()
    out = io.StringIO()
    argv = ["pay", alice, dev_account("bob").address, "1", "USDC", "--decimal", "--wait"]
    env = environment(embedded, COLUMNS="120")
    try:
        code = await asyncio.to_thread(main, argv, stdout=out, stderr=terminal, environ=env)
    finally:
        terminal.close()
        await asyncio.to_thread(reader.join, 5)
        os.close(controller)
    assert code == 0
    drawn = b"".join(shown).decode(errors="replace")
    assert "━" in drawn, "a bar was drawn on the terminal"
    assert re.search(r"[123]/3", drawn), drawn
    assert "━" not in out.getvalue(), "stdout has the results only"
    assert "COMPLETED" in out.getvalue()


async def test_watch_a_cancelled_payment_exits_7_and_a_timeout_8(server: RunningServer, fund: Fund) -> None:
    await fund(ALICE, 100 * USDC)
    env = environment(server)  # this server does not settle: payments stay QUEUED
    name = (await agentflow("pay", ALICE, BOB, "1000000", "USDC", "--json", env=env)).json()["name"]
    timed_out = await agentflow("payments", "watch", name, "--wait-timeout", "0.5", env=env)
    assert timed_out.code == 8
    assert "QUEUED" in timed_out.out
    assert f"gave up waiting after 0.5 s: {name} is QUEUED" in timed_out.err

    cancelled = await agentflow("payments", "cancel", name, "--reason", "changed my mind", env=env)
    assert cancelled.code == 0, cancelled.err
    assert "CANCELLED" in cancelled.out
    watched = await agentflow("payments", "watch", name, env=env)
    assert watched.code == 7
    assert "CANCELLED" in watched.out
    assert f"{name} ended CANCELLED" in watched.err
    again = await agentflow("payments", "cancel", name, env=env)
    assert again.code == 1
    assert "PAYMENT_NOT_CANCELLABLE" in again.err

    no_chain = await agentflow("withdraw", ALICE, "1", "USDC", env=env)
    assert no_chain.code == 1
    assert "SETTLEMENT_UNAVAILABLE" in no_chain.err


# -- events ------------------------------------------------------------------------------------------------


async def test_events_tail_prints_lines_or_json_lines_and_stops_after_count(server: RunningServer, fund: Fund) -> None:
    await fund(ALICE, 100 * USDC)
    env = environment(server)
    for amount in ("1000000", "2000000"):
        assert (await agentflow("pay", ALICE, BOB, amount, "USDC", "--task-id", "tail", env=env)).code == 0

    as_json = await agentflow("events", "tail", "--from", "1", "--count", "3", "--json", env=env)
    assert as_json.code == 0, as_json.err
    events = as_json.lines()
    assert [(e["sequence"], e["type"]) for e in events] == [
        ("1", "deposit.confirmed"),
        ("2", "payment.created"),
        ("3", "payment.queued"),
    ]
    assert events[1]["payment"]["amount"] == "1000000"

    human = await agentflow("events", "tail", "--from", "1", "--type", "payment.*", "--count", "2", env=env)
    assert human.code == 0, human.err
    lines = human.out.splitlines()
    assert len(lines) == 2
    assert "payment.created" in lines[0]
    assert "payment.queued" in lines[1]
    assert "1 USDC" in lines[0]
    assert "task tail" in lines[0]

    # Follows live: the cancellation happens after the tail has started.
    tail = asyncio.create_task(
        agentflow("events", "tail", "--type", "payment.cancelled", "--address", ALICE, "--count", "1", env=env)
    )
    await asyncio.sleep(1)
    name = (await agentflow("payments", "list", "--json", env=env)).json()["payments"][0]["name"]
    assert (await agentflow("payments", "cancel", name, env=env)).code == 0
    followed = await asyncio.wait_for(tail, 15)
    assert followed.code == 0, followed.err
    assert "payment.cancelled" in followed.out
    assert name in followed.out

    short = await agentflow("events", "tail", "--task-id", "tail", "--count", "5", "--duration", "0.5", env=env)
    assert short.code == 8
    assert "0 of 5 event(s) came in 0.5 s" in short.err
    bad = await agentflow("events", "tail", "--type", "payments", "--count", "1", env=env)
    assert bad.code == 2
    assert "filter.types[0]" in bad.err


# -- escrow ------------------------------------------------------------------------------------------------


async def test_escrow_create_release_dispute_resolve_get_list(
    server: RunningServer, fund: Fund, create_key: Any
) -> None:
    await fund(ALICE, 100 * USDC)
    payer = environment(server, (await create_key(2, (ALICE,))).secret)
    admin = environment(server)
    created = await agentflow(
        "escrow", "create", ALICE, BOB, "40", "USDC", "--decimal", "--task-id", "translate-42", "--expires", "2d",
        "--json", env=payer,
    )  # fmt: skip
    assert created.code == 0, created.err
    escrow = created.json()
    assert (escrow["amount"], escrow["held_amount"], escrow["status"]) == (
        "40000000",
        "40000000",
        "ESCROW_STATUS_ACTIVE",
    )
    name = escrow["name"]

    released = await agentflow("escrow", "release", name, "--amount", "15", "--decimal", "--json", env=payer)
    assert released.code == 0, released.err
    assert released.json()["escrow"]["held_amount"] == "25000000"
    assert released.json()["payment"]["amount"] == "15000000"

    disputed = await agentflow("escrow", "dispute", name, "--reason", "half missing", "--raised-by", ALICE, env=payer)
    assert disputed.code == 0, disputed.err
    assert "DISPUTED" in disputed.out
    assert "half missing" in disputed.out

    resolved = await agentflow(
        "escrow", "resolve", name, "--payee-amount", "10", "--payer-amount", "15", "--decimal", "--note", "split",
        env=admin,
    )  # fmt: skip
    assert resolved.code == 0, resolved.err
    assert "RESOLVED" in resolved.out
    assert "10 USDC (10000000)" in resolved.out  # the payment the resolution made

    shown = await agentflow("escrow", "get", name.removeprefix("escrows/"), env=payer)
    assert "refunded" in shown.out
    assert "15 USDC" in shown.out
    listed = await agentflow("escrow", "list", "--payer", ALICE, "--json", env=payer)
    assert [e["status"] for e in listed.json()["escrows"]] == ["ESCROW_STATUS_RESOLVED"]
    table = await agentflow("escrow", "list", env=payer)
    assert name in table.out

    over = await agentflow("escrow", "refund", name, env=admin)
    assert over.code == 1
    assert "ESCROW_NOT_ACTIVE" in over.err
    assert f"agentflow escrow get {name}" in over.err
    unknown = await agentflow("escrow", "get", "escrows/0661842fad1f97e62543a6", env=admin)
    assert unknown.code == 6
    expiry = await agentflow("escrow", "create", ALICE, BOB, "1", "USDC", "--expires", "next week", env=payer)
    assert expiry.code == 2
    assert "--expires: 'next week' is neither a duration nor a time" in expiry.err


# -- accounts ----------------------------------------------------------------------------------------------


async def test_balance_and_tokens(server: RunningServer, fund: Fund) -> None:
    await fund(ALICE, 12_345_678)
    await fund(ALICE, 2 * 10**18, "ETH")
    env = environment(server)
    shown = await agentflow("balance", ALICE, env=env)
    assert shown.code == 0, shown.err
    assert ALICE in shown.out
    usdc = next(line for line in shown.out.splitlines() if line.startswith("USDC"))
    assert usdc.split()[1:3] == ["12.345678", "USDC"]
    as_json = await agentflow("balance", ALICE, "--token", "ETH", "--json", env=env)
    assert as_json.json() == {
        "balances": [
            {
                "address": ALICE,
                "token": "ETH",
                "available": "2000000000000000000",
                "reserved": "0",
                "escrowed": "0",
                "total": "2000000000000000000",
            }
        ]
    }
    tokens = await agentflow("tokens", "--json", env=env)
    assert {t["symbol"]: t["decimals"] for t in tokens.json()["tokens"]}["USDC"] == 6
    assert "Ether" in (await agentflow("tokens", env=env)).out
    bad = await agentflow("balance", "0xnope", env=env)
    assert bad.code == 2
    assert "address: must be a 0x-prefixed" in bad.err


async def test_quote_shows_the_fee_acceptance_then_charges(server: RunningServer, fund: Fund) -> None:
    await fund(ALICE, 1000 * USDC)
    env = environment(server)
    quoted = await agentflow("quote", ALICE, "10", "USDC", "--decimal", "--json", env=env)
    assert quoted.code == 0, quoted.err
    paid = await agentflow("pay", ALICE, BOB, "10", "USDC", "--decimal", "--json", env=env)
    assert paid.json()["fee"] == quoted.json()
    assert quoted.json()["total"] == "30000"  # 0.3% of 10 USDC

    shown = await agentflow("quote", ALICE, "10000000", "USDC", "--priority", "urgent", env=env)
    assert shown.code == 0, shown.err
    lines = {line.split()[0]: line.split()[1:] for line in shown.out.splitlines()}
    assert lines["fee"] == ["0.03", "USDC", "(30000)"]
    assert lines["base"][:4] == ["0.03", "USDC", "(30000):", "30"]
    assert (lines["platform"], lines["network"], lines["agent"], lines["staking"]) == (
        ["0.012", "USDC"],
        ["0.009", "USDC"],
        ["0.006", "USDC"],
        ["0.003", "USDC"],
    )

    bad = await agentflow("quote", "0x123", "1", "BTC", env=env)
    assert bad.code == 2
    assert "payer (PAYER): must be a 0x-prefixed 20-byte hex address" in bad.err
    assert "token (TOKEN): 'BTC' is not an accepted token" in bad.err
    assert (await agentflow("quote", ALICE, "1.5", "USDC", env=env)).code == 2  # whole tokens need --decimal


async def test_ledger_lists_an_addresses_journal_newest_first_in_pages(server: RunningServer, fund: Fund) -> None:
    await fund(ALICE, 1000 * USDC)
    env = environment(server)
    assert (await agentflow("pay", ALICE, BOB, "10", "USDC", "--decimal", env=env)).code == 0
    listed = await agentflow("ledger", ALICE, "--json", env=env)
    assert listed.code == 0, listed.err
    entries = listed.json()["entries"]
    assert [(e["kind"], e["bucket"], e["delta"]) for e in entries] == [
        ("LEDGER_ENTRY_KIND_PAYMENT_RESERVE", "LEDGER_BUCKET_RESERVED", "10030000"),
        ("LEDGER_ENTRY_KIND_PAYMENT_RESERVE", "LEDGER_BUCKET_AVAILABLE", "-10030000"),
        ("LEDGER_ENTRY_KIND_DEPOSIT", "LEDGER_BUCKET_AVAILABLE", str(1000 * USDC)),
    ]

    shown = await agentflow("ledger", ALICE, "--page-size", "2", env=env)
    assert shown.code == 0, shown.err
    rows = [line.split() for line in shown.out.splitlines() if line.split() and line.split()[0].isdigit()]
    assert [row[3:8] for row in rows] == [
        ["payment", "reserve", "reserved", "+10.03", "USDC"],
        ["payment", "reserve", "available", "-10.03", "USDC"],
    ]
    token = re.search(r"more: --page-token (\S+)", shown.err)
    assert token is not None, shown.err
    rest = await agentflow("ledger", ALICE, "--page-token", token.group(1), "--json", env=env)
    assert [e["kind"] for e in rest.json()["entries"]] == ["LEDGER_ENTRY_KIND_DEPOSIT"]
    assert "no ledger entries" in (await agentflow("ledger", BOB, "--token", "ETH", env=env)).err


# -- deposits on anvil -------------------------------------------------------------------------------------


async def test_deposits_on_anvil_are_signed_sent_and_credited(
    on_anvil: Anvil, start_server: StartServer, tmp_path: Path
) -> None:
    server = await start_server(**on_anvil.settings())
    signer = Account.from_key(ANVIL_KEYS[1])
    rpc = Rpc.http(on_anvil.url)
    try:  # the signer gets USDC to deposit (the operator deployed the token and mints it)
        operator = Relayer(rpc, on_anvil.operator, await rpc.chain_id())
        mint = encode_call("mint", signer.address, 30 * USDC, contract="TestToken")
        await transact(operator, on_anvil.tokens["USDC"], mint)
    finally:
        await rpc.close()
    env = environment(server, AGENTFLOW_PRIVATE_KEY=ANVIL_KEYS[1], AGENTFLOW_CHAIN_RPC_URL=on_anvil.url)

    eth = await agentflow("deposit", "1.5", "ETH", "--decimal", "--wait-timeout", "30", env=env)
    assert eth.code == 0, eth.err
    assert f"deposited 1.5 ETH for {signer.address}" in eth.out
    assert "credited" in eth.out
    assert "1.5 ETH" in next(line for line in eth.out.splitlines() if line.startswith("ETH"))

    usdc = await agentflow("deposit", "25", "USDC", "--decimal", "--for", BOB, "--json", env=env)
    assert usdc.code == 0, usdc.err
    credited = usdc.json()
    assert (credited["beneficiary"], credited["depositor"]) == (BOB, signer.address)
    assert (credited["token"], credited["amount"]) == ("USDC", "25000000")
    assert credited["transaction_hash"].startswith("0x")
    balance = await agentflow("balance", BOB, "--token", "USDC", "--json", env=env)
    assert balance.json()["balances"][0]["available"] == "25000000"

    short = await agentflow("deposit", "10", "USDC", "--decimal", env=env)  # 5 USDC left on chain
    assert short.code == 1
    assert "holds 5 USDC on chain; the deposit needs 10" in short.err

    keystore = tmp_path / "key.json"
    keystore.write_text(json.dumps(Account.encrypt(ANVIL_KEYS[1], "secret", kdf="pbkdf2", iterations=1000)))
    by_keystore = {**env, "AGENTFLOW_PRIVATE_KEY": "", "AGENTFLOW_KEYSTORE_PASSWORD": "secret"}
    sent = await agentflow(
        "deposit", "1000", "ETH", "--keystore", str(keystore), "--no-wait", "--json", env=by_keystore
    )
    assert sent.code == 0, sent.err
    assert (sent.json()["amount"], sent.json()["depositor"]) == ("1000", signer.address)
    wrong = await agentflow(
        "deposit", "1", "ETH", "--keystore", str(keystore), env={**by_keystore, "AGENTFLOW_KEYSTORE_PASSWORD": "no"}
    )
    assert wrong.code == 2
    assert "wrong password" in wrong.err
    node_down = await agentflow("deposit", "1", "ETH", "--rpc-url", f"http://127.0.0.1:{free_port()}", env=env)
    assert node_down.code == 4
    assert "cannot reach the chain node" in node_down.err


# -- keys --------------------------------------------------------------------------------------------------


async def test_keys_create_list_revoke(server: RunningServer) -> None:
    admin = environment(server)
    created = await agentflow(
        "keys", "create", "alice agent", "--scope", "payer", "--address", ALICE, "--rate-limit", "60", "--burst", "5",
        "--json", env=admin,
    )  # fmt: skip
    assert created.code == 0, created.err
    key = created.json()
    assert key["secret"].startswith("afk_")
    assert (key["api_key"]["scope"], key["api_key"]["addresses"]) == ("API_KEY_SCOPE_PAYER", [ALICE])
    assert key["api_key"]["rate_limit"] == {"requests_per_minute": 60, "burst": 5}
    assert (await agentflow("balance", ALICE, env=environment(server, key["secret"]))).code == 0

    human = await agentflow("keys", "create", "dashboard", "--scope", "read-only", "--expires", "30d", env=admin)
    assert human.code == 0, human.err
    assert "read-only" in human.out
    assert "secret  afk_" in human.out
    assert "shown this once" in human.err

    listed = await agentflow("keys", "list", "--json", env=admin)
    names = {k["display_name"]: k["name"] for k in listed.json()["api_keys"]}
    assert names["alice agent"] == key["api_key"]["name"]
    table = await agentflow("keys", "list", env=admin)
    assert "alice agent" in table.out
    assert ALICE in table.out

    revoked = await agentflow("keys", "revoke", key["api_key"]["name"].removeprefix("apiKeys/"), env=admin)
    assert revoked.code == 0, revoked.err
    assert "revoked" in revoked.out
    refused = await agentflow("balance", ALICE, env=environment(server, key["secret"]))
    assert refused.code == 5
    assert "API_KEY_REVOKED" in refused.err
    assert "ask an admin for a new one" in refused.err
    assert "alice agent" not in (await agentflow("keys", "list", env=admin)).out
    assert "alice agent" in (await agentflow("keys", "list", "--all", env=admin)).out

    bad = await agentflow("keys", "create", "x", "--scope", "payer", "--address", "0xabc", env=admin)
    assert bad.code == 2
    assert "addresses[0] (--address)" in bad.err
    unknown = await agentflow("keys", "revoke", "apiKeys/ffffffffffffffff", env=admin)
    assert unknown.code == 6


# -- webhooks ----------------------------------------------------------------------------------------------


async def test_webhooks_add_list_test_and_deliveries(
    start_server: StartServer, receiver: Receiver, tmp_path: Path
) -> None:
    server = await start_server(
        webhook_allow_private=True, webhook_retry_initial=0.05, webhook_max_retries=0, data_dir=tmp_path / "hooks"
    )
    env = environment(server)
    added = await agentflow(
        "webhooks", "add", receiver.url, "--type", "payment.*", "--description", "ledger", "--json", env=env
    )
    assert added.code == 0, added.err
    secret = added.json()["secret"]
    webhook = added.json()["webhook"]
    assert secret.startswith("whsec_")
    assert webhook["event_types"] == ["payment.*"]
    name = webhook["name"]

    human = await agentflow("webhooks", "add", receiver.url + "/2", env=env)
    assert "secret   whsec_" in human.out
    assert "shown this once" in human.err
    listed = await agentflow("webhooks", "list", env=env)
    assert name in listed.out
    assert receiver.url in listed.out
    assert len((await agentflow("webhooks", "list", "--json", env=env)).json()["webhooks"]) == 2

    tested = await agentflow("webhooks", "test", name.removeprefix("webhooks/"), env=env)
    assert tested.code == 0, tested.err
    assert "accepted" in tested.out
    assert "HTTP 200" in tested.out
    (arrived,) = await receiver.wait_for(1)
    assert verify_webhook(arrived.headers, arrived.body, secret)  # signed with the secret add printed

    receiver.default = Answer(status=500, body=b"down for maintenance")
    failing = await agentflow("webhooks", "test", name, "--json", env=env)
    assert failing.code == 7
    assert failing.json()["http_status"] == 500
    assert "answered HTTP 500" in failing.error()["message"]
    receiver.default = Answer()

    await _funder(server)(ALICE, 10 * USDC)
    assert (await agentflow("pay", ALICE, BOB, "1000000", "USDC", env=env)).code == 0
    await receiver.wait_for(3)  # the test, then payment.created and payment.queued (the second hook: /2)
    for _ in range(100):
        deliveries = await agentflow("webhooks", "deliveries", name, "--json", env=env)
        done = [d for d in deliveries.json()["deliveries"] if d["status"] == "WEBHOOK_DELIVERY_STATUS_SUCCEEDED"]
        if len(done) == 2:
            break
        await asyncio.sleep(0.1)
    assert sorted(d["event_type"] for d in done) == ["payment.created", "payment.queued"]
    table = await agentflow("webhooks", "deliveries", name, env=env)
    assert "payment.queued" in table.out
    assert "SUCCEEDED" in table.out

    unknown = await agentflow("webhooks", "test", "webhooks/0661842fad1f97e62543a6", env=env)
    assert unknown.code == 6


async def test_private_webhook_urls_are_refused_with_the_setting_to_allow_them(server: RunningServer) -> None:
    refused = await agentflow("webhooks", "add", "http://127.0.0.1:9/hooks", env=environment(server))
    assert refused.code == 2
    assert "url (URL)" in refused.err
    assert "AGENTFLOW_WEBHOOK_ALLOW_PRIVATE=true" in refused.err
