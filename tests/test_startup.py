"""`dspy-serve run` tells the truth at start-up: every mistake is one line (and a code frame where
there is code to show), exit 3, before a port is bound or a worker started."""

from __future__ import annotations

import signal
import socket
import subprocess
from pathlib import Path

import httpx

from tests.support.cli import CLI, cli_env, free_port, wait_for_line
from tests.support.fake_lm import FakeLM
from tests.support.settings import PROGRAMS

QA = f"qa={PROGRAMS / 'serving.py'}:qa"


def run_cli(
    *args: str, env: dict[str, str] | None = None, cwd: Path | None = None
) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [*CLI, "run", *args],
        env=env if env is not None else cli_env(),
        capture_output=True,
        text=True,
        timeout=120,
        cwd=cwd,
    )


def no_key_env() -> dict[str, str]:
    env = cli_env()
    env.pop("OPENAI_API_KEY")
    return env


def test_a_missing_provider_key_names_the_variable_and_the_model(tmp_path: Path) -> None:
    result = run_cli(
        QA, "--model", "openai/gpt-4o-mini", "--port", str(free_port()), env=no_key_env(), cwd=tmp_path
    )
    assert result.returncode == 3, result.stderr
    assert "model 'openai/gpt-4o-mini' needs OPENAI_API_KEY" in result.stderr
    assert "serving on" not in result.stderr and "Traceback" not in result.stderr


def test_an_allowed_model_without_its_key_is_refused_too(tmp_path: Path) -> None:
    result = run_cli(
        QA,
        "--model",
        "openai/gpt-4o-mini",
        "--allow-model",
        "anthropic/claude-3-5-haiku",
        env=cli_env(),
        cwd=tmp_path,
    )
    assert result.returncode == 3
    assert "model 'anthropic/claude-3-5-haiku' needs ANTHROPIC_API_KEY" in result.stderr


def test_check_lm_refuses_an_unreachable_lm_and_serves_a_working_one(fake_lm: FakeLM) -> None:
    dead = run_cli(
        QA,
        "--model",
        "openai/fake-model",
        "--api-base",
        f"http://127.0.0.1:{free_port()}/v1",
        "--check-lm",
        "--lm-retries",
        "0",
    )
    assert dead.returncode == 3, dead.stderr
    assert "model 'openai/fake-model' failed a test call: LMTransportError" in dead.stderr

    port = free_port()
    process = subprocess.Popen(
        [
            *CLI,
            "run",
            QA,
            "--model",
            "openai/fake-model",
            "--api-base",
            fake_lm.base_url,
            "--check-lm",
            "--port",
            str(port),
        ],
        env=cli_env(),
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        wait_for_line(process, "serving on")
        assert httpx.get(f"http://127.0.0.1:{port}/health/ready", timeout=10).status_code == 200
        assert fake_lm.requests_completed >= 1, "the probe reached the LM"
    finally:
        process.send_signal(signal.SIGINT)
        process.communicate(timeout=60)


def test_a_target_typo_with_workers_is_one_line_in_the_parent(tmp_path: Path) -> None:
    result = run_cli(
        f"{PROGRAMS / 'serving.py'}:qaa",
        "--model",
        "openai/fake-model",
        "--workers",
        "2",
        "--port",
        str(free_port()),
    )
    assert result.returncode == 3, result.stderr[-2000:]
    assert result.stderr.count("\n") == 1, result.stderr  # one line, no worker ever started
    assert "did you mean 'qa'?" in result.stderr


def test_import_failures_are_one_format_with_a_code_frame(tmp_path: Path) -> None:
    (tmp_path / "syntax.py").write_text("import dspy\n\ndef broken(:\n    pass\n")
    (tmp_path / "raises.py").write_text("import dspy\nx = 1\nraise RuntimeError('boom at import')\n")
    (tmp_path / "imports.py").write_text("import dspy\nimport not_a_module_anywhere\n")
    expected = {
        "syntax.py": ("syntax.py:3: SyntaxError: invalid syntax", "    3 | def broken(:", "^"),
        "raises.py": ("raises.py:3: RuntimeError: boom at import", "raise RuntimeError('boom at import')"),
        "imports.py": (
            "imports.py:2: ModuleNotFoundError: No module named",
            "    2 | import not_a_module_anywhere",
        ),
    }
    for file, parts in expected.items():
        result = run_cli(f"{file}:program", "--model", "openai/fake-model", cwd=tmp_path)
        assert result.returncode == 3, result.stderr
        assert result.stderr.startswith(f"dspy-serve: cannot start: {parts[0]}"), result.stderr
        for part in parts[1:]:
            assert part in result.stderr, result.stderr
        assert "Traceback" not in result.stderr


def test_a_target_typo_suggests_what_the_file_defines(tmp_path: Path) -> None:
    (tmp_path / "app.py").write_text(
        "import dspy\ntriage = dspy.Predict('text -> label')\nsummarize = dspy.Predict('text -> summary')\n"
    )
    result = run_cli("app.py:triag", "--model", "openai/fake-model", cwd=tmp_path)
    assert result.returncode == 3
    assert "did you mean 'triage'?" in result.stderr and "(it defines: triage, summarize)" in result.stderr


def test_a_taken_port_is_one_clear_line_and_no_banner() -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        result = run_cli(QA, "--model", "openai/fake-model", "--port", str(port))
    assert result.returncode == 3, result.stderr
    assert result.stderr == (
        f"dspy-serve: cannot start: port {port} on 127.0.0.1 is already in use; stop what listens there, "
        "or choose another --port (--port 0 picks a free one)\n"
    )


def test_the_banner_comes_once_serving_with_the_real_port(fake_lm: FakeLM) -> None:
    process = subprocess.Popen(
        [
            *CLI,
            "run",
            QA,
            "--model",
            "openai/fake-model",
            "--api-base",
            fake_lm.base_url,
            "--port",
            "0",
            "--log-level",
            "warning",
        ],
        env=cli_env(),
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        banner = wait_for_line(process, "serving on")
        assert banner.startswith("dspy-serve: serving on http://127.0.0.1:") and ":0 " not in banner, banner
        url = banner.split()[3]
        assert banner.rstrip().endswith(f"(playground: {url}/, docs: {url}/docs)")
        # Printed after the startup: ready at once.
        assert httpx.get(url + "/health/ready", timeout=10).status_code == 200
    finally:
        process.send_signal(signal.SIGINT)
        process.communicate(timeout=60)


def test_a_chat_reply_naming_no_such_output_stops_the_start() -> None:
    result = run_cli(QA, "--model", "openai/fake-model", "--chat-reply", "qa=answr")
    assert result.returncode == 3
    assert result.stderr == (
        "dspy-serve: cannot start: chat reply 'qa=answr': 'qa' has no str output 'answr'; "
        "its str outputs: answer\n"
    )
