"""Webhook endpoints and deliveries in the database: their rows, the writes the engine runs for them, and reads.

Every write here is handed to the engine (``StoreRecords``) and runs inside one of its group transactions:
the engine stays the database's only writer, so webhook bookkeeping never contends with payment commits
for SQLite's write lock, and a ``webhook.disabled`` event is written with the state change it records.
"""

from __future__ import annotations

import functools
import json
from collections.abc import Iterable, Mapping
from typing import Any

import sqlalchemy as sa
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.engine import Connection

from ..webhooks.model import Attempt, Delivery, DeliveryStatus, Endpoint, EndpointState, SigningSecret
from .database import Database
from .group import RecordWrite
from .schema import webhook_deliveries, webhooks


def endpoint_row(endpoint: Endpoint) -> dict[str, Any]:
    """The row of an endpoint."""
    return {
        "webhook_id": endpoint.webhook_id,
        "owner_key_id": endpoint.owner_key_id,
        "url": endpoint.url,
        "event_types": json.dumps(list(endpoint.event_types)),
        "description": endpoint.description,
        "state": int(endpoint.state),
        "disabled_reason": endpoint.disabled_reason,
        "secrets": secrets_column(endpoint.secrets),
        "cursor": endpoint.cursor,
        "failing_since_us": endpoint.failing_since_us,
        "request_id": endpoint.request_id,
        "request_hash": endpoint.request_hash,
        "create_time_us": endpoint.create_time_us,
        "update_time_us": endpoint.update_time_us,
    }


def secrets_column(secrets: Iterable[SigningSecret]) -> str:
    """The stored form of an endpoint's secrets."""
    return json.dumps([{"secret": s.secret, "expire_time_us": s.expire_time_us} for s in secrets])


def endpoint_from_row(row: Mapping[Any, Any]) -> Endpoint:
    """The endpoint a row holds."""
    return Endpoint(
        webhook_id=row["webhook_id"],
        owner_key_id=row["owner_key_id"],
        url=row["url"],
        event_types=tuple(json.loads(row["event_types"])),
        description=row["description"],
        state=EndpointState(row["state"]),
        disabled_reason=row["disabled_reason"],
        secrets=tuple(SigningSecret(s["secret"], s["expire_time_us"]) for s in json.loads(row["secrets"])),
        cursor=row["cursor"],
        failing_since_us=row["failing_since_us"],
        request_id=row["request_id"],
        request_hash=row["request_hash"],
        create_time_us=row["create_time_us"],
        update_time_us=row["update_time_us"],
    )


def delivery_row(delivery: Delivery) -> dict[str, Any]:
    """The row of a delivery."""
    attempt = delivery.last_attempt
    return {
        "delivery_id": delivery.delivery_id,
        "webhook_id": delivery.webhook_id,
        "event_sequence": delivery.event_sequence,
        "event_type": delivery.event_type,
        "status": int(delivery.status),
        "attempt_count": delivery.attempt_count,
        "attempt_limit": delivery.attempt_limit,
        "next_attempt_time_us": delivery.next_attempt_time_us,
        "create_time_us": delivery.create_time_us,
        "complete_time_us": delivery.complete_time_us,
        "http_status": attempt.http_status if attempt else None,
        "duration_us": attempt.duration_us if attempt else None,
        "response_excerpt": attempt.body_excerpt if attempt else None,
        "error": attempt.error[:512] if attempt else None,
        "success": int(attempt.success) if attempt else None,
        "attempt_time_us": attempt.attempt_time_us if attempt else None,
    }


def delivery_from_row(row: Mapping[Any, Any]) -> Delivery:
    """The delivery a row holds."""
    attempt = None
    if row["attempt_time_us"] is not None:
        attempt = Attempt(
            http_status=row["http_status"],
            duration_us=row["duration_us"],
            body_excerpt=row["response_excerpt"],
            error=row["error"],
            success=bool(row["success"]),
            attempt_time_us=row["attempt_time_us"],
        )
    return Delivery(
        delivery_id=row["delivery_id"],
        webhook_id=row["webhook_id"],
        event_sequence=row["event_sequence"],
        event_type=row["event_type"],
        status=DeliveryStatus(row["status"]),
        attempt_count=row["attempt_count"],
        attempt_limit=row["attempt_limit"],
        next_attempt_time_us=row["next_attempt_time_us"],
        last_attempt=attempt,
        create_time_us=row["create_time_us"],
        complete_time_us=row["complete_time_us"],
    )


# -- writes (run by the engine) ------------------------------------------------------------------------


# Each write is a partial of a module-level function over plain data: it pickles, so a writer process can run
# it (see RecordWrite).


def insert_endpoint(endpoint: Endpoint) -> RecordWrite:
    """Write a new endpoint."""
    return functools.partial(_insert_endpoint, endpoint_row(endpoint))


def _insert_endpoint(row: dict[str, Any], connection: Connection) -> None:
    connection.execute(sa.insert(webhooks).values(row))


def _endpoint_columns(columns: Mapping[str, Any]) -> dict[str, Any]:
    """Endpoint fields (as :class:`Endpoint` holds them) in the form the table stores them."""
    stored = dict(columns)
    if "event_types" in stored:
        stored["event_types"] = json.dumps(list(stored["event_types"]))
    if "secrets" in stored:
        stored["secrets"] = secrets_column(stored["secrets"])
    if "state" in stored:
        stored["state"] = int(stored["state"])
    return stored


def together(*writes: RecordWrite) -> RecordWrite:
    """Several writes as one, in order."""
    return functools.partial(_together, writes)


def _together(writes: tuple[RecordWrite, ...], connection: Connection) -> None:
    for each in writes:
        each(connection)


