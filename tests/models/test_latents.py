"""models.latents: seeded latents, truncation to a central probability mass, interpolation."""

import math

import pytest
import torch

from models.latents import lerp, seeded_latent, seeded_latents, slerp, truncate

# Phi^-1((1 + t) / 2), the truncation threshold, from tables (not recomputed with erfinv).
THRESHOLDS = {0.5: 0.6744898, 0.9: 1.6448536, 0.99: 2.5758293}


# -- seeded latents --

def test_seeded_latent_reproducible_and_seed_dependent():
    """Same seed -> identical latent and label; different seeds -> different latents."""
    z1, l1 = seeded_latent(42, 16, 10)
    z2, l2 = seeded_latent(42, 16, 10)
    assert z1.shape == (16,) and z1.dtype == torch.float32
    assert torch.equal(z1, z2) and l1 == l2
    assert isinstance(l1, int) and 0 <= l1 < 10
    assert not torch.equal(z1, seeded_latent(43, 16, 10)[0])
    labels = {seeded_latent(s, 4, 10)[1] for s in range(200)}
    assert labels == set(range(10))  # labels come from the seed too and cover every class


def test_seeded_latent_is_a_fresh_seeded_generator():
    """The latent is the first randn draw of a CPU generator seeded with the seed (the documented rule)."""
    g = torch.Generator().manual_seed(7)
    z, label = seeded_latent(7, 8, 10)
    assert torch.equal(z, torch.randn(8, generator=g))
    assert label == int(torch.randint(10, (1,), generator=g))


def test_seeded_latents_rows_match_single_seeds():
    """Row i of seeded_latents(seed, n) is seeded_latent(seed + i): latent and label."""
    zs, ys = seeded_latents(1000, 6, 12, 10)
    assert zs.shape == (6, 12) and ys.shape == (6,) and ys.dtype == torch.long
    for i in range(6):
        z, label = seeded_latent(1000 + i, 12, 10)
        assert torch.equal(zs[i], z)
        assert int(ys[i]) == label


@pytest.mark.parametrize("n", [1, 5])
def test_seeded_latents_without_labels_draw_the_same_latents(n):
    """Skipping the label draw (the request names its labels) leaves every latent as it was."""
    with_labels, ys = seeded_latents(77, n, 12, 10, truncation=0.7)
    without, none = seeded_latents(77, n, 12, 10, truncation=0.7, labels=False)
    assert none is None and ys.shape == (n,)
    assert without.shape == (n, 12) and torch.equal(without, with_labels)
    assert torch.equal(without[0], seeded_latent(77, 12, 10, truncation=0.7)[0])


def test_seeded_latents_with_truncation():
    """Truncation is applied to the same draw: the label is unchanged, the latent is truncate(z, t)."""
    zs, ys = seeded_latents(5, 3, 8, 10, truncation=0.5)
    for i in range(3):
        z, label = seeded_latent(5 + i, 8, 10)
        assert torch.allclose(zs[i], truncate(z, 0.5), atol=1e-7)
        assert int(ys[i]) == label
    assert float(zs.abs().max()) <= THRESHOLDS[0.5] + 1e-5


# -- truncation --

def test_truncate_one_is_identity():
    z = torch.randn(100) * 4
    assert torch.equal(truncate(z, 1.0), z)


@pytest.mark.parametrize("t", sorted(THRESHOLDS))
def test_truncate_bounds_entries(t):
    """Every entry, even a very large draw, lies within +-Phi^-1((1 + t) / 2)."""
    z = torch.cat([torch.randn(5000) * 3, torch.tensor([-40.0, -8.0, 8.0, 40.0])])
    out = truncate(z, t)
    assert out.shape == z.shape and out.dtype == z.dtype
    assert float(out.abs().max()) <= THRESHOLDS[t] + 1e-5
    assert float(out.abs().max()) >= THRESHOLDS[t] - 1e-3  # extreme draws map near the edge


