"""ProgramRunner in-process, on DSPy's DummyLM: where a program's code runs, its trace, its tools."""

from __future__ import annotations

import threading
from typing import Any

import anyio
import dspy
import pytest
from dspy.utils import DummyLM

from dspy_serve.call_scope import CallScope
from dspy_serve.serving.loader import LoadedProgram
from dspy_serve.serving.offload import ServedTool, has_own_callbacks, keep_tools_off_loop
from dspy_serve.serving.runner import CALL_TRACE_STEPS, ProgramRunner
from dspy_serve.serving.schema import derive_interface


def runner_for(module: dspy.Module, signature: str | None = None) -> ProgramRunner:
    interface = derive_interface("p", module, signature, max_input_chars=10_000)
    loaded = LoadedProgram(name="p", target="test", module=module, artifact=None)
    return ProgramRunner(loaded, interface, anyio.CapacityLimiter(4), None)


async def call(runner: ProgramRunner, lm: dspy.BaseLM, **inputs: Any) -> dict[str, Any]:
    result = await runner.call(inputs, lm=lm, scope=CallScope.starting_now(10))
    return result.outputs


class TraceRecorder(dspy.Module):
    """Records the trace its BestOfN leaves behind (DSPy extends the caller's trace with it)."""

    def __init__(self, steps: int = 1) -> None:
        super().__init__()
        self.best = dspy.BestOfN(
            dspy.Predict("question -> answer"), N=2, reward_fn=lambda a, p: 0.0, threshold=1
        )
        self.steps = steps
        self.traces: list[list[Any]] = []

    def forward(self, question: str) -> dspy.Prediction:
        for _ in range(self.steps):
            prediction = self.best(question=question)
        self.traces.append(list(dspy.settings.trace))
        return prediction


async def test_each_call_has_a_trace_of_its_own() -> None:
    program = TraceRecorder()
    runner = runner_for(program)
    lm = DummyLM([{"answer": "a"}] * 10)
    process_wide = len(dspy.settings.trace)
    await call(runner, lm, question="one")
    await call(runner, lm, question="two")
    assert [[inputs["question"] for _, inputs, _ in trace] for trace in program.traces] == [["one"], ["two"]]
    assert len(dspy.settings.trace) == process_wide, "nothing leaks into the process-wide trace"


async def test_a_calls_trace_is_bounded() -> None:
    program = TraceRecorder(steps=CALL_TRACE_STEPS + 5)
    lm = DummyLM([{"answer": "a"}] * (2 * CALL_TRACE_STEPS + 10))
    await call(runner_for(program), lm, question="q")
    assert len(program.traces[0]) == CALL_TRACE_STEPS


async def test_a_traced_call_names_bestofn_copies_and_returns_json_only_when_asked() -> None:
    runner = runner_for(TraceRecorder())
    lm = DummyLM([{"answer": "a"}, {"answer": "b"}] * 2)
    plain = await runner.call({"question": "q"}, lm=lm, scope=CallScope.starting_now(10))
    traced = await runner.call({"question": "q"}, lm=lm, scope=CallScope.starting_now(10), trace=True)
    assert plain.trace is None
    # BestOfN ran deep copies of its predictor and kept the best attempt's step: named as the original.
    assert traced.trace == [
        {"predictor": "best.module", "inputs": {"question": "q"}, "outputs": {"answer": "a"}}
    ]


# --- tools and callbacks ----------------------------------------------------------------------

loop_threads: set[int] = set()
tool_threads: list[int] = []


def record_thread(city: str) -> str:
    """Where am I?"""
    tool_threads.append(threading.get_ident())
    return f"sunny in {city}"


async def async_weather(city: str) -> str:
    """Async weather."""
    tool_threads.append(threading.get_ident())
    return f"rainy in {city}"


def react_lm(tool: str) -> DummyLM:
    return DummyLM(
        [
            {"next_thought": "look", "next_tool_name": tool, "next_tool_args": {"city": "Paris"}},
            {"next_thought": "done", "next_tool_name": "finish", "next_tool_args": {}},
            {"reasoning": "r", "answer": "ok"},
        ]
    )


async def test_react_runs_on_the_loop_and_its_sync_tools_in_threads() -> None:
    agent = dspy.ReAct("question -> answer", tools=[record_thread, async_weather])
    runner = runner_for(agent)
    assert runner.native_async
    assert all(isinstance(tool, ServedTool) for tool in agent.tools.values())
    tool_threads.clear()
    loop_thread = threading.get_ident()
    await call(runner, react_lm("record_thread"), question="q")
    await call(runner, react_lm("async_weather"), question="q")
    sync_thread, async_thread = tool_threads
    assert sync_thread != loop_thread, "a sync tool must not run on the event loop"
    assert async_thread == loop_thread, "an async tool stays on the event loop"


class Researcher(dspy.Module):
    def __init__(self) -> None:
        super().__init__()
        self.react = dspy.ReAct("question -> answer", tools=[async_weather])

    def forward(self, question: str) -> dspy.Prediction:
        return self.react(question=question)


async def test_an_async_tool_of_a_sync_program_runs_on_the_loop() -> None:
    runner = runner_for(Researcher())
    assert not runner.native_async
    tool_threads.clear()
    outputs = await call(runner, react_lm("async_weather"), question="q")
    assert outputs["answer"] == "ok"
    assert tool_threads == [threading.get_ident()]


def test_tool_subclasses_and_programs_without_tools_are_left_alone() -> None:
    class MyTool(dspy.Tool):
        pass

    agent = dspy.ReAct("question -> answer", tools=[MyTool(record_thread)])
    assert keep_tools_off_loop(agent) == 1  # ReAct's own finish tool only
    assert type(agent.tools["record_thread"]) is MyTool
    assert keep_tools_off_loop(dspy.Predict("q -> a")) == 0


class Logger(dspy.utils.BaseCallback):
    def __init__(self) -> None:
        self.threads: list[int] = []

    def on_module_start(self, call_id: str, instance: Any, inputs: dict[str, Any]) -> None:
        self.threads.append(threading.get_ident())


async def test_a_program_with_callbacks_of_its_own_runs_in_a_thread() -> None:
    logger = Logger()
    program = dspy.ChainOfThought("question -> answer", callbacks=[logger])
    runner = runner_for(program)
    assert has_own_callbacks(program) and not runner.native_async
    await call(runner, DummyLM([{"reasoning": "r", "answer": "a"}]), question="q")
    assert logger.threads and threading.get_ident() not in logger.threads


class AwaitsAnRLM(dspy.Module):
    def __init__(self) -> None:
        super().__init__()
        self.rlm = dspy.RLM("context, question -> answer", interpreter_factory=dspy.LocalInterpreter)

    async def aforward(self, context: str, question: str) -> dspy.Prediction:
        return await self.rlm.acall(context=context, question=question)


def test_a_program_holding_an_rlm_runs_in_a_thread_its_interpreter_blocks() -> None:
    assert not runner_for(dspy.RLM("context, question -> answer")).native_async
    assert not runner_for(AwaitsAnRLM()).native_async, "its own aforward awaits the RLM's"
    assert runner_for(dspy.ReActV2("question -> answer", tools=[len])).native_async


@pytest.fixture(autouse=True)
def _no_configured_lm() -> None:
    assert dspy.settings.lm is None
