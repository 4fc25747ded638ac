"""Changing versions and rollouts while serving: load, promote, rollback, split, shadow, reload.

Every change is made here, on the event loop, one at a time per service: a version is loaded
in a thread (reading files, importing code) and added; the program's :class:`~.rollout.Rollout`
is then swapped whole. In-flight calls hold the version they started on, so none fails or
changes version midway. A load that fails leaves everything as it was, and says why.

With the admin API on, the rollouts are shared through the store (``rollouts`` and
``program_versions`` tables): a change is written with a compare-and-set on its revision, and
every worker reads the table every ``rollout_sync_interval`` seconds, loading the versions a
newer rollout names (from the same file) before it follows it. Without the admin API nothing
changes at run time but SIGHUP, which each process applies to itself.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING

import anyio

from dspy_serve.errors import RolloutConflict, ServeError, VersionLoadFailed
from dspy_serve.serving.programs import Program
from dspy_serve.serving.rollout import Rollout
from dspy_serve.serving.versions import ProgramVersion, check_version_name, load_version, parse_version_spec
from dspy_serve.settings import ServeSettings

if TYPE_CHECKING:
    from dspy_serve.serving.service import Service
    from dspy_serve.store import Store

__all__ = ["VersionControl"]

logger = logging.getLogger("dspy_serve")


class VersionControl:
    def __init__(self, service: Service, *, shared: bool) -> None:
        self._service = service
        self._settings: ServeSettings = service.settings
        self._shared = shared  # through the store (the admin API is on)
        self._store: Store | None = None
        self._lock = asyncio.Lock()
        self._poller: asyncio.Task[None] | None = None
        self._failed: dict[tuple[str, int], str] = {}  # revisions this worker could not follow, and why

    # --- lifecycle ----------------------------------------------------------------------------------
    async def start(self) -> None:
        """Adopt the shared rollouts (or share ours, for a program that has none yet), then follow them."""
        if not self._shared:
            return
        from dspy_serve.store import Store, store_url

        self._store = await Store.open(store_url(self._settings), busy_timeout=self._settings.store_timeout)
        await self._adopt_shared(first=True)
        self._poller = asyncio.get_running_loop().create_task(self._follow(), name="rollout-sync")

    async def stop(self) -> None:
        if self._poller is not None:
            self._poller.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._poller
        if self._store is not None:
            await self._store.close()

    @property
    def store(self) -> Store | None:
        """The shared store (with the admin API on): where the comparison reads captured calls."""
        return self._store

    # --- changes -------------------------------------------------------------------------------------
    async def load(self, program: Program, name: str, artifact: str | Path) -> tuple[ProgramVersion, bool]:
        """Load ``artifact`` as version ``name`` of ``program`` (from the allowed directory only);
        the version, and whether it is new (loading the same content again changes nothing)."""
        try:
            check_version_name(name)
        except ValueError as exc:
            raise _refused("name", str(exc)) from None
        path = self._allowed(artifact)
        async with self._lock:
            existing = program.versions.get(name)
            version = await self._load_file(program, name, path)
            if existing is not None:
                if existing.sha256 != version.sha256:
                    raise RolloutConflict(
                        f"{program.name!r} already has a version {name!r} with other content "
                        f"(sha256 {existing.sha256}): versions are immutable, load it under another name"
                    )
                return existing, False
            self._add(program, version)
            if self._store is not None:
                from dspy_serve.store.rollouts import save_version

                await save_version(
                    self._store, program.name, name, sha256=version.sha256, artifact=str(path), target=None
                )
        logger.info("loaded version %s of %s (sha256 %s) from %s", name, program.name, version.sha256, path)
        return version, True

    async def promote(self, program: Program, version: str) -> Rollout:
        return await self._change(program, lambda rollout: rollout.promoted(version), f"promoted {version}")

    async def rollback(self, program: Program) -> Rollout:
        return await self._change(program, lambda rollout: rollout.rolled_back(), "rolled back")

    async def split(self, program: Program, candidate: str, weight: float, sticky: str) -> Rollout:
        return await self._change(
            program,
            lambda rollout: rollout.with_split(candidate, weight, sticky),
            f"split {weight:g}% to {candidate} (sticky by {sticky})",
        )

    async def shadow(self, program: Program, candidate: str, rate: float) -> Rollout:
        return await self._change(
            program, lambda rollout: rollout.with_shadow(candidate, rate), f"shadow {rate:g} on {candidate}"
        )

    async def reload(self) -> list[str]:
        """Load the configured versions' files again (SIGHUP): a file whose content changed
        becomes that version's content for new calls (calls in flight finish on the old one).
        The rollout is left as it is: promote, rollback, split and shadow are the admin API's.
        Everything or nothing: a file that fails to load leaves every version as it was.
        Returns what changed, one line per reloaded version."""
        programs = self._service.programs
        async with self._lock:
            staged = []
            for _, name, version_name, path in _version_specs(self._settings, list(programs)):
                program = programs[name]
                version = await self._load_file(program, version_name, Path(path))
                current = program.versions.get(version_name)
                if current is None or current.sha256 != version.sha256:
                    staged.append((program, version, current))
            for program, version, _ in staged:
                self._add(program, version)
        changed = [
            f"{program.name} {version.name}: sha256 {old.sha256 if old else None} -> {version.sha256}"
            for program, version, old in staged
        ]
        logger.info("SIGHUP: reloaded the configured versions: %s", "; ".join(changed) or "none changed")
        return changed

    # --- internals --------------------------------------------------------------------------------------
    async def _change(self, program: Program, how: Callable[[Rollout], Rollout], what: str) -> Rollout:
        async with self._lock:
            if self._store is not None:
                await self._adopt_shared()  # change the newest rollout, not this worker's copy
            rollout = how(program.rollout)
            for name in rollout.versions() - set(program.versions):
                await self._load_shared(program, name)
            await self._publish(program, rollout)
            program.rollout = rollout
        logger.info("%s: %s (revision %d): %s", program.name, what, rollout.revision, _summary(rollout))
        return rollout

    async def _publish(self, program: Program, rollout: Rollout) -> None:
        if self._store is None:
            return
        from dspy_serve.store.rollouts import save_rollout

        saved = await save_rollout(
            self._store,
            program.name,
            rollout.to_data(),
            revision=rollout.revision,
            replaces=program.rollout.revision,
        )
        if not saved:
            await self._adopt_shared()
            raise RolloutConflict(
                f"the rollout of {program.name!r} changed meanwhile (now revision "
                f"{program.rollout.revision}): look at it again and retry"
            )

    async def _follow(self) -> None:
        while True:
            await asyncio.sleep(self._settings.rollout_sync_interval)
            try:
                async with self._lock:
                    await self._adopt_shared()
            except Exception as exc:  # the store is down: keep serving as we are, try again later
                logger.warning("cannot read the shared rollouts: %s", type(exc).__name__)

    async def _adopt_shared(self, *, first: bool = False) -> None:
        """Follow every newer shared rollout; at the first read, share ours where none is."""
        from dspy_serve.store.rollouts import read_rollouts, save_rollout

        assert self._store is not None
        shared = await read_rollouts(self._store)
        for name, program in self._service.programs.items():
            if name not in shared:
                if first:
                    await save_rollout(
                        self._store,
                        name,
                        program.rollout.to_data(),
                        revision=program.rollout.revision,
                        replaces=None,
                    )
                continue
            revision, state = shared[name]
            if revision > program.rollout.revision or (first and revision != program.rollout.revision):
                await self._follow_rollout(program, Rollout.from_data(name, state, revision), first=first)

    async def _follow_rollout(self, program: Program, rollout: Rollout, *, first: bool) -> None:

        assert self._store is not None
        try:
            for name in rollout.versions() - set(program.versions):
                await self._load_shared(program, name)
        except ServeError as exc:
            why = exc.detail
            if self._failed.get((program.name, rollout.revision)) != why:
                self._failed[(program.name, rollout.revision)] = why
                logger.error(
                    "%s: cannot follow the shared rollout (revision %d), serving as before: %s",
                    program.name,
                    rollout.revision,
                    why,
                )
            return
        program.rollout = rollout
        verb = "adopted the shared rollout" if first else "followed a change"
        logger.info("%s: %s (revision %d): %s", program.name, verb, rollout.revision, _summary(rollout))

    async def _load_shared(self, program: Program, name: str) -> None:
        """Load version ``name`` as another worker loaded it (the store has its file), or say
        it does not exist."""
        from dspy_serve.store.rollouts import read_version

        row = await read_version(self._store, program.name, name) if self._store is not None else None
        if row is None or not row.get("artifact"):
            program.version(name)  # raises VersionNotFound, naming the versions there are
            return
        version = await self._load_file(program, name, Path(row["artifact"]))
        if row.get("sha256") and version.sha256 != row["sha256"]:
            raise VersionLoadFailed(f"version {name!r}: {row['artifact']} changed since it was loaded")
        self._add(program, version)

    async def _load_file(self, program: Program, name: str, path: Path) -> ProgramVersion:
        settings = self._settings
        try:
            version = await anyio.to_thread.run_sync(
                lambda: load_version(
                    name,
                    program.name,
                    program.source,
                    path,
                    program.interface,
                    allow_pickle=settings.allow_pickle,
                    max_input_chars=settings.max_input_chars,
                )
            )
        except ValueError as exc:  # ArtifactError, TargetError: the loader says which file and why
            raise VersionLoadFailed(
                f"version {name!r} of {program.name!r} was not loaded: {exc}",
                errors=[{"loc": ["body", "artifact"], "msg": str(exc), "type": "version_load_failed"}],
            ) from None
        self._service.prepare(version)
        return version

    def _add(self, program: Program, version: ProgramVersion) -> None:
        # A new dict, swapped whole: a reader iterating the old one is never disturbed.
        program.versions = {**program.versions, version.name: version}

    def _allowed(self, artifact: str | Path) -> Path:
        """The artifact's path, if it lies in ``artifact_dir`` (after resolving links and ``..``)."""
        root = self._settings.artifact_dir
        if root is None:
            raise _refused(
                "artifact", "loading versions is off: the operator allows a directory with --artifact-dir"
            )
        base = Path(root).resolve()
        path = (base / artifact).resolve()
        if not path.is_relative_to(base):
            raise _refused("artifact", "must be a file under the directory --artifact-dir allows")
        if not path.exists():
            raise _refused("artifact", f"no such file under the allowed directory: {artifact}")
        return path


def _version_specs(settings: ServeSettings, names: list[str]) -> list[tuple[str, str, str, str]]:
    """(flag, program, version, path) of every configured version: the stable artifacts
    (``--artifact``) and the candidates."""
    found = []
    for flag, specs in (("--artifact", settings.artifacts), ("--candidate", settings.candidates)):
        for spec in specs:
            parsed = parse_version_spec(spec, names, flag=flag)
            found.append((flag, parsed.program, parsed.name, parsed.artifact))
    return found


def _summary(rollout: Rollout) -> str:
    parts = [f"stable {rollout.stable}"]
    if rollout.candidate is not None:
        parts.append(f"candidate {rollout.candidate}")
    if rollout.split is not None:
        parts.append(f"split {rollout.split.weight:g}% sticky by {rollout.split.sticky}")
    if rollout.shadow is not None:
        parts.append(f"shadow {rollout.shadow.rate:g}")
    return ", ".join(parts)


def _refused(field: str, why: str) -> ServeError:
    return VersionLoadFailed(why, errors=[{"loc": ["body", field], "msg": why, "type": "value_error"}])
