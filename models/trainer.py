"""What one training step is, for each kind: the modules and optimisers (``Trainer``), their
checkpoint state, one optimisation step, and the settings of a run (``TrainConfig``). The loop
over epochs, the curve and the CLI are in ``models.train``."""

from __future__ import annotations

import copy
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
import torch.nn as nn
import torch.nn.functional as F
from torch.profiler import record_function
from tqdm import tqdm

from models.classifier import Classifier, ClassifierConfig
from models.gan import (
    Discriminator,
    GANConfig,
    Generator,
    aux_class_loss,
    d_hinge_loss,
    ema_decay_at,
    ema_update,
    g_hinge_loss,
)
from models.images import save_grid
from models.vae import VAE, VAEConfig, gaussian_reconstruction, kl_divergence, negative_elbo

ELBO_ENCODER_LR = 3e-4  # Adam's rate for fitting the ELBO encoder (elbo_encoder)
PRIOR_FLOW_LR = 3e-3  # the one-cycle schedule's peak rate for fitting the flow prior (prior_flow)
PRIOR_FLOW_BATCH = 512  # latents per step of that fit: a step is a small dense net, so more rows per step
ELBO_EPOCHS_AFTER_FLOW = 1  # the ELBO encoder's epochs against the fitted flow, after its own
NAMES = {"gan": "fashion-gan", "vae": "fashion-vae", "classifier": "fashion-classifier"}
DEFAULTS = {  # kind -> (epochs, batch size, lr)
    "gan": (5, 64, 2e-4),
    "vae": (10, 128, 1e-3),
    "classifier": (4, 128, 1e-3),
}


@dataclass
class TrainConfig:
    kind: str
    epochs: int
    batch_size: int
    lr: float
    seed: int = 0
    device: str = "cpu"
    out: str = "weights"
    run_dir: str = ""
    name: str = ""
    checkpoint_every: int = 500
    sample_every: int = 1000
    ema_decay: float = 0.999
    ema_rampup: float = 0.05  # the EMA's half-life is at most this share of the steps taken (0: off)
    threads: int = 0
    likelihood: str = "bernoulli"  # VAE: "bernoulli" or "gaussian" (one learned-by-formula sigma)
    channels_last: bool = False  # NHWC weights and batches: oneDNN's faster convolutions on a CPU
    aux_classifier: float = 0.0  # GAN: weight of the AC-GAN class term in both losses (0: off)
    kl_weight: float = 1.0  # VAE: beta of rec + beta * KL in training (1: the ELBO itself)
    elbo_encoder: int = 0  # VAE: epochs fitting an ELBO encoder (Bernoulli measure) after the last step
    prior_flow: int = 0  # VAE (prior=1): epochs fitting a flow on the Gaussian prior after that; the model gets prior=2
    model: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        self.name = self.name or NAMES[self.kind]
        self.run_dir = self.run_dir or os.path.join("runs", self.kind)


def pick_device(spec: str) -> torch.device:
    if spec == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(spec)


