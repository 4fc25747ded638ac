"""A/B of dspy-serve's garbage-collector settings, side by side with the ceiling.

    python -m bench.gc_ab [--rounds 3] [--latency 0.1] [--concurrency 128] [--threshold 10000,10,10 ...]

Three dspy-serve processes (as shipped; ``gc.freeze()`` after start-up; GC disabled, an upper
bound that leaks) and the in-process ceiling, all with a catalogued model name, measured in turn
for ``rounds`` rounds. The GC changes are applied from outside by bench/gcprobe: nothing in
src/ is touched. ``--threshold G0,G1,G2`` adds a variant with ``gc.set_threshold(G0, G1, G2)``
(after ``gc.freeze()``, as shipped). Prints a Markdown table.
"""

from __future__ import annotations

import argparse
import os
import signal

from bench import systems
from bench.ab import ab_arguments, run_ab
from bench.systems import Server

__all__ = ["main"]

PROBE_PATH = os.pathsep.join([str(systems.ROOT / "bench" / "gcprobe"), str(systems.ROOT)])
VARIANTS = {
    "as shipped": None,
    "gc.freeze() after start-up": "freeze",
    "GC disabled (upper bound)": "disable",
}


def _environment(tune: str | None) -> dict[str, str]:
    return {"PYTHONPATH": PROBE_PATH} | ({"BENCH_GC_TUNE": tune, "BENCH_GC_TUNE_AFTER": "1"} if tune else {})


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(add_help=False)
    parser.add_argument("--threshold", action="append", default=[], help="G0,G1,G2 for gc.set_threshold")
    known, rest = parser.parse_known_args(argv)
    variants = VARIANTS | {f"gc.set_threshold({t})": f"threshold={t}" for t in known.threshold}

    def apply_after_start_up(label: str, server: Server) -> None:
        if variants[label]:
            os.kill(server.pid, signal.SIGUSR1)  # start-up is over: apply the GC change

    args = ab_arguments(__doc__, rest)
    environments = {label: _environment(tune) for label, tune in variants.items()}
    print(run_ab(environments, args, after_start=apply_after_start_up))


if __name__ == "__main__":
    main()
