"""What the service needs from a generator module, said as a ``Protocol`` (both models.gan.Generator
and models.vae.VAE satisfy it; a VAE adds encode / reparameterize for /encode and variations)."""

from __future__ import annotations

from typing import Any, Protocol, runtime_checkable

import torch


@runtime_checkable
class Generative(Protocol):
    cfg: Any  # the config dataclass: latent_dim and num_classes at least

    def generate(self, z: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        """z: (B, latent_dim) float, y: (B,) int64 class -> (B, C, H, W) images in [-1, 1]."""
        ...

    def latent_weight(self) -> torch.Tensor:
        """The first layer's weight on the latent alone, (out, latent_dim): what SeFa factorises."""
        ...
