"""Table definitions. The schema itself is made by the migrations in ``migrations/versions``.

Times are integer microseconds since the Unix epoch: exact and the same in
SQLite and PostgreSQL.
"""

from __future__ import annotations

from sqlalchemy import BigInteger, Column, Integer, MetaData, String, Table, Text

metadata = MetaData()

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
