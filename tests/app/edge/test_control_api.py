"""Latent control through the HTTP API, with tiny real models: the byte equalities the contract
promises (an edit by nothing is the sample, a traversal frame is the edit by its amount, a class
swap cell is the labelled sample, a map corner is the decode of its corner latent), the errors,
and the bounds."""

from __future__ import annotations

import io

import numpy as np
import pytest
import torch
from PIL import Image

from app.server.settings import Settings
from models.card import save_model
from models.vae import VAE, VAEConfig
from tests.conftest import GAN_LATENT, VAE_LATENT, running_app, write_tiny_models

GAN, VAE_ = "/v1/models/tiny-gan", "/v1/models/tiny-vae"


def pixels(png: bytes) -> np.ndarray:
    img = Image.open(io.BytesIO(png))
    assert img.format in ("PNG", "GIF")
    return np.asarray(img)


def cells(png: bytes, columns: int, size: int = 28, pad: int = 2) -> list[np.ndarray]:
    """The images of a grid PNG (models.images.tile: 2 px gaps and border), row-major."""
    grid = pixels(png)
    rows = (grid.shape[0] - pad) // (size + pad)
    return [grid[pad + r * (size + pad):pad + r * (size + pad) + size, pad + c * (size + pad):pad + c * (size + pad) + size]
            for r in range(rows) for c in range(columns)]


def assert_error(r, status: int, code: str) -> str:
    assert r.status_code == status, r.text
    body = r.json()
    assert body["error"]["code"] == code, body
    return body["error"]["message"]


async def test_directions_are_orthonormal_and_ordered(client):
    for path, dim in ((GAN, GAN_LATENT), (VAE_, VAE_LATENT)):
        r = await client.get(f"{path}/directions")
        assert r.status_code == 200, r.text
        body = r.json()
        assert body["method"] == "sefa" and body["latent_dim"] == dim
        d = body["directions"]
        assert [x["index"] for x in d] == list(range(dim))
        eig = [x["eigenvalue"] for x in d]
        assert eig == sorted(eig, reverse=True) and eig[0] > 0
        assert abs(sum(x["share"] for x in d) - 1.0) < 1e-6
        v = np.array([x["vector"] for x in d])
        np.testing.assert_allclose(v @ v.T, np.eye(dim), atol=1e-5)
    assert_error(await client.get("/v1/models/nope/directions"), 404, "model_not_found")


async def test_edit_by_nothing_is_the_sample_byte_for_byte(client):
    for label in ("Sneaker", None):
        query = "seed=11&truncation=0.7" + (f"&label={label}" if label else "")
        sample = await client.get(f"{GAN}/samples.png?{query}")
        body = {"seed": 11, "truncation": 0.7, "moves": [{"direction": 0, "amount": 0.0}, {"direction": 3, "amount": 0}]}
        if label:
            body["label"] = label
        edit = await client.post(f"{GAN}/edit", json=body)
        assert edit.status_code == 200 and edit.headers["content-type"] == "image/png"
        assert edit.content == sample.content
        assert edit.headers["x-seed"] == "11" and edit.headers["x-labels"] == sample.headers["x-labels"]
    # with no moves at all, on the VAE too
    sample = await client.get(f"{VAE_}/samples.png?seed=5&label=2")
    assert (await client.post(f"{VAE_}/edit", json={"seed": 5, "label": 2})).content == sample.content


