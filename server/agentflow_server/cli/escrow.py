"""``agentflow escrow create|release|refund|dispute|resolve|get|list``."""

from __future__ import annotations

import argparse
from typing import Any

from rich.console import Group
from rich.text import Text

from agentflow_payments.v1 import common_pb2, escrow_pb2

from . import units
from .connection import Context
from .errors import ExitCode
from .output import Tokens, choices, fields, short, status, table, timestamp
from .payments import PAYMENT_FIELDS, add_amount_option, add_paging, page_note, render_payment

ESCROW_FIELDS = {
    **PAYMENT_FIELDS,
    "expire_time": "--expires",
    "release_condition": "--condition",
    "arbiter": "--arbiter",
    "verifier": "--verifier",
    "expiry_action": "--on-expiry",
    "amount": "AMOUNT / --amount",
    "payee_amount": "--payee-amount",
    "payer_amount": "--payer-amount",
    "raised_by": "--raised-by",
    "reason": "--reason",
    "resolution_note": "--note",
}


def register(commands: Any, parent: argparse.ArgumentParser) -> None:
    group = commands.add_parser("escrow", help="hold a task's payment until the work is done")
    sub = group.add_subparsers(dest="action", required=True, metavar="ACTION")

    create = sub.add_parser(
        "create",
        parents=[parent],
        help="put AMOUNT of TOKEN from PAYER in escrow for PAYEE",
        description="Move AMOUNT (and its fee) from PAYER's available balance into escrow for PAYEE, until it "
        "is released, refunded, resolved after a dispute, or expires.",
    )
    create.add_argument("payer", metavar="PAYER")
    create.add_argument("payee", metavar="PAYEE")
    create.add_argument("amount", metavar="AMOUNT", help="base units, or whole tokens with --decimal")
    create.add_argument("token", metavar="TOKEN")
    add_amount_option(create)
    create.add_argument("--task-id", default="", help="the task the escrow pays for")
    create.add_argument(
        "--expires", metavar="WHEN", help="a duration from now (24h, 7d) or a time (2026-12-02T00:00:00Z)"
    )
    create.add_argument(
        "--condition",
        choices=choices(escrow_pb2.ReleaseCondition),
        help="who releases it (default payer-approval)",
    )
    create.add_argument("--arbiter", default="", help="the address that settles disputes (and releases with arbiter)")
    create.add_argument("--verifier", default="", help="the address whose signed result releases it")
    create.add_argument(
        "--on-expiry", choices=choices(escrow_pb2.ExpiryAction), help="what expiry does (default refund-payer)"
    )
    create.add_argument("--priority", choices=choices(common_pb2.Priority), help="priority of its release payments")
    create.add_argument("--metadata", action="append", metavar="KEY=VALUE", help="a metadata entry (repeat)")
    create.add_argument("--request-id", help="an idempotency key")
    create.set_defaults(run=run_create, field_options=ESCROW_FIELDS)

    release = sub.add_parser("release", parents=[parent], help="release an escrow (or a part) to its payee")
    release.add_argument("name", metavar="NAME", help="escrows/ID (or the ID)")
    release.add_argument("--amount", help="release only this much (base units; whole tokens with --decimal)")
    add_amount_option(release)
    release.add_argument("--request-id", help="an idempotency key")
    release.set_defaults(run=run_release, field_options=ESCROW_FIELDS)

    refund = sub.add_parser("refund", parents=[parent], help="give what an escrow holds back to its payer")
    refund.add_argument("name", metavar="NAME", help="escrows/ID (or the ID)")
    refund.add_argument("--reason", default="", help="why")
    refund.add_argument("--request-id", help="an idempotency key")
    refund.set_defaults(run=run_refund, field_options=ESCROW_FIELDS)

    dispute = sub.add_parser("dispute", parents=[parent], help="freeze an escrow until its arbiter resolves it")
    dispute.add_argument("name", metavar="NAME", help="escrows/ID (or the ID)")
    dispute.add_argument("--reason", required=True, help="what is disputed")
    dispute.add_argument("--raised-by", default="", help="the payer's or payee's address (which party disputes)")
    dispute.add_argument("--request-id", help="an idempotency key")
    dispute.set_defaults(run=run_dispute, field_options=ESCROW_FIELDS)

    resolve = sub.add_parser("resolve", parents=[parent], help="settle a disputed escrow with a split")
    resolve.add_argument("name", metavar="NAME", help="escrows/ID (or the ID)")
    resolve.add_argument("--payee-amount", required=True, help="what the payee gets")
    resolve.add_argument("--payer-amount", required=True, help="what goes back to the payer")
    add_amount_option(resolve)
    resolve.add_argument("--note", default="", help="the resolution, kept with the escrow")
    resolve.add_argument("--request-id", help="an idempotency key")
    resolve.set_defaults(run=run_resolve, field_options=ESCROW_FIELDS)

    get = sub.add_parser("get", parents=[parent], help="show one escrow")
    get.add_argument("name", metavar="NAME", help="escrows/ID (or the ID)")
    get.set_defaults(run=run_get)

    listing = sub.add_parser("list", parents=[parent], help="list escrows, newest first")
    listing.add_argument("--payer", default="")
    listing.add_argument("--payee", default="")
    listing.add_argument("--task-id", default="")
    listing.add_argument("--status", choices=choices(escrow_pb2.EscrowStatus))
    add_paging(listing)
    listing.set_defaults(run=run_list)


