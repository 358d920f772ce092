"""The HTTP API through httpx's ASGI transport, with the lifespan run and tiny real models."""

from __future__ import annotations

import asyncio
import base64
import io
import threading

import numpy as np
import pytest
from PIL import Image

from app.server.logs import RequestIdFilter
from tests.conftest import GAN_LATENT, VAE_LATENT

GAN, VAE = "/v1/models/tiny-gan", "/v1/models/tiny-vae"


def pixels(png: bytes) -> np.ndarray:
    img = Image.open(io.BytesIO(png))
    assert img.format == "PNG"
    return np.asarray(img)


def assert_error(r, status: int, code: str) -> dict:
    assert r.status_code == status, r.text
    body = r.json()
    assert set(body) == {"error"} and body["error"]["code"] == code and body["error"]["message"]
    return body["error"]


# ---- models ----

async def test_list_and_get_models(client):
    r = await client.get("/v1/models")
    assert r.status_code == 200
    models = {m["name"]: m for m in r.json()["models"]}
    assert set(models) == {"tiny-gan", "tiny-vae"}
    gan = models["tiny-gan"]
    assert gan["kind"] == "gan" and gan["latent_dim"] == GAN_LATENT and gan["version"] == "1.0.0"
    assert gan["image"] == {"channels": 1, "height": 28, "width": 28}
    assert gan["classes"][7] == "Sneaker" and len(gan["classes"]) == 10
    r = await client.get("/v1/models/tiny-vae")
    assert r.status_code == 200 and r.json()["latent_dim"] == VAE_LATENT
    assert_error(await client.get("/v1/models/nope"), 404, "model_not_found")


# ---- samples ----

async def test_single_png_sample_with_headers(client):
    r = await client.post(f"{GAN}/samples", json={"seed": 7, "labels": "sneaker"})
    assert r.status_code == 200 and r.headers["content-type"] == "image/png"
    assert r.headers["x-seed"] == "7" and r.headers["x-model-version"] == "1.0.0" and r.headers["x-labels"] == "7"
    assert len(r.headers["x-request-id"]) >= 16
    px = pixels(r.content)
    assert px.shape == (28, 28) and px.dtype == np.uint8


async def test_grid_png_has_columns_and_rows(client):
    r = await client.post(f"{GAN}/samples", json={"n": 5, "seed": 1, "columns": 2})
    assert r.status_code == 200
    assert pixels(r.content).shape == (3 * 30 + 2, 2 * 30 + 2)


async def test_random_seed_is_returned_and_reproduces(client):
    r = await client.post(f"{GAN}/samples", json={})
    seed = int(r.headers["x-seed"])
    again = await client.post(f"{GAN}/samples", json={"seed": seed})
    assert again.content == r.content


async def test_json_format_with_latents_and_label_rules(client):
    r = await client.post(f"{GAN}/samples", json={"n": 3, "seed": 10, "labels": [0, "Bag", "3"], "format": "json",
                                                   "include_latents": True})
    assert r.status_code == 200
    body = r.json()
    assert body["model"] == "tiny-gan" and body["seed"] == 10
    assert [im["seed"] for im in body["images"]] == [10, 11, 12]
    assert [im["label"] for im in body["images"]] == [0, 8, 3]
    assert body["images"][1]["label_name"] == "Bag"
    assert all(len(im["latent"]) == GAN_LATENT for im in body["images"])
    assert pixels(base64.b64decode(body["images"][0]["png_base64"])).shape == (28, 28)
    plain = (await client.post(f"{GAN}/samples", json={"n": 1, "seed": 10, "format": "json"})).json()
    assert "latent" not in plain["images"][0] or plain["images"][0]["latent"] is None


async def test_image_i_equals_seed_plus_i_alone(client):
    batch = (await client.post(f"{GAN}/samples", json={"n": 6, "seed": 100, "labels": 2, "format": "json"})).json()
    for i, im in enumerate(batch["images"]):
        alone = await client.post(f"{GAN}/samples", json={"seed": 100 + i, "labels": 2})
        assert base64.b64decode(im["png_base64"]) == alone.content


async def test_bytes_identical_alone_and_inside_large_concurrent_batches(app_client):
    app, client = app_client
    alone = {s: (await client.post(f"{GAN}/samples", json={"seed": s})).content for s in range(5)}
    batcher = app.state.service.generators["tiny-gan"]
    before = batcher.batches_run
    # 60 concurrent requests, including a large one, so passes are full (64 rows) and mixed
    reqs = [client.post(f"{GAN}/samples", json={"seed": s % 5}) for s in range(40)]
    reqs.append(client.post(f"{GAN}/samples", json={"n": 64, "seed": 1000, "format": "json"}))
    reqs += [client.post(f"{GAN}/samples", json={"seed": s % 5}) for s in range(19)]
    results = await asyncio.gather(*reqs)
    assert all(r.status_code == 200 for r in results)
    for i, r in enumerate(results):
        if i != 40:
            assert r.content == alone[(i if i < 40 else i - 41) % 5]
    passes = batcher.batches_run - before
    assert passes < len(reqs), f"{passes} forward passes for {len(reqs)} requests: no batching"


