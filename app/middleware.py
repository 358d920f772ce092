"""Pure ASGI middleware: request id, metrics by route template, and one access-log line per
request. (Pure ASGI rather than BaseHTTPMiddleware: no extra task or body copy per request.)"""

from __future__ import annotations

import contextvars
import logging
import re
import time
import uuid

from starlette.types import ASGIApp, Message, Receive, Scope, Send

from app.metrics import Metrics

request_id_var: contextvars.ContextVar[str] = contextvars.ContextVar("request_id", default="-")
REQUEST_ID_RE = re.compile(r"^[A-Za-z0-9._:-]{1,128}$")
access_log = logging.getLogger("latentserve.access")


class RequestIdFilter(logging.Filter):
    """Adds ``request_id`` to every log record, from the request being served."""

    def filter(self, record: logging.LogRecord) -> bool:
        record.request_id = request_id_var.get()
        return True


def incoming_request_id(scope: Scope) -> str:
    for name, value in scope.get("headers", ()):
        if name == b"x-request-id":
            text = value.decode("latin-1")
            if REQUEST_ID_RE.match(text):  # anything else (log injection, huge ids) is replaced
                return text
            break
    return uuid.uuid4().hex


class RequestContextMiddleware:
    def __init__(self, app: ASGIApp, metrics: Metrics):
        self.app = app
        self.metrics = metrics

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        rid = incoming_request_id(scope)
        token = request_id_var.set(rid)
        scope.setdefault("state", {})["request_id"] = rid
        status = 500
        t0 = time.perf_counter()

        async def send_with_id(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
                message["headers"] = [*message.get("headers", []), (b"x-request-id", rid.encode())]
            await send(message)

        try:
            await self.app(scope, receive, send_with_id)
        finally:
            elapsed = time.perf_counter() - t0
            template = scope.get("latentserve.route") or getattr(scope.get("route"), "path", None) or "unmatched"
            self.metrics.request(scope["method"], template, status, elapsed)
            if access_log.isEnabledFor(logging.INFO):
                extra = {"method": scope["method"], "path": scope["path"], "status": status,
                         "latency_ms": round(elapsed * 1000.0, 2), "client": (scope.get("client") or ("-",))[0]}
                extra.update(scope["state"].get("log", {}))  # model, rows, batch ids from the route
                access_log.info("%s %s %d %.1fms", scope["method"], scope["path"], status, elapsed * 1000.0, extra=extra)
            request_id_var.reset(token)
