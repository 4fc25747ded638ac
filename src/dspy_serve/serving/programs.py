"""Which programs a service serves: imported, artifacts loaded, interfaces derived.

This runs when the service is built, before any server starts, so that a program that cannot
be served stops the start-up with a message instead of failing its first caller.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

import dspy

from dspy_serve.lm.registry import allowed_models, own_lm_problems
from dspy_serve.serving.loader import LoadedProgram, check_program_name, load_program, parse_target
from dspy_serve.serving.runner import ProgramRunner
from dspy_serve.serving.schema import ProgramInterface, derive_interface
from dspy_serve.settings import ServeSettings

__all__ = ["Program", "ProgramsArg", "load_programs"]

ProgramsArg = Mapping[str, "dspy.Module | str | type[dspy.Signature]"]


@dataclass
class Program:
    loaded: LoadedProgram
    interface: ProgramInterface
    runner: ProgramRunner | None = None

    @property
    def name(self) -> str:
        return self.loaded.name


def load_programs(
    settings: ServeSettings, given: ProgramsArg | None = None, lm: dspy.BaseLM | None = None
) -> dict[str, Program]:
    """The programs of ``settings.programs`` (TARGETs) and ``given`` (objects), ready to start."""
    programs: dict[str, Program] = {}
    allowed = allowed_models(settings, lm)
    declared = _declared_signatures(settings)
    for loaded in _load_all(settings, given or {}):
        if problems := own_lm_problems(loaded.module, allowed):
            raise ValueError(
                f"program {loaded.name!r}: {'; '.join(problems)}, not in the allow-list "
                f"({', '.join(allowed)}): add it with --allow-model, or clear that LM"
            )
        interface = derive_interface(
            loaded.name, loaded.module, declared.get(loaded.name), max_input_chars=settings.max_input_chars
        )
        programs[loaded.name] = Program(loaded, interface)
    if not programs:
        raise ValueError("no programs to serve: pass at least one TARGET")
    return programs


def _load_all(
    settings: ServeSettings, given: Mapping[str, dspy.Module | str | type[dspy.Signature]]
) -> list[LoadedProgram]:
    targets: dict[str, str | dspy.Module] = {}
    for spec in settings.programs:
        name, target = parse_target(spec)
        if name in targets:
            raise ValueError(f"two programs are named {name!r}; rename one with 'alias=TARGET'")
        targets[name] = target
    for name, obj in given.items():
        check_program_name(name)
        if name in targets:
            raise ValueError(f"two programs are named {name!r}")
        targets[name] = obj if isinstance(obj, dspy.Module) else dspy.Predict(obj)
    artifacts = _artifacts_by_program(settings.artifacts, list(targets))
    return [
        load_program(
            name,
            target,
            artifact=artifacts.get(name),
            artifact_optional=settings.artifact_optional,
            allow_pickle=settings.allow_pickle,
        )
        for name, target in targets.items()
    ]


def _artifacts_by_program(specs: list[str], names: list[str]) -> dict[str, str]:
    by_name: dict[str, str] = {}
    for spec in specs:
        name, sep, path = spec.partition("=")
        if sep and name in names:
            by_name[name] = path
        elif len(names) == 1:
            by_name[names[0]] = spec
        else:
            raise ValueError(f"artifact {spec!r}: with several programs, write NAME=PATH (programs: {names})")
    return by_name


def _declared_signatures(settings: ServeSettings) -> dict[str, str]:
    declared: dict[str, str] = {}
    for spec in settings.signatures:
        name, sep, signature = spec.partition("=")
        if not sep:
            raise ValueError(f"signature {spec!r}: write NAME=SIGNATURE, e.g. rag='question -> answer'")
        declared[name.strip()] = signature.strip()
    return declared