async def test_concurrent_requests_share_forward_passes_per_metrics(client):
    results = await asyncio.gather(*[client.post(f"{GAN}/samples", json={"seed": s}) for s in range(32)])
    assert [r.status_code for r in results] == [200] * 32
    text = (await client.get("/metrics")).text
    count = next(float(line.split()[-1]) for line in text.splitlines()
                 if line.startswith('latentserve_batch_rows_count{model="tiny-gan"}'))
    rows = next(float(line.split()[-1]) for line in text.splitlines()
                if line.startswith('latentserve_batch_rows_sum{model="tiny-gan"}'))
    assert rows >= 32 and count < 32


@pytest.mark.parametrize("body,field", [
    ({"n": 0}, "n"), ({"n": 65}, None), ({"truncation": 0}, "truncation"), ({"truncation": 1.5}, "truncation"),
    ({"labels": "Spaceship"}, None), ({"labels": 10}, None), ({"n": 2, "labels": [1, 2, 3]}, None),
    ({"seed": -1}, "seed"), ({"format": "bmp"}, "format"), ({"colour": 1}, "colour"), ({"labels": True}, None),
])
async def test_invalid_sample_bodies_are_422(client, body, field):
    err = assert_error(await client.post(f"{GAN}/samples", json=body), 422, "invalid_request")
    if field:
        assert field in err["message"]


async def test_malformed_json_is_422(client):
    r = await client.post(f"{GAN}/samples", content=b"{nope", headers={"content-type": "application/json"})
    assert_error(r, 422, "invalid_request")


async def test_truncation_changes_images_but_stays_seeded(client):
    a = (await client.post(f"{GAN}/samples", json={"seed": 3, "truncation": 0.5, "format": "json", "include_latents": True})).json()
    b = (await client.post(f"{GAN}/samples", json={"seed": 3, "format": "json", "include_latents": True})).json()
    za, zb = np.array(a["images"][0]["latent"]), np.array(b["images"][0]["latent"])
    assert np.all(np.abs(za) <= 0.675) and not np.allclose(za, zb)
    assert np.all(np.sign(za) == np.sign(zb))


# ---- samples.png ----

async def test_samples_png_get_is_immutable_with_seed(client):
    r = await client.get(f"{GAN}/samples.png", params={"seed": 5, "label": "Bag", "n": 2, "scale": 2})
    assert r.status_code == 200 and r.headers["content-type"] == "image/png"
    assert r.headers["cache-control"] == "public, max-age=31536000, immutable"
    etag = r.headers["etag"]
    assert etag.startswith('"') and not etag.startswith("W/")
    assert pixels(r.content).shape == (2 * 32, 2 * 62)
    r304 = await client.get(f"{GAN}/samples.png", params={"seed": 5, "label": "Bag", "n": 2, "scale": 2},
                            headers={"If-None-Match": etag})
    assert r304.status_code == 304 and r304.content == b""
    other = await client.get(f"{GAN}/samples.png", params={"seed": 6, "label": "Bag", "n": 2, "scale": 2})
    assert other.headers["etag"] != etag


async def test_etag_names_the_layout_and_keeps_the_nchw_etags(app_factory):
    """Channels-last can change a pixel: its URLs get other ETags, while NCHW keeps the ETags of
    the builds before the setting (the same bytes)."""
    from app.edge.rendering import etag_of

    url = "/v1/models/tiny-gan/samples.png?seed=5"
    async with app_factory(device="cpu") as (app, client):  # the layout is a CPU setting
        nhwc = (await client.get(url)).headers["etag"]
    async with app_factory(channels_last=False, device="cpu") as (app, client):
        nchw = (await client.get(url)).headers["etag"]
        m = app.state.service.registry.get("tiny-gan")
    assert nhwc != nchw
    assert nchw == etag_of(m.name, m.version, m.sha256, 1, 5, None, 8, 1.0, 1, app.state.settings.png_compress_level)
    assert nhwc == etag_of(m.name, m.version, m.sha256, 1, 5, None, 8, 1.0, 1, app.state.settings.png_compress_level, "nhwc")


