"""Table definitions. The schema itself is made by the migrations in ``migrations/versions``.

Times are integer microseconds since the Unix epoch: exact and the same in
SQLite and PostgreSQL.
"""

from __future__ import annotations

from typing import Any

from sqlalchemy import BigInteger, Column, Integer, LargeBinary, MetaData, SmallInteger, String, Table, Text

from .types import SERIAL_ID, Amount

metadata = MetaData()


def _fee_columns() -> list[Column[Any]]:
    """A fee as payments and escrows store it: its total, four parts and base, and the rates applied."""
    amounts = ("fee_total", "fee_platform", "fee_network", "fee_agent", "fee_staking", "fee_base")
    rates = ("fee_rate_bps", "fee_congestion_bps", "fee_volume_bps", "fee_batch_bps")
    return [Column(name, Amount, nullable=False) for name in amounts] + [
        Column(name, Integer, nullable=False) for name in rates
    ]


api_keys = Table(
    "api_keys",
    metadata,
    Column("key_id", String(32), primary_key=True),
    Column("key_hash", String(64), nullable=False, unique=True),
    Column("key_prefix", String(16), nullable=False),
    Column("display_name", String(128), nullable=False),
    Column("scope", String(16), nullable=False),
    # JSON list of EIP-55 addresses.
    Column("addresses", Text, nullable=False),
    Column("requests_per_minute", Integer, nullable=False),
    Column("burst", Integer, nullable=False),
    Column("create_time_us", BigInteger, nullable=False),
    Column("revoke_time_us", BigInteger, nullable=True),
    Column("expire_time_us", BigInteger, nullable=True),
)

accounts = Table(
    "accounts",
    metadata,
    Column("address", String(42), primary_key=True),
    Column("token", String(16), primary_key=True),
    Column("available", Amount, nullable=False),
    Column("reserved", Amount, nullable=False),
    Column("escrowed", Amount, nullable=False),
    Column("update_time_us", BigInteger, nullable=False),
)
"""Balances per (address, token): the sum of the journal's movements, kept current for checks and reads."""

transfers = Table(
    "transfers",
    metadata,
    Column("transfer_id", SERIAL_ID, primary_key=True, autoincrement=True),
    Column("kind", SmallInteger, nullable=False),
    Column("token", String(16), nullable=False),
    Column("debit_address", String(42), nullable=False),
    Column("debit_bucket", SmallInteger, nullable=False),
    Column("credit_address", String(42), nullable=False),
    Column("credit_bucket", SmallInteger, nullable=False),
    Column("amount", Amount, nullable=False),
    Column("reference", String(96), nullable=False),
    Column("create_time_us", BigInteger, nullable=False),
)
"""The double-entry journal: each row moves ``amount`` from one (address, bucket) to another, so every
movement has both sides by construction. Money entering or leaving the ledger moves to or from the
pseudo-address ``@chain``."""

payments = Table(
    "payments",
    metadata,
    # Time-ordered ids: the primary key's order is the acceptance order.
    Column("payment_id", String(32), primary_key=True),
    Column("payer", String(42), nullable=False),
    Column("payee", String(42), nullable=False),
    Column("token", String(16), nullable=False),
    Column("amount", Amount, nullable=False),
    *_fee_columns(),
    Column("priority", SmallInteger, nullable=False),
    Column("status", SmallInteger, nullable=False),
    Column("task_id", String(128), nullable=False),
    Column("memo", String(512), nullable=False),
    Column("metadata", Text, nullable=False),
    Column("request_id", String(64), nullable=False),
    Column("create_time_us", BigInteger, nullable=False),
    Column("update_time_us", BigInteger, nullable=False),
    Column("batch_id", String(32), nullable=True),
    Column("failure_reason", String(512), nullable=False),
    Column("escrow_id", String(32), nullable=True),
    Column("transaction_hash", String(66), nullable=True),
    Column("block_number", BigInteger, nullable=True),
    Column("gas_used", Amount, nullable=True),
    Column("gas_cost_wei", Amount, nullable=True),
    Column("complete_time_us", BigInteger, nullable=True),
    Column("kind", SmallInteger, nullable=False, server_default="1"),
)
"""Payments, and withdrawals (kind 2), which settle the same way."""

batches = Table(
    "batches",
    metadata,
    Column("batch_id", String(32), primary_key=True),
    Column("chain_batch_id", BigInteger, nullable=False),
    Column("status", SmallInteger, nullable=False),
    Column("payment_ids", Text, nullable=False),
    Column("transactions", Text, nullable=False),
    Column("attempts", SmallInteger, nullable=False),
    Column("transaction_hash", String(66), nullable=True),
    Column("block_number", BigInteger, nullable=True),
    Column("block_hash", String(66), nullable=True),
    Column("gas_used", Amount, nullable=True),
    Column("gas_price", Amount, nullable=True),
    Column("failure_reason", String(512), nullable=False),
    Column("create_time_us", BigInteger, nullable=False),
    Column("update_time_us", BigInteger, nullable=False),
    Column("submit_time_us", BigInteger, nullable=True),
    Column("confirm_time_us", BigInteger, nullable=True),
)
"""Settlement batches: one contract call each, written before its transaction is sent."""

chain_state = Table(
    "chain_state",
    metadata,
    Column("key", String(64), primary_key=True),
    Column("value", Text, nullable=False),
    Column("update_time_us", BigInteger, nullable=False),
)
"""The chain the ledger belongs to (chain id, genesis hash, contract) and how far each watcher has read."""

