"""models.gan, models.vae, models.classifier: shapes, value ranges, batch independence,
the VAE's sampling and loss, and the GAN's losses and EMA."""

import math

import pytest
import torch

from models.classifier import Classifier, ClassifierConfig
from models.gan import Discriminator, GANConfig, Generator, d_hinge_loss, ema_update, g_hinge_loss
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
