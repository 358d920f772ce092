"""Closed-form latent directions: SeFa (Shen & Zhou, "Closed-Form Factorization of Latent
Semantics in GANs", CVPR 2021, https://arxiv.org/abs/2007.06600).

The generator's first layer maps a latent z to ``A z + b`` (for a class-conditional model the
class enters through other input columns: it adds a per-class offset to ``b``, the same for every
z). Moving z by ``a * n`` for a unit vector n moves that layer's output by ``a * A n``; the
directions that move it most are the maximisers of ``|A n|^2 = n^T (A^T A) n`` subject to
``|n| = 1``. Their solutions are the eigenvectors of the symmetric ``A^T A``, ordered by
eigenvalue; the eigenvalue is the squared change per unit move. Since the class only shifts ``b``,
one set of directions serves every class (as PyTorch-StudioGAN's ``sefa.py`` does for
conditional GANs).

``A`` is ``fc.weight[:, :latent_dim]`` for the GAN's generator and the latent columns of the
VAE decoder's first linear layer (``latent_weight()`` on either module). The directions are
computed once at load, in float64 (5 ms for the GAN's 6272x64 layer here, 0.2 ms for the VAEs), and made unique by sign:
an eigenvector's sign is arbitrary, so each is flipped to make its largest-magnitude entry
positive. The result is orthonormal: ``V^T V = I``.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch


@dataclass(frozen=True)
class Directions:
    vectors: torch.Tensor  # (K, latent_dim) float32, one unit direction per row, strongest first
    eigenvalues: torch.Tensor  # (K,) float64, descending

    def __len__(self) -> int:
        return int(self.vectors.shape[0])


def sefa(weight: torch.Tensor) -> Directions:
    """weight: A, (out_features, latent_dim) -> the eigenvectors of A^T A, strongest first."""
    a = weight.detach().to("cpu", torch.float64)
    eigenvalues, vectors = torch.linalg.eigh(a.T @ a)  # ascending; columns are eigenvectors
    order = torch.argsort(eigenvalues, descending=True)
    eigenvalues, vectors = eigenvalues[order], vectors[:, order].T.contiguous()  # (K, D)
    signs = torch.sign(vectors.gather(1, vectors.abs().argmax(1, keepdim=True)))  # (K, 1)
    return Directions((vectors * signs).float().contiguous(), eigenvalues.clamp_min(0.0))


def move(z: torch.Tensor, directions: torch.Tensor, moves: list[tuple[int, float]]) -> torch.Tensor:
    """z: (D,) float32 -> z + sum of amount * direction, added one move at a time in the given
    order, in float32 (so the same moves give the same bits wherever they are applied). A move
    of 0 is skipped: an edit by nothing is the latent itself, bit for bit."""
    out = z.clone()
    for index, amount in moves:
        if amount != 0.0:
            out = out + torch.tensor(amount, dtype=torch.float32) * directions[index]
    return out


def strips(generator: torch.nn.Module, directions: Directions, count: int, seeds: Sequence[int], labels: Sequence[int],
           extent: float = 3.0, steps: int = 7) -> list[torch.Tensor]:
    """For each of the first ``count`` directions, a (len(seeds) * steps, C, H, W) batch: one row
    per (seed, label), frames from -extent to +extent along that direction (the figure in
    docs/directions.md, the same latents as the service's ``traverse``)."""
    from models.latents import seeded_latents  # no import cycle at module load

    amounts = [extent * (2 * i - (steps - 1)) / (steps - 1) for i in range(steps)]
    out = []
    for k in range(min(count, len(directions))):
        zs, ys = [], []
        for seed, label in zip(seeds, labels):
            z0 = seeded_latents(seed, 1, directions.vectors.shape[1], 10, labels=False)[0][0]
            zs += [move(z0, directions.vectors, [(k, a)]) for a in amounts]
            ys += [label] * steps
        with torch.no_grad():
            out.append(generator.generate(torch.stack(zs), torch.tensor(ys)))
    return out


def main(argv: list[str] | None = None) -> int:
    """python -m models.directions fashion-gan fashion-vae  ->  docs/directions/<model>-d<k>.png"""
    import argparse
    from pathlib import Path

    from models.card import load_model
    from models.images import save_grid

    p = argparse.ArgumentParser(prog="python -m models.directions", description="Strips along each model's top directions")
    p.add_argument("models", nargs="+")
    p.add_argument("--weights-dir", default="weights", type=Path)
    p.add_argument("--out", default="docs/directions", type=Path)
    p.add_argument("--count", type=int, default=8)
    p.add_argument("--extent", type=float, default=3.0)
    args = p.parse_args(argv)
    seeds, labels = [0, 1, 2, 3], [0, 3, 7, 9]  # T-shirt/top, Dress, Sneaker, Ankle boot
    for name in args.models:
        module, _ = load_model(args.weights_dir / f"{name}.json")
        d = sefa(module.latent_weight())
        for k, batch in enumerate(strips(module, d, args.count, seeds, labels, args.extent)):
            save_grid(batch, args.out / f"{name}-d{k}.png", columns=7, scale=2)
        shares = (d.eigenvalues / d.eigenvalues.sum())[:args.count]
        print(name, "shares:", " ".join(f"{float(s):.3f}" for s in shares))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
