"""One table from exception type to HTTP status, and the JSON error body used everywhere:
``{"error": {"code": "...", "message": "..."}}``. 500s carry only an error id, which the log
line of the failure carries too; never a stack trace or a path."""

from __future__ import annotations

import logging
import uuid
from http import HTTPStatus

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, Response
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.requests import ClientDisconnect

from app.engine import exceptions as ex

log = logging.getLogger("latentserve.errors")
CLIENT_CLOSED = 499  # nginx's code for "client closed request": logged and counted, never seen

# exception type -> (status, code)
ERROR_TABLE: dict[type[ex.ServiceError], tuple[int, str]] = {
    ex.ModelNotFound: (404, "model_not_found"),
    ex.InvalidInput: (422, "invalid_request"),
    ex.UnsupportedOperation: (400, "unsupported_operation"),
    ex.PayloadTooLarge: (413, "payload_too_large"),
    ex.UnsupportedMediaType: (415, "unsupported_media_type"),
    ex.QueueFull: (429, "queue_full"),
    ex.NotReady: (503, "not_ready"),
    ex.DeadlineExceeded: (504, "deadline_exceeded"),
    ex.BatchFailed: (500, "internal_error"),
}


def error_body(code: str, message: str, **extra: object) -> dict:
    return {"error": {"code": code, "message": message, **extra}}


def error_response(status: int, code: str, message: str, headers: dict[str, str] | None = None, **extra: object) -> JSONResponse:
    return JSONResponse(error_body(code, message, **extra), status_code=status, headers=headers)


def internal_error(method: str, path: str, exc: BaseException) -> tuple[int, dict, None]:
    """(500, body, no headers): only an error id reaches the client; the log line has the rest."""
    error_id = uuid.uuid4().hex[:16]
    log.error("internal error %s on %s %s: %r", error_id, method, path, exc,
              exc_info=(type(exc), exc, exc.__traceback__))
    return 500, error_body("internal_error", f"internal error; quote error id {error_id}", error_id=error_id), None


def service_error(exc: ex.ServiceError, method: str, path: str, draining: bool) -> tuple[int, dict, dict[str, str] | None]:
    """(status, body, headers) for a domain error, by the one table."""
    for cls in type(exc).__mro__:
        if cls in ERROR_TABLE:
            status, code = ERROR_TABLE[cls]
            break
    else:  # pragma: no cover - every subclass is in the table
        status, code = 500, "internal_error"
    if status >= 500 and status != 503 and status != 504:
        return internal_error(method, path, exc)
    headers = {"Retry-After": str(exc.retry_after_s)} if isinstance(exc, ex.QueueFull) else None
    if isinstance(exc, ex.NotReady) and draining:
        headers = {"Connection": "close"}  # send the client to another replica
    extra = {"param": exc.param} if exc.param else {}
    return status, error_body(code, exc.message, **extra), headers


def _internal(request: Request, exc: BaseException) -> JSONResponse:
    status, body, _ = internal_error(request.method, request.url.path, exc)
    return JSONResponse(body, status_code=status)


async def service_error_handler(request: Request, exc: ex.ServiceError) -> JSONResponse:
    status, body, headers = service_error(exc, request.method, request.url.path,
                                          request.app.state.lifecycle.draining)
    return JSONResponse(body, status_code=status, headers=headers)


async def validation_error_handler(request: Request, exc: RequestValidationError) -> JSONResponse:
    details = []
    for err in exc.errors():
        loc = ".".join(str(p) for p in err.get("loc", ()))
        details.append({"field": loc, "message": err.get("msg", "")})
    message = "; ".join(f"{d['field']}: {d['message']}" for d in details[:5]) or "invalid request"
    return error_response(422, "invalid_request", message, details=details)


# statuses that the framework raises itself, named as the service's own errors are
FRAMEWORK_CODES = {413: "payload_too_large", 415: "unsupported_media_type"}


def http_error(exc: StarletteHTTPException) -> tuple[int, dict, dict[str, str] | None]:
    """(status, body, headers) for an HTTPException (the body limit's 413, the router's 404 and 405):
    named by ``FRAMEWORK_CODES`` or by the status's phrase."""
    if exc.status_code in FRAMEWORK_CODES:
        code, message = FRAMEWORK_CODES[exc.status_code], str(exc.detail)
    else:
        code = HTTPStatus(exc.status_code).phrase.lower().replace(" ", "_") if exc.status_code in HTTPStatus._value2member_map_ else "error"
        message = exc.detail if isinstance(exc.detail, str) else HTTPStatus(exc.status_code).phrase
    return exc.status_code, error_body(code, message), getattr(exc, "headers", None)


async def http_error_handler(request: Request, exc: StarletteHTTPException) -> Response:
    if isinstance(exc.__cause__, ClientDisconnect):
        # FastAPI's body parsing turns a client gone mid-body into a 400 "error parsing the body":
        # counted and logged as 499 (client closed), as the fast path and /encode count it
        return Response(status_code=CLIENT_CLOSED)
    status, body, headers = http_error(exc)
    return JSONResponse(body, status_code=status, headers=headers)


async def unhandled_error_handler(request: Request, exc: Exception) -> JSONResponse:
    return _internal(request, exc)


def install_error_handlers(app: FastAPI) -> None:
    app.add_exception_handler(ex.ServiceError, service_error_handler)  # type: ignore[arg-type]
    app.add_exception_handler(RequestValidationError, validation_error_handler)  # type: ignore[arg-type]
    app.add_exception_handler(StarletteHTTPException, http_error_handler)  # type: ignore[arg-type]
    app.add_exception_handler(Exception, unhandled_error_handler)
