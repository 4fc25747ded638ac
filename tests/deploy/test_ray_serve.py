"""`dspy-serve run --engine ray`: the same app as replicas of a Ray Serve deployment.

The cluster test starts a private Ray instance on loopback through the real CLI, talks to it
over HTTP, SIGKILLs a replica under load and checks that no request is lost, then stops it with
SIGTERM. The other tests check that the deployment is derived from our settings.
"""

from __future__ import annotations

import math
import os
import signal
import subprocess
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor

import httpx
import pytest

from dspy_serve import Client
from dspy_serve.settings import ServeSettings
from tests.support.cli import CLI, answering_pids, cli_env, free_port, require_answering, serve_qa
from tests.support.fake_lm import FakeLM, Hang
from tests.support.metrics import requests_counted
from tests.support.settings import PROGRAMS

pytest.importorskip("ray.serve")

from dspy_serve.deploy.ray_serve import APP_NAME, _bounded, app_builder, deployment

QA = f"qa={PROGRAMS / 'serving.py'}:qa"
# Ray 2.60 turns token authentication on for a cluster that `ray start` makes; a driver that
# connects to it must say so too (Ray's docs: RAY_AUTH_MODE=token; the token is ~/.ray/auth_token).
TOKEN_AUTH = {"RAY_AUTH_MODE": "token"}
# What `run` gives its private instance (ray_serve.py says why), as the operator of a small
# machine's cluster would: this test's head and the command share two busy cores.
PATIENT_PROXY = {"RAY_SERVE_PROXY_READY_CHECK_TIMEOUT_S": "30"}


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return True


@pytest.mark.timeout(300)
def test_two_replicas_survive_a_killed_one_and_report_usage_and_metrics(fake_lm: FakeLM) -> None:
    ray = ["--engine", "ray", "--replicas", "2", "--replica-cpus", "0.5", "--shutdown-grace", "5"]
    process, url = serve_qa(fake_lm, *ray)
    try:
        pids = require_answering(process, url, want=2, seconds=150)

        # Usage comes back per request, and /metrics on any replica counts both replicas.
        for index in range(6):
            response = httpx.post(url + "/qa/invoke", json={"inputs": {"question": f"q{index}"}}, timeout=30)
            assert response.status_code == 200, response.text
            assert response.json()["usage"]["openai/fake-model"]["total_tokens"] > 0
            assert len(response.headers.get_list("x-request-id")) == 1, "one id, set by Ray's proxy"
        assert requests_counted(httpx.get(url + "/metrics", timeout=5).text, "invoke") == 6

        # Streams pass through Ray's proxy, and a caller who leaves cancels the LM call it started.
        body = {"inputs": {"question": "streamed"}}
        with httpx.stream("POST", url + "/qa/stream", json=body, timeout=30) as stream:
            events = [line for line in stream.iter_lines() if line.startswith("event: ")]
        assert "event: token" in events and events[-1] == "event: prediction"
        fake_lm.when("hang", Hang())
        with pytest.raises(httpx.ReadTimeout):
            httpx.post(url + "/qa/invoke", json={"inputs": {"question": "hang"}}, timeout=2)
        assert fake_lm.wait_for(lambda: fake_lm.requests_disconnected == 1, timeout=15), "LM call closed"

        # Kill one replica while calls are in flight on both: every call still succeeds (Ray
        # re-routes or the client retries), and Ray starts a replacement.
        fake_lm.latency = 0.5
        with Client(url, timeout=30, retries=4) as client, ThreadPoolExecutor(16) as pool:
            qa = client.program("qa")
            futures = [pool.submit(qa, question=f"k{index}") for index in range(32)]
            time.sleep(0.3)
            victim = min(pids)
            os.kill(victim, signal.SIGKILL)
            answers = [future.result(timeout=120) for future in futures]
        assert all(answer.answer for answer in answers)
        fake_lm.latency = 0.0
        replacement = answering_pids(url, want=2, seconds=90) - {victim}
        assert replacement - pids, "Ray replaced the killed replica"
    finally:
        process.send_signal(signal.SIGTERM)
        output, _ = process.communicate(timeout=120)
    assert process.returncode == 0, output[-3000:]
    assert "ready on" in output
    assert not any(_alive(pid) for pid in pids | replacement), "replicas stop with the command"


@pytest.mark.timeout(300)
def test_sigterm_to_the_whole_process_group_still_ends_the_command(fake_lm: FakeLM) -> None:
    # systemd (KillMode=control-group) and `timeout` signal every process of the group, Ray's
    # own control processes included: the command must not wait forever on a control store
    # that is gone.
    process, url = serve_qa(fake_lm, "--engine", "ray", "--replica-cpus", "0.5", "--shutdown-grace", "1")
    pids = require_answering(process, url, want=1, seconds=150)  # or it stopped the command
    os.killpg(process.pid, signal.SIGTERM)
    output, _ = process.communicate(timeout=90)  # the drain (1 s) plus Ray's slack (30 s), bounded
    # It ends (with Ray's exit status 1: its control store is gone), saying why it stopped waiting.
    assert "Ray did not confirm the deletion" in output, output[-3000:]
    deadline = time.monotonic() + 60
    while any(_alive(pid) for pid in pids) and time.monotonic() < deadline:
        time.sleep(0.5)
    assert not any(_alive(pid) for pid in pids), "the replica does not outlive its cluster"


