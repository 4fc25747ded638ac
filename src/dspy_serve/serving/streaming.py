"""What DSPy needs to stream a program: listeners, progress messages, and JSON decoding.

The wire formats live with their front ends (:mod:`dspy_serve.web.sse`, the OpenAI chunks);
this is only the DSPy side, shared by all of them.
"""

from __future__ import annotations

from typing import Any, ClassVar

import dspy
from dspy.streaming import StatusMessageProvider, StreamListener

__all__ = ["JsonStringDecoder", "ProgressMessages", "listeners_for", "well_formed"]


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
