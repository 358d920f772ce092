"""The hot routes without the framework: ``POST /v1/models/{model}/samples`` and ``.../edit``
(the same forward pass as a sample) with a valid JSON body are served here as raw ASGI: the body validated by pydantic in one call
(``model_validate_json``), the same core (``sample``, ``edit_image``) as the FastAPI route, the answer sent as two
ASGI messages. FastAPI's routing, dependency solving and Response objects cost about 1 ms of the
event loop's CPU per request, the thread that also feeds the forward pass (docs/benchmarks.md).

Everything else, including a body that fails validation (so its 422 reads exactly as the
route's), goes on to FastAPI unchanged. Errors use the same table (``app.edge.errors``)."""

from __future__ import annotations

import re
from typing import Any

from pydantic import ValidationError
from starlette.exceptions import HTTPException
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from app.edge.asgi import route_path, send_json, send_response
from app.edge.errors import CLIENT_CLOSED, error_body, internal_error, service_error
from app.edge.routes.control import edit_image
from app.edge.routes.generation import ClientGone, sample
from app.edge.schemas import EditRequest, SampleRequest
from app.engine.exceptions import ServiceError

FAST_RE = re.compile(r"/v1/models/([^/]+)/(samples|edit)")
# operation -> (its body's schema, the name of its core in this module: looked up per call, so a
# test can count the calls)
FAST_ROUTES: dict[str, tuple[type, str]] = {"samples": (SampleRequest, "sample"), "edit": (EditRequest, "edit_image")}


def _is_json(scope: Scope) -> bool:
    for name, value in scope["headers"]:
        if name == b"content-type":
            return value.split(b";", 1)[0].strip().lower() == b"application/json"
    return False


def _replay(body: bytes, receive: Receive) -> Receive:
    """A receive that gives the already-read body once, then whatever comes next."""
    pending: list[Message] = [{"type": "http.request", "body": body, "more_body": False}]

    async def replay() -> Message:
        return pending.pop() if pending else await receive()

    return replay


class FastPath:
    def __init__(self, app: ASGIApp, state: Any):
        self.app = app
        self.state = state

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        m = None
        if scope["type"] == "http" and scope["method"] == "POST":
            m = FAST_RE.fullmatch(route_path(scope))
        if m is None or not _is_json(scope):
            await self.app(scope, receive, send)
            return
        operation = m.group(2)
        schema, core = FAST_ROUTES[operation]
        scope["latentserve.route"] = f"/v1/models/{{model}}/{operation}"  # the route label in metrics and logs
        chunks, more = [], True
        try:
            while more:
                message = await receive()
                if message["type"] == "http.disconnect":
                    # gone before its body arrived: nobody reads the answer, but the metrics and
                    # the access log say 499 (client closed), as for a client gone while queued
                    await send_response(send, CLIENT_CLOSED)
                    return
                chunks.append(message.get("body", b""))
                more = message.get("more_body", False)
        except HTTPException as e:  # the body limit (app.edge.middleware.BodyLimitMiddleware)
            await send_json(send, e.status_code, error_body("payload_too_large", e.detail))
            return
        body = b"".join(chunks)
        try:
            request = schema.model_validate_json(body)
        except ValidationError:
            await self.app(scope, _replay(body, receive), send)
            return
        try:
            rendered = await globals()[core](self.state, scope, receive, m.group(1), request)
        except ClientGone:
            await send_response(send, CLIENT_CLOSED)
            return
        except ServiceError as e:
            status, payload, headers = service_error(e, "POST", scope["path"], getattr(self.state, "draining", False))
            await send_json(send, status, payload, headers)
            return
        except Exception as e:  # noqa: BLE001 - as the app's last-resort handler: a 500 with an error id
            status, payload, headers = internal_error("POST", scope["path"], e)
            await send_json(send, status, payload, headers)
            return
        await send_response(send, 200, rendered.body, rendered.media_type, rendered.headers)
