"""A/B of uvicorn's event loop and HTTP parser, side by side with the ceiling.

    python -m bench.http_ab [--rounds 3] [--latency 0.1] [--concurrency 128]

Two dspy-serve processes with a catalogued model name: as shipped (``uvicorn[standard]``: uvloop
and httptools), and with both hidden from imports by bench/noaccel, so uvicorn falls back to
asyncio and h11 as after a plain ``pip install uvicorn``. Prints a Markdown table.
"""

from __future__ import annotations

import os

from bench import systems
from bench.ab import ab_arguments, run_ab

__all__ = ["main"]

HIDDEN = os.pathsep.join([str(systems.ROOT / "bench" / "noaccel"), str(systems.ROOT)])
VARIANTS = {
    "uvloop + httptools (as shipped)": {},
    "asyncio + h11 (plain uvicorn)": {"PYTHONPATH": HIDDEN},
}


def main(argv: list[str] | None = None) -> None:
    print(run_ab(VARIANTS, ab_arguments(__doc__, argv)))


if __name__ == "__main__":
    main()
