"""Shared fixtures: the fake LM server, settings pointed at it, and real servers."""

from __future__ import annotations

import os
import sys
from collections.abc import Iterator

import pytest

from tests.support.fake_lm import FakeLM
from tests.support.settings import FAKE_KEY

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
    """A real redis-server on loopback (Debian's package; CI installs it)."""
    import shutil
    import socket
    import subprocess
    import time

    binary = shutil.which("redis-server")
    if binary is None:
        if os.environ.get("CI"):
            pytest.fail("redis-server is missing: CI must install it (apt-get install redis-server)")
        pytest.skip("redis-server is not installed (apt-get install redis-server)")
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    workdir = tmp_path_factory.mktemp("redis")
    process = subprocess.Popen(
        [
            binary,
            "--port",
            str(port),
            "--bind",
            "127.0.0.1",
            "--save",
            "",
            "--appendonly",
            "no",
            "--dir",
            str(workdir),
        ],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        deadline = time.monotonic() + 10
        while True:
            try:
                with socket.create_connection(("127.0.0.1", port), timeout=0.2):
                    break
            except OSError:
                if time.monotonic() > deadline:
                    raise RuntimeError("redis-server did not start") from None
                time.sleep(0.05)
        yield f"redis://127.0.0.1:{port}"
    finally:
        process.terminate()
        process.wait(timeout=10)
