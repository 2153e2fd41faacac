"""Amounts as the API carries them: base-10 strings of base units, parsed to exact integers."""

from __future__ import annotations

from .ledger.types import MAX_AMOUNT

_DIGITS = frozenset("0123456789")


def parse_amount(value: str, *, allow_zero: bool = False) -> int:
    """The integer an amount string holds, or ``ValueError`` saying what is wrong.

    Only plain digits: no sign, spaces, separators, decimal point or exponent (``int()`` would take
    ``" +1_000 "``, which a payment API must not guess about). Positive (or zero with ``allow_zero``)
    and below 2^256.
    """
    if not value:
        kind = "non-negative" if allow_zero else "positive"
        raise ValueError(f"is required: a {kind} base-10 integer of base units")
    if not _DIGITS.issuperset(value):
        raise ValueError("must be a base-10 integer of base units: digits only, no sign, point or exponent")
    if len(value) > 78:
        raise ValueError("must be below 2^256")
    amount = int(value)
    if amount == 0 and not allow_zero:
        raise ValueError("must be positive")
    if amount > MAX_AMOUNT:
        raise ValueError("must be below 2^256")
    return amount
