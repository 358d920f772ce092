"""Weights as safetensors plus a JSON model card that carries everything needed to rebuild the
module. ``load_model`` is the one loader: it checks the sha256 of the weights file and that every
tensor matches the module the card's config builds, and names the file in every error."""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
from pathlib import Path
from typing import Any

import torch
import torch.nn as nn
from safetensors import SafetensorError
from safetensors.torch import load, save_file

from models.classifier import Classifier, ClassifierConfig
from models.data import CLASS_NAMES, IMAGE_SHAPE
from models.gan import GANConfig, Generator
from models.vae import VAE, VAEConfig

CARD_SCHEMA = 1
KINDS: dict[str, tuple[type, type[nn.Module]]] = {
    "gan": (GANConfig, Generator),
    "vae": (VAEConfig, VAE),
    "classifier": (ClassifierConfig, Classifier),
}


class ModelLoadError(RuntimeError):
    """A card or weights file cannot be used; the message names the file and the cause."""


def sha256_file(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def build_module(kind: str, config: dict[str, Any]) -> nn.Module:
    if kind not in KINDS:
        raise ValueError(f"unknown kind {kind!r}; expected one of {sorted(KINDS)}")
    config_cls, module_cls = KINDS[kind]
    names = {f.name for f in dataclasses.fields(config_cls)}
    unknown, missing = set(config) - names, names - set(config)
    if unknown:
        raise ValueError(f"unknown {kind} config keys {sorted(unknown)}")
    if missing:  # a default would build a model the weights happen to fit, not the one described
        raise ValueError(f"{kind} config lacks {sorted(missing)}")
    return module_cls(config_cls(**config))


def image_of(config: dict[str, Any]) -> dict[str, int]:
    """The card's image shape: from the config's image_size / image_channels where it has them."""
    channels, height, width = IMAGE_SHAPE
    size = config.get("image_size")
    return {"channels": config.get("image_channels", channels), "height": size or height, "width": size or width}


def save_model(module: nn.Module, *, name: str, kind: str, out_dir: str | Path, version: str = "1.0.0",
               training: dict[str, Any] | None = None, metrics: dict[str, Any] | None = None) -> Path:
    """Write ``<out_dir>/<name>.safetensors`` and ``<name>.json``; returns the card path."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    weights = out / f"{name}.safetensors"
    tensors = {k: v.detach().cpu().contiguous() for k, v in module.state_dict().items()}
    # one metadata key: safetensors writes a metadata map in no fixed order, so with several keys
    # the same tensors could give files (and card sha256s) that differ from run to run
    save_file(tensors, str(weights), metadata={"model": json.dumps({"kind": kind, "name": name, "version": version},
                                                                   sort_keys=True)})
    cfg = dataclasses.asdict(module.cfg)
    card = {
        "schema": CARD_SCHEMA,
        "name": name,
        "kind": kind,
        "version": version,
        "config": cfg,
        "latent_dim": cfg.get("latent_dim"),
        "classes": list(CLASS_NAMES),
        "image": image_of(cfg),
        "value_range": [-1.0, 1.0],
        "weights_file": weights.name,
        "sha256": sha256_file(weights),
        "parameters": sum(p.numel() for p in module.parameters()),
        "training": training or {},
        "metrics": metrics or {},
    }
    card_path = out / f"{name}.json"
    write_card(card_path, card)
    return card_path


def write_card(path: Path, card: dict[str, Any]) -> None:
    tmp = path.with_suffix(".json.tmp")
    tmp.write_text(json.dumps(card, indent=2) + "\n")
    os.replace(tmp, path)


def read_card(path: str | Path) -> dict[str, Any]:
    path = Path(path)
    try:
        card = json.loads(path.read_text())
    except FileNotFoundError as e:
        raise ModelLoadError(f"{path}: model card not found") from e
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise ModelLoadError(f"{path}: unreadable model card ({e})") from e
    if not isinstance(card, dict):
        raise ModelLoadError(f"{path}: a model card must be a JSON object")
    missing = [k for k in ("name", "kind", "version", "config", "weights_file", "sha256") if k not in card]
    if missing:
        raise ModelLoadError(f"{path}: model card lacks {missing}")
    if not isinstance(card["weights_file"], str) or not isinstance(card["config"], dict):
        raise ModelLoadError(f"{path}: weights_file must be a string and config an object")
    return card


def load_model(card_path: str | Path, device: str | torch.device = "cpu",
               dtype: torch.dtype = torch.float32) -> tuple[nn.Module, dict[str, Any]]:
    """Card -> module in eval mode on ``device``, after checking sha256 and every tensor."""
    card_path = Path(card_path)
    card = read_card(card_path)
    weights = card_path.parent / Path(card["weights_file"]).name  # never leave the card's folder
    if not weights.is_file():
        raise ModelLoadError(f"{weights}: weights file not found (named by {card_path})")
    data = weights.read_bytes()  # hashed and parsed from the same bytes: the file cannot change in between
    digest = hashlib.sha256(data).hexdigest()
    if digest != card["sha256"]:
        raise ModelLoadError(f"{weights}: sha256 {digest[:16]}... does not match the card's {str(card['sha256'])[:16]}...")
    try:
        module = build_module(card["kind"], card["config"])
    except Exception as e:  # any failure (a negative size is a RuntimeError) names the card
        raise ModelLoadError(f"{card_path}: cannot build the model from the card ({e})") from e
    image = card.get("image")
    if (not isinstance(image, dict) or any(not isinstance(image.get(k), int) or isinstance(image.get(k), bool)
                                           or image[k] < 1 for k in ("channels", "height", "width"))
            or image["channels"] != getattr(module.cfg, "image_channels", image["channels"])):
        raise ModelLoadError(f"{card_path}: image must give positive integer channels, height and width, "
                             "the channels those of the config")
    classes = card.get("classes")
    if (not isinstance(classes, list) or not classes or not all(isinstance(c, str) and c.strip() for c in classes)
            or len({c.strip().lower() for c in classes}) != len(classes)):
        raise ModelLoadError(f"{card_path}: classes must be a list of distinct, non-empty names")
    num_classes = getattr(module.cfg, "num_classes", len(classes))
    if len(classes) != num_classes:  # a label past the embedding would fail a whole shared batch
        raise ModelLoadError(f"{card_path}: {len(classes)} classes named for a model of num_classes={num_classes}")
    try:
        tensors = load(data)
    except (SafetensorError, OSError) as e:
        raise ModelLoadError(f"{weights}: not a valid safetensors file ({e})") from e
    expected = module.state_dict()
    missing, unexpected = sorted(set(expected) - set(tensors)), sorted(set(tensors) - set(expected))
    if missing or unexpected:
        raise ModelLoadError(f"{weights}: tensors do not match the card's config (missing {missing[:5]}, unexpected {unexpected[:5]})")
    for key, t in tensors.items():
        if t.shape != expected[key].shape:
            raise ModelLoadError(f"{weights}: tensor {key} has shape {tuple(t.shape)}, the config needs {tuple(expected[key].shape)}")
        if t.dtype != expected[key].dtype:  # load_state_dict would cast it without a word
            raise ModelLoadError(f"{weights}: tensor {key} is {t.dtype}, the model needs {expected[key].dtype}")
        if t.is_floating_point() and not bool(torch.isfinite(t).all()):
            raise ModelLoadError(f"{weights}: tensor {key} holds NaN or infinite values")
    module.load_state_dict(tensors, strict=True)
    module.to(device=device, dtype=dtype).eval().requires_grad_(False)
    return module, card


def channels_last_on_cpu(module: nn.Module, device: torch.device) -> bool:
    """Put ``module``'s convolution weights in channels-last (NHWC) layout when it runs on a CPU,
    where oneDNN's convolutions then skip reordering every input and output (a 32-row GAN pass:
    27.6 instead of 44.8 ms on the 2-core dev VM). Returns whether it did. A pixel can differ from
    the NCHW pass's by one grey level; elsewhere the layout is left as loaded (not measured)."""
    if device.type != "cpu":
        return False
    module.to(memory_format=torch.channels_last)
    return True
