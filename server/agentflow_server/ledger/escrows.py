"""Escrows in the database: the row form of :class:`~agentflow_server.engine.model.Escrow`, and reads."""

from __future__ import annotations

import json
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

import sqlalchemy as sa
from sqlalchemy.engine import Connection

from ..engine.model import Dispute, Escrow, EscrowStatus, ExpiryAction, Priority, ReleaseCondition
from .database import Database
from .newest import newest_matching_any
from .payments import fee_columns, fee_from_row
from .schema import escrows


def escrow_row(escrow: Escrow) -> dict[str, Any]:
    """The row of an escrow (written whole: escrows change a handful of times in their life)."""
    dispute = escrow.dispute
    return {
        "escrow_id": escrow.escrow_id,
        "task_id": escrow.task_id,
        "payer": escrow.payer,
        "payee": escrow.payee,
        "token": escrow.token,
        "amount": escrow.amount,
        **fee_columns(escrow.fee),
        "release_condition": int(escrow.release_condition),
        "arbiter": escrow.arbiter,
        "verifier": escrow.verifier,
        "expiry_action": int(escrow.expiry_action),
        "expire_time_us": escrow.expire_time_us,
        "priority": int(escrow.priority),
        "metadata": json.dumps(escrow.metadata, separators=(",", ":")),
        "request_id": escrow.request_id,
        "create_time_us": escrow.create_time_us,
        "update_time_us": escrow.update_time_us,
        "status": int(escrow.status),
        "expired": int(escrow.expired),
        "released_amount": escrow.released_amount,
        "refunded_amount": escrow.refunded_amount,
        "fee_charged": escrow.fee_charged,
        "release_payments": json.dumps(escrow.release_payments, separators=(",", ":")),
        "result_hash": escrow.result_hash,
        "refund_reason": escrow.refund_reason,
        "dispute_raised_by": dispute.raised_by if dispute else None,
        "dispute_reason": dispute.reason if dispute else None,
        "dispute_time_us": dispute.create_time_us if dispute else None,
        "dispute_payee_amount": dispute.payee_amount if dispute else None,
        "dispute_payer_amount": dispute.payer_amount if dispute else None,
        "resolution_note": dispute.resolution_note if dispute else None,
        "resolve_time_us": dispute.resolve_time_us if dispute else None,
    }


def escrow_from_row(row: Mapping[Any, Any]) -> Escrow:
    """The escrow a row holds."""
    dispute = None
    if row["dispute_raised_by"] is not None:
        dispute = Dispute(
            raised_by=row["dispute_raised_by"],
            reason=row["dispute_reason"] or "",
            create_time_us=row["dispute_time_us"] or 0,
            payee_amount=row["dispute_payee_amount"],
            payer_amount=row["dispute_payer_amount"],
            resolution_note=row["resolution_note"] or "",
            resolve_time_us=row["resolve_time_us"],
        )
    return Escrow(
        escrow_id=row["escrow_id"],
        task_id=row["task_id"],
        payer=row["payer"],
        payee=row["payee"],
        token=row["token"],
        amount=row["amount"],
        fee=fee_from_row(row),
        release_condition=ReleaseCondition(row["release_condition"]),
        arbiter=row["arbiter"],
        verifier=row["verifier"],
        expiry_action=ExpiryAction(row["expiry_action"]),
        expire_time_us=row["expire_time_us"],
        priority=Priority(row["priority"]),
        metadata=json.loads(row["metadata"]),
        request_id=row["request_id"],
        create_time_us=row["create_time_us"],
        update_time_us=row["update_time_us"],
        status=EscrowStatus(row["status"]),
        expired=bool(row["expired"]),
        released_amount=row["released_amount"],
        refunded_amount=row["refunded_amount"],
        fee_charged=row["fee_charged"],
        dispute=dispute,
        release_payments=json.loads(row["release_payments"]),
        result_hash=row["result_hash"],
        refund_reason=row["refund_reason"],
    )


