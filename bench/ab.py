"""Side-by-side A/B runs of dspy-serve variants and the in-process ceiling (bench.gc_ab, bench.http_ab).

Every variant is a dspy-serve process with a catalogued model name and its own environment; all
run at once and are measured in turn with the ceiling, ``rounds`` times, in alternating order, so
the machine's noise hits them alike. The result is a Markdown table.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

from bench import systems
from bench.plan import KNOWN_MODEL
from bench.systems import Server, System, start_fake_lm, start_server

__all__ = ["ab_arguments", "run_ab"]


def ab_arguments(doc: str | None, argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=doc, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--latency", type=float, default=0.1)
    parser.add_argument("--concurrency", type=int, default=128)
    parser.add_argument("--duration", type=float, default=8.0)
    return parser.parse_args(argv)


def _row(label: str, outcome: dict[str, Any]) -> str:
    cpu = outcome["cpu_s"].get("server")
    per_request = f"{cpu / outcome['completed'] * 1000:.2f}" if cpu and outcome["completed"] else "—"
    rss = outcome["rss_mb"].get("server", "—")
    return (
        f"| {label} | {outcome['throughput']:.1f} | {outcome['p50_ms']:.0f} | {outcome['p99_ms']:.0f} | "
        f"{outcome['errors']} | {per_request} | {rss} |"
    )


def _drive(args: list[str]) -> dict[str, Any]:
    return systems.run_driver(args, timeout=120, label=" ".join(args[:2]))


def run_ab(
    variants: Mapping[str, dict[str, str]],
    args: argparse.Namespace,
    after_start: Callable[[str, Server], None] | None = None,
) -> str:
    """Measure ``variants`` (label -> extra environment); ``after_start`` runs once all are up."""
    logs = Path(tempfile.mkdtemp(prefix="dspy-serve-ab-"))
    window = ["--concurrency", str(args.concurrency), "--warmup", "2", "--duration", str(args.duration)]
    fake = start_fake_lm(logs / "fake.log", latency=args.latency)
    servers: dict[str, Server] = {}
    rows = []
    try:
        for index, (label, extra) in enumerate(variants.items()):
            system = System(f"variant-{index}", "dspy-serve", "predict", "/qa/invoke", model=KNOWN_MODEL)
            servers[label] = start_server(system, fake.api_base, logs, extra_env=extra)
        if after_start is not None:
            for label, server in servers.items():
                after_start(label, server)
        time.sleep(1)
        for round_ in range(1, args.rounds + 1):
            # Alternate the order, so that no variant is always measured right after the ceiling.
            order = list(servers.items()) if round_ % 2 else list(reversed(servers.items()))
            for label, server in order:
                load = ["-m", "bench.load", "--url", server.url, "--body", server.system.body().decode()]
                outcome = _drive([*load, "--watch", f"server={server.pid}", *window])
                rows.append(_row(f"{round_} | {label}", outcome))
                print(rows[-1], file=sys.stderr, flush=True)
            ceiling = ["-m", "bench.ceiling", "--model", KNOWN_MODEL, "--api-base", fake.api_base]
            rows.append(_row(f"{round_} | ceiling (in-process)", _drive([*ceiling, *window])))
            print(rows[-1], file=sys.stderr, flush=True)
    finally:
        for server in servers.values():
            server.stop()
        fake.stop()
    return "\n".join(
        [
            f"{args.latency:g} s LM, c={args.concurrency}, {KNOWN_MODEL}, {args.duration:g} s windows\n",
            "| round | variant | req/s | p50 ms | p99 ms | errors | CPU ms/req | RSS MB |",
            "|---:|:---|---:|---:|---:|---:|---:|---:|",
            *rows,
        ]
    )
