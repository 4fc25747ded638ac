"""The programs DSPy's tutorials write, served over real HTTP on the fake LM through every front
end: /NAME/invoke, /NAME/batch, /NAME/stream, /v1/chat/completions and MCP.

One server serves them all (as an operator would), so each case is one request, not a startup.
"""

from __future__ import annotations

import subprocess
import sys
from base64 import b64encode
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

import httpx
import pytest

from dspy_serve import create_app
from tests.support.cli import CLI, cli_env
from tests.support.dspy_prompts import prompt_text
from tests.support.endpoints import ENDPOINTS, batch, chat, invoke, mcp_call, outputs_via, stream_events
from tests.support.fake_lm import FakeLM, ServerError
from tests.support.programs import tutorial_programs as tp
from tests.support.saved_programs import save_user_program
from tests.support.servers import ServerThread, serving
from tests.support.settings import FAKE_KEY, PROGRAMS, fake_settings

TUTORIAL = PROGRAMS / "tutorial_programs.py"
# What the refusal of a bare dspy.MultiChainComparison suggests, with the type of `completions` given.
MCC_SIGNATURE = "completions: list[dict], question -> rationale, answer"
HELD_MODELS = ["openai/drafter-model", "openai/strong-model", "openai/reviewer-model"]


def tutorial(name: str) -> str:
    return f"{name}={TUTORIAL}:{name}"


@dataclass(frozen=True)
class Case:
    inputs: dict[str, Any]
    answers: dict[str, Any]
    outputs: dict[str, Any] | Callable[[dict[str, Any]], None]
    endpoints: list[str] = field(default_factory=lambda: list(ENDPOINTS))


def tool_calls_proposed(outputs: dict[str, Any]) -> None:
    (call,) = outputs["outputs"]["tool_calls"]
    assert (call["name"], call["args"]) == ("get_weather", {"city": "Paris"})


WEATHER_TOOL = {
    "name": "get_weather",
    "description": "The weather in a city.",
    "args": {"city": {"type": "string"}},
}

