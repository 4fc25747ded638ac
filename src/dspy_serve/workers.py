"""Several worker processes on one port, with uvicorn's process manager.

The parent writes the settings (secrets included) to a private file, readable by this user
only, and points every worker at it and at one Prometheus multiprocess directory, so that
``/metrics`` on any worker counts them all. Each worker builds its own app and LMs.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from pathlib import Path
from typing import Any

import uvicorn
from fastapi import FastAPI
from pydantic import SecretStr

from dspy_serve.settings import ServeSettings

__all__ = ["run_workers", "worker_app"]

SETTINGS_FILE_ENV = "DSPY_SERVE_WORKER_SETTINGS_FILE"


def _plain(value: Any) -> Any:
    if isinstance(value, SecretStr):
        return value.get_secret_value()
    if isinstance(value, list):
        return [_plain(item) for item in value]
    if isinstance(value, Path):
        return str(value)
    return value


def worker_app() -> FastAPI:
    """The app of one worker (uvicorn calls this factory in each process)."""
    from dspy_serve.app import create_app

    data = json.loads(Path(os.environ[SETTINGS_FILE_ENV]).read_text())
    return create_app(ServeSettings.model_validate(data))


def run_workers(settings: ServeSettings) -> None:
    workdir = Path(tempfile.mkdtemp(prefix="dspy-serve-"))
    try:
        settings_file = workdir / "settings.json"
        settings_file.touch(mode=0o600)
        settings_file.write_text(json.dumps({name: _plain(value) for name, value in settings}))
        metrics_dir = workdir / "metrics"
        metrics_dir.mkdir()
        os.environ[SETTINGS_FILE_ENV] = str(settings_file)
        os.environ["PROMETHEUS_MULTIPROC_DIR"] = str(metrics_dir)
        uvicorn.run(
            "dspy_serve.workers:worker_app",
            factory=True,
            workers=settings.workers,
            host=settings.host,
            port=settings.port,
            lifespan="on",
            log_config=None,
            access_log=False,
            timeout_graceful_shutdown=int(settings.shutdown_grace),
        )
    finally:
        shutil.rmtree(workdir, ignore_errors=True)
