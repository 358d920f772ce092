"""app.engine.imaging: PNG/GIF encoding and upload decoding, checked pixel for pixel with Pillow."""

from __future__ import annotations

import io
import struct
import zlib

import numpy as np
import pytest
from PIL import Image

from app.engine.exceptions import InvalidInput, PayloadTooLarge, UnsupportedMediaType
from app.engine.imaging import decode_upload, gif_bytes, grid_png_bytes, png_bytes

MAX_PIXELS = 4096 * 4096


def rand_u8(*shape: int, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, size=shape, dtype=np.uint8)


def read_png(data: bytes) -> Image.Image:
    assert data[:8] == b"\x89PNG\r\n\x1a\n"
    img = Image.open(io.BytesIO(data))
    assert img.format == "PNG"
    return img


def encode(img: Image.Image, fmt: str = "PNG", **kw) -> bytes:
    buf = io.BytesIO()
    img.save(buf, format=fmt, **kw)
    return buf.getvalue()


# -- png_bytes / grid_png_bytes / gif_bytes --

def test_png_bytes_round_trip_is_exact():
    pixels = rand_u8(28, 28)
    img = read_png(png_bytes(pixels))
    assert img.mode == "L"
    assert img.size == (28, 28)
    np.testing.assert_array_equal(np.asarray(img), pixels)


def test_png_bytes_equal_pixels_give_identical_bytes():
    pixels = rand_u8(28, 28, seed=1)
    a = png_bytes(pixels)
    b = png_bytes(pixels.copy())
    assert a == b
    other = pixels.copy()
    other[5, 7] ^= 1
    assert png_bytes(other) != a


def test_png_bytes_compress_level_keeps_pixels():
    pixels = rand_u8(28, 28, seed=2)
    for level in (0, 9):
        np.testing.assert_array_equal(np.asarray(read_png(png_bytes(pixels, compress_level=level))), pixels)


def test_png_bytes_scale_uses_nearest_neighbour_blocks():
    pixels = rand_u8(28, 28, seed=3)
    img = read_png(png_bytes(pixels, scale=3))
    assert img.size == (84, 84)
    out = np.asarray(img)
    np.testing.assert_array_equal(out, np.repeat(np.repeat(pixels, 3, axis=0), 3, axis=1))
    # each 3x3 block is one flat colour equal to the source pixel
    assert out[3 * 10 + 2, 3 * 4] == pixels[10, 4]


def test_grid_single_image_is_just_that_image():
    pixels = rand_u8(1, 28, 28, seed=4)
    data = grid_png_bytes(pixels, columns=8)
    assert data == png_bytes(pixels[0])
    img = read_png(data)
    assert img.size == (28, 28)
    np.testing.assert_array_equal(np.asarray(img), pixels[0])


def test_grid_layout_five_images_two_columns():
    images = rand_u8(5, 28, 28, seed=5) | 1  # no zero pixels, so padding is distinguishable
    img = read_png(grid_png_bytes(images, columns=2))
    rows = 3
    assert img.size == (2 * (28 + 2) + 2, rows * (28 + 2) + 2) == (62, 92)
    grid = np.asarray(img)
    for i in range(5):
        r, c = divmod(i, 2)
        y0, x0 = 2 + r * 30, 2 + c * 30
        np.testing.assert_array_equal(grid[y0:y0 + 28, x0:x0 + 28], images[i])
    # the sixth cell is empty and the 2 px gaps are black
    np.testing.assert_array_equal(grid[62:90, 32:60], 0)
    assert (grid[:2, :] == 0).all() and (grid[:, :2] == 0).all()
    assert (grid[30:32, :] == 0).all() and (grid[:, 30:32] == 0).all()
    assert (grid[-2:, :] == 0).all() and (grid[:, -2:] == 0).all()
    assert int((grid != 0).sum()) == 5 * 28 * 28


def test_grid_scale_and_column_clamping():
    images = rand_u8(3, 28, 28, seed=6)
    img = read_png(grid_png_bytes(images, columns=2, scale=2))
    assert img.size == (2 * 62, 2 * 62)
    # more columns than images: one row of three
    img = read_png(grid_png_bytes(images, columns=10))
    assert img.size == (3 * 30 + 2, 30 + 2)
    np.testing.assert_array_equal(np.asarray(img)[2:30, 62:90], images[2])


def test_gif_bytes_frames_loop_and_pixels():
    frames = rand_u8(4, 28, 28, seed=7)
    data = gif_bytes(frames, duration_ms=70)
    assert data[:6] == b"GIF89a"
    img = Image.open(io.BytesIO(data))
    assert img.format == "GIF"
    assert img.n_frames == 4
    assert img.is_animated
    assert img.info["loop"] == 0
    assert img.info["duration"] == 70
    assert img.mode == "P"  # first frame: palette (grayscale palette from an L image)
    assert img.size == (28, 28)
    for i in range(4):
        img.seek(i)
        np.testing.assert_array_equal(np.asarray(img.convert("L")), frames[i])