CASES: dict[str, Case] = {
    "rag": Case(
        {"question": "Capital of France?"},
        {"reasoning": "It says so.", "response": "Paris"},
        {"context": tp.PASSAGES, "response": "Paris"},
    ),
    "multihop": Case(
        {"claim": "Paris is in France."},
        {"reasoning": "r", "query": "Paris", "new_notes": ["Paris is French."], "titles": ["Paris"]},
        {"notes": ["Paris is French.", "Paris is French."], "titles": ["Paris"]},
    ),
    "summarize": Case(
        {"document": "A long text."}, {"reasoning": "r", "summary": "Short."}, {"summary": "Short."}
    ),
    "nested": Case(
        {"question": "Capital of France?"},
        {"answer": "Paris"},
        {"answer": "Paris", "draft": {"answer": "Paris"}, "source": {"title": "Atlas", "year": 2024}},
    ),
    "write_code": Case(
        {"task": "Add two numbers."},
        {"reasoning": "r", "code": "def add(a, b):\n    return a + b"},
        {"reasoning": "r", "code": "def add(a, b):\n    return a + b"},
    ),
    "speaker": Case(
        {"topic": "the sea"},
        {"line": "Waves."},
        {"line": "Waves.", "audio": {"data": tp.SILENT_WAV, "audio_format": "wav"}},
    ),
    "two_models": Case({"question": "Capital of France?"}, {"answer": "Paris"}, {"answer": "Paris"}),
    "module_level_lm": Case({"question": "Capital of France?"}, {"answer": "Paris"}, {"answer": "Paris"}),
    "bare": Case({"question": "Capital of France?"}, {"answer": "Paris"}, {"answer": "Paris"}),
    "plan_tool_calls": Case(
        {"question": "Weather in Paris?", "tools": [WEATHER_TOOL]},
        {"outputs": {"tool_calls": [{"name": "get_weather", "args": {"city": "Paris"}}]}},
        tool_calls_proposed,
        endpoints=["invoke", "batch", "stream", "mcp"],  # two required inputs: not a chat (see v1 test)
    ),
    "describe_image": Case(
        {"image": {"url": "https://example.com/cat.png"}},
        {"caption": "A cat."},
        {"caption": "A cat."},
        endpoints=["invoke", "batch", "stream", "mcp"],  # an image is not a chat message
    ),
    "summarize_file": Case(
        {
            "document": {
                "file_data": f"data:text/plain;base64,{b64encode(b'Paris is in France.').decode()}",
                "filename": "notes.txt",
            }
        },
        {"summary": "Where Paris is."},
        {"summary": "Where Paris is."},
        endpoints=["invoke", "batch", "stream", "mcp"],  # a file is not a chat message
    ),
    "saved_by_reference": Case(
        {"question": "2+2?"},
        {"reasoning": "r", "answer": "4"},
        {"context": ["passage 0 about 2+2?", "passage 1 about 2+2?"], "answer": "4"},
    ),
    "saved_by_value": Case(
        {"question": "2+2?"},
        {"reasoning": "r", "answer": "4"},
        {"context": ["passage 0 about 2+2?", "passage 1 about 2+2?"], "answer": "4"},
    ),
    "synthesize": Case(
        {"topic": "the sea"},
        {"line": "Waves."},
        {"line": "Waves.", "audio": {"data": tp.SILENT_WAV, "audio_format": "wav"}},
    ),
    "mcc": Case(
        {
            "completions": [{"rationale": "It says so.", "answer": "Paris"}] * 3,
            "question": "Capital of France?",
        },
        {"rationale": "All agree.", "answer": "Paris"},
        {"rationale": "All agree.", "answer": "Paris"},
        endpoints=["invoke", "batch", "stream", "mcp"],  # two required inputs: not a chat
    ),
    "review": Case(
        {"draft": "A long draft."},
        {"feedback": "Too long.", "matches": True, "revised": "Short."},
        {"feedback": "Too long.", "matches": True, "revised": "Short."},
    ),
}

# Programs whose file configures its own adapter (dspy.configure(adapter=...)): served together by
# a server of their own, since configuring DSPy is process-wide.
ADAPTER_PROGRAMS = {
    "two_step": PROGRAMS / "two_step_adapter.py",
    "json_configured": PROGRAMS / "json_adapter.py",
}
DESCRIPTION = 'Zürich: the "Limmat" city 🚀, naïve ë \\ end'
ADAPTER_CASES: dict[str, Case] = {
    "two_step": Case({"question": "Capital of France?"}, {"answer": "Paris"}, {"answer": "Paris"}),
    "json_configured": Case(
        {"place": "Zürich"},
        {"description": DESCRIPTION, "capital": False, "motto": "Ë 🚀"},
        {"description": DESCRIPTION, "capital": False, "motto": "Ë 🚀"},
    ),
}


@pytest.fixture(scope="module")
def server(_fake_lm_server: FakeLM, tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerThread]:
    root = tmp_path_factory.mktemp("saved")
    by_reference, reference_dir = save_user_program(root / "ref", by_value=False)
    by_value, value_dir = save_user_program(root / "value", by_value=True)
    programs = [tutorial(name) for name in CASES if not name.startswith("saved_")]
    programs += [tutorial("broken_contract")]
    programs += [f"saved_by_reference={by_reference}", f"saved_by_value={by_value}"]
    settings = fake_settings(
        _fake_lm_server,
        programs=programs,
        artifacts=[f"saved_by_reference={reference_dir}", f"saved_by_value={value_dir}"],
        allow_pickle=True,
        signatures=["bare=question -> answer", f"mcc={MCC_SIGNATURE}"],
        allow_models=HELD_MODELS,
    )
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("OPENAI_API_KEY", FAKE_KEY)
        with serving(create_app(settings)) as running:
            yield running


