"""The playground page at ``/``: static files shipped in the package (app/edge/playground), built
only on the public API. Every URL in the page is relative to where it was served, so it works
under a gateway prefix. The page and its assets are open (they hold no data); the API calls they
make carry the key the user types in."""

from __future__ import annotations

import hashlib
from pathlib import Path

from fastapi import APIRouter, HTTPException, Request, Response

FOLDER = Path(__file__).resolve().parent.parent / "playground"
ASSETS = {"app.js": "text/javascript; charset=utf-8", "style.css": "text/css; charset=utf-8"}
# no inline script or style, nothing from another origin; images are the API's PNGs as blob: URLs
CSP = ("default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' blob: data:; connect-src 'self'; "
       "base-uri 'none'; form-action 'none'; frame-ancestors 'none'")
SECURITY = {"Content-Security-Policy": CSP, "X-Content-Type-Options": "nosniff", "Referrer-Policy": "no-referrer",
            "X-Frame-Options": "DENY"}

router = APIRouter(include_in_schema=False)


def _load() -> dict[str, tuple[bytes, str, str]]:
    """name -> (bytes, media type, strong ETag), read once at import: the files ship with the code."""
    files = {"index.html": "text/html; charset=utf-8", **ASSETS}
    out = {}
    for name, media in files.items():
        data = (FOLDER / name).read_bytes()
        out[name] = (data, media, '"' + hashlib.sha256(data).hexdigest()[:32] + '"')
    return out


FILES = _load()


def _serve(request: Request, name: str, cache: str) -> Response:
    data, media, etag = FILES[name]
    headers = {**SECURITY, "ETag": etag, "Cache-Control": cache}
    if etag in [t.strip().removeprefix("W/") for t in request.headers.get("if-none-match", "").split(",")]:
        return Response(status_code=304, headers=headers)
    return Response(data, media_type=media, headers=headers)


@router.get("/")
async def page(request: Request) -> Response:
    # revalidated on each visit (a new version shows at once); the assets are cached for 10 minutes
    return _serve(request, "index.html", "no-cache")


@router.get("/playground/{name}")
async def asset(name: str, request: Request) -> Response:
    if name not in ASSETS:
        raise HTTPException(404, "Not Found")
    return _serve(request, name, "public, max-age=600")
