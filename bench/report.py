"""Markdown tables, target checks and output files of a benchmark run."""

from __future__ import annotations

import json
import os
import platform
import subprocess
import time
from collections.abc import Iterable
from importlib import metadata
from pathlib import Path
from typing import Any

from bench.plan import KNOWN_MODEL, Profile

__all__ = ["machine_info", "render", "targets", "update_docs_section", "write_outputs"]

Record = dict[str, Any]

ROOT = Path(__file__).resolve().parent.parent
DOCS = ROOT / "docs" / "benchmarks.md"
DOCS_START, DOCS_END = "<!-- bench:results:start -->", "<!-- bench:results:end -->"
PHYSICAL_LIMIT_1S = 200.0  # req/s the issue calls the machine's physical limit at 1 s, c=256
PROGRAM_TITLES = {"predict": "Predict", "two_step": "two-step", "two_step_sync": "two-step"}


# --- the machine -----------------------------------------------------------------------------------
def machine_info() -> dict[str, Any]:
    model = next(
        (
            line.split(":", 1)[1].strip()
            for line in Path("/proc/cpuinfo").read_text().splitlines()
            if line.startswith("model name")
        ),
        platform.processor() or "unknown",
    )
    return {
        "date": time.strftime("%Y-%m-%d %H:%M:%S %Z"),
        "nproc": os.cpu_count(),
        "cpu": model,
        "memory_gib": round(os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30, 1),
        "kernel": platform.release(),
        "python": platform.python_version(),
        "dspy": _version("dspy"),
        "dspy_serve": _version("dspy-serve"),
        "fastapi": _version("fastapi"),
        "uvicorn": _version("uvicorn"),
        "git": _git("rev-parse", "--short", "HEAD"),
        "git_dirty": bool(_git("status", "--porcelain", "--", "src")),
        "loadavg_start": Path("/proc/loadavg").read_text().split()[:3],
    }


def _version(package: str) -> str:
    try:
        return metadata.version(package)
    except metadata.PackageNotFoundError:
        return "not installed"


def _git(*args: str) -> str:
    try:
        return subprocess.run(
            ["git", *args], cwd=ROOT, capture_output=True, text=True, timeout=10
        ).stdout.strip()
    except (OSError, subprocess.TimeoutExpired):
        return ""


# --- formatting ------------------------------------------------------------------------------------
def _fmt(value: Any, digits: int = 1) -> str:
    if value is None:
        return "—"
    if isinstance(value, float):
        return f"{value:,.{digits}f}"
    return str(value)


def _ms(value: float | None) -> str:
    if value is None:
        return "—"
    return f"{value:,.0f}" if value >= 100 else f"{value:.1f}"


def _throughput(record: Record | None) -> float | None:
    return None if record is None else float(record["throughput"])


def _ratio(a: float | None, b: float | None) -> str:
    return f"{a / b:.2f}x" if a is not None and b else "—"


_TEXT_COLUMNS = {"LM", "system", "program", "target", "measured", "", "note", "interval"}


def _table(header: list[str], rows: Iterable[list[str]]) -> str:
    align = [":---" if name in _TEXT_COLUMNS else "---:" for name in header]
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join(align) + "|"]
    lines += ["| " + " | ".join(row) + " |" for row in rows]
    return "\n".join(lines)


def _errors(record: Record) -> str:
    if not record["errors"]:
        return "0"
    detail = ", ".join(f"{n}x{status}" for status, n in sorted(record["error_statuses"].items()))
    return f"{record['errors']} ({detail})"


def _find(records: list[Record], system: str, program: str, latency: float, c: int) -> Record | None:
    return next(
        (
            r
            for r in records
            if r["system"] == system
            and r["program"] == program
            and r["latency_s"] == latency
            and r["concurrency"] == c
        ),
        None,
    )


def _latency_title(latency: float) -> str:
    return f"{latency * 1000:.0f} ms" if latency < 1 else f"{latency:g} s"


