"""``dspy-serve batch`` throughput against the ideal ``concurrency / latency``.

    python -m bench.batch [--rows 3000] [--concurrency 64] [--latency 0.1] [--runs 3]

Each run: a fresh output file, the fake LM (its own process) at a fixed latency, and
``dspy-serve batch`` in-process on the predict program. The rate is the command's own (rows
answered over the time from the first row to the last, start-up excluded); the target of issue
#28 is at least 0.9x ``concurrency / latency``. Prints one JSON object.
"""

from __future__ import annotations

import argparse
import json
import re
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

from bench.systems import MODEL, PROGRAMS_FILE, ROOT, child_env, start_fake_lm

_RATE = re.compile(r"(\d+) rows in ([\d.]+) s \(([\d.]+) rows/s\)")


def one_run(api_base: str, rows: Path, out: Path, concurrency: int) -> float:
    argv = [sys.executable, "-m", "dspy_serve", "batch", f"qa={PROGRAMS_FILE}:predict"]
    argv += ["--model", MODEL, "--api-base", api_base, "--input", str(rows), "--output", str(out)]
    argv += ["--concurrency", str(concurrency), "--max-in-flight", str(max(256, concurrency))]
    done = subprocess.run(argv, env=child_env(), capture_output=True, text=True, timeout=600, cwd=ROOT)
    if done.returncode != 0:
        raise RuntimeError(f"dspy-serve batch failed:\n{done.stderr[-3000:]}")
    match = _RATE.search(done.stderr)
    if match is None:
        raise RuntimeError(f"no rate in the summary:\n{done.stderr[-1000:]}")
    return float(match.group(3))


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=3000)
    parser.add_argument("--concurrency", type=int, default=64)
    parser.add_argument("--latency", type=float, default=0.1)
    parser.add_argument("--runs", type=int, default=3)
    args = parser.parse_args(argv)
    with tempfile.TemporaryDirectory(prefix="bench-batch-") as tmp:
        work = Path(tmp)
        rows = work / "rows.jsonl"
        rows.write_text(
            "".join(json.dumps({"question": f"Question number {i}?"}) + "\n" for i in range(args.rows))
        )
        fake = start_fake_lm(work / "fake-lm.log", latency=args.latency)
        try:
            rates = [
                one_run(fake.api_base, rows, work / f"out-{run}.jsonl", args.concurrency)
                for run in range(args.runs)
            ]
        finally:
            fake.stop()
    ideal = args.concurrency / args.latency
    print(
        json.dumps(
            {
                "rows": args.rows,
                "concurrency": args.concurrency,
                "latency_s": args.latency,
                "ideal_rows_per_s": ideal,
                "rows_per_s": rates,
                "median_rows_per_s": statistics.median(rates),
                "median_ratio_to_ideal": round(statistics.median(rates) / ideal, 3),
            },
            indent=2,
        )
    )


if __name__ == "__main__":
    main()
