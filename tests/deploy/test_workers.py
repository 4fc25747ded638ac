"""`dspy-serve run --workers 2`: two processes on one port, one set of metrics, one rate limit."""

from __future__ import annotations

import signal
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import httpx
import pytest
import redis
from fastapi import FastAPI

from dspy_serve import ServeSettings
from tests.support.cli import answering_pids, serve_qa
from tests.support.fake_lm import FakeLM
from tests.support.metrics import requests_counted
from tests.support.settings import PROGRAMS


def test_two_workers_share_the_port_metrics_and_rate_limit(fake_lm: FakeLM, redis_url: str) -> None:
    storage = f"{redis_url}/1"
    redis.Redis.from_url(storage).flushdb()
    process, url = serve_qa(
        fake_lm, "--workers", "2", "--rate-limit", "3/minute", "--rate-limit-storage", storage
    )
    try:
        assert len(answering_pids(url, 2, seconds=90)) == 2, "both workers answer on the one port"

        statuses = [
            httpx.post(url + "/qa/invoke", json={"inputs": {"question": f"q{i}"}}, timeout=30).status_code
            for i in range(4)
        ]
        assert statuses == [200, 200, 200, 429], "the limit holds across workers"

        counted = requests_counted(httpx.get(url + "/metrics", timeout=5).text, "invoke")
        assert counted == 4, "any worker's /metrics counts every worker's requests"
    finally:
        process.send_signal(signal.SIGINT)
        output, _ = process.communicate(timeout=60)
    assert process.returncode == 0, output[-2000:]


def test_sigterm_turns_every_worker_unready_and_lets_calls_in_flight_finish(fake_lm: FakeLM) -> None:
    process, url = serve_qa(fake_lm, "--workers", "2", "--log-format", "text")
    try:
        assert len(answering_pids(url, 2, seconds=90)) == 2
        fake_lm.latency = 2.0
        with ThreadPoolExecutor(1) as pool:
            in_flight = pool.submit(
                httpx.post, url + "/qa/invoke", json={"inputs": {"question": "slow"}}, timeout=30
            )
            assert fake_lm.wait_for(lambda: fake_lm.in_flight == 1, timeout=10)
            process.send_signal(signal.SIGTERM)
            assert in_flight.result(timeout=30).status_code == 200, "the call in flight finished"
    finally:
        if process.poll() is None:
            process.send_signal(signal.SIGTERM)
        output, _ = process.communicate(timeout=60)
    assert process.returncode == 0, output[-2000:]
    stopping = [line for line in output.splitlines() if "shutting down: readiness is 503" in line]
    assert len(stopping) == 2, output[-2000:]  # each worker, before uvicorn drains it
    assert sum("1 in flight" in line for line in stopping) == 1


def test_workers_get_the_same_uvicorn_options_as_one_process(monkeypatch: pytest.MonkeyPatch) -> None:
    """One options builder for both paths: a 0.5 s grace is 1 s for workers too, never 0 s."""
    import socket

    import uvicorn

    from dspy_serve.deploy import workers
    from dspy_serve.deploy.uvicorn_server import uvicorn_config

    passed: dict[str, Any] = {}

    class Recorder:
        def __init__(self, config: uvicorn.Config, sockets: list[socket.socket]) -> None:
            passed.update(config=config, sockets=sockets)

        def run(self) -> None:
            pass

    monkeypatch.setattr(workers, "HotReloadingWorkers", Recorder)
    for name in ("PROMETHEUS_MULTIPROC_DIR", "DSPY_SERVE_WORKER_SETTINGS_FILE"):  # run_workers sets them
        monkeypatch.setenv(name, "restored-after-the-test")
    settings = ServeSettings(programs=[f"qa={PROGRAMS / 'serving.py'}:qa"], workers=2, shutdown_grace=0.5)
    with socket.socket() as sock:
        workers.run_workers(settings, sock)
    config, single = passed["config"], uvicorn_config(FastAPI(), settings)
    assert passed["sockets"] == [sock]  # the socket the parent bound
    assert config.workers == 2
    assert config.timeout_graceful_shutdown == single.timeout_graceful_shutdown == 1
    assert (config.host, config.port, config.timeout_keep_alive) == (
        single.host,
        single.port,
        single.timeout_keep_alive,
    )
