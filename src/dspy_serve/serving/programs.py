"""Which programs a service serves: imported, artifacts loaded, interfaces derived, and each
program's versions and rollout (#27).

This runs when the service is built, before any server starts, so that a program that cannot
be served stops the start-up with a message instead of failing its first caller.
"""

from __future__ import annotations

import dataclasses
import logging
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import dspy

from dspy_serve.errors import VersionNotFound
from dspy_serve.lm.registry import allowed_models, own_lm_problems
from dspy_serve.serving.loader import LoadedProgram, check_program_name, load_program, parse_target
from dspy_serve.serving.rollout import Rollout, Shadow, Split, parse_sticky
from dspy_serve.serving.runner import ProgramRunner
from dspy_serve.serving.schema import ProgramInterface, derive_interface
from dspy_serve.serving.versions import BASE_VERSION, ProgramVersion, load_version, parse_version_spec
from dspy_serve.settings import ServeSettings

__all__ = ["Program", "ProgramsArg", "load_programs"]

ProgramsArg = Mapping[str, "dspy.Module | str | type[dspy.Signature]"]

logger = logging.getLogger("dspy_serve")


@dataclass(eq=False)
class Program:
    """A served program: its interface, its versions, and the rollout that routes between them.

    ``rollout`` is swapped whole on a change (promote, rollback, split, shadow), and a version
    is only ever added: a call holds the :class:`ProgramVersion` it started on to its end."""

    name: str
    interface: ProgramInterface
    versions: dict[str, ProgramVersion]
    rollout: Rollout
    # What a new version's artifact loads into: the TARGET, or the object given.
    source: str | dspy.Module = field(repr=False)

    @classmethod
    def of(cls, loaded: LoadedProgram, interface: ProgramInterface, version: str = BASE_VERSION) -> Program:
        """A program with one version, ``loaded`` (its source is the loaded module itself)."""
        stable = ProgramVersion(version, loaded, interface)
        return cls(loaded.name, interface, {version: stable}, Rollout(loaded.name, version), loaded.module)

    @property
    def stable(self) -> ProgramVersion:
        return self.versions[self.rollout.stable]

    @property
    def loaded(self) -> LoadedProgram:
        """The stable version's program."""
        return self.stable.loaded

    @property
    def runner(self) -> ProgramRunner | None:
        return self.stable.runner

    def version(self, name: str) -> ProgramVersion:
        found = self.versions.get(name)
        if found is None:
            raise VersionNotFound(
                f"{self.name!r} has no version {name!r}; it has: {', '.join(self.versions)}"
            )
        return found

    def route(self, sticky_key: str) -> ProgramVersion:
        """The version that answers a caller (stable, or the candidate for its share of a split)."""
        return self.versions[self.rollout.version_for(sticky_key)]

    def state_of(self, version: str) -> str:
        """stable, candidate (in a split), shadow, or retired."""
        rollout = self.rollout
        if version == rollout.stable:
            return "stable"
        if version == rollout.candidate:
            return "candidate" if rollout.split is not None or rollout.shadow is None else "shadow"
        return "retired"

    def describe(self) -> dict[str, Any]:
        """What ``/programs/NAME`` and the admin API show of the versions and the rollout."""
        return {
            "program": self.name,
            **self.rollout.to_data(),
            "versions": [version.describe(self.state_of(name)) for name, version in self.versions.items()],
        }


def load_programs(
    settings: ServeSettings, given: ProgramsArg | None = None, lm: dspy.BaseLM | None = None
) -> tuple[ServeSettings, dict[str, Program]]:
    """The programs of ``settings.programs`` (TARGETs) and ``given`` (objects), ready to start,
    and the settings to serve them with: the default model is the one a program file configured,
    when none was given (:func:`_with_configured_lm`)."""
    loaded = _load_all(settings, given or {})
    configured = [program.configured_lm for program, _ in loaded if program.configured_lm is not None]
    if lm is None and configured:
        settings = _with_configured_lm(settings, configured[-1])  # the last one, as in plain DSPy
    programs: dict[str, Program] = {}
    allowed = allowed_models(settings, lm)
    declared = _declared_signatures(settings)
    for program, source in loaded:
        if problems := own_lm_problems(program.module, allowed):
            raise ValueError(
                f"program {program.name!r}: {'; '.join(problems)}, not in the allow-list "
                f"({', '.join(allowed)}): add it with --allow-model, or clear that LM"
            )
        interface = derive_interface(
            program.name, program.module, declared.get(program.name), max_input_chars=settings.max_input_chars
        )
        programs[program.name] = dataclasses.replace(
            Program.of(program, interface, _version_name(settings, program)), source=source
        )
    if not programs:
        raise ValueError("no programs to serve: pass at least one TARGET")
    _add_candidates(settings, programs)
    return settings, programs


def _version_name(settings: ServeSettings, program: LoadedProgram) -> str:
    """The stable version's name: given as ``--artifact NAME@VERSION=PATH``, else the
    artifact's stem, else ``base``."""
    for spec in settings.artifacts:
        head, sep, _ = spec.partition("=")
        name, at, version = head.partition("@")
        if sep and at and name == program.name:
            return version
    if program.artifact is None:
        return BASE_VERSION
    return Path(program.artifact.path.rstrip("/")).stem