# --- tables ----------------------------------------------------------------------------------------
def detail_table(records: list[Record]) -> str:
    header = [
        "LM",
        "c",
        "system",
        "program",
        "req/s",
        "p50 ms",
        "p99 ms",
        "errors",
        "unfinished",
        "server CPU ms/req",
        "server RSS MB",
        "LM peak conc.",
        "fake LM CPU ms/req",
        "load-gen CPU s",
    ]
    rows = [
        [
            _latency_title(r["latency_s"]),
            str(r["concurrency"]),
            r["system"],
            r["program"],
            _fmt(r["throughput"]),
            _ms(r["p50_ms"]),
            _ms(r["p99_ms"]),
            _errors(r),
            str(r["unfinished"]),
            _fmt(r["server_cpu_ms_per_req"], 2),
            _fmt(r["server_rss_mb"], 0),
            _fmt(r["lm_peak_in_flight"]),
            _fmt(r["fake_cpu_ms_per_req"], 2),
            _fmt(r["loadgen_cpu_s"], 2),
        ]
        for r in records
    ]
    return _table(header, rows)


def summary_table(records: list[Record], latency: float) -> str:
    """Predict: req/s (p99 ms) per system and level, and dspy-serve's ratios to the others."""
    systems = ["ceiling", "dspy-serve", "naive async def", "naive def"]
    levels = sorted(
        {r["concurrency"] for r in records if r["latency_s"] == latency and r["program"] == "predict"}
    )
    rows = []
    for c in levels:
        found = {s: _find(records, s, "predict", latency, c) for s in systems}
        if not any(found.values()):
            continue
        cells = [
            "—"
            if r is None
            else f"{r['throughput']:.1f} ({_ms(r['p99_ms'])})" + (" ⚠" if r["errors"] else "")
            for r in found.values()
        ]
        serve = found["dspy-serve"]
        x = serve["throughput"] if serve else None
        ratios = [
            _ratio(x, (found[s] or {}).get("throughput")) for s in ("ceiling", "naive async def", "naive def")
        ]
        rows.append([str(c), *cells, *ratios])
    header = ["c", *systems, "dspy-serve / ceiling", "/ naive async def", "/ naive def"]
    return _table(header, rows)


def two_step_table(records: list[Record]) -> str:
    """Two-step program: the ceiling, dspy-serve's async path and its thread-pool path."""
    rows = []
    keys = sorted(
        {(r["latency_s"], r["concurrency"]) for r in records if r["program"] in ("two_step", "two_step_sync")}
    )
    for latency, c in keys:
        ceiling = _find(records, "ceiling", "two_step", latency, c)
        native = _find(records, "dspy-serve", "two_step", latency, c)
        sync = _find(records, "dspy-serve sync", "two_step_sync", latency, c)

        def cell(r: Record | None) -> str:
            if r is None:
                return "—"
            return f"{r['throughput']:.1f} / {_ms(r['p50_ms'])} / {_ms(r['p99_ms'])}" + (
                " ⚠" if r["errors"] else ""
            )

        def cpu(r: Record | None) -> str:
            return _fmt(r["server_cpu_ms_per_req"], 2) if r else "—"

        faster = "—"
        if native and sync:
            faster = "aforward" if native["throughput"] >= sync["throughput"] else "thread pool"
        rows.append(
            [
                _latency_title(latency),
                str(c),
                cell(ceiling),
                cell(native),
                cell(sync),
                _ratio(_throughput(native), _throughput(ceiling)),
                f"{cpu(native)} / {cpu(sync)}",
                faster,
            ]
        )
    header = [
        "LM",
        "c",
        "ceiling (acall)",
        "dspy-serve aforward",
        "dspy-serve thread pool",
        "aforward / ceiling",
        "CPU ms/req aforward / pool",
        "more req/s",
    ]
    return "Cells: req/s / p50 ms / p99 ms.\n\n" + _table(header, rows)


