"""Withdrawals ride the settlement path of payments: a kind column tells them apart.

Revision ID: 0004
Revises: 0003
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0004"
down_revision: str | None = "0003"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    # 1: a payment between agents; 2: a withdrawal to a chain address.
    op.add_column("payments", sa.Column("kind", sa.SmallInteger, nullable=False, server_default="1"))


def downgrade() -> None:
    with op.batch_alter_table("payments") as batch:
        batch.drop_column("kind")
