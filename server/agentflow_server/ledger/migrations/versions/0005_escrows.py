"""Task escrows: funds held for a task until released, refunded, expired or split in a dispute.

Revision ID: 0005
Revises: 0004
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

from agentflow_server.ledger.types import Amount

revision: str = "0005"
down_revision: str | None = "0004"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    fee_columns = [
        sa.Column(name, Amount, nullable=False)
        for name in ("fee_total", "fee_platform", "fee_network", "fee_agent", "fee_staking", "fee_base")
    ] + [
        sa.Column(name, sa.Integer, nullable=False)
        for name in ("fee_rate_bps", "fee_congestion_bps", "fee_volume_bps", "fee_batch_bps")
    ]
    op.create_table(
        "escrows",
        sa.Column("escrow_id", sa.String(32), primary_key=True),
        sa.Column("task_id", sa.String(128), nullable=False),
        sa.Column("payer", sa.String(42), nullable=False),
        sa.Column("payee", sa.String(42), nullable=False),
        sa.Column("token", sa.String(16), nullable=False),
        sa.Column("amount", Amount, nullable=False),
        *fee_columns,
        sa.Column("release_condition", sa.SmallInteger, nullable=False),
        sa.Column("arbiter", sa.String(42), nullable=True),
        sa.Column("verifier", sa.String(42), nullable=True),
        sa.Column("expiry_action", sa.SmallInteger, nullable=False),
        sa.Column("expire_time_us", sa.BigInteger, nullable=False),
        sa.Column("priority", sa.SmallInteger, nullable=False),
        sa.Column("metadata", sa.Text, nullable=False),
        sa.Column("request_id", sa.String(64), nullable=False),
        sa.Column("create_time_us", sa.BigInteger, nullable=False),
        sa.Column("update_time_us", sa.BigInteger, nullable=False),
        sa.Column("status", sa.SmallInteger, nullable=False),
        sa.Column("expired", sa.SmallInteger, nullable=False),
        sa.Column("released_amount", Amount, nullable=False),
        sa.Column("refunded_amount", Amount, nullable=False),
        sa.Column("fee_charged", Amount, nullable=False),
        sa.Column("release_payments", sa.Text, nullable=False),
        sa.Column("result_hash", sa.String(66), nullable=True),
        sa.Column("refund_reason", sa.String(512), nullable=False),
        sa.Column("dispute_raised_by", sa.String(42), nullable=True),
        sa.Column("dispute_reason", sa.String(512), nullable=True),
        sa.Column("dispute_time_us", sa.BigInteger, nullable=True),
        sa.Column("dispute_payee_amount", Amount, nullable=True),
        sa.Column("dispute_payer_amount", Amount, nullable=True),
        sa.Column("resolution_note", sa.String(512), nullable=True),
        sa.Column("resolve_time_us", sa.BigInteger, nullable=True),
    )
    # ListEscrows' filters, newest first; the arbiter's and verifier's views; the timer's rebuild at start.
    op.create_index("escrows_payer", "escrows", ["payer", "escrow_id"])
    op.create_index("escrows_payee", "escrows", ["payee", "escrow_id"])
    op.create_index("escrows_task", "escrows", ["task_id", "escrow_id"])
    op.create_index("escrows_arbiter", "escrows", ["arbiter", "escrow_id"])
    op.create_index("escrows_verifier", "escrows", ["verifier", "escrow_id"])
    op.create_index("escrows_status", "escrows", ["status", "expire_time_us"])


def downgrade() -> None:
    op.drop_table("escrows")