def paired_table(records: list[Record], pairs: dict[str, str]) -> str:
    """Each record of a variant (key of ``pairs``) beside its reference system at the same point."""
    chosen: list[Record] = []
    for r in records:
        if r["system"] in pairs:
            reference = _find(records, pairs[r["system"]], r["program"], r["latency_s"], r["concurrency"])
            chosen += [x for x in (reference, r) if x is not None]
    header = ["LM", "c", "system", "req/s", "p50 ms", "p99 ms", "errors", "server CPU ms/req", "note"]
    rows = [
        [
            _latency_title(r["latency_s"]),
            str(r["concurrency"]),
            r["system"],
            _fmt(r["throughput"]),
            _ms(r["p50_ms"]),
            _ms(r["p99_ms"]),
            _errors(r),
            _fmt(r["server_cpu_ms_per_req"], 2),
            r["note"],
        ]
        for r in chosen
    ]
    return _table(header, rows)


def model_name_table(records: list[Record]) -> str:
    """The ceiling and dspy-serve under the fake model name and under a catalogued one."""
    known = f" [{KNOWN_MODEL}]"
    keys = sorted({(r["latency_s"], r["concurrency"]) for r in records if r["system"].endswith(known)})
    rows = []
    for latency, c in keys:
        cells: list[str] = [_latency_title(latency), str(c)]
        for suffix in ("", known):
            ceiling = _find(records, "ceiling" + suffix, "predict", latency, c)
            serve = _find(records, "dspy-serve" + suffix, "predict", latency, c)
            for r in (ceiling, serve):
                cells.append(
                    "—"
                    if r is None
                    else f"{r['throughput']:.1f} / {_ms(r['p50_ms'])} / {_fmt(r['server_cpu_ms_per_req'], 2)}"
                )
            cells.append(_ratio(_throughput(serve), _throughput(ceiling)))
        rows.append(cells)
    header = [
        "LM",
        "c",
        "ceiling, fake-model",
        "dspy-serve, fake-model",
        "ratio",
        f"ceiling, {KNOWN_MODEL}",
        f"dspy-serve, {KNOWN_MODEL}",
        "ratio",
    ]
    return "Cells: req/s / p50 ms / CPU ms per request.\n\n" + _table(header, rows)


def streaming_table(streaming: dict[str, Any]) -> str:
    rows = [
        ["LM's first chunk → first `token` event", _ms(streaming["first_chunk_to_first_token_ms"])],
        [
            "LM's chunk with the answer's first character → first `token` event",
            _ms(streaming["answer_first_chunk_to_first_token_ms"]),
        ],
        [
            "LM's chunk with the answer's last character → last `token` event",
            _ms(streaming["answer_last_chunk_to_last_token_ms"]),
        ],
        ["LM's last chunk → `prediction` event", _ms(streaming["last_chunk_to_prediction_ms"])],
        ["LM stream length (first → last chunk)", _ms(streaming["lm_stream_ms"])],
    ]
    note = (
        f"Median over {streaming['measured']} of {streaming['streams']} streams, one at a time "
        f"(errors: {streaming['errors']}); the fake LM waits {streaming['lm_latency_ms']:g} ms, then sends "
        f"{streaming['lm_chunks']:g} chunks {streaming['chunk_delay_ms']:g} ms apart; the client got "
        f"{streaming['tokens_per_stream']:g} `token` events per stream."
    )
    table = _table(["interval", "median ms"], rows) + "\n\n" + note
    if load := streaming.get("load"):
        table += "\n\n" + stream_load_table(load)
    return table


