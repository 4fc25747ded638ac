"""The LMs a server may use, created once at startup and closed at shutdown.

Callers never name a provider model directly: a per-request ``model`` must be on the
operator's allow-list, and only the instances built here are ever used.
"""

from __future__ import annotations

import asyncio
import functools
import inspect
import logging
import re
import time
from contextlib import AbstractContextManager
from typing import Any
from urllib.parse import urlsplit

import dspy
from dspy.utils.callback import with_callbacks

from dspy_serve.call_scope import current_scope
from dspy_serve.errors import BadOverride, ModelNotAllowed, UpstreamRateLimited, sane_retry_after
from dspy_serve.lm.budget import spending
from dspy_serve.lm.held import held_lms
from dspy_serve.lm.inline import acall_inline
from dspy_serve.lm.pool import pooled_engines, refused_before_sending
from dspy_serve.lm.prompts import lm_exchange
from dspy_serve.lm.response_tags import one_response
from dspy_serve.settings import ServeSettings

__all__ = ["LanguageModels", "ServingLM", "adopt_held_lms", "is_local_model", "own_lm_problems"]

logger = logging.getLogger("dspy_serve.lm.registry")

# Errors a provider reports before any output streams: safe to retry even when streaming.
_RETRYABLE_WHILE_STREAMING = (dspy.LMRateLimitError, dspy.LMServerError)


