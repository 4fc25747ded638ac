"""One program call, from admission to its published record: the only way to run a program.

A front end asks the service for a :class:`Call` (``Service.call`` or ``Service.stream``), awaits
:meth:`Call.admit` for the headers to send (key restrictions, the trace and prompts rules, the
allow-list, rate limits: every refusal is raised here, before a byte is sent), then either

- awaits :meth:`Call.result` (``/invoke``, ``/v1``, MCP, a batch item): the checked, priced and
  charged :class:`~.runner.CallResult`, or a typed :class:`~dspy_serve.errors.ServeError`; or
- awaits :meth:`Call.stream` with an ``emit`` coroutine (``/stream``, ``/v1`` with ``stream``): it
  hands over :class:`~.events.Token` and :class:`~.events.Status` events as the program runs,
  then exactly one :class:`~.events.Finished` or :class:`~.events.Failed`.

Either way the same steps run here, once: reuse (response cache, coalescing), the token
reservation, the deadline, the OpenTelemetry span, a capacity slot, the run, the finish
(:class:`~.accounts.CallAccounts`: outputs checked, priced), the token charge, and one
:class:`~.observers.FinishedCall` published to the service's observers. Events are *pushed* to
``emit`` rather than yielded, so the deadline's cancel scope never spans a ``yield``.

:func:`admit` is the one admission: a :class:`Call` cannot run without the :class:`Admission` it
returns, and a :class:`~.batch.Batch` admits its items together through it.
"""

from __future__ import annotations

import dataclasses
import time
import uuid
from collections.abc import Awaitable, Callable
from contextlib import aclosing, nullcontext
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import anyio
import dspy
from dspy.streaming import StatusMessage, StreamResponse

from dspy_serve.call_scope import CallScope
from dspy_serve.errors import (
    BadOverride,
    ClientCancelled,
    PromptsNotExposed,
    RequestTimeout,
    ServeError,
    ServiceUnavailable,
    TraceNotExposed,
    from_exception,
)
from dspy_serve.serving import pricing, tracing
from dspy_serve.serving.caller import Caller
from dspy_serve.serving.events import Failed, Finished, Status, StreamEvent, Token
from dspy_serve.serving.observers import FinishedCall
from dspy_serve.serving.programs import Program
from dspy_serve.serving.runner import CallResult, ProgramRunner
from dspy_serve.serving.streaming import well_formed
from dspy_serve.serving.usage import flat_usage
from dspy_serve.serving.versions import ProgramVersion

if TYPE_CHECKING:
    from dspy_serve.serving.service import Service

__all__ = ["Admission", "Call", "CallOptions", "Emit", "admit"]

Emit = Callable[[StreamEvent], Awaitable[None]]


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

    def given(self) -> dict[str, Any]:
        """The options the caller set (what a finished call records)."""
        return {name: value for name, value in vars(self).items() if value not in (None, False)}


@dataclass(frozen=True)
class Admission:
    """Proof that a caller was admitted to a program: made by :func:`admit` only."""

    lm: dspy.BaseLM  # the allow-listed LM the call runs on, with the request's overrides
    headers: dict[str, str]  # RateLimit-* headers to send back


async def admit(
    service: Service,
    caller: Caller,
    program: Program,
    options: CallOptions,
    *,
    requests: int = 1,
    batch: bool = False,
) -> Admission:
    """May ``caller`` run ``requests`` calls of ``program`` now? The one place every call is
    admitted: readiness, the key's program list (404, as for a program that does not exist),
    traces and prompts, the key's models and the allow-list, then the request budget."""
    lms, door = service.lms, service.front_door
    if not service.ready or lms is None or door is None or program.runner is None:
        raise ServiceUnavailable("The service is not ready.", retry_after=1)
    service.find(caller, program.name)
    _check_trace(service, options, batch=batch)
    _check_prompts(service, options, caller)
    served = service.model_names
    headers = await door.admit(caller, program.name, options.model, requests=requests, served=served)
    model = service.model_for(options, caller)
    lm = lms.select(model, temperature=options.temperature, max_tokens=options.max_tokens)
    return Admission(lm, headers)


