"""The example programs import offline, load their artifacts, and run on a scripted DummyLM.

Each program is run under both ChatAdapter and JSONAdapter (the adapter used with the embedded
model), checking the output types and that the artifact's demos reach the LM as few-shot turns.
"""

from __future__ import annotations

import importlib.util
import json
import socket
import typing
from pathlib import Path
from types import ModuleType
from typing import Any, get_args

import dspy
import pytest
from dspy.utils import DummyLM

EXAMPLES = Path(__file__).resolve().parents[1] / "examples"
ADAPTERS = [dspy.ChatAdapter, dspy.JSONAdapter]


def import_example(name: str) -> ModuleType:
    """A fresh import of examples/<name>.py: tests never share a program object."""
    spec = importlib.util.spec_from_file_location(f"dspy_serve_test_example_{name}", EXAMPLES / f"{name}.py")
    assert spec is not None
    assert spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def load_example(name: str) -> tuple[ModuleType, dspy.Module]:
    module = import_example(name)
    module.program.load(str(EXAMPLES / f"{name}.json"))
    return module, module.program


def saved_demos(name: str) -> dict[str, list[dict[str, Any]]]:
    state = json.loads((EXAMPLES / f"{name}.json").read_text())
    state.pop("metadata")
    if "demos" in state:  # a bare dspy.Predict saves its own state, not {"self": state}
        return {"self": state["demos"]}
    return {predictor: predictor_state["demos"] for predictor, predictor_state in state.items()}


def run_with(adapter_cls: type[dspy.Adapter], answers: list[dict[str, Any]]) -> tuple[DummyLM, Any]:
    lm = DummyLM(answers, adapter=adapter_cls())
    # The demo checks read the LM's history: keep it on even if a served app turned it off.
    return lm, dspy.context(lm=lm, adapter=adapter_cls(), disable_history=False, max_history_size=100)


def assert_demos_sent(messages: list[dict[str, Any]], demos: list[dict[str, Any]], inputs: list[str]) -> None:
    """Every demo is a user turn with its inputs followed by an assistant turn with its outputs."""
    assert messages[0]["role"] == "system"
    assert len(messages) == 1 + 2 * len(demos) + 1
    for demo, user, assistant in zip(demos, messages[1::2], messages[2::2], strict=False):
        assert (user["role"], assistant["role"]) == ("user", "assistant")
        for field, value in demo.items():
            turn = user if field in inputs else assistant
            for text in _leaf_strings(value):
                assert text in turn["content"], f"demo field {field!r} value {text!r} not sent"


def _leaf_strings(value: Any) -> list[str]:
    if isinstance(value, dict):
        return [s for v in value.values() for s in _leaf_strings(v)]
    if isinstance(value, list):
        return [s for v in value for s in _leaf_strings(v)]
    return [] if value is None else [str(value)]


# --- import and artifacts -------------------------------------------------------------------


@pytest.mark.parametrize("name", ["qa", "classify", "extract", "rag"])
def test_imports_offline_without_an_lm(name: str, monkeypatch: pytest.MonkeyPatch) -> None:
    def no_network(*args: Any, **kwargs: Any) -> None:
        raise AssertionError("an example opened a network connection at import")

    monkeypatch.setattr(socket.socket, "connect", no_network)
    configured = dspy.settings.lm
    module = import_example(name)
    assert isinstance(module.program, dspy.Module)
    assert dspy.settings.lm is configured  # no dspy.configure() at import
    assert all(predictor.lm is None for predictor in module.program.predictors())


@pytest.mark.parametrize("name", ["qa", "classify", "extract", "rag"])
def test_artifact_loads_its_demos(name: str) -> None:
    _, program = load_example(name)
    demos = saved_demos(name)
    loaded = dict(program.named_predictors())
    assert set(loaded) == set(demos)
    for predictor_name, predictor in loaded.items():
        assert 1 <= len(predictor.demos) <= 3
        assert [dict(demo) for demo in predictor.demos] == demos[predictor_name]
        assert predictor.signature.instructions  # instructions travel with the artifact


def test_make_artifacts_regenerates_the_committed_files(tmp_path: Path) -> None:
    make_artifacts = import_example("make_artifacts")
    for path in make_artifacts.main(tmp_path):
        fresh, committed = json.loads(path.read_text()), json.loads((EXAMPLES / path.name).read_text())
        fresh.pop("metadata"), committed.pop("metadata")  # python/dspy versions of whoever ran it
        assert fresh == committed, f"examples/{path.name} is stale: run examples/make_artifacts.py"


# --- running the programs ----------------------------------------------------------------------


