"""app.edge.middleware: the request id (taken when it is a safe token, else made), one access-log
line per request with the id, and metrics under the route template."""

from __future__ import annotations

import logging
import re

from app.edge.middleware import incoming_request_id
from app.server.logs import RequestIdFilter


def scope_with(value: bytes | None) -> dict:
    return {"headers": [] if value is None else [(b"x-request-id", value)]}


def test_a_safe_request_id_is_kept_and_anything_else_replaced():
    assert incoming_request_id(scope_with(b"abc-123_x.y:z")) == "abc-123_x.y:z"
    for bad in (b"", b"two words", b"new\nline", b"x" * 129, b"\xff\xfe"):
        made = incoming_request_id(scope_with(bad))
        assert re.fullmatch(r"[0-9a-f]{32}", made), bad
    assert re.fullmatch(r"[0-9a-f]{32}", incoming_request_id(scope_with(None)))


async def test_one_access_line_per_request_with_its_id_and_the_route_template(client, caplog):
    caplog.set_level(logging.INFO, logger="latentserve.access")
    caplog.handler.addFilter(RequestIdFilter())  # what the service's log handler carries
    r = await client.get("/v1/models/tiny-gan/samples.png?seed=3", headers={"X-Request-ID": "trace-42"})
    assert r.status_code == 200 and r.headers["x-request-id"] == "trace-42"
    lines = [rec for rec in caplog.records if rec.name == "latentserve.access"]
    assert len(lines) == 1
    line = lines[0]
    assert (line.request_id, line.method, line.path, line.status, line.model, line.rows) == (
        "trace-42", "GET", "/v1/models/tiny-gan/samples.png", 200, "tiny-gan", 1)
    text = (await client.get("/metrics")).text
    assert 'latentserve_requests_total{method="GET",route="/v1/models/{model}/samples.png",status="200"} 1.0' in text
    r = await client.get("/nowhere")
    assert r.status_code == 404 and len(r.headers["x-request-id"]) == 32
    assert 'route="unmatched",status="404"' in (await client.get("/metrics")).text
