"""Answers sent as raw ASGI messages, for the middleware and the fast path that answer before
(or instead of) FastAPI: one place that builds the headers and the JSON bytes."""

from __future__ import annotations

import json
from typing import Any

from starlette.types import Scope, Send


def route_path(scope: Scope) -> str:
    """The path the routes see: uvicorn puts ``root_path`` (LATENTSERVE_ROOT_PATH) in front of it."""
    path, root = scope["path"], scope.get("root_path", "")
    return path[len(root):] if root and path.startswith(root) else path


def json_bytes(content: Any) -> bytes:
    """What JSONResponse sends for ``content``."""
    return json.dumps(content, ensure_ascii=False, allow_nan=False, indent=None, separators=(",", ":")).encode("utf-8")


async def send_response(send: Send, status: int, body: bytes = b"", media_type: str | None = None,
                        headers: dict[str, str] | None = None) -> None:
    raw = [(b"content-length", str(len(body)).encode())]
    if media_type:
        raw.append((b"content-type", media_type.encode()))
    raw += [(k.lower().encode("latin-1"), v.encode("latin-1")) for k, v in (headers or {}).items()]
    await send({"type": "http.response.start", "status": status, "headers": raw})
    await send({"type": "http.response.body", "body": body})


async def send_json(send: Send, status: int, payload: Any, headers: dict[str, str] | None = None) -> None:
    await send_response(send, status, json_bytes(payload), "application/json", headers)
