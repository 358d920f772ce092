"""Class-conditional convolutional VAE for 1x28x28 images (Kingma & Welling, 2014,
https://arxiv.org/abs/1312.6114; conditional form: Sohn et al., 2015).

Interface as in pytorch/examples ``vae/main.py``: ``encode(x, y) -> (mu, logvar)``,
``reparameterize(mu, logvar)``, ``decode(z, y)``. Pixels are modelled as Bernoulli with
probabilities in [0, 1] (the data are scaled to [0, 1] for the loss); the serving interface
``generate`` maps the decoder's mean to [-1, 1] like the GAN's output.

Loss = the negative ELBO per image: E_q[-log p(x | z, y)] + KL(q(z | x, y) || N(0, I)), with
KL = -1/2 * sum(1 + logvar - mu^2 - exp(logvar)) (Kingma & Welling, Appendix B).

On grey-level targets the Bernoulli term is a cross-entropy, not -log p(x) of the 8-bit data: it
cannot go below the pixels' own binary entropy (189.9 nats per Fashion-MNIST test image), so the
ELBO it gives compares runs of this code, not published NLLs (README, "The models").
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn as nn
import torch.nn.functional as F


@dataclass
class VAEConfig:
    latent_dim: int = 16
    num_classes: int = 10
    channels: int = 32
    hidden: int = 256
    image_channels: int = 1


class Encoder(nn.Module):
    def __init__(self, cfg: VAEConfig):
        super().__init__()
        c = cfg.channels
        self.conv = nn.Sequential(
            nn.Conv2d(cfg.image_channels + 1, c, 4, stride=2, padding=1),  # (B, c, 14, 14)
            nn.LeakyReLU(0.2),
            nn.Conv2d(c, c * 2, 4, stride=2, padding=1),  # (B, 2c, 7, 7)
            nn.LeakyReLU(0.2),
        )
        self.label_map = nn.Embedding(cfg.num_classes, 28 * 28)  # label as an extra input plane
        self.fc = nn.Linear(c * 2 * 7 * 7 + cfg.num_classes, cfg.hidden)
        self.mu = nn.Linear(cfg.hidden, cfg.latent_dim)
        self.logvar = nn.Linear(cfg.hidden, cfg.latent_dim)
        self.num_classes = cfg.num_classes

    def forward(self, x: torch.Tensor, y: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        plane = self.label_map(y).view(-1, 1, 28, 28)
        h = self.conv(torch.cat([x, plane], dim=1)).flatten(1)  # (B, 2c*49)
        h = F.leaky_relu(self.fc(torch.cat([h, F.one_hot(y, self.num_classes).to(h.dtype)], 1)), 0.2)
        return self.mu(h), self.logvar(h)


class Decoder(nn.Module):
    def __init__(self, cfg: VAEConfig):
        super().__init__()
        c = cfg.channels
        self.cfg = cfg
        self.fc = nn.Sequential(
            nn.Linear(cfg.latent_dim + cfg.num_classes, cfg.hidden),
            nn.LeakyReLU(0.2),
            nn.Linear(cfg.hidden, c * 2 * 7 * 7),
            nn.LeakyReLU(0.2),
        )
        self.body = nn.Sequential(
            nn.Upsample(scale_factor=2, mode="nearest"),
            nn.Conv2d(c * 2, c, 3, padding=1),  # (B, c, 14, 14)
            nn.LeakyReLU(0.2),
            nn.Upsample(scale_factor=2, mode="nearest"),
            nn.Conv2d(c, c, 3, padding=1),  # (B, c, 28, 28)
            nn.LeakyReLU(0.2),
            nn.Conv2d(c, cfg.image_channels, 3, padding=1),  # logits (B, 1, 28, 28)
        )

    def forward(self, z: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        h = self.fc(torch.cat([z, F.one_hot(y, self.cfg.num_classes).to(z.dtype)], dim=1))
        return self.body(h.view(-1, self.cfg.channels * 2, 7, 7))


class VAE(nn.Module):
    def __init__(self, cfg: VAEConfig):
        super().__init__()
        self.cfg = cfg
        self.encoder = Encoder(cfg)
        self.decoder = Decoder(cfg)

    def encode(self, x: torch.Tensor, y: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """x: (B, 1, 28, 28) in [0, 1] -> mu, logvar: (B, latent_dim)."""
        return self.encoder(x, y)

    def reparameterize(self, mu: torch.Tensor, logvar: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
        std = torch.exp(0.5 * logvar)  # sigma = exp(logvar / 2)
        eps = torch.randn(std.shape, generator=generator, device=std.device, dtype=std.dtype)
        return mu + eps * std

    def decode_logits(self, z: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        return self.decoder(z, y)

    def decode(self, z: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        """Bernoulli means in [0, 1], (B, 1, 28, 28)."""
        return torch.sigmoid(self.decoder(z, y))

    def forward(self, x: torch.Tensor, y: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        mu, logvar = self.encode(x, y)
        z = self.reparameterize(mu, logvar)
        return self.decode_logits(z, y), mu, logvar

    # The serving interface shared with the GAN generator: images in [-1, 1].
    def generate(self, z: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        return self.decode(z, y) * 2.0 - 1.0

    def latent_weight(self) -> torch.Tensor:
        """The decoder's first layer's weight on z alone, (hidden, latent_dim): what SeFa factorises."""
        return self.decoder.fc[0].weight[:, :self.cfg.latent_dim]


def kl_divergence(mu: torch.Tensor, logvar: torch.Tensor) -> torch.Tensor:
    """KL(N(mu, exp(logvar)) || N(0, I)) per row, summed over latent dims: (B,)."""
    return -0.5 * torch.sum(1 + logvar - mu.pow(2) - logvar.exp(), dim=1)


def negative_elbo(logits: torch.Tensor, x01: torch.Tensor, mu: torch.Tensor, logvar: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Mean over the batch of (reconstruction NLL, KL, NLL + KL), in nats per image."""
    rec = F.binary_cross_entropy_with_logits(logits, x01, reduction="none").flatten(1).sum(1)
    kl = kl_divergence(mu, logvar)
    return rec.mean(), kl.mean(), (rec + kl).mean()