async def test_edit_moves_the_latent_by_the_unit_directions(client):
    d = np.array([x["vector"] for x in (await client.get(f"{GAN}/directions")).json()["directions"]], dtype=np.float32)
    base = (await client.post(f"{GAN}/samples", json={"seed": 3, "format": "json", "include_latents": True})).json()
    z0 = np.array(base["images"][0]["latent"], dtype=np.float32)
    r = await client.post(f"{GAN}/edit", json={"seed": 3, "format": "json",
                                               "moves": [{"direction": 1, "amount": 2.5}, {"direction": 0, "amount": -1.0}]})
    assert r.status_code == 200
    item = r.json()["images"][0]
    np.testing.assert_allclose(item["latent"], z0 + 2.5 * d[1] - 1.0 * d[0], atol=1e-6)
    assert item["label"] == base["images"][0]["label"]  # drawn from the seed, as samples
    moved = pixels(__import__("base64").b64decode(item["png_base64"]))
    assert not np.array_equal(moved, pixels((await client.get(f"{GAN}/samples.png?seed=3")).content))
    # the moved latent decodes to the same bytes
    dec = await client.post(f"{GAN}/decode", json={"latents": [item["latent"]], "labels": item["label"]})
    assert np.array_equal(pixels(dec.content), moved)


async def test_traverse_frames_are_the_edits_byte_for_byte(client):
    body = {"seed": 9, "label": "Bag", "direction": 2, "extent": 3.0, "steps": 7}
    strip = await client.post(f"{GAN}/traverse", json=body)
    assert strip.status_code == 200 and strip.headers["content-type"] == "image/png"
    amounts = [float(a) for a in strip.headers["x-amounts"].split(",")]
    assert len(amounts) == 7 and amounts[0] == -3.0 and amounts[3] == 0.0 and amounts[6] == 3.0
    frames = cells(strip.content, 7)
    assert len(frames) == 7
    for i, a in enumerate(amounts):
        edit = await client.post(f"{GAN}/edit", json={"seed": 9, "label": "Bag", "moves": [{"direction": 2, "amount": a}]})
        assert np.array_equal(pixels(edit.content), frames[i]), i
    js = (await client.post(f"{GAN}/traverse", json={**body, "format": "json"})).json()
    assert js["amounts"] == amounts and js["direction"] == 2 and len(js["images"]) == 7
    gif = await client.post(f"{GAN}/traverse", json={**body, "format": "gif"})
    assert gif.status_code == 200 and gif.content[:6] == b"GIF89a"
    img = Image.open(io.BytesIO(gif.content))
    assert img.n_frames == 7


async def test_traverse_from_a_latent_and_bounds(client):
    z = [0.5] * GAN_LATENT
    r = await client.post(f"{GAN}/traverse", json={"latent": z, "direction": 0, "steps": 3, "format": "json"})
    assert r.status_code == 200 and r.json()["seed"] is None
    assert [im["label"] for im in r.json()["images"]] == [0, 0, 0]
    assert "direction 99" in assert_error(
        await client.post(f"{GAN}/traverse", json={"seed": 1, "direction": 99}), 422, "invalid_request")
    assert "direction 8" in assert_error(
        await client.post(f"{GAN}/edit", json={"seed": 1, "moves": [{"direction": GAN_LATENT, "amount": 1}]}),
        422, "invalid_request")
    assert_error(await client.post(f"{GAN}/traverse", json={"seed": 1, "steps": 65}), 422, "invalid_request")
    assert_error(await client.post(f"{GAN}/edit", json={"seed": 1, "latent": z}), 422, "invalid_request")
    assert_error(await client.post(f"{GAN}/edit", json={"latent": [1.0] * 3}), 422, "invalid_request")
    assert_error(await client.post(f"{GAN}/edit", json={"seed": 1, "moves": [{"direction": 0, "amount": "1"}]}),
                 422, "invalid_request")


async def test_edit_without_seed_or_latent_gets_a_random_seed_it_reports(client):
    r = await client.post(f"{GAN}/edit", json={"label": 1})
    assert r.status_code == 200
    seed = int(r.headers["x-seed"])
    again = await client.get(f"{GAN}/samples.png?seed={seed}&label=1")
    assert again.content == r.content


