"""Requests -> latents -> batchers -> pixels. The layer between the routes (HTTP) and the
batchers (rows): it resolves seeds and labels, checks settings-dependent bounds, and builds the
per-request latents on the CPU, each image from its own seeded generator."""

from __future__ import annotations

import secrets
from collections.abc import Sequence
from concurrent.futures import Executor
from dataclasses import dataclass

import numpy as np
import torch

from app.engine.batching import Batcher, BatcherMetrics
from app.engine.exceptions import InvalidInput, UnsupportedOperation
from app.engine.registry import Registry
from app.engine.served import ServedModel
from app.server.settings import Settings
from models.latents import lerp, seeded_latent, seeded_latents, slerp

SEED_MOD = 2**32  # the API's seeds are 32-bit: image i's seed, s + i, wraps as its latent does


@dataclass(frozen=True)
class Start:
    """A latent given by a seed (the latent ``sample`` draws for it) or explicitly: exactly one."""
    seed: int | None = None
    latent: Sequence[float] | None = None


@dataclass
class Images:
    pixels: np.ndarray  # (n, H, W) uint8
    labels: list[int]
    seeds: list[int] | None  # per image, when made from seeds
    latents: np.ndarray | None  # (n, latent_dim) float32
    batch_ids: list[int]  # the forward passes that made the rows (for access logs)


def label_spec(text: str) -> int | str:
    """A label from a query string or form field: a class index when it is plain ASCII digits (at
    most 9 of them; "²" and Arabic-Indic digits are names, which fail as unknown ones), else a name."""
    v = text.strip()
    return int(v) if v.isascii() and v.isdigit() and len(v) <= 9 else text


def resolve_label(model: ServedModel, label: int | str) -> int:
    classes = model.classes
    if isinstance(label, bool):
        raise InvalidInput("label must be a class index or name, not a boolean")
    if isinstance(label, int):
        if 0 <= label < len(classes):
            return label
        raise InvalidInput(f"label {label} out of range: {model.name} has classes 0..{len(classes) - 1}")
    key = label.strip().lower()
    for i, name in enumerate(classes):
        if name.lower() == key:
            return i
    index = label_spec(key)
    if isinstance(index, int) and index < len(classes):
        return index
    raise InvalidInput(f"unknown label {label[:40]!r}; classes are: {', '.join(classes)}")


def resolve_labels(model: ServedModel, labels: int | str | list | None, n: int) -> list[int] | None:
    if labels is None:
        return None
    if isinstance(labels, list):
        if len(labels) != n:
            raise InvalidInput(f"labels has {len(labels)} entries for {n} images: give one label or exactly {n}")
        return [resolve_label(model, lab) for lab in labels]
    return [resolve_label(model, labels)] * n