def test_gif_bytes_scale_and_finite_loop():
    frames = rand_u8(2, 28, 28, seed=8)
    img = Image.open(io.BytesIO(gif_bytes(frames, scale=2, loop=3)))
    assert img.size == (56, 56)
    assert img.n_frames == 2
    assert img.info["loop"] == 3
    img.seek(1)
    np.testing.assert_array_equal(np.asarray(img.convert("L")), np.repeat(np.repeat(frames[1], 2, 0), 2, 1))


# -- decode_upload --

def test_decode_gray_png_round_trip_exact():
    pixels = rand_u8(28, 28, seed=9)
    out = decode_upload(encode(Image.fromarray(pixels, mode="L")), MAX_PIXELS)
    assert out.shape == (28, 28)
    assert out.dtype == np.float32
    np.testing.assert_array_equal(out, pixels.astype(np.float32) / 255.0)


def test_decode_invert_gives_one_minus_x():
    pixels = rand_u8(28, 28, seed=10)
    data = encode(Image.fromarray(pixels, mode="L"))
    plain = decode_upload(data, MAX_PIXELS)
    inverted = decode_upload(data, MAX_PIXELS, invert=True)
    assert inverted.dtype == np.float32
    np.testing.assert_array_equal(inverted, 1.0 - plain)
    assert inverted[pixels == 0].min() == 1.0


def test_decode_rgb_uses_luma():
    rgb = np.zeros((28, 28, 3), np.uint8)
    rgb[:, :14] = (255, 255, 255)
    rgb[:, 14:] = (255, 0, 0)  # pure red: ITU-R 601-2 luma = 0.299 * 255 -> 76
    out = decode_upload(encode(Image.fromarray(rgb, mode="RGB")), MAX_PIXELS)
    assert out.shape == (28, 28) and out.dtype == np.float32
    np.testing.assert_array_equal(out[:, :14], 1.0)
    np.testing.assert_allclose(out[:, 14:], 76 / 255, atol=1 / 255)


def test_decode_rgba_transparent_pixels_become_black():
    rgba = np.zeros((28, 28, 4), np.uint8)
    rgba[..., :3] = 255  # white everywhere ...
    rgba[:, :14, 3] = 0  # ... but the left half fully transparent
    rgba[:, 14:, 3] = 255
    out = decode_upload(encode(Image.fromarray(rgba, mode="RGBA")), MAX_PIXELS)
    np.testing.assert_array_equal(out[:, :14], 0.0)
    np.testing.assert_array_equal(out[:, 14:], 1.0)


def test_decode_semi_transparent_composites_onto_black():
    rgba = np.zeros((28, 28, 4), np.uint8)
    rgba[..., :3] = 255
    rgba[..., 3] = 128
    out = decode_upload(encode(Image.fromarray(rgba, mode="RGBA")), MAX_PIXELS)
    np.testing.assert_allclose(out, 128 / 255, atol=1.5 / 255)


def test_decode_palette_image():
    img = Image.new("P", (28, 28), 0)
    img.putpalette([0, 0, 0, 255, 255, 255, 128, 128, 128] + [0] * (256 * 3 - 9))
    px = np.zeros((28, 28), np.uint8)
    px[:10] = 1
    px[10:20] = 2
    img.putdata(px.flatten().tolist())
    out = decode_upload(encode(img), MAX_PIXELS)
    np.testing.assert_array_equal(out[:10], 1.0)
    np.testing.assert_array_equal(out[10:20], np.float32(128 / 255))
    np.testing.assert_array_equal(out[20:], 0.0)


def test_decode_palette_with_transparency():
    img = Image.new("P", (28, 28), 0)
    img.putpalette([255, 255, 255, 200, 200, 200] + [0] * (256 * 3 - 6))
    px = np.zeros((28, 28), np.uint8)
    px[:, 14:] = 1
    img.putdata(px.flatten().tolist())
    data = encode(img, transparency=0)  # palette index 0 (white) is transparent
    assert Image.open(io.BytesIO(data)).mode == "P"
    out = decode_upload(data, MAX_PIXELS)
    np.testing.assert_array_equal(out[:, :14], 0.0)
    np.testing.assert_array_equal(out[:, 14:], np.float32(200 / 255))


