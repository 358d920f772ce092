"""Answers as bytes: PNG (one image or a grid), JSON with base64 PNGs, the image headers, and the
strong ETags of cacheable answers. Encoding runs in the PNG thread pool, except one small PNG."""

from __future__ import annotations

import asyncio
import base64
import hashlib
import json
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, TypeVar

from fastapi import Request, Response
from starlette.types import Scope

from app.edge.asgi import json_bytes
from app.edge.schemas import ImagesResponse
from app.engine import imaging
from app.engine.service import Images

T = TypeVar("T")
PNG = {200: {"content": {"image/png": {}}, "description": "a PNG (one image, or a grid for n > 1)"}}
PNG_OR_JSON = {200: {"content": {"image/png": {}, "application/json": {"schema": ImagesResponse.model_json_schema()}},
                     "description": "image/png for format=png, JSON for format=json"}}


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


def etag_of(*parts: Any) -> str:
    digest = hashlib.sha256(json.dumps(parts, separators=(",", ":")).encode()).hexdigest()[:32]
    return f'"{digest}"'


def etag_matches(request: Request, etag: str) -> bool:
    header = request.headers.get("if-none-match")
    if not header:
        return False
    return header.strip() == "*" or etag in [t.strip().removeprefix("W/") for t in header.split(",")]