class GenerationService:
    def __init__(self, registry: Registry, settings: Settings, executor: Executor, metrics: BatcherMetrics):
        self.registry = registry
        self.settings = settings
        self.generators: dict[str, Batcher] = {}
        self.encoders: dict[str, Batcher] = {}
        common = dict(max_batch_rows=settings.max_batch_rows, max_queue_rows=settings.max_queue_rows,
                      executor=executor, max_wait_s=settings.max_wait_ms / 1000.0,
                      max_queue_wait_s=settings.max_queue_wait_s, metrics=metrics)
        for name, model in registry.models.items():
            self.generators[name] = Batcher(name, model.generate_rows, **common)
            if model.kind == "vae":
                self.encoders[name] = Batcher(f"{name}:encode", model.encode_rows, **common)

    @property
    def batchers(self) -> list[Batcher]:
        return [*self.generators.values(), *self.encoders.values()]

    def check_n(self, n: int, what: str = "images") -> None:
        cap = self.settings.max_images_per_request
        if not 1 <= n <= cap:
            raise InvalidInput(f"{n} {what} requested; between 1 and {cap} per request (LATENTSERVE_MAX_IMAGES_PER_REQUEST)")

    @staticmethod
    def random_seed() -> int:
        return secrets.randbits(31)

    async def generate(self, model: ServedModel, z: torch.Tensor, y: torch.Tensor) -> tuple[np.ndarray, list[int]]:
        batcher = self.generators[model.name]
        job = batcher.submit((z, y), self.settings.request_timeout_s)
        return await batcher.result(job), job.batch_ids

    def check_sample(self, name: str, n: int, labels) -> tuple[ServedModel, list[int] | None]:
        """The model and the resolved labels, if ``n`` images with ``labels`` can be sampled from it;
        else the 4xx."""
        model = self.registry.get(name)
        self.check_n(n)
        return model, resolve_labels(model, labels, n)

    async def sample(self, name: str, n: int, seed: int | None, labels, truncation: float) -> Images:
        model, resolved = self.check_sample(name, n, labels)
        self.generators[name].admit(n)  # refuse before drawing latents: cheap 429s under overload
        seed = self.random_seed() if seed is None else seed
        z, drawn = seeded_latents(seed, n, model.latent_dim, len(model.classes), truncation, labels=resolved is None)
        y = drawn if drawn is not None else torch.tensor(resolved, dtype=torch.long)
        pixels, batches = await self.generate(model, z, y)
        # image i's seed wraps at 2**32 as its latent does (torch's CPU generator seeds from the
        # low 32 bits): reported so, it is a seed the API takes back
        return Images(pixels, y.tolist(), [(seed + i) % SEED_MOD for i in range(n)], z.numpy(), batches)

    def seed_labels(self, model: ServedModel, seed: int, n: int) -> list[int]:
        """The labels ``sample`` draws for seeds seed .. seed + n - 1 when none is given (no forward pass)."""
        _, drawn = seeded_latents(seed, n, model.latent_dim, len(model.classes))
        return drawn.tolist()

    def latent_tensor(self, model: ServedModel, latents: list[list[float]]) -> torch.Tensor:
        for i, lat in enumerate(latents):
            if len(lat) != model.latent_dim:
                raise InvalidInput(f"latent {i} has {len(lat)} values; {model.name} needs latent_dim={model.latent_dim}")
        z = torch.tensor(latents, dtype=torch.float32)
        if not torch.isfinite(z).all():
            raise InvalidInput("latents must be finite numbers (no NaN or infinity, and within float32 range)")
        return z

    async def decode(self, name: str, latents: list[list[float]], labels) -> Images:
        model = self.registry.get(name)
        self.check_n(len(latents), "latents")
        z = self.latent_tensor(model, latents)
        y = resolve_labels(model, labels, len(latents))
        pixels, batches = await self.generate(model, z, torch.tensor(y, dtype=torch.long))
        return Images(pixels, y, None, z.numpy(), batches)

    def vae_model(self, name: str) -> ServedModel:
        """The model, if it can encode images (a VAE); else UnsupportedOperation."""
        model = self.registry.get(name)
        if model.kind != "vae":
            raise UnsupportedOperation(f"{name} is a {model.kind}; only VAE models can encode images")
        return model

    async def encode(self, name: str, images: np.ndarray, labels) -> tuple[np.ndarray, list[int]]:
        """images: (n, 28, 28) float32 in [0, 1] -> ((n, 2, latent_dim) mu/logvar, labels)."""
        model = self.vae_model(name)
        self.check_n(len(images))
        c, h, w = model.image_shape
        if images.shape[1:] != (h, w):
            raise InvalidInput(f"images must be {h}x{w}")
        y = resolve_labels(model, labels, len(images))
        x = torch.from_numpy(np.ascontiguousarray(images, dtype=np.float32)).view(-1, c, h, w)
        stats = await self.encoders[name].run((x, torch.tensor(y, dtype=torch.long)), self.settings.request_timeout_s)
        return stats, y

    async def interpolate(self, name: str, start: Start, end: Start, steps: int, method: str, label,
                          truncation: float) -> Images:
        model = self.registry.get(name)
        cap = self.settings.max_interpolation_steps
        if not 2 <= steps <= cap:
            raise InvalidInput(f"steps={steps}; between 2 and {cap} (LATENTSERVE_MAX_INTERPOLATION_STEPS)")
        ends = []
        for point in (start, end):
            if point.latent is not None:
                ends.append(self.latent_tensor(model, [list(point.latent)])[0])
            else:
                ends.append(seeded_latent(point.seed, model.latent_dim, len(model.classes), truncation)[0])
        t = torch.linspace(0.0, 1.0, steps)
        try:
            z = (slerp if method == "slerp" else lerp)(ends[0], ends[1], t).float().contiguous()
        except ValueError as e:  # slerp between opposite latents
            raise InvalidInput(f"{e}; use \"method\": \"lerp\" (through the origin)") from None
        if not torch.isfinite(z).all():  # finite ends, but b - a overflowed float32 (e.g. 3e38 and -3e38)
            raise InvalidInput("the frames' latents overflow float32 between these endpoints; use smaller latents")
        y = [resolve_label(model, label)] * steps
        pixels, batches = await self.generate(model, z, torch.tensor(y, dtype=torch.long))
        return Images(pixels, y, None, z.numpy(), batches)

