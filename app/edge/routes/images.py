"""The OpenAI images API shape: ``POST /v1/images/generations`` (through the same batcher and
raw-ASGI fast path as ``samples``) and ``POST /v1/images/variations`` (the VAE's variations).
What prompts and sizes mean, and the error shape: app/edge/openai.py."""

from __future__ import annotations

import asyncio
import base64
import time
from typing import Any, Literal

import numpy as np
from fastapi import APIRouter, Request, Response
from pydantic import Field
from starlette.requests import ClientDisconnect, HTTPConnection
from starlette.types import Receive, Scope

from app.edge.asgi import json_bytes
from app.edge.disconnect import ClientGone, unless_disconnected
from app.edge.errors import CLIENT_CLOSED
from app.edge.openai import SizeError, class_in_prompt, scale_for
from app.edge.rendering import Rendered, respond
from app.edge.routes import live_service
from app.edge.schemas import MAX_ITEMS, Strict
from app.engine import imaging
from app.engine.exceptions import InvalidInput, ModelNotFound
from app.engine.served import ServedModel
from app.engine.service import GenerationService, resolve_label

router = APIRouter(prefix="/v1/images", tags=["OpenAI images API"])
OPENAI_ERROR = {"content": {"application/json": {"example": {"error": {
    "message": "...", "type": "invalid_request_error", "param": "size", "code": "invalid_request"}}}}}
ERRORS: dict[int | str, dict[str, Any]] = {code: OPENAI_ERROR for code in (400, 401, 404, 413, 415, 422, 429, 503, 504)}


class ImageGenerationRequest(Strict):
    model_config = Strict.model_config | {"json_schema_extra": {"examples": [
        {"prompt": "a red sneaker", "n": 2, "size": "112x112", "response_format": "b64_json"},
        {"prompt": "an ankle boot", "model": "fashion-gan", "response_format": "url"},
    ]}}
    prompt: str = Field(max_length=32000, description="names the class (e.g. 'a red sneaker' -> Sneaker); none named = random classes")
    model: str | None = Field(None, max_length=64, description="a served model; default: the first GAN")
    n: int = Field(1, ge=1, le=MAX_ITEMS, description="images (capped by LATENTSERVE_MAX_IMAGES_PER_REQUEST)")
    size: str | None = Field(None, max_length=32, description="28x28, 56x56, 112x112 or 224x224; OpenAI's sizes get the nearest")
    response_format: Literal["url", "b64_json"] = Field("url", description="url: the immutable samples.png URL of each image")
    output_format: Literal["png"] | None = None
    quality: str | None = Field(None, max_length=32, description="accepted and ignored")
    style: str | None = Field(None, max_length=32, description="accepted and ignored")
    user: str | None = Field(None, max_length=256, description="accepted and ignored")


def _model(service: GenerationService, name: str | None, kind: str) -> ServedModel:
    if name is None:
        for model in service.registry.models.values():
            if model.kind == kind:
                return model
        raise ModelNotFound(f"no {kind} model is served; name one with `model`", param="model")
    try:
        return service.registry.get(name)
    except ModelNotFound as e:
        raise ModelNotFound(e.message, param="model") from None


def _scale(size: str | None) -> tuple[int, str | None]:
    try:
        return scale_for(size)
    except SizeError as e:
        raise InvalidInput(str(e), param="size") from None


def _base_url(scope: Scope) -> str:
    return str(HTTPConnection(scope).base_url)  # scheme, host and prefix as the client sees them


def _answer(model: ServedModel, seed: int, labels: list[int], items: list[dict[str, Any]], scale: int) -> Rendered:
    body = {"created": int(time.time()), "data": items, "output_format": "png", "size": f"{28 * scale}x{28 * scale}"}
    headers = {"X-Model": model.name, "X-Model-Version": model.version, "X-Seed": str(seed),
               "X-Labels": ",".join(map(str, labels))}
    return Rendered(json_bytes(body), "application/json", headers)


def _revised(prompt_class: int | None, model: ServedModel, label: int, seed: int, note: str | None) -> str:
    said = f"{model.classes[label]} (class {label}) from {model.name} {model.version}, seed {seed}"
    if prompt_class is None:
        said += "; the prompt names no class, so it was drawn from the seed"
    return said + (f"; {note}" if note else "")


async def _pngs(state: Any, pixels: np.ndarray, scale: int) -> list[str]:
    level = state.settings.png_compress_level

    def encode() -> list[str]:
        return [base64.b64encode(imaging.png_bytes(p, scale, level)).decode("ascii") for p in pixels]

    if len(pixels) == 1 and scale == 1:  # ~0.1 ms: less than the thread hops (as samples' single PNG)
        return encode()
    return await asyncio.get_running_loop().run_in_executor(state.png_executor, encode)


async def generate_images(state: Any, scope: Scope, receive: Receive, _: str | None,
                          body: ImageGenerationRequest) -> Rendered:
    """POST /v1/images/generations after validation: shared by the route and the raw ASGI fast path."""
    service = live_service(state)
    model = _model(service, body.model, "gan")
    scale, note = _scale(body.size)
    label = class_in_prompt(body.prompt, model.classes)
    service.check_sample(model.name, body.n, label)
    seed = service.random_seed()
    scope.setdefault("state", {})["log"] = {"model": model.name, "rows": body.n}
    if body.response_format == "url":
        # each image is the immutable, cacheable samples.png of its seed: made when it is fetched
        labels = [label] * body.n if label is not None else service.seed_labels(model, seed, body.n)
        base = _base_url(scope)
        items = [{"url": f"{base}v1/models/{model.name}/samples.png?seed={seed + i}&label={y}&scale={scale}",
                  "revised_prompt": _revised(label, model, y, seed + i, note)} for i, y in enumerate(labels)]
        return _answer(model, seed, labels, items, scale)
    images = await unless_disconnected(receive, service.sample(model.name, body.n, seed, label, 1.0))
    scope["state"]["log"]["batch"] = images.batch_ids
    pngs = await _pngs(state, images.pixels, scale)
    items = [{"b64_json": b64, "revised_prompt": _revised(label, model, y, seed + i, note)}
             for i, (b64, y) in enumerate(zip(pngs, images.labels))]
    return _answer(model, seed, images.labels, items, scale)


