"""Start-up checks of the LMs: is each model's credential there, and (optionally) does it answer?

A server whose provider key is missing would otherwise start, report ready, and answer every
call with 503, with nothing in its log naming the variable. These checks run before the server
binds its port, so the command can refuse to start with the reason instead.
"""

from __future__ import annotations

import asyncio
import os

import dspy

from dspy_serve.lm.registry import LanguageModels, allowed_models, is_local_model
from dspy_serve.settings import ServeSettings

__all__ = [
    "ALTERNATIVES",
    "LMCheckError",
    "check_lms",
    "credential_variables",
    "missing_credentials",
    "probe_lms",
]


# A tutorial-style file configures a provider's model; a newcomer without its key should learn the
# way to serve it anyway, on the embedded model, or on another provider.
ALTERNATIVES = (
    "or serve on the embedded model (offline, no key) with --model local, "
    "or on another provider with --model PROVIDER/MODEL"
)


class LMCheckError(ValueError):
    """A configured LM cannot be used: its credential is missing, or it failed a test call."""


def missing_credentials(settings: ServeSettings, default: dspy.BaseLM | None = None) -> list[str]:
    """One sentence per configured model whose provider credential is not in the environment.

    A ``default`` LM instance given by the embedding application is its own business (it may
    carry its key), so only the models this service builds from names are checked.
    """
    # As the service does at startup: LiteLLM, imported for the models DSPy does not route
    # natively, would otherwise fetch its cost map from the internet first.
    os.environ.setdefault("LITELLM_LOCAL_MODEL_COST_MAP", "True")
    problems = []
    for name in allowed_models(settings, default):
        if (default is not None and name == default.model) or is_local_model(name):
            continue
        missing = _missing_variables(name, settings.api_base)
        if missing:
            problems.append(
                f"model {name!r} needs {' or '.join(missing)}, which is not set "
                "(set it in the environment or in .env)"
            )
    return problems


def credential_variables(settings: ServeSettings) -> list[str]:
    """The variables the configured models' provider credentials are read from, set or not (what
    a deployment must provide). Found as the missing ones in an environment without any."""
    from unittest import mock

    os.environ.setdefault("LITELLM_LOCAL_MODEL_COST_MAP", "True")
    names = [name for name in allowed_models(settings) if not is_local_model(name)]
    with mock.patch.dict(os.environ, {"LITELLM_LOCAL_MODEL_COST_MAP": "True"}, clear=True):
        found = [variable for name in names for variable in _missing_variables(name, settings.api_base)]
    return list(dict.fromkeys(found))


def _missing_variables(model: str, api_base: str | None) -> list[str]:
    """The variables DSPy would read the key of ``model`` from, when none of them is set."""
    from dspy.clients.backend_selection import select_backend
    from dspy.clients.engines.lm15_engine import LM15Engine
    from dspy.lm15 import RouterConfig

    try:
        selection = select_backend(dspy.LM(model, api_base=api_base) if api_base else dspy.LM(model))
        # DSPy's selection reads no environment; resolving against it names the variable that
        # is set when a provider accepts several (GEMINI_API_KEY or GOOGLE_API_KEY).
        resolution = (
            LM15Engine(RouterConfig(), model_type="chat").resolve(model) if selection.native else None
        )
    except Exception:  # an unroutable name fails its first call with DSPy's own message
        return []
    if resolution is not None:
        if resolution.credential_policy != "key" or resolution.placeholder_key or not resolution.env_key:
            return []  # a stored login, or a keyless local server
        return [] if os.environ.get(resolution.env_key) else [resolution.env_key]
    import litellm

    found = litellm.validate_environment(model=model, api_base=api_base)
    return [str(key) for key in found.get("missing_keys", [])]


def probe_lms(settings: ServeSettings) -> list[str]:
    """One tiny call per configured model; one sentence per model that did not answer."""
    lms = LanguageModels(settings)
    problems = []
    try:
        for name in lms.names:
            try:
                lms.select(name, max_tokens=8)(messages=[{"role": "user", "content": "Reply with: OK"}])
            except Exception as exc:  # any failure is the answer to "does it work?"
                first_line = str(exc).strip().splitlines()[0] if str(exc).strip() else ""
                problems.append(f"model {name!r} failed a test call: {type(exc).__name__}: {first_line}")
    finally:
        asyncio.run(lms.aclose())
    return problems


def check_lms(settings: ServeSettings, *, probe: bool) -> None:
    """Raise :class:`LMCheckError` naming every model that cannot be used."""
    problems = missing_credentials(settings)
    if problems:
        raise LMCheckError("; ".join(problems) + "; " + ALTERNATIVES)
    if probe:
        problems = probe_lms(settings)
    if problems:
        raise LMCheckError("; ".join(problems))
