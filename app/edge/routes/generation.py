"""Sampling, decoding, encoding and interpolation. Validates, calls the generation service,
encodes pixels in the PNG thread pool, and drops the work of clients that hang up."""

from __future__ import annotations

import asyncio
import base64
import hashlib
import json
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Annotated, Any, TypeVar

import numpy as np
from fastapi import APIRouter, Body, Query, Request, Response
from fastapi.responses import JSONResponse
from starlette.requests import ClientDisconnect
from starlette.types import Receive, Scope

from app.edge.asgi import json_bytes
from app.edge.errors import CLIENT_CLOSED
from app.edge.routes import ServiceDep, SettingsDep, live_service
from app.edge.schemas import (
    MAX_SEED,
    DecodeRequest,
    EncodeResponse,
    ErrorResponse,
    ImagesResponse,
    InterpolateRequest,
    LatentEndpoint,
    SampleRequest,
    SeedEndpoint,
)
from app.engine import imaging
from app.engine.exceptions import InvalidInput, PayloadTooLarge, UnsupportedMediaType
from app.engine.service import Images, Start, label_spec

router = APIRouter(prefix="/v1/models/{model}", tags=["generation"])
T = TypeVar("T")
ERRORS: dict[int | str, dict[str, Any]] = {
    code: {"model": ErrorResponse} for code in (400, 404, 413, 415, 422, 429, 503, 504)}
# a latent's length is the model's latent_dim: one example per shipped model (all zeros: the prior's mean)
DECODE_EXAMPLES = {
    "fashion-vae": {"summary": "fashion-vae (latent_dim 16)",
                    "value": {"latents": [[0.0] * 16], "labels": "Dress", "format": "png", "scale": 4}},
    "fashion-vae-2d": {"summary": "fashion-vae-2d (latent_dim 2: a point of its map)",
                       "value": {"latents": [[0.5, -1.0]], "labels": "Coat", "format": "png", "scale": 4}},
    "fashion-gan": {"summary": "fashion-gan (latent_dim 64)",
                    "value": {"latents": [[0.0] * 64], "labels": "Sneaker", "format": "png", "scale": 4}},
}
PNG = {200: {"content": {"image/png": {}}, "description": "a PNG (one image, or a grid for n > 1)"}}
PNG_OR_JSON = {200: {"content": {"image/png": {}, "application/json": {"schema": ImagesResponse.model_json_schema()}},
                     "description": "image/png for format=png, JSON for format=json"}}


class ClientGone(Exception):
    pass


async def unless_disconnected(receive: Receive, work: Awaitable[T]) -> T:
    """Await ``work`` in this task; if the client disconnects first, cancel it (its queued rows
    are dropped) and raise ClientGone. One watcher task per request, nothing else."""
    task = asyncio.current_task()
    gone = False

    async def watch() -> None:
        nonlocal gone
        try:
            while (await receive())["type"] != "http.disconnect":
                pass
        except Exception:  # noqa: BLE001 - e.g. a GET's body over the limit: stop watching, the answer goes on
            return
        gone = True
        task.cancel()

    watcher = asyncio.ensure_future(watch())
    try:
        return await work
    except asyncio.CancelledError:
        if gone:
            if hasattr(task, "uncancel"):  # Python >= 3.11: this task goes on, to answer 499
                task.uncancel()
            raise ClientGone() from None
        raise
    finally:
        watcher.cancel()


def image_headers(model: str, version: str, images: Images, seed: int | None) -> dict[str, str]:
    headers = {"X-Model-Version": version, "X-Model": model, "X-Labels": ",".join(map(str, images.labels))}
    if seed is not None:
        headers["X-Seed"] = str(seed)
    return headers


@dataclass
class Rendered:
    """A 200 answer as bytes, for a FastAPI Response or a raw ASGI send (app/edge/fastpath.py)."""
    body: bytes
    media_type: str
    headers: dict[str, str]


