"""What one server process holds, and the one path every program call takes.

Programs are imported and their interfaces derived when the service is built (so routes and
OpenAPI exist before the first request); LMs, the thread pool and the admission gate are
created at startup and released at shutdown.
"""

from __future__ import annotations

import dataclasses
import gc
import logging
import os
from collections.abc import AsyncGenerator, Awaitable, Callable, Mapping
from contextlib import aclosing
from dataclasses import dataclass
from enum import StrEnum
from typing import Any

import anyio
import dspy
from dspy.streaming import StatusMessage, StreamResponse
from pydantic import ValidationError

from dspy_serve import pricing, tracing
from dspy_serve.admission import Admission
from dspy_serve.errors import RequestTimeout, ServeError, ServiceUnavailable, UpstreamError, from_exception
from dspy_serve.lm import LanguageModels, allowed_models, own_lm_problems
from dspy_serve.loader import LoadedProgram, load_program, parse_target
from dspy_serve.metrics import Metrics
from dspy_serve.ratelimit import RateLimiter
from dspy_serve.runner import SERVER_SAFE_DSPY_SETTINGS, CallResult, ProgramRunner
from dspy_serve.schema import ProgramInterface, derive_interface
from dspy_serve.scope import CallScope
from dspy_serve.settings import ServeSettings
from dspy_serve.streaming import EventStreamResponse, sse_event

__all__ = ["Program", "Service", "ServiceState"]

logger = logging.getLogger("dspy_serve")


class ServiceState(StrEnum):
    STARTING = "starting"
    READY = "ready"
    STOPPING = "stopping"
    STOPPED = "stopped"


@dataclass
class Program:
    loaded: LoadedProgram
    interface: ProgramInterface
    runner: ProgramRunner | None = None

    @property
    def name(self) -> str:
        return self.loaded.name


