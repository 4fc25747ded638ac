"""Throughput and p99 against concurrency, one line per system; optional (needs matplotlib)."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

__all__ = ["plot", "plot_reuse"]

# (system, program) -> (colour, line style, marker, label); an empty line style draws points only
# (for systems measured at a few levels, where a line would suggest values in between).
_PREDICT = {
    ("ceiling", "predict"): ("black", "-", "o", "ceiling (acall, in-process)"),
    ("dspy-serve", "predict"): ("tab:blue", "-", "o", "dspy-serve"),
    ("naive def", "predict"): ("tab:orange", "-", "o", "naive FastAPI def"),
    ("naive async def", "predict"): ("tab:red", "-", "o", "naive FastAPI async def"),
    ("ceiling [openai/gpt-4o-mini]", "predict"): ("grey", "", "X", "ceiling, catalogued model name"),
    ("dspy-serve [openai/gpt-4o-mini]", "predict"): (
        "tab:cyan",
        "",
        "X",
        "dspy-serve, catalogued model name",
    ),
}
_TWO_STEP = {
    ("ceiling", "two_step"): ("black", "--", "s", "ceiling (acall)"),
    ("dspy-serve", "two_step"): ("tab:blue", "--", "s", "dspy-serve, aforward"),
    ("dspy-serve sync", "two_step_sync"): ("tab:green", "--", "s", "dspy-serve, thread pool"),
}


def _lines(
    axis: Any, records: list[dict[str, Any]], styles: dict[Any, Any], latency: float, key: str
) -> None:
    for (system, program), (colour, line, marker, label) in styles.items():
        points = sorted(
            (r["concurrency"], r[key])
            for r in records
            if r["system"] == system
            and r["program"] == program
            and r["latency_s"] == latency
            and r[key] is not None
        )
        if points:
            xs, ys = zip(*points, strict=True)
            ys = tuple(y / 1000 for y in ys) if key == "p99_ms" else ys
            axis.plot(xs, ys, linestyle=line or "none", color=colour, marker=marker, label=label)


def _pyplot() -> Any:
    """matplotlib's pyplot, or None (with a message) when it is not installed."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        print("bench: matplotlib is not installed, so no plot (pip install -e '.[bench]')", file=sys.stderr)
        return None
    return plt


def plot_reuse(figures: dict[str, Any], path: Path) -> Path | None:
    """Throughput and server CPU per request against the response cache's hit ratio."""
    plt = _pyplot()
    if plt is None:
        return None
    points = sorted(
        (r["hit_ratio"], r["throughput"], r["server_cpu_ms_per_req"]) for r in figures["hit_ratio"]
    )
    if not points:
        return None
    ratios, throughput, cpu = zip(*points, strict=True)
    figure, (left, right) = plt.subplots(1, 2, figsize=(11, 4))
    left.plot(ratios, throughput, color="tab:blue", marker="o")
    left.set(title="Throughput against hit ratio", xlabel="hit ratio", ylabel="req/s")
    right.plot(ratios, cpu, color="tab:green", marker="o")
    right.set(title="Server CPU per request", xlabel="hit ratio", ylabel="CPU ms per request")
    for axis in (left, right):
        axis.grid(True, alpha=0.3)
    figure.suptitle(
        f"Response cache, {figures['latency_s'] * 1000:.0f} ms LM, c={figures['concurrency']}", fontsize=10
    )
    figure.tight_layout()
    figure.savefig(path, dpi=100)
    plt.close(figure)
    return path


def plot(records: list[dict[str, Any]], path: Path) -> Path | None:
    """Write the figure to ``path``; None (with a message) when matplotlib is not installed."""
    plt = _pyplot()
    if plt is None:
        return None
    latencies = sorted({r["latency_s"] for r in records})
    figure, axes = plt.subplots(len(latencies), 3, figsize=(17, 4.4 * len(latencies)), squeeze=False)
    for row, latency in enumerate(latencies):
        title = f"{latency * 1000:.0f} ms LM" if latency < 1 else f"{latency:g} s LM"
        throughput, p99, two_step = axes[row]
        _lines(throughput, records, _PREDICT, latency, "throughput")
        _lines(p99, records, _PREDICT, latency, "p99_ms")
        _lines(two_step, records, _TWO_STEP, latency, "throughput")
        throughput.set(title=f"Predict: throughput, {title}", ylabel="req/s")
        p99.set(title=f"Predict: p99 latency, {title}", ylabel="seconds", yscale="log")
        two_step.set(title=f"Two-step program: throughput, {title}", ylabel="req/s")
        for axis in (throughput, p99, two_step):
            axis.set(xlabel="concurrency (closed loop)", xscale="log")
            axis.grid(True, which="both", alpha=0.3)
        throughput.legend(fontsize=8)
        two_step.legend(fontsize=8)
    figure.tight_layout()
    figure.savefig(path, dpi=100)
    plt.close(figure)
    return path
