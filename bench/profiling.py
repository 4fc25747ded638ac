"""Where a server's CPU goes under load: py-spy on dspy-serve (or the ceiling) while the load runs.

    pip install -e '.[bench]'
    python -m bench.profiling --latency 0.1 --concurrency 128 --seconds 8 [--system ceiling]

Starts a fake LM and the system, drives it with bench.load (or runs bench.ceiling), samples the
measured process with ``py-spy record --gil --format raw`` (the thread holding the GIL: Python CPU),
and writes the collapsed stacks (``.raw``) plus a summary (``.md``: garbage-collection time per
generation, from bench/gcprobe; inclusive and self time per function; self time per package) to
bench/results/.
"""

from __future__ import annotations

import argparse
import collections
import json
import os
import re
import shlex
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from bench import systems
from bench.plan import DSPY_SERVE
from bench.systems import System, start_fake_lm, start_server

__all__ = ["Sampled", "main", "sample", "spy_path", "summarize"]

RESULTS = Path(__file__).resolve().parent / "results"
RATE = 200  # py-spy samples per second
_LINE = re.compile(r":\d+\)$")
_AREAS = [  # (label, substring of a frame's file), first match wins
    ("dspy_serve", "dspy_serve/"),
    ("dspy: lm15 HTTP client", "dspy/_vendor/lm15/"),
    ("dspy: pricing/metadata", "dspy/clients/costs.py"),
    ("dspy: pricing/metadata", "dspy/clients/model_metadata"),
    ("dspy: adapters", "dspy/adapters/"),
    ("dspy: clients", "dspy/clients/"),
    ("dspy: other", "dspy/"),
    ("uvicorn/h11", "uvicorn/"),
    ("uvicorn/h11", "h11/"),
    ("starlette/fastapi", "starlette/"),
    ("starlette/fastapi", "fastapi/"),
    ("pydantic", "pydantic"),
    ("anyio", "anyio/"),
    ("asyncio", "asyncio/"),
    ("threads", "concurrent/futures"),
    ("threads", "threading.py"),
    ("json", "json/"),
]


def _area(frame: str) -> str:
    return next((label for label, part in _AREAS if part in frame), "other")


def summarize(raw: Path, top: int = 40, ms_per_sample: float | None = None) -> str:
    """A Markdown summary of py-spy's collapsed stacks (``frame;frame;... count`` per line).

    ``ms_per_sample`` (sampling period divided by requests answered while sampling) adds a
    column of CPU milliseconds per request.
    """
    inclusive: collections.Counter[str] = collections.Counter()
    own: collections.Counter[str] = collections.Counter()
    areas: collections.Counter[str] = collections.Counter()
    total = 0
    for line in raw.read_text().splitlines() if raw.exists() else []:
        stack, _, count = line.rpartition(" ")
        if not stack or not count.isdigit():
            continue
        n = int(count)
        frames = [_LINE.sub(")", frame) for frame in stack.split(";") if frame]
        total += n
        for frame in set(frames):
            inclusive[frame] += n
        own[frames[-1]] += n
        areas[_area(frames[-1])] += n
    if not total:
        return "No samples (is the process busy? does py-spy have permission to attach?)\n"

    def table(counter: collections.Counter[str], limit: int) -> str:
        if ms_per_sample is None:
            rows = [f"| {100 * n / total:5.1f}% | `{name}` |" for name, n in counter.most_common(limit)]
            return "| % of CPU samples | function (file) |\n|---:|:---|\n" + "\n".join(rows)
        rows = [
            f"| {100 * n / total:5.1f}% | {n * ms_per_sample:.3f} | `{name}` |"
            for name, n in counter.most_common(limit)
        ]
        return "| % of CPU samples | ms/request | function (file) |\n|---:|---:|:---|\n" + "\n".join(rows)

    return (
        f"{total} samples"
        + (f", {total * ms_per_sample:.2f} ms of CPU per request" if ms_per_sample else "")
        + f".\n\n### Self time by package\n\n{table(areas, 20)}\n\n"
        f"### Self time by function\n\n{table(own, 25)}\n\n"
        f"### Inclusive time by function\n\n{table(inclusive, top)}\n"
    )


