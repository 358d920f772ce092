"""Latent control: directions, edits, traversals, class swaps, latent maps, VAE variations and
GAN projection. Every image goes through the same batchers as ``samples`` (so the same bytes for
the same latent, label and model), every latent is built on the CPU from the request alone.

A start point is a seed (its latent as ``samples`` draws it, truncation applied, and its label
when none is given) or an explicit latent (label 0 when none is given, as ``decode``). Moves
along directions are added in float32, one at a time, by ``models.directions.move``: an edit by
the amounts of a traversal's frame is that frame, bit for bit."""

from __future__ import annotations

import asyncio
import math
import threading
import time
from collections.abc import Sequence
from concurrent.futures import Executor
from dataclasses import dataclass

import numpy as np
import torch

from app.engine.exceptions import InvalidInput, QueueFull, UnsupportedOperation
from app.engine.served import ServedModel
from app.engine.service import SEED_MOD, GenerationService, Images, Start, resolve_label, resolve_labels
from models.directions import Directions, move
from models.latents import seeded_latents
from models.projection import Projection, project


@dataclass
class Traversal:
    images: Images
    amounts: list[float]


@dataclass
class LatentMap:
    images: Images
    us: list[float]  # the horizontal coordinate of each column, left to right
    vs: list[float]  # the vertical coordinate of each row, top to bottom
    axes: tuple[int, int] | None  # the directions spanned; None: the latent's own two coordinates


def frame_amounts(extent: float, steps: int) -> list[float]:
    """``steps`` amounts from -extent to +extent, symmetric, the middle one exactly 0 for odd steps."""
    # an integer numerator: a_(steps-1-i) is exactly -a_i, and whole amounts come out whole
    return [extent * (2 * i - (steps - 1)) / (steps - 1) for i in range(steps)]


