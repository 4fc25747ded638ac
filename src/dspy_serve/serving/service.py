"""What one server process holds, and the one path every program call takes.

Programs are imported and their interfaces derived when the service is built (so routes and
OpenAPI exist before the first request); LMs, the thread pool and the capacity gate are
created at startup and released at shutdown.

Every front end calls :meth:`Service.admit` (key restrictions, rate limits), then
:meth:`Service.call` or :meth:`Service.stream`: readiness, the allow-list, capacity and the
deadline are applied here, and output checks, pricing, metrics and token charging by the one
:class:`~.accounts.CallAccounts`, the same on both paths.
"""

from __future__ import annotations

import gc
import logging
import os
from contextlib import nullcontext
from dataclasses import dataclass
from enum import StrEnum
from typing import Any

import anyio
import dspy

from dspy_serve.errors import (
    BadOverride,
    PromptsNotExposed,
    RequestTimeout,
    ServeError,
    ServiceUnavailable,
    TraceNotExposed,
    from_exception,
)
from dspy_serve.lm.checks import missing_credentials
from dspy_serve.lm.registry import LanguageModels, adopt_held_lms, allowed_models
from dspy_serve.serving import tracing
from dspy_serve.serving.accounts import CallAccounts
from dspy_serve.serving.call_scope import CallScope
from dspy_serve.serving.call_stream import CallStream
from dspy_serve.serving.caller import Caller
from dspy_serve.serving.capacity import CapacityGate
from dspy_serve.serving.front_door import FrontDoor
from dspy_serve.serving.metrics import Metrics
from dspy_serve.serving.programs import Program, ProgramsArg, load_programs
from dspy_serve.serving.ratelimit import RateLimiter
from dspy_serve.serving.reuse import Reuse
from dspy_serve.serving.runner import SERVER_SAFE_DSPY_SETTINGS, CallResult, ProgramRunner
from dspy_serve.settings import ServeSettings

__all__ = ["CallOptions", "Service", "ServiceState"]

logger = logging.getLogger("dspy_serve")


class ServiceState(StrEnum):
    STARTING = "starting"
    READY = "ready"
    STOPPING = "stopping"
    STOPPED = "stopped"


@dataclass(frozen=True)
class CallOptions:
    """Per-request LM options, already validated against the server's limits."""

    model: str | None = None  # must be on the allow-list
    temperature: float | None = None
    max_tokens: int | None = None
    trace: bool = False  # return the call's trace (only with `expose_trace`)
    prompts: bool = False  # return its LM calls' messages and raw responses (only with `expose_prompts`)

    @property
    def own_run(self) -> bool:
        """A call that asks to see its own run is never answered by another's (cache, coalescing)."""
        return self.trace or self.prompts


