"""app.engine.service.GenerationService on its own, without HTTP: seeds, labels and latents become
rows of the batchers, and what comes back is what the models make of them."""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pytest
import torch

from app.engine.batching import NullMetrics
from app.engine.exceptions import InvalidInput, UnsupportedOperation
from app.engine.registry import Registry
from app.engine.service import SEED_MOD, GenerationService, Start, label_spec
from app.server.settings import Settings
from models.latents import seeded_latents


@pytest.fixture
async def service(tiny_weights):
    settings = Settings(weights_dir=tiny_weights, max_wait_ms=0, max_queue_wait_s=0, max_images_per_request=8)
    registry = Registry.from_settings(settings)
    registry.warm_up()
    with ThreadPoolExecutor(1) as pool:
        svc = GenerationService(registry, settings, pool, NullMetrics())
        for b in svc.batchers:
            b.start()
        yield svc
        for b in svc.batchers:
            await b.stop()


async def test_sample_draws_each_image_from_its_own_seed(service):
    """Image i is seed + i's latent (wrapping at 2**32) with the label it draws; the pixels are
    the model's rows for those latents, whatever else is batched."""
    model = service.registry.get("tiny-gan")
    images = await service.sample("tiny-gan", 3, SEED_MOD - 1, None, 1.0)
    assert images.seeds == [SEED_MOD - 1, 0, 1]
    z, drawn = seeded_latents(SEED_MOD - 1, 3, model.latent_dim, len(model.classes), 1.0, labels=True)
    assert np.array_equal(images.latents, z.numpy()) and images.labels == drawn.tolist()
    assert images.labels == service.seed_labels(model, SEED_MOD - 1, 3)
    assert np.array_equal(images.pixels, model.generate_rows(z, drawn))
    one = await service.sample("tiny-gan", 1, 0, images.labels[1], 1.0)  # seed 0 alone, same label
    assert np.array_equal(one.pixels[0], images.pixels[1])


async def test_labels_by_name_index_or_list_and_their_errors(service):
    gan = service.registry.get("tiny-gan")
    named = await service.sample("tiny-gan", 2, 5, "sneaker", 1.0)
    assert named.labels == [7, 7]
    listed = await service.sample("tiny-gan", 2, 5, ["Bag", 0], 1.0)
    assert listed.labels == [8, 0]
    assert label_spec(" 7 ") == 7 and label_spec("²") == "²"
    for bad, message in ((["Bag"], "labels has 1 entries for 2 images"), ("hat", "unknown label"),
                         (10, "out of range"), (True, "not a boolean")):
        with pytest.raises(InvalidInput, match=message):
            service.check_sample("tiny-gan", 2, bad)
    with pytest.raises(InvalidInput, match="between 1 and 8"):
        service.check_sample("tiny-gan", 9, None)
    assert gan.classes[7] == "Sneaker"


async def test_decode_checks_latents_and_returns_the_models_rows(service):
    vae = service.registry.get("tiny-vae")
    latents = [[0.5] * vae.latent_dim, [-1.0] * vae.latent_dim]
    images = await service.decode("tiny-vae", latents, [1, 2])
    z = torch.tensor(latents)
    assert np.array_equal(images.pixels, vae.generate_rows(z, torch.tensor([1, 2])))
    assert images.seeds is None and images.labels == [1, 2]
    with pytest.raises(InvalidInput, match="latent 0 has 1 values"):
        await service.decode("tiny-vae", [[0.0]], 0)
    with pytest.raises(InvalidInput, match="finite"):
        await service.decode("tiny-vae", [[float("nan")] * vae.latent_dim], 0)


async def test_encode_only_for_a_vae_and_at_the_models_size(service):
    vae = service.registry.get("tiny-vae")
    images = np.random.default_rng(0).random((2, 28, 28), dtype=np.float32)
    stats, labels = await service.encode("tiny-vae", images, "Coat")
    assert stats.shape == (2, 2, vae.latent_dim) and labels == [4, 4]
    assert np.array_equal(stats, vae.encode_rows(torch.from_numpy(images).view(-1, 1, 28, 28), torch.tensor([4, 4])))
    with pytest.raises(UnsupportedOperation, match="only VAE models"):
        await service.encode("tiny-gan", images, 0)
    with pytest.raises(InvalidInput, match="must be 28x28"):
        await service.encode("tiny-vae", np.zeros((1, 14, 14), np.float32), 0)


async def test_interpolate_between_seeds_and_latents(service):
    gan = service.registry.get("tiny-gan")
    end = [0.0] * gan.latent_dim
    images = await service.interpolate("tiny-gan", Start(seed=3), Start(latent=end), 4, "lerp", 2, 1.0)
    assert images.latents.shape == (4, gan.latent_dim) and images.labels == [2] * 4
    assert np.allclose(images.latents[-1], end) and not np.allclose(images.latents[0], end)
    assert np.allclose(images.latents[1], images.latents[0] * 2 / 3, atol=1e-6)  # a third of the way to 0
    with pytest.raises(InvalidInput, match="steps=1"):
        await service.interpolate("tiny-gan", Start(seed=3), Start(seed=4), 1, "lerp", 0, 1.0)
