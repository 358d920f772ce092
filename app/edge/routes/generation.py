"""Sampling, decoding, encoding and interpolation: validate, call the generation service, render
(app/edge/rendering.py), and drop the work of clients that hang up (app/edge/disconnect.py)."""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, Body, Query, Request, Response
from fastapi.responses import JSONResponse
from starlette.types import Receive, Scope

from app.edge.disconnect import ClientGone, unless_disconnected
from app.edge.errors import CLIENT_CLOSED
from app.edge.rendering import (
    PNG,
    PNG_OR_JSON,
    Rendered,
    etag_matches,
    etag_of,
    image_headers,
    in_png_pool,
    render,
    render_bytes,
    respond,
)
from app.edge.routes import ServiceDep, SettingsDep, live_service
from app.edge.schemas import (
    MAX_SEED,
    DecodeRequest,
    EncodeResponse,
    ErrorResponse,
    InterpolateRequest,
    LatentEndpoint,
    SampleRequest,
    SeedEndpoint,
)
from app.edge.uploads import one_query_label, read_uploads
from app.engine import imaging
from app.engine.exceptions import InvalidInput
from app.engine.service import Start, label_spec

router = APIRouter(prefix="/v1/models/{model}", tags=["generation"])
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