class Service:
    def __init__(
        self, settings: ServeSettings, programs: ProgramsArg | None = None, lm: dspy.BaseLM | None = None
    ) -> None:
        self._given_lm = lm
        # The settings as served: with no --model, the LM a program file configures.
        self.settings, self.programs = load_programs(settings, programs, lm)
        settings = self.settings
        self.state = ServiceState.STARTING
        self.metrics = Metrics()
        self.lms: LanguageModels | None = None
        self.capacity: CapacityGate | None = None
        self.front_door: FrontDoor | None = None
        self._accounts: CallAccounts | None = None
        self._threads: anyio.CapacityLimiter | None = None
        # The response cache and coalescing (versions of the programs are computed here, once).
        self.reuse = Reuse.of(settings, self.programs, self.metrics)

    # --- lifecycle ------------------------------------------------------------------------------
    async def start(self) -> None:
        _configure_dspy(self.settings)
        for problem in missing_credentials(self.settings, self._given_lm):
            logger.error("%s: calls to it will fail", problem)  # the CLI refuses to start instead
        # Loading a local model reads ~100 MB: keep it off the event loop.
        self.lms = await anyio.to_thread.run_sync(LanguageModels, self.settings, self._given_lm)
        self._threads = anyio.CapacityLimiter(self.settings.sync_thread_count)
        self.capacity = CapacityGate(
            self.settings.max_in_flight, self.settings.max_queue, self.metrics.in_flight, self.metrics.queued
        )
        self.front_door = FrontDoor(RateLimiter(self.settings))
        self._accounts = CallAccounts(self.front_door, self.metrics, self.settings.max_tokens_limit)
        adapter = _adapter(self.settings, self.lms)
        for program in self.programs.values():
            adopt_held_lms(program.loaded.module, self.lms)
            program.runner = ProgramRunner(program.loaded, program.interface, self._threads, adapter)
        # Everything built so far (DSPy, the programs, the LMs) lives as long as the process:
        # keep it out of every future garbage collection, which otherwise walks it again and
        # again (measured: +29% throughput at 100 ms LM latency, c=128; docs/benchmarks.md).
        gc.collect()
        gc.freeze()
        if self.settings.gc_threshold:
            # Each request allocates thousands of objects that live as long as its LM call: with
            # Python's 700 the collector walks them many times over before they die. Rarer
            # collections free the same cycles (measured: ~0.3 ms less CPU per request at c=128).
            gc.set_threshold(self.settings.gc_threshold, 20, 100)
        self.state = ServiceState.READY
        runtime = self.lms.local_runtime
        logger.info(
            "serving %s on model %s%s",
            ", ".join(self.programs),
            self.lms.model_of(None),
            f" (embedded local model on {runtime['package']} {runtime['version']}: {runtime['reason']})"
            if runtime
            else " (embedded local model)"
            if self.lms.uses_local_model
            else "",
        )

    def begin_shutdown(self) -> None:
        """Readiness turns 503 and new calls are refused; calls in flight carry on."""
        if self.state is ServiceState.READY:
            busy = self.capacity.running + self.capacity.waiting if self.capacity is not None else 0
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
        if self.reuse is not None:
            await self.reuse.aclose()
        self.metrics.close()
        self.state = ServiceState.STOPPED

    @property
    def model_names(self) -> list[str]:
        """The models callers may pick, the default first (known before startup builds them)."""
        return allowed_models(self.settings, self._given_lm)

    @property
    def ready(self) -> bool:
        return self.state is ServiceState.READY

    async def limits_storage_healthy(self) -> bool:
        """Whether the rate-limit storage answers: without it every call would be refused."""
        return self.front_door is None or await self.front_door.healthy()

    # --- calls ----------------------------------------------------------------------------------
    async def admit(
        self, caller: Caller, program: Program, options: CallOptions, *, requests: int = 1
    ) -> dict[str, str]:
        """The front door: may this caller run ``requests`` calls of ``program`` now? Returns
        the RateLimit headers to send back."""
        if self.front_door is None:
            raise ServiceUnavailable("The service is not ready.", retry_after=1)
        self.check_trace(options)
        self.check_prompts(options, caller)
        return await self.front_door.admit(caller, program.name, options.model, requests=requests)

    def check_trace(self, options: CallOptions, *, batch: bool = False) -> None:
        """A trace is refused unless the operator exposes traces (403), and is for one call (400)."""
        if not options.trace:
            return
        if not self.settings.expose_trace:
            raise TraceNotExposed(
                "Traces are off on this server (the operator turns them on with --expose-trace).",
                errors=[{"loc": ["options", "trace"], "msg": "traces are not exposed", "type": "trace_off"}],
            )
        if batch:
            raise BadOverride(
                "A trace is for one call: ask for it on /invoke or /stream.",
                errors=[{"loc": ["options", "trace"], "msg": "not for /batch", "type": "trace_batch"}],
            )

    def check_prompts(self, options: CallOptions, caller: Caller) -> None:
        """Prompts are refused (403) unless the operator exposes them and the caller's key may see them."""
        if not options.prompts:
            return
        if not self.settings.expose_prompts:
            why = "Prompts are off on this server (the operator turns them on with --expose-prompts)."
        elif not caller.may_see_prompts():
            why = "This API key may not see prompts (its key line needs prompts=yes)."
        else:
            return
        error = {"loc": ["options", "prompts"], "msg": "prompts are not exposed", "type": "prompts_off"}
        raise PromptsNotExposed(why, errors=[error])

    async def call(
        self, program: Program, inputs: dict[str, Any], options: CallOptions, caller: Caller
    ) -> CallResult:
        """Run one validated call: allow-listed LM, capacity, deadline; errors stay typed. A
        deterministic call may be answered by the response cache or by an identical call in
        flight instead (:mod:`.reuse`), unless it asks for its trace or prompts (its own run's)."""
        runner, lm, capacity, accounts = self._begin(program, options)
        reuse = None if options.own_run else self.reuse
        key = reuse.key(program, inputs, lm, caller) if reuse is not None else None
        if key is None:
            return await self._run(program, runner, lm, capacity, accounts, inputs, caller, options)
        assert reuse is not None
        if (answer := await reuse.answer(key, caller)) is not None:
            return answer  # no reservation was taken: a reused answer charges no tokens
        run = self._run(program, runner, lm, capacity, accounts, inputs, caller, options)
        return await reuse.run(key, caller, run)

    async def _run(
        self,
        program: Program,
        runner: ProgramRunner,
        lm: dspy.BaseLM,
        capacity: CapacityGate,
        accounts: CallAccounts,
        inputs: dict[str, Any],
        caller: Caller,
        options: CallOptions,
    ) -> CallResult:
        scope = CallScope.starting_now(self.settings.timeout, keep_prompts=options.prompts)
        reserved = await accounts.reserve(caller, lm, scope)
        try:
            try:
                span = tracing.program_span(program.name, lm.model) if self.settings.otel else nullcontext()
                with anyio.fail_after(self.settings.timeout), span:
                    async with capacity.slot():
                        result = await runner.call(inputs, lm=lm, scope=scope, trace=options.trace)
            except TimeoutError:
                scope.cancel()
                raise RequestTimeout.after(self.settings.timeout) from None
            except ServeError:
                raise
            except Exception as exc:
                raise from_exception(exc) from exc
            return accounts.finish(program, result)
        finally:
            await accounts.settle(caller, reserved, scope)

    def stream(
        self, program: Program, inputs: dict[str, Any], options: CallOptions, caller: Caller
    ) -> CallStream:
        """One call as a stream of events. What can be refused is refused here, before the
        front end sends its first byte, so refusals stay plain HTTP statuses."""
        runner, lm, capacity, accounts = self._begin(program, options)
        capacity.check()
        return CallStream(
            program,
            runner,
            lm,
            inputs,
            caller,
            scope=CallScope.starting_now(self.settings.timeout, keep_prompts=options.prompts),
            trace=options.trace,
            capacity=capacity,
            accounts=accounts,
            reuse=None if options.own_run else self.reuse,
            timeout=self.settings.timeout,
        )

    def _begin(
        self, program: Program, options: CallOptions
    ) -> tuple[ProgramRunner, dspy.BaseLM, CapacityGate, CallAccounts]:
        """What can be refused before any work starts: readiness and the allow-list."""
        lms, capacity, accounts, runner = self.lms, self.capacity, self._accounts, program.runner
        if not self.ready or lms is None or capacity is None or accounts is None or runner is None:
            raise ServiceUnavailable("The service is not ready.", retry_after=1)
        lm = lms.select(options.model, temperature=options.temperature, max_tokens=options.max_tokens)
        return runner, lm, capacity, accounts


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
