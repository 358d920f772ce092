"""GAN inversion by optimisation: find a latent whose image matches a target.

As in StyleGAN2's projector (Karras et al., 2020, ``projector.py``), the latent is the variable
and the generator is fixed: Adam on the pixel mean squared error between ``G(z, y)`` and the
target, from several starting latents at once (one row each, one forward and backward pass per
step for all of them), keeping the best latent any row reached. Unlike StyleGAN2 there is no
noise input to regularise and no perceptual (LPIPS) loss: at 28x28 grey levels the pixel MSE is
the quantity the answer reports. A small penalty ``prior_weight * mean(z^2)`` keeps the latent
where the prior puts its mass, so the answer is a latent the generator was trained on, not an
off-manifold one that overfits the pixels.

Work is bounded by ``steps`` and by ``should_stop`` (checked before every step: a deadline or a
shutdown), so a caller can cap the time a projection holds a thread.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch
import torch.nn as nn


@dataclass(frozen=True)
class Projection:
    latent: torch.Tensor  # (latent_dim,) float32, the best latent found
    mse: float  # its pixel MSE against the target, in the [-1, 1] range of the images
    start_mse: float  # the best MSE among the starting latents, before any step
    steps: int  # steps taken (fewer than asked when should_stop said so)
    start: int  # the index of the starting latent that led to the best one


def project(generator: nn.Module, target: torch.Tensor, label: int, starts: torch.Tensor, steps: int,
            lr: float = 0.05, prior_weight: float = 1e-3,
            should_stop: Callable[[], bool] | None = None) -> Projection:
    """target: (C, H, W) in [-1, 1]; starts: (K, latent_dim). ``generator.generate(z, y)`` must
    give (K, C, H, W) in [-1, 1]; its parameters are not changed (no gradient is kept for them)."""
    device = target.device
    z = starts.detach().to(device, torch.float32).clone().requires_grad_(True)
    y = torch.full((z.shape[0],), label, dtype=torch.long, device=device)
    goal = target.to(torch.float32).unsqueeze(0)  # (1, C, H, W)
    opt = torch.optim.Adam([z], lr=lr)
    best_mse = torch.full((z.shape[0],), float("inf"), device=device)
    best_z = z.detach().clone()
    start_mse = float("inf")
    taken = 0
    params = [p.requires_grad for p in generator.parameters()]
    generator.requires_grad_(False)
    try:
        with torch.enable_grad():
            for step in range(steps + 1):  # the last round only measures the last update
                mse = (generator.generate(z, y) - goal).pow(2).flatten(1).mean(1)  # (K,)
                with torch.no_grad():
                    better = mse < best_mse
                    best_mse = torch.where(better, mse, best_mse)
                    best_z[better] = z[better]
                    if step == 0:
                        start_mse = float(mse.min())
                if step == steps or (should_stop is not None and should_stop()):
                    break
                loss = mse.sum() + prior_weight * z.pow(2).mean(1).sum()
                opt.zero_grad(set_to_none=True)
                loss.backward()
                opt.step()
                taken += 1
    finally:
        for p, flag in zip(generator.parameters(), params):
            p.requires_grad_(flag)
    i = int(best_mse.argmin())
    return Projection(best_z[i].detach().cpu(), float(best_mse[i]), start_mse, taken, i)
