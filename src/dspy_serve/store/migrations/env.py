"""Alembic's environment: migrations run on the connection the store hands over
(:func:`dspy_serve.store.database._upgrade`), never on a URL of their own."""

from __future__ import annotations

from alembic import context

from dspy_serve.store.tables import metadata

connection = context.config.attributes["connection"]
context.configure(connection=connection, target_metadata=metadata, render_as_batch=True)
with context.begin_transaction():
    context.run_migrations()
