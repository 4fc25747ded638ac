"""Where a process's Python CPU goes, by component, from py-spy's collapsed stacks.

Each sample is charged to the innermost frame that belongs to a known component (HTTP,
validation, DSPy adapter, LM client, accounting, ...). Standard-library frames other than asyncio
and threading (json, re, copy, typing, ...) and h11 (used by uvicorn and by httpcore alike) belong
to nobody, so their time goes to the component that called them. Garbage collection is not in
the samples as such (py-spy charges a collection to whatever frame allocated): bench/gcprobe
measures it apart.
"""

from __future__ import annotations

import collections
from pathlib import Path

__all__ = ["COMPONENTS", "component_of", "components"]

# (component, substring of a frame's file), first match wins, in this order.
_RULES: list[tuple[str, str]] = [
    ("accounting", "dspy_serve/serving/metrics.py"),
    ("accounting", "dspy_serve/serving/pricing.py"),
    ("accounting", "dspy_serve/serving/front_door.py"),
    ("accounting", "dspy_serve/serving/ratelimit.py"),
    ("accounting", "dspy_serve/serving/keys.py"),
    ("accounting", "dspy_serve/serving/token_budget.py"),
    ("accounting", "dspy_serve/lm/budget.py"),  # before dspy_serve/lm/: the token budget, not the client
    ("accounting", "dspy/clients/costs.py"),
    ("accounting", "dspy/clients/model_metadata"),
    ("accounting", "prometheus_client/"),
    ("LM client", "dspy/_vendor/lm15/"),
    ("LM client", "dspy_serve/lm/"),
    ("LM client", "dspy/clients/"),
    ("LM client", "httpx/"),
    ("LM client", "httpcore/"),
    ("DSPy adapter", "dspy/adapters/"),
    ("DSPy program", "dspy/"),
    ("DSPy program", "bench/programs.py"),
    ("dspy-serve (other)", "dspy_serve/"),
    ("validation", "pydantic"),
    ("HTTP", "uvicorn/"),
    ("HTTP", "httptools/"),
    ("HTTP", "starlette/"),
    ("HTTP", "fastapi/"),
    ("HTTP", "anyio/"),
    ("asyncio / threads", "asyncio/"),
    ("asyncio / threads", "uvloop/"),
    ("asyncio / threads", "concurrent/futures"),
    ("asyncio / threads", "threading.py"),
    ("asyncio / threads", "selectors.py"),
    ("load driver", "bench/loop.py"),
    ("load driver", "bench/ceiling.py"),
]
COMPONENTS = [*dict.fromkeys(name for name, _ in _RULES), "other"]


def component_of(stack: list[str]) -> str:
    """The component a sample's stack (outermost frame first) is charged to."""
    for frame in reversed(stack):
        for name, part in _RULES:
            if part in frame:
                return name
    return "other"


def components(raw: Path) -> tuple[dict[str, int], int]:
    """(samples per component, total samples) of py-spy's ``--format raw`` output in ``raw``."""
    counts: collections.Counter[str] = collections.Counter()
    total = 0
    for line in raw.read_text().splitlines() if raw.exists() else []:
        stack, _, count = line.rpartition(" ")
        if not stack or not count.isdigit():
            continue
        counts[component_of(stack.split(";"))] += int(count)
        total += int(count)
    return dict(counts), total
