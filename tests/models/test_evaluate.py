"""models.evaluate: Frechet distance / FID, conditional accuracy, classification and the
seeded, class-major evaluation set."""

import numpy as np
import pytest
import torch

import models.evaluate as ev
from models.classifier import Classifier, ClassifierConfig
from models.data import CLASS_NAMES
from models.gan import GANConfig, Generator
from models.latents import seeded_latent


def closed_form_diag(mu1, var1, mu2, var2):
    """Frechet distance of N(mu1, diag(var1)) and N(mu2, diag(var2))."""
    return float(np.sum((mu1 - mu2) ** 2) + np.sum((np.sqrt(var1) - np.sqrt(var2)) ** 2))


def random_rotation(d, seed):
    q, r = np.linalg.qr(np.random.RandomState(seed).randn(d, d))
    return q * np.sign(np.diag(r))


# -- FID --

def test_fid_of_a_set_with_itself_is_zero():
    a = np.random.RandomState(0).randn(2000, 16) @ np.random.RandomState(1).randn(16, 16)
    assert abs(ev.fid(a, a)) < 1e-6


def test_fid_grows_with_mean_shift():
    """Shifting every one of 16 dims by s adds exactly 16 s^2 (the covariance is unchanged)."""
    a = np.random.RandomState(0).randn(2000, 16)
    values = [ev.fid(a, a + s) for s in (0.5, 1.0, 2.0)]
    assert values[0] < values[1] < values[2]
    assert values == pytest.approx([16 * 0.25, 16.0, 64.0], rel=1e-6)


def test_frechet_distance_diagonal_closed_form():
    mu1, mu2 = np.array([0.0, 1.0, -2.0]), np.array([1.0, 1.0, 0.0])
    var1, var2 = np.array([1.0, 4.0, 0.25]), np.array([9.0, 1.0, 0.25])
    got = ev.frechet_distance(mu1, np.diag(var1), mu2, np.diag(var2))
    # |dmu|^2 = 1 + 0 + 4 = 5; sum (sqrt v1 - sqrt v2)^2 = 4 + 1 + 0 = 5
    assert got == pytest.approx(10.0, abs=1e-9)
    assert got == pytest.approx(closed_form_diag(mu1, var1, mu2, var2), abs=1e-9)


def test_frechet_distance_rotation_invariant():
    """Rotating both Gaussians (full, non-diagonal covariances) keeps the diagonal closed form,
    so the matrix square root path is right, not only the diagonal case."""
    var1, var2 = np.array([1.0, 2.0, 3.0, 0.5, 4.0]), np.array([2.0, 0.5, 3.0, 1.0, 1.0])
    mu1, mu2 = np.arange(5.0), np.arange(5.0)[::-1].copy()
    r = random_rotation(5, seed=3)
    s1, s2 = r @ np.diag(var1) @ r.T, r @ np.diag(var2) @ r.T
    want = closed_form_diag(mu1, var1, mu2, var2)
    assert ev.frechet_distance(r @ mu1, s1, r @ mu2, s2) == pytest.approx(want, rel=1e-9)
    assert ev.frechet_distance(r @ mu2, s2, r @ mu1, s1) == pytest.approx(want, rel=1e-9)  # symmetric


def test_frechet_distance_non_commuting_hand_computed():
    """Two non-commuting 2x2 covariances against a value computed by hand:
    S1 = diag(4, 1), S2 = [[2, 1], [1, 2]] -> Tr sqrt(S1^1/2 S2 S1^1/2) = sqrt(tr M + 2 sqrt(det M)),
    with M = [[8, 2], [2, 2]]: tr 10, det 12."""
    s1, s2 = np.diag([4.0, 1.0]), np.array([[2.0, 1.0], [1.0, 2.0]])
    tr_root = np.sqrt(10.0 + 2.0 * np.sqrt(12.0))
    want = 5.0 + 4.0 - 2.0 * tr_root
    assert ev.frechet_distance(np.zeros(2), s1, np.zeros(2), s2) == pytest.approx(want, rel=1e-9)


def test_fid_on_samples_of_known_gaussians():
    """FID of large samples approaches the closed form of the generating Gaussians."""
    rng = np.random.RandomState(0)
    mu1, mu2 = np.array([0.0, 0.0, 1.0, 0.0]), np.array([0.5, 0.0, 0.0, -1.0])
    var1, var2 = np.array([1.0, 4.0, 1.0, 0.25]), np.array([1.0, 1.0, 2.25, 1.0])
    a = mu1 + rng.randn(40000, 4) * np.sqrt(var1)
    b = mu2 + rng.randn(40000, 4) * np.sqrt(var2)
    want = closed_form_diag(mu1, var1, mu2, var2)  # 2.25 + 1 + 0.25 + 0.25 = 3.75
    assert want == pytest.approx(3.75)
    assert ev.fid(a, b) == pytest.approx(want, abs=0.1)


