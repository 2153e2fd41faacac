"""``agentflow keys create|list|revoke``: API keys (an admin's commands)."""

from __future__ import annotations

import argparse
from typing import Any

from rich.text import Text

from agentflow_payments.v1 import admin_pb2

from . import units
from .connection import Context
from .errors import ExitCode
from .output import choices, fields, short, table, timestamp
from .payments import add_paging, page_note


def register(commands: Any, parent: argparse.ArgumentParser) -> None:
    group = commands.add_parser("keys", help="create, list and revoke API keys (admin)")
    sub = group.add_subparsers(dest="action", required=True, metavar="ACTION")

    create = sub.add_parser(
        "create",
        parents=[parent],
        help="create an API key; its secret is shown once",
        description="Create an API key. The secret is printed this once: the server keeps only its hash.",
    )
    create.add_argument("display_name", metavar="NAME", help="who or what the key is for")
    create.add_argument("--scope", required=True, choices=choices(admin_pb2.ApiKeyScope), help="what it may do")
    create.add_argument(
        "--address",
        dest="addresses",
        action="append",
        default=[],
        metavar="ADDRESS",
        help="an address a payer key may move money from (repeat for more)",
    )
    create.add_argument("--rate-limit", type=int, default=0, metavar="PER_MINUTE", help="requests a minute")
    create.add_argument("--burst", type=int, default=0, help="requests at once (the bucket's size)")
    create.add_argument("--expires", metavar="WHEN", help="a duration from now (30d) or a time")
    create.set_defaults(
        run=run_create,
        field_options={
            "display_name": "NAME",
            "scope": "--scope",
            "addresses": "--address",
            "rate_limit.requests_per_minute": "--rate-limit",
            "rate_limit.burst": "--burst",
            "expire_time": "--expires",
        },
    )

    listing = sub.add_parser("list", parents=[parent], help="list API keys (never their secrets)")
    listing.add_argument("--all", action="store_true", help="revoked keys too")
    add_paging(listing)
    listing.set_defaults(run=run_list)

    revoke = sub.add_parser("revoke", parents=[parent], help="revoke an API key; its next call is refused")
    revoke.add_argument("name", metavar="NAME", help="apiKeys/ID (or the ID)")
    revoke.set_defaults(run=run_revoke)


def _scope(key: admin_pb2.ApiKey) -> str:
    return short(admin_pb2.ApiKeyScope, key.scope).lower().replace("_", "-")


def _state(key: admin_pb2.ApiKey) -> Text:
    if key.HasField("revoke_time"):
        return Text(f"revoked {timestamp(key.revoke_time)}", style="red")
    if key.HasField("expire_time"):
        return Text(f"expires {timestamp(key.expire_time)}")
    return Text("active", style="green")


def _limit(key: admin_pb2.ApiKey) -> str:
    limit = key.rate_limit
    return f"{limit.requests_per_minute}/min, burst {limit.burst}" if limit.requests_per_minute else "default"


def render_key(key: admin_pb2.ApiKey) -> Any:
    return fields(
        ("key", Text(key.name, style="bold")),
        ("name", key.display_name),
        ("scope", _scope(key)),
        ("addresses", ", ".join(key.addresses)),
        ("rate limit", _limit(key)),
        ("prefix", key.key_prefix),
        ("state", _state(key)),
        ("created", timestamp(key.create_time)),
    )


async def run_create(ctx: Context) -> int:
    a = ctx.args
    expire_time = units.when(a.expires) if a.expires else None
    response = await ctx.client.create_api_key(
        a.display_name,
        a.scope,
        addresses=a.addresses,
        requests_per_minute=a.rate_limit,
        burst=a.burst,
        expire_time=expire_time,
    )
    if ctx.out.json_mode:
        ctx.out.document(response)
        return ExitCode.OK
    ctx.out.show(render_key(response.api_key))
    ctx.out.show(Text("secret  ", style="dim") + Text(response.secret, style="bold"))
    ctx.out.warn("The secret is shown this once: store it now (the server keeps only its hash).")
    return ExitCode.OK


async def run_list(ctx: Context) -> int:
    a = ctx.args
    page = await ctx.client.list_api_keys(show_revoked=a.all, page_size=a.page_size, page_token=a.page_token)
    if ctx.out.json_mode:
        ctx.out.document(admin_pb2.ListApiKeysResponse(api_keys=page.items, next_page_token=page.next_page_token))
        return ExitCode.OK
    ctx.out.show(
        table(
            ["name", "display name", "scope", "addresses", "prefix", "rate limit", "state", "created"],
            [
                [
                    key.name,
                    key.display_name,
                    _scope(key),
                    "\n".join(key.addresses),
                    key.key_prefix,
                    _limit(key),
                    _state(key),
                    timestamp(key.create_time),
                ]
                for key in page.items
            ],
        )
    )
    page_note(ctx, page.next_page_token)
    return ExitCode.OK


async def run_revoke(ctx: Context) -> int:
    key = await ctx.client.revoke_api_key(units.resource(ctx.args.name, "apiKeys"))
    if ctx.out.json_mode:
        ctx.out.document(key)
    else:
        ctx.out.show(render_key(key))
    return ExitCode.OK