def _gc_delta(after: dict[str, Any], before: dict[str, Any], requests: float) -> str:
    """GC runs and CPU ms per request, per generation, between ``before`` and ``after``."""
    if not after or not before or not requests:
        return "GC accounting unavailable.\n"
    rows = []
    for gen in ("gen0", "gen1", "gen2"):
        runs = after[gen]["runs"] - before[gen]["runs"]
        seconds = after[gen]["seconds"] - before[gen]["seconds"]
        rows.append(f"| {gen} | {runs} | {seconds * 1000:.0f} | {seconds * 1000 / requests:.3f} |")
    return (
        f"Objects tracked: {after['tracked_objects']}, frozen: {after['frozen_objects']}.\n\n"
        "| generation | collections | ms in all | ms per request |\n|:---|---:|---:|---:|\n"
        + "\n".join(rows)
        + "\n"
    )


def _gc_figures(after: dict[str, Any], before: dict[str, Any]) -> dict[str, dict[str, float]]:
    """Collections and CPU ms per generation between ``before`` and ``after`` (empty if unknown)."""
    if not after or not before:
        return {}
    return {
        gen: {
            "runs": after[gen]["runs"] - before[gen]["runs"],
            "ms": (after[gen]["seconds"] - before[gen]["seconds"]) * 1000,
        }
        for gen in ("gen0", "gen1", "gen2")
    }


def _read_json(path: Path) -> dict[str, Any]:
    return dict(json.loads(path.read_text())) if path.exists() else {}


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--system", choices=["dspy-serve", "ceiling"], default="dspy-serve")
    parser.add_argument("--program", choices=["predict", "two_step", "two_step_sync"], default="predict")
    parser.add_argument("--latency", type=float, default=0.1)
    parser.add_argument("--concurrency", type=int, default=128)
    parser.add_argument("--seconds", type=int, default=8, help="seconds sampled")
    parser.add_argument("--model", default=systems.MODEL, help="model name given to DSPy")
    parser.add_argument("--out", type=Path, default=RESULTS)
    parser.add_argument(
        "--all-threads",
        dest="gil",
        action="store_false",
        help="sample every non-idle thread (default: the thread holding the GIL, i.e. Python CPU time)",
    )
    parser.add_argument(
        "--server-args",
        default="",
        help="extra dspy-serve flags, e.g. '--temperature 0 --response-cache memory' (every request is "
        "the same question, so all but the first are then cache hits)",
    )
    parser.add_argument(
        "--gc-tune", choices=["freeze", "disable"], help="dspy-serve only, an experiment: see bench/gcprobe"
    )
    args = parser.parse_args(argv)
    found = sample(
        args.system,
        program=args.program,
        latency=args.latency,
        concurrency=args.concurrency,
        seconds=args.seconds,
        model=args.model,
        out=args.out,
        gil=args.gil,
        server_args=args.server_args,
        gc_tune=args.gc_tune,
    )
    summary = args.out / f"{found.name}.md"
    sampled = "GIL holder" if args.gil else "all threads"
    summary.write_text(
        f"# Profile: {found.point}, model {args.model}\n\nLoad: `{found.load}`\n\n"
        f"## Garbage collection (not visible to py-spy)\n\n{found.gc_report}\n"
        f"## py-spy ({sampled})\n\n{summarize(found.raw, ms_per_sample=found.ms_per_sample)}"
    )
    print(summary.read_text())
    print(f"wrote {summary} and {found.raw}", file=sys.stderr)


@dataclass
class Sampled:
    """What :func:`sample` recorded: py-spy's collapsed stacks and the GC accounting."""

    name: str
    point: str
    raw: Path
    load: str  # the load generator's JSON outcome
    throughput: float
    seconds: float
    gc: dict[str, dict[str, float]]  # generation -> {"runs", "ms"} inside the sampled window
    gc_report: str

    @property
    def requests(self) -> float:
        return self.throughput * self.seconds

    @property
    def ms_per_sample(self) -> float | None:
        """CPU ms one sample stands for, per request answered while sampling."""
        return 1000 / RATE / self.requests if self.requests else None


