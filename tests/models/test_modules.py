"""models.gan, models.vae, models.classifier: shapes, value ranges, batch independence,
the VAE's sampling and loss, and the GAN's losses and EMA."""

import math

import pytest
import torch

from models.classifier import Classifier, ClassifierConfig
from models.gan import (
    Discriminator,
    GANConfig,
    Generator,
    aux_class_loss,
    d_hinge_loss,
    ema_update,
    g_hinge_loss,
)
from models.vae import VAE, VAEConfig, kl_divergence, negative_elbo

GAN_CFG = GANConfig(latent_dim=8, g_channels=16, d_channels=8, embed_dim=4)
VAE_CFG = VAEConfig(latent_dim=4, channels=4, hidden=32)


def labels(b):
    return torch.arange(b) % 10


# -- shapes and ranges --

@torch.no_grad()
def test_generator_shape_and_range():
    """(B, latent) latents and (B,) labels -> (B, 1, 28, 28) images within [-1, 1]."""
    g = Generator(GAN_CFG).eval()
    z = torch.randn(5, 8) * 10  # large latents push tanh towards saturation
    out = g.generate(z, labels(5))
    assert out.shape == (5, 1, 28, 28) and out.dtype == torch.float32
    assert float(out.min()) >= -1.0 and float(out.max()) <= 1.0
    assert torch.equal(out, g(z, labels(5)))  # generate is the forward pass


@torch.no_grad()
def test_generator_label_changes_output():
    """The same latent with two different labels gives two different images."""
    g = Generator(GAN_CFG).eval()
    z = torch.randn(1, 8).repeat(2, 1)
    out = g.generate(z, torch.tensor([0, 7]))
    assert (out[0] - out[1]).abs().max() > 1e-4


@torch.no_grad()
def test_discriminator_logit_shape():
    d = Discriminator(GAN_CFG)
    assert d(torch.rand(3, 1, 28, 28) * 2 - 1, labels(3)).shape == (3,)
    assert d.classes is None and not any(k.startswith("classes") for k in d.state_dict())
    with pytest.raises(ValueError, match="no class head"):
        d(torch.rand(3, 1, 28, 28), labels(3), with_classes=True)


@torch.no_grad()
def test_discriminator_class_head_shares_the_pass_and_leaves_the_logit_alone():
    """classify=True: one pass gives the same real/fake logit as without the head, plus
    (B, num_classes) class logits; the head is the only new weight."""
    torch.manual_seed(0)
    plain = Discriminator(GAN_CFG)
    torch.manual_seed(0)
    d = Discriminator(GAN_CFG, classify=True).eval()
    x, y = torch.rand(4, 1, 28, 28) * 2 - 1, labels(4)
    logit, classes = d(x, y, with_classes=True)
    assert logit.shape == (4,) and classes.shape == (4, 10)
    assert torch.equal(logit, d(x, y))
    assert {k for k in d.state_dict() if not k.startswith("classes.")} == set(plain.state_dict())
    assert torch.equal(plain.eval()(x, y), logit)  # the same initial body and heads (head built last)


@torch.no_grad()
def test_vae_shapes_and_ranges():
    """encode -> (B, latent) mu and logvar; decode in [0, 1]; generate = 2 * decode - 1 in [-1, 1]."""
    vae = VAE(VAE_CFG).eval()
    x, y = torch.rand(6, 1, 28, 28), labels(6)
    mu, logvar = vae.encode(x, y)
    assert mu.shape == (6, 4) and logvar.shape == (6, 4)
    z = torch.randn(6, 4) * 5
    dec = vae.decode(z, y)
    assert dec.shape == (6, 1, 28, 28)
    assert float(dec.min()) >= 0.0 and float(dec.max()) <= 1.0
    gen = vae.generate(z, y)
    assert gen.shape == (6, 1, 28, 28)
    assert float(gen.min()) >= -1.0 and float(gen.max()) <= 1.0
    assert torch.allclose(gen, dec * 2 - 1, atol=1e-6)
    logits, mu2, logvar2 = vae(x, y)
    assert logits.shape == (6, 1, 28, 28)
    assert torch.equal(mu2, mu) and torch.equal(logvar2, logvar)


