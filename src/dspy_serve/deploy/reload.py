"""``--reload``: a new server process per change, and the last good one serves until it is ready.

uvicorn's reloader stops the server, then starts a new one. Mid-edit, the new one fails to import
the program (a syntax error), prints a traceback through multiprocessing and uvicorn, and nothing
serves the port: requests hang until the next save. Here the new process loads the programs while
the old one still serves; only once it serves too is the old one stopped. A change that cannot be
served is one line (the same words as at start-up), and the last good version keeps serving.

The watcher reports only the files the server restarts for (program files and artifacts): a log
written into the project directory is a change every time a line is logged, and uvicorn's own
filter runs only after watchfiles has reported, and logged, each one.
"""

from __future__ import annotations

import functools
import json
import logging
import multiprocessing
import os
import signal
import socket
import sys
from multiprocessing.synchronize import Event
from pathlib import Path
from typing import Any

import uvicorn
from uvicorn._subprocess import get_subprocess
from uvicorn.supervisors.watchfilesreload import WatchFilesReload
from watchfiles import Change, watch

from dspy_serve.serving.loader import parse_target
from dspy_serve.settings import ServeSettings

__all__ = ["SafeReload", "reload_options"]

logger = logging.getLogger("dspy_serve")
SETTINGS_FILE_ENV = "DSPY_SERVE_WORKER_SETTINGS_FILE"
# How long a new version may take to load and serve before the old one is kept.
_START_SECONDS = 300.0


def reload_options(settings: ServeSettings) -> dict[str, Any]:
    """Watch the directories of the program files and artifacts (not dspy-serve's own): a change
    to a ``.py`` file or to an artifact there restarts the server process."""
    paths = [Path(target.rpartition(":")[0]) for _, target in map(parse_target, settings.programs)]
    files = [path for path in paths if path.suffix == ".py" or "/" in str(path)]
    artifacts = [Path(spec.partition("=")[2] or spec) for spec in settings.artifacts]
    dirs = sorted({str((path if path.is_dir() else path.parent).resolve()) for path in [*files, *artifacts]})
    patterns = ["*.py", *sorted({f"*{path.suffix}" for path in artifacts if path.suffix})]
    return {"reload": True, "reload_dirs": dirs or [str(Path.cwd())], "reload_includes": patterns}


def serve_version(ready: Event, sockets: list[socket.socket]) -> None:
    """One version of the server (in its own process): load the programs, serve, say it serves.

    A version that cannot load says why in one line and exits 3; the supervisor keeps the last good one.
    """
    from dspy_serve.app import create_app
    from dspy_serve.deploy.uvicorn_server import ServeServer, uvicorn_config
    from dspy_serve.logs import configure_logging

    settings = ServeSettings.model_validate(json.loads(Path(os.environ[SETTINGS_FILE_ENV]).read_text()))
    configure_logging(settings.log_level, settings.log_format)
    try:
        app = create_app(settings)
    except (Exception, SystemExit) as exc:  # whatever the edit broke: one line, never a traceback
        reason = str(exc).strip() or type(exc).__name__
        print(f"dspy-serve: cannot serve the change: {reason}", file=sys.stderr, flush=True)
        sys.exit(3)
    # ServeServer turns readiness to 503 on SIGTERM, as the supervisor's restart sends.
    ServeServer(uvicorn_config(app, settings), app.state.service, on_started=ready.set).run(sockets=sockets)


class SafeReload(WatchFilesReload):
    """uvicorn's watchfiles reloader, which starts the new version before it stops the old one."""

    def __init__(self, config: uvicorn.Config, sockets: list[socket.socket]) -> None:
        # uvicorn's target is never started: each version gets a readiness event of its own (_spawn).
        super().__init__(config, target=serve_version, sockets=sockets)  # type: ignore[arg-type]
        logging.getLogger("watchfiles").setLevel(logging.WARNING)
        self.watcher = watch(
            *self.reload_dirs,
            watch_filter=self._relevant,
            stop_event=self.should_exit,
            yield_on_timeout=True,
            ignore_permission_denied=True,
        )
        self._context = multiprocessing.get_context("spawn")

    def _relevant(self, change: Change, path: str) -> bool:
        return bool(self.watch_filter(Path(path)))

    def _spawn(self) -> tuple[multiprocessing.process.BaseProcess, Event]:
        ready = self._context.Event()
        target = functools.partial(serve_version, ready)
        process = get_subprocess(config=self.config, target=target, sockets=self.sockets)
        process.start()
        return process, ready

    def startup(self) -> None:
        for sig in (signal.SIGINT, signal.SIGTERM):
            signal.signal(sig, self.signal_handler)
        # The event is kept: a collected one is unlinked before the child has unpickled it.
        self.process, self._ready = self._spawn()  # type: ignore[assignment]

    def restart(self) -> None:
        process, ready = self._spawn()
        for _ in range(int(_START_SECONDS / 0.1)):
            if ready.wait(0.1) or not process.is_alive() or self.should_exit.is_set():
                break
        if not ready.is_set():
            if process.is_alive():
                process.terminate()
            process.join()
            if not self.should_exit.is_set():  # not when stopped (Ctrl-C) while it was starting
                logger.warning("the change is not served; the last good version keeps serving")
            return
        self.process.terminate()
        self.process.join()
        self.process, self._ready = process, ready  # type: ignore[assignment]
