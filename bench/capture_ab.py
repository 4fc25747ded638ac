"""A/B of capture (issue #26): the same server with capture off and at rate 1.0, side by side.

    python -m bench.capture_ab [--rounds 3] [--latency 0.1] [--concurrency 128] [--duration 8]

The dspy-serve processes serve the qa program on the fake LM; the second captures every call into
a SQLite store of its own, the third every call with its trace (the heavier case: each
predictor's inputs and outputs too) into another. Prints a Markdown table (bench.ab), then each
round's capture variants against capture off: the target is a throughput ratio of 0.95 or more.
"""

from __future__ import annotations

import collections
import statistics
import tempfile

from bench.ab import ab_arguments, run_ab

__all__ = ["main", "ratios"]

OFF = "capture off"


def ratios(table: str) -> str:
    """Per round, each variant's req/s over capture off's, and its CPU ms per request beside it;
    then each variant's median ratio (the machine's noise moves single rounds by several %)."""
    measured: dict[tuple[str, str], tuple[float, str]] = {}
    for line in table.splitlines():
        cells = [cell.strip() for cell in line.strip("|").split("|")]
        if len(cells) == 8 and cells[0].isdigit():
            measured[cells[0], cells[1]] = (float(cells[2]), cells[6])
    rows, by_variant = [], collections.defaultdict(list)
    for (round_, label), (throughput, cpu) in measured.items():
        off = measured.get((round_, OFF))
        if label == OFF or off is None or label.startswith("ceiling") or not off[0]:
            continue
        by_variant[label].append(throughput / off[0])
        rows.append(f"| {round_} | {label} | {throughput / off[0]:.3f} | {off[1]} -> {cpu} |")
    for label, found in by_variant.items():
        rows.append(f"| median | {label} | {statistics.median(found):.3f} | |")
    return "\n".join(
        ["| round | variant | req/s / capture off | CPU ms/req off -> on |", "|---:|:---|---:|:---|", *rows]
    )


def main(argv: list[str] | None = None) -> None:
    args = ab_arguments(__doc__, argv)
    variants = {
        OFF: {},
        "capture on, rate 1.0": {
            "DSPY_SERVE_CAPTURE": "*",
            "DSPY_SERVE_DATA_DIR": tempfile.mkdtemp(prefix="dspy-serve-capture-ab-"),
        },
        "capture on, rate 1.0, traces": {
            "DSPY_SERVE_CAPTURE": "*",
            "DSPY_SERVE_CAPTURE_TRACE": "true",
            "DSPY_SERVE_DATA_DIR": tempfile.mkdtemp(prefix="dspy-serve-capture-ab-"),
        },
    }
    table = run_ab(variants, args)
    print(table + "\n\n" + ratios(table))


if __name__ == "__main__":
    main()
