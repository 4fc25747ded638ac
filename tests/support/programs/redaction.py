"""Redaction hooks the capture tests name in ``capture_redact``."""

from __future__ import annotations

import re
from typing import Any

EMAIL = re.compile(r"[\w.+-]+@[\w-]+\.[\w.]+")


def redact(row: dict[str, Any]) -> dict[str, Any] | None:
    """Mask e-mail addresses in the question; never keep a call that mentions a password."""
    question = str(row["inputs"].get("question", ""))
    if "password" in question:
        return None
    return {**row, "inputs": {**row["inputs"], "question": EMAIL.sub("<email>", question)}}
