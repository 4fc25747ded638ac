"""OpenTelemetry spans around program calls, when the API is installed; otherwise nothing.

The spans go to whatever TracerProvider the process configured (``opentelemetry-instrument``,
or your own): with none configured, the API's no-op provider makes them free.
"""

from __future__ import annotations

import importlib.util
from collections.abc import Iterator
from contextlib import contextmanager, nullcontext
from typing import Any

__all__ = ["program_span"]

_AVAILABLE = importlib.util.find_spec("opentelemetry") is not None


@contextmanager
def program_span(program: str, model: str) -> Iterator[Any]:
    if not _AVAILABLE:
        with nullcontext() as nothing:
            yield nothing
        return
    from opentelemetry import trace

    tracer = trace.get_tracer("dspy_serve")
    with tracer.start_as_current_span(
        f"dspy_serve.call {program}",
        attributes={"dspy_serve.program": program, "gen_ai.request.model": model},
    ) as span:
        yield span
