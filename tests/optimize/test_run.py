"""``dspy-serve optimize`` on an exported file against the fake LM: held-out scores, the default
metric, and a budget that stops the run cleanly with an artifact written."""

from __future__ import annotations

import json
from pathlib import Path

import dspy
import pytest
from click.testing import CliRunner

from dspy_serve.cli import main
from dspy_serve.optimize.metric import field_match
from tests.support.fake_lm import FakeLM
from tests.support.settings import PROGRAMS

QA = f"qa={PROGRAMS / 'serving.py'}:qa"


def dataset(path: Path, n: int = 10) -> Path:
    rows = [
        {
            "call_id": f"call-{i}",
            "created_at": float(i),
            "inputs": {"question": f"Capital of country {i}?"},
            "outputs": {"answer": "Paris"},
            "correction": None,
            "score": 1.0,
            "trace": None,
        }
        for i in range(n)
    ]
    path.write_text("".join(json.dumps(row) + "\n" for row in rows))
    return path


def optimize(fake: FakeLM, *args: str) -> str:
    flags = ["--model", "openai/fake-model", "--api-base", fake.base_url, "--lm-retries", "0"]
    result = CliRunner().invoke(main, ["optimize", QA, *args, *flags], catch_exceptions=False)
    assert result.exit_code == 0, result.output
    return result.output


def test_scores_before_and_after_on_the_held_out_calls(
    fake_lm: FakeLM, provider_key: str, tmp_path: Path
) -> None:
    fake_lm.answers = {"answer": "Paris"}
    data = dataset(tmp_path / "qa.jsonl")
    said = optimize(
        fake_lm, "--data", str(data), "--optimizer", "bootstrap", "--out", str(tmp_path / "qa.json")
    )
    assert "10 calls (8 to learn from, 2 held out)" in said
    assert "held-out score: 100.0% before, 100.0% after" in said
    record = json.loads((tmp_path / "qa.provenance.json").read_text())
    assert record["split"] == {"train": 8, "heldout": 2, "seed": 0} and record["budget"]["stopped"] is None
    assert record["optimizer"]["name"] == "bootstrap" and len(record["demos"]) == 4


def test_a_budget_stops_the_run_and_still_writes_a_program(
    fake_lm: FakeLM, provider_key: str, tmp_path: Path
) -> None:
    fake_lm.answers = {"answer": "Paris"}
    data = dataset(tmp_path / "qa.jsonl")
    out = tmp_path / "qa.json"
    said = optimize(
        fake_lm, "--data", str(data), "--optimizer", "bootstrap", "--out", str(out), "--max-calls", "3"
    )
    assert "stopped early: --max-calls 3 reached" in said
    assert fake_lm.requests_started == 3
    record = json.loads((tmp_path / "qa.provenance.json").read_text())
    assert record["budget"]["lm_calls"] == 3 and record["budget"]["stopped"] == "--max-calls 3 reached"
    program = dspy.Predict("question -> answer")
    program.load(str(out))  # what was written loads


def test_harvest_makes_no_lm_call_beyond_scoring(fake_lm: FakeLM, provider_key: str, tmp_path: Path) -> None:
    data = dataset(tmp_path / "qa.jsonl")
    optimize(
        fake_lm,
        "--data",
        str(data),
        "--optimizer",
        "harvest",
        "--out",
        str(tmp_path / "h.json"),
        "--holdout",
        "0",
    )
    assert fake_lm.requests_started == 0
    state = json.loads((tmp_path / "h.json").read_text())
    assert len(state["demos"]) == 4 and state["demos"][0]["answer"] == "Paris"


def test_the_default_metric_matches_field_by_field() -> None:
    metric = field_match(["answer", "label"])
    example = dspy.Example(answer="Paris ", label="pos")
    assert metric(example, dspy.Prediction(answer="paris", label="neg")) == 0.5
    assert metric(example, dspy.Prediction(answer="paris", label="neg"), trace=[]) == 0.0
    assert metric(example, dspy.Prediction(answer="PARIS", label="pos"), trace=[]) == 1.0


def test_gepa_rewrites_instructions_from_the_users_words(
    fake_lm: FakeLM, provider_key: str, tmp_path: Path
) -> None:
    fake_lm.answers = {"answer": "Paris", "new_instruction": "Answer with the capital city only."}
    data = dataset(tmp_path / "qa.jsonl")
    rows = [json.loads(line) for line in data.read_text().splitlines()]
    rows[0] |= {"correction": {"answer": "Lima"}, "comment": "Peru's capital is Lima", "score": 0.0}
    data.write_text("".join(json.dumps(row) + "\n" for row in rows))
    out = tmp_path / "g.json"
    said = optimize(
        fake_lm, "--data", str(data), "--optimizer", "gepa", "--out", str(out), "--holdout", "0.3"
    )
    assert "gepa: 10 calls" in said and out.exists()
    reflections = [body for body in fake_lm.requests if "Peru's capital is Lima" in json.dumps(body)]
    assert reflections  # the user's comment reached the reflection LM


def test_mipro_runs_on_the_captured_calls(fake_lm: FakeLM, provider_key: str, tmp_path: Path) -> None:
    fake_lm.answers = {"answer": "Paris"}
    data = dataset(tmp_path / "qa.jsonl", n=12)
    out = tmp_path / "m.json"
    said = optimize(
        fake_lm, "--data", str(data), "--optimizer", "mipro", "--out", str(out), "--max-demos", "2"
    )
    assert "mipro: 12 calls" in said and json.loads(out.read_text())
    # MIPROv2 works its trial count out inside compile(): examples and trials counted, no total.
    search = json.loads((tmp_path / "m.provenance.json").read_text())["search"]
    assert search["trials"] > 1 and search["best_score"] == 100.0
    assert f"search: {search['examples_scored']} examples scored, {search['trials']} trials" in said


def test_optimize_on_the_embedded_model_uses_it_with_the_adapter_run_would() -> None:
    """`--model local` is the embedded model, as for `run` (LiteLLM knows no provider 'local'),
    under the JSON adapter that `run` picks for it."""
    from dspy_serve.optimize.run import _adapter
    from dspy_serve.settings import ServeSettings

    assert isinstance(_adapter(ServeSettings(model="local"))["adapter"], dspy.JSONAdapter)
    assert _adapter(ServeSettings(model="openai/gpt-4o-mini")) == {}
    assert isinstance(_adapter(ServeSettings(model="local", adapter="chat"))["adapter"], dspy.ChatAdapter)


@pytest.mark.local_model
def test_the_optimize_lm_for_local_runs_in_this_process() -> None:
    from dspy_serve.optimize.run import OptimizeJob, _lm
    from dspy_serve.settings import ServeSettings

    job = OptimizeJob("qa.py:program", "store:program", "harvest", Path("out.json"))
    lm = _lm(ServeSettings(model="local", max_tokens=8), job, None)
    assert lm.model.startswith("local/")
    assert lm("Say hi")  # answered by the embedded engine, no provider
    assert lm.calls == 1