def spy_path() -> Path | None:
    """py-spy next to this interpreter or on PATH; None when it is not installed."""
    spy = Path(shutil.which("py-spy") or Path(sys.executable).with_name("py-spy"))
    return spy if spy.exists() else None


def sample(
    system_kind: str,
    *,
    program: str = "predict",
    latency: float = 0.1,
    concurrency: int = 128,
    seconds: int = 8,
    model: str = systems.MODEL,
    out: Path = RESULTS,
    gil: bool = True,
    server_args: str = "",
    gc_tune: str | None = None,
) -> Sampled:
    """Run the load on ``system_kind`` (dspy-serve or ceiling) and sample it with py-spy."""
    spy = spy_path()
    if spy is None:
        sys.exit("py-spy is not installed: pip install -e '.[bench]'")
    logs = Path(tempfile.mkdtemp(prefix="dspy-serve-profile-"))
    point = f"{system_kind}-{program}-{latency:g}s-c{concurrency}"
    name = f"profile-{time.strftime('%Y%m%d-%H%M%S')}-{point}"
    raw, gc_stats = out / f"{name}.raw", logs / "gc.json"
    probe = {
        # Keep the caller's PYTHONPATH (a worktree's src/), or the server would run the installed code.
        "PYTHONPATH": os.pathsep.join(
            filter(
                None,
                [str(systems.ROOT / "bench" / "gcprobe"), str(systems.ROOT), os.environ.get("PYTHONPATH")],
            )
        ),
        "BENCH_GC_STATS": str(gc_stats),
        **({"BENCH_GC_TUNE": gc_tune} if gc_tune else {}),
    }
    out.mkdir(parents=True, exist_ok=True)
    window = ["--concurrency", str(concurrency), "--warmup", "2", "--duration", str(seconds + 3)]
    fake = start_fake_lm(logs / "fake.log", latency=latency)
    server = None
    try:
        if system_kind == "ceiling":
            driver = ["-m", "bench.ceiling", "--program", program, "--model", model]
            driver += ["--api-base", fake.api_base]
        else:
            system = System(
                "dspy-serve",
                "dspy-serve",
                program,
                DSPY_SERVE.route,
                args=tuple(shlex.split(server_args)),
                model=model,
            )
            server = start_server(system, fake.api_base, logs, extra_env=probe)
            if gc_tune:
                os.kill(server.pid, signal.SIGUSR1)  # start-up is over: apply the GC change now
            driver = ["-m", "bench.load", "--url", server.url, "--body", system.body().decode()]
        env = systems.child_env(**(probe if server is None else {}))
        load = subprocess.Popen(
            [sys.executable, *driver, *window], stdout=subprocess.PIPE, text=True, cwd=systems.ROOT, env=env
        )
        time.sleep(2.5 if server else 4.0)
        pid = server.pid if server else load.pid
        record = [str(spy), "record", "--pid", str(pid), "--duration", str(seconds), "--rate", str(RATE)]
        record += ["--gil"] if gil else []
        before = _read_json(gc_stats)
        subprocess.run([*record, "--nonblocking", "--format", "raw", "-o", str(raw)], check=True, timeout=120)
        after = _read_json(gc_stats)  # the sampled window only (the load runs on a little longer)
        outcome, _ = load.communicate(timeout=seconds + 120)
        throughput = json.loads(outcome)["throughput"] if outcome.strip() else 0.0
        gc_ms = _gc_figures(after, before)
        gc_report = _gc_delta(after, before, throughput * seconds)
    finally:
        if server is not None:
            server.stop()
        fake.stop()
    return Sampled(name, point, raw, outcome.strip(), throughput, seconds, gc_ms, gc_report)


if __name__ == "__main__":
    main()
