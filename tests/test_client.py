"""The Python client against a real server on loopback: a served program as a dspy.Module."""

from __future__ import annotations

import asyncio
import json
import threading
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import dspy
import httpx
import pytest
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import PlainTextResponse, Response, StreamingResponse
from starlette.routing import Route

from dspy_serve import InvalidInput, ModelNotAllowed, ProgramNotFound, UpstreamError, create_app
from dspy_serve.client import Client, RemoteProgram, StatusEvent, TokenEvent
from dspy_serve.errors import MAX_RETRY_AFTER, ProxyError, RateLimited
from tests.support.fake_lm import FakeLM, ServerError
from tests.support.servers import ServerThread, serving
from tests.support.settings import PROGRAMS, fake_settings

QA = f"qa={PROGRAMS / 'serving.py'}:qa"


@pytest.fixture
def server(fake_lm: FakeLM, provider_key: str) -> Iterator[ServerThread]:
    fake_lm.answers = {"answer": "Paris"}
    with serving(create_app(fake_settings(fake_lm, programs=[QA]))) as running:
        yield running


def test_a_remote_program_is_a_dspy_module_returning_predictions(server: ServerThread) -> None:
    with Client(server.base_url) as client:
        remote = client.program("qa")
        prediction = remote(question="Capital of France?")
    assert isinstance(remote, dspy.Module)
    assert isinstance(prediction, dspy.Prediction)
    assert prediction.answer == "Paris"
    assert prediction.get_lm_usage()["openai/fake-model"]["total_tokens"] > 0
    assert set(prediction.keys()) == {"answer"}


async def test_acall_works_too(server: ServerThread) -> None:
    async with Client(server.base_url) as client:
        prediction = await client.program("qa").acall(question="Capital of France?")
    assert prediction.answer == "Paris"


def test_rate_limits_are_retried_after_retry_after(fake_lm: FakeLM, provider_key: str) -> None:
    fake_lm.answers = {"answer": "Paris"}
    app = create_app(fake_settings(fake_lm, programs=[QA], rate_limit="1/second"))
    with serving(app) as limited, Client(limited.base_url, retries=2) as client:
        remote = client.program("qa")
        answers = [remote(question=f"q{i}").answer for i in range(2)]  # the second waits ~1 s
    assert answers == ["Paris", "Paris"]


def test_errors_come_back_typed(server: ServerThread, fake_lm: FakeLM) -> None:
    fake_lm.when("broken", ServerError(500))
    with Client(server.base_url, retries=0) as client:
        with pytest.raises(ModelNotAllowed):
            RemoteProgram(client, "qa", model="openai/gpt-4o")(question="q")
        with pytest.raises(UpstreamError) as caught:
            client.program("qa")(question="broken")
    assert caught.value.status == 502


def test_invalid_input_names_the_fields(server: ServerThread) -> None:
    with Client(server.base_url) as client, pytest.raises(InvalidInput) as caught:
        client.program("qa")(questio="typo")
    message = str(caught.value)
    assert "inputs.question: Field required" in message
    assert "inputs.questio: Extra inputs are not permitted" in message


async def test_an_unknown_program_says_what_is_served(server: ServerThread) -> None:
    with Client(server.base_url) as client:
        for call in (
            lambda: client.program("qaa")(question="q"),
            lambda: list(client.program("qaa").stream()),
        ):
            with pytest.raises(ProgramNotFound, match="no program named 'qaa' on this server; it serves: qa"):
                call()
    async with Client(server.base_url) as client:
        with pytest.raises(ProgramNotFound, match="it serves: qa"):
            await client.program("qaa").acall(question="q")


def _flaky_proxy(upstream: str, failures: int) -> Starlette:
    """A proxy in front that answers its first ``failures`` calls with its own plain 500, as Ray
    Serve's does when the replica holding a call dies."""
    left = [failures]

    async def forward(request: Request) -> Response:
        if left[0] > 0:
            left[0] -= 1
            return PlainTextResponse("Internal Server Error", status_code=500)
        async with httpx.AsyncClient(base_url=upstream) as http:
            answer = await http.post(request.url.path, content=await request.body(), headers=request.headers)
        return Response(answer.content, answer.status_code, media_type=answer.headers["content-type"])

    return Starlette(routes=[Route("/{path:path}", forward, methods=["POST"])])


