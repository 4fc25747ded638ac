"""A/B of dspy-serve's garbage-collector settings, side by side with the ceiling.

    python -m bench.gc_ab [--rounds 3] [--latency 0.1] [--concurrency 128]

Three dspy-serve processes (as shipped; ``gc.freeze()`` after start-up; GC disabled, an upper
bound that leaks) and the in-process ceiling, all with a catalogued model name, measured in turn
for ``rounds`` rounds. The GC changes are applied from outside by bench/gcprobe: nothing in
src/ is touched. Prints a Markdown table.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from bench import systems
from bench.plan import KNOWN_MODEL
from bench.systems import Server, System, start_fake_lm, start_server

__all__ = ["main"]

VARIANTS = {
    "as shipped": None,
    "gc.freeze() after start-up": "freeze",
    "GC disabled (upper bound)": "disable",
}


def _row(label: str, outcome: dict[str, Any]) -> str:
    cpu = outcome["cpu_s"].get("server")
    per_request = f"{cpu / outcome['completed'] * 1000:.2f}" if cpu and outcome["completed"] else "—"
    rss = outcome["rss_mb"].get("server", "—")
    return (
        f"| {label} | {outcome['throughput']:.1f} | {outcome['p50_ms']:.0f} | {outcome['p99_ms']:.0f} | "
        f"{outcome['errors']} | {per_request} | {rss} |"
    )


def _drive(args: list[str], env: dict[str, str] | None = None) -> dict[str, Any]:
    done = subprocess.run(
        [sys.executable, *args],
        capture_output=True,
        text=True,
        timeout=120,
        cwd=systems.ROOT,
        env=env,
        check=True,
    )
    return dict(json.loads(done.stdout))


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--latency", type=float, default=0.1)
    parser.add_argument("--concurrency", type=int, default=128)
    parser.add_argument("--duration", type=float, default=8.0)
    args = parser.parse_args(argv)
    logs = Path(tempfile.mkdtemp(prefix="dspy-serve-gc-ab-"))
    window = ["--concurrency", str(args.concurrency), "--warmup", "2", "--duration", str(args.duration)]
    probe_path = os.pathsep.join([str(systems.ROOT / "bench" / "gcprobe"), str(systems.ROOT)])
    fake = start_fake_lm(logs / "fake.log", latency=args.latency)
    servers: dict[str, Server] = {}
    rows = []
    try:
        for index, (label, tune) in enumerate(VARIANTS.items()):
            extra = {
                "PYTHONPATH": probe_path,
                **({"BENCH_GC_TUNE": tune, "BENCH_GC_TUNE_AFTER": "1"} if tune else {}),
            }
            system = System(f"variant-{index}", "dspy-serve", "predict", "/qa/invoke", model=KNOWN_MODEL)
            servers[label] = start_server(system, fake.api_base, logs, extra_env=extra)
            if tune:
                os.kill(servers[label].pid, signal.SIGUSR1)  # start-up is over: apply the GC change
        time.sleep(1)
        for round_ in range(1, args.rounds + 1):
            for label, server in servers.items():
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
    print(f"{args.latency:g} s LM, c={args.concurrency}, {KNOWN_MODEL}, {args.duration:g} s windows\n")
    print("| round | variant | req/s | p50 ms | p99 ms | errors | CPU ms/req | RSS MB |")
    print("|---:|:---|---:|---:|---:|---:|---:|---:|")
    print("\n".join(rows))


if __name__ == "__main__":
    main()
