"""What DSPy needs to stream a program: the event pipe, progress messages, and each LM
response's field text (:mod:`.response_fields`).

The wire formats live with their front ends (:mod:`dspy_serve.web.sse`, the OpenAI chunks);
this is only the DSPy side, shared by all of them.

:func:`stream_program` replaces ``dspy.streamify``, which serves only the shapes it expects:
its listeners are bound to predictor objects, so the deep copies BestOfN and Refine run stream
nothing (and a chunk from an unknown predictor fails the stream); each listener streams once,
so a ReAct streams only its first step; status messages from a thread DSPy started itself
(``dspy.Parallel``) fail; and a program returning anything but a ``Prediction`` leaves the
stream open until the deadline. Here every predictor streams, chunks are routed by the
predictor's name in the program (copies included), every response is read, events may come
from any thread, and the stream always ends.
"""

from __future__ import annotations

import inspect
import math
import threading
from collections.abc import AsyncGenerator, Awaitable, Callable
from contextlib import suppress
from dataclasses import dataclass
from typing import Any, TypeAlias

import anyio
import anyio.from_thread
import anyio.lowlevel
import dspy
from dspy.streaming import StatusMessage, StatusMessageProvider, StreamResponse
from dspy.utils.callback import BaseCallback

from dspy_serve.lm.response_tags import TaggedChunk
from dspy_serve.serving.response_fields import ResponseFields, text_format

__all__ = [
    "PredictorNames",
    "ProgramReturned",
    "ProgressMessages",
    "stream_program",
    "tokens_not_streamed",
    "well_formed",
]


class PredictorNames:
    """The name in the program of a predictor, or of a deep copy of one (BestOfN and Refine
    run copies; a copy keeps its original's signature class, which identifies it when no other
    predictor of the program shares that signature)."""

    def __init__(self, module: dspy.Module) -> None:
        named = module.named_predictors()
        self._by_id = {id(predictor): name for name, predictor in named}
        by_signature: dict[int, list[str]] = {}
        for name, predictor in named:
            by_signature.setdefault(id(predictor.signature), []).append(name)
        self._by_signature = {key: names[0] for key, names in by_signature.items() if len(names) == 1}
        self._keep = [predictor.signature for _, predictor in named]  # ids stay valid while kept
        self.string_fields = {
            name: [field for field, info in p.signature.output_fields.items() if _is_text(info.annotation)]
            for name, p in named
        }
        # The field a reasoning model's own reasoning fills, per step (its first dspy.Reasoning).
        self.reasoning_field = {
            name: next((f for f, i in p.signature.output_fields.items() if _is_reasoning(i.annotation)), None)
            for name, p in named
        }

    def name_of(self, instance: Any) -> str | None:
        name = self._by_id.get(id(instance))
        if name is None and isinstance(instance, dspy.Predict):
            name = self._by_signature.get(id(instance.signature))
        return name


def _is_text(annotation: Any) -> bool:
    """A field the LM writes as text, token by token: ``str``, or ``dspy.Reasoning`` (ReActV2's
    ``next_thought``; a reasoning model's own reasoning arrives as such chunks too)."""
    return annotation is str or _is_reasoning(annotation)


def _is_reasoning(annotation: Any) -> bool:
    return inspect.isclass(annotation) and issubclass(annotation, dspy.Reasoning)


class ProgressMessages(StatusMessageProvider):
    """Say which step of the program is running, by the predictor's attribute name, and which
    tool an agent calls (DSPy's default tool messages)."""

    def __init__(self, module: dspy.Module, names: PredictorNames | None = None) -> None:
        self._names = names or PredictorNames(module)

    def module_start_status_message(self, instance: Any, inputs: dict[str, Any]) -> str | None:
        name = self._names.name_of(instance)
        if name is None:
            return None
        return "Running..." if name == "self" else f"Running {name}..."


@dataclass(frozen=True)
class ProgramReturned:
    """The last item of a stream: whatever the program returned."""

    value: Any


@dataclass(frozen=True)
class _ProgramRaised:
    """The program failed: raised where the stream is read, after what it sent before, rather
    than cancelling the reader wherever it is (a reader busy writing an event would otherwise
    be cancelled outside the stream, and the error lost in a task-group exception)."""

    error: Exception


StreamItem: TypeAlias = StreamResponse | StatusMessage | ProgramReturned


