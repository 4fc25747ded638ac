"""A Python client whose programs are DSPy modules.

``Client(url).program("qa")`` returns a :class:`RemoteProgram`, a ``dspy.Module``: calling it
returns a ``dspy.Prediction``, so a served program composes inside a local DSPy program like
any other step. Errors come back as the server's own typed hierarchy (``dspy_serve.errors``);
429, 502 and 503 are retried with backoff, honouring ``Retry-After`` (clamped), never past the
client's ``timeout``, and so is a 5xx that is not dspy-serve's own problem+json
(:class:`~dspy_serve.errors.ProxyError`): it comes from a proxy in front, such as Ray Serve's
when the replica holding the call died.
"""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import AsyncIterator, Callable, Iterator
from dataclasses import dataclass
from typing import Any

import dspy
import httpx

from dspy_serve import errors

__all__ = ["JOB_ENDED", "Client", "RemoteProgram", "StatusEvent", "TokenEvent"]

_RETRYABLE = {429, 502, 503}
JOB_ENDED = ("done", "failed", "cancelled")  # a job's states once it has stopped for good


@dataclass(frozen=True)
class TokenEvent:
    predictor: str
    field: str
    chunk: str


@dataclass(frozen=True)
class StatusEvent:
    message: str


def _error(problem: dict[str, Any], status: int) -> errors.ServeError:
    cls = errors.error_class(str(problem.get("code")))
    if cls is None and problem.get("code") == errors.HTTPProblem.code:
        return errors.HTTPProblem(status, str(problem.get("detail") or f"HTTP {status}"))
    error = (cls or errors.ServeError)(
        str(problem.get("detail") or problem.get("title") or f"HTTP {status}"),
        errors=problem.get("errors"),
        retry_after=problem.get("retry_after"),
    )
    if cls is None:
        error.status, error.code = status, str(problem.get("code") or "http_error")
    return error


def _raise_for(response: httpx.Response) -> None:
    if response.status_code < 400:
        return
    if not response.headers.get("content-type", "").startswith(errors.PROBLEM_CONTENT_TYPE):
        error: errors.ServeError = errors.ProxyError(
            response.status_code, response.text[:200] or f"HTTP {response.status_code}"
        )
    else:
        problem = response.json()
        error = _error(problem if isinstance(problem, dict) else {}, response.status_code)
    retry_after = response.headers.get("retry-after")
    if retry_after and retry_after.isdigit():
        error.retry_after = errors.sane_retry_after(retry_after)
    raise error


def _remaining(deadline: float) -> float:
    return max(deadline - time.monotonic(), 0.001)


def _retryable(error: errors.ServeError) -> bool:
    # A proxy's 5xx means the program never answered (its replica died, say): try again.
    return error.status in _RETRYABLE or (isinstance(error, errors.ProxyError) and error.status >= 500)


def _unsent(exc: Exception) -> bool:
    """Whether a failed request surely had no effect on the server."""
    if isinstance(exc, (httpx.ConnectError, httpx.ConnectTimeout)):
        return True
    return (
        isinstance(exc, errors.ServeError)
        and not isinstance(exc, errors.ProxyError)
        and exc.status in (429, 503)
    )


def _prediction(body: dict[str, Any]) -> dspy.Prediction:
    """Outputs as the Prediction's fields; usage where DSPy keeps it (``get_lm_usage()``),
    cost and model as private attributes, so they never mix with the outputs."""
    prediction = dspy.Prediction(**body["outputs"])
    prediction.set_lm_usage(body.get("usage", {}))
    prediction._serve_cost = body.get("cost")
    prediction._serve_model = body.get("model")
    prediction._serve_call_id = body.get("call_id")  # what feedback names (RemoteProgram.feedback)
    return prediction