async def test_class_swap_cells_are_the_labelled_samples(client):
    r = await client.post(f"{GAN}/class-swap", json={"seed": 21, "truncation": 0.9})
    assert r.status_code == 200 and r.headers["x-labels"] == ",".join(map(str, range(10)))
    strip = cells(r.content, 10)
    for label in range(10):
        one = await client.get(f"{GAN}/samples.png?seed=21&label={label}&truncation=0.9")
        assert np.array_equal(pixels(one.content), strip[label]), label
    r = await client.post(f"{GAN}/class-swap", json={"seed": 21, "labels": ["Sandal", 0], "format": "json"})
    assert [im["label"] for im in r.json()["images"]] == [5, 0]
    assert_error(await client.post(f"{GAN}/class-swap", json={"seed": 1, "labels": ["Nope"]}), 422, "invalid_request")


async def test_variations_are_seeded_and_temperature_zero_is_the_reconstruction(client):
    coat = (await client.get(f"{VAE_}/samples.png?seed=3&label=Coat")).content
    url = f"{VAE_}/variations?label=Coat&n=4&seed=100"
    a = await client.post(url, content=coat, headers={"content-type": "image/png"})
    b = await client.post(url, files={"file": ("coat.png", coat, "image/png")})
    assert a.status_code == 200 and a.content == b.content and a.headers["x-seed"] == "100"
    js = (await client.post(url + "&format=json", content=coat, headers={"content-type": "image/png"})).json()
    assert [im["seed"] for im in js["images"]] == [100, 101, 102, 103]
    enc = (await client.post(f"{VAE_}/encode?label=Coat", content=coat, headers={"content-type": "image/png"})).json()
    mu = enc["latents"][0]["mu"]
    zero = (await client.post(f"{VAE_}/variations?label=Coat&n=2&temperature=0&format=json", content=coat,
                              headers={"content-type": "image/png"})).json()
    for im in zero["images"]:
        np.testing.assert_allclose(im["latent"], mu, atol=1e-6)
    lat = [im["latent"] for im in js["images"]]
    assert len({tuple(x) for x in lat}) == 4  # four different draws
    # the errors of /encode
    assert_error(await client.post(f"{GAN}/variations?label=1", content=coat, headers={"content-type": "image/png"}),
                 400, "unsupported_operation")
    assert_error(await client.post(f"{VAE_}/variations", content=coat, headers={"content-type": "image/png"}),
                 422, "invalid_request")
    assert_error(await client.post(f"{VAE_}/variations?label=1", content=b"not an image",
                                   headers={"content-type": "image/png"}), 415, "unsupported_media_type")
    assert_error(await client.post(f"{VAE_}/variations?label=1&n=65", content=coat,
                                   headers={"content-type": "image/png"}), 422, "invalid_request")
    assert_error(await client.post(f"{VAE_}/variations?label=1", content=b"{}",
                                   headers={"content-type": "application/json"}), 415, "unsupported_media_type")


async def test_projection_lowers_the_error_and_its_latent_reproduces_the_image(client):
    target = (await client.get(f"{GAN}/samples.png?seed=77&label=4")).content
    r = await client.post(f"{GAN}/project?label=4&steps=60&starts=2&seed=5", content=target,
                          headers={"content-type": "image/png"})
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["label"] == 4 and len(body["latent"]) == GAN_LATENT and body["steps"] == 60 and body["complete"]
    assert body["mse"] < body["start_mse"] * 0.8
    png = await client.post(f"{GAN}/project?label=4&steps=60&starts=2&seed=5&format=png", content=target,
                            headers={"content-type": "image/png"})
    assert png.status_code == 200 and png.headers["content-type"] == "image/png"
    assert float(png.headers["x-projection-mse"]) == pytest.approx(body["mse"], rel=1e-4)
    dec = await client.post(f"{GAN}/decode", json={"latents": [body["latent"]], "labels": 4})
    assert dec.content == png.content
    assert_error(await client.post(f"{VAE_}/project?label=1", content=target, headers={"content-type": "image/png"}),
                 400, "unsupported_operation")
    assert_error(await client.post(f"{GAN}/project?label=1&steps=1001", content=target,
                                   headers={"content-type": "image/png"}), 422, "invalid_request")


