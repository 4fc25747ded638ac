"""HTTP routes of each program: invoke, stream and batch, typed by the program's signature.

(No ``from __future__ import annotations`` here: FastAPI reads the per-program models from
the handlers' annotations at runtime.)
"""

import asyncio
from typing import Any

from fastapi import APIRouter, Depends, Request, Response
from pydantic import BaseModel

from dspy_serve.errors import PROBLEM_CONTENT_TYPE, InvalidInput, from_exception
from dspy_serve.serving import pricing
from dspy_serve.serving.caller import Caller
from dspy_serve.serving.programs import Program
from dspy_serve.serving.runner import CallResult
from dspy_serve.serving.schema import field_values
from dspy_serve.serving.service import CallOptions, Service
from dspy_serve.web.envelopes import InvalidItem, Problem, envelope_models, stream_event_model
from dspy_serve.web.request_state import caller_of, require_json, reuse_headers, until_disconnected
from dspy_serve.web.sse import STREAM_DOC, EventStreamResponse, ProgramEventEncoder, response_body

__all__ = ["ERROR_RESPONSES", "add_program_routes"]

ERROR_RESPONSES: dict[int | str, dict[str, Any]] = {
    status: {"model": Problem, "description": description, "content": {PROBLEM_CONTENT_TYPE: {}}}
    for status, description in {
        400: "Invalid options",
        401: "Missing or invalid API key (when keys are configured)",
        403: "Model not on the allow-list, not allowed for this API key, or a trace or prompts not exposed",
        413: "Request body too large, or input too long for the model's context window",
        415: "The body is not JSON (Content-Type must be application/json)",
        422: "Invalid input (field paths in `errors`)",
        429: "The LM provider is rate limiting (see Retry-After)",
        502: "The LM provider failed or answered unparseably",
        503: "Not ready, shutting down, or at capacity (see Retry-After)",
        504: "The request's deadline passed",
    }.items()
}


async def _json_only(request: Request) -> None:
    # A coroutine: FastAPI runs a plain ``def`` dependency in its thread pool, a hop per request.
    require_json(request)


# Checked before the body is parsed: 415 for a form or text/plain post, which a browser sends
# cross-site without a preflight.
_JSON_ONLY = [Depends(_json_only)]


def add_program_routes(
    router: APIRouter, service: Service, program: Program, options: type[BaseModel]
) -> None:
    """``/NAME/invoke``, ``/NAME/stream`` and ``/NAME/batch``, each one front-door admission."""
    name = program.name
    prefix = program.interface.inputs.__name__.removesuffix("Inputs")
    models = envelope_models(prefix, program.interface, options, service.settings.batch_max_items)
    InvokeRequest, InvokeResponse = models["invoke_request"], models["invoke_response"]
    BatchRequest, BatchResponse = models["batch_request"], models["batch_response"]
    description = program.interface.instructions or f"Run the DSPy program `{name}`."

    async def invoke(body: InvokeRequest, request: Request, response: Response) -> Any:  # type: ignore[valid-type]
        options, caller = _options(body.options), caller_of(request)  # type: ignore[attr-defined]
        response.headers.update(await service.admit(caller, program, options))
        call = service.call(program, field_values(body.inputs), options, caller)  # type: ignore[attr-defined]
        result = await until_disconnected(request, call)
        response.headers.update(reuse_headers(caller))
        return response_body(result)

    async def batch(body: BatchRequest, request: Request, response: Response) -> Any:  # type: ignore[valid-type]
        options, caller = _options(body.options), caller_of(request)  # type: ignore[attr-defined]
        items: list[Any] = body.items  # type: ignore[attr-defined]
        service.check_trace(options, batch=True)
        response.headers.update(await service.admit(caller, program, options, requests=len(items)))
        gate = asyncio.Semaphore(service.settings.batch_concurrency)

        async def run_one(index: int, item: Any) -> dict[str, Any]:
            if isinstance(item, InvalidItem):
                errors = [{**err, "loc": ["items", index, *err["loc"]]} for err in item.errors]
                error = caller.report(InvalidInput("Invalid input", errors=errors))
                return {"index": index, "error": error.problem()}
            async with gate:
                try:
                    result: CallResult = await service.call(program, field_values(item), options, caller)
                except Exception as exc:  # each item owns its error; the others go on
                    error = caller.report(from_exception(exc))
                    return {"index": index, "error": error.problem(), "usage": error.usage or {}}
            done = {"index": index, "outputs": result.outputs, "usage": result.usage, "cost": result.cost}
            return done if result.prompts is None else {**done, "prompts": result.prompts}

        everything = asyncio.gather(*(run_one(i, item) for i, item in enumerate(items)))
        results = await until_disconnected(request, everything)
        usage = _total_usage(results)
        cost = pricing.estimate(usage)
        response.headers.update(reuse_headers(caller))
        model = _served_model(service, options, caller)
        return {"items": results, "usage": usage, "cost": cost, "model": model}

    router.add_api_route(
        f"/{name}/invoke",
        invoke,
        methods=["POST"],
        dependencies=_JSON_ONLY,
        response_model=InvokeResponse,
        responses=ERROR_RESPONSES,
        summary=f"Run {name}",
        description=description,
        operation_id=f"{name}_invoke",
        tags=[name],
    )

    async def stream(body: InvokeRequest, request: Request) -> EventStreamResponse:  # type: ignore[valid-type]
        options, caller = _options(body.options), caller_of(request)  # type: ignore[attr-defined]
        limits = await service.admit(caller, program, options)
        call = service.stream(program, field_values(body.inputs), options, caller)  # type: ignore[attr-defined]
        return EventStreamResponse(
            call,
            ProgramEventEncoder(caller.request_id),
            heartbeat=service.settings.stream_heartbeat,
            headers=limits,
        )

    router.add_api_route(
        f"/{name}/stream",
        stream,
        methods=["POST"],
        dependencies=_JSON_ONLY,
        response_class=EventStreamResponse,
        response_model=None,
        status_code=200,
        responses={
            **ERROR_RESPONSES,
            200: {"model": stream_event_model(prefix, InvokeResponse), "description": STREAM_DOC},
        },
        summary=f"Run {name}, streaming tokens (Server-Sent Events)",
        description=f"{description}\n\n{STREAM_DOC}",
        operation_id=f"{name}_stream",
        tags=[name],
    )
    router.add_api_route(
        f"/{name}/batch",
        batch,
        methods=["POST"],
        dependencies=_JSON_ONLY,
        response_model=BatchResponse,
        responses=ERROR_RESPONSES,
        summary=f"Run {name} on many inputs",
        description=f"{description}\n\nItems run concurrently; each result is its outputs or its own error.",
        operation_id=f"{name}_batch",
        tags=[name],
    )


def _options(options: BaseModel | None) -> CallOptions:
    return CallOptions(**options.model_dump(exclude_none=True)) if options is not None else CallOptions()


def _served_model(service: Service, options: CallOptions, caller: Caller) -> str:
    return service.lms.model_of(service.model_for(options, caller)) if service.lms else ""


def _total_usage(results: list[dict[str, Any]]) -> dict[str, dict[str, Any]]:
    total: dict[str, dict[str, Any]] = {}
    for result in results:
        for model, usage in result.get("usage", {}).items():
            into = total.setdefault(model, {})
            for key, value in usage.items():
                if isinstance(value, (int, float)) and not isinstance(value, bool):
                    into[key] = into.get(key, 0) + value
    return total
