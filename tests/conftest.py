"""Shared fixtures: the fake LM server, settings pointed at it, and real servers."""

from __future__ import annotations

import os
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.support.fake_lm import FakeLM
from tests.support.postgres_server import PostgresServer, postgres_server
from tests.support.redis_server import redis_server
from tests.support.settings import FAKE_KEY
from tests.support.stores import fresh_store_url

# Tests talk only to 127.0.0.1: never let LiteLLM fetch its model-cost map.
os.environ.setdefault("LITELLM_LOCAL_MODEL_COST_MAP", "True")


@pytest.fixture(autouse=True)
def _isolate_dspy_settings() -> Iterator[None]:
    """A served app sets process-wide DSPy settings at startup (history off, ...): undo them
    after each test so tests that read DSPy's history see DSPy's defaults."""
    config = sys.modules["dspy.dsp.utils.settings"].main_thread_config
    saved = dict(config)
    yield
    config.clear()
    config.update(saved)


@pytest.fixture(scope="session")
def _fake_lm_server() -> Iterator[FakeLM]:
    with FakeLM() as fake:
        yield fake


@pytest.fixture
def fake_lm(_fake_lm_server: FakeLM) -> Iterator[FakeLM]:
    """The fake OpenAI-compatible LM, reset for each test."""
    _fake_lm_server.reset()
    yield _fake_lm_server
    _fake_lm_server.reset()


@pytest.fixture
def provider_key(monkeypatch: pytest.MonkeyPatch) -> str:
    """A provider credential, set the way operators set it: in the provider's env var."""
    monkeypatch.setenv("OPENAI_API_KEY", FAKE_KEY)
    return FAKE_KEY


@pytest.fixture(scope="session")
def redis_url(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """A real redis-server on loopback, shared by the session."""
    with redis_server(tmp_path_factory.mktemp("redis")) as server:
        yield server.url


@pytest.fixture(scope="session")
def postgres() -> Iterator[PostgresServer]:
    """A real PostgreSQL server (initdb + pg_ctl) for the session; skipped without one, except in CI."""
    with postgres_server() as server:
        yield server


@pytest.fixture(params=["sqlite", "postgresql"])
def store_url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    """An empty store, once on SQLite and once on PostgreSQL."""
    server = request.getfixturevalue("postgres") if request.param == "postgresql" else None
    return fresh_store_url(request.param, tmp_path, server)
