"""Split one LM response, as it streams, into the text of its output fields.

DSPy's ``StreamListener`` guesses a field's end from a window of recent chunks: the chat
format's ``[[ ## next ## ]]`` marker and the next field's value leak into a ``str`` field
followed by a non-``str`` one, JSON arrives as raw JSON text, every chunk is joined and searched
again for every field, and any adapter but three fails the stream. Here each response is read
once, by a small state machine per format that follows the adapter's own parser:

- chat (``ChatAdapter``): lines; a line whose stripped text starts with ``[[ ## name ## ]]``
  opens a section; a field's value is its section's lines joined by ``\\n``, stripped, and the
  first section of a name wins (``ChatAdapter.parse``);
- JSON (``JSONAdapter``): the top-level object's string values, decoded;
- XML (``XMLAdapter``): the top-level elements' text, entities decoded, line ends normalized,
  stripped (``XMLAdapter.parse`` through ElementTree).

So the tokens of a field always join to the value the adapter parses, and never hold a marker
or another field's text. A text is held back only while it could still turn into a marker (a
line starting ``[[ ## ``, an unfinished escape or entity) or is trailing whitespace the parser
would strip.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Collection
from enum import Enum
from typing import Any

import dspy

__all__ = ["ResponseFields", "TextFormat", "text_format"]


class TextFormat(Enum):
    CHAT = "chat"
    JSON = "json"
    XML = "xml"


_KNOWN = (
    (dspy.XMLAdapter, TextFormat.XML),
    (dspy.JSONAdapter, TextFormat.JSON),
    (dspy.ChatAdapter, TextFormat.CHAT),
)


def text_format(adapter: Any) -> TextFormat | None:
    """How ``adapter`` (None: DSPy's default, ChatAdapter) lays out output fields, when its
    parser is one of DSPy's three text formats; None for any other (``TwoStepAdapter``, an
    adapter of one's own that parses differently): its tokens cannot be told apart."""
    if adapter is None:
        return TextFormat.CHAT
    for known, found in _KNOWN:
        if isinstance(adapter, known):
            return found if type(adapter).parse is known.parse else None
    return None


Emit = Callable[[str, str], None]


class _Field:
    """One field's text as it goes out: leading whitespace dropped, trailing whitespace held
    until more text follows (the chat and XML adapters strip values)."""

    __slots__ = ("held", "name", "started")

    def __init__(self, name: str) -> None:
        self.name, self.started, self.held = name, False, ""

    def text(self, piece: str, out: list[tuple[str, str]]) -> None:
        if not self.started:
            piece = piece.lstrip()
            if not piece:
                return
            self.started = True
        stripped = piece.rstrip()
        if not stripped:
            self.held += piece
            return
        out.append((self.name, self.held + stripped if self.held else stripped))
        self.held = piece[len(stripped) :]


class _WholeField(_Field):
    """A field whose value is not stripped (JSONAdapter's): its text goes out as it comes."""

    __slots__ = ()

    def text(self, piece: str, out: list[tuple[str, str]]) -> None:
        out.append((self.name, piece))


class ResponseFields:
    """Feed the content chunks of one response; each call returns ``(field, text)`` pieces of
    the ``fields`` asked for, in order. :meth:`close` at the end of the response."""

    def __init__(self, text_format: TextFormat, fields: Collection[str]) -> None:
        self._reader: _ChatReader | _JsonReader | _XmlReader = _READERS[text_format](frozenset(fields))

    def feed(self, text: str) -> list[tuple[str, str]]:
        out: list[tuple[str, str]] = []
        if text:
            self._reader.feed(text, out)
        return out

    def close(self) -> list[tuple[str, str]]:
        out: list[tuple[str, str]] = []
        self._reader.close(out)
        return out


# --- chat: [[ ## name ## ]] sections ------------------------------------------------------------

_HEADER = re.compile(r"\[\[ ## (\w+) ## \]\]")  # ChatAdapter's field_header_pattern
_HEADER_START = "[[ ## "
# str.splitlines' line boundaries: ChatAdapter.parse splits on all of them and joins with "\n".
_LINE_BREAK = re.compile("[\n\r\x0b\x0c\x1c\x1d\x1e\x85\u2028\u2029]")


class _ChatReader:
    def __init__(self, fields: frozenset[str]) -> None:
        self._fields = fields
        self._seen: set[str] = set()
        self._field: _Field | None = None  # the section being streamed, if any
        self._line = ""  # the current line, while it could still be a header
        self._free = False  # the current line cannot be a header: its text goes out as it comes
        self._lines = 0  # lines of the current section so far (for the "\n" between them)
        self._skip_lf = False

    def feed(self, text: str, out: list[tuple[str, str]]) -> None:
        if self._skip_lf:  # the "\n" of a "\r\n" split across chunks
            self._skip_lf = False
            text = text[1:] if text.startswith("\n") else text
        if self._free and not _LINE_BREAK.search(text):
            if self._field is not None and text:
                self._field.text(text, out)
            return
        text, self._line = self._line + text, ""
        start = 0
        for match in _LINE_BREAK.finditer(text):
            end = match.start()
            if end < start:
                continue  # the "\n" of a "\r\n"
            self._end_line(text[start:end], out)
            start = end + 1
            if text[end] == "\r":
                if start == len(text):
                    self._skip_lf = True
                elif text[start] == "\n":
                    start += 1
        self._partial(text[start:], out)

    def _partial(self, text: str, out: list[tuple[str, str]]) -> None:
        """Text of a line not yet ended: out at once unless it could still be a header."""
        if self._free:
            if self._field is not None and text:
                self._field.text(text, out)
            return
        head = text.lstrip()
        if head and not (_HEADER_START.startswith(head) or head.startswith(_HEADER_START)):
            self._free = True
            self._content(text, out)
        else:
            self._line = text

    def _end_line(self, rest: str, out: list[tuple[str, str]]) -> None:
        line = self._line + rest if not self._free else rest
        if self._free:
            if self._field is not None and line:
                self._field.text(line, out)
        else:
            stripped = line.strip()
            match = _HEADER.match(stripped) if stripped.startswith(_HEADER_START) else None
            if match is not None:
                self._open(match.group(1))
                # As ChatAdapter.parse: the match's end, taken in the unstripped line.
                if remaining := line[match.end() :].strip():
                    self._content(remaining, out)
            else:
                self._content(line, out)
        self._line, self._free = "", False

    def _open(self, name: str) -> None:
        new = name in self._fields and name not in self._seen
        self._seen.add(name)
        self._field = _Field(name) if new else None
        self._lines = 0

    def _content(self, text: str, out: list[tuple[str, str]]) -> None:
        """The start of a content line of the current section."""
        if self._field is None:
            return
        if self._lines:
            self._field.text("\n", out)
        self._lines += 1
        if text:
            self._field.text(text, out)

    def close(self, out: list[tuple[str, str]]) -> None:
        if self._line or self._free:
            self._end_line("", out)


# --- JSON: the top-level object's string values ---------------------------------------------------

_ESCAPES = {'"': '"', "\\": "\\", "/": "/", "b": "\b", "f": "\f", "n": "\n", "r": "\r", "t": "\t"}
_HEX = frozenset("0123456789abcdefABCDEF")
_STRING_SPECIAL = re.compile(r'["\\]')
_NESTED_SPECIAL = re.compile(r'["\\{}\[\]]')


class _JsonString:
    """A JSON string's characters, fed in pieces after its opening quote. Holds back only an
    escape split across pieces (or a surrogate waiting for its pair). Invalid ``\\u`` escapes
    pass through as written, lone surrogates become U+FFFD: the text is always encodable."""

    __slots__ = ("closed", "pending")

    def __init__(self) -> None:
        self.pending, self.closed = "", False

    def feed(self, raw: str) -> tuple[str, int]:
        """(decoded text, characters of ``raw`` used); stops after the closing quote."""
        carried = len(self.pending)
        text, self.pending = self.pending + raw, ""
        out: list[str] = []
        i, size = 0, len(text)
        while i < size:
            special = _STRING_SPECIAL.search(text, i)
            if special is None:
                out.append(text[i:])
                i = size
                break
            j = special.start()
            if j > i:
                out.append(text[i:j])
            if text[j] == '"':
                self.closed = True
                i = j + 1
                break
            if j + 1 >= size:
                self.pending = text[j:]
                i = size
                break
            if text[j + 1] != "u":
                out.append(_ESCAPES.get(text[j + 1], text[j + 1]))
                i = j + 2
                continue
            decoded, used = _unicode_escape(text, j)
            if used == 0:
                self.pending = text[j:]
                i = size
                break
            out.append(decoded)
            i = j + used
        return "".join(out), max(0, i - carried)


def _unicode_escape(text: str, i: int) -> tuple[str, int]:
    """Decode the ``\\uXXXX`` escape at ``text[i]`` (pairing surrogates): (characters, length
    used), or ("", 0) when more text is needed to tell."""
    code = _hex4(text, i)
    if code is None:
        return ("", 0) if len(text) < i + 6 and _could_be_hex(text[i + 2 :]) else (text[i : i + 2], 2)
    if not 0xD800 <= code <= 0xDBFF:
        return ("\ufffd" if 0xDC00 <= code <= 0xDFFF else chr(code)), 6
    low = _hex4(text, i + 6) if text.startswith("\\u", i + 6) else None
    if low is not None and 0xDC00 <= low <= 0xDFFF:
        return chr(0x10000 + ((code - 0xD800) << 10) + (low - 0xDC00)), 12
    unfinished = len(text) < i + 12 and "\\u".startswith(text[i + 6 : i + 8])
    if low is None and unfinished and _could_be_hex(text[i + 8 :]):
        return "", 0
    return "\ufffd", 6


def _hex4(text: str, i: int) -> int | None:
    digits = text[i + 2 : i + 6]
    return int(digits, 16) if len(digits) == 4 and all(c in _HEX for c in digits) else None


def _could_be_hex(partial: str) -> bool:
    return len(partial) < 4 and all(c in _HEX for c in partial)


class _JsonReader:
    """The top level of one JSON object: keys, and values either decoded (a string of a field
    asked for) or skipped (anything else, nested structures included)."""

    def __init__(self, fields: frozenset[str]) -> None:
        self._fields = fields
        self._seen: set[str] = set()
        self._state = "before"  # before, key?, key, colon, value?, string, nested, scalar, after, done
        self._string = _JsonString()
        self._key = ""
        self._field: _Field | None = None
        self._depth = 0  # inside a nested value: brackets open
        self._in_string = False  # inside a nested value: in a string
        self._escaped = False

    def feed(self, text: str, out: list[tuple[str, str]]) -> None:
        i, size = 0, len(text)
        while i < size and self._state != "done":
            state = self._state
            if state == "string":
                decoded, used = self._string.feed(text[i:])
                i += used
                if self._field is not None and decoded:
                    self._field.text(decoded, out)
                if self._string.closed:
                    self._state, self._field = "after", None
                continue
            if state == "key":
                decoded, used = self._string.feed(text[i:])
                self._key += decoded
                i += used
                if self._string.closed:
                    self._state = "colon"
                continue
            if state == "nested":
                i = self._skip_nested(text, i)
                continue
            char = text[i]
            i += 1
            if state == "before":
                if char == "{":
                    self._state = "key?"
            elif char.isspace():
                continue
            elif state == "key?":
                if char == '"':
                    self._state, self._key, self._string = "key", "", _JsonString()
                elif char == "}":
                    self._state = "done"
            elif state == "colon":
                if char == ":":
                    self._state = "value?"
            elif state == "value?":
                self._value(char)
            elif state == "scalar":
                if char in ",}":
                    self._state = "key?" if char == "," else "done"
            elif state == "after":
                if char == ",":
                    self._state = "key?"
                elif char == "}":
                    self._state = "done"

    def _value(self, char: str) -> None:
        key = self._key
        if char == '"':
            new = key in self._fields and key not in self._seen
            self._field = _WholeField(key) if new else None
            self._state, self._string = "string", _JsonString()
        elif char in "{[":
            self._state, self._depth, self._in_string, self._escaped = "nested", 1, False, False
        else:
            self._state = "scalar"
        self._seen.add(key)

    def _skip_nested(self, text: str, i: int) -> int:
        size = len(text)
        while i < size:
            if self._in_string:
                if self._escaped:
                    self._escaped, i = False, i + 1
                    continue
                special = _STRING_SPECIAL.search(text, i)
                if special is None:
                    return size
                i = special.end()
                if special.group() == "\\":
                    self._escaped = True
                else:
                    self._in_string = False
                continue
            special = _NESTED_SPECIAL.search(text, i)
            if special is None:
                return size
            i, char = special.end(), special.group()
            if char == '"':
                self._in_string = True
            elif char in "{[":
                self._depth += 1
            elif char in "}]":
                self._depth -= 1
                if self._depth == 0:
                    self._state = "after"
                    return i
        return i

    def close(self, out: list[tuple[str, str]]) -> None:
        return None


# --- XML: top-level elements ----------------------------------------------------------------------

_ENTITIES = {"amp": "&", "lt": "<", "gt": ">", "quot": '"', "apos": "'"}
_TEXT_SPECIAL = re.compile(r"[<&\r]")


class _XmlReader:
    """Top-level elements. A ``str`` field's text is decoded as ElementTree reads it; a field
    whose element holds child elements stops streaming (its value is re-serialized XML)."""

    def __init__(self, fields: frozenset[str]) -> None:
        self._fields = fields
        self._seen: set[str] = set()
        self._pending = ""  # an unfinished tag, entity or "\r"
        self._element: str | None = None  # the top-level element we are in
        self._field: _Field | None = None
        self._depth = 0  # nested elements inside the current top-level one

    def feed(self, text: str, out: list[tuple[str, str]]) -> None:
        text, self._pending = self._pending + text, ""
        i, size = 0, len(text)
        while i < size:
            if self._element is not None and self._depth == 0 and self._field is not None:
                special = _TEXT_SPECIAL.search(text, i)
                end = size if special is None else special.start()
                if end > i:
                    self._field.text(text[i:end], out)
                i = end
                if special is None:
                    break
            char = text[i]
            if char == "<":
                close = text.find(">", i)
                if close < 0:
                    self._pending = text[i:]
                    return
                self._tag(text[i + 1 : close])
                i = close + 1
            elif char == "&" and self._streaming():
                end = text.find(";", i, i + 12)
                if end < 0:
                    if size - i >= 12:  # no entity is that long: the text as written
                        self._text("&", out)
                        i += 1
                        continue
                    self._pending = text[i:]
                    return
                self._text(_entity(text[i + 1 : end]) or text[i : end + 1], out)
                i = end + 1
            elif char == "\r" and self._streaming():
                if i + 1 >= size:
                    self._pending = "\r"
                    return
                self._text("\n", out)
                i += 2 if text[i + 1] == "\n" else 1
            else:
                nxt = text.find("<", i)
                i = size if nxt < 0 else nxt

    def _streaming(self) -> bool:
        return self._element is not None and self._depth == 0 and self._field is not None

    def _text(self, text: str, out: list[tuple[str, str]]) -> None:
        if self._field is not None:
            self._field.text(text, out)

    def _tag(self, body: str) -> None:
        if body.startswith(("!", "?")):
            if self._streaming():
                self._field = None  # a comment or CDATA: ElementTree's text no longer matches ours
            return
        closing, self_closing = body.startswith("/"), body.endswith("/")
        name = body.strip("/").split(None, 1)[0] if body.strip("/").strip() else ""
        if self._element is None:
            if not closing and not self_closing and name:
                new = name in self._fields and name not in self._seen
                self._seen.add(name)
                self._element, self._field, self._depth = name, _Field(name) if new else None, 0
            elif self_closing and name:
                self._seen.add(name)
            return
        if closing:
            if self._depth == 0:
                if name == self._element:
                    self._element = self._field = None
            else:
                self._depth -= 1
        elif not self_closing:
            self._depth += 1
            self._field = None  # child elements: the value is text plus re-serialized XML
        else:
            self._field = None

    def close(self, out: list[tuple[str, str]]) -> None:
        return None


def _entity(name: str) -> str | None:
    if name in _ENTITIES:
        return _ENTITIES[name]
    try:
        if name.startswith("#x"):
            return chr(int(name[2:], 16))
        if name.startswith("#"):
            return chr(int(name[1:]))
    except (ValueError, OverflowError):
        return None
    return None


_READERS: dict[TextFormat, type[_ChatReader] | type[_JsonReader] | type[_XmlReader]] = {
    TextFormat.CHAT: _ChatReader,
    TextFormat.JSON: _JsonReader,
    TextFormat.XML: _XmlReader,
}
