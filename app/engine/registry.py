"""Model cards -> served models (app/engine/served.py) on the device: which cards, which device,
which batch shapes, and the warm-up of them all. Knows nothing of HTTP or asyncio."""

from __future__ import annotations

import logging
import re
import threading
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import torch

from app.engine.exceptions import ModelNotFound
from app.engine.passes import pass_parts, stable_dense_rows
from app.engine.served import ServedModel, bucket_sizes
from app.server.settings import Settings
from models.card import ModelLoadError, channels_last_on_cpu, load_model, read_card
from models.directions import sefa
from models.interface import Generative

log = logging.getLogger("latentserve.registry")
SERVABLE_KINDS = ("gan", "vae")
NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$")
DTYPES = {"float32": torch.float32, "float16": torch.float16, "bfloat16": torch.bfloat16}


def resolve_device(spec: str) -> torch.device:
    if spec == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    device = torch.device(spec)
    if device.type == "cuda":
        if not torch.cuda.is_available():
            raise ModelLoadError(f"LATENTSERVE_DEVICE={spec}: CUDA is not available on this machine")
        if device.index is not None and device.index >= torch.cuda.device_count():
            raise ModelLoadError(f"LATENTSERVE_DEVICE={spec}: only {torch.cuda.device_count()} CUDA device(s)")
    if device.type == "mps" and not torch.backends.mps.is_available():
        raise ModelLoadError(f"LATENTSERVE_DEVICE={spec}: MPS is not available on this machine")
    return device


class Registry:
    def __init__(self, models: dict[str, ServedModel], device: torch.device,
                 part_pool: ThreadPoolExecutor | None = None):
        self.models = models
        self.device = device
        self.warmed = False
        self.stopping = threading.Event()  # set at shutdown: a warm-up still running ends early
        self.part_pool = part_pool

    def close(self) -> None:
        """Stop the part threads (after the last pass: the forward executor has shut down)."""
        if self.part_pool is not None:
            self.part_pool.shutdown(wait=True)

    def get(self, name: str) -> ServedModel:
        model = self.models.get(name)
        if model is None:
            raise ModelNotFound(f"no model named {name[:64]!r}; available: {', '.join(sorted(self.models))}")
        return model

    def warm_up(self) -> None:
        for model in self.models.values():
            model.warm_up(self.stopping)
        self.warmed = True

    @classmethod
    def from_settings(cls, settings: Settings) -> Registry:
        """Load every selected card. Raises ModelLoadError naming the file on the first failure."""
        if settings.torch_threads:
            torch.set_num_threads(settings.torch_threads)
        device = resolve_device(settings.device)
        threads = torch.get_num_threads()
        parts = pass_parts(device, threads, settings.split_passes)
        # the calling (forward) thread runs one part of each split pass, the pool the others
        part_pool = ThreadPoolExecutor(parts - 1, thread_name_prefix="pass-part") if parts > 1 else None
        if device.type == "cuda":
            torch.backends.cudnn.benchmark = False  # algorithm choice must not depend on timing
            torch.backends.cudnn.deterministic = True
        weights_dir = Path(settings.weights_dir)
        if not weights_dir.is_dir():
            raise ModelLoadError(f"{weights_dir}: weights directory not found (LATENTSERVE_WEIGHTS_DIR)")
        names = settings.models or sorted(
            p.stem for p in weights_dir.glob("*.json") if read_card(p).get("kind") in SERVABLE_KINDS)
        if not names:
            raise ModelLoadError(f"{weights_dir}: no gan or vae model cards found")
        buckets = bucket_sizes(settings.min_batch_rows, settings.max_batch_rows)
        models = {}
        for name in names:
            if not NAME_RE.match(name):
                raise ModelLoadError(f"LATENTSERVE_MODELS: {name!r} is not a valid model name")
            card_path = weights_dir / f"{name}.json"
            module, card = load_model(card_path, device=device, dtype=DTYPES[settings.dtype])
            if card["kind"] not in SERVABLE_KINDS:
                raise ModelLoadError(f"{card_path}: kind {card['kind']!r} cannot be served (only gan and vae)")
            if not isinstance(module, Generative):  # pragma: no cover - every servable kind is one
                raise ModelLoadError(f"{card_path}: a {card['kind']} module without the serving interface")
            directions = sefa(module.latent_weight())  # before the dense layers are wrapped
            stable_dense_rows(module)  # after the weights were checked: a serving-time wrapper only
            layout = "nhwc" if settings.channels_last and channels_last_on_cpu(module, device) else "nchw"
            models[name] = ServedModel(name, card["kind"], str(card["version"]), card, module, device,
                                       DTYPES[settings.dtype], buckets, torchscript=settings.torchscript, layout=layout,
                                       parts=parts, part_pool=part_pool, threads=threads if parts > 1 else 0,
                                       directions=directions)
            log.info("loaded %s (%s %s, sha256 %s...) on %s, %s", name, card["kind"], card["version"], card["sha256"][:12],
                     device, layout.upper())
        return cls(models, device, part_pool)
