"""Python values to and from the wire: amounts, enums by name, times, pages.

The typed methods take what a caller has at hand (``int`` amounts, ``"high"``
for a priority, a ``timedelta`` for an expiry) and turn it into the exact form
the contract wants, so a mistake in the caller's own program fails here with a
``TypeError`` or ``ValueError`` before anything is sent.
"""

from __future__ import annotations

import datetime
import uuid
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Generic, Protocol, TypeVar

from google.protobuf import duration_pb2, timestamp_pb2

T = TypeVar("T")

Amount = int | str
"""An amount in base units: an ``int``, or its base-10 string (``"1500000"``)."""

EnumValue = int | str
"""An enum value: its number, its full name (``"PRIORITY_HIGH"``) or the part after the prefix (``"high"``)."""

When = datetime.datetime | datetime.timedelta
"""A moment: an aware ``datetime``, or a ``timedelta`` counted from now."""


@dataclass(frozen=True)
class Page(Generic[T]):
    """One page of a list call: its items and the token of the next page (empty on the last page)."""

    items: list[T]
    next_page_token: str


class _EnumType(Protocol):
    """The generated enum wrapper's methods that the parser needs (``Priority``, ``PaymentStatus``...)."""

    DESCRIPTOR: Any

    def keys(self) -> list[str]: ...


def amount(value: Amount, name: str = "amount") -> str:
    """Base units as the contract's decimal string. Only ``int`` and ``str`` are taken: a ``float`` or a
    ``Decimal`` would round money silently, so they are refused. The server checks the rest (sign, range)."""
    if isinstance(value, bool) or not isinstance(value, int | str):
        raise TypeError(f"{name} must be an int or a base-10 string of base units, not {type(value).__name__}")
    return str(value)


def enum(enum_type: _EnumType, value: EnumValue | None, name: str) -> int:
    """The number of an enum value given by number or name; ``None`` is the UNSPECIFIED zero (the server's
    default applies). ``"high"``, ``"HIGH"`` and ``"PRIORITY_HIGH"`` all name PRIORITY_HIGH."""
    if value is None:
        return 0
    names: list[str] = list(enum_type.keys())
    prefix = names[0].removesuffix("UNSPECIFIED")
    if isinstance(value, bool):
        raise TypeError(f"{name} must be a name or number of {enum_type.DESCRIPTOR.name}")
    if isinstance(value, int):
        if value not in {v.number for v in enum_type.DESCRIPTOR.values}:
            raise ValueError(f"{name}: {value} is not a {enum_type.DESCRIPTOR.name}")
        return value
    wanted = value.strip().upper().replace("-", "_")
    for full in (wanted, prefix + wanted):
        if full in names and not full.endswith("_UNSPECIFIED"):
            number: int = enum_type.DESCRIPTOR.values_by_name[full].number
            return number
    choices = ", ".join(n.removeprefix(prefix).lower() for n in names[1:])
    raise ValueError(f"{name}: {value!r} is not one of {choices}")


def enum_name(enum_type: _EnumType, number: int) -> str:
    """The short lower-case name of an enum number (``PAYMENT_STATUS_COMPLETED`` → ``"completed"``)."""
    names: list[str] = list(enum_type.keys())
    prefix = names[0].removesuffix("UNSPECIFIED")
    value = enum_type.DESCRIPTOR.values_by_number.get(number)
    return str(value.name).removeprefix(prefix).lower() if value is not None else str(number)


def timestamp(value: When | None, name: str) -> timestamp_pb2.Timestamp | None:
    """A ``Timestamp`` for an aware ``datetime`` or a ``timedelta`` from now; a naive ``datetime`` is refused
    because it names no moment."""
    if value is None:
        return None
    if isinstance(value, datetime.timedelta):
        value = datetime.datetime.now(datetime.UTC) + value
    elif not isinstance(value, datetime.datetime):
        raise TypeError(f"{name} must be a datetime or a timedelta, not {type(value).__name__}")
    if value.tzinfo is None:
        raise ValueError(f"{name} must be timezone-aware (a naive datetime names no moment)")
    stamp = timestamp_pb2.Timestamp()
    stamp.FromDatetime(value.astimezone(datetime.UTC))
    return stamp


def duration(value: datetime.timedelta | None) -> duration_pb2.Duration | None:
    """A ``Duration`` for a ``timedelta``, or ``None``."""
    if value is None:
        return None
    result = duration_pb2.Duration()
    result.FromTimedelta(value)
    return result


def request_id(value: str | None) -> str:
    """The caller's request id, or a new one: every retried attempt of a call carries the same id, so the
    server applies it once."""
    return value if value else str(uuid.uuid4())


def strings(values: Sequence[str] | str, name: str) -> list[str]:
    """A list of strings; a bare string is refused, as it would be read as its characters."""
    if isinstance(values, str):
        raise TypeError(f"{name} must be a sequence of strings, not one string")
    return list(values)
