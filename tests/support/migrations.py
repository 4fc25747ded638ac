"""The store's newest schema revision, read from the migrations the package ships (so a new
revision does not break the tests that check a database reached it)."""

from __future__ import annotations

from alembic.config import Config
from alembic.script import ScriptDirectory

from dspy_serve.store.database import MIGRATIONS


def newest_revision() -> str:
    config = Config()
    config.set_main_option("script_location", str(MIGRATIONS))
    head = ScriptDirectory.from_config(config).get_current_head()
    assert head is not None, "the package ships no migrations"
    return head
