"""The pages a person opens in a browser: ``/`` (what is served here), ``/docs`` and ``/redoc``.

FastAPI's own docs pages load Swagger UI and ReDoc from a CDN, so offline (an air-gapped
network, a laptop on a train) they are blank. Here the assets come from the installed
``fastapi-offline`` package, served under ``/docs/assets``.

The OpenAPI document these pages render holds text from programs and artifacts (docstrings,
field descriptions, an artifact's instructions), rendered as Markdown, which allows HTML. An
artifact's author is less trusted than the operator, and a script in this origin could read the
key the playground keeps, so: ReDoc sanitises that text (its ``untrustedSpec`` option; Swagger UI
always does), and both pages send a Content-Security-Policy that runs no inline script and no
event-handler attribute, and lets no other site frame them. Hence no inline script here: Swagger
UI is started by a script served from this process.
"""

from __future__ import annotations

import base64
import hashlib
import html
import importlib.resources
import re

from fastapi import FastAPI, Request
from fastapi.openapi.docs import get_swagger_ui_oauth2_redirect_html
from fastapi.responses import HTMLResponse, Response
from fastapi.staticfiles import StaticFiles

from dspy_serve.serving.service import Service
from dspy_serve.web.request_state import caller_of

__all__ = ["ASSETS_PATH", "DOCS_PAGE_HEADERS", "add_pages"]

ASSETS_PATH = "/docs/assets"
SWAGGER_INIT = "swagger-init.js"


def _policy(script_src: str = "'self'") -> str:
    # Styles may be inline: both UIs set style attributes, and ReDoc injects <style> elements.
    # ReDoc's search index runs in a worker started from a blob: URL.
    return (
        f"default-src 'self'; script-src {script_src}; worker-src 'self' blob:; "
        "style-src 'self' 'unsafe-inline'; img-src 'self' data:; font-src 'self' data:; "
        "connect-src 'self'; object-src 'none'; base-uri 'none'; form-action 'self'; "
        "frame-ancestors 'none'"
    )


DOCS_PAGE_HEADERS = {
    "Content-Security-Policy": _policy(),
    "X-Content-Type-Options": "nosniff",
    "X-Frame-Options": "DENY",  # frame-ancestors, for browsers that predate it
    "Referrer-Policy": "no-referrer",
}

# Swagger UI's start: its options as FastAPI sets them; the URLs come from the page's element.
_SWAGGER_INIT_JS = """\
const root = document.getElementById("swagger-ui");
window.ui = SwaggerUIBundle({
  url: root.dataset.openapiUrl,
  dom_id: "#swagger-ui",
  layout: "BaseLayout",
  deepLinking: true,
  showExtensions: true,
  showCommonExtensions: true,
  oauth2RedirectUrl: window.location.origin + root.dataset.oauth2RedirectUrl,
  presets: [SwaggerUIBundle.presets.apis, SwaggerUIBundle.SwaggerUIStandalonePreset],
});
"""


def _oauth2_redirect() -> tuple[str, dict[str, str]]:
    """FastAPI's OAuth2 redirect page (its one inline script allowed by hash, nothing else)."""
    page = bytes(get_swagger_ui_oauth2_redirect_html().body).decode()
    scripts = re.findall(r"<script>(.*?)</script>", page, flags=re.DOTALL)
    hashes = " ".join(
        f"'sha256-{base64.b64encode(hashlib.sha256(script.encode()).digest()).decode()}'"
        for script in scripts
    )
    return page, {**DOCS_PAGE_HEADERS, "Content-Security-Policy": _policy(hashes or "'none'")}


def _attr(value: str) -> str:
    return html.escape(value, quote=True)


