"""The options every command shares, made from the settings: one flag per field of
:class:`ServeSettings` (its help text, environment variable and section), read back as overrides
that pydantic validates, so a bad value gets the same message from a flag, the environment or a
file. ``run`` and the commands beside it (``mcp``, ``docker``, ``batch``, ``data``, ...) use them."""

from __future__ import annotations

import contextlib
import sys
import typing
from collections.abc import Iterator
from pathlib import Path
from typing import Any, Literal

import click
import dotenv
from pydantic import ValidationError
from pydantic.fields import FieldInfo

from dspy_serve.settings import ENV_PREFIX, ServeSettings, load_settings, setting_sections, unknown_setting

__all__ = [
    "GroupedCommand",
    "command_settings",
    "config_option",
    "friendly",
    "or_exit_3",
    "overrides",
    "settings_params",
    "terminal_safe",
]


def config_option(
    help_text: str = "TOML file with settings (lowest precedence after defaults).",
) -> click.Option:
    return click.Option(
        ["--config", "config"],
        type=click.Path(dir_okay=False, path_type=Path),
        default=None,
        envvar=f"{ENV_PREFIX}CONFIG",
        help=f"{help_text} [env: {ENV_PREFIX}CONFIG]",
    )


def _flag(name: str, info: FieldInfo) -> str:
    extra = info.json_schema_extra if isinstance(info.json_schema_extra, dict) else {}
    return str(extra.get("cli") or "--" + name.replace("_", "-"))


def _is_list(annotation: Any) -> bool:
    return typing.get_origin(annotation) is list or (
        typing.get_origin(annotation) is typing.Annotated and _is_list(typing.get_args(annotation)[0])
    )


def _choices(annotation: Any) -> list[str] | None:
    if typing.get_origin(annotation) is Literal:
        return [str(arg) for arg in typing.get_args(annotation)]
    return None


def _is_bool(annotation: Any) -> bool:
    return annotation is bool


def _click_type(annotation: Any) -> Any:
    """The click type of a setting, so help shows INTEGER, FLOAT, PATH or the choices."""
    args = [arg for arg in typing.get_args(annotation) if arg is not type(None)]
    inner = args[0] if len(args) == 1 and typing.get_origin(annotation) is not Literal else annotation
    choices = _choices(inner)
    if choices:
        return click.Choice(choices)
    if inner is int:
        return click.INT
    if inner is float:
        return click.FLOAT
    if inner is Path:
        return click.Path(path_type=Path)
    return click.STRING


class GroupedCommand(click.Command):
    """A command whose ``--help`` lists the settings under their sections of settings.py
    (programs, language model, limits, security, ...), not as one flat list."""

    def format_options(self, ctx: click.Context, formatter: click.HelpFormatter) -> None:
        section_of = {name: title for title, names in setting_sections().items() for name in names}
        grouped: dict[str, list[tuple[str, str]]] = {"Command": []}
        for param in self.get_params(ctx):
            record = param.get_help_record(ctx)
            if isinstance(param, click.Argument) and param.name in ServeSettings.model_fields:
                record = ("TARGET...", ServeSettings.model_fields[param.name].description or "")
            if record is not None:
                title = section_of.get(param.name or "", "Command")
                grouped.setdefault(title[0].upper() + title[1:], []).append(record)
        for title, records in grouped.items():
            if records:
                with formatter.section(title):
                    formatter.write_dl(records)


def settings_params() -> list[click.Parameter]:
    params: list[click.Parameter] = []
    for name, info in ServeSettings.model_fields.items():
        annotation, flag = info.annotation, _flag(name, info)
        extra = info.json_schema_extra if isinstance(info.json_schema_extra, dict) else {}
        envvar = f"{ENV_PREFIX}{name.upper()}"
        help_text = f"{info.description or ''} [env: {envvar}]"
        if flag == "positional":
            params.append(click.Argument([name], nargs=-1, required=False, metavar="TARGET..."))
            continue
        if flag == "env-only":
            continue
        default_note = (
            "" if info.default in (None, ...) or _is_list(annotation) else f" [default: {info.default}]"
        )
        if _is_bool(annotation):
            params.append(
                click.Option([f"{flag}/--no-{flag[2:]}", name], default=None, help=help_text + default_note)
            )
        elif _is_list(annotation):
            bare = extra.get("flag_value")  # given alone (`--capture`), the flag means this value
            option = click.Option([flag, name], multiple=True, help=help_text + " (repeatable)")
            if bare is not None:
                option = click.Option(
                    [flag, name],
                    multiple=True,
                    is_flag=False,
                    flag_value=str(bare),
                    help=help_text + " (repeatable; alone: every program)",
                )
            params.append(option)
        else:
            params.append(
                click.Option(
                    [flag, name], type=_click_type(annotation), default=None, help=help_text + default_note
                )
            )
    return params


def overrides(values: dict[str, Any]) -> dict[str, Any]:
    """Only what was given on the command line: everything else falls through to env and files."""
    given: dict[str, Any] = {}
    for name, value in values.items():
        if value is None or value == ():
            continue
        given[name] = list(value) if isinstance(value, tuple) else value
    return given


def command_settings(config: Path | None, values: dict[str, Any]) -> ServeSettings:
    """The settings of `run` and `mcp`: flags over env, .env and the TOML file."""
    # Provider credentials (OPENAI_API_KEY, ...) may live in the working directory's .env (the one
    # the settings read), as users expect; the real environment wins. (Without a path, python-dotenv
    # searches from this module's directory, not the working one.)
    dotenv.load_dotenv(Path(".env"), override=False)
    try:
        settings = load_settings(config, **overrides(values))
    except (ValidationError, FileNotFoundError, ValueError) as exc:
        raise click.UsageError(friendly(exc, config)) from None
    if not settings.programs:
        raise click.UsageError("give at least one TARGET, e.g. examples/qa.py:program")
    return settings


@contextlib.contextmanager
def or_exit_3() -> Iterator[None]:
    """A program, artifact or interface that cannot be served stops the command: one line, exit 3."""
    from dspy_serve.redaction import redact
    from dspy_serve.serving.loader import ArtifactError, TargetError
    from dspy_serve.serving.schema import SchemaError

    try:
        yield
    except (ArtifactError, TargetError, SchemaError, ValueError, ImportError) as exc:
        click.echo(f"dspy-serve: cannot start: {redact(str(exc))}", err=True)  # a provider's text, too
        sys.exit(3)


def friendly(exc: Exception, config: Path | None = None) -> str:
    if isinstance(exc, ValidationError):
        return "; ".join(
            unknown_setting(str(err["loc"][0]), config)
            if err["type"] == "extra_forbidden" and len(err["loc"]) == 1
            else f"{'.'.join(str(part) for part in err['loc']) or 'settings'}: {err['msg']}"
            for err in exc.errors(include_url=False)
        )
    return str(exc)


def terminal_safe(text: str) -> str:
    """Text from the server or an LM, fit for a terminal: control characters (escape sequences that
    retitle the window, recolour or move the cursor) are shown escaped; newlines and tabs stay."""
    return "".join(
        char if char in "\n\t" or not (ord(char) < 0x20 or 0x7F <= ord(char) < 0xA0) else repr(char)[1:-1]
        for char in text
    )
