"""The store opens SQLite or PostgreSQL from the URL an operator writes, and migrates its schema."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest
from pydantic import ValidationError
from sqlalchemy import inspect

from dspy_serve.settings import ServeSettings
from dspy_serve.store import Store, store_url
from tests.support.migrations import newest_revision


def test_the_default_store_is_a_sqlite_file_under_the_data_dir(tmp_path: Path) -> None:
    url = store_url(ServeSettings(data_dir=tmp_path / "data"))
    assert url == f"sqlite+aiosqlite:///{tmp_path / 'data' / 'store.db'}"


def test_a_postgresql_url_gets_the_async_driver() -> None:
    url = store_url(ServeSettings(store="postgresql://app:secret@db.internal:5432/serve"))
    assert url == "postgresql+asyncpg://app:secret@db.internal:5432/serve"


def test_another_database_is_refused_with_what_to_write() -> None:
    with pytest.raises(ValidationError, match=r"sqlite:///path\.db"):
        ServeSettings(store="mysql://localhost/x")


async def test_an_empty_database_is_migrated_to_the_newest_revision(store_url: str) -> None:
    url = _async(store_url)
    store = await Store.open(url)
    try:
        assert await store.revision() == newest_revision()
        async with store.engine.connect() as connection:
            tables = await connection.run_sync(lambda sync: set(inspect(sync).get_table_names()))
        assert {"calls", "feedback", "feedback_history", "alembic_version"} <= tables
    finally:
        await store.close()


async def test_migrating_again_changes_nothing_and_several_processes_may_migrate_at_once(
    store_url: str,
) -> None:
    url = _async(store_url)
    stores = [await Store.open(url, migrate=False) for _ in range(3)]
    try:
        revisions = await asyncio.gather(*(store.migrate() for store in stores))
        assert revisions == [newest_revision()] * 3
        assert await stores[0].migrate() == newest_revision()
    finally:
        for store in stores:
            await store.close()


async def test_opening_without_migrating_leaves_the_database_empty(tmp_path: Path) -> None:
    store = await Store.open(f"sqlite+aiosqlite:///{tmp_path / 'empty.db'}", migrate=False)
    try:
        assert await store.revision() is None
        assert await store.healthy()
    finally:
        await store.close()


def _async(url: str) -> str:
    return store_url(ServeSettings(store=url))


async def test_the_revisions_build_exactly_the_tables_the_code_declares(store_url: str) -> None:
    from alembic.autogenerate import compare_metadata
    from alembic.runtime.migration import MigrationContext

    from dspy_serve.store.tables import metadata

    store = await Store.open(_async(store_url))
    try:
        async with store.engine.connect() as connection:
            differences = await connection.run_sync(
                lambda sync: compare_metadata(MigrationContext.configure(sync), metadata)
            )
    finally:
        await store.close()
    assert differences == []