async def render_bytes(state: Any, scope: Scope, model_name: str, version: str, classes: list[str], images: Images, *,
                       fmt: str, columns: int, scale: int, seed: int | None, include_latents: bool = False,
                       headers: dict[str, str] | None = None, extra: dict[str, Any] | None = None) -> Rendered:
    """PNG (one image or a grid) or JSON with base64 PNGs, encoded in the PNG thread pool; notes
    model, rows and batch ids for the access log line."""
    level = state.settings.png_compress_level
    scope.setdefault("state", {})["log"] = {"model": model_name, "rows": len(images.pixels), "batch": images.batch_ids}
    hdrs = {**image_headers(model_name, version, images, seed), **(headers or {})}
    loop = asyncio.get_running_loop()
    if fmt == "png":
        if len(images.pixels) == 1 and scale == 1:
            # one 28x28 PNG is ~0.1 ms of work, less than the two thread hops that would carry it
            body = imaging.png_bytes(images.pixels[0], 1, level)
        else:
            body = await loop.run_in_executor(state.png_executor, imaging.grid_png_bytes, images.pixels, columns, scale, level)
        return Rendered(body, "image/png", hdrs)

    def encode_all() -> list[str]:
        return [base64.b64encode(imaging.png_bytes(p, scale, level)).decode("ascii") for p in images.pixels]

    pngs = await loop.run_in_executor(state.png_executor, encode_all)
    items = []
    for i, b64 in enumerate(pngs):
        item: dict[str, Any] = {"index": i, "seed": images.seeds[i] if images.seeds else None,
                                "label": images.labels[i], "label_name": classes[images.labels[i]], "png_base64": b64}
        if include_latents and images.latents is not None:
            item["latent"] = images.latents[i].tolist()
        items.append(item)
    return Rendered(json_bytes({"model": model_name, "version": version, "seed": seed, "images": items, **(extra or {})}),
                    "application/json", hdrs)


def respond(rendered: Rendered) -> Response:
    return Response(rendered.body, media_type=rendered.media_type, headers=rendered.headers)


async def in_png_pool(request: Request, fn: Callable[..., T], *args: Any) -> T:
    return await asyncio.get_running_loop().run_in_executor(request.app.state.png_executor, fn, *args)


async def render(request: Request, model_name: str, version: str, classes: list[str], images: Images,
                 **kw: Any) -> Response:
    return respond(await render_bytes(request.app.state, request.scope, model_name, version, classes, images, **kw))


async def sample(state: Any, scope: Scope, receive: Receive, model: str, body: SampleRequest) -> Rendered:
    """POST /samples after validation: shared by the route and the raw ASGI fast path.
    Raises ServiceError subclasses, or ClientGone when the client hung up."""
    service = live_service(state)
    m = service.registry.get(model)
    seed = service.random_seed() if body.seed is None else body.seed
    images = await unless_disconnected(receive, service.sample(model, body.n, seed, body.labels, body.truncation))
    return await render_bytes(state, scope, model, m.version, m.classes, images, fmt=body.format,
                              columns=body.columns, scale=body.scale, seed=seed, include_latents=body.include_latents)


@router.post("/samples", summary="Sample images from a model", responses={**PNG_OR_JSON, **ERRORS})
async def samples(model: str, body: SampleRequest, request: Request) -> Response:
    # valid JSON bodies are served by app/edge/fastpath.py before they get here; this route serves
    # the rest (and documents the operation)
    try:
        return respond(await sample(request.app.state, request.scope, request.receive, model, body))
    except ClientGone:
        return Response(status_code=CLIENT_CLOSED)


def one_query_label(request: Request) -> None:
    """A query takes one label, for every image. A repeated ?label= took its last value
    silently, where a client may have meant one label per image."""
    count = len(request.query_params.getlist("label"))
    if count > 1:
        raise InvalidInput(f"label given {count} times in the query: it takes one label for every image "
                           "(POST a JSON body or form fields for one label per image)")


def etag_of(*parts: Any) -> str:
    digest = hashlib.sha256(json.dumps(parts, separators=(",", ":")).encode()).hexdigest()[:32]
    return f'"{digest}"'


def etag_matches(request: Request, etag: str) -> bool:
    header = request.headers.get("if-none-match")
    if not header:
        return False
    return header.strip() == "*" or etag in [t.strip().removeprefix("W/") for t in header.split(",")]