def test_a_proxy_5xx_is_retried_but_not_our_own_errors(server: ServerThread, fake_lm: FakeLM) -> None:
    twice_failing, once_failing = (_flaky_proxy(server.base_url, failures) for failures in (2, 1))
    with serving(twice_failing) as proxy, Client(proxy.base_url, retries=2) as client:
        assert client.program("qa")(question="q").answer == "Paris"
    assert fake_lm.requests_started == 1, "the proxy's failures never reached the program"
    with serving(once_failing) as proxy, Client(proxy.base_url, retries=0) as client:
        remote = client.program("qa")
        with pytest.raises(ProxyError) as caught:
            remote(question="q")
    assert caught.value.status == 500


def test_stream_yields_typed_events_then_the_prediction(server: ServerThread, fake_lm: FakeLM) -> None:
    fake_lm.answers = {"answer": "Paris is lovely in spring"}
    with Client(server.base_url) as client:
        events = list(client.program("qa").stream(question="Capital of France?"))
    assert isinstance(events[0], StatusEvent)
    tokens = [event for event in events if isinstance(event, TokenEvent)]
    assert "".join(token.chunk for token in tokens) == "Paris is lovely in spring"
    assert isinstance(events[-1], dspy.Prediction) and events[-1].answer == "Paris is lovely in spring"


def test_batch_returns_a_prediction_or_an_error_per_item(server: ServerThread, fake_lm: FakeLM) -> None:
    fake_lm.when("broken", ServerError(500))
    with Client(server.base_url) as client:
        results = client.program("qa").batch([{"question": "fine"}, {"question": "broken"}])
    assert isinstance(results[0], dspy.Prediction) and results[0].answer == "Paris"
    assert isinstance(results[1], UpstreamError)


def test_a_remote_program_composes_inside_a_local_program(server: ServerThread, fake_lm: FakeLM) -> None:
    class Pipeline(dspy.Module):
        def __init__(self, remote: RemoteProgram) -> None:
            super().__init__()
            self.remote = remote
            self.polish = dspy.Predict("answer -> polished")

        def forward(self, question: str) -> dspy.Prediction:
            answer = self.remote(question=question).answer
            return self.polish(answer=answer)

    fake_lm.answers = {"answer": "Paris", "polished": "It is Paris."}
    local_lm = dspy.LM("openai/fake-model", api_base=fake_lm.base_url, api_key="x", cache=False)
    with Client(server.base_url) as client, dspy.context(lm=local_lm):
        result = Pipeline(client.program("qa"))(question="Capital of France?")
    assert result.polished == "It is Paris."
    assert "Paris" in str(fake_lm.requests[-1]["messages"])  # the local step saw the remote answer


@pytest.mark.parametrize("retry_after", ["100000", "9" * 309])
def test_a_retry_after_past_the_timeout_is_raised_not_slept(retry_after: str) -> None:
    """A server asking for more time than the client has left gets its error back at once."""
    asked: list[int] = []

    async def rate_limited(request: Request) -> Response:
        asked.append(1)
        body = {"type": "x", "title": "t", "status": 429, "detail": "d", "code": "rate_limited"}
        headers = {"Retry-After": retry_after, "Content-Type": "application/problem+json"}
        return Response(json.dumps(body), 429, headers=headers)

    outcome: list[BaseException] = []

    def call(client: Client) -> None:
        try:
            client.program("qa")(question="q")
        except BaseException as exc:
            outcome.append(exc)

    app = Starlette(routes=[Route("/qa/invoke", rate_limited, methods=["POST"])])
    with serving(app) as proxy, Client(proxy.base_url, timeout=5, retries=3) as client:
        caller = threading.Thread(target=call, args=(client,), daemon=True)
        caller.start()
        caller.join(30)
        assert not caller.is_alive(), "the client slept through a Retry-After past its timeout"
    assert len(outcome) == 1 and isinstance(outcome[0], RateLimited)
    assert outcome[0].retry_after == MAX_RETRY_AFTER  # clamped: the value is still passed on, sanely
    assert asked == [1]


async def test_async_retries_never_wait_past_the_timeout() -> None:
    asked: list[int] = []

    async def rate_limited(request: Request) -> Response:
        asked.append(1)
        return Response("slow down", 429, headers={"Retry-After": "3"})

    app = Starlette(routes=[Route("/qa/invoke", rate_limited, methods=["POST"])])
    with serving(app) as proxy:
        async with Client(proxy.base_url, timeout=2, retries=5) as client:
            with pytest.raises(ProxyError) as raised:
                await asyncio.wait_for(client.program("qa").acall(question="q"), 30)
    assert raised.value.retry_after == 3 and asked == [1]


