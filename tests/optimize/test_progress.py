"""The optimizer's search, as ``dspy-serve optimize`` shows it: examples scored (through the
metric), trials and the best full score (through DSPy's Evaluate callbacks)."""

from __future__ import annotations

import inspect
import json
import os
import pty
import select
import subprocess
import time
from pathlib import Path
from typing import Any

import dspy
from dspy.utils import DummyLM

from dspy_serve.optimize.progress import SearchProgress
from tests.optimize.test_run import QA, dataset
from tests.support.cli import CLI, cli_env
from tests.support.fake_lm import FakeLM


def right(example: dspy.Example, prediction: Any, trace: Any = None) -> float:
    return float(example.answer == prediction.answer)


def test_the_metric_and_evaluate_count_examples_and_trials_and_keep_the_best_full_score() -> None:
    seen: list[tuple[int, int, float | None]] = []
    search = SearchProgress(lambda s: seen.append((s.scored, s.trials, s.best)))
    metric = search.counted(right)
    assert inspect.signature(metric) == inspect.signature(right)  # optimizers read it (GEPA binds it)
    full = [dspy.Example(question=f"q{i}", answer="Paris" if i < 2 else "Lima").with_inputs("question")
            for i in range(4)]  # fmt: skip
    program = dspy.Predict("question -> answer")
    with dspy.context(lm=DummyLM([{"answer": "Paris"}] * 10), callbacks=[search]):
        dspy.Evaluate(devset=full, metric=metric, num_threads=1)(program)  # 2 of 4 right: 50%
        dspy.Evaluate(devset=full[:2], metric=metric, num_threads=1)(program)  # a minibatch: 100%
    assert (search.scored, search.trials) == (6, 2)
    assert (search.best, search.best_of) == (50.0, 4)  # a minibatch's 100% is not comparable
    assert [scored for scored, _, _ in seen] == sorted(scored for scored, _, _ in seen)
    assert search.describe() == "6 examples scored, 2 trials, best 50.0% (on 4)"


def test_each_optimizer_reports_its_search_in_the_summary_and_the_provenance(
    fake_lm: FakeLM, provider_key: str, tmp_path: Path
) -> None:
    fake_lm.answers = {"answer": "Paris", "new_instruction": "Answer with the capital city only."}
    data = dataset(tmp_path / "qa.jsonl")
    said = {}
    for optimizer in ("bootstrap", "gepa"):
        said[optimizer] = _optimize(fake_lm, data, optimizer, tmp_path / f"{optimizer}.json")
    # Bootstrap (one round, --max-demos 4) stops once it has 4 demos: 4 of its 7 training calls.
    assert "search: 4/7 examples scored" in said["bootstrap"].stdout
    bootstrap = json.loads((tmp_path / "bootstrap.provenance.json").read_text())["search"]
    assert bootstrap == {"examples_scored": 4, "trials": 0, "best_score": None, "best_on_examples": 0}
    gepa = json.loads((tmp_path / "gepa.provenance.json").read_text())["search"]
    assert gepa["trials"] > 1 and gepa["best_score"] == 100.0 and gepa["best_on_examples"] == 3
    light = dspy.GEPA(
        metric=lambda gold, pred, trace, name, pred_trace: 0.0, auto="light", reflection_lm=DummyLM([])
    )
    budget = light.auto_budget(1, 6, 3)  # GEPA's own total: 1 predictor, 6 candidates, 3 held out
    assert f"search: {gepa['examples_scored']}/{budget} examples scored, {gepa['trials']} trials" in (
        said["gepa"].stdout
    )
    assert "examples scored" not in said["gepa"].stderr  # not a terminal: no live line


def _argv(fake: FakeLM, data: Path, optimizer: str, out: Path) -> list[str]:
    return [
        *CLI, "optimize", QA, "--data", str(data), "--optimizer", optimizer, "--out", str(out),
        "--holdout", "0.3", "--model", "openai/fake-model", "--api-base", fake.base_url, "--lm-retries", "0",
    ]  # fmt: skip


def _optimize(
    fake: FakeLM, data: Path, optimizer: str, out: Path, **popen: Any
) -> subprocess.CompletedProcess[str]:
    ran = subprocess.run(
        _argv(fake, data, optimizer, out), env=cli_env(), capture_output=True, text=True, timeout=300
    )
    assert ran.returncode == 0, ran.stderr
    return ran


def test_on_a_terminal_a_live_line_shows_the_examples_scored_trials_and_best_score(
    fake_lm: FakeLM, provider_key: str, tmp_path: Path
) -> None:
    fake_lm.answers = {"answer": "Paris", "new_instruction": "Answer with the capital city only."}
    fake_lm.latency = 0.01  # a few seconds of search: rich redraws ten times a second
    data = dataset(tmp_path / "qa.jsonl")
    argv = _argv(fake_lm, data, "gepa", tmp_path / "g.json")
    leader, follower = pty.openpty()
    env = {**cli_env(), "TERM": "xterm", "COLUMNS": "200"}
    process = subprocess.Popen(argv, env=env, stdout=subprocess.PIPE, stderr=follower, text=True)
    os.close(follower)
    screen = b""
    deadline = time.monotonic() + 300
    while time.monotonic() < deadline:
        ready, _, _ = select.select([leader], [], [], 0.5)
        if ready:
            try:
                chunk = os.read(leader, 65536)
            except OSError:  # the command closed the terminal
                break
            if not chunk:
                break
            screen += chunk
        elif process.poll() is not None:
            break
    os.close(leader)
    stdout, _ = process.communicate(timeout=60)
    assert process.returncode == 0, screen.decode(errors="replace")[-2000:]
    shown = screen.decode(errors="replace")
    assert "optimizing with gepa on 7 calls" in shown
    assert "examples scored" in shown and "trials, best 100.0% (on 3)" in shown
    assert "search:" in stdout  # the summary, on stdout as before