def load_escrows(connection: Connection, escrow_ids: Iterable[str]) -> dict[str, Escrow]:
    """The escrows with these ids that exist."""
    ids = list(escrow_ids)
    if not ids:
        return {}
    result = connection.execute(sa.select(escrows).where(escrows.c.escrow_id.in_(ids)))
    return {row.escrow_id: escrow_from_row(row._mapping) for row in result}


def load_deadlines(connection: Connection) -> list[tuple[int, str]]:
    """(expire_time_us, escrow_id) of every active escrow: what the expiry timer waits for."""
    c = escrows.c
    query = sa.select(c.expire_time_us, c.escrow_id).where(c.status == int(EscrowStatus.ACTIVE))
    return [(row.expire_time_us, row.escrow_id) for row in connection.execute(query)]


@dataclass(frozen=True)
class EscrowFigures:
    """How many escrows there are in each status, and what the open ones hold per token."""

    by_status: dict[EscrowStatus, int]
    value_locked: dict[str, int]

    @property
    def total(self) -> int:
        """Escrows ever created."""
        return sum(self.by_status.values())


def load_figures(connection: Connection) -> EscrowFigures:
    """Counts by status (one pass over the status index) and the held amounts of active and disputed
    escrows, summed here: amounts are text in SQLite, and a sum in SQL would round past 2^63."""
    c = escrows.c
    by_status = {
        EscrowStatus(status): count
        for status, count in connection.execute(sa.select(c.status, sa.func.count()).group_by(c.status))
    }
    locked: dict[str, int] = {}
    open_ = [int(EscrowStatus.ACTIVE), int(EscrowStatus.DISPUTED)]
    query = sa.select(c.token, c.amount, c.released_amount, c.refunded_amount).where(c.status.in_(open_))
    for token, amount, released, refunded in connection.execute(query):
        locked[token] = locked.get(token, 0) + amount - released - refunded
    return EscrowFigures(by_status, locked)


@dataclass(frozen=True)
class EscrowFilter:
    """ListEscrows filters; ``None`` matches everything. ``visible_to`` limits to escrows naming one of
    those addresses as payer, payee, arbiter or verifier (a key bound to addresses)."""

    payer: str | None = None
    payee: str | None = None
    task_id: str | None = None
    status: EscrowStatus | None = None
    visible_to: frozenset[str] | None = None


class EscrowReader:
    """Reads escrows for the API (the engine is the only writer)."""

    def __init__(self, database: Database) -> None:
        self._database = database

    async def get(self, escrow_id: str) -> Escrow | None:
        """The escrow with this id, if any."""
        async with self._database.connect() as connection:
            found = await connection.run_sync(load_escrows, [escrow_id])
        return found.get(escrow_id)

    async def figures(self) -> EscrowFigures:
        """The escrow figures of GetMetrics."""
        async with self._database.connect() as connection:
            return await connection.run_sync(load_figures)

    async def page(self, where: EscrowFilter, *, limit: int, before: str | None) -> list[Escrow]:
        """Escrows newest first, ``limit`` of them, older than the escrow id ``before``."""
        c = escrows.c
        query = sa.select(escrows)
        if where.payer is not None:
            query = query.where(c.payer == where.payer)
        if where.payee is not None:
            query = query.where(c.payee == where.payee)
        if where.task_id is not None:
            query = query.where(c.task_id == where.task_id)
        if where.status is not None:
            query = query.where(c.status == int(where.status))
        if before is not None:
            query = query.where(c.escrow_id < before)
        async with self._database.connect() as connection:
            if where.visible_to is None:
                rows = list(await connection.execute(query.order_by(c.escrow_id.desc()).limit(limit)))
            else:
                conditions = [
                    column == address
                    for column in (c.payer, c.payee, c.arbiter, c.verifier)
                    for address in sorted(where.visible_to)
                ]
                rows = await newest_matching_any(connection, query, c.escrow_id, conditions, limit)
        return [escrow_from_row(row._mapping) for row in rows]
