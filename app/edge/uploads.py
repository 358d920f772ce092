"""Image uploads for /encode, /variations and /project: a raw image body or multipart ``file``
parts, labels from the query or the form, sizes checked from headers before any decoding."""

from __future__ import annotations

import asyncio
from typing import Any

import numpy as np
from fastapi import Request

from app.edge.asgi import read_body, replay
from app.edge.disconnect import ClientGone
from app.engine import imaging
from app.engine.exceptions import InvalidInput, PayloadTooLarge, UnsupportedMediaType
from app.engine.service import label_spec


def one_query_label(request: Request) -> None:
    """A query takes one label, for every image. A repeated ?label= took its last value
    silently, where a client may have meant one label per image."""
    count = len(request.query_params.getlist("label"))
    if count > 1:
        raise InvalidInput(f"label given {count} times in the query: it takes one label for every image "
                           "(POST a JSON body or form fields for one label per image)")


async def read_uploads(request: Request, settings: Any, label: str | None, invert: bool,
                       max_files: int | None = None) -> tuple[np.ndarray, Any] | None:
    """The images of an upload route (``/encode``, ``/variations``, ``/project``): one image as the
    raw body or multipart ``file`` parts, with ``label`` from the query or form fields (not both).
    Returns ((n, 28, 28) float32 in [0, 1], the label spec or None), or None if the client left
    half-way. Headers are checked before any pixel is decoded; decoding runs in its own thread."""
    ctype = request.headers.get("content-type", "").split(";")[0].strip().lower()
    max_files = max_files or settings.max_images_per_request
    try:
        body = await read_body(request.receive)  # bounded by LATENTSERVE_MAX_UPLOAD_BYTES (BodyLimitMiddleware)
    except ClientGone:  # an upload abandoned half-way: the client's doing, not a 500
        return None
    labels: list[str] = [] if label is None else [label]
    if ctype == "multipart/form-data":
        again = Request(request.scope, replay(body, request.receive))  # form() reads the body we hold
        async with again.form(max_files=max_files, max_fields=max_files + 8) as form:
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