@torch.no_grad()
def test_classifier_logits_and_features_shapes():
    """Default config: 10 logits and 128 penultimate features per image; features are post-ReLU."""
    clf = Classifier(ClassifierConfig()).eval()
    x = torch.rand(2, 1, 28, 28) * 2 - 1
    logits, feats = clf(x), clf.features(x)
    assert logits.shape == (2, 10)
    assert feats.shape == (2, 128)
    assert float(feats.min()) >= 0.0
    assert torch.allclose(clf.head(feats), logits, atol=1e-6)  # eval: dropout is off


@torch.no_grad()
def test_classifier_feature_width_follows_config():
    clf = Classifier(ClassifierConfig(channels=4, features=16)).eval()
    assert clf.features(torch.zeros(3, 1, 28, 28)).shape == (3, 16)


# -- batch independence (eval mode) --

@pytest.mark.parametrize("make, latent_dim", [(lambda: Generator(GAN_CFG), 8), (lambda: VAE(VAE_CFG), 4)],
                         ids=["gan", "vae"])
def test_generate_is_batch_independent(make, latent_dim):
    """A row's image does not depend on the other rows of its batch: row alone == row in a batch of 64."""
    model = make().eval()
    z = torch.randn(64, latent_dim)
    y = torch.randint(10, (64,))
    with torch.no_grad():
        batch = model.generate(z, y)
        for i in (0, 17, 63):
            alone = model.generate(z[i:i + 1], y[i:i + 1])
            assert float((alone[0] - batch[i]).abs().max()) <= 1e-5
        # the same row inside a different random batch
        z2, y2 = torch.randn(64, latent_dim), torch.randint(10, (64,))
        z2[5], y2[5] = z[17], y[17]
        assert float((model.generate(z2, y2)[5] - batch[17]).abs().max()) <= 1e-5


# -- VAE sampling and loss --

def test_reparameterize_uses_std_exp_half_logvar():
    """With mu = 1 and logvar = log 4, samples have mean ~1 and std ~2 (not 4, not sqrt 2)."""
    vae = VAE(VAE_CFG)
    mu = torch.ones(20000, 4)
    logvar = torch.full((20000, 4), math.log(4.0))
    s = vae.reparameterize(mu, logvar, generator=torch.Generator().manual_seed(0))
    assert s.shape == mu.shape
    assert abs(float(s.mean()) - 1.0) < 0.03
    assert abs(float(s.std()) - 2.0) < 0.03
    again = vae.reparameterize(mu, logvar, generator=torch.Generator().manual_seed(0))
    assert torch.equal(s, again)  # a seeded generator makes it reproducible


def test_reparameterize_zero_variance_is_mu():
    vae = VAE(VAE_CFG)
    mu = torch.randn(3, 4)
    out = vae.reparameterize(mu, torch.full((3, 4), -200.0))
    assert torch.allclose(out, mu, atol=1e-12)


def test_negative_elbo_gradients_reach_encoder_and_decoder():
    """Backprop of the negative ELBO gives a non-zero gradient to every encoder and decoder parameter."""
    vae = VAE(VAE_CFG).train()
    x, y = torch.rand(8, 1, 28, 28), labels(8)
    logits, mu, logvar = vae(x, y)
    rec, kl, loss = negative_elbo(logits, x, mu, logvar)
    assert torch.allclose(loss, rec + kl)
    loss.backward()
    for part in (vae.encoder, vae.decoder):
        for name, p in part.named_parameters():
            assert p.grad is not None, name
            assert float(p.grad.abs().sum()) > 0, name


def test_negative_elbo_reconstruction_term():
    """rec = per-image sum of Bernoulli NLL: logits 0 (p = 0.5) cost 784 * log 2 for any binary image."""
    x = (torch.rand(2, 1, 28, 28) > 0.5).float()
    mu, logvar = torch.zeros(2, 3), torch.zeros(2, 3)
    rec, kl, loss = negative_elbo(torch.zeros(2, 1, 28, 28), x, mu, logvar)
    assert torch.allclose(rec, torch.tensor(784 * math.log(2.0)), rtol=1e-6)
    assert float(kl) == 0.0
    assert torch.allclose(loss, rec)


