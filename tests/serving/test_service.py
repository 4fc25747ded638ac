"""What a service does to its process once it is ready to serve."""

from __future__ import annotations

import gc
from collections.abc import Iterator

import pytest

from dspy_serve import create_app
from tests.support.fake_lm import FakeLM
from tests.support.servers import serving
from tests.support.settings import PROGRAMS, fake_settings

QA = f"qa={PROGRAMS / 'serving.py'}:qa"


@pytest.fixture
def python_gc_thresholds() -> Iterator[tuple[int, int, int]]:
    saved = gc.get_threshold()
    gc.set_threshold(700, 10, 10)  # Python's defaults
    yield gc.get_threshold()
    gc.set_threshold(*saved)


def test_a_ready_service_collects_young_garbage_less_often(
    fake_lm: FakeLM, provider_key: str, python_gc_thresholds: tuple[int, int, int]
) -> None:
    with serving(create_app(fake_settings(fake_lm, programs=[QA]))):
        assert gc.get_threshold() == (50_000, 20, 100)


def test_gc_threshold_zero_leaves_pythons_setting(
    fake_lm: FakeLM, provider_key: str, python_gc_thresholds: tuple[int, int, int]
) -> None:
    with serving(create_app(fake_settings(fake_lm, programs=[QA], gc_threshold=0))):
        assert gc.get_threshold() == python_gc_thresholds
