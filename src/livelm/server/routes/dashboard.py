"""The dashboard: `GET /` is a page that watches the model learn, polling the API every 2 s.

The page and its script and style are files in the package (`server/static/dashboard/`), served
from here: nothing comes from another host, so it works without internet, and its Content
Security Policy forbids the browser to load or send anything anywhere else. The page holds no
data itself: every figure comes from the API with the key its user types in, so it shows
nothing that the key may not read.
"""

from __future__ import annotations

from pathlib import Path

from fastapi import APIRouter
from fastapi.responses import FileResponse

from livelm.server.errors import NotFoundError

router = APIRouter(include_in_schema=False)

STATIC = Path(__file__).resolve().parent.parent / "static" / "dashboard"
# The files the page loads, by name: nothing else under the folder is reachable.
ASSETS = {"app.js": "text/javascript", "app.css": "text/css"}

# 'self' only: no script, style, image or request reaches another host; no inline script.
POLICY = (
    "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' data:; "
    "connect-src 'self'; base-uri 'none'; form-action 'self'; frame-ancestors 'none'"
)
HEADERS = {
    "Content-Security-Policy": POLICY,
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
    # Revalidated on every load (an ETag answers 304): a new livelm ships a new page.
    "Cache-Control": "no-cache",
}


@router.get("/")
def page() -> FileResponse:
    return FileResponse(STATIC / "index.html", media_type="text/html", headers=HEADERS)


@router.get("/dashboard/{name}")
def asset(name: str) -> FileResponse:
    media_type = ASSETS.get(name)
    if media_type is None:
        raise NotFoundError(f"no dashboard file {name!r}; see /", param="name")
    return FileResponse(STATIC / name, media_type=media_type, headers=HEADERS)
