"""Edge cases a review found (2026-11-30): each was a 500, a wrong metric, a stalled answer or a
path served that does not exist. The test of each fix failed before it; two more
(``test_fast_path_serves_under_a_root_path``, ``test_an_unreadable_body_does_not_stop_the_answer``)
guard what the fixes had to keep."""

from __future__ import annotations

import asyncio
import io
import threading

import httpx
import pytest
from PIL import Image

from app.engine import imaging
from tests.conftest import GAN_LATENT

GAN, VAE = "/v1/models/tiny-gan", "/v1/models/tiny-vae"


def assert_error(r, status: int, code: str) -> dict:
    assert r.status_code == status, r.text
    assert r.json()["error"]["code"] == code
    return r.json()["error"]


def png_of(w: int, h: int) -> bytes:
    buf = io.BytesIO()
    Image.new("L", (w, h), 128).save(buf, format="PNG")
    return buf.getvalue()


def requests_total(text: str, **labels: str) -> float:
    """The value of latentserve_requests_total with exactly these labels (0 when absent)."""
    want = ",".join(f'{k}="{v}"' for k, v in labels.items())
    for line in text.splitlines():
        if line.startswith(f"latentserve_requests_total{{{want}}} "):
            return float(line.rsplit(" ", 1)[1])
    return 0.0


async def raw_call(app, method: str, path: str, content_type: bytes, chunks: list[bytes], disconnect: bool) -> list[dict]:
    """A raw ASGI call: the body in ``chunks`` (more to come after the last when ``disconnect``),
    then the client hangs up (or waits forever). Returns what the app sent."""
    messages = [{"type": "http.request", "body": c, "more_body": True} for c in chunks]
    if disconnect:
        messages.append({"type": "http.disconnect"})
    else:
        messages[-1]["more_body"] = False
    sent: list[dict] = []

    async def receive():
        if messages:
            return messages.pop(0)
        await asyncio.Event().wait()

    async def send(message):
        sent.append(message)

    scope = {"type": "http", "asgi": {"version": "3.0"}, "http_version": "1.1", "method": method, "scheme": "http",
             "path": path, "raw_path": path.encode(), "query_string": b"label=1" if "encode" in path else b"",
             "root_path": "", "headers": [(b"content-type", content_type), (b"host", b"test")],
             "client": ("127.0.0.1", 1), "server": ("test", 80)}
    await asyncio.wait_for(app(scope, receive, send), 10)
    return sent


async def test_interpolation_that_overflows_float32_is_a_422(client):
    """Both ends are finite, but b - a is not: the frames' latents were inf/NaN, and JSON output
    (latents included) raised in json.dumps: a 500."""
    start, end = [3e38] * GAN_LATENT, [-3e38] * GAN_LATENT
    for fmt in ("json", "png"):
        body = {"start": {"latent": start}, "end": {"latent": end}, "steps": 4, "method": "lerp", "format": fmt}
        err = assert_error(await client.post(f"{GAN}/interpolate", json=body), 422, "invalid_request")
        assert "overflow" in err["message"]
    ok = {"start": {"latent": [1e38] * GAN_LATENT}, "end": {"latent": [-1e38] * GAN_LATENT}, "steps": 4,
          "method": "lerp", "format": "json"}
    assert (await client.post(f"{GAN}/interpolate", json=ok)).status_code == 200


@pytest.mark.parametrize("path, ctype, route", [
    (f"{GAN}/samples", b"application/json", "/v1/models/{model}/samples"),  # the raw ASGI fast path
    (f"{VAE}/encode", b"image/png", "/v1/models/{model}/encode"),  # request.body() raised ClientDisconnect: a 500
    # FastAPI's body parsing turned the disconnect into a 400 "error parsing the body" (second review)
    (f"{GAN}/decode", b"application/json", "/v1/models/{model}/decode"),
    (f"{GAN}/interpolate", b"application/json", "/v1/models/{model}/interpolate"),
])
async def test_a_body_abandoned_half_way_counts_as_client_closed(app_client, path, ctype, route):
    app, client = app_client
    sent = await raw_call(app, "POST", path, ctype, [b'{"n":' if b"json" in ctype else b"\x89PNG"], disconnect=True)
    assert [m["status"] for m in sent if m["type"] == "http.response.start"] in ([], [499])
    text = (await client.get("/metrics")).text
    assert requests_total(text, method="POST", route=route, status="499") == 1.0
    assert "status=\"500\"" not in text and "status=\"400\"" not in text
    assert (await client.post(f"{GAN}/samples", json={"seed": 1})).status_code == 200  # and it goes on


