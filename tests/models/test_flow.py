"""The flow prior (prior=2): the coupling stack's two directions and log-determinant, and what the
VAE builds on it (sampling, density, KL, encoding, SeFa's weight)."""

import math

import pytest
import torch

from models.flow import PriorFlow
from models.vae import VAE, VAEConfig

D = 3


def row_jacobian(fn, x, y):
    """d fn(x, y) / dx per row by autograd, one backward pass per output coordinate: the oracle
    for the closed forms."""
    with torch.inference_mode(False), torch.enable_grad():
        x = x.clone().requires_grad_(True)
        out = fn(x, y.clone())
        rows = [torch.autograd.grad(out[:, i].sum(), x, retain_graph=True)[0] for i in range(out.shape[1])]
    return torch.stack(rows, dim=1).detach()


def labels(b):
    return torch.arange(b) % 10


def randomise(flow: PriorFlow, seed: int = 0, scale: float = 0.5) -> PriorFlow:
    """Give the zero-initialised last layers random weights, so the flow is far from the identity."""
    torch.manual_seed(seed)
    with torch.no_grad():
        for layer in flow.layers:
            layer.net[-1].weight.normal_(0.0, scale)
            layer.net[-1].bias.normal_(0.0, scale)
    return flow


def flow_vae(seed: int = 0, fitted: bool = True) -> VAE:
    """A prior=2 VAE: a random per-class Gaussian, then a random flow (identity if not fitted)."""
    torch.manual_seed(seed)
    vae = VAE(VAEConfig(latent_dim=D, channels=4, hidden=16, prior=1)).eval()
    vae.prior_loc.copy_(torch.randn(10, D))
    tril = torch.randn(10, D, D).tril()
    tril.diagonal(dim1=1, dim2=2).copy_(torch.rand(10, D) + 0.5)
    vae.prior_tril.copy_(tril)
    flow = vae.add_prior_flow()
    if fitted:
        randomise(flow, seed)
    return vae.eval()


def test_a_new_flow_is_the_identity_and_its_layers_are_exact_inverses():
    flow = PriorFlow(5, 10, layers=4, hidden=8)
    w, y = torch.randn(7, 5), labels(7)
    u, logdet = flow.to_base(w, y)
    assert torch.equal(u, w) and torch.equal(logdet, torch.zeros(7))
    randomise(flow)
    u, logdet = flow.to_base(w, y)
    assert (u - w).abs().max() > 0.1 and logdet.abs().max() > 0.1
    assert torch.allclose(flow.from_base(u, y), w, atol=1e-5)
    # every layer moves only the coordinates its mask leaves free, and keeps about half
    for layer in flow.layers:
        assert layer.mask.sum() == 2
        kept = layer.mask.bool()
        assert torch.equal(layer.to_base(w, y)[0][:, kept], w[:, kept])


def test_flow_log_determinant_is_that_of_its_jacobian():
    """log |det du/dw| from the layers' scales equals slogdet of the Jacobian by autograd."""
    flow = randomise(PriorFlow(4, 10, layers=3, hidden=8), seed=3)
    w, y = torch.randn(6, 4), labels(6)
    jac = row_jacobian(lambda w_, y_: flow.to_base(w_, y_)[0], w, y)
    assert torch.allclose(flow.to_base(w, y)[1], torch.linalg.slogdet(jac)[1], atol=1e-5)
    # row_jacobian agrees with torch.autograd.functional.jacobian row by row
    for i in range(6):
        want = torch.autograd.functional.jacobian(lambda r: flow.to_base(r[None], y[i:i + 1])[0][0], w[i])
        assert torch.allclose(jac[i], want, atol=1e-6)


def test_the_closed_form_jacobian_is_autograds_also_through_row_stable_wrappers():
    from app.engine.passes import stable_dense_rows

    flow = randomise(PriorFlow(4, 10, layers=3, hidden=8), seed=5)
    w, y = torch.randn(6, 4), labels(6)
    want = row_jacobian(lambda w_, y_: flow.to_base(w_, y_)[0], w, y)
    with torch.inference_mode():  # the service encodes inside inference mode
        u, jac = flow.to_base_with_jacobian(w, y)
        assert torch.allclose(jac, want, atol=1e-5) and torch.allclose(u, flow.to_base(w, y)[0], atol=1e-6)
        stable_dense_rows(flow)  # the service's wrappers around every dense layer
        u2, jac2 = flow.to_base_with_jacobian(w, y)
    assert torch.allclose(jac2, want, atol=1e-5) and torch.allclose(u2, u, atol=1e-6)
    identity = PriorFlow(4, 10, layers=0)
    assert torch.equal(identity.to_base_with_jacobian(w, y)[1], torch.eye(4).expand(6, -1, -1))


def test_flow_prior_samples_through_the_flow_and_its_density_integrates_the_change_of_variables():
    vae = flow_vae()
    u, y = torch.randn(8, D), labels(8)
    with torch.no_grad():
        w = vae.prior_flow.from_base(u, y)
        z = torch.stack([vae.prior_loc[c] + vae.prior_tril[c] @ w[i] for i, c in enumerate(y.tolist())])
        assert torch.allclose(vae.to_decoder_latent(u, y), z, atol=1e-5)
        assert torch.allclose(vae.generate(u, y), vae.decode(z, y) * 2 - 1, atol=1e-5)
    # log p(z | y) = log N(u; 0, I) - log |det dz/du|, dz/du by autograd through the whole map
    jac = row_jacobian(vae.to_decoder_latent, u, y)
    want = -0.5 * (u.pow(2).sum(1) + D * math.log(2 * math.pi)) - torch.linalg.slogdet(jac)[1]
    with torch.no_grad():
        assert torch.allclose(vae.log_prior(z, y), want, atol=1e-4)


