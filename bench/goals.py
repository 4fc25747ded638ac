"""Every goal of issue #16, measured ``runs`` times: ``python -m bench.run --goals`` (~10 min).

One run measures, at a catalogued model name (``openai/gpt-4o-mini``, the fake LM answers any):

1. 100 ms LM, c=128: dspy-serve and the in-process ceiling (throughput, CPU per request);
2. 1 s LM, c=256: dspy-serve and the ceiling (fraction of c/latency, p99);
3. the two-step program sync-only (thread path) and with ``aforward``, at 100 ms and 1 s, c=128;
4. and 5. the response cache's hit ratios and coalescing (``bench.cache``, fresh servers).

The systems compared are measured one after the other inside a run, in an order that alternates
from run to run, so the machine's noise hits them alike. Then, once, py-spy on dspy-serve and on
the ceiling (6., ``bench.profiling``). Results: ``bench/results/goals-<timestamp>.json``, ``.md``
and PNGs, and the section of docs/benchmarks.md between its ``bench:goals`` markers.
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any

from bench import cache, profiling
from bench.components import components
from bench.goals_plot import plot_goals
from bench.goals_report import render
from bench.plan import KNOWN_MODEL, Step
from bench.report import DOCS, machine_info, update_docs_section
from bench.run import RESULTS, drained, log, measure_step
from bench.systems import FakeProcess, Server, System, start_fake_lm, start_server

__all__ = ["GoalsProfile", "main", "measure"]

DOCS_START, DOCS_END = "<!-- bench:goals:start -->", "<!-- bench:goals:end -->"
FAST, SLOW = 0.1, 1.0

SERVE = System("dspy-serve", "dspy-serve", "predict", "/qa/invoke", model=KNOWN_MODEL, note="as shipped")
CEILING = System("ceiling", "ceiling", "predict", model=KNOWN_MODEL, note="await program.acall() in-process")
AFORWARD = System("dspy-serve aforward", "dspy-serve", "two_step", "/qa/invoke", model=KNOWN_MODEL)
SYNC = System("dspy-serve sync", "dspy-serve", "two_step_sync", "/qa/invoke", model=KNOWN_MODEL)


@dataclass(frozen=True)
class GoalsProfile:
    runs: int = 3
    warmup_fast: float = 2.0
    duration_fast: float = 8.0
    warmup_slow: float = 3.0
    duration_slow: float = 10.0
    cache_warmup: float = 1.5
    cache_duration: float = 5.0
    overhead_concurrency: int = 128
    tail_concurrency: int = 256
    thread_concurrency: int = 128
    profile_seconds: int = 6
    model: str = KNOWN_MODEL

    def seconds(self) -> float:
        """A rough estimate of the whole run (measured windows plus start-up and overhead)."""
        fast, slow = self.warmup_fast + self.duration_fast + 3, self.warmup_slow + self.duration_slow + 3
        cache_point = self.cache_warmup + self.cache_duration + 6
        per_run = 3 * fast + 3 * slow + 6 * cache_point
        return self.runs * per_run + 2 * (self.profile_seconds + 12) + 40


class Bench:
    """Two fake LMs (100 ms and 1 s) and the dspy-serve servers, kept up for every run."""

    def __init__(self, logs: Path) -> None:
        self.logs = logs
        self.fakes: dict[float, FakeProcess] = {}
        self.servers: dict[tuple[str, float], Server] = {}

    def __enter__(self) -> Bench:
        return self

    def __exit__(self, *_: object) -> None:
        for server in self.servers.values():
            server.stop()
        for fake in self.fakes.values():
            fake.stop()

    def fake(self, latency: float) -> FakeProcess:
        if latency not in self.fakes:
            self.fakes[latency] = start_fake_lm(self.logs / f"fake-lm-{latency:g}s.log", latency=latency)
        return self.fakes[latency]

    def server(self, system: System, latency: float) -> Server:
        key = (system.key, latency)
        if key not in self.servers:
            self.servers[key] = start_server(system, self.fake(latency).api_base, self.logs)
        return self.servers[key]

    def measure(self, step: Step) -> dict[str, Any]:
        """One window; a server still busy afterwards (the fake LM not quiet) is restarted."""
        system, fake = step.system, self.fake(step.latency)
        server = None if system.kind == "ceiling" else self.server(system, step.latency)
        log(f"  {system.key} @ {step.latency:g}s c={step.concurrency}")
        record = measure_step(step, fake, server)
        if not drained(fake):
            if server is None:
                raise RuntimeError(f"{system.key}: the fake LM still has requests open after the run")
            log(f"  {system.key} still has work queued: restarting it")
            self.servers.pop((system.key, step.latency)).stop()
            self.server(system, step.latency)
        return record


def _pairs(profile: GoalsProfile) -> list[tuple[str, float, int, tuple[System, System]]]:
    """(goal, LM latency, concurrency, the two systems compared) in the order of a run."""
    return [
        ("overhead", FAST, profile.overhead_concurrency, (SERVE, CEILING)),
        ("tail", SLOW, profile.tail_concurrency, (SERVE, CEILING)),
        ("thread", FAST, profile.thread_concurrency, (SYNC, AFORWARD)),
        ("thread", SLOW, profile.thread_concurrency, (SYNC, AFORWARD)),
    ]


def measure(profile: GoalsProfile, logs: Path, *, spy: bool = True) -> dict[str, Any]:
    """Every figure, as the JSON written to bench/results (see bench.goals_report for its reading)."""
    records: list[dict[str, Any]] = []
    caches: list[dict[str, Any]] = []
    cache_profile = cache.CacheProfile(warmup=profile.cache_warmup, duration=profile.cache_duration)
    with Bench(logs) as bench:
        for _, latency, _, pair in _pairs(profile):  # start every server before the first window
            for system in pair:
                if system.kind != "ceiling":
                    bench.server(system, latency)
        for run in range(1, profile.runs + 1):
            log(f"run {run} of {profile.runs}")
            for goal, latency, concurrency, pair in _pairs(profile):
                warmup = profile.warmup_fast if latency == FAST else profile.warmup_slow
                duration = profile.duration_fast if latency == FAST else profile.duration_slow
                for system in pair if run % 2 else reversed(pair):
                    record = bench.measure(Step(latency, concurrency, system, warmup, duration))
                    records.append({"goal": goal, "run": run, **record})
            caches.append({"run": run, **cache.measure(cache_profile, logs, log, reverse=not run % 2)})
    return {
        "runs": profile.runs,
        "settings": asdict(profile),
        "records": records,
        "cache": caches,
        "components": _components(profile) if spy else {"why": "skipped (--no-profile)"},
    }


def _components(profile: GoalsProfile) -> dict[str, Any]:
    """py-spy on dspy-serve and on the ceiling, one run each, grouped by component."""
    if profiling.spy_path() is None:
        return {"why": "py-spy is not installed (pip install -e '.[bench]')"}
    found: dict[str, Any] = {}
    for kind in ("dspy-serve", "ceiling"):
        log(f"profile: {kind} @ {FAST:g}s c={profile.overhead_concurrency}")
        sampled = profiling.sample(
            kind,
            concurrency=profile.overhead_concurrency,
            seconds=profile.profile_seconds,
            model=profile.model,
        )
        samples, total = components(sampled.raw)
        gc_ms = sum(g["ms"] for g in sampled.gc.values()) if sampled.gc else None
        found[kind] = {
            "samples": samples,
            "total": total,
            "ms_per_sample": sampled.ms_per_sample or 0.0,
            "gc_ms_per_req": gc_ms / sampled.requests if gc_ms is not None and sampled.requests else None,
            "throughput": sampled.throughput,
            "raw": sampled.raw.name,
        }
    return {"systems": found}


def write(data: dict[str, Any], base: Path, *, update_docs: bool) -> list[Path]:
    """``base``.json, the plots, ``base``.md and (if asked) the section of docs/benchmarks.md."""
    base.parent.mkdir(parents=True, exist_ok=True)
    data.pop("plot_note", None)
    pngs = plot_goals(data, base)
    if not pngs:
        data["plot_note"] = "matplotlib is not installed (pip install -e '.[bench]')"
    json_path = base.with_suffix(".json")
    json_path.write_text(json.dumps(data, indent=1) + "\n")
    md_path = base.with_suffix(".md")
    body = render(data, {name: png.name for name, png in pngs.items()})
    md_path.write_text(
        "# dspy-serve: the goals of issue #16\n\nMade by `python -m bench.run --goals`.\n\n" + body
    )
    written = [json_path, md_path, *pngs.values()]
    if update_docs:
        docs = render(data, {name: f"../bench/results/{png.name}" for name, png in pngs.items()})
        if update_docs_section(docs, DOCS_START, DOCS_END):
            written.append(DOCS)
    return written


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        prog="python -m bench.run --goals",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--duration", type=float, help="every measured window, for experiments (no docs)")
    parser.add_argument("--no-docs", action="store_true", help="do not refresh docs/benchmarks.md")
    parser.add_argument("--no-profile", action="store_true", help="skip the py-spy component breakdown")
    parser.add_argument("--out", type=Path, default=RESULTS)
    parser.add_argument(
        "--render",
        type=Path,
        metavar="JSON",
        help="no measuring: rewrite a run's page, plots and docs section",
    )
    args = parser.parse_args(argv)
    if args.render:
        data = json.loads(args.render.read_text())
        for path in write(data, args.render.with_suffix(""), update_docs=not args.no_docs):
            log(f"wrote {path}")
        return
    profile = replace(GoalsProfile(), runs=args.runs)
    if args.duration:
        d = args.duration
        profile = replace(
            profile, duration_fast=d, duration_slow=d, cache_duration=d, profile_seconds=max(2, round(d))
        )
    logs = Path(tempfile.mkdtemp(prefix="dspy-serve-goals-"))
    log(f"goals: {profile.runs} runs, about {profile.seconds() / 60:.0f} min; process logs in {logs}")
    machine = machine_info()
    started = time.time()
    data = {"machine": machine, **measure(profile, logs, spy=not args.no_profile)}
    machine["loadavg_end"] = Path("/proc/loadavg").read_text().split()[:3]
    machine["wall_seconds"] = round(time.time() - started)
    full = not args.duration and profile.runs == GoalsProfile.runs
    base = args.out / f"goals-{time.strftime('%Y%m%d-%H%M%S')}"
    for path in write(data, base, update_docs=full and not args.no_docs):
        log(f"wrote {path}")


if __name__ == "__main__":
    main()
