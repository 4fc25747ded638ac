"""Discovery and health routes: what is served here, and whether it can serve now."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import dspy
from fastapi import APIRouter, Request
from fastapi.responses import PlainTextResponse
from prometheus_client import CONTENT_TYPE_LATEST

from dspy_serve.errors import ServiceUnavailable
from dspy_serve.serving.caller import Caller
from dspy_serve.serving.programs import Program
from dspy_serve.serving.service import Service
from dspy_serve.serving.streaming import tokens_not_streamed
from dspy_serve.web.envelopes import options_model
from dspy_serve.web.problems import problem_response
from dspy_serve.web.program_routes import ERROR_RESPONSES, add_program_routes
from dspy_serve.web.request_state import caller_of

__all__ = ["add_discovery_routes", "build_router"]


def build_router(service: Service) -> APIRouter:
    """Every route of the native API: each program's, then discovery and health."""
    router = APIRouter()
    options = options_model(service.settings.max_tokens_limit, service.model_names)
    for program in service.programs.values():
        add_program_routes(router, service, program, options)
    add_discovery_routes(router, service)
    return router


def add_discovery_routes(router: APIRouter, service: Service) -> None:
    settings = service.settings
    keys_on = bool(settings.api_keys) or settings.api_keys_file is not None

    @router.get("/programs", tags=["discovery"], summary="The programs served here (those your key may call)")
    async def list_programs(request: Request) -> list[dict[str, Any]]:
        caller = caller_of(request)
        return [_describe(service, p, caller) for p in service.programs.values() if caller.may_call(p.name)]

    @router.get(
        "/programs/{name}",
        tags=["discovery"],
        summary="One program",
        responses={404: {**ERROR_RESPONSES[422], "description": "No such program"}},
    )
    async def get_program(name: str, request: Request) -> dict[str, Any]:
        caller = caller_of(request)
        return _describe(service, service.find(caller, name), caller)  # 404: not even its existence

    @router.get("/metrics", tags=["health"], summary="Prometheus metrics", response_class=PlainTextResponse)
    async def metrics() -> PlainTextResponse:
        return PlainTextResponse(service.metrics.exposition(), media_type=CONTENT_TYPE_LATEST)

    @router.get("/health/live", tags=["health"], summary="The process is up")
    async def live() -> dict[str, Any]:
        return {"status": "ok", "pid": os.getpid()}  # which worker answered

    @router.get(
        "/health/ready",
        tags=["health"],
        summary="Programs loaded, LMs configured, rate-limit storage answering",
        responses={503: ERROR_RESPONSES[503]},
    )
    async def ready(request: Request) -> Any:
        problem = None
        if not service.ready:
            problem = ServiceUnavailable(f"The service is {service.state.value}.", retry_after=1)
        elif not await service.limits_storage_healthy():
            problem = ServiceUnavailable("The rate-limit storage is not answering.", retry_after=1)
        if problem is not None:
            return problem_response(request, problem)
        caller = caller_of(request)
        if keys_on and caller.api_key is None:
            return {"status": "ready"}  # an anonymous caller learns nothing of what is served
        return {
            "status": "ready",
            # What runs the embedded model (xllamacpp or llama-cpp-python), when one is served.
            "local_runtime": service.lms.local_runtime if service.lms else None,
            "programs": {
                name: {
                    "optimized": p.loaded.optimized,
                    "artifact_sha256": p.loaded.artifact.sha256 if p.loaded.artifact else None,
                }
                for name, p in service.programs.items()
                if caller.may_call(name)
            },
        }


def _describe(service: Service, program: Program, caller: Caller) -> dict[str, Any]:
    artifact = program.loaded.artifact
    lms = service.lms
    return {
        "name": program.name,
        "signature": program.interface.signature,
        "instructions": program.interface.instructions,
        "input_schema": program.interface.input_schema(),
        "output_schema": program.interface.output_schema(),
        "model": lms.model_of(None) if lms else service.settings.model or "local",
        # Those this caller's key may pick: a key restricted to one model sees only that one.
        "allowed_models": [m for m in lms.names if caller.api_key is None or caller.api_key.may_use(m)]
        if lms
        else None,
        "local_runtime": lms.local_runtime if lms else None,
        "optimized": program.loaded.optimized,
        # Never a server path: the name and the hash say which state is served.
        "artifact": {"name": Path(artifact.path).name, "sha256": artifact.sha256} if artifact else None,
        "execution": "async" if program.runner is None or program.runner.native_async else "thread",
        # Its versions (#27): which one is stable, the candidate, and what each is (file names only).
        "versions": [
            {
                "name": version.name,
                "sha256": version.sha256,
                "loaded_at": version.loaded_at,
                "state": program.state_of(version.name),
                "provenance": Path(version.provenance).name if version.provenance else None,
            }
            for version in program.versions.values()
        ],
        # What a form needs to stay within bounds (the playground's max tokens and batch size).
        "limits": {
            "max_tokens": service.settings.max_tokens_limit,
            "batch_max_items": service.settings.batch_max_items,
            **({"job_max_items": service.settings.job_max_items} if service.settings.jobs else {}),
        },
        # Whether `options.trace` may be asked for (the playground's Inspect).
        "trace_available": service.settings.expose_trace,
        # Whether `options.prompts` may be asked for, by this caller (a restricted key may not).
        "prompts_available": service.settings.expose_prompts and caller.may_see_prompts(),
        "endpoints": _endpoints(service, program),
        # Whether /stream sends `token` events for its str fields, and why not when it does not.
        "token_streaming": _token_streaming(program),
    }


def _endpoints(service: Service, program: Program) -> dict[str, str]:
    """Its routes here: feedback when it is captured, jobs when jobs are on (the playground shows
    its rating buttons and runs large batches as jobs by these)."""
    settings = service.settings
    endpoints = ["invoke", "stream", "batch"]
    if "*" in settings.capture or program.name in settings.capture:
        endpoints.append("feedback")
    if settings.jobs:
        endpoints.append("jobs")
    return {endpoint: f"/{program.name}/{endpoint}" for endpoint in endpoints}


def _token_streaming(program: Program) -> dict[str, Any]:
    runner = program.runner
    adapter = runner.adapter if runner is not None else program.loaded.configured_adapter
    why = tokens_not_streamed(adapter or dspy.settings.adapter)
    return {"streamed": why is None, "reason": why}