async def test_etag_names_a_half_dtype(app_factory):
    """float16/bfloat16 pixels differ from float32's by grey levels: other bytes, another ETag."""
    from app.edge.rendering import etag_of

    url = "/v1/models/tiny-gan/samples.png?seed=5"
    async with app_factory(device="cpu", dtype="bfloat16") as (app, client):
        r = await client.get(url)
        m = app.state.service.registry.get("tiny-gan")
    assert r.status_code == 200 and r.content.startswith(b"\x89PNG")
    level = app.state.settings.png_compress_level
    assert r.headers["etag"] == etag_of(m.name, m.version, m.sha256, 1, 5, None, 8, 1.0, 1, level, "nhwc", "bfloat16")


async def test_samples_png_without_seed_is_not_cached(client):
    r = await client.get(f"{GAN}/samples.png")
    assert r.status_code == 200 and r.headers["cache-control"] == "no-store" and "etag" not in r.headers
    assert int(r.headers["x-seed"]) >= 0
    assert_error(await client.get(f"{GAN}/samples.png", params={"label": "nothing"}), 422, "invalid_request")
    assert_error(await client.get(f"{GAN}/samples.png", params={"n": "many"}), 422, "invalid_request")


@pytest.mark.parametrize("label", ["\u00b2", "\u0663", "9" * 5000])
async def test_labels_that_look_like_digits_are_422(client, label):
    """str.isdigit() is true for "²" and Arabic-Indic digits, which int() refuses, and int()
    refuses 5,000 digits: each was a 500. Only ASCII digits are an index; the rest are names."""
    err = assert_error(await client.get(f"{GAN}/samples.png", params={"seed": 1, "label": label[:64]}), 422,
                       "invalid_request")
    assert "unknown label" in err["message"]
    err = assert_error(await client.post(f"{GAN}/samples", json={"seed": 1, "labels": label}), 422, "invalid_request")
    assert "unknown label" in err["message"] and len(err["message"]) < 400
    png = (await client.get(f"{VAE}/samples.png", params={"seed": 1})).content
    r = await client.post(f"{VAE}/encode", files={"file": ("a.png", png, "image/png")}, data={"label": label})
    assert_error(r, 422, "invalid_request")


async def test_invalid_samples_png_is_never_a_304(client):
    """If-None-Match is answered only for a request that would be a 200."""
    for params in ({"seed": 1, "label": "nonsense"}, {"seed": 1, "n": 4000}):
        r = await client.get(f"{GAN}/samples.png", params=params, headers={"If-None-Match": "*"})
        assert_error(r, 422, "invalid_request")
    ok = await client.get(f"{GAN}/samples.png", params={"seed": 1, "label": "Bag"}, headers={"If-None-Match": "*"})
    assert ok.status_code == 304


async def test_head_answers_every_get_route_without_a_body(client):
    for path in ("/healthz", "/readyz", "/v1/models", f"{GAN}", f"{GAN}/samples.png?seed=3"):
        get = await client.get(path)
        head = await client.head(path)
        assert head.status_code == get.status_code == 200, path
        assert head.content == b"", path
        assert head.headers["content-length"] == get.headers["content-length"], path
        assert head.headers["content-type"] == get.headers["content-type"], path
    assert (await client.head(f"{GAN}/samples.png?seed=3")).headers["etag"] == (await client.get(f"{GAN}/samples.png?seed=3")).headers["etag"]
    r = await client.head(f"{GAN}/samples")  # a POST route
    assert r.status_code == 405 and r.content == b"" and "POST" in r.headers["allow"]


@pytest.mark.parametrize("body", [
    {"seed": True}, {"n": True}, {"n": "2"}, {"seed": 1.0}, {"scale": "2"}, {"include_latents": "yes"},
    {"format": "json", "include_latents": 1},
])
async def test_json_types_are_strict(client, body):
    """A JSON boolean is not a seed and "2" is not a count: pydantic's lax mode took both."""
    assert_error(await client.post(f"{GAN}/samples", json=body), 422, "invalid_request")


# ---- decode ----

async def test_decode_reproduces_sampled_image(client):
    s = (await client.post(f"{GAN}/samples", json={"seed": 21, "labels": 4, "format": "json", "include_latents": True})).json()
    latent = s["images"][0]["latent"]
    r = await client.post(f"{GAN}/decode", json={"latents": [latent], "labels": 4})
    assert r.status_code == 200 and r.content == base64.b64decode(s["images"][0]["png_base64"])
    j = await client.post(f"{GAN}/decode", json={"latents": [latent, latent], "labels": ["Coat", 1], "format": "json"})
    assert [im["label"] for im in j.json()["images"]] == [4, 1]


