"""Latent control over HTTP: directions, edit, traverse, class swap, the latent map, VAE
variations and GAN projection. Each validates, calls the control service, and renders with the
same code as ``samples`` (app/edge/routes/generation.py), so the same latent gives the same PNG."""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, Query, Request, Response
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
from app.edge.routes import ControlDep, ServiceDep, SettingsDep, live_service
from app.edge.routes.generation import ERRORS
from app.edge.schemas import (
    MAX_SEED,
    ClassSwapRequest,
    DirectionsResponse,
    EditRequest,
    ProjectionResponse,
    StartPoint,
    TraverseRequest,
)
from app.edge.uploads import one_query_label, read_uploads
from app.engine import imaging
from app.engine.control import ControlService
from app.engine.exceptions import InvalidInput
from app.engine.service import Start, label_spec

router = APIRouter(prefix="/v1/models/{model}", tags=["latent control"])
PNG_GIF_OR_JSON = {200: {"content": {"image/png": {}, "image/gif": {}, "application/json": {}},
                         "description": "a strip PNG, an animated GIF or JSON frames"}}
UPLOAD_BODY = {"requestBody": {"required": True, "content": {
    "image/png": {"schema": {"type": "string", "format": "binary"}},
    "multipart/form-data": {"schema": {"type": "object", "required": ["file"], "properties": {
        "file": {"type": "string", "format": "binary"}, "label": {"type": "string"}}}}}}}
Label = Annotated[str | None, Query(max_length=64, description="class index or name")]
Invert = Annotated[bool, Query(description="flip dark-on-light pictures to light-on-black")]


def _start(body: StartPoint, service: Any) -> tuple[Start, int | None]:
    """The start point and the seed to report: a request with neither seed nor latent gets a random seed."""
    if body.latent is not None:
        return Start(latent=body.latent), None
    seed = service.random_seed() if body.seed is None else body.seed
    return Start(seed=seed), seed


@router.get("/directions", response_model=DirectionsResponse, responses=ERRORS,
            summary="Closed-form latent directions (SeFa), strongest first")
async def directions(model: str, control: ControlDep) -> Response:
    m, found = control.directions(model)
    total = float(found.eigenvalues.sum()) or 1.0
    items = [{"index": i, "eigenvalue": float(e), "share": float(e) / total, "vector": v.tolist()}
             for i, (e, v) in enumerate(zip(found.eigenvalues, found.vectors))]
    return JSONResponse({"model": m.name, "version": m.version, "method": "sefa", "latent_dim": m.latent_dim,
                         "directions": items},
                        headers={"X-Model-Version": m.version, "Cache-Control": "public, max-age=3600"})


async def edit_image(state: Any, scope: Scope, receive: Receive, model: str, body: EditRequest) -> Rendered:
    """POST /edit after validation: shared by the route and the raw ASGI fast path (as ``sample``)."""
    service = live_service(state)
    control: ControlService = state.control
    m = service.registry.get(model)
    start, seed = _start(body, service)
    moves = [(mv.direction, mv.amount) for mv in body.moves]
    images = await unless_disconnected(receive, control.edit(model, start, body.label, body.truncation, moves))
    return await render_bytes(state, scope, model, m.version, m.classes, images, fmt=body.format, columns=1,
                              scale=body.scale, seed=seed, include_latents=True)


@router.post("/edit", summary="One image moved along latent directions", responses={**PNG_OR_JSON, **ERRORS})
async def edit(model: str, body: EditRequest, request: Request) -> Response:
    # valid JSON bodies are served by app/edge/fastpath.py before they get here
    try:
        return respond(await edit_image(request.app.state, request.scope, request.receive, model, body))
    except ClientGone:
        return Response(status_code=CLIENT_CLOSED)


@router.post("/traverse", summary="Frames along one direction: a strip PNG, an animated GIF or JSON",
             responses={**PNG_GIF_OR_JSON, **ERRORS})
