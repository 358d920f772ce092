"""Class-conditional convolutional VAE for square images (1x28x28 for Fashion-MNIST) (Kingma & Welling, 2014,
https://arxiv.org/abs/1312.6114; conditional form: Sohn et al., 2015).

Interface as in pytorch/examples ``vae/main.py``: ``encode(x, y) -> (mu, logvar)``,
``reparameterize(mu, logvar)``, ``decode(z, y)``. The decoder gives each pixel's mean in [0, 1]
(the data are scaled to [0, 1] for the loss), the probability of a Bernoulli likelihood or the
mean of a Gaussian one (``gaussian_reconstruction``; which one is a training choice, the module
is the same); the serving interface ``generate`` maps it to [-1, 1] like the GAN's output.

Loss = the negative ELBO per image: E_q[-log p(x | z, y)] + KL(q(z | x, y) || N(0, I)), with
KL = -1/2 * sum(1 + logvar - mu^2 - exp(logvar)) (Kingma & Welling, Appendix B).

Prior (``prior=1``): the decoder's latent z is reached from the served latent u ~ N(0, I) by a
per-class affine map z = loc_y + L_y u, i.e. the prior is N(loc_y, L_y L_y^T). It is fitted after
training to the aggregate posterior of the training images (moment matching: ``fit_prior``), the
ex-post density estimation of Ghosh et al., 2020 (https://arxiv.org/abs/1903.12436) in its
simplest form. Samples then come from where the encoder put the training images instead of the
"holes" of N(0, I) that no image maps to. Everything the service exchanges (seeds' latents,
``encode``, directions) is in u; the map is exact both ways, so an encoded image still decodes to
its reconstruction. ``prior=0`` is N(0, I): u = z.

Flow prior (``prior=2``): the fitted Gaussian followed by a class-conditional normalising flow
(models.flow): z = loc_y + L_y f_y(u), f_y a stack of affine couplings fitted after the Gaussian
to the ELBO encoder's aggregate posterior (models.trainer). A Gaussian cannot follow the shape
of the cloud the encoder puts a class in; the flow can, and every nat it gains there is a nat
of the test ELBO's KL term. The map stays exact both ways, so u keeps its meaning for the
service; the KL against it has no closed form and is estimated from q's sample
(``kl(..., z=z)``), as the reconstruction term already is.

ELBO encoder (``elbo_encoder=1``): a second encoder, used for nothing but the test ELBO. The
cards measure the ELBO on the Bernoulli likelihood below; a decoder trained with the Gaussian one
(sigma ~ 0.08) is served with the encoder of that training, whose q is far narrower than the
model's posterior under the Bernoulli likelihood, so its ELBO there is a loose bound (-270.5
against -238.0 for fashion-vae 2.0.0's decoder and prior). After training, a copy of the encoder
is fitted to the Bernoulli ELBO with the decoder and prior frozen (models.trainer, the
amortisation gap of Cremer et al., 2018, https://arxiv.org/abs/1801.03558): both encoders are q's
of the same generative model, so samples, ``encode`` and reconstructions are those of the first.

On grey-level targets the Bernoulli term is a cross-entropy, not -log p(x) of the 8-bit data: it
cannot go below the pixels' own binary entropy (189.9 nats per Fashion-MNIST test image), so the
ELBO it gives compares runs of this code, not published NLLs (README, "The models").
"""

from __future__ import annotations

import copy
import math
from dataclasses import dataclass

import torch
import torch.nn as nn
import torch.nn.functional as F

from models.flow import PriorFlow


@dataclass
class VAEConfig:
    latent_dim: int = 16
    num_classes: int = 10
    channels: int = 32
    hidden: int = 256
    image_channels: int = 1
    prior: int = 0  # 0: N(0, I); 1: per-class Gaussian N(loc_y, L_y L_y^T) fitted after training; 2: that + a flow
    image_size: int = 28  # height = width; two stride-2 steps each way, so a multiple of 4
    elbo_encoder: int = 0  # 1: a second encoder, fitted after training to the Bernoulli ELBO (the cards' measure)

    def __post_init__(self) -> None:
        if self.image_size <= 0 or self.image_size % 4:
            raise ValueError(f"image_size must be a positive multiple of 4, got {self.image_size}")
        if self.prior not in (0, 1, 2):
            raise ValueError(f"prior must be 0 (N(0, I)), 1 (fitted Gaussian) or 2 (Gaussian and flow), got {self.prior}")