def stream_load_table(load: dict[str, Any]) -> str:
    """Issue #24's figure: /qa/stream against the same client reading the LM's stream directly."""
    windows = [
        ("raw LM stream, before", load["raw_before"]),
        ("`/qa/stream`", load["server"]),
        ("raw LM stream, after", load["raw_after"]),
        ("raw LM stream, mean", load["raw"]),
    ]
    rows = [
        [name, _number(w["streams_per_s"]), _ms(w["ttft_p50_ms"]), _ms(w["ttft_p99_ms"])]
        for name, w in windows
    ]
    goals = "; ".join(
        f"{name} {goal['value']} ({goal['bound']}: {'met' if goal['met'] else 'NOT met'})"
        for name, goal in load["goals"].items()
    )
    note = (
        f"Closed loop, c={load['concurrency']}, {load['duration_s']:g} s per window; the fake LM waits "
        f"{load['lm_latency_ms']:g} ms, then sends 4-character chunks {load['chunk_delay_ms']:g} ms apart "
        f"({load['answer_chars']} answer characters). Goals (issue #24): {goals}."
    )
    return _table(["window", "streams/s", "TTFT p50 ms", "TTFT p99 ms"], rows) + "\n\n" + note


def _number(value: float | None) -> str:
    return "—" if value is None else f"{value:g}"


def reuse_table(figures: dict[str, Any]) -> str:
    """The response cache (hit ratio against throughput) and coalescing (one question)."""
    base = figures["hit_ratio"][0]["throughput"] if figures["hit_ratio"] else None
    rows = [
        [
            _fmt(r["hit_ratio"], 3),
            _fmt(r["throughput"]),
            _ratio(r["throughput"], base),
            _ms(r["p50_ms"]),
            _ms(r["p99_ms"]),
            _fmt(r["server_cpu_ms_per_req"], 3),
            str(r["lm_requests"]),
            _fmt(r["errors"], 0),
        ]
        for r in figures["hit_ratio"]
    ]
    header = ["hit ratio", "req/s", "vs no hits", "p50 ms", "p99 ms", "CPU ms/req", "LM calls", "errors"]
    own = figures["own_work"]
    cache = (
        f"dspy-serve `--temperature 0 --response-cache memory`, {figures['latency_s'] * 1000:.0f} ms LM, "
        f"c={figures['concurrency']}, a cold cache per row; each request asks one of 16 hot questions "
        "with the row's probability, a new question otherwise. The hit ratio is the server's `X-Cache` "
        "answers inside the window; LM calls include the warm-up. At hit ratio 1 the CPU per request is "
        f"the whole cost of a hit (HTTP, validation, key, lookup); the cache's own part is "
        f"{own['key_us']:g} µs for the key and {own['lookup_us']:g} µs for an in-memory lookup."
    )
    coalescing = [
        [
            r["system"],
            _fmt(r["throughput"]),
            _fmt(r["hit_ratio"], 3),
            str(r["lm_requests"]),
            _fmt(r["lm_requests"] / (r["answers_total"] or 1), 4),
            _ms(r["p99_ms"]),
            _fmt(r["server_cpu_ms_per_req"], 3),
        ]
        for r in figures["coalescing"]
    ]
    header_2 = ["system", "req/s", "coalesced", "LM calls", "LM calls per answer", "p99 ms", "CPU ms/req"]
    note_2 = (
        "Every request asks the same question, the cache off: coalescing (as shipped, at temperature 0) "
        "against `--no-coalesce-requests`. LM calls and answers both include the warm-up."
    )
    return (
        _table(header, rows)
        + "\n\n"
        + cache
        + "\n\n#### Coalescing\n\n"
        + _table(header_2, coalescing)
        + "\n\n"
        + note_2
    )


