"""One async engine per process, its URL, and the schema migrated to the newest revision."""

from __future__ import annotations

import asyncio
import functools
import logging
import weakref
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import anyio

try:
    import fcntl
except ImportError:  # Windows: one process migrates at a time there, or use PostgreSQL
    fcntl = None  # type: ignore[assignment]

from sqlalchemy import event, text
from sqlalchemy.engine import Connection, make_url
from sqlalchemy.exc import SQLAlchemyError
from sqlalchemy.ext.asyncio import AsyncEngine, create_async_engine

from dspy_serve.settings import ServeSettings

__all__ = ["MIGRATIONS", "Store", "store_url"]

logger = logging.getLogger("dspy_serve")

MIGRATIONS = Path(__file__).parent / "migrations"

# Any number that no other user of the same PostgreSQL database is likely to pick: migrations of
# several workers starting at once run one after the other.
_MIGRATION_LOCK = 0x64737079


def store_url(settings: ServeSettings) -> str:
    """The SQLAlchemy URL of the configured store, with its async driver: SQLite under
    ``data_dir`` unless ``store`` says otherwise."""
    raw = settings.store or f"sqlite:///{Path(settings.data_dir) / 'store.db'}"
    url = make_url(raw)
    backend = url.get_backend_name()
    if backend == "sqlite":
        url = url.set(drivername="sqlite+aiosqlite")
    elif backend in ("postgresql", "postgres"):
        url = url.set(drivername="postgresql+asyncpg")
    else:
        raise ValueError(f"store {raw!r}: use 'sqlite:///path.db' or 'postgresql://user@host/db'")
    return url.render_as_string(hide_password=False)


# Alembic keeps its running migration in module globals: two migrations in one process (two apps,
# as in tests) must take turns. One lock per event loop; other processes wait on the database.
_MIGRATING: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, asyncio.Lock] = weakref.WeakKeyDictionary()


class Store:
    """The database: ``await Store.open(url)`` (migrating it), then the query modules of this
    package (:mod:`.calls`, :mod:`.feedback`); ``await store.close()`` at the end."""

    def __init__(self, engine: AsyncEngine) -> None:
        self.engine = engine

    @property
    def dialect(self) -> str:
        return self.engine.dialect.name

    @classmethod
    async def open(cls, url: str, *, migrate: bool = True, busy_timeout: float = 5.0) -> Store:
        """``busy_timeout``: seconds a SQLite write waits for another writer's lock before it
        fails (cleanly: a cancelled SQLite write could leave its transaction holding the lock)."""
        parsed = make_url(url)
        options: dict[str, Any] = {"pool_pre_ping": True}
        if parsed.get_backend_name() == "sqlite":
            database = parsed.database
            if database and database != ":memory:":
                Path(database).parent.mkdir(parents=True, exist_ok=True)
        engine = create_async_engine(url, **options)
        if parsed.get_backend_name() == "sqlite":
            event.listen(engine.sync_engine, "connect", functools.partial(_sqlite_pragmas, busy_timeout))
        store = cls(engine)
        if migrate:
            try:
                await store.migrate()
            except BaseException:
                await engine.dispose()
                raise
        return store

    async def migrate(self) -> str | None:
        """Bring the schema to the newest revision; returns it. Safe from several processes: on
        PostgreSQL an advisory lock, on SQLite a lock file beside the database (SQLite runs DDL
        outside Alembic's transaction, so two workers starting together would both create tables)."""
        lock = _MIGRATING.setdefault(asyncio.get_running_loop(), asyncio.Lock())
        async with lock, _file_lock(self._sqlite_file), self.engine.begin() as connection:
            if self.dialect == "postgresql":
                await connection.execute(text(f"SELECT pg_advisory_xact_lock({_MIGRATION_LOCK})"))
            return await connection.run_sync(_upgrade)

    @property
    def _sqlite_file(self) -> Path | None:
        url = self.engine.url
        if url.get_backend_name() != "sqlite" or not url.database or url.database == ":memory:":
            return None
        return Path(url.database)

    async def revision(self) -> str | None:
        """The schema's current revision (None for an empty database)."""
        async with self.engine.connect() as connection:
            return await connection.run_sync(_current)

    async def close(self) -> None:
        await self.engine.dispose()

    async def healthy(self) -> bool:
        try:
            async with self.engine.connect() as connection:
                await connection.execute(text("SELECT 1"))
        except (SQLAlchemyError, OSError):
            return False
        return True


@asynccontextmanager
async def _file_lock(database: Path | None) -> AsyncIterator[None]:
    """An exclusive lock on ``DATABASE.migrate.lock`` between processes (none for other stores)."""
    if database is None or fcntl is None:
        yield
        return
    with (database.parent / (database.name + ".migrate.lock")).open("a") as handle:
        await anyio.to_thread.run_sync(fcntl.flock, handle.fileno(), fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle.fileno(), fcntl.LOCK_UN)


def _sqlite_pragmas(busy_timeout: float, connection: Any, _: Any) -> None:
    # WAL: readers never wait for the writer; busy_timeout: several workers' writers take turns
    # instead of failing at once; foreign keys: SQLite leaves them off unless asked.
    cursor = connection.cursor()
    cursor.execute("PRAGMA journal_mode=WAL")
    cursor.execute(f"PRAGMA busy_timeout={int(busy_timeout * 1000)}")
    cursor.execute("PRAGMA foreign_keys=ON")
    cursor.close()


def _alembic_config(connection: Connection) -> Any:
    from alembic.config import Config

    config = Config()
    config.set_main_option("script_location", str(MIGRATIONS))
    config.attributes["connection"] = connection
    return config


def _upgrade(connection: Connection) -> str | None:
    from alembic import command

    before = _current(connection)
    # Alembic says three lines at INFO on every start, upgrade or not; we say one when it upgrades.
    alembic_log = logging.getLogger("alembic")
    if alembic_log.level == logging.NOTSET:
        alembic_log.setLevel(logging.WARNING)
    command.upgrade(_alembic_config(connection), "head")
    after = _current(connection)
    if after != before:
        logger.info("store: schema migrated from %s to %s", before or "empty", after)
    return after


def _current(connection: Connection) -> str | None:
    from alembic.runtime.migration import MigrationContext

    return MigrationContext.configure(connection).get_current_revision()
