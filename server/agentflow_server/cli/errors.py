"""Exit codes, and errors told the way an operator can act on them: what went wrong, the fields at fault
and what to do next. The exit code table is in the package docstring and ``agentflow --help``."""

from __future__ import annotations

import enum
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import grpc

if TYPE_CHECKING:
    from agentflow_payments import AgentflowError


class ExitCode(enum.IntEnum):
    """What ``agentflow`` exits with. Scripts may rely on these."""

    OK = 0
    REFUSED = 1
    """The server refused or could not do it (insufficient balance, escrow not active, rate limited...);
    ``healthcheck``: the server is not SERVING."""
    USAGE = 2
    """A bad command line, configuration or request field (caught here, or INVALID_ARGUMENT from the server)."""
    STARTUP = 3
    """``serve``/``dev``: the server could not start (port taken, ledger of another chain)."""
    UNAVAILABLE = 4
    """The server or the chain node could not be reached, or did not answer in time."""
    DENIED = 5
    """The API key is missing, unknown, revoked or expired, or may not do this (scope, bound addresses)."""
    NOT_FOUND = 6
    """The named payment, escrow, key, webhook... does not exist (or the key may not see it)."""
    FAILED = 7
    """What the command followed ended badly: a payment FAILED or CANCELLED, a webhook test the endpoint did
    not accept, a deposit transaction that reverted."""
    TIMEOUT = 8
    """Gave up waiting (``--wait-timeout``, ``--duration``) before the end: nothing was undone."""
    INTERRUPTED = 130
    """Ctrl-C."""


EXIT_CODE_TABLE = """\
exit codes:
  0    ok
  1    refused by the server (insufficient balance, escrow not active, rate limited, ...);
       healthcheck: the server is not SERVING
  2    usage or configuration error, or a request field the server found invalid
  3    serve/dev: the server failed to start
  4    the server (or chain node) is unreachable or did not answer in time
  5    not authenticated (missing, unknown, revoked, expired API key) or not permitted
  6    not found
  7    what was followed ended badly: payment FAILED/CANCELLED, webhook test not
       accepted, deposit transaction reverted
  8    gave up waiting (--wait-timeout, --duration); nothing was undone
  130  interrupted (Ctrl-C)"""


@dataclass(eq=False)
class CliError(Exception):
    """A mistake or a failure found by the CLI itself (or explained by it): said, never a traceback."""

    message: str
    hint: str = ""
    code: ExitCode = ExitCode.USAGE
    reason: str = "USAGE"
    fields: list[tuple[str, str]] = field(default_factory=list)

    def __post_init__(self) -> None:
        super().__init__(self.message)


_BY_CODE: dict[grpc.StatusCode, tuple[ExitCode, str]] = {
    grpc.StatusCode.INVALID_ARGUMENT: (ExitCode.USAGE, "invalid request"),
    grpc.StatusCode.OUT_OF_RANGE: (ExitCode.USAGE, "invalid request"),
    grpc.StatusCode.UNAUTHENTICATED: (ExitCode.DENIED, "not authenticated"),
    grpc.StatusCode.PERMISSION_DENIED: (ExitCode.DENIED, "not permitted"),
    grpc.StatusCode.NOT_FOUND: (ExitCode.NOT_FOUND, "not found"),
    grpc.StatusCode.UNAVAILABLE: (ExitCode.UNAVAILABLE, "server unavailable"),
    grpc.StatusCode.DEADLINE_EXCEEDED: (ExitCode.UNAVAILABLE, "no answer in time"),
    grpc.StatusCode.CANCELLED: (ExitCode.UNAVAILABLE, "call cut off"),
}