@torch.no_grad()
def test_identity_flow_prior_is_the_gaussian():
    vae = flow_vae(fitted=False)
    gaussian = VAE(VAEConfig(latent_dim=D, channels=4, hidden=16, prior=1)).eval()
    gaussian.load_state_dict({k: v for k, v in vae.state_dict().items() if not k.startswith("prior_flow.")})
    z, u, y = torch.randn(6, D), torch.randn(6, D), labels(6)
    assert torch.allclose(vae.log_prior(z, y), gaussian.log_prior(z, y), atol=1e-6)
    assert torch.equal(vae.to_decoder_latent(u, y), gaussian.to_decoder_latent(u, y))
    assert torch.allclose(vae.latent_weight(), gaussian.latent_weight(), atol=1e-6)


@torch.no_grad()
def test_flow_prior_kl_is_the_one_sample_estimate_and_needs_the_sample():
    vae = flow_vae(1)
    mu, logvar, y = torch.randn(5, D), torch.randn(5, D) * 0.3, labels(5)
    z = mu + torch.randn(5, D) * (0.5 * logvar).exp()
    log_q = torch.distributions.Normal(mu, (0.5 * logvar).exp()).log_prob(z).sum(1)
    assert torch.allclose(vae.kl(mu, logvar, y, z), log_q - vae.log_prior(z, y), atol=1e-5)
    with pytest.raises(ValueError, match="pass z"):
        vae.kl(mu, logvar, y)
    # its mean over many samples approaches the exact KL where that exists (the identity flow)
    plain = flow_vae(1, fitted=False)
    n = 20000
    zs = (mu + torch.randn(n, 5, D) * (0.5 * logvar).exp()).flatten(0, 1)
    mc = plain.kl(mu.repeat(n, 1), logvar.repeat(n, 1), y.repeat(n), zs).view(n, 5).mean(0)
    plain.cfg.prior = 1
    assert torch.allclose(mc, plain.kl(mu, logvar, y), rtol=0.01, atol=0.05)


def test_encode_maps_through_the_flow_and_its_variance_through_the_jacobian():
    """u = f^-1(L^-1 (mu - loc)) decodes to the reconstruction; var_u is the diagonal of
    J diag(var_z) J^T, J = du/dz at mu."""
    vae = flow_vae(2)
    x, y = torch.rand(4, 1, 28, 28), labels(4)
    with torch.no_grad():
        mu_z, logvar_z = vae.posterior(x, y)
        mu_u, logvar_u = vae.encode(x, y)
        assert torch.allclose(vae.to_decoder_latent(mu_u, y), mu_z, atol=1e-5)
        assert torch.allclose(vae.generate(mu_u, y), vae.decode(mu_z, y) * 2 - 1, atol=1e-5)
    for i in range(4):
        def to_u(z, c=y[i:i + 1]):
            w = torch.linalg.solve_triangular(vae.prior_tril[c][0], (z - vae.prior_loc[c][0])[:, None], upper=False)[:, 0]
            return vae.prior_flow.to_base(w[None], c)[0][0]
        jac = torch.autograd.functional.jacobian(to_u, mu_z[i])
        cov = jac @ torch.diag(logvar_z[i].exp()) @ jac.T
        assert torch.allclose(logvar_u[i].exp(), torch.diagonal(cov), rtol=1e-4)
    with torch.inference_mode():  # the service encodes inside inference mode
        assert torch.allclose(vae.encode(x, y)[1], logvar_u)


def test_latent_weight_is_linearised_at_the_prior_centre():
    vae = flow_vae(3)
    w = vae.decoder.fc[0].weight[:, :D]
    maps = [torch.autograd.functional.jacobian(lambda u, c=c: vae.to_decoder_latent(u[None], torch.tensor([c]))[0],
                                               torch.zeros(D)) for c in range(10)]
    assert torch.allclose(vae.latent_weight(), w @ torch.stack(maps).mean(0), atol=1e-5)


def test_add_prior_flow_takes_the_fitted_gaussian_only():
    with pytest.raises(ValueError, match="prior=1"):
        VAE(VAEConfig(latent_dim=D, channels=4, hidden=16, prior=0)).add_prior_flow()
    vae = flow_vae()
    with pytest.raises(ValueError, match="prior=2"):
        vae.add_prior_flow()
    with pytest.raises(ValueError, match="prior must be"):
        VAEConfig(prior=3)


def test_a_flow_prior_model_saves_and_loads_with_its_flow(tmp_path):
    from models.card import load_model, save_model

    vae = flow_vae(4)
    save_model(vae, name="tiny-flow", kind="vae", out_dir=tmp_path)
    loaded, card = load_model(tmp_path / "tiny-flow.json")
    assert card["config"]["prior"] == 2
    u, y = torch.randn(5, D), labels(5)
    with torch.no_grad():
        assert torch.equal(loaded.generate(u, y), vae.generate(u, y))
    assert torch.equal(loaded.prior_flow.layers[0].mask, vae.prior_flow.layers[0].mask)
