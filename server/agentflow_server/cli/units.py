"""What people type, turned into what the API takes: amounts (base units, or whole tokens with ``--decimal``),
expiry times, ``key=value`` metadata and resource names; and amounts shown back in whole tokens.

Amounts are exact: base units are digits only, and a decimal is split at its point and scaled with integer
arithmetic by the token's decimals from ListTokens. Nothing here ever goes through a float.
"""

from __future__ import annotations

import datetime
import re
from collections.abc import Sequence

from .errors import CliError

_DIGITS = re.compile(r"[0-9]+")
_DECIMAL = re.compile(r"([0-9]*)(?:\.([0-9]*))?")
_DURATION = re.compile(r"([0-9]+)\s*([smhdw])")
_UNITS = {"s": 1, "m": 60, "h": 3600, "d": 86_400, "w": 7 * 86_400}


def base_units(text: str, argument: str = "AMOUNT") -> str:
    """``text`` as a base-10 string of base units: digits only (``1500000``), so nothing is rounded."""
    value = text.strip().replace("_", "")
    if not _DIGITS.fullmatch(value):
        hint = (
            f"give it in base units (digits only), or add --decimal to give {text} in whole tokens"
            if _DECIMAL.fullmatch(value) and value not in ("", ".")
            else "give a whole number of base units, e.g. 1500000 (1.5 USDC)"
        )
        raise CliError(f"{argument}: {text!r} is not a number of base units", hint=hint, reason="INVALID_AMOUNT")
    return str(int(value))


def from_decimal(text: str, decimals: int, token: str, argument: str = "AMOUNT") -> str:
    """``text`` in whole tokens (``1.5``) as base units of a token with ``decimals`` decimals (``1500000``
    for USDC's 6). More fractional digits than the token has is an error, never a rounding."""
    value = text.strip().replace("_", "")
    match = _DECIMAL.fullmatch(value)
    if match is None or value in ("", "."):
        raise CliError(
            f"{argument}: {text!r} is not a decimal number",
            hint=f"give whole {token}, e.g. 1.5 (no sign, exponent or thousands separator)",
            reason="INVALID_AMOUNT",
        )
    whole, fraction = match.group(1) or "0", (match.group(2) or "").rstrip("0")
    if len(fraction) > decimals:
        raise CliError(
            f"{argument}: {text} has more decimal places than {token} has ({decimals})",
            hint=f"the smallest amount of {token} is 0.{'0' * (decimals - 1)}1" if decimals else "give a whole number",
            reason="INVALID_AMOUNT",
        )
    return str(int(whole) * 10**decimals + int(fraction.ljust(decimals, "0") or "0"))


def to_decimal(amount: str, decimals: int) -> str:
    """Base units shown in whole tokens, exactly: ``1500000`` with 6 decimals is ``1.5``."""
    if not _DIGITS.fullmatch(amount or ""):
        return amount
    if decimals == 0:
        return str(int(amount))
    digits = amount.rjust(decimals + 1, "0")
    whole, fraction = digits[:-decimals].lstrip("0") or "0", digits[-decimals:].rstrip("0")
    return f"{whole}.{fraction}" if fraction else whole


def when(text: str, argument: str = "--expires") -> datetime.datetime:
    """A moment: a duration from now (``90m``, ``24h``, ``7d``, ``2w``, or ``1d12h``) or an ISO 8601 time with
    its zone (``2026-12-02T00:00:00Z``)."""
    value = text.strip()
    parts = _DURATION.findall(value)
    if parts and "".join(f"{n}{u}" for n, u in parts) == value.replace(" ", ""):
        seconds = sum(int(n) * _UNITS[u] for n, u in parts)
        return datetime.datetime.now(datetime.UTC) + datetime.timedelta(seconds=seconds)
    try:
        moment = datetime.datetime.fromisoformat(value)
    except ValueError:
        raise CliError(
            f"{argument}: {text!r} is neither a duration nor a time",
            hint="give a duration from now (30m, 24h, 7d) or an ISO 8601 time with its zone (2026-12-02T00:00:00Z)",
        ) from None
    if moment.tzinfo is None:
        raise CliError(
            f"{argument}: {text!r} names no time zone",
            hint="add one: 2026-12-02T00:00:00Z or 2026-12-02T00:00:00+01:00",
        )
    return moment


def metadata(pairs: Sequence[str] | None, argument: str = "--metadata") -> dict[str, str]:
    """``key=value`` pairs as a dict; a key given twice is an error rather than a silent overwrite."""
    result: dict[str, str] = {}
    for pair in pairs or ():
        key, sep, value = pair.partition("=")
        if not sep or not key:
            raise CliError(f"{argument}: {pair!r} is not key=value", hint=f"e.g. {argument} customer=acme")
        if key in result:
            raise CliError(f"{argument}: {key!r} is given twice")
        result[key] = value
    return result


def resource(name: str, collection: str) -> str:
    """A resource name from what was typed: ``payments/0661...`` as is, or the bare id with the collection
    put in front (``0661...`` → ``payments/0661...``)."""
    value = name.strip()
    return value if "/" in value else f"{collection}/{value}"
