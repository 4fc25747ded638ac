"""The playground: ``/`` lists the programs, ``/playground/NAME`` tries one in a browser.

The pages are static files shipped in the package (``web/static/playground``): no program text
is ever templated into HTML. Their script fetches ``/programs`` and builds the page with DOM
text nodes, and calls the API like any other client, with the key the person typed (kept in the
tab's ``sessionStorage``), so auth, limits and accounting apply to it as to anyone. The files
hold no data, so they are open even when API keys are on (a browser cannot send a key for a
page it is only opening).
"""

from __future__ import annotations

import importlib.resources
from pathlib import Path

from fastapi import FastAPI
from fastapi.responses import FileResponse, RedirectResponse
from fastapi.staticfiles import StaticFiles

from dspy_serve.web.auth import PAGES_PREFIX

__all__ = ["PAGE_HEADERS", "STATIC_DIR", "add_playground"]

STATIC_DIR = Path(str(importlib.resources.files("dspy_serve.web").joinpath("static", "playground")))

# Defence in depth on top of text-only rendering: nothing but this server's own scripts may run,
# and the page talks to nothing but this server (it works offline, by design).
PAGE_HEADERS = {
    "Content-Security-Policy": (
        "default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self' data: blob:; "
        "connect-src 'self'; object-src 'none'; base-uri 'none'; frame-ancestors 'none'"
    ),
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
    "Cache-Control": "no-cache",  # revalidated (ETag): a new release's page is seen at once
}


def add_playground(app: FastAPI) -> None:
    """``/``, ``/playground/NAME`` and their assets under ``/playground/assets``."""
    app.mount(PAGES_PREFIX + "assets", StaticFiles(directory=STATIC_DIR), name="playground-assets")

    @app.get("/", include_in_schema=False)
    async def landing() -> FileResponse:
        return FileResponse(STATIC_DIR / "index.html", headers=PAGE_HEADERS)

    @app.get(PAGES_PREFIX.rstrip("/"), include_in_schema=False)
    async def playground_root() -> RedirectResponse:
        return RedirectResponse("../", status_code=307)

    @app.get(PAGES_PREFIX + "{name}", include_in_schema=False)
    async def playground(name: str) -> FileResponse:
        # Any name gets the page: which programs exist (for this key) is the API's to say.
        return FileResponse(STATIC_DIR / "program.html", headers=PAGE_HEADERS)
