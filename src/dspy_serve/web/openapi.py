"""Touches to the generated OpenAPI document that FastAPI cannot express by itself."""

from __future__ import annotations

from typing import Any

from fastapi import FastAPI

__all__ = ["document_event_streams"]


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
