"""``dspy-serve store migrate``: bring the store's schema to this version's, before starting servers."""

from __future__ import annotations

import asyncio
from typing import Any

import click

from dspy_serve.commands.common import settings_from, with_settings

__all__ = ["store_group"]


@click.group("store")
def store_group() -> None:
    """The store: SQLite under --data-dir by default, or --store postgresql://..."""


def _migrate(**values: Any) -> None:
    from sqlalchemy.engine import make_url

    from dspy_serve.store import Store, store_url

    url = store_url(settings_from(values))

    async def migrate() -> str | None:
        store = await Store.open(url, migrate=False)
        try:
            before = await store.revision()
            after = await store.migrate()
        finally:
            await store.close()
        click.echo(f"{make_url(url).render_as_string(hide_password=True)}: {before or 'empty'} -> {after}")
        return after

    try:
        asyncio.run(migrate())
    except OSError as exc:
        raise click.ClickException(f"cannot reach the store: {exc}") from None


store_group.add_command(
    with_settings(
        click.Command(
            "migrate",
            callback=_migrate,
            help="Create or upgrade the store's tables to the newest revision (servers also do it on start).",
        )
    )
)