async def test_the_images_of_one_upload_share_the_pixel_budget(app_factory):
    """MAX_UPLOAD_PIXELS bounded each image only: a 2 MB multipart body of small PNGs declaring
    4096x4096 each took ~15 s of decoding."""
    async with app_factory(max_upload_pixels=3000) as (_, client):
        one = png_of(50, 50)  # 2,500 pixels: within the budget alone
        r = await client.post(f"{VAE}/encode", params={"label": 1}, content=one, headers={"content-type": "image/png"})
        assert r.status_code == 200, r.text
        files = [("file", ("a.png", one, "image/png")), ("file", ("b.png", one, "image/png"))]
        err = assert_error(await client.post(f"{VAE}/encode", params={"label": 1}, files=files), 413, "payload_too_large")
        assert "2 images of 5000 pixels" in err["message"] and "LATENTSERVE_MAX_UPLOAD_PIXELS" in err["message"]
        small = [("file", ("a.png", png_of(28, 28), "image/png"))] * 3
        assert (await client.post(f"{VAE}/encode", params={"label": 1}, files=small)).status_code == 200


async def test_uploads_are_decoded_outside_the_png_pool(app_client, monkeypatch):
    """A large upload held one of the PNG threads that other clients' grids and JSON answers need."""
    _, client = app_client
    threads: list[str] = []
    original = imaging.decode_upload

    def recording(*args, **kwargs):
        threads.append(threading.current_thread().name)
        return original(*args, **kwargs)

    monkeypatch.setattr(imaging, "decode_upload", recording)
    r = await client.post(f"{VAE}/encode", params={"label": 1}, content=png_of(28, 28), headers={"content-type": "image/png"})
    assert r.status_code == 200
    assert len(threads) == 1 and threads[0].startswith("upload")


def test_declared_pixels_reads_headers_only():
    assert imaging.declared_pixels(png_of(30, 20)) == 600
    assert imaging.declared_pixels(b"not an image") == 0
    assert imaging.declared_pixels(b"") == 0


async def test_head_requests_are_counted_under_their_route(client):
    """HEAD went down as a copy of the scope, so the router's match never reached the metrics:
    every HEAD was route="unmatched"."""
    assert (await client.head("/healthz")).status_code == 200
    assert (await client.head(f"{GAN}/samples.png?seed=3")).status_code == 200
    text = (await client.get("/metrics")).text
    assert requests_total(text, method="HEAD", route="/healthz", status="200") == 1.0
    assert requests_total(text, method="HEAD", route="/v1/models/{model}/samples.png", status="200") == 1.0
    assert requests_total(text, method="HEAD", route="unmatched", status="200") == 0.0


async def test_documentation_routes_are_counted_under_their_paths(client):
    """FastAPI's /openapi.json and /docs are plain Starlette routes, which put no route in the
    scope: they counted as route="unmatched" with status 200 (fourth review)."""
    for path in ("/openapi.json", "/docs", "/redoc"):
        assert (await client.get(path)).status_code == 200
    assert (await client.head("/openapi.json")).status_code == 200
    assert (await client.get("/no/such/path")).status_code == 404
    text = (await client.get("/metrics")).text
    for path in ("/openapi.json", "/docs", "/redoc"):
        assert requests_total(text, method="GET", route=path, status="200") == 1.0
    assert requests_total(text, method="HEAD", route="/openapi.json", status="200") == 1.0
    assert requests_total(text, method="GET", route="unmatched", status="200") == 0.0
    assert requests_total(text, method="GET", route="unmatched", status="404") == 1.0


async def test_fast_path_and_shedding_match_whole_paths(app_client):
    """The fast path's pattern was anchored only at its end: /junk/v1/models/.../samples was a 200."""
    app, client = app_client
    assert_error(await client.post(f"/junk{GAN}/samples", json={"seed": 1}), 404, "not_found")
    batcher = app.state.service.generators["tiny-gan"]
    batcher.saturated = lambda: True  # its queue is full: the shedding middleware answers 429
    try:
        assert_error(await client.post(f"{GAN}/samples", json={"seed": 1}), 429, "queue_full")
        assert_error(await client.post(f"/junk{GAN}/samples", json={"seed": 1}), 404, "not_found")
    finally:
        del batcher.saturated


async def test_fast_path_serves_under_a_root_path(app_factory, fast_path_calls):
    calls = fast_path_calls
    async with app_factory(root_path="/gen") as (app, _):
        transport = httpx.ASGITransport(app=app, root_path="/gen")
        async with httpx.AsyncClient(transport=transport, base_url="http://test") as client:
            r = await client.post(f"/gen{GAN}/samples", json={"seed": 1})
            assert r.status_code == 200 and r.headers["content-type"] == "image/png"
    assert calls == [1]


