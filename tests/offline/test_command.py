"""``dspy-serve batch`` as a user runs it: a real subprocess, real files, DSPy's real LM path
over HTTP to the fake LM; in-process and against a served program."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import time
from pathlib import Path

from tests.support.cli import CLI, cli_env, require_answering, serve_qa
from tests.support.fake_lm import FakeLM, Malformed
from tests.support.settings import PROGRAMS

QA = f"qa={PROGRAMS / 'serving.py'}:qa"


def _write_rows(path: Path, n: int) -> None:
    path.write_text("".join(json.dumps({"id": f"t{i}", "question": f"q{i}?"}) + "\n" for i in range(n)))


def _batch(fake: FakeLM, *args: str) -> list[str]:
    return [*CLI, "batch", QA, "--model", "openai/fake-model", "--api-base", fake.base_url, *args]


def _lines(path: Path) -> list[dict[str, object]]:
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines()]


def test_every_row_is_answered_in_input_order_with_its_key_and_usage(fake_lm: FakeLM, tmp_path: Path) -> None:
    source, out = tmp_path / "in.jsonl", tmp_path / "out.jsonl"
    _write_rows(source, 30)
    done = subprocess.run(
        _batch(fake_lm, "--input", str(source), "--output", str(out), "--key", "id", "--concurrency", "8"),
        env=cli_env(),
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 0, done.stderr
    lines = _lines(out)
    assert [line["key"] for line in lines] == [f"t{i}" for i in range(30)]
    assert all(isinstance(line["outputs"], dict) and line["outputs"]["answer"] for line in lines)  # type: ignore[index]
    assert all(line["usage"] for line in lines)
    assert fake_lm.requests_started == 30
    assert fake_lm.peak_in_flight <= 8
    assert "30 of 30 rows done: 30 ok, 0 failed" in done.stderr


def test_a_killed_run_resumes_without_calling_the_lm_for_its_written_rows(
    fake_lm: FakeLM, tmp_path: Path
) -> None:
    source, out = tmp_path / "in.jsonl", tmp_path / "out.jsonl"
    _write_rows(source, 40)
    fake_lm.latency = 0.2
    argv = _batch(fake_lm, "--input", str(source), "--output", str(out), "--key", "id", "--concurrency", "4")
    first = subprocess.Popen(argv, env=cli_env(), stderr=subprocess.DEVNULL, start_new_session=True)
    deadline = time.monotonic() + 90
    while time.monotonic() < deadline and (not out.exists() or out.read_text().count("\n") < 8):
        time.sleep(0.05)
    os.killpg(first.pid, signal.SIGKILL)
    first.wait(timeout=10)
    with out.open("a", encoding="utf-8") as torn:  # as if the kill had cut a line in half
        torn.write('{"key":"t')
    kept = len(_lines_whole(out))
    assert 8 <= kept < 40

    fake_lm.reset()
    second = subprocess.run(argv, env=cli_env(), capture_output=True, text=True, timeout=120)
    assert second.returncode == 0, second.stderr
    assert [line["key"] for line in _lines(out)] == [f"t{i}" for i in range(40)]
    assert fake_lm.requests_started == 40 - kept  # none for the rows already written
    assert f"{kept} done by an earlier run" in second.stderr


def _lines_whole(path: Path) -> list[str]:
    return [line for line in path.read_text(encoding="utf-8").split("\n")[:-1]]


def test_failed_rows_get_typed_error_lines_and_exit_1(fake_lm: FakeLM, tmp_path: Path) -> None:
    source, out = tmp_path / "in.jsonl", tmp_path / "out.jsonl"
    source.write_text('{"question": "fine?"}\n{"question": "boom?"}\n{"wrong": 1}\nnot json\n')
    fake_lm.when("boom?", Malformed())
    done = subprocess.run(
        _batch(fake_lm, "--input", str(source), "--output", str(out)),
        env=cli_env(),
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 1, done.stderr
    lines = _lines(out)
    assert [line["key"] for line in lines] == [0, 1, 2, 3]
    assert "outputs" in lines[0]
    assert lines[1]["error"]["code"] == "upstream_error"  # type: ignore[index]
    assert lines[2]["error"]["code"] == "invalid_input"  # type: ignore[index]
    assert lines[2]["error"]["errors"][0]["loc"][-1] == "question"  # type: ignore[index]
    assert lines[3]["error"]["code"] == "invalid_input"  # type: ignore[index]
    assert "Traceback" not in done.stderr


def test_the_same_run_against_a_served_program_gives_the_same_lines(fake_lm: FakeLM, tmp_path: Path) -> None:
    source, out = tmp_path / "in.csv", tmp_path / "out.jsonl"
    source.write_text("id,question\n" + "".join(f"t{i},q{i}?\n" for i in range(12)))
    server, url = serve_qa(fake_lm)
    try:
        require_answering(server, url, 1, 60)
        done = subprocess.run(
            [*CLI, "batch", "--url", url, "qa", "--input", str(source), "--output", str(out), "--key", "id"],
            env=cli_env(),
            capture_output=True,
            text=True,
            timeout=120,
        )
    finally:
        os.killpg(server.pid, signal.SIGTERM)
        server.wait(timeout=30)
    assert done.returncode == 0, done.stderr
    lines = _lines(out)
    assert [line["key"] for line in lines] == [f"t{i}" for i in range(12)]
    assert all(line["outputs"]["answer"] for line in lines)  # type: ignore[index]
    assert fake_lm.requests_started == 12


def test_ray_data_gives_the_lines_of_the_in_process_run(fake_lm: FakeLM, tmp_path: Path) -> None:
    source = tmp_path / "in.csv"
    source.write_text("id,question\n" + "".join(f"t{i},{i}\n" for i in range(20)))  # "3": text, not a number
    local, on_ray = tmp_path / "local.jsonl", tmp_path / "ray.jsonl"
    for out, extra in ((local, []), (on_ray, ["--engine", "ray", "--replicas", "2"])):
        done = subprocess.run(
            _batch(fake_lm, "--input", str(source), "--output", str(out), "--key", "id", *extra),
            env=cli_env(),
            capture_output=True,
            text=True,
            timeout=300,
        )
        assert done.returncode == 0, done.stderr[-3000:]

    def comparable(path: Path) -> list[tuple[object, object, object]]:
        return [(line["key"], line["index"], line["outputs"]) for line in _lines(path)]

    assert comparable(on_ray) == comparable(local)
    assert [line["key"] for line in _lines(on_ray)] == [f"t{i}" for i in range(20)]
    assert fake_lm.requests_started == 40


def test_an_input_ray_cannot_read_stops_the_run_with_one_line(fake_lm: FakeLM, tmp_path: Path) -> None:
    source, out = tmp_path / "in.jsonl", tmp_path / "out.jsonl"
    source.write_text('{"question": "a?"}\nnot json\n')
    done = subprocess.run(
        _batch(fake_lm, "--input", str(source), "--output", str(out), "--engine", "ray"),
        env=cli_env(),
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert done.returncode == 2
    assert "dspy-serve: batch stopped: Ray Data failed:" in done.stderr
    assert "Traceback" not in done.stderr


def test_failed_rows_stay_failed_on_resume_until_retried(fake_lm: FakeLM, tmp_path: Path) -> None:
    source, out = tmp_path / "in.jsonl", tmp_path / "out.jsonl"
    source.write_text("".join(json.dumps({"question": q}) + "\n" for q in ("a?", "boom?", "c?")))
    argv = _batch(fake_lm, "--input", str(source), "--output", str(out))
    fake_lm.when("boom?", Malformed())
    first = subprocess.run(argv, env=cli_env(), capture_output=True, text=True, timeout=120)
    assert first.returncode == 1
    fake_lm.reset()  # the LM answers everything from now on

    again = subprocess.run(argv, env=cli_env(), capture_output=True, text=True, timeout=120)
    assert again.returncode == 1  # the file still holds a failed row
    assert "1 rows failed in an earlier run: add --retry-errors" in again.stderr
    assert fake_lm.requests_started == 0

    kept = _lines(out)
    retried = subprocess.run(
        [*argv, "--retry-errors"], env=cli_env(), capture_output=True, text=True, timeout=120
    )
    assert retried.returncode == 0, retried.stderr
    lines = _lines(out)
    assert [line["key"] for line in lines] == [0, 1, 2]
    assert lines[0] == kept[0] and lines[2] == kept[2]  # kept as they were, not run again
    assert "outputs" in lines[1]
    assert fake_lm.requests_started == 1
    assert not (tmp_path / "out.jsonl.retry").exists()
