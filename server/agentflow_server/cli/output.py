"""How the CLI prints: rich tables and spinners for people, JSON for scripts.

``--json`` prints the resource a command acts on in protobuf's JSON mapping, with the proto's own field names
(``task_id``, ``create_time``), every field present (empty ones too, so ``jq .memo`` is ``""`` rather than
``null``), enums by full name (``PAYMENT_STATUS_COMPLETED``), amounts and 64-bit integers as strings and times
in RFC 3339. Where the RPC answers with more than one thing (a list and its next page token, an API key and
its secret, an escrow and the payment its release made) the whole response message is printed. Streams
(``events tail``, ``payments watch``) print one compact JSON document a line. Errors go to stderr, as
``{"error": {...}}`` with ``--json``. Spinners and progress go to stderr, and only on a terminal.
"""

from __future__ import annotations

import contextlib
import datetime
import json
from collections.abc import Iterator, Mapping, Sequence
from typing import IO, TYPE_CHECKING, Any

from google.protobuf import json_format, timestamp_pb2
from google.protobuf.descriptor import Descriptor
from google.protobuf.message import Message
from rich.console import Console, RenderableType
from rich.progress import BarColumn, MofNCompleteColumn, Progress, SpinnerColumn, TextColumn, TimeElapsedColumn
from rich.table import Table
from rich.text import Text

from .errors import CliError, error_document
from .units import to_decimal

UNBOUNDED = 10_000
"""The width of output that is not a terminal."""

STATUS_STYLES = {
    "QUEUED": "yellow",
    "PENDING": "yellow",
    "PROCESSING": "cyan",
    "SUBMITTED": "cyan",
    "ACTIVE": "cyan",
    "ENABLED": "green",
    "COMPLETED": "bold green",
    "CONFIRMED": "bold green",
    "SUCCEEDED": "bold green",
    "RELEASED": "green",
    "RESOLVED": "green",
    "REFUNDED": "magenta",
    "DISPUTED": "bold yellow",
    "FAILED": "bold red",
    "CANCELLED": "red",
    "DISABLED": "red",
    "DISABLED_BY_FAILURE": "bold red",
    "REVOKED": "red",
}


if TYPE_CHECKING:
    from google.protobuf.internal.enum_type_wrapper import _EnumTypeWrapper

    EnumType = _EnumTypeWrapper[Any]
    """A generated enum (``PaymentStatus``, ``Priority``...): only the stubs name its type."""


def short(enum_type: EnumType, number: int) -> str:
    """An enum value without its type's prefix: ``PAYMENT_STATUS_COMPLETED`` → ``COMPLETED``."""
    prefix = enum_type.keys()[0].removesuffix("UNSPECIFIED")
    try:
        return str(enum_type.Name(number)).removeprefix(prefix)
    except ValueError:
        return str(number)


def choices(enum_type: EnumType) -> list[str]:
    """The values a command line may name, lower case with dashes: ``read-only``, ``payer-approval``."""
    prefix = enum_type.keys()[0].removesuffix("UNSPECIFIED")
    return [name.removeprefix(prefix).lower().replace("_", "-") for name in enum_type.keys()[1:]]


def status(enum_type: EnumType, number: int) -> Text:
    name = short(enum_type, number)
    return Text(name, style=STATUS_STYLES.get(name, ""))


def timestamp(value: timestamp_pb2.Timestamp) -> str:
    """A time for people, in UTC; empty when unset."""
    if value.seconds == 0 and value.nanos == 0:
        return ""
    moment = value.ToDatetime(datetime.UTC).replace(microsecond=0)
    return moment.strftime("%Y-%m-%d %H:%M:%SZ")


def _ordered(descriptor: Descriptor, document: dict[str, Any]) -> dict[str, Any]:
    """``document``'s keys in the message's field order, nested messages too (json_format puts the set
    fields first)."""
    result: dict[str, Any] = {}
    for field in descriptor.fields:
        if field.name not in document:
            continue
        value = document[field.name]
        message_type = field.message_type
        is_map = message_type is not None and message_type.GetOptions().map_entry
        if message_type is not None and not is_map and message_type.full_name.startswith("agentflow."):
            value = (
                [_ordered(message_type, item) for item in value] if field.is_repeated else _ordered(message_type, value)
            )
        result[field.name] = value
    result.update((key, value) for key, value in document.items() if key not in result)
    return result


def to_dict(message: Message) -> dict[str, Any]:
    """A message in the CLI's JSON form (see the module docstring)."""
    document = json_format.MessageToDict(
        message, preserving_proto_field_name=True, always_print_fields_with_no_presence=True
    )
    descriptor: Descriptor = message.DESCRIPTOR  # type: ignore[assignment]  # upb's and the stubs' Descriptor
    return _ordered(descriptor, document)


class _Quiet:
    """A spinner that shows nothing (not a terminal, or --json)."""

    def update(self, text: str) -> None:
        pass


