"""A fresh PostgreSQL database for a test, on the server the test command found or started.

``./scripts/test`` uses the machine's PostgreSQL on 127.0.0.1:5432 when it answers and starts one from
Debian's packages when it does not (``scripts/postgres``); ``AGENTFLOW_TEST_POSTGRES`` names another
server, ``AGENTFLOW_TEST_POSTGRES_PORT`` another port.
"""

from __future__ import annotations

import contextlib
import os
import secrets
from collections.abc import Iterator

import psycopg
from psycopg import sql
from sqlalchemy.engine import make_url

SERVER = os.environ.get("AGENTFLOW_TEST_POSTGRES") or (
    f"postgresql+psycopg://postgres@127.0.0.1:{os.environ.get('AGENTFLOW_TEST_POSTGRES_PORT', '5432')}/test"
)


@contextlib.contextmanager
def fresh_database() -> Iterator[str]:
    """The SQLAlchemy URL of a new, empty database, dropped afterwards."""
    server = make_url(SERVER)
    name = "agentflow_test_" + secrets.token_hex(6)
    conninfo = server.set(drivername="postgresql").render_as_string(hide_password=False)
    with psycopg.connect(conninfo, autocommit=True) as admin:
        admin.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(name)))
    try:
        yield server.set(database=name).render_as_string(hide_password=False)
    finally:
        with psycopg.connect(conninfo, autocommit=True) as admin:
            admin.execute(sql.SQL("DROP DATABASE {} WITH (FORCE)").format(sql.Identifier(name)))