class _Progress(BaseCallback):
    """DSPy's status callbacks, sent from whichever thread DSPy runs them in, and a note of
    which predictor object is which step (for routing its token chunks)."""

    def __init__(
        self, provider: StatusMessageProvider, names: PredictorNames, emit: Callable[[Any], None]
    ) -> None:
        self._provider, self._names, self._emit = provider, names, emit
        self.steps: dict[int, str | None] = {}

    def _say(self, message: str | None) -> None:
        if message:
            self._emit(StatusMessage(message))

    def on_module_start(self, call_id: str, instance: Any, inputs: dict[str, Any]) -> None:
        if isinstance(instance, dspy.Predict):
            name = self._names.name_of(instance)  # None for a step the program does not name
            self.steps[id(instance)] = name  # (Refine's feedback): its chunks are not streamed
        self._say(self._provider.module_start_status_message(instance, inputs))

    def on_module_end(self, call_id: str, outputs: Any, exception: BaseException | None = None) -> None:
        self._say(self._provider.module_end_status_message(outputs))

    def on_tool_start(self, call_id: str, instance: Any, inputs: dict[str, Any]) -> None:
        if getattr(instance, "name", None) != "finish":  # ReAct's own last step is no tool call
            self._say(self._provider.tool_start_status_message(instance, inputs))

    def on_tool_end(self, call_id: str, outputs: Any, exception: BaseException | None = None) -> None:
        if outputs != "Completed.":
            self._say(self._provider.tool_end_status_message(outputs))

    def on_lm_start(self, call_id: str, instance: Any, inputs: dict[str, Any]) -> None:
        self._say(self._provider.lm_start_status_message(instance, inputs))

    def on_lm_end(self, call_id: str, outputs: Any, exception: BaseException | None = None) -> None:
        self._say(self._provider.lm_end_status_message(outputs))


async def stream_program(
    run: Callable[[], Awaitable[Any]],
    names: PredictorNames,
    provider: StatusMessageProvider,
) -> AsyncGenerator[StreamItem, None]:
    """Run ``run()`` with DSPy streaming on: token chunks of every string output field of every
    step, status messages, then exactly one :class:`ProgramReturned` (or the program's error).

    Each LM response is read by one :class:`~.response_fields.ResponseFields` in the layout of
    the adapter that asked for it, so a field's chunks join to its parsed value; a response of
    an adapter whose layout is not known (:func:`tokens_not_streamed`) streams no tokens.

    Iterate it to its end or close it in one task (it holds a task group).
    """
    send, receive = anyio.create_memory_object_stream[Any](math.inf)  # never blocks a sender
    loop, loop_thread = anyio.lowlevel.current_token(), threading.get_ident()
    # The adapter of responses whose LM does not say (one that is not a ServingLM).
    default_adapter = dspy.settings.adapter

    def emit(item: Any) -> None:
        # A thread abandoned by a cancelled call may still report progress: nobody listens.
        with suppress(anyio.ClosedResourceError, anyio.BrokenResourceError, anyio.RunFinishedError):
            if threading.get_ident() == loop_thread:
                send.send_nowait(item)
            else:
                anyio.from_thread.run_sync(send.send_nowait, item, token=loop)

    progress = _Progress(provider, names, emit)
    # One reader per LM response (dspy.Parallel runs one predictor in several threads at once);
    # None for a response whose fields cannot be told apart.
    readers: dict[tuple[str, object], ResponseFields | None] = {}

    async def produce() -> None:
        async with send:
            callbacks = [*dspy.settings.get("callbacks", []), progress]
            # No listeners in the settings: every predictor streams, and chunks are routed here.
            try:
                with dspy.context(send_stream=send, callbacks=callbacks, stream_listeners=[]):
                    value = await run()
            except Exception as exc:
                send.send_nowait(_ProgramRaised(exc))
                return
            send.send_nowait(ProgramReturned(value))

    def tokens_of(item: Any) -> list[StreamResponse]:
        if isinstance(item, TaggedChunk):
            response, chunk, adapter = item.response, item.chunk, item.adapter
        else:
            response, chunk, adapter = None, item, default_adapter
        parts = _chunk_parts(chunk)
        if parts is None:
            return []
        predict_id, content, thought, finished = parts
        step = progress.steps.get(predict_id or 0)
        fields = names.string_fields.get(step) if step is not None else None
        if not fields or step is None:
            return []
        key = (step, response)
        if key in readers:
            reader = readers[key]
        else:
            layout = text_format(adapter)
            reader = readers[key] = ResponseFields(layout, fields) if layout is not None else None
        pieces: list[tuple[str, str]] = []
        if reader is not None:
            if content:
                pieces = reader.feed(content)
            # A reasoning model's own reasoning fills the step's dspy.Reasoning field.
            if thought and (reasoning := names.reasoning_field.get(step)):
                pieces.append((reasoning, thought))
        if finished:  # the response is complete
            del readers[key]
            if reader is not None:
                pieces += reader.close()
        return [StreamResponse(step, field, text, False) for field, text in pieces]

    try:
        async with anyio.create_task_group() as tasks, receive:
            tasks.start_soon(produce)
            while True:
                try:
                    # What is queued already is taken without a turn of the event loop (one per
                    # chunk otherwise: anyio's receive checkpoints first).
                    item = receive.receive_nowait()
                except anyio.WouldBlock:
                    try:
                        item = await receive.receive()
                    except anyio.EndOfStream:
                        break
                except anyio.EndOfStream:
                    break
                if isinstance(item, StatusMessage):
                    yield item
                elif isinstance(item, _ProgramRaised):
                    raise item.error
                elif isinstance(item, ProgramReturned):
                    for (step, _), reader in readers.items():
                        for field, text in reader.close() if reader is not None else ():
                            yield StreamResponse(step, field, text, False)
                    readers.clear()
                    yield item
                else:
                    for token in tokens_of(item):
                        yield token
    except BaseExceptionGroup as group:
        raise _single(group) from None


