"""scripts/install.sh and scripts/demo.sh, run against a stand-in venv whose python records what
it is asked and plays a slow build: which extras the demo installs, and that the build shows
progress."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]

FAKE_PYTHON = """#!/usr/bin/env bash
echo "$*" >> "$(dirname "$0")/../calls.log"
case "$*" in
  "-c import llama_cpp") exit 1 ;;
  *llama-cpp-python*)
    echo "-- Configuring done"
    sleep 1; echo "[1/3] Building C object ggml.c.o"
    sleep 1; echo "[3/3] Linking CXX shared library libllama.so"
    sleep 1 ;;
esac
exit 0
"""


def fake_venv(tmp_path: Path) -> Path:
    venv = tmp_path / "venv"
    (venv / "bin").mkdir(parents=True)
    python = venv / "bin" / "python"
    python.write_text(FAKE_PYTHON)
    python.chmod(0o755)
    return venv


def test_the_demo_installs_the_runtime_only_and_the_build_reports_progress(tmp_path: Path) -> None:
    venv = fake_venv(tmp_path)
    result = subprocess.run(
        ["bash", "scripts/install.sh", "runtime"],
        cwd=ROOT,
        env={**os.environ, "VENV": str(venv), "PROGRESS_EVERY": "1"},
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 0, result.stderr
    calls = (venv / "calls.log").read_text().splitlines()
    assert "-m pip install --quiet -e ." in calls  # no [test] extras: no ray, schemathesis, mypy...
    assert not any("[test]" in call for call in calls)
    assert "building llama.cpp [" in result.stderr  # the compiler's [done/total], not one silent line
    assert "built llama.cpp in 0m0" in result.stderr
    assert "[3/3] Linking" in (venv / "llama-cpp-build.log").read_text()
    demo = (ROOT / "scripts" / "demo.sh").read_text()
    assert "bash scripts/install.sh runtime" in demo and "source .venv/bin/activate" in demo
    assert "http://$HOST:$PORT/playground/qa" in demo  # the demo points at the playground


def test_a_failed_build_shows_the_end_of_its_log(tmp_path: Path) -> None:
    venv = fake_venv(tmp_path)
    python = venv / "bin" / "python"
    python.write_text(FAKE_PYTHON.replace("sleep 1 ;;", "echo 'error: no compiler'; exit 1 ;;"))
    result = subprocess.run(
        ["bash", "scripts/install.sh", "runtime"],
        cwd=ROOT,
        env={**os.environ, "VENV": str(venv), "PROGRESS_EVERY": "1"},
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 1
    assert "error: no compiler" in result.stderr and "llama-cpp-build.log" in result.stderr
