"""Turn TARGET strings and artifacts into ready-to-serve DSPy programs.

A TARGET names something importable (``path/to/file.py:NAME`` or ``package.module:NAME``);
NAME may be a Module instance, a Module subclass, a zero-argument factory, or a Signature
(class or string), served as ``dspy.Predict`` of it. Optimized state is loaded strictly: a
missing or incompatible artifact stops the start-up unless the operator opted out.
"""

from __future__ import annotations

import difflib
import hashlib
import importlib
import importlib.util
import inspect
import json
import sys
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import dspy

from dspy_serve.serving.import_errors import import_failure
from dspy_serve.settings import ServeSettings

__all__ = [
    "RESERVED_NAMES",
    "ArtifactError",
    "LoadedProgram",
    "TargetError",
    "check_program_name",
    "load_program",
    "parse_target",
    "relocate_files",
]

# First path segments the app routes itself (and `playground`, planned): a program's routes
# live under /NAME/, so a program of one of these names would shadow them or share their access.
RESERVED_NAMES = frozenset(
    {
        "admin",
        "docs",
        "health",
        "jobs",
        "mcp",
        "metrics",
        "openapi",
        "openapi.json",
        "playground",
        "programs",
        "redoc",
        "v1",
    }
)
# Where a program's module keeps the LM (and adapter) its code configured when first imported.
_CONFIGURED_LM = "__dspy_serve_configured_lm__"
_CONFIGURED_ADAPTER = "__dspy_serve_configured_adapter__"


class TargetError(ValueError):
    """A TARGET cannot be imported or is not a program."""


class ArtifactError(ValueError):
    """An artifact is missing, unsafe to load without consent, or does not fit its program."""


@dataclass(frozen=True)
class Artifact:
    path: str
    sha256: str


@dataclass(frozen=True)
class LoadedProgram:
    name: str
    target: str
    module: dspy.Module
    artifact: Artifact | None
    # The LM its file configures as it is imported (dspy.configure(lm=...)), which plain DSPy
    # would call; None when it configures none.
    configured_lm: dspy.BaseLM | None = None
    # The adapter its file configures (dspy.configure(adapter=...)): its calls run under it, as
    # under --adapter, whatever other program files configure.
    configured_adapter: dspy.Adapter | None = None

    @property
    def optimized(self) -> bool:
        return self.artifact is not None


def parse_target(spec: str) -> tuple[str, str]:
    """``[alias=]TARGET`` -> (name, target); the name defaults to the object's NAME."""
    alias, sep, target = spec.partition("=")
    if not sep:
        alias, target = "", spec
    _, colon, attr = target.rpartition(":")
    if not colon or not attr:
        raise TargetError(f"{spec!r}: expected 'path/to/file.py:NAME' or 'package.module:NAME'")
    name = alias or attr
    if not name.replace("-", "_").isidentifier():
        raise TargetError(f"{spec!r}: program name {name!r} must be letters, digits, '_' or '-'")
    check_program_name(name)
    return name, target


def check_program_name(name: str) -> None:
    """Refuse a name whose routes would collide with the server's own (``/health``, ``/docs``...)."""
    if name.lower() in RESERVED_NAMES:
        raise TargetError(
            f"program name {name!r} is reserved for the server's own routes "
            f"({', '.join(sorted(RESERVED_NAMES))}); serve it under another name with 'alias=TARGET'"
        )


def relocate_files(settings: ServeSettings, move: Callable[[str], str]) -> ServeSettings:
    """The same settings with every program file and artifact path passed through ``move``.

    For running elsewhere: inside an image, or in processes that start in another directory.
    Module targets (``package.module:NAME``) are left alone.
    """
    programs = []
    for spec in settings.programs:
        name, target = parse_target(spec)
        location, _, attr = target.rpartition(":")
        if location.endswith(".py") or "/" in location:
            target = f"{move(location)}:{attr}"
        programs.append(f"{name}={target}")
    moved: dict[str, list[str]] = {}
    for field in ("artifacts", "candidates"):
        moved[field] = []
        for spec in getattr(settings, field):
            name, sep, path = spec.partition("=")
            moved[field].append(f"{name}={move(path)}" if sep else move(spec))
    return settings.model_copy(update={"programs": programs, **moved})


