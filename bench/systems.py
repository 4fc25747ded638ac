"""The systems under test and the processes that run them, all bound to 127.0.0.1.

Every child gets SIGTERM if the harness dies (``PR_SET_PDEATHSIG``), its output goes to a log
file, and it is stopped by its own PID only.
"""

from __future__ import annotations

import asyncio
import ctypes
import json
import os
import re
import signal
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any, Literal

from bench.httpclient import LOOPBACK, free_port, get_json, post_json
from bench.programs import PROGRAMS, QUESTION

__all__ = ["FakeProcess", "Server", "System", "run_driver", "start_fake_lm", "start_server", "stop_process"]

ROOT = Path(__file__).resolve().parent.parent
PROGRAMS_FILE = ROOT / "bench" / "programs.py"
MODEL = "openai/fake-model"

Kind = Literal["ceiling", "dspy-serve", "naive"]


@dataclass(frozen=True)
class System:
    """One way of serving one program."""

    label: str  # as shown in tables: "ceiling", "dspy-serve", "naive async def", ...
    kind: Kind
    program: str  # a key of bench.programs.PROGRAMS
    route: str = ""  # the HTTP path measured (servers only)
    args: tuple[str, ...] = ()  # extra dspy-serve flags, or the ceiling's --engine
    note: str = ""
    model: str = MODEL  # the model name DSPy is given (the fake LM answers any)

    @property
    def key(self) -> str:
        return f"{self.label} / {self.program}"

    def body(self) -> bytes:
        inputs = {"question": QUESTION}
        return json.dumps({"inputs": inputs} if self.kind == "dspy-serve" else inputs).encode()


def _die_with_parent() -> None:  # runs in the child between fork and exec
    libc = ctypes.CDLL("libc.so.6", use_errno=True)
    libc.prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG


def child_env(**extra: str) -> dict[str, str]:
    """The environment of every child: a dummy key, no metadata fetch, the repository importable."""
    env = dict(os.environ)
    env.update(
        OPENAI_API_KEY="bench-not-a-key",
        LITELLM_LOCAL_MODEL_COST_MAP="True",  # DSPy/LiteLLM must not fetch model metadata
        PYTHONPATH=os.pathsep.join(filter(None, [str(ROOT), env.get("PYTHONPATH")])),
        PYTHONUNBUFFERED="1",
    )
    env.update(extra)
    return env


def spawn(
    args: list[str], log: Path, *, env: dict[str, str], cwd: Path, pipe_stdout: bool = False
) -> subprocess.Popen[str]:
    log.parent.mkdir(parents=True, exist_ok=True)
    with log.open("a") as sink:
        return subprocess.Popen(
            args,
            cwd=cwd,
            env=env,
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE if pipe_stdout else sink,
            stderr=sink,
            text=True,
            preexec_fn=_die_with_parent,
        )


def run_driver(args: list[str], *, timeout: float, label: str) -> dict[str, Any]:
    """Run a bench driver module (``["-m", "bench.load", ...]``) to its end and return the JSON
    object it prints; a failure raises with the tail of its stderr."""
    done = subprocess.run([sys.executable, *args], capture_output=True, text=True, timeout=timeout, cwd=ROOT)
    if done.returncode != 0:
        raise RuntimeError(f"{label}: the driver failed:\n{done.stderr[-3000:]}")
    return dict(json.loads(done.stdout))


def stop_process(popen: subprocess.Popen[str], timeout: float = 3.0) -> None:
    """SIGTERM, then SIGKILL after ``timeout`` (a server blocked in a sync call never shuts down
    gracefully); only this child, by its PID."""
    if popen.poll() is None:
        popen.terminate()
        try:
            popen.wait(timeout)
        except subprocess.TimeoutExpired:
            popen.kill()
            popen.wait(10.0)
    for stream in (popen.stdin, popen.stdout):
        if stream is not None:
            stream.close()