def test_gaussian_stats():
    f = np.array([[1.0, 2.0], [3.0, 2.0], [5.0, 8.0]], dtype=np.float32)
    mu, cov = ev.gaussian_stats(f)
    assert mu.dtype == np.float64 and np.allclose(mu, [3.0, 4.0])
    assert np.allclose(cov, [[4.0, 6.0], [6.0, 12.0]])  # unbiased (n - 1)


# -- conditional accuracy / classify --

def test_conditional_accuracy_hand_made():
    """Two images per class; class 0 both right, class 1 one right, class 9 none right, others right."""
    labels = np.repeat(np.arange(10), 2)
    preds = labels.copy()
    preds[2] = 5   # class 1: 1 of 2
    preds[18] = 0  # class 9: 0 of 2
    preds[19] = 3
    acc, per_class = ev.conditional_accuracy(preds, labels)
    assert acc == 0.85
    assert list(per_class) == list(CLASS_NAMES)
    assert per_class["T-shirt/top"] == 1.0
    assert per_class["Trouser"] == 0.5
    assert per_class["Ankle boot"] == 0.0
    assert sum(per_class.values()) == pytest.approx(8.5)


def test_conditional_accuracy_rounds_to_four_places():
    labels = np.repeat(np.arange(10), 3)
    preds = labels.copy()
    preds[0] = 1
    acc, per_class = ev.conditional_accuracy(preds, labels)
    assert acc == 0.9667 and per_class["T-shirt/top"] == 0.6667


def test_classify_batches_match_one_pass():
    """classify returns penultimate features and argmax predictions, the same in any batch size."""
    clf = Classifier(ClassifierConfig(channels=4, features=16)).eval()
    x = torch.rand(13, 1, 28, 28) * 2 - 1
    feats, preds = ev.classify(clf, x, batch=5)
    assert feats.shape == (13, 16) and preds.shape == (13,)
    with torch.no_grad():
        assert np.allclose(feats, clf.features(x).numpy(), atol=1e-5)
        assert np.array_equal(preds, clf(x).argmax(1).numpy())


# -- generate_eval_set --

@pytest.fixture
def tiny_gen():
    return Generator(GANConfig(latent_dim=8, g_channels=16, d_channels=8, embed_dim=4)).eval()


