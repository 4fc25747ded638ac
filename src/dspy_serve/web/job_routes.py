"""Durable jobs over HTTP (#28): ``POST /NAME/jobs``, ``GET /jobs/{id}``,
``GET /jobs/{id}/results`` and ``DELETE /jobs/{id}``.

Submitting admits the caller to the program through the one admission (a program outside the
key is a 404, as for /invoke) and counts as one request of its budget; each item is one more
request when it runs (a 429 then is waited out, not failed). A key sees and cancels only its
own jobs (any other is a 404); with API keys off, anyone may see and cancel any job.
(No ``from __future__ import annotations``: FastAPI reads the models from the annotations.)
"""

import json
from collections.abc import AsyncIterator, Callable, Coroutine
from contextlib import asynccontextmanager
from typing import Annotated, Any, Literal

from fastapi import APIRouter, FastAPI, Query, Request, Response
from fastapi.responses import StreamingResponse
from fastapi.routing import APIRoute
from pydantic import BaseModel, ConfigDict, Field, WrapValidator, create_model

from dspy_serve.errors import InvalidInput, JobNotFound, UnsupportedMediaType, UnsupportedRequest
from dspy_serve.jobs import JobRunner
from dspy_serve.jobs.documents import result_line, status_of
from dspy_serve.serving.call import CallOptions, admit
from dspy_serve.serving.caller import Caller
from dspy_serve.serving.programs import Program
from dspy_serve.serving.service import Service
from dspy_serve.store.jobs import JobItem, cancel_job, create_job, get_job, list_jobs, results_from
from dspy_serve.web.envelopes import InvalidItem, _keep_invalid, options_model
from dspy_serve.web.program_routes import ERROR_RESPONSES
from dspy_serve.web.request_state import caller_of

__all__ = ["add_jobs", "running_jobs"]

NDJSON = "application/x-ndjson"


class JobCreated(BaseModel):
    id: str = Field(description="The job's id: GET /jobs/{id} for its state, /jobs/{id}/results for results.")
    state: Literal["queued", "running", "done", "failed", "cancelled"]
    total: int


class JobStatus(BaseModel):
    id: str
    program: str
    state: Literal["queued", "running", "done", "failed", "cancelled"] = Field(
        description="queued, running, then done (some item answered) or failed (none did); or cancelled."
    )
    total: int = Field(description="Items in the job.")
    done: int = Field(description="Items answered.")
    failed: int = Field(description="Items that ended in an error (an invalid item is failed at once).")
    created_at: float = Field(description="Epoch seconds.")
    started_at: float | None
    finished_at: float | None
    expires_at: float | None = Field(description="When the job and its results are removed (job_retention).")
    tokens: int = Field(description="LM tokens spent so far.")
    cost_usd: float | None = Field(description="Estimated cost so far (null when the model has no price).")


class JobList(BaseModel):
    jobs: list[JobStatus] = Field(description="This key's jobs (every job with API keys off), newest first.")


class JobResultLine(BaseModel):
    """One line of ``GET /jobs/{id}/results``: an item's result, in input order."""

    index: int
    call_id: str | None
    outputs: dict[str, Any] | None = None
    error: dict[str, Any] | None = Field(default=None, description="The item's error, as problem+json.")
    usage: dict[str, Any] = Field(default_factory=dict)
    cost: dict[str, Any] | None = None


class NdjsonResponse(StreamingResponse):
    media_type = NDJSON


def add_jobs(app: FastAPI, service: Service) -> JobRunner | None:
    """The job routes and the runner, when jobs are on: returns the runner to run in the app's
    lifespan (:func:`running_jobs`)."""
    if not service.settings.jobs:
        return None
    runner = JobRunner(service)
    router = APIRouter()
    options = options_model(service.settings.max_tokens_limit, service.model_names)
    for program in service.programs.values():
        _add_submit(router, service, runner, program, options)
    _add_job_routes(router, service, runner)
    app.include_router(router)
    return runner


@asynccontextmanager
async def running_jobs(runner: JobRunner) -> AsyncIterator[None]:
    await runner.start()
    try:
        yield
    finally:
        await runner.stop()


