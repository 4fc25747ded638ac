"""API key sources: a configured source that yields no key never turns authentication off; a key
limited to some models never runs on another, on any wire."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path

import httpx
import httpx2
import pytest
from mcp import Client
from mcp.client.streamable_http import streamable_http_client
from mcp_types import TextContent

from dspy_serve import ServeSettings, create_app
from dspy_serve.errors import ModelNotAllowed
from dspy_serve.serving.keys import KeyConfigError, KeyRing, parse_key_line
from tests.support.fake_lm import FakeLM
from tests.support.servers import serving
from tests.support.settings import PROGRAMS, fake_settings


@pytest.fixture(autouse=True)
def _no_keys_in_the_environment(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.delenv("DSPY_SERVE_API_KEYS", raising=False)
    monkeypatch.delenv("DSPY_SERVE_API_KEYS_FILE", raising=False)
    monkeypatch.chdir(tmp_path)  # no .env of the repository


@pytest.mark.parametrize("text", ["", "\n\n", "# team keys\n", "  # indented:comment\n\t# tabbed\n"])
def test_a_key_file_without_keys_stops_startup(tmp_path: Path, text: str) -> None:
    keys = tmp_path / "keys.txt"
    keys.write_text(text)
    with pytest.raises(KeyConfigError, match="holds no API key"):
        KeyRing.from_settings(ServeSettings(api_keys_file=keys))


@pytest.mark.parametrize("value", ["", ",", " , ", "[]"])
def test_a_key_list_that_parses_to_no_keys_stops_startup(monkeypatch: pytest.MonkeyPatch, value: str) -> None:
    monkeypatch.setenv("DSPY_SERVE_API_KEYS", value)
    with pytest.raises(KeyConfigError, match="DSPY_SERVE_API_KEYS holds no API key"):
        KeyRing.from_settings(ServeSettings())


def test_no_key_source_at_all_means_auth_off() -> None:
    assert KeyRing.from_settings(ServeSettings()) is None


def test_an_indented_comment_is_not_a_key(tmp_path: Path) -> None:
    keys = tmp_path / "keys.txt"
    keys.write_text("web:sk-live\n   #old:sk-retired\n\t#other:sk-gone\n")
    ring = KeyRing.from_settings(ServeSettings(api_keys_file=keys))
    assert ring is not None and len(ring) == 1
    assert ring.match("sk-live") is not None
    assert ring.match("sk-retired") is None and ring.match("sk-gone") is None


def test_a_missing_key_file_is_a_one_line_error(tmp_path: Path) -> None:
    with pytest.raises(KeyConfigError) as raised:
        KeyRing.from_settings(ServeSettings(api_keys_file=tmp_path / "nope.txt"))
    assert "nope.txt" in str(raised.value) and "\n" not in str(raised.value)


@pytest.mark.parametrize(
    ("line", "sees_prompts"),
    [
        ("k:sk-1", True),
        ("k:sk-1 prompts=no", False),
        ("k:sk-1 programs=qa", False),
        ("k:sk-1 models=m prompts=yes", True),
        ("k:sk-1 programs=qa prompts=YES", True),
    ],
)
def test_only_an_unrestricted_key_sees_prompts_unless_its_line_says(line: str, sees_prompts: bool) -> None:
    assert parse_key_line(line, 1).may_see_prompts() is sees_prompts


def test_a_prompts_option_is_yes_or_no() -> None:
    with pytest.raises(ValueError, match="line 3: prompts= takes yes or no, not 'maybe'"):
        parse_key_line("k:sk-1 prompts=maybe", 3)


# --- a key limited to models never runs on another, on any wire (issue #22, item 9) ----------------

MODEL_KEYS = [
    "full:sk-full",
    "narrow:sk-narrow models=openai/fake-small",
    "ordered:sk-ordered models=openai/not-served,openai/fake-small,openai/fake-model",
    "none:sk-none models=openai/not-served",
]
# The model each key's call runs on when it names none (None: refused, 403 model_not_allowed).
RUNS_ON = {"sk-full": "fake-model", "sk-narrow": "fake-small", "sk-ordered": "fake-small", "sk-none": None}
WIRES = ["invoke", "stream", "batch", "v1", "mcp"]


def test_a_key_keeps_its_models_in_the_order_of_its_line() -> None:
    key = parse_key_line("k:sk models=b,a,b", 1)
    assert key.models == ("b", "a")
    assert key.model_for(None, ["a", "b"]) == "b", "the first of its list the server serves"
    assert key.model_for(None, ["x", "a"]) == "a"
    assert key.model_for("a", ["a", "b"]) == "a", "a model asked for is checked by may_use, not here"
    assert parse_key_line("k:sk", 1).model_for(None, ["a"]) is None, "unrestricted: the server's default"


def test_a_key_that_may_use_none_of_the_served_models_is_refused() -> None:
    with pytest.raises(ModelNotAllowed) as refused:
        parse_key_line("k:sk models=gone", 1).model_for(None, ["a", "b"])
    assert refused.value.status == 403


def call_without_a_model(wire: str, base_url: str, key: str) -> tuple[int, str]:
    """(HTTP status, or 200/403 for an MCP tool result; the response text) of a call of ``qa``
    that names no model, through ``wire``."""

    headers = {"Authorization": f"Bearer {key}"}
    ask = {"question": "Capital of France?"}
    if wire == "mcp":

        async def call() -> tuple[int, str]:
            http = httpx2.AsyncClient(headers=headers, timeout=30)
            async with Client(streamable_http_client(f"{base_url}/mcp", http_client=http)) as client:
                result = await client.call_tool("qa", ask)
            assert isinstance(result.content[0], TextContent)
            text = result.content[0].text
            return (json.loads(text)["status"] if result.is_error else 200), text

        return asyncio.run(call())
    if wire == "v1":
        body: dict[str, object] = {"model": "qa", "messages": [{"role": "user", "content": "Capital?"}]}
        response = httpx.post(f"{base_url}/v1/chat/completions", json=body, headers=headers, timeout=30)
    elif wire == "batch":
        response = httpx.post(f"{base_url}/qa/batch", json={"items": [ask]}, headers=headers, timeout=30)
    else:
        response = httpx.post(f"{base_url}/qa/{wire}", json={"inputs": ask}, headers=headers, timeout=30)
    return response.status_code, response.text


@pytest.mark.parametrize("wire", WIRES)
def test_a_key_limited_to_models_runs_on_its_own_model_when_it_names_none(
    wire: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A call that names no model runs on the first model of the key's list that the server
    serves, never on the server's default outside that list; a key whose models are all
    unserved is refused (403) before any LM call."""

    monkeypatch.setenv("OPENAI_API_KEY", "sk-provider")
    qa = f"qa={PROGRAMS / 'serving.py'}:qa"
    with FakeLM() as fake:
        fake.answers = {"answer": "Paris"}
        settings = fake_settings(fake, programs=[qa], allow_models=["openai/fake-small"], api_keys=MODEL_KEYS)
        with serving(create_app(settings)) as server:
            for key, model in RUNS_ON.items():
                fake.reset()
                fake.answers = {"answer": "Paris"}
                status, text = call_without_a_model(wire, server.base_url, key)
                if model is None:
                    assert status == 403 and "model_not_allowed" in text, (key, text)
                    assert fake.requests_started == 0, key
                else:
                    assert status == 200, (key, text)
                    assert fake.last_request["model"] == model, key
