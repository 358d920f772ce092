"""The one place outside the routers that knows URL paths: which requests the raw-ASGI fast path
serves, which ones load shedding may refuse before parsing (and on which queue), which paths stay
open with API keys on, and which routes answer in OpenAI's error shape. The routers declare the
routes themselves; tests/app/edge/test_paths.py checks that every path named here is one of them."""

from __future__ import annotations

import re

# POST bodies served as raw ASGI: (model, operation) for /v1/models/{model}/{operation}, or
# (None, "generations") for OpenAI's route
FAST_RE = re.compile(r"/v1/(?:models/([^/]+)/(samples|edit)|images/(generations))")
FAST_TEMPLATES = {"samples": "/v1/models/{model}/samples", "edit": "/v1/models/{model}/edit",
                  "generations": "/v1/images/generations"}

# operations whose work waits in a model's queues: refused with a 429 before parsing when that queue
# is full; /encode and /variations wait on the encoder's queue first
MODEL_TEMPLATE = "/v1/models/{model}/"
SHED_RE = re.compile(r"/v1/models/([^/]+)/(samples|samples\.png|decode|interpolate|encode|edit|traverse|class-swap"
                     r"|map\.png|variations)")
ENCODER_OPERATIONS = frozenset({"encode", "variations"})

# image uploads: bounded by LATENTSERVE_MAX_UPLOAD_BYTES, every other body by MAX_BODY_BYTES
UPLOAD_RE = re.compile(r"/v1/(?:models/[^/]+/(?:encode|variations|project)|images/variations)")

# open with API keys on: the probes, the playground page (it asks for the key) and its assets
OPEN_PATHS = frozenset({"/healthz", "/readyz", "/"})
OPEN_PREFIXES = ("/playground/",)
METRICS_PATH = "/metrics"

# answered in OpenAI's error shape
OPENAI_PATHS = ("/v1/images/generations", "/v1/images/variations")
