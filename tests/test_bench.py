"""The benchmark harness is code too: every module imports, so a moved helper cannot break it
silently between the runs that refresh docs/benchmarks.md."""

from __future__ import annotations

import dataclasses
import importlib
from pathlib import Path

import pytest

BENCH = Path(__file__).resolve().parents[1] / "bench"
MODULES = sorted(p.stem for p in BENCH.glob("*.py") if p.stem != "__init__")


def test_the_harness_has_modules() -> None:
    assert {"run", "systems", "fake_lm_server", "ceiling"} <= set(MODULES)


@pytest.mark.parametrize("name", MODULES)
def test_every_bench_module_imports(name: str) -> None:
    importlib.import_module(f"bench.{name}")


def _goals_data() -> dict[str, object]:
    """A fixed two-run result of bench.goals, small enough to check by hand."""

    def record(
        goal: str, system: str, run: int, latency: float, c: int, rps: float, **more: object
    ) -> dict[str, object]:
        return {
            "goal": goal,
            "system": system,
            "run": run,
            "latency_s": latency,
            "concurrency": c,
            "throughput": rps,
            "p99_ms": more.get("p99_ms"),
            "server_cpu_ms_per_req": more.get("cpu"),
        }

    records = []
    for run, (serve, ceiling) in enumerate([(400.0, 500.0), (600.0, 500.0)], start=1):
        records += [
            record("overhead", "dspy-serve", run, 0.1, 128, serve, cpu=2.0),
            record("overhead", "ceiling", run, 0.1, 128, ceiling, cpu=1.0 * run),
            record("tail", "dspy-serve", run, 1.0, 256, 243.2, p99_ms=1100.0),
            record("tail", "ceiling", run, 1.0, 256, 100.0, p99_ms=2600.0),
            record("thread", "dspy-serve sync", run, 0.1, 128, 90.0),
            record("thread", "dspy-serve aforward", run, 0.1, 128, 100.0),
        ]

    def cache_run(run: int) -> dict[str, object]:
        hit = {
            "hit_ratio_asked": 1.0,
            "hit_ratio": 1.0,
            "throughput": 900.0,
            "server_cpu_ms_per_req": 0.2 * run,
        }
        cold = {"hit_ratio_asked": 0.0, "hit_ratio": 0.0, "throughput": 300.0, "server_cpu_ms_per_req": 2.0}
        on = {
            "system": "dspy-serve coalescing",
            "throughput": 1000.0,
            "lm_requests": 10,
            "answers_total": 1000,
        }
        off = {
            "system": "dspy-serve no coalescing",
            "throughput": 500.0,
            "lm_requests": 500,
            "answers_total": 500,
        }
        return {"run": run, "hit_ratio": [cold, hit], "coalescing": [on, off]}

    return {"runs": 2, "records": records, "cache": [cache_run(1), cache_run(2)]}


def test_goals_spread_is_min_median_max_of_what_was_measured() -> None:
    from bench.goals_report import spread

    assert spread([3.0, None, 1.0, 2.0]) == {"min": 1.0, "median": 2.0, "max": 3.0}
    assert spread([None, None]) is None


def test_goals_figures_are_ratios_within_each_run() -> None:
    from bench.goals_report import figures

    by_key = {f.key: f.values for f in figures(_goals_data())}
    assert by_key["overhead.throughput_ratio"] == [0.8, 1.2]
    assert by_key["overhead.cpu_ratio"] == [2.0, 1.0]
    assert by_key["tail.serve_fraction"] == [0.95, 0.95]
    assert by_key["tail.serve_p99_s"] == [1.1, 1.1]
    assert by_key["thread.0.1.ratio"] == [0.9, 0.9]
    assert by_key["cache.cpu_per_hit_ms"] == [0.2, 0.4]
    assert by_key["coalescing.on.calls_per_answer"] == [0.01, 0.01]
    assert by_key["coalescing.off.calls_per_answer"] == [1.0, 1.0]


def test_goals_targets_are_judged_on_the_median_with_the_spread_beside_it() -> None:
    from bench.goals_report import targets, targets_table

    rows = {goal: (measured, met) for goal, _, measured, met in targets(_goals_data())}
    assert rows["1. throughput, 100 ms LM, c=128"] == ("1.00 (0.80-1.20)", True)
    assert rows["1. server CPU per request"] == ("1.50 (1.00-2.00)", False)
    assert rows["2. throughput, 1 s LM, c=256"][1] is True
    assert rows["2. p99, 1 s LM, c=256"] == ("1.10 (1.10-1.10)", True)
    assert rows["3. thread path, 100 ms LM, c=128"][1] is True
    assert rows["3. thread path, 1 s LM, c=128"] == ("—", None)  # not measured in this data
    assert rows["4. server CPU per cache hit"] == ("0.300 (0.200-0.400)", False)
    assert rows["5. coalescing, one question, c=128"][1] is True
    table = targets_table(_goals_data())
    assert table.splitlines()[0] == "| goal | target | median (min-max) |  |"
    assert "| **missed** |" in table and "| not measured |" in table