def swagger_ui_page(title: str, root: str, oauth2_redirect: str) -> str:
    """Swagger UI's page: no inline script, the URLs it needs as data attributes."""
    attr = _attr
    return (
        "<!doctype html><html><head><meta charset='utf-8'>"
        "<meta name='viewport' content='width=device-width, initial-scale=1.0'>"
        f"<link type='text/css' rel='stylesheet' href='{attr(f'{root}{ASSETS_PATH}/swagger-ui.css')}'>"
        f"<link rel='icon' href='{attr(f'{root}{ASSETS_PATH}/favicon.png')}'>"
        f"<title>{html.escape(title)}</title></head><body>"
        f"<div id='swagger-ui' data-openapi-url='{attr(f'{root}/openapi.json')}'"
        f" data-oauth2-redirect-url='{attr(f'{root}{oauth2_redirect}')}'></div>"
        f"<script src='{attr(f'{root}{ASSETS_PATH}/swagger-ui-bundle.js')}'></script>"
        f"<script src='{attr(f'{root}{ASSETS_PATH}/{SWAGGER_INIT}')}'></script>"
        "</body></html>"
    )


def redoc_page(title: str, root: str) -> str:
    """ReDoc's page, its options as attributes of the ``<redoc>`` element it reads them from."""
    attr = _attr
    return (
        "<!doctype html><html><head><meta charset='utf-8'>"
        "<meta name='viewport' content='width=device-width, initial-scale=1'>"
        f"<link rel='icon' href='{attr(f'{root}{ASSETS_PATH}/favicon.png')}'>"
        f"<title>{html.escape(title)}</title><style>body{{margin:0;padding:0}}</style></head><body>"
        "<noscript>ReDoc requires JavaScript to show the documentation.</noscript>"
        # untrusted-spec: every description is sanitised before it becomes HTML.
        f"<redoc spec-url='{attr(f'{root}/openapi.json')}' untrusted-spec='true'></redoc>"
        f"<script src='{attr(f'{root}{ASSETS_PATH}/redoc.standalone.js')}'></script>"
        "</body></html>"
    )


def add_pages(app: FastAPI, service: Service) -> None:
    """``/``, ``/docs`` (Swagger UI) and ``/redoc``, with every asset served from this process."""

    # Before the mount of the package's assets, which would otherwise answer for this path.
    @app.get(f"{ASSETS_PATH}/{SWAGGER_INIT}", include_in_schema=False)
    async def swagger_init() -> Response:
        return Response(
            _SWAGGER_INIT_JS, media_type="text/javascript", headers={"X-Content-Type-Options": "nosniff"}
        )

    assets = importlib.resources.files("fastapi_offline").joinpath("static")
    app.mount(ASSETS_PATH, StaticFiles(directory=str(assets)), name="docs-assets")
    oauth2_redirect = "/docs/oauth2-redirect"
    redirect_page, redirect_headers = _oauth2_redirect()

    @app.get("/docs", include_in_schema=False)
    async def swagger_ui(request: Request) -> HTMLResponse:
        root = request.scope.get("root_path", "")
        page = swagger_ui_page(f"{app.title} - Swagger UI", root, oauth2_redirect)
        return HTMLResponse(page, headers=DOCS_PAGE_HEADERS)

    @app.get(oauth2_redirect, include_in_schema=False)
    async def swagger_ui_redirect() -> HTMLResponse:
        return HTMLResponse(redirect_page, headers=redirect_headers)

    @app.get("/redoc", include_in_schema=False)
    async def redoc(request: Request) -> HTMLResponse:
        root = request.scope.get("root_path", "")
        return HTMLResponse(redoc_page(f"{app.title} - ReDoc", root), headers=DOCS_PAGE_HEADERS)

    if service.settings.playground:
        return  # "/" is the playground's landing page (web/playground.py)

    @app.get("/", include_in_schema=False)
    async def landing(request: Request) -> HTMLResponse:
        caller = caller_of(request)  # a key sees only the programs it may call, as in /programs
        visible = [name for name in service.programs if caller.may_call(name)]
        page = landing_page(app.title, service, request.scope.get("root_path", ""), visible)
        return HTMLResponse(page, headers=DOCS_PAGE_HEADERS)


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