@pytest.mark.parametrize("latents", [[[0.0] * (GAN_LATENT - 1)], [[1e39] * GAN_LATENT], [], [[]]])
async def test_decode_rejects_bad_latents(client, latents):
    assert_error(await client.post(f"{GAN}/decode", json={"latents": latents}), 422, "invalid_request")


async def test_decode_rejects_nan_and_infinity(client):
    for token in ("NaN", "Infinity", "-Infinity"):
        body = '{"latents": [[%s%s]]}' % (token, ", 0" * (GAN_LATENT - 1))
        r = await client.post(f"{GAN}/decode", content=body, headers={"content-type": "application/json"})
        assert_error(r, 422, "invalid_request")


# ---- encode ----

async def test_encode_raw_png_then_decode_mu(client):
    png = (await client.get(f"{VAE}/samples.png", params={"seed": 1})).content
    r = await client.post(f"{VAE}/encode", params={"label": "Dress"}, content=png, headers={"content-type": "image/png"})
    assert r.status_code == 200, r.text
    lat = r.json()["latents"]
    assert len(lat) == 1 and len(lat[0]["mu"]) == VAE_LATENT and len(lat[0]["logvar"]) == VAE_LATENT
    assert lat[0]["label"] == 3
    rec = await client.post(f"{VAE}/decode", json={"latents": [lat[0]["mu"]], "labels": 3})
    assert rec.status_code == 200 and pixels(rec.content).shape == (28, 28)


async def test_encode_multipart_several_files(client):
    png = (await client.get(f"{VAE}/samples.png", params={"seed": 2})).content
    big = Image.new("RGB", (300, 200), (255, 255, 255))
    buf = io.BytesIO()
    big.save(buf, format="JPEG")
    files = [("file", ("a.png", png, "image/png")), ("file", ("b.jpg", buf.getvalue(), "image/jpeg"))]
    r = await client.post(f"{VAE}/encode", files=files, data={"label": ["1", "Sandal"]})
    assert r.status_code == 200, r.text
    assert [x["label"] for x in r.json()["latents"]] == [1, 5]


