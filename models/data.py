"""Fashion-MNIST from the gzip IDX files that Debian's ``dataset-fashion-mnist`` installs.

The IDX format (LeCun et al., http://yann.lecun.com/exdb/mnist/): a big-endian header of a
magic number (0x00000803 for 3-D uint8 images, 0x00000801 for 1-D uint8 labels) followed by
one uint32 per dimension, then the raw bytes. Nothing here downloads anything.
"""

from __future__ import annotations

import gzip
import struct
import zlib
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

DEFAULT_DATA_DIR = Path("/usr/share/datasets/fashion-mnist")
INSTALL_HINT = (
    "install it with `apt-get install -y dataset-fashion-mnist` "
    "(files land in /usr/share/datasets/fashion-mnist/) or pass --data-dir"
)
CLASS_NAMES: tuple[str, ...] = (
    "T-shirt/top", "Trouser", "Pullover", "Dress", "Coat",
    "Sandal", "Shirt", "Sneaker", "Bag", "Ankle boot",
)
IMAGE_SHAPE = (1, 28, 28)  # (C, H, W)
FILES = {
    "train": ("train-images-idx3-ubyte.gz", "train-labels-idx1-ubyte.gz"),
    "test": ("t10k-images-idx3-ubyte.gz", "t10k-labels-idx1-ubyte.gz"),
}
_IMAGES_MAGIC = 0x00000803
_LABELS_MAGIC = 0x00000801


class DataError(RuntimeError):
    """A data file is missing or corrupt; the message names the file and the fix."""


def read_idx(path: Path, expect_magic: int, expect_dims: tuple[int | None, ...] | None = None) -> np.ndarray:
    """Read one (optionally gzip-compressed) IDX file into a uint8 array, checking its header."""
    path = Path(path)
    if not path.is_file():
        raise DataError(f"{path}: file not found; {INSTALL_HINT}")
    try:
        opener = gzip.open if path.suffix == ".gz" else open
        with opener(path, "rb") as f:
            raw = f.read()
    except (OSError, EOFError, zlib.error) as e:
        raise DataError(f"{path}: cannot read ({e}); the file is corrupt, reinstall it: {INSTALL_HINT}") from e
    if len(raw) < 4:
        raise DataError(f"{path}: truncated header ({len(raw)} bytes); {INSTALL_HINT}")
    (magic,) = struct.unpack(">I", raw[:4])
    if magic != expect_magic:
        raise DataError(f"{path}: bad magic number 0x{magic:08x}, expected 0x{expect_magic:08x}")
    ndim = magic & 0xFF
    header = 4 + 4 * ndim
    if len(raw) < header:
        raise DataError(f"{path}: truncated header; {INSTALL_HINT}")
    dims = struct.unpack(f">{ndim}I", raw[4:header])
    if expect_dims is not None and (
        len(dims) != len(expect_dims) or any(e is not None and d != e for d, e in zip(dims, expect_dims))
    ):
        raise DataError(f"{path}: dimensions {dims}, expected {expect_dims}")
    size = int(np.prod(dims))
    if len(raw) - header != size:
        raise DataError(f"{path}: holds {len(raw) - header} data bytes, header promises {size}; file is corrupt")
    return np.frombuffer(raw, dtype=np.uint8, offset=header).reshape(dims)


@dataclass(frozen=True)
class Split:
    images: np.ndarray  # (N, 28, 28) uint8
    labels: np.ndarray  # (N,) uint8 in [0, 10)


def load_split(split: str, data_dir: str | Path | None = None) -> Split:
    """Load ``train`` or ``test`` from ``data_dir`` (default: Debian's location)."""
    if split not in FILES:
        raise ValueError(f"split must be one of {sorted(FILES)}, got {split!r}")
    root = Path(data_dir) if data_dir is not None else DEFAULT_DATA_DIR
    images_name, labels_name = FILES[split]
    images = read_idx(root / images_name, _IMAGES_MAGIC, (None, 28, 28))
    labels = read_idx(root / labels_name, _LABELS_MAGIC, (None,))
    if len(images) != len(labels):
        raise DataError(f"{root}: {len(images)} images but {len(labels)} labels in the {split} split")
    if labels.max(initial=0) >= len(CLASS_NAMES):
        raise DataError(f"{root / labels_name}: label {labels.max()} out of range [0, 10)")
    return Split(images, labels)


def to_tensors(split: Split, value_range: tuple[float, float] = (-1.0, 1.0)) -> tuple[torch.Tensor, torch.Tensor]:
    """uint8 images -> float32 (N, 1, 28, 28) in ``value_range``; labels -> int64 (N,)."""
    lo, hi = value_range
    x = torch.from_numpy(split.images.copy()).float().div_(255.0).mul_(hi - lo).add_(lo).unsqueeze(1)
    return x, torch.from_numpy(split.labels.astype(np.int64))


def write_idx(path: Path, array: np.ndarray, compress: bool = True) -> None:
    """Write a uint8 array as IDX (used by tests to make small synthetic data sets)."""
    array = np.ascontiguousarray(array, dtype=np.uint8)
    header = struct.pack(">I", 0x00000800 | array.ndim) + struct.pack(f">{array.ndim}I", *array.shape)
    data = header + array.tobytes()
    with (gzip.open if compress else open)(path, "wb") as f:
        f.write(data)
