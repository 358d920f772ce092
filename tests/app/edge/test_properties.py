"""Property tests (hypothesis) of the request models and the upload decoder: whatever comes in,
the outcome is either a valid value or the one documented error type, never anything else."""

from __future__ import annotations

import io
import math

import numpy as np
import pytest
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st
from PIL import Image
from pydantic import BaseModel, ValidationError

from app.edge.schemas import (
    MAX_SEED,
    DecodeRequest,
    InterpolateRequest,
    LatentEndpoint,
    SampleRequest,
    SeedEndpoint,
)
from app.engine.exceptions import InvalidInput, PayloadTooLarge, UnsupportedMediaType
from app.engine.imaging import decode_upload

FAST = settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
MAX_PIXELS = 1 << 20

json_scalars = st.none() | st.booleans() | st.integers(-2**70, 2**70) | st.floats(allow_nan=True) | st.text(max_size=12)
json_values = st.recursive(json_scalars, lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner, max_size=4),
                           max_leaves=12)


def bodies(keys: list[str]) -> st.SearchStrategy[dict]:
    """Dicts over the model's own keys (so validation goes deep) plus now and then a stray one."""
    return st.dictionaries(st.sampled_from(keys + ["extra"]), json_values, max_size=len(keys) + 1)


# -- request models --

def validated(model: type[BaseModel], body: object) -> BaseModel | None:
    """The request model built from ``body``, or None when validation refuses it (the only
    exception allowed)."""
    try:
        return model.model_validate(body)
    except ValidationError:
        return None


@FAST
@given(bodies(list(SampleRequest.model_fields)))
def test_sample_request_is_valid_or_a_validation_error(body):
    req = validated(SampleRequest, body)
    if req is None:
        return
    assert 1 <= req.n <= 4096 and 1 <= req.columns <= 256 and 1 <= req.scale <= 16
    assert req.seed is None or 0 <= req.seed <= MAX_SEED
    assert 0.0 < req.truncation <= 1.0 and req.format in ("png", "json")
    assert "extra" not in body  # unknown fields are refused, never ignored
    assert SampleRequest.model_validate_json(req.model_dump_json()) == req


labels = st.integers(0, 9) | st.sampled_from(["Sneaker", "bag", "T-shirt/top"])
valid_samples = st.builds(
    SampleRequest, n=st.integers(1, 4096), seed=st.none() | st.integers(0, MAX_SEED),
    labels=st.none() | labels | st.lists(labels, min_size=1, max_size=8),
    truncation=st.floats(0.0, 1.0, exclude_min=True), format=st.sampled_from(["png", "json"]),
    columns=st.integers(1, 256), scale=st.integers(1, 16), include_latents=st.booleans())


@FAST
@given(valid_samples)
def test_every_sample_request_in_bounds_round_trips_through_json(req):
    assert SampleRequest.model_validate_json(req.model_dump_json()) == req


@FAST
@given(st.lists(st.lists(st.floats(width=32), min_size=1, max_size=6), min_size=1, max_size=4))
def test_decode_request_accepts_exactly_the_finite_latents(latents):
    finite = all(math.isfinite(v) for row in latents for v in row)
    req = validated(DecodeRequest, {"latents": latents})
    if req is None:
        assert not finite
        return
    assert finite and req.latents == latents


@FAST
@given(bodies(list(DecodeRequest.model_fields)))
def test_decode_request_is_valid_or_a_validation_error(body):
    req = validated(DecodeRequest, body)
    if req is None:
        return
    assert 1 <= len(req.latents) <= 4096
    assert all(1 <= len(row) <= 4096 and all(math.isfinite(v) for v in row) for row in req.latents)


endpoints = st.dictionaries(st.sampled_from(["seed", "latent", "other"]),
                            st.integers(-5, 2**33) | st.lists(st.floats(-4, 4), max_size=3) | json_values, max_size=3)


@FAST
@given(endpoints, endpoints, bodies(["steps", "method", "label", "truncation", "format", "scale", "frame_ms"]))
def test_interpolate_endpoint_is_exactly_one_of_seed_or_latent(start, end, rest):
    req = validated(InterpolateRequest, {**rest, "start": start, "end": end})
    if req is None:
        return
    for given_point, point in ((start, req.start), (end, req.end)):
        assert set(given_point) in ({"seed"}, {"latent"})
        if isinstance(point, SeedEndpoint):
            assert given_point["seed"] == point.seed and 0 <= point.seed <= MAX_SEED
        else:
            assert isinstance(point, LatentEndpoint) and len(point.latent) >= 1
    assert 2 <= req.steps <= 1024 and 20 <= req.frame_ms <= 5000


valid_endpoints = (st.builds(lambda s: {"seed": s}, st.integers(0, MAX_SEED))
                   | st.builds(lambda v: {"latent": v}, st.lists(st.floats(-4, 4, width=32), min_size=1, max_size=8)))
valid_interpolations = st.fixed_dictionaries(
    {"start": valid_endpoints, "end": valid_endpoints},
    optional={"steps": st.integers(2, 1024), "method": st.sampled_from(["slerp", "lerp"]), "label": labels,
              "truncation": st.floats(0.0, 1.0, exclude_min=True), "format": st.sampled_from(["png", "gif", "json"]),
              "scale": st.integers(1, 16), "frame_ms": st.integers(20, 5000)})


