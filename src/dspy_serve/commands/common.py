"""What the data-loop commands share: the settings options of ``run`` and parsing times."""

from __future__ import annotations

import re
import time
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, TypeVar

import click
import dotenv
from pydantic import ValidationError

from dspy_serve.commands.options import config_option, friendly, overrides, settings_params
from dspy_serve.settings import ServeSettings, load_settings

__all__ = ["parse_since", "settings_from", "with_settings"]

F = TypeVar("F", bound=Callable[..., Any])

_AGO = re.compile(r"^(\d+(?:\.\d+)?)\s*([smhdw])$")
_SECONDS = {"s": 1, "m": 60, "h": 3600, "d": 86400, "w": 604800}


def with_settings(command: click.Command) -> click.Command:
    """Add ``--config`` and every option of ``run`` (not its TARGETs) to ``command``."""
    command.params.append(config_option("TOML file with settings, as for `run`."))
    taken = {name for param in command.params for name in param.opts}
    command.params.extend(
        param
        for param in settings_params()
        if isinstance(param, click.Option) and not taken.intersection(param.opts)
    )
    return command


def settings_from(values: dict[str, Any], **fixed: Any) -> ServeSettings:
    """The settings from the options :func:`with_settings` added (and removes them from ``values``).
    Their secrets are redacted from this process's output from here on."""
    from dspy_serve.redaction import remember_secrets
    from dspy_serve.serving.secrets import secrets_of

    config = values.pop("config", None)
    given = {name: values.pop(name) for name in list(values) if name in ServeSettings.model_fields}
    dotenv.load_dotenv(Path(".env"), override=False)
    try:
        settings = load_settings(config, **{**overrides(given), **fixed})
    except (ValidationError, FileNotFoundError, ValueError) as exc:
        raise click.UsageError(friendly(exc, config)) from None
    remember_secrets(secrets_of(settings))
    return settings


def parse_since(text: str | None, *, now: float | None = None) -> float | None:
    """``7d``, ``24h``, ``30m`` ago, or an ISO date/time (UTC unless it says), as epoch seconds."""
    if text is None:
        return None
    now = time.time() if now is None else now
    if match := _AGO.match(text.strip()):
        return now - float(match[1]) * _SECONDS[match[2]]
    try:
        moment = datetime.fromisoformat(text.strip())
    except ValueError:
        raise click.BadParameter(f"{text!r}: write 7d, 24h, 30m, or a date such as 2026-12-01") from None
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=UTC)
    return moment.timestamp()
