"""``dspy-serve call`` with durable jobs (#28), the real command in a subprocess against a real
server: a file submitted and followed, results in input order, Ctrl-C and --follow, --cancel."""

from __future__ import annotations

import json
import re
import signal
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from dspy_serve import Client, create_app
from tests.support.cli import CLI, cli_env
from tests.support.dspy_prompts import Body, prompt_text
from tests.support.fake_lm import FakeLM
from tests.support.servers import ServerThread, serving
from tests.support.settings import PROGRAMS, fake_settings

QA = f"qa={PROGRAMS / 'serving.py'}:qa"


def echo(body: Body) -> dict[str, str]:
    """Answers question 'qN' with 'aN': each result line can be matched to its input."""
    numbers = re.findall(r"\bq(\d+)\b", prompt_text(body))
    return {"answer": f"a{numbers[-1]}" if numbers else "?"}


@pytest.fixture
def jobs_server(fake_lm: FakeLM, provider_key: str, tmp_path: Path) -> Iterator[ServerThread]:
    fake_lm.answers = echo
    settings = fake_settings(
        fake_lm, programs=[QA], store=f"sqlite:///{tmp_path / 'store.db'}", jobs=True, job_concurrency=2
    )
    with serving(create_app(settings)) as server:
        yield server


def call(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([*CLI, "call", *args], env=cli_env(), capture_output=True, text=True, timeout=180)


def lines_of(text: str) -> list[dict[str, Any]]:
    return [json.loads(line) for line in text.splitlines() if line.strip()]


def questions(path: Path, items: list[Any]) -> Path:
    path.write_text("".join(json.dumps(item) + "\n" for item in items))
    return path


def test_a_file_runs_as_a_job_and_its_results_are_written_in_input_order(
    jobs_server: ServerThread, tmp_path: Path
) -> None:
    items: list[Any] = [{"question": f"q{i}"} for i in range(7)]
    items[3] = {"quest": "not an input of qa"}
    output = tmp_path / "answers.jsonl"
    ran = call(jobs_server.base_url, "qa", "--input", str(questions(tmp_path / "q.jsonl", items)),
               "--output", str(output))  # fmt: skip
    assert ran.returncode == 1, ran.stderr  # an item failed: as `dspy-serve batch`, exit 1
    lines = lines_of(output.read_text())
    assert [line["index"] for line in lines] == list(range(7))
    assert [line.get("outputs", {}).get("answer") for line in lines] == [
        "a0",
        "a1",
        "a2",
        None,
        "a4",
        "a5",
        "a6",
    ]
    assert lines[3]["error"]["code"] == "invalid_input" and all(line["call_id"] for line in lines)
    job_id = re.search(r"job (\w+): 7 items submitted", ran.stderr)
    assert job_id is not None, ran.stderr
    assert f"job {job_id[1]} done: 6 of 7 items answered, 1 failed" in ran.stderr
    assert "errors: invalid_input x1" in ran.stderr and f"results: {output}" in ran.stderr
    again = call(jobs_server.base_url, "qa", "--input", str(tmp_path / "q.jsonl"), "--output", str(output))
    assert again.returncode == 2 and "already holds results" in again.stderr  # never appends a new job


def test_a_csv_file_writes_its_results_to_stdout_and_exits_0_when_all_are_answered(
    jobs_server: ServerThread, tmp_path: Path
) -> None:
    rows = tmp_path / "q.csv"
    rows.write_text("question\n" + "".join(f"q{i}\n" for i in range(4)))
    ran = call(jobs_server.base_url, "qa", "--input", str(rows))
    assert ran.returncode == 0, ran.stderr
    assert [line["outputs"]["answer"] for line in lines_of(ran.stdout)] == ["a0", "a1", "a2", "a3"]


def test_job_runs_one_call_as_a_job(jobs_server: ServerThread) -> None:
    ran = call(jobs_server.base_url, "qa", "question=q7", "--job")
    assert ran.returncode == 0, ran.stderr
    [line] = lines_of(ran.stdout)
    assert (line["index"], line["outputs"]) == (0, {"answer": "a7"})


def test_ctrl_c_stops_following_and_follow_writes_the_rest_once(
    jobs_server: ServerThread, fake_lm: FakeLM, tmp_path: Path
) -> None:
    fake_lm.latency = 0.4  # 12 items, 2 at a time: ~2.4 s, time to interrupt midway
    source = questions(tmp_path / "q.jsonl", [{"question": f"q{i}"} for i in range(12)])
    output = tmp_path / "answers.jsonl"
    argv = [*CLI, "call", jobs_server.base_url, "qa", "--input", str(source), "--output", str(output)]
    process = subprocess.Popen(argv, env=cli_env(), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.monotonic() + 120
        while not (output.exists() and output.read_text().count("\n") >= 1) and time.monotonic() < deadline:
            assert process.poll() is None, process.communicate()
            time.sleep(0.05)
        process.send_signal(signal.SIGINT)
        _, stderr = process.communicate(timeout=60)
    finally:
        process.kill()
    assert process.returncode == 130, stderr
    job_id = re.search(r"job (\w+): 12 items submitted", stderr)
    assert job_id is not None, stderr
    url, ident = jobs_server.base_url, job_id[1]
    assert f"dspy-serve call {url} --follow {ident} --output {output}" in stderr
    assert f"dspy-serve call {url} --cancel {ident}" in stderr
    written = len(lines_of(output.read_text()))
    with Client(url) as client:
        assert client.job(ident)["state"] != "cancelled"  # Ctrl-C stops following, not the job
    followed = call(url, "--follow", ident, "--output", str(output))
    assert followed.returncode == 0, followed.stderr
    lines = lines_of(output.read_text())
    assert [line["index"] for line in lines] == list(range(12)), f"{written} lines before --follow"
    assert [line["outputs"]["answer"] for line in lines] == [f"a{i}" for i in range(12)]
    wrong = tmp_path / "other.jsonl"
    wrong.write_text(json.dumps({"index": 0, "call_id": "not-this-jobs"}) + "\n")
    refused = call(url, "--follow", ident, "--output", str(wrong))
    assert refused.returncode == 2 and "are not job" in refused.stderr
    wrong.write_text("not a result line\n")
    garbage = call(url, "--follow", ident, "--output", str(wrong))
    assert garbage.returncode == 2 and "are not job" in garbage.stderr


def test_cancel_stops_the_job_and_its_results_say_so(
    jobs_server: ServerThread, fake_lm: FakeLM, tmp_path: Path
) -> None:
    fake_lm.latency = 1.0
    with Client(jobs_server.base_url) as client:
        job_id = client.program("qa").submit([{"question": f"q{i}"} for i in range(10)])
    cancelled = call(jobs_server.base_url, "--cancel", job_id)
    assert cancelled.returncode == 0, cancelled.stderr
    assert json.loads(cancelled.stdout)["state"] == "cancelled"
    followed = call(jobs_server.base_url, "--follow", job_id)
    assert followed.returncode == 1  # cancelled items are failed ones
    codes = [line.get("error", {}).get("code") for line in lines_of(followed.stdout)]
    assert len(codes) == 10 and "job_cancelled" in codes


def test_a_server_without_jobs_or_a_bad_command_line_is_one_line(
    fake_lm: FakeLM, provider_key: str, tmp_path: Path
) -> None:
    source = questions(tmp_path / "q.jsonl", [{"question": "q1"}])
    with serving(create_app(fake_settings(fake_lm, programs=[QA]))) as server:
        no_jobs = call(server.base_url, "qa", "--input", str(source))
        unknown = call(server.base_url, "--follow", "0" * 32)
    assert no_jobs.returncode == 1 and "runs no durable jobs: start it with --jobs" in no_jobs.stderr
    assert unknown.returncode == 1 and "404" in unknown.stderr
    both = call("http://127.0.0.1:1", "qa", "question=q", "--input", str(source))
    no_name = call("http://127.0.0.1:1", "--output", "x.jsonl")
    assert both.returncode == 2 and "drop the FIELD=VALUE" in both.stderr
    assert no_name.returncode == 2 and "give the program's NAME" in no_name.stderr
