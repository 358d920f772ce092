"""Shared settings for the models/ tests: one CPU thread (a training job shares this machine)
and a fixed global seed, so every test is deterministic and light."""

import pytest
import torch


@pytest.fixture(autouse=True)
def _single_thread_and_seed():
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    torch.manual_seed(0)
    yield
    torch.set_num_threads(threads)