@pytest.mark.parametrize("mode, transparent, other", [
    ("L", 255, 100),
    ("RGB", (255, 255, 255), (100, 100, 100)),
])
def test_decode_trns_colour_key_becomes_black(mode, transparent, other):
    img = Image.new(mode, (28, 28), transparent)
    img.paste(Image.new(mode, (14, 28), other), (14, 0))
    data = encode(img, transparency=transparent)  # PNG tRNS chunk, no alpha channel
    reopened = Image.open(io.BytesIO(data))
    assert reopened.mode == mode and "transparency" in reopened.info
    out = decode_upload(data, MAX_PIXELS)
    np.testing.assert_array_equal(out[:, :14], 0.0)
    np.testing.assert_array_equal(out[:, 14:], np.float32(100 / 255))


def test_decode_16_bit_grayscale():
    a = (np.arange(28 * 28, dtype=np.uint32).reshape(28, 28) * 80).astype(np.uint16)
    data = encode(Image.fromarray(a))
    assert Image.open(io.BytesIO(data)).mode == "I;16"
    out = decode_upload(data, MAX_PIXELS)
    assert out.shape == (28, 28) and out.dtype == np.float32
    expected = np.floor(a.astype(np.float64) / 65535.0 * 255.0 + 0.5).astype(np.uint8).astype(np.float32) / 255.0
    np.testing.assert_array_equal(out, expected)


def test_decode_non_square_is_padded_centred_and_resized():
    white = np.full((28, 56), 255, np.uint8)  # 56 wide, 28 high
    out = decode_upload(encode(Image.fromarray(white, mode="L")), MAX_PIXELS)
    assert out.shape == (28, 28)
    assert out.dtype == np.float32
    assert out.min() >= 0.0 and out.max() <= 1.0
    # padded to 56x56 with 14 black rows above and below, then halved: 7 black rows each side
    np.testing.assert_array_equal(out[:7], 0.0)
    np.testing.assert_array_equal(out[21:], 0.0)
    np.testing.assert_array_equal(out[7:21], 1.0)


def test_decode_tall_image_pads_columns():
    img = np.full((56, 28), 255, np.uint8)
    out = decode_upload(encode(Image.fromarray(img, mode="L")), MAX_PIXELS)
    np.testing.assert_array_equal(out[:, :7], 0.0)
    np.testing.assert_array_equal(out[:, 21:], 0.0)
    np.testing.assert_array_equal(out[:, 7:21], 1.0)


def test_decode_uneven_aspect_is_fitted_then_centred():
    gray = np.full((20, 30), 200, np.uint8)  # 30 wide, 20 high -> 28 x 19 (round(20 * 28 / 30)), rows 4..22
    out = decode_upload(encode(Image.fromarray(gray, mode="L")), MAX_PIXELS)
    np.testing.assert_array_equal(out[:4], 0.0)
    np.testing.assert_array_equal(out[23:], 0.0)
    np.testing.assert_allclose(out[4:23], 200 / 255, atol=1e-6)


def test_decode_narrow_strip_allocates_nothing_larger_than_the_upload(monkeypatch):
    """A 40,000x1 strip (a 120-byte PNG) is within the pixel limit; padding it to a square before
    resizing allocated 40,000^2 bytes (1.6 GB, 4 s). No image larger than the upload may be made."""
    data = encode(Image.fromarray(np.full((1, 40000), 255, np.uint8), mode="L"))
    assert len(data) < 1000
    sizes: list[tuple[int, int]] = []
    real_new = Image.new

    def spy(mode, size, *args, **kwargs):
        sizes.append(tuple(size))
        return real_new(mode, size, *args, **kwargs)

    monkeypatch.setattr(Image, "new", spy)
    out = decode_upload(data, MAX_PIXELS)
    assert sizes and max(w * h for w, h in sizes) <= 40000
    np.testing.assert_array_equal(out[13], 1.0)  # one row of 28 white pixels, centred
    assert out.sum() == 28.0


def test_decode_unconvertible_mode_is_invalid_input():
    buf = io.BytesIO()
    Image.new("LAB", (30, 20)).save(buf, format="TIFF")
    with pytest.raises(InvalidInput, match="LAB"):
        decode_upload(buf.getvalue(), MAX_PIXELS)


def test_decode_large_square_is_box_averaged():
    big = np.zeros((56, 56), np.uint8)
    big[0::2, 0::2] = 255  # one white pixel per 2x2 block -> every output pixel is 255/4
    out = decode_upload(encode(Image.fromarray(big, mode="L")), MAX_PIXELS)
    assert out.shape == (28, 28)
    np.testing.assert_allclose(out, round(255 / 4) / 255, atol=1 / 255)


def test_decode_jpeg():
    pixels = np.zeros((28, 28), np.uint8)
    pixels[:, 14:] = 200
    data = encode(Image.fromarray(pixels, mode="L"), fmt="JPEG", quality=95)
    assert data[:2] == b"\xff\xd8"
    out = decode_upload(data, MAX_PIXELS)
    assert out.shape == (28, 28) and out.dtype == np.float32
    assert 0.0 <= out.min() and out.max() <= 1.0
    assert np.abs(out - pixels / 255.0).mean() < 0.03


