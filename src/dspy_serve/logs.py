"""Logging for the ``dspy-serve`` command: JSON lines for machines, plain text on a terminal.

Library use configures nothing: only the CLI calls :func:`configure_logging`. Request lines
come from the access logger (``dspy_serve.access``), one per request, with the request id,
program, status, latency, tokens, cost and API key *name*; never a key, never a prompt.

Secrets are redacted in one place whatever wrote them (our code, DSPy, LiteLLM, uvicorn, a
provider's error text echoing its key): :func:`remember_secrets` learns the configured ones when
an app is built (callers' API keys, provider keys in the environment, passwords in configured
URLs), and both formatters, like every error body (``errors.ServeError``), pass their text
through :func:`redact`.
"""

from __future__ import annotations

import json
import logging
import os
import re
import sys
from collections.abc import Iterable, Mapping
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any, Literal
from urllib.parse import quote, urlsplit

if TYPE_CHECKING:
    from dspy_serve.settings import ServeSettings

__all__ = [
    "REDACTED",
    "JsonFormatter",
    "TextFormatter",
    "configure_logging",
    "escape_controls",
    "redact",
    "remember_secrets",
    "secrets_of",
]

REDACTED = "[redacted]"
# Shorter values are not worth hiding, and would blank ordinary words out of every line.
_MIN_SECRET = 4
_MIN_ENV_SECRET = 8
# Environment variables that hold credentials: every provider key LiteLLM and DSPy read
# (OPENAI_API_KEY, AWS_SECRET_ACCESS_KEY, HF_TOKEN, ...), by the shape of their names.
_CREDENTIAL_NAME = re.compile(r"(API_?KEY|_KEY|_TOKEN|SECRET|PASSWORD|PASSWD|CREDENTIALS?)(_|$)", re.I)
_URL_SETTINGS = ("api_base", "response_cache", "rate_limit_storage", "ray_address")


class _Secrets:
    """The process's known secrets, as one pattern (each also as JSON and URL encoding write it)."""

    def __init__(self) -> None:
        self._known: set[str] = set()
        self._pattern: re.Pattern[str] | None = None

    def add(self, secrets: Iterable[str]) -> None:
        forms = {
            form
            for secret in secrets
            if len(secret) >= _MIN_SECRET
            for form in (secret, json.dumps(secret)[1:-1], quote(secret, safe=""))
        }
        if forms - self._known:
            self._known |= forms
            alternatives = sorted(self._known, key=len, reverse=True)  # the longest form first
            self._pattern = re.compile("|".join(map(re.escape, alternatives)))

    def redact(self, text: str) -> str:
        return text if self._pattern is None else self._pattern.sub(REDACTED, text)


_SECRETS = _Secrets()


def redact(text: str) -> str:
    """``text`` with every secret this process knows replaced by ``[redacted]``."""
    return _SECRETS.redact(text)


def remember_secrets(secrets: Iterable[str]) -> None:
    """Add to what :func:`redact` hides, for as long as the process runs (never forgotten: a
    second app in the process, or a reload, adds its own)."""
    _SECRETS.add(secrets)


def secrets_of(
    settings: ServeSettings, environ: Mapping[str, str] | None = None, lms: Iterable[object] = ()
) -> list[str]:
    """What a server with ``settings`` must never write: its callers' API keys, the provider
    credentials in the environment, an ``api_key`` its LMs (``lms``) were given, and passwords in
    the URLs it is configured with."""
    from dspy_serve.serving.keys import key_secrets

    environ = os.environ if environ is None else environ
    found = list(key_secrets(settings))
    for lm in lms:
        key = (getattr(lm, "kwargs", None) or {}).get("api_key")
        if isinstance(key, str):
            found.append(key)
    found += [
        value
        for name, value in environ.items()
        if _CREDENTIAL_NAME.search(name) and len(value) >= _MIN_ENV_SECRET and not value.startswith("/")
    ]
    for field in _URL_SETTINGS:
        url = getattr(settings, field, None)
        if isinstance(url, str) and "@" in url:
            try:
                password = urlsplit(url).password
            except ValueError:
                continue
            if password:
                found.append(password)
    return found


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
