"""A call's prompts and raw LM responses (`options.prompts`): only when the operator exposes them,
and for a restricted API key only when its key line allows it; never a provider credential."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import httpx
import pytest

from dspy_serve import create_app
from tests.support.endpoints import read_events
from tests.support.fake_lm import FakeLM
from tests.support.servers import serving
from tests.support.settings import PROGRAMS, fake_settings

SERVING = PROGRAMS / "serving.py"
QUESTION = {"question": "Capital of France?"}
ASK = {"prompts": True}


def two_step(fake_lm: FakeLM, name: str = "TwoStepAsync", **settings: Any) -> Any:
    fake_lm.answers = {"query": "france capital", "answer": "Paris"}
    return create_app(fake_settings(fake_lm, programs=[f"{SERVING}:{name}"], **settings))


def post(url: str, body: dict[str, Any], key: str | None = None) -> httpx.Response:
    headers = {"Authorization": f"Bearer {key}"} if key else {}
    return httpx.post(url, json=body, headers=headers, timeout=30)


def stream(url: str, options: dict[str, Any], key: str | None = None) -> tuple[int, list[tuple[str, Any]]]:
    headers = {"Authorization": f"Bearer {key}"} if key else {}
    body = {"inputs": QUESTION, "options": options}
    with httpx.stream("POST", f"{url}/stream", json=body, headers=headers, timeout=20) as response:
        if response.status_code != 200:
            response.read()
            return response.status_code, [("refused", response.json())]
        return 200, read_events(response)


def three_ways(url: str, key: str | None = None) -> dict[str, Any]:
    """What invoke, stream (its prediction event) and batch (each item) return when asked for prompts."""
    invoked = post(f"{url}/invoke", {"inputs": QUESTION, "options": ASK}, key)
    status, events = stream(url, ASK, key)
    batched = post(f"{url}/batch", {"items": [QUESTION, QUESTION], "options": ASK}, key)
    return {"invoke": invoked, "stream": (status, events), "batch": batched}


def assert_two_step_prompts(prompts: list[dict[str, Any]], provider_key: str) -> None:
    """The rewrite call, then the answer call: each its messages and the LM's raw text."""
    assert [call["model"] for call in prompts] == ["openai/fake-model"] * 2
    rewrite, answer = prompts
    for call in prompts:
        assert [m["role"] for m in call["messages"]] == ["system", "user"]
        assert set(call) == {"model", "messages", "response"}, "messages and response only"
    assert "Capital of France?" in rewrite["messages"][1]["content"]
    assert "`query`" in rewrite["messages"][0]["content"]
    assert "france capital" in rewrite["response"][0]
    assert "france capital" in answer["messages"][1]["content"], "the second prompt holds the first answer"
    assert "Paris" in answer["response"][0]
    assert provider_key not in json.dumps(prompts)


@pytest.mark.parametrize("name", ["TwoStepAsync", "TwoStepSync"])
def test_asked_for_prompts_each_lm_call_comes_with_its_messages_and_raw_response(
    fake_lm: FakeLM, provider_key: str, name: str
) -> None:
    with serving(two_step(fake_lm, name, expose_prompts=True)) as server:
        [described] = httpx.get(f"{server.base_url}/programs").json()
        got = three_ways(f"{server.base_url}/{name}")
    assert described["prompts_available"] is True
    invoked, (status, events), batched = got["invoke"], got["stream"], got["batch"]
    assert invoked.status_code == 200, invoked.text
    assert invoked.json()["outputs"] == {"answer": "Paris"}
    assert_two_step_prompts(invoked.json()["prompts"], provider_key)
    assert status == 200 and events[-1][0] == "prediction", events
    assert_two_step_prompts(events[-1][1]["prompts"], provider_key)
    assert batched.status_code == 200, batched.text
    for item in batched.json()["items"]:
        assert_two_step_prompts(item["prompts"], provider_key)  # each item its own calls, not its sibling's


