"""The ledger: accounts, the double-entry journal, payments, batches, idempotency, events, volume.

Revision ID: 0002
Revises: 0001
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

from agentflow_server.ledger.types import SERIAL_ID, Amount

revision: str = "0002"
down_revision: str | None = "0001"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.create_table(
        "accounts",
        sa.Column("address", sa.String(42), primary_key=True),
        sa.Column("token", sa.String(16), primary_key=True),
        sa.Column("available", Amount, nullable=False),
        sa.Column("reserved", Amount, nullable=False),
        sa.Column("escrowed", Amount, nullable=False),
        sa.Column("update_time_us", sa.BigInteger, nullable=False),
    )
    op.create_table(
        "transfers",
        sa.Column("transfer_id", SERIAL_ID, primary_key=True, autoincrement=True),
        sa.Column("kind", sa.SmallInteger, nullable=False),
        sa.Column("token", sa.String(16), nullable=False),
        sa.Column("debit_address", sa.String(42), nullable=False),
        sa.Column("debit_bucket", sa.SmallInteger, nullable=False),
        sa.Column("credit_address", sa.String(42), nullable=False),
        sa.Column("credit_bucket", sa.SmallInteger, nullable=False),
        sa.Column("amount", Amount, nullable=False),
        sa.Column("reference", sa.String(96), nullable=False),
        sa.Column("create_time_us", sa.BigInteger, nullable=False),
    )
    op.create_index("transfers_debit", "transfers", ["debit_address", "transfer_id"])
    op.create_index("transfers_credit", "transfers", ["credit_address", "transfer_id"])
    op.create_table(
        "payments",
        sa.Column("payment_id", sa.String(32), primary_key=True),
        sa.Column("payer", sa.String(42), nullable=False),
        sa.Column("payee", sa.String(42), nullable=False),
        sa.Column("token", sa.String(16), nullable=False),
        sa.Column("amount", Amount, nullable=False),
        sa.Column("fee_total", Amount, nullable=False),
        sa.Column("fee_platform", Amount, nullable=False),
        sa.Column("fee_network", Amount, nullable=False),
        sa.Column("fee_agent", Amount, nullable=False),
        sa.Column("fee_staking", Amount, nullable=False),
        sa.Column("fee_base", Amount, nullable=False),
        sa.Column("fee_rate_bps", sa.Integer, nullable=False),
        sa.Column("fee_congestion_bps", sa.Integer, nullable=False),
        sa.Column("fee_volume_bps", sa.Integer, nullable=False),
        sa.Column("fee_batch_bps", sa.Integer, nullable=False),
        sa.Column("priority", sa.SmallInteger, nullable=False),
        sa.Column("status", sa.SmallInteger, nullable=False),
        sa.Column("task_id", sa.String(128), nullable=False),
        sa.Column("memo", sa.String(512), nullable=False),
        sa.Column("metadata", sa.Text, nullable=False),
        sa.Column("request_id", sa.String(64), nullable=False),
        sa.Column("create_time_us", sa.BigInteger, nullable=False),
        sa.Column("update_time_us", sa.BigInteger, nullable=False),
        sa.Column("batch_id", sa.String(32), nullable=True),
        sa.Column("failure_reason", sa.String(512), nullable=False),
        sa.Column("escrow_id", sa.String(32), nullable=True),
        sa.Column("transaction_hash", sa.String(66), nullable=True),
        sa.Column("block_number", sa.BigInteger, nullable=True),
        sa.Column("gas_used", Amount, nullable=True),
        sa.Column("gas_cost_wei", Amount, nullable=True),
        sa.Column("complete_time_us", sa.BigInteger, nullable=True),
    )
    op.create_index("payments_payer", "payments", ["payer", "payment_id"])
    op.create_index("payments_payee", "payments", ["payee", "payment_id"])
    op.create_index("payments_task", "payments", ["task_id", "payment_id"])
    # The queue is rebuilt at start from the payments still queued.
    op.create_index("payments_status", "payments", ["status", "payment_id"])
    op.create_table(
        "batches",
        sa.Column("batch_id", sa.String(32), primary_key=True),
        sa.Column("chain_batch_id", sa.BigInteger, nullable=False, unique=True),
        sa.Column("status", sa.SmallInteger, nullable=False),
        sa.Column("transaction_hash", sa.String(66), nullable=True),
        sa.Column("block_number", sa.BigInteger, nullable=True),
        sa.Column("gas_used", Amount, nullable=True),
        sa.Column("create_time_us", sa.BigInteger, nullable=False),
        sa.Column("update_time_us", sa.BigInteger, nullable=False),
    )
    op.create_table(
        "idempotency",
        sa.Column("key", sa.String(160), primary_key=True),
        sa.Column("scope", sa.String(64), nullable=False),
        sa.Column("request_id", sa.String(96), nullable=False),
        sa.Column("request_hash", sa.String(64), nullable=False),
        sa.Column("resource", sa.String(96), nullable=False),
        sa.Column("create_time_us", sa.BigInteger, nullable=False),
    )
    op.create_table(
        "events",
        sa.Column("sequence", SERIAL_ID, primary_key=True, autoincrement=True),
        sa.Column("type", sa.String(48), nullable=False),
        sa.Column("create_time_us", sa.BigInteger, nullable=False),
        sa.Column("resource", sa.String(96), nullable=False),
        sa.Column("addresses", sa.Text, nullable=False),
        sa.Column("task_id", sa.String(128), nullable=False),
        sa.Column("payload", sa.LargeBinary, nullable=False),
    )
    op.create_table(
        "volume_daily",
        sa.Column("payer", sa.String(42), primary_key=True),
        sa.Column("token", sa.String(16), primary_key=True),
        sa.Column("day", sa.Integer, primary_key=True),
        sa.Column("amount", Amount, nullable=False),
    )


def downgrade() -> None:
    for table in ("volume_daily", "events", "idempotency", "batches", "payments", "transfers", "accounts"):
        op.drop_table(table)
