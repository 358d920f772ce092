"""Raw ASGI for the middleware, the fast path and the upload routes, which read a body or answer
before (or instead of) FastAPI: one body reader, and one place that builds the headers and the
JSON bytes of an answer."""

from __future__ import annotations

import json
from typing import Any

from starlette.types import Message, Receive, Scope, Send

from app.edge.disconnect import ClientGone


def route_path(scope: Scope) -> str:
    """The path the routes see: uvicorn puts ``root_path`` (LATENTSERVE_ROOT_PATH) in front of it."""
    path, root = scope["path"], scope.get("root_path", "")
    return path[len(root):] if root and path.startswith(root) else path


async def read_body(receive: Receive) -> bytes:
    """The whole request body. Raises ClientGone when the client leaves before all of it has
    arrived, and the body limit's HTTPException (413, ``BodyLimitMiddleware``) as soon as it passes
    the limit; the callers answer both through the error table (``app.edge.errors``)."""
    chunks, more = [], True
    while more:
        message = await receive()
        if message["type"] == "http.disconnect":
            raise ClientGone()
        chunks.append(message.get("body", b""))
        more = message.get("more_body", False)
    return b"".join(chunks)


def replay(body: bytes, receive: Receive) -> Receive:
    """A receive that gives the already-read body once, then whatever comes next (a disconnect)."""
    pending: list[Message] = [{"type": "http.request", "body": body, "more_body": False}]

    async def replayed() -> Message:
        return pending.pop() if pending else await receive()

    return replayed


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
