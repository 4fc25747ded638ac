"""A/B of dspy-serve's garbage-collector settings, side by side with the ceiling.

    python -m bench.gc_ab [--rounds 3] [--latency 0.1] [--concurrency 128]

Three dspy-serve processes (as shipped; ``gc.freeze()`` after start-up; GC disabled, an upper
bound that leaks) and the in-process ceiling, all with a catalogued model name, measured in turn
for ``rounds`` rounds. The GC changes are applied from outside by bench/gcprobe: nothing in
src/ is touched. Prints a Markdown table.
"""

from __future__ import annotations

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


def _apply_after_start_up(label: str, server: Server) -> None:
    if VARIANTS[label]:
        os.kill(server.pid, signal.SIGUSR1)  # start-up is over: apply the GC change


def main(argv: list[str] | None = None) -> None:
    args = ab_arguments(__doc__, argv)
    environments = {label: _environment(tune) for label, tune in VARIANTS.items()}
    print(run_ab(environments, args, after_start=_apply_after_start_up))


if __name__ == "__main__":
    main()