# --- targets ---------------------------------------------------------------------------------------
def targets(records: list[Record]) -> list[tuple[str, str, bool | None]]:
    """(target, what was measured, met?) for the issue's targets, each only if measured."""
    out: list[tuple[str, str, bool | None]] = []

    def get(system: str, latency: float, c: int) -> Record | None:
        return _find(records, system, "predict", latency, c)

    for suffix in ("", f" [{KNOWN_MODEL}]"):
        serve, ceiling = get("dspy-serve" + suffix, 0.1, 128), get("ceiling" + suffix, 0.1, 128)
        if serve and ceiling and ceiling["throughput"]:
            ratio = serve["throughput"] / ceiling["throughput"]
            out.append(
                (
                    f"100 ms, c=128: dspy-serve ≥ 0.9x the ceiling{suffix}",
                    f"{serve['throughput']:.1f} vs {ceiling['throughput']:.1f} req/s = {ratio:.2f}x",
                    ratio >= 0.9,
                )
            )
    serve, naive = get("dspy-serve", 0.1, 128), get("naive async def", 0.1, 128)
    if serve:
        out.append(("100 ms, c=128: zero errors", _errors(serve), serve["errors"] == 0))
    if serve and naive and naive["throughput"]:
        ratio = serve["throughput"] / naive["throughput"]
        out.append(
            (
                "100 ms, c=128: dspy-serve ≥ 10x naive async def",
                f"{serve['throughput']:.1f} vs {naive['throughput']:.1f} req/s = {ratio:.1f}x",
                ratio >= 10,
            )
        )
    slow = get("dspy-serve", 1.0, 256)
    if slow:
        out.append(
            (
                f"1 s, c=256: dspy-serve ≥ 0.8 x ~{PHYSICAL_LIMIT_1S:.0f} req/s, zero errors",
                f"{slow['throughput']:.1f} req/s ({slow['throughput'] / 256:.0%} of c/latency = 256), "
                f"errors {_errors(slow)}",
                slow["throughput"] >= 0.8 * PHYSICAL_LIMIT_1S and slow["errors"] == 0,
            )
        )
    for suffix in ("", f" [{KNOWN_MODEL}]"):
        for latency in (0.1, 1.0):
            s1, c1 = get("dspy-serve" + suffix, latency, 1), get("ceiling" + suffix, latency, 1)
            if s1 and c1 and s1["p50_ms"] is not None and c1["p50_ms"] is not None:
                overhead = s1["p50_ms"] - c1["p50_ms"]
                out.append(
                    (
                        f"{_latency_title(latency)}, c=1: overhead (p50 dspy-serve - ceiling) ≤ 2 ms{suffix}",
                        f"{s1['p50_ms']:.2f} - {c1['p50_ms']:.2f} = {overhead:+.2f} ms",
                        overhead <= 2.0,
                    )
                )
    for latency in (0.1, 1.0):
        r = get("dspy-serve", latency, 512)
        if r:
            bounded = (
                r["p99_ms"] is not None and r["p99_ms"] < 60_000 and "connection" not in r["error_statuses"]
            )
            out.append(
                (
                    f"{_latency_title(latency)}, c=512: p99 bounded by the queue policy (503s counted)",
                    f"p99 {_ms(r['p99_ms'])} ms, {r['throughput']:.1f} req/s, errors {_errors(r)}",
                    bounded,
                )
            )
    return out


def targets_table(records: list[Record]) -> str:
    mark = {True: "met", False: "**missed**", None: "—"}
    return _table(["target", "measured", ""], [[t, m, mark[ok]] for t, m, ok in targets(records)])


# --- documents -------------------------------------------------------------------------------------
def _windows(profile: Profile) -> str:
    return ", ".join(
        f"{_latency_title(k)} LM: {profile.warmup[k]:g} s warm-up + {v:g} s measured"
        for k, v in profile.duration.items()
    )