_HINTS: dict[str, str] = {
    "INVALID_FIELD": "fix the fields named above",
    "INVALID_TOKEN": "see the accepted tokens with `agentflow tokens`",
    "API_KEY_MISSING": "pass --api-key KEY or set AGENTFLOW_API_KEY",
    "API_KEY_INVALID": "check --api-key / AGENTFLOW_API_KEY: the server did not issue this key",
    "API_KEY_REVOKED": "ask an admin for a new one (agentflow keys create)",
    "API_KEY_EXPIRED": "ask an admin for a new one (agentflow keys create)",
    "SCOPE_DENIED": "use a key whose scope allows it",
    "ADDRESS_NOT_ALLOWED": "use a key bound to that address (or an admin key)",
    "RATE_LIMIT_EXCEEDED": "wait and try again",
    "QUEUE_FULL": "the settlement queue is full: wait and try again",
    "INSUFFICIENT_BALANCE": "deposit more (agentflow deposit) or lower the amount",
    "IDEMPOTENCY_CONFLICT": "this --request-id was used for another request: use a new one",
    "PAYMENT_NOT_FOUND": "check the name: agentflow payments list",
    "PAYMENT_NOT_CANCELLABLE": "see where it stands: agentflow payments get NAME",
    "BATCH_NOT_FOUND": "check the batch name (a payment's settlement batch)",
    "ESCROW_NOT_FOUND": "check the name: agentflow escrow list",
    "ESCROW_NOT_ACTIVE": "see where it stands: agentflow escrow get NAME",
    "ESCROW_INVALID_ATTESTATION": "the result must be signed by the escrow's verifier",
    "WEBHOOK_NOT_FOUND": "check the name: agentflow webhooks list",
    "WEBHOOK_DELIVERY_NOT_FOUND": "check the name: agentflow webhooks deliveries WEBHOOK",
    "WEBHOOK_URL_NOT_ALLOWED": "use a public endpoint (a development server may allow private ones with "
    "AGENTFLOW_WEBHOOK_ALLOW_PRIVATE=true)",
    "WEBHOOK_DISABLED": "enable the endpoint again first",
    "WEBHOOK_DELIVERY_SUCCEEDED": "the delivery succeeded already: nothing to retry",
    "API_KEY_NOT_FOUND": "check the name: agentflow keys list",
    "SUBSCRIBER_TOO_SLOW": "resume with --from after the last sequence shown",
    "NOT_IMPLEMENTED": "this server does not serve that yet",
    "SHUTTING_DOWN": "the server is stopping: try again later or against another replica",
    "STORAGE_UNAVAILABLE": "the ledger did not answer: nothing changed; try again",
    "SETTLEMENT_UNAVAILABLE": "point --target at a replica that settles on chain",
    "INTERNAL": "the server failed unexpectedly and logged it; tell its operator the time",
}


_TRANSPORT = (
    ("connection refused", "connection refused"),
    ("dns resolution failed", "its host name does not resolve"),
    ("deadline exceeded", "no answer in time"),
    ("ssl", "the TLS handshake failed"),
    ("handshake", "the TLS handshake failed"),
    ("socket closed", "the connection was closed"),
)


def _argument(field_path: str, options: Mapping[str, str]) -> str:
    """A request field as the command line names it: ``rate_limit.burst`` is ``--burst``, ``payer`` is ``PAYER``."""
    option = options.get(field_path) or options.get(field_path.split("[", 1)[0])
    return f"{field_path} ({option})" if option else field_path


def from_api_error(error: AgentflowError, target: str, options: Mapping[str, str] | None = None) -> CliError:
    """The SDK's error as the CLI tells it: the reason, the server's message or the fields at fault (with the
    argument that set each, from ``options``), and what to do; with the exit code its status code means."""
    reason = str(error.reason or error.code.name)
    code, title = _BY_CODE.get(error.code, (ExitCode.REFUSED, "refused"))
    hint = _HINTS.get(reason, "")
    fields = [(_argument(v.field, options or {}), v.description) for v in error.field_violations]
    message = error.message
    if reason in ("UNAVAILABLE", "DEADLINE_EXCEEDED"):
        # The transport's own failure, not the server's answer: say where we looked and what happened.
        lowered = error.message.lower()
        why = next((text for needle, text in _TRANSPORT if needle in lowered), "")
        message = f"cannot reach the server at {target}" + (f": {why}" if why else "")
        hint = (
            "is it running? Start one with `agentflow dev`, or point --target / AGENTFLOW_TARGET at it "
            "(--tls if it serves TLS; a slow server: a longer --timeout)"
        )
    elif reason in ("RATE_LIMIT_EXCEEDED", "QUEUE_FULL") and error.retry_delay is not None:
        hint = f"wait {error.retry_delay.total_seconds():.1f} s and try again"
    elif reason == "SCOPE_DENIED" and error.metadata.get("required_scopes"):
        needed = " or ".join(error.metadata["required_scopes"].split(","))
        hint = f"use a key of scope {needed} (this one is {error.metadata.get('scope', 'another')})"
    if "NAME" in hint and error.metadata.get("name"):
        hint = hint.replace("NAME", error.metadata["name"])
    if fields:
        message = ""
    return CliError(f"{title} ({reason})" + (f": {message}" if message else ""), hint, code, reason, fields)


def error_document(error: CliError, source: Any = None) -> dict[str, Any]:
    """The error as ``--json`` prints it on stderr."""
    document: dict[str, Any] = {
        "reason": error.reason,
        "message": error.message,
        "exit_code": int(error.code),
    }
    if error.fields:
        document["field_violations"] = [{"field": name, "description": text} for name, text in error.fields]
    if error.hint:
        document["hint"] = error.hint
    if source is not None:
        document["code"] = source.code.name
        document["metadata"] = dict(source.metadata)
        document["server_message"] = source.message
    return {"error": document}
