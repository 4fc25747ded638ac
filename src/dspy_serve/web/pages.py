"""The pages a person opens in a browser: ``/`` (what is served here), ``/docs`` and ``/redoc``.

FastAPI's own docs pages load Swagger UI and ReDoc from a CDN, so offline (an air-gapped
network, a laptop on a train) they are blank. Here the assets come from the installed
``fastapi-offline`` package, served under ``/docs/assets``.
"""

from __future__ import annotations

import html
import importlib.resources

from fastapi import FastAPI, Request
from fastapi.openapi.docs import get_redoc_html, get_swagger_ui_html, get_swagger_ui_oauth2_redirect_html
from fastapi.responses import HTMLResponse
from fastapi.staticfiles import StaticFiles

from dspy_serve.serving.service import Service
from dspy_serve.web.request_state import caller_of

__all__ = ["ASSETS_PATH", "add_pages"]

ASSETS_PATH = "/docs/assets"


def add_pages(app: FastAPI, service: Service) -> None:
    """``/``, ``/docs`` (Swagger UI) and ``/redoc``, with every asset served from this process."""
    assets = importlib.resources.files("fastapi_offline").joinpath("static")
    app.mount(ASSETS_PATH, StaticFiles(directory=str(assets)), name="docs-assets")
    oauth2_redirect = "/docs/oauth2-redirect"

    @app.get("/docs", include_in_schema=False)
    async def swagger_ui(request: Request) -> HTMLResponse:
        root = request.scope.get("root_path", "")
        return get_swagger_ui_html(
            openapi_url=f"{root}/openapi.json",
            title=f"{app.title} - Swagger UI",
            oauth2_redirect_url=f"{root}{oauth2_redirect}",
            swagger_js_url=f"{root}{ASSETS_PATH}/swagger-ui-bundle.js",
            swagger_css_url=f"{root}{ASSETS_PATH}/swagger-ui.css",
            swagger_favicon_url=f"{root}{ASSETS_PATH}/favicon.png",
        )

    @app.get(oauth2_redirect, include_in_schema=False)
    async def swagger_ui_redirect() -> HTMLResponse:
        return get_swagger_ui_oauth2_redirect_html()

    @app.get("/redoc", include_in_schema=False)
    async def redoc(request: Request) -> HTMLResponse:
        root = request.scope.get("root_path", "")
        return get_redoc_html(
            openapi_url=f"{root}/openapi.json",
            title=f"{app.title} - ReDoc",
            redoc_js_url=f"{root}{ASSETS_PATH}/redoc.standalone.js",
            redoc_favicon_url=f"{root}{ASSETS_PATH}/favicon.png",
            with_google_fonts=False,
        )

    if service.settings.playground:
        return  # "/" is the playground's landing page (web/playground.py)

    @app.get("/", include_in_schema=False)
    async def landing(request: Request) -> HTMLResponse:
        caller = caller_of(request)  # a key sees only the programs it may call, as in /programs
        visible = [name for name in service.programs if caller.may_call(name)]
        return HTMLResponse(landing_page(app.title, service, request.scope.get("root_path", ""), visible))


def landing_page(title: str, service: Service, root: str = "", visible: list[str] | None = None) -> str:
    """A small index: each program with its description and endpoints, and where the docs are.
    Everything from programs (names, docstrings) is escaped: it is the user's text, not markup."""
    rows = []
    for name, program in service.programs.items():
        if visible is not None and name not in visible:
            continue
        description = program.interface.instructions or "(no description)"
        link = html.escape(f"{root}/programs/{name}", quote=True)
        endpoints = " ".join(
            f"<code>POST {html.escape(f'{root}/{name}/{endpoint}')}</code>"
            for endpoint in ("invoke", "stream", "batch")
        )
        rows.append(
            f'<li><a href="{link}"><strong>{html.escape(name)}</strong></a> '
            f"<code>{html.escape(program.interface.signature)}</code>"
            f"<p>{html.escape(description)}</p><p>{endpoints}</p></li>"
        )
    links = " · ".join(
        f'<a href="{html.escape(root + path, quote=True)}">{label}</a>'
        for path, label in (
            ("/docs", "API docs (Swagger UI)"),
            ("/redoc", "ReDoc"),
            ("/openapi.json", "OpenAPI"),
            ("/programs", "programs (JSON)"),
            ("/health/ready", "readiness"),
        )
    )
    return (
        "<!doctype html><html><head><meta charset='utf-8'>"
        f"<title>{html.escape(title)}</title>"
        "<style>body{font-family:system-ui,sans-serif;max-width:50rem;margin:2rem auto;padding:0 1rem}"
        "li{margin-bottom:1rem}p{margin:.3rem 0}</style></head><body>"
        f"<h1>{html.escape(title)}</h1><p>{links}</p>"
        f"<h2>Programs</h2><ul>{''.join(rows)}</ul></body></html>"
    )
