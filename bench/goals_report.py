"""Figures, spreads and the targets table of a ``bench.goals`` run (pure: from its JSON alone).

Every figure is a ratio or a rate from one run; a run measures the systems it compares side by
side, so its figures are compared within it. Over the runs each figure gets min / median / max,
and a target is judged on the median (the spread is shown beside it).
"""

from __future__ import annotations

import statistics
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from bench.components import COMPONENTS

__all__ = ["Figure", "Target", "figures", "render", "spread", "targets", "targets_table"]

Data = dict[str, Any]
Values = list[float | None]


@dataclass(frozen=True)
class Figure:
    key: str
    label: str
    values: Values  # one per run, None where it could not be measured
    digits: int = 1


@dataclass(frozen=True)
class Target:
    goal: str
    target: str
    key: str  # the figure judged
    met: Callable[[float], bool]


TARGETS = [
    Target(
        "1. throughput, 100 ms LM, c=128",
        "≥ 1.00x the ceiling",
        "overhead.throughput_ratio",
        lambda v: v >= 1.0,
    ),
    Target("1. server CPU per request", "≤ 1.00x the ceiling's", "overhead.cpu_ratio", lambda v: v <= 1.0),
    Target("2. throughput, 1 s LM, c=256", "≥ 0.95 of c/latency", "tail.serve_fraction", lambda v: v >= 0.95),
    Target("2. p99, 1 s LM, c=256", "≤ 1.25 s", "tail.serve_p99_s", lambda v: v <= 1.25),
    Target("3. thread path, 100 ms LM, c=128", "≥ 0.90x aforward", "thread.0.1.ratio", lambda v: v >= 0.9),
    Target("3. thread path, 1 s LM, c=128", "≥ 0.90x aforward", "thread.1.ratio", lambda v: v >= 0.9),
    Target("4. server CPU per cache hit", "< 0.3 ms", "cache.cpu_per_hit_ms", lambda v: v < 0.3),
    Target(
        "5. coalescing, one question, c=128",
        "≤ 2/c LM calls per answer",
        "coalescing.on.calls_per_answer",
        lambda v: v <= 2 / 128,
    ),
]


# --- figures ---------------------------------------------------------------------------------------
def spread(values: Values) -> dict[str, float] | None:
    """min / median / max of the measured values (None when nothing was measured)."""
    known = [v for v in values if v is not None]
    if not known:
        return None
    return {"min": min(known), "median": statistics.median(known), "max": max(known)}


def _record(data: Data, goal: str, system: str, run: int, latency: float | None = None) -> Data | None:
    return next(
        (
            r
            for r in data["records"]
            if r["goal"] == goal
            and r["system"] == system
            and r["run"] == run
            and (latency is None or r["latency_s"] == latency)
        ),
        None,
    )


def _get(record: Data | None, field: str, scale: float = 1.0) -> float | None:
    value = None if record is None else record.get(field)
    return None if value is None else float(value) * scale


def _ratio(a: float | None, b: float | None) -> float | None:
    return a / b if a is not None and b else None


def _fraction(record: Data | None) -> float | None:
    """Throughput as a fraction of what the closed loop allows: c / LM latency."""
    if record is None:
        return None
    return float(record["throughput"]) / (float(record["concurrency"]) / float(record["latency_s"]))


