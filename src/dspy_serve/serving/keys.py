"""API keys: who may call, and which programs and models each key may use.

Off unless keys are configured (``DSPY_SERVE_API_KEYS`` or ``api_keys_file``). A key source
that is configured but yields no key stops the start-up: failing open would serve everyone. A
key is compared, as a SHA-256 digest, with every configured key in constant time, and only its
name is ever logged or reported.
"""

from __future__ import annotations

import contextlib
import hashlib
import hmac
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path

from dspy_serve.errors import ModelNotAllowed
from dspy_serve.settings import ServeSettings

__all__ = [
    "ApiKey",
    "KeyConfigError",
    "KeyRing",
    "admin_ring",
    "key_secrets",
    "parse_key_line",
]


class KeyConfigError(ValueError):
    """A configured key source is missing, unreadable, or holds no key: auth would silently be off."""


@dataclass(frozen=True)
class ApiKey:
    name: str
    digest: bytes
    programs: frozenset[str] | None = None  # None: every program
    # None: every allowed model. In the key line's order: the first one served is the key's default.
    models: tuple[str, ...] | None = None
    prompts: bool | None = None  # `prompts=yes|no`; None: only a key without restrictions may see them

    @property
    def restricted(self) -> bool:
        return self.programs is not None or self.models is not None

    def may_see_prompts(self) -> bool:
        """Whether a call's prompts may be returned to this key (when the server exposes them): a
        key limited to some programs or models sees them only when its line says ``prompts=yes``."""
        return self.prompts if self.prompts is not None else not self.restricted

    def may_call(self, program: str) -> bool:
        return self.programs is None or program in self.programs

    def may_use(self, model: str) -> bool:
        return self.models is None or model in self.models

    def model_for(self, requested: str | None, served: Sequence[str]) -> str | None:
        """The model a call of this key runs on: the one it asks for (checked by :meth:`may_use`);
        else, for a key limited to some models, the first of them the server serves, never the
        server's default when the key may not use it (403 when it serves none of them); else
        None, the server's default."""
        if requested is not None or self.models is None:
            return requested
        for model in self.models:
            if model in served:
                return model
        raise ModelNotAllowed("this API key may use none of the models this server serves")


def _digest(secret: str) -> bytes:
    return hashlib.sha256(secret.encode()).digest()


_YES_NO = {"yes": True, "no": False}


def parse_key_line(line: str, number: int) -> ApiKey:
    """``[name:]key [programs=a,b] [models=m1,m2] [prompts=yes|no]``; a key limited to models runs
    a call that names none on the first of them the server serves."""
    first, *options = line.split()
    name, sep, secret = first.partition(":")
    if not sep:
        name, secret = f"key-{number}", first
    restrictions: dict[str, tuple[str, ...]] = {}
    prompts: bool | None = None
    for option in options:
        field, eq, values = option.partition("=")
        if eq and field == "prompts":
            if values.lower() not in _YES_NO:
                raise ValueError(f"API key line {number}: prompts= takes yes or no, not {values!r}")
            prompts = _YES_NO[values.lower()]
            continue
        if not eq or field not in ("programs", "models"):
            raise ValueError(
                f"API key line {number}: unknown option {field!r} (expected programs=, models= or prompts=)"
            )
        restrictions[field] = tuple(dict.fromkeys(v for v in values.split(",") if v))
    if not secret:
        raise ValueError(f"API key line {number}: empty key")
    programs = restrictions.get("programs")
    return ApiKey(
        name,
        _digest(secret),
        frozenset(programs) if programs is not None else None,
        restrictions.get("models"),
        prompts,
    )


class KeyRing:
    def __init__(self, keys: Iterable[ApiKey]) -> None:
        self._keys = tuple(keys)

    def __len__(self) -> int:
        return len(self._keys)

    @classmethod
    def from_settings(cls, settings: ServeSettings) -> KeyRing | None:
        """The configured keys; None when no key source is configured at all."""
        configured = "api_keys" in settings.model_fields_set or settings.api_keys_file is not None
        lines = [secret.get_secret_value().strip() for secret in settings.api_keys]
        lines = [line for line in lines if line]
        if settings.api_keys_file is not None:
            lines += _key_file_lines(Path(settings.api_keys_file))
        keys = [parse_key_line(line, number) for number, line in enumerate(lines, start=1)]
        if not keys:
            if configured:
                where = (
                    f"the key file {settings.api_keys_file}"
                    if settings.api_keys_file
                    else "DSPY_SERVE_API_KEYS"
                )
                raise KeyConfigError(f"{where} holds no API key: add one, or unset it to serve without keys")
            return None
        return cls(keys)

    def named(self, name: str) -> ApiKey | None:
        """The key called ``name`` (a job runs its items as the key that submitted it)."""
        return next((key for key in self._keys if key.name == name), None)

    def match(self, presented: str) -> ApiKey | None:
        digest, found = _digest(presented), None
        for key in self._keys:  # no early exit: the time taken says nothing about which key matched
            if hmac.compare_digest(digest, key.digest):
                found = key
        return found


def _key_file_lines(path: Path) -> list[str]:
    """The key lines of a key file: blank lines and comments (``#``, even indented) skipped."""
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as exc:
        raise KeyConfigError(f"cannot read the key file {path}: {exc.strerror or exc}") from None
    stripped = (line.strip() for line in text.splitlines())
    return [line for line in stripped if line and not line.startswith("#")]


def admin_ring(settings: ServeSettings) -> KeyRing | None:
    """The admin API's keys (``admin_keys``, ``admin_keys_file``), separate from callers' keys;
    None when none is configured: the admin API is off."""
    lines = [secret.get_secret_value().strip() for secret in settings.admin_keys]
    if settings.admin_keys_file is not None:
        lines += _key_file_lines(Path(settings.admin_keys_file))
    keys = [parse_key_line(line.split()[0], number) for number, line in enumerate(filter(None, lines), 1)]
    return KeyRing(keys) if keys else None


def key_secrets(settings: ServeSettings) -> list[str]:
    """The configured keys themselves, callers' and admins', so logs and error bodies can hide
    them (never to match: :class:`KeyRing` keeps digests only). An unreadable key file yields
    none here: the KeyRing built from the same settings says why."""
    lines = [secret.get_secret_value().strip() for secret in [*settings.api_keys, *settings.admin_keys]]
    for path in (settings.api_keys_file, settings.admin_keys_file):
        if path is not None:
            with contextlib.suppress(KeyConfigError):
                lines += _key_file_lines(Path(path))
    secrets = []
    for line in filter(None, lines):
        name, sep, secret = line.split()[0].partition(":")
        secrets.append(secret if sep else name)
    return secrets