# --- durable jobs (#28) ------------------------------------------------------------------------


@pytest.fixture
def jobs_server(fake_lm: FakeLM, provider_key: str, tmp_path: Path) -> Iterator[ServerThread]:
    fake_lm.answers = {"answer": "Paris"}
    settings = fake_settings(
        fake_lm, programs=[QA], store=f"sqlite:///{tmp_path / 'store.db'}", jobs=True, job_concurrency=2
    )
    with serving(create_app(settings)) as running:
        yield running


def _dropping_proxy(upstream: str, after_lines: int, asked: list[int]) -> Starlette:
    """A proxy in front whose first results response breaks off after ``after_lines`` lines, as
    a lost network does: the connection closes mid-body."""

    async def forward(request: Request) -> Response:
        async with httpx.AsyncClient(base_url=upstream) as http:
            answer = await http.get(request.url.path, params=request.query_params)
        if not request.url.path.endswith("/results"):
            return Response(answer.content, answer.status_code, media_type=answer.headers["content-type"])
        asked.append(int(request.query_params.get("offset", 0)))
        lines = answer.content.splitlines(keepends=True)
        breaks = len(asked) == 1

        async def body() -> AsyncIterator[bytes]:
            for number, line in enumerate(lines):
                if breaks and number == after_lines:
                    raise ConnectionResetError("the network went away")
                yield line

        headers = {k: v for k, v in answer.headers.items() if k.lower().startswith("x-")}
        return StreamingResponse(body(), media_type="application/x-ndjson", headers=headers)

    return Starlette(routes=[Route("/{path:path}", forward, methods=["GET"])])


def test_job_results_go_on_after_the_last_line_when_the_connection_drops(jobs_server: ServerThread) -> None:
    with Client(jobs_server.base_url) as client:
        job_id = client.program("qa").submit([{"question": f"q{i}"} for i in range(6)])
        assert client.wait(job_id, poll=0.1, timeout=120)["state"] == "done"
    asked: list[int] = []
    with serving(_dropping_proxy(jobs_server.base_url, 2, asked)) as proxy, Client(proxy.base_url) as client:
        lines = list(client.job_results(job_id))
    assert [line["index"] for line in lines] == list(range(6))  # none lost, none twice
    assert asked == [0, 2]  # asked again from the line after the last one it had


def test_follow_yields_the_jobs_status_until_it_ends_and_wait_returns_the_last(
    jobs_server: ServerThread, fake_lm: FakeLM
) -> None:
    fake_lm.latency = 0.3
    with Client(jobs_server.base_url) as client:
        job_id = client.program("qa").submit([{"question": f"q{i}"} for i in range(6)])
        with pytest.raises(TimeoutError):
            client.wait(job_id, poll=0.05, timeout=0.1)  # it keeps running
        snapshots = list(client.follow(job_id, poll=0.1))
        final = client.wait(job_id)
    finished = [snapshot["done"] + snapshot["failed"] for snapshot in snapshots]
    assert finished == sorted(finished) and len(snapshots) > 1
    assert [s["state"] for s in snapshots[:-1]] != [] and snapshots[-1]["state"] == "done"
    assert all(s["state"] in ("queued", "running") for s in snapshots[:-1])
    assert final == snapshots[-1] and final["done"] == 6


def _losing_proxy(upstream: str, asked: list[str]) -> Starlette:
    """A proxy in front that hands the request on, then loses the connection before the answer."""

    async def forward(request: Request) -> Response:
        asked.append(request.url.path)
        async with httpx.AsyncClient(base_url=upstream) as http:
            await http.post(request.url.path, content=await request.body(), headers=request.headers)

        async def lost() -> AsyncIterator[bytes]:
            raise ConnectionResetError("the network went away")
            yield b""  # pragma: no cover

        return StreamingResponse(lost(), media_type="application/json")

    return Starlette(routes=[Route("/{path:path}", forward, methods=["POST"])])


def test_a_submitted_job_is_not_sent_again_when_the_answer_is_lost(jobs_server: ServerThread) -> None:
    asked: list[str] = []
    with (
        serving(_losing_proxy(jobs_server.base_url, asked)) as proxy,
        Client(proxy.base_url, retries=3) as client,
        pytest.raises(httpx.TransportError),
    ):
        client.program("qa").submit([{"question": "q1"}])
    assert asked == ["/qa/jobs"]  # the server may have made the job: one job, not four
    assert len(httpx.get(f"{jobs_server.base_url}/jobs", timeout=30).json()["jobs"]) == 1
