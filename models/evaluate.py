"""Evaluate a shipped model and write its numbers into its model card.

    python -m models.evaluate fashion-gan      # FID, conditional accuracy, per-class accuracy
    python -m models.evaluate fashion-vae      # ... plus test-set reconstruction error and ELBO
    python -m models.evaluate fashion-classifier
    python -m models.evaluate fashion-vae --iwae 64   # the importance-weighted bound beside the ELBO (printed)

Generators are scored on 10,000 samples (1,000 per class; image i uses seed ``--seed + i``, the
service's seed rule) against the 10,000 test images. FID (Heusel et al., 2017) is computed in the
feature space of the shipped classifier (its 128-d penultimate layer), not Inception's, so the
numbers compare our models with each other, not with published Fashion-MNIST FIDs. As a scale,
the card also records the FID of 10,000 *training* images against the test set.
"""

from __future__ import annotations

import argparse
import math
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F
from tqdm import tqdm

from models.card import load_model, read_card, write_card
from models.data import CLASS_NAMES, load_split, to_tensors
from models.images import save_grid
from models.latents import seeded_latents
from models.vae import negative_elbo

SAMPLES_PER_CLASS = 1000


def gaussian_stats(features: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    f = features.astype(np.float64)
    return f.mean(axis=0), np.cov(f, rowvar=False)


def frechet_distance(mu1: np.ndarray, s1: np.ndarray, mu2: np.ndarray, s2: np.ndarray) -> float:
    """|mu1 - mu2|^2 + Tr(S1 + S2 - 2 (S1 S2)^{1/2}); the trace of the root is taken from the
    eigenvalues of the symmetric S1^{1/2} S2 S1^{1/2}, which share them with S1 S2."""
    w, v = np.linalg.eigh(s1)
    root1 = (v * np.sqrt(np.clip(w, 0, None))) @ v.T
    eig = np.linalg.eigvalsh(root1 @ s2 @ root1)
    tr_root = np.sqrt(np.clip(eig, 0, None)).sum()
    return float(np.sum((mu1 - mu2) ** 2) + np.trace(s1) + np.trace(s2) - 2.0 * tr_root)


def fid(features_a: np.ndarray, features_b: np.ndarray) -> float:
    return frechet_distance(*gaussian_stats(features_a), *gaussian_stats(features_b))


@torch.no_grad()
def classify(clf: nn.Module, images: torch.Tensor, batch: int = 1000) -> tuple[np.ndarray, np.ndarray]:
    """images in [-1, 1] -> (penultimate features (N, F), predicted labels (N,))."""
    feats, preds = [], []
    for i in range(0, len(images), batch):
        f = clf.features(images[i:i + batch])
        feats.append(f.cpu().numpy())
        preds.append(clf.head(f).argmax(1).cpu().numpy())
    return np.concatenate(feats), np.concatenate(preds)


@torch.no_grad()
def generate_eval_set(gen: nn.Module, seed: int, batch: int = 500, progress: bool = True,
                      per_class: int | None = None, truncation: float = 1.0) -> tuple[torch.Tensor, torch.Tensor]:
    """10 x per_class (default SAMPLES_PER_CLASS) images, class-major; image i from seed + i with
    label i // per_class."""
    per_class = per_class or SAMPLES_PER_CLASS
    n = per_class * len(CLASS_NAMES)
    labels = torch.arange(len(CLASS_NAMES)).repeat_interleave(per_class)
    out = []
    for i in tqdm(range(0, n, batch), desc="sampling", disable=not progress):
        z, _ = seeded_latents(seed + i, min(batch, n - i), gen.cfg.latent_dim, len(CLASS_NAMES), truncation)
        out.append(gen.generate(z, labels[i:i + batch]))
    return torch.cat(out), labels


def conditional_accuracy(preds: np.ndarray, labels: np.ndarray) -> tuple[float, dict[str, float]]:
    per_class = {CLASS_NAMES[c]: round(float((preds[labels == c] == c).mean()), 4) for c in range(len(CLASS_NAMES))}
    return round(float((preds == labels).mean()), 4), per_class


@torch.no_grad()
def fid_probe(classifier_card: Path, data_dir: str | None, samples: int = 2000,
              device: torch.device | str = "cpu") -> Callable[[nn.Module], dict[str, float]]:
    """A function gen -> {"value": FID, "accuracy": conditional accuracy} of ``samples`` seeded
    samples (seeds 0.., class-major) against the 10,000 test images, in the shipped classifier's
    features: the training curve's measure (fewer samples than the card's 10,000, so its FID is
    higher; compare curves with curves)."""
    clf, _ = load_model(classifier_card, device=device)
    test_x, _ = to_tensors(load_split("test", data_dir), (0.0, 1.0))
    test_feats, _ = classify(clf, (test_x * 2.0 - 1.0).to(device))
    per_class = max(1, samples // len(CLASS_NAMES))

    def probe(gen: nn.Module) -> dict[str, float]:
        images, labels = generate_eval_set(gen, 0, progress=False, per_class=per_class)
        feats, preds = classify(clf, images)
        return {"value": round(fid(feats, test_feats), 3), "accuracy": conditional_accuracy(preds, labels.numpy())[0]}

    return probe


def vae_test_metrics(vae: nn.Module, x01: torch.Tensor, y: torch.Tensor, seed: int, batch: int = 1000) -> dict[str, float]:
    """Per-image negative ELBO (one seeded z sample, q from ``elbo_posterior``), its two terms, and
    the MSE / MAE of the reconstruction decoded from the served encoder's mu, in [0, 1] pixel units."""
    g = torch.Generator().manual_seed(seed)
    tot = {"neg_elbo": 0.0, "rec": 0.0, "kl": 0.0, "mse": 0.0, "mae": 0.0}
    for i in range(0, len(x01), batch):
        xb, yb = x01[i:i + batch], y[i:i + batch]
        mu, logvar = vae.elbo_posterior(xb, yb)  # in the decoder's latent; the KL against the model's prior
        z = vae.reparameterize(mu, logvar, generator=g)
        rec, kl, loss = negative_elbo(vae.decode_logits(z, yb), xb, mu, logvar, vae.kl(mu, logvar, yb, z))
        served_mu = vae.posterior(xb, yb)[0] if vae.cfg.elbo_encoder else mu  # the served encoder's reconstruction
        recon = vae.decode(served_mu, yb)
        w = len(xb)
        tot["neg_elbo"] += loss.item() * w
        tot["rec"] += rec.item() * w
        tot["kl"] += kl.item() * w
        tot["mse"] += (recon - xb).pow(2).mean().item() * w
        tot["mae"] += (recon - xb).abs().mean().item() * w
    n = len(x01)
    return {
        "test_neg_elbo_nats": round(tot["neg_elbo"] / n, 3),
        "test_elbo_nats": round(-tot["neg_elbo"] / n, 3),
        "test_reconstruction_nll_nats": round(tot["rec"] / n, 3),
        "test_kl_nats": round(tot["kl"] / n, 3),
        "test_reconstruction_mse": round(tot["mse"] / n, 5),
        "test_reconstruction_mae": round(tot["mae"] / n, 5),
    }


@torch.no_grad()
def iwae_bound(vae: nn.Module, x01: torch.Tensor, y: torch.Tensor, k: int, seed: int, batch: int = 100) -> float:
    """The importance-weighted bound on log p(x | y) (Burda et al., 2016,
    https://arxiv.org/abs/1509.00519), mean nats per image on the Bernoulli measure of the cards'
    ELBO: log (1/k) sum_i p(x | z_i) p(z_i | y) / q(z_i | x, y), z_i ~ q. k = 1 is the ELBO with a
    sampled KL; it rises toward log p(x | y) as k grows, so where two models' ELBOs differ it tells
    a worse model from a looser bound (an encoder far from the posterior)."""
    g = torch.Generator().manual_seed(seed)
    total = 0.0
    for i in range(0, len(x01), batch):
        xb, yb = x01[i:i + batch], y[i:i + batch]
        mu, logvar = vae.elbo_posterior(xb, yb)
        std = torch.exp(0.5 * logvar)
        eps = torch.randn((k, *mu.shape), generator=g)
        z = (mu + eps * std).flatten(0, 1)  # (k * B, D), sample-major
        ys, xs = yb.repeat(k), xb.repeat(k, 1, 1, 1)
        log_px = -F.binary_cross_entropy_with_logits(vae.decode_logits(z, ys), xs, reduction="none").flatten(1).sum(1)
        log_q = (-0.5 * eps.pow(2) - 0.5 * math.log(2 * math.pi)).sum(-1) - 0.5 * logvar.sum(1)  # (k, B)
        log_w = (log_px + vae.log_prior(z, ys)).view(k, -1) - log_q
        total += (torch.logsumexp(log_w, 0) - math.log(k)).sum().item()
    return round(total / len(x01), 3)


def evaluate(name: str, weights_dir: Path, data_dir: str | None, seed: int, docs_dir: Path | None,
             progress: bool = True, truncation: float = 1.0) -> dict[str, Any]:
    torch.manual_seed(seed)
    card_path = weights_dir / f"{name}.json"
    module, card = load_model(card_path)
    test_x01, test_y = to_tensors(load_split("test", data_dir), (0.0, 1.0))
    test_x = test_x01 * 2.0 - 1.0
    if card["kind"] == "classifier":
        _, preds = classify(module, test_x)
        acc, per_class = conditional_accuracy(preds, test_y.numpy())
        return {"test_accuracy": acc, "per_class_accuracy": per_class}
    clf, _ = load_model(weights_dir / "fashion-classifier.json")
    test_feats, _ = classify(clf, test_x)
    train_x01, _ = to_tensors(load_split("train", data_dir), (0.0, 1.0))
    ref = torch.randperm(len(train_x01), generator=torch.Generator().manual_seed(seed))[:10_000]
    train_feats, _ = classify(clf, train_x01[ref] * 2.0 - 1.0)
    images, labels = generate_eval_set(module, seed, progress=progress, truncation=truncation)
    feats, preds = classify(clf, images)
    acc, per_class = conditional_accuracy(preds, labels.numpy())
    metrics: dict[str, Any] = {
        "fid_classifier_features": round(fid(feats, test_feats), 3),
        "fid_train_vs_test_reference": round(fid(train_feats, test_feats), 3),
        "conditional_accuracy": acc,
        "per_class_accuracy": per_class,
        "eval_samples": len(images),
        "eval_seed": seed,
        "feature_extractor": "fashion-classifier penultimate layer (128-d)",
    }
    if card["kind"] == "vae":
        metrics.update(vae_test_metrics(module, test_x01, test_y, seed))
    if docs_dir is not None:
        docs_dir.mkdir(parents=True, exist_ok=True)
        per_row = 10
        idx = torch.cat([torch.arange(c * SAMPLES_PER_CLASS, c * SAMPLES_PER_CLASS + per_row) for c in range(10)])
        save_grid(images[idx], docs_dir / f"{name}-samples.png", columns=per_row, scale=2)
        if card["kind"] == "vae":
            pick = torch.cat([torch.nonzero(test_y == c)[:5, 0] for c in range(10)])
            with torch.no_grad():
                rec = module.generate(module.encode(test_x01[pick], test_y[pick])[0], test_y[pick])
            pairs = torch.stack([test_x[pick], rec], dim=1).flatten(0, 1)  # original, reconstruction, ...
            save_grid(pairs, docs_dir / f"{name}-reconstructions.png", columns=10, scale=2)
    return metrics


@torch.no_grad()
def vae_prior_ablation(name: str, weights_dir: Path, data_dir: str | None, seed: int,
                       progress: bool = True) -> dict[str, dict[str, float]]:
    """One trained VAE several ways, on the card's measures: its samples under N(0, I), under the
    fitted Gaussian (prior=1 and 2) and under the Gaussian and flow (prior=2), and its test
    reconstructions (mu decoded), the floor a prior can bring samples to. Each row: FID,
    conditional accuracy and the test ELBO under that prior, with the model's ELBO encoder (the
    reconstruction row repeats the model's own)."""
    vae, card = load_model(weights_dir / f"{name}.json")
    if card["kind"] != "vae":
        raise SystemExit(f"{name} is a {card['kind']}, not a VAE")
    clf, _ = load_model(weights_dir / "fashion-classifier.json")
    test_x01, test_y = to_tensors(load_split("test", data_dir), (0.0, 1.0))
    test_feats, _ = classify(clf, test_x01 * 2.0 - 1.0)

    def row(images: torch.Tensor, labels: torch.Tensor, elbo: float) -> dict[str, float]:
        feats, preds = classify(clf, images)
        return {"fid": round(fid(feats, test_feats), 3), "accuracy": conditional_accuracy(preds, labels.numpy())[0],
                "test_elbo_nats": elbo}

    def elbo() -> float:  # under the prior the model has now
        return vae_test_metrics(vae, test_x01, test_y, seed)["test_elbo_nats"]

    own = elbo()
    mu, _ = vae.posterior(test_x01, test_y)  # reconstructions do not depend on the prior
    recon = row(vae.decode(mu, test_y) * 2.0 - 1.0, test_y, own)
    if not vae.cfg.prior:
        return {"samples, N(0, I)": row(*generate_eval_set(vae, seed, progress=progress), own), "reconstructions": recon}
    rows = {}
    if vae.cfg.prior == 2:
        rows["samples, fitted Gaussian and flow"] = row(*generate_eval_set(vae, seed, progress=progress), own)
        vae.cfg.prior = 1  # the same weights without the flow
        own = elbo()
    rows["samples, fitted Gaussian"] = row(*generate_eval_set(vae, seed, progress=progress), own)
    rows["reconstructions"] = recon
    vae.cfg.prior = 0
    rows["samples, N(0, I)"] = row(*generate_eval_set(vae, seed, progress=progress), elbo())
    return rows


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m models.evaluate", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("name", help="model name, e.g. fashion-gan (reads <weights-dir>/<name>.json)")
    p.add_argument("--weights-dir", default="weights", type=Path)
    p.add_argument("--data-dir", default=None, help="folder with the four Fashion-MNIST .gz IDX files")
    p.add_argument("--seed", type=int, default=0, help="first sample seed (default 0)")
    p.add_argument("--docs-dir", default="docs", type=Path, help="where sample / reconstruction grids go")
    p.add_argument("--no-write", action="store_true", help="print the numbers without updating the card")
    p.add_argument("--truncation", type=float, default=1.0,
                   help="sample latents truncated as the API's truncation does (the card's numbers use 1.0; "
                        "another value is printed, never written)")
    p.add_argument("--priors", action="store_true",
                   help="VAE: print samples under N(0, I) and the fitted prior, and reconstructions, side by side")
    p.add_argument("--iwae", type=int, default=0, metavar="K",
                   help="VAE: print the importance-weighted bound on the test log-likelihood with K samples per "
                        "image, beside the ELBO (the same Bernoulli measure; never written to the card)")
    args = p.parse_args(argv)
    if args.iwae:
        vae, card = load_model(args.weights_dir / f"{args.name}.json")
        if card["kind"] != "vae" or args.iwae < 1:
            raise SystemExit("--iwae takes a VAE and K >= 1")
        test_x01, test_y = to_tensors(load_split("test", args.data_dir), (0.0, 1.0))
        elbo = vae_test_metrics(vae, test_x01, test_y, args.seed)["test_elbo_nats"]
        print(f"test ELBO {elbo}, IWAE bound (k={args.iwae}) {iwae_bound(vae, test_x01, test_y, args.iwae, args.seed)}")
        return 0
    if args.priors:
        for what, numbers in vae_prior_ablation(args.name, args.weights_dir, args.data_dir, args.seed).items():
            print(f"{what}: " + ", ".join(f"{k} {v}" for k, v in numbers.items()))
        return 0
    if args.truncation != 1.0:
        args.no_write, args.docs_dir = True, None
    metrics = evaluate(args.name, args.weights_dir, args.data_dir, args.seed, args.docs_dir, truncation=args.truncation)
    for k, v in metrics.items():
        print(f"{k}: {v}")
    if not args.no_write:
        card_path = args.weights_dir / f"{args.name}.json"
        card = read_card(card_path)
        card["metrics"] = {**card.get("metrics", {}), **metrics}
        write_card(card_path, card)
        print(f"updated {card_path}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
