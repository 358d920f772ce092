"""Pixel helpers shared by training (sample grids) and serving: float images -> uint8 -> tiles."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from PIL import Image


def to_uint8(images: torch.Tensor) -> torch.Tensor:
    """(B, 1, H, W) float in [-1, 1] -> (B, H, W) uint8, rounding to nearest (on the same device)."""
    return ((images[:, 0].float().clamp(-1.0, 1.0) + 1.0) * 127.5).round_().to(torch.uint8)


def tile(images: np.ndarray, columns: int, pad: int = 2, fill: int = 0) -> np.ndarray:
    """(B, H, W) uint8 -> one (rows*(H+pad)+pad, columns*(W+pad)+pad) uint8 grid, row-major."""
    b, h, w = images.shape
    columns = max(1, min(columns, b))
    rows = (b + columns - 1) // columns
    grid = np.full((rows * (h + pad) + pad, columns * (w + pad) + pad), fill, dtype=np.uint8)
    for i in range(b):
        r, c = divmod(i, columns)
        y0, x0 = pad + r * (h + pad), pad + c * (w + pad)
        grid[y0:y0 + h, x0:x0 + w] = images[i]
    return grid


def save_grid(images: torch.Tensor, path: str | Path, columns: int, scale: int = 1) -> None:
    """Save (B, 1, H, W) images in [-1, 1] as a grayscale PNG grid."""
    img = Image.fromarray(tile(to_uint8(images.cpu()).numpy(), columns), mode="L")
    if scale > 1:
        img = img.resize((img.width * scale, img.height * scale), Image.NEAREST)
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    img.save(path)