@pytest.fixture(scope="module")
def adapter_server(_fake_lm_server: FakeLM) -> Iterator[ServerThread]:
    """The programs that configure their own adapter, served with DSPy's settings as they were
    before their files were imported: each program keeps the adapter its file configured.

    A real server imports program files first, before anything configures DSPy; earlier tests
    of this process have configured it from other threads, so its owner is forgotten for the
    import (and restored)."""
    settings = sys.modules["dspy.dsp.utils.settings"]
    saved = dict(settings.main_thread_config)
    owner = (settings.config_owner_thread_id, settings.config_owner_async_task)

    def restore() -> None:
        settings.config_owner_thread_id, settings.config_owner_async_task = owner
        settings.main_thread_config.clear()
        settings.main_thread_config.update(saved)

    programs = [f"{name}={path}:{name}" for name, path in ADAPTER_PROGRAMS.items()]
    try:
        with pytest.MonkeyPatch.context() as patch:
            patch.setenv("OPENAI_API_KEY", FAKE_KEY)
            patch.setenv("FAKE_LM_BASE_URL", _fake_lm_server.base_url)
            settings.config_owner_thread_id = settings.config_owner_async_task = None
            app = create_app(fake_settings(_fake_lm_server, programs=programs))
            restore()  # the other programs of this process keep DSPy's default adapter
            with serving(app) as running:
                yield running
    finally:
        restore()


SERVED = [(program, endpoint) for program, case in CASES.items() for endpoint in case.endpoints]


@pytest.mark.parametrize(("program", "endpoint"), SERVED, ids=[f"{p}-{e}" for p, e in SERVED])
def test_serves(server: ServerThread, fake_lm: FakeLM, program: str, endpoint: str) -> None:
    case = CASES[program]
    fake_lm.answers = case.answers

    outputs = outputs_via(endpoint, server.base_url, program, case.inputs)

    if callable(case.outputs):
        case.outputs(outputs)
    else:
        assert outputs == case.outputs


ADAPTER_SERVED = [
    (program, endpoint) for program, case in ADAPTER_CASES.items() for endpoint in case.endpoints
]


@pytest.mark.parametrize(("program", "endpoint"), ADAPTER_SERVED, ids=[f"{p}-{e}" for p, e in ADAPTER_SERVED])
def test_serves_a_program_with_its_own_adapter(
    adapter_server: ServerThread, fake_lm: FakeLM, program: str, endpoint: str
) -> None:
    case = ADAPTER_CASES[program]
    fake_lm.answers = case.answers

    outputs = outputs_via(endpoint, adapter_server.base_url, program, case.inputs)

    assert outputs == case.outputs


def streamed_text(events: list[tuple[str, Any]]) -> dict[str, str]:
    """Each field's token chunks, joined; every chunk checked to be free of adapter markers."""
    joined: dict[str, str] = {}
    for event, data in events:
        if event == "token":
            assert "[[ ##" not in data["chunk"] and "]]" not in data["chunk"], data
            joined[data["field"]] = joined.get(data["field"], "") + data["chunk"]
    return joined


def test_a_str_field_before_a_non_str_one_streams_only_its_own_text(
    server: ServerThread, fake_lm: FakeLM
) -> None:
    # DSPy's own StreamListener ends `feedback` with "\n\n[[ ## matches ## ]]\nTrue".
    fake_lm.answers = {"feedback": "Too long, cut it.", "matches": True, "revised": "Short."}
    fake_lm.chunk_sizes = [1, 2]  # token-sized: the next field's marker spans more than 10 chunks

    events = stream_events(server.base_url, "review", {"draft": "A long draft."})

    assert "[[ ## feedback ## ]]" in prompt_text(fake_lm.requests[-1])  # the chat adapter's layout
    assert events[-1][0] == "prediction", events
    assert streamed_text(events) == {"feedback": "Too long, cut it.", "revised": "Short."}