def render(
    profile: Profile,
    records: list[Record],
    streaming: dict[str, Any] | None,
    machine: dict[str, Any],
    plot: str | None,
    reuse: dict[str, Any] | None = None,
    reuse_plot: str | None = None,
) -> str:
    m = machine
    parts = [
        f"Run `{profile.name}` on {m['date']}: {m['nproc']} x {m['cpu']}, {m['memory_gib']} GiB, Linux "
        f"{m['kernel']}, Python {m['python']}, DSPy {m['dspy']}, dspy-serve {m['dspy_serve']} "
        f"(git {m['git']}{', src/ modified' if m['git_dirty'] else ''}), FastAPI {m['fastapi']}, "
        f"uvicorn {m['uvicorn']}. Load average {' '.join(m['loadavg_start'])} at the start, "
        f"{' '.join(m.get('loadavg_end', ['?']))} at the end; {m.get('wall_seconds', '?')} s in all. "
        f"Windows: {_windows(profile)}.",
        "### Targets\n\n" + targets_table(records),
    ]
    if plot:
        parts.append(f"![throughput and p99 against concurrency]({plot})")
    for latency in sorted({r["latency_s"] for r in records}):
        parts.append(
            f"### Predict, {_latency_title(latency)} LM: req/s (p99 ms)\n\n" + summary_table(records, latency)
        )
    if any(r["program"] != "predict" for r in records):
        parts.append(
            "### Two-step program: aforward (event loop) vs forward (thread pool)\n\n"
            + two_step_table(records)
        )
    if any(r["system"].endswith(f" [{KNOWN_MODEL}]") for r in records):
        parts.append("### The model's name: unknown to DSPy vs catalogued\n\n" + model_name_table(records))
    if any(r["system"] == "ceiling litellm" for r in records):
        parts.append(
            "### DSPy's LM engines (in-process)\n\n" + paired_table(records, {"ceiling litellm": "ceiling"})
        )
    if any(r["system"] == "dspy-serve small queue" for r in records):
        parts.append(
            "### Overload: the queue policy at c=512\n\n"
            + paired_table(records, {"dspy-serve small queue": "dspy-serve"})
        )
    if streaming:
        parts.append("### Streaming (`POST /qa/stream`)\n\n" + streaming_table(streaming))
    if reuse:
        parts.append("### Response cache: hit ratio against throughput\n\n" + reuse_table(reuse))
        if reuse_plot:
            parts.append(f"![throughput and CPU per request against the hit ratio]({reuse_plot})")
    parts.append("### Every measurement\n\n" + detail_table(records))
    return "\n\n".join(parts) + "\n"


def write_outputs(
    out: Path,
    *,
    profile: Profile,
    records: list[Record],
    streaming: dict[str, Any] | None,
    machine: dict[str, Any],
    update_docs: bool,
    reuse: dict[str, Any] | None = None,
) -> list[Path]:
    from bench.plot import plot, plot_reuse

    out.mkdir(parents=True, exist_ok=True)
    stamp = time.strftime("%Y%m%d-%H%M%S")
    base = out / f"{stamp}-{profile.name}"
    data = {
        "profile": profile.name,
        "machine": machine,
        "records": records,
        "streaming": streaming,
        "reuse": reuse,
    }
    written = [base.with_suffix(".json")]
    written[0].write_text(json.dumps(data, indent=1) + "\n")
    png = plot(records, base.with_suffix(".png"))
    if png is not None:
        written.append(png)
    reuse_png = plot_reuse(reuse, out / f"{stamp}-{profile.name}-cache.png") if reuse else None
    if reuse_png is not None:
        written.append(reuse_png)
    reuse_name = reuse_png.name if reuse_png else None
    body = render(profile, records, streaming, machine, png.name if png else None, reuse, reuse_name)
    title = (
        "# dspy-serve benchmark results\n\n"
        "Made by `python -m bench.run`; commentary in docs/benchmarks.md.\n\n"
    )
    for path in (base.with_suffix(".md"), out / "latest.md"):
        path.write_text(title + body)
        written.append(path)
    if update_docs:
        docs_plot = f"../bench/results/{png.name}" if png else None
        docs_reuse_plot = f"../bench/results/{reuse_name}" if reuse_name else None
        if update_docs_section(
            render(profile, records, streaming, machine, docs_plot, reuse, docs_reuse_plot)
        ):
            written.append(DOCS)
    return written


def update_docs_section(block: str, start_marker: str = DOCS_START, end_marker: str = DOCS_END) -> bool:
    """Replace a generated section of docs/benchmarks.md (between its markers), if it has them."""
    if not DOCS.is_file():
        return False
    text = DOCS.read_text()
    start, end = text.find(start_marker), text.find(end_marker)
    if start < 0 or end < start:
        return False
    DOCS.write_text(text[: start + len(start_marker)] + "\n\n" + block + "\n" + text[end:])
    return True
