"""The real ``dspy-serve`` command, in a subprocess."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import time
from pathlib import Path

import httpx

from tests.support.cli import CLI, answering_pids, cli_env, free_port, require_answering, serve_qa
from tests.support.fake_lm import FakeLM
from tests.support.settings import FAKE_KEY, PROGRAMS


def test_help_documents_every_setting() -> None:
    result = subprocess.run([*CLI, "run", "--help"], capture_output=True, text=True, timeout=60, check=True)
    for flag in (
        "--model",
        "--allow-model",
        "--artifact",
        "--artifact-optional",
        "--allow-pickle",
        "--timeout",
        "--max-in-flight",
        "--cache",
        "--config",
        "DSPY_SERVE_MODEL",
    ):
        assert flag in result.stdout


def test_run_help_groups_the_options_and_types_them() -> None:
    result = subprocess.run([*CLI, "run", "--help"], capture_output=True, text=True, timeout=60, check=True)
    help_text = result.stdout
    assert "run [OPTIONS] TARGET..." in help_text  # required, from the command line, env or config
    headings = [
        line for line in help_text.splitlines() if line and not line[0].isspace() and line.endswith(":")
    ]
    assert headings == [
        "Command:",
        "Programs:",
        "Language model:",
        "DSPy LM cache:",
        "Response cache and coalescing:",
        "Limits:",
        "Security:",
        "HTTP server:",
        "Playground and inspection:",
        "Development:",
        "Scaling:",
        "Performance tuning:",
        "Data loop (store, capture, feedback):",
        "Durable jobs:",
        "Program versions (rollouts):",
        "Logging and tracing:",
    ]
    assert "Set it empty in the environment" in " ".join(help_text.split())
    for typed in ("--timeout FLOAT", "--port INTEGER", "--api-keys-file PATH", "--adapter [auto|chat|json]"):
        assert typed in help_text
    bad = subprocess.run(
        [*CLI, "run", "x.py:p", "--port", "eighty"], env=cli_env(), capture_output=True, text=True, timeout=60
    )
    assert bad.returncode == 2 and "'eighty' is not a valid integer" in bad.stderr


def test_run_serves_a_program_until_interrupted(fake_lm: FakeLM, tmp_path: Path) -> None:
    fake_lm.answers = {"answer": "Paris"}
    port = free_port()
    config = tmp_path / "serve.toml"
    config.write_text(f'model = "openai/fake-model"\napi_base = "{fake_lm.base_url}"\n')
    process = subprocess.Popen(
        [*CLI, "run", f"qa={PROGRAMS / 'serving.py'}:qa", "--config", str(config), "--port", str(port)],
        env=cli_env(),
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    try:
        url = f"http://127.0.0.1:{port}"
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            try:
                if httpx.get(url + "/health/ready", timeout=1).status_code == 200:
                    break
            except httpx.TransportError:
                time.sleep(0.1)
        response = httpx.post(url + "/qa/invoke", json={"inputs": {"question": "Capital?"}}, timeout=10)
        assert response.status_code == 200, response.text
        assert response.json()["outputs"] == {"answer": "Paris"}
    finally:
        process.send_signal(signal.SIGINT)
        output, _ = process.communicate(timeout=30)
    assert process.returncode == 0, output
    assert FAKE_KEY not in output


def test_a_missing_artifact_stops_startup_with_a_clear_message(tmp_path: Path) -> None:
    result = subprocess.run(
        [
            *CLI,
            "run",
            f"{PROGRAMS / 'serving.py'}:qa",
            "--model",
            "openai/fake-model",
            "--artifact",
            str(tmp_path / "missing.json"),
        ],
        env=cli_env(),
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 3
    assert "missing.json" in result.stderr and "--artifact-optional" in result.stderr
    assert "Traceback" not in result.stderr


def test_bad_setting_values_are_usage_errors() -> None:
    result = subprocess.run(
        [*CLI, "run", "x.py:p", "--timeout", "-1"], env=cli_env(), capture_output=True, text=True, timeout=60
    )
    assert result.returncode == 2
    assert "timeout" in result.stderr and "greater than 0" in result.stderr


def test_a_typo_in_env_or_toml_names_the_file_and_the_setting(tmp_path: Path) -> None:
    (tmp_path / ".env").write_text("DSPY_SERVE_MODLE=openai/fake-model\nOPENAI_API_KEY=sk-x\n")
    (tmp_path / "serve.toml").write_text("timeot = 3\n")
    result = subprocess.run(
        [*CLI, "run", "x.py:p", "--config", "serve.toml"],
        env=cli_env(),
        capture_output=True,
        text=True,
        timeout=60,
        cwd=tmp_path,
    )
    assert result.returncode == 2
    assert "serve.toml: unknown setting 'timeot'; did you mean 'timeout'?" in result.stderr
    assert ".env: unknown setting 'DSPY_SERVE_MODLE'; did you mean 'DSPY_SERVE_MODEL'?" in result.stderr


def test_call_prints_the_outputs(fake_lm: FakeLM) -> None:
    from dspy_serve import create_app
    from tests.support.servers import serving
    from tests.support.settings import fake_settings

    fake_lm.answers = {"answer": "Paris"}
    os.environ.setdefault("OPENAI_API_KEY", FAKE_KEY)
    app = create_app(fake_settings(fake_lm, programs=[f"qa={PROGRAMS / 'serving.py'}:qa"]))
    with serving(app) as server:
        plain = subprocess.run(
            [*CLI, "call", server.base_url, "qa", "question=Capital?"],
            env=cli_env(),
            capture_output=True,
            text=True,
            timeout=60,
        )
        streamed = subprocess.run(
            [*CLI, "call", server.base_url, "qa", "question=Capital?", "--stream"],
            env=cli_env(),
            capture_output=True,
            text=True,
            timeout=60,
        )
        refused = subprocess.run(
            [*CLI, "call", server.base_url, "nope", "question=q"],
            env=cli_env(),
            capture_output=True,
            text=True,
            timeout=60,
        )
    assert plain.returncode == 0, plain.stderr
    assert json.loads(plain.stdout)["outputs"] == {"answer": "Paris"}
    assert streamed.stdout.startswith("answer: Paris\n")
    assert refused.returncode == 1 and "404 program_not_found" in refused.stderr
    assert "no program named 'nope' on this server; it serves: qa" in refused.stderr


def test_a_program_named_like_a_reserved_route_stops_startup() -> None:
    result = subprocess.run(
        [*CLI, "run", f"health={PROGRAMS / 'serving.py'}:qa", "--model", "openai/fake-model"],
        env=cli_env(),
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 3, result.stderr
    assert "'health' is reserved" in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1 and "Traceback" not in result.stderr


def test_a_key_source_without_keys_stops_startup(tmp_path: Path) -> None:
    empty = tmp_path / "keys.txt"
    empty.write_text("# nobody yet\n   # not:a-key\n")
    runs = {
        "missing file": ([f"--api-keys-file={tmp_path / 'missing.txt'}"], {}),
        "empty file": ([f"--api-keys-file={empty}"], {}),
        "empty list": ([], {"DSPY_SERVE_API_KEYS": " , "}),
    }
    for label, (flags, env) in runs.items():
        result = subprocess.run(
            [*CLI, "run", f"{PROGRAMS / 'serving.py'}:qa", "--model", "openai/fake-model", *flags],
            env=cli_env(**env),
            capture_output=True,
            text=True,
            timeout=60,
            cwd=tmp_path,
        )
        assert result.returncode == 3, (label, result.stderr)
        lines = result.stderr.strip().splitlines()
        assert len(lines) == 1 and ("API key" in lines[0] or "key file" in lines[0]), (label, lines)
        assert "Traceback" not in result.stderr


def test_the_startup_log_says_whether_auth_is_on(fake_lm: FakeLM) -> None:
    for env, expected in (
        ({"DSPY_SERVE_API_KEYS": "a:sk-one,b:sk-two"}, "API keys: on (2 keys)"),
        ({}, "API keys: off"),
    ):
        process, url = serve_qa(fake_lm, "--log-format", "text", **env)
        try:
            assert answering_pids(url, 1, 60), "the server did not become ready"
        finally:
            process.send_signal(signal.SIGINT)
            output, _ = process.communicate(timeout=30)
        assert expected in output
        assert "sk-one" not in output and "sk-two" not in output


def test_provider_credentials_are_read_from_dotenv_in_the_working_directory(
    fake_lm: FakeLM, tmp_path: Path
) -> None:
    fake_lm.answers = {"answer": "Paris"}
    (tmp_path / ".env").write_text(f"OPENAI_API_KEY={FAKE_KEY}\nDSPY_SERVE_MODEL=openai/fake-model\n")
    env = {k: v for k, v in cli_env().items() if k != "OPENAI_API_KEY"}
    port = free_port()
    argv = [
        *CLI,
        "run",
        f"qa={PROGRAMS / 'serving.py'}:qa",
        "--port",
        str(port),
        "--api-base",
        fake_lm.base_url,
    ]
    process = subprocess.Popen(
        argv, env=env, cwd=tmp_path, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True
    )
    try:
        url = f"http://127.0.0.1:{port}"
        assert answering_pids(url, 1, 60), "the server did not become ready"
        response = httpx.post(url + "/qa/invoke", json={"inputs": {"question": "Capital?"}}, timeout=10)
    finally:
        process.send_signal(signal.SIGINT)
        output, _ = process.communicate(timeout=30)
    assert response.status_code == 200, (response.text, output)
    assert fake_lm.requests_started == 1


def test_an_artifact_naming_an_endpoint_stops_startup_naming_file_and_key(tmp_path: Path) -> None:
    import json

    import dspy

    from tests.support.programs.serving import Answer

    artifact = tmp_path / "evil.json"
    dspy.Predict(Answer).save(str(artifact))
    state = json.loads(artifact.read_text())
    state["config"] = {"temperature": 0.1, "api_base": "http://attacker.example/v1"}
    artifact.write_text(json.dumps(state))

    result = subprocess.run(
        [
            *CLI,
            "run",
            f"{PROGRAMS / 'serving.py'}:qa",
            "--model",
            "openai/fake-model",
            "--artifact",
            str(artifact),
        ],
        env=cli_env(),
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 3
    assert str(artifact) in result.stderr and "'api_base'" in result.stderr
    assert "Traceback" not in result.stderr


def test_call_streams_each_field_under_its_label_and_names_bad_fields(fake_lm: FakeLM) -> None:
    from dspy_serve import create_app
    from tests.support.servers import serving
    from tests.support.settings import fake_settings

    fake_lm.answers = {"reasoning": "France's capital.", "answer": "Paris"}
    os.environ.setdefault("OPENAI_API_KEY", FAKE_KEY)
    app = create_app(fake_settings(fake_lm, programs=[f"cot={PROGRAMS / 'sample_programs.py'}:cot"]))
    with serving(app) as server:
        streamed = subprocess.run(
            [*CLI, "call", server.base_url, "cot", "question=Capital?", "--stream"],
            env=cli_env(),
            capture_output=True,
            text=True,
            timeout=60,
        )
        invalid = subprocess.run(
            [*CLI, "call", server.base_url, "cot", "questio=Capital?"],
            env=cli_env(),
            capture_output=True,
            text=True,
            timeout=60,
        )
    assert streamed.returncode == 0, streamed.stderr
    assert streamed.stdout.startswith("predict.reasoning: France's capital.\npredict.answer: Paris\n"), (
        streamed.stdout
    )
    assert invalid.returncode == 1
    assert invalid.stderr.splitlines() == [
        "dspy-serve: 422 invalid_input: The request does not match the program's input schema.",
        "  inputs.question: Field required",
        "  inputs.questio: Extra inputs are not permitted",
    ]


def test_call_to_a_server_that_is_not_there_is_one_line() -> None:
    port = free_port()
    for url, reason in (
        (f"127.0.0.1:{port}", "Connection refused"),
        ("ftp://example", "unsupported protocol"),
    ):
        result = subprocess.run(
            [*CLI, "call", url, "qa", "question=q", "--timeout", "5"],
            env=cli_env(),
            capture_output=True,
            text=True,
            timeout=60,
        )
        assert result.returncode == 1
        assert len(result.stderr.splitlines()) == 1, result.stderr
        assert result.stderr.startswith("dspy-serve: cannot reach ") and reason in result.stderr, (
            result.stderr
        )


def _serve_configured_lm(fake_lm: FakeLM, *flags: str) -> tuple[str, str, dict[str, object]]:
    """``run`` of a program file that configures its own LM: (the model /programs reports, the
    command's output, the LM request it made)."""
    port = free_port()
    argv = [*CLI, "run", f"qa={PROGRAMS / 'configured_lm.py'}:qa", "--port", str(port), *flags]
    env = cli_env(FAKE_LM_BASE_URL=fake_lm.base_url)
    process = subprocess.Popen(
        argv, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, start_new_session=True
    )
    url = f"http://127.0.0.1:{port}"
    try:
        require_answering(process, url, want=1, seconds=60)
        fake_lm.answers = {"answer": "Paris"}
        response = httpx.post(
            url + "/qa/invoke", json={"inputs": {"question": "Capital of France?"}}, timeout=30
        )
        assert response.status_code == 200, response.text
        model = httpx.get(url + "/programs/qa", timeout=10).json()["model"]
    finally:
        process.send_signal(signal.SIGINT)
        output, _ = process.communicate(timeout=30)
    return model, output, fake_lm.last_request


def test_with_no_model_the_lm_a_program_file_configures_is_served(fake_lm: FakeLM) -> None:
    # DSPy's tutorials start with dspy.configure(lm=dspy.LM(...)): plain DSPy calls that LM, so
    # does the server (its endpoint, temperature and max_tokens too), not the embedded model.
    model, output, sent = _serve_configured_lm(fake_lm)

    assert model == "openai/fake-model"
    max_tokens = sent.get("max_tokens", sent.get("max_completion_tokens"))
    assert (sent["model"], sent["temperature"], max_tokens) == ("fake-model", 0.3, 77)
    assert "serving on openai/fake-model, the LM a program configures" in output


def test_a_given_model_wins_over_the_one_a_program_file_configures(fake_lm: FakeLM) -> None:
    model, output, sent = _serve_configured_lm(
        fake_lm, "--model", "openai/other-model", "--api-base", fake_lm.base_url
    )

    assert (model, sent["model"]) == ("openai/other-model", "other-model")
    assert "a program configures openai/fake-model (dspy.configure); serving on openai/other-model" in output


def test_a_tutorial_file_without_its_provider_key_is_told_about_the_embedded_model(tmp_path: Path) -> None:
    # DSPy's tutorials configure a provider's model; a newcomer without its key learns the way out.
    (tmp_path / "tutorial.py").write_text(
        "import dspy\n\n"
        'dspy.configure(lm=dspy.LM("openai/gpt-4o-mini"))\n'
        'qa = dspy.Predict("question -> answer")\n'
    )
    env = cli_env()
    env.pop("OPENAI_API_KEY")
    result = subprocess.run(
        [*CLI, "run", "tutorial.py:qa", "--port", str(free_port())],
        env=env,
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 3, result.stderr
    refusal = [line for line in result.stderr.splitlines() if "cannot start" in line]
    assert len(refusal) == 1 and "Traceback" not in result.stderr, result.stderr
    assert "needs OPENAI_API_KEY" in refusal[0]
    assert "--model local" in refusal[0] and "--model PROVIDER/MODEL" in refusal[0]
    help_text = subprocess.run(
        [*CLI, "run", "--help"], capture_output=True, text=True, timeout=60, check=True
    ).stdout
    assert "'local' for the embedded model" in " ".join(help_text.split())


TYPED_PROGRAM = """
import dspy

triage = dspy.Predict("ticket: str, count: int, urgent: bool, tags: list[str], note: str | None -> answer")
"""


def test_call_reads_each_value_as_the_programs_input_schema_says(fake_lm: FakeLM, tmp_path: Path) -> None:
    from dspy_serve import create_app
    from tests.support.dspy_prompts import prompt_text
    from tests.support.servers import serving
    from tests.support.settings import fake_settings

    (tmp_path / "typed.py").write_text(TYPED_PROGRAM)
    fake_lm.answers = {"answer": "ok"}
    os.environ.setdefault("OPENAI_API_KEY", FAKE_KEY)
    app = create_app(fake_settings(fake_lm, programs=[f"triage={tmp_path / 'typed.py'}:triage"]))

    def call(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [*CLI, "call", server.base_url, "triage", *args],
            env=cli_env(),
            capture_output=True,
            text=True,
            timeout=60,
        )

    with serving(app) as server:
        # A str field takes the text as written, even when it reads as JSON; the others are JSON.
        typed = call("ticket=12345", "count=3", "urgent=true", 'tags=["a", "b"]', "note=null")
        assert typed.returncode == 0, typed.stderr
        prompt = prompt_text(fake_lm.last_request)
        assert "12345" in prompt and '"a"' in prompt and '"b"' in prompt, prompt
        as_bool_text = call("ticket=true", "count=1", "urgent=false", "tags=[]")
        assert as_bool_text.returncode == 0, as_bool_text.stderr
        # A value that is not JSON where the schema wants a number: the server names the field.
        wrong = call("ticket=x", "count=three", "urgent=true", "tags=[]")
        assert wrong.returncode == 1 and "  inputs.count:" in wrong.stderr, wrong.stderr
        # --json takes a whole body, options included; FIELD=VALUE adds to its inputs.
        body = {"inputs": {"ticket": "7", "count": 1, "urgent": True}, "options": {"max_tokens": 33}}
        whole = call("--json", json.dumps(body), "tags=[]")
        assert whole.returncode == 0, whole.stderr
        sent = fake_lm.last_request
        assert sent.get("max_tokens", sent.get("max_completion_tokens")) == 33
        bad_body = call("--json", '{"inputs": {}, "extra": 1}')
        assert bad_body.returncode == 2 and "give a request body" in bad_body.stderr


def test_call_prints_escape_sequences_from_the_lm_and_the_server_escaped(fake_lm: FakeLM) -> None:
    from dspy_serve import create_app
    from tests.support.servers import serving
    from tests.support.settings import fake_settings

    hostile = "\x1b]0;pwned\x07\x1b[31mred\x1b[0m\nline two"
    fake_lm.answers = {"answer": hostile}
    os.environ.setdefault("OPENAI_API_KEY", FAKE_KEY)
    app = create_app(fake_settings(fake_lm, programs=[f"qa={PROGRAMS / 'serving.py'}:qa"]))
    with serving(app) as server:
        streamed = subprocess.run(
            [*CLI, "call", server.base_url, "qa", "question=q", "--stream"],
            env=cli_env(),
            capture_output=True,
            text=True,
            timeout=60,
        )
        echoed = subprocess.run(
            [*CLI, "call", server.base_url, "qa", "question=q", "ques\x1b[2Jtion=x"],
            env=cli_env(),
            capture_output=True,
            text=True,
            timeout=60,
        )
    assert streamed.returncode == 0, streamed.stderr
    assert "\x1b" not in streamed.stdout and "\x07" not in streamed.stdout
    assert streamed.stdout.startswith("answer: \\x1b]0;pwned\\x07\\x1b[31mred\\x1b[0m\nline two\n")
    assert echoed.returncode == 1 and "\x1b" not in echoed.stderr
    assert "inputs.ques\\x1b[2Jtion: Extra inputs are not permitted" in echoed.stderr, echoed.stderr


def test_the_startup_log_names_each_artifact_and_its_sha256(fake_lm: FakeLM, tmp_path: Path) -> None:
    import hashlib

    import dspy

    from tests.support.cli import wait_for_line

    artifact = tmp_path / "qa.json"
    dspy.Predict("question -> answer").save(str(artifact))
    sha = hashlib.sha256(artifact.read_bytes()).hexdigest()
    argv = [*CLI, "run", f"qa={PROGRAMS / 'serving.py'}:qa", "--artifact", str(artifact), "--port", "0"]
    argv += ["--model", "openai/fake-model", "--api-base", fake_lm.base_url, "--log-format", "text"]
    process = subprocess.Popen(argv, env=cli_env(), stderr=subprocess.PIPE, text=True)
    try:
        line = wait_for_line(process, "program qa: artifact")
        assert str(artifact) in line and f"(sha256 {sha})" in line
        assert "playground: http://127.0.0.1:" in wait_for_line(process, "serving on")
    finally:
        process.send_signal(signal.SIGINT)
        process.communicate(timeout=60)


def test_call_values_follow_each_field_type() -> None:
    from dspy_serve.client import field_value

    schema = {
        "properties": {
            "text": {"type": "string"},
            "count": {"type": "integer"},
            "ratio": {"type": "number"},
            "maybe": {"anyOf": [{"type": "integer"}, {"type": "string"}]},
            "tone": {"enum": ["calm", "true"]},
            "place": {"$ref": "#/$defs/Place"},
        },
        "$defs": {"Place": {"type": "object", "properties": {"city": {"type": "string"}}}},
    }
    cases = {
        ("text", "12345"): "12345",
        ("text", "true"): "true",
        ("text", '"quoted"'): '"quoted"',
        ("count", "3"): 3,
        ("count", "three"): "three",  # the server names the field
        ("ratio", "3"): 3,
        ("maybe", "3"): 3,
        ("maybe", "three"): "three",
        ("tone", "true"): "true",
        ("place", '{"city": "Paris"}'): {"city": "Paris"},
        ("unknown", "[1]"): [1],
    }
    for (name, raw), expected in cases.items():
        assert field_value(raw, name, schema) == expected, (name, raw)