class ServingLM(dspy.LM):
    """A ``dspy.LM`` whose retries respect the request: never sleep past its deadline, and no
    new attempt once the client has gone.

    DSPy's own retry loop sleeps whatever the provider asks (a 429 with retry-after 7 s
    surfaces after 21 s), so it is switched off (``num_retries=0``) and done here instead.

    A sync call made in a thread working for a request (a sync-only program, a tool, a
    ``dspy.Parallel`` branch) runs on the request's event loop through the async client: the
    thread waits, and cancelling the request closes the connection instead of letting the
    provider finish (and bill) an answer nobody reads.

    Each call through the async client (all of a request's calls but a sync one made on the
    event loop itself, which the request's final charge covers) reserves its estimate of the
    caller's token budget before it is sent, and settles what it spent (:mod:`.budget`).
    """

    def __init__(self, model: str, *, retries: int = 3, endpoint: str | None = None, **kwargs: Any) -> None:
        super().__init__(model, num_retries=0, **kwargs)
        self.serve_retries = retries
        self.endpoint = endpoint or "the provider's default URL"  # for logs: no path, no credentials

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        scope = current_scope()
        if scope is not None and scope.off_loop():
            return scope.run_on_loop(functools.partial(self.acall, *args, **kwargs))
        with one_response():
            return self._call(*args, **kwargs)

    def _call(self, *args: Any, **kwargs: Any) -> Any:
        for attempt in range(self.serve_retries + 1):
            _check_scope()
            try:
                try:
                    outputs = super().__call__(*args, **kwargs)
                except Exception as exc:
                    if (compatible := self._compatible(exc, args, kwargs)) is None:
                        raise
                    with _as_adapter_call(compatible, kwargs):
                        outputs = dspy.LM.__call__(compatible, *args, **kwargs)
            except Exception as exc:
                delay = self._retry_delay(exc, attempt)
                self._log_failure(exc, attempt, delay)
                if delay is None:
                    raise
            else:
                _count_call(self.model, args, kwargs, outputs)
                return outputs
            time.sleep(delay)
        raise AssertionError("unreachable")  # pragma: no cover

    async def acall(self, *args: Any, **kwargs: Any) -> Any:
        scope = current_scope()
        with one_response():
            if scope is None or scope.budget is None:
                return await self._acall(*args, **kwargs)
            # Each LM call holds its estimate of the caller's token budget until it has spent.
            scope.check()
            async with spending(scope.budget, self, args, kwargs, remaining=scope.remaining):
                return await self._acall(*args, **kwargs)

    async def _acall(self, *args: Any, **kwargs: Any) -> Any:
        for attempt in range(self.serve_retries + 1):
            _check_scope()
            try:
                try:
                    outputs = await self._acall_once(*args, **kwargs)
                except Exception as exc:
                    if (compatible := self._compatible(exc, args, kwargs)) is None:
                        raise
                    await asyncio.to_thread(_import_litellm)  # seconds, the first time: not on the loop
                    with _as_adapter_call(compatible, kwargs):
                        outputs = await dspy.LM.acall(compatible, *args, **kwargs)
            except Exception as exc:
                delay = self._retry_delay(exc, attempt)
                self._log_failure(exc, attempt, delay)
                if delay is None:
                    raise
            else:
                _count_call(self.model, args, kwargs, outputs)
                return outputs
            await asyncio.sleep(delay)
        raise AssertionError("unreachable")  # pragma: no cover

    @with_callbacks  # type: ignore[untyped-decorator]  # DSPy's, untyped
    async def _acall_once(self, prompt: Any = None, *, messages: Any = None, **kwargs: Any) -> Any:
        """``dspy.LM.acall`` (same callbacks), without its worker-thread hops where they cost
        more than the work they move (see :mod:`dspy_serve.lm.inline`)."""
        return await acall_inline(self, prompt, messages, kwargs)

    def _compatible(
        self, exc: BaseException, args: tuple[Any, ...], kwargs: dict[str, Any]
    ) -> dspy.LM | None:
        """This LM on DSPy's LiteLLM engine, when the pooled native engine refused the request
        before sending it (content its route cannot carry), as DSPy's ``engine="auto"`` does."""
        rest = dict(kwargs)
        prompt = args[0] if args else rest.pop("prompt", None)
        messages = rest.pop("messages", None)
        clients = refused_before_sending(exc, self, (prompt, messages, rest))
        return None if clients is None else self.copy(engine="litellm", **clients)

    def _log_failure(self, exc: Exception, attempt: int, delay: float | None) -> None:
        """What the operator needs when the LM fails (callers only get a typed status): where the
        calls went and what the client said. Never the prompt, and never a credential."""
        then = f"retrying in {delay:.2g} s" if delay is not None else "giving up"
        logger.warning(
            "LM call failed: %s at %s: %s: %s (attempt %d of %d, %s)",
            self.model,
            self.endpoint,
            type(exc).__name__,
            _redacted(str(exc)),
            attempt + 1,
            self.serve_retries + 1,
            then,
        )

    def _retry_delay(self, exc: Exception, attempt: int) -> float | None:
        """Seconds to wait before the next attempt, or None to give up now."""
        if attempt >= self.serve_retries or not dspy.is_retryable_lm_error(exc):
            return None
        if dspy.settings.send_stream is not None and not isinstance(exc, _RETRYABLE_WHILE_STREAMING):
            return None  # output may already have reached the client
        hint = sane_retry_after(getattr(exc, "retry_after", None))
        delay = hint if hint is not None else min(0.5 * 2**attempt, 8.0)
        scope = current_scope()
        if scope is not None and delay >= scope.remaining():
            if isinstance(exc, dspy.LMRateLimitError):
                # Waiting would outlive the request: tell the caller when to come back instead.
                raise UpstreamRateLimited(
                    "The LM provider is rate limiting requests; retry later.", retry_after=delay
                ) from exc
            return None
        return delay


def _import_litellm() -> None:
    from dspy.clients._litellm import get_litellm

    get_litellm(feature="dspy.LM")


def _as_adapter_call(lm: dspy.LM, kwargs: dict[str, Any]) -> AbstractContextManager[None]:
    """The adapter's own messages, handed on to the LiteLLM twin: still DSPy's call, not a
    user's deprecated ``messages=`` call (DSPy warns only about those)."""
    from dspy.clients._deprecation import adapter_message_call

    return adapter_message_call(lm, kwargs.get("messages"))  # type: ignore[no-any-return]