idempotency = Table(
    "idempotency",
    metadata,
    # "{scope}|{request_id}": one indexed column, so a group looks up all its keys with one IN list.
    Column("key", String(160), primary_key=True),
    # What the request id is unique within, for example "payment:<payer>" or "deposit".
    Column("scope", String(64), nullable=False),
    Column("request_id", String(96), nullable=False),
    # SHA-256 of the request's meaning: the same id with another meaning is a conflict.
    Column("request_hash", String(64), nullable=False),
    Column("resource", String(96), nullable=False),
    Column("create_time_us", BigInteger, nullable=False),
)

events = Table(
    "events",
    metadata,
    Column("sequence", SERIAL_ID, primary_key=True, autoincrement=True),
    Column("type", String(48), nullable=False),
    Column("create_time_us", BigInteger, nullable=False),
    Column("resource", String(96), nullable=False),
    # JSON list of the EIP-55 addresses the event concerns.
    Column("addresses", Text, nullable=False),
    Column("task_id", String(128), nullable=False),
    # The resource right after the change: its serialized v1 message (Payment, Deposit...).
    Column("payload", LargeBinary, nullable=False),
)
"""The outbox every stream and webhook reads, written in the transaction of the change it records."""

volume_daily = Table(
    "volume_daily",
    metadata,
    Column("payer", String(42), primary_key=True),
    Column("token", String(16), primary_key=True),
    # Days since the Unix epoch (UTC).
    Column("day", Integer, primary_key=True),
    Column("amount", Amount, nullable=False),
)
"""Accepted payment volume per payer, token and day: the trailing 30 days set the volume discount."""

escrows = Table(
    "escrows",
    metadata,
    # Time-ordered ids, like payments.
    Column("escrow_id", String(32), primary_key=True),
    Column("task_id", String(128), nullable=False),
    Column("payer", String(42), nullable=False),
    Column("payee", String(42), nullable=False),
    Column("token", String(16), nullable=False),
    Column("amount", Amount, nullable=False),
    *_fee_columns(),
    Column("release_condition", SmallInteger, nullable=False),
    Column("arbiter", String(42), nullable=True),
    Column("verifier", String(42), nullable=True),
    Column("expiry_action", SmallInteger, nullable=False),
    Column("expire_time_us", BigInteger, nullable=False),
    Column("priority", SmallInteger, nullable=False),
    Column("metadata", Text, nullable=False),
    Column("request_id", String(64), nullable=False),
    Column("create_time_us", BigInteger, nullable=False),
    Column("update_time_us", BigInteger, nullable=False),
    Column("status", SmallInteger, nullable=False),
    Column("expired", SmallInteger, nullable=False),
    Column("released_amount", Amount, nullable=False),
    Column("refunded_amount", Amount, nullable=False),
    # The part of the fee carried by release payments so far.
    Column("fee_charged", Amount, nullable=False),
    # JSON list of the ids of the payments its releases created.
    Column("release_payments", Text, nullable=False),
    Column("result_hash", String(66), nullable=True),
    Column("refund_reason", String(512), nullable=False),
    Column("dispute_raised_by", String(42), nullable=True),
    Column("dispute_reason", String(512), nullable=True),
    Column("dispute_time_us", BigInteger, nullable=True),
    Column("dispute_payee_amount", Amount, nullable=True),
    Column("dispute_payer_amount", Amount, nullable=True),
    Column("resolution_note", String(512), nullable=True),
    Column("resolve_time_us", BigInteger, nullable=True),
)
"""Task escrows. The money they hold is the payer's ``escrowed`` balance; the journal has every move."""

webhooks = Table(
    "webhooks",
    metadata,
    Column("webhook_id", String(32), primary_key=True),
    # The API key that registered it: deliveries carry only what that key may see.
    Column("owner_key_id", String(32), nullable=False),
    Column("url", String(2048), nullable=False),
    # JSON list of event type patterns; empty for all.
    Column("event_types", Text, nullable=False),
    Column("description", String(256), nullable=False),
    Column("state", SmallInteger, nullable=False),
    Column("disabled_reason", String(512), nullable=False),
    # JSON list of {"secret", "expire_time_us"}: HMAC needs the secret itself, so it cannot be hashed.
    Column("secrets", Text, nullable=False),
    Column("cursor", BigInteger, nullable=False),
    Column("failing_since_us", BigInteger, nullable=True),
    Column("request_id", String(64), nullable=False),
    Column("request_hash", String(64), nullable=False),
    Column("create_time_us", BigInteger, nullable=False),
    Column("update_time_us", BigInteger, nullable=False),
)
"""Webhook endpoints. ``cursor`` is how far the log has been fanned out to the endpoint."""

webhook_deliveries = Table(
    "webhook_deliveries",
    metadata,
    # Time-ordered: the webhook-id header, the same across retries.
    Column("delivery_id", String(40), primary_key=True),
    Column("webhook_id", String(32), nullable=False),
    Column("event_sequence", BigInteger, nullable=False),
    Column("event_type", String(48), nullable=False),
    Column("status", SmallInteger, nullable=False),
    Column("attempt_count", Integer, nullable=False),
    Column("attempt_limit", Integer, nullable=False),
    Column("next_attempt_time_us", BigInteger, nullable=True),
    Column("create_time_us", BigInteger, nullable=False),
    Column("complete_time_us", BigInteger, nullable=True),
    # The last attempt.
    Column("http_status", Integer, nullable=True),
    Column("duration_us", BigInteger, nullable=True),
    Column("response_excerpt", Text, nullable=True),
    Column("error", String(512), nullable=True),
    Column("success", SmallInteger, nullable=True),
    Column("attempt_time_us", BigInteger, nullable=True),
)
"""One row per (event, endpoint): the durable state of its delivery, which retries and restarts resume."""