@pytest.mark.parametrize("adapter_cls", ADAPTERS)
def test_qa(adapter_cls: type[dspy.Adapter]) -> None:
    _, program = load_example("qa")
    lm, ctx = run_with(adapter_cls, [{"answer": "Paris"}])
    with ctx:
        result = program(question="What is the capital of France?")
    assert result.answer == "Paris"
    messages = lm.history[-1]["messages"]
    assert_demos_sent(messages, saved_demos("qa")["self"], inputs=["question"])
    assert "What is the capital of France?" in messages[-1]["content"]


@pytest.mark.parametrize("adapter_cls", ADAPTERS)
def test_classify(adapter_cls: type[dspy.Adapter]) -> None:
    module, program = load_example("classify")
    answer = {"reasoning": "'Awful' is a complaint.", "sentiment": "negative", "confidence": 0.8}
    lm, ctx = run_with(adapter_cls, [answer])
    with ctx:
        result = program(text="The service was awful.")
    labels = get_args(module.ClassifySentiment.output_fields["sentiment"].annotation)
    assert set(labels) == {"positive", "negative", "neutral"}
    assert result.sentiment in labels
    assert result.sentiment == "negative"
    assert isinstance(result.confidence, float)
    assert result.confidence == 0.8
    assert isinstance(result.reasoning, str)
    assert_demos_sent(lm.history[-1]["messages"], saved_demos("classify")["predict"], inputs=["text"])


@pytest.mark.parametrize("adapter_cls", ADAPTERS)
def test_extract(adapter_cls: type[dspy.Adapter]) -> None:
    module, program = load_example("extract")
    contact = {"name": "Ann Lee", "email": None, "company": "Acme Corp"}
    lm, ctx = run_with(adapter_cls, [{"contact": contact}])
    with ctx:
        result = program(text="Ann Lee runs the design team at Acme Corp.")
    assert isinstance(result.contact, module.Contact)
    assert result.contact.model_dump() == contact
    assert_demos_sent(lm.history[-1]["messages"], saved_demos("extract")["self"], inputs=["text"])


RAG_ANSWERS = [
    {"query": "Mars moons"},
    {"reasoning": "The fact about Mars names two moons.", "answer": "Two: Phobos and Deimos"},
]


def check_rag(module: ModuleType, lm: DummyLM, result: dspy.Prediction) -> None:
    assert result.answer == "Two: Phobos and Deimos"
    assert isinstance(result.context, list)
    assert len(result.context) == module.program.k
    assert all(isinstance(passage, str) and passage in module.CORPUS for passage in result.context)
    assert result.context[0] == "Mars has two small moons, Phobos and Deimos."
    demos = saved_demos("rag")
    query_call, answer_call = (entry["messages"] for entry in lm.history[-2:])
    assert_demos_sent(query_call, demos["write_query"], inputs=["question"])
    assert_demos_sent(answer_call, demos["generate.predict"], inputs=["context", "question"])
    assert all(passage in answer_call[-1]["content"] for passage in result.context)


@pytest.mark.parametrize("adapter_cls", ADAPTERS)
def test_rag(adapter_cls: type[dspy.Adapter]) -> None:
    module, program = load_example("rag")
    lm, ctx = run_with(adapter_cls, RAG_ANSWERS)
    with ctx:
        result = program(question="How many moons does Mars have?")
    check_rag(module, lm, result)


@pytest.mark.asyncio
@pytest.mark.parametrize("adapter_cls", ADAPTERS)
async def test_rag_async(adapter_cls: type[dspy.Adapter], monkeypatch: pytest.MonkeyPatch) -> None:
    module, program = load_example("rag")

    def sync_forward(**kwargs: Any) -> None:
        raise AssertionError("acall() must run aforward(), not forward()")

    monkeypatch.setattr(program, "forward", sync_forward)
    lm, ctx = run_with(adapter_cls, RAG_ANSWERS)
    with ctx:
        result = await program.acall(question="How many moons does Mars have?")
    check_rag(module, lm, result)


def test_rag_forward_is_typed_for_serving() -> None:
    rag = import_example("rag").RAG
    assert typing.get_type_hints(rag.forward) == {"question": str}
    assert typing.get_type_hints(rag.aforward) == {"question": str}
    assert "Solar System" in (rag.__doc__ or "")


def test_retriever_ranks_rare_terms_first() -> None:
    rag = import_example("rag")
    assert rag.retrieve("Which planet has rings?", k=1) == [
        "Saturn has the most extensive ring system, made mostly of ice."
    ]
    assert rag.retrieve("anything", k=5) == rag.CORPUS[:5]  # no overlap: corpus order
    assert len(rag.CORPUS) == len(set(rag.CORPUS)) == 15
