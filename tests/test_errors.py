"""``errors.from_exception``: every failure maps to one HTTP status by type, and nothing the
caller should not see (provider messages, secrets, LM output) reaches the problem body."""

from __future__ import annotations

import json

import dspy
import pytest

from dspy_serve.errors import (
    BadOverride,
    ClientCancelled,
    ContextTooLong,
    HTTPProblem,
    InvalidInput,
    InvalidProgramOutput,
    ModelNotAllowed,
    Overloaded,
    ProgramNotFound,
    RequestTimeout,
    ServeError,
    ServiceUnavailable,
    UpstreamError,
    UpstreamRateLimited,
    from_exception,
    note_usage,
)
from dspy_serve.web.envelopes import Problem

SECRET = "sk-test-SECRET"


def body_text(error: ServeError) -> str:
    return json.dumps(error.problem())


# --- DSPy's LM errors, by type --------------------------------------------------------------------


def test_rate_limit_maps_to_429_with_retry_after_header() -> None:
    error = from_exception(dspy.LMRateLimitError("slow down", retry_after=7))

    assert error.status == 429
    assert error.code == "upstream_rate_limited"
    assert error.headers() == {"Retry-After": "7"}
    assert error.problem()["retry_after"] == 7


def test_rate_limit_without_retry_after_sends_no_header() -> None:
    error = from_exception(dspy.LMRateLimitError("slow down"))

    assert error.status == 429
    assert error.headers() == {}
    assert "retry_after" not in error.problem()


def test_retry_after_below_one_second_is_sent_as_one() -> None:
    assert from_exception(dspy.LMRateLimitError(retry_after=0.2)).headers() == {"Retry-After": "1"}


def test_fractional_retry_after_is_rounded_up_not_down() -> None:
    assert from_exception(dspy.LMRateLimitError(retry_after=2.5)).headers() == {"Retry-After": "3"}


def test_lm_timeout_maps_to_504() -> None:
    error = from_exception(dspy.LMTimeoutError("provider timed out"))

    assert isinstance(error, RequestTimeout)
    assert error.status == 504


def test_python_timeout_maps_to_504() -> None:
    assert from_exception(TimeoutError()).status == 504


def test_context_window_exceeded_maps_to_413() -> None:
    error = from_exception(dspy.ContextWindowExceededError(model="openai/gpt-4o-mini"))

    assert isinstance(error, ContextTooLong)
    assert error.status == 413
    assert error.code == "context_window_exceeded"


@pytest.mark.parametrize(
    "exc_type",
    [dspy.LMAuthError, dspy.LMBillingError, dspy.LMConfigurationError, dspy.LMNotConfiguredError],
)
def test_credential_and_config_errors_map_to_503_without_leaking_the_message(
    exc_type: type[dspy.LMError],
) -> None:
    original = exc_type(
        f"Incorrect API key provided: {SECRET}", model="openai/gpt-4o-mini", provider="openai"
    )

    error = from_exception(original)

    assert isinstance(error, ServiceUnavailable)
    assert error.status == 503
    assert SECRET not in body_text(error)
    assert "API key" not in error.detail
    assert "openai" not in body_text(error)


def test_credential_error_is_logged_for_the_operator_without_the_secret(
    caplog: pytest.LogCaptureFixture,
) -> None:
    with caplog.at_level("ERROR", logger="dspy_serve.errors"):
        from_exception(dspy.LMAuthError(f"Incorrect API key provided: {SECRET}"))

    assert "LMAuthError" in caplog.text
    assert SECRET not in caplog.text


@pytest.mark.parametrize("exc_type", [dspy.LMServerError, dspy.LMTransportError])
def test_server_and_transport_errors_map_to_502_without_the_provider_message(
    exc_type: type[dspy.LMError],
) -> None:
    error = from_exception(exc_type(f"upstream exploded, key={SECRET}"))

    assert isinstance(error, UpstreamError)
    assert error.status == 502
    assert error.detail == f"The LM provider failed ({exc_type.default_code})."
    assert SECRET not in body_text(error)


def test_other_lm_errors_map_to_502() -> None:
    error = from_exception(dspy.LMInvalidRequestError(f"bad request {SECRET}"))

    assert error.status == 502
    assert error.code == "upstream_error"
    assert SECRET not in body_text(error)


class _QA(dspy.Signature):
    question: str = dspy.InputField()
    answer: str = dspy.OutputField()
    confidence: float = dspy.OutputField()


