"""What every query of a comparison shares: which calls are in the window, and which version
answered them."""

from __future__ import annotations

from typing import Any

from sqlalchemy import ColumnElement, and_, func

__all__ = ["UNVERSIONED", "in_window", "is_version", "version_key"]

# Calls recorded with neither a version name nor a sha256 (before versions, or a program with no
# artifact): one group of their own, under a name no version can take by accident.
UNVERSIONED = "(unversioned)"


def version_key(table: Any) -> ColumnElement[Any]:
    """What a comparison groups by: the version's name, else its sha256 (calls recorded before
    versions had names)."""
    return func.coalesce(table.c.version_name, table.c.version)


def is_version(table: Any, name: str) -> ColumnElement[bool]:
    key = version_key(table)
    return key.is_(None) if name == UNVERSIONED else key == name


def in_window(table: Any, program: str, since: float, until: float | None) -> ColumnElement[bool]:
    condition = and_(table.c.program == program, table.c.created_at >= since)
    return condition if until is None else and_(condition, table.c.created_at < until)
