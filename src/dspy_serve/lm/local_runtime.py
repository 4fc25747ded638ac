"""Which llama.cpp runtime runs the embedded model: the prebuilt xllamacpp wheel, or llama-cpp-python.

xllamacpp's x86-64 wheel is compiled for AVX2, FMA, F16C and BMI2. On a CPU without them the
process dies with "Illegal instruction" when its server is created, a signal no ``try`` can
catch, while ``import xllamacpp`` itself succeeds. So the CPU's flags are read *before* the
server is created, and such a CPU gets llama-cpp-python, built from source for it
(``scripts/install.sh --with-llama-cpp``).

Where the flags are read: ``/proc/cpuinfo`` on Linux, ``sysctl machdep.cpu`` on an Intel Mac.
ARM machines need none of these flags (the aarch64 wheel targets baseline armv8-a; macOS wheels
are built per architecture). Elsewhere (Windows on x86-64) the flags cannot be read without
native code: ``auto`` then trusts xllamacpp (every x86-64 CPU since 2015 has the four flags) and
the log says the flags went unchecked; ``local_runtime = "llama-cpp"`` is the way out.
"""

from __future__ import annotations

import importlib.metadata
import importlib.util
import logging
import platform
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

__all__ = [
    "REQUIRED_FLAGS",
    "RuntimeChoice",
    "choose_runtime",
    "cpu_flags",
    "fallback_cmake_args",
    "missing_cpu_flags",
]

logger = logging.getLogger("dspy_serve.lm.local")

Runtime = Literal["xllamacpp", "llama-cpp"]
REQUIRED_FLAGS = ("avx2", "fma", "f16c", "bmi2")
# ggml's instruction-set options a GGML_NATIVE=OFF build turns on by default, and the CPU flag
# each needs: a "portable" build needs the same four flags as xllamacpp's wheel (and more).
_GGML_OPTIONS = {
    "sse4_2": "SSE42",
    "avx": "AVX",
    "avx2": "AVX2",
    "bmi2": "BMI2",
    "fma": "FMA",
    "f16c": "F16C",
}
_X86 = {"x86_64", "amd64", "i386", "i686", "x86"}
_PACKAGES: dict[str, tuple[str, str]] = {  # runtime -> (import name, distribution name)
    "xllamacpp": ("xllamacpp", "xllamacpp"),
    "llama-cpp": ("llama_cpp", "llama-cpp-python"),
}


@dataclass(frozen=True)
class RuntimeChoice:
    """The runtime to load, and why (said in the startup log and on /health/ready)."""

    name: Runtime
    reason: str

    @property
    def version(self) -> str | None:
        try:
            return importlib.metadata.version(_PACKAGES[self.name][1])
        except importlib.metadata.PackageNotFoundError:
            return None

    def describe(self) -> dict[str, str | None]:
        return {"name": self.name, "package": _PACKAGES[self.name][1], "version": self.version,
                "reason": self.reason}  # fmt: skip


def cpu_flags(cpuinfo: Path = Path("/proc/cpuinfo")) -> frozenset[str] | None:
    """The CPU's feature flags in lower case, or ``None`` when this platform does not say."""
    if sys.platform.startswith("linux"):
        try:
            text = cpuinfo.read_text(encoding="utf-8", errors="replace")
        except OSError:
            return None
        for line in text.splitlines():
            key, _, value = line.partition(":")
            if key.strip() in ("flags", "Features"):  # x86, ARM
                return frozenset(value.lower().split())
        return None
    if sys.platform == "darwin":
        flags: set[str] = set()
        for key in ("machdep.cpu.features", "machdep.cpu.leaf7_features"):
            try:
                out = subprocess.run(["sysctl", "-n", key], capture_output=True, text=True, timeout=5)
            except (OSError, subprocess.SubprocessError):
                return None
            flags.update(out.stdout.lower().replace("fma3", "fma").split())
        return frozenset(flags) or None
    return None


def missing_cpu_flags(flags: frozenset[str] | None, machine: str | None = None) -> list[str] | None:
    """The flags xllamacpp needs that this CPU lacks; ``None`` when they cannot be known."""
    if (machine or platform.machine()).lower() not in _X86:
        return []  # ARM wheels target the baseline architecture
    if flags is None:
        return None
    return [flag for flag in REQUIRED_FLAGS if flag not in flags]


def _installed(runtime: Runtime) -> bool:
    return importlib.util.find_spec(_PACKAGES[runtime][0]) is not None


def choose_runtime(
    requested: Literal["auto", "xllamacpp", "llama-cpp"] = "auto",
    *,
    flags: frozenset[str] | None = None,
    machine: str | None = None,
) -> RuntimeChoice:
    """``auto``: xllamacpp where the CPU can run it and it is installed, else llama-cpp-python.

    A forced runtime is used as asked; forcing xllamacpp onto a CPU that lacks its flags is
    logged, since the process will then die when the model loads.
    """
    missing = missing_cpu_flags(cpu_flags() if flags is None else flags, machine)
    if requested == "xllamacpp":
        if missing:
            logger.warning(
                "local_runtime=xllamacpp, but this CPU lacks %s: the process will likely die with "
                "'Illegal instruction' when the model loads",
                ", ".join(missing),
            )
        return RuntimeChoice("xllamacpp", "forced by local_runtime")
    if requested == "llama-cpp":
        return RuntimeChoice("llama-cpp", "forced by local_runtime")
    if missing:
        return RuntimeChoice("llama-cpp", f"this CPU lacks {', '.join(missing)}, which xllamacpp needs")
    if not _installed("xllamacpp") and _installed("llama-cpp"):
        return RuntimeChoice("llama-cpp", "xllamacpp is not installed")
    if missing is None:
        return RuntimeChoice("xllamacpp", "the CPU's flags cannot be read on this platform (unchecked)")
    return RuntimeChoice("xllamacpp", "the CPU has AVX2, FMA, F16C and BMI2")


def fallback_cmake_args(flags: frozenset[str] | None = None, machine: str | None = None) -> str:
    """CMAKE_ARGS for building llama-cpp-python on this CPU.

    ``GGML_NATIVE=OFF`` avoids ``-march=native``, which crashes on VMs that advertise AVX-512 they
    cannot run, but it also switches SSE4.2, AVX, AVX2, BMI2, FMA and F16C on: such a build needs
    the very flags xllamacpp does. So each one this CPU lacks is switched off again.
    """
    args = ["-DGGML_NATIVE=OFF"]
    if (machine or platform.machine()).lower() in _X86:
        known = cpu_flags() if flags is None else flags
        if known is not None:
            args += [f"-DGGML_{option}=OFF" for flag, option in _GGML_OPTIONS.items() if flag not in known]
    return " ".join(args)