async def test_a_receive_that_raises_ends_the_disconnect_watcher_quietly(monkeypatch):
    """A GET with a body over the limit: the watcher's receive() raises the body limit's 413.
    The watcher task died with that exception, which nobody retrieved (asyncio logs it as
    "Task exception was never retrieved" when the task is collected)."""
    from starlette.exceptions import HTTPException

    from app.edge.routes import generation

    watchers: list[asyncio.Future] = []
    original = asyncio.ensure_future

    def recording(coro, **kw):
        task = original(coro, **kw)
        watchers.append(task)
        return task

    async def over_the_limit():
        raise HTTPException(413, "request body exceeds the limit")

    async def work():
        await asyncio.sleep(0.05)
        return "answer"

    monkeypatch.setattr(asyncio, "ensure_future", recording)
    assert await generation.unless_disconnected(over_the_limit, work()) == "answer"
    await asyncio.sleep(0)
    assert len(watchers) == 1 and watchers[0].done()
    assert watchers[0].cancelled() or watchers[0].exception() is None


async def test_an_unreadable_body_does_not_stop_the_answer(app_factory):
    async with app_factory(max_body_bytes=1024) as (app, _):
        sent = await raw_call(app, "GET", f"{GAN}/samples.png", b"application/json", [b"x" * 800, b"x" * 800],
                              disconnect=False)
        assert [m["status"] for m in sent if m["type"] == "http.response.start"] == [200]


async def test_warm_up_that_ends_during_a_shutdown_leaves_the_ready_gauge_at_0(app_factory, warm_up_gate):
    gate = warm_up_gate
    async with app_factory(wait_ready=False) as (app, client):
        app.state.lifecycle.stopping = True  # what the server's signal handler sets
        gate.set()
        for _ in range(500):
            if app.state.lifecycle.ready:
                break
            await asyncio.sleep(0.01)
        assert app.state.lifecycle.ready
        text = (await client.get("/metrics")).text
        assert "latentserve_ready 0.0" in text
        assert (await client.get("/readyz")).json()["status"] == "draining"


async def test_seeds_past_2_to_the_32_are_reported_wrapped(client):
    """Image i's latent comes from seed (s + i) mod 2**32; JSON reported s + i unwrapped, a seed
    the API refuses (422) when sent back."""
    r = await client.post(f"{GAN}/samples", json={"n": 2, "seed": 2**32 - 1, "format": "json"})
    assert r.status_code == 200
    images = r.json()["images"]
    assert [im["seed"] for im in images] == [2**32 - 1, 0]
    again = (await client.post(f"{GAN}/samples", json={"seed": 0, "format": "json"})).json()["images"][0]
    assert again["png_base64"] == images[1]["png_base64"]


async def test_openapi_has_a_decode_example_for_each_latent_size(client):
    spec = (await client.get("/openapi.json")).json()
    examples = spec["paths"]["/v1/models/{model}/decode"]["post"]["requestBody"]["content"]["application/json"]["examples"]
    assert {name: len(ex["value"]["latents"][0]) for name, ex in examples.items()} == {"fashion-vae": 16, "fashion-vae-2d": 2, "fashion-gan": 64}


# A second review (2026-11-30, later): a body that makes errors by the hundred thousand, and a
# saturated model's answer during a drain.

