"""Program versions and rollouts as every worker shares them (#27).

A rollout row is replaced only by a writer that read its current revision (a compare-and-set
on ``revision``), so two admins changing one program at once cannot silently undo each other:
the second is told to retry on the newer state.
"""

from __future__ import annotations

import time
from collections.abc import Mapping
from typing import Any

from sqlalchemy import select, update

from dspy_serve.store.calls import insert_ignoring_duplicates
from dspy_serve.store.database import Store
from dspy_serve.store.tables import program_versions, rollouts

__all__ = ["read_rollouts", "read_version", "save_rollout", "save_version"]


async def read_rollouts(store: Store) -> dict[str, tuple[int, dict[str, Any]]]:
    """Every program's rollout: ``{program: (revision, state)}``. One small read: workers poll it."""
    async with store.engine.connect() as connection:
        rows = (
            await connection.execute(select(rollouts.c.program, rollouts.c.revision, rollouts.c.state))
        ).all()
    return {row.program: (int(row.revision), dict(row.state)) for row in rows}


async def save_rollout(
    store: Store, program: str, state: Mapping[str, Any], *, revision: int, replaces: int | None
) -> bool:
    """Write ``state`` as ``revision`` of ``program``'s rollout, replacing revision ``replaces``
    (None: only when the program has no row yet). False when another writer got there first."""
    now = time.time()
    statement: Any
    async with store.engine.begin() as connection:
        if replaces is None:
            statement = insert_ignoring_duplicates(store, rollouts, "program").values(
                program=program, revision=revision, state=dict(state), updated_at=now
            )
        else:
            statement = (
                update(rollouts)
                .where(rollouts.c.program == program, rollouts.c.revision == replaces)
                .values(revision=revision, state=dict(state), updated_at=now)
            )
        result = await connection.execute(statement)
    return bool(result.rowcount)


async def save_version(
    store: Store, program: str, name: str, *, sha256: str | None, artifact: str | None, target: str | None
) -> None:
    """Record a version loaded at run time, so the other workers load the same file."""
    async with store.engine.begin() as connection:
        await connection.execute(
            insert_ignoring_duplicates(store, program_versions, "program", "name").values(
                program=program,
                name=name,
                sha256=sha256 or "",
                artifact=artifact,
                target=target,
                created_at=time.time(),
            )
        )


async def read_version(store: Store, program: str, name: str) -> dict[str, Any] | None:
    async with store.engine.connect() as connection:
        row = (
            (
                await connection.execute(
                    select(program_versions).where(
                        program_versions.c.program == program, program_versions.c.name == name
                    )
                )
            )
            .mappings()
            .first()
        )
    return dict(row) if row is not None else None
