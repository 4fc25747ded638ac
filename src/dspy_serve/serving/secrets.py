"""What a server must never write: found from its settings, its LMs and its environment, and
handed to :func:`dspy_serve.redaction.remember_secrets` when an app or a command starts."""

from __future__ import annotations

import os
import re
from collections.abc import Iterable, Mapping
from urllib.parse import urlsplit

from dspy_serve.serving.keys import key_secrets
from dspy_serve.settings import ServeSettings

__all__ = ["secrets_of"]

# Shorter environment values, and paths, are not secrets worth hiding from every line.
_MIN_ENV_SECRET = 8
# Environment variables that hold credentials: every provider key LiteLLM and DSPy read
# (OPENAI_API_KEY, AWS_SECRET_ACCESS_KEY, HF_TOKEN, ...), by the shape of their names.
_CREDENTIAL_NAME = re.compile(r"(API_?KEY|_KEY|_TOKEN|SECRET|PASSWORD|PASSWD|CREDENTIALS?)(_|$)", re.I)
_URL_SETTINGS = ("api_base", "response_cache", "rate_limit_storage", "ray_address", "store")


def secrets_of(
    settings: ServeSettings, environ: Mapping[str, str] | None = None, lms: Iterable[object] = ()
) -> list[str]:
    """What a server with ``settings`` must never write: its callers' API keys, the secret that
    signs feedback tokens, the provider credentials in the environment, an ``api_key`` its LMs
    (``lms``) were given, and passwords in the URLs it is configured with (the store's too)."""
    environ = os.environ if environ is None else environ
    found = list(key_secrets(settings))
    if settings.feedback_token_secret is not None:
        found.append(settings.feedback_token_secret.get_secret_value())
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