@pytest.mark.timeout(300)
def test_deploys_onto_a_running_cluster_and_leaves_it_running(fake_lm: FakeLM) -> None:
    gcs_port = free_port()
    # A one-node cluster on loopback, as `ray start` makes them; --block keeps it in the foreground.
    ray_start = [sys.executable, "-m", "ray.scripts.scripts", "start", "--head", "--block", "--num-cpus=2"]
    head = subprocess.Popen(
        [*ray_start, f"--port={gcs_port}", "--node-ip-address=127.0.0.1", "--include-dashboard=false"],
        env=cli_env(
            RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER="0", RAY_USAGE_STATS_ENABLED="0", **TOKEN_AUTH, **PATIENT_PROXY
        ),
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    try:
        ray = ["--engine", "ray", "--ray-address", f"127.0.0.1:{gcs_port}", "--replica-cpus", "0.5"]
        process, url = serve_qa(fake_lm, *ray, **TOKEN_AUTH)
        try:
            require_answering(process, url, want=1, seconds=150)
            response = httpx.post(url + "/qa/invoke", json={"inputs": {"question": "q"}}, timeout=30)
            assert response.status_code == 200, response.text
        finally:
            process.send_signal(signal.SIGTERM)
            output, _ = process.communicate(timeout=120)
        assert process.returncode == 0, output[-3000:]
        assert head.poll() is None, "the cluster outlives the command"
        gone = httpx.get(url + "/health/live", timeout=10)
        assert gone.status_code == 404, "the application was deleted; Ray's proxy still answers"
    finally:
        head.send_signal(signal.SIGTERM)
        head_output, _ = head.communicate(timeout=60)
    assert head.returncode is not None, head_output[-2000:]


def test_deployment_options_come_from_the_settings() -> None:
    fixed = deployment(
        ServeSettings(programs=[QA], replicas=3, max_in_flight=8, max_queue=4, replica_cpus=0.25)
    )
    assert fixed.num_replicas == 3
    assert fixed.max_ongoing_requests == 12, "a replica takes what it can run plus queue"
    assert fixed.max_queued_requests == 4
    assert fixed.ray_actor_options["num_cpus"] == 0.25

    scaling = deployment(ServeSettings(programs=[QA], replicas=1, max_replicas=4, max_in_flight=10))
    config = scaling._deployment_config.autoscaling_config
    assert (config.min_replicas, config.max_replicas, config.target_ongoing_requests) == (1, 4, 5)

    drained = deployment(ServeSettings(programs=[QA], shutdown_grace=7))
    assert drained._deployment_config.graceful_shutdown_timeout_s == 7


def test_app_builder_is_what_ray_config_files_import() -> None:
    application = app_builder({"programs": [QA], "replicas": 2})
    assert application._bound_deployment.name == "DspyServe"
    assert application._bound_deployment.num_replicas == 2
    assert APP_NAME == "dspy-serve"


def test_max_replicas_below_replicas_is_refused() -> None:
    with pytest.raises(ValueError, match="max_replicas cannot be below replicas"):
        ServeSettings(programs=[QA], replicas=3, max_replicas=2)


def test_busy_port_is_refused_before_ray_starts(fake_lm: FakeLM) -> None:
    result = subprocess.run(
        [*CLI, "run", QA, "--engine", "ray", "--port", str(fake_lm.port), "--model", "openai/fake-model"],
        env=cli_env(),
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 3
    assert f"cannot listen on 127.0.0.1:{fake_lm.port}" in result.stderr


def test_a_call_to_ray_is_abandoned_at_its_bound_or_on_a_stop_signal() -> None:
    # A stop signal while serve.run still waits for the application (a supervisor stopping the
    # command mid-start) must not leave the command waiting on Ray's control processes.
    stop, release = threading.Event(), threading.Event()
    threading.Timer(0.2, stop.set).start()
    started = time.monotonic()
    assert not _bounded(release.wait, math.inf, stop), "stopped"
    assert time.monotonic() - started < 5
    assert not _bounded(release.wait, 0.2), "out of time"
    assert _bounded(lambda: None, 5), "finished"
    with pytest.raises(RuntimeError, match="deployment failed"):
        _bounded(_failing_deployment, 5)
    release.set()


def _failing_deployment() -> None:
    raise RuntimeError("deployment failed")
