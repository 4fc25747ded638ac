"""One program call through each front end of a running server (invoke, batch, stream, the
OpenAI-compatible /v1 and MCP), each returning the program's outputs or its problem, so one
test can check that every endpoint serves a program the same way."""

from __future__ import annotations

import asyncio
import json
from typing import Any

import httpx
import httpx2
from mcp import Client
from mcp.client.streamable_http import streamable_http_client
from mcp_types import TextContent

ENDPOINTS = ["invoke", "batch", "stream", "v1", "mcp"]


def invoke(base_url: str, name: str, inputs: dict[str, Any]) -> httpx.Response:
    return httpx.post(f"{base_url}/{name}/invoke", json={"inputs": inputs}, timeout=30)


def batch(base_url: str, name: str, items: list[dict[str, Any]]) -> httpx.Response:
    return httpx.post(f"{base_url}/{name}/batch", json={"items": items}, timeout=30)


def read_events(response: httpx.Response) -> list[tuple[str, Any]]:
    """Every (event, data) of a Server-Sent Events response, data parsed as JSON."""
    events: list[tuple[str, Any]] = []
    event = "message"
    for line in response.iter_lines():
        if line.startswith("event: "):
            event = line.removeprefix("event: ")
        elif line.startswith("data: "):
            events.append((event, json.loads(line.removeprefix("data: "))))
    return events


def stream_events(base_url: str, name: str, inputs: dict[str, Any]) -> list[tuple[str, Any]]:
    """Every (event, data) of /NAME/stream; a stream that does not end within 20 s fails."""
    with httpx.stream("POST", f"{base_url}/{name}/stream", json={"inputs": inputs}, timeout=20) as response:
        assert response.status_code == 200, response.read()
        return read_events(response)


def chat(base_url: str, name: str, text: str) -> httpx.Response:
    body = {"model": name, "messages": [{"role": "user", "content": text}]}
    return httpx.post(f"{base_url}/v1/chat/completions", json=body, timeout=30)


def mcp_call(base_url: str, name: str, arguments: dict[str, Any]) -> tuple[bool, Any]:
    """(is_error, structured outputs or the problem) of one MCP tool call, through the SDK."""

    async def call() -> tuple[bool, Any]:
        http = httpx2.AsyncClient(timeout=30)
        async with Client(streamable_http_client(f"{base_url}/mcp", http_client=http)) as client:
            result = await client.call_tool(name, arguments)
        if result.is_error:
            assert isinstance(result.content[0], TextContent)
            return True, json.loads(result.content[0].text)
        return False, result.structured_content

    return asyncio.run(call())


def outputs_via(endpoint: str, base_url: str, name: str, inputs: dict[str, Any]) -> dict[str, Any]:
    """The program's outputs as ``endpoint`` returns them; fails with the problem otherwise."""
    if endpoint == "invoke":
        response = invoke(base_url, name, inputs)
        assert response.status_code == 200, response.text
        return dict(response.json()["outputs"])
    if endpoint == "batch":
        response = batch(base_url, name, [inputs, inputs])
        assert response.status_code == 200, response.text
        items = response.json()["items"]
        assert [item["error"] for item in items] == [None, None], items
        assert items[0]["outputs"] == items[1]["outputs"]
        return dict(items[0]["outputs"])
    if endpoint == "stream":
        events = stream_events(base_url, name, inputs)
        assert events and events[-1][0] == "prediction", events
        return dict(events[-1][1]["outputs"])
    if endpoint == "v1":
        (text,) = [value for value in inputs.values() if isinstance(value, str)]
        response = chat(base_url, name, text)
        assert response.status_code == 200, response.text
        body = response.json()
        assert body["choices"][0]["message"]["content"]
        return dict(body["dspy_outputs"])
    if endpoint == "mcp":
        is_error, value = mcp_call(base_url, name, inputs)
        assert not is_error, value
        return dict(value)
    raise ValueError(endpoint)
