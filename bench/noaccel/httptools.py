"""Hidden by bench.http_ab: uvicorn then falls back to h11."""

raise ImportError("httptools is hidden for the A/B")