def test_kl_divergence_values():
    """KL is 0 at the prior and matches 1/2 * sum(var + mu^2 - 1 - logvar) elsewhere, per row."""
    assert torch.equal(kl_divergence(torch.zeros(3, 5), torch.zeros(3, 5)), torch.zeros(3))
    mu = torch.tensor([[1.0, 2.0], [0.0, 0.0]])
    logvar = torch.tensor([[math.log(2.0), 0.0], [math.log(0.5), 0.0]])
    expected = torch.tensor([3.0 - math.log(2.0) / 2, 0.5 * (0.5 - 1 - math.log(0.5))])
    kl = kl_divergence(mu, logvar)
    assert kl.shape == (2,)
    assert torch.allclose(kl, expected, atol=1e-6)


# -- GAN losses and EMA --

def test_d_hinge_loss_hand_computed():
    """mean(relu(1 - d_real)) + mean(relu(1 + d_fake))."""
    d_real = torch.tensor([2.0, 0.5, -1.0])
    d_fake = torch.tensor([-2.0, 0.0, 1.0])
    # relu(1 - real) = [0, 0.5, 2] -> 2.5/3; relu(1 + fake) = [0, 1, 2] -> 1
    assert torch.allclose(d_hinge_loss(d_real, d_fake), torch.tensor(2.5 / 3 + 1.0))
    assert float(d_hinge_loss(torch.full((4,), 1.5), torch.full((4,), -3.0))) == 0.0  # beyond both margins


def test_aux_class_loss_is_the_cross_entropy_of_the_class_asked_for():
    """-log softmax(logits)[y], averaged: logits (0, ln 3) give p(1) = 3/4."""
    logits = torch.tensor([[0.0, math.log(3.0)], [0.0, math.log(3.0)]])
    want = (-math.log(0.75) - math.log(0.25)) / 2
    assert math.isclose(float(aux_class_loss(logits, torch.tensor([1, 0]))), want, rel_tol=1e-6)


def test_g_hinge_loss_hand_computed():
    assert torch.allclose(g_hinge_loss(torch.tensor([-2.0, 0.0, 1.0, 5.0])), torch.tensor(-1.0))


def test_ema_update_moves_by_one_minus_decay():
    """ema <- decay * ema + (1 - decay) * model, for every parameter; the model is unchanged."""
    ema, model = Generator(GAN_CFG), Generator(GAN_CFG)
    with torch.no_grad():
        for p in ema.parameters():
            p.fill_(0.0)
        for i, p in enumerate(model.parameters()):
            p.fill_(float(i + 1))
    ema_update(ema, model, decay=0.9)
    for i, (pe, pm) in enumerate(zip(ema.parameters(), model.parameters())):
        assert torch.allclose(pe, torch.full_like(pe, 0.1 * (i + 1)), atol=1e-6)
        assert torch.all(pm == float(i + 1))
    ema_update(ema, model, decay=0.5)  # from 0.1 k towards k by half: 0.55 k
    for i, pe in enumerate(ema.parameters()):
        assert torch.allclose(pe, torch.full_like(pe, 0.55 * (i + 1)), atol=1e-6)


def test_to_uint8_maps_the_tanh_range_onto_grey_levels():
    """[-1, 1] -> 0..255 by (x + 1) * 127.5, rounded half to even, clamped outside the range."""
    from models.images import to_uint8

    x = torch.tensor([-2.0, -1.0, -0.5, 0.0, 0.00392, 0.5, 1.0, 3.0, float("-inf"), float("inf")]).view(1, 1, 1, -1)
    assert to_uint8(x).tolist() == [[[0, 0, 64, 128, 128, 191, 255, 255, 0, 255]]]
    batch = torch.full((3, 1, 2, 2), -1.0)
    batch[1] = 1.0
    out = to_uint8(batch)
    assert out.dtype == torch.uint8 and out.shape == (3, 2, 2)
    assert out[:, 0, 0].tolist() == [0, 255, 0]


# -- the fitted prior (prior=1) and the Gaussian likelihood --

PRIOR_CFG = VAEConfig(latent_dim=3, channels=4, hidden=16, prior=1)


def fitted_vae(seed=0):
    """A prior=1 VAE whose prior is set to a random per-class Gaussian (loc, L with positive diagonal)."""
    torch.manual_seed(seed)
    vae = VAE(PRIOR_CFG).eval()
    vae.prior_loc.copy_(torch.randn(10, 3))
    tril = torch.randn(10, 3, 3).tril()
    tril.diagonal(dim1=1, dim2=2).copy_(torch.rand(10, 3) + 0.5)
    vae.prior_tril.copy_(tril)
    return vae


