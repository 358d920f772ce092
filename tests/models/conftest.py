"""Shared settings for the models/ tests: one CPU thread (a training job shares this machine)
and a fixed global seed, so every test is deterministic and light; and the learnable synthetic
data the training and evaluation tests use in place of Fashion-MNIST."""

import numpy as np
import pytest
import torch

from models.data import FILES, write_idx


@pytest.fixture(autouse=True)
def _single_thread_and_seed():
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    torch.manual_seed(0)
    yield
    torch.set_num_threads(threads)


def patterns(n=256, seed=0):
    """(n, 1, 28, 28) in [0, 1]: class c is a bright horizontal band at rows 2c+4..2c+5 on faint noise."""
    g = torch.Generator().manual_seed(seed)
    y = torch.arange(n) % 10
    x = torch.rand(n, 1, 28, 28, generator=g) * 0.1
    for c in range(10):
        x[y == c, 0, 2 * c + 4:2 * c + 6, :] = 0.9
    return x, y


def write_fashion(root, n_train=64, n_test=20):
    """Synthetic Fashion-MNIST-named IDX files made of the band patterns."""
    for split, n, seed in (("train", n_train, 0), ("test", n_test, 1)):
        x, y = patterns(n, seed)
        write_idx(root / FILES[split][0], (x[:, 0] * 255).round().numpy().astype(np.uint8))
        write_idx(root / FILES[split][1], y.numpy().astype(np.uint8))