@dataclass
class FakeProcess:
    popen: subprocess.Popen[str]
    port: int

    @property
    def pid(self) -> int:
        return self.popen.pid

    @property
    def url(self) -> str:
        return f"http://{LOOPBACK}:{self.port}"

    @property
    def api_base(self) -> str:
        return f"{self.url}/v1"

    def stats(self) -> dict[str, object]:
        response = asyncio.run(get_json(f"{self.url}/bench/stats"))
        return dict(response.json())

    def reset(self) -> None:
        """Forget the fake LM's counters and stream stamps (between runs)."""
        asyncio.run(post_json(f"{self.url}/bench/reset", {}))

    def stop(self) -> None:
        stop_process(self.popen)


def start_fake_lm(
    log: Path, *, latency: float, chunk_delay: float = 0.0, answer_chars: int = 0
) -> FakeProcess:
    args = [sys.executable, "-m", "bench.fake_lm_server", "--exit-on-stdin-eof", f"--latency={latency}"]
    args += [f"--chunk-delay={chunk_delay}", f"--answer-chars={answer_chars}"]
    popen = spawn(args, log, env=child_env(), cwd=ROOT, pipe_stdout=True)
    assert popen.stdout is not None
    line = _read_line(popen.stdout, timeout=30.0)
    if not line:
        stop_process(popen)
        raise RuntimeError(f"the fake LM did not start; see {log}")
    return FakeProcess(popen, int(json.loads(line)["port"]))


def _read_line(stream: IO[str], timeout: float) -> str:
    import selectors

    with selectors.DefaultSelector() as selector:
        selector.register(stream, selectors.EVENT_READ)
        if not selector.select(timeout):
            return ""
    return stream.readline()


@dataclass
class Server:
    system: System
    popen: subprocess.Popen[str]
    port: int
    command: list[str]

    @property
    def pid(self) -> int:
        return self.popen.pid

    @property
    def url(self) -> str:
        return f"http://{LOOPBACK}:{self.port}{self.system.route}"

    def stop(self) -> None:
        stop_process(self.popen)


def server_command(
    system: System, api_base: str, port: int, workdir: Path, extra_env: dict[str, str] | None = None
) -> tuple[list[str], dict[str, str], Path]:
    """(argv, environment, working directory) that start ``system`` on ``port``.

    dspy-serve runs in ``workdir`` (empty, outside the repository), so no stray ``.env`` or
    config file changes what is measured.
    """
    extra_env = extra_env or {}
    if system.kind == "dspy-serve":
        target = f"qa={PROGRAMS_FILE}:{PROGRAMS[system.program]}"
        argv = [
            sys.executable,
            "-m",
            "dspy_serve",
            "run",
            target,
            "--model",
            system.model,
            "--api-base",
            api_base,
        ]
        argv += ["--host", LOOPBACK, "--port", str(port), *system.args]
        return argv, child_env(DSPY_SERVE_LOG_LEVEL="warning", **extra_env), workdir
    if system.kind == "naive":
        app = "bench.baselines.naive_fastapi:app"
        argv = [sys.executable, "-m", "uvicorn", app, "--host", LOOPBACK, "--port", str(port)]
        argv += ["--log-level", "warning", "--no-access-log"]
        return argv, child_env(BENCH_API_BASE=api_base, BENCH_MODEL=system.model, **extra_env), ROOT
    raise ValueError(f"{system.label} is not a server")


def start_server(
    system: System, api_base: str, logs: Path, timeout: float = 60.0, extra_env: dict[str, str] | None = None
) -> Server:
    """Start ``system`` against the fake LM at ``api_base``; log to ``logs``; wait until it is ready."""
    port = free_port()
    log = logs / (re.sub(r"[^\w.-]+", "_", f"{system.label}-{system.program}") + ".log")
    argv, env, cwd = server_command(system, api_base, port, logs, extra_env)
    popen = spawn(argv, log, env=env, cwd=cwd)
    health = "/health/ready" if system.kind == "dspy-serve" else "/health"
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if popen.poll() is not None:
            raise RuntimeError(f"{system.key} exited with {popen.returncode} at startup; see {log}")
        try:
            if asyncio.run(get_json(f"http://{LOOPBACK}:{port}{health}")).status == 200:
                return Server(system, popen, port, argv)
        except (TimeoutError, OSError):
            pass
        time.sleep(0.2)
    stop_process(popen)
    raise RuntimeError(f"{system.key} was not ready within {timeout:g} s; see {log}")
