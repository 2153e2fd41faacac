"""``agentflow webhooks add|list|test|deliveries|remove``: signed event deliveries to HTTP endpoints."""

from __future__ import annotations

import argparse
from typing import Any

from rich.text import Text

from agentflow_payments.v1 import webhooks_pb2

from . import units
from .connection import Context
from .errors import CliError, ExitCode
from .output import choices, fields, status, table, timestamp
from .payments import add_paging, page_note


def register(commands: Any, parent: argparse.ArgumentParser) -> None:
    group = commands.add_parser("webhooks", help="register endpoints that receive events, and see deliveries")
    sub = group.add_subparsers(dest="action", required=True, metavar="ACTION")

    add = sub.add_parser(
        "add",
        parents=[parent],
        help="register an endpoint; its signing secret is shown once",
        description="Register URL to receive the events of --type (all the key may see when none), signed per "
        "Standard Webhooks. The whsec_ secret is printed this once.",
    )
    add.add_argument("url", metavar="URL")
    add.add_argument(
        "--type",
        dest="types",
        action="append",
        default=[],
        metavar="TYPE",
        help="an event type (payment.completed) or family (payment.*); repeat for more",
    )
    add.add_argument("--description", default="", help="what the endpoint is")
    add.add_argument("--secret", default="", help="a whsec_ secret of your own (default: a new one)")
    add.add_argument("--request-id", help="an idempotency key")
    add.set_defaults(
        run=run_add,
        field_options={"url": "URL", "event_types": "--type", "secret": "--secret", "description": "--description"},
    )

    listing = sub.add_parser("list", parents=[parent], help="list endpoints")
    add_paging(listing)
    listing.set_defaults(run=run_list)

    test = sub.add_parser(
        "test",
        parents=[parent],
        help="send a test event now and show the answer",
        description="Send one test delivery now and show what the endpoint answered; exit 7 if it was not 2xx.",
    )
    test.add_argument("name", metavar="NAME", help="webhooks/ID (or the ID)")
    test.add_argument("--type", dest="event_type", default="", help="the event type to send (default a test one)")
    test.set_defaults(run=run_test)

    deliveries = sub.add_parser("deliveries", parents=[parent], help="list an endpoint's deliveries")
    deliveries.add_argument("name", metavar="NAME", help="webhooks/ID (or the ID)")
    deliveries.add_argument("--status", choices=choices(webhooks_pb2.WebhookDeliveryStatus))
    add_paging(deliveries)
    deliveries.set_defaults(run=run_deliveries)

    remove = sub.add_parser("remove", parents=[parent], help="delete an endpoint")
    remove.add_argument("name", metavar="NAME", help="webhooks/ID (or the ID)")
    remove.set_defaults(run=run_remove)


def render_webhook(webhook: webhooks_pb2.Webhook) -> Any:
    return fields(
        ("webhook", Text(webhook.name, style="bold")),
        ("url", webhook.url),
        ("events", ", ".join(webhook.event_types) or "all"),
        ("description", webhook.description),
        ("state", status(webhooks_pb2.WebhookState, webhook.state)),
        ("disabled", webhook.disabled_reason),
        ("secrets", ", ".join(f"{prefix}…" for prefix in webhook.secret_prefixes)),
        ("created", timestamp(webhook.create_time)),
    )


def _attempt(attempt: webhooks_pb2.WebhookAttempt) -> str:
    if not attempt.attempt_time.seconds and not attempt.http_status and not attempt.error:
        return ""
    answer = f"HTTP {attempt.http_status}" if attempt.http_status else attempt.error or "no answer"
    took = attempt.duration.ToTimedelta().total_seconds() * 1000
    return f"{answer} in {took:.0f} ms"


async def run_add(ctx: Context) -> int:
    a = ctx.args
    response = await ctx.client.create_webhook(
        a.url, a.types, secret=a.secret, description=a.description, request_id=a.request_id
    )
    if ctx.out.json_mode:
        ctx.out.document(response)
        return ExitCode.OK
    ctx.out.show(render_webhook(response.webhook))
    ctx.out.show(Text("secret   ", style="dim") + Text(response.secret, style="bold"))
    ctx.out.warn("The secret is shown this once: give it to the receiver now to verify signatures.")
    return ExitCode.OK


async def run_list(ctx: Context) -> int:
    a = ctx.args
    page = await ctx.client.list_webhooks(page_size=a.page_size, page_token=a.page_token)
    if ctx.out.json_mode:
        ctx.out.document(webhooks_pb2.ListWebhooksResponse(webhooks=page.items, next_page_token=page.next_page_token))
        return ExitCode.OK
    if page.items:
        ctx.out.show(
            table(
                ["name", "url", "events", "state", "description", "created"],
                [
                    [
                        w.name,
                        w.url,
                        ", ".join(w.event_types) or "all",
                        status(webhooks_pb2.WebhookState, w.state),
                        w.description,
                        timestamp(w.create_time),
                    ]
                    for w in page.items
                ],
            )
        )
    else:
        ctx.out.note("no webhooks")
    page_note(ctx, page.next_page_token)
    return ExitCode.OK


async def run_test(ctx: Context) -> int:
    name = units.resource(ctx.args.name, "webhooks")
    attempt = await ctx.client.test_webhook(name, ctx.args.event_type)
    if ctx.out.json_mode:
        ctx.out.document(attempt)
    else:
        ctx.out.show(
            fields(
                ("webhook", Text(name, style="bold")),
                ("result", Text("accepted", style="bold green") if attempt.success else Text("failed", style="red")),
                ("answer", _attempt(attempt)),
                ("error", attempt.error),
                ("body", attempt.response_body_excerpt),
            )
        )
    if attempt.success:
        return ExitCode.OK
    answer = f"answered HTTP {attempt.http_status}" if attempt.http_status else (attempt.error or "did not answer")
    raise CliError(
        f"{name}: the endpoint {answer}",
        hint="a 2xx answer is success; check the receiver's logs",
        code=ExitCode.FAILED,
        reason="WEBHOOK_TEST_FAILED",
    )


async def run_deliveries(ctx: Context) -> int:
    a = ctx.args
    name = units.resource(a.name, "webhooks")
    page = await ctx.client.list_webhook_deliveries(
        name, status=a.status, page_size=a.page_size, page_token=a.page_token
    )
    if ctx.out.json_mode:
        ctx.out.document(
            webhooks_pb2.ListWebhookDeliveriesResponse(deliveries=page.items, next_page_token=page.next_page_token)
        )
        return ExitCode.OK
    if page.items:
        ctx.out.show(
            table(
                ["name", "seq", "event", "status", "attempts", "last answer", "next attempt"],
                [
                    [
                        d.name.rpartition("/")[2],
                        str(d.event_sequence),
                        d.event_type,
                        status(webhooks_pb2.WebhookDeliveryStatus, d.status),
                        str(d.attempt_count),
                        _attempt(d.last_attempt),
                        timestamp(d.next_attempt_time),
                    ]
                    for d in page.items
                ],
                title=name,
            )
        )
    else:
        ctx.out.note(f"no deliveries for {name} yet")
    page_note(ctx, page.next_page_token)
    return ExitCode.OK


async def run_remove(ctx: Context) -> int:
    name = units.resource(ctx.args.name, "webhooks")
    await ctx.client.delete_webhook(name)
    if ctx.out.json_mode:
        ctx.out.document(webhooks_pb2.DeleteWebhookResponse())
    else:
        ctx.out.show(f"deleted {name}")
    return ExitCode.OK