def _add_submit(
    router: APIRouter, service: Service, runner: JobRunner, program: Program, options: type[BaseModel]
) -> None:
    name, settings = program.name, service.settings
    prefix = program.interface.inputs.__name__.removesuffix("Inputs")
    lenient: Any = Annotated[program.interface.inputs, WrapValidator(_keep_invalid)]
    optional_options: Any = options | None
    request_model: Any = create_model(
        f"{prefix}JobRequest",
        __config__=ConfigDict(extra="forbid"),
        items=(list[lenient], Field(min_length=1, max_length=settings.job_max_items)),
        options=(optional_options, None),
        webhook=(
            str | None,
            Field(
                default=None,
                max_length=2000,
                description="An http(s) URL the server POSTs the job's status to when it ends, signed "
                "(X-DSPy-Serve-Signature: sha256=HMAC of the body); only when the server has a webhook "
                "secret.",
            ),
        ),
    )

    async def submit(body: request_model, request: Request, response: Response) -> JobCreated:
        caller = caller_of(request)
        given = body.options.model_dump(exclude_none=True) if body.options is not None else {}
        call_options = CallOptions(**given)
        webhook = _checked_webhook(service, body.webhook)
        admission = await admit(service, caller, program, call_options, batch=True)
        response.headers.update(admission.headers)
        items = [
            _job_item(service, caller, program, call_options, i, item) for i, item in enumerate(body.items)
        ]
        key = caller.api_key
        job_id = await create_job(
            runner.store,
            program=name,
            key_name=key.name if key is not None else None,
            options=given,
            items=items,
            webhook=webhook,
            retention_s=settings.job_retention,
        )
        runner.wake()
        response.status_code = 202
        response.headers["Location"] = f"/jobs/{job_id}"
        job = await get_job(runner.store, job_id)
        assert job is not None
        return JobCreated(id=job_id, state=job["state"], total=job["total"])

    router.add_api_route(
        f"/{name}/jobs",
        submit,
        methods=["POST"],
        route_class_override=_ndjson_route(service, name),
        status_code=202,
        response_model=JobCreated,
        responses=ERROR_RESPONSES,
        summary=f"Submit a durable job of {name}",
        description=f"Run {name} over many inputs in the background (at most {settings.job_max_items}): "
        '`{"items": [...], "options": {...}}`, or one item a line with `Content-Type: application/x-ndjson`. '
        "An invalid item gets its own error result. Answers 202 with the job's id and "
        "`Location: /jobs/{id}`.",
        operation_id=f"{name}_jobs",
        tags=["jobs"],
        openapi_extra={
            "requestBody": {
                "content": {
                    NDJSON: {"schema": {"type": "string", "description": "One item's inputs a line."}}
                }
            }
        },
    )


def _job_item(
    service: Service, caller: Caller, program: Program, options: CallOptions, index: int, item: Any
) -> JobItem:
    if isinstance(item, InvalidItem):
        errors = [{**err, "loc": ["items", index, *err["loc"]]} for err in item.errors]
        call = service.call(caller, program, {}, options, wire="job")
        error = call.refuse(InvalidInput("Invalid input", errors=errors))
        return JobItem(None, error=error.problem(), call_id=call.call_id)
    return JobItem(item.model_dump(mode="json"))


def _checked_webhook(service: Service, url: str | None) -> str | None:
    if url is None:
        return None
    if not url.startswith(("http://", "https://")):
        raise UnsupportedRequest(
            "The webhook must be an http(s) URL.",
            errors=[{"loc": ["body", "webhook"], "msg": "not an http(s) URL", "type": "url_scheme"}],
        )
    if service.settings.job_webhook_secret is None:
        raise UnsupportedRequest(
            "This server sends no webhooks (the operator sets DSPY_SERVE_JOB_WEBHOOK_SECRET).",
            errors=[{"loc": ["body", "webhook"], "msg": "webhooks are off", "type": "webhooks_off"}],
        )
    return url


def _ndjson_route(service: Service, name: str) -> type[APIRoute]:
    """Finds the program for the caller first (404 outside its key, whatever the body), takes
    JSON or JSON lines (turned into ``{"items": [...]}`` before validation; a line that is not
    JSON is an invalid item of its own), and refuses other bodies (415)."""

    class JobSubmitRoute(APIRoute):
        def get_route_handler(self) -> Callable[[Request], Coroutine[Any, Any, Response]]:
            handler = super().get_route_handler()

            async def submit(request: Request) -> Response:
                service.find(caller_of(request), name)
                media = request.headers.get("content-type", "").partition(";")[0].strip().lower()
                if media == NDJSON:
                    request = await _as_json(request)
                elif media != "application/json" and not media.endswith("+json"):
                    raise UnsupportedMediaType(f"Send JSON ('application/json') or JSON lines ('{NDJSON}').")
                return await handler(request)

            return submit

    return JobSubmitRoute


