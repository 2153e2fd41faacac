"""The ``agentflow`` command: run the server (``serve``, ``dev``, ``healthcheck``) and operate it (``pay``,
``payments``, ``escrow``, ``events``, ``balance``, ``tokens``, ``deposit``, ``withdraw``, ``keys``,
``webhooks``).

Client commands talk to ``--target`` (``AGENTFLOW_TARGET``, default the server's default listen address) with
``--api-key`` (``AGENTFLOW_API_KEY``) through the Python SDK's ``AsyncClient``; each runs in one
``asyncio.run``, so a deadline (``--wait-timeout``, ``--duration``) or Ctrl-C ends a stream cleanly. People get
rich tables; ``--json`` prints JSON (see :mod:`.output`). Errors say the reason, the fields at fault and what
to do, and never show a traceback for a user's mistake.

Exit codes (:class:`.errors.ExitCode`):

====  =========================================================================================
0     ok
1     refused by the server (insufficient balance, escrow not active, rate limited...);
      ``healthcheck``: the server is not SERVING
2     usage or configuration error, or a request field the server found invalid
3     ``serve``/``dev``: the server failed to start
4     the server (or chain node) is unreachable or did not answer in time
5     not authenticated (missing, unknown, revoked or expired API key) or not permitted
6     not found
7     what was followed ended badly: a payment FAILED or CANCELLED, a webhook test the endpoint did not
      accept, a deposit transaction that reverted
8     gave up waiting (``--wait-timeout``, ``--duration``); nothing was undone
130   interrupted (Ctrl-C)
====  =========================================================================================
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import inspect
import os
import sys
import threading
from collections.abc import Mapping, Sequence
from typing import IO, TYPE_CHECKING

from agentflow_payments import AgentflowError

from . import accounts, escrow, events, keys, payments, server, webhooks
from .connection import Context, client_options
from .errors import EXIT_CODE_TABLE, CliError, ExitCode, from_api_error
from .output import Output

if TYPE_CHECKING:
    from _typeshed import SupportsWrite

__all__ = ["ExitCode", "build_parser", "main"]


_streams = threading.local()


class _Parser(argparse.ArgumentParser):
    """argparse, printing help and usage errors to the streams ``main`` was given (per thread: tests run
    several commands at once) rather than to ``sys.stdout``/``sys.stderr``."""

    def _print_message(self, message: str, file: SupportsWrite[str] | None = None) -> None:
        if file is None or file is sys.stderr:
            file = getattr(_streams, "stderr", None) or sys.stderr
        elif file is sys.stdout:
            file = getattr(_streams, "stdout", None) or sys.stdout
        super()._print_message(message, file)


def build_parser() -> argparse.ArgumentParser:
    """The whole ``agentflow`` command line."""
    parser = _Parser(
        prog="agentflow",
        description="AgentFlow Payments: run the server, and pay, escrow, follow events and manage keys and "
        "webhooks against one.",
        epilog=EXIT_CODE_TABLE
        + "\n\nclient commands read AGENTFLOW_TARGET and AGENTFLOW_API_KEY; `agentflow COMMAND --help` for more.",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    parent = client_options()
    server.register(commands)
    payments.register(commands, parent)
    escrow.register(commands, parent)
    events.register(commands, parent)
    accounts.register(commands, parent)
    keys.register(commands, parent)
    webhooks.register(commands, parent)
    return parser


def main(
    argv: Sequence[str] | None = None,
    *,
    stdout: IO[str] | None = None,
    stderr: IO[str] | None = None,
    environ: Mapping[str, str] | None = None,
) -> int:
    """Entry point of the ``agentflow`` command; returns the exit code. ``stdout``, ``stderr`` and
    ``environ`` default to the process's (tests pass their own)."""
    stdout = stdout if stdout is not None else sys.stdout
    stderr = stderr if stderr is not None else sys.stderr
    parser = build_parser()
    _streams.stdout, _streams.stderr = stdout, stderr
    try:
        args = parser.parse_args(argv)
    except SystemExit as stop:  # --help, or a usage error argparse has printed
        return stop.code if isinstance(stop.code, int) else ExitCode.USAGE
    finally:
        _streams.stdout = _streams.stderr = None
    if not inspect.iscoroutinefunction(args.run):
        code: int = args.run(args)
        return code
    environ = os.environ if environ is None else environ
    out = Output(bool(getattr(args, "json", False)), stdout, stderr, environ.get("COLUMNS"))
    try:
        return asyncio.run(_run_client(args, out, environ))
    except CliError as error:
        out.error(error)
        return error.code
    except KeyboardInterrupt:
        out.error(CliError("interrupted", code=ExitCode.INTERRUPTED, reason="INTERRUPTED"))
        return ExitCode.INTERRUPTED
    except BrokenPipeError:  # `agentflow events tail | head`: the reader is gone, and so is our output
        if stdout is sys.stdout:  # the interpreter flushes it at exit: into /dev/null, not into an error
            with contextlib.suppress(OSError, ValueError):
                os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return ExitCode.OK


async def _run_client(args: argparse.Namespace, out: Output, environ: Mapping[str, str]) -> int:
    context = Context(args, out, environ)
    async with context:
        try:
            code: int = await args.run(context)
        except AgentflowError as error:
            failure = from_api_error(error, context.connection.target, getattr(args, "field_options", None))
            out.error(failure, error)
            return failure.code
    return code