@router.get("/samples.png", summary="Sample a PNG with query parameters (for curl and <img src>)",
            responses={**PNG, 304: {"description": "Not Modified (If-None-Match matched the ETag)"}, **ERRORS})
async def samples_png(model: str, request: Request, service: ServiceDep, settings: SettingsDep,
                      n: Annotated[int, Query(ge=1, le=4096)] = 1,
                      seed: Annotated[int | None, Query(ge=0, le=MAX_SEED)] = None,
                      label: Annotated[str | None, Query(max_length=64, description="class index or name")] = None,
                      columns: Annotated[int, Query(ge=1, le=256)] = 8,
                      truncation: Annotated[float, Query(gt=0.0, le=1.0)] = 1.0,
                      scale: Annotated[int, Query(ge=1, le=16)] = 1) -> Response:
    one_query_label(request)
    labels = None if label is None else label_spec(label)
    m, _ = service.check_sample(model, n, labels)  # a request that is a 4xx is never a 304
    cache: dict[str, str] = {"Cache-Control": "no-store"}
    if seed is not None:
        # layout, device kind and dtype change a few pixels: the ETag names them (none for float32
        # NCHW on a CPU, which keeps the ETags of the builds before them: the same bytes)
        etag = etag_of(m.name, m.version, m.sha256, n, seed, labels, columns, truncation, scale, settings.png_compress_level,
                     *m.pixel_variant)
        cache = {"ETag": etag, "Cache-Control": "public, max-age=31536000, immutable"}
        if etag_matches(request, etag):
            return Response(status_code=304, headers={**cache, "X-Model-Version": m.version, "X-Seed": str(seed)})
    else:
        seed = service.random_seed()
    try:
        images = await unless_disconnected(request.receive, service.sample(model, n, seed, labels, truncation))
    except ClientGone:
        return Response(status_code=CLIENT_CLOSED)
    return await render(request, model, m.version, m.classes, images, fmt="png", columns=columns,
                        scale=scale, seed=seed, headers=cache)


@router.post("/decode", summary="Images from given latents", responses={**PNG_OR_JSON, **ERRORS})
async def decode(model: str, body: Annotated[DecodeRequest, Body(openapi_examples=DECODE_EXAMPLES)], request: Request,
                 service: ServiceDep) -> Response:
    m = service.registry.get(model)
    try:
        images = await unless_disconnected(request.receive, service.decode(model, body.latents, body.labels))
    except ClientGone:
        return Response(status_code=CLIENT_CLOSED)
    return await render(request, model, m.version, m.classes, images, fmt=body.format,
                        columns=body.columns, scale=body.scale, seed=None)


async def read_uploads(request: Request, settings: Any, label: str | None, invert: bool,
                       max_files: int | None = None) -> tuple[np.ndarray, Any] | None:
    """The images of an upload route (``/encode``, ``/variations``, ``/project``): one image as the
    raw body or multipart ``file`` parts, with ``label`` from the query or form fields (not both).
    Returns ((n, 28, 28) float32 in [0, 1], the label spec or None), or None if the client left
    half-way. Headers are checked before any pixel is decoded; decoding runs in its own thread."""
    ctype = request.headers.get("content-type", "").split(";")[0].strip().lower()
    max_files = max_files or settings.max_images_per_request
    try:
        body = await request.body()  # bounded by LATENTSERVE_MAX_UPLOAD_BYTES (BodyLimitMiddleware); kept for form()
    except ClientDisconnect:  # an upload abandoned half-way: the client's doing, not a 500
        return None
    labels: list[str] = [] if label is None else [label]
    if ctype == "multipart/form-data":
        async with request.form(max_files=max_files, max_fields=max_files + 8) as form:
            files = [f for f in form.getlist("file") if not isinstance(f, str)]
            form_labels = [v for v in form.getlist("label") if isinstance(v, str)]
            if labels and form_labels:
                raise InvalidInput("labels given both as ?label= and as form fields: give one or the other")
            labels = labels or form_labels
            blobs = [await f.read() for f in files]
        if not blobs:
            raise InvalidInput("multipart upload without a `file` part")
        if len(blobs) > max_files:
            raise InvalidInput(f"{len(blobs)} files; this route takes at most {max_files}")
    elif ctype.startswith("image/") or ctype == "application/octet-stream":
        blobs = [body]
    else:
        raise UnsupportedMediaType(f"send an image body (Content-Type image/png, ...) or multipart/form-data with "
                                   f"`file` parts, not {ctype or 'no Content-Type'}")
    limit = settings.max_upload_pixels

    def decode_all() -> np.ndarray:
        if len(blobs) > 1:  # one image: decode_upload checks its own header
            total = sum(imaging.declared_pixels(b) for b in blobs)  # headers only: refused before any decoding
            if total > limit:
                raise PayloadTooLarge(f"{len(blobs)} images of {total} pixels in all exceed the limit of {limit} "
                                      "pixels per request (LATENTSERVE_MAX_UPLOAD_PIXELS)")
        return np.stack([imaging.decode_upload(b, limit, invert) for b in blobs])

    # in their own thread: a large upload never holds up the PNG encoding of other clients' answers
    pixels = await asyncio.get_running_loop().run_in_executor(request.app.state.upload_executor, decode_all)
    parsed = [label_spec(v) for v in labels]
    return pixels, (None if not parsed else (parsed[0] if len(parsed) == 1 else parsed))


