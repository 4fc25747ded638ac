"""Bad ``dspy.Image`` / ``dspy.File`` / ``dspy.Audio`` inputs are 422s with the field's path, on
invoke and on a batch item, with no traceback logged; the server never reads a local path or
downloads a URL for a caller (issue #22, item 7). Over real HTTP, against the fake LM."""

from __future__ import annotations

import logging
from base64 import b64encode
from collections.abc import Iterator
from typing import Any

import dspy
import httpx
import pytest
from pydantic import BaseModel, ValidationError, create_model

from dspy_serve import create_app
from dspy_serve.serving.dspy_json import wire_input_type
from tests.support.fake_lm import FakeLM
from tests.support.servers import ServerThread, serving
from tests.support.settings import PROGRAMS, fake_settings

TUTORIAL = PROGRAMS / "tutorial_programs.py"
PNG = b64encode(b"\x89PNG\r\n\x1a\n" + b"\0" * 16).decode()
TEXT = b64encode(b"Paris is in France.").decode()

# (program, input field, value, the path of the error under the field)
BAD = [
    ("doc", "document", {"file_data": "file:///etc/passwd"}, []),
    ("doc", "document", {"file_data": "/etc/passwd", "filename": "passwd"}, []),
    ("doc", "document", {"file_data": "data:application/pdf;base64,@@not base64@@"}, []),
    ("doc", "document", {"file_data": "data:broken"}, []),
    ("doc", "document", {"file_data": f"data:text/plain;base64,{TEXT}", "download": True}, ["download"]),
    ("doc", "document", {"file_id": "http://169.254.169.254/latest/meta-data/"}, []),
    ("doc", "document", {"file_id": "www.example.com/report.pdf"}, []),
    ("img", "image", {"url": "file:///etc/passwd"}, []),
    ("img", "image", {"url": "/etc/passwd"}, []),
    ("img", "image", {"url": "data:image/png;base64,@@@"}, []),
    ("img", "image", {"url": "data:broken"}, []),
    ("img", "image", {"url": f"data:text/html;base64,{TEXT}"}, []),
    ("img", "image", {"url": "http://127.0.0.1:9/cat.png", "download": True}, ["download"]),
    ("img", "image", {"url": "http://127.0.0.1:9/cat.png", "verify": False}, ["verify"]),
]
IDS = [f"{program}-{index}" for index, (program, *_) in enumerate(BAD)]


@pytest.fixture(scope="module")
def served() -> Iterator[tuple[ServerThread, FakeLM]]:
    """A server of an image program and a file program, and its fake LM."""
    with pytest.MonkeyPatch.context() as env, FakeLM() as fake:
        env.setenv("OPENAI_API_KEY", "sk-test")
        programs = [f"img={TUTORIAL}:describe_image", f"doc={TUTORIAL}:summarize_file"]
        with serving(create_app(fake_settings(fake, programs=programs))) as server:
            yield server, fake


def no_traceback(capfd: pytest.CaptureFixture[str], caplog: pytest.LogCaptureFixture) -> bool:
    logged = capfd.readouterr().err
    return (
        "Traceback" not in logged
        and "Exception in ASGI application" not in logged
        and not any(record.exc_info or record.levelno >= logging.ERROR for record in caplog.records)
    )


@pytest.mark.parametrize(("program", "field", "value", "under"), BAD, ids=IDS)
def test_a_bad_media_input_is_a_422_with_its_path_on_invoke_and_in_a_batch(
    served: tuple[ServerThread, FakeLM],
    program: str,
    field: str,
    value: dict[str, Any],
    under: list[str],
    capfd: pytest.CaptureFixture[str],
    caplog: pytest.LogCaptureFixture,
) -> None:
    server, fake = served
    fake.reset()
    invoked = httpx.post(f"{server.base_url}/{program}/invoke", json={"inputs": {field: value}}, timeout=30)
    assert invoked.status_code == 422, invoked.text
    assert invoked.json()["code"] == "invalid_input"
    assert [error["loc"] for error in invoked.json()["errors"]] == [["body", "inputs", field, *under]]
    batch = httpx.post(f"{server.base_url}/{program}/batch", json={"items": [{field: value}]}, timeout=30)
    assert batch.status_code == 200, batch.text
    (item,) = batch.json()["items"]
    assert item["error"]["status"] == 422 and item["error"]["code"] == "invalid_input"
    assert [error["loc"] for error in item["error"]["errors"]] == [["items", 0, field, *under]]
    assert "/etc/passwd" not in invoked.text + batch.text, "the input is never echoed"
    assert fake.requests_started == 0, "refused before any LM call"
    assert no_traceback(capfd, caplog)


@pytest.mark.parametrize(
    ("program", "field", "value"),
    [
        ("img", "image", {"url": f"data:image/png;base64,{PNG}"}),
        ("img", "image", {"url": "https://example.com/cat.png"}),
        ("doc", "document", {"file_data": f"data:text/plain;base64,{TEXT}", "filename": "notes.txt"}),
        ("doc", "document", {"file_id": "file-abc123"}),
    ],
)
def test_well_formed_media_inputs_reach_the_lm(
    served: tuple[ServerThread, FakeLM], program: str, field: str, value: dict[str, Any]
) -> None:
    server, fake = served
    fake.reset()
    response = httpx.post(f"{server.base_url}/{program}/invoke", json={"inputs": {field: value}}, timeout=30)
    assert response.status_code == 200, response.text
    assert fake.requests_started == 1


def inputs_model(annotation: Any) -> type[BaseModel]:
    return create_model("Inputs", value=(wire_input_type(annotation), ...))


def test_media_nested_in_lists_and_optionals_are_checked_too() -> None:
    model = inputs_model(list[dspy.Image] | None)
    assert model.model_validate({"value": [{"url": "https://example.com/a.png"}]})
    with pytest.raises(ValidationError) as refused:
        model.model_validate({"value": [{"url": "https://example.com/a.png"}, {"url": "file:///etc/shadow"}]})
    assert [error["loc"] for error in refused.value.errors()] == [("value", 1)]


def test_audio_data_must_be_base64() -> None:
    model = inputs_model(dspy.Audio)
    wav = b64encode(b"RIFF....WAVEfmt ").decode()
    assert model.model_validate({"value": {"data": wav, "audio_format": "wav"}})
    with pytest.raises(ValidationError) as refused:
        model.model_validate({"value": {"data": "not base64!", "audio_format": "wav"}})
    assert refused.value.errors()[0]["type"] == "invalid_media"
