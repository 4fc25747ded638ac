"""The benchmark harness is code too: every module imports, so a moved helper cannot break it
silently between the runs that refresh docs/benchmarks.md."""

from __future__ import annotations

import importlib
from pathlib import Path

import pytest

BENCH = Path(__file__).resolve().parents[1] / "bench"
MODULES = sorted(p.stem for p in BENCH.glob("*.py") if p.stem != "__init__")


def test_the_harness_has_modules() -> None:
    assert {"run", "systems", "fake_lm_server", "ceiling"} <= set(MODULES)


@pytest.mark.parametrize("name", MODULES)
def test_every_bench_module_imports(name: str) -> None:
    importlib.import_module(f"bench.{name}")
