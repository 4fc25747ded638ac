"""Capture under ``dspy-serve run --workers 2``: every worker captures into the one store, through
the real command."""

from __future__ import annotations

import os
import signal
import subprocess
from pathlib import Path

import httpx

from tests.support.cli import require_answering, serve_qa
from tests.support.fake_lm import FakeLM
from tests.support.stores import wait_for_rows


def test_two_workers_capture_every_call_into_one_store(
    fake_lm: FakeLM, tmp_path: Path, store_url: str
) -> None:
    process, url = serve_qa(fake_lm, "--workers", "2", "--capture", "--store", store_url)
    output = ""
    try:
        require_answering(process, url, 2, seconds=120)
        ids, pids = set(), set()
        for i in range(16):
            with httpx.Client(timeout=30) as http:  # a connection each: both workers take calls
                response = http.post(f"{url}/qa/invoke", json={"inputs": {"question": f"q{i}"}})
                assert response.status_code == 200, response.text
                ids.add(response.json()["call_id"])
                pids.add(http.get(f"{url}/health/live").json()["pid"])
        rows = wait_for_rows(store_url, "SELECT call_id FROM calls", len(ids), seconds=60)
    finally:
        if process.poll() is None:
            os.killpg(process.pid, signal.SIGTERM)
        try:
            output, _ = process.communicate(timeout=60)
        except subprocess.TimeoutExpired:
            os.killpg(process.pid, signal.SIGKILL)
            output, _ = process.communicate(timeout=30)
    assert {row["call_id"] for row in rows} == ids, output[-4000:]
    assert len(pids) == 2
