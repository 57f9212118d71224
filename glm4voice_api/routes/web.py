"""The web demo: `/` serves the one-page client, `/web/<file>` its script and style sheet.

The page itself only uses the public API, so it doubles as an example client. Turned off by `--no-web-demo`.
"""

from __future__ import annotations

from pathlib import Path

from fastapi import APIRouter
from fastapi.responses import FileResponse

from glm4voice_api.errors import not_found

WEB_DIR = Path(__file__).resolve().parent.parent / "web"
_MEDIA_TYPES = {
    ".html": "text/html",
    ".js": "text/javascript",
    ".css": "text/css",
    ".png": "image/png",
    ".svg": "image/svg+xml",
}

router = APIRouter(include_in_schema=False)


@router.get("/")
async def index() -> FileResponse:
    return _file("index.html")


@router.get("/web/{name}")
async def static_file(name: str) -> FileResponse:
    return _file(name)


def _file(name: str) -> FileResponse:
    path = WEB_DIR / name
    # Only plain files directly in the web folder: no separators, no dot files, no traversal.
    if "/" in name or "\\" in name or name.startswith(".") or path.suffix not in _MEDIA_TYPES or not path.is_file():
        raise not_found(f"No such file: {name}")
    return FileResponse(path, media_type=_MEDIA_TYPES[path.suffix], headers={"Cache-Control": "no-cache"})
