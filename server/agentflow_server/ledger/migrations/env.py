"""Alembic environment: migrations run on the connection the server hands over (see database._upgrade)."""

from alembic import context

connection = context.config.attributes["connection"]
# Batch mode lets ALTER TABLE migrations work on SQLite too.
context.configure(connection=connection, render_as_batch=True)
with context.begin_transaction():
    context.run_migrations()