def test_goals_components_charge_a_sample_to_its_innermost_known_frame(tmp_path: Path) -> None:
    from bench.components import component_of, components

    json_in_pydantic = [
        "_run_once (asyncio/base_events.py:1)",
        "validate (pydantic/main.py:2)",
        "loads (json/__init__.py:3)",
    ]
    assert component_of(json_in_pydantic) == "validation"
    h11_under_uvicorn = ["run (uvicorn/protocols/http/h11_impl.py:1)", "next_event (h11/_connection.py:2)"]
    assert component_of(h11_under_uvicorn) == "HTTP"
    assert (
        component_of(["x (dspy/_vendor/lm15/transports/_async.py:1)", "y (asyncio/streams.py:2)"])
        == "asyncio / threads"
    )
    assert component_of(["x (dspy/clients/costs.py:1)"]) == "accounting"
    assert component_of(["<module> (somewhere.py:1)"]) == "other"
    raw = tmp_path / "profile.raw"
    raw.write_text(
        "a (dspy/adapters/chat_adapter.py:1);b (re/__init__.py:2) 3\n"
        "c (starlette/routing.py:1) 2\nnot a line\n"
    )
    assert components(raw) == ({"DSPy adapter": 3, "HTTP": 2}, 5)


def test_goals_page_renders_from_the_json_alone_and_says_what_was_not_measured() -> None:
    from bench.goals import GoalsProfile
    from bench.goals_report import render

    machine = {"date": "d", "nproc": 2, "cpu": "cpu", "python": "3.11", "dspy": "3.4", "dspy_serve": "0"}
    machine |= {"git": "abc", "git_dirty": False, "loadavg_start": ["1", "1", "1"]}
    data = _goals_data() | {"machine": machine, "settings": dataclasses.asdict(GoalsProfile())}
    data["components"] = {"why": "py-spy is not installed"}
    page = render(data, {"overhead": "o.png"})
    assert page.index("#### Targets") < page.index("#### 1. Serving adds no net cost")
    assert "![dspy-serve against the ceiling, per run](o.png)" in page
    assert "#### 6. Where the CPU goes\n\nNot measured: py-spy is not installed." in page
    without_matplotlib = render(data | {"plot_note": "matplotlib is not installed"}, {})
    assert (
        "No plot (overhead, tail, thread, cache, components): matplotlib is not installed."
        in without_matplotlib
    )


def test_components_ab_tabulates_the_median_of_each_component_per_system() -> None:
    from bench.components_ab import render

    runs = [
        {"HTTP": 0.2, "LM client": 0.3, "sampled in all": 0.5},
        {"HTTP": 0.4, "LM client": 0.1, "sampled in all": 0.5},
    ]
    ceiling = [{"HTTP": 0.0, "LM client": 0.4, "sampled in all": 0.4}] * 2
    table = render({"before": runs, "ceiling": ceiling}).splitlines()
    assert table[0] == "| component | before | ceiling |"
    assert "| HTTP | 0.300 | 0.000 |" in table and "| LM client | 0.200 | 0.400 |" in table
    assert not any(line.startswith("| validation ") for line in table), "all-zero rows are left out"


def test_capture_ab_gives_each_rounds_ratio_to_capture_off_and_their_median() -> None:
    from bench.capture_ab import ratios

    table = "\n".join(
        [
            "| round | variant | req/s | p50 ms | p99 ms | errors | CPU ms/req | RSS MB |",
            "| 1 | capture off | 1000.0 | 120 | 170 | 0 | 0.90 | 130 |",
            "| 1 | capture on, rate 1.0 | 980.0 | 121 | 171 | 0 | 0.92 | 170 |",
            "| 1 | ceiling (in-process) | 800.0 | 140 | 300 | 0 | 1.00 | 120 |",
            "| 2 | capture on, rate 1.0 | 900.0 | 121 | 171 | 0 | 0.95 | 170 |",
            "| 2 | capture off | 1000.0 | 120 | 170 | 0 | 0.91 | 130 |",
            "| 3 | capture off | 800.0 | 120 | 170 | 0 | 0.93 | 130 |",
            "| 3 | capture on, rate 1.0 | 784.0 | 121 | 171 | 0 | 0.94 | 170 |",
        ]
    )
    lines = ratios(table).splitlines()
    assert "| 1 | capture on, rate 1.0 | 0.980 | 0.90 -> 0.92 |" in lines
    assert "| 2 | capture on, rate 1.0 | 0.900 | 0.91 -> 0.95 |" in lines
    assert lines[-1] == "| median | capture on, rate 1.0 | 0.980 | |"
    assert not any("ceiling" in line or "| capture off |" in line for line in lines[2:])