async def traverse(model: str, body: TraverseRequest, request: Request, control: ControlDep,
                   service: ServiceDep) -> Response:
    m = service.registry.get(model)
    start, seed = _start(body, service)
    try:
        result = await unless_disconnected(request.receive, control.traverse(
            model, start, body.label, body.truncation, body.direction, body.extent, body.steps))
    except ClientGone:
        return Response(status_code=CLIENT_CLOSED)
    images = result.images
    amounts = {"X-Amounts": ",".join(repr(a) for a in result.amounts)}
    if body.format == "gif":
        request.state.log = {"model": model, "rows": len(images.pixels), "batch": images.batch_ids}
        gif = await in_png_pool(request, imaging.gif_bytes, images.pixels, body.frame_ms, body.scale)
        return Response(gif, media_type="image/gif", headers={**image_headers(model, m.version, images, seed), **amounts})
    return await render(request, model, m.version, m.classes, images, fmt=body.format, columns=body.steps,
                        scale=body.scale, seed=seed, include_latents=True, headers=amounts,
                        extra={"direction": body.direction, "amounts": result.amounts})


@router.post("/class-swap", summary="One latent under every class (or the given ones), as a strip",
             responses={**PNG_OR_JSON, **ERRORS})
async def class_swap(model: str, body: ClassSwapRequest, request: Request, control: ControlDep,
                     service: ServiceDep) -> Response:
    m = service.registry.get(model)
    start, seed = _start(body, service)
    try:
        images = await unless_disconnected(request.receive, control.class_swap(model, start, body.labels, body.truncation))
    except ClientGone:
        return Response(status_code=CLIENT_CLOSED)
    return await render(request, model, m.version, m.classes, images, fmt=body.format,
                        columns=body.columns or len(images.labels), scale=body.scale, seed=seed, include_latents=True)


def _axes(text: str | None) -> tuple[int, int] | None:
    if text is None:
        return None
    parts = [p.strip() for p in text.split(",")]
    if len(parts) != 2 or not all(p.isascii() and p.isdigit() and len(p) <= 4 for p in parts):
        raise InvalidInput(f"directions={text[:40]!r}: two direction indices, e.g. directions=0,1")
    return int(parts[0]), int(parts[1])


@router.get("/map.png", summary="The latent map: a grid of decodes over a 2-d latent or two directions",
            responses={**PNG, 304: {"description": "Not Modified (If-None-Match matched the ETag)"}, **ERRORS})
async def latent_map(model: str, request: Request, control: ControlDep, service: ServiceDep, settings: SettingsDep,
                     label: Label = None,
                     extent: Annotated[float, Query(gt=0.0, le=1000.0, description="coordinates from -extent to +extent")] = 3.0,
                     steps: Annotated[int, Query(ge=2, le=64, description="cells per side (steps^2 images)")] = 8,
                     directions: Annotated[str | None, Query(max_length=16, description="i,j: the two directions "
                                                             "spanned; default: the latent itself for a 2-d latent, else 0,1")] = None,
                     seed: Annotated[int | None, Query(ge=0, le=MAX_SEED, description="centre on this seed's latent (default: the origin)")] = None,
                     truncation: Annotated[float, Query(gt=0.0, le=1.0)] = 1.0,
                     scale: Annotated[int, Query(ge=1, le=16)] = 1) -> Response:
    one_query_label(request)
    m = service.registry.get(model)
    labels = None if label is None else label_spec(label)
    axes = _axes(directions)
    # a map is a pure function of its query: cacheable like samples.png with a seed
    etag = etag_of("map", m.name, m.version, m.sha256, labels, extent, steps, axes, seed, truncation, scale,
                   settings.png_compress_level, *m.pixel_variant)
    cache = {"ETag": etag, "Cache-Control": "public, max-age=31536000, immutable"}
    if etag_matches(request, etag):
        return Response(status_code=304, headers={**cache, "X-Model-Version": m.version})
    try:
        result = await unless_disconnected(request.receive, control.latent_map(
            model, labels, extent, steps, axes, seed, truncation))
    except ClientGone:
        return Response(status_code=CLIENT_CLOSED)
    spans = "latent" if result.axes is None else f"{result.axes[0]},{result.axes[1]}"
    return await render(request, model, m.version, m.classes, result.images, fmt="png", columns=steps, scale=scale,
                        seed=seed, headers={**cache, "X-Map-Axes": spans, "X-Map-Extent": repr(extent)})


