"""app.edge.errors: the one table from domain error to status, code and headers."""

from __future__ import annotations

import logging

import pytest

from app.edge.errors import ERROR_TABLE, error_body, service_error
from app.engine import exceptions as ex


@pytest.mark.parametrize("exc, status, code", [
    (ex.ModelNotFound("no model"), 404, "model_not_found"),
    (ex.InvalidInput("bad"), 422, "invalid_request"),
    (ex.UnsupportedOperation("gan"), 400, "unsupported_operation"),
    (ex.PayloadTooLarge("big"), 413, "payload_too_large"),
    (ex.UnsupportedMediaType("text"), 415, "unsupported_media_type"),
    (ex.QueueFull("full", retry_after_s=3), 429, "queue_full"),
    (ex.NotReady("warming"), 503, "not_ready"),
    (ex.DeadlineExceeded("late"), 504, "deadline_exceeded"),
])
def test_each_domain_error_has_its_status_and_code(exc, status, code):
    got, body, headers = service_error(exc, "POST", "/v1/x", draining=False)
    assert got == status and body == {"error": {"code": code, "message": exc.message}}
    assert headers == ({"Retry-After": "3"} if status == 429 else None)


def test_every_domain_error_is_in_the_table():
    subclasses = set(ex.ServiceError.__subclasses__())
    assert subclasses <= set(ERROR_TABLE), subclasses - set(ERROR_TABLE)


def test_a_param_is_reported_only_when_set():
    _, body, _ = service_error(ex.InvalidInput("size 9x9 is not offered", param="size"), "POST", "/x", False)
    assert body["error"]["param"] == "size"
    _, body, _ = service_error(ex.InvalidInput("bad"), "POST", "/x", False)
    assert "param" not in body["error"]


def test_not_ready_while_draining_closes_the_connection():
    status, _, headers = service_error(ex.NotReady("stopping"), "GET", "/x", draining=True)
    assert status == 503 and headers == {"Connection": "close"}


def test_a_failed_batch_is_a_500_with_only_an_error_id(caplog):
    caplog.set_level(logging.ERROR)
    status, body, headers = service_error(ex.BatchFailed("secret detail /path/to/file"), "POST", "/v1/x", False)
    assert status == 500 and headers is None
    error = body["error"]
    assert error["code"] == "internal_error" and "secret" not in error["message"] and len(error["error_id"]) == 16
    assert error["error_id"] in caplog.text and "secret detail" in caplog.text  # the log line has the rest


def test_error_body_shape():
    assert error_body("x", "y", z=1) == {"error": {"code": "x", "message": "y", "z": 1}}
