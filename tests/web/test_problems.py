"""The native wire's one error renderer, over the whole error tree, and what a caller is told
for malformed JSON, a misspelt option and an unknown program (#25)."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator

import httpx
import pytest
from dspy.utils import DummyLM

from dspy_serve import ServeSettings, create_app
from dspy_serve.errors import HTTPProblem, ProxyError, ServeError
from dspy_serve.serving.caller import Caller
from dspy_serve.web.envelopes import Problem
from dspy_serve.web.problems import problem_body


def every_error() -> list[ServeError]:
    def subclasses(cls: type[ServeError]) -> list[type[ServeError]]:
        return [sub for direct in cls.__subclasses__() for sub in (direct, *subclasses(direct))]

    return [
        cls(404, "gone") if cls in (HTTPProblem, ProxyError) else cls("what went wrong")  # type: ignore[call-arg]
        for cls in [ServeError, *subclasses(ServeError)]
    ]


@pytest.mark.parametrize("error", every_error(), ids=lambda error: type(error).__name__)
def test_every_error_renders_as_one_problem(error: ServeError) -> None:
    caller = Caller("127.0.0.1", request_id="req-1")
    body = problem_body(caller, error, "/qa/invoke")
    problem_body(caller, error, "/qa/invoke")  # a call's error, rendered again by its wire
    Problem.model_validate(body)  # the shape the OpenAPI document promises
    assert (body["status"], body["code"], body["detail"]) == (error.status, error.code, error.detail)
    assert body["type"] == f"urn:dspy-serve:error:{error.code}"
    assert (body["request_id"], body["instance"]) == ("req-1", "/qa/invoke")
    assert caller.error_codes == [error.code], "counted once"


@pytest.fixture
async def client() -> AsyncIterator[httpx.AsyncClient]:
    lm = DummyLM([{"answer": "Paris"}] * 5)
    programs = {"prioritize": "question -> answer", "triage": "question -> answer"}
    app = create_app(ServeSettings(), programs=programs, lm=lm)
    async with (
        app.router.lifespan_context(app),
        httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://test") as http,
    ):
        yield http


@pytest.mark.parametrize("endpoint", ["invoke", "stream", "batch"])
async def test_an_unknown_program_says_what_is_served(client: httpx.AsyncClient, endpoint: str) -> None:
    response = await client.post(f"/prioritise/{endpoint}", json={"inputs": {"question": "q"}})
    assert response.status_code == 404
    problem = response.json()
    assert problem["code"] == "program_not_found"
    assert problem["detail"] == (
        "no program named 'prioritise' on this server; it serves: prioritize, triage "
        "(did you mean 'prioritize'?)"
    )


async def test_malformed_json_says_where(client: httpx.AsyncClient) -> None:
    body = b'{"inputs": {"question": "q"},\n "options": {"temperature": 0.5,}}'
    response = await client.post("/triage/invoke", content=body, headers={"Content-Type": "application/json"})
    assert response.status_code == 422
    # Python's parser says where (its column for this body moved by one between 3.11 and 3.13).
    with pytest.raises(json.JSONDecodeError) as parsed:
        json.loads(body)
    where = parsed.value
    assert where.lineno == 2
    assert response.json()["detail"] == (
        f"The body is not valid JSON: {where.msg} at line {where.lineno}, column {where.colno}."
    )


async def test_a_misspelt_option_names_the_one_it_is_close_to(client: httpx.AsyncClient) -> None:
    response = await client.post(
        "/triage/invoke", json={"inputs": {"question": "q"}, "options": {"temprature": 0.2}}
    )
    assert response.status_code == 422
    [error] = response.json()["errors"]
    assert error["loc"] == ["body", "options", "temprature"]
    assert error["msg"] == "Extra inputs are not permitted; did you mean 'temperature'?"
