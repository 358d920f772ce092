"""Seeded latents, truncation and interpolation, shared by training, evaluation and serving.

Seeds: image i of a request with seed s is drawn from its own CPU ``torch.Generator`` seeded
with s + i, so any image can be reproduced alone (as StyleGAN's seeds work). From that
generator we draw the latent z ~ N(0, I) first, then (if not given) the label.

Truncation t in (0, 1] (1 = off): z is drawn from the standard normal *truncated to its central
probability mass t*, i.e. every entry lies within +-Phi^-1((1 + t) / 2) (t = 0.5 -> 0.67,
t = 0.9 -> 1.64, t = 0.99 -> 2.58). BigGAN (Brock et al., 2019) gets this distribution by
resampling entries beyond the threshold; we map each N(0, 1) draw u -> Phi^-1(1/2 + t(Phi(u) - 1/2))
instead, which gives exactly the same truncated normal without a loop, and keeps a seed's image
recognisable as t changes.
"""

from __future__ import annotations

import math

import torch

MAX_SEED = 2**63 - 1


def truncate(z: torch.Tensor, truncation: float) -> torch.Tensor:
    if not 0.0 < truncation <= 1.0:
        raise ValueError(f"truncation must be in (0, 1], got {truncation}")
    if truncation == 1.0:
        return z
    z64 = z.double()
    p = 0.5 * (1.0 + torch.erf(z64 / math.sqrt(2.0)))  # Phi(z)
    q = 0.5 + truncation * (p - 0.5)
    return (math.sqrt(2.0) * torch.erfinv(2.0 * q - 1.0)).to(z.dtype)


def seeded_latent(seed: int, latent_dim: int, num_classes: int, truncation: float = 1.0) -> tuple[torch.Tensor, int]:
    """(latent (latent_dim,), label drawn from the same seed) for one image."""
    z, y = seeded_latents(seed, 1, latent_dim, num_classes, truncation)
    return z[0], int(y[0])


def seeded_latents(seed: int, n: int, latent_dim: int, num_classes: int, truncation: float = 1.0,
                   labels: bool = True) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Latents (n, latent_dim) and labels (n,) int64 for seeds seed, seed + 1, ..., seed + n - 1:
    row i comes from a generator seeded with seed + i, latent first, then label. With ``labels=False`` no label is drawn (None): the
    latent comes first from each generator, so it is the same. Written for the server's event
    loop, which draws one request's latents: tensors as the ops return them, no Python ints."""
    zs, ys = [], []
    for i in range(n):
        g = torch.Generator().manual_seed((seed + i) % (MAX_SEED + 1))
        z = torch.randn(latent_dim, generator=g)
        zs.append(z if truncation == 1.0 else truncate(z, truncation))
        if labels:
            ys.append(torch.randint(num_classes, (1,), generator=g))
    z = zs[0].unsqueeze(0) if n == 1 else torch.stack(zs)
    if not labels:
        return z, None
    return z, (ys[0] if n == 1 else torch.cat(ys))


def lerp(a: torch.Tensor, b: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
    """a, b: (D,), t: (S,) -> (S, D)."""
    return a[None] + t[:, None] * (b - a)[None]


def slerp(a: torch.Tensor, b: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
    """Spherical interpolation (Shoemake, 1985; White, 2016 for GAN latents); lerp when parallel.
    Opposite directions have no unique great circle between them (and 1/sin(omega) blows up near
    them): ValueError, so a caller can ask for lerp instead."""
    a64, b64, t64 = a.double(), b.double(), t.double()
    cos = torch.dot(a64, b64) / (a64.norm() * b64.norm()).clamp_min(1e-12)
    omega = torch.arccos(cos.clamp(-1.0, 1.0))
    if omega.abs() < 1e-6:
        return lerp(a, b, t)
    if math.pi - float(omega) < 1e-6:
        raise ValueError("the two latents point in opposite directions: slerp has no unique path between them")
    so = torch.sin(omega)
    out = (torch.sin((1.0 - t64) * omega) / so)[:, None] * a64[None] + (torch.sin(t64 * omega) / so)[:, None] * b64[None]
    return out.to(a.dtype)