def load_program(
    name: str,
    target: str | dspy.Module,
    *,
    artifact: str | Path | None = None,
    artifact_optional: bool = False,
    allow_pickle: bool = False,
) -> LoadedProgram:
    """Import (or accept) a program and load its optimized state."""
    label = f"<{type(target).__name__} instance>" if isinstance(target, dspy.Module) else str(target)
    configured_lm = configured_adapter = None
    if artifact is not None and Path(artifact).is_dir():
        # A save_program directory holds the whole program: it replaces the target's object. Its
        # classes (by reference) or their imports (by value) come from the target's folder.
        folder = _importable_folder(target)
        module = _program_from_directory(Path(artifact), allow_pickle, folder)
    elif isinstance(target, dspy.Module):
        module = target
    else:
        obj, configured_lm, configured_adapter = _import_object(str(target))
        module = as_module(obj, label)

    loaded: Artifact | None = None
    if artifact is not None:
        path = Path(artifact)
        if not path.exists():
            if not artifact_optional:
                raise ArtifactError(
                    f"artifact for {name!r} not found: {path} (pass --artifact-optional to serve unoptimized)"
                )
        elif path.is_dir():
            loaded = Artifact(str(path), _sha256_dir(path))
        else:
            # Load into a copy: the imported object may serve another name with other state.
            module = module.deepcopy()
            loaded = _load_state(module, path, name, allow_pickle=allow_pickle)
    return LoadedProgram(
        name=name,
        target=label,
        module=module,
        artifact=loaded,
        configured_lm=configured_lm,
        configured_adapter=configured_adapter,
    )


def as_module(obj: Any, label: str) -> dspy.Module:
    """Accept the shapes of program a user is likely to point at."""
    if isinstance(obj, dspy.Module):
        return obj
    if isinstance(obj, str) or (inspect.isclass(obj) and issubclass(obj, dspy.Signature)):
        return dspy.Predict(obj)
    if inspect.isclass(obj) and issubclass(obj, dspy.Module):
        return _call_without_arguments(obj, label)
    if callable(obj):
        made = _call_without_arguments(obj, label)
        if isinstance(made, dspy.Module):
            return made
        raise TargetError(f"{label}: the factory returned {type(made).__name__}, not a dspy.Module")
    raise TargetError(
        f"{label}: {type(obj).__name__} is not a dspy.Module, Module class, factory or Signature"
    )


def _call_without_arguments(factory: Any, label: str) -> Any:
    try:
        return factory()
    except TypeError as exc:
        raise TargetError(f"{label}: cannot be built without arguments ({exc})") from exc


def _import_object(target: str) -> tuple[Any, dspy.BaseLM | None, dspy.Adapter | None]:
    """The target's object, and the LM and adapter its module configured as it was imported."""
    location, _, attr = target.rpartition(":")
    if location.endswith(".py") or "/" in location or "\\" in location:
        module = _import_file(Path(location))
    else:
        first_import, before = location not in sys.modules, (dspy.settings.lm, dspy.settings.adapter)
        try:
            module = importlib.import_module(location)
        except ModuleNotFoundError as exc:
            if exc.name is None or not location.startswith(exc.name):
                raise TargetError(import_failure(exc)) from None  # the module itself imports a missing one
            raise TargetError(f"{target}: cannot import {location!r} ({exc})") from None
        except Exception as exc:
            raise TargetError(import_failure(exc)) from None
        if first_import:
            _note_configured_lm(module, before)
    try:
        return getattr(module, attr), vars(module).get(_CONFIGURED_LM), vars(module).get(_CONFIGURED_ADAPTER)
    except AttributeError:
        raise TargetError(f"{target}: {location!r} has no {attr!r}{_suggestion(module, attr)}") from None


def _note_configured_lm(module: Any, before: tuple[dspy.BaseLM | None, dspy.Adapter | None]) -> None:
    """Note on a module, as it is first imported, the LM and adapter its code configured: a
    later load of the same module does not run its code again."""
    if dspy.settings.lm is not before[0]:
        vars(module)[_CONFIGURED_LM] = dspy.settings.lm
    if dspy.settings.adapter is not before[1]:
        vars(module)[_CONFIGURED_ADAPTER] = dspy.settings.adapter


def _suggestion(module: Any, attr: str) -> str:
    """What the user may have meant: the programs-like names the module does define."""
    own = [
        name
        for name, value in vars(module).items()
        if not name.startswith("_")
        and (
            isinstance(value, dspy.Module)
            or (inspect.isclass(value) and issubclass(value, (dspy.Module, dspy.Signature)))
            or (inspect.isfunction(value) and value.__module__ == module.__name__)
        )
        and value not in (dspy.Module, dspy.Signature)
    ]
    if not own:
        return " (it defines no dspy.Module, Module class, factory or Signature)"
    close = difflib.get_close_matches(attr, own, n=1)
    hint = f"; did you mean {close[0]!r}?" if close else ""
    shown = ", ".join(own[:12]) + (f", and {len(own) - 12} more" if len(own) > 12 else "")
    return f"{hint} (it defines: {shown})"