_USERINFO = re.compile(r"[^\s/@]+@(?=[^\s/@]+)")


def _redacted(message: str) -> str:
    """An LM client's message, made fit for a log: its first line, without ``user:password@`` in
    a URL, bounded (a provider's error body could echo anything)."""
    first_line = message.strip().splitlines()[0] if message.strip() else ""
    return _USERINFO.sub("", first_line)[:300]


def endpoint_of(api_base: str | None) -> str | None:
    """``scheme://host:port`` of an API base, for logs: the path and user info can hold secrets."""
    if not api_base:
        return None
    parts = urlsplit(api_base)
    host = parts.hostname or ""
    return f"{parts.scheme}://{host}{f':{parts.port}' if parts.port else ''}" if host else None


def _count_call(model: str, args: tuple[Any, ...], kwargs: dict[str, Any], outputs: Any) -> None:
    scope = current_scope()
    if scope is not None:
        scope.lm_calls[model] += 1
        if scope.prompts is not None:  # the caller asked for its prompts (None: nothing kept)
            scope.prompts.append(lm_exchange(model, args, kwargs, outputs))


def _check_scope() -> None:
    scope = current_scope()
    if scope is not None:
        scope.check()


def is_local_model(model: str | None) -> bool:
    return model is None or model == "local" or model.startswith("local/") or model.endswith(".gguf")


# Where a predictor's own LM sends its calls, and with which key: the service's, not the program's.
_ENDPOINT_KWARGS = frozenset({"api_base", "base_url", "api_key", "model_list"})


def allowed_models(settings: ServeSettings, default: dspy.BaseLM | None = None) -> list[str]:
    """The models this service may call: the default one, then the allow-list."""
    default_name = default.model if default is not None else settings.model or "local"
    return list(dict.fromkeys([default_name, *settings.allow_models]))


def _same_model(allowed: str, model: str) -> bool:
    return allowed == model or (is_local_model(allowed) and is_local_model(model))


def own_lm_problems(module: dspy.Module, allowed: list[str]) -> list[str]:
    """LMs the program holds itself (a predictor's own, set by the program or saved in its
    artifact; an attribute it calls directly; a module-level LM its code names) whose model is
    outside the allow-list: DSPy would call them directly, past the service's rules."""
    return [
        f"{held.where} has its own LM {held.lm.model!r}"
        for held in held_lms(module)
        if not any(_same_model(a, held.lm.model) for a in allowed)
    ]


def adopt_held_lms(module: dspy.Module, lms: LanguageModels) -> None:
    """Put the service's client in place of every LM the program holds (see :meth:`LanguageModels.adopt`);
    an LM held in two places stays one object."""
    adopted: dict[int, dspy.BaseLM] = {}
    for held in held_lms(module):
        if id(held.lm) not in adopted:
            adopted[id(held.lm)] = lms.adopt(held.lm)
        held.replace(adopted[id(held.lm)])


