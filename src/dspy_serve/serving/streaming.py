"""What DSPy needs to stream a program: listeners, progress messages, and JSON decoding.

The wire formats live with their front ends (:mod:`dspy_serve.web.sse`, the OpenAI chunks);
this is only the DSPy side, shared by all of them.
"""

from __future__ import annotations

from typing import Any, ClassVar

import dspy
from dspy.streaming import StatusMessageProvider, StreamListener

__all__ = ["JsonStringDecoder", "ProgressMessages", "listeners_for"]

def listeners_for(module: dspy.Module) -> list[StreamListener]:
    """A fresh listener for every ``str`` output field of every predictor (names may repeat
    across predictors, so each listener is bound to its predictor)."""
    return [
        StreamListener(signature_field_name=field, predict=predictor, predict_name=name)
        for name, predictor in module.named_predictors()
        for field, info in predictor.signature.output_fields.items()
        if info.annotation is str
    ]


class ProgressMessages(StatusMessageProvider):
    """Say which step of the program is running, by the predictor's attribute name."""

    def __init__(self, module: dspy.Module) -> None:
        self._names = {id(predictor): name for name, predictor in module.named_predictors()}

    def module_start_status_message(self, instance: Any, inputs: dict[str, Any]) -> str | None:
        name = self._names.get(id(instance))
        if name is None:
            return None
        return "Running..." if name == "self" else f"Running {name}..."


class JsonStringDecoder:
    """Turn the raw JSON text of a string value, fed in arbitrary pieces, into its characters.

    Under JSONAdapter, DSPy streams a field as the LM writes it: ``"Paris is \\"big\\""``,
    quotes and escapes included. Callers want the text, so it is decoded here, holding back a
    piece only while an escape sequence is split across chunks.
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
                if i + 6 > len(text):
                    self._pending = text[i:]
                    break
                out.append(chr(int(text[i + 2 : i + 6], 16)))
                i += 6
            else:
                out.append(self._ESCAPES.get(text[i + 1], text[i + 1]))
                i += 2
        return "".join(out)
