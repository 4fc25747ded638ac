"""Scale-out, side by side: one process, two uvicorn workers, Ray Serve with 1 and 2 replicas.

    python -m bench.replicas [--rounds 2] [--duration 8]

Two regimes, each against its own fake LM process:

- CPU-bound: 100 ms LM, c=128, default limits. Every process is busy parsing HTTP and JSON, so
  on this 2-core machine more processes compete for the same two cores (and Ray adds a proxy hop).
- capacity-bound: 1 s LM, c=128, ``--max-in-flight 32`` per process: the per-process limit binds
  (as a pool, a GPU or a memory budget would), so a second replica doubles what can run at once.

All variants of a regime run at once and are measured in turn, ``rounds`` times, so the machine's
noise hits them alike. Prints a Markdown table; ratios are against "Ray Serve, 1 replica".
"""

from __future__ import annotations

import argparse
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from bench import systems
from bench.systems import Server, System, start_fake_lm, start_server, stop_process

__all__ = ["main"]

RAY = ("--engine", "ray", "--replica-cpus", "0.5")
VARIANTS = {
    "one process": (),
    "2 uvicorn workers": ("--workers", "2"),
    "Ray Serve, 1 replica": (*RAY, "--replicas", "1"),
    "Ray Serve, 2 replicas": (*RAY, "--replicas", "2"),
}
BASELINE = "Ray Serve, 1 replica"


@dataclass(frozen=True)
class Regime:
    name: str
    latency: float
    concurrency: int
    limits: tuple[str, ...] = ()


REGIMES = (
    Regime("CPU-bound", 0.1, 128),
    Regime("capacity-bound", 1.0, 128, ("--max-in-flight", "32", "--max-queue", "256")),
)


def _load(server: Server, concurrency: int, duration: float) -> dict[str, Any]:
    args = ["-m", "bench.load", "--url", server.url, "--body", server.system.body().decode()]
    args += ["--concurrency", str(concurrency), "--warmup", "3", "--duration", str(duration)]
    return systems.run_driver(args, timeout=300, label=f"{server.system.key} c={concurrency}")


def _measure(regime: Regime, rounds: int, duration: float, logs: Path) -> dict[str, list[dict[str, Any]]]:
    fake = start_fake_lm(logs / f"fake-{regime.latency:g}.log", latency=regime.latency)
    servers: dict[str, Server] = {}
    outcomes: dict[str, list[dict[str, Any]]] = {label: [] for label in VARIANTS}
    try:
        for index, (label, args) in enumerate(VARIANTS.items()):
            flags = (*args, *regime.limits)
            system = System(f"{regime.name}-{index}", "dspy-serve", "predict", "/qa/invoke", args=flags)
            servers[label] = start_server(system, fake.api_base, logs, timeout=180)
        for round_ in range(1, rounds + 1):
            for label, server in servers.items():
                outcome = _load(server, regime.concurrency, duration)
                outcomes[label].append(outcome)
                print(
                    f"{regime.name} round {round_} | {label}: {outcome['throughput']:.1f} req/s, "
                    f"{outcome['errors']} errors",
                    file=sys.stderr,
                    flush=True,
                )
    finally:
        for server in servers.values():
            stop_process(server.popen, timeout=60)  # Ray drains and stops its own processes
        fake.stop()
    return outcomes


def _median(values: list[float]) -> float:
    ordered = sorted(values)
    middle = len(ordered) // 2
    return ordered[middle] if len(ordered) % 2 else (ordered[middle - 1] + ordered[middle]) / 2


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--duration", type=float, default=8.0)
    args = parser.parse_args(argv)
    logs = Path(tempfile.mkdtemp(prefix="dspy-serve-replicas-"))
    print(f"logs: {logs}", file=sys.stderr)
    lines = [
        "| regime | variant | req/s (median) | ratio to 1 replica | p50 ms | p99 ms | errors |",
        "|:---|:---|---:|---:|---:|---:|---:|",
    ]
    for regime in REGIMES:
        outcomes = _measure(regime, args.rounds, args.duration, logs)
        medians = {label: _median([o["throughput"] for o in runs]) for label, runs in outcomes.items()}
        for label, runs in outcomes.items():
            last = runs[-1]
            lines.append(
                f"| {regime.name}: {regime.latency:g} s LM, c={regime.concurrency} | {label} | "
                f"{medians[label]:.1f} | {medians[label] / medians[BASELINE]:.2f}x | "
                f"{last['p50_ms']:.0f} | {last['p99_ms']:.0f} | {sum(o['errors'] for o in runs)} |"
            )
    print(f"{args.rounds} rounds of {args.duration:g} s windows; p50/p99 from the last round\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