class LanguageModels:
    """The default LM and the allow-listed alternatives, one instance each."""

    def __init__(self, settings: ServeSettings, default: dspy.BaseLM | None = None) -> None:
        self._settings = settings
        names = allowed_models(settings, default)
        self.default_name = names[0]
        self._lms: dict[str, dspy.BaseLM] = {}
        if default is not None:
            self._lms[self.default_name] = default  # the caller's own instance, used as given
        for name in names:
            if name not in self._lms:
                self._lms[name] = self._build(name)

    def adopt(self, own: dspy.BaseLM) -> dspy.BaseLM:
        """Serve a predictor's own LM with this registry's instance of the same model, so its
        calls get the pool, the deadline-bound retries and the metrics; its request parameters
        (temperature, max_tokens, ...) are kept. The model was checked against the allow-list
        when the programs loaded."""
        name = next(key for key in self._lms if _same_model(key, own.model))
        kwargs = {k: v for k, v in own.kwargs.items() if k not in _ENDPOINT_KWARGS}
        return self._lms[name].copy(**kwargs)

    def model_of(self, name: str | None) -> str:
        """The provider model string behind an allow-list name ("local" -> "local/SmolLM2-...")."""
        lm = self._lms.get(name or self.default_name)
        return str(lm.model) if lm is not None else str(name)

    @property
    def names(self) -> list[str]:
        return list(self._lms)

    @property
    def uses_local_model(self) -> bool:
        return any(is_local_model(name) for name in self._lms)

    @property
    def local_runtime(self) -> dict[str, Any] | None:
        """Which runtime runs the embedded model (name, package, version), if one is served."""
        for lm in self._lms.values():
            engine = getattr(lm, "engine", None)
            describe = getattr(engine, "describe_runtime", None)
            if callable(describe):
                return dict(describe())
        return None

    def select(
        self, model: str | None = None, *, temperature: float | None = None, max_tokens: int | None = None
    ) -> dspy.BaseLM:
        """The LM for one request; options only ever choose among the instances built at startup."""
        if model is not None and model not in self._lms:
            raise ModelNotAllowed(
                f"model {model!r} is not allowed here; allowed: {', '.join(sorted(self._lms))}"
            )
        lm = self._lms[model or self.default_name]
        if max_tokens is not None and max_tokens > self._settings.max_tokens_limit:
            raise BadOverride(f"max_tokens may be at most {self._settings.max_tokens_limit}")
        changes = {
            k: v for k, v in (("temperature", temperature), ("max_tokens", max_tokens)) if v is not None
        }
        # A shallow copy: it shares the connection pools, only the request parameters differ.
        return lm.copy(**changes) if changes else lm

    def _build(self, name: str) -> dspy.BaseLM:
        settings = self._settings
        common: dict[str, Any] = {"cache": settings.cache}
        if settings.temperature is not None:
            common["temperature"] = settings.temperature
        if is_local_model(name):
            from dspy_serve.lm.local import local_engines

            # In-process: no provider to retry against, but the cancellation checks still apply.
            model, engine, async_engine = local_engines(
                None if name == "local" else name,
                max_tokens=settings.max_tokens or 256,
                runtime=settings.local_runtime,
            )
            return ServingLM(
                model, retries=0, engine=engine, async_engine=async_engine, endpoint="this process", **common
            )
        if settings.max_tokens is not None:
            common["max_tokens"] = settings.max_tokens
        engines = pooled_engines(
            name,
            max_connections=settings.connection_pool_size,
            api_base=settings.api_base,
            timeout=settings.timeout,
        )
        if engines is not None:
            pooled, async_pooled = engines
            return ServingLM(
                name,
                retries=settings.lm_retries,
                engine=pooled,
                async_engine=async_pooled,
                endpoint=endpoint_of(settings.api_base),
                **common,
            )
        logger.info("%s is not routed natively by DSPy; its connection pool keeps DSPy's default size", name)
        if settings.api_base is not None:
            common["api_base"] = settings.api_base
        return ServingLM(
            name,
            retries=settings.lm_retries,
            timeout=settings.timeout,
            endpoint=endpoint_of(settings.api_base),
            **common,
        )

    async def aclose(self) -> None:
        for lm in self._lms.values():
            # A custom engine is borrowed by its LM: the owner (this registry) closes it.
            engines = [getattr(lm, "engine", None), getattr(lm, "_async_engine_spec", None)]
            closers = [
                getattr(e, "aclose", None) or getattr(e, "close", None)
                for e in engines
                if not isinstance(e, str)
            ]
            closers.append(getattr(lm, "aclose", None))
            try:
                for closer in closers:
                    if closer is not None:
                        result = closer()
                        if inspect.isawaitable(result):
                            await result
            except Exception:  # a failed close must not hide the others
                logger.warning("closing LM %s failed", lm.model, exc_info=True)
        self._lms.clear()
