"""Column types: amounts as exact integers up to 2^256-1 in either database."""

from __future__ import annotations

from typing import Any

from sqlalchemy import BigInteger, Integer, Numeric, String
from sqlalchemy.engine import Dialect
from sqlalchemy.types import TypeDecorator, TypeEngine

MAX_AMOUNT = 2**256 - 1
"""The largest amount anywhere in the ledger: a uint256, as on chain."""


class Amount(TypeDecorator[int]):
    """An exact non-negative integer of up to 78 digits.

    PostgreSQL stores ``NUMERIC(78,0)``. SQLite integers stop at 2^63, so there
    it is the decimal text; the ledger never sums or compares amounts in SQL,
    only in Python, so text loses nothing.
    """

    impl = String(78)
    cache_ok = True

    def load_dialect_impl(self, dialect: Dialect) -> TypeEngine[Any]:
        if dialect.name == "postgresql":
            return dialect.type_descriptor(Numeric(78, 0))
        return dialect.type_descriptor(String(78))

    def process_bind_param(self, value: int | None, dialect: Dialect) -> Any:
        if value is None:
            return None
        return value if dialect.name == "postgresql" else str(value)

    def process_result_value(self, value: Any, dialect: Dialect) -> int | None:
        return None if value is None else int(value)


SERIAL_ID = BigInteger().with_variant(Integer(), "sqlite")
"""Ever-growing ids (journal, event sequence): 64-bit, and SQLite's rowid alias, which must be INTEGER."""