def _check_trace(service: Service, options: CallOptions, *, batch: bool) -> None:
    """A trace is refused unless the operator exposes traces (403), and is for one call (400)."""
    if not options.trace:
        return
    if not service.settings.expose_trace:
        raise TraceNotExposed(
            "Traces are off on this server (the operator turns them on with --expose-trace).",
            errors=[{"loc": ["options", "trace"], "msg": "traces are not exposed", "type": "trace_off"}],
        )
    if batch:
        raise BadOverride(
            "A trace is for one call: ask for it on /invoke or /stream.",
            errors=[{"loc": ["options", "trace"], "msg": "not for /batch", "type": "trace_batch"}],
        )


def _check_prompts(service: Service, options: CallOptions, caller: Caller) -> None:
    """Prompts are refused (403) unless the operator exposes them and the caller's key may see them."""
    if not options.prompts:
        return
    if not service.settings.expose_prompts:
        why = "Prompts are off on this server (the operator turns them on with --expose-prompts)."
    elif not caller.may_see_prompts():
        why = "This API key may not see prompts (its key line needs prompts=yes)."
    else:
        return
    error = {"loc": ["options", "prompts"], "msg": "prompts are not exposed", "type": "prompts_off"}
    raise PromptsNotExposed(why, errors=[error])