class Client:
    """A connection pool to one dspy-serve server (sync and async), with retries."""

    def __init__(
        self,
        base_url: str,
        *,
        api_key: str | None = None,
        timeout: float = 60.0,
        retries: int = 3,
        max_connections: int = 100,
        transport: httpx.BaseTransport | None = None,
        async_transport: httpx.AsyncBaseTransport | None = None,
    ) -> None:
        headers = {"Authorization": f"Bearer {api_key}"} if api_key else {}
        limits = httpx.Limits(max_connections=max_connections, max_keepalive_connections=max_connections)
        common: dict[str, Any] = {
            "base_url": base_url,
            "headers": headers,
            "timeout": timeout,
            "limits": limits,
        }
        self._http = httpx.Client(transport=transport, **common)
        self._ahttp = httpx.AsyncClient(transport=async_transport, **common)
        self.retries = retries
        self.timeout = timeout

    def program(self, name: str) -> RemoteProgram:
        return RemoteProgram(self, name)

    def programs(self) -> list[dict[str, Any]]:
        response = self._http.get("/programs")
        _raise_for(response)
        return list(response.json())

    # --- durable jobs (#28) ---------------------------------------------------------------------
    def job(self, job_id: str) -> dict[str, Any]:
        """A job's state, counts, timestamps, tokens and cost so far (``GET /jobs/ID``)."""
        response = self._http.get(f"/jobs/{job_id}")
        _raise_for(response)
        return dict(response.json())

    def cancel_job(self, job_id: str) -> dict[str, Any]:
        """Cancel a job and its running calls; its state afterwards."""
        response = self._http.delete(f"/jobs/{job_id}")
        _raise_for(response)
        return dict(response.json())

    def follow(self, job_id: str, *, poll: float = 1.0) -> Iterator[dict[str, Any]]:
        """A job's status (as :meth:`job`) every ``poll`` seconds until it has ended (``done``,
        ``failed`` or ``cancelled``): the last one yielded is the final status. A dropped
        connection is tried again (``retries`` times in a row, with backoff), not raised."""
        failures = 0
        while True:
            try:
                status = self.job(job_id)
            except httpx.TransportError:
                failures += 1
                self._back_off(failures)
                continue
            failures = 0
            yield status
            if status.get("state") in JOB_ENDED:
                return
            time.sleep(poll)

    def _back_off(self, failures: int) -> None:
        """After the ``failures``-th dropped connection in a row: wait before trying again, or
        re-raise the connection error being handled once ``retries`` were tried."""
        if failures > self.retries:
            raise  # called from the except block that handles the error: re-raises it
        time.sleep(min(0.25 * 2**failures, 4.0))

    def wait(self, job_id: str, *, poll: float = 1.0, timeout: float | None = None) -> dict[str, Any]:
        """Block until the job has ended; its final status. ``TimeoutError`` after ``timeout``
        seconds (the job keeps running on the server)."""
        deadline = None if timeout is None else time.monotonic() + timeout
        for status in self.follow(job_id, poll=poll):
            if status.get("state") in JOB_ENDED:
                return status
            if deadline is not None and time.monotonic() > deadline:
                raise TimeoutError(f"job {job_id} is still {status.get('state')} after {timeout} s")
        raise AssertionError("unreachable")  # pragma: no cover

    def job_results(
        self, job_id: str, *, offset: int = 0, follow: bool = True, poll: float = 1.0
    ) -> Iterator[dict[str, Any]]:
        """A job's result lines in input order from ``offset`` (``index``, ``call_id``, then
        ``outputs`` or ``error``, ``usage``, ``cost``); with ``follow``, waits for the rest until the
        job has none left to give. Resumable: pass the next index as ``offset``. A connection that
        drops mid-way is opened again from the line after the last one yielded (``retries`` times
        in a row, with backoff), so no line is lost or repeated."""
        failures = 0
        while True:
            try:
                with self._http.stream(
                    "GET", f"/jobs/{job_id}/results", params={"offset": offset}
                ) as response:
                    if response.status_code >= 400:
                        response.read()
                        _raise_for(response)
                    more = response.headers.get("X-More-Results") == "true"
                    for line in response.iter_lines():
                        if line.strip():
                            result = json.loads(line)
                            yield result
                            offset = int(result.get("index", offset)) + 1
                            failures = 0
                    offset = int(response.headers.get("X-Next-Offset", offset))
            except httpx.TransportError:
                failures += 1
                self._back_off(failures)
                continue
            if not (follow and more):
                return
            time.sleep(poll)

    # --- transport with retries -----------------------------------------------------------------
    # A call, its retries and the waits between them all fit in ``timeout``: a Retry-After that
    # would outlive it is raised at once (with its value) instead of slept through.
    def post(self, path: str, body: dict[str, Any], *, repeatable: bool = True) -> dict[str, Any]:
        """POST with retries. A request that must not be done twice (``repeatable=False``:
        submitting a job) is sent again only when it surely did nothing: no connection was
        made, or the server itself refused it (429, 503); a connection lost after sending it,
        or a proxy's error, is raised, since the server may have acted on it."""
        deadline = time.monotonic() + self.timeout
        for attempt in range(self.retries + 1):
            try:
                response = self._http.post(path, json=body, timeout=_remaining(deadline))
                _raise_for(response)
                return dict(response.json())
            except (errors.ServeError, httpx.TransportError) as exc:
                delay = self._delay(exc, attempt, deadline) if repeatable or _unsent(exc) else None
                if delay is None:
                    raise
            time.sleep(delay)
        raise AssertionError("unreachable")  # pragma: no cover

    async def apost(self, path: str, body: dict[str, Any]) -> dict[str, Any]:
        deadline = time.monotonic() + self.timeout
        for attempt in range(self.retries + 1):
            try:
                response = await self._ahttp.post(path, json=body, timeout=_remaining(deadline))
                _raise_for(response)
                return dict(response.json())
            except (errors.ServeError, httpx.TransportError) as exc:
                delay = self._delay(exc, attempt, deadline)
                if delay is None:
                    raise
            await asyncio.sleep(delay)
        raise AssertionError("unreachable")  # pragma: no cover

    def _delay(self, exc: Exception, attempt: int, deadline: float) -> float | None:
        """Seconds to wait before the next attempt, or None to give up now."""
        if attempt >= self.retries:
            return None
        if isinstance(exc, errors.ServeError) and not _retryable(exc):
            return None
        hint = errors.sane_retry_after(getattr(exc, "retry_after", None))
        delay = hint if hint is not None else min(0.25 * 2**attempt, 4.0)
        return delay if delay < deadline - time.monotonic() else None

    def stream_lines(self, path: str, body: dict[str, Any]) -> Iterator[str]:
        with self._http.stream("POST", path, json=body) as response:
            if response.status_code >= 400:
                response.read()
                _raise_for(response)
            yield from response.iter_lines()

    async def astream_lines(self, path: str, body: dict[str, Any]) -> AsyncIterator[str]:
        async with self._ahttp.stream("POST", path, json=body) as response:
            if response.status_code >= 400:
                await response.aread()
                _raise_for(response)
            async for line in response.aiter_lines():
                yield line

    def close(self) -> None:
        self._http.close()

    async def aclose(self) -> None:
        await self._ahttp.aclose()
        self._http.close()

    def __enter__(self) -> Client:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    async def __aenter__(self) -> Client:
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.aclose()


