"""``agentflow pay``, ``agentflow quote`` and ``agentflow payments list|get|watch|cancel``."""

from __future__ import annotations

import argparse
import asyncio
from typing import Any

from rich.text import Text

from agentflow_payments.v1 import common_pb2, payments_pb2

from . import units
from .connection import Context, seconds
from .errors import CliError, ExitCode
from .output import Tokens, choices, fields, short, status, table, timestamp

PAYMENT_FIELDS = {
    "payer": "PAYER",
    "payee": "PAYEE",
    "amount": "AMOUNT",
    "token": "TOKEN",
    "task_id": "--task-id",
    "memo": "--memo",
    "metadata": "--metadata",
    "request_id": "--request-id",
}
"""Request fields and the arguments that set them, so an error names what to change."""

QUOTE_FIELDS = {"payer": "PAYER", "amount": "AMOUNT", "token": "TOKEN", "priority": "--priority"}


def register(commands: Any, parent: argparse.ArgumentParser) -> None:
    pay = commands.add_parser(
        "pay",
        parents=[parent],
        help="pay AMOUNT of TOKEN from PAYER to PAYEE",
        description="Submit a payment. The answer comes once it is durably queued (QUEUED, with its fee); "
        "--wait follows it until it is settled on chain.",
        epilog="AMOUNT is in base units (1500000 is 1.5 USDC) unless --decimal says it is in whole tokens.",
    )
    pay.add_argument("payer", metavar="PAYER", help="the address that pays (the API key must be bound to it)")
    pay.add_argument("payee", metavar="PAYEE", help="the address paid")
    pay.add_argument("amount", metavar="AMOUNT", help="base units, or whole tokens with --decimal")
    pay.add_argument("token", metavar="TOKEN", help="ETH, USDC, USDT, DAI, WETH... (agentflow tokens)")
    add_amount_option(pay)
    pay.add_argument("--priority", choices=choices(common_pb2.Priority), help="settlement priority (default normal)")
    pay.add_argument("--task-id", default="", help="the task this pays for")
    pay.add_argument("--memo", default="", help="a note kept with the payment")
    pay.add_argument("--metadata", action="append", metavar="KEY=VALUE", help="a metadata entry (repeat for more)")
    pay.add_argument("--request-id", help="an idempotency key: the same one with the same payment pays once")
    pay.add_argument("--wait", action="store_true", help="follow the payment until it is COMPLETED (or fails)")
    add_wait_timeout(pay)
    pay.set_defaults(run=run_pay, field_options=PAYMENT_FIELDS)

    quote = commands.add_parser(
        "quote",
        parents=[parent],
        help="show the fee a payment of AMOUNT of TOKEN from PAYER would be charged now",
        description="Ask the server (QuoteFee) for the fee it would fix if PAYER paid AMOUNT of TOKEN now: the "
        "same breakdown acceptance would charge, with its rate, adjustments and split. A fee moves with the "
        "queue's depth and the payer's volume, so a payment submitted later may be charged another.",
        epilog="AMOUNT is in base units (1500000 is 1.5 USDC) unless --decimal says it is in whole tokens. A "
        "payer key may ask only for its own addresses.",
    )
    quote.add_argument("payer", metavar="PAYER", help="the address that would pay (its volume sets the discount)")
    quote.add_argument("amount", metavar="AMOUNT", help="base units, or whole tokens with --decimal")
    quote.add_argument("token", metavar="TOKEN", help="ETH, USDC, USDT, DAI, WETH... (agentflow tokens)")
    add_amount_option(quote)
    quote.add_argument("--priority", choices=choices(common_pb2.Priority), help="settlement priority (default normal)")
    quote.set_defaults(run=run_quote, field_options=QUOTE_FIELDS)

    group = commands.add_parser("payments", help="list, show, follow and cancel payments")
    sub = group.add_subparsers(dest="action", required=True, metavar="ACTION")

    listing = sub.add_parser("list", parents=[parent], help="list payments, newest first")
    listing.add_argument("--payer", default="", help="only those paid by this address")
    listing.add_argument("--payee", default="", help="only those paid to this address")
    listing.add_argument("--task-id", default="", help="only those of this task")
    listing.add_argument("--status", choices=choices(payments_pb2.PaymentStatus), help="only those in this status")
    listing.add_argument("--token", default="", help="only those in this token")
    add_paging(listing)
    listing.set_defaults(run=run_list)

    get = sub.add_parser("get", parents=[parent], help="show one payment")
    get.add_argument("name", metavar="NAME", help="payments/ID (or the ID)")
    get.set_defaults(run=run_get)

    watch = sub.add_parser(
        "watch",
        parents=[parent],
        help="follow a payment until it is final",
        description="Show a payment's state, then each change until it is COMPLETED, FAILED or CANCELLED. "
        "Exits 0 when it completes, 7 when it fails or is cancelled.",
    )
    watch.add_argument("name", metavar="NAME", help="payments/ID (or the ID)")
    add_wait_timeout(watch)
    watch.set_defaults(run=run_watch)

    cancel = sub.add_parser("cancel", parents=[parent], help="cancel a payment that is still QUEUED")
    cancel.add_argument("name", metavar="NAME", help="payments/ID (or the ID)")
    cancel.add_argument("--reason", default="", help="why, kept with the payment")
    cancel.set_defaults(run=run_cancel)


