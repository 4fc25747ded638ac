"""A finished call as the store keeps it: JSON values only, excluded fields left out, then the
operator's redaction hook."""

from __future__ import annotations

import json
from collections.abc import Callable, Mapping
from typing import Any

from dspy_serve.serving.dspy_json import to_wire
from dspy_serve.serving.loader import TargetError, _import_object
from dspy_serve.serving.observers import FinishedCall
from dspy_serve.settings import ServeSettings

__all__ = ["Redactor", "RowMaker", "jsonable", "load_redactor"]

Redactor = Callable[[dict[str, Any]], dict[str, Any] | None]


def jsonable(value: Any) -> Any:
    """Plain JSON data (what the database's JSON columns take): DSPy types in their wire form,
    anything else JSON cannot hold as its text."""
    return json.loads(json.dumps(to_wire(value), default=str))


def load_redactor(spec: str | None) -> Redactor | None:
    """The ``capture_redact`` hook, ``module:function`` or ``path/file.py:function``."""
    if spec is None:
        return None
    try:
        hook = _import_object(spec)[0]
    except TargetError as exc:
        raise ValueError(f"capture_redact {spec!r}: {exc}") from None
    if not callable(hook):
        raise ValueError(f"capture_redact {spec!r} is not a function")
    return hook  # type: ignore[no-any-return]


class RowMaker:
    """Turns finished calls into rows for the ``calls`` table, per the settings."""

    def __init__(self, settings: ServeSettings, redactor: Redactor | None = None) -> None:
        self.keep_trace = settings.capture_trace
        self.redactor = redactor
        self._excluded: dict[str, set[str]] = {}
        for entry in settings.capture_exclude:
            program, dot, name = entry.rpartition(".")
            if not dot or not program or not name:
                raise ValueError(f"capture_exclude {entry!r}: write NAME.FIELD (or *.FIELD)")
            self._excluded.setdefault(program, set()).add(name)

    def excluded(self, program: str) -> set[str]:
        return self._excluded.get(program, set()) | self._excluded.get("*", set())

    def strip(self, program: str, values: Mapping[str, Any] | None) -> dict[str, Any] | None:
        """``values`` without the program's excluded fields, as JSON."""
        if values is None:
            return None
        drop = self.excluded(program)
        return {name: jsonable(value) for name, value in values.items() if name not in drop}

    def row(self, call: FinishedCall, *, sampled: bool) -> dict[str, Any] | None:
        """The stored row, or None when the redaction hook drops it."""
        trace = None
        if self.keep_trace and call.trace is not None:
            trace = [
                {
                    "predictor": step.get("predictor"),
                    "inputs": self.strip(call.program, step.get("inputs") or {}),
                    "outputs": self.strip(call.program, step.get("outputs") or {}),
                }
                for step in call.trace
            ]
        row: dict[str, Any] = {
            "call_id": call.call_id,
            "created_at": call.started_at,
            "program": call.program,
            "version": call.version,
            "version_name": call.version_name,
            "shadow_of": call.shadow_of,
            "key_name": call.key_name,
            "wire": call.wire,
            "request_id": call.request_id,
            "model": call.model,
            "inputs": self.strip(call.program, call.inputs) or {},
            "options": jsonable(dict(call.options)),
            "outputs": self.strip(call.program, call.outputs),
            "error_code": call.error_code,
            "usage": jsonable(dict(call.usage)),
            "cost_usd": call.cost_usd,
            "latency_s": call.latency_s,
            "trace": trace,
            "sampled": sampled,
        }
        if self.redactor is None:
            return row
        redacted = self.redactor(row)
        if redacted is None:
            return None
        # The hook may change values, never the row's identity.
        return {
            **redacted,
            "call_id": call.call_id,
            "program": call.program,
            "sampled": sampled,
            "shadow_of": call.shadow_of,
        }