class Service:
    def __init__(
        self,
        settings: ServeSettings,
        programs: Mapping[str, dspy.Module | str | type[dspy.Signature]] | None = None,
        lm: dspy.BaseLM | None = None,
    ) -> None:
        self.settings = settings
        self._given_lm = lm
        self.programs: dict[str, Program] = {}
        allowed = allowed_models(settings, lm)
        for loaded in _load_all(settings, programs or {}):
            if problems := own_lm_problems(loaded.module, allowed):
                raise ValueError(
                    f"program {loaded.name!r}: {'; '.join(problems)}, not in the allow-list "
                    f"({', '.join(allowed)}): add it with --allow-model, or clear that LM"
                )
            declared = _declared_signatures(settings).get(loaded.name)
            interface = derive_interface(
                loaded.name, loaded.module, declared, max_input_chars=settings.max_input_chars
            )
            self.programs[loaded.name] = Program(loaded, interface)
        if not self.programs:
            raise ValueError("no programs to serve: pass at least one TARGET")
        self.state = ServiceState.STARTING
        self.metrics = Metrics()
        self.lms: LanguageModels | None = None
        self.admission: Admission | None = None
        self.limiter: RateLimiter | None = None
        self._threads: anyio.CapacityLimiter | None = None

    # --- lifecycle ------------------------------------------------------------------------------
    async def start(self) -> None:
        _configure_dspy(self.settings)
        # Loading a local model reads ~100 MB: keep it off the event loop.
        self.lms = await anyio.to_thread.run_sync(LanguageModels, self.settings, self._given_lm)
        self._threads = anyio.CapacityLimiter(self.settings.sync_thread_count)
        self.admission = Admission(
            self.settings.max_in_flight, self.settings.max_queue, self.metrics.in_flight, self.metrics.queued
        )
        self.limiter = RateLimiter(self.settings)
        adapter = _adapter(self.settings, self.lms)
        for program in self.programs.values():
            for _, predictor in program.loaded.module.named_predictors():
                if predictor.lm is not None:
                    predictor.lm = self.lms.adopt(predictor.lm)
            program.runner = ProgramRunner(program.loaded, program.interface, self._threads, adapter)
        # Everything built so far (DSPy, the programs, the LMs) lives as long as the process:
        # keep it out of every future garbage collection, which otherwise walks it again and
        # again (measured: +29% throughput at 100 ms LM latency, c=128; docs/benchmarks.md).
        gc.collect()
        gc.freeze()
        self.state = ServiceState.READY
        logger.info(
            "serving %s on model %s%s",
            ", ".join(self.programs),
            self.lms.model_of(None),
            " (embedded local model)" if self.lms.uses_local_model else "",
        )

    def begin_shutdown(self) -> None:
        """Readiness turns 503 and new calls are refused; calls in flight carry on."""
        if self.state is ServiceState.READY:
            busy = self.admission.running + self.admission.waiting if self.admission is not None else 0
            logger.info(
                "shutting down: readiness is 503, new calls are refused, %d in flight get %g s to finish",
                busy,
                self.settings.shutdown_grace,
            )
        if self.state is not ServiceState.STOPPED:
            self.state = ServiceState.STOPPING

    async def stop(self) -> None:
        self.state = ServiceState.STOPPING
        if self.lms is not None:
            await self.lms.aclose()
        self.metrics.close()
        self.state = ServiceState.STOPPED

    @property
    def ready(self) -> bool:
        return self.state is ServiceState.READY

    # --- calls ----------------------------------------------------------------------------------
    def _begin(
        self, program: Program, model: str | None, temperature: float | None, max_tokens: int | None
    ) -> tuple[ProgramRunner, dspy.BaseLM]:
        """What can be refused before any work starts: readiness, the allow-list, limits."""
        if not self.ready or self.lms is None or self.admission is None or program.runner is None:
            raise ServiceUnavailable("The service is not ready.", retry_after=1)
        return program.runner, self.lms.select(model, temperature=temperature, max_tokens=max_tokens)

    async def call(
        self,
        program: Program,
        inputs: dict[str, Any],
        *,
        model: str | None = None,
        temperature: float | None = None,
        max_tokens: int | None = None,
    ) -> CallResult:
        """Run one validated call: allow-listed LM, admission, deadline; errors stay typed."""
        runner, lm = self._begin(program, model, temperature, max_tokens)
        assert self.admission is not None
        scope = CallScope.starting_now(self.settings.timeout)
        try:
            with anyio.fail_after(self.settings.timeout), tracing.program_span(program.name, lm.model):
                async with self.admission.slot():
                    result = await runner.call(inputs, lm=lm, scope=scope)
        except TimeoutError:
            scope.cancel()
            raise self._timeout_error() from None
        except ServeError:
            raise
        except Exception as exc:
            raise from_exception(exc) from exc
        return _checked(program, result, self.metrics)

    def stream(
        self,
        program: Program,
        inputs: dict[str, Any],
        *,
        request_id: str | None = None,
        on_result: Callable[[CallResult], Awaitable[None]] | None = None,
        headers: dict[str, str] | None = None,
        model: str | None = None,
        temperature: float | None = None,
        max_tokens: int | None = None,
    ) -> EventStreamResponse:
        """An SSE response for one call; errors before the first byte are still HTTP statuses."""
        runner, lm = self._begin(program, model, temperature, max_tokens)
        admission = self.admission
        assert admission is not None
        admission.check()
        scope = CallScope.starting_now(self.settings.timeout)

        async def events() -> AsyncGenerator[bytes, None]:
            try:
                async with admission.slot(), aclosing(runner.stream(inputs, lm=lm, scope=scope)) as items:
                    async for item in items:
                        if isinstance(item, StreamResponse):
                            if item.chunk:
                                token = {"predictor": item.predict_name, "field": item.signature_field_name}
                                yield sse_event("token", {**token, "chunk": item.chunk})
                        elif isinstance(item, StatusMessage):
                            yield sse_event("status", {"message": item.message})
                        else:
                            result = _checked(program, item, self.metrics)
                            if on_result is not None:
                                await on_result(result)
                            yield sse_event("prediction", response_body(result))
            except Exception as exc:
                error = from_exception(exc)
                self.metrics.errors.labels(error.code).inc()
                yield sse_event("error", error.problem(request_id=request_id))

        def on_timeout() -> bytes:
            scope.cancel()
            return sse_event("error", self._timeout_error().problem(request_id=request_id))

        return EventStreamResponse(
            events,
            heartbeat=self.settings.stream_heartbeat,
            timeout=self.settings.timeout,
            on_timeout=on_timeout,
        )

    def _timeout_error(self) -> RequestTimeout:
        return RequestTimeout(f"The program did not finish within {self.settings.timeout:g} s.")