def _add_candidates(settings: ServeSettings, programs: dict[str, Program]) -> None:
    """The configured candidates (``--candidate``), and each program's configured rollout."""
    names = list(programs)
    for spec in settings.candidates:
        wanted = parse_version_spec(spec, names, flag="--candidate")
        program = programs[wanted.program]
        if wanted.name in program.versions:
            raise ValueError(
                f"--candidate {spec!r}: {wanted.program!r} already has a version {wanted.name!r}"
            )
        program.versions[wanted.name] = load_version(
            wanted.name,
            program.name,
            program.source,
            wanted.artifact,
            program.interface,
            allow_pickle=settings.allow_pickle,
            max_input_chars=settings.max_input_chars,
        )
    for program in programs.values():
        program.rollout = _configured_rollout(settings, program.name, names, program.rollout.stable)


def _configured_rollout(settings: ServeSettings, program: str, names: list[str], stable: str) -> Rollout:
    """The rollout the settings give ``program``: ``stable``, its last ``--candidate``, and the
    ``--split`` (sticky by ``--sticky``) and ``--shadow`` that send the candidate calls."""
    candidate = None
    for spec in settings.candidates:
        wanted = parse_version_spec(spec, names, flag="--candidate")
        if wanted.program == program:
            candidate = wanted.name
    weight = _per_program(settings.splits, names, "--split").get(program)
    rate = _per_program(settings.shadows, names, "--shadow").get(program)
    sticky = _per_program(settings.sticky, names, "--sticky").get(program, "key")
    if candidate is None and (weight is not None or rate is not None):
        raise ValueError(
            f"{'--split' if weight is not None else '--shadow'} {program}: it has no candidate version; "
            f"add one with --candidate {program}=PATH"
        )
    return Rollout(
        program,
        stable,
        candidate,
        split=Split(_number(weight, f"--split {program}", 0, 100), parse_sticky(sticky))
        if weight is not None
        else None,
        shadow=Shadow(_number(rate, f"--shadow {program}", 0, 1)) if rate is not None else None,
    )


def _per_program(specs: list[str], names: list[str], flag: str) -> dict[str, str]:
    found: dict[str, str] = {}
    for spec in specs:
        name, sep, value = spec.partition("=")
        if not sep and len(names) == 1:
            name, value = names[0], spec
        elif name not in names:
            raise ValueError(
                f"{flag} {spec!r}: write NAME=VALUE for one of the programs ({', '.join(names)})"
            )
        found[name] = value.strip()
    return found


def _number(value: str, label: str, low: float, high: float) -> float:
    try:
        number = float(value)
    except ValueError:
        raise ValueError(f"{label}={value}: {value!r} is not a number") from None
    if not low <= number <= high:
        raise ValueError(f"{label}: must be from {low:g} to {high:g}")
    return number


def _with_configured_lm(settings: ServeSettings, configured: dspy.BaseLM) -> ServeSettings:
    """Plain DSPy calls the LM a program file configures as it is imported (``dspy.configure(lm=
    dspy.LM(...))``, as DSPy's tutorials write), so with no ``--model`` the service serves that
    model, with its endpoint, temperature and max_tokens, through its own client (pool, deadline-
    bound retries, metrics, allow-list). A credential in the code is not carried: the provider's
    environment variable is, as for ``--model``. A given ``--model`` wins, and the log says so."""
    if not isinstance(configured, dspy.LM):
        return settings  # a custom BaseLM: nothing the service could build again
    if settings.model is not None:
        if configured.model != settings.model:
            logger.info(
                "a program configures %s (dspy.configure); serving on %s, as --model says",
                configured.model,
                settings.model,
            )
        return settings
    options = configured.kwargs
    update: dict[str, object] = {"model": configured.model}
    if settings.api_base is None and isinstance(options.get("api_base"), str):
        update["api_base"] = options["api_base"]
    if settings.temperature is None and isinstance(options.get("temperature"), int | float):
        update["temperature"] = options["temperature"]
    max_tokens = options.get("max_tokens")
    if (
        settings.max_tokens is None
        and isinstance(max_tokens, int)
        and max_tokens <= settings.max_tokens_limit
    ):
        update["max_tokens"] = max_tokens
    logger.info(
        "serving on %s, the LM a program configures (dspy.configure); --model picks another", configured.model
    )
    return settings.model_copy(update=update)


def _load_all(
    settings: ServeSettings, given: Mapping[str, dspy.Module | str | type[dspy.Signature]]
) -> list[tuple[LoadedProgram, str | dspy.Module]]:
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
        (
            load_program(
                name,
                target,
                artifact=artifacts.get(name),
                artifact_optional=settings.artifact_optional,
                allow_pickle=settings.allow_pickle,
            ),
            target,
        )
        for name, target in targets.items()
    ]


def _artifacts_by_program(specs: list[str], names: list[str]) -> dict[str, str]:
    by_name: dict[str, str] = {}
    for spec in specs:
        name, sep, path = spec.partition("=")
        name = name.partition("@")[0]  # NAME@VERSION=PATH names the version too
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