def _import_file(path: Path) -> Any:
    if not path.is_file():
        raise TargetError(f"program file not found: {path}")
    resolved = path.resolve()
    # A stable, unique module name keeps pickled/saved state and tracebacks meaningful.
    module_name = f"dspy_serve_program_{hashlib.sha1(str(resolved).encode()).hexdigest()[:12]}"
    if module_name in sys.modules:
        return sys.modules[module_name]
    spec = importlib.util.spec_from_file_location(module_name, resolved)
    if spec is None or spec.loader is None:
        raise TargetError(f"cannot import {path}")
    module = importlib.util.module_from_spec(spec)
    sys.modules[module_name] = module
    # Let the program import its sibling modules, as `python file.py` would.
    parent = str(resolved.parent)
    if parent not in sys.path:
        sys.path.insert(0, parent)
    before = (dspy.settings.lm, dspy.settings.adapter)
    try:
        spec.loader.exec_module(module)
    except Exception as exc:
        del sys.modules[module_name]
        raise TargetError(import_failure(exc)) from None
    _note_configured_lm(module, before)
    return module


def _importable_folder(target: str | dspy.Module) -> Path | None:
    """Put a file target's folder on ``sys.path`` (as importing it would), and return it."""
    if isinstance(target, dspy.Module):
        return None
    location = target.rpartition(":")[0]
    if not (location.endswith(".py") or "/" in location or "\\" in location):
        return None  # package.module:NAME is importable already, or says why when imported
    path = Path(location)
    if not path.is_file():
        raise TargetError(f"program file not found: {path}")
    folder = path.resolve().parent
    if str(folder) not in sys.path:
        sys.path.insert(0, str(folder))
    return folder


def _program_from_directory(path: Path, allow_pickle: bool, folder: Path | None) -> dspy.Module:
    if not allow_pickle:
        raise ArtifactError(
            f"{path} is a save_program=True directory (pickle); pass --allow-pickle to load it"
        )
    where = f"the target's folder {folder} or sys.path" if folder else "sys.path"
    try:
        program = dspy.load(str(path), allow_pickle=True)
    except ModuleNotFoundError as exc:
        raise ArtifactError(
            f"{path}: the program saved there needs the module {exc.name!r}, which cannot be imported "
            f"from {where}. A save_program=True directory stores the user's classes by reference "
            "(or, with modules_to_serialize, by value but not what they import): put that module "
            "next to the target file or on PYTHONPATH"
        ) from exc
    except AttributeError as exc:
        raise ArtifactError(
            f"{path}: the program saved there refers to code that is no longer where it was saved "
            f"({exc}); serve it with the code it was saved from"
        ) from exc
    except FileNotFoundError as exc:
        raise ArtifactError(
            f"{path} is not a save_program=True directory: {Path(exc.filename or '').name or exc} is missing"
        ) from exc
    except Exception as exc:  # unpickling can raise almost anything
        raise ArtifactError(
            f"{path} does not hold a program saved with save_program=True ({type(exc).__name__}: {exc})"
        ) from exc
    if not isinstance(program, dspy.Module):
        raise ArtifactError(f"{path} does not hold a dspy.Module")
    return program


def _load_state(module: dspy.Module, path: Path, name: str, *, allow_pickle: bool) -> Artifact:
    if path.suffix == ".pkl" and not allow_pickle:
        raise ArtifactError(f"{path}: .pkl artifacts can run code; pass --allow-pickle to load them")
    if path.suffix not in (".json", ".pkl"):
        raise ArtifactError(f"{path}: an artifact must be a .json or .pkl file or a save_program directory")
    if path.suffix == ".json":
        _check_state_fits(module, path, name)
    try:
        module.load(str(path), allow_pickle=allow_pickle)
    except (KeyError, ValueError, TypeError, AttributeError, json.JSONDecodeError) as exc:
        raise ArtifactError(f"{path} does not fit program {name!r}: {type(exc).__name__}: {exc}") from exc
    return Artifact(str(path), _sha256_file(path))


