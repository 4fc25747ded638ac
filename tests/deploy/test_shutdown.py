"""Graceful shutdown, tested the way uvicorn tests its own: a real server, a slow request,
then the exit signal."""

from __future__ import annotations

import signal
import threading
import time
from typing import Any

import httpx

from dspy_serve import create_app
from dspy_serve.deploy.uvicorn_server import ServeServer
from tests.support.fake_lm import FakeLM, Hang
from tests.support.servers import ServerThread
from tests.support.settings import PROGRAMS, fake_settings

QA = f"qa={PROGRAMS / 'serving.py'}:qa"


def start(app: Any, grace: float) -> ServerThread:
    service = app.state.service
    return ServerThread(app, grace=grace, make_server=lambda config: ServeServer(config, service)).start()


def invoke_in_background(url: str, results: list[httpx.Response | Exception]) -> threading.Thread:
    def call() -> None:
        try:
            results.append(httpx.post(url + "/qa/invoke", json={"inputs": {"question": "q"}}, timeout=30))
        except Exception as exc:
            results.append(exc)

    thread = threading.Thread(target=call)
    thread.start()
    return thread


def test_in_flight_requests_finish_and_new_ones_are_refused(fake_lm: FakeLM, provider_key: str) -> None:
    fake_lm.latency = 1.5
    app = create_app(fake_settings(fake_lm, programs=[QA]))
    server = start(app, grace=10)
    results: list[httpx.Response | Exception] = []
    slow = invoke_in_background(server.base_url, results)
    assert fake_lm.wait_for(lambda: fake_lm.in_flight == 1, timeout=5)

    server.server.handle_exit(signal.SIGTERM, None)
    try:
        late = httpx.get(server.base_url + "/health/ready", timeout=5)
        assert late.status_code == 503  # accepted before the listener closed: still refused
    except httpx.ConnectError:
        pass  # the listener is already closed: refused
    slow.join(timeout=10)
    server.stop()

    assert isinstance(results[0], httpx.Response), results
    assert results[0].status_code == 200
    assert results[0].json()["outputs"]["answer"]


def test_work_past_the_grace_period_is_cancelled_and_its_lm_call_closed(
    fake_lm: FakeLM, provider_key: str
) -> None:
    fake_lm.when("q", Hang())
    app = create_app(fake_settings(fake_lm, programs=[QA], timeout=60))
    server = start(app, grace=1)
    results: list[httpx.Response | Exception] = []
    stuck = invoke_in_background(server.base_url, results)
    assert fake_lm.wait_for(lambda: fake_lm.in_flight == 1, timeout=5)

    started = time.monotonic()
    server.server.handle_exit(signal.SIGTERM, None)
    server.stop(timeout=10)
    stopped_after = time.monotonic() - started
    stuck.join(timeout=10)

    assert stopped_after < 5, "the grace period bounds shutdown"
    assert fake_lm.wait_for(lambda: fake_lm.requests_disconnected == 1, timeout=5)
    assert app.state.service.state.value == "stopped"
