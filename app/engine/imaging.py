"""Pixels <-> bytes: PNG images and grids, GIF animations, and decoding uploads for /encode.
Pure functions over numpy arrays, run in a thread pool by the routes (never on the event loop)."""

from __future__ import annotations

import io
import warnings

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

from app.engine.exceptions import InvalidInput, PayloadTooLarge, UnsupportedMediaType
from models.images import tile

TARGET_SIZE = (28, 28)
# magic numbers of the formats people send: a file that starts like one but cannot be opened is
# a damaged image (422), not an unsupported type (415)
IMAGE_SIGNATURES = (b"\x89PNG\r\n\x1a\n", b"\xff\xd8\xff", b"GIF87a", b"GIF89a", b"II*\x00", b"MM\x00*")


def _scaled(img: Image.Image, scale: int) -> Image.Image:
    return img if scale == 1 else img.resize((img.width * scale, img.height * scale), Image.NEAREST)


def png_bytes(pixels: np.ndarray, scale: int = 1, compress_level: int = 1) -> bytes:
    """(H, W) uint8 -> PNG bytes (grayscale, no metadata, so equal pixels give equal bytes)."""
    buf = io.BytesIO()
    _scaled(Image.fromarray(pixels, mode="L"), scale).save(buf, format="PNG", compress_level=compress_level)
    return buf.getvalue()


def grid_png_bytes(pixels: np.ndarray, columns: int, scale: int = 1, compress_level: int = 1) -> bytes:
    """(N, H, W) uint8 -> one PNG: the single image when N == 1, else a grid (2 px black gaps)."""
    if len(pixels) == 1:
        return png_bytes(pixels[0], scale, compress_level)
    return png_bytes(tile(pixels, columns), scale, compress_level)


def gif_bytes(frames: np.ndarray, duration_ms: int = 100, scale: int = 1, loop: int = 0) -> bytes:
    """(N, H, W) uint8 -> an animated GIF that loops forever (loop=0)."""
    images = [_scaled(Image.fromarray(f, mode="L"), scale) for f in frames]
    buf = io.BytesIO()
    images[0].save(buf, format="GIF", save_all=True, append_images=images[1:], duration=duration_ms, loop=loop)
    return buf.getvalue()


def declared_pixels(data: bytes) -> int:
    """Width x height from the image's header, without decoding it; 0 when the header cannot be
    read (decode_upload then says why)."""
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # a decompression bomb's warning: decode_upload refuses it
            with Image.open(io.BytesIO(data)) as img:
                w, h = img.size
    except Exception:  # noqa: BLE001 - any unreadable header: decode_upload reports it
        return 0
    return w * h


def decode_upload(data: bytes, max_pixels: int, invert: bool = False) -> np.ndarray:
    """Any still image Pillow reads -> (28, 28) float32 in [0, 1], as Fashion-MNIST looks.

    The conversion: the first (only) frame; EXIF orientation applied; transparency composited
    onto black; 16-bit and palette modes through Pillow's conversions to 8-bit grayscale
    (ITU-R 601-2 luma); resized with a box filter (area averaging) so that its longer side is 28
    pixels, then centred on a 28x28 black square. ``invert`` flips dark-on-light pictures to
    Fashion-MNIST's light-on-black. Header sizes are checked before any pixel is decoded (decompression bombs).
    """
    if not data:
        raise InvalidInput("empty upload: send one PNG, JPEG, ... image")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            img = Image.open(io.BytesIO(data))
            w, h = img.size
            if w * h > max_pixels:
                raise PayloadTooLarge(f"image of {w}x{h} pixels exceeds the limit of {max_pixels} pixels")
            if getattr(img, "n_frames", 1) > 1:
                raise InvalidInput("animated images are not supported: send one still image")
            img.load()
            img = ImageOps.exif_transpose(img)  # a malformed EXIF block raises here, not later
    except (PayloadTooLarge, InvalidInput):
        raise
    except (UnidentifiedImageError, Image.DecompressionBombError, Image.DecompressionBombWarning) as e:
        if isinstance(e, UnidentifiedImageError) and data.startswith(IMAGE_SIGNATURES):
            raise InvalidInput("the image is truncated or corrupt (its header cannot be read)") from None
        if isinstance(e, UnidentifiedImageError):
            raise UnsupportedMediaType("the upload is not an image Pillow can read (PNG, JPEG, GIF, BMP, WebP, ...)") from None
        raise PayloadTooLarge("image dimensions are too large") from None
    except Exception as e:  # noqa: BLE001 - crafted files raise all sorts from Pillow's decoders
        # (OSError, SyntaxError, EOFError, but also TypeError, KeyError, struct.error... found by
        # the property tests): whatever the decoder says, the upload is damaged, not the service
        raise InvalidInput(f"the image is truncated or corrupt ({type(e).__name__})") from None
    try:
        gray = _to_gray(img)
    except Exception as e:  # noqa: BLE001 - a mode Pillow cannot convert (LAB), or a crafted palette
        raise InvalidInput(f"cannot convert the image's {img.mode} pixels to grayscale ({type(e).__name__})") from None
    # fitted into 28x28 (box filter: area averaging) and centred on black; fitting before padding
    # keeps the work proportional to the pixels checked above (a padded square of a 40,000x1 strip
    # would be 1.6 GB), and never gives a side of 0
    side = max(gray.size)
    fit = tuple(max(1, round(d * TARGET_SIZE[0] / side)) for d in gray.size)
    canvas = Image.new("L", TARGET_SIZE, 0)
    canvas.paste(gray.resize(fit, Image.BOX), ((TARGET_SIZE[0] - fit[0]) // 2, (TARGET_SIZE[1] - fit[1]) // 2))
    arr = np.asarray(canvas, dtype=np.float32) / 255.0
    return 1.0 - arr if invert else arr


def _to_gray(img: Image.Image) -> Image.Image:
    """Any decoded mode -> 8-bit grayscale, transparency composited onto black."""
    if img.mode in ("I;16", "I;16B", "I;16L", "I"):
        arr = np.asarray(img, dtype=np.float64)
        top = 65535.0 if img.mode.startswith("I;16") else max(1.0, float(arr.max()))
        img = Image.fromarray(np.clip(arr / top * 255.0 + 0.5, 0, 255).astype(np.uint8), mode="L")
    if img.mode == "P":
        img = img.convert("RGBA")
    if img.mode in ("RGBA", "LA", "PA") or "transparency" in img.info:
        rgba = img.convert("RGBA")
        black = Image.new("RGBA", rgba.size, (0, 0, 0, 255))
        img = Image.alpha_composite(black, rgba)
    return img.convert("L")
