"""Pages of rows that match any of several conditions, newest first, without reading whole histories."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import sqlalchemy as sa
from sqlalchemy.ext.asyncio import AsyncConnection

# Above this many conditions, one query with OR: a page would otherwise cost too many queries.
MAX_SPLIT = 16


async def newest_matching_any(
    connection: AsyncConnection,
    query: sa.Select[Any],
    key: sa.ColumnElement[Any],
    conditions: Sequence[sa.ColumnElement[bool]],
    limit: int,
) -> list[sa.Row[Any]]:
    """The ``limit`` rows of ``query`` with the highest ``key`` that meet at least one of ``conditions``
    (each an equality on an indexed column, such as ``payer = a``), highest first.

    ``WHERE a = x OR b = x ORDER BY key DESC LIMIT n`` makes the database gather every row that matches
    either side and sort them all for each page, however few it returns: an address's whole history, read
    again for every page. One query per condition walks that condition's ``(column, key)`` index back from
    the cursor and stops after ``limit`` rows; the results are merged here, a row that meets several
    conditions once.
    """
    if len(conditions) > MAX_SPLIT:
        return list(await connection.execute(query.where(sa.or_(*conditions)).order_by(key.desc()).limit(limit)))
    found: dict[Any, sa.Row[Any]] = {}
    for condition in conditions:
        for row in await connection.execute(query.where(condition).order_by(key.desc()).limit(limit)):
            found[row._mapping[key]] = row
    return [found[k] for k in sorted(found, reverse=True)[:limit]]
