"""In-process tier: the ASGI app through httpx's ASGITransport, with DSPy's DummyLM."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any, Literal

import anyio
import dspy
import httpx
import pytest
from dspy.utils import DummyLM
from fastapi import FastAPI
from pydantic import BaseModel

import dspy_serve
from dspy_serve import ServeSettings, create_app, install_error_handlers, router


@pytest.fixture
async def client() -> AsyncIterator[httpx.AsyncClient]:
    lm = DummyLM([{"answer": "Paris"}] * 20)
    app = create_app(ServeSettings(), programs={"qa": "question: str -> answer: str"}, lm=lm)
    async with (
        app.router.lifespan_context(app),
        httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://test") as http,
    ):
        yield http


async def test_invoke_returns_outputs_usage_and_model(client: httpx.AsyncClient) -> None:
    response = await client.post("/qa/invoke", json={"inputs": {"question": "Capital of France?"}})
    assert response.status_code == 200
    body = response.json()
    assert body["outputs"] == {"answer": "Paris"}
    assert body["model"] == "dummy"
    assert set(body["usage"]) == {"dummy"}


async def test_request_id_is_echoed_or_generated(client: httpx.AsyncClient) -> None:
    echoed = await client.get("/health/live", headers={"X-Request-ID": "abc-123"})
    generated = await client.get("/health/live")
    unsafe = await client.get("/health/live", headers={"X-Request-ID": "bad id; drop"})
    assert echoed.headers["x-request-id"] == "abc-123"
    assert len(generated.headers["x-request-id"]) == 32
    assert len(unsafe.headers["x-request-id"]) == 32


async def test_validation_errors_are_problems_with_field_paths(client: httpx.AsyncClient) -> None:
    response = await client.post("/qa/invoke", json={"inputs": {"question": 5, "extra": 1}, "opts": {}})
    assert response.status_code == 422
    assert response.headers["content-type"] == "application/problem+json"
    problem = response.json()
    assert {"type", "title", "status", "detail", "code", "request_id"} <= set(problem)
    locs = {tuple(error["loc"]) for error in problem["errors"]}
    assert locs == {("body", "inputs", "question"), ("body", "inputs", "extra"), ("body", "opts")}


async def test_malformed_json_is_a_422_problem(client: httpx.AsyncClient) -> None:
    response = await client.post(
        "/qa/invoke", content=b"{not json", headers={"Content-Type": "application/json"}
    )
    assert response.status_code == 422
    assert response.json()["code"] == "invalid_input"


@pytest.mark.parametrize(
    ("method", "path", "status"),
    [("GET", "/nope", 404), ("GET", "/qa/invoke", 405), ("GET", "/programs/nope", 404)],
)
async def test_routing_errors_share_the_problem_shape(
    client: httpx.AsyncClient, method: str, path: str, status: int
) -> None:
    response = await client.request(method, path)
    assert response.status_code == status
    assert response.headers["content-type"] == "application/problem+json"
    assert response.json()["status"] == status


async def test_openapi_documents_each_program_with_its_schema(client: httpx.AsyncClient) -> None:
    spec = (await client.get("/openapi.json")).json()
    operation = spec["paths"]["/qa/invoke"]["post"]
    assert operation["operationId"] == "qa_invoke"
    schemas = spec["components"]["schemas"]
    assert schemas["QaInputs"]["properties"]["question"]["type"] == "string"
    assert schemas["QaInputs"]["additionalProperties"] is False
    assert schemas["QaOutputs"]["required"] == ["answer"]
    assert {"422", "429", "503", "504"} <= set(operation["responses"])
    batch_items = schemas["QaBatchRequest"]["properties"]["items"]
    assert batch_items["items"] == {"$ref": "#/components/schemas/QaInputs"}


class Where(BaseModel):
    city: str
    lat: float


class Triage(dspy.Signature):
    """Triage a ticket."""

    ticket: str = dspy.InputField()
    priority: Literal["low", "high"] = dspy.OutputField()
    score: float = dspy.OutputField()
    urgent: bool = dspy.OutputField()
    tags: list[str] = dspy.OutputField()
    where: Where = dspy.OutputField()


def resolve(spec: dict[str, Any], schema: dict[str, Any]) -> dict[str, Any]:
    while "$ref" in schema:
        schema = spec["components"]["schemas"][schema["$ref"].rsplit("/", 1)[1]]
    return schema


async def test_openapi_publishes_the_typed_outputs_of_every_answer() -> None:
    """#21 regression: the 200 response was an untyped object since traces and prompts came."""
    app = create_app(ServeSettings(), programs={"triage": dspy.Predict(Triage)}, lm=DummyLM([]))
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://test") as http:
        spec = (await http.get("/openapi.json")).json()
    invoke = spec["paths"]["/triage/invoke"]["post"]["responses"]["200"]["content"]["application/json"]
    batch = spec["paths"]["/triage/batch"]["post"]["responses"]["200"]["content"]["application/json"]
    stream = spec["paths"]["/triage/stream"]["post"]["responses"]["200"]["content"]["text/event-stream"]
    body = resolve(spec, invoke["schema"])
    item = resolve(spec, resolve(spec, batch["schema"])["properties"]["items"]["items"])
    events = {e["properties"]["event"]["const"]: e for e in stream["itemSchema"]["oneOf"]}
    prediction = resolve(spec, events["prediction"]["properties"]["data"]["contentSchema"])
    assert prediction == body, "the stream's prediction is the /invoke body"
    assert body["properties"]["call_id"]["type"] == "string" and "call_id" in item["properties"]
    for outputs in (body["properties"]["outputs"], *item["properties"]["outputs"]["anyOf"][:1]):
        fields = resolve(spec, outputs)["properties"]
        assert fields["priority"]["enum"] == ["low", "high"]
        assert fields["score"]["type"] == "number"
        assert fields["urgent"]["type"] == "boolean"
        assert fields["tags"] == {"items": {"type": "string"}, "title": "Tags", "type": "array"}
        assert resolve(spec, fields["where"])["properties"]["lat"]["type"] == "number"


