"""A class-conditional normalising flow for the VAE's prior (``prior=2``): a stack of affine
coupling layers (RealNVP, Dinh et al., 2017, https://arxiv.org/abs/1605.08803).

The flow sits between the served latent u ~ N(0, I) and the whitened decoder latent
w = L_y^-1 (z - loc_y) of the fitted Gaussian: ``from_base`` maps u to w (sampling), ``to_base``
maps w to u with log |det du/dw| (density, encoding). Each layer keeps half of the coordinates
(its mask) and moves the other half by a scale and shift computed from the kept half and the
class: u_free = w_free * exp(s) + t. Both directions are exact, and a row never depends on the
other rows of its batch beyond what a dense layer's kernel choice does (app/engine/passes.py).

The last layer of each coupling's network starts at zero, so a new flow is the identity: the
prior starts as the fitted Gaussian and training can only move it where the data ask."""

from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F

FLOW_LAYERS = 8
FLOW_HIDDEN = 128
MASK_SEED = 1  # the masks are buffers in the weights file; the seed only makes a new flow's the same each time


class AffineCoupling(nn.Module):
    def __init__(self, mask: torch.Tensor, num_classes: int, hidden: int):
        super().__init__()
        dim = mask.numel()
        self.num_classes = num_classes
        self.register_buffer("mask", mask)
        self.net = nn.Sequential(nn.Linear(dim + num_classes, hidden), nn.SiLU(), nn.Linear(hidden, hidden), nn.SiLU(),
                                 nn.Linear(hidden, 2 * dim))
        nn.init.zeros_(self.net[-1].weight)
        nn.init.zeros_(self.net[-1].bias)

    def _scale_shift(self, kept: torch.Tensor, y: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """log-scale (tanh-bounded to (-1, 1), so each layer scales by at most e) and shift of the
        free coordinates; zero on the kept ones."""
        a, b = self.net(torch.cat([kept, F.one_hot(y, self.num_classes).to(kept.dtype)], dim=1)).chunk(2, dim=1)
        free = 1.0 - self.mask
        return torch.tanh(a) * free, b * free

    def to_base(self, w: torch.Tensor, y: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        kept = w * self.mask
        s, t = self._scale_shift(kept, y)
        return kept + (1.0 - self.mask) * (w * torch.exp(s) + t), s.sum(1)

    def from_base(self, u: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        kept = u * self.mask
        s, t = self._scale_shift(kept, y)
        return kept + (1.0 - self.mask) * ((u - t) * torch.exp(-s))

    def to_base_with_jacobian(self, w: torch.Tensor, y: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """``to_base`` and its Jacobian du/dw per row, (B, D, D), in closed form: the network's
        Jacobian is W3 diag(silu'(h2)) W2 diag(silu'(h1)) W1 on the kept coordinates, so no
        autograd and no pass per coordinate (the service runs it inside inference mode)."""
        m, free = self.mask, 1.0 - self.mask
        kept = w * m
        h1 = self.net[0](torch.cat([kept, F.one_hot(y, self.num_classes).to(w.dtype)], dim=1))
        h2 = self.net[2](self.net[1](h1))
        a, b = self.net[4](self.net[3](h2)).chunk(2, dim=1)
        s, t = torch.tanh(a) * free, b * free
        u = kept + free * (w * torch.exp(s) + t)
        w1, w2, w3 = (_weight(self.net[i]) for i in (0, 2, 4))
        g = _silu_grad(h1)[:, :, None] * (w1[:, :w.shape[1]] * m)  # (B, H, D): d h1 / d w through the mask
        g = _silu_grad(h2)[:, :, None] * torch.matmul(w2, g)
        d_out = torch.matmul(w3, g)  # (B, 2D, D): d (a, b) / d w
        d_a, d_b = d_out.chunk(2, dim=1)
        scale = free * w * torch.exp(s) * (1.0 - torch.tanh(a).pow(2))  # d u_free / d a, per coordinate
        jac = torch.diag_embed(m + free * torch.exp(s)) + scale[:, :, None] * d_a + free[None, :, None] * d_b
        return u, jac


class PriorFlow(nn.Module):
    def __init__(self, dim: int, num_classes: int, layers: int = FLOW_LAYERS, hidden: int = FLOW_HIDDEN):
        super().__init__()
        g = torch.Generator().manual_seed(MASK_SEED)
        masks = []
        for _ in range(layers):  # a random half kept per layer, so every pair of coordinates meets
            mask = torch.zeros(dim)
            mask[torch.randperm(dim, generator=g)[:dim // 2]] = 1.0
            masks.append(mask)
        self.layers = nn.ModuleList(AffineCoupling(m, num_classes, hidden) for m in masks)

    def to_base(self, w: torch.Tensor, y: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """w (B, D) -> (u, log |det du/dw| per row)."""
        logdet = w.new_zeros(w.shape[0])
        for layer in self.layers:
            w, ld = layer.to_base(w, y)
            logdet = logdet + ld
        return w, logdet

    def from_base(self, u: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        """u (B, D) -> w, the inverse of ``to_base``."""
        for layer in reversed(self.layers):
            u = layer.from_base(u, y)
        return u

    def to_base_with_jacobian(self, w: torch.Tensor, y: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """w (B, D) -> (u, du/dw per row (B, D, D)): the layers' Jacobians chained."""
        jac = None
        for layer in self.layers:
            w, j = layer.to_base_with_jacobian(w, y)
            jac = j if jac is None else torch.bmm(j, jac)
        if jac is None:
            jac = torch.eye(w.shape[1], dtype=w.dtype, device=w.device).expand(w.shape[0], -1, -1)
        return w, jac


def _weight(layer: nn.Module) -> torch.Tensor:
    """A dense layer's weight, also where the service has wrapped it to keep its rows stable
    (app/engine/passes.py: the wrapper holds the nn.Linear as ``linear``)."""
    return getattr(layer, "linear", layer).weight


def _silu_grad(x: torch.Tensor) -> torch.Tensor:
    sig = torch.sigmoid(x)
    return sig * (1.0 + x * (1.0 - sig))
