"""HTTP routes: one invoke and one batch operation per program, plus discovery and health.

(No ``from __future__ import annotations`` here: FastAPI reads the per-program models from
the handlers' annotations at runtime.)
"""

import asyncio
import os
from collections.abc import Awaitable
from typing import Any, TypeVar

from fastapi import APIRouter, Request, Response
from fastapi.responses import JSONResponse, PlainTextResponse
from prometheus_client import CONTENT_TYPE_LATEST
from pydantic import BaseModel

from dspy_serve import pricing
from dspy_serve.auth import ApiKey
from dspy_serve.errors import (
    PROBLEM_CONTENT_TYPE,
    ClientCancelled,
    Forbidden,
    InvalidInput,
    ModelNotAllowed,
    ProgramNotFound,
    ServiceUnavailable,
    from_exception,
)
from dspy_serve.models import InvalidItem, Problem, envelope_models, options_model, stream_event_model
from dspy_serve.runner import CallResult
from dspy_serve.schema import example_inputs
from dspy_serve.service import Program, Service, response_body
from dspy_serve.streaming import STREAM_DOC, EventStreamResponse

__all__ = ["build_router", "until_disconnected"]

T = TypeVar("T")

_ERRORS: dict[int | str, dict[str, Any]] = {
    status: {"model": Problem, "description": description, "content": {PROBLEM_CONTENT_TYPE: {}}}
    for status, description in {
        400: "Invalid options",
        401: "Missing or invalid API key (when keys are configured)",
        403: "Model not on the allow-list, or not allowed for this API key",
        413: "Request body too large, or input too long for the model's context window",
        422: "Invalid input (field paths in `errors`)",
        429: "The LM provider is rate limiting (see Retry-After)",
        502: "The LM provider failed or answered unparseably",
        503: "Not ready, shutting down, or at capacity (see Retry-After)",
        504: "The request's deadline passed",
    }.items()
}


def build_router(service: Service) -> APIRouter:
    router = APIRouter()
    options = options_model(service.settings.max_tokens_limit)
    for program in service.programs.values():
        _add_program_routes(router, service, program, options)
    _add_discovery_routes(router, service)
    return router