@torch.no_grad()
def test_prior_maps_served_latent_to_decoder_latent_and_back():
    """generate(u) decodes z = loc_y + L_y u; encode returns u = L_y^-1 (mu_z - loc_y) and the
    diagonal of L_y^-1 diag(var) L_y^-T, so an encoded image's u decodes to its reconstruction."""
    vae = fitted_vae()
    x, y = torch.rand(6, 1, 28, 28), labels(6)
    u = torch.randn(6, 3)
    z = torch.stack([vae.prior_loc[c] + vae.prior_tril[c] @ u[i] for i, c in enumerate(y.tolist())])
    assert torch.allclose(vae.generate(u, y), vae.decode(z, y) * 2 - 1, atol=1e-6)
    mu_z, logvar_z = vae.posterior(x, y)
    mu_u, logvar_u = vae.encode(x, y)
    for i, c in enumerate(y.tolist()):
        inv = torch.linalg.inv(vae.prior_tril[c])
        assert torch.allclose(mu_u[i], inv @ (mu_z[i] - vae.prior_loc[c]), atol=1e-5)
        cov_u = inv @ torch.diag(logvar_z[i].exp()) @ inv.T
        assert torch.allclose(logvar_u[i].exp(), torch.diagonal(cov_u), rtol=1e-5)
    assert torch.allclose(vae.generate(mu_u, y), vae.decode(mu_z, y) * 2 - 1, atol=1e-5)


@torch.no_grad()
def test_prior_kl_matches_torch_distributions():
    """VAE.kl against the fitted prior equals KL(N(mu, diag var) || N(loc_y, L_y L_y^T)) of
    torch.distributions; with prior=0 it is the closed form against N(0, I)."""
    from torch.distributions import MultivariateNormal
    from torch.distributions import kl_divergence as td_kl

    vae = fitted_vae(1)
    mu, logvar, y = torch.randn(5, 3), torch.randn(5, 3) * 0.5, labels(5)
    want = td_kl(MultivariateNormal(mu, torch.diag_embed(logvar.exp())),
                 MultivariateNormal(vae.prior_loc[y], scale_tril=vae.prior_tril[y]))
    assert torch.allclose(vae.kl(mu, logvar, y), want, rtol=1e-4, atol=1e-5)
    plain = VAE(VAE_CFG)
    mu4, logvar4 = torch.randn(5, 4), torch.randn(5, 4)
    assert torch.equal(plain.kl(mu4, logvar4, labels(5)), kl_divergence(mu4, logvar4))


@torch.no_grad()
def test_log_prior_matches_torch_distributions():
    """VAE.log_prior is log N(z; loc_y, L_y L_y^T) with the fitted prior, log N(z; 0, I) without."""
    from torch.distributions import MultivariateNormal, Normal

    vae, z, y = fitted_vae(2), torch.randn(7, 3) * 2, labels(7)
    want = MultivariateNormal(vae.prior_loc[y], scale_tril=vae.prior_tril[y]).log_prob(z)
    assert torch.allclose(vae.log_prior(z, y), want, rtol=1e-5, atol=1e-5)
    z4 = torch.randn(7, 4)
    assert torch.allclose(VAE(VAE_CFG).log_prior(z4, y), Normal(0.0, 1.0).log_prob(z4).sum(1), atol=1e-5)


@torch.no_grad()
def test_fit_prior_matches_the_aggregate_posterior_moments():
    """loc_y is the class's mean of mu; L_y L_y^T is Cov(mu) + mean(var) over the class's rows."""
    vae = VAE(PRIOR_CFG).eval()
    x, y = torch.rand(60, 1, 28, 28), labels(60)
    vae.fit_prior(x, y, batch=7)  # batches that cut across classes
    mu, logvar = vae.posterior(x, y)
    for c in (0, 9):
        m, v = mu[y == c].double(), logvar[y == c].double().exp()
        assert torch.allclose(vae.prior_loc[c].double(), m.mean(0), atol=1e-5)
        cov = vae.prior_tril[c].double() @ vae.prior_tril[c].double().T
        assert torch.allclose(cov, torch.cov(m.T) + torch.diag(v.mean(0)), atol=1e-5)
    with pytest.raises(ValueError, match="prior=1"):
        VAE(VAE_CFG).fit_prior(x, y)