def add_amount_option(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--decimal",
        action="store_true",
        help="amounts are in whole tokens (1.5 USDC), converted exactly with the token's decimals",
    )


def add_wait_timeout(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--wait-timeout",
        type=seconds,
        metavar="SECONDS",
        help="give up waiting after this long (exit 8; the payment goes on)",
    )


def add_paging(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--page-size", type=int, default=0, help="at most this many (the server's default if 0)")
    parser.add_argument("--page-token", default="", help="the next page, as the previous one said")


def page_note(ctx: Context, token: str) -> None:
    if token:
        ctx.out.note(f"more: --page-token {token}")


# -- rendering ---------------------------------------------------------------------------------------------


def render_payment(payment: payments_pb2.Payment, tokens: Tokens) -> Any:
    settlement = payment.settlement if payment.HasField("settlement") else None
    fee = payment.fee
    fee_text = tokens.amount(fee.total, payment.token, base=True) if fee.total else ""
    if fee_text and (fee.volume_discount_bps or fee.batch_discount_bps or fee.congestion_adjustment_bps):
        fee_text += (
            f" (rate {fee.rate_bps} bps, congestion {fee.congestion_adjustment_bps:+d}, "
            f"discounts {fee.volume_discount_bps}+{fee.batch_discount_bps} bps)"
        )
    return fields(
        ("payment", Text(payment.name, style="bold")),
        ("status", status(payments_pb2.PaymentStatus, payment.status)),
        (
            "reason" if payment.status == payments_pb2.PAYMENT_STATUS_CANCELLED else "failure",
            Text(payment.failure_reason, style="red"),
        ),
        ("payer", payment.payer),
        ("payee", payment.payee),
        ("amount", tokens.amount(payment.amount, payment.token, base=True)),
        ("fee", fee_text),
        ("priority", short(common_pb2.Priority, payment.priority).lower()),
        ("task", payment.task_id),
        ("memo", payment.memo),
        ("metadata", ", ".join(f"{k}={v}" for k, v in sorted(payment.metadata.items()))),
        ("escrow", payment.escrow),
        ("request id", payment.request_id),
        ("created", timestamp(payment.create_time)),
        ("updated", timestamp(payment.update_time)),
        ("transaction", settlement.transaction_hash if settlement else None),
        ("block", str(settlement.block_number) if settlement and settlement.block_number else None),
        ("batch", settlement.batch if settlement else None),
        ("gas used", settlement.gas_used if settlement and settlement.gas_used != "0" else None),
        ("settled", timestamp(settlement.complete_time) if settlement else None),
    )


def render_fee(fee: common_pb2.FeeBreakdown, tokens: Tokens) -> Any:
    token = fee.token
    return fields(
        ("fee", Text(tokens.amount(fee.total, token, base=True), style="bold")),
        ("base", f"{tokens.amount(fee.base, token, base=True)}: {fee.rate_bps} bps, at least the token's minimum"),
        ("congestion", f"{fee.congestion_adjustment_bps:+d} bps"),
        ("volume discount", f"{fee.volume_discount_bps} bps"),
        ("batch discount", f"{fee.batch_discount_bps} bps"),
        ("platform", tokens.amount(fee.platform, token)),
        ("network", tokens.amount(fee.network, token)),
        ("agent", tokens.amount(fee.agent, token)),
        ("staking", tokens.amount(fee.staking, token)),
    )


def payments_table(payments: list[payments_pb2.Payment], tokens: Tokens) -> Any:
    return table(
        ["name", "status", "amount", "payer", "payee", "task", "created"],
        [
            [
                p.name,
                status(payments_pb2.PaymentStatus, p.status),
                tokens.amount(p.amount, p.token),
                p.payer,
                p.payee,
                p.task_id,
                timestamp(p.create_time),
            ]
            for p in payments
        ],
    )


def _change(payment: payments_pb2.Payment) -> Text:
    """One line of a followed payment: when, its new status, and what came with it."""
    line = Text(f"{timestamp(payment.update_time)}  ")
    state = status(payments_pb2.PaymentStatus, payment.status)
    state.pad_right(max(0, 10 - len(state)))
    line.append_text(state)
    line.append(f" {payment.name}")
    settlement = payment.settlement
    if payment.status == payments_pb2.PAYMENT_STATUS_COMPLETED and settlement.transaction_hash:
        line.append(f"  transaction {settlement.transaction_hash} (block {settlement.block_number})")
    elif payment.status == payments_pb2.PAYMENT_STATUS_PROCESSING and settlement.batch:
        line.append(f"  in {settlement.batch}")
    elif payment.failure_reason:
        line.append(f"  {payment.failure_reason}", style="red")
    return line


# -- commands ----------------------------------------------------------------------------------------------


async def run_pay(ctx: Context) -> int:
    a = ctx.args
    amount = await ctx.amount(a.amount, a.token, a.decimal)
    payment = await ctx.client.submit_payment(
        a.payer,
        a.payee,
        a.token,
        amount,
        priority=a.priority,
        task_id=a.task_id,
        memo=a.memo,
        metadata=units.metadata(a.metadata) or None,
        request_id=a.request_id,
    )
    if not a.wait:
        if ctx.out.json_mode:
            ctx.out.document(payment)
        else:
            ctx.out.show(render_payment(payment, await ctx.tokens()))
            ctx.out.note(f"follow it: agentflow payments watch {payment.name}")
        return ExitCode.OK
    if not ctx.out.json_mode:
        tokens = await ctx.tokens()
        accepted = Text("accepted ", style="bold")
        accepted.append(f"{payment.name}: {tokens.amount(payment.amount, payment.token)}")
        accepted.append(f" + fee {tokens.amount(payment.fee.total, payment.token)}" if payment.fee.total else "")
        ctx.out.show(accepted)
    final = await follow(ctx, payment.name, a.wait_timeout)
    return finish(ctx, final)


async def run_quote(ctx: Context) -> int:
    a = ctx.args
    amount = await ctx.amount(a.amount, a.token, a.decimal)
    fee = await ctx.client.quote_fee(a.payer, a.token, amount, priority=a.priority)
    if ctx.out.json_mode:
        ctx.out.document(fee)
    else:
        ctx.out.show(render_fee(fee, await ctx.tokens()))
        ctx.out.note(
            "fixed when a payment is accepted; 10 or more accepted in one SubmitPayments call earn a batch discount"
        )
    return ExitCode.OK


async def run_list(ctx: Context) -> int:
    a = ctx.args
    page = await ctx.client.list_payments(
        payer=a.payer,
        payee=a.payee,
        task_id=a.task_id,
        status=a.status,
        token=a.token,
        page_size=a.page_size,
        page_token=a.page_token,
    )
    if ctx.out.json_mode:
        ctx.out.document(payments_pb2.ListPaymentsResponse(payments=page.items, next_page_token=page.next_page_token))
        return ExitCode.OK
    if page.items:
        ctx.out.show(payments_table(page.items, await ctx.tokens()))
    else:
        ctx.out.note("no payments")
    page_note(ctx, page.next_page_token)
    return ExitCode.OK


async def run_get(ctx: Context) -> int:
    payment = await ctx.client.get_payment(units.resource(ctx.args.name, "payments"))
    if ctx.out.json_mode:
        ctx.out.document(payment)
    else:
        ctx.out.show(render_payment(payment, await ctx.tokens()))
    return ExitCode.OK


async def run_watch(ctx: Context) -> int:
    name = units.resource(ctx.args.name, "payments")
    # A unary call first: it tells an unknown name or an unreachable server at once (the stream would retry).
    await ctx.client.get_payment(name)
    final = await follow(ctx, name, ctx.args.wait_timeout, lines=True)
    return finish(ctx, final, printed=True)


async def run_cancel(ctx: Context) -> int:
    payment = await ctx.client.cancel_payment(units.resource(ctx.args.name, "payments"), ctx.args.reason)
    if ctx.out.json_mode:
        ctx.out.document(payment)
    else:
        ctx.out.show(render_payment(payment, await ctx.tokens()))
    return ExitCode.OK


# How far along a payment is, for the progress bar: accepted, in a sent batch, settled.
_STAGES = {
    payments_pb2.PAYMENT_STATUS_QUEUED: 1,
    payments_pb2.PAYMENT_STATUS_PROCESSING: 2,
    payments_pb2.PAYMENT_STATUS_COMPLETED: 3,
}


async def follow(ctx: Context, name: str, wait_timeout: float | None, *, lines: bool = False) -> payments_pb2.Payment:
    """Follow ``name`` with WatchPayment until it is final: each change as a line for people (and as a JSON
    line with ``lines`` and --json), a progress bar on a terminal meanwhile. Gives up after ``wait_timeout``
    seconds."""
    out = ctx.out
    last: payments_pb2.Payment | None = None
    with out.progress(f"{name}: waiting for settlement", len(_STAGES)) as (bar, task):
        try:
            async with asyncio.timeout(wait_timeout):
                async for payment in ctx.client.watch_payment(name):
                    last = payment
                    if out.json_mode:
                        if lines:
                            out.line(payment)
                    else:
                        out.show_line(_change(payment))
                    state = short(payments_pb2.PaymentStatus, payment.status)
                    bar.update(task, completed=_STAGES.get(payment.status, 0), description=f"{name}: {state}")
        except TimeoutError:
            state = short(payments_pb2.PaymentStatus, last.status) if last is not None else "not seen yet"
            raise CliError(
                f"gave up waiting after {wait_timeout:g} s: {name} is {state}",
                hint=f"it goes on; follow it with: agentflow payments watch {name}",
                code=ExitCode.TIMEOUT,
                reason="WAIT_TIMEOUT",
            ) from None
        except asyncio.CancelledError:
            state = short(payments_pb2.PaymentStatus, last.status) if last is not None else "accepted"
            out.note(f"stopped following {name} ({state}); it goes on: agentflow payments watch {name}")
            raise
    if last is None:  # the stream ended without a word: the SDK only ends it at a final status
        raise CliError(f"{name}: the server ended the watch without its state", code=ExitCode.UNAVAILABLE)
    return last


def finish(ctx: Context, payment: payments_pb2.Payment, *, printed: bool = False) -> int:
    """Print a followed payment's final state (unless printed as it came) and exit as it ended."""
    if ctx.out.json_mode and not printed:
        ctx.out.document(payment)
    if payment.status == payments_pb2.PAYMENT_STATUS_COMPLETED:
        return ExitCode.OK
    state = short(payments_pb2.PaymentStatus, payment.status)
    raise CliError(
        f"{payment.name} ended {state}" + (f": {payment.failure_reason}" if payment.failure_reason else ""),
        hint="its amount and fee are back in the payer's available balance",
        code=ExitCode.FAILED,
        reason=f"PAYMENT_{state}",
    )