def update_endpoint(webhook_id: str, columns: Mapping[str, Any]) -> RecordWrite:
    """Change some fields of an endpoint (only those: a change never overwrites another's columns)."""
    return functools.partial(_update_endpoint, webhook_id, _endpoint_columns(columns))


def _update_endpoint(webhook_id: str, values: dict[str, Any], connection: Connection) -> None:
    connection.execute(sa.update(webhooks).where(webhooks.c.webhook_id == webhook_id).values(values))


def delete_endpoint(webhook_id: str) -> RecordWrite:
    """Delete an endpoint and every delivery it has."""
    return functools.partial(_delete_endpoint, webhook_id)


def _delete_endpoint(webhook_id: str, connection: Connection) -> None:
    connection.execute(sa.delete(webhook_deliveries).where(webhook_deliveries.c.webhook_id == webhook_id))
    connection.execute(sa.delete(webhooks).where(webhooks.c.webhook_id == webhook_id))


def fan_out(deliveries: list[Delivery], cursors: Mapping[str, int]) -> RecordWrite:
    """New deliveries and how far each endpoint's cursor moved, together: after a crash the log is fanned
    out again from the cursors, so each (event, endpoint) gets exactly one delivery."""
    return functools.partial(_fan_out, [delivery_row(d) for d in deliveries], dict(cursors))


def _fan_out(rows: list[dict[str, Any]], cursors: dict[str, int], connection: Connection) -> None:
    if rows:
        insert = postgresql.insert if connection.dialect.name == "postgresql" else sqlite.insert
        # A second fan-out of the same event is a no-op, whatever happened before.
        connection.execute(insert(webhook_deliveries).on_conflict_do_nothing(), rows)
    for webhook_id, cursor in cursors.items():
        connection.execute(sa.update(webhooks).where(webhooks.c.webhook_id == webhook_id).values(cursor=cursor))


def save_delivery(delivery: Delivery, endpoint_columns: Mapping[str, Any] | None = None) -> RecordWrite:
    """A delivery's new state (after an attempt, or a manual retry), with the endpoint's fields that the
    attempt changed. A delivery whose endpoint was deleted meanwhile stays deleted."""
    row = delivery_row(delivery)
    del row["delivery_id"]
    return functools.partial(
        _save_delivery, delivery.delivery_id, delivery.webhook_id, row, _endpoint_columns(endpoint_columns or {})
    )


def _save_delivery(
    delivery_id: str, webhook_id: str, row: dict[str, Any], columns: dict[str, Any], connection: Connection
) -> None:
    connection.execute(sa.update(webhook_deliveries).where(webhook_deliveries.c.delivery_id == delivery_id).values(row))
    if columns:
        connection.execute(sa.update(webhooks).where(webhooks.c.webhook_id == webhook_id).values(columns))


def fail_pending(webhook_id: str, now_us: int) -> RecordWrite:
    """Mark every pending delivery of an endpoint failed (it was disabled)."""
    return functools.partial(_fail_pending, webhook_id, now_us)


def _fail_pending(webhook_id: str, now_us: int, connection: Connection) -> None:
    c = webhook_deliveries.c
    connection.execute(
        sa.update(webhook_deliveries)
        .where(c.webhook_id == webhook_id, c.status == int(DeliveryStatus.PENDING))
        .values(status=int(DeliveryStatus.FAILED), next_attempt_time_us=None, complete_time_us=now_us)
    )


# -- reads ---------------------------------------------------------------------------------------------


def load_endpoints(connection: Connection) -> list[Endpoint]:
    """Every endpoint."""
    return [endpoint_from_row(row._mapping) for row in connection.execute(sa.select(webhooks))]


def load_pending(connection: Connection) -> list[Delivery]:
    """Every pending delivery, oldest event first."""
    c = webhook_deliveries.c
    query = (
        sa.select(webhook_deliveries)
        .where(c.status == int(DeliveryStatus.PENDING))
        .order_by(c.webhook_id, c.event_sequence)
    )
    return [delivery_from_row(row._mapping) for row in connection.execute(query)]


class WebhookReader:
    """Reads deliveries for the API (the engine writes them)."""

    def __init__(self, database: Database) -> None:
        self._database = database

    async def load(self) -> tuple[list[Endpoint], list[Delivery]]:
        """Every endpoint and every pending delivery, for the dispatcher's start."""
        async with self._database.connect() as connection:
            endpoints = await connection.run_sync(load_endpoints)
            pending = await connection.run_sync(load_pending)
        return endpoints, pending

    async def delivery(self, webhook_id: str, delivery_id: str) -> Delivery | None:
        """One delivery of an endpoint, or None."""
        c = webhook_deliveries.c
        async with self._database.connect() as connection:
            result = await connection.execute(
                sa.select(webhook_deliveries).where(c.webhook_id == webhook_id, c.delivery_id == delivery_id)
            )
            row = result.first()
        return delivery_from_row(row._mapping) if row is not None else None

    async def deliveries(
        self, webhook_id: str, status: DeliveryStatus | None, limit: int, before: str | None
    ) -> list[Delivery]:
        """Up to ``limit`` deliveries of an endpoint, newest first, before the id ``before``."""
        c = webhook_deliveries.c
        query = sa.select(webhook_deliveries).where(c.webhook_id == webhook_id)
        if status is not None:
            query = query.where(c.status == int(status))
        if before is not None:
            query = query.where(c.delivery_id < before)
        async with self._database.connect() as connection:
            result = await connection.execute(query.order_by(c.delivery_id.desc()).limit(limit))
            return [delivery_from_row(row._mapping) for row in result]