@torch.no_grad()
def test_prior_map_is_row_independent():
    """A row's decoder latent does not depend on the other rows of its batch, bit for bit (the
    service batches across clients and makes its dense layers row-stable; this map must be too)."""
    vae = fitted_vae(2)
    u, y = torch.randn(64, 3), labels(64)
    whole = vae.to_decoder_latent(u, y)
    for i in (0, 4, 63):
        assert torch.equal(vae.to_decoder_latent(u[i:i + 1], y[i:i + 1]), whole[i:i + 1])


def test_gaussian_reconstruction_is_the_normal_nll_at_the_ml_sigma():
    """-log N(x; sigmoid(logits), sigma^2) summed per image, sigma = sqrt(batch MSE)."""
    from models.vae import gaussian_reconstruction

    logits, x = torch.randn(4, 1, 28, 28), torch.rand(4, 1, 28, 28)
    nll, sigma = gaussian_reconstruction(logits, x)
    mean = torch.sigmoid(logits)
    assert sigma.item() == pytest.approx((mean - x).pow(2).mean().sqrt().item(), rel=1e-6)
    want = -torch.distributions.Normal(mean, sigma).log_prob(x).flatten(1).sum(1)
    assert torch.allclose(nll, want, rtol=1e-5)
    # sigma is the optimum: any other sigma gives a larger total NLL
    for other in (sigma * 0.9, sigma * 1.1):
        assert -torch.distributions.Normal(mean, other).log_prob(x).sum() > nll.sum()


def test_ema_decay_ramps_its_half_life():
    """With rampup r the half-life is at most r * step updates; 0 keeps the decay from step 1."""
    from models.gan import ema_decay_at

    assert ema_decay_at(1, 0.999, 0.0) == 0.999
    assert ema_decay_at(100, 0.999, 0.05) == pytest.approx(0.5 ** (1 / 5))  # half-life 5 steps
    assert ema_decay_at(1000, 0.999, 0.05) == pytest.approx(0.5 ** (1 / 50))
    assert ema_decay_at(50_000, 0.999, 0.05) == 0.999  # 0.999's own half-life (693) is shorter
    assert ema_decay_at(0, 0.999, 0.05) < 1e-6  # the first update copies G


@torch.no_grad()
def test_sizes_follow_the_configs_image_size():
    """Both generators derive their spatial sizes from image_size (a multiple of 4)."""
    g = Generator(GANConfig(latent_dim=8, g_channels=16, d_channels=8, embed_dim=4, image_size=32)).eval()
    assert g.generate(torch.randn(2, 8), labels(2)).shape == (2, 1, 32, 32)
    assert Discriminator(GANConfig(d_channels=8, image_size=32))(torch.rand(2, 1, 32, 32), labels(2)).shape == (2,)
    vae = VAE(VAEConfig(latent_dim=4, channels=4, hidden=32, image_size=16)).eval()
    mu, _ = vae.encode(torch.rand(3, 1, 16, 16), labels(3))
    assert mu.shape == (3, 4) and vae.generate(mu, labels(3)).shape == (3, 1, 16, 16)
    for bad in (0, 30, -4):
        with pytest.raises(ValueError, match="multiple of 4"):
            GANConfig(image_size=bad)
        with pytest.raises(ValueError, match="multiple of 4"):
            VAEConfig(image_size=bad)


@torch.no_grad()
def test_prior_encode_is_row_independent():
    """encode's map into the served latent gives a row the same bits alone as in a batch."""
    vae = fitted_vae(3)
    mu, logvar, y = torch.randn(32, 3), torch.randn(32, 3), labels(32)

    class Rows(torch.nn.Module):  # an encoder that returns the posterior of the rows it is given
        def forward(self, rows, y):
            return mu[rows], logvar[rows]

    vae.encoder = Rows()
    whole_mu, whole_logvar = vae.encode(torch.arange(32), y)
    for i in (0, 7, 31):
        one_mu, one_logvar = vae.encode(torch.tensor([i]), y[i:i + 1])
        assert torch.equal(one_mu, whole_mu[i:i + 1]) and torch.equal(one_logvar, whole_logvar[i:i + 1])