class ControlService:
    def __init__(self, generation: GenerationService, projection_executor: Executor):
        self.generation = generation
        self.registry = generation.registry
        self.settings = generation.settings
        self.projection_executor = projection_executor
        self._projections = asyncio.Semaphore(self.settings.projection_concurrency)
        self._projection_waiting = 0

    @staticmethod
    def label_of(model: ServedModel, label) -> int:
        return resolve_label(model, label)

    # -- directions and start points --
    def directions(self, name: str) -> tuple[ServedModel, Directions]:
        model = self.registry.get(name)
        assert model.directions is not None  # computed for every served model at load
        return model, model.directions

    def _direction(self, model: ServedModel, index: int) -> None:
        count = len(model.directions)
        if not 0 <= index < count:
            raise InvalidInput(f"direction {index} does not exist: {model.name} has directions 0..{count - 1} "
                               f"(GET /v1/models/{model.name}/directions)")

    def _start(self, model: ServedModel, start: Start, label, truncation: float) -> tuple[torch.Tensor, int, int | None]:
        """(latent (latent_dim,) float32, label, seed or None)."""
        if (start.seed is None) == (start.latent is None):
            raise InvalidInput("give exactly one of seed and latent")
        if start.latent is not None:
            z = self.generation.latent_tensor(model, [list(start.latent)])[0]
            return z, resolve_label(model, 0 if label is None else label), None
        seed = start.seed % SEED_MOD
        z, drawn = seeded_latents(seed, 1, model.latent_dim, len(model.classes), truncation, labels=label is None)
        y = int(drawn[0]) if drawn is not None else resolve_label(model, label)
        return z[0], y, seed

    async def _images(self, model: ServedModel, z: torch.Tensor, labels: list[int], seeds: list[int] | None) -> Images:
        self.generation.check_n(len(labels))
        self.generation.generators[model.name].admit(len(labels))
        pixels, batches = await self.generation.generate(model, z.contiguous(), torch.tensor(labels, dtype=torch.long))
        return Images(pixels, labels, seeds, z.numpy(), batches)

    # -- operations --
    async def edit(self, name: str, start: Start, label, truncation: float,
                   moves: Sequence[tuple[int, float]]) -> Images:
        model = self.registry.get(name)
        for index, _ in moves:
            self._direction(model, index)
        z0, y, seed = self._start(model, start, label, truncation)
        z = move(z0, model.directions.vectors, list(moves))
        if not torch.isfinite(z).all():
            raise InvalidInput("the moved latent overflows float32: use smaller amounts")
        return await self._images(model, z.unsqueeze(0), [y], None if seed is None else [seed])

    async def traverse(self, name: str, start: Start, label, truncation: float, direction: int,
                       extent: float, steps: int) -> Traversal:
        model = self.registry.get(name)
        self._direction(model, direction)
        self.generation.check_n(steps, "frames")
        z0, y, seed = self._start(model, start, label, truncation)
        amounts = frame_amounts(extent, steps)
        z = torch.stack([move(z0, model.directions.vectors, [(direction, a)]) for a in amounts])
        if not torch.isfinite(z).all():
            raise InvalidInput("the frames' latents overflow float32: use a smaller extent")
        seeds = None if seed is None else [seed] * steps
        return Traversal(await self._images(model, z, [y] * steps, seeds), amounts)

    async def class_swap(self, name: str, start: Start, labels, truncation: float) -> Images:
        """The start latent under each of ``labels`` (default: every class, in order). With a seed,
        image i is ``samples.png?seed=<seed>&label=<labels[i]>``, byte for byte."""
        model = self.registry.get(name)
        ys = list(range(len(model.classes))) if labels is None else resolve_labels(model, labels, len(labels))
        self.generation.check_n(len(ys), "classes")
        z0, _, seed = self._start(model, start, ys[0], truncation)
        z = z0.unsqueeze(0).expand(len(ys), -1).clone()
        return await self._images(model, z, ys, None if seed is None else [seed] * len(ys))

    async def latent_map(self, name: str, label, extent: float, steps: int, axes: tuple[int, int] | None,
                         seed: int | None, truncation: float) -> LatentMap:
        """A steps x steps grid of decodes, rows top to bottom, columns left to right. A model with a
        2-d latent and no ``axes``: cell (r, c) decodes z = (us[c], vs[r]) itself (the classic
        manifold plot); otherwise z = z0 + us[c] * d_i + vs[r] * d_j, z0 the seed's latent or the origin."""
        model = self.registry.get(name)
        self.generation.check_n(steps * steps, "map cells")
        if axes is None and model.latent_dim != 2:
            axes = (0, 1)
        if axes is not None:
            for index in axes:
                self._direction(model, index)
            if axes[0] == axes[1]:
                raise InvalidInput(f"directions={axes[0]},{axes[1]}: two different directions span a map")
        if seed is not None:
            z0, y, seed = self._start(model, Start(seed=seed), label, truncation)
        else:
            z0, y = torch.zeros(model.latent_dim), resolve_label(model, 0 if label is None else label)
        us = frame_amounts(extent, steps)
        vs = us[::-1]  # the top row is the largest coordinate, as on a plot
        if axes is None:
            z = torch.tensor([[u, v] for v in vs for u in us], dtype=torch.float32)
        else:
            z = torch.stack([move(z0, model.directions.vectors, [(axes[0], u), (axes[1], v)]) for v in vs for u in us])
        if not torch.isfinite(z).all():
            raise InvalidInput("the map's latents overflow float32: use a smaller extent")
        cells = steps * steps
        images = await self._images(model, z, [y] * cells, None if seed is None else [seed] * cells)
        return LatentMap(images, us, vs, axes)

    async def variations(self, name: str, image: np.ndarray, label, n: int, temperature: float,
                         seed: int) -> tuple[Images, np.ndarray]:
        """image: (H, W) float32 in [0, 1]. Encodes it, then decodes mu + temperature * sigma * eps_i
        with eps_i ~ N(0, I) from a CPU generator seeded with seed + i (the seed rule of samples).
        Returns the images and the (mu, logvar) of the upload."""
        model = self.generation.vae_model(name)
        self.generation.check_n(n, "variations")
        stats, ys = await self.generation.encode(name, image[None], label)
        mu = torch.from_numpy(np.ascontiguousarray(stats[0, 0], dtype=np.float32))
        sigma = torch.exp(0.5 * torch.from_numpy(np.ascontiguousarray(stats[0, 1], dtype=np.float32)))
        eps = torch.stack([torch.randn(model.latent_dim, generator=torch.Generator().manual_seed((seed + i) % SEED_MOD))
                           for i in range(n)])
        z = mu + torch.tensor(temperature, dtype=torch.float32) * sigma * eps
        seeds = [(seed + i) % SEED_MOD for i in range(n)]
        return await self._images(model, z, [ys[0]] * n, seeds), stats[0]

    async def project(self, name: str, image: np.ndarray, label, steps: int, starts: int, seed: int) -> Projection:
        """image: (H, W) float32 in [0, 1] -> the latent whose image is nearest it (models.projection).
        At most PROJECTION_CONCURRENCY run at once, in their own thread; a few more may wait, the
        rest get a 429. Each stops at PROJECTION_TIMEOUT_S with the best latent found by then."""
        model = self.registry.get(name)
        if model.kind != "gan":
            raise UnsupportedOperation(f"{name} is a {model.kind}; projection inverts a GAN (a VAE encodes: /encode)")
        s = self.settings
        if not 1 <= steps <= s.projection_max_steps:
            raise InvalidInput(f"steps={steps}; between 1 and {s.projection_max_steps} (LATENTSERVE_PROJECTION_MAX_STEPS)")
        if not 1 <= starts <= 16:
            raise InvalidInput(f"starts={starts}; between 1 and 16")
        y = resolve_label(model, label)
        c, h, w = model.image_shape
        if image.shape != (h, w):
            raise InvalidInput(f"images must be {h}x{w}")
        if self._projections.locked() and self._projection_waiting >= 4 * s.projection_concurrency:
            raise QueueFull("too many projections in progress; retry later",
                            retry_after_s=max(1, math.ceil(s.projection_timeout_s)))
        target = torch.from_numpy(np.ascontiguousarray(image, dtype=np.float32)).view(c, h, w) * 2.0 - 1.0
        z0, _ = seeded_latents(seed, starts, model.latent_dim, len(model.classes), labels=False)
        self._projection_waiting += 1
        try:
            await asyncio.wait_for(self._projections.acquire(), s.request_timeout_s)
        except asyncio.TimeoutError:
            raise QueueFull("no projection slot freed in time; retry later",
                            retry_after_s=max(1, math.ceil(s.projection_timeout_s))) from None
        finally:
            self._projection_waiting -= 1
        try:
            deadline = time.monotonic() + s.projection_timeout_s
            stop = self.registry.stopping

            cancelled = threading.Event()  # the client left: the thread stops at its next step

            def run() -> Projection:
                return project(model.module, target.to(model.device, model.dtype), y, z0.to(model.device), steps,
                               should_stop=lambda: cancelled.is_set() or stop.is_set() or time.monotonic() > deadline)

            future = asyncio.get_running_loop().run_in_executor(self.projection_executor, run)
            try:
                return await asyncio.shield(future)
            except asyncio.CancelledError:
                cancelled.set()
                raise
        finally:
            self._projections.release()
