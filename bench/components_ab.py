"""Where the CPU goes, by component, for this tree's dspy-serve against another checkout's.

    git worktree add /tmp/before <rev>
    python -m bench.components_ab --before /tmp/before [--rounds 2] [--seconds 8]

Each round samples, one after the other, the other checkout's server, this tree's and the
in-process ceiling (``bench.profiling.sample``: py-spy on the GIL holder, GC counted apart by
bench/gcprobe) at 100 ms LM, c=128, a catalogued model name, and groups the samples with
:mod:`bench.components`. Prints a Markdown table of py-spy's ms per request (median over the
rounds) and writes it to ``bench/results/components-ab-<date>.md``.
"""

from __future__ import annotations

import argparse
import os
import statistics
import time
from pathlib import Path
from typing import Any

from bench import profiling, systems
from bench.components import COMPONENTS, components

__all__ = ["main"]


def _profile(kind: str, src: Path | None, seconds: int, model: str) -> dict[str, float]:
    """py-spy ms per request by component (and GC), for ``kind`` run from ``src``."""
    saved = os.environ.get("PYTHONPATH")
    if src is not None:
        os.environ["PYTHONPATH"] = os.pathsep.join([str(src), str(systems.ROOT)])
    try:
        sampled = profiling.sample(kind, seconds=seconds, model=model)
    finally:
        if saved is None:
            os.environ.pop("PYTHONPATH", None)
        else:
            os.environ["PYTHONPATH"] = saved
    samples, total = components(sampled.raw)
    scale = sampled.ms_per_sample or 0.0
    figures = {name: samples.get(name, 0) * scale for name in COMPONENTS}
    figures["sampled in all"] = total * scale
    gc_ms = sum(g["ms"] for g in sampled.gc.values()) if sampled.gc else 0.0
    figures["GC (also inside the rows above)"] = gc_ms / sampled.requests if sampled.requests else 0.0
    return figures


def render(columns: dict[str, list[dict[str, float]]]) -> str:
    """A table of medians, one column per system, one row per component."""
    rows = [*COMPONENTS, "sampled in all", "GC (also inside the rows above)"]
    lines = ["| component | " + " | ".join(columns) + " |", "|:---|" + "---:|" * len(columns)]
    for row in rows:
        medians = [statistics.median(run.get(row, 0.0) for run in runs) for runs in columns.values()]
        if any(medians):
            lines.append(f"| {row} | " + " | ".join(f"{m:.3f}" for m in medians) + " |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--before", type=Path, required=True, help="another checkout of dspy-serve")
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--seconds", type=int, default=8, help="seconds sampled per system")
    parser.add_argument("--model", default="openai/gpt-4o-mini", help="model name given to DSPy")
    args = parser.parse_args(argv)
    before_src = (args.before / "src").resolve()
    systems_: dict[str, tuple[str, Path | None]] = {
        f"dspy-serve before ({args.before.name})": ("dspy-serve", before_src),
        "dspy-serve (this tree)": ("dspy-serve", systems.ROOT / "src"),
        "ceiling (in-process)": ("ceiling", None),
    }
    columns: dict[str, list[dict[str, float]]] = {label: [] for label in systems_}
    for _ in range(args.rounds):
        for label, (kind, src) in systems_.items():
            columns[label].append(_profile(kind, src, args.seconds, args.model))
    header: list[Any] = [
        f"bench.components_ab, {time.strftime('%Y-%m-%d')}: py-spy ms of CPU per request by component,",
        f"median of {args.rounds} rounds; 100 ms LM, c=128, {args.model}, {args.seconds} s sampled.",
    ]
    text = "\n".join(header) + "\n\n" + render(columns) + "\n"
    out = profiling.RESULTS / f"components-ab-{time.strftime('%Y-%m-%d')}.md"
    out.write_text(text)
    print(text)


if __name__ == "__main__":
    main()