def test_adapter_parse_error_maps_to_502_listing_missing_fields() -> None:
    lm_text = f"[[ ## answer ## ]] Paris, and the user's private note {SECRET}"
    original = dspy.AdapterParseError(
        adapter_name="ChatAdapter", signature=_QA, lm_response=lm_text, parsed_result={"answer": "Paris"}
    )

    error = from_exception(original)

    assert error.status == 502
    assert error.errors == [{"loc": ["outputs", "confidence"], "msg": "missing from the LM's answer"}]
    assert SECRET not in body_text(error)
    assert "Paris" not in body_text(error)


def test_adapter_parse_error_with_nothing_parsed_lists_every_output_field() -> None:
    original = dspy.AdapterParseError(adapter_name="JSONAdapter", signature=_QA, lm_response="garbage")

    error = from_exception(original)

    assert [item["loc"] for item in error.errors or []] == [["outputs", "answer"], ["outputs", "confidence"]]
    assert "garbage" not in body_text(error)


# --- anything else --------------------------------------------------------------------------------


def test_unexpected_exception_maps_to_500_internal_without_its_message() -> None:
    error = from_exception(RuntimeError(f"db password is {SECRET}"))

    assert type(error) is ServeError
    assert error.status == 500
    assert error.code == "internal"
    assert error.detail == "Internal error"
    assert SECRET not in body_text(error)


@pytest.mark.parametrize(
    ("error", "status", "code"),
    [
        (InvalidInput("bad"), 422, "invalid_input"),
        (BadOverride("bad"), 400, "bad_override"),
        (ModelNotAllowed("no"), 403, "model_not_allowed"),
        (ProgramNotFound("no"), 404, "program_not_found"),
        (ContextTooLong(), 413, "context_window_exceeded"),
        (UpstreamRateLimited(retry_after=3), 429, "upstream_rate_limited"),
        (UpstreamError(), 502, "upstream_error"),
        (InvalidProgramOutput(), 500, "invalid_program_output"),
        (ServiceUnavailable(), 503, "unavailable"),
        (Overloaded(retry_after=1), 503, "overloaded"),
        (RequestTimeout(), 504, "timeout"),
        (ClientCancelled(), 499, "client_cancelled"),
        (HTTPProblem(405, "Method Not Allowed"), 405, "http_error"),
    ],
)
def test_serve_errors_pass_through_with_their_own_status(error: ServeError, status: int, code: str) -> None:
    mapped = from_exception(error)

    assert mapped is error
    assert (mapped.status, mapped.code) == (status, code)
    assert mapped.problem()["status"] == status


# --- the problem body -----------------------------------------------------------------------------


def test_problem_has_the_rfc_9457_members_and_a_code() -> None:
    body = InvalidInput("inputs.question: field required").problem()

    assert body == {
        "type": "urn:dspy-serve:error:invalid_input",
        "title": "Invalid input",
        "status": 422,
        "detail": "inputs.question: field required",
        "code": "invalid_input",
    }


def test_problem_detail_defaults_to_the_title() -> None:
    assert ProgramNotFound().problem()["detail"] == "Program not found"


def test_problem_carries_request_id_instance_and_errors_when_given() -> None:
    errors = [{"loc": ["inputs", "question"], "msg": "Field required", "type": "missing"}]

    body = InvalidInput("bad", errors=errors).problem(request_id="req-1", instance="/qa/invoke")

    assert body["request_id"] == "req-1"
    assert body["instance"] == "/qa/invoke"
    assert body["errors"] == errors


def test_problem_validates_against_the_published_problem_model() -> None:
    body = from_exception(dspy.LMRateLimitError(retry_after=7)).problem(request_id="r")

    problem = Problem.model_validate(body)

    assert (problem.status, problem.code, problem.retry_after) == (429, "upstream_rate_limited", 7)


def test_tokens_spent_before_a_failure_stay_on_the_error_it_becomes() -> None:
    spent = {"openai/gpt-4o-mini": {"total_tokens": 12}}
    raw = dspy.LMServerError("boom")
    note_usage(raw, spent)

    error = from_exception(raw)

    assert isinstance(error, UpstreamError)
    assert error.usage == spent and error.problem()["usage"] == spent
    assert "usage" not in from_exception(dspy.LMServerError("no tokens")).problem()
