"""``agentflow balance``, ``ledger``, ``tokens``, ``withdraw`` and ``deposit`` (its chain side: :mod:`.deposit`)."""

from __future__ import annotations

import argparse
from typing import Any

from rich.text import Text

from agentflow_payments.v1 import accounts_pb2

from .connection import Context
from .errors import ExitCode
from .output import Tokens, fields, short, status, table, timestamp
from .payments import add_amount_option, add_paging, add_wait_timeout, page_note


def register(commands: Any, parent: argparse.ArgumentParser) -> None:
    balance = commands.add_parser("balance", parents=[parent], help="show an address's balances")
    balance.add_argument("address", metavar="ADDRESS")
    balance.add_argument(
        "--token", dest="tokens", action="append", default=[], metavar="TOKEN", help="only this token (repeat)"
    )
    balance.set_defaults(run=run_balance)

    ledger = commands.add_parser(
        "ledger",
        parents=[parent],
        help="list an address's journal entries, newest first",
        description="The double-entry journal lines of ADDRESS (ListLedgerEntries): each moves money into or "
        "out of one of its buckets (available, reserved, escrowed), and names the payment, escrow, deposit or "
        "withdrawal that caused it.",
    )
    ledger.add_argument("address", metavar="ADDRESS")
    ledger.add_argument("--token", default="", help="only this token")
    add_paging(ledger)
    ledger.set_defaults(run=run_ledger)

    tokens = commands.add_parser("tokens", parents=[parent], help="list the accepted tokens and their decimals")
    tokens.set_defaults(run=run_tokens)

    withdraw = commands.add_parser(
        "withdraw",
        parents=[parent],
        help="send AMOUNT of TOKEN from ADDRESS's available balance out on chain",
        description="Take AMOUNT of TOKEN out of ADDRESS's available balance and pay it on chain, to ADDRESS or "
        "--destination, in the next settlement batch (the API key must be bound to ADDRESS).",
    )
    withdraw.add_argument("address", metavar="ADDRESS")
    withdraw.add_argument("amount", metavar="AMOUNT", help="base units, or whole tokens with --decimal")
    withdraw.add_argument("token", metavar="TOKEN")
    add_amount_option(withdraw)
    withdraw.add_argument("--destination", default="", help="pay it here instead of to ADDRESS")
    withdraw.add_argument("--request-id", help="an idempotency key: the same one withdraws once")
    withdraw.set_defaults(run=run_withdraw)

    deposit = commands.add_parser(
        "deposit",
        parents=[parent],
        help="deposit AMOUNT of TOKEN into the settlement contract, signed with your key",
        description="Sign and send a deposit to the settlement contract the server names (GetDepositInfo) through "
        "a chain node: ETH with depositETH; an ERC-20 token with approve, then depositToken. Then wait until "
        "the server credits it (deposit.confirmed) and show the balance. The key comes from AGENTFLOW_PRIVATE_KEY "
        "or --keystore (password from AGENTFLOW_KEYSTORE_PASSWORD, or asked); it is never taken as a flag, "
        "so it stays out of shell history.",
    )
    deposit.add_argument("amount", metavar="AMOUNT", help="base units, or whole tokens with --decimal")
    deposit.add_argument("token", metavar="TOKEN")
    add_amount_option(deposit)
    deposit.add_argument(
        "--for", dest="beneficiary", metavar="ADDRESS", help="credit this address (default: the signer's own)"
    )
    deposit.add_argument("--rpc-url", help="the chain node's JSON-RPC URL (env AGENTFLOW_CHAIN_RPC_URL)")
    deposit.add_argument("--keystore", metavar="FILE", help="an encrypted JSON keystore to sign with")
    deposit.add_argument("--no-wait", action="store_true", help="do not wait for the server to credit it")
    add_wait_timeout(deposit)
    deposit.set_defaults(run=run_deposit)


def balances_table(balances: list[accounts_pb2.Balance], tokens: Tokens) -> Any:
    return table(
        ["token", "available", "reserved", "escrowed", "total"],
        [
            [
                b.token,
                tokens.amount(b.available, b.token),
                tokens.amount(b.reserved, b.token),
                tokens.amount(b.escrowed, b.token),
                tokens.amount(b.total, b.token),
            ]
            for b in balances
        ],
    )


