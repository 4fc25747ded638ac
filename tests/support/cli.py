"""Running the real ``dspy-serve`` command in a subprocess."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time

import httpx
import pytest

from tests.support.fake_lm import FakeLM
from tests.support.settings import FAKE_KEY, PROGRAMS

CLI = [sys.executable, "-m", "dspy_serve"]


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def cli_env(**extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("DSPY_SERVE_")}
    env.update(OPENAI_API_KEY=FAKE_KEY, LITELLM_LOCAL_MODEL_COST_MAP="True", **extra)
    return env


def serve_qa(fake: FakeLM, *flags: str, **env: str) -> tuple[subprocess.Popen[str], str]:
    """``dspy-serve run`` of the qa program on the fake LM, in a subprocess leading its own process
    group (as under a supervisor): (process, base URL)."""
    port = free_port()
    argv = [*CLI, "run", f"qa={PROGRAMS / 'serving.py'}:qa", "--port", str(port)]
    argv += ["--model", "openai/fake-model", "--api-base", fake.base_url, *flags]
    process = subprocess.Popen(
        argv,
        env=cli_env(**env),
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        start_new_session=True,
    )
    return process, f"http://127.0.0.1:{port}"


def answering_pids(
    url: str, want: int, seconds: float, process: subprocess.Popen[str] | None = None
) -> set[int]:
    """PIDs of the processes (workers, replicas) that answer ready at ``url``, until ``want`` did.

    Each attempt is one connection, so its two requests reach one worker; behind Ray's proxy,
    which answers 404 until the app is deployed, both still come from ready replicas. Stops
    early if ``process`` (the command serving ``url``) has ended.
    """
    pids: set[int] = set()
    deadline = time.monotonic() + seconds
    while len(pids) < want and time.monotonic() < deadline:
        if process is not None and process.poll() is not None:
            break
        try:
            with httpx.Client(base_url=url, timeout=2) as http:
                if http.get("/health/ready").status_code == 200:
                    live = http.get("/health/live")
                    if live.status_code == 200:
                        pids.add(live.json()["pid"])
                        continue
        except httpx.TransportError:
            pass
        time.sleep(0.2)
    return pids


def require_answering(process: subprocess.Popen[str], url: str, want: int, seconds: float) -> set[int]:
    """:func:`answering_pids`, failing the test with the command's own output when fewer answer:
    whether it died or is still starting, that output says why."""
    pids = answering_pids(url, want, seconds, process)
    if len(pids) < want:
        if process.poll() is None:
            os.killpg(process.pid, signal.SIGTERM)
        try:
            output, _ = process.communicate(timeout=120)
        except subprocess.TimeoutExpired:
            os.killpg(process.pid, signal.SIGKILL)
            output, _ = process.communicate(timeout=30)
        pytest.fail(
            f"{len(pids)} of {want} answered at {url} within {seconds:g} s "
            f"(exit status {process.returncode}); the command printed:\n{(output or '')[-6000:]}"
        )
    return pids


def wait_for_line(process: subprocess.Popen[str], contains: str, seconds: float = 90) -> str:
    """The first line of ``process``'s stderr holding ``contains`` (log lines before it are skipped)."""
    assert process.stderr is not None
    deadline = time.monotonic() + seconds
    seen = []
    while time.monotonic() < deadline:
        line = process.stderr.readline()
        if not line:
            break  # the process ended
        if contains in line:
            return line
        seen.append(line)
    raise AssertionError(f"no line with {contains!r}; got:\n{''.join(seen)[-3000:]}")