def test_generate_eval_set_layout_and_seeds(monkeypatch, tiny_gen):
    """3 per class -> 30 images, class-major labels, image i from seed + i's latent with label i // 3."""
    monkeypatch.setattr(ev, "SAMPLES_PER_CLASS", 3)
    images, labels = ev.generate_eval_set(tiny_gen, seed=100, progress=False)
    assert images.shape == (30, 1, 28, 28)
    assert labels.tolist() == [c for c in range(10) for _ in range(3)]
    with torch.no_grad():
        for i in range(30):
            z, _ = seeded_latent(100 + i, 8, 10)
            want = tiny_gen.generate(z[None], torch.tensor([i // 3]))[0]
            assert torch.allclose(images[i], want, atol=1e-5), i


def test_generate_eval_set_deterministic_and_batch_size_free(monkeypatch, tiny_gen):
    """Same seed -> identical images; any batch size gives the same images; seed + 1 shifts the seeds by one."""
    monkeypatch.setattr(ev, "SAMPLES_PER_CLASS", 3)
    a, la = ev.generate_eval_set(tiny_gen, seed=7, progress=False)
    b, lb = ev.generate_eval_set(tiny_gen, seed=7, progress=False)
    assert torch.equal(a, b) and torch.equal(la, lb)
    c, lc = ev.generate_eval_set(tiny_gen, seed=7, batch=7, progress=False)  # 5 batches, the last partial
    assert torch.equal(lc, la)
    assert torch.allclose(c, a, atol=1e-5)
    d, _ = ev.generate_eval_set(tiny_gen, seed=8, progress=False)
    assert not torch.allclose(d, a, atol=1e-3)
    for i in range(29):  # seed 8's image i shares seed 8 + i with seed 7's image i + 1
        if i // 3 == (i + 1) // 3:  # ... and, within a class block, its label
            assert torch.allclose(d[i], a[i + 1], atol=1e-5), i


# -- the VAE prior ablation (evaluate --priors) and --truncation --

def test_vae_prior_ablation_rows_and_truncation(tmp_path, monkeypatch):
    """On synthetic IDX files: a prior=1 VAE gets three rows (fitted prior as served, N(0, I) with
    the prior reset, reconstructions), each with FID, accuracy and the ELBO under that prior; a
    prior=0 VAE gets two. Truncation reaches the sampled latents."""
    from models.card import save_model
    from models.vae import VAE, VAEConfig
    from tests.models.conftest import write_fashion

    monkeypatch.setattr(ev, "SAMPLES_PER_CLASS", 4)
    data, weights = tmp_path / "data", tmp_path / "weights"
    data.mkdir()
    write_fashion(data, n_train=40, n_test=40)
    save_model(Classifier(ClassifierConfig(channels=4, features=16)), name="fashion-classifier", kind="classifier",
               out_dir=weights)
    vae = VAE(VAEConfig(latent_dim=3, channels=4, hidden=16, prior=1))
    vae.prior_loc.copy_(torch.randn(10, 3) * 3)
    vae.prior_tril.copy_(torch.eye(3).repeat(10, 1, 1) * 0.5)
    save_model(vae, name="fashion-vae", kind="vae", out_dir=weights)
    rows = ev.vae_prior_ablation("fashion-vae", weights, str(data), 0, progress=False)
    assert list(rows) == ["samples, fitted Gaussian", "reconstructions", "samples, N(0, I)"]
    fitted, plain = rows["samples, fitted Gaussian"], rows["samples, N(0, I)"]
    assert abs(fitted["test_elbo_nats"] - plain["test_elbo_nats"]) > 1  # a prior far from N(0, I): another KL
    assert rows["reconstructions"]["test_elbo_nats"] == fitted["test_elbo_nats"]
    assert all(0 <= r["accuracy"] <= 1 and r["fid"] >= 0 for r in rows.values())
    # with a flow on the Gaussian: its own row first, then the same weights without it
    from tests.models.test_flow import randomise

    randomise(vae.add_prior_flow(), scale=0.3)
    save_model(vae, name="fashion-vae", kind="vae", out_dir=weights)
    rows = ev.vae_prior_ablation("fashion-vae", weights, str(data), 0, progress=False)
    assert list(rows) == ["samples, fitted Gaussian and flow", "samples, fitted Gaussian", "reconstructions",
                          "samples, N(0, I)"]
    assert rows["samples, fitted Gaussian"] == fitted  # the flow's weights change nothing else
    assert rows["reconstructions"]["test_elbo_nats"] == rows["samples, fitted Gaussian and flow"]["test_elbo_nats"]
    assert abs(rows["samples, fitted Gaussian and flow"]["test_elbo_nats"] - fitted["test_elbo_nats"]) > 0.1
    save_model(VAE(VAEConfig(latent_dim=3, channels=4, hidden=16)), name="fashion-vae", kind="vae", out_dir=weights)
    assert list(ev.vae_prior_ablation("fashion-vae", weights, str(data), 0, progress=False)) == [
        "samples, N(0, I)", "reconstructions"]
    gen = Generator(GANConfig(latent_dim=8, g_channels=16, d_channels=8, embed_dim=4)).eval()
    full, _ = ev.generate_eval_set(gen, 0, progress=False)
    truncated, _ = ev.generate_eval_set(gen, 0, progress=False, truncation=0.5)
    assert not torch.allclose(full, truncated, atol=1e-3)


# -- the importance-weighted bound (evaluate --iwae) --

@torch.no_grad()
def test_iwae_bound_is_exact_when_q_is_the_posterior():
    """With a decoder that ignores z (constant logits b) and q = the prior, every weight is p(x | b),
    so the bound is the log-likelihood itself for any k: -sum BCE(b, x) per image."""
    import torch.nn.functional as F

    from models.vae import VAE, VAEConfig

    vae = VAE(VAEConfig(latent_dim=3, channels=4, hidden=16)).eval()
    for p in vae.decoder.parameters():
        p.zero_()
    vae.decoder.body[-1].bias.fill_(-0.7)
    vae.elbo_posterior = lambda x, y: (torch.zeros(len(x), 3), torch.zeros(len(x), 3))
    x, y = torch.rand(30, 1, 28, 28), torch.arange(30) % 10
    want = -F.binary_cross_entropy_with_logits(torch.full_like(x, -0.7), x, reduction="none").flatten(1).sum(1).mean()
    for k in (1, 7):
        assert ev.iwae_bound(vae, x, y, k, seed=0, batch=8) == pytest.approx(want.item(), abs=2e-3)


@torch.no_grad()
def test_iwae_bound_rises_with_k_above_the_elbo():
    """A VAE whose q is not its posterior (fitted prior, random weights): the bound with k = 64 is
    above the ELBO and above k = 1, which estimates that ELBO with a sampled KL."""
    from models.vae import VAE, VAEConfig

    torch.manual_seed(0)
    vae = VAE(VAEConfig(latent_dim=3, channels=4, hidden=16, prior=1)).eval()
    vae.prior_loc.copy_(torch.randn(10, 3))
    vae.prior_tril.copy_(torch.eye(3).repeat(10, 1, 1) * 0.7)
    x, y = torch.rand(200, 1, 28, 28), torch.arange(200) % 10
    elbo = ev.vae_test_metrics(vae, x, y, seed=0)["test_elbo_nats"]
    one, many = ev.iwae_bound(vae, x, y, 1, seed=0), ev.iwae_bound(vae, x, y, 64, seed=0)
    assert one == pytest.approx(elbo, abs=0.5)
    assert many > elbo + 0.2 and many > one + 0.2
