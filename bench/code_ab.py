"""A/B of this tree's dspy-serve against another checkout's, side by side with the ceiling.

    git worktree add /tmp/before <rev>
    python -m bench.code_ab --before /tmp/before [--rounds 3] [--latency 0.1] [--concurrency 128]

Both servers run the same benchmark program on the same fake LM; only the ``dspy_serve`` package
differs (the other checkout's ``src`` first on ``PYTHONPATH``). They are measured in turn with the
in-process ceiling, round after round, so the machine's noise hits them alike: compare ratios.
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

from bench import systems
from bench.ab import ab_arguments, run_ab

__all__ = ["main"]


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(add_help=False)
    parser.add_argument("--before", type=Path, required=True, help="another checkout of dspy-serve")
    known, rest = parser.parse_known_args(argv)
    before_src = (known.before / "src").resolve()
    if not (before_src / "dspy_serve").is_dir():
        sys.exit(f"{known.before}: no src/dspy_serve there")

    def path_with(src: Path) -> dict[str, str]:
        return {"PYTHONPATH": os.pathsep.join([str(src), str(systems.ROOT)])}

    variants = {
        "this tree": path_with(systems.ROOT / "src"),
        f"before ({known.before.name})": path_with(before_src),
    }
    print(run_ab(variants, ab_arguments(__doc__, rest)))


if __name__ == "__main__":
    main()