def _check_state_fits(module: dspy.Module, path: Path, name: str) -> None:
    """Refuse state saved from a different program: DSPy ignores extra predictors silently."""
    try:
        state = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError) as exc:
        raise ArtifactError(f"{path} is not readable JSON: {exc}") from exc
    if not isinstance(state, dict):
        raise ArtifactError(f"{path} is not a saved DSPy program state")
    if isinstance(module, dspy.Predict):
        by_predictor = {"self": state}  # a bare Predict saves its own state, unnested
    else:
        saved = {key for key in state if key != "metadata"}
        expected = {param_name for param_name, _ in module.named_parameters()}
        if saved != expected:
            missing, unexpected = sorted(expected - saved), sorted(saved - expected)
            raise ArtifactError(
                f"{path} does not fit program {name!r}: "
                f"missing predictors {missing or 'none'}, unexpected predictors {unexpected or 'none'}"
            )
        by_predictor = state
    for param_name, predictor in module.named_predictors():
        saved_state = by_predictor.get(param_name)
        saved_fields = (
            saved_state.get("signature", {}).get("fields") if isinstance(saved_state, dict) else None
        )
        if not isinstance(saved_fields, list):
            raise ArtifactError(
                f"{path} does not fit program {name!r}: no saved signature for {param_name!r}"
            )
        if len(saved_fields) != len(predictor.signature.fields):
            raise ArtifactError(
                f"{path} does not fit program {name!r}: predictor {param_name!r} was saved with "
                f"{len(saved_fields)} fields, the program has {len(predictor.signature.fields)}"
            )
    for param_name, saved_state in by_predictor.items():
        if param_name != "metadata" and isinstance(saved_state, dict):
            _check_state_is_data(saved_state, path, param_name, bare=isinstance(module, dspy.Predict))


# What a predictor's saved state may hold. DSPy sets every other key as an attribute, and merges
# ``config`` (and its LM's settings) into every LM call: an artifact could otherwise name the
# endpoint, the credential, the headers or the model of every call.
_PREDICTOR_STATE_KEYS = frozenset({"traces", "train", "demos", "signature", "fields", "lm", "config"})
_SAMPLING_PARAMETERS = frozenset(
    {
        "temperature", "top_p", "top_k", "min_p", "max_tokens", "max_completion_tokens", "n",
        "num_generations", "stop", "presence_penalty", "frequency_penalty", "repetition_penalty",
        "seed", "logprobs", "top_logprobs", "rollout_id",
    }
)  # fmt: skip
# What DSPy's own LM.dump_state() writes besides sampling parameters: the model is checked
# against the allow-list when the programs load; the rest is inert when empty.
_LM_STATE_KEYS = frozenset({"_dspy_lm_class", "model", "model_type", "cache", "num_retries"})
_LM_STATE_IF_EMPTY = frozenset({"finetuning_model", "launch_kwargs", "train_kwargs"})


def _check_state_is_data(state: dict[str, Any], path: Path, predictor: str, *, bare: bool) -> None:
    """Refuse an artifact that would choose where, how or with what LM calls are made.

    Refused rather than stripped: the file is not what its author's tools write, and serving it
    minus some keys would silently serve a program nobody optimized."""
    allowed = _PREDICTOR_STATE_KEYS | {"metadata"} if bare else _PREDICTOR_STATE_KEYS

    def refuse(key: str, where: str) -> ArtifactError:
        return ArtifactError(
            f"{path}: predictor {predictor!r} sets {key!r} in its {where}; an artifact may only set "
            f"sampling parameters ({', '.join(sorted(_SAMPLING_PARAMETERS))}), never an endpoint, "
            "credential, header or model: remove the key"
        )

    for key in state:
        if key not in allowed:
            raise refuse(key, "saved state")
    config = state.get("config")
    if config is not None:
        if not isinstance(config, dict):
            raise refuse("config", "saved state (not a mapping)")
        for key in config:
            if key not in _SAMPLING_PARAMETERS:
                raise refuse(key, "config")
    lm = state.get("lm")
    if lm is not None:
        if not isinstance(lm, dict):
            raise refuse("lm", "saved state (not a mapping)")
        for key, value in lm.items():
            if key in _LM_STATE_IF_EMPTY and not value:
                continue
            if key not in _LM_STATE_KEYS and key not in _SAMPLING_PARAMETERS:
                raise refuse(key, "saved LM")


def _sha256_file(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        for block in iter(lambda: handle.read(1 << 16), b""):
            digest.update(block)
    return digest.hexdigest()


def _sha256_dir(path: Path) -> str:
    digest = hashlib.sha256()
    for file in sorted(p for p in path.rglob("*") if p.is_file()):
        digest.update(str(file.relative_to(path)).encode())
        digest.update(_sha256_file(file).encode())
    return digest.hexdigest()
