"""Logs: secrets never written, whoever wrote the line (our code, a library, a provider's error
text echoing its key), and never in an error body either."""

from __future__ import annotations

import json
import logging
import signal
import subprocess
from pathlib import Path

import dspy
import httpx
import pytest

from dspy_serve.errors import HTTPProblem, ServeError, UpstreamError
from dspy_serve.logs import JsonFormatter, TextFormatter
from dspy_serve.redaction import REDACTED, remember_secrets
from dspy_serve.serving.secrets import secrets_of
from dspy_serve.settings import ServeSettings
from tests.support.cli import require_answering, serve_qa
from tests.support.fake_lm import FakeLM, ServerError
from tests.support.settings import FAKE_KEY

CALLER_KEY = "caller-key-must-never-leak"


def record(
    message: str, *args: object, exc: BaseException | None = None, **extra: object
) -> logging.LogRecord:
    made = logging.LogRecord("litellm", logging.WARNING, __file__, 1, message, args, None)
    if exc is not None:
        made.exc_info = (type(exc), exc, exc.__traceback__)
    made.__dict__.update(extra)
    return made


def test_the_secrets_of_a_server_are_its_keys_its_provider_credentials_and_url_passwords(
    tmp_path: Path,
) -> None:
    key_file = tmp_path / "keys"
    key_file.write_text("# ops\nops:from-the-key-file programs=qa\nnameless-key-here\n")
    settings = ServeSettings(
        api_keys=["alice:alice-key-1 models=m"],
        api_keys_file=key_file,
        response_cache="redis://default:redis-pass-99@127.0.0.1:6379/0",
    )
    environ = {
        "OPENAI_API_KEY": FAKE_KEY,
        "AWS_SECRET_ACCESS_KEY": "aws-secret-value",
        "HF_TOKEN": "hf_token_value",
        "TOKENIZERS_PARALLELISM": "false",  # not a credential
        "GOOGLE_APPLICATION_CREDENTIALS": "/etc/gcp.json",  # a path, not a secret
        "HOME": "/home/someone",
    }
    lms = [dspy.LM("openai/x", api_key="sk-given-to-an-lm"), dspy.LM("openai/y"), None]
    found = set(secrets_of(settings, environ, lms))
    assert found == {
        "sk-given-to-an-lm",
        "alice-key-1",
        "from-the-key-file",
        "nameless-key-here",
        FAKE_KEY,
        "aws-secret-value",
        "hf_token_value",
        "redis-pass-99",
    }


@pytest.mark.parametrize("formatter", [JsonFormatter(), TextFormatter()], ids=["json", "text"])
def test_both_formats_redact_secrets_in_messages_fields_and_tracebacks(formatter: logging.Formatter) -> None:
    secret = 's3cr"et\\with-quotes'  # JSON escapes it: the escaped form is hidden too
    remember_secrets([FAKE_KEY, secret])
    try:
        raise RuntimeError(f"provider said: bad key {FAKE_KEY}")
    except RuntimeError as exc:
        line = formatter.format(
            record("LM call failed: %s (%s)", f"echo {FAKE_KEY}", secret, exc=exc, body=f"key={FAKE_KEY}")
        )
    assert FAKE_KEY not in line and secret not in line and json.dumps(secret)[1:-1] not in line
    assert line.count(REDACTED) >= 4, line
    assert "LM call failed: echo" in line  # the rest of the line is kept


def test_an_error_body_never_holds_a_known_secret() -> None:
    remember_secrets([CALLER_KEY])
    error = UpstreamError(
        f"The LM said: key {CALLER_KEY} is wrong", errors=[{"loc": ["inputs"], "msg": f"not {CALLER_KEY}"}]
    )
    for made in (error, HTTPProblem(404, f"No route for {CALLER_KEY}")):
        body = json.dumps(made.problem())
        assert CALLER_KEY not in body and CALLER_KEY not in str(made)
        assert REDACTED in made.detail and isinstance(made, ServeError)


@pytest.mark.parametrize("status", [400, 500])
@pytest.mark.parametrize("log_format", ["json", "text"])
def test_a_provider_echoing_keys_in_its_error_never_puts_them_in_the_log_or_the_response(
    fake_lm: FakeLM, status: int, log_format: str
) -> None:
    """The real command, on the fake LM answering an error whose text holds the provider key and
    the caller's key: the failure is logged (redacted), and the caller gets a typed error."""
    echo = f"Invalid request: key {FAKE_KEY} (for caller {CALLER_KEY}) rejected"
    fake_lm.when("Capital", ServerError(status, message=echo))
    process, url = serve_qa(
        fake_lm,
        "--log-level",
        "debug",
        "--lm-retries",
        "1",
        DSPY_SERVE_API_KEYS=f"ops:{CALLER_KEY}",
        DSPY_SERVE_LOG_FORMAT=log_format,
    )
    try:
        require_answering(process, url, 1, seconds=60)
        response = httpx.post(
            url + "/qa/invoke",
            json={"inputs": {"question": "Capital of France?"}},
            headers={"X-API-Key": CALLER_KEY},
            timeout=30,
        )
    finally:
        process.send_signal(signal.SIGINT)
        try:
            output, _ = process.communicate(timeout=60)
        except subprocess.TimeoutExpired:
            process.kill()
            output, _ = process.communicate()
    assert fake_lm.requests_started >= 1
    assert response.status_code >= 400, response.text
    for text, where in ((response.text, "response"), (output, "log")):
        assert FAKE_KEY not in text, f"provider key in the {where}:\n{text[-3000:]}"
        assert CALLER_KEY not in text, f"caller key in the {where}:\n{text[-3000:]}"
    failure = [line for line in output.splitlines() if "LM call failed" in line]
    assert failure and REDACTED in failure[0], output[-3000:]


def test_a_failed_lm_check_names_the_model_without_the_keys_the_provider_echoed(fake_lm: FakeLM) -> None:
    """``--check-lm`` stops the start with the provider's own words: minus any secret in them."""
    fake_lm.when(
        "Reply with: OK", ServerError(400, message=f"Invalid request: key {FAKE_KEY} ({CALLER_KEY})")
    )
    process, _ = serve_qa(fake_lm, "--check-lm", "--lm-retries", "0", DSPY_SERVE_API_KEYS=f"ops:{CALLER_KEY}")
    try:
        output, _ = process.communicate(timeout=120)
    except subprocess.TimeoutExpired:
        process.kill()
        output, _ = process.communicate()
    assert process.returncode == 3, output[-3000:]
    assert "failed a test call" in output and REDACTED in output, output[-3000:]
    assert FAKE_KEY not in output and CALLER_KEY not in output, output[-3000:]