class RemoteProgram(dspy.Module):
    """A served program, callable like the local one: ``remote(question=...)``."""

    def __init__(self, client: Client, name: str, **options: Any) -> None:
        super().__init__()
        self.client = client
        self.name = name
        self.options = options  # model / temperature / max_tokens, sent with every call

    def _body(self, inputs: dict[str, Any]) -> dict[str, Any]:
        return {"inputs": inputs, "options": self.options} if self.options else {"inputs": inputs}

    def forward(self, **inputs: Any) -> dspy.Prediction:
        try:
            return _prediction(self.client.post(f"/{self.name}/invoke", self._body(inputs)))
        except errors.HTTPProblem as exc:
            raise self._not_served(exc, self.client.programs) from None

    async def aforward(self, **inputs: Any) -> dspy.Prediction:
        try:
            return _prediction(await self.client.apost(f"/{self.name}/invoke", self._body(inputs)))
        except errors.HTTPProblem as exc:
            raise self._not_served(exc, self.client.programs) from None

    def feedback(
        self,
        prediction: dspy.Prediction | str,
        *,
        score: bool | float | None = None,
        outputs: dict[str, Any] | None = None,
        comment: str | None = None,
    ) -> dict[str, Any]:
        """Rate or correct an answer (a prediction this program returned, or its call id): sending
        again replaces the earlier feedback. The server must capture this program (``--capture``)."""
        call_id = prediction if isinstance(prediction, str) else getattr(prediction, "_serve_call_id", None)
        if not call_id:
            raise ValueError("this prediction carries no call id: was it returned by this server?")
        body = {"call_id": call_id, "score": score, "outputs": outputs, "comment": comment}
        return self.client.post(f"/{self.name}/feedback", {k: v for k, v in body.items() if v is not None})

    def batch(self, items: list[dict[str, Any]]) -> list[dspy.Prediction | errors.ServeError]:
        """One result per item, in order: its prediction, or its own error (others still run)."""
        body: dict[str, Any] = {"items": items, **({"options": self.options} if self.options else {})}
        try:
            results = self.client.post(f"/{self.name}/batch", body)["items"]
        except errors.HTTPProblem as exc:
            raise self._not_served(exc, self.client.programs) from None
        return [
            _error(item["error"], item["error"]["status"]) if item.get("error") else _prediction(item)
            for item in results
        ]

    def submit(self, items: list[dict[str, Any]], *, webhook: str | None = None) -> str:
        """Submit a durable job of ``items`` (``POST /NAME/jobs``); its id. Follow it with
        ``client.job(id)`` and ``client.job_results(id)``."""
        body: dict[str, Any] = {"items": items, **({"options": self.options} if self.options else {})}
        if webhook is not None:
            body["webhook"] = webhook
        try:
            return str(self.client.post(f"/{self.name}/jobs", body, repeatable=False)["id"])
        except errors.HTTPProblem as exc:
            if exc.status == 404 and self._is_served():  # the program is there, its jobs route is not
                raise errors.HTTPProblem(
                    404, "This server runs no durable jobs: start it with --jobs."
                ) from None
            raise self._not_served(exc, self.client.programs) from None

    def describe(self) -> dict[str, Any]:
        """The program's description (``GET /programs/NAME``): signature, input and output schemas."""
        try:
            response = self.client._http.get(f"/programs/{self.name}")
            _raise_for(response)
        except errors.ServeError as exc:  # a 404 says what is served instead, as a call does
            raise self._not_served(exc, self.client.programs) from None
        return dict(response.json())

    def stream(self, **inputs: Any) -> Iterator[TokenEvent | StatusEvent | dspy.Prediction]:
        """Typed events as they arrive; the last is the Prediction (or the error is raised)."""
        try:
            yield from _events(self.client.stream_lines(f"/{self.name}/stream", self._body(inputs)))
        except errors.HTTPProblem as exc:
            raise self._not_served(exc, self.client.programs) from None

    async def astream(self, **inputs: Any) -> AsyncIterator[TokenEvent | StatusEvent | dspy.Prediction]:
        event: str | None = None
        try:
            async for line in self.client.astream_lines(f"/{self.name}/stream", self._body(inputs)):
                event, item = _parse(line, event)
                if item is not None:
                    yield item
        except errors.HTTPProblem as exc:
            raise self._not_served(exc, self.client.programs) from None

    def _is_served(self) -> bool:
        try:
            return any(p.get("name") == self.name for p in self.client.programs())
        except (errors.ServeError, httpx.HTTPError, AttributeError, TypeError):
            return False

    def _not_served(self, exc: errors.ServeError, programs: Callable[[], list[dict[str, Any]]]) -> Exception:
        """A 404 on a program's own path means no such program: say what is served instead."""
        if exc.status != 404:
            return exc
        try:
            served = ", ".join(str(p["name"]) for p in programs()) or "none"
        except (errors.ServeError, httpx.HTTPError, KeyError, TypeError):
            served = "see GET /programs"
        return errors.ProgramNotFound(f"no program named {self.name!r} on this server; it serves: {served}")

    def __deepcopy__(self, memo: dict[int, Any]) -> RemoteProgram:
        # Optimizers copy modules; the connection pool is shared, never copied.
        return RemoteProgram(self.client, self.name, **self.options)


