"""Storage of API keys: rows hold the key's SHA-256 hash, never the key."""

from __future__ import annotations

import json
from dataclasses import dataclass

import sqlalchemy as sa

from .database import Database
from .schema import api_keys


@dataclass(frozen=True)
class ApiKeyRecord:
    """One stored API key."""

    key_id: str
    key_hash: str
    key_prefix: str
    display_name: str
    scope: str
    addresses: tuple[str, ...]
    requests_per_minute: int
    burst: int
    create_time_us: int
    revoke_time_us: int | None = None
    expire_time_us: int | None = None


def _record(row: sa.Row[tuple[object, ...]]) -> ApiKeyRecord:
    m = row._mapping
    return ApiKeyRecord(
        key_id=m["key_id"],
        key_hash=m["key_hash"],
        key_prefix=m["key_prefix"],
        display_name=m["display_name"],
        scope=m["scope"],
        addresses=tuple(json.loads(m["addresses"])),
        requests_per_minute=m["requests_per_minute"],
        burst=m["burst"],
        create_time_us=m["create_time_us"],
        revoke_time_us=m["revoke_time_us"],
        expire_time_us=m["expire_time_us"],
    )


def _values(record: ApiKeyRecord) -> dict[str, object]:
    return {
        "key_id": record.key_id,
        "key_hash": record.key_hash,
        "key_prefix": record.key_prefix,
        "display_name": record.display_name,
        "scope": record.scope,
        "addresses": json.dumps(list(record.addresses)),
        "requests_per_minute": record.requests_per_minute,
        "burst": record.burst,
        "create_time_us": record.create_time_us,
        "revoke_time_us": record.revoke_time_us,
        "expire_time_us": record.expire_time_us,
    }


class ApiKeyStore:
    """Reads and writes the ``api_keys`` table."""

    def __init__(self, database: Database) -> None:
        self._database = database

    async def insert(self, record: ApiKeyRecord) -> None:
        """Store a new key."""
        async with self._database.transaction() as connection:
            await connection.execute(api_keys.insert().values(**_values(record)))

    async def replace(self, record: ApiKeyRecord) -> None:
        """Store ``record`` under its id, replacing any row with that id."""
        async with self._database.transaction() as connection:
            await connection.execute(api_keys.delete().where(api_keys.c.key_id == record.key_id))
            await connection.execute(api_keys.insert().values(**_values(record)))

    async def revoke(self, key_id: str, when_us: int) -> ApiKeyRecord | None:
        """Mark a key revoked (keeping the first revocation time); ``None`` when there is no such key."""
        async with self._database.transaction() as connection:
            await connection.execute(
                api_keys.update()
                .where(api_keys.c.key_id == key_id, api_keys.c.revoke_time_us.is_(None))
                .values(revoke_time_us=when_us)
            )
            row = (await connection.execute(sa.select(api_keys).where(api_keys.c.key_id == key_id))).first()
        return _record(row) if row is not None else None

    async def all(self) -> list[ApiKeyRecord]:
        """Every key, revoked or not."""
        async with self._database.connect() as connection:
            return [_record(row) for row in await connection.execute(sa.select(api_keys))]

    async def page(
        self, *, include_revoked: bool, now_us: int, limit: int, before: tuple[int, str] | None
    ) -> list[ApiKeyRecord]:
        """Keys newest first, ``limit`` of them, strictly after the cursor ``before`` (create time, id).

        Without ``include_revoked``, revoked keys and keys expired at ``now_us`` are left out.
        """
        query = sa.select(api_keys)
        if not include_revoked:
            query = query.where(
                api_keys.c.revoke_time_us.is_(None),
                sa.or_(api_keys.c.expire_time_us.is_(None), api_keys.c.expire_time_us > now_us),
            )
        if before is not None:
            time_us, key_id = before
            query = query.where(
                sa.or_(
                    api_keys.c.create_time_us < time_us,
                    sa.and_(api_keys.c.create_time_us == time_us, api_keys.c.key_id < key_id),
                )
            )
        query = query.order_by(api_keys.c.create_time_us.desc(), api_keys.c.key_id.desc()).limit(limit)
        async with self._database.connect() as connection:
            return [_record(row) for row in await connection.execute(query)]
