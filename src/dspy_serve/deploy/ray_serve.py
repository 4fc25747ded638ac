"""Scale out on Ray Serve: the same app, run as the replicas of one Serve deployment.

Every replica builds the app with :func:`~dspy_serve.app.create_app` from the same settings, so
all that one process does (limits, keys, streaming, usage, errors) holds in each replica; Ray
routes between them, restarts a replica that dies and autoscales on ongoing requests. Ray's
health check asks our readiness. When Ray retires a replica (scale-down, redeploy, delete) it
stops routing to it, lets its requests finish for ``shutdown_grace`` seconds, then runs the
app's lifespan shutdown, which closes the LM clients.

Needs the optional extra: ``pip install 'dspy-serve[ray]'``.
"""

from __future__ import annotations

import ipaddress
import logging
import math
import os
import shutil
import signal
import socket
import sys
import tempfile
import threading
import time
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

from fastapi import FastAPI

from dspy_serve.app import create_app
from dspy_serve.lm.checks import check_lms
from dspy_serve.logs import configure_logging
from dspy_serve.serving.loader import relocate_files
from dspy_serve.serving.service import Service
from dspy_serve.settings import ServeSettings

if TYPE_CHECKING:
    from ray.serve.deployment import Application, Deployment

__all__ = ["app_builder", "build_application", "run_on_ray"]

APP_NAME = "dspy-serve"
DEPLOYMENT_NAME = "DspyServe"
_METRICS_DIR_ENV = "PROMETHEUS_MULTIPROC_DIR"
# Beyond the drain itself: Ray's control loop, the replicas' lifespan shutdown.
_RAY_SLACK = 30.0
# Ray Serve replaces a proxy that is not ready within 5 s, three checks running: on a small, busy
# machine a fresh proxy process is still importing by then, and its replacement must import just
# as much, so the command could restart proxies for minutes. The private instance waits longer.
_PROXY_READY_CHECK_ENV = "RAY_SERVE_PROXY_READY_CHECK_TIMEOUT_S"
_PROXY_READY_CHECK_S = "30"

logger = logging.getLogger("dspy_serve")


class DspyServe:
    """One replica: the settings arrive as plain data; the app is built inside the replica.

    Ray imports lazily (see :func:`run_on_ray`), so ``serve.ingress`` is applied in
    :func:`deployment`, not here.
    """

    def __init__(self, settings: dict[str, Any]) -> None:
        # A settings object, not a dict, from here on: the replica's own environment fills in
        # what the payload leaves out (API keys from a Kubernetes secret, say).
        self._settings = ServeSettings(**settings)
        self._service: Service | None = None
        # Replicas on one node share a Prometheus directory, so /metrics counts them all.
        metrics_dir = os.environ.get(_METRICS_DIR_ENV)
        if metrics_dir:
            Path(metrics_dir).mkdir(parents=True, exist_ok=True)

    def __serve_build_asgi_app__(self) -> FastAPI:
        configure_logging(self._settings.log_level, "json")
        # Ray's proxy owns X-Request-ID: it takes the caller's or makes one, passes it to us and
        # puts it on the response itself.
        app = create_app(self._settings, echo_request_id=False)
        self._service = app.state.service
        return app

    def check_health(self) -> None:
        """Ray replaces a replica whose health check fails: fail when our readiness would."""
        if self._service is None or not self._service.ready:
            raise RuntimeError("dspy-serve replica is not ready")


def deployment(settings: ServeSettings, env: dict[str, str] | None = None) -> Deployment:
    """The Serve deployment's options, all derived from our settings (``env``: the replicas')."""
    from ray import serve

    autoscaling: dict[str, Any] | None = None
    if settings.max_replicas is not None and settings.max_replicas > settings.replicas:
        autoscaling = {
            "min_replicas": settings.replicas,
            "max_replicas": settings.max_replicas,
            "target_ongoing_requests": settings.target_ongoing_requests or max(settings.max_in_flight / 2, 1),
        }
    ingress = serve.deployment(serve.ingress()(DspyServe))
    return ingress.options(  # type: ignore[attr-defined,no-any-return]
        name=DEPLOYMENT_NAME,
        num_replicas="auto" if autoscaling else settings.replicas,
        autoscaling_config=autoscaling,
        # A replica takes as many requests as it can run plus queue, so its own deadline covers
        # the queueing and its 503s keep their Retry-After; past that, Ray's queue is bounded too.
        max_ongoing_requests=settings.max_in_flight + settings.max_queue,
        max_queued_requests=max(settings.max_queue, 1),
        graceful_shutdown_timeout_s=settings.shutdown_grace,
        graceful_shutdown_wait_loop_s=1.0,
        health_check_period_s=5.0,
        health_check_timeout_s=30.0,
        ray_actor_options={"num_cpus": settings.replica_cpus, "runtime_env": {"env_vars": env or {}}},
    )


def build_application(settings: ServeSettings, env: dict[str, str] | None = None) -> Application:
    """The application ``run_on_ray`` deploys: secrets travel in the payload, as its env has them."""
    return deployment(settings, env).bind(settings.to_data(secrets=True))