async def test_an_answer_carries_its_call_id_and_leaves_out_what_was_not_asked(
    client: httpx.AsyncClient,
) -> None:
    response = await client.post("/qa/invoke", json={"inputs": {"question": "Capital of France?"}})
    body = response.json()
    assert len(body["call_id"]) == 32 and response.headers["x-call-id"] == body["call_id"]
    assert "trace" not in body and "prompts" not in body


async def test_program_description_reports_interface_and_artifact(client: httpx.AsyncClient) -> None:
    info = (await client.get("/programs/qa")).json()
    assert info["signature"] == "question -> answer"
    assert info["optimized"] is False and info["artifact"] is None
    assert info["execution"] == "async"
    assert info["input_schema"]["required"] == ["question"]
    assert info["endpoints"] == {"invoke": "/qa/invoke", "stream": "/qa/stream", "batch": "/qa/batch"}


async def test_readiness_follows_the_lifecycle() -> None:
    app = create_app(ServeSettings(), programs={"qa": "question -> answer"}, lm=DummyLM([{"answer": "x"}]))
    transport = httpx.ASGITransport(app=app)
    async with httpx.AsyncClient(transport=transport, base_url="http://test") as http:
        before = await http.get("/health/ready")
        invoke_before = await http.post("/qa/invoke", json={"inputs": {"question": "q"}})
        async with app.router.lifespan_context(app):
            during = await http.get("/health/ready")
        after = await http.get("/health/ready")
    assert (before.status_code, during.status_code, after.status_code) == (503, 200, 503)
    assert invoke_before.status_code == 503 and invoke_before.headers["retry-after"] == "1"


async def test_router_mounts_into_an_existing_app() -> None:
    host = FastAPI(lifespan=None)

    @host.get("/own")
    async def own() -> dict[str, Any]:
        return {"mine": True}

    api = router(
        ServeSettings(), programs={"qa": dspy.Signature("question -> answer")}, lm=DummyLM([{"answer": "ok"}])
    )
    host.include_router(api, prefix="/ai")
    install_error_handlers(host)
    async with (
        host.router.lifespan_context(host),
        httpx.AsyncClient(transport=httpx.ASGITransport(app=host), base_url="http://test") as http,
    ):
        mounted = await http.post("/ai/qa/invoke", json={"inputs": {"question": "q"}})
        own_route = await http.get("/own")
    assert mounted.status_code == 200 and mounted.json()["outputs"] == {"answer": "ok"}
    assert own_route.json() == {"mine": True}


