"""The registry's forward path: the TorchScript pass is kept only when it equals eager mode bit
for bit, and anything that goes wrong while making it leaves the eager pass serving."""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
import pytest
import torch

from app.registry import Registry
from app.settings import Settings


def registry(weights: Path, **overrides: object) -> Registry:
    reg = Registry.from_settings(Settings(weights_dir=weights, max_batch_rows=16, **overrides))
    reg.warm_up()
    return reg


def rows(model, n: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return torch.randn(n, model.latent_dim, generator=g), torch.randint(len(model.classes), (n,), generator=g)


def test_torchscript_pass_gives_eager_bytes_at_every_batch_size(tiny_weights):
    scripted, eager = registry(tiny_weights), registry(tiny_weights, torchscript=False)
    for name in ("tiny-gan", "tiny-vae"):
        a, b = scripted.get(name), eager.get(name)
        assert a.graph is not None and b.graph is None
        assert a.buckets == b.buckets
        for n in (1, 3, *a.buckets):  # odd sizes are padded to a bucket shape
            z, y = rows(a, n, seed=n)
            got, expected = a.generate_rows(z, y), b.generate_rows(z, y)
            assert got.dtype == np.uint8 and got.shape == (n, 28, 28)
            assert np.array_equal(got, expected), (name, n)


def test_a_model_that_cannot_be_traced_is_served_eagerly(tiny_weights, monkeypatch, caplog):
    def refuse(*args, **kwargs):
        raise RuntimeError("not traceable")

    monkeypatch.setattr(torch.jit, "trace", refuse)
    with caplog.at_level(logging.WARNING, logger="latentserve.registry"):
        reg = registry(tiny_weights)
    model = reg.get("tiny-gan")
    assert model.graph is None
    assert any("no TorchScript pass" in r.getMessage() and "not traceable" in r.getMessage() for r in caplog.records)
    z, y = rows(model, 5, seed=0)
    assert model.generate_rows(z, y).shape == (5, 28, 28)


def test_a_graph_whose_pixels_differ_is_not_kept(tiny_weights, monkeypatch, caplog):
    real_freeze = torch.jit.freeze

    def off_by_one(module, *args, **kwargs):
        graph = real_freeze(module, *args, **kwargs)
        return lambda z, y: graph(z, y) ^ 1  # one bit off in every pixel

    monkeypatch.setattr(torch.jit, "freeze", off_by_one)
    with caplog.at_level(logging.WARNING, logger="latentserve.registry"):
        reg = registry(tiny_weights)
    assert all(m.graph is None for m in reg.models.values())
    assert sum("differs from eager mode" in r.getMessage() for r in caplog.records) == 2
    scripted_off = registry(tiny_weights, torchscript=False).get("tiny-gan")
    z, y = rows(scripted_off, 7, seed=3)
    assert np.array_equal(reg.get("tiny-gan").generate_rows(z, y), scripted_off.generate_rows(z, y))


@pytest.mark.parametrize("value, expected", [("0", False), ("false", False), ("1", True)])
def test_torchscript_setting_from_the_environment(monkeypatch, value, expected):
    monkeypatch.setenv("LATENTSERVE_TORCHSCRIPT", value)
    assert Settings().torchscript is expected
