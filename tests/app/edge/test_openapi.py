"""app.edge.openapi: the document tailored to the deployment's models and caps."""

from __future__ import annotations

from app.edge.openapi import tailor
from app.server.settings import Settings


def doc() -> dict:
    model = {"in": "path", "name": "model", "schema": {"type": "string"}}
    return {
        "paths": {
            "/v1/models/{model}/samples.png": {"get": {"parameters": [
                model, {"in": "query", "name": "n", "schema": {"type": "integer", "maximum": 4096}}]}},
            "/v1/models/{model}/project": {"post": {"operationId": "project_v1_models__model__project_post", "parameters": [
                dict(model), {"in": "query", "name": "steps", "schema": {"type": "integer", "maximum": 100000}}]}},
        },
        "components": {"schemas": {
            "SampleRequest": {"properties": {"n": {"maximum": 4096}}},
            "DecodeRequest": {"properties": {"latents": {"maxItems": 4096}}},
            "InterpolateRequest": {"properties": {"steps": {"maximum": 1024}}},
            "TraverseRequest": {"properties": {"steps": {"maximum": 4096}}},
        }},
    }


def test_caps_and_model_names_replace_the_outer_limits():
    settings = Settings(max_images_per_request=12, max_interpolation_steps=9, projection_max_steps=77)
    out = tailor(doc(), settings, ["b-model", "a-model"])
    png = out["paths"]["/v1/models/{model}/samples.png"]["get"]["parameters"]
    assert png[0]["schema"]["enum"] == ["a-model", "b-model"] and png[1]["schema"]["maximum"] == 12
    project = out["paths"]["/v1/models/{model}/project"]["post"]["parameters"]
    assert project[1]["schema"]["maximum"] == 77
    schemas = out["components"]["schemas"]
    assert schemas["SampleRequest"]["properties"]["n"]["maximum"] == 12
    assert schemas["DecodeRequest"]["properties"]["latents"]["maxItems"] == 12
    assert schemas["InterpolateRequest"]["properties"]["steps"]["maximum"] == 9
    assert schemas["TraverseRequest"]["properties"]["steps"]["maximum"] == 12


def test_no_models_yet_leaves_the_path_parameter_open():
    out = tailor(doc(), Settings(), [])
    param = out["paths"]["/v1/models/{model}/samples.png"]["get"]["parameters"][0]
    assert "enum" not in param["schema"]