def test_decode_applies_exif_orientation():
    pixels = np.zeros((28, 28), np.uint8)
    pixels[:14] = 255  # white top half as stored
    exif = Image.Exif()
    exif[0x0112] = 3  # rotate 180 on display
    data = encode(Image.fromarray(pixels, mode="L"), fmt="JPEG", quality=95, exif=exif.tobytes())
    out = decode_upload(data, MAX_PIXELS)
    assert out[:10].mean() < 0.05  # top is now dark
    assert out[18:].mean() > 0.95  # bottom is now white


def test_decode_empty_bytes_is_invalid_input():
    with pytest.raises(InvalidInput, match="empty upload"):
        decode_upload(b"", MAX_PIXELS)


def test_decode_random_bytes_is_unsupported_media_type():
    data = np.random.default_rng(11).bytes(2000)
    with pytest.raises(UnsupportedMediaType, match="not an image"):
        decode_upload(data, MAX_PIXELS)
    with pytest.raises(UnsupportedMediaType):
        decode_upload(b"hello, this is plain text and not an image", MAX_PIXELS)


def test_decode_truncated_png_is_invalid_input():
    data = encode(Image.fromarray(rand_u8(28, 28, seed=12), mode="L"))
    assert len(data) > 200
    with pytest.raises(InvalidInput, match="truncated or corrupt"):
        decode_upload(data[: len(data) // 2], MAX_PIXELS)


def _png_with_declared_size(width: int, height: int) -> bytes:
    """A valid 1x1 PNG whose IHDR is patched to declare width x height (correct CRC)."""
    data = bytearray(encode(Image.new("L", (1, 1), 0)))
    assert data[12:16] == b"IHDR"
    data[16:24] = struct.pack(">II", width, height)
    crc = zlib.crc32(bytes(data[12:29])) & 0xFFFFFFFF
    data[29:33] = struct.pack(">I", crc)
    return bytes(data)


def test_decode_huge_declared_dimensions_is_payload_too_large():
    data = _png_with_declared_size(100_000, 100_000)
    with pytest.raises(PayloadTooLarge):
        decode_upload(data, MAX_PIXELS)


def test_decode_size_checked_before_pixels_are_decoded():
    # below Pillow's own bomb threshold, so app's max_pixels check is what fires; the pixel data
    # is that of a 1x1 image, so decoding it would fail with InvalidInput instead
    data = _png_with_declared_size(4000, 4000)
    with pytest.raises(PayloadTooLarge, match=r"4000x4000 pixels exceeds the limit of 1000000 pixels"):
        decode_upload(data, max_pixels=1_000_000)
    with pytest.raises(InvalidInput):
        decode_upload(data, max_pixels=MAX_PIXELS)


def test_decode_real_image_over_max_pixels():
    data = encode(Image.new("L", (100, 100), 255))
    with pytest.raises(PayloadTooLarge, match="100x100"):
        decode_upload(data, max_pixels=28 * 28)
    assert decode_upload(data, max_pixels=100 * 100).shape == (28, 28)  # exactly at the limit is fine


def test_decode_animated_gif_is_invalid_input():
    data = gif_bytes(rand_u8(2, 28, 28, seed=13))
    assert Image.open(io.BytesIO(data)).n_frames == 2
    with pytest.raises(InvalidInput, match="animated"):
        decode_upload(data, MAX_PIXELS)


def test_decode_single_frame_gif_is_fine():
    pixels = rand_u8(28, 28, seed=14)
    data = gif_bytes(pixels[None])
    out = decode_upload(data, MAX_PIXELS)
    np.testing.assert_array_equal(out, pixels.astype(np.float32) / 255.0)


def test_malformed_exif_is_a_clear_invalid_input():
    buf = io.BytesIO()
    Image.new("L", (28, 28)).save(buf, format="PNG", exif=b"Exif\x00\x00garbage")
    with pytest.raises(InvalidInput, match="corrupt"):
        decode_upload(buf.getvalue(), 10**6)


@pytest.mark.parametrize("error", [TypeError("Missing dimensions"), KeyError(256), IndexError("tile"), ZeroDivisionError()])
def test_any_decoder_error_is_a_clear_invalid_input(monkeypatch, error):
    """Crafted files make Pillow raise more than OSError (the property tests found a TIFF whose
    damaged tags raise TypeError); every such failure is the upload's, a 422, never a 500."""
    def broken_open(*args, **kwargs):
        raise error

    monkeypatch.setattr(Image, "open", broken_open)
    with pytest.raises(InvalidInput, match="truncated or corrupt"):
        decode_upload(encode(Image.new("L", (4, 4))), MAX_PIXELS)