class Trainer:
    """Holds the modules and optimisers of one kind and knows how to take one step."""

    def __init__(self, cfg: TrainConfig, device: torch.device):
        self.cfg, self.device = cfg, device
        torch.manual_seed(cfg.seed)
        adam = dict(lr=cfg.lr, betas=(0.0, 0.9)) if cfg.kind == "gan" else dict(lr=cfg.lr)
        if cfg.kind == "gan":
            mcfg = GANConfig(**cfg.model)
            self.g = Generator(mcfg).to(device)
            self.d = Discriminator(mcfg, classify=cfg.aux_classifier > 0).to(device)
            self.ema = copy.deepcopy(self.g).requires_grad_(False)
            self.opt_g = torch.optim.Adam(self.g.parameters(), **adam)
            self.opt_d = torch.optim.Adam(self.d.parameters(), **{**adam, "lr": 2 * cfg.lr})  # TTUR
        elif cfg.kind == "vae":
            self.vae = VAE(VAEConfig(**cfg.model)).to(device)
            self.opt = torch.optim.Adam(self.vae.parameters(), **adam)
        else:
            self.clf = Classifier(ClassifierConfig(**cfg.model)).to(device)
            self.opt = torch.optim.Adam(self.clf.parameters(), **adam)
        if cfg.channels_last:
            for module in self.modules().values():
                module.to(memory_format=torch.channels_last)
        self.noise = torch.Generator().manual_seed(cfg.seed + 1)  # CPU stream for z / eps
        self.steps = 0  # optimisation steps taken (the EMA's ramp counts them)

    # -- checkpoint state: only tensors, dicts, lists and numbers (weights_only-safe) --
    def modules(self) -> dict[str, nn.Module]:
        return {k: getattr(self, k) for k in ("g", "d", "ema", "vae", "clf") if hasattr(self, k)}

    def optimizers(self) -> dict[str, torch.optim.Optimizer]:
        return {k: getattr(self, k) for k in ("opt_g", "opt_d", "opt") if hasattr(self, k)}

    def state_dict(self) -> dict[str, Any]:
        return {"modules": {k: m.state_dict() for k, m in self.modules().items()},
                "optimizers": {k: o.state_dict() for k, o in self.optimizers().items()},
                "noise": self.noise.get_state(), "torch_rng": torch.get_rng_state(), "steps": self.steps,
                **({"cuda_rng": torch.cuda.get_rng_state(self.device)} if self.device.type == "cuda" else {})}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        for k, m in self.modules().items():
            m.load_state_dict(state["modules"][k])
        for k, o in self.optimizers().items():
            o.load_state_dict(state["optimizers"][k])
        self.steps = state.get("steps", 0)
        # random states are CPU byte tensors, whatever device the checkpoint was mapped to
        self.noise.set_state(state["noise"].cpu())
        torch.set_rng_state(state["torch_rng"].cpu())
        if self.device.type == "cuda" and "cuda_rng" in state:  # dropout on the GPU draws from it
            torch.cuda.set_rng_state(state["cuda_rng"].cpu(), self.device)

    def randn(self, *shape: int) -> torch.Tensor:
        return torch.randn(*shape, generator=self.noise).to(self.device)

    # -- one optimisation step; returns numbers for the progress bar --
    def step(self, x: torch.Tensor, y: torch.Tensor) -> dict[str, float]:
        self.steps += 1
        if self.cfg.channels_last:
            x = x.contiguous(memory_format=torch.channels_last)
        return getattr(self, f"_step_{self.cfg.kind}")(x, y)

    def _step_gan(self, x: torch.Tensor, y: torch.Tensor) -> dict[str, float]:
        # phases named for torch.profiler (python -m bench.train_step); no cost without a profiler
        x = x * 2.0 - 1.0  # [0, 1] -> [-1, 1]
        with record_function("G forward"):
            fake = self.g(self.randn(len(x), self.g.cfg.latent_dim), y)
        logs: dict[str, torch.Tensor] = {}
        with record_function("D forward"):  # the class head learns from real images only
            d_real, class_d = self._judge(x, y, "aux_d", logs)
            loss_d = d_hinge_loss(d_real, self.d(fake.detach(), y)) + class_d
        self.opt_d.zero_grad(set_to_none=True)
        with record_function("D backward"):
            loss_d.backward()
        with record_function("optimisers"):
            self.opt_d.step()
        with record_function("D forward"):  # reuse fake: G's graph is still valid
            d_fake, class_g = self._judge(fake, y, "aux_g", logs)
            loss_g = g_hinge_loss(d_fake) + class_g
        self.opt_g.zero_grad(set_to_none=True)
        with record_function("G backward"):
            loss_g.backward()
        with record_function("optimisers"):
            self.opt_g.step()
        with record_function("EMA"):
            ema_update(self.ema, self.g, ema_decay_at(self.steps, self.cfg.ema_decay, self.cfg.ema_rampup))
        return {"d": loss_d.item(), "g": loss_g.item(), **{k: v.item() for k, v in logs.items()}}

    def _judge(self, images: torch.Tensor, y: torch.Tensor, term: str,
               logs: dict[str, torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor | float]:
        """D's logits for images of class y, and the AC-GAN class term to add to the loss: W x the
        head's cross-entropy (kept in logs[term]) with --aux-classifier W, else 0."""
        w = self.cfg.aux_classifier
        if not w:
            return self.d(images, y), 0.0
        logits, classes = self.d(images, y, with_classes=True)
        logs[term] = aux_class_loss(classes, y)
        return logits, w * logs[term]

    def _step_vae(self, x: torch.Tensor, y: torch.Tensor) -> dict[str, float]:
        # trained against N(0, I); a fitted prior (prior=1) is fitted after the last step
        mu, logvar = self.vae.posterior(x, y)
        logits = self.vae.decode_logits(self._sample_z(mu, logvar), y)
        if self.cfg.likelihood == "gaussian":
            nll, sigma = gaussian_reconstruction(logits, x)
            kl = kl_divergence(mu, logvar)
            rec, kl, loss = nll.mean(), kl.mean(), (nll + kl).mean()
        else:
            rec, kl, loss = negative_elbo(logits, x, mu, logvar)
        if self.cfg.kl_weight != 1.0:  # a beta-VAE step; the logs keep the unweighted terms
            loss = rec + self.cfg.kl_weight * kl
        self.opt.zero_grad(set_to_none=True)
        loss.backward()
        self.opt.step()
        logs = {"rec": rec.item(), "kl": kl.item()}
        return {**logs, "sigma": sigma.item()} if self.cfg.likelihood == "gaussian" else logs

    def _sample_z(self, mu: torch.Tensor, logvar: torch.Tensor) -> torch.Tensor:
        """z ~ q = N(mu, exp(logvar)) by the reparameterisation, eps from the trainer's noise stream."""
        return mu + torch.exp(0.5 * logvar) * self.randn(*mu.shape)

    def finish(self, x: torch.Tensor, y: torch.Tensor, progress: bool = False) -> dict[str, list[dict[str, float]]]:
        """After the last step: a VAE with prior=1 fits its prior to the training images' posterior,
        then (``elbo_encoder``) an ELBO encoder is fitted, then (``prior_flow``) a flow on the
        Gaussian prior, fitted to the ELBO encoder's posteriors, and the ELBO encoder trains
        ELBO_EPOCHS_AFTER_FLOW more epochs against it. Returns the fits' per-epoch logs by name."""
        if self.cfg.kind != "vae":
            return {}
        if self.vae.cfg.prior:
            self.vae.fit_prior(x, y)
        logs: dict[str, list[dict[str, float]]] = {}
        if self.cfg.elbo_encoder:
            self.vae.add_elbo_encoder()
            self._elbo_opt = torch.optim.Adam(self.vae.elbo_encoder.parameters(), lr=ELBO_ENCODER_LR)
            logs["elbo_encoder"] = self._fit_elbo_encoder(x, y, range(self.cfg.elbo_encoder), progress)
        if self.cfg.prior_flow:
            logs["prior_flow"] = self._fit_prior_flow(x, y, progress)
            if self.cfg.elbo_encoder:
                more = range(self.cfg.elbo_encoder, self.cfg.elbo_encoder + ELBO_EPOCHS_AFTER_FLOW)
                logs["elbo_encoder"] += self._fit_elbo_encoder(x, y, more, progress)
        self.vae.eval()
        return logs

    def _fit_elbo_encoder(self, x: torch.Tensor, y: torch.Tensor, epochs: range, progress: bool) -> list[dict[str, float]]:
        """Train the VAE's ELBO encoder (a copy of its encoder) alone for ``epochs`` on the
        Bernoulli ELBO against the model's own prior, the decoder and prior frozen: the model that
        samples and encodes stays as it is, and the second q becomes that model's posterior under
        the Bernoulli measure the cards report (VAE docstring)."""
        enc, frozen = self.vae.elbo_encoder, list(self.vae.decoder.parameters())
        if self.vae.cfg.prior == 2:
            frozen += list(self.vae.prior_flow.parameters())
        for p in frozen:
            p.requires_grad_(False)
        b, history, total = self.cfg.batch_size, [], epochs.stop
        for e in epochs:
            order = torch.randperm(len(x), generator=torch.Generator().manual_seed(self.cfg.seed * 10_000 + self.cfg.epochs + e))
            sums = {"rec": 0.0, "kl": 0.0}
            steps = len(x) // b
            for i in tqdm(range(steps), desc=f"ELBO encoder {e + 1}/{total}", disable=not progress, leave=False):
                idx = order[i * b:(i + 1) * b]
                xb, yb = x[idx].to(self.device), y[idx].to(self.device)
                mu, logvar = enc(xb, yb)
                z = self._sample_z(mu, logvar)
                rec, kl, loss = negative_elbo(self.vae.decode_logits(z, yb), xb, mu, logvar, self.vae.kl(mu, logvar, yb, z))
                self._elbo_opt.zero_grad(set_to_none=True)
                loss.backward()
                self._elbo_opt.step()
                sums["rec"], sums["kl"] = sums["rec"] + rec.item(), sums["kl"] + kl.item()
            history.append({"epoch": e + 1, **{k: round(v / max(1, steps), 5) for k, v in sums.items()}})
        for p in frozen:
            p.requires_grad_(True)
        return history

    def _fit_prior_flow(self, x: torch.Tensor, y: torch.Tensor, progress: bool) -> list[dict[str, float]]:
        """Give the VAE a flow on its fitted Gaussian (prior=2) and fit it for ``prior_flow``
        epochs to the aggregate posterior of the ELBO encoder (or the served one): maximise
        E_q[log p(z | y)] over the training images, z drawn afresh from q each epoch. With q and
        the decoder fixed that term is all of the ELBO the prior touches, so every nat gained
        here is a nat of the ELBO. Adam on a one-cycle schedule peaking at PRIOR_FLOW_LR."""
        flow = self.vae.add_prior_flow()
        mus, logvars = [], []
        with torch.no_grad():
            for i in range(0, len(x), 2000):
                mu, logvar = self.vae.elbo_posterior(x[i:i + 2000].to(self.device), y[i:i + 2000].to(self.device))
                mus.append(mu)
                logvars.append(logvar)
        mu, std, labels = torch.cat(mus), torch.cat(logvars).mul(0.5).exp(), y.to(self.device)
        b, epochs = PRIOR_FLOW_BATCH, self.cfg.prior_flow
        steps = -(-len(x) // b)  # every image each epoch, the last batch short
        opt = torch.optim.Adam(flow.parameters(), lr=PRIOR_FLOW_LR)
        schedule = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=PRIOR_FLOW_LR, total_steps=epochs * steps, pct_start=0.1)
        history = []
        for e in tqdm(range(epochs), desc="prior flow", disable=not progress, leave=False):
            order = torch.randperm(len(x), generator=torch.Generator().manual_seed(self.cfg.seed * 10_000 + 5_000 + e))
            z = mu + std * self.randn(*mu.shape)
            total = 0.0
            for i in range(steps):
                idx = order[i * b:(i + 1) * b].to(self.device)
                loss = -self.vae.log_prior(z[idx], labels[idx]).mean()
                opt.zero_grad(set_to_none=True)
                loss.backward()
                opt.step()
                schedule.step()
                total += loss.item()
            history.append({"epoch": e + 1, "log_prior": round(-total / max(1, steps), 5)})
        return history

    def _step_classifier(self, x: torch.Tensor, y: torch.Tensor) -> dict[str, float]:
        loss = F.cross_entropy(self.clf(x * 2.0 - 1.0), y)
        self.opt.zero_grad(set_to_none=True)
        loss.backward()
        self.opt.step()
        return {"loss": loss.item()}

    def set_train(self, train: bool) -> None:
        for k, m in self.modules().items():
            m.train(train and k != "ema")

    def final_module(self) -> nn.Module:
        return {"gan": getattr(self, "ema", None), "vae": getattr(self, "vae", None),
                "classifier": getattr(self, "clf", None)}[self.cfg.kind]

    @torch.no_grad()
    def sample_grid(self, path: Path) -> None:
        """One row per class, 10 columns, fixed latents."""
        gen = self.final_module()
        if self.cfg.kind == "classifier":
            return
        was_training = gen.training
        gen.eval()
        latent = gen.cfg.latent_dim
        z = torch.randn(100, latent, generator=torch.Generator().manual_seed(1234)).to(self.device)
        y = torch.arange(10, device=self.device).repeat_interleave(10)
        save_grid(gen.generate(z, y), path, columns=10, scale=2)
        gen.train(was_training)