def _checked(program: Program, result: CallResult, metrics: Metrics | None = None) -> CallResult:
    """Never return what the program did not declare: validate outputs against the schema.
    Then price the call and count it."""
    try:
        validated = program.interface.outputs.model_validate(result.outputs)
    except ValidationError as exc:
        errors = [
            {"loc": ["outputs", *err["loc"]], "msg": err["msg"], "type": err["type"]}
            for err in exc.errors(include_url=False, include_input=False)
        ]
        raise UpstreamError(
            "The program's outputs do not match its declared output types.", errors=errors
        ) from exc
    cost = pricing.estimate(result.usage)
    if metrics is not None:
        metrics.observe_call(result.usage, cost, result.lm_calls, result.cache_hits)
    return dataclasses.replace(result, outputs=validated.model_dump(mode="json"), cost=cost)


def response_body(result: CallResult) -> dict[str, Any]:
    """The body of /invoke, and of the stream's ``prediction`` event."""
    return {"outputs": result.outputs, "usage": result.usage, "cost": result.cost, "model": result.model}


def _load_all(
    settings: ServeSettings, given: Mapping[str, dspy.Module | str | type[dspy.Signature]]
) -> list[LoadedProgram]:
    targets: dict[str, str | dspy.Module] = {}
    for spec in settings.programs:
        name, target = parse_target(spec)
        if name in targets:
            raise ValueError(f"two programs are named {name!r}; rename one with 'alias=TARGET'")
        targets[name] = target
    for name, obj in given.items():
        if name in targets:
            raise ValueError(f"two programs are named {name!r}")
        targets[name] = obj if isinstance(obj, dspy.Module) else dspy.Predict(obj)
    artifacts = _artifacts_by_program(settings.artifacts, list(targets))
    return [
        load_program(
            name,
            target,
            artifact=artifacts.get(name),
            artifact_optional=settings.artifact_optional,
            allow_pickle=settings.allow_pickle,
        )
        for name, target in targets.items()
    ]


def _artifacts_by_program(specs: list[str], names: list[str]) -> dict[str, str]:
    by_name: dict[str, str] = {}
    for spec in specs:
        name, sep, path = spec.partition("=")
        if sep and name in names:
            by_name[name] = path
        elif len(names) == 1:
            by_name[names[0]] = spec
        else:
            raise ValueError(f"artifact {spec!r}: with several programs, write NAME=PATH (programs: {names})")
    return by_name


def _declared_signatures(settings: ServeSettings) -> dict[str, str]:
    declared: dict[str, str] = {}
    for spec in settings.signatures:
        name, sep, signature = spec.partition("=")
        if not sep:
            raise ValueError(f"signature {spec!r}: write NAME=SIGNATURE, e.g. rag='question -> answer'")
        declared[name.strip()] = signature.strip()
    return declared


def _adapter(settings: ServeSettings, lms: LanguageModels) -> dspy.Adapter | None:
    if settings.adapter == "json" or (settings.adapter == "auto" and lms.uses_local_model):
        return dspy.JSONAdapter()
    if settings.adapter == "chat":
        return dspy.ChatAdapter()
    return None


def _configure_dspy(settings: ServeSettings) -> None:
    """Process-wide DSPy settings, once, at startup; per-request ones go through dspy.context."""
    os.environ.setdefault("LITELLM_LOCAL_MODEL_COST_MAP", "True")
    if settings.cache:
        dspy.configure_cache(
            enable_disk_cache=settings.cache_dir is not None,
            enable_memory_cache=True,
            disk_cache_dir=str(settings.cache_dir) if settings.cache_dir else None,
            memory_max_entries=settings.cache_memory_entries,
        )
    wanted = {
        key: value for key, value in SERVER_SAFE_DSPY_SETTINGS.items() if dspy.settings.get(key) != value
    }
    if wanted:
        try:
            dspy.configure(**wanted)
        except RuntimeError:
            # Another thread or task owns dspy.configure (several apps in one process): every
            # call sets the same values through dspy.context, so the server stays safe without it.
            logger.debug("dspy.configure is owned elsewhere; relying on per-request dspy.context")
    if settings.mlflow_autolog:
        # autolog registers a DSPy callback through dspy.configure, so it runs here, in the
        # task that owns DSPy's settings, never in a request.
        try:
            import mlflow
        except ImportError as exc:
            raise RuntimeError("mlflow_autolog needs mlflow: pip install mlflow") from exc
        mlflow.dspy.autolog()
