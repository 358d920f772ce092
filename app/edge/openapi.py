"""The OpenAPI document, tailored to this deployment: the ``{model}`` path parameter lists the
models this replica serves, and the request caps set by ``LATENTSERVE_*`` settings replace the
hard outer limits of the request models. Clients (and schema-driven fuzzers) then see the rules
the server applies, not looser ones."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from app.server.settings import Settings


def tailor(schema: dict[str, Any], settings: Settings, model_names: list[str]) -> dict[str, Any]:
    images, steps = settings.max_images_per_request, settings.max_interpolation_steps
    for ops in schema.get("paths", {}).values():
        for op in ops.values():
            for param in op.get("parameters", []):
                if param["in"] == "path" and param["name"] == "model" and model_names:
                    param["schema"] = {**param["schema"], "enum": sorted(model_names)}
                elif param["in"] == "query" and param["name"] == "n":
                    param["schema"]["maximum"] = images
                elif param["in"] == "query" and param["name"] == "steps" and "project" in op.get("operationId", ""):
                    param["schema"]["maximum"] = settings.projection_max_steps
    components = schema.get("components", {}).get("schemas", {})
    caps = {("SampleRequest", "n", "maximum"): images, ("DecodeRequest", "latents", "maxItems"): images,
            ("InterpolateRequest", "steps", "maximum"): steps, ("TraverseRequest", "steps", "maximum"): images,
            ("ClassSwapRequest", "labels", "maxItems"): images}
    for (name, prop, key), value in caps.items():
        if name in components:
            components[name]["properties"][prop][key] = value
    return schema


def tailored_openapi(app: Any, settings: Settings, model_names: Callable[[], list[str]]) -> Callable[[], dict[str, Any]]:
    """A replacement for ``app.openapi``: FastAPI's document, tailored once the models are known."""
    base = app.openapi
    tailored = False  # to the served models; until they are loaded, built again on each call

    def openapi() -> dict[str, Any]:
        nonlocal tailored
        if not tailored:
            names = model_names()
            app.openapi_schema = None  # FastAPI's base() caches its document there
            app.openapi_schema = tailor(base(), settings, names)
            tailored = bool(names)
        return app.openapi_schema

    return openapi