async def test_encode_errors(app_factory):
    async with app_factory(max_upload_bytes=2048) as (_, client):
        png = (await client.get(f"{VAE}/samples.png", params={"seed": 1})).content
        assert_error(await client.post(f"{GAN}/encode", params={"label": 1}, content=png,
                                       headers={"content-type": "image/png"}), 400, "unsupported_operation")
        assert_error(await client.post(f"{VAE}/encode", params={"label": 1}, content=b"not an image",
                                       headers={"content-type": "image/png"}), 415, "unsupported_media_type")
        assert_error(await client.post(f"{VAE}/encode", params={"label": 1}, content=b"{}",
                                       headers={"content-type": "application/json"}), 415, "unsupported_media_type")
        assert_error(await client.post(f"{VAE}/encode", params={"label": 1}, content=b"\0" * 5000,
                                       headers={"content-type": "image/png"}), 413, "payload_too_large")
        assert_error(await client.post(f"{VAE}/encode", content=png, headers={"content-type": "image/png"}),
                     422, "invalid_request")
        assert_error(await client.post(f"{VAE}/encode", params={"label": 1}, content=png[: len(png) // 2],
                                       headers={"content-type": "image/png"}), 422, "invalid_request")
        # the service still serves afterwards
        assert (await client.post(f"{VAE}/encode", params={"label": 1}, content=png,
                                  headers={"content-type": "image/png"})).status_code == 200


# ---- interpolate ----

async def test_interpolate_png_gif_json(client):
    body = {"start": {"seed": 1}, "end": {"seed": 2}, "steps": 5, "label": "Shirt"}
    r = await client.post(f"{GAN}/interpolate", json=body)
    assert r.status_code == 200 and pixels(r.content).shape == (32, 5 * 30 + 2)
    g = await client.post(f"{GAN}/interpolate", json={**body, "format": "gif"})
    assert g.headers["content-type"] == "image/gif"
    gif = Image.open(io.BytesIO(g.content))
    assert gif.n_frames == 5
    j = (await client.post(f"{GAN}/interpolate", json={**body, "format": "json", "method": "lerp"})).json()
    frames = j["images"]
    assert len(frames) == 5 and all(f["label"] == 6 for f in frames)
    s1 = (await client.post(f"{GAN}/samples", json={"seed": 1, "labels": 6, "format": "json", "include_latents": True})).json()
    assert np.allclose(frames[0]["latent"], s1["images"][0]["latent"], atol=1e-6)
    assert frames[0]["png_base64"] == s1["images"][0]["png_base64"]
    mid = np.array(frames[2]["latent"])
    assert np.allclose(mid, (np.array(frames[0]["latent"]) + np.array(frames[4]["latent"])) / 2, atol=1e-5)


@pytest.mark.parametrize("body", [
    {"start": {"seed": 1, "latent": [0.0] * GAN_LATENT}, "end": {"seed": 2}},
    {"start": {}, "end": {"seed": 2}},
    {"start": {"latent": [0.0] * 3}, "end": {"seed": 2}},
    {"start": {"seed": 1}, "end": {"seed": 2}, "steps": 1},
    {"start": {"seed": 1}, "end": {"seed": 2}, "steps": 65},
    {"start": {"seed": 1}, "end": {"seed": 2}, "method": "cubic"},
])
async def test_interpolate_rejects_bad_bodies(client, body):
    assert_error(await client.post(f"{GAN}/interpolate", json=body), 422, "invalid_request")


async def test_interpolate_between_opposite_latents(client):
    """slerp has no unique path between z and -z (1/sin(pi) made latents of norm ~1e9): a 422
    that names lerp, which works."""
    z = [1.0] + [0.0] * (GAN_LATENT - 1)
    body = {"start": {"latent": z}, "end": {"latent": [-v for v in z]}, "steps": 8, "format": "json"}
    err = assert_error(await client.post(f"{GAN}/interpolate", json=body), 422, "invalid_request")
    assert "opposite directions" in err["message"] and "lerp" in err["message"]
    r = await client.post(f"{GAN}/interpolate", json={**body, "method": "lerp"})
    assert r.status_code == 200
    firsts = [f["latent"][0] for f in r.json()["images"]]
    np.testing.assert_allclose(firsts, np.linspace(1.0, -1.0, 8), atol=1e-6)


# ---- errors, overload, deadlines, disconnects, failures ----

async def test_unknown_route_and_method_have_json_errors(client):
    assert_error(await client.get("/v2/whatever"), 404, "not_found")
    assert_error(await client.delete(f"{GAN}/samples"), 405, "method_not_allowed")
    assert_error(await client.post(f"{VAE.replace('tiny-vae', 'nope')}/samples", json={}), 404, "model_not_found")


def block_forward(app, model: str = "tiny-gan") -> tuple[threading.Event, threading.Event, list[int]]:
    """Make the model's forward pass wait for ``release``; ``entered`` is set when one starts."""
    batcher = app.state.service.generators[model]
    original, release, entered, rows = batcher.run_batch, threading.Event(), threading.Event(), []

    def blocked(*inputs):
        entered.set()
        release.wait(10)
        rows.append(int(inputs[0].shape[0]))
        return original(*inputs)

    batcher.run_batch = blocked
    return release, entered, rows


async def hold_a_pass_and_queue(app, client, queued_rows: int):
    """An 8-row pass held in the forward thread and a request of ``queued_rows`` queued behind
    it (the app has MAX_QUEUE_ROWS=8). Returns (release, first, queued)."""
    release, entered, _ = block_forward(app)
    first = asyncio.ensure_future(client.post(f"{GAN}/samples", json={"n": 8, "seed": 1}))
    await asyncio.get_running_loop().run_in_executor(None, entered.wait, 5)
    queued = asyncio.ensure_future(client.post(f"{GAN}/samples", json={"n": queued_rows, "seed": 2}))
    await wait_for_queued(app.state.service.generators["tiny-gan"], queued_rows)
    return release, first, queued


async def test_queue_full_gives_429_and_service_recovers(app_factory):
    async with app_factory(max_queue_rows=8, max_batch_rows=8, max_images_per_request=8, max_interpolation_steps=8) as (app, client):
        release, first, queued = await hold_a_pass_and_queue(app, client, 6)
        r = await client.post(f"{GAN}/samples", json={"n": 3, "seed": 3})
        err = assert_error(r, 429, "queue_full")
        assert int(r.headers["retry-after"]) >= 1 and "8" in err["message"]
        release.set()
        assert (await first).status_code == 200 and (await queued).status_code == 200
        assert (await client.post(f"{GAN}/samples", json={"n": 3, "seed": 3})).status_code == 200
        metrics = (await client.get("/metrics")).text
        assert 'latentserve_rows_total{model="tiny-gan",outcome="rejected"} 3.0' in metrics


async def test_full_queue_sheds_requests_before_parsing_them(app_factory):
    async with app_factory(max_queue_rows=8, max_batch_rows=8, max_images_per_request=8, max_interpolation_steps=8) as (app, client):
        release, first, queued = await hold_a_pass_and_queue(app, client, 8)
        batcher = app.state.service.generators["tiny-gan"]
        assert batcher.saturated()
        # not even parsed: a body that would be a 422 gets the 429 of a full queue
        for r in (await client.post(f"{GAN}/samples", content=b"{not json"),
                  await client.get(f"{GAN}/samples.png", params={"seed": 1}),
                  await client.post(f"{GAN}/decode", json={"latents": [[0.0] * GAN_LATENT]})):
            err = assert_error(r, 429, "queue_full")
            assert int(r.headers["retry-after"]) >= 1 and "tiny-gan" in err["message"]
            assert r.headers["x-request-id"]
        # the other model, the encoder, probes and metrics are not affected
        assert (await client.post(f"{VAE}/samples", json={"seed": 1})).status_code == 200
        assert (await client.get("/readyz")).status_code == 200
        release.set()
        assert (await first).status_code == 200 and (await queued).status_code == 200
        assert not batcher.saturated()
        assert (await client.post(f"{GAN}/samples", json={"seed": 3})).status_code == 200
        metrics = (await client.get("/metrics")).text
        assert 'latentserve_shed_requests_total{model="tiny-gan"} 3.0' in metrics
        assert 'latentserve_requests_total{method="POST",route="/v1/models/{model}/samples",status="429"} 1.0' in metrics
        assert 'latentserve_requests_total{method="GET",route="/v1/models/{model}/samples.png",status="429"} 1.0' in metrics


async def test_deadline_gives_504_and_rows_are_not_computed(app_factory):
    async with app_factory(request_timeout_s=1.0) as (app, client):  # 1 s: the last pass is real
        release, entered, rows = block_forward(app)
        first = asyncio.ensure_future(client.post(f"{GAN}/samples", json={"n": 2, "seed": 1}))
        await asyncio.get_running_loop().run_in_executor(None, entered.wait, 5)
        late = await client.post(f"{GAN}/samples", json={"n": 5, "seed": 9})
        assert_error(late, 504, "deadline_exceeded")
        release.set()
        await first
        assert (await client.post(f"{GAN}/samples", json={"seed": 4})).status_code == 200
        assert 5 not in rows and sum(rows) == 3  # the 2-row pass and the 1-row pass only


def hanging_client(app, path: str, body: bytes, method: str = "POST",
                   query: bytes = b"") -> tuple[asyncio.Future, asyncio.Event, list[dict]]:
    """A raw ASGI call whose client sends ``body`` and hangs up when ``hang_up`` is set."""
    hang_up, sent = asyncio.Event(), []
    messages = [{"type": "http.request", "body": body, "more_body": False}]

    async def receive():
        if messages:
            return messages.pop(0)
        await hang_up.wait()
        return {"type": "http.disconnect"}

    async def send(message):
        sent.append(message)

    scope = {"type": "http", "asgi": {"version": "3.0"}, "http_version": "1.1", "method": method,
             "scheme": "http", "path": path, "raw_path": path.encode(),
             "query_string": query, "root_path": "", "headers": [(b"content-type", b"application/json"),
             (b"content-length", str(len(body)).encode()), (b"host", b"test")],
             "client": ("127.0.0.1", 1), "server": ("test", 80)}
    return asyncio.ensure_future(app(scope, receive, send)), hang_up, sent


async def wait_for_queued(batcher, rows: int) -> None:
    for _ in range(200):
        if batcher.queued_rows == rows:
            return
        await asyncio.sleep(0.01)
    assert batcher.queued_rows == rows


HANGING_16_ROWS = {  # (method, path, query, body): each asks the GAN for 16 rows
    "samples (fast path)": ("POST", f"{GAN}/samples", b"", b'{"n": 16, "seed": 5}'),
    "samples.png": ("GET", f"{GAN}/samples.png", b"n=16&seed=5", b""),
    "decode": ("POST", f"{GAN}/decode", b"", b'{"latents": [%s]}' % b", ".join([b"[%s]" % b", ".join([b"0.5"] * GAN_LATENT)] * 16)),
    "interpolate": ("POST", f"{GAN}/interpolate", b"", b'{"start": {"seed": 1}, "end": {"seed": 2}, "steps": 16}'),
}


@pytest.mark.parametrize("route", list(HANGING_16_ROWS))
async def test_disconnected_client_rows_are_dropped(app_factory, route):
    method, path, query, body = HANGING_16_ROWS[route]
    async with app_factory() as (app, client):
        release, entered, rows = block_forward(app)
        first = asyncio.ensure_future(client.post(f"{GAN}/samples", json={"n": 1, "seed": 1}))
        await asyncio.get_running_loop().run_in_executor(None, entered.wait, 5)
        batcher = app.state.service.generators["tiny-gan"]
        call, hang_up, sent = hanging_client(app, path, body, method, query)
        await wait_for_queued(batcher, 16)
        hang_up.set()
        await asyncio.wait_for(call, 5)
        assert batcher.queued_rows == 0
        release.set()
        assert (await first).status_code == 200
        assert rows == [1]  # the 16 rows never reached a forward pass
        metrics = (await client.get("/metrics")).text
        assert 'latentserve_rows_total{model="tiny-gan",outcome="cancelled"} 16.0' in metrics
        assert sent[0]["status"] == 499


async def test_disconnect_storm_computes_no_row_of_the_clients_that_left(app_factory):
    """50 clients ask for 16 images each while a pass runs, then all hang up: none of their rows
    is computed, the queue is empty, and a client that stayed is served in full."""
    async with app_factory(max_queue_rows=2048, max_images_per_request=16) as (app, client):
        release, entered, rows = block_forward(app)
        first = asyncio.ensure_future(client.post(f"{GAN}/samples", json={"n": 4, "seed": 1}))
        await asyncio.get_running_loop().run_in_executor(None, entered.wait, 5)
        batcher = app.state.service.generators["tiny-gan"]
        storm = [hanging_client(app, f"{GAN}/samples", b'{"n": 16, "seed": %d}' % i) for i in range(50)]
        stayed = asyncio.ensure_future(client.post(f"{GAN}/samples", json={"n": 3, "seed": 2}))
        await wait_for_queued(batcher, 50 * 16 + 3)
        for _, hang_up, _ in storm:
            hang_up.set()
        await asyncio.wait_for(asyncio.gather(*(call for call, _, _ in storm)), 5)
        assert batcher.queued_rows == 3  # only the client that stayed
        release.set()
        assert (await first).status_code == 200 and (await stayed).status_code == 200
        assert rows == [4, 3]  # the pass in flight, then the one that stayed: 800 rows never ran
        assert all(sent[0]["status"] == 499 for _, _, sent in storm)
        metrics = (await client.get("/metrics")).text
        assert 'latentserve_rows_total{model="tiny-gan",outcome="cancelled"} 800.0' in metrics
        assert 'latentserve_queue_rows{model="tiny-gan"} 0.0' in metrics


async def test_failed_forward_pass_fails_only_its_batch(app_factory):
    async with app_factory() as (app, client):
        batcher = app.state.service.generators["tiny-gan"]
        original, calls = batcher.run_batch, []

        def flaky(*inputs):
            calls.append(1)
            if len(calls) == 1:
                raise RuntimeError("simulated device fault /secret/path")
            return original(*inputs)

        batcher.run_batch = flaky
        err = assert_error(await client.post(f"{GAN}/samples", json={"seed": 1}), 500, "internal_error")
        assert "/secret/path" not in err["message"] and "error id" in err["message"]
        assert (await client.post(f"{GAN}/samples", json={"seed": 1})).status_code == 200


@pytest.mark.parametrize("call", ["fast path", "route"])
async def test_unexpected_error_is_a_500_with_an_error_id_only(app_factory, monkeypatch, caplog, call):
    """An exception outside the forward pass (not a service error): the client gets a 500 with an
    error id, never the exception text; the log line carries the same id and the traceback."""
    from app.engine.service import GenerationService

    async def broken(self, *args, **kwargs):
        raise RuntimeError("boom at /secret/path")

    monkeypatch.setattr(GenerationService, "sample", broken)
    caplog.handler.addFilter(RequestIdFilter())
    async with app_factory() as (app, client):
        headers = {"X-Request-ID": "req-500"}
        # the route's 500 came from Starlette's handler outside every middleware: no request id,
        # the log line without it, and the exception raised on into the server (second review)
        r = await (client.post(f"{GAN}/samples", json={"seed": 1}, headers=headers) if call == "fast path"
                   else client.get(f"{GAN}/samples.png", params={"seed": 1}, headers=headers))
        err = assert_error(r, 500, "internal_error")
        assert "/secret/path" not in r.text and "boom" not in r.text
        assert r.headers["x-request-id"] == "req-500" and "connection" not in r.headers
        error_id = err["error_id"]
        assert len(error_id) == 16 and error_id in err["message"]
        logged = [rec for rec in caplog.records if error_id in rec.getMessage()]
        assert len(logged) == 1 and "boom at /secret/path" in logged[0].getMessage() and logged[0].exc_info
        assert logged[0].request_id == "req-500"
        assert (await client.get("/readyz")).status_code == 200  # the service goes on
        app.state.lifecycle.stopping = True  # once a shutdown has begun, the 500 closes its connection too
        try:
            r = await client.get(f"{GAN}/samples.png", params={"seed": 1})
            assert r.status_code == 500 and r.headers["connection"] == "close"
        finally:
            app.state.lifecycle.stopping = False
        metrics = (await client.get("/metrics")).text
        route = "/v1/models/{model}/samples" + ("" if call == "fast path" else ".png")
        assert f'latentserve_requests_total{{method="{"POST" if call == "fast path" else "GET"}",route="{route}",status="500"}} ' \
            f'{1.0 if call == "fast path" else 2.0}' in metrics


async def test_failed_warm_up_is_fatal_and_readiness_says_failed(app_factory, monkeypatch):
    from app.engine.registry import Registry

    def broken_warm_up(self):
        raise RuntimeError("mat1 and mat2 must have the same dtype")

    monkeypatch.setattr(Registry, "warm_up", broken_warm_up)
    async with app_factory(wait_ready=False) as (app, client):
        fatal: list[bool] = []
        app.state.lifecycle.on_fatal = lambda: fatal.append(True)  # python -m app stops the server here
        for _ in range(500):
            if app.state.lifecycle.fatal:
                break
            await asyncio.sleep(0.01)
        assert app.state.lifecycle.fatal == "warm-up failed: RuntimeError('mat1 and mat2 must have the same dtype')"
        r = await client.get("/readyz")
        assert r.status_code == 503 and r.json()["status"] == "failed"
        assert (await client.get("/healthz")).status_code == 200
        assert_error(await client.post(f"{GAN}/samples", json={}), 503, "not_ready")
        assert not app.state.lifecycle.ready


async def test_readiness_is_503_until_warm_up_ends(app_factory, warm_up_gate):
    gate = warm_up_gate
    async with app_factory(wait_ready=False) as (app, client):
        r = await client.get("/readyz")
        assert r.status_code == 503 and r.json()["status"] == "starting"
        assert (await client.get("/healthz")).status_code == 200
        assert_error(await client.post(f"{GAN}/samples", json={}), 503, "not_ready")
        gate.set()
        for _ in range(500):
            if (await client.get("/readyz")).status_code == 200:
                break
            await asyncio.sleep(0.01)
        r = await client.get("/readyz")
        assert r.status_code == 200 and r.json() == {"status": "ready", "models": {"tiny-gan": "1.0.0", "tiny-vae": "1.0.0"}}


async def test_metrics_exposition(client):
    await client.post(f"{GAN}/samples", json={"n": 3, "seed": 1})
    text = (await client.get("/metrics")).text
    for name in ("latentserve_requests_total", "latentserve_request_duration_seconds_bucket", "latentserve_queue_rows",
                 "latentserve_batch_rows_bucket", "latentserve_forward_seconds_bucket", "latentserve_rows_total",
                 "latentserve_ready 1.0"):
        assert name in text
    assert 'latentserve_requests_total{method="POST",route="/v1/models/{model}/samples",status="200"} 1.0' in text


async def test_request_id_is_echoed_or_replaced(client):
    r = await client.get("/healthz", headers={"X-Request-ID": "abc-123"})
    assert r.headers["x-request-id"] == "abc-123"
    r = await client.get("/healthz", headers={"X-Request-ID": "bad\nid"})
    assert r.headers["x-request-id"] != "bad\nid" and len(r.headers["x-request-id"]) == 32


async def test_openapi_has_an_example_for_every_body(client):
    spec = (await client.get("/openapi.json")).json()
    assert (await client.get("/docs")).status_code == 200
    for path, ops in spec["paths"].items():
        for method, op in ops.items():
            body = op.get("requestBody")
            if not body:
                continue
            for ctype, content in body["content"].items():
                if ctype != "application/json":
                    continue
                ref = content["schema"]["$ref"].split("/")[-1]
                schema = spec["components"]["schemas"][ref]
                assert schema.get("examples"), f"{method.upper()} {path} has no example"


async def test_warm_up_keeps_only_batch_shapes_with_identical_rows(app_client):
    app, client = app_client
    model = app.state.service.registry.get("tiny-gan")
    shapes = model.buckets
    assert shapes[-1] == app.state.settings.max_batch_rows == 32 and shapes == sorted(shapes)
    assert all(b * 2 == a for a, b in zip(shapes[1:], shapes))  # consecutive powers of two
    import torch

    top = shapes[-1]
    z = torch.randn(top, model.latent_dim, generator=torch.Generator().manual_seed(5))
    y = torch.arange(top) % 10
    full = model.generate_rows(z, y)
    for size in shapes:  # a request padded to any kept shape gets the full batch's bytes
        assert (model.generate_rows(z[:size], y[:size]) == full[:size]).all()
    one = model.generate_rows(z[:1], y[:1])  # a lone row is padded to the smallest shape
    assert (one == full[:1]).all()
