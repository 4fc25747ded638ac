"""Choosing the embedded model's runtime from the CPU's flags (dspy_serve.lm.local_runtime)."""

from __future__ import annotations

import logging
import sys
from pathlib import Path

import pytest

from dspy_serve.lm import local_runtime
from dspy_serve.lm.local_runtime import choose_runtime, cpu_flags, fallback_cmake_args, missing_cpu_flags

MODERN = frozenset({"sse4_2", "avx", "avx2", "fma", "f16c", "bmi1", "bmi2"})
OLD = frozenset({"sse4_2", "avx"})  # a Sandy Bridge: AVX, but none of the four


@pytest.fixture
def both_installed(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(local_runtime, "_installed", lambda runtime: True)


def test_cpuinfo_flags_are_read(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(sys, "platform", "linux")
    cpuinfo = tmp_path / "cpuinfo"
    cpuinfo.write_text("processor\t: 0\nflags\t\t: fpu SSE4_2 avx avx2 fma f16c bmi2\n\nprocessor\t: 1\n")
    assert cpu_flags(cpuinfo) == frozenset({"fpu", "sse4_2", "avx", "avx2", "fma", "f16c", "bmi2"})
    assert cpu_flags(tmp_path / "absent") is None


def test_this_machines_flags_are_read() -> None:
    if not sys.platform.startswith("linux"):
        pytest.skip("reads /proc/cpuinfo")
    flags = cpu_flags()
    assert flags is not None and len(flags) > 3


def test_auto_picks_xllamacpp_where_the_cpu_can_run_it(both_installed: None) -> None:
    choice = choose_runtime("auto", flags=MODERN, machine="x86_64")
    assert choice.name == "xllamacpp"
    assert choice.reason == "the CPU has AVX2, FMA, F16C and BMI2"


def test_auto_picks_the_fallback_on_a_cpu_without_the_flags(both_installed: None) -> None:
    choice = choose_runtime("auto", flags=OLD, machine="x86_64")
    assert choice.name == "llama-cpp"
    assert choice.reason == "this CPU lacks avx2, fma, f16c, bmi2, which xllamacpp needs"
    assert missing_cpu_flags(MODERN - {"bmi2"}, "x86_64") == ["bmi2"]


def test_arm_needs_no_x86_flags(both_installed: None) -> None:
    assert missing_cpu_flags(frozenset({"neon", "asimd"}), "aarch64") == []
    assert choose_runtime("auto", flags=frozenset({"asimd"}), machine="arm64").name == "xllamacpp"


def test_unknown_flags_trust_the_wheel_and_say_so(
    monkeypatch: pytest.MonkeyPatch, both_installed: None
) -> None:
    monkeypatch.setattr(local_runtime, "cpu_flags", lambda: None)
    monkeypatch.setattr(local_runtime.platform, "machine", lambda: "AMD64")
    choice = choose_runtime("auto")
    assert choice.name == "xllamacpp"
    assert "cannot be read" in choice.reason and "unchecked" in choice.reason


def test_other_platforms_give_no_flags(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(sys, "platform", "win32")
    assert cpu_flags() is None


def test_auto_uses_llama_cpp_when_it_is_the_only_runtime(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(local_runtime, "_installed", lambda runtime: runtime == "llama-cpp")
    choice = choose_runtime("auto", flags=MODERN, machine="x86_64")
    assert (choice.name, choice.reason) == ("llama-cpp", "xllamacpp is not installed")


def test_a_forced_runtime_is_used_as_asked(both_installed: None) -> None:
    assert choose_runtime("llama-cpp", flags=MODERN, machine="x86_64").name == "llama-cpp"
    assert choose_runtime("xllamacpp", flags=MODERN, machine="x86_64").reason == "forced by local_runtime"


def test_forcing_xllamacpp_on_a_cpu_without_the_flags_warns(
    caplog: pytest.LogCaptureFixture, both_installed: None
) -> None:
    with caplog.at_level(logging.WARNING, logger="dspy_serve.lm.local"):
        choice = choose_runtime("xllamacpp", flags=OLD, machine="x86_64")
    assert choice.name == "xllamacpp"
    assert "Illegal instruction" in caplog.text and "avx2" in caplog.text


def test_the_choice_describes_the_installed_package() -> None:
    described = choose_runtime("xllamacpp", flags=MODERN, machine="x86_64").describe()
    assert described["package"] == "xllamacpp"
    assert described["version"] == "2026.10.11549"


def test_the_fallback_build_switches_off_what_the_cpu_lacks() -> None:
    """A GGML_NATIVE=OFF build enables AVX2, FMA, F16C and BMI2 by default: on a CPU without them
    it would die exactly as xllamacpp does, so the build turns them off."""
    assert fallback_cmake_args(OLD, "x86_64") == (
        "-DGGML_NATIVE=OFF -DGGML_AVX2=OFF -DGGML_BMI2=OFF -DGGML_FMA=OFF -DGGML_F16C=OFF"
    )
    assert fallback_cmake_args(MODERN, "x86_64") == "-DGGML_NATIVE=OFF"  # what CI builds
    assert fallback_cmake_args(frozenset({"asimd"}), "aarch64") == "-DGGML_NATIVE=OFF"