def test_a_two_step_adapter_program_streams_its_prediction_and_says_why_no_tokens(
    adapter_server: ServerThread, fake_lm: FakeLM
) -> None:
    fake_lm.answers = {"answer": "Paris"}

    events = stream_events(adapter_server.base_url, "two_step", {"question": "Capital of France?"})
    described = httpx.get(f"{adapter_server.base_url}/programs/two_step").json()

    assert [event for event, _ in events] == ["status", "prediction"]
    assert events[-1][1]["outputs"] == {"answer": "Paris"}
    assert described["token_streaming"]["streamed"] is False
    assert "TwoStepAdapter" in described["token_streaming"]["reason"]
    assert len(fake_lm.requests) == 2  # the main LM, then the extraction LM


def test_a_program_configuring_the_json_adapter_streams_decoded_text(
    adapter_server: ServerThread, fake_lm: FakeLM
) -> None:
    case = ADAPTER_CASES["json_configured"]
    fake_lm.answers = case.answers
    fake_lm.chunk_chars = 3  # escapes such as \u00fc and \ud83d\ude80 split across chunks

    events = stream_events(adapter_server.base_url, "json_configured", case.inputs)
    described = httpx.get(f"{adapter_server.base_url}/programs/json_configured").json()

    assert "Respond with a JSON object" in prompt_text(fake_lm.requests[-1])  # its own adapter, pinned

    assert events[-1][0] == "prediction", events
    assert events[-1][1]["outputs"] == case.outputs
    assert streamed_text(events) == {"description": DESCRIPTION, "motto": "Ë 🚀"}
    assert described["token_streaming"] == {"streamed": True, "reason": None}


def test_untyped_returned_fields_are_any_json_and_output_fields_keep_their_types(
    server: ServerThread,
) -> None:
    schemas = {p["name"]: p["output_schema"] for p in httpx.get(f"{server.base_url}/programs").json()}
    rag, multihop = schemas["rag"]["properties"], schemas["multihop"]["properties"]
    assert "type" not in rag["context"] and "Any JSON" in rag["context"]["description"]  # an input's name
    assert rag["response"]["type"] == "string"
    assert multihop["titles"] == {"items": {"type": "string"}, "title": "Titles", "type": "array"}
    assert schemas["write_code"]["properties"]["code"]["type"] == "string"  # dspy.Code is sent as a string
    audio = schemas["speaker"]["$defs"]["Audio"]
    assert audio["properties"] == {
        "data": {"title": "Data", "type": "string"},
        "audio_format": {"title": "Audio Format", "type": "string"},
    }
    # Audio that forward builds itself (no predictor's field, no declared interface) is typed too.
    assert schemas["synthesize"]["properties"]["audio"] == {"$ref": "#/$defs/Audio"}
    assert schemas["synthesize"]["$defs"]["Audio"] == audio


def test_outputs_that_break_the_programs_own_schema_are_invalid_program_output_with_usage(
    server: ServerThread, fake_lm: FakeLM
) -> None:
    fake_lm.answers = {"count": "several"}

    response = invoke(server.base_url, "broken_contract", {"word": "strawberry"})
    items = batch(server.base_url, "broken_contract", [{"word": "a"}, {"word": 1}]).json()["items"]
    events = stream_events(server.base_url, "broken_contract", {"word": "strawberry"})

    problem = response.json()
    assert response.status_code == 500
    assert (problem["code"], problem["title"]) == (
        "invalid_program_output",
        "The program's outputs do not match its schema",
    )
    assert [error["loc"] for error in problem["errors"]] == [["outputs", "count"]]
    assert problem["usage"]["openai/fake-model"]["total_tokens"] > 0  # spent, so reported
    assert items[0]["error"]["code"] == "invalid_program_output"
    assert items[0]["usage"]["openai/fake-model"]["total_tokens"] > 0
    assert items[1]["error"]["status"] == 422 and items[1]["usage"] == {}
    assert events[-1][0] == "error" and events[-1][1]["code"] == "invalid_program_output"


