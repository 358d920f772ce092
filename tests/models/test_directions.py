"""models.directions (SeFa) and models.projection on tiny random modules."""

from __future__ import annotations

import torch

from models.directions import move, sefa
from models.gan import GANConfig, Generator
from models.interface import Generative
from models.projection import project
from models.vae import VAE, VAEConfig


def test_sefa_gives_orthonormal_eigenvectors_of_ata_strongest_first():
    torch.manual_seed(0)
    a = torch.randn(40, 6)
    d = sefa(a)
    v, e = d.vectors.double(), d.eigenvalues
    assert d.vectors.dtype == torch.float32 and len(d) == 6
    torch.testing.assert_close(v @ v.T, torch.eye(6, dtype=torch.float64), atol=1e-6, rtol=0)
    assert torch.all(e[:-1] >= e[1:])
    ata = a.double().T @ a.double()
    for k in range(6):  # A^T A n = lambda n, and lambda = |A n|^2
        torch.testing.assert_close(ata @ v[k], e[k] * v[k], atol=1e-4, rtol=1e-4)
        assert abs(float((a.double() @ v[k]).pow(2).sum()) - float(e[k])) < 1e-4
    # no unit vector moves the layer more than the first direction
    probe = torch.nn.functional.normalize(torch.randn(200, 6, dtype=torch.float64), dim=1)
    assert float((a.double() @ probe.T).pow(2).sum(0).max()) <= float(e[0]) + 1e-9
    # the sign is fixed: the largest entry of each direction is positive
    assert torch.all(v.gather(1, v.abs().argmax(1, keepdim=True)) > 0)


def test_directions_come_from_the_latent_columns_of_the_first_layer():
    gan = Generator(GANConfig(latent_dim=8, g_channels=16, embed_dim=4))
    assert isinstance(gan, Generative) and isinstance(VAE(VAEConfig()), Generative)
    assert gan.latent_weight().shape == (16 * 7 * 7, 8)
    assert torch.equal(gan.latent_weight(), gan.fc.weight[:, :8])
    vae = VAE(VAEConfig(latent_dim=3, channels=8, hidden=32))
    assert torch.equal(vae.latent_weight(), vae.decoder.fc[0].weight[:, :3])
    assert len(sefa(vae.latent_weight())) == 3


def test_move_adds_amounts_in_float32_and_skips_zeros():
    d = torch.eye(4)
    z = torch.tensor([0.1, 0.2, 0.3, 0.4])
    assert torch.equal(move(z, d, [(0, 0.0), (2, 0.0)]), z)
    out = move(z, d, [(1, 2.0), (3, -0.5)])
    torch.testing.assert_close(out, torch.tensor([0.1, 2.2, 0.3, -0.1]))
    assert out.dtype == torch.float32 and torch.equal(z, torch.tensor([0.1, 0.2, 0.3, 0.4]))  # not in place


def test_projection_lowers_mse_and_recovers_a_generated_image():
    torch.manual_seed(0)
    g = Generator(GANConfig(latent_dim=8, g_channels=16, embed_dim=4)).eval().requires_grad_(False)
    z_true = torch.randn(1, 8)
    target = g.generate(z_true, torch.tensor([3]))[0]
    starts = torch.randn(3, 8, generator=torch.Generator().manual_seed(1))
    found = project(g, target, 3, starts, steps=150)
    assert found.steps == 150 and found.mse < found.start_mse * 0.5
    recon = g.generate(found.latent[None], torch.tensor([3]))[0]
    assert abs(float((recon - target).pow(2).mean()) - found.mse) < 1e-5
    assert not any(p.requires_grad for p in g.parameters())  # the generator is left as it was
    stopped = project(g, target, 3, starts, steps=150, should_stop=lambda: True)
    assert stopped.steps == 0 and stopped.mse == stopped.start_mse