def test_public_api_is_pinned() -> None:
    assert sorted(dspy_serve.__all__) == [
        "ArtifactError", "BadOverride", "CallNotFound", "Client", "ClientCancelled", "ContextTooLong",
        "Forbidden",
        "HTTPProblem", "InvalidInput", "InvalidProgramOutput", "JobCancelled", "JobNotFound",
        "ModelNotAllowed", "Overloaded",
        "ProgramNotFound", "PromptsNotExposed", "ProxyError", "RateLimited", "RemoteProgram",
        "RequestTimeout", "RolloutConflict", "SchemaError", "ServeError", "ServeSettings",
        "ServiceUnavailable",
        "StoreUnavailable", "TargetError",
        "TraceNotExposed", "Unauthorized",
        "UnsupportedMediaType", "UnsupportedRequest", "UpstreamError", "UpstreamRateLimited",
        "VersionLoadFailed", "VersionNotFound", "__version__",
        "create_app", "install_error_handlers", "load_settings", "router",
    ]  # fmt: skip


def test_the_package_says_its_version() -> None:
    from importlib.metadata import version

    assert dspy_serve.__version__ == version("dspy-serve")
    assert dspy_serve.__version__.count(".") >= 2


async def test_mlflow_autolog_is_set_up_once_at_startup(monkeypatch: pytest.MonkeyPatch) -> None:
    import sys
    import types

    calls: list[str] = []
    fake_mlflow = types.ModuleType("mlflow")
    fake_mlflow.dspy = types.SimpleNamespace(autolog=lambda: calls.append("autolog"))  # type: ignore[attr-defined]
    monkeypatch.setitem(sys.modules, "mlflow", fake_mlflow)
    app = create_app(
        ServeSettings(mlflow_autolog=True),
        programs={"qa": "question -> answer"},
        lm=DummyLM([{"answer": "x"}]),
    )
    assert calls == []
    async with app.router.lifespan_context(app):
        assert calls == ["autolog"]


async def test_mlflow_autolog_without_mlflow_fails_startup_clearly(monkeypatch: pytest.MonkeyPatch) -> None:
    import sys

    monkeypatch.setitem(sys.modules, "mlflow", None)  # importing it raises ImportError
    app = create_app(
        ServeSettings(mlflow_autolog=True),
        programs={"qa": "question -> answer"},
        lm=DummyLM([{"answer": "x"}]),
    )
    with pytest.raises(RuntimeError, match="pip install mlflow"):
        async with app.router.lifespan_context(app):
            pass


def test_an_undocumented_module_is_described_as_a_program_not_as_its_first_step() -> None:
    class Undocumented(dspy.Module):
        def __init__(self) -> None:
            super().__init__()
            self.step = dspy.Predict(dspy.Signature("question -> answer", "Only the first step."))

        def forward(self, question: str) -> dspy.Prediction:
            return self.step(question=question)

    app = create_app(ServeSettings(), programs={"bare": Undocumented()}, lm=DummyLM([{"answer": "x"}]))
    invoke = app.openapi()["paths"]["/bare/invoke"]["post"]
    assert invoke["description"] == "Run the DSPy program `bare`."
    assert "Only the first step." not in json.dumps(app.openapi())


async def test_a_mounted_router_captures_calls_and_takes_feedback(tmp_path: Path) -> None:
    """router() with capture on keeps the calls it serves and rates them, as create_app does."""
    from tests.support.stores import wait_for_rows

    store = f"sqlite:///{tmp_path / 'store.db'}"
    host = FastAPI(lifespan=None)
    api = router(
        ServeSettings(capture=["*"], store=store),
        programs={"qa": dspy.Signature("question -> answer")},
        lm=DummyLM([{"answer": "ok"}] * 3),
    )
    host.include_router(api, prefix="/ai")
    install_error_handlers(host)
    async with (
        host.router.lifespan_context(host),
        httpx.AsyncClient(transport=httpx.ASGITransport(app=host), base_url="http://test") as http,
    ):
        answered = await http.post("/ai/qa/invoke", json={"inputs": {"question": "q"}})
        call_id = answered.json()["call_id"]
        rated = await http.post("/ai/qa/feedback", json={"call_id": call_id, "score": True})
    assert rated.status_code == 200, rated.text
    rows = await anyio.to_thread.run_sync(wait_for_rows, store, "SELECT score FROM feedback", 1)
    assert [row["score"] for row in rows] == [1.0]


@pytest.mark.parametrize(
    ("settings", "named"),
    [
        ({"jobs": True}, "jobs"),
        ({"admin_keys": ["ops:k"]}, "the admin API"),
        ({"api_keys": ["k"]}, "API keys"),
    ],
)
def test_router_refuses_what_needs_the_whole_app(settings: dict[str, Any], named: str) -> None:
    with pytest.raises(ValueError, match=f"router\\(\\) cannot serve {named}.*create_app"):
        router(ServeSettings(**settings), programs={"qa": dspy.Signature("question -> answer")})
