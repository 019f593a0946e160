"""GET /: the forecaster's page (radar loop beside each model's forecast loop), and its static files.

The page is plain HTML, CSS and JavaScript shipped in the package (``service/static``): no build
step, no CDN, so it works on a network with no way out. It talks to the public /v1 API only,
like any other client, sending the API key the user gave it; so these routes are open (the
RequestGate guards /v1 only) and serve nothing but the shipped files.
"""

from __future__ import annotations

from pathlib import Path

from fastapi import APIRouter
from fastapi.responses import FileResponse

from service.errors import ApiError

STATIC = Path(__file__).resolve().parent.parent / "static"
MEDIA_TYPES = {".html": "text/html; charset=utf-8", ".js": "text/javascript; charset=utf-8",
               ".css": "text/css; charset=utf-8", ".png": "image/png", ".svg": "image/svg+xml"}

router = APIRouter(tags=["viewer"], include_in_schema=False)


def _shipped(name: str) -> Path:
    """A file of ``service/static`` by plain name: nothing else (no paths, no dotfiles) is served."""
    path = STATIC / name
    if "/" in name or "\\" in name or name.startswith(".") or path.suffix not in MEDIA_TYPES or not path.is_file():
        raise ApiError(404, "not_found", f"no static file {name[:80]!r}")
    return path


@router.get("/")
async def index() -> FileResponse:
    """The viewer page."""
    return FileResponse(_shipped("index.html"), media_type=MEDIA_TYPES[".html"], headers={"Cache-Control": "no-cache"})


@router.get("/static/{name}")
async def static(name: str) -> FileResponse:
    """The page's scripts and styles (revalidated, so a new release is picked up at the next load)."""
    path = _shipped(name)
    return FileResponse(path, media_type=MEDIA_TYPES[path.suffix], headers={"Cache-Control": "no-cache"})
