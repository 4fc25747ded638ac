"""What DSPy needs to stream a program: the event pipe, listeners, progress messages, and
JSON decoding.

The wire formats live with their front ends (:mod:`dspy_serve.web.sse`, the OpenAI chunks);
this is only the DSPy side, shared by all of them.

:func:`stream_program` replaces ``dspy.streamify``, which serves only the shapes it expects:
its listeners are bound to predictor objects, so the deep copies BestOfN and Refine run stream
nothing (and a chunk from an unknown predictor fails the stream); each listener streams once,
so a ReAct streams only its first step; status messages from a thread DSPy started itself
(``dspy.Parallel``) fail; and a program returning anything but a ``Prediction`` leaves the
stream open until the deadline. Here every predictor streams, chunks are routed by the
predictor's name in the program (copies included), listeners are reusable, events may come
from any thread, and the stream always ends.
"""

from __future__ import annotations

import inspect
import math
import threading
from collections.abc import AsyncGenerator, Awaitable, Callable
from contextlib import suppress
from dataclasses import dataclass
from typing import Any, ClassVar, TypeAlias

import anyio
import anyio.from_thread
import anyio.lowlevel
import dspy
from dspy.streaming import StatusMessage, StatusMessageProvider, StreamListener, StreamResponse
from dspy.utils.callback import BaseCallback

from dspy_serve.lm.response_tags import TaggedChunk

__all__ = [
    "JsonStringDecoder",
    "PredictorNames",
    "ProgramReturned",
    "ProgressMessages",
    "stream_program",
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

    def name_of(self, instance: Any) -> str | None:
        name = self._by_id.get(id(instance))
        if name is None and isinstance(instance, dspy.Predict):
            name = self._by_signature.get(id(instance.signature))
        return name


def _is_text(annotation: Any) -> bool:
    """A field the LM writes as text, token by token: ``str``, or ``dspy.Reasoning`` (ReActV2's
    ``next_thought``; a reasoning model's own reasoning arrives as such chunks too)."""
    return annotation is str or (inspect.isclass(annotation) and issubclass(annotation, dspy.Reasoning))


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
    *,
    json_strings: bool = False,
) -> AsyncGenerator[StreamItem, None]:
    """Run ``run()`` with DSPy streaming on: token chunks of every string output field of every
    step, status messages, then exactly one :class:`ProgramReturned` (or the program's error).
    With ``json_strings`` (JSONAdapter), chunks are decoded from JSON string syntax to text.

    Iterate it to its end or close it in one task (it holds a task group).
    """
    send, receive = anyio.create_memory_object_stream[Any](math.inf)  # never blocks a sender
    loop, loop_thread = anyio.lowlevel.current_token(), threading.get_ident()

    def emit(item: Any) -> None:
        # A thread abandoned by a cancelled call may still report progress: nobody listens.
        with suppress(anyio.ClosedResourceError, anyio.BrokenResourceError, anyio.RunFinishedError):
            if threading.get_ident() == loop_thread:
                send.send_nowait(item)
            else:
                anyio.from_thread.run_sync(send.send_nowait, item, token=loop)

    progress = _Progress(provider, names, emit)
    fields: dict[tuple[str, str, object], _FieldStream] = {}

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

    def fields_of(step: str, response: object) -> list[_FieldStream]:
        # One set per LM response: dspy.Parallel runs one predictor in several threads at once.
        return [
            fields.setdefault((step, field, response), _FieldStream(step, field, json_strings))
            for field in names.string_fields.get(step, ())
        ]

    try:
        async with anyio.create_task_group() as tasks, receive:
            tasks.start_soon(produce)
            async for item in receive:
                if isinstance(item, StatusMessage):
                    yield item
                elif isinstance(item, _ProgramRaised):
                    raise item.error
                elif isinstance(item, ProgramReturned):
                    for field in fields.values():
                        if last := field.finalize():
                            yield last
                    yield item
                else:
                    response, chunk = (
                        (item.response, item.chunk) if isinstance(item, TaggedChunk) else (None, item)
                    )
                    step = progress.steps.get(getattr(chunk, "predict_id", None) or 0)
                    for field in fields_of(step, response) if step is not None else ():
                        if streamed := field.receive(chunk):
                            yield streamed
    except BaseExceptionGroup as group:
        raise _single(group) from None


