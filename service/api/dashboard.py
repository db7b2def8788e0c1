"""The pages a browser opens: the dashboard (``GET /`` and its files under ``/static/``), the API
docs (``/docs`` Swagger UI, ``/redoc`` ReDoc) and ``GET /api/v1/vocab``, the shared words the
dashboard reads instead of restating them.

Everything these pages load comes from here (no CDN, no build step): the dashboard's ES modules
live in ``service/static/js/``; Swagger UI's and ReDoc's bundles are the files the installed
``fastapi-offline`` package ships, so the docs work on a machine without internet. The
dashboard's Content-Security-Policy says so to the browser too, so a stray external reference
fails loudly instead of quietly phoning out.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import fastapi_offline
from fastapi import APIRouter, HTTPException, Request
from fastapi.openapi.docs import get_redoc_html, get_swagger_ui_html
from fastapi.responses import FileResponse, HTMLResponse

from service import vocab

STATIC_DIR = Path(__file__).resolve().parent.parent / "static"
# Swagger UI and ReDoc, as shipped by fastapi-offline (pinned versions of the upstream bundles).
DOCS_ASSETS_DIR = Path(fastapi_offline.__file__).resolve().parent / "static"
DOCS_ASSETS = ("swagger-ui-bundle.js", "swagger-ui.css", "redoc.standalone.js", "favicon.png")
DOCS_ASSETS_URL = "/docs-assets"

# Only these kinds of files live in static/; anything else is not ours to serve.
MEDIA_TYPES = {
    ".html": "text/html; charset=utf-8",
    ".js": "text/javascript; charset=utf-8",
    ".css": "text/css; charset=utf-8",
    ".svg": "image/svg+xml",
    ".png": "image/png",
    ".ico": "image/x-icon",
}

# Same-origin only. Images may also be data: URLs (none today, but harmless); no inline script.
CSP = (
    "default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self' data:; "
    "connect-src 'self'; frame-ancestors 'none'; base-uri 'none'; form-action 'self'"
)

# The docs pages start their UI with an inline script and style themselves inline; ReDoc runs
# its search in a blob: worker. Everything else same-origin: ReDoc's side menu shows a logo from
# its CDN, which this blocks before it is requested.
DOCS_CSP = (
    "default-src 'self'; script-src 'self' 'unsafe-inline'; style-src 'self' 'unsafe-inline'; "
    "img-src 'self' data:; font-src 'self' data:; worker-src 'self' blob:; connect-src 'self'; "
    "frame-ancestors 'none'; base-uri 'none'"
)

# The files change with every release and are tiny: revalidate (ETag) rather than cache blindly.
HEADERS = {"Cache-Control": "no-cache", "X-Content-Type-Options": "nosniff"}

# The pages are not API operations: only /api/v1/vocab appears in the OpenAPI document.
router = APIRouter()


@router.get(
    "/api/v1/vocab",  # under the versioned API's prefix, but open: these are public words
    tags=["health"],
    summary="Shared words and limits",
    description="Run statuses (all, active, finished), API limits and the short-id length, "
    "as `service/vocab.py` defines them; the dashboard reads them from here.",
)
def get_vocab() -> dict[str, Any]:
    return vocab.as_dict()


@router.get("/", include_in_schema=False)
def index() -> FileResponse:
    return FileResponse(
        STATIC_DIR / "index.html",
        media_type=MEDIA_TYPES[".html"],
        headers={**HEADERS, "Content-Security-Policy": CSP},
    )


@router.get("/static/{path:path}", include_in_schema=False)
def static_file(path: str) -> FileResponse:
    file = (STATIC_DIR / path).resolve()
    # resolve() collapses "..", so a path that escapes static/ is caught here.
    if not file.is_relative_to(STATIC_DIR) or not file.is_file():
        raise HTTPException(404, f"no static file '{path}'")
    media_type = MEDIA_TYPES.get(file.suffix)
    if media_type is None:
        raise HTTPException(404, f"no static file '{path}'")
    return FileResponse(file, media_type=media_type, headers=HEADERS)


# ----------------------------------------------------------------------------- API docs


@router.get("/docs", include_in_schema=False)
def swagger_ui(request: Request) -> HTMLResponse:
    root = request.scope.get("root_path", "")
    page = get_swagger_ui_html(
        openapi_url=f"{root}{request.app.openapi_url}",
        title=f"{request.app.title} - Swagger UI",
        swagger_js_url=f"{root}{DOCS_ASSETS_URL}/swagger-ui-bundle.js",
        swagger_css_url=f"{root}{DOCS_ASSETS_URL}/swagger-ui.css",
        swagger_favicon_url=f"{root}{DOCS_ASSETS_URL}/favicon.png",
        swagger_ui_parameters=request.app.swagger_ui_parameters,
    )
    page.headers["Content-Security-Policy"] = DOCS_CSP
    return page


@router.get("/redoc", include_in_schema=False)
def redoc(request: Request) -> HTMLResponse:
    root = request.scope.get("root_path", "")
    page = get_redoc_html(
        openapi_url=f"{root}{request.app.openapi_url}",
        title=f"{request.app.title} - ReDoc",
        redoc_js_url=f"{root}{DOCS_ASSETS_URL}/redoc.standalone.js",
        redoc_favicon_url=f"{root}{DOCS_ASSETS_URL}/favicon.png",
        with_google_fonts=False,  # fonts from Google's CDN: the system fonts do
    )
    page.headers["Content-Security-Policy"] = DOCS_CSP
    return page


@router.get(DOCS_ASSETS_URL + "/{name}", include_in_schema=False)
def docs_asset(name: str) -> FileResponse:
    if name not in DOCS_ASSETS:
        raise HTTPException(404, f"no docs asset '{name}'")
    file = DOCS_ASSETS_DIR / name
    return FileResponse(file, media_type=MEDIA_TYPES[file.suffix], headers=HEADERS)
