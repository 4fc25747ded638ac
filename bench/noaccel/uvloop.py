"""Hidden by bench.http_ab: uvicorn then falls back to asyncio."""

raise ImportError("uvloop is hidden for the A/B")
