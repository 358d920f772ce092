"""The OpenAI images API shape, with the official ``openai`` package as the client (its async
client over httpx's ASGI transport, in process, on the tiny models)."""

from __future__ import annotations

import base64
import contextlib
import io

import httpx
import openai
import pytest
from PIL import Image

from app.edge.openai import class_in_prompt, scale_for
from app.server.settings import Settings
from tests.conftest import count_fast_path_calls, running_app

CLASSES = ["T-shirt/top", "Trouser", "Pullover", "Dress", "Coat", "Sandal", "Shirt", "Sneaker", "Bag", "Ankle boot"]


@contextlib.asynccontextmanager
async def openai_client(tiny_weights, api_key: str = "unused", **overrides):
    settings = Settings(weights_dir=tiny_weights, max_wait_ms=0, max_queue_wait_s=0, **overrides)
    async with running_app(settings) as (app, _):
        http = httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://test")
        client = openai.AsyncOpenAI(base_url="http://test/v1", api_key=api_key, http_client=http, max_retries=0)
        try:
            yield client, http
        finally:
            await http.aclose()


def png_size(data: bytes) -> tuple[int, int]:
    img = Image.open(io.BytesIO(data))
    assert img.format == "PNG"
    return img.size


def test_prompts_name_classes_and_sizes_map_to_upscales():
    assert class_in_prompt("a red sneaker", CLASSES) == 7
    assert class_in_prompt("A DRESS with dots", CLASSES) == 3
    assert class_in_prompt("ankle boots in the snow", CLASSES) == 9
    assert class_in_prompt("a t-shirt, not a shirt", CLASSES) == 0
    assert class_in_prompt("a jacket", CLASSES) == 4
    assert class_in_prompt("bagpipes and topology", CLASSES) is None  # whole words only
    assert class_in_prompt("a cat", CLASSES) is None
    assert scale_for("28x28") == (1, None) and scale_for("224x224") == (8, None)
    assert scale_for("1024x1024")[0] == 8 and "224x224" in scale_for("1024x1024")[1]
    assert scale_for(None)[0] == 8 and scale_for("auto")[0] == 1
    with pytest.raises(ValueError):
        scale_for("100x100")


async def test_generations_b64_json_are_the_seeded_samples(tiny_weights, monkeypatch):
    calls = count_fast_path_calls(monkeypatch, "generate_images")
    async with openai_client(tiny_weights) as (client, http):
        raw = await client.images.with_raw_response.generate(prompt="a red sneaker", model="tiny-gan", n=2, size="56x56",
                                                             response_format="b64_json")
        result = raw.parse()
        seed = int(raw.headers["x-seed"])
        assert len(result.data) == 2 and result.created > 0
        for i, item in enumerate(result.data):
            png = base64.b64decode(item.b64_json)
            assert png_size(png) == (56, 56)
            assert "Sneaker (class 7)" in item.revised_prompt and f"seed {seed + i}" in item.revised_prompt
            same = await http.get(f"/v1/models/tiny-gan/samples.png?seed={seed + i}&label=7&scale=2")
            assert same.content == png
    assert calls == [1]  # served by the fast path


async def test_generations_url_answers_immutable_sample_urls(tiny_weights):
    async with openai_client(tiny_weights) as (client, http):
        raw = await client.images.with_raw_response.generate(prompt="something nice", n=3, size="1024x1024")
        result = raw.parse()
        seed = int(raw.headers["x-seed"])
        labels = [int(v) for v in raw.headers["x-labels"].split(",")]
        assert raw.headers["x-model"] == "tiny-gan"  # the first GAN by default
        for i, item in enumerate(result.data):
            assert item.url == f"http://test/v1/models/tiny-gan/samples.png?seed={seed + i}&label={labels[i]}&scale=8"
            assert "names no class" in item.revised_prompt and "answered with 224x224" in item.revised_prompt
            r = await http.get(item.url)
            assert r.status_code == 200 and png_size(r.content) == (224, 224)
            assert r.headers["cache-control"] == "public, max-age=31536000, immutable"


async def test_openai_errors_have_openai_shape_and_our_statuses(tiny_weights):
    async with openai_client(tiny_weights) as (client, http):
        with pytest.raises(openai.UnprocessableEntityError) as bad:
            await client.images.generate(prompt="a bag", model="tiny-gan", size="100x100")
        err = bad.value.response.json()["error"]
        assert set(err) == {"message", "type", "param", "code"}
        assert err["type"] == "invalid_request_error" and err["param"] == "size" and "100x100" in err["message"]
        with pytest.raises(openai.NotFoundError) as missing:
            await client.images.generate(prompt="a bag", model="dall-e-3")
        err = missing.value.response.json()["error"]
        assert err["code"] == "model_not_found" and err["param"] == "model" and err["type"] == "invalid_request_error"
        r = await http.post("/v1/images/generations", json={"prompt": "a bag", "n": 0})
        assert r.status_code == 422 and r.json()["error"]["param"] == "n"
        assert set(r.json()["error"]) == {"message", "type", "param", "code"}
        r = await http.post("/v1/images/generations", json={"prompt": "a bag", "n": 65})  # over MAX_IMAGES_PER_REQUEST
        assert r.status_code == 422 and r.json()["error"]["type"] == "invalid_request_error"
        # the rest of the API keeps its own shape
        r = await http.get("/v1/models/nope")
        assert r.status_code == 404 and set(r.json()["error"]) == {"code", "message"}


async def test_variations_with_the_official_client(tiny_weights):
    async with openai_client(tiny_weights) as (client, http):
        coat = (await http.get("/v1/models/tiny-vae/samples.png?seed=3&label=4")).content
        result = await client.images.create_variation(image=("coat.png", coat, "image/png"), model="tiny-vae", n=3,
                                                      size="28x28", response_format="b64_json")
        assert len(result.data) == 3
        pngs = [base64.b64decode(d.b64_json) for d in result.data]
        assert all(png_size(p) == (28, 28) for p in pngs) and len(set(pngs)) == 3
        assert "variation of the upload as" in result.data[0].revised_prompt
        as_url = await client.images.create_variation(image=("coat.png", coat, "image/png"), model="tiny-vae", n=1)
        assert as_url.data[0].url.startswith("data:image/png;base64,")
        with pytest.raises(openai.UnprocessableEntityError) as gan:
            await client.images.create_variation(image=("coat.png", coat, "image/png"), model="tiny-gan")
        assert gan.value.response.json()["error"]["param"] == "model"
        with pytest.raises(openai.APIStatusError) as not_image:
            await client.images.create_variation(image=("x.png", b"not an image", "image/png"), model="tiny-vae")
        assert not_image.value.status_code == 415
        assert not_image.value.response.json()["error"]["type"] == "invalid_request_error"


async def test_api_keys_authenticate_the_clients_bearer_header(tiny_weights):
    async with openai_client(tiny_weights, api_key="sesame", api_keys=["sesame"]) as (client, _):
        result = await client.images.generate(prompt="a coat", model="tiny-gan", response_format="b64_json")
        assert len(result.data) == 1
    async with openai_client(tiny_weights, api_key="wrong", api_keys=["sesame"]) as (client, _):
        with pytest.raises(openai.AuthenticationError) as denied:
            await client.images.generate(prompt="a coat", model="tiny-gan")
        err = denied.value.response.json()["error"]
        assert err["type"] == "authentication_error" and err["code"] == "unauthorized"
