"""HTTP routes of each program: invoke, stream and batch, typed by the program's signature.

(No ``from __future__ import annotations`` here: FastAPI reads the per-program models from
the handlers' annotations at runtime.)
"""

from collections.abc import Callable, Coroutine
from typing import Any

from fastapi import APIRouter, Depends, Request, Response
from fastapi.routing import APIRoute
from pydantic import BaseModel

from dspy_serve.errors import PROBLEM_CONTENT_TYPE, InvalidInput, ServeError
from dspy_serve.serving.batch import BatchItem
from dspy_serve.serving.caller import Caller
from dspy_serve.serving.programs import Program
from dspy_serve.serving.schema import field_values
from dspy_serve.serving.service import CallOptions, Service
from dspy_serve.web.connection import require_json, until_disconnected
from dspy_serve.web.envelopes import InvalidItem, Problem, envelope_models, response_body, stream_event_model
from dspy_serve.web.problems import problem_body
from dspy_serve.web.request_state import caller_of, reuse_headers
from dspy_serve.web.sse import (
    CALL_ID_HEADER,
    STREAM_DOC,
    VERSION_HEADER,
    EventStreamResponse,
    ProgramEventEncoder,
)

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
    """``/NAME/invoke``, ``/NAME/stream`` and ``/NAME/batch``: each asks the service for a call
    (or a batch) and puts its result on the wire; admission and the rest happen there."""
    name = program.name
    prefix = program.interface.inputs.__name__.removesuffix("Inputs")
    models = envelope_models(prefix, program.interface, options, service.settings.batch_max_items)
    InvokeRequest, InvokeResponse = models["invoke_request"], models["invoke_response"]
    BatchRequest, BatchResponse = models["batch_request"], models["batch_response"]
    description = program.interface.instructions or f"Run the DSPy program `{name}`."
    route_class = _program_route(service, name)

    async def invoke(body: InvokeRequest, request: Request, response: Response) -> Any:  # type: ignore[valid-type]
        caller = caller_of(request)
        call = service.call(caller, program, field_values(body.inputs), _options(body.options))  # type: ignore[attr-defined]
        response.headers[CALL_ID_HEADER] = call.call_id
        response.headers[VERSION_HEADER] = call.version.name
        response.headers.update(await call.admit())
        result = await until_disconnected(request, call.result())
        response.headers.update(reuse_headers(caller))
        return response_body(result, call.call_id, call.version.name)

    async def batch(body: BatchRequest, request: Request, response: Response) -> Any:  # type: ignore[valid-type]
        caller = caller_of(request)
        items = [_item(index, item) for index, item in enumerate(body.items)]  # type: ignore[attr-defined]
        run = service.batch(caller, program, items, _options(body.options))  # type: ignore[attr-defined]
        response.headers.update(await run.admit())
        done = await until_disconnected(request, run.run())
        response.headers.update(reuse_headers(caller))
        # Items of one batch may run on different versions (a split sticky by an input).
        response.headers[VERSION_HEADER] = ", ".join(dict.fromkeys(item.version for item in done.items))
        return {
            "items": [_batch_item(caller, item) for item in done.items],
            "usage": done.usage,
            "cost": done.cost,
            "model": done.model,
        }

    router.add_api_route(
        f"/{name}/invoke",
        invoke,
        methods=["POST"],
        dependencies=_JSON_ONLY,
        route_class_override=route_class,
        response_model=InvokeResponse,
        responses=ERROR_RESPONSES,
        summary=f"Run {name}",
        description=description,
        operation_id=f"{name}_invoke",
        tags=[name],
    )

    async def stream(body: InvokeRequest, request: Request) -> EventStreamResponse:  # type: ignore[valid-type]
        caller = caller_of(request)
        call = service.stream(caller, program, field_values(body.inputs), _options(body.options))  # type: ignore[attr-defined]
        limits = await call.admit()
        return EventStreamResponse(
            call,
            ProgramEventEncoder(call),
            heartbeat=service.settings.stream_heartbeat,
            headers={**limits, **reuse_headers(caller)},
        )

    router.add_api_route(
        f"/{name}/stream",
        stream,
        methods=["POST"],
        dependencies=_JSON_ONLY,
        route_class_override=route_class,
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
        route_class_override=route_class,
        response_model=BatchResponse,
        responses=ERROR_RESPONSES,
        summary=f"Run {name} on many inputs",
        description=f"{description}\n\nItems run concurrently; each result is its outputs or its own error.",
        operation_id=f"{name}_batch",
        tags=[name],
    )


def _options(options: BaseModel | None) -> CallOptions:
    return CallOptions(**options.model_dump(exclude_none=True)) if options is not None else CallOptions()


def _program_route(service: Service, name: str) -> type[APIRoute]:
    """A route that looks the program up for the caller before the body is read or validated:
    a program outside the caller's key is the same 404 as one that does not exist, whatever
    the body."""

    class ProgramRoute(APIRoute):
        def get_route_handler(self) -> Callable[[Request], Coroutine[Any, Any, Response]]:
            handler = super().get_route_handler()

            async def visible_only(request: Request) -> Response:
                service.find(caller_of(request), name)
                return await handler(request)

            return visible_only

    return ProgramRoute


def _item(index: int, item: Any) -> dict[str, Any] | ServeError:
    """A validated item's inputs, or the InvalidInput of one that failed validation."""
    if isinstance(item, InvalidItem):
        errors = [{**err, "loc": ["items", index, *err["loc"]]} for err in item.errors]
        return InvalidInput("Invalid input", errors=errors)
    return field_values(item)


def _batch_item(caller: Caller, item: BatchItem) -> dict[str, Any]:
    if item.error is not None:
        error = {
            "index": item.index,
            "call_id": item.call_id,
            "version": item.version,
            "error": problem_body(caller, item.error),
        }
        return {**error, "usage": item.error.usage} if item.error.usage else error
    result = item.result
    assert result is not None
    done = {
        "index": item.index,
        "call_id": item.call_id,
        "version": item.version,
        "outputs": result.outputs,
        "usage": result.usage,
        "cost": result.cost,
    }
    return done if result.prompts is None else {**done, "prompts": result.prompts}