def render_escrow(escrow: escrow_pb2.Escrow, tokens: Tokens) -> Any:
    dispute = escrow.dispute if escrow.HasField("dispute") else None
    token = escrow.token
    state = status(escrow_pb2.EscrowStatus, escrow.status)
    if escrow.expired:
        state.append(" (expired)", style="dim")
    return fields(
        ("escrow", Text(escrow.name, style="bold")),
        ("status", state),
        ("task", escrow.task_id),
        ("payer", escrow.payer),
        ("payee", escrow.payee),
        ("amount", tokens.amount(escrow.amount, token, base=True)),
        ("held", tokens.amount(escrow.held_amount, token)),
        ("released", tokens.amount(escrow.released_amount, token) if escrow.released_amount != "0" else None),
        ("refunded", tokens.amount(escrow.refunded_amount, token) if escrow.refunded_amount != "0" else None),
        ("fee", tokens.amount(escrow.fee.total, token) if escrow.fee.total else None),
        ("release", short(escrow_pb2.ReleaseCondition, escrow.release_condition).lower().replace("_", "-")),
        ("arbiter", escrow.arbiter),
        ("verifier", escrow.verifier),
        ("on expiry", short(escrow_pb2.ExpiryAction, escrow.expiry_action).lower().replace("_", "-")),
        ("expires", timestamp(escrow.expire_time)),
        ("disputed by", dispute.raised_by if dispute else None),
        ("dispute", dispute.reason if dispute else None),
        ("resolution", dispute.resolution_note if dispute else None),
        ("refund reason", escrow.refund_reason),
        ("payments", ", ".join(escrow.release_payments)),
        ("metadata", ", ".join(f"{k}={v}" for k, v in sorted(escrow.metadata.items()))),
        ("created", timestamp(escrow.create_time)),
        ("updated", timestamp(escrow.update_time)),
    )


def _with_payment(ctx: Context, response: Any, tokens: Tokens) -> None:
    """An escrow step that made a payment (release, resolve): both, or the response as JSON."""
    if ctx.out.json_mode:
        ctx.out.document(response)
        return
    parts: list[Any] = [render_escrow(response.escrow, tokens)]
    if response.HasField("payment") and response.payment.name:
        parts += [Text(""), render_payment(response.payment, tokens)]
    ctx.out.show(Group(*parts))


