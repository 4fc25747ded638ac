"""Several worker processes on one port, with uvicorn's process manager.

The parent writes the settings (secrets included) to a private file, readable by this user
only, and points every worker at it and at one Prometheus multiprocess directory, so that
``/metrics`` on any worker counts them all. Each worker builds its own app and LMs.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import shutil
import signal
import socket
import tempfile
from collections.abc import Callable
from pathlib import Path
from types import FrameType
from typing import Any

import uvicorn
from fastapi import FastAPI
from uvicorn.supervisors import Multiprocess

from dspy_serve.deploy.reload import SETTINGS_FILE_ENV, SafeReload, reload_options
from dspy_serve.deploy.uvicorn_server import uvicorn_options
from dspy_serve.logs import configure_logging
from dspy_serve.serving.service import Service
from dspy_serve.settings import ServeSettings

logger = logging.getLogger("dspy_serve")

__all__ = ["reload_options", "run_workers", "worker_app"]


def worker_app() -> FastAPI:
    """The app of one worker (uvicorn calls this factory in each process)."""
    from dspy_serve.app import create_app

    # SIGHUP reloads versions once the app has started (app.py); until then it must not kill.
    signal.signal(signal.SIGHUP, signal.SIG_IGN)
    settings = ServeSettings.model_validate(json.loads(Path(os.environ[SETTINGS_FILE_ENV]).read_text()))
    # A spawned process inherits no logging set-up: without this, a worker's logs are lost.
    configure_logging(settings.log_level, settings.log_format)
    app = create_app(settings)
    _refuse_new_calls_on_exit(app.state.service)
    return app


def _refuse_new_calls_on_exit(service: Service) -> None:
    """Turn readiness to 503 on SIGTERM/SIGINT, as a single process does, then let uvicorn drain.

    A worker's uvicorn installs its signal handlers before it calls the app factory, so ours
    runs first and hands over to theirs.
    """
    for sig in (signal.SIGINT, signal.SIGTERM):
        uvicorn_handler = signal.getsignal(sig)
        if not callable(uvicorn_handler):
            continue

        def handler(
            signum: int, frame: FrameType | None, uvicorn_handler: Callable[..., Any] = uvicorn_handler
        ) -> None:
            service.begin_shutdown()
            uvicorn_handler(signum, frame)

        signal.signal(sig, handler)


class HotReloadingWorkers(Multiprocess):
    """uvicorn's process manager, except that SIGHUP reaches the workers, which reload their
    versions in place (#27), instead of restarting them."""

    def handle_hup(self) -> None:
        logger.info("SIGHUP: the workers reload the configured versions")
        for worker in self.processes:
            pid = worker.process.pid
            if pid is not None and worker.process.is_alive():
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, signal.SIGHUP)


def run_workers(settings: ServeSettings, sock: socket.socket) -> None:
    """Serve on ``sock`` from child processes: ``settings.workers`` of them, or, with
    ``settings.reload``, one that is replaced whenever a program file or artifact changes."""
    workdir = Path(tempfile.mkdtemp(prefix="dspy-serve-"))
    try:
        settings_file = workdir / "settings.json"
        settings_file.touch(mode=0o600)
        settings_file.write_text(json.dumps(settings.to_data(secrets=True)))
        metrics_dir = workdir / "metrics"
        metrics_dir.mkdir()
        os.environ[SETTINGS_FILE_ENV] = str(settings_file)
        os.environ["PROMETHEUS_MULTIPROC_DIR"] = str(metrics_dir)
        config = uvicorn.Config(
            "dspy_serve.deploy.workers:worker_app",
            factory=True,
            workers=settings.workers,
            **uvicorn_options(settings),
            **(reload_options(settings) if settings.reload else {}),
        )
        # The parent bound the port (a taken one is a clear message there, and --port 0 is known).
        if settings.reload:
            SafeReload(config, sockets=[sock]).run()
        else:
            HotReloadingWorkers(config, sockets=[sock]).run()
    finally:
        shutil.rmtree(workdir, ignore_errors=True)
