"""The project's one persistence layer: captured calls and feedback today, versions and jobs
later. SQLite (a file under ``data_dir``) by default, PostgreSQL for several processes.

Everything that touches the database goes through a :class:`Store` (one async engine) and
the query modules beside it; the schema is the Alembic revisions in ``migrations/``.
"""

from dspy_serve.store.database import Store, store_url

__all__ = ["Store", "store_url"]
