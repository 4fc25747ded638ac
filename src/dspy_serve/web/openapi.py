"""Touches to the generated OpenAPI document that FastAPI cannot express by itself, and the
documentation routes, which serve each caller the part of the document its key may call."""

from __future__ import annotations

from collections.abc import Collection, Iterator
from typing import Any

from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse

from dspy_serve.serving.caller import Caller
from dspy_serve.web.auth import DOCS_PATHS, OPEN_PATHS
from dspy_serve.web.request_state import caller_of

__all__ = ["add_openapi_route", "document_event_streams", "document_security", "visible_to"]

# Both ways a key may travel (see web/auth.py); either one satisfies an operation.
SECURITY_SCHEMES = {
    "bearer": {"type": "http", "scheme": "bearer", "description": "Authorization: Bearer KEY"},
    "apiKey": {"type": "apiKey", "in": "header", "name": "X-API-Key"},
}
_UNAUTHORIZED = {
    "description": "Missing or invalid API key",
    "content": {"application/problem+json": {"schema": {"$ref": "#/components/schemas/Problem"}}},
}


def document_security(app: FastAPI, *, protect_docs: bool) -> None:
    """Declare the API-key schemes, and on every operation that needs a key, that it does (so
    clients, and schemathesis' ``ignored_auth`` check, can see the auth). Only with keys on."""
    generate = app.openapi
    open_paths = OPEN_PATHS if protect_docs else OPEN_PATHS | DOCS_PATHS

    def openapi() -> dict[str, Any]:
        spec = generate()
        components = spec.setdefault("components", {})
        if "securitySchemes" in components:  # the document is built once, then cached
            return spec
        components["securitySchemes"] = SECURITY_SCHEMES
        components.setdefault("schemas", {}).setdefault("Problem", {"type": "object"})
        for path, item in spec.get("paths", {}).items():
            if path in open_paths:
                continue
            for operation in item.values():
                operation["security"] = [{name: []} for name in SECURITY_SCHEMES]
                operation.setdefault("responses", {}).setdefault("401", _UNAUTHORIZED)
        return spec

    app.openapi = openapi  # type: ignore[method-assign]


def visible_to(spec: dict[str, Any], caller: Caller, programs: Collection[str]) -> dict[str, Any]:
    """The document as ``caller`` may see it: without the programs its key may not call, nor
    the schemas only they use (their names and fields are theirs)."""
    hidden = {name for name in programs if not caller.may_call(name)}
    if not hidden:
        return spec
    paths = {path: item for path, item in spec.get("paths", {}).items() if path.split("/")[1] not in hidden}
    schemas = spec.get("components", {}).get("schemas", {})
    kept: set[str] = set()
    pending = list(_refs(paths))
    while pending:
        name = pending.pop()
        if name not in kept and name in schemas:
            kept.add(name)
            pending.extend(_refs(schemas[name]))
    components = {**spec.get("components", {}), "schemas": {k: v for k, v in schemas.items() if k in kept}}
    return {**spec, "paths": paths, "components": components}


def _refs(node: Any) -> Iterator[str]:
    if isinstance(node, dict):
        for key, value in node.items():
            if key == "$ref" and isinstance(value, str):
                yield value.rsplit("/", 1)[-1]
            else:
                yield from _refs(value)
    elif isinstance(node, list):
        for value in node:
            yield from _refs(value)


def add_openapi_route(app: FastAPI, programs: Collection[str]) -> None:
    """``/openapi.json``, filtered by the caller's key: a key sees only the programs it may call.
    (``/docs`` and ``/redoc`` render it: :mod:`dspy_serve.web.pages`.)"""

    async def openapi(request: Request) -> JSONResponse:
        return JSONResponse(visible_to(app.openapi(), caller_of(request), programs))

    app.add_route("/openapi.json", openapi, include_in_schema=False)


def document_event_streams(app: FastAPI) -> None:
    """Describe each SSE operation the OpenAPI 3.2 way: ``itemSchema`` is one event, whose
    ``data`` is a JSON string whose ``contentSchema`` depends on the event name."""
    generate = app.openapi

    def openapi() -> dict[str, Any]:
        if app.openapi_schema is not None:
            return app.openapi_schema
        spec = generate()
        for path, item in spec.get("paths", {}).items():
            if not path.endswith("/stream"):
                continue
            response = item["post"]["responses"]["200"]
            event_model = response["content"]["text/event-stream"]["schema"]["$ref"].rsplit("/", 1)[1]
            invoke_response = event_model.removesuffix("StreamEvent") + "InvokeResponse"
            payloads = {
                "token": "TokenEvent",
                "status": "StatusEvent",
                "prediction": invoke_response,
                "error": "Problem",
            }
            response["content"]["text/event-stream"] = {
                "itemSchema": {
                    "oneOf": [
                        {
                            "type": "object",
                            "required": ["event", "data"],
                            "properties": {
                                "event": {"const": event},
                                "data": {
                                    "type": "string",
                                    "contentMediaType": "application/json",
                                    "contentSchema": {"$ref": f"#/components/schemas/{payload}"},
                                },
                            },
                        }
                        for event, payload in payloads.items()
                    ]
                }
            }
            spec["components"]["schemas"].pop(event_model, None)
        app.openapi_schema = spec
        return spec

    app.openapi = openapi  # type: ignore[method-assign]