def figures(data: Data) -> list[Figure]:
    """Every figure of the run, per run, in the order the page shows them."""
    runs = range(1, data["runs"] + 1)
    out: list[Figure] = []

    def add(key: str, label: str, values: Values, digits: int = 1) -> None:
        out.append(Figure(key, label, values, digits))

    serve = [_record(data, "overhead", "dspy-serve", n) for n in runs]
    ceiling = [_record(data, "overhead", "ceiling", n) for n in runs]
    add("overhead.serve_rps", "dspy-serve req/s", [_get(r, "throughput") for r in serve])
    add("overhead.ceiling_rps", "ceiling req/s", [_get(r, "throughput") for r in ceiling])
    add(
        "overhead.throughput_ratio",
        "throughput dspy-serve / ceiling",
        [_ratio(_get(a, "throughput"), _get(b, "throughput")) for a, b in zip(serve, ceiling, strict=True)],
        2,
    )
    add(
        "overhead.serve_cpu_ms",
        "dspy-serve CPU ms/request",
        [_get(r, "server_cpu_ms_per_req") for r in serve],
        2,
    )
    add(
        "overhead.ceiling_cpu_ms",
        "ceiling CPU ms/request",
        [_get(r, "server_cpu_ms_per_req") for r in ceiling],
        2,
    )
    add(
        "overhead.cpu_ratio",
        "CPU per request dspy-serve / ceiling",
        [
            _ratio(_get(a, "server_cpu_ms_per_req"), _get(b, "server_cpu_ms_per_req"))
            for a, b in zip(serve, ceiling, strict=True)
        ],
        2,
    )
    for system, name in (("dspy-serve", "serve"), ("ceiling", "ceiling")):
        tail = [_record(data, "tail", system, n) for n in runs]
        add(f"tail.{name}_rps", f"{system} req/s", [_get(r, "throughput") for r in tail])
        add(f"tail.{name}_fraction", f"{system} req/s / (c/latency)", [_fraction(r) for r in tail], 2)
        add(f"tail.{name}_p99_s", f"{system} p99 s", [_get(r, "p99_ms", 0.001) for r in tail], 2)
    for latency in sorted({r["latency_s"] for r in data["records"] if r["goal"] == "thread"}):
        sync = [_record(data, "thread", "dspy-serve sync", n, latency) for n in runs]
        native = [_record(data, "thread", "dspy-serve aforward", n, latency) for n in runs]
        title = f"{latency * 1000:.0f} ms" if latency < 1 else f"{latency:g} s"
        add(
            f"thread.{latency:g}.sync_rps",
            f"{title} LM: sync-only (thread path) req/s",
            [_get(r, "throughput") for r in sync],
        )
        add(
            f"thread.{latency:g}.aforward_rps",
            f"{title} LM: aforward req/s",
            [_get(r, "throughput") for r in native],
        )
        add(
            f"thread.{latency:g}.ratio",
            f"{title} LM: sync-only / aforward",
            [_ratio(_get(a, "throughput"), _get(b, "throughput")) for a, b in zip(sync, native, strict=True)],
            2,
        )
    caches = {c["run"]: c for c in data.get("cache", [])}
    asked = sorted({r["hit_ratio_asked"] for c in caches.values() for r in c["hit_ratio"]})

    def at(run: int, ratio: float) -> Data | None:
        rows = caches[run]["hit_ratio"] if run in caches else []
        return next((r for r in rows if r["hit_ratio_asked"] == ratio), None)

    for ratio in asked:
        add(
            f"cache.rps.{ratio:g}",
            f"hit ratio asked {ratio:g}: req/s",
            [_get(at(n, ratio), "throughput") for n in runs],
        )
        add(
            f"cache.hit.{ratio:g}",
            f"hit ratio asked {ratio:g}: hit ratio measured",
            [_get(at(n, ratio), "hit_ratio") for n in runs],
            3,
        )
    if asked:
        top = asked[-1]
        add(
            "cache.cpu_per_hit_ms",
            f"server CPU ms/request at hit ratio {top:g}",
            [_get(at(n, top), "server_cpu_ms_per_req") for n in runs],
            3,
        )

    def coalescing(run: int, on: bool) -> Data | None:
        rows = caches[run].get("coalescing", []) if run in caches else []
        return next((r for r in rows if ("no coalescing" not in r["system"]) == on), None)

    for on, name in ((True, "on"), (False, "off")):
        rows = [coalescing(n, on) for n in runs]
        add(f"coalescing.{name}.rps", f"coalescing {name}: req/s", [_get(r, "throughput") for r in rows])
        add(
            f"coalescing.{name}.calls_per_answer",
            f"coalescing {name}: LM calls per answer",
            [None if r is None else r["lm_requests"] / (r["answers_total"] or 1) for r in rows],
            4,
        )
    return out


# --- tables ----------------------------------------------------------------------------------------
def _fmt(value: float | None, digits: int) -> str:
    return "—" if value is None else f"{value:,.{digits}f}"


def _spread_text(figure: Figure) -> str:
    found = spread(figure.values)
    if found is None:
        return "—"
    d = figure.digits
    return f"{_fmt(found['median'], d)} ({_fmt(found['min'], d)}-{_fmt(found['max'], d)})"


def _table(header: list[str], rows: list[list[str]]) -> str:
    align = [":---" if i == 0 or name in ("target", "") else "---:" for i, name in enumerate(header)]
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join(align) + "|"]
    return "\n".join(lines + ["| " + " | ".join(row) + " |" for row in rows])


def targets(data: Data) -> list[tuple[str, str, str, bool | None]]:
    """(goal, target, median (min-max), met?) per target of issue #16; None when not measured."""
    by_key = {f.key: f for f in figures(data)}
    out = []
    for target in TARGETS:
        figure = by_key.get(target.key)
        found = spread(figure.values) if figure else None
        met = None if found is None else target.met(found["median"])
        out.append((target.goal, target.target, _spread_text(figure) if figure else "—", met))
    return out


def targets_table(data: Data) -> str:
    mark = {True: "met", False: "**missed**", None: "not measured"}
    rows = [[goal, target, measured, mark[met]] for goal, target, measured, met in targets(data)]
    return _table(["goal", "target", "median (min-max)", ""], rows)


def spread_table(data: Data, prefix: str) -> str:
    """The figures whose key starts with ``prefix``: per run, then min / median / max."""
    runs = data["runs"]
    rows = []
    for figure in figures(data):
        if figure.key.startswith(prefix):
            found = spread(figure.values) or {}
            cells = [_fmt(v, figure.digits) for v in figure.values]
            cells += [_fmt(found.get(k), figure.digits) for k in ("min", "median", "max")]
            rows.append([figure.label, *cells])
    return _table(["figure", *(f"run {n}" for n in range(1, runs + 1)), "min", "median", "max"], rows)