class _FieldStream:
    """One output field of one LM response: DSPy's listener, and the JSON decoding."""

    def __init__(self, step: str, field: str, json_strings: bool) -> None:
        # Reusable: an LM that does not go through ServingLM has its responses' chunks untold
        # apart, so one listener hears them one after the other.
        self._listener = StreamListener(signature_field_name=field, predict_name=step, allow_reuse=True)
        self._json_strings = json_strings
        self._decoder = JsonStringDecoder()

    def receive(self, chunk: Any) -> StreamResponse | None:
        return self._decoded(self._listener.receive(chunk))

    def finalize(self) -> StreamResponse | None:
        return self._decoded(self._listener.finalize())

    def _decoded(self, item: StreamResponse | None) -> StreamResponse | None:
        if item is None or not self._json_strings:
            return item
        text = self._decoder.feed(item.chunk)
        if item.is_last_chunk:
            self._decoder = JsonStringDecoder()
        return StreamResponse(item.predict_name, item.signature_field_name, text, item.is_last_chunk)


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


class JsonStringDecoder:
    """Turn the raw JSON text of a string value, fed in arbitrary pieces, into its characters.

    Under JSONAdapter, DSPy streams a field as the LM writes it: ``"Paris is \\"big\\""``,
    quotes and escapes included. Callers want the text, so it is decoded here, holding back a
    piece only while an escape sequence (or the second half of a surrogate pair) is split across
    chunks. LMs write what they like: an invalid ``\\u`` escape passes through as written (as
    DSPy's own parser keeps it), and a lone surrogate becomes U+FFFD, so the text is always
    encodable.
    """

    _ESCAPES: ClassVar[dict[str, str]] = {
        '"': '"',
        "\\": "\\",
        "/": "/",
        "b": "\b",
        "f": "\f",
        "n": "\n",
        "r": "\r",
        "t": "\t",
    }

    def __init__(self) -> None:
        self._pending = ""
        self._opened = False
        self._closed = False

    def feed(self, raw: str) -> str:
        text, out, i = self._pending + raw, [], 0
        self._pending = ""
        while i < len(text) and not self._closed:
            char = text[i]
            if not self._opened:
                self._opened = char == '"'
                i += 1
            elif char == '"':
                self._closed = True
            elif char != "\\":
                out.append(char)
                i += 1
            elif i + 1 >= len(text):
                self._pending = text[i:]
                break
            elif text[i + 1] == "u":
                decoded, used = _unicode_escape(text, i)
                if used == 0:
                    self._pending = text[i:]
                    break
                out.append(decoded)
                i += used
            else:
                out.append(self._ESCAPES.get(text[i + 1], text[i + 1]))
                i += 2
        return "".join(out)


def _unicode_escape(text: str, i: int) -> tuple[str, int]:
    """Decode the ``\\uXXXX`` escape at ``text[i]`` (pairing surrogates): (characters, length
    used), or ("", 0) when more text is needed to tell."""
    code = _hex4(text, i)
    if code is None:
        return ("", 0) if len(text) < i + 6 and _could_be_hex(text[i + 2 :]) else (text[i : i + 2], 2)
    if not 0xD800 <= code <= 0xDBFF:
        return ("\ufffd" if 0xDC00 <= code <= 0xDFFF else chr(code)), 6
    # A high surrogate: its pair is the next escape, if it is one.
    low = _hex4(text, i + 6) if text.startswith("\\u", i + 6) else None
    if low is not None and 0xDC00 <= low <= 0xDFFF:
        return chr(0x10000 + ((code - 0xD800) << 10) + (low - 0xDC00)), 12
    if (
        low is None
        and len(text) < i + 12
        and "\\u".startswith(text[i + 6 : i + 8])
        and _could_be_hex(text[i + 8 :])
    ):
        return "", 0
    return "\ufffd", 6


def _hex4(text: str, i: int) -> int | None:
    digits = text[i + 2 : i + 6]
    if len(digits) == 4 and all(c in "0123456789abcdefABCDEF" for c in digits):
        return int(digits, 16)
    return None


def _could_be_hex(partial: str) -> bool:
    return len(partial) < 4 and all(c in "0123456789abcdefABCDEF" for c in partial)


def well_formed(text: str) -> str:
    """``text`` with every lone surrogate replaced by U+FFFD (and split pairs joined): it can be
    encoded as UTF-8. LMs and JSON parsers hand over such strings; serializing them would fail."""
    if text.isascii():
        return text
    return text.encode("utf-16", "surrogatepass").decode("utf-16", "replace")