async def test_projection_stops_at_its_deadline(app_factory):
    async with app_factory(projection_timeout_s=0.05) as (_, client):
        target = (await client.get(f"{GAN}/samples.png?seed=1&label=0")).content
        r = await client.post(f"{GAN}/project?label=0&steps=100000&starts=1", content=target,
                              headers={"content-type": "image/png"})
        assert_error(r, 422, "invalid_request")  # over PROJECTION_MAX_STEPS
        r = await client.post(f"{GAN}/project?label=0&steps=1000&starts=16", content=target,
                              headers={"content-type": "image/png"})
        assert r.status_code == 200 and not r.json()["complete"] and r.json()["steps"] < 1000


async def test_map_of_two_directions_corner_cells_are_decodes(client):
    r = await client.get(f"{GAN}/map.png?label=2&extent=2&steps=4&directions=1,3")
    assert r.status_code == 200 and r.headers["x-map-axes"] == "1,3"
    assert r.headers["cache-control"] == "public, max-age=31536000, immutable"
    grid = cells(r.content, 4)
    assert len(grid) == 16
    d = np.array([x["vector"] for x in (await client.get(f"{GAN}/directions")).json()["directions"]], dtype=np.float32)
    for index, (u, v) in {0: (-2.0, 2.0), 3: (2.0, 2.0), 12: (-2.0, -2.0), 15: (2.0, -2.0)}.items():
        z = (np.float32(u) * d[1]) + np.float32(v) * d[3]  # from the origin: 0 + u d1, then + v d3
        dec = await client.post(f"{GAN}/decode", json={"latents": [z.tolist()], "labels": 2})
        assert np.array_equal(pixels(dec.content), grid[index]), index
    again = await client.get(f"{GAN}/map.png?label=2&extent=2&steps=4&directions=1,3",
                             headers={"if-none-match": r.headers["etag"]})
    assert again.status_code == 304
    assert_error(await client.get(f"{GAN}/map.png?steps=9"), 422, "invalid_request")  # 81 cells > 64
    assert_error(await client.get(f"{GAN}/map.png?directions=1,1"), 422, "invalid_request")
    assert_error(await client.get(f"{GAN}/map.png?directions=x"), 422, "invalid_request")
    assert_error(await client.get(f"{GAN}/map.png?directions=0,8"), 422, "invalid_request")


@pytest.fixture(scope="module")
def weights_with_2d(tmp_path_factory):
    folder = write_tiny_models(tmp_path_factory.mktemp("weights2d"))
    torch.manual_seed(1)
    save_model(VAE(VAEConfig(latent_dim=2, channels=8, hidden=32)), name="tiny-vae-2d", kind="vae", out_dir=folder)
    return folder


async def test_map_of_a_2d_latent_spans_the_latent_itself(weights_with_2d):
    settings = Settings(weights_dir=weights_with_2d, max_wait_ms=0, max_queue_wait_s=0)
    async with running_app(settings) as (_, client):
        path = "/v1/models/tiny-vae-2d"
        r = await client.get(f"{path}/map.png?label=Dress&extent=1.5&steps=5")
        assert r.status_code == 200 and r.headers["x-map-axes"] == "latent"
        grid = cells(r.content, 5)
        corners = {0: [-1.5, 1.5], 4: [1.5, 1.5], 20: [-1.5, -1.5], 24: [1.5, -1.5], 12: [0.0, 0.0]}
        for index, z in corners.items():
            dec = await client.post(f"{path}/decode", json={"latents": [z], "labels": "Dress"})
            assert np.array_equal(pixels(dec.content), grid[index]), index
        d = (await client.get(f"{path}/directions")).json()["directions"]
        assert len(d) == 2
        # /encode places an upload on that map: its mu is a point of the plane
        enc = (await client.post(f"{path}/encode?label=Dress", content=(await client.get(f"{path}/samples.png?seed=1&label=3")).content,
                                 headers={"content-type": "image/png"})).json()
        assert len(enc["latents"][0]["mu"]) == 2
