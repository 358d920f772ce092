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
