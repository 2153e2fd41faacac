"""API keys: random secrets shown once, stored as SHA-256 hashes, checked in memory on every call.

Keys carry 256 random bits, so a plain SHA-256 is the right hash: there is
nothing to brute-force, and a lookup by hash costs one dict access on the hot
path. The registry keeps the active keys in memory and writes through to the
ledger, so keys survive a restart.
"""

from __future__ import annotations

import base64
import hashlib
import secrets
import time
from dataclasses import dataclass

from agentflow_payments import Reason

from ..errors import ApiError
from ..ledger.api_keys import ApiKeyRecord, ApiKeyStore
from .principal import Principal, Scope
from .rate_limit import RateLimiter

KEY_PREFIX = "afk_"
BOOTSTRAP_KEY_ID = "bootstrap-admin"
_DISPLAY_PREFIX_LENGTH = 12


def hash_key(secret: str) -> str:
    """The stored form of a key: hex SHA-256."""
    return hashlib.sha256(secret.encode()).hexdigest()


def _new_secret() -> str:
    raw = secrets.token_bytes(32)
    return KEY_PREFIX + base64.urlsafe_b64encode(raw).decode().rstrip("=")


def _now_us() -> int:
    return time.time_ns() // 1000


@dataclass(frozen=True)
class NewApiKey:
    """A key just created: its record and the secret, which is never shown again."""

    record: ApiKeyRecord
    secret: str


def _principal(record: ApiKeyRecord) -> Principal:
    return Principal(
        key_id=record.key_id,
        scope=Scope(record.scope),
        addresses=frozenset(record.addresses),
        requests_per_minute=record.requests_per_minute,
        burst=record.burst,
        expire_time_us=record.expire_time_us,
    )


class ApiKeyRegistry:
    """Creates, lists, revokes and authenticates API keys."""

    def __init__(self, store: ApiKeyStore, limiter: RateLimiter) -> None:
        self._store = store
        self._limiter = limiter
        self._by_hash: dict[str, Principal] = {}
        self._revoked_hashes: set[str] = set()

    async def load(self, bootstrap_admin_key: str | None, rate_limit: tuple[int, int]) -> None:
        """Load the active keys, and install (or retire) the bootstrap admin key from the configuration.

        The configured key is an admin key for as long as it is configured: its
        row is replaced at every start, and revoked when the setting is gone.
        """
        if bootstrap_admin_key:
            requests_per_minute, burst = rate_limit
            await self._store.replace(
                ApiKeyRecord(
                    key_id=BOOTSTRAP_KEY_ID,
                    key_hash=hash_key(bootstrap_admin_key),
                    key_prefix=bootstrap_admin_key[:_DISPLAY_PREFIX_LENGTH],
                    display_name="bootstrap admin key (AGENTFLOW_ADMIN_API_KEY)",
                    scope=Scope.ADMIN.value,
                    addresses=(),
                    requests_per_minute=requests_per_minute,
                    burst=burst,
                    create_time_us=_now_us(),
                )
            )
        else:
            await self._store.revoke(BOOTSTRAP_KEY_ID, _now_us())
        records = await self._store.all()
        self._by_hash = {r.key_hash: _principal(r) for r in records if r.revoke_time_us is None}
        self._revoked_hashes = {r.key_hash for r in records if r.revoke_time_us is not None}

    def active_count(self) -> int:
        """Keys that would authenticate now: neither revoked nor expired."""
        now = _now_us()
        return sum(1 for p in self._by_hash.values() if p.expire_time_us is None or p.expire_time_us > now)

    def active(self, key_id: str) -> Principal | None:
        """The key with this id while it authenticates (neither revoked nor expired), else None."""
        now = _now_us()
        for principal in self._by_hash.values():
            if principal.key_id == key_id:
                return principal if principal.expire_time_us is None or principal.expire_time_us > now else None
        return None

    def authenticate(self, secret: str | None) -> Principal:
        """The principal of a presented key, or UNAUTHENTICATED saying why not."""
        if not secret:
            raise ApiError(Reason.API_KEY_MISSING, "send the API key as `authorization: Bearer <api key>`")
        digest = hash_key(secret)
        principal = self._by_hash.get(digest)
        if principal is None:
            if digest in self._revoked_hashes:
                raise ApiError(Reason.API_KEY_REVOKED, "this API key was revoked")
            raise ApiError(Reason.API_KEY_INVALID, "this API key is not valid")
        if principal.expire_time_us is not None and principal.expire_time_us <= _now_us():
            raise ApiError(Reason.API_KEY_EXPIRED, "this API key has expired")
        return principal

    async def create(
        self,
        *,
        display_name: str,
        scope: Scope,
        addresses: tuple[str, ...],
        requests_per_minute: int,
        burst: int,
        expire_time_us: int | None,
    ) -> NewApiKey:
        """Create and store a key; the secret is returned once."""
        secret = _new_secret()
        record = ApiKeyRecord(
            key_id=secrets.token_hex(8),
            key_hash=hash_key(secret),
            key_prefix=secret[:_DISPLAY_PREFIX_LENGTH],
            display_name=display_name,
            scope=scope.value,
            addresses=addresses,
            requests_per_minute=requests_per_minute,
            burst=burst,
            create_time_us=_now_us(),
            expire_time_us=expire_time_us,
        )
        await self._store.insert(record)
        self._by_hash[record.key_hash] = _principal(record)
        return NewApiKey(record=record, secret=secret)

    async def revoke(self, key_id: str) -> ApiKeyRecord:
        """Revoke a key at once. Revoking a revoked key returns it unchanged."""
        record = await self._store.revoke(key_id, _now_us())
        if record is None:
            raise ApiError(
                Reason.API_KEY_NOT_FOUND, f"no API key apiKeys/{key_id}", metadata={"name": f"apiKeys/{key_id}"}
            )
        self._by_hash.pop(record.key_hash, None)
        self._revoked_hashes.add(record.key_hash)
        self._limiter.forget(key_id)
        return record

    async def page(self, *, include_revoked: bool, limit: int, before: tuple[int, str] | None) -> list[ApiKeyRecord]:
        """Keys newest first; see :meth:`ApiKeyStore.page`."""
        return await self._store.page(include_revoked=include_revoked, now_us=_now_us(), limit=limit, before=before)
