"""A served model: its module on the device, in eval mode, behind a fixed set of batch shapes
(buckets), and its forward engine: padding to a bucket, passes split in one-thread parts on a CPU,
the TorchScript graph the warm-up keeps, and the warm-up's calibration. Runs in the forward
executor thread; knows nothing of HTTP or asyncio."""

from __future__ import annotations

import logging
import threading
import warnings
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
import torch.nn as nn

from app.engine.passes import Pixels, run_in_parts
from models.card import ModelLoadError
from models.directions import Directions
from models.images import to_uint8

log = logging.getLogger("latentserve.registry")


def bucket_sizes(min_rows: int, max_rows: int) -> list[int]:
    """The padded batch shapes: powers of two from min_rows up to the first >= max_rows.

    PyTorch is not batch-invariant: on an x86 CPU a row computed in a batch of 1, 3 or 9 can
    differ in the last bits from the same row in a batch of 64 (README: batch-invariant bytes).
    Padding every pass to one of these shapes, kept by the warm-up's calibration, keeps an
    image's bytes independent of what it was batched with."""
    size = 1
    while size < min_rows:
        size *= 2
    sizes = [size]
    while sizes[-1] < max_rows:
        sizes.append(sizes[-1] * 2)
    return sizes


class WarmUpStopped(Exception):
    """A shutdown began while the models warmed up: the rest of the warm-up is skipped."""


def _check(stop: threading.Event | None) -> None:
    if stop is not None and stop.is_set():
        raise WarmUpStopped("a shutdown began during the warm-up")


