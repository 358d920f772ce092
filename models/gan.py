"""Class-conditional DCGAN-style GAN for square images in [-1, 1] (1x28x28 for Fashion-MNIST).

Generator: (z, y) -> image, built from nearest-neighbour upsampling + 3x3 convolutions (no
stride-2 transposed convs, which cause checkerboard artifacts: Odena et al., 2016,
https://distill.pub/2016/deconv-checkerboard/) and *no BatchNorm*: PixelNorm (Karras et al.,
2018, ProGAN) normalises each pixel's feature vector within its own row, so in eval mode a row's
image depends only on its own (z, y), and an EMA copy of the weights needs no running stats.
The label enters as an embedding concatenated to z and as a learned per-block bias.

Discriminator: spectral-normalised convolutions (Miyato et al., 2018) with a projection head
(Miyato & Koyama, 2018): D(x, y) = psi(phi(x)) + <embed(y), phi(x)>. Optionally (training's
``--aux-classifier W``) a class head on the same features, as in AC-GAN (Odena et al., 2017): D
learns to name the class of *real* images, G is pushed to make images that head names as asked
(``aux_class_loss``). It is trained on real images only, so it is a classifier of the data, and
the term adds W * cross-entropy to each player's loss; it is not part of the shipped generator.

Loss: the hinge version of the GAN game (Lim & Ye, 2017; used by SAGAN and BigGAN).
The classic minimax objective is min_G max_D E[log D(x)] + E[log(1 - D(G(z)))]. With logits
d = D(.), the hinge discriminator maximises E[min(0, -1 + d(x))] + E[min(0, -1 - d(G(z)))],
i.e. it minimises ``d_hinge_loss``; the generator minimises -E[d(G(z))] (``g_hinge_loss``),
which like the non-saturating -E[log sigmoid(d(G(z)))] gives strong gradients early in training
instead of the saturating log(1 - D(G(z))). At the optimum of both games the generator's
distribution equals the data distribution.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn as nn
import torch.nn.functional as F
from torch.nn.utils import spectral_norm


@dataclass
class GANConfig:
    latent_dim: int = 64
    num_classes: int = 10
    g_channels: int = 128  # width of the first (image_size / 4) block; halves at each upsampling
    d_channels: int = 32
    embed_dim: int = 32
    image_channels: int = 1
    image_size: int = 28  # height = width; two x2 upsamplings, so a multiple of 4

    def __post_init__(self) -> None:
        if self.image_size <= 0 or self.image_size % 4:
            raise ValueError(f"image_size must be a positive multiple of 4, got {self.image_size}")


class PixelNorm(nn.Module):
    """Normalise every pixel's channel vector to unit RMS (per row, per position)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x * torch.rsqrt(x.pow(2).mean(dim=1, keepdim=True) + 1e-8)


