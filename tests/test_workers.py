"""`dspy-serve run --workers 2`: two processes on one port, one set of metrics, one rate limit."""

from __future__ import annotations

import signal
import subprocess
import time
from concurrent.futures import ThreadPoolExecutor

import httpx
import redis
from prometheus_client.parser import text_string_to_metric_families

from tests.conftest import PROGRAMS
from tests.fake_lm import FakeLM
from tests.test_cli import CLI, cli_env, free_port


def _ready_workers(url: str, want: int) -> set[int]:
    """PIDs of workers that answered ready (each connection lands on one), until ``want`` did."""
    pids: set[int] = set()
    deadline = time.monotonic() + 90
    while len(pids) < want and time.monotonic() < deadline:
        try:
            with httpx.Client(base_url=url, timeout=2) as http:  # one connection: one worker
                if http.get("/health/ready").status_code == 200:
                    pids.add(http.get("/health/live").json()["pid"])
        except httpx.TransportError:
            time.sleep(0.2)
    return pids


def test_two_workers_share_the_port_metrics_and_rate_limit(fake_lm: FakeLM, redis_url: str) -> None:
    storage = f"{redis_url}/1"
    redis.Redis.from_url(storage).flushdb()
    port = free_port()
    process = subprocess.Popen(
        [
            *CLI,
            "run",
            f"qa={PROGRAMS / 'serving.py'}:qa",
            "--workers",
            "2",
            "--port",
            str(port),
            "--model",
            "openai/fake-model",
            "--api-base",
            fake_lm.base_url,
            "--rate-limit",
            "3/minute",
            "--rate-limit-storage",
            storage,
        ],
        env=cli_env(),
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    url = f"http://127.0.0.1:{port}"
    try:
        assert len(_ready_workers(url, 2)) == 2, "both workers answer on the one port"

        statuses = [
            httpx.post(url + "/qa/invoke", json={"inputs": {"question": f"q{i}"}}, timeout=30).status_code
            for i in range(4)
        ]
        assert statuses == [200, 200, 200, 429], "the limit holds across workers"

        counted = 0.0
        for family in text_string_to_metric_families(httpx.get(url + "/metrics", timeout=5).text):
            for sample in family.samples:
                if sample.name == "dspy_serve_requests_total" and sample.labels.get("endpoint") == "invoke":
                    counted += sample.value
        assert counted == 4, "any worker's /metrics counts every worker's requests"
    finally:
        process.send_signal(signal.SIGINT)
        output, _ = process.communicate(timeout=60)
    assert process.returncode == 0, output[-2000:]


def test_sigterm_turns_every_worker_unready_and_lets_calls_in_flight_finish(fake_lm: FakeLM) -> None:
    port = free_port()
    process = subprocess.Popen(
        [
            *CLI,
            "run",
            f"qa={PROGRAMS / 'serving.py'}:qa",
            "--workers",
            "2",
            "--port",
            str(port),
            "--model",
            "openai/fake-model",
            "--api-base",
            fake_lm.base_url,
            "--log-format",
            "text",
        ],
        env=cli_env(),
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    url = f"http://127.0.0.1:{port}"
    try:
        assert len(_ready_workers(url, 2)) == 2
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