# --- text values (`dspy-serve call FIELD=VALUE`) read by a program's input schema ------------------


def _json_types(schema: dict[str, Any], defs: dict[str, Any], depth: int = 0) -> set[str]:
    """The JSON types a field's schema accepts; empty when it says nothing (anything goes)."""
    if depth > 8:
        return set()
    if "$ref" in schema:
        return _json_types(defs.get(str(schema["$ref"]).rsplit("/", 1)[-1], {}), defs, depth + 1)
    if "anyOf" in schema or "oneOf" in schema:
        found: set[str] = set()
        for option in schema.get("anyOf", schema.get("oneOf", [])):
            accepts = _json_types(option, defs, depth + 1)
            if not accepts:
                return set()
            found |= accepts
        return found
    if "enum" in schema or "const" in schema:
        values = schema.get("enum", [schema.get("const")])
        return {"string" if isinstance(v, str) else "null" if v is None else "other" for v in values}
    kind = schema.get("type")
    return set(kind) if isinstance(kind, list) else {str(kind)} if kind else set()


def field_value(raw: str, field: str, schema: dict[str, Any]) -> Any:
    """A FIELD=VALUE value as the program's input schema wants it: a text field takes the text as
    written (``ticket=12345`` is the string "12345"), other types are read as JSON. A value that is
    not valid JSON where JSON is wanted is sent as text, for the server to name the field."""
    accepts = _json_types(schema.get("properties", {}).get(field, {}), schema.get("$defs", {}))
    try:
        parsed = json.loads(raw)
    except ValueError:
        return raw
    if not accepts or "string" not in accepts:
        return parsed
    others = accepts - {"string", "null"}
    kind = {bool: "boolean", int: "integer", float: "number", list: "array", dict: "object"}.get(type(parsed))
    if kind is not None and (kind in others or (kind == "integer" and "number" in others)):
        return parsed
    return raw


def _events(lines: Iterator[str]) -> Iterator[TokenEvent | StatusEvent | dspy.Prediction]:
    event: str | None = None
    for line in lines:
        event, item = _parse(line, event)
        if item is not None:
            yield item


def _parse(
    line: str, event: str | None
) -> tuple[str | None, TokenEvent | StatusEvent | dspy.Prediction | None]:
    if line.startswith("event: "):
        return line.removeprefix("event: "), None
    if not line.startswith("data: "):
        return event, None
    data = json.loads(line.removeprefix("data: "))
    if event == "token":
        return event, TokenEvent(data["predictor"], data["field"], data["chunk"])
    if event == "status":
        return event, StatusEvent(data["message"])
    if event == "prediction":
        return event, _prediction(data)
    if event == "error":
        raise _error(data, int(data.get("status", 500)))
    return event, None
