"""The chain side: what chain the ledger belongs to and how far its watchers read (chain_state), and
settlement batches with the transactions sent for them.

Revision ID: 0003
Revises: 0002
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

from agentflow_server.ledger.types import Amount

revision: str = "0003"
down_revision: str | None = "0002"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.create_table(
        "chain_state",
        sa.Column("key", sa.String(64), primary_key=True),
        sa.Column("value", sa.Text, nullable=False),
        sa.Column("update_time_us", sa.BigInteger, nullable=False),
    )
    # 0002's batches table was never written: it is replaced by the settlement stage's shape.
    op.drop_table("batches")
    op.create_table(
        "batches",
        sa.Column("batch_id", sa.String(32), primary_key=True),
        # The contract's batch number; a failed batch's number is used again by the next one.
        sa.Column("chain_batch_id", sa.BigInteger, nullable=False),
        sa.Column("status", sa.SmallInteger, nullable=False),
        # JSON list of payment ids in item order: the contract's events name items by that index.
        sa.Column("payment_ids", sa.Text, nullable=False),
        # JSON list of every signed version sent ({"hash", "raw", "nonce"}), oldest first.
        sa.Column("transactions", sa.Text, nullable=False),
        sa.Column("attempts", sa.SmallInteger, nullable=False),
        sa.Column("transaction_hash", sa.String(66), nullable=True),
        sa.Column("block_number", sa.BigInteger, nullable=True),
        sa.Column("block_hash", sa.String(66), nullable=True),
        sa.Column("gas_used", Amount, nullable=True),
        sa.Column("gas_price", Amount, nullable=True),
        sa.Column("failure_reason", sa.String(512), nullable=False),
        sa.Column("create_time_us", sa.BigInteger, nullable=False),
        sa.Column("update_time_us", sa.BigInteger, nullable=False),
        sa.Column("submit_time_us", sa.BigInteger, nullable=True),
        sa.Column("confirm_time_us", sa.BigInteger, nullable=True),
    )
    # Unfinished batches are reconciled at start.
    op.create_index("batches_status", "batches", ["status", "batch_id"])


def downgrade() -> None:
    op.drop_index("batches_status", "batches")
    op.drop_table("batches")
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
    op.drop_table("chain_state")
