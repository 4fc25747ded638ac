"""Versions of a program: each one immutable, named, identified by its artifact's sha256.

A program serves one or more versions (``--artifact qa=v1.json --candidate qa=v2.json``, the
TOML config, or the admin API at run time). They share the program's interface: a version
whose inputs or outputs differ from the stable one's is refused as it loads, because callers'
typed requests and responses (and OpenAPI) are the program's, not the version's.
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass, field
from pathlib import Path

import dspy

from dspy_serve.optimize.provenance import provenance_path
from dspy_serve.serving.loader import LoadedProgram, load_program
from dspy_serve.serving.response_cache import program_version
from dspy_serve.serving.runner import ProgramRunner
from dspy_serve.serving.schema import ProgramInterface, derive_interface

__all__ = ["BASE_VERSION", "ProgramVersion", "VersionSpec", "load_version", "parse_version_spec"]

# The name of a version without an artifact (the program's code as it is).
BASE_VERSION = "base"


@dataclass(frozen=True)
class VersionSpec:
    """``NAME[@VERSION]=PATH``: which program, the version's name, and its artifact."""

    program: str
    name: str
    artifact: str


def parse_version_spec(spec: str, programs: list[str], *, flag: str) -> VersionSpec:
    """Parse ``NAME=PATH``, ``NAME@VERSION=PATH`` or, with one program, ``PATH``; the version's
    name defaults to the artifact's stem (``v2.json`` is ``v2``)."""
    head, sep, path = spec.partition("=")
    if not sep:
        if len(programs) != 1:
            raise ValueError(
                f"{flag} {spec!r}: with several programs, write NAME=PATH (programs: {programs})"
            )
        head, path = programs[0], spec
    program, at, name = head.partition("@")
    if program not in programs:
        raise ValueError(f"{flag} {spec!r}: no program named {program!r} (programs: {programs})")
    if not path:
        raise ValueError(f"{flag} {spec!r}: the artifact's path is missing")
    name = name if at else Path(path.rstrip("/")).stem
    check_version_name(name, flag=f"{flag} {spec!r}")
    return VersionSpec(program, name, path)


def check_version_name(name: str, *, flag: str = "version") -> None:
    if not name or len(name) > 100 or not name.replace("-", "_").replace(".", "_").isidentifier():
        raise ValueError(f"{flag}: version name {name!r} must be letters, digits, '_', '-' or '.'")


@dataclass(eq=False)
class ProgramVersion:
    """One loaded version; calls hold it from start to end, whatever the pointers do meanwhile."""

    name: str
    loaded: LoadedProgram
    interface: ProgramInterface
    loaded_at: float = field(default_factory=time.time)
    runner: ProgramRunner | None = None
    # What the response cache keys on: the artifact, the state and the interface (computed once).
    fingerprint: str = ""

    def __post_init__(self) -> None:
        if not self.fingerprint:
            self.fingerprint = program_version(self.loaded, self.interface)

    @property
    def sha256(self) -> str | None:
        """The artifact's sha256; None for a program served without one."""
        return self.loaded.artifact.sha256 if self.loaded.artifact is not None else None

    @property
    def artifact(self) -> str | None:
        return self.loaded.artifact.path if self.loaded.artifact is not None else None

    @property
    def provenance(self) -> str | None:
        """The provenance file ``dspy-serve optimize`` wrote beside the artifact, if any."""
        if self.artifact is None:
            return None
        path = provenance_path(Path(self.artifact))
        return str(path) if path.is_file() else None

    def describe(self, state: str) -> dict[str, object]:
        return {
            "name": self.name,
            "sha256": self.sha256,
            "loaded_at": self.loaded_at,
            "state": state,
            "artifact": self.artifact,
            "provenance": self.provenance,
        }


def load_version(
    name: str,
    program: str,
    source: str | dspy.Module,
    artifact: str | Path,
    interface: ProgramInterface,
    *,
    allow_pickle: bool,
    max_input_chars: int,
) -> ProgramVersion:
    """Load ``artifact`` into a fresh copy of the program's code, as version ``name``. Blocking
    (it reads files): run it in a thread. Raises ValueError saying why it cannot serve."""
    loaded = load_program(program, source, artifact=artifact, allow_pickle=allow_pickle)
    derived = derive_interface(program, loaded.module, None, max_input_chars=max_input_chars)
    for side in ("inputs", "outputs"):
        mine = getattr(derived, side).model_json_schema()
        theirs = getattr(interface, side).model_json_schema()
        if _fields(mine) != _fields(theirs):
            raise ValueError(
                f"version {name!r} of {program!r} has other {side} than the program serves "
                f"({_describe(mine)} instead of {_describe(theirs)}): a version changes prompts, demos "
                "or code, never the interface; serve it as another program"
            )
    return ProgramVersion(name, loaded, interface)


def _fields(schema: dict[str, object]) -> str:
    """The schema's shape (names, types, required fields), without the words: a version may
    reword a field's description, which is a prompt change, not an interface change."""
    return json.dumps(_shape(schema), sort_keys=True)


_WORDS = ("description", "title", "examples")


def _shape(value: object, *, names: bool = False) -> object:
    """``value`` without its words; ``names`` is a mapping of field or definition names, kept."""
    if isinstance(value, dict):
        return {
            key: _shape(item, names=key in ("properties", "$defs") and not names)
            for key, item in value.items()
            if names or key not in _WORDS
        }
    if isinstance(value, list):
        return [_shape(item) for item in value]
    return value


def _describe(schema: dict[str, object]) -> str:
    properties = schema.get("properties", {})
    return ", ".join(properties) if isinstance(properties, dict) else "?"