def _add_program_routes(
    router: APIRouter, service: Service, program: Program, options: type[BaseModel]
) -> None:
    name = program.name
    prefix = program.interface.inputs.__name__.removesuffix("Inputs")
    models = envelope_models(
        prefix,
        program.interface,
        options,
        service.settings.batch_max_items,
        example_inputs(program.interface, program.loaded.module),
    )
    InvokeRequest, InvokeResponse = models["invoke_request"], models["invoke_response"]
    BatchRequest, BatchResponse = models["batch_request"], models["batch_response"]
    description = program.interface.instructions or f"Run the DSPy program `{name}`."

    async def invoke(body: InvokeRequest, request: Request, response: Response) -> Any:  # type: ignore[valid-type]
        opts = _options(body.options)  # type: ignore[attr-defined]
        caller = await _admit(service, program, request, response, opts)
        call = service.call(program, _field_values(body.inputs), **opts)  # type: ignore[attr-defined]
        result = await until_disconnected(request, call)
        await _charge(service, request, caller, result.usage, result.cost)
        return response_body(result)

    async def batch(body: BatchRequest, request: Request, response: Response) -> Any:  # type: ignore[valid-type]
        opts = _options(body.options)  # type: ignore[attr-defined]
        items: list[Any] = body.items  # type: ignore[attr-defined]
        caller = await _admit(service, program, request, response, opts, cost=len(items))
        gate = asyncio.Semaphore(service.settings.batch_concurrency)

        async def run_one(index: int, item: Any) -> dict[str, Any]:
            if isinstance(item, InvalidItem):
                errors = [{**err, "loc": ["items", index, *err["loc"]]} for err in item.errors]
                return {"index": index, "error": InvalidInput("Invalid input", errors=errors).problem()}
            async with gate:
                try:
                    result: CallResult = await service.call(program, _field_values(item), **opts)
                except Exception as exc:  # each item owns its error; the others go on
                    error = from_exception(exc)
                    service.metrics.errors.labels(error.code).inc()
                    return {"index": index, "error": error.problem()}
            return {"index": index, "outputs": result.outputs, "usage": result.usage, "cost": result.cost}

        everything = asyncio.gather(*(run_one(i, item) for i, item in enumerate(items)))
        results = await until_disconnected(request, everything)
        usage = _total_usage(results)
        cost = pricing.estimate(usage)
        await _charge(service, request, caller, usage, cost)
        return {"items": results, "usage": usage, "cost": cost, "model": _served_model(service, opts)}

    router.add_api_route(
        f"/{name}/invoke",
        invoke,
        methods=["POST"],
        response_model=InvokeResponse,
        responses=_ERRORS,
        summary=f"Run {name}",
        description=description,
        operation_id=f"{name}_invoke",
        tags=[name],
    )

    async def stream(body: InvokeRequest, request: Request) -> EventStreamResponse:  # type: ignore[valid-type]
        opts = _options(body.options)  # type: ignore[attr-defined]
        limits = Response()
        caller = await _admit(service, program, request, limits, opts)

        async def charge(result: CallResult) -> None:
            await _charge(service, request, caller, result.usage, result.cost)

        return service.stream(
            program,
            _field_values(body.inputs),  # type: ignore[attr-defined]
            request_id=request.state.request_id,
            on_result=charge,
            headers=dict(limits.headers),
            **opts,
        )

    router.add_api_route(
        f"/{name}/stream",
        stream,
        methods=["POST"],
        response_class=EventStreamResponse,
        response_model=None,
        status_code=200,
        responses={
            **_ERRORS,
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
        response_model=BatchResponse,
        responses=_ERRORS,
        summary=f"Run {name} on many inputs",
        description=f"{description}\n\nItems run concurrently; each result is its outputs or its own error.",
        operation_id=f"{name}_batch",
        tags=[name],
    )


def _add_discovery_routes(router: APIRouter, service: Service) -> None:
    @router.get("/programs", tags=["discovery"], summary="The programs served here")
    async def list_programs() -> list[dict[str, Any]]:
        return [_describe(service, program) for program in service.programs.values()]

    @router.get(
        "/programs/{name}",
        tags=["discovery"],
        summary="One program",
        responses={404: {**_ERRORS[422], "description": "No such program"}},
    )
    async def get_program(name: str) -> dict[str, Any]:
        program = service.programs.get(name)
        if program is None:
            raise ProgramNotFound(f"no program named {name!r}; see GET /programs")
        return _describe(service, program)

    @router.get("/metrics", tags=["health"], summary="Prometheus metrics", response_class=PlainTextResponse)
    async def metrics() -> PlainTextResponse:
        return PlainTextResponse(service.metrics.exposition(), media_type=CONTENT_TYPE_LATEST)

    @router.get("/health/live", tags=["health"], summary="The process is up")
    async def live() -> dict[str, Any]:
        return {"status": "ok", "pid": os.getpid()}  # which worker answered

    @router.get(
        "/health/ready",
        tags=["health"],
        summary="Programs loaded and LMs configured",
        responses={503: _ERRORS[503]},
    )
    async def ready(request: Request) -> Any:
        if not service.ready:
            problem = ServiceUnavailable(f"The service is {service.state.value}.", retry_after=1)
            return JSONResponse(
                problem.problem(request_id=request.state.request_id),
                status_code=problem.status,
                headers=problem.headers(),
                media_type=PROBLEM_CONTENT_TYPE,
            )
        return {
            "status": "ready",
            "programs": {
                name: {
                    "optimized": p.loaded.optimized,
                    "artifact_sha256": p.loaded.artifact.sha256 if p.loaded.artifact else None,
                }
                for name, p in service.programs.items()
            },
        }


async def _admit(
    service: Service,
    program: Program,
    request: Request,
    response: Response,
    opts: dict[str, Any],
    cost: int = 1,
) -> str:
    """Who is calling, whether their key allows this call, and whether their budget does."""
    key: ApiKey | None = getattr(request.state, "api_key", None)
    if key is not None:
        if not key.may_call(program.name):
            raise Forbidden(f"this API key may not call {program.name!r}")
        model = opts.get("model")
        if model is not None and not key.may_use(model):
            raise ModelNotAllowed(f"this API key may not use model {model!r}")
    caller = key.name if key is not None else (request.client.host if request.client else "unknown")
    if service.limiter is not None and service.limiter.enabled:
        response.headers.update(await service.limiter.admit(caller, cost))
    return caller


async def _charge(
    service: Service, request: Request, caller: str, usage: dict[str, dict[str, Any]], cost: dict[str, Any]
) -> None:
    """Count the tokens against the caller's budget, and note them for the access log."""
    tokens = total_tokens(usage)
    request.state.accounting = (tokens, cost.get("total_usd"))
    if service.limiter is not None and service.limiter.enabled:
        await service.limiter.charge(caller, tokens)


def total_tokens(usage: dict[str, dict[str, Any]]) -> int:
    total = 0
    for counts in usage.values():
        spent = counts.get("total_tokens")
        if not isinstance(spent, int):
            spent = (counts.get("prompt_tokens") or 0) + (counts.get("completion_tokens") or 0)
        total += spent
    return total


async def until_disconnected(request: Request, work: Awaitable[T]) -> T:
    """Await ``work``, cancelling it if the client hangs up first: nobody would read the
    answer, and the LM bill would keep running.

    The watcher is never cancelled: once the response is complete the server reports the
    request as disconnected and the watcher ends by itself. (A cancellation per request leaves
    reference cycles behind, which cost a full garbage collection every few hundred requests.)
    """
    call = asyncio.ensure_future(work)
    hung_up = False

    async def watch() -> None:
        nonlocal hung_up
        # The body is read by now: the next message is the disconnect, whenever it comes.
        while (await request.receive())["type"] != "http.disconnect":
            pass
        if not call.done():
            hung_up = True
            call.cancel()

    request.state.disconnect_watcher = asyncio.ensure_future(watch())  # a strong reference
    try:
        return await call
    except asyncio.CancelledError:
        if hung_up:
            raise ClientCancelled("the client closed the connection") from None
        raise


def _describe(service: Service, program: Program) -> dict[str, Any]:
    artifact = program.loaded.artifact
    lms = service.lms
    return {
        "name": program.name,
        "target": program.loaded.target,
        "signature": program.interface.signature,
        "instructions": program.interface.instructions,
        "input_schema": program.interface.input_schema(),
        "output_schema": program.interface.output_schema(),
        "model": lms.model_of(None) if lms else service.settings.model or "local",
        "allowed_models": lms.names if lms else None,
        "optimized": program.loaded.optimized,
        "artifact": {"path": artifact.path, "sha256": artifact.sha256} if artifact else None,
        "execution": "async" if program.runner is None or program.runner.native_async else "thread",
        "endpoints": {"invoke": f"/{program.name}/invoke", "batch": f"/{program.name}/batch"},
    }


def _options(options: BaseModel | None) -> dict[str, Any]:
    return options.model_dump(exclude_none=True) if options is not None else {}


def _field_values(inputs: BaseModel) -> dict[str, Any]:
    """The validated fields, as objects (nested models stay models, as DSPy expects)."""
    return {name: getattr(inputs, name) for name in type(inputs).model_fields}


def _served_model(service: Service, options: dict[str, Any]) -> str:
    return service.lms.model_of(options.get("model")) if service.lms else ""


def _total_usage(results: list[dict[str, Any]]) -> dict[str, dict[str, Any]]:
    total: dict[str, dict[str, Any]] = {}
    for result in results:
        for model, usage in result.get("usage", {}).items():
            into = total.setdefault(model, {})
            for key, value in usage.items():
                if isinstance(value, (int, float)) and not isinstance(value, bool):
                    into[key] = into.get(key, 0) + value
    return total
