"""Which server a client command talks to and as whom: ``--target``, ``--api-key``, ``--tls``, ``--ca-file``,
``--timeout`` (and ``--json``), and the context a command runs in: its output and its one SDK client."""

from __future__ import annotations

import argparse
import os
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType

from agentflow_payments import AgentflowError, AsyncClient, RetryConfig

from ..config import Settings
from .errors import CliError
from .output import Output, Tokens

DEFAULT_TARGET: str = Settings.model_fields["listen"].default
"""Where ``agentflow serve`` listens unless configured otherwise."""
DEFAULT_TIMEOUT = 10.0
RETRY = RetryConfig(max_attempts=3, initial_backoff=0.2, max_backoff=2.0)
"""Reads and idempotent writes are tried three times when the server cannot be reached: a restart is ridden
out, and an absent server is reported within seconds."""


def client_options() -> argparse.ArgumentParser:
    """The options of every command that talks to a server, as a parent parser."""
    parent = argparse.ArgumentParser(add_help=False)
    group = parent.add_argument_group("connection")
    group.add_argument(
        "--target",
        metavar="HOST:PORT",
        help=f"the server (env AGENTFLOW_TARGET; default {DEFAULT_TARGET})",
    )
    group.add_argument("--api-key", metavar="KEY", help="the API key to call with (env AGENTFLOW_API_KEY)")
    group.add_argument("--tls", action="store_true", help="connect with TLS (system CA roots unless --ca-file)")
    group.add_argument("--ca-file", metavar="PEM", help="CA certificates to trust for TLS (implies --tls)")
    group.add_argument(
        "--timeout",
        type=seconds,
        default=DEFAULT_TIMEOUT,
        metavar="SECONDS",
        help=f"how long each call may take (default {DEFAULT_TIMEOUT:g})",
    )
    parent.add_argument("--json", action="store_true", help="print JSON for scripts instead of tables")
    return parent


def seconds(text: str) -> float:
    """A positive number of seconds, for options that bound a wait."""
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a number of seconds") from None
    if not value > 0 or value == float("inf"):
        raise argparse.ArgumentTypeError(f"{text!r}: give a positive number of seconds")
    return value


@dataclass(frozen=True)
class Connection:
    """A resolved connection: flags over environment over defaults."""

    target: str
    api_key: str | None
    tls: bool
    root_certificates: bytes | None
    timeout: float

    @classmethod
    def from_args(cls, args: argparse.Namespace, environ: Mapping[str, str]) -> Connection:
        target = args.target or environ.get("AGENTFLOW_TARGET") or DEFAULT_TARGET
        if target.startswith(("http://", "https://", "grpc://")) or ":" not in target:
            raise CliError(
                f"--target: {target!r} is not host:port",
                hint=f"e.g. --target {DEFAULT_TARGET} (no scheme; --tls for TLS)",
            )
        roots = None
        if args.ca_file:
            try:
                roots = Path(args.ca_file).read_bytes()
            except OSError as error:
                raise CliError(f"--ca-file: cannot read {args.ca_file}: {error.strerror or error}") from None
        api_key = args.api_key or environ.get("AGENTFLOW_API_KEY") or None
        return cls(target, api_key, bool(args.tls or roots), roots, args.timeout)


class Context:
    """What a client command runs with: its arguments, its output and (made on first use) its client."""

    def __init__(self, args: argparse.Namespace, out: Output, environ: Mapping[str, str] | None = None) -> None:
        self.args = args
        self.out = out
        self.environ: Mapping[str, str] = os.environ if environ is None else environ
        self.connection = Connection.from_args(args, self.environ)
        self._client: AsyncClient | None = None
        self._tokens: Tokens | None = None
        self._listed: dict[str, int] | None = None

    @property
    def client(self) -> AsyncClient:
        if self._client is None:
            c = self.connection
            self._client = AsyncClient(
                c.target,
                c.api_key,
                tls=c.tls,
                root_certificates=c.root_certificates,
                timeout=c.timeout,
                retry=RETRY,
            )
        return self._client

    async def token_decimals(self) -> dict[str, int]:
        """Each accepted token's decimals (ListTokens, asked once)."""
        if self._listed is None:
            listed = await self.client.list_tokens()
            self._listed = {token.symbol: token.decimals for token in listed.tokens}
        return self._listed

    async def tokens(self) -> Tokens:
        """Decimals to show amounts with; none (base units shown) if the server would not say."""
        if self._tokens is None:
            try:
                self._tokens = Tokens(await self.token_decimals())
            except AgentflowError:
                self._tokens = Tokens()
        return self._tokens

    async def amount(self, text: str, token: str, decimal: bool, argument: str = "AMOUNT") -> str:
        """An amount argument as base units: as typed, or from whole tokens with ``--decimal``."""
        from .units import base_units, from_decimal

        if not decimal:
            return base_units(text, argument)
        decimals = await self.token_decimals()
        symbol = token.strip()
        if symbol not in decimals:
            raise CliError(
                f"TOKEN: {token!r} is not an accepted token",
                hint=f"use one of {', '.join(decimals)}",
                reason="INVALID_TOKEN",
            )
        return from_decimal(text, decimals[symbol], symbol, argument)

    async def close(self) -> None:
        if self._client is not None:
            await self._client.close()
            self._client = None

    async def __aenter__(self) -> Context:
        return self

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        await self.close()