def _many(prefix: str, item: str, suffix: str, size: int = 400_000) -> bytes:
    return (prefix + ",".join([item] * (size // (len(item) + 1))) + suffix).encode()


@pytest.mark.parametrize("path, body", [
    (f"{GAN}/samples", _many('{"labels":[', "true", "]}")),  # was 2 errors per label: 160,000
    (f"{GAN}/decode", _many('{"latents":[', "[" + ",".join(['"a"'] * 1000) + "]", "]}")),  # one per value
    (f"{GAN}/decode", _many('{"latents":[[0]],"labels":[', "true", "]}")),
    (f"{GAN}/samples", ("{" + ",".join(f'"k{i}":0' for i in range(30_000)) + "}").encode()),  # unknown fields
    (f"{GAN}/interpolate", ('{"end":{"seed":1},"start":{' + ",".join(f'"k{i}":0' for i in range(30_000)) + "}}").encode()),
])
async def test_a_body_of_many_bad_items_gets_a_few_errors(client, path, body):
    """A 1 MB body of wrong-typed items made one validation error per item (400,000 for labels),
    and building and sending them held the event loop for 2-6 s and sent a 19-41 MB answer. Lists
    now stop at their first bad item, and many unknown fields are one error."""
    r = await client.post(path, content=body, headers={"content-type": "application/json"})
    err = assert_error(r, 422, "invalid_request")
    assert 1 <= len(err["details"]) <= 8 and len(r.content) < 4000, (len(err["details"]), len(r.content))


def test_lists_stop_at_their_first_bad_item_and_unknown_fields_are_counted():
    from pydantic import ValidationError

    from app.edge.schemas import MAX_UNKNOWN_FIELDS, DecodeRequest, SampleRequest

    with pytest.raises(ValidationError) as e:
        SampleRequest.model_validate_json('{"labels": [1, true, true, null]}')
    in_list = [x["loc"][2:] for x in e.value.errors() if x["loc"][1].startswith("list")]
    assert in_list == [(1, "int"), (1, "str")]  # the first bad label's two tries (index or name), then no more
    with pytest.raises(ValidationError) as e:
        DecodeRequest.model_validate_json('{"latents": [[0, "a", "b"], [true]]}')
    assert [x["loc"] for x in e.value.errors()] == [("latents", 0, 1)]
    few = {f"k{i}": 0 for i in range(MAX_UNKNOWN_FIELDS)}  # a few unknown fields: one error each, as before
    with pytest.raises(ValidationError) as e:
        SampleRequest.model_validate({"n": 1, **few})
    assert {x["type"] for x in e.value.errors()} == {"extra_forbidden"} and e.value.error_count() == MAX_UNKNOWN_FIELDS
    one_more = {f"k{i}": 0 for i in range(MAX_UNKNOWN_FIELDS + 1)}  # counted alone, known fields aside
    for known in ({}, {"n": 2}, {"n": 2, "seed": 1, "scale": 2}):
        with pytest.raises(ValidationError) as e:
            SampleRequest.model_validate({**known, **one_more})
        assert e.value.error_count() == 1 and f"{MAX_UNKNOWN_FIELDS + 1} unknown fields" in e.value.errors()[0]["msg"]
    many = {f"k{i}": 0 for i in range(MAX_UNKNOWN_FIELDS + 9)}
    with pytest.raises(ValidationError) as e:
        SampleRequest.model_validate({"n": 1, "seed": 2, **many})
    (only,) = e.value.errors()
    assert only["type"] == "value_error" and f"{MAX_UNKNOWN_FIELDS + 9} unknown fields ('k0', 'k1'" in only["msg"]
    assert SampleRequest.model_validate_json('{"n": 2, "labels": [1, "Bag"]}').labels == [1, "Bag"]


async def test_a_saturated_model_answers_503_and_close_while_draining(app_client):
    """The load shedder answered 429 "retry after 1 s" during a drain: a gateway does not retry
    a 429 elsewhere, and the client was told to come back to a replica that is going away."""
    app, client = app_client
    batcher = app.state.service.generators["tiny-gan"]
    batcher.saturated = lambda: True
    try:
        assert_error(await client.post(f"{GAN}/samples", json={"seed": 1}), 429, "queue_full")
        app.state.lifecycle.stopping = app.state.lifecycle.draining = True  # what a SIGTERM sets (app.server.serving)
        for r in (await client.post(f"{GAN}/samples", json={"seed": 1}),
                  await client.get(f"{GAN}/samples.png", params={"seed": 1})):
            assert_error(r, 503, "not_ready")
            assert r.headers["connection"] == "close" and "retry-after" not in r.headers
    finally:
        app.state.lifecycle.stopping = app.state.lifecycle.draining = False
        del batcher.saturated


async def test_a_repeated_query_label_is_refused(client):
    """?label=Bag&label=Coat took the last label for every image, silently, where the client may
    have meant one per image (README contract check)."""
    err = assert_error(await client.get(f"{GAN}/samples.png", params=[("n", 2), ("seed", 1), ("label", 8), ("label", 4)]),
                       422, "invalid_request")
    assert "label given 2 times" in err["message"]
    r = await client.get(f"{GAN}/samples.png", params={"n": 2, "seed": 1, "label": 4})
    assert r.status_code == 200 and r.headers["x-labels"] == "4,4"
    png = png_of(28, 28)
    err = assert_error(await client.post(f"{VAE}/encode", params=[("label", 1), ("label", 2)], content=png,
                                         headers={"content-type": "image/png"}), 422, "invalid_request")
    assert "label given 2 times" in err["message"]


async def test_encode_refuses_labels_both_in_the_query_and_the_form(client):
    """The query's label silently won over the form's (README contract check)."""
    png = png_of(28, 28)
    err = assert_error(await client.post(f"{VAE}/encode", params={"label": 4}, files={"file": ("a.png", png, "image/png")},
                                         data={"label": "Bag"}), 422, "invalid_request")
    assert "both" in err["message"]
    for params, data in (({"label": 4}, {}), ({}, {"label": "4"})):
        r = await client.post(f"{VAE}/encode", params=params, files={"file": ("a.png", png, "image/png")}, data=data)
        assert r.status_code == 200 and r.json()["latents"][0]["label"] == 4