def test_prompts_are_absent_unless_asked(fake_lm: FakeLM, provider_key: str) -> None:
    with serving(two_step(fake_lm, expose_prompts=True)) as server:
        url = f"{server.base_url}/TwoStepAsync"
        plain = post(f"{url}/invoke", {"inputs": QUESTION})
        declined = post(f"{url}/invoke", {"inputs": QUESTION, "options": {"prompts": False}})
        batched = post(f"{url}/batch", {"items": [QUESTION]})
        _, events = stream(url, {})
    assert plain.status_code == declined.status_code == batched.status_code == 200
    assert "prompts" not in plain.json() and "prompts" not in declined.json()
    assert "prompts" not in batched.json()["items"][0]
    assert "prompts" not in events[-1][1]


def test_asking_for_prompts_when_they_are_off_is_a_typed_403(fake_lm: FakeLM, provider_key: str) -> None:
    with serving(two_step(fake_lm, expose_trace=True)) as server:
        [described] = httpx.get(f"{server.base_url}/programs").json()
        got = three_ways(f"{server.base_url}/TwoStepAsync")
    assert described["prompts_available"] is False
    refused = [got["invoke"].json(), got["stream"][1][0][1], got["batch"].json()]
    assert [got["invoke"].status_code, got["stream"][0], got["batch"].status_code] == [403] * 3
    for problem in refused:
        assert problem["code"] == "prompts_not_exposed"
        assert problem["errors"][0]["loc"] == ["options", "prompts"]
        assert "--expose-prompts" in problem["detail"]
    assert fake_lm.requests == [], "refused before any LM work"


KEYS = """
open:sk-open-key
open-but-no:sk-open-no prompts=no
narrow:sk-narrow-key programs=TwoStepAsync
narrow-allowed:sk-narrow-allowed models=openai/fake-model prompts=yes
"""


@pytest.mark.parametrize(
    ("key", "allowed"),
    [("sk-open-key", True), ("sk-open-no", False), ("sk-narrow-key", False), ("sk-narrow-allowed", True)],
)
def test_a_restricted_key_sees_prompts_only_when_its_key_line_allows_it(
    fake_lm: FakeLM, provider_key: str, tmp_path: Path, key: str, allowed: bool
) -> None:
    keys = tmp_path / "keys"
    keys.write_text(KEYS)
    with serving(two_step(fake_lm, expose_prompts=True, api_keys_file=keys)) as server:
        [described] = httpx.get(
            f"{server.base_url}/programs", headers={"Authorization": f"Bearer {key}"}
        ).json()
        got = three_ways(f"{server.base_url}/TwoStepAsync", key)
    assert described["prompts_available"] is allowed
    if allowed:
        assert got["invoke"].status_code == got["batch"].status_code == got["stream"][0] == 200
        assert_two_step_prompts(got["invoke"].json()["prompts"], provider_key)
        assert_two_step_prompts(got["stream"][1][-1][1]["prompts"], provider_key)
    else:
        assert [got["invoke"].status_code, got["stream"][0], got["batch"].status_code] == [403] * 3
        problem = got["invoke"].json()
        assert problem["code"] == "prompts_not_exposed" and "prompts=yes" in problem["detail"]


def test_a_call_showing_its_prompts_is_its_own_run_never_a_cached_answer(
    fake_lm: FakeLM, provider_key: str
) -> None:
    app = two_step(fake_lm, expose_prompts=True, response_cache="memory", temperature=0.0)
    with serving(app) as server:
        url = f"{server.base_url}/TwoStepAsync/invoke"
        first = post(url, {"inputs": QUESTION})
        shown = post(url, {"inputs": QUESTION, "options": ASK})
    assert first.status_code == shown.status_code == 200
    assert len(fake_lm.requests) == 4, "the second call ran its own two LM calls"
    assert len(shown.json()["prompts"]) == 2