def test_a_batch_item_failing_a_dspy_types_own_validator_is_a_per_item_422(
    server: ServerThread, fake_lm: FakeLM
) -> None:
    fake_lm.answers = {"caption": "A cat."}
    good = {"image": {"url": "https://example.com/cat.png"}}
    bad = {"image": {"url": "not-an-image"}}  # dspy.Image raises ValueError

    response = batch(server.base_url, "describe_image", [good, bad])
    single = invoke(server.base_url, "describe_image", bad)

    assert response.status_code == 200, response.text
    first, second = response.json()["items"]
    assert first["outputs"] == {"caption": "A cat."}
    assert second["error"]["status"] == 422
    assert second["error"]["errors"][0]["loc"] == ["items", 1, "image"]
    assert single.status_code == 422


def test_lms_the_program_holds_go_through_the_service_uncached(server: ServerThread, fake_lm: FakeLM) -> None:
    fake_lm.answers = {"answer": "Paris"}
    for _ in range(2):  # the same request twice: DSPy's cache would answer the second
        assert invoke(server.base_url, "two_models", {"question": "Capital?"}).status_code == 200
        assert invoke(server.base_url, "module_level_lm", {"question": "Capital?"}).status_code == 200

    models = [request["model"] for request in fake_lm.requests]
    assert models.count("drafter-model") == 2  # called directly: self.drafter(prompt)
    assert models.count("strong-model") == 2  # through dspy.context(lm=self.strong)
    assert models.count("reviewer-model") == 2  # a module-level LM named in forward
    assert all(
        "Draft an answer to: Capital?" in prompt_text(r)
        for r in fake_lm.requests
        if r["model"] == "drafter-model"
    )


@pytest.mark.parametrize(
    ("program", "held"),
    [("two_models", "attribute 'drafter'"), ("module_level_lm", "module-level 'REVIEWER'")],
)
def test_an_lm_the_program_holds_outside_the_allow_list_stops_the_start(
    fake_lm: FakeLM, provider_key: str, program: str, held: str
) -> None:
    with pytest.raises(ValueError, match=f"{held}.* has its own LM 'openai/.*-model'.*--allow-model"):
        create_app(fake_settings(fake_lm, programs=[tutorial(program)]))
    assert fake_lm.requests_started == 0


def test_tool_descriptions_serve_and_the_schema_documents_stay_valid(server: ServerThread) -> None:
    openapi = httpx.get(f"{server.base_url}/openapi.json")
    programs = httpx.get(f"{server.base_url}/programs")
    assert openapi.status_code == 200 and programs.status_code == 200
    (plan,) = [p for p in programs.json() if p["name"] == "plan_tool_calls"]
    assert plan["input_schema"]["properties"]["tools"]["items"] == {"$ref": "#/$defs/ToolDescription"}
    tool = plan["input_schema"]["$defs"]["ToolDescription"]
    assert set(tool["properties"]) == {"name", "description", "args"}
    assert "ToolDescription" in openapi.json()["components"]["schemas"]
    missing_name = invoke(server.base_url, "plan_tool_calls", {"question": "q", "tools": [{"args": {}}]})
    assert missing_name.status_code == 422
    assert missing_name.json()["errors"][0]["loc"] == ["body", "inputs", "tools", 0, "name"]


def test_a_named_file_reaches_the_lm_through_dspys_litellm_fallback(
    server: ServerThread, fake_lm: FakeLM
) -> None:
    # DSPy cannot make a dspy.File with a filename canonical for a custom engine (our pooled one);
    # as its own engine="auto" does, the call then goes through LiteLLM, name and data included.
    case = CASES["summarize_file"]
    fake_lm.answers = case.answers

    response = invoke(server.base_url, "summarize_file", case.inputs)

    assert response.status_code == 200, response.text
    sent = [part for message in fake_lm.requests[-1]["messages"] for part in message["content"] or []]
    (file_part,) = [part for part in sent if isinstance(part, dict) and part.get("type") == "file"]
    assert file_part["file"] == case.inputs["document"]


