"""app.edge.paths names only paths the app serves, and its patterns match what they should."""

from __future__ import annotations

import re

from app.edge import paths
from app.server.factory import create_app
from app.server.settings import Settings


def served(tiny_weights) -> set[str]:
    """Every path the app routes, its included routers' too (FastAPI keeps those on each router)."""
    app = create_app(Settings(weights_dir=tiny_weights))
    found = set()
    for route in app.router.routes:
        inner = getattr(route, "original_router", None)
        found.update(r.path for r in (inner.routes if inner is not None else [route]) if getattr(r, "path", None))
    return found


def test_every_named_path_is_a_route(tiny_weights):
    routes = served(tiny_weights)
    assert set(paths.FAST_TEMPLATES.values()) <= routes
    assert set(paths.OPENAI_PATHS) <= routes
    assert (paths.OPEN_PATHS | {paths.METRICS_PATH}) <= routes
    assert any(r.startswith(paths.OPEN_PREFIXES) for r in routes)
    model_routes = {r.removeprefix(paths.MODEL_TEMPLATE) for r in routes if r.startswith(paths.MODEL_TEMPLATE)}
    shed = set(re.search(r"\((samples\|.*)\)", paths.SHED_RE.pattern).group(1).replace("\\", "").split("|"))
    assert shed <= model_routes and paths.ENCODER_OPERATIONS <= shed
    # every model operation that queues work is shed; the rest (directions, project) are cheap or bounded apart
    assert model_routes - shed == {"directions", "project"}


def test_the_patterns():
    assert paths.FAST_RE.fullmatch("/v1/models/m/samples").groups() == ("m", "samples", None)
    assert paths.FAST_RE.fullmatch("/v1/images/generations").groups() == (None, None, "generations")
    assert paths.FAST_RE.fullmatch("/v1/models/m/samples.png") is None
    assert paths.SHED_RE.fullmatch("/v1/models/m/map.png").groups() == ("m", "map.png")
    assert paths.SHED_RE.fullmatch("/v1/models/m/directions") is None


def test_every_upload_route_is_named_and_nothing_else(tiny_weights):
    """UPLOAD_RE (the upload body limit) matches exactly the routes that read an image body."""
    routes = served(tiny_weights)
    uploads = {r for r in routes if paths.UPLOAD_RE.fullmatch(r.replace("{model}", "m"))}
    assert uploads == {"/v1/models/{model}/encode", "/v1/models/{model}/variations", "/v1/models/{model}/project",
                       "/v1/images/variations"}


async def test_an_upload_between_the_two_limits_is_taken_by_every_upload_route(app_factory):
    """An image body larger than MAX_BODY_BYTES but within MAX_UPLOAD_BYTES reaches every upload
    route (variations and project took the JSON limit and answered 413); a JSON body that large
    is still refused."""
    import io

    from PIL import Image

    rng = __import__("numpy").random.default_rng(0)
    buf = io.BytesIO()
    Image.fromarray(rng.integers(0, 256, (700, 700), dtype="uint8")).save(buf, format="PNG", compress_level=0)
    png = buf.getvalue()
    assert 4096 < len(png) < 1024 * 1024
    async with app_factory(max_body_bytes=4096, max_upload_pixels=1_000_000) as (_, client):
        for path in ("/v1/models/tiny-vae/encode?label=0", "/v1/models/tiny-vae/variations?label=0&n=1",
                     "/v1/models/tiny-gan/project?label=0&steps=1"):
            r = await client.post(path, content=png, headers={"content-type": "image/png"})
            assert r.status_code == 200, (path, r.status_code, r.text[:200])
        r = await client.post("/v1/models/tiny-gan/samples", content=b'{"n": 1, "pad": "' + b"x" * 5000 + b'"}',
                              headers={"content-type": "application/json"})
        assert r.status_code == 413 and "LATENTSERVE_MAX_BODY_BYTES" in r.json()["error"]["message"]
