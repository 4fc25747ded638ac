"""Logging for the ``dspy-serve`` command: JSON lines for machines, plain text on a terminal.

Library use configures nothing: only the CLI calls :func:`configure_logging`. Request lines
come from the access logger (``dspy_serve.access``), one per request, with the request id,
program, status, latency, tokens, cost and API key *name*; never a key, never a prompt.

Both formatters pass their final text through :func:`dspy_serve.redaction.redact`, so a secret
is never written, whatever wrote the line.
"""

from __future__ import annotations

import json
import logging
import sys
from datetime import UTC, datetime
from typing import Any, Literal

from dspy_serve.redaction import redact

__all__ = ["JsonFormatter", "TextFormatter", "configure_logging", "escape_controls"]

# Record attributes that are not ours to print (uvicorn adds a terminal-coloured copy).
_STANDARD = set(vars(logging.makeLogRecord({}))) | {"message", "asctime", "color_message"}

# Characters that would end a log line or drive a terminal (CR, LF, ESC, C1 controls, Unicode
# line separators): a caller chooses some logged values (the path, percent-decoded), so they
# are written escaped, in both formats.
_CONTROLS = [*range(0x00, 0x20), *range(0x7F, 0xA0), 0x2028, 0x2029]
_TEXT_ESCAPES = {code: f"\\x{code:02x}" if code < 0x100 else f"\\u{code:04x}" for code in _CONTROLS}
_JSON_ESCAPES = {code: f"\\u{code:04x}" for code in _CONTROLS if code >= 0x7F}  # json escapes < 0x20


def escape_controls(text: str) -> str:
    """``text`` with every control character written as an escape (``\\x1b``), on one line."""
    return text.translate(_TEXT_ESCAPES)


class JsonFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        entry: dict[str, Any] = {
            "time": datetime.fromtimestamp(record.created, UTC).isoformat(timespec="milliseconds"),
            "level": record.levelname.lower(),
            "logger": record.name,
            "message": record.getMessage(),
        }
        entry.update({key: value for key, value in vars(record).items() if key not in _STANDARD})
        if record.exc_info:
            entry["error"] = self.formatException(record.exc_info)
        return redact(json.dumps(entry, default=str, ensure_ascii=False).translate(_JSON_ESCAPES))


class TextFormatter(logging.Formatter):
    def __init__(self) -> None:
        super().__init__("%(asctime)s %(levelname)-7s %(name)s: %(message)s")

    def formatMessage(self, record: logging.LogRecord) -> str:
        line = escape_controls(super().formatMessage(record))
        extra = {key: value for key, value in vars(record).items() if key not in _STANDARD}
        fields = " ".join(f"{escape_controls(str(k))}={escape_controls(str(v))}" for k, v in extra.items())
        return line + ("  " + fields if fields else "")

    def format(self, record: logging.LogRecord) -> str:
        return redact(super().format(record))  # the message, its fields and any traceback


def configure_logging(level: str, fmt: Literal["auto", "json", "text"] = "auto") -> None:
    use_json = fmt == "json" or (fmt == "auto" and not sys.stderr.isatty())
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(JsonFormatter() if use_json else TextFormatter())
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level.upper())
    for name in ("uvicorn", "uvicorn.error"):
        logging.getLogger(name).handlers[:] = []
        logging.getLogger(name).propagate = True