@router.post("/generations", summary="OpenAI images API: generate images from a prompt that names a class",
             responses={200: {"description": '{"created", "data": [{"url" | "b64_json", "revised_prompt"}]}'}, **ERRORS})
async def generations(body: ImageGenerationRequest, request: Request) -> Response:
    # valid JSON bodies are served by app/edge/fastpath.py before they get here
    try:
        return respond(await generate_images(request.app.state, request.scope, request.receive, None, body))
    except ClientGone:
        return Response(status_code=CLIENT_CLOSED)


async def _best_label(service: GenerationService, model: ServedModel, image: np.ndarray) -> int:
    """The class under which the VAE reconstructs the upload best (lowest pixel MSE of the decoded
    mean): a class-conditional VAE needs one, and OpenAI's variations API has no field for it."""
    classes = list(range(len(model.classes)))
    stats, _ = await service.encode(model.name, np.repeat(image[None], len(classes), axis=0), classes)
    images = await service.decode(model.name, stats[:, 0].tolist(), classes)
    errors = ((images.pixels.astype(np.float32) / 255.0 - image[None]) ** 2).mean(axis=(1, 2))
    return int(errors.argmin())


@router.post("/variations", summary="OpenAI images API: variations of an uploaded image (a VAE)",
             openapi_extra={"requestBody": {"required": True, "content": {"multipart/form-data": {"schema": {
                 # form fields arrive as text: no JSON type is declared for the optional ones (an empty
                 # list would arrive as no field at all, indistinguishable from leaving it out)
                 "type": "object", "required": ["image"], "properties": {
                     "image": {"type": "string", "format": "binary"},
                     "model": {"description": "a served VAE; default the first"},
                     "n": {"description": "variations, a whole number (default 1)"},
                     "size": {"description": "28x28, 56x56, 112x112, 224x224, or OpenAI's sizes (the nearest)"},
                     "response_format": {"description": "url (a data: URL) or b64_json"},
                     "label": {"description": "class of the upload (not OpenAI's); absent = the class under "
                               "which the VAE reconstructs it best"},
                     "user": {"description": "accepted and ignored"}}}}}}},
             responses={200: {"description": '{"created", "data": [{"b64_json" | "url": a data: URL, "revised_prompt"}]}'},
                        **ERRORS})
async def variations(request: Request) -> Response:
    state = request.app.state
    service = live_service(state)
    ctype = request.headers.get("content-type", "").split(";")[0].strip().lower()
    if ctype != "multipart/form-data":
        raise InvalidInput("send multipart/form-data with an `image` file part", param="image")
    try:
        async with request.form(max_files=1, max_fields=16) as form:
            image = form.get("image")
            fields = {k: v for k, v in form.items() if isinstance(v, str)}
            repeated = next((k for k in fields if len(form.getlist(k)) > 1), None)
            data = await image.read() if image is not None and not isinstance(image, str) else None
    except ClientDisconnect:
        return Response(status_code=CLIENT_CLOSED)
    if data is None:
        raise InvalidInput("the `image` file part is missing", param="image")
    if repeated is not None:
        raise InvalidInput(f"field {repeated[:40]!r} given more than once", param=repeated[:40])
    unknown = set(fields) - {"model", "n", "size", "response_format", "label", "user"}
    if unknown:
        raise InvalidInput(f"unknown field {sorted(unknown)[0][:40]!r}", param=sorted(unknown)[0][:40])
    model = _model(service, fields.get("model"), "vae")
    if model.kind != "vae":
        raise InvalidInput(f"{model.name} is a {model.kind}; variations need a VAE", param="model")
    n_text = fields.get("n", "1")
    if not (n_text.isascii() and n_text.isdigit() and len(n_text) <= 5):
        raise InvalidInput("n must be a whole number", param="n")
    n = int(n_text)
    service.check_n(n, "variations")
    scale, note = _scale(fields.get("size"))
    fmt = fields.get("response_format", "url")
    if fmt not in ("url", "b64_json"):
        raise InvalidInput("response_format must be url or b64_json", param="response_format")
    limit = state.settings.max_upload_pixels
    pixels = await asyncio.get_running_loop().run_in_executor(state.upload_executor, imaging.decode_upload, data, limit, False)
    request.state.log = {"model": model.name, "rows": n}
    seed = service.random_seed()
    try:
        if "label" in fields:
            label = resolve_label(model, fields["label"].strip())
        else:
            label = await unless_disconnected(request.receive, _best_label(service, model, pixels))
        images, _ = await unless_disconnected(request.receive, state.control.variations(
            model.name, pixels, label, n, 1.0, seed))
    except ClientGone:
        return Response(status_code=CLIENT_CLOSED)
    pngs = await _pngs(state, images.pixels, scale)
    key = "url" if fmt == "url" else "b64_json"
    chosen = "given" if "label" in fields else "the class the VAE reconstructs the upload best under"
    items = [{key: ("data:image/png;base64," + b64) if key == "url" else b64,
              "revised_prompt": f"a variation of the upload as {model.classes[label]} (class {label}, {chosen}) "
                                f"from {model.name} {model.version}, seed {seed + i}" + (f"; {note}" if note else "")}
             for i, b64 in enumerate(pngs)]
    return respond(_answer(model, seed, images.labels, items, scale))


