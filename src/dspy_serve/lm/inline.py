"""An LM call on the event loop, without DSPy's two worker-thread hops.

DSPy 3.4's ``BaseLM.acall`` prepares every call in a worker thread (``asyncio.to_thread(prepare,
...)``: preparing may read a local media file) and ``aexecute`` prices every completed call in
another (``asyncio.to_thread(_price_result, ...)``: an uncatalogued model name walks DSPy's
whole catalogue). On a server doing hundreds of calls a second the hops cost more than the
work they move: a ``ThreadPoolExecutor.submit``, a thread wake-up and a ``call_soon_threadsafe``
each, ~0.1 ms of CPU apiece, where preparing a text-only call and pricing a model whose rates
are known take microseconds.

So, where both are cheap (text messages; a custom engine, such as the server's pooled ones,
which DSPy does not price; one uncached candidate: the common call of a served program), the
same DSPy steps run inline, in DSPy's own order and with its own functions; every other call
takes DSPy's path unchanged. The outputs are DSPy's own: ``tests/lm/test_inline.py`` checks them
byte-for-byte against stock ``dspy.LM`` on the same answers.
"""

from __future__ import annotations

import asyncio
from contextlib import nullcontext
from typing import Any

from dspy.clients import execution
from dspy.clients._deprecation import warn_legacy_lm, warn_openai_messages
from dspy.clients.errors import error_boundary

__all__ = ["acall_inline"]

# DSPy's own steps this module calls; DSPy is pinned below 3.5, and should a release rename one,
# every call simply takes DSPy's path (slower, never different).
_DSPY_STEPS = (
    "_engine",
    "_Attempt",
    "_aattempt",
    "_price_result",
    "_hint_responses_api",
    "_account_failed_call",
)
_INLINE = all(hasattr(execution, step) for step in _DSPY_STEPS)


def _text_only(prompt: Any, messages: Any) -> bool:
    """True when preparing the call cannot touch a file: plain strings, nothing else."""
    if messages is None:
        return isinstance(prompt, str)
    return prompt is None and all(
        isinstance(message, dict) and isinstance(message.get("content"), str) for message in messages
    )


async def acall_inline(lm: Any, prompt: Any, messages: Any, kwargs: dict[str, Any]) -> Any:
    """``BaseLM.acall``'s body, with the preparation inline when it cannot do I/O."""
    if _text_only(prompt, messages):
        call = execution.prepare(lm, prompt, messages, kwargs, asynchronous=True)
    else:
        call = await asyncio.to_thread(execution.prepare, lm, prompt, messages, kwargs, asynchronous=True)
    if not call.managed:
        warn_legacy_lm()
    warn_openai_messages(lm, messages)
    return execution.finalize(lm, call, await _aexecute(lm, call))


async def _aexecute(lm: Any, call: Any) -> Any:
    """``execution.aexecute`` for one uncached candidate without DSPy's retries (``ServingLM``
    retries itself), with the pricing inline when the engine is a custom one: DSPy then prices
    nothing ("custom engine has no pricing provider") and answers at once. Every other call
    takes DSPy's own path."""
    if not _INLINE or call.cache or call.n != 1 or (call.managed and lm.num_retries):
        return await execution.aexecute(lm, call)
    backend, request, provider = execution._engine(lm, call, True)
    results: list[Any] = []
    state = execution._Attempt()
    try:
        boundary = (
            error_boundary(lm.model, provider=provider, unexpected=True) if call.managed else nullcontext()
        )
        with boundary:
            await execution._aattempt(lm, call, backend, request, provider, state, results)
        if request is not None:
            if provider is None:
                execution._price_result(lm, state.result, state.response, provider, request)
            else:  # a catalogue lookup, possibly a walk of it: off the loop, as DSPy does
                await asyncio.to_thread(
                    execution._price_result, lm, state.result, state.response, provider, request
                )
        return results[0]
    except BaseException as exc:
        execution._hint_responses_api(lm, exc)
        execution._account_failed_call(lm, results, exc)
        raise
