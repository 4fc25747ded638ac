"""`dspy-serve run --reload`: the development loop restarts the server when the program's files or
its artifact change."""

from __future__ import annotations

import json
import signal
import subprocess
import time
from pathlib import Path

import dspy
import httpx

from tests.support.cli import CLI, cli_env, free_port, wait_for_line
from tests.support.fake_lm import FakeLM

PROGRAM = '''
import dspy


class Answer(dspy.Signature):
    """{doc}"""

    question: str = dspy.InputField()
    answer: str = dspy.OutputField()


qa = dspy.Predict(Answer)
'''


def ready_state(url: str, other_than: int | None, seconds: float = 90) -> tuple[int, dict[str, object]]:
    """(pid, ready body) of the server process, once one other than ``other_than`` answers."""
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        try:
            with httpx.Client(base_url=url, timeout=2) as http:
                ready = http.get("/health/ready")
                pid = http.get("/health/live").json()["pid"]
                if ready.status_code == 200 and pid != other_than:
                    return pid, ready.json()
        except httpx.TransportError:
            pass
        time.sleep(0.2)
    raise AssertionError("no (new) server process became ready")


def test_a_change_to_the_program_or_its_artifact_restarts_the_server(fake_lm: FakeLM, tmp_path: Path) -> None:
    program = tmp_path / "prog.py"
    program.write_text(PROGRAM.format(doc="Version one."))
    artifact = tmp_path / "prog.json"
    dspy.Predict(dspy.Signature("question -> answer", "Version one.")).save(str(artifact))
    state = json.loads(artifact.read_text())
    port = free_port()
    process = subprocess.Popen(
        [
            *CLI,
            "run",
            "qa=prog.py:qa",
            "--artifact",
            "prog.json",
            "--reload",
            "--port",
            str(port),
            "--model",
            "openai/fake-model",
            "--api-base",
            fake_lm.base_url,
            "--log-level",
            "warning",
        ],
        cwd=tmp_path,
        env=cli_env(),
        stderr=subprocess.PIPE,
        text=True,
    )
    url = f"http://127.0.0.1:{port}"
    try:
        wait_for_line(process, "serving with --reload")
        first, ready = ready_state(url, None)

        program.write_text(PROGRAM.format(doc="Version two."))
        second, _ = ready_state(url, first)

        state["demos"] = [{"question": "Capital of France?", "answer": "Paris"}]
        artifact.write_text(json.dumps(state))
        third, changed = ready_state(url, second)
    finally:
        process.send_signal(signal.SIGINT)
        process.communicate(timeout=60)
    assert len({first, second, third}) == 3
    sha = lambda body: body["programs"]["qa"]["artifact_sha256"]  # noqa: E731
    assert sha(changed) != sha(ready)


def test_a_change_that_cannot_load_is_one_line_and_the_last_good_version_keeps_serving(
    fake_lm: FakeLM, tmp_path: Path
) -> None:
    program = tmp_path / "prog.py"
    program.write_text(PROGRAM.format(doc="Version one."))
    log = tmp_path / "serve.log"  # the log inside the watched directory: never a change to reload for
    port = free_port()
    argv = [*CLI, "run", "qa=prog.py:qa", "--reload", "--port", str(port), "--model", "openai/fake-model"]
    argv += ["--api-base", fake_lm.base_url, "--log-level", "debug", "--log-format", "text"]
    with log.open("w") as written:
        process = subprocess.Popen(argv, cwd=tmp_path, env=cli_env(), stderr=written, stdout=written)
    url = f"http://127.0.0.1:{port}"
    try:
        first, _ = ready_state(url, None)
        program.write_text(
            PROGRAM.format(doc="Mid-edit.").replace("dspy.Predict(Answer)", "dspy.Predict(Answer")
        )
        deadline = time.monotonic() + 90
        while "cannot serve the change" not in log.read_text() and time.monotonic() < deadline:
            with httpx.Client(base_url=url, timeout=10) as http:  # never hangs while the error stands
                assert http.get("/health/live").json()["pid"] == first
            time.sleep(0.3)
        text = log.read_text()
        assert "dspy-serve: cannot serve the change: prog.py:" in text and "SyntaxError" in text, text
        assert "Traceback" not in text, text
        with httpx.Client(base_url=url, timeout=10) as http:
            response = http.post("/qa/invoke", json={"inputs": {"question": "still there?"}})
            assert response.status_code == 200 and http.get("/health/live").json()["pid"] == first
        # The log file is written to all the time, in the watched directory: no change is reported.
        settled = log.stat().st_size
        time.sleep(3)
        assert log.stat().st_size - settled < 2000, log.read_text()[settled:]
        assert log.read_text().count("change detected") <= 2

        program.write_text(PROGRAM.format(doc="Version two."))
        second, _ = ready_state(url, first)
        assert second != first
    finally:
        process.send_signal(signal.SIGINT)
        process.wait(timeout=60)