@router.post("/variations", summary="VAE only: variations of an uploaded image, drawn from q(z|x)",
             openapi_extra=UPLOAD_BODY, responses={**PNG_OR_JSON, **ERRORS})
async def variations(model: str, request: Request, control: ControlDep, service: ServiceDep, settings: SettingsDep,
                     label: Label = None,
                     n: Annotated[int, Query(ge=1, le=4096, description="variations (capped by MAX_IMAGES_PER_REQUEST)")] = 8,
                     temperature: Annotated[float, Query(ge=0.0, le=10.0, description="scales q(z|x)'s standard "
                                                         "deviation; 0 = n copies of the reconstruction")] = 1.0,
                     seed: Annotated[int | None, Query(ge=0, le=MAX_SEED, description="variation i uses seed + i; absent = random")] = None,
                     format: Annotated[str, Query(pattern="^(png|json)$")] = "png",
                     columns: Annotated[int, Query(ge=1, le=256)] = 8,
                     scale: Annotated[int, Query(ge=1, le=16)] = 1,
                     invert: Invert = False) -> Response:
    m = service.vae_model(model)  # before reading the body: a GAN gets its 400 at once
    one_query_label(request)
    service.check_n(n, "variations")
    upload = await read_uploads(request, settings, label, invert, max_files=1)
    if upload is None:
        return Response(status_code=CLIENT_CLOSED)
    pixels, spec = upload
    if spec is None:
        raise InvalidInput("label is required: the VAE is class-conditional (query ?label= or form field)")
    seed = service.random_seed() if seed is None else seed
    try:
        images, _ = await unless_disconnected(request.receive, control.variations(
            model, pixels[0], spec, n, temperature, seed))
    except ClientGone:
        return Response(status_code=CLIENT_CLOSED)
    return await render(request, model, m.version, m.classes, images, fmt=format, columns=columns, scale=scale,
                        seed=seed, include_latents=True)


@router.post("/project", summary="GAN only: find the latent whose image matches an upload",
             openapi_extra=UPLOAD_BODY, responses={200: {"content": {"application/json": {
                 "schema": ProjectionResponse.model_json_schema()}, "image/png": {}}}, **ERRORS})
async def project(model: str, request: Request, control: ControlDep, service: ServiceDep, settings: SettingsDep,
                  label: Label = None,
                  steps: Annotated[int, Query(ge=1, le=100_000, description="Adam steps (capped by PROJECTION_MAX_STEPS)")] = 200,
                  starts: Annotated[int, Query(ge=1, le=16, description="starting latents: seeds seed .. seed+starts-1")] = 4,
                  seed: Annotated[int, Query(ge=0, le=MAX_SEED)] = 0,
                  format: Annotated[str, Query(pattern="^(png|json)$", description="png: the reconstruction")] = "json",
                  scale: Annotated[int, Query(ge=1, le=16)] = 1,
                  invert: Invert = False) -> Response:
    m = service.registry.get(model)
    one_query_label(request)
    upload = await read_uploads(request, settings, label, invert, max_files=1)
    if upload is None:
        return Response(status_code=CLIENT_CLOSED)
    pixels, spec = upload
    if spec is None:
        raise InvalidInput("label is required: the GAN is class-conditional (query ?label= or form field)")
    try:
        found = await unless_disconnected(request.receive, control.project(model, pixels[0], spec, steps, starts, seed))
    except ClientGone:
        return Response(status_code=CLIENT_CLOSED)
    y = control.label_of(m, spec)
    latent = found.latent.tolist()
    headers = {"X-Model-Version": m.version, "X-Projection-MSE": f"{found.mse:.6g}", "X-Projection-Steps": str(found.steps)}
    if format == "png":
        try:
            images = await unless_disconnected(request.receive, service.decode(model, [latent], y))
        except ClientGone:
            return Response(status_code=CLIENT_CLOSED)
        return await render(request, model, m.version, m.classes, images, fmt="png", columns=1, scale=scale,
                            seed=None, headers=headers)
    request.state.log = {"model": model, "rows": 1}
    return JSONResponse({"model": model, "version": m.version, "label": y, "latent": latent, "mse": found.mse,
                         "start_mse": found.start_mse, "steps": found.steps, "complete": found.steps == steps,
                         "seed": seed}, headers=headers)
