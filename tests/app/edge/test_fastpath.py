"""The raw ASGI path for POST .../samples answers exactly as the FastAPI route does: same bytes,
same headers, same errors; bodies it cannot validate go on to the route."""

from __future__ import annotations

import contextlib

import pytest

from app.edge.fastpath import FastPath
from tests.conftest import count_fast_path_calls, running_app

GAN = "/v1/models/tiny-gan"
SKIP = {"x-request-id", "date"}


@contextlib.asynccontextmanager
async def both(tiny_weights, **overrides):
    """Two apps on the same models: one with the fast path, one without it."""
    from app.server.settings import Settings

    settings = Settings(weights_dir=tiny_weights, max_wait_ms=0, max_queue_wait_s=0, **overrides)
    async with running_app(settings) as (fast_app, fast), running_app(settings) as (slow_app, slow):
        slow_app.user_middleware = [m for m in slow_app.user_middleware if m.cls is not FastPath]
        yield (fast_app, fast), (slow_app, slow)


def same(a, b):
    assert a.status_code == b.status_code, (a.text, b.text)
    assert a.content == b.content
    ha = {k: v for k, v in a.headers.items() if k not in SKIP}
    hb = {k: v for k, v in b.headers.items() if k not in SKIP}
    assert ha == hb


@pytest.mark.parametrize("body", [
    {"seed": 3}, {"n": 5, "seed": 9, "labels": "Bag", "columns": 2, "scale": 2},
    {"n": 2, "seed": 1, "labels": [0, "Dress"], "format": "json", "include_latents": True},
    {"n": 3, "seed": 4, "truncation": 0.7, "format": "json"},
])
async def test_fast_path_and_route_give_the_same_answer(tiny_weights, fast_path_calls, body):
    calls = fast_path_calls
    async with both(tiny_weights) as ((_, fast), (_, slow)):
        same(await fast.post(f"{GAN}/samples", json=body), await slow.post(f"{GAN}/samples", json=body))
    assert calls == [1]  # served by the fast path, and only once


@pytest.mark.parametrize("path, body, status, on_fast_path", [
    ("/v1/models/nope/samples", b'{"seed": 1}', 404, True),  # unknown model: the error table
    (f"{GAN}/samples", b'{"seed": 1, "labels": "Spaceship"}', 422, True),  # a service-side check
    (f"{GAN}/samples", b'{"n": 0}', 422, False),  # fails validation: goes on to the route
    (f"{GAN}/samples", b'{"n": 1, "extra": true}', 422, False),
    (f"{GAN}/samples", b'{not json', 422, False),
    (f"{GAN}/samples", b'{"n": 65, "seed": 1}', 422, True),  # over MAX_IMAGES_PER_REQUEST
])
async def test_errors_are_the_same_on_both_paths(tiny_weights, fast_path_calls, path, body, status, on_fast_path):
    async with both(tiny_weights) as ((_, fast), (_, slow)):
        a = await fast.post(path, content=body, headers={"content-type": "application/json"})
        b = await slow.post(path, content=body, headers={"content-type": "application/json"})
        assert a.status_code == status
        same(a, b)
    assert fast_path_calls == ([1] if on_fast_path else [])  # the comparison was not vacuous


async def test_a_streamed_body_over_the_limit_is_the_same_413_on_both_paths(tiny_weights, monkeypatch):
    """No Content-Length: the limit trips while the body streams in, inside the shared body
    reader on the fast path and inside the route's body parsing on the other."""
    reads = count_fast_path_calls(monkeypatch, "read_body")
    chunks = [b'{"seed": 1, "n": 1', b" " * 1100, b"}"]

    async def stream():
        for chunk in chunks:
            yield chunk

    async with both(tiny_weights, max_body_bytes=1024) as ((_, fast), (_, slow)):
        a = await fast.post(f"{GAN}/samples", content=stream(), headers={"content-type": "application/json"})
        b = await slow.post(f"{GAN}/samples", content=stream(), headers={"content-type": "application/json"})
    assert a.status_code == 413 and a.json()["error"]["code"] == "payload_too_large"
    assert "LATENTSERVE_MAX_BODY_BYTES" in a.json()["error"]["message"]
    same(a, b)
    assert reads == [1]  # the fast path read (and refused) the first body


async def test_not_ready_and_draining_are_503_on_the_fast_path(tiny_weights):
    async with both(tiny_weights) as ((fast_app, fast), (slow_app, slow)):
        for app in (fast_app, slow_app):
            app.state.lifecycle.draining = True
        a = await fast.post(f"{GAN}/samples", json={"seed": 1})
        b = await slow.post(f"{GAN}/samples", json={"seed": 1})
        assert a.status_code == 503 and a.headers["connection"] == "close"
        same(a, b)


async def test_other_content_types_and_methods_go_to_the_route(client):
    r = await client.post(f"{GAN}/samples", content=b'{"seed": 1}', headers={"content-type": "text/plain"})
    assert r.status_code == 422 and r.json()["error"]["code"] == "invalid_request"  # FastAPI: JSON only as JSON
    assert (await client.get(f"{GAN}/samples")).status_code == 405


async def test_fast_path_requests_are_counted_under_the_route_template(client):
    assert (await client.post(f"{GAN}/samples", json={"seed": 1})).status_code == 200
    metrics = (await client.get("/metrics")).text
    assert 'latentserve_requests_total{method="POST",route="/v1/models/{model}/samples",status="200"} 1.0' in metrics


@pytest.fixture
def fast_edit_calls(monkeypatch: pytest.MonkeyPatch) -> list[int]:
    return count_fast_path_calls(monkeypatch, "edit_image")


@pytest.mark.parametrize("body", [
    {"seed": 3, "moves": [{"direction": 0, "amount": 1.5}]},
    {"seed": 5, "label": "Bag", "truncation": 0.8, "scale": 3, "moves": [{"direction": 2, "amount": -2}]},
    {"latent": [0.25] * 8, "format": "json", "moves": [{"direction": 1, "amount": 1}, {"direction": 0, "amount": 2}]},
])
async def test_edits_on_the_fast_path_answer_as_the_route(tiny_weights, fast_edit_calls, body):
    async with both(tiny_weights) as ((_, fast), (_, slow)):
        a, b = await fast.post(f"{GAN}/edit", json=body), await slow.post(f"{GAN}/edit", json=body)
        assert a.status_code == 200
        same(a, b)
        bad = {**body, "moves": [{"direction": 99, "amount": 1}]}  # a service-side 422
        same(await fast.post(f"{GAN}/edit", json=bad), await slow.post(f"{GAN}/edit", json=bad))
        metrics = (await fast.get("/metrics")).text
    assert fast_edit_calls == [1, 1]
    assert 'latentserve_requests_total{method="POST",route="/v1/models/{model}/edit",status="200"} 1.0' in metrics
