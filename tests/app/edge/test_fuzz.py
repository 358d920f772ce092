"""Schemathesis against the service's own OpenAPI document, in process, on the tiny models: a
small seeded run of every operation (the long run against a real server: python -m bench.fuzz)."""

from __future__ import annotations

import time

import schemathesis

from app.server.factory import create_app
from app.server.settings import Settings
from bench.fuzz import fuzz_schema

EXAMPLES = 25  # per operation and mode: ~400 cases, ~15 s here


def test_schemathesis_finds_no_failures_and_the_service_stays_ready(tiny_weights):
    app = create_app(Settings(weights_dir=tiny_weights, max_wait_ms=0, max_images_per_request=16,
                              max_interpolation_steps=16))
    schema = schemathesis.openapi.from_asgi("/openapi.json", app)  # starts the lifespan once
    deadline = time.monotonic() + 60
    while not app.state.lifecycle.ready and time.monotonic() < deadline:
        time.sleep(0.02)
    assert app.state.lifecycle.ready, app.state.lifecycle.fatal

    stats = fuzz_schema(schema, EXAMPLES, seed=1234)

    assert stats.failures == [], "\n\n".join(stats.failures)
    assert not [s for s in stats.statuses if s >= 500], stats.statuses
    ops = {label.rsplit(" [", 1)[0] for label in stats.per_operation}
    assert len(ops) == 19  # every operation of the document was fuzzed
    assert all(n > 0 for label, n in stats.per_operation.items() if label.endswith("[positive]"))
    assert stats.cases >= 250 and stats.statuses[200] > 0 and stats.statuses[422] > 0
    client = schemathesis.python.asgi.get_client(app)
    assert client.get("/readyz").status_code == 200
    assert client.post("/v1/models/tiny-gan/samples", json={"n": 2, "seed": 1}).status_code == 200


def test_openapi_names_the_served_models_and_the_deployment_caps(tiny_weights):
    app = create_app(Settings(weights_dir=tiny_weights, max_images_per_request=16, max_interpolation_steps=12))
    schemathesis.openapi.from_asgi("/openapi.json", app)
    doc = schemathesis.python.asgi.get_client(app).get("/openapi.json").json()
    param = next(p for p in doc["paths"]["/v1/models/{model}/samples"]["post"]["parameters"] if p["name"] == "model")
    assert param["schema"]["enum"] == ["tiny-gan", "tiny-vae"]
    png_n = next(p for p in doc["paths"]["/v1/models/{model}/samples.png"]["get"]["parameters"] if p["name"] == "n")
    assert png_n["schema"]["maximum"] == 16
    schemas = doc["components"]["schemas"]
    assert schemas["SampleRequest"]["properties"]["n"]["maximum"] == 16
    assert schemas["DecodeRequest"]["properties"]["latents"]["maxItems"] == 16
    assert schemas["InterpolateRequest"]["properties"]["steps"]["maximum"] == 12
    # exactly one of seed or latent, in the document itself
    start = schemas["InterpolateRequest"]["properties"]["start"]["anyOf"]
    assert [schemas[r["$ref"].rsplit("/", 1)[1]]["required"] for r in start] == [["seed"], ["latent"]]
