"""The hot routes without the framework: ``POST /v1/models/{model}/samples``, ``.../edit`` (the
same forward pass as a sample) and ``POST /v1/images/generations`` with a valid JSON body are served here as raw ASGI: the body validated by pydantic in one call
(``model_validate_json``), the same core (``sample``, ``edit_image``, ``generate_images``) as the FastAPI route, the answer sent as two
ASGI messages. FastAPI's routing, dependency solving and Response objects cost about 1 ms of the
event loop's CPU per request, the thread that also feeds the forward pass (docs/benchmarks.md).

Everything else, including a body that fails validation (so its 422 reads exactly as the
route's), goes on to FastAPI unchanged. Errors use the same table (``app.edge.errors``)."""

from __future__ import annotations

from typing import Any

from pydantic import ValidationError
from starlette.exceptions import HTTPException
from starlette.types import ASGIApp, Receive, Scope, Send

from app.edge.asgi import read_body, replay, route_path, send_json, send_response
from app.edge.disconnect import ClientGone
from app.edge.errors import CLIENT_CLOSED, http_error, internal_error, service_error
from app.edge.paths import FAST_RE, FAST_TEMPLATES
from app.edge.routes.control import edit_image
from app.edge.routes.generation import sample
from app.edge.routes.images import ImageGenerationRequest, generate_images
from app.edge.schemas import EditRequest, SampleRequest
from app.engine.exceptions import ServiceError

# operation -> (its body's schema, the route template for metrics and logs)
FAST_ROUTES: dict[str, tuple[type, str]] = {
    op: (schema, FAST_TEMPLATES[op])
    for op, schema in (("samples", SampleRequest), ("edit", EditRequest), ("generations", ImageGenerationRequest))}


async def _core(operation: str, state: Any, scope: Scope, receive: Receive, model: str | None, body: Any) -> Any:
    """The route's own core for ``operation`` (looked up in this module per call: tests count the calls)."""
    if operation == "samples":
        return await sample(state, scope, receive, model, body)
    if operation == "edit":
        return await edit_image(state, scope, receive, model, body)
    return await generate_images(state, scope, receive, model, body)


def _is_json(scope: Scope) -> bool:
    for name, value in scope["headers"]:
        if name == b"content-type":
            return value.split(b";", 1)[0].strip().lower() == b"application/json"
    return False


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
        model, operation = m.group(1), m.group(2) or m.group(3)
        schema, template = FAST_ROUTES[operation]
        scope["latentserve.route"] = template  # the route label in metrics and logs
        try:
            body = await read_body(receive)
            try:
                request = schema.model_validate_json(body)
            except ValidationError:
                request = None  # the route answers it (below, outside these handlers): the same 422
            else:
                rendered = await _core(operation, self.state, scope, receive, model, request)
        except ClientGone:
            # gone before its body arrived or while its rows were queued: nobody reads the answer,
            # but the metrics and the access log say 499 (client closed)
            await send_response(send, CLIENT_CLOSED)
            return
        except HTTPException as e:  # the body limit (app.edge.middleware.BodyLimitMiddleware)
            await send_json(send, *http_error(e))
            return
        except ServiceError as e:
            status, payload, headers = service_error(e, "POST", scope["path"], self.state.lifecycle.draining)
            await send_json(send, status, payload, headers)
            return
        except Exception as e:  # noqa: BLE001 - as the app's last-resort handler: a 500 with an error id
            status, payload, headers = internal_error("POST", scope["path"], e)
            await send_json(send, status, payload, headers)
            return
        if request is None:
            await self.app(scope, replay(body, receive), send)
            return
        await send_response(send, 200, rendered.body, rendered.media_type, rendered.headers)
