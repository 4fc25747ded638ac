"""A/B of capture (issue #26): the same server with capture off and at rate 1.0, side by side.

    python -m bench.capture_ab [--rounds 3] [--latency 0.1] [--concurrency 128] [--duration 8]

Both dspy-serve processes serve the qa program on the fake LM; the second captures every call
(with its trace) into a SQLite store of its own. Prints a Markdown table (bench.ab).
"""

from __future__ import annotations

import tempfile

from bench.ab import ab_arguments, run_ab

__all__ = ["main"]


def main(argv: list[str] | None = None) -> None:
    args = ab_arguments(__doc__, argv)
    data_dir = tempfile.mkdtemp(prefix="dspy-serve-capture-ab-")
    variants = {
        "capture off": {},
        "capture on, rate 1.0, traces": {
            "DSPY_SERVE_CAPTURE": "*",
            "DSPY_SERVE_CAPTURE_TRACE": "true",
            "DSPY_SERVE_DATA_DIR": data_dir,
        },
    }
    print(run_ab(variants, args))


if __name__ == "__main__":
    main()
