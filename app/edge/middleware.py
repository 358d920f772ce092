"""Pure ASGI middleware: request id, metrics by route template, and one access-log line per
request. (Pure ASGI rather than BaseHTTPMiddleware: no extra task or body copy per request.)"""

from __future__ import annotations

import logging
import re
import time
import uuid
from typing import Any

from starlette.exceptions import HTTPException
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from app.edge.asgi import route_path, send_json
from app.edge.errors import internal_error
from app.edge.paths import UPLOAD_RE
from app.server.logs import request_id_var
from app.server.metrics import Metrics

REQUEST_ID_RE = re.compile(r"^[A-Za-z0-9._:-]{1,128}$")
access_log = logging.getLogger("latentserve.access")


def incoming_request_id(scope: Scope) -> str:
    for name, value in scope.get("headers", ()):
        if name == b"x-request-id":
            text = value.decode("latin-1")
            if REQUEST_ID_RE.match(text):  # anything else (log injection, huge ids) is replaced
                return text
            break
    return uuid.uuid4().hex


class RequestContextMiddleware:
    def __init__(self, app: ASGIApp, metrics: Metrics, state: Any = None, routes: list | None = None):
        self.app = app
        self.metrics = metrics
        self.state = state  # the app's: once a shutdown has begun (stopping), every answer closes its connection
        self.routes = routes if routes is not None else []  # the app's (a reference: routes added later count)

    def _template(self, scope: Scope) -> str:
        """The route label: the path template the request matched, else "unmatched". FastAPI's
        own documentation routes (/openapi.json, /docs, /redoc) are plain Starlette routes, which
        leave only their endpoint in the scope, not the route."""
        template = scope.get("latentserve.route") or getattr(scope.get("route"), "path", None)
        if template:
            return template
        endpoint = scope.get("endpoint")
        if endpoint is not None:
            for route in self.routes:
                if getattr(route, "endpoint", None) is endpoint:
                    return route.path
        return "unmatched"

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        rid = incoming_request_id(scope)
        token = request_id_var.set(rid)
        scope.setdefault("state", {})["request_id"] = rid
        status = 0  # no answer yet
        t0 = time.perf_counter()

        async def send_with_id(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
                message["headers"] = [*message.get("headers", []), (b"x-request-id", rid.encode())]
                if self.state is not None and self.state.lifecycle.stopping and not any(
                        name.lower() == b"connection" for name, _ in message["headers"]):
                    # not kept alive for a next request that the stopping process could not answer
                    message["headers"].append((b"connection", b"close"))
            await send(message)

        try:
            try:
                await self.app(scope, receive, send_with_id)
            except Exception as e:
                if status:  # the answer has begun: uvicorn drops the connection, as it must
                    raise
                # Starlette's handler for Exception runs outside every middleware: its 500 had no
                # request id, no Connection: close while stopping, and a log line without the id;
                # here the answer is the fast path's (an error id, logged with the request's id)
                code, payload, _ = internal_error(scope["method"], scope["path"], e)
                await send_json(send_with_id, code, payload)
        finally:
            status = status or 500
            elapsed = time.perf_counter() - t0
            self.metrics.request(scope["method"], self._template(scope), status, elapsed)
            if access_log.isEnabledFor(logging.INFO):
                extra = {"method": scope["method"], "path": scope["path"], "status": status,
                         "latency_ms": round(elapsed * 1000.0, 2), "client": (scope.get("client") or ("-",))[0]}
                extra.update(scope["state"].get("log", {}))  # model, rows, batch ids from the route
                access_log.info("%s %s %d %.1fms", scope["method"], scope["path"], status, elapsed * 1000.0, extra=extra)
            request_id_var.reset(token)


class BodyLimitMiddleware:
    """Every request body is bounded: image uploads (``UPLOAD_RE``: /encode, /variations, /project,
    OpenAI's variations) by ``upload_limit``, everything else by
    ``limit``. A declared Content-Length over the limit gets its 413 before the body is read; a
    body without one is counted as it streams in and refused as soon as it passes the limit.
    (FastAPI's own max_body_size answers a declared length with a plain-text 413; this keeps the
    service's JSON errors and says which setting to raise.)"""

    def __init__(self, app: ASGIApp, limit: int, upload_limit: int):
        self.app = app
        self.limits = ((limit, "LATENTSERVE_MAX_BODY_BYTES"), (upload_limit, "LATENTSERVE_MAX_UPLOAD_BYTES"))

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        limit, setting = self.limits[UPLOAD_RE.fullmatch(route_path(scope)) is not None]
        for name, value in scope.get("headers", ()):
            if name == b"content-length":
                if value.isdigit() and int(value) > limit:
                    message = f"request body of {int(value)} bytes exceeds the limit of {limit} bytes ({setting})"
                    await send_json(send, 413, {"error": {"code": "payload_too_large", "message": message}})
                    return
                break
        received = 0

        async def limited() -> Message:
            nonlocal received
            message = await receive()
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
                if received > limit:  # the JSON error handler answers it (FastAPI re-raises HTTPException)
                    raise HTTPException(413, f"request body exceeds the limit of {limit} bytes ({setting})")
            return message

        await self.app(scope, limited, send)


class HeadAsGetMiddleware:
    """HEAD is GET without the body (RFC 9110, 9.3.2): every GET route answers it with the status
    and headers GET would send (Content-Length and ETag included), and no body. FastAPI's routes
    answer only the methods they name. A POST-only route stays a 405 that names POST."""

    def __init__(self, app: ASGIApp):
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope["method"] != "HEAD":
            await self.app(scope, receive, send)
            return

        async def headers_only(message: Message) -> None:
            if message["type"] == "http.response.body":
                if message.get("more_body", False):
                    return
                message = {"type": "http.response.body", "body": b"", "more_body": False}
            await send(message)

        inner = {**scope, "method": "GET"}
        try:
            await self.app(inner, receive, headers_only)
        finally:
            # what the router found, for the metrics and the access log of the outer layers
            for key in ("route", "latentserve.route", "endpoint"):
                if key in inner:
                    scope[key] = inner[key]
