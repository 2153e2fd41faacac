"""Payments in the database: the row form of :class:`~agentflow_server.engine.model.Payment`, and reads."""

from __future__ import annotations

import json
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

import sqlalchemy as sa
from sqlalchemy.engine import Connection

from ..engine.fees import Fee
from ..engine.model import Payment, PaymentKind, PaymentStatus, Priority, Settlement
from .database import Database
from .newest import newest_matching_any
from .schema import payments


def fee_columns(fee: Fee) -> dict[str, Any]:
    """The ``fee_*`` columns of a fee, as payments and escrows store it."""
    return {
        "fee_total": fee.total,
        "fee_platform": fee.platform,
        "fee_network": fee.network,
        "fee_agent": fee.agent,
        "fee_staking": fee.staking,
        "fee_base": fee.base,
        "fee_rate_bps": fee.rate_bps,
        "fee_congestion_bps": fee.congestion_adjustment_bps,
        "fee_volume_bps": fee.volume_discount_bps,
        "fee_batch_bps": fee.batch_discount_bps,
    }


def fee_from_row(row: Mapping[Any, Any]) -> Fee:
    """The fee a row's ``fee_*`` columns hold."""
    return Fee(
        total=row["fee_total"],
        platform=row["fee_platform"],
        network=row["fee_network"],
        agent=row["fee_agent"],
        staking=row["fee_staking"],
        base=row["fee_base"],
        rate_bps=row["fee_rate_bps"],
        congestion_adjustment_bps=row["fee_congestion_bps"],
        volume_discount_bps=row["fee_volume_bps"],
        batch_discount_bps=row["fee_batch_bps"],
    )


def payment_row(payment: Payment) -> dict[str, Any]:
    """The row of a payment."""
    return {
        "payer": payment.payer,
        "payee": payment.payee,
        "token": payment.token,
        "amount": payment.amount,
        **fee_columns(payment.fee),
        "priority": int(payment.priority),
        "task_id": payment.task_id,
        "memo": payment.memo,
        "metadata": json.dumps(payment.metadata, separators=(",", ":")) if payment.metadata else "{}",
        "request_id": payment.request_id,
        "create_time_us": payment.create_time_us,
        "escrow_id": payment.escrow_id,
        "kind": int(payment.kind),
        **payment_state_row(payment),
    }


def payment_state_row(payment: Payment) -> dict[str, Any]:
    """The columns of what changes in a payment after it is accepted: its state and its settlement (see
    :class:`~agentflow_server.engine.model.Payment`). With its id, so that it updates the row by itself."""
    settlement = payment.settlement
    return {
        "payment_id": payment.payment_id,
        "status": int(payment.status),
        "update_time_us": payment.update_time_us,
        "batch_id": payment.batch_id,
        "failure_reason": payment.failure_reason,
        "transaction_hash": settlement.transaction_hash if settlement else None,
        "block_number": settlement.block_number if settlement else None,
        "gas_used": settlement.gas_used if settlement else None,
        "gas_cost_wei": settlement.gas_cost_wei if settlement else None,
        "complete_time_us": settlement.complete_time_us if settlement else None,
    }


def payment_from_row(row: Mapping[Any, Any]) -> Payment:
    """The payment a row holds."""
    settlement = None
    if row["transaction_hash"] is not None:
        settlement = Settlement(
            batch_id=row["batch_id"] or "",
            transaction_hash=row["transaction_hash"],
            block_number=row["block_number"] or 0,
            gas_used=row["gas_used"] or 0,
            gas_cost_wei=row["gas_cost_wei"] or 0,
            complete_time_us=row["complete_time_us"] or 0,
        )
    return Payment(
        payment_id=row["payment_id"],
        payer=row["payer"],
        payee=row["payee"],
        token=row["token"],
        amount=row["amount"],
        fee=fee_from_row(row),
        priority=Priority(row["priority"]),
        status=PaymentStatus(row["status"]),
        task_id=row["task_id"],
        memo=row["memo"],
        metadata=json.loads(row["metadata"]),
        request_id=row["request_id"],
        create_time_us=row["create_time_us"],
        update_time_us=row["update_time_us"],
        failure_reason=row["failure_reason"],
        escrow_id=row["escrow_id"],
        settlement=settlement,
        kind=PaymentKind(row["kind"]),
        batch_id=row["batch_id"],
    )


@dataclass(frozen=True)
class PaymentFilter:
    """ListPayments filters; ``None`` matches everything. ``visible_to`` limits to payments naming one of
    those addresses (a key bound to addresses)."""

    payer: str | None = None
    payee: str | None = None
    task_id: str | None = None
    status: PaymentStatus | None = None
    token: str | None = None
    visible_to: frozenset[str] | None = None


def load_payments(connection: Connection, payment_ids: Iterable[str]) -> dict[str, Payment]:
    """The payments with these ids that exist."""
    ids = list(payment_ids)
    if not ids:
        return {}
    result = connection.execute(sa.select(payments).where(payments.c.payment_id.in_(ids)))
    return {row.payment_id: payment_from_row(row._mapping) for row in result}


class PaymentReader:
    """Reads payments for the API (the engine is the only writer)."""

    def __init__(self, database: Database) -> None:
        self._database = database

    async def get(self, payment_id: str) -> Payment | None:
        """The payment with this id, if any."""
        async with self._database.connect() as connection:
            found = await connection.run_sync(load_payments, [payment_id])
        return found.get(payment_id)

    async def page(self, where: PaymentFilter, *, limit: int, before: str | None) -> list[Payment]:
        """Payments newest first, ``limit`` of them, older than the payment id ``before``."""
        c = payments.c
        query = sa.select(payments).where(c.kind == int(PaymentKind.PAYMENT))
        if where.payer is not None:
            query = query.where(c.payer == where.payer)
        if where.payee is not None:
            query = query.where(c.payee == where.payee)
        if where.task_id is not None:
            query = query.where(c.task_id == where.task_id)
        if where.status is not None:
            query = query.where(c.status == int(where.status))
        if where.token is not None:
            query = query.where(c.token == where.token)
        if before is not None:
            query = query.where(c.payment_id < before)
        async with self._database.connect() as connection:
            if where.visible_to is None:
                rows = list(await connection.execute(query.order_by(c.payment_id.desc()).limit(limit)))
            else:
                visible = sorted(where.visible_to)
                conditions = [c.payer == a for a in visible] + [c.payee == a for a in visible]
                rows = await newest_matching_any(connection, query, c.payment_id, conditions, limit)
        return [payment_from_row(row._mapping) for row in rows]