class Call:
    """One call of one program for one caller, with a server-minted :attr:`call_id`."""

    def __init__(
        self,
        service: Service,
        caller: Caller,
        program: Program,
        inputs: dict[str, Any],
        options: CallOptions,
        *,
        wire: str,
        streams: bool = False,
        admission: Admission | None = None,
        version: ProgramVersion | None = None,
        shadow_of: str | None = None,
    ) -> None:
        self.call_id = uuid.uuid4().hex
        self.caller = caller
        self.program = program
        self.inputs = inputs
        self.options = options
        self.wire = wire  # "invoke", "stream", "batch", "openai", "mcp", "shadow", ...
        # The version that answers, chosen now: it is the one the call finishes on, whatever
        # a promote or a rollback does meanwhile (X-Program-Version names it).
        self.version = version if version is not None else _routed(program, caller, inputs)
        caller.version = self.version.name
        self.shadow_of = shadow_of  # a shadow run: the call whose inputs it runs on, unseen
        self._service = service
        self._ran = False
        self._streams = streams
        self._admission = admission
        self._scope: CallScope | None = None
        # A stream looks its answer up in the response cache before its headers are sent.
        self._looked_up = False
        self._key: str | None = None
        self._hit: CallResult | None = None
        # A trace taken for capture (--capture-trace, #26) but not asked for: published, not returned.
        self._captured_trace: list[dict[str, Any]] | None = None

    async def admit(self) -> dict[str, str]:
        """Admit the call (once); the headers to send. A stream also learns here whether it
        would be refused for capacity, and whether the response cache has its answer (the
        ``X-Cache`` header says which), so its refusals stay plain HTTP statuses."""
        if self._admission is None:
            self._admission = await admit(self._service, self.caller, self.program, self.options)
        if self._streams and not self._looked_up:
            capacity = self._service.capacity
            if capacity is not None:
                capacity.check()
            await self._look_up(self._admission.lm)
        return self._admission.headers

    async def result(self) -> CallResult:
        """Run the call to its end: its result, or its typed error."""
        return await self._run(None)

    async def stream(self, emit: Emit) -> None:
        """Run the call, handing its events to ``emit``; it ends with exactly one Finished or
        Failed (never raises a ServeError; a cancellation passes through)."""
        try:
            result = await self._run(emit)
        except ServeError as error:
            await emit(Failed(error, self.call_id))
            return
        await emit(Finished(result, self.call_id))

    def refuse(self, error: ServeError) -> ServeError:
        """A call that cannot run (a batch item that failed validation): published as failed."""
        self._ran = True
        self._publish(None, error, time.perf_counter(), time.time(), reused=False)
        return error

    @property
    def _trace(self) -> bool:
        """Take the call's trace: asked for, or kept by capture (``capture_trace``)."""
        return self.options.trace or self._service.settings.capture_trace

    # --- the one run loop -----------------------------------------------------------------------
    async def _run(self, emit: Emit | None) -> CallResult:
        if self._ran:
            raise RuntimeError("a Call runs once: ask the service for another")
        self._ran = True
        await self.admit()
        assert self._admission is not None
        lm = self._admission.lm
        if self.shadow_of is None:
            shadow = self.program.rollout.shadow_for(self.call_id, self.version.name)
            if shadow is not None and shadow in self.program.versions:
                self._service.shadows.start(self, self.program.versions[shadow], self._admission)
        started, started_at = time.perf_counter(), time.time()
        result: CallResult | None = None
        error: ServeError | None = None
        reused = False
        try:
            result, reused = await self._answer(lm, emit)
            return result
        except ServeError as exc:
            error = exc
            raise
        except Exception as exc:
            error = from_exception(exc)
            raise error from exc
        except BaseException:  # cancelled: the client left, or the server stops
            error = ClientCancelled("the call was cancelled before it finished")
            raise
        finally:
            self._publish(result, error, started, started_at, reused=reused, model=lm.model)

    async def _answer(self, lm: dspy.BaseLM, emit: Emit | None) -> tuple[CallResult, bool]:
        """The call's answer, and whether it was reused (response cache, identical call in
        flight) instead of run. A stream uses the cache but never joins another call: its
        tokens are its own."""
        reuse = self._service.reuse
        if self.options.own_run or reuse is None or self.shadow_of is not None:
            return await self._execute(lm, emit), False
        if emit is not None or self._streams:
            await self._look_up(lm)
            if self._hit is not None:
                return self._hit, True
            result = await self._execute(lm, emit)
            if self._key is not None:
                await reuse.store(self._key, self.caller, result)
            return result, False
        key = reuse.key(self.program, self.version, self.inputs, lm, self.caller)
        if key is None:
            return await self._execute(lm, emit), False
        if (answer := await reuse.answer(key, self.caller)) is not None:
            return answer, True  # no reservation was taken: a reused answer charges no tokens
        return await reuse.run(key, self.caller, self._execute(lm, None)), False

    async def _look_up(self, lm: dspy.BaseLM) -> None:
        if self._looked_up:
            return
        self._looked_up = True
        reuse = self._service.reuse
        if reuse is None or reuse.cache is None or self.options.own_run:
            return
        self._key = reuse.key(self.program, self.version, self.inputs, lm, self.caller)
        if self._key is not None:
            self._hit = await reuse.cached(self._key, self.caller)
            if self._hit is None:
                self.caller.note_reuse(False)

    async def _execute(self, lm: dspy.BaseLM, emit: Emit | None) -> CallResult:
        """Reserve, then within the deadline and the span, in a capacity slot: run; finish;
        and charge what was spent, whatever the outcome."""
        service, caller, program = self._service, self.caller, self.program
        accounts, capacity, runner = service.accounts, service.capacity, self.version.runner
        if accounts is None or capacity is None or runner is None:
            raise ServiceUnavailable("The service is not ready.", retry_after=1)
        timeout = service.settings.timeout
        scope = self._scope = CallScope.starting_now(timeout, keep_prompts=self.options.prompts)
        reserved = -1  # nothing to settle until a reservation is made
        # A shadow run is counted apart: no caller's tokens, no caller's capacity slot (the
        # shadow runs have a limit of their own, see :mod:`.shadow`).
        shadow = self.shadow_of is not None
        try:
            if not shadow:
                reserved = await accounts.reserve(caller, lm, scope)
            span = tracing.program_span(program.name, lm.model) if service.settings.otel else nullcontext()
            try:
                with anyio.fail_after(timeout), span:
                    async with nullcontext() if shadow else capacity.slot():
                        if emit is None:
                            result = await runner.call(self.inputs, lm=lm, scope=scope, trace=self._trace)
                        else:
                            result = await self._streamed(runner, lm, scope, emit)
            except TimeoutError:
                scope.cancel()
                raise RequestTimeout.after(timeout) from None
            except ServeError:
                raise
            except Exception as exc:
                raise from_exception(exc) from exc
            finished = accounts.finish(program, result)
            if finished.trace is not None and not self.options.trace:
                self._captured_trace = finished.trace
                finished = dataclasses.replace(finished, trace=None)
            return finished
        finally:
            if reserved >= 0:
                await accounts.settle(caller, reserved, scope)

    async def _streamed(
        self, runner: ProgramRunner, lm: dspy.BaseLM, scope: CallScope, emit: Emit
    ) -> CallResult:
        result: CallResult | None = None
        stream = runner.stream(self.inputs, lm=lm, scope=scope, trace=self._trace)
        # Closed before the result is finished: the runner leaves the call's usage on the scope then.
        async with aclosing(stream) as items:
            async for item in items:
                if isinstance(item, StreamResponse):
                    if item.chunk:
                        await emit(
                            Token(item.predict_name, item.signature_field_name, well_formed(item.chunk))
                        )
                elif isinstance(item, StatusMessage):
                    await emit(Status(item.message))
                else:
                    result = item
        if result is None:
            raise ServeError("The program's stream ended without a result.")
        return result

    # --- the one record -------------------------------------------------------------------------
    def _publish(
        self,
        result: CallResult | None,
        error: ServeError | None,
        started: float,
        started_at: float,
        *,
        reused: bool,
        model: str | None = None,
    ) -> None:
        """Publish what the call did, once, to the service's observers and the caller's account."""
        scope = self._scope
        if reused:
            usage: dict[str, dict[str, Any]] = {}
        elif scope is not None:
            usage = scope.usage
        else:
            usage = (error.usage if error is not None else None) or {}
        if result is not None and not reused:
            cost = result.cost or pricing.estimate(usage)
        elif usage:
            cost = pricing.estimate(usage)
        else:
            cost = {"total_usd": 0.0 if reused else None, "by_model": {}}
        key = self.caller.api_key
        finished = FinishedCall(
            call_id=self.call_id,
            program=self.program.name,
            version=self.version.sha256,
            version_name=self.version.name,
            shadow_of=self.shadow_of,
            key_name=key.name if key is not None else None,
            inputs=self.inputs,
            options=self.options.given(),
            outputs=result.outputs if result is not None else None,
            error_code=error.code if error is not None else None,
            model=result.model if result is not None else model,
            usage=flat_usage(usage),
            cost_usd=cost.get("total_usd"),
            latency_s=time.perf_counter() - started,
            started_at=started_at,
            wire=self.wire,
            request_id=self.caller.request_id,
            trace=(result.trace if result is not None else None) or self._captured_trace,
            usage_by_model=usage,
            cost_by_model={model: c.get("usd") for model, c in cost.get("by_model", {}).items()},
            lm_calls=result.lm_calls if result is not None and not reused else {},
            lm_cache_hits=result.cache_hits if result is not None and not reused else {},
            reused=reused,
        )
        # A cancellation is the wire's to report (the client left, or the server stops).
        self.caller.add_call(finished, None if isinstance(error, ClientCancelled) else error)
        self._service.observers.publish(finished)


def _routed(program: Program, caller: Caller, inputs: dict[str, Any]) -> ProgramVersion:
    """The version a caller's call goes to: the stable one, or the candidate for the callers a
    split sends there, sticky by the API key (else the client address), a header or an input."""
    split = program.rollout.split
    if split is None:
        return program.stable
    sticky = split.sticky
    if sticky == "key":
        key = caller.api_key.name if caller.api_key is not None else caller.address
    elif sticky.startswith("header:"):
        key = caller.header(sticky.removeprefix("header:")) or caller.address
    else:
        value = inputs.get(sticky.removeprefix("input:"))
        key = str(value) if value is not None else caller.address
    return program.route(key)