@router.post("/encode", response_model=EncodeResponse, summary="VAE only: image(s) -> latent mean and log-variance",
             openapi_extra={"requestBody": {"required": True, "content": {
                 "image/png": {"schema": {"type": "string", "format": "binary"}},
                 "multipart/form-data": {"schema": {"type": "object", "required": ["file"], "properties": {
                     "file": {"type": "array", "items": {"type": "string", "format": "binary"}},
                     "label": {"type": "array", "items": {"type": "string"}}}}}}}},
             responses=ERRORS)
async def encode(model: str, request: Request, service: ServiceDep, settings: SettingsDep,
                 label: Annotated[str | None, Query(max_length=64, description="class index or name for every image")] = None,
                 invert: Annotated[bool, Query(description="flip dark-on-light pictures to light-on-black")] = False) -> Response:
    m = service.vae_model(model)  # before reading the body: a GAN gets its 400 at once
    one_query_label(request)
    upload = await read_uploads(request, settings, label, invert)
    if upload is None:
        return Response(status_code=CLIENT_CLOSED)
    pixels, spec = upload
    request.state.log = {"model": model, "rows": len(pixels)}  # for the access log line
    if spec is None:
        raise InvalidInput("label is required to encode with a class-conditional VAE (query ?label= or form field)")
    try:
        stats, ys = await unless_disconnected(request.receive, service.encode(model, pixels, spec))
    except ClientGone:
        return Response(status_code=CLIENT_CLOSED)
    latents = [{"mu": s[0].tolist(), "logvar": s[1].tolist(), "label": y} for s, y in zip(stats, ys)]
    return JSONResponse({"model": model, "version": m.version, "latents": latents}, headers={"X-Model-Version": m.version})


def _start(point: SeedEndpoint | LatentEndpoint) -> Start:
    return Start(latent=point.latent) if isinstance(point, LatentEndpoint) else Start(seed=point.seed)


@router.post("/interpolate", summary="Frames between two latents: a strip PNG, an animated GIF or JSON",
             responses={200: {"content": {"image/png": {}, "image/gif": {}, "application/json": {}}}, **ERRORS})
async def interpolate(model: str, body: InterpolateRequest, request: Request, service: ServiceDep) -> Response:
    m = service.registry.get(model)
    try:
        images = await unless_disconnected(request.receive, service.interpolate(
            model, _start(body.start), _start(body.end), body.steps, body.method, body.label, body.truncation))
    except ClientGone:
        return Response(status_code=CLIENT_CLOSED)
    request.state.log = {"model": model, "rows": len(images.pixels), "batch": images.batch_ids}
    if body.format == "gif":
        gif = await in_png_pool(request, imaging.gif_bytes, images.pixels, body.frame_ms, body.scale)
        return Response(gif, media_type="image/gif", headers=image_headers(model, m.version, images, None))
    return await render(request, model, m.version, m.classes, images, fmt=body.format,
                        columns=body.steps, scale=body.scale, seed=None, include_latents=True)
