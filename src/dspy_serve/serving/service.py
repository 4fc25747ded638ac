"""What one server process holds, and the one path every program call takes.

Programs are imported and their interfaces derived when the service is built (so routes and
OpenAPI exist before the first request); LMs, the thread pool and the capacity gate are
created at startup and released at shutdown.

Every front end asks for a :class:`~.call.Call` (:meth:`Service.call`, :meth:`Service.stream`)
or a :class:`~.batch.Batch` (:meth:`Service.batch`): admission, reuse, the deadline, capacity,
the span, the run, the accounts and the one published :class:`~.observers.FinishedCall` all
happen there, the same on every wire. :attr:`Service.observers` is where to hear of every
finished call; the metrics are the first observer.
"""

from __future__ import annotations

import gc
import logging
import os
from collections.abc import Sequence
from enum import StrEnum
from typing import Any

import anyio
import dspy

from dspy_serve.errors import ProgramNotFound, ServeError
from dspy_serve.lm.checks import missing_credentials
from dspy_serve.lm.registry import LanguageModels, adopt_held_lms, allowed_models
from dspy_serve.serving.accounts import CallAccounts
from dspy_serve.serving.batch import Batch
from dspy_serve.serving.call import Call, CallOptions
from dspy_serve.serving.caller import Caller
from dspy_serve.serving.capacity import CapacityGate
from dspy_serve.serving.front_door import FrontDoor
from dspy_serve.serving.keys import admin_ring
from dspy_serve.serving.metrics import Metrics
from dspy_serve.serving.observers import CallObservers
from dspy_serve.serving.programs import Program, ProgramsArg, load_programs
from dspy_serve.serving.ratelimit import RateLimiter
from dspy_serve.serving.reuse import Reuse
from dspy_serve.serving.runner import SERVER_SAFE_DSPY_SETTINGS, ProgramRunner
from dspy_serve.serving.shadow import ShadowRuns
from dspy_serve.serving.version_control import VersionControl
from dspy_serve.serving.versions import ProgramVersion
from dspy_serve.settings import ServeSettings

__all__ = ["CallOptions", "Service", "ServiceState"]

logger = logging.getLogger("dspy_serve")


class ServiceState(StrEnum):
    STARTING = "starting"
    READY = "ready"
    STOPPING = "stopping"
    STOPPED = "stopped"


NO_OPTIONS = CallOptions()


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
        self.accounts: CallAccounts | None = None
        # Every finished call is published here, once (see docs/architecture.md).
        self.observers = CallObservers([self.metrics])
        self._threads: anyio.CapacityLimiter | None = None
        self._adapter: dspy.Adapter | None = None
        # The response cache and coalescing (keyed by each program version's fingerprint).
        self.reuse = Reuse.of(settings, self.metrics)
        self.shadows = ShadowRuns(self, settings.shadow_max_in_flight, self.metrics)
        # Versions and rollouts changed while serving; shared through the store with the admin API on.
        self.versions = VersionControl(self, shared=admin_ring(settings) is not None)

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
        self.accounts = CallAccounts(self.front_door, self.settings.max_tokens_limit)
        self._adapter = _adapter(self.settings, self.lms)
        for program in self.programs.values():
            for version in program.versions.values():
                self.prepare(version)
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
        await self.versions.start()
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
        await self.shadows.aclose()
        await self.versions.stop()
        if self.lms is not None:
            await self.lms.aclose()
        if self.reuse is not None:
            await self.reuse.aclose()
        self.metrics.close()
        self.state = ServiceState.STOPPED

    def prepare(self, version: ProgramVersion) -> None:
        """Make a loaded version ready to run: its held LMs on the service's clients, its runner."""
        assert self.lms is not None and self._threads is not None, "prepared before startup"
        adopt_held_lms(version.loaded.module, self.lms)
        version.runner = ProgramRunner(version.loaded, version.interface, self._threads, self._adapter)

    @property
    def model_names(self) -> list[str]:
        """The models callers may pick, the default first (known before startup builds them)."""
        return allowed_models(self.settings, self._given_lm)

    def model_for(self, options: CallOptions, caller: Caller) -> str | None:
        """The allow-listed model a call runs on (None: the server's default); a key limited to
        some models never runs on another (see :meth:`~.keys.ApiKey.model_for`)."""
        key = caller.api_key
        return options.model if key is None else key.model_for(options.model, self.model_names)

    @property
    def ready(self) -> bool:
        return self.state is ServiceState.READY

    async def limits_storage_healthy(self) -> bool:
        """Whether the rate-limit storage answers: without it every call would be refused."""
        return self.front_door is None or await self.front_door.healthy()

    # --- calls ----------------------------------------------------------------------------------
    def find(self, caller: Caller, name: str) -> Program:
        """The program ``name`` as ``caller`` may see it: a program outside the caller's key is
        the same 404 as one that does not exist, naming only what the key may call."""
        program = self.programs.get(name)
        if program is None or not caller.may_call(name):
            raise ProgramNotFound.named(name, [n for n in self.programs if caller.may_call(n)])
        return program

    def call(
        self,
        caller: Caller,
        program: Program,
        inputs: dict[str, Any],
        options: CallOptions = NO_OPTIONS,
        *,
        wire: str = "invoke",
    ) -> Call:
        """One call of ``program``: await ``admit()`` for the headers, then ``result()``. A
        deterministic call may be answered by the response cache or by an identical call in
        flight (:mod:`.reuse`), unless it asks for its trace or prompts (its own run's)."""
        return Call(self, caller, program, inputs, options, wire=wire)

    def stream(
        self,
        caller: Caller,
        program: Program,
        inputs: dict[str, Any],
        options: CallOptions = NO_OPTIONS,
        *,
        wire: str = "stream",
    ) -> Call:
        """One call as events: await ``admit()`` before the first byte (a full capacity gate
        and a cache hit are known by then), then ``stream(emit)``."""
        return Call(self, caller, program, inputs, options, wire=wire, streams=True)

    def batch(
        self,
        caller: Caller,
        program: Program,
        items: Sequence[dict[str, Any] | ServeError],
        options: CallOptions = NO_OPTIONS,
        *,
        wire: str = "batch",
    ) -> Batch:
        """Many calls of ``program``, admitted together: await ``admit()``, then ``run()``. An
        item that is a ServeError (it failed validation) is a failed call of its own."""
        return Batch(self, caller, program, items, options, wire=wire)


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