class Output:
    """Where and how one command prints: ``--json`` or tables, stdout for results, stderr for the rest."""

    def __init__(self, json_mode: bool, stdout: IO[str], stderr: IO[str], columns: str | None = None) -> None:
        self.json_mode = json_mode
        self.stdout = stdout
        self.stderr = stderr
        # On a terminal (or with COLUMNS set) rich fits tables to the width; into a pipe or a file nothing is
        # folded or cut, so a line can be grepped whole.
        width = int(columns) if columns and columns.isdigit() else None
        self.console = Console(file=stdout, highlight=False, width=width or (None if _isatty(stdout) else UNBOUNDED))
        self.err = Console(file=stderr, highlight=False, width=width or (None if _isatty(stderr) else UNBOUNDED))

    # -- scripts ---------------------------------------------------------------------------------------------

    def document(self, value: Message | Mapping[str, Any]) -> None:
        """One JSON document (indented), for a command's one result."""
        data = to_dict(value) if isinstance(value, Message) else dict(value)
        self.stdout.write(json.dumps(data, indent=2) + "\n")
        self.stdout.flush()

    def line(self, value: Message | Mapping[str, Any]) -> None:
        """One compact JSON document on one line, for each item of a stream."""
        data = to_dict(value) if isinstance(value, Message) else dict(value)
        self.stdout.write(json.dumps(data, separators=(",", ":")) + "\n")
        self.stdout.flush()

    # -- people ----------------------------------------------------------------------------------------------

    def show(self, *renderables: RenderableType) -> None:
        self.console.print(*renderables)

    def show_line(self, text: Text) -> None:
        """One line of a stream (an event, a status change): never wrapped, so it stays one line to grep."""
        self.console.print(text, soft_wrap=True)

    def note(self, text: str | Text) -> None:
        """A remark for people on stderr (never with --json): hints, page tokens, what happens next."""
        if not self.json_mode:
            self.err.print(text, style="dim" if isinstance(text, str) else "")

    def warn(self, text: str) -> None:
        """Something people must see even with --json (a secret shown once), on stderr."""
        self.err.print(Text(text, style="bold yellow"))

    def error(self, error: CliError, source: Any = None) -> None:
        if self.json_mode:
            self.stderr.write(json.dumps(error_document(error, source)) + "\n")
            self.stderr.flush()
            return
        text = Text("agentflow: ", style="bold red")
        text.append(error.message)
        for name, description in error.fields:
            text.append("\n  ")
            text.append(name, style="bold")
            text.append(f": {description}")
        if error.hint:
            text.append("\n  → ", style="dim")
            text.append(error.hint)
        self.err.print(text)

    @contextlib.contextmanager
    def spinner(self, text: str) -> Iterator[Any]:
        """A spinner on stderr while the block runs, updated with ``.update(text)``; nothing when stderr is not a
        terminal or with --json."""
        if self.json_mode or not self.err.is_terminal:
            yield _Quiet()
            return
        with self.err.status(text, spinner="dots") as live:
            yield live

    @contextlib.contextmanager
    def progress(self, text: str, steps: int) -> Iterator[Any]:
        """A progress bar of ``steps`` steps on stderr while the block runs, moved with
        ``.update(task, completed=n, description=text)`` on the yielded ``(progress, task)``; nothing when
        stderr is not a terminal or with --json."""
        if self.json_mode or not self.err.is_terminal:
            yield _QuietProgress(), 0
            return
        columns = (
            SpinnerColumn(),
            TextColumn("{task.description}"),
            BarColumn(),
            MofNCompleteColumn(),
            TimeElapsedColumn(),
        )
        with Progress(*columns, console=self.err, transient=True) as bar:
            yield bar, bar.add_task(text, total=steps)


class _QuietProgress:
    """A progress bar that shows nothing (not a terminal, or --json)."""

    def update(self, task: Any, **changes: Any) -> None:
        pass


def _isatty(stream: IO[str]) -> bool:
    try:
        return stream.isatty()
    except (AttributeError, ValueError):
        return False


def fields(*rows: tuple[str, RenderableType | None]) -> Table:
    """A two-column key/value view; empty values are left out."""
    table = Table.grid(padding=(0, 2))
    table.add_column(style="dim", no_wrap=True)
    table.add_column(overflow="fold")
    for label, value in rows:
        if value is None or value == "" or (isinstance(value, Text) and not value.plain):
            continue
        table.add_row(label, value)
    return table


_WHOLE = ("name", "payer", "payee", "address", "addresses", "contract", "url")
"""Columns whose values are never folded: a name or an address cut in two cannot be copied."""
_RIGHT = ("amount", "available", "reserved", "escrowed", "total", "held", "fee", "seq", "attempts", "decimals")


def table(columns: Sequence[str], rows: Sequence[Sequence[RenderableType]], title: str | None = None) -> Table:
    """A table of resources: names and addresses are kept whole, other long values folded."""
    result = Table(title=title, title_justify="left", header_style="bold", box=None, pad_edge=False)
    for index, column in enumerate(columns):
        widest = 0
        if column in _WHOLE:
            cells = [row[index] for row in rows]
            widest = max((len(line) for cell in cells for line in _plain(cell).splitlines()), default=0)
        result.add_column(
            column,
            overflow="fold",
            justify="right" if column in _RIGHT else "left",
            min_width=widest or None,
        )
    for row in rows:
        result.add_row(*row)
    return result


def _plain(cell: RenderableType) -> str:
    return cell.plain if isinstance(cell, Text) else cell if isinstance(cell, str) else ""


class Tokens:
    """The decimals of each token, from ListTokens, to show amounts in whole tokens."""

    def __init__(self, decimals: Mapping[str, int] | None = None) -> None:
        self.decimals: dict[str, int] = dict(decimals or {})

    def amount(self, amount: str, token: str, *, base: bool = False) -> str:
        """``1.5 USDC``, or ``1.5 USDC (1500000)`` with ``base``; base units only for an unknown token."""
        if not amount:
            return ""
        decimals = self.decimals.get(token)
        if decimals is None:
            return f"{amount} {token} base units"
        whole = f"{to_decimal(amount, decimals)} {token}"
        return f"{whole} ({amount})" if base and decimals else whole