async def run_balance(ctx: Context) -> int:
    balances = await ctx.client.get_balances(ctx.args.address, ctx.args.tokens)
    if ctx.out.json_mode:
        ctx.out.document(accounts_pb2.GetBalancesResponse(balances=balances))
        return ExitCode.OK
    if balances:
        ctx.out.show(Text(balances[0].address, style="bold"), balances_table(balances, await ctx.tokens()))
    else:
        ctx.out.note("no balances")
    return ExitCode.OK


def _delta(delta: str, token: str, tokens: Tokens) -> Text:
    sign, digits = ("-", delta[1:]) if delta.startswith("-") else ("+", delta)
    return Text(f"{sign}{tokens.amount(digits, token)}", style="red" if sign == "-" else "green")


def entries_table(entries: list[accounts_pb2.LedgerEntry], tokens: Tokens) -> Any:
    return table(
        ["entry", "time", "kind", "bucket", "delta", "reference"],
        [
            [
                str(e.entry_id),
                timestamp(e.create_time),
                short(accounts_pb2.LedgerEntryKind, e.kind).lower().replace("_", " "),
                short(accounts_pb2.LedgerBucket, e.bucket).lower(),
                _delta(e.delta, e.token, tokens),
                e.reference,
            ]
            for e in entries
        ],
    )


async def run_ledger(ctx: Context) -> int:
    a = ctx.args
    page = await ctx.client.list_ledger_entries(
        a.address, token=a.token, page_size=a.page_size, page_token=a.page_token
    )
    if ctx.out.json_mode:
        response = accounts_pb2.ListLedgerEntriesResponse(entries=page.items, next_page_token=page.next_page_token)
        ctx.out.document(response)
        return ExitCode.OK
    if page.items:
        ctx.out.show(Text(page.items[0].address, style="bold"), entries_table(page.items, await ctx.tokens()))
    else:
        ctx.out.note("no ledger entries")
    page_note(ctx, page.next_page_token)
    return ExitCode.OK


async def run_tokens(ctx: Context) -> int:
    listed = await ctx.client.list_tokens()
    if ctx.out.json_mode:
        ctx.out.document(listed)
        return ExitCode.OK
    tokens = Tokens({t.symbol: t.decimals for t in listed.tokens})
    ctx.out.show(
        table(
            ["symbol", "name", "decimals", "contract", "min fee"],
            [
                [
                    t.symbol,
                    t.display_name,
                    str(t.decimals),
                    "native" if t.native else t.contract_address,
                    tokens.amount(t.min_fee, t.symbol),
                ]
                for t in listed.tokens
            ],
            title=f"chain {listed.chain_id}" if listed.chain_id else None,
        )
    )
    return ExitCode.OK


def render_withdrawal(withdrawal: accounts_pb2.Withdrawal, tokens: Tokens) -> Any:
    return fields(
        ("withdrawal", Text(withdrawal.name, style="bold")),
        ("status", status(accounts_pb2.WithdrawalStatus, withdrawal.status)),
        ("failure", Text(withdrawal.failure_reason, style="red")),
        ("address", withdrawal.address),
        ("destination", withdrawal.destination),
        ("amount", tokens.amount(withdrawal.amount, withdrawal.token, base=True)),
        ("request id", withdrawal.request_id),
        ("transaction", withdrawal.transaction_hash),
        ("block", str(withdrawal.block_number) if withdrawal.block_number else None),
        ("created", timestamp(withdrawal.create_time)),
        ("completed", timestamp(withdrawal.complete_time)),
    )


async def run_withdraw(ctx: Context) -> int:
    a = ctx.args
    amount = await ctx.amount(a.amount, a.token, a.decimal)
    withdrawal = await ctx.client.withdraw(
        a.address, a.token, amount, destination=a.destination, request_id=a.request_id
    )
    if ctx.out.json_mode:
        ctx.out.document(withdrawal)
    else:
        ctx.out.show(render_withdrawal(withdrawal, await ctx.tokens()))
        state = short(accounts_pb2.WithdrawalStatus, withdrawal.status)
        ctx.out.note(f"{state}: it is paid out in the next settlement batch (withdrawal.completed event)")
    return ExitCode.OK


async def run_deposit(ctx: Context) -> int:
    from .deposit import deposit

    return await deposit(ctx)