@pytest.mark.parametrize("program", ["plan_tool_calls", "describe_image", "summarize_file"])
def test_a_program_that_cannot_take_a_chat_message_is_refused_on_v1(
    server: ServerThread, program: str
) -> None:
    response = chat(server.base_url, program, "Weather in Paris?")
    assert response.status_code == 400
    assert f"POST /{program}/invoke" in response.json()["error"]["message"]  # where to go instead


def test_a_bare_value_with_a_declared_output_streams_to_its_end(
    server: ServerThread, fake_lm: FakeLM
) -> None:
    fake_lm.answers = {"answer": "Paris"}
    events = stream_events(server.base_url, "bare", {"question": "Capital?"})
    assert [event for event, _ in events if event in ("prediction", "error")] == ["prediction"]
    assert events[-1][1]["outputs"] == {"answer": "Paris"}


@pytest.mark.parametrize(
    ("target", "flags", "says"),
    [
        ("bare", [], "cannot tell which fields JustTheAnswer.forward() returns"),
        ("kwargs_rag", [], "KwargsRAG.forward(**kwargs) does not say which inputs it takes"),
        ("kwargs_rag_with_signature", [], "it computes ['context'] itself"),
        ("mcc", [], 'mcc: serve it with --signature mcc="completions, question -> rationale, answer"'),
    ],
)
def test_a_program_whose_interface_cannot_be_known_exits_3_naming_the_declaration(
    fake_lm: FakeLM, target: str, flags: list[str], says: str
) -> None:
    argv = [*CLI, "run", tutorial(target), "--model", "openai/fake-model", "--api-base", fake_lm.base_url]
    done = subprocess.run(argv + flags, env=cli_env(), capture_output=True, text=True, timeout=120)
    assert done.returncode == 3, done.stderr
    assert says in done.stderr
    assert "serve_signature" in done.stderr and "--signature" in done.stderr
    assert "Traceback" not in done.stderr


def test_mcp_reports_an_invalid_program_output_as_a_typed_tool_error(
    server: ServerThread, fake_lm: FakeLM
) -> None:
    fake_lm.answers = {"count": "several"}
    is_error, problem = mcp_call(server.base_url, "broken_contract", {"word": "strawberry"})
    assert is_error and problem["code"] == "invalid_program_output"


def test_saved_program_directories_are_served_as_saved(server: ServerThread, fake_lm: FakeLM) -> None:
    fake_lm.answers = {"reasoning": "r", "answer": "4"}
    for name in ("saved_by_reference", "saved_by_value"):
        assert invoke(server.base_url, name, {"question": "3+3?"}).status_code == 200
    # The saved demo (2+2?) reached the LM: the program is the saved one, not a fresh instance.
    assert len(fake_lm.requests) == 2
    assert all("2+2?" in prompt_text(request) for request in fake_lm.requests)


def test_a_call_failing_after_spending_tokens_reports_them(server: ServerThread, fake_lm: FakeLM) -> None:
    fake_lm.answers = {"answer": "Paris"}
    fake_lm.when("draft", ServerError(500))  # the second step of DraftThenAnswer fails; the first was paid

    response = invoke(server.base_url, "nested", {"question": "Capital?"})
    item = batch(server.base_url, "nested", [{"question": "Capital?"}]).json()["items"][0]

    assert response.status_code == 502
    assert response.json()["usage"]["openai/fake-model"]["total_tokens"] > 0
    assert item["error"]["code"] == "upstream_error"
    assert item["usage"]["openai/fake-model"]["total_tokens"] > 0