class Encoder(nn.Module):
    def __init__(self, cfg: VAEConfig):
        super().__init__()
        c, self.size, base = cfg.channels, cfg.image_size, cfg.image_size // 4
        self.conv = nn.Sequential(
            nn.Conv2d(cfg.image_channels + 1, c, 4, stride=2, padding=1),  # (B, c, 14, 14)
            nn.LeakyReLU(0.2),
            nn.Conv2d(c, c * 2, 4, stride=2, padding=1),  # (B, 2c, 7, 7)
            nn.LeakyReLU(0.2),
        )
        self.label_map = nn.Embedding(cfg.num_classes, self.size * self.size)  # label as an extra input plane
        self.fc = nn.Linear(c * 2 * base * base + cfg.num_classes, cfg.hidden)
        self.mu = nn.Linear(cfg.hidden, cfg.latent_dim)
        self.logvar = nn.Linear(cfg.hidden, cfg.latent_dim)
        self.num_classes = cfg.num_classes

    def forward(self, x: torch.Tensor, y: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        plane = self.label_map(y).view(-1, 1, self.size, self.size)
        h = self.conv(torch.cat([x, plane], dim=1)).flatten(1)  # (B, 2c*49)
        h = F.leaky_relu(self.fc(torch.cat([h, F.one_hot(y, self.num_classes).to(h.dtype)], 1)), 0.2)
        return self.mu(h), self.logvar(h)


class Decoder(nn.Module):
    def __init__(self, cfg: VAEConfig):
        super().__init__()
        c = cfg.channels
        self.cfg, self.base = cfg, cfg.image_size // 4
        self.fc = nn.Sequential(
            nn.Linear(cfg.latent_dim + cfg.num_classes, cfg.hidden),
            nn.LeakyReLU(0.2),
            nn.Linear(cfg.hidden, c * 2 * self.base * self.base),
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
        return self.body(h.view(-1, self.cfg.channels * 2, self.base, self.base))


class VAE(nn.Module):
    def __init__(self, cfg: VAEConfig):
        super().__init__()
        self.cfg = cfg
        self.encoder = Encoder(cfg)
        self.decoder = Decoder(cfg)
        if cfg.elbo_encoder:
            self.elbo_encoder = Encoder(cfg)
        if cfg.prior:
            d, c = cfg.latent_dim, cfg.num_classes
            self.register_buffer("prior_loc", torch.zeros(c, d))
            self.register_buffer("prior_tril", torch.eye(d).repeat(c, 1, 1))  # lower-triangular L_y
        if cfg.prior == 2:
            self.prior_flow = PriorFlow(cfg.latent_dim, cfg.num_classes)

    def posterior(self, x: torch.Tensor, y: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """q(z | x, y) in the decoder's latent z: x (B, 1, 28, 28) in [0, 1] -> mu, logvar (B, latent_dim)."""
        return self.encoder(x, y)

    def elbo_posterior(self, x: torch.Tensor, y: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """The q(z | x, y) the test ELBO is measured with: the ELBO encoder where the model has one,
        else the encoder that ``posterior`` and ``encode`` use."""
        return (self.elbo_encoder if self.cfg.elbo_encoder else self.encoder)(x, y)

    def add_elbo_encoder(self) -> nn.Module:
        """Give the model an ELBO encoder, a copy of its encoder to be fitted; returns it."""
        self.elbo_encoder = copy.deepcopy(self.encoder)
        self.cfg.elbo_encoder = 1
        return self.elbo_encoder

    def add_prior_flow(self) -> nn.Module:
        """Put an identity flow on the fitted Gaussian (prior 1 -> 2); returns it, to be fitted."""
        if self.cfg.prior != 1:
            raise ValueError(f"a flow goes on the fitted Gaussian prior (prior=1), not prior={self.cfg.prior}")
        self.prior_flow = PriorFlow(self.cfg.latent_dim, self.cfg.num_classes).to(self.prior_loc.device)
        self.cfg.prior = 2
        return self.prior_flow

    def to_decoder_latent(self, u: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        """u (served latent, N(0, I) under the prior) -> z = loc_y + L_y u (loc_y + L_y f_y(u) with
        the flow); the identity with prior=0. The affine part is an elementwise product and a sum
        per row, so a row's z never depends on its batch; the flow's dense layers are made
        row-stable by the service like the decoder's."""
        if not self.cfg.prior:
            return u
        if self.cfg.prior == 2:
            u = self.prior_flow.from_base(u, y)
        return self.prior_loc[y] + (self.prior_tril[y] * u[:, None, :]).sum(-1)

    def encode(self, x: torch.Tensor, y: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """x: (B, 1, 28, 28) in [0, 1] -> mu, logvar: (B, latent_dim) of q in the served latent u.

        With the fitted prior, u = L_y^-1 (z - loc_y): mu is exact; logvar is the diagonal of the
        transformed covariance L_y^-1 diag(var) L_y^-T (its correlations are dropped). With the
        flow, mu goes on through it (exact) and the covariance through its Jacobian at mu, J L_y^-1
        (first order: q is narrow next to the flow's curvature)."""
        mu, logvar = self.encoder(x, y)
        if not self.cfg.prior:
            return mu, logvar
        if self.cfg.prior == 2:
            inv = _inverse(self.prior_tril)[y]
            w = (inv * (mu - self.prior_loc[y])[:, None, :]).sum(-1)
            mu_u, jac = self.prior_flow.to_base_with_jacobian(w, y)
            jac = torch.bmm(jac, inv)  # du/dz, (B, D, D)
            return mu_u, (jac.pow(2) * logvar.exp()[:, None, :]).sum(-1).log()
        mu_u, var_u = self._in_served_latent(mu, logvar, y)
        return mu_u, var_u.log()

    def _in_served_latent(self, mu: torch.Tensor, logvar: torch.Tensor, y: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """q's mean in u, L_y^-1 (mu - loc_y), and the diagonal of its covariance there."""
        inv = _inverse(self.prior_tril)[y]  # (B, D, D): inverted per class, so no row depends on its batch
        mu_u = (inv * (mu - self.prior_loc[y])[:, None, :]).sum(-1)
        var_u = (inv.pow(2) * logvar.exp()[:, None, :]).sum(-1)
        return mu_u, var_u

    def kl(self, mu: torch.Tensor, logvar: torch.Tensor, y: torch.Tensor, z: torch.Tensor | None = None) -> torch.Tensor:
        """KL(q(z | x, y) || p(z | y)) per row, (B,): q = N(mu, diag exp(logvar)) in z. Exact for
        N(0, I) and the Gaussian; with the flow, the one-sample estimate log q(z) - log p(z) at the
        z drawn from q that the reconstruction term used (required then)."""
        if self.cfg.prior == 2:
            if z is None:
                raise ValueError("the flow prior's KL is estimated at a sample: pass z drawn from q")
            log_q = -0.5 * ((z - mu).pow(2) / logvar.exp() + logvar + math.log(2 * math.pi)).sum(1)
            return log_q - self.log_prior(z, y)
        if not self.cfg.prior:
            return kl_divergence(mu, logvar)
        # in u the prior is N(0, I), and the KL is unchanged by the affine map
        mu_u, var_u = self._in_served_latent(mu, logvar, y)
        logdet = logvar.sum(1) - 2.0 * torch.diagonal(self.prior_tril[y], dim1=1, dim2=2).log().sum(1)
        return 0.5 * (var_u.sum(1) + mu_u.pow(2).sum(1) - mu.shape[1] - logdet)

    def log_prior(self, z: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        """log p(z | y) per row, (B,): N(0, I), or N(loc_y, L_y L_y^T) with the fitted prior, or
        that pushed through the flow: log N(f^-1(w); 0, I) + log |det df^-1/dw| - log |det L_y|."""
        d = z.shape[1]
        if not self.cfg.prior:
            return -0.5 * (z.pow(2).sum(1) + d * math.log(2 * math.pi))
        tril = self.prior_tril[y]
        u = torch.linalg.solve_triangular(tril, (z - self.prior_loc[y]).unsqueeze(-1), upper=False).squeeze(-1)
        logdet = torch.diagonal(tril, dim1=1, dim2=2).log().sum(1)
        if self.cfg.prior == 2:
            u, flow_logdet = self.prior_flow.to_base(u, y)
            logdet = logdet - flow_logdet
        return -0.5 * (u.pow(2).sum(1) + d * math.log(2 * math.pi)) - logdet

    def reparameterize(self, mu: torch.Tensor, logvar: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
        std = torch.exp(0.5 * logvar)  # sigma = exp(logvar / 2)
        eps = torch.randn(std.shape, generator=generator, device=std.device, dtype=std.dtype)
        return mu + eps * std

    def decode_logits(self, z: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        return self.decoder(z, y)

    def decode(self, z: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        """The pixels' means in [0, 1], (B, 1, 28, 28)."""
        return torch.sigmoid(self.decoder(z, y))

    def forward(self, x: torch.Tensor, y: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        mu, logvar = self.posterior(x, y)
        z = self.reparameterize(mu, logvar)
        return self.decode_logits(z, y), mu, logvar

    # The serving interface shared with the GAN generator: images in [-1, 1].
    def generate(self, z: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        """z: the served latent u (B, latent_dim) -> images in [-1, 1]."""
        return self.decode(self.to_decoder_latent(z, y), y) * 2.0 - 1.0

    def latent_weight(self) -> torch.Tensor:
        """The decoder's first layer's weight on the served latent, (hidden, latent_dim): what SeFa
        factorises. With the fitted prior it is W L, L the classes' mean scale (the first layer
        sees W (loc_y + L_y u)), so the directions are those of the average class. With the flow,
        L_y is L_y J_y, J_y the flow's Jacobian at u = 0 (the map linearised at the prior's centre)."""
        w = self.decoder.fc[0].weight[:, :self.cfg.latent_dim]
        if not self.cfg.prior:
            return w
        if self.cfg.prior == 2:  # dw/du at u = 0 is the inverse of du/dw at w = f(0)
            y = torch.arange(self.cfg.num_classes, device=w.device)
            centre = self.prior_flow.from_base(torch.zeros(len(y), self.cfg.latent_dim, device=w.device, dtype=w.dtype), y)
            jac = _inverse(self.prior_flow.to_base_with_jacobian(centre, y)[1])
            return w @ (self.prior_tril @ jac).mean(0)
        return w @ self.prior_tril.mean(0)

    @torch.no_grad()
    def fit_prior(self, x01: torch.Tensor, y: torch.Tensor, batch: int = 2000) -> None:
        """Fit p(z | y) = N(loc_y, L_y L_y^T) to the aggregate posterior of (x01, y) by moments:
        loc_y = mean of mu, covariance = Cov(mu) + mean(diag var) over the class's images."""
        if not self.cfg.prior:
            raise ValueError("fit_prior needs a VAE built with prior=1")
        mus, variances = [], []
        for i in range(0, len(x01), batch):
            mu, logvar = self.posterior(x01[i:i + batch].to(self.prior_loc.device), y[i:i + batch].to(self.prior_loc.device))
            mus.append(mu.double())
            variances.append(logvar.double().exp())
        mu, var, y = torch.cat(mus), torch.cat(variances), y.to(self.prior_loc.device)
        for c in range(self.cfg.num_classes):
            m, v = mu[y == c], var[y == c]
            if len(m) < 2:
                raise ValueError(f"fit_prior: class {c} has {len(m)} images; it needs 2 or more")
            cov = torch.cov(m.T) + torch.diag(v.mean(0))
            self.prior_loc[c] = m.mean(0).to(self.prior_loc.dtype)
            self.prior_tril[c] = torch.linalg.cholesky(cov).to(self.prior_tril.dtype)


def _inverse(m: torch.Tensor) -> torch.Tensor:
    """torch.linalg.inv in float32 at least: linalg has no half-precision kernels, and the service
    may hold the model in float16 or bfloat16 (LATENTSERVE_DTYPE)."""
    return torch.linalg.inv(m.float() if m.dtype in (torch.float16, torch.bfloat16) else m).to(m.dtype)


def kl_divergence(mu: torch.Tensor, logvar: torch.Tensor) -> torch.Tensor:
    """KL(N(mu, exp(logvar)) || N(0, I)) per row, summed over latent dims: (B,)."""
    return -0.5 * torch.sum(1 + logvar - mu.pow(2) - logvar.exp(), dim=1)


def negative_elbo(logits: torch.Tensor, x01: torch.Tensor, mu: torch.Tensor, logvar: torch.Tensor,
                  kl: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Mean over the batch of (reconstruction NLL, KL, NLL + KL), in nats per image. ``kl`` per
    row (default: against N(0, I); ``VAE.kl`` gives it against the model's own prior)."""
    rec = F.binary_cross_entropy_with_logits(logits, x01, reduction="none").flatten(1).sum(1)
    kl = kl_divergence(mu, logvar) if kl is None else kl
    return rec.mean(), kl.mean(), (rec + kl).mean()


def gaussian_reconstruction(logits: torch.Tensor, x01: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """-log N(x; sigmoid(logits), sigma^2 I) per image, (B,), with one sigma for every pixel set to
    its maximum-likelihood value sqrt(batch MSE) (the "optimal sigma" of Rybkin et al., 2021,
    https://arxiv.org/abs/2006.13202). Returns (nll, sigma). A Bernoulli likelihood on grey levels
    weighs an error at a mid-grey pixel about 25 times less than this one does at sigma = 0.1, which
    is why its reconstructions lose texture; here the decoder's own accuracy sets the weight.
    sigma is a constant of each step's gradient: at its optimum d(nll)/d(sigma) = 0."""
    mean = torch.sigmoid(logits)
    sq = (mean - x01).pow(2).flatten(1)
    sigma = sq.mean().detach().sqrt().clamp_min(1e-3)
    pixels = sq.shape[1]
    nll = sq.sum(1) / (2 * sigma**2) + pixels * (torch.log(sigma) + 0.5 * math.log(2 * math.pi))
    return nll, sigma
