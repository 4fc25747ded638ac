"""`dspy-serve run --workers 2`: two processes on one port, one set of metrics, one rate limit."""

from __future__ import annotations

import signal
import subprocess
import time

import httpx
import redis
from prometheus_client.parser import text_string_to_metric_families

from tests.conftest import PROGRAMS
from tests.fake_lm import FakeLM
from tests.test_cli import CLI, cli_env, free_port


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
        pids: set[int] = set()
        deadline = time.monotonic() + 90
        while len(pids) < 2 and time.monotonic() < deadline:
            try:
                response = httpx.get(url + "/health/ready", timeout=2)
                if response.status_code == 200:
                    pids.add(httpx.get(url + "/health/live", timeout=2).json()["pid"])
            except httpx.TransportError:
                time.sleep(0.2)
        assert len(pids) == 2, "both workers answer on the one port"

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
