"""What a container runs: the settings given here, moved to where things are inside the image.

``dspy-serve docker`` and ``dspy-serve kuberay`` share this one mechanism. The settings are
checked as ``run`` checks them (programs import, artifacts fit), relocated (program files,
artifacts and a GGUF model to ``/app``, the API-key file and the cache directory to fixed
paths the deployment mounts), and turned into plain data with :meth:`ServeSettings.to_data`.
Nothing secret is carried: API keys, and any URL with a password in it, stay in the
environment of the running container.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import Any
from urllib.parse import urlsplit

from dspy_serve.lm.registry import is_local_model
from dspy_serve.serving.loader import relocate_files
from dspy_serve.settings import ENV_PREFIX, ServeSettings

__all__ = [
    "APP_DIR",
    "CACHE_DIR",
    "KEYS_FILE",
    "PORT",
    "ContainerSettings",
    "check_programs",
    "container_settings",
    "env_value",
    "in_image",
]

APP_DIR = PurePosixPath("/app")
PORT = 8000
# Where the deployment mounts the API-key file (a compose secret, a Kubernetes Secret volume).
KEYS_FILE = "/run/secrets/api_keys"
# Created in the image, owned by the service's user; a volume in compose.
CACHE_DIR = "/var/cache/dspy-serve"


def in_image(path: str) -> str:
    """Where a project-relative file lands inside the image (the build context is the project)."""
    relative = PurePosixPath(Path(path).as_posix())
    if relative.is_absolute() or ".." in relative.parts:
        raise ValueError(f"{path}: give paths relative to the project directory (the Docker build context)")
    return str(APP_DIR / relative)


def check_programs(settings: ServeSettings) -> ServeSettings:
    """Load the programs as ``run`` would, so that no file is written for one that cannot serve:
    the settings they will be served with (the LM a program file configures, when no model is
    given: the image then needs that provider's credential, not the embedded model)."""
    from dspy_serve.serving.programs import load_programs

    served, _ = load_programs(settings)
    return served


@dataclass(frozen=True)
class ContainerSettings:
    """The container's settings as data, and what it must take from its environment instead."""

    programs: list[str]
    data: dict[str, Any]
    from_environment: list[str]
    keys_file: Path | None

    @property
    def port(self) -> int:
        return int(self.data.get("port", PORT))


def container_settings(settings: ServeSettings) -> ContainerSettings:
    """``settings`` as a container runs them: paths inside the image, listening on all interfaces."""
    if settings.host not in ("127.0.0.1", "0.0.0.0", "::"):
        raise ValueError(
            f"--host {settings.host}: a container listens on all its interfaces; publish its port instead"
        )
    if settings.reload:
        raise ValueError("--reload is for development; an image serves the one version it was built with")
    if settings.port == 0:
        raise ValueError("--port 0: a container needs a fixed port to publish and probe")
    update: dict[str, Any] = {"host": "0.0.0.0"}
    if settings.model is not None and settings.model.endswith(".gguf") and is_local_model(settings.model):
        update["model"] = in_image(settings.model)
    if settings.api_keys_file is not None:
        if not settings.api_keys_file.is_file():
            raise ValueError(f"--api-keys-file {settings.api_keys_file}: not found")
        update["api_keys_file"] = KEYS_FILE
    if settings.cache_dir is not None:
        update["cache_dir"] = CACHE_DIR
    located = relocate_files(settings, in_image).model_copy(update=update)
    data = located.to_data(secrets=False)
    programs = data.pop("programs")
    # A URL that carries a password (redis://:pw@host, https://user:pw@...) is a credential.
    secret = sorted(name for name, value in data.items() if isinstance(value, str) and _has_password(value))
    for name in secret:
        del data[name]
    return ContainerSettings(
        programs=programs,
        data=data,
        from_environment=[f"{ENV_PREFIX}{name.upper()}" for name in secret],
        keys_file=settings.api_keys_file,
    )


def _has_password(value: str) -> bool:
    try:
        return urlsplit(value).password is not None
    except ValueError:
        return False


def env_value(value: Any) -> str:
    """A setting as its ``DSPY_SERVE_*`` variable holds it (lists as JSON, booleans lower-case)."""
    if isinstance(value, bool):
        return str(value).lower()
    if isinstance(value, list):
        return json.dumps(value)
    return "" if value is None else str(value)
