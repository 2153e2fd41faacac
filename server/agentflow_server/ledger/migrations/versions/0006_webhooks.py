"""Webhook endpoints and their durable deliveries.

Revision ID: 0006
Revises: 0005
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0006"
down_revision: str | None = "0005"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.create_table(
        "webhooks",
        sa.Column("webhook_id", sa.String(32), primary_key=True),
        sa.Column("owner_key_id", sa.String(32), nullable=False),
        sa.Column("url", sa.String(2048), nullable=False),
        sa.Column("event_types", sa.Text, nullable=False),
        sa.Column("description", sa.String(256), nullable=False),
        sa.Column("state", sa.SmallInteger, nullable=False),
        sa.Column("disabled_reason", sa.String(512), nullable=False),
        sa.Column("secrets", sa.Text, nullable=False),
        sa.Column("cursor", sa.BigInteger, nullable=False),
        sa.Column("failing_since_us", sa.BigInteger, nullable=True),
        sa.Column("request_id", sa.String(64), nullable=False),
        sa.Column("request_hash", sa.String(64), nullable=False),
        sa.Column("create_time_us", sa.BigInteger, nullable=False),
        sa.Column("update_time_us", sa.BigInteger, nullable=False),
    )
    op.create_table(
        "webhook_deliveries",
        sa.Column("delivery_id", sa.String(40), primary_key=True),
        sa.Column("webhook_id", sa.String(32), nullable=False),
        sa.Column("event_sequence", sa.BigInteger, nullable=False),
        sa.Column("event_type", sa.String(48), nullable=False),
        sa.Column("status", sa.SmallInteger, nullable=False),
        sa.Column("attempt_count", sa.Integer, nullable=False),
        sa.Column("attempt_limit", sa.Integer, nullable=False),
        sa.Column("next_attempt_time_us", sa.BigInteger, nullable=True),
        sa.Column("create_time_us", sa.BigInteger, nullable=False),
        sa.Column("complete_time_us", sa.BigInteger, nullable=True),
        sa.Column("http_status", sa.Integer, nullable=True),
        sa.Column("duration_us", sa.BigInteger, nullable=True),
        sa.Column("response_excerpt", sa.Text, nullable=True),
        sa.Column("error", sa.String(512), nullable=True),
        sa.Column("success", sa.SmallInteger, nullable=True),
        sa.Column("attempt_time_us", sa.BigInteger, nullable=True),
    )
    # One delivery per event and endpoint, whatever happens to the fan-out; listing an endpoint's, newest
    # first; the pending ones at start.
    op.create_index("webhook_deliveries_event", "webhook_deliveries", ["webhook_id", "event_sequence"], unique=True)
    op.create_index("webhook_deliveries_list", "webhook_deliveries", ["webhook_id", "delivery_id"])
    op.create_index("webhook_deliveries_status", "webhook_deliveries", ["webhook_id", "status", "delivery_id"])
    op.create_index("webhook_deliveries_pending", "webhook_deliveries", ["status", "next_attempt_time_us"])


def downgrade() -> None:
    op.drop_table("webhook_deliveries")
    op.drop_table("webhooks")