async def _as_json(request: Request) -> Request:
    items = [
        _line(line) for line in (await request.body()).decode("utf-8", "replace").splitlines() if line.strip()
    ]
    body = json.dumps({"items": items}).encode()
    headers = [(k, v) for k, v in request.scope["headers"] if k not in (b"content-type", b"content-length")]
    scope = {
        **request.scope,
        "headers": [
            *headers,
            (b"content-type", b"application/json"),
            (b"content-length", str(len(body)).encode()),
        ],
    }
    sent = False

    async def receive() -> dict[str, Any]:
        nonlocal sent
        if sent:
            return {"type": "http.disconnect"}
        sent = True
        return {"type": "http.request", "body": body, "more_body": False}

    return Request(scope, receive)


def _line(line: str) -> Any:
    try:
        return json.loads(line)
    except ValueError:
        return line  # not an object of inputs: this item fails validation, the others run


def _add_job_routes(router: APIRouter, service: Service, runner: JobRunner) -> None:
    async def own_job(request: Request, job_id: str) -> dict[str, Any]:
        job = await get_job(runner.store, job_id)
        key = caller_of(request).api_key
        if job is None or (key is not None and job["key_name"] != key.name):
            raise JobNotFound(f"No job {job_id!r}.")
        return job

    async def listing(
        request: Request, limit: Annotated[int, Query(ge=1, le=1000, description="Most jobs to list.")] = 50
    ) -> JobList:
        key = caller_of(request).api_key
        rows = await list_jobs(
            runner.store, key_name=key.name if key is not None else None, everyone=key is None, limit=limit
        )
        return JobList(jobs=[JobStatus(**status_of(row)) for row in rows])

    async def status(job_id: str, request: Request) -> JobStatus:
        return JobStatus(**status_of(await own_job(request, job_id)))

    async def results(
        job_id: str,
        request: Request,
        offset: Annotated[int, Query(ge=0, description="The first item's index to send.")] = 0,
    ) -> NdjsonResponse:
        job = await own_job(request, job_id)
        end, rows = await results_from(runner.store, job_id, offset)

        async def lines() -> AsyncIterator[bytes]:
            async for row in rows:
                yield json.dumps(result_line(row), separators=(",", ":")).encode() + b"\n"

        headers = {
            "X-Job-State": job["state"],
            "X-Next-Offset": str(end),
            "X-More-Results": "true" if end < job["total"] else "false",
        }
        return NdjsonResponse(lines(), headers=headers)

    async def cancel(job_id: str, request: Request) -> JobStatus:
        await own_job(request, job_id)
        await cancel_job(runner.store, job_id, retention_s=service.settings.job_retention)
        return JobStatus(**status_of(await own_job(request, job_id)))

    not_found: dict[int | str, dict[str, Any]] = {
        404: {**ERROR_RESPONSES[422], "description": "No such job (or not this key's)"}
    }
    responses: dict[int | str, dict[str, Any]] = {**{s: ERROR_RESPONSES[s] for s in (401, 503)}, **not_found}
    router.add_api_route(
        "/jobs", listing, methods=["GET"], response_model=JobList, responses=responses,
        summary="Your jobs, newest first", operation_id="job_list", tags=["jobs"],
    )  # fmt: skip
    router.add_api_route(
        "/jobs/{job_id}", status, methods=["GET"], response_model=JobStatus, responses=responses,
        summary="A job's state, counts and spending so far", operation_id="job_status", tags=["jobs"],
    )  # fmt: skip
    router.add_api_route(
        "/jobs/{job_id}/results",
        results,
        methods=["GET"],
        response_class=NdjsonResponse,
        responses={**responses, 200: {"model": JobResultLine, "description": _RESULTS_DOC}},
        summary="A job's results so far, as JSON lines in input order",
        description=_RESULTS_DOC,
        operation_id="job_results",
        tags=["jobs"],
    )
    router.add_api_route(
        "/jobs/{job_id}", cancel, methods=["DELETE"], response_model=JobStatus, responses=responses,
        summary="Cancel a job (its running calls too)", operation_id="job_cancel", tags=["jobs"],
    )  # fmt: skip


_RESULTS_DOC = (
    "One JSON line per finished item from `offset` on, in input order, stopping before the first item "
    "not finished yet. `X-Next-Offset` is the offset to ask for next; `X-More-Results: true` while "
    "items remain to come; `X-Job-State` is the job's state."
)