@dataclass
class ServedModel:
    name: str
    kind: str
    version: str
    card: dict[str, Any]
    module: nn.Module
    device: torch.device
    dtype: torch.dtype
    buckets: list[int]
    lock: threading.Lock = field(default_factory=threading.Lock, repr=False)
    torchscript: bool = False  # warm-up tries a TorchScript pass (LATENTSERVE_TORCHSCRIPT)
    layout: str = "nchw"  # the convolution weights' memory layout, "nhwc" with LATENTSERVE_CHANNELS_LAST on a CPU
    graph: Any = field(default=None, repr=False)  # the frozen TorchScript pass, once script() kept it
    parts: int = 1  # most parts a pass is split into (LATENTSERVE_SPLIT_PASSES): the first in the calling thread, the rest in part_pool
    part_pool: ThreadPoolExecutor | None = field(default=None, repr=False)
    threads: int = 0  # torch threads of an unsplit pass, set again before each one when parts > 1
    directions: Directions | None = field(default=None, repr=False)  # SeFa directions, from the weights at load

    @property
    def latent_dim(self) -> int:
        return int(self.card["config"]["latent_dim"])

    @property
    def classes(self) -> list[str]:
        return list(self.card["classes"])

    @property
    def image_shape(self) -> tuple[int, int, int]:
        img = self.card["image"]
        return int(img["channels"]), int(img["height"]), int(img["width"])

    @property
    def sha256(self) -> str:
        return str(self.card["sha256"])

    @property
    def pixel_variant(self) -> tuple[str, ...]:
        """What, besides the weights and the request, changes a sample's bytes: the layout (NHWC),
        the device kind (a GPU's pixels are up to a grey level from the CPU's) and a half dtype.
        Empty for float32 NCHW on a CPU, whose bytes (and ETags) are those of earlier builds."""
        return tuple(part for part, default in ((self.layout, "nchw"), (self.device.type, "cpu"),
                                                 (str(self.dtype).removeprefix("torch."), "float32")) if part != default)

    def _bucket(self, rows: int) -> int:
        for b in self.buckets:
            if rows <= b:
                return b
        raise ValueError(f"{rows} rows exceed the largest batch shape {self.buckets[-1]}")

    def _pad(self, t: torch.Tensor, size: int) -> torch.Tensor:
        if t.shape[0] == size:
            return t
        return torch.cat([t, t.new_zeros((size - t.shape[0], *t.shape[1:]))])

    def generate_rows(self, z: torch.Tensor, y: torch.Tensor) -> np.ndarray:
        """z: (B, latent_dim) float32 CPU, y: (B,) int64 -> (B, H, W) uint8. The batch is padded
        to a bucket shape, so a row's pixels never depend on how many rows shared its pass."""
        rows = z.shape[0]
        size = self._bucket(rows)
        with self.lock, torch.inference_mode():
            zz = self._pad(z, size).to(self.device, self.dtype, non_blocking=True)
            yy = self._pad(y, size).to(self.device, non_blocking=True)
            pixels = self._in_parts(self._pass, size, zz, yy)
            return pixels[:rows].cpu().numpy()  # uint8 before leaving the device

    def _pass(self, z: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        with torch.inference_mode():  # thread-local: a part runs in a thread of its own
            return self.graph(z, y) if self.graph is not None else self._pixels(z, y)

    def _pixels(self, z: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        return to_uint8(self.module.generate(z, y))

    def parts_for(self, size: int) -> int:
        """How many parts a pass of ``size`` rows (a batch shape) runs as: ``parts``, halved until
        each part is a batch shape too (at least the smallest one), so that every part's rows
        are those of the unsplit pass (the calibration's check) and a lone row is never split."""
        n = self.parts
        while n > 1 and size // n < self.buckets[0]:
            n //= 2
        return n

    def _in_parts(self, fn: Callable[..., torch.Tensor], size: int, *inputs: torch.Tensor) -> torch.Tensor:
        """fn over ``inputs`` (rows first), as parts_for(size) parts run at once (app.engine.passes.run_in_parts),
        or whole, with every thread, when the pass is too small to split."""
        n = self.parts_for(size)
        if n == 1 or self.part_pool is None:
            if self.threads:  # a pass too small to split (a lone row) keeps every thread
                torch.set_num_threads(self.threads)
            return fn(*inputs)
        return run_in_parts(self.part_pool, self.threads, n, fn, *inputs)

    def script(self, stop: threading.Event | None = None) -> bool:
        """Make the forward pass one frozen TorchScript graph, kept only if its pixels equal eager
        mode's bit for bit at every batch shape (checked after the graph executor's first runs,
        which may optimise it). Returns whether it was kept.

        Why: an eager pass is some 40 ops, and between any two of them the forward thread must
        take the GIL back from the event loop (a 0.5 ms switch interval each time the loop is
        busy): a 1-thread pass of 8 rows took 54 ms instead of 16 while the loop ran Python. The
        TorchScript interpreter runs the whole pass without the GIL (17 ms), so the loop answers
        one pass's requests while the next pass computes (docs/benchmarks.md)."""
        top = self.buckets[-1]
        z = torch.randn(top, self.latent_dim, generator=torch.Generator().manual_seed(1)).to(self.device, self.dtype)
        y = (torch.arange(top) % len(self.classes)).to(self.device)
        try:
            with self.lock, torch.inference_mode(), warnings.catch_warnings():
                warnings.simplefilter("ignore")  # torch.jit's deprecation notice and tracer warnings
                graph = torch.jit.freeze(torch.jit.trace(Pixels(self.module).eval(), (z, y), check_trace=False))
                for size in self.buckets:
                    _check(stop)
                    expected = self._pixels(z[:size], y[:size])
                    for _ in range(3):  # the profiling executor settles on its plan in the first runs
                        got = graph(z[:size], y[:size])
                    if not torch.equal(got, expected):
                        log.warning("%s: the TorchScript pass differs from eager mode at %d rows; eager it is",
                                    self.name, size)
                        return False
        except WarmUpStopped:
            raise
        except Exception as e:  # noqa: BLE001 - any failure to trace leaves the eager pass, which works
            log.warning("%s: no TorchScript pass (%r); eager it is", self.name, e)
            return False
        self.graph = graph
        log.info("%s: forward pass as one TorchScript graph (bitwise equal to eager at %s rows)", self.name, self.buckets)
        return True

    def encode_rows(self, x: torch.Tensor, y: torch.Tensor) -> np.ndarray:
        """x: (B, 1, H, W) float32 in [0, 1], y: (B,) -> (B, 2, latent_dim) float32 (mu, logvar)."""
        rows = x.shape[0]
        size = self._bucket(rows)
        with self.lock, torch.inference_mode():
            xx = self._pad(x, size).to(self.device, self.dtype)
            yy = self._pad(y, size).to(self.device)
            out = self._in_parts(self._encode, size, xx, yy)
            return out[:rows].float().cpu().numpy()

    def _encode(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        with torch.inference_mode():
            mu, logvar = self.module.encode(x, y)
            return torch.stack([mu, logvar], dim=1)

    def calibrate(self, stop: threading.Event | None = None) -> list[int]:
        """Keep only the batch shapes whose rows are bitwise identical to the largest shape's.

        PyTorch picks kernels by shape (on this CPU, with the dense layers row-stable: the GAN
        agrees at every shape from 1 row, the VAE from 2, in either layout), so the smallest
        shapes are dropped until every kept one agrees with the largest, checked on random
        latents. A request then gets the same bytes however it is batched, and a lone request
        pays for as few padded rows as this device allows."""
        top = self.buckets[-1]
        z = torch.randn(top, self.latent_dim, generator=torch.Generator().manual_seed(0))
        y = torch.arange(top) % len(self.classes)

        def run(size: int) -> torch.Tensor:
            with self.lock, torch.inference_mode():
                return self.module.generate(z[:size].to(self.device, self.dtype), y[:size].to(self.device)).float().cpu()

        ref = run(top)
        keep = [top]
        for size in reversed(self.buckets[:-1]):
            _check(stop)
            if not torch.equal(run(size), ref[:size]):
                break
            keep.insert(0, size)
        self.buckets = keep
        log.info("%s: batch shapes %s (bitwise identical rows)", self.name, keep)
        return keep

    def check_split(self, stop: threading.Event | None = None) -> bool:
        """Keep split passes only if, at every batch shape that splits, their output equals the
        unsplit pass's bit for bit (pixels, and the VAE's encoder too): the parts run with one
        thread each, and a kernel could reduce in another order with fewer threads. Returns
        whether passes are split; a difference logs a warning and turns splitting off."""
        if self.parts == 1:
            return False
        c, h, w = self.image_shape
        top = self.buckets[-1]
        g = torch.Generator().manual_seed(2)
        z, x = torch.randn(top, self.latent_dim, generator=g), torch.rand(top, c, h, w, generator=g)
        y = torch.arange(top) % len(self.classes)
        checks = [(self.generate_rows, z)] + ([(self.encode_rows, x)] if self.kind == "vae" else [])
        parts = self.parts
        for size in self.buckets:
            if self.parts_for(size) == 1:
                continue
            for run, data in checks:
                _check(stop)
                inputs = (data[:size], y[:size])
                split = run(*inputs)
                self.parts = 1
                try:
                    whole = run(*inputs)
                finally:
                    self.parts = parts
                if not np.array_equal(split, whole):
                    log.warning("%s: a pass of %d rows split in %d parts differs from the whole pass; passes "
                                "are not split", self.name, size, self.parts_for(size))
                    self.parts = 1
                    return False
        log.info("%s: passes of %s rows run as %d parts, one thread each (bitwise equal to whole passes)",
                 self.name, [b for b in self.buckets if self.parts_for(b) > 1], parts)
        return True

    def warm_up(self, stop: threading.Event | None = None) -> None:
        """Calibrate the batch shapes, then one pass per shape (and per operation), so no
        request pays for first-use costs. ``stop``, once set, ends it (WarmUpStopped) at the next
        pass or trace: a shutdown need not wait for the whole warm-up."""
        _check(stop)
        self.calibrate(stop)
        if self.torchscript:
            self.script(stop)
        self.check_split(stop)
        c, h, w = self.image_shape
        for size in self.buckets:
            _check(stop)
            z = torch.zeros(size, self.latent_dim)
            y = torch.arange(size) % len(self.classes)
            out = self.generate_rows(z, y)
            if out.shape != (size, h, w):
                raise ModelLoadError(f"{self.name}: warm-up produced shape {out.shape}, expected {(size, h, w)}")
            if self.kind == "vae":
                self.encode_rows(torch.zeros(size, c, h, w), y)
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)

    def info(self) -> dict[str, Any]:
        c, h, w = self.image_shape
        return {"name": self.name, "kind": self.kind, "version": self.version, "latent_dim": self.latent_dim,
                "image": {"channels": c, "height": h, "width": w}, "classes": self.classes,
                "metrics": self.card.get("metrics", {}), "sha256": self.sha256}