@pytest.mark.parametrize("t", [0.3, 0.7, 0.99])
def test_truncate_is_monotone_and_sign_preserving(t):
    """Order and sign of the entries are kept (and 0 stays 0), so a seed stays recognisable."""
    z = torch.sort(torch.randn(2000) * 2).values
    out = truncate(z, t)
    assert torch.all(out[1:] >= out[:-1])
    assert torch.equal(torch.sign(out), torch.sign(z))
    assert float(truncate(torch.zeros(1), t)) == 0.0
    assert torch.all(out.abs() <= z.abs() + 1e-6)  # never pushes entries outwards


def test_truncate_gives_truncated_normal():
    """Mapped N(0,1) draws follow the truncated normal: for t = 0.5, half the mass of the
    truncated distribution lies within Phi^-1(0.625) = 0.3186."""
    g = torch.Generator().manual_seed(0)
    out = truncate(torch.randn(40000, generator=g), 0.5)
    inner = float((out.abs() <= 0.3186394).float().mean())
    assert abs(inner - 0.5) < 0.01


@pytest.mark.parametrize("t", [0.0, -0.5, 1.0001, 2.0, float("nan")])
def test_truncate_rejects_out_of_range(t):
    with pytest.raises(ValueError, match="truncation must be in"):
        truncate(torch.randn(4), t)


# -- interpolation --

@pytest.mark.parametrize("interp", [lerp, slerp])
def test_interpolation_endpoints(interp):
    """t = 0 gives a, t = 1 gives b; the output is (S, D)."""
    a, b = torch.randn(16), torch.randn(16)
    out = interp(a, b, torch.tensor([0.0, 0.25, 1.0]))
    assert out.shape == (3, 16) and out.dtype == a.dtype
    assert torch.allclose(out[0], a, atol=1e-6)
    assert torch.allclose(out[2], b, atol=1e-6)


def test_lerp_midpoint():
    a, b = torch.zeros(4), torch.tensor([2.0, 4.0, -2.0, 0.0])
    assert torch.allclose(lerp(a, b, torch.tensor([0.5]))[0], torch.tensor([1.0, 2.0, -1.0, 0.0]))


def test_slerp_keeps_norm_between_orthogonal_equal_norm_vectors():
    """Between two orthogonal vectors of norm 3 slerp stays on the sphere of radius 3 (lerp dips to 3/sqrt2)."""
    a = torch.zeros(8)
    b = torch.zeros(8)
    a[0], b[3] = 3.0, 3.0
    t = torch.linspace(0, 1, 11)
    norms = slerp(a, b, t).norm(dim=1)
    assert torch.allclose(norms, torch.full((11,), 3.0), atol=1e-5)
    assert abs(float(lerp(a, b, t).norm(dim=1)[5]) - 3.0 / math.sqrt(2.0)) < 1e-5
    mid = slerp(a, b, torch.tensor([0.5]))[0]  # the midpoint is at 45 degrees
    assert torch.allclose(mid[[0, 3]], torch.full((2,), 3.0 / math.sqrt(2.0)), atol=1e-6)


def test_slerp_parallel_falls_back_to_lerp():
    a = torch.randn(6)
    t = torch.tensor([0.0, 0.5, 1.0])
    assert torch.allclose(slerp(a, 2 * a, t), lerp(a, 2 * a, t), atol=1e-6)


@pytest.mark.parametrize("scale", [1.0, 1.0000001, 3.0])
def test_slerp_refuses_opposite_endpoints(scale):
    """1/sin(pi) gave latents of norm ~1e9; there is no unique great circle from a to -a."""
    a = torch.randn(16, generator=torch.Generator().manual_seed(0), dtype=torch.float32)
    with pytest.raises(ValueError, match="opposite directions"):
        slerp(a, -scale * a, torch.linspace(0, 1, 5))


def test_slerp_nearly_opposite_endpoints_stay_on_the_sphere():
    a = torch.zeros(8, dtype=torch.float64)
    a[0] = 1.0
    b = -a.clone()
    b[1] = 1e-3  # 0.999 999 5 of pi apart: one great circle, through the second axis
    b = b / b.norm()
    out = slerp(a, b, torch.linspace(0, 1, 9, dtype=torch.float64))
    torch.testing.assert_close(out.norm(dim=1), torch.ones(9, dtype=torch.float64))
    assert abs(float(out[4, 1])) > 0.99  # the midpoint is on the second axis, not blown up
