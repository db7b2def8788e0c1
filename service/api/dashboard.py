"""The dashboard page: ``GET /`` serves ``service/static/index.html`` and ``GET /static/...`` its
script and stylesheet.

Everything the page loads comes from here (no CDN, no build step); the Content-Security-Policy
on the page says so to the browser too, so a stray external reference fails loudly instead of
quietly phoning out. The page itself only talks to the JSON API under /api/v1.
"""

from __future__ import annotations

from pathlib import Path

from fastapi import APIRouter, HTTPException
from fastapi.responses import FileResponse

STATIC_DIR = Path(__file__).resolve().parent.parent / "static"

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

# The files change with every release and are tiny: revalidate (ETag) rather than cache blindly.
HEADERS = {"Cache-Control": "no-cache", "X-Content-Type-Options": "nosniff"}

router = APIRouter(include_in_schema=False)


@router.get("/")
def index() -> FileResponse:
    return FileResponse(
        STATIC_DIR / "index.html",
        media_type=MEDIA_TYPES[".html"],
        headers={**HEADERS, "Content-Security-Policy": CSP},
    )


@router.get("/static/{path:path}")
def static_file(path: str) -> FileResponse:
    file = (STATIC_DIR / path).resolve()
    # resolve() collapses "..", so a path that escapes static/ is caught here.
    if not file.is_relative_to(STATIC_DIR) or not file.is_file():
        raise HTTPException(404, f"no static file '{path}'")
    media_type = MEDIA_TYPES.get(file.suffix)
    if media_type is None:
        raise HTTPException(404, f"no static file '{path}'")
    return FileResponse(file, media_type=media_type, headers=HEADERS)
