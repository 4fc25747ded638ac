"""The whole loop over real HTTP against the fake LM, on SQLite and on PostgreSQL: serve with
capture on, send traffic, give feedback (corrections, and one that does not fit), export,
optimize with harvest and with BootstrapFewShot, then serve each artifact and see the LM's
prompt carry demos taken from the captured traffic."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any

import httpx
from click.testing import CliRunner

from dspy_serve import create_app
from dspy_serve.cli import main
from tests.support.dspy_prompts import prompt_text
from tests.support.fake_lm import FakeLM
from tests.support.servers import serving
from tests.support.settings import PROGRAMS, fake_settings
from tests.support.stores import wait_for_rows

TWO = f"two={PROGRAMS / 'serving.py'}:TwoStepAsync"
COUNTRIES = ["France", "Spain", "Peru", "Japan", "Kenya", "Chile", "Norway", "Egypt", "India", "Ghana"]


def answers(body: dict[str, Any]) -> dict[str, str]:
    """The fake LM's answers: a query naming the country, and the capital's placeholder."""
    text = prompt_text(body).rsplit("[[ ## question ## ]]", 1)[-1]
    country = next((c for c in COUNTRIES if c in text), "nowhere")
    return {"query": f"capital city of {country}", "answer": f"Capital of {country}"}


def cli(*args: str) -> str:
    result = CliRunner().invoke(main, list(args), catch_exceptions=False)
    assert result.exit_code == 0, result.output
    return result.output


def test_the_loop_from_traffic_to_a_better_served_program(
    fake_lm: FakeLM, provider_key: str, store_url: str, tmp_path: Path
) -> None:
    fake_lm.answers = answers
    lm_flags = ["--model", "openai/fake-model", "--api-base", fake_lm.base_url, "--store", store_url]
    settings = fake_settings(fake_lm, programs=[TWO], capture=["two"], capture_trace=True, store=store_url)
    # 1-3. Serve with capture on, send traffic, rate it.
    with serving(create_app(settings)) as server:
        calls = {}
        for country in COUNTRIES:
            body = {"inputs": {"question": f"What is the capital of {country}?"}}
            response = httpx.post(f"{server.base_url}/two/invoke", json=body, timeout=30)
            assert response.status_code == 200, response.text
            calls[country] = response.json()["call_id"]
        post = f"{server.base_url}/two/feedback"
        for country in COUNTRIES[:6]:
            assert (
                httpx.post(post, json={"call_id": calls[country], "score": True}, timeout=30).status_code
                == 200
            )
        corrected = {
            "call_id": calls["Peru"],
            "score": False,
            "outputs": {"answer": "Lima"},
            "comment": "wrong",
        }
        assert httpx.post(post, json=corrected, timeout=30).status_code == 200
        invalid = httpx.post(
            post, json={"call_id": calls["Kenya"], "outputs": {"answer": ["Nairobi"]}}, timeout=30
        )
        assert invalid.status_code == 422 and invalid.json()["errors"][0]["loc"] == [
            "body",
            "outputs",
            "answer",
        ]
        assert httpx.post(post, json={"call_id": calls["Egypt"], "score": 0}, timeout=30).status_code == 200
        wait_for_rows(store_url, "SELECT call_id FROM calls", len(COUNTRIES))

    # 4. Export: an immutable snapshot, its sha256 in the manifest, each row linking to its call.
    exported = tmp_path / "two.jsonl"
    output = cli("data", "export", "two", "--out", str(exported), *lm_flags)
    rows = [json.loads(line) for line in exported.read_text().splitlines()]
    manifest = json.loads((tmp_path / "two.jsonl.manifest.json").read_text())
    assert len(rows) == len(COUNTRIES) == manifest["rows"]
    assert manifest["sha256"] == hashlib.sha256(exported.read_bytes()).hexdigest() in output
    assert {row["call_id"] for row in rows} == set(calls.values())
    peru = next(row for row in rows if row["call_id"] == calls["Peru"])
    assert peru["correction"] == {"answer": "Lima"} and peru["score"] == 0.0 and peru["trace"]
    assert not (exported.stat().st_mode & 0o222)  # read-only

    # 5. Optimize with harvest (from the store) and with BootstrapFewShot (from the export).
    harvested, booted = tmp_path / "harvest.json", tmp_path / "bootstrap.json"
    said = cli(
        "optimize", TWO, "--data", "store:two", "--optimizer", "harvest", "--out", str(harvested), *lm_flags
    )
    assert "held-out score" in said and "demos: " in said
    cli("optimize", TWO, "--data", str(exported), "--optimizer", "bootstrap", "--out", str(booted), *lm_flags)
    for artifact in (harvested, booted):
        provenance = json.loads(artifact.with_name(artifact.stem + ".provenance.json").read_text())
        assert provenance["data"]["rows"] == len(COUNTRIES)
        assert provenance["demos"] and {d["call_id"] for d in provenance["demos"]} <= set(calls.values())
        assert provenance["versions"]["dspy"] and provenance["scores"]["before"] > 0  # the LM answered
        assert provenance["scores"]["after"] > 0 and provenance["budget"]["stopped"] is None
    harvest_record = json.loads((tmp_path / "harvest.provenance.json").read_text())
    boot_record = json.loads((tmp_path / "bootstrap.provenance.json").read_text())
    assert harvest_record["budget"]["lm_calls"] < boot_record["budget"]["lm_calls"]  # harvest only scores
    assert calls["Egypt"] not in {d["call_id"] for d in harvest_record["demos"]}  # rated 0: not a demo
    state = json.loads(harvested.read_text())
    assert "Lima" in json.dumps(state["answer.predict"]["demos"] if "answer.predict" in state else state)

    # 6. Each artifact loads and serves, and the LM's prompt now carries the captured demos.
    for artifact in (harvested, booted):
        served = fake_settings(fake_lm, programs=[TWO], artifacts=[f"two={artifact}"])
        with serving(create_app(served)) as server:
            body = {"inputs": {"question": "What is the capital of Italy?"}}
            response = httpx.post(f"{server.base_url}/two/invoke", json=body, timeout=30)
            assert response.status_code == 200, response.text
            prompt = prompt_text(fake_lm.last_request)
        assert "Italy" in prompt
        assert any(f"What is the capital of {country}?" in prompt for country in COUNTRIES), prompt