async def _show(ctx: Context, escrow: escrow_pb2.Escrow) -> int:
    if ctx.out.json_mode:
        ctx.out.document(escrow)
    else:
        ctx.out.show(render_escrow(escrow, await ctx.tokens()))
    return ExitCode.OK


async def run_create(ctx: Context) -> int:
    a = ctx.args
    amount = await ctx.amount(a.amount, a.token, a.decimal)
    escrow = await ctx.client.create_escrow(
        a.payer,
        a.payee,
        a.token,
        amount,
        task_id=a.task_id,
        expire_time=units.when(a.expires) if a.expires else None,
        release_condition=a.condition,
        arbiter=a.arbiter,
        verifier=a.verifier,
        expiry_action=a.on_expiry,
        priority=a.priority,
        metadata=units.metadata(a.metadata) or None,
        request_id=a.request_id,
    )
    return await _show(ctx, escrow)


async def _token_of(ctx: Context, name: str) -> str:
    return (await ctx.client.get_escrow(name)).token


async def run_release(ctx: Context) -> int:
    a = ctx.args
    name = units.resource(a.name, "escrows")
    amount = None
    if a.amount is not None:
        token = await _token_of(ctx, name) if a.decimal else ""
        amount = await ctx.amount(a.amount, token, a.decimal, "--amount")
    response = await ctx.client.release_escrow(name, amount, request_id=a.request_id)
    _with_payment(ctx, response, await ctx.tokens())
    return ExitCode.OK


async def run_refund(ctx: Context) -> int:
    a = ctx.args
    escrow = await ctx.client.refund_escrow(units.resource(a.name, "escrows"), a.reason, request_id=a.request_id)
    return await _show(ctx, escrow)


async def run_dispute(ctx: Context) -> int:
    a = ctx.args
    escrow = await ctx.client.dispute_escrow(
        units.resource(a.name, "escrows"), a.reason, raised_by=a.raised_by, request_id=a.request_id
    )
    return await _show(ctx, escrow)


async def run_resolve(ctx: Context) -> int:
    a = ctx.args
    name = units.resource(a.name, "escrows")
    token = await _token_of(ctx, name) if a.decimal else ""
    payee_amount = await ctx.amount(a.payee_amount, token, a.decimal, "--payee-amount")
    payer_amount = await ctx.amount(a.payer_amount, token, a.decimal, "--payer-amount")
    response = await ctx.client.resolve_dispute(
        name,
        payee_amount=payee_amount,
        payer_amount=payer_amount,
        resolution_note=a.note,
        request_id=a.request_id,
    )
    _with_payment(ctx, response, await ctx.tokens())
    return ExitCode.OK


async def run_get(ctx: Context) -> int:
    return await _show(ctx, await ctx.client.get_escrow(units.resource(ctx.args.name, "escrows")))


async def run_list(ctx: Context) -> int:
    a = ctx.args
    page = await ctx.client.list_escrows(
        payer=a.payer,
        payee=a.payee,
        task_id=a.task_id,
        status=a.status,
        page_size=a.page_size,
        page_token=a.page_token,
    )
    if ctx.out.json_mode:
        ctx.out.document(escrow_pb2.ListEscrowsResponse(escrows=page.items, next_page_token=page.next_page_token))
        return ExitCode.OK
    tokens = await ctx.tokens()
    if page.items:
        ctx.out.show(
            table(
                ["name", "status", "amount", "held", "payer", "payee", "task", "expires"],
                [
                    [
                        e.name,
                        status(escrow_pb2.EscrowStatus, e.status),
                        tokens.amount(e.amount, e.token),
                        tokens.amount(e.held_amount, e.token),
                        e.payer,
                        e.payee,
                        e.task_id,
                        timestamp(e.expire_time),
                    ]
                    for e in page.items
                ],
            )
        )
    else:
        ctx.out.note("no escrows")
    page_note(ctx, page.next_page_token)
    return ExitCode.OK