def _chunk_parts(chunk: Any) -> tuple[int | None, str | None, str | None, bool] | None:
    """(predictor id, text, reasoning text, last chunk of its response) of a streamed chunk, or
    None for a chunk with no choice. DSPy's native engine sends dicts: read as such, a chunk
    costs a tenth of the attribute lookups (a missing one raises and catches an exception)."""
    if isinstance(chunk, dict):
        choices = chunk.get("choices")
        if not choices:
            return None
        choice = choices[0]
        delta = choice.get("delta") or {}
        return (
            chunk.get("predict_id"),
            delta.get("content"),
            delta.get("reasoning_content"),
            bool(choice.get("finish_reason")),
        )
    try:  # LiteLLM's ModelResponseStream
        choice = chunk.choices[0]
    except (AttributeError, IndexError, TypeError):
        return None
    delta = getattr(choice, "delta", None)
    return (
        getattr(chunk, "predict_id", None),
        getattr(delta, "content", None),
        getattr(delta, "reasoning_content", None),
        bool(getattr(choice, "finish_reason", None)),
    )


def tokens_not_streamed(adapter: Any) -> str | None:
    """Why a program running under ``adapter`` (None: DSPy's default) streams no tokens, or
    None when its ``str`` fields stream. Its streams still send status events and the prediction."""
    if text_format(adapter) is not None:
        return None
    name = type(adapter).__name__
    if isinstance(adapter, dspy.TwoStepAdapter):
        return (
            f"{name}: the main LM writes free text and a second LM extracts the fields from it "
            "afterwards, so no field's text exists while the LM streams"
        )
    return (
        f"{name} lays out output fields in its own way (not ChatAdapter's, JSONAdapter's or "
        "XMLAdapter's), so a field's text cannot be told apart while the LM streams"
    )


def _single(group: BaseExceptionGroup[Any]) -> BaseException:
    """The one failure inside (nested) task-group exceptions, else the group itself."""
    leaves: list[BaseException] = []
    pending: list[BaseException] = [group]
    while pending:
        current = pending.pop()
        if isinstance(current, BaseExceptionGroup):
            pending.extend(current.exceptions)
        else:
            leaves.append(current)
    return leaves[0] if len(leaves) == 1 else group


def well_formed(text: str) -> str:
    """``text`` with every lone surrogate replaced by U+FFFD (and split pairs joined): it can be
    encoded as UTF-8. LMs and JSON parsers hand over such strings; serializing them would fail."""
    if text.isascii():
        return text
    return text.encode("utf-16", "surrogatepass").decode("utf-16", "replace")