class UpBlock(nn.Module):
    """x2 nearest upsample -> 3x3 conv -> + class bias -> PixelNorm -> LeakyReLU."""

    def __init__(self, c_in: int, c_out: int, num_classes: int):
        super().__init__()
        self.conv = nn.Conv2d(c_in, c_out, 3, padding=1)
        self.class_bias = nn.Embedding(num_classes, c_out)
        nn.init.zeros_(self.class_bias.weight)
        self.norm = PixelNorm()

    def forward(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        x = F.interpolate(x, scale_factor=2, mode="nearest")  # (B, c_in, 2H, 2W)
        x = self.conv(x) + self.class_bias(y)[:, :, None, None]  # (B, c_out, 2H, 2W)
        return F.leaky_relu(self.norm(x), 0.2)


class Generator(nn.Module):
    def __init__(self, cfg: GANConfig):
        super().__init__()
        self.cfg = cfg
        c = cfg.g_channels
        self.embed = nn.Embedding(cfg.num_classes, cfg.embed_dim)
        self.base = cfg.image_size // 4  # 7 for 28 px
        self.fc = nn.Linear(cfg.latent_dim + cfg.embed_dim, c * self.base * self.base)
        self.norm = PixelNorm()
        self.up1 = UpBlock(c, c // 2, cfg.num_classes)  # 7 -> 14
        self.up2 = UpBlock(c // 2, c // 4, cfg.num_classes)  # 14 -> 28
        self.to_image = nn.Conv2d(c // 4, cfg.image_channels, 3, padding=1)

    def forward(self, z: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        """z: (B, latent_dim) float, y: (B,) int64 -> (B, 1, 28, 28) in [-1, 1]."""
        h = torch.cat([z, self.embed(y)], dim=1)  # (B, latent_dim + embed_dim)
        h = self.fc(h).view(-1, self.cfg.g_channels, self.base, self.base)  # (B, c, 7, 7)
        h = F.leaky_relu(self.norm(h), 0.2)
        h = self.up2(self.up1(h, y), y)  # (B, c/4, 28, 28)
        return torch.tanh(self.to_image(h))

    # The serving interface shared with the VAE.
    def generate(self, z: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        return self.forward(z, y)

    def latent_weight(self) -> torch.Tensor:
        """The first layer's weight on z alone, (out, latent_dim): what SeFa factorises (models.directions)."""
        return self.fc.weight[:, :self.cfg.latent_dim]


class Discriminator(nn.Module):
    def __init__(self, cfg: GANConfig, classify: bool = False):
        super().__init__()
        c = cfg.d_channels
        self.body = nn.Sequential(
            spectral_norm(nn.Conv2d(cfg.image_channels, c, 3, padding=1)),  # (B, c, 28, 28)
            nn.LeakyReLU(0.2),
            spectral_norm(nn.Conv2d(c, c * 2, 4, stride=2, padding=1)),  # (B, 2c, 14, 14)
            nn.LeakyReLU(0.2),
            spectral_norm(nn.Conv2d(c * 2, c * 4, 4, stride=2, padding=1)),  # (B, 4c, 7, 7)
            nn.LeakyReLU(0.2),
        )
        self.head = spectral_norm(nn.Linear(c * 4, 1))
        self.project = spectral_norm(nn.Embedding(cfg.num_classes, c * 4))
        self.classes = spectral_norm(nn.Linear(c * 4, cfg.num_classes)) if classify else None

    def forward(self, x: torch.Tensor, y: torch.Tensor, with_classes: bool = False):
        """x: (B, 1, 28, 28), y: (B,) -> logits (B,); with_classes (a D built with classify=True):
        (logits, class logits (B, num_classes)) from one pass."""
        phi = self.body(x).sum(dim=(2, 3))  # (B, 4c): global sum pooling
        d = self.head(phi).squeeze(1) + (self.project(y) * phi).sum(dim=1)
        if not with_classes:
            return d
        if self.classes is None:
            raise ValueError("this discriminator has no class head (build it with classify=True)")
        return d, self.classes(phi)


def d_hinge_loss(d_real: torch.Tensor, d_fake: torch.Tensor) -> torch.Tensor:
    return F.relu(1.0 - d_real).mean() + F.relu(1.0 + d_fake).mean()


def g_hinge_loss(d_fake: torch.Tensor) -> torch.Tensor:
    return -d_fake.mean()


def aux_class_loss(class_logits: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """The AC-GAN term: cross-entropy of D's class head against the class asked for."""
    return F.cross_entropy(class_logits, y)


def ema_decay_at(step: int, decay: float, rampup: float) -> float:
    """The EMA decay for update number ``step`` (1-based) with a ramped half-life.

    With ``rampup`` r > 0 the average's half-life is at most r * step updates, so early in
    training, when G moves fast, the average forgets its random start quickly; it grows until the
    half-life of ``decay`` itself (ln 0.5 / ln decay updates: 693 for 0.999) takes over. This is
    StyleGAN2-ADA's ``ema_rampup`` (Karras et al., 2020, training_loop.py), counted in steps
    rather than images. ``rampup`` 0 keeps ``decay`` from the first step.
    """
    if rampup <= 0:
        return decay
    return min(decay, 0.5 ** (1.0 / (rampup * max(step, 1))))


@torch.no_grad()
def ema_update(ema: nn.Module, model: nn.Module, decay: float) -> None:
    """ema <- decay * ema + (1 - decay) * model, parameter by parameter."""
    for pe, pm in zip(ema.parameters(), model.parameters()):
        pe.lerp_(pm, 1.0 - decay)
