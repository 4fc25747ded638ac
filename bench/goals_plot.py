"""The plots of a ``bench.goals`` run (PNG, needs matplotlib): one per goal, every run shown."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from bench.components import COMPONENTS
from bench.goals_report import Figure, figures
from bench.plot import _pyplot

__all__ = ["plot_goals"]

Data = dict[str, Any]


def _runs_axis(axis: Any, data: Data, series: list[tuple[Figure, str]], ylabel: str, title: str) -> None:
    """Grouped bars: one group per run, one bar per figure."""
    runs = list(range(1, data["runs"] + 1))
    width = 0.8 / max(1, len(series))
    for index, (figure, colour) in enumerate(series):
        xs = [run + (index - (len(series) - 1) / 2) * width for run in runs]
        ys = [v if v is not None else 0.0 for v in figure.values]
        axis.bar(xs, ys, width=width, color=colour, label=figure.label)
    axis.set(title=title, xlabel="run", ylabel=ylabel, xticks=runs)
    axis.grid(True, axis="y", alpha=0.3)
    axis.legend(fontsize=8)


def _target(axis: Any, value: float, label: str) -> None:
    axis.axhline(value, color="tab:red", linestyle="--", linewidth=1, label=label)
    axis.legend(fontsize=8)


def _save(figure: Any, plt: Any, path: Path) -> Path:
    figure.tight_layout()
    figure.savefig(path, dpi=100)
    plt.close(figure)
    return path


def plot_goals(data: Data, base: Path) -> dict[str, Path]:
    """Write every plot next to ``base`` (``<base>-<name>.png``); {} when matplotlib is missing."""
    plt = _pyplot()
    if plt is None:
        return {}
    f = {figure.key: figure for figure in figures(data)}
    out: dict[str, Path] = {}

    def path(name: str) -> Path:
        return base.with_name(f"{base.name}-{name}.png")

    fig, (left, right) = plt.subplots(1, 2, figsize=(11, 4))
    _runs_axis(
        left,
        data,
        [(f["overhead.serve_rps"], "tab:blue"), (f["overhead.ceiling_rps"], "black")],
        "req/s",
        "Throughput, 100 ms LM",
    )
    _runs_axis(
        right,
        data,
        [(f["overhead.serve_cpu_ms"], "tab:blue"), (f["overhead.ceiling_cpu_ms"], "black")],
        "CPU ms per request",
        "CPU per request",
    )
    out["overhead"] = _save(fig, plt, path("overhead"))

    fig, (left, right) = plt.subplots(1, 2, figsize=(11, 4))
    _runs_axis(
        left,
        data,
        [(f["tail.serve_fraction"], "tab:blue"), (f["tail.ceiling_fraction"], "black")],
        "req/s / (c/latency)",
        "Throughput, 1 s LM",
    )
    _target(left, 0.95, "target 0.95")
    _runs_axis(
        right,
        data,
        [(f["tail.serve_p99_s"], "tab:blue"), (f["tail.ceiling_p99_s"], "black")],
        "seconds",
        "p99, 1 s LM",
    )
    _target(right, 1.25, "target 1.25 s")
    out["tail"] = _save(fig, plt, path("tail"))

    thread = sorted(
        {key.split(".", 1)[1].rsplit(".", 1)[0] for key in f if key.startswith("thread.")}, key=float
    )
    ratios = [fig_ for key, fig_ in f.items() if key.startswith("thread.") and key.endswith(".ratio")]
    if thread:
        fig, axes = plt.subplots(1, len(thread) + 1, figsize=(5 * (len(thread) + 1), 4), squeeze=False)
        for axis, latency in zip(axes[0], thread, strict=False):
            series = [
                (f[f"thread.{latency}.sync_rps"], "tab:green"),
                (f[f"thread.{latency}.aforward_rps"], "tab:blue"),
            ]
            _runs_axis(axis, data, series, "req/s", f"Two-step, {float(latency):g} s LM")
        colours = ["tab:green", "tab:olive", "tab:cyan"]
        _runs_axis(
            axes[0][-1],
            data,
            list(zip(ratios, colours, strict=False)),
            "sync-only / aforward",
            "Thread path ratio",
        )
        _target(axes[0][-1], 0.9, "target 0.9")
        out["thread"] = _save(fig, plt, path("thread"))

    points = [
        (r["hit_ratio"], r["throughput"], r["server_cpu_ms_per_req"], c["run"])
        for c in data.get("cache", [])
        for r in c["hit_ratio"]
        if r["hit_ratio"] is not None
    ]
    if points:
        fig, (left, right) = plt.subplots(1, 2, figsize=(11, 4))
        for run in sorted({p[3] for p in points}):
            mine = sorted(p for p in points if p[3] == run)
            left.plot([p[0] for p in mine], [p[1] for p in mine], marker="o", label=f"run {run}")
            right.plot([p[0] for p in mine], [p[2] for p in mine], marker="o", label=f"run {run}")
        left.set(
            title="Throughput against hit ratio, 100 ms LM", xlabel="hit ratio (measured)", ylabel="req/s"
        )
        right.set(title="Server CPU per request", xlabel="hit ratio (measured)", ylabel="CPU ms per request")
        _target(right, 0.3, "a hit: target < 0.3 ms")
        for axis in (left, right):
            axis.grid(True, alpha=0.3)
            axis.legend(fontsize=8)
        out["cache"] = _save(fig, plt, path("cache"))

    profiles = (data.get("components") or {}).get("systems") or {}
    if profiles:
        fig, axis = plt.subplots(figsize=(8, 4.5))
        names = list(profiles)
        bottoms = [0.0] * len(names)
        colours = plt.get_cmap("tab20").colors
        for index, component in enumerate(COMPONENTS):
            heights = [profiles[s]["samples"].get(component, 0) * profiles[s]["ms_per_sample"] for s in names]
            if any(heights):
                axis.bar(
                    names, heights, bottom=bottoms, color=colours[index % 20], label=component, width=0.5
                )
                bottoms = [b + h for b, h in zip(bottoms, heights, strict=True)]
        gc = [profiles[s]["gc_ms_per_req"] or 0.0 for s in names]
        axis.scatter(names, gc, marker="_", s=900, color="black", label="GC (measured apart)", zorder=3)
        axis.set(title="Python CPU per request by component (py-spy, GIL)", ylabel="CPU ms per request")
        axis.legend(fontsize=8, loc="center left", bbox_to_anchor=(1.0, 0.5))
        axis.grid(True, axis="y", alpha=0.3)
        out["components"] = _save(fig, plt, path("components"))
    return out