def components_table(profiles: dict[str, Data]) -> str:
    """CPU ms per request by component, for each profiled system, and GC measured apart."""
    systems = list(profiles)
    rows = []
    for name in COMPONENTS:
        cells = []
        for system in systems:
            p = profiles[system]
            n = p["samples"].get(name, 0)
            cells.append(
                f"{n * p['ms_per_sample']:.3f} ({100 * n / p['total']:.0f} %)" if p["total"] else "—"
            )
        if any(profiles[s]["samples"].get(name) for s in systems):
            rows.append([name, *cells])
    rows.append(
        ["sampled in all", *(f"{profiles[s]['total'] * profiles[s]['ms_per_sample']:.3f}" for s in systems)]
    )
    rows.append(
        [
            "GC (gcprobe, also inside the rows above)",
            *(_fmt(profiles[s]["gc_ms_per_req"], 3) for s in systems),
        ]
    )
    return _table(["component", *(f"{s}: ms/request (%)" for s in systems)], rows)


# --- the section -----------------------------------------------------------------------------------
def render(data: Data, plots: dict[str, str]) -> str:
    """The generated Markdown section; ``plots`` maps a plot's name to its path as linked."""
    m, s = data["machine"], data["settings"]

    def image(name: str, alt: str) -> list[str]:
        return [f"![{alt}]({plots[name]})"] if name in plots else []

    parts = [
        f"`python -m bench.run --goals` on {m['date']}: {m['nproc']} x {m['cpu']}, Python {m['python']}, "
        f"DSPy {m['dspy']}, dspy-serve {m['dspy_serve']} (git {m['git']}"
        f"{', src/ modified' if m['git_dirty'] else ''}). Load average {' '.join(m['loadavg_start'])} at "
        f"the start, {' '.join(m.get('loadavg_end', ['?']))} at the end; {m.get('wall_seconds', '?')} s "
        f"in all. {data['runs']} runs; in each, the systems compared are measured one after the other "
        f"(the order alternates from run to run). Windows: 100 ms LM {s['warmup_fast']:g} s warm-up + "
        f"{s['duration_fast']:g} s, 1 s LM {s['warmup_slow']:g} + {s['duration_slow']:g} s, cache "
        f"{s['cache_warmup']:g} + {s['cache_duration']:g} s. Model name `{s['model']}` (in DSPy's "
        "catalogue) for 1-3 and 6; 4 and 5 are `bench.cache`'s, at `openai/fake-model`. A target is judged "
        "on the median over the runs.",
        "#### Targets\n\n" + targets_table(data),
        f"#### 1. Serving adds no net cost (100 ms LM, c={s['overhead_concurrency']})\n\n"
        + spread_table(data, "overhead."),
        *image("overhead", "dspy-serve against the ceiling, per run"),
        f"#### 2. The 1 s tail (c={s['tail_concurrency']})\n\n"
        "The ceiling is there for reference: DSPy's engine keeps at most 100 connections per LM.\n\n"
        + spread_table(data, "tail."),
        *image("tail", "throughput and p99 at 1 s LM, per run"),
        f"#### 3. The thread path (two-step program, c={s['thread_concurrency']})\n\n"
        "`bench/programs.py`: `TwoStepSync` (forward only: dspy-serve's thread pool) against `TwoStep` "
        "(the same with `aforward`).\n\n" + spread_table(data, "thread."),
        *image("thread", "sync-only against aforward"),
        "#### 4. Response cache: hit ratio against throughput (100 ms LM, c=128)\n\n"
        "`--temperature 0 --response-cache memory`, a cold cache per point (see `bench.cache`). At hit "
        "ratio 1 every request is a hit, so the server's CPU per request is the whole cost of a hit.\n\n"
        + spread_table(data, "cache."),
        *image("cache", "throughput and CPU per request against the hit ratio"),
        "#### 5. Coalescing (one question, cache off, 100 ms LM, c=128)\n\n"
        "As shipped (temperature 0) against `--no-coalesce-requests`; LM calls and answers include "
        "the warm-up.\n\n" + spread_table(data, "coalescing."),
    ]
    profiles = data.get("components") or {}
    if profiles.get("systems"):
        parts.append(
            "#### 6. Where the CPU goes (100 ms LM, c=128, one run each)\n\n"
            "py-spy samples of the thread holding the GIL, each charged to the innermost frame of a known "
            "component (`bench/components.py`); GC measured apart by `bench/gcprobe`. Milliseconds per "
            "request are py-spy's estimate (samples x 5 ms / requests answered while sampling), not the CPU "
            "`/proc` counts in 1. (the sampler misses time and slows the process): compare the shares.\n\n"
            + components_table(profiles["systems"])
        )
        parts += image("components", "CPU per request by component")
    else:
        parts.append(
            "#### 6. Where the CPU goes\n\nNot measured: " + str(profiles.get("why", "skipped")) + "."
        )
    missing = [name for name in ("overhead", "tail", "thread", "cache", "components") if name not in plots]
    if missing and data.get("plot_note"):
        parts.append(f"No plot ({', '.join(missing)}): {data['plot_note']}.")
    return "\n\n".join(parts) + "\n"
