"""Load shedding before any request parsing: when a model's queue is already full (in rows, or
in seconds of work), requests for that model get their 429 here, without reading the body,
routing, validating or drawing latents. A 429 through the whole FastAPI stack cost about 0.9 ms
of CPU here; under a 4x overload those refusals took the cores the forward pass needed
(docs/reliability.md). The generation service still checks every request it takes."""

from __future__ import annotations

from typing import Any

from starlette.types import ASGIApp, Receive, Scope, Send

from app.edge.asgi import route_path, send_json
from app.edge.errors import ERROR_TABLE, error_body
from app.edge.paths import ENCODER_OPERATIONS, MODEL_TEMPLATE, SHED_RE
from app.engine.exceptions import QueueFull

STATUS, CODE = ERROR_TABLE[QueueFull]


class LoadShedMiddleware:
    def __init__(self, app: ASGIApp, state: Any):
        self.app = app
        self.state = state  # the app's state: the generation service appears there at startup
        self.metrics = state.metrics

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        service = getattr(self.state, "service", None)
        # while draining, the routes answer 503 + Connection: close (go to another replica), not a
        # 429 that tells the client to come back here
        if (scope["type"] != "http" or service is None or scope["method"] not in ("POST", "GET")
                or self.state.lifecycle.draining):
            await self.app(scope, receive, send)
            return
        m = SHED_RE.fullmatch(route_path(scope))
        batcher = None
        if m is not None:
            model, op = m.groups()
            batcher = (service.encoders if op in ENCODER_OPERATIONS else service.generators).get(model)
        if batcher is None or not batcher.saturated():
            await self.app(scope, receive, send)
            return
        retry = batcher.retry_after_s()
        self.metrics.shed_request(model)
        message = (f"model {model} is at capacity: its queue holds {batcher.queued_rows} rows, about "
                   f"{batcher.expected_wait_s():.1f} s of work; retry after {retry} s or on another replica")
        scope["latentserve.route"] = MODEL_TEMPLATE + op
        scope.setdefault("state", {})["log"] = {"model": model, "shed": True}
        await send_json(send, STATUS, error_body(CODE, message), {"Retry-After": str(retry)})
