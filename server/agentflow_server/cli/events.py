"""``agentflow events tail``: follow the event log (SubscribeEvents), as lines for people or JSON lines."""

from __future__ import annotations

import argparse
import asyncio
from typing import Any

from rich.text import Text

from agentflow_payments.v1 import accounts_pb2, escrow_pb2, events_pb2, payments_pb2, webhooks_pb2

from .connection import Context, seconds
from .errors import CliError, ExitCode
from .output import STATUS_STYLES, Tokens, short, timestamp

TYPE_STYLES = {"completed": "green", "confirmed": "green", "failed": "red", "cancelled": "red", "disputed": "yellow"}


def register(commands: Any, parent: argparse.ArgumentParser) -> None:
    group = commands.add_parser("events", help="follow the event log")
    sub = group.add_subparsers(dest="action", required=True, metavar="ACTION")
    tail = sub.add_parser(
        "tail",
        parents=[parent],
        help="print events as they happen",
        description="Print the events the filters match as they happen (with --from, the log from that "
        "sequence number first), until Ctrl-C, --count or --duration. Reconnects by itself and resumes "
        "where it was: nothing is skipped or printed twice.",
    )
    tail.add_argument(
        "--type",
        dest="types",
        action="append",
        default=[],
        metavar="TYPE",
        help="only this type (payment.completed), or a family (payment.*); repeat for more",
    )
    tail.add_argument("--address", default="", help="only events concerning this address")
    tail.add_argument("--task-id", default="", help="only events of this task")
    tail.add_argument("--resource", default="", help="only events of this resource (payments/ID...)")
    tail.add_argument(
        "--from",
        dest="start",
        type=_sequence,
        metavar="SEQUENCE",
        help="replay the log from this sequence number on first (1: all of it); default: new events only",
    )
    tail.add_argument("--count", type=_positive, metavar="N", help="stop after N events")
    tail.add_argument(
        "--duration",
        type=seconds,
        metavar="SECONDS",
        help="stop after this long (exit 8 if --count events have not come by then)",
    )
    tail.set_defaults(run=run_tail)


def _sequence(text: str) -> int:
    if not text.isdigit() or int(text) < 1:
        raise argparse.ArgumentTypeError(f"{text!r} is not a sequence number (1 or more)")
    return int(text)


def _positive(text: str) -> int:
    if not text.isdigit() or int(text) < 1:
        raise argparse.ArgumentTypeError(f"{text!r} is not a positive whole number")
    return int(text)


def describe(event: events_pb2.Event, tokens: Tokens) -> Text:
    """One event on one line: sequence, time, type, resource, and what it says."""
    kind = event.type
    style = TYPE_STYLES.get(kind.rpartition(".")[2], "bold")
    line = Text(f"#{event.sequence:<6} ", style="dim")
    line.append(f"{timestamp(event.create_time)}  ")
    line.append(f"{kind:<22}", style=style)
    line.append(f" {event.resource}")
    data = event.WhichOneof("data")
    detail = ""
    state = ""
    if data == "payment":
        p = event.payment
        detail = f"{tokens.amount(p.amount, p.token)} {p.payer} → {p.payee}"
        state = short(payments_pb2.PaymentStatus, p.status)
        if p.settlement.transaction_hash and p.status == payments_pb2.PAYMENT_STATUS_COMPLETED:
            detail += f" tx {p.settlement.transaction_hash}"
        elif p.failure_reason:
            detail += f" ({p.failure_reason})"
    elif data == "escrow":
        e = event.escrow
        detail = f"{tokens.amount(e.amount, e.token)} held {tokens.amount(e.held_amount, e.token)}"
        state = short(escrow_pb2.EscrowStatus, e.status)
    elif data == "deposit":
        d = event.deposit
        detail = f"{tokens.amount(d.amount, d.token)} for {d.beneficiary} from {d.depositor}"
    elif data == "withdrawal":
        w = event.withdrawal
        detail = f"{tokens.amount(w.amount, w.token)} from {w.address}"
        state = short(accounts_pb2.WithdrawalStatus, w.status)
    elif data == "batch":
        b = event.batch
        detail = f"{len(b.payments)} payment(s)" + (f" tx {b.transaction_hash}" if b.transaction_hash else "")
        state = short(payments_pb2.BatchStatus, b.status)
    elif data == "webhook":
        h = event.webhook
        detail = f"{h.url} {h.disabled_reason}".strip()
        state = short(webhooks_pb2.WebhookState, h.state)
    if state:
        line.append(f"  {state}", style=STATUS_STYLES.get(state, ""))
    if detail:
        line.append(f"  {detail}")
    if event.task_id:
        line.append(f"  task {event.task_id}", style="dim")
    return line


async def run_tail(ctx: Context) -> int:
    a = ctx.args
    start_after = a.start - 1 if a.start is not None else 0
    # A unary call first: a bad filter, a key that may not, or an unreachable server are told at once (the
    # stream would keep reconnecting to a server that is not there).
    await ctx.client.list_events(
        types=a.types, address=a.address, task_id=a.task_id, resource=a.resource, start_after=start_after, page_size=1
    )
    tokens = Tokens() if ctx.out.json_mode else await ctx.tokens()
    seen = 0
    try:
        async with asyncio.timeout(a.duration):
            stream = ctx.client.subscribe_events(
                types=a.types,
                address=a.address,
                task_id=a.task_id,
                resource=a.resource,
                start_after=start_after,
                live_only=a.start is None,
            )
            ctx.out.note("following the event log (Ctrl-C stops)")
            try:
                async for event in stream:
                    if ctx.out.json_mode:
                        ctx.out.line(event)
                    else:
                        ctx.out.show_line(describe(event, tokens))
                    seen += 1
                    if a.count is not None and seen >= a.count:
                        break
            finally:
                close = getattr(stream, "aclose", None)  # an async generator: end its stream now, not at exit
                if close is not None:
                    await close()
    except TimeoutError:
        if a.count is not None:
            raise CliError(
                f"{seen} of {a.count} event(s) came in {a.duration:g} s",
                code=ExitCode.TIMEOUT,
                reason="WAIT_TIMEOUT",
            ) from None
    return ExitCode.OK