@FAST
@given(valid_interpolations)
def test_every_interpolation_in_bounds_is_accepted_as_sent(body):
    """The valid side of the property above (arbitrary bodies are almost never valid)."""
    req = InterpolateRequest.model_validate(body)
    for given_point, point in ((body["start"], req.start), (body["end"], req.end)):
        if "seed" in given_point:
            assert isinstance(point, SeedEndpoint) and point.seed == given_point["seed"]
        else:
            assert isinstance(point, LatentEndpoint) and point.latent == given_point["latent"]
    for key in ("steps", "method", "label", "truncation", "format", "scale", "frame_ms"):
        if key in body:
            assert getattr(req, key) == body[key]
    assert InterpolateRequest.model_validate_json(req.model_dump_json()) == req


# -- the upload decoder --

FORMATS = {"PNG": {"L", "RGB", "RGBA", "LA", "P", "1", "I;16"}, "BMP": {"L", "RGB", "P", "1"},
           "GIF": {"L", "P"}, "TIFF": {"L", "RGB", "RGBA", "CMYK", "1", "I;16", "I"}, "JPEG": {"L", "RGB", "CMYK"},
           "WEBP": {"RGB", "RGBA"}}


@st.composite
def images(draw) -> tuple[bytes, str, tuple[int, int]]:
    fmt = draw(st.sampled_from(sorted(FORMATS)))
    mode = draw(st.sampled_from(sorted(FORMATS[fmt])))
    w, h = draw(st.integers(1, 48)), draw(st.integers(1, 48))
    seed = draw(st.integers(0, 2**32 - 1))
    rng = np.random.default_rng(seed)
    img = Image.frombytes(mode, (w, h), rng.bytes(len(Image.new(mode, (w, h)).tobytes())))
    buf = io.BytesIO()
    img.save(buf, format=fmt)
    return buf.getvalue(), mode, (w, h)


def check_decoded(arr: np.ndarray) -> None:
    assert arr.shape == (28, 28) and arr.dtype == np.float32
    assert np.isfinite(arr).all() and arr.min() >= 0.0 and arr.max() <= 1.0


@settings(max_examples=200, deadline=None)
@given(images(), st.booleans())
def test_any_still_image_decodes_to_28x28_in_unit_range(image, invert):
    data, _mode, _size = image
    arr = decode_upload(data, MAX_PIXELS, invert)
    check_decoded(arr)
    if invert:
        np.testing.assert_allclose(arr, 1.0 - decode_upload(data, MAX_PIXELS, False), atol=1e-6)


@settings(max_examples=100, deadline=None)
@given(st.integers(1, 64), st.integers(0, 255))
def test_constant_square_gray_image_decodes_to_its_level(side, level):
    data = io.BytesIO()
    Image.new("L", (side, side), level).save(data, format="PNG")
    np.testing.assert_allclose(decode_upload(data.getvalue(), MAX_PIXELS), level / 255.0, atol=1e-6)


@settings(max_examples=300, deadline=None)
@given(images(), st.data())
def test_damaged_images_decode_or_fail_with_a_client_error(image, data):
    """Truncated, bit-flipped or spliced files: a (28, 28) result or InvalidInput /
    UnsupportedMediaType / PayloadTooLarge (4xx); nothing else escapes."""
    blob = bytearray(image[0])
    how = data.draw(st.sampled_from(["truncate", "flip", "splice"]))
    if how == "truncate":
        blob = blob[: data.draw(st.integers(0, len(blob) - 1))]
    elif how == "flip":
        for _ in range(data.draw(st.integers(1, 8))):
            i = data.draw(st.integers(0, len(blob) - 1))
            blob[i] ^= 1 << data.draw(st.integers(0, 7))
    else:
        at = data.draw(st.integers(0, len(blob)))
        blob[at:at] = data.draw(st.binary(min_size=1, max_size=64))
    try:
        arr = decode_upload(bytes(blob), MAX_PIXELS)
    except (InvalidInput, UnsupportedMediaType, PayloadTooLarge):
        return
    check_decoded(arr)


@settings(max_examples=200, deadline=None)
@given(st.binary(max_size=512))
def test_arbitrary_bytes_never_escape_as_another_error(blob):
    assume(blob[:4] not in (b"\x89PNG", b"GIF8"))  # those prefixes are covered by the damaged-image test
    try:
        arr = decode_upload(blob, MAX_PIXELS)
    except (InvalidInput, UnsupportedMediaType, PayloadTooLarge):
        return
    check_decoded(arr)


@pytest.mark.parametrize("side", [5000, 20000, 65535])
def test_declared_size_over_the_limit_is_refused_before_decoding(side):
    """A PNG header that claims a huge image, with almost no data behind it."""
    import struct
    import zlib

    def chunk(kind: bytes, payload: bytes) -> bytes:
        return struct.pack(">I", len(payload)) + kind + payload + struct.pack(">I", zlib.crc32(kind + payload))

    png = b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", side, side, 8, 0, 0, 0, 0)) \
        + chunk(b"IDAT", zlib.compress(b"\x00" * 1024)) + chunk(b"IEND", b"")
    with pytest.raises(PayloadTooLarge):
        decode_upload(png, MAX_PIXELS)
