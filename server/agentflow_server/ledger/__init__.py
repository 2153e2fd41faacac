"""The ledger's storage: one SQLAlchemy Core code path for SQLite and PostgreSQL, with Alembic migrations."""

from .database import Database, StorageError

__all__ = ["Database", "StorageError"]
