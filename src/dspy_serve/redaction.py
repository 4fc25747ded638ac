"""Secrets redacted in one place, whatever wrote them: our code, DSPy, LiteLLM, uvicorn, or a
provider's error text echoing its key. :func:`remember_secrets` learns the configured ones when an
app or a command starts (:func:`dspy_serve.serving.secrets.secrets_of` finds them); both log
formats and every error body (``errors.ServeError``) pass their text through :func:`redact`.

It imports nothing of ours, so the error tree and the logs below every layer can use it. What it
knows is process-wide on purpose: a log line can come from any thread or library.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterable
from urllib.parse import quote

__all__ = ["REDACTED", "redact", "remember_secrets"]

REDACTED = "[redacted]"
# Shorter values are not worth hiding, and would blank ordinary words out of every line.
_MIN_SECRET = 4


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