def app_builder(args: dict[str, Any]) -> Application:
    """Entry point for Ray's config files (``import_path: dspy_serve.ray_serve:app_builder``).

    ``args`` are settings by field name; anything not given comes from each replica's
    environment (``DSPY_SERVE_*``), which is where secrets belong.
    """
    return deployment(ServeSettings(**args)).bind(dict(args))


def run_on_ray(settings: ServeSettings) -> None:
    """Deploy and serve until SIGINT/SIGTERM, then delete the application, draining its replicas.

    With no ``ray_address``, a private local Ray instance (loopback only) lives as long as this
    command; with one, the application is deployed onto that cluster and removed on exit.
    """
    # Fail here, with the usual message, rather than in replicas Ray would retry for minutes: the
    # programs load, and the LM they will be served on (--model, or the one a program file
    # configures) has its credentials (and answers, with check_lm).
    check_lms(Service(settings).settings, probe=settings.check_lm)
    # Replicas may start in another directory: give them absolute paths.
    located = relocate_files(settings, lambda path: str(Path(path).resolve()))
    local = settings.ray_address is None
    if local:
        _check_port_free(located.host, located.port)
    # A fresh path, made by each replica on its own node (the cluster's nodes share no disk).
    metrics_dir = str(Path(tempfile.gettempdir()) / f"dspy-serve-metrics-{uuid.uuid4().hex[:12]}")
    os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")  # no phone-home from a serving process
    # Ray's proxy is a uvicorn server that reads this when it starts (its default trusts loopback):
    # only the configured proxies may set the client address the replicas rate-limit by.
    os.environ["FORWARDED_ALLOW_IPS"] = ",".join(settings.forwarded_allow_ips)
    if local or _is_loopback(settings.ray_address):
        # Ray's single-machine mode, read when ray is first imported: every Ray process then
        # uses the loopback address as its node IP (else Ray swaps 127.0.0.1 for the machine's
        # address), and nothing leaves the machine.
        os.environ.setdefault("RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER", "0")
    import ray
    from ray import serve

    if local:
        # Read by Serve's controller, a process of the instance that ray.init starts from here.
        os.environ.setdefault(_PROXY_READY_CHECK_ENV, _PROXY_READY_CHECK_S)
        wanted = (located.max_replicas or located.replicas) * located.replica_cpus
        ray.init(
            address="local",
            num_cpus=max(os.cpu_count() or 1, math.ceil(wanted)),
            include_dashboard=False,
            _node_ip_address="127.0.0.1",
            logging_level=logging.WARNING,
        )
    else:
        ray.init(address=settings.ray_address, logging_level=logging.WARNING)
    stop = threading.Event()
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, lambda *_: stop.set())
    application = build_application(located, {_METRICS_DIR_ENV: metrics_dir})
    deleted = False

    def deploy() -> None:
        serve.start(http_options={"host": located.host, "port": located.port})
        serve.run(application, name=APP_NAME, route_prefix="/", blocking=False)

    try:
        # serve.run waits until the application runs: a stop signal in the meantime is obeyed too.
        if _bounded(deploy, math.inf, stop):
            print(f"dspy-serve: ready on http://{located.host}:{located.port} (Ray Serve)", file=sys.stderr)
            stop.wait()
        patience = settings.shutdown_grace + _RAY_SLACK
        deleted = _bounded(lambda: serve.delete(APP_NAME), patience)
        if not deleted:
            logger.warning("Ray did not confirm the deletion within %g s; stopping anyway", patience)
    finally:
        if local:
            if deleted:
                serve.shutdown()  # type: ignore[no-untyped-call]
            ray.shutdown()
            shutil.rmtree(metrics_dir, ignore_errors=True)


def _bounded(action: Callable[[], object], seconds: float, stop: threading.Event | None = None) -> bool:
    """Run ``action`` for at most ``seconds``, or until ``stop`` is set: whether it finished (its
    exception is raised here).

    Ray's own processes share our process group, and a supervisor that signals the whole group
    (systemd's default, ``timeout``) stops them under us: a call to Ray would then wait forever
    on a control store that is gone.
    """
    failures: list[BaseException] = []
    done = threading.Event()

    def run() -> None:
        try:
            action()
        except BaseException as exc:  # handed to the waiting thread
            failures.append(exc)
        finally:
            done.set()

    threading.Thread(target=run, daemon=True).start()
    deadline = time.monotonic() + seconds
    # Short waits: the main thread runs the signal handlers that set ``stop`` between them.
    while not done.wait(min(0.1, max(deadline - time.monotonic(), 0))):
        if time.monotonic() >= deadline or (stop is not None and stop.is_set()):
            return False
    if failures:
        raise failures[0]
    return True


def _is_loopback(address: str | None) -> bool:
    host = (address or "").removeprefix("ray://").rpartition(":")[0].strip("[]")
    try:
        return host == "localhost" or ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def _check_port_free(host: str, port: int) -> None:
    """Ray's proxy binds with SO_REUSEPORT, so a second instance on a busy port would silently
    share it with whatever holds it: refuse instead."""
    if port == 0:
        raise ValueError("--engine ray needs a fixed --port (Ray's proxy cannot pick one)")
    with socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET) as probe:
        try:
            probe.bind((host, port))
        except OSError as exc:
            raise ValueError(f"cannot listen on {host}:{port}: {exc.strerror}") from None
