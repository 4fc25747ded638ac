"""Which programs a service serves: imported, artifacts loaded, interfaces derived.

This runs when the service is built, before any server starts, so that a program that cannot
be served stops the start-up with a message instead of failing its first caller.
"""

from __future__ import annotations

import logging
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

logger = logging.getLogger("dspy_serve")


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
) -> tuple[ServeSettings, dict[str, Program]]:
    """The programs of ``settings.programs`` (TARGETs) and ``given`` (objects), ready to start,
    and the settings to serve them with: the default model is the one a program file configured,
    when none was given (:func:`_with_configured_lm`)."""
    loaded = _load_all(settings, given or {})
    configured = [program.configured_lm for program in loaded if program.configured_lm is not None]
    if lm is None and configured:
        settings = _with_configured_lm(settings, configured[-1])  # the last one, as in plain DSPy
    programs: dict[str, Program] = {}
    allowed = allowed_models(settings, lm)
    declared = _declared_signatures(settings)
    for program in loaded:
        if problems := own_lm_problems(program.module, allowed):
            raise ValueError(
                f"program {program.name!r}: {'; '.join(problems)}, not in the allow-list "
                f"({', '.join(allowed)}): add it with --allow-model, or clear that LM"
            )
        interface = derive_interface(
            program.name, program.module, declared.get(program.name), max_input_chars=settings.max_input_chars
        )
        programs[program.name] = Program(program, interface)
    if not programs:
        raise ValueError("no programs to serve: pass at least one TARGET")
    return settings, programs


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
