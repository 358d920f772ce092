"""The registry's forward path: the TorchScript pass is kept only when it equals eager mode bit
for bit, and anything that goes wrong while making it leaves the eager pass serving; dense
layers run with padding rows, so a lone row takes the same kernels as a batch."""

from __future__ import annotations

import logging
import threading
import time
from pathlib import Path

import numpy as np
import pytest
import torch

import app.engine.passes as passes_module
from app.engine.passes import MIN_DENSE_ROWS, _RowStableLinear, pass_parts
from app.engine.registry import Registry
from app.server.settings import Settings
from models.card import load_model
from models.images import to_uint8


def registry(weights: Path, **overrides: object) -> Registry:
    reg = Registry.from_settings(Settings(weights_dir=weights, max_batch_rows=16, **overrides))
    reg.warm_up()
    return reg


def prior_vae(folder: Path, prior: int, seed: int):
    """Save a small VAE with a random fitted Gaussian prior (and, prior=2, a random flow on it) to
    ``folder`` as prior-vae; returns the module."""
    from models.card import save_model
    from models.vae import VAE, VAEConfig
    from tests.models.test_flow import randomise

    torch.manual_seed(seed)
    vae = VAE(VAEConfig(latent_dim=4, channels=8, hidden=32, prior=1))
    vae.prior_loc.copy_(torch.randn(10, 4))
    vae.prior_tril.copy_(torch.randn(10, 4, 4).tril() * 0.3 + torch.eye(4))
    if prior == 2:
        randomise(vae.add_prior_flow(), scale=0.3)
    save_model(vae, name="prior-vae", kind="vae", out_dir=folder)
    return vae


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


def test_row_stable_linear_runs_four_more_rows_and_returns_the_given_ones():
    torch.manual_seed(0)
    linear = torch.nn.Linear(6, 5)
    wrapped = _RowStableLinear(linear)
    seen: list[int] = []
    linear.register_forward_hook(lambda module, args, out: seen.append(args[0].shape[0]))
    for n in (1, 2, 3, 5):
        x = torch.randn(n, 6)
        out = wrapped(x)
        assert out.shape == (n, 5) and seen[-1] == n + MIN_DENSE_ROWS
        padded = torch.cat([x, torch.zeros(MIN_DENSE_ROWS, 6)])
        assert torch.equal(out, linear(padded)[:n])  # the padding rows are zeros and are dropped
        torch.testing.assert_close(out, linear(x))
    x3 = torch.randn(2, 3, 6)  # leading dimensions are rows too
    assert torch.equal(wrapped(x3), linear(torch.cat([x3, torch.zeros(MIN_DENSE_ROWS, 3, 6)]))[:2])


def test_served_models_have_every_dense_layer_row_stable_with_their_weights(tiny_weights):
    reg = registry(tiny_weights, torchscript=False, device="cpu")  # compared with modules loaded on the CPU
    for name in ("tiny-gan", "tiny-vae"):
        fresh, _ = load_model(tiny_weights / f"{name}.json", device=torch.device("cpu"))
        served = reg.get(name).module
        wrapped = [m for m in served.modules() if isinstance(m, _RowStableLinear)]
        linears = [m for m in fresh.modules() if isinstance(m, torch.nn.Linear)]
        assert len(wrapped) == len(linears) > 0
        assert all(isinstance(m.linear, torch.nn.Linear) for m in wrapped)
        for w, plain in zip(wrapped, linears):
            assert torch.equal(w.linear.weight, plain.weight) and torch.equal(w.linear.bias, plain.bias)
        # a lone row reaches every dense layer with four zero rows under it
        seen: list[int] = []
        hooks = [w.linear.register_forward_hook(lambda m, a, o, seen=seen: seen.append(a[0].shape[0])) for w in wrapped]
        model = reg.get(name)
        model.buckets = [1, *model.buckets]  # run one row unpadded, whatever this CPU calibrated
        z, y = rows(model, 1, seed=1)
        model.generate_rows(z, y)
        for h in hooks:
            h.remove()
        assert seen and all(s == 1 + MIN_DENSE_ROWS for s in seen)


def test_row_stable_dense_layers_keep_the_pixels_of_four_rows_and_more(tiny_weights):
    """Served images of passes of 4+ rows are what the plain modules make, bit for bit (in the
    modules' own NCHW layout)."""
    reg = registry(tiny_weights, torchscript=False, channels_last=False, device="cpu")
    for name in ("tiny-gan", "tiny-vae"):
        fresh, _ = load_model(tiny_weights / f"{name}.json", device=torch.device("cpu"))
        model = reg.get(name)
        for n in (4, 8, 16):
            z, y = rows(model, n, seed=n)
            with torch.inference_mode():
                expected = to_uint8(fresh.eval().generate(z, y)).numpy()
            assert np.array_equal(model.generate_rows(z, y), expected), (name, n)


def conv_weights(module: torch.nn.Module) -> list[torch.Tensor]:
    return [m.weight for m in module.modules() if isinstance(m, torch.nn.Conv2d)]


def test_channels_last_layout_on_a_cpu_by_default_and_nchw_when_off(tiny_weights):
    nhwc, nchw = registry(tiny_weights, device="cpu"), registry(tiny_weights, channels_last=False, device="cpu")
    for name in ("tiny-gan", "tiny-vae"):
        a, b = nhwc.get(name), nchw.get(name)
        assert (a.layout, b.layout) == ("nhwc", "nchw")
        wide = [w for w in conv_weights(a.module) if w.shape[1] > 1]  # a 1-channel input has one layout only
        assert wide and all(w.is_contiguous(memory_format=torch.channels_last) and not w.is_contiguous() for w in wide)
        assert all(w.is_contiguous() for w in conv_weights(b.module))
        for wa, wb in zip(conv_weights(a.module), conv_weights(b.module)):
            assert torch.equal(wa, wb)  # the same numbers, laid out differently


def test_channels_last_pixels_stay_within_one_grey_level_and_batch_invariant(tiny_weights):
    nhwc, nchw = registry(tiny_weights, device="cpu"), registry(tiny_weights, channels_last=False, device="cpu")
    for name in ("tiny-gan", "tiny-vae"):
        a, b = nhwc.get(name), nchw.get(name)
        z, y = rows(a, 16, seed=11)
        got, plain = a.generate_rows(z, y), b.generate_rows(z, y)
        assert np.abs(got.astype(int) - plain.astype(int)).max() <= 1
        for size in a.buckets:  # calibrated in its own layout: every kept shape gives the 16-row bytes
            if size <= 16:
                assert np.array_equal(a.generate_rows(z[:size], y[:size]), got[:size]), (name, size)


def test_pixel_variant_names_what_changes_the_bytes(tiny_weights):
    """Layout, device kind and dtype each change a few pixels (on an H200: 1 grey level on 1.2% of
    the GAN's pixels against the CPU's), so ETags name them; float32 NCHW on a CPU names nothing."""
    import dataclasses

    m = registry(tiny_weights, device="cpu", channels_last=False).get("tiny-gan")
    assert m.pixel_variant == ()
    assert dataclasses.replace(m, layout="nhwc").pixel_variant == ("nhwc",)
    gpu = dataclasses.replace(m, device=torch.device("cuda"))  # a device object only: nothing moves
    assert gpu.pixel_variant == ("cuda",)
    assert dataclasses.replace(gpu, dtype=torch.float16).pixel_variant == ("cuda", "float16")
    assert dataclasses.replace(m, dtype=torch.bfloat16).pixel_variant == ("bfloat16",)


@pytest.mark.parametrize("dtype", ["float16", "bfloat16"])
def test_both_model_kinds_serve_in_a_half_dtype(tiny_weights, dtype):
    """LATENTSERVE_DTYPE=float16/bfloat16: the VAE's one-hot labels once stayed float32 and its
    first dense layer refused them, so warm-up failed and the service never became ready."""
    reg = registry(tiny_weights, device="cpu", dtype=dtype)
    ref = registry(tiny_weights, device="cpu")
    for name in ("tiny-gan", "tiny-vae"):
        m, m32 = reg.get(name), ref.get(name)
        z, y = rows(m, 8, seed=3)
        pixels = m.generate_rows(z, y)
        assert pixels.dtype == np.uint8 and pixels.shape == (8, *m.image_shape[1:])
        assert np.abs(pixels.astype(int) - m32.generate_rows(z, y).astype(int)).max() <= 16  # close, not equal
    vae = reg.get("tiny-vae")
    stats = vae.encode_rows(torch.rand(8, *vae.image_shape), torch.arange(8) % len(vae.classes))
    assert stats.dtype == np.float32 and stats.shape == (8, 2, vae.latent_dim) and np.isfinite(stats).all()


@pytest.mark.parametrize("dtype", ["float16", "bfloat16"])
@pytest.mark.parametrize("prior", [1, 2], ids=["gaussian", "gaussian+flow"])
def test_a_vae_with_a_fitted_prior_serves_in_a_half_dtype(tmp_path, dtype, prior):
    """The prior's inverses (encode's map to u, SeFa's weight through the flow at load) run in
    float32: linalg has no half-precision kernels, and the service failed to load such a VAE."""
    prior_vae(tmp_path, prior, seed=4)
    half, full = registry(tmp_path, device="cpu", dtype=dtype).get("prior-vae"), registry(tmp_path, device="cpu").get("prior-vae")
    assert half.directions is not None and len(half.directions.vectors) == 4
    z, y = rows(half, 8, seed=5)
    assert np.abs(half.generate_rows(z, y).astype(int) - full.generate_rows(z, y).astype(int)).max() <= 16
    x = torch.rand(8, *half.image_shape)
    stats, want = half.encode_rows(x, y), full.encode_rows(x, y)
    assert stats.dtype == np.float32 and np.isfinite(stats).all()
    assert np.abs(stats[:, 0] - want[:, 0]).max() < 0.1 * np.abs(want[:, 0]).max()


def test_a_warm_up_asked_to_stop_ends_at_its_next_pass(tiny_weights, monkeypatch):
    """SIGTERM during the warm-up waited for all of it: the shutdown joins the forward thread,
    which ran every shape of every model (17 s in the review's repro, against a 4 s budget)."""
    from app.engine.served import ServedModel, WarmUpStopped

    # passes not split: the split check's passes (test below) would count here too
    reg = Registry.from_settings(Settings(weights_dir=tiny_weights, max_batch_rows=16, split_passes=False))
    passes: list[int] = []
    original = ServedModel.generate_rows

    def counted(self, z, y):
        passes.append(len(z))
        if len(passes) == 2:
            reg.stopping.set()  # what the lifespan's shutdown does
        return original(self, z, y)

    monkeypatch.setattr(ServedModel, "generate_rows", counted)
    with pytest.raises(WarmUpStopped):
        reg.warm_up()
    assert len(passes) == 2 and not reg.warmed  # stopped at the pass after the flag
    reg.stopping.clear()
    reg.warm_up()  # and a warm-up not asked to stop runs every shape of every model
    shapes = sum(len(m.buckets) for m in reg.models.values())
    assert reg.warmed and len(passes) == 2 + shapes


def test_stop_is_checked_in_calibration_and_tracing_too(tiny_weights):
    from app.engine.served import WarmUpStopped

    reg = Registry.from_settings(Settings(weights_dir=tiny_weights, max_batch_rows=16, torch_threads=2))
    model = reg.get("tiny-gan")
    assert model.parts == 2
    stop = threading.Event()
    stop.set()
    for step in (model.calibrate, model.script, model.check_split, model.warm_up):
        with pytest.raises(WarmUpStopped):
            step(stop)
    assert model.graph is None  # no TorchScript pass kept from a stopped trace


@pytest.mark.parametrize("device, threads, split, expected", [
    ("cpu", 1, True, 1), ("cpu", 2, True, 2), ("cpu", 3, True, 2), ("cpu", 4, True, 4), ("cpu", 6, True, 4),
    ("cpu", 2, False, 1), ("cuda", 8, True, 1), ("mps", 8, True, 1)])
def test_pass_parts_are_a_power_of_two_of_the_cpu_threads(device, threads, split, expected):
    assert pass_parts(torch.device(device), threads, split) == expected


def test_split_passes_setting_from_the_environment(monkeypatch):
    assert Settings().split_passes is True
    monkeypatch.setenv("LATENTSERVE_SPLIT_PASSES", "false")
    assert Settings().split_passes is False


def test_a_split_keeps_every_part_a_batch_shape_and_a_lone_row_whole(tiny_weights):
    reg = registry(tiny_weights, torch_threads=2)
    gan, vae = reg.get("tiny-gan"), reg.get("tiny-vae")
    assert (gan.parts, gan.threads) == (2, 2)
    for model in (gan, vae):
        smallest = model.buckets[0]  # as calibrated on this CPU
        assert model.buckets == [smallest * 2 ** i for i in range(len(model.buckets))]
        assert [model.parts_for(b) for b in model.buckets] == [1] + [2] * (len(model.buckets) - 1)
        model.parts = 4
        assert [model.parts_for(b) for b in model.buckets] == [1, 2] + [4] * (len(model.buckets) - 2)
        for b in model.buckets:  # every part is a batch shape
            assert b // model.parts_for(b) in model.buckets


def test_split_passes_run_in_the_part_threads_and_give_the_whole_pass_bytes(tiny_weights, monkeypatch):
    split, whole = registry(tiny_weights, torch_threads=2), registry(tiny_weights, torch_threads=2, split_passes=False)
    assert split.part_pool is not None and whole.part_pool is None
    assert all(m.parts == 1 for m in whole.models.values())
    seen: list[tuple[str, int, int]] = []
    for reg in (split, whole):
        for model in reg.models.values():
            real = model._pass

            def spy(z, y, real=real):
                seen.append((threading.current_thread().name, z.shape[0], torch.get_num_threads()))
                return real(z, y)

            monkeypatch.setattr(model, "_pass", spy)
    for name in ("tiny-gan", "tiny-vae"):
        a, b = split.get(name), whole.get(name)
        for n in (1, 2, 3, 5, 16):
            seen.clear()
            z, y = rows(a, n, seed=10 + n)
            assert np.array_equal(a.generate_rows(z, y), b.generate_rows(z, y)), (name, n)
            size = a._bucket(n)
            parts = a.parts_for(size)
            # the split model's passes, then the whole model's one pass of every thread
            assert [s[1] for s in seen] == [size // parts] * parts + [size], (name, n, seen)
            if parts > 1:  # one part in the calling thread, the others in the part threads
                names = sorted(s[0] for s in seen[:parts])
                assert names.count(threading.current_thread().name) == 1, seen
                assert sum(name.startswith("pass-part") for name in names) == parts - 1, seen
                assert all(s[2] == 1 for s in seen[:parts]), seen
            else:
                assert seen[0][2] == 2  # a pass too small to split runs with every thread
        x = torch.rand(6, 1, 28, 28, generator=torch.Generator().manual_seed(1))
        y = torch.arange(6) % len(a.classes)
        if a.kind == "vae":
            seen.clear()
            assert np.array_equal(a.encode_rows(x, y), b.encode_rows(x, y))


def test_a_split_pass_leaves_every_thread_count_as_it_found_it(tiny_weights):
    """A part sets its thread's count to 1, and torch's set_num_threads also sets the count new
    threads start with: the calling thread (the next model's warm-up checks ran at 1 thread) and
    a registry loaded after it (no split, half the speed) were left at 1."""
    torch.set_num_threads(2)
    first = registry(tiny_weights)  # torch_threads 0: torch's current count
    assert first.get("tiny-gan").threads == 2
    z, y = rows(first.get("tiny-gan"), 16, seed=1)
    first.get("tiny-gan").generate_rows(z, y)  # split in 2
    assert torch.get_num_threads() == 2
    seen: list[int] = []
    new_thread = threading.Thread(target=lambda: seen.append(torch.get_num_threads()))
    new_thread.start()
    new_thread.join()
    assert seen == [2]
    second = registry(tiny_weights)
    assert all((m.parts, m.threads) == (2, 2) for m in second.models.values())


def test_a_split_that_changes_the_bytes_is_turned_off(tiny_weights, monkeypatch, caplog):
    real = passes_module._one_thread

    def off_in_parts(fn, *inputs):
        out = real(fn, *inputs)
        return out ^ 1 if out.dtype == torch.uint8 else out  # one bit off in every pixel of a part

    monkeypatch.setattr(passes_module, "_one_thread", off_in_parts)
    with caplog.at_level(logging.WARNING, logger="latentserve.registry"):
        reg = registry(tiny_weights, torch_threads=2)
    assert all(m.parts == 1 for m in reg.models.values())
    assert sum("passes are not split" in r.getMessage() for r in caplog.records) == 2
    model = reg.get("tiny-gan")
    z, y = rows(model, 16, seed=4)
    expected = registry(tiny_weights, torch_threads=2, split_passes=False).get("tiny-gan").generate_rows(z, y)
    assert np.array_equal(model.generate_rows(z, y), expected)


def test_a_failing_part_fails_the_pass_after_every_part_ended(tiny_weights, monkeypatch):
    reg = registry(tiny_weights, torch_threads=2)
    model = reg.get("tiny-gan")
    ended: list[int] = []

    def first_part_fails(z, y):
        if not ended:
            ended.append(0)
            raise RuntimeError("part failed")
        time.sleep(0.2)  # the other part ends after the failure
        ended.append(1)
        return torch.zeros(z.shape[0], 28, 28, dtype=torch.uint8)

    monkeypatch.setattr(model, "_pass", first_part_fails)
    z, y = rows(model, 16, seed=0)
    with pytest.raises(RuntimeError, match="part failed"):
        model.generate_rows(z, y)
    assert ended == [0, 1]  # the pass failed only once its other part had ended
    assert not model.lock.locked()


def test_close_stops_the_part_threads(tiny_weights):
    reg = registry(tiny_weights, torch_threads=2)
    reg.close()
    with pytest.raises(RuntimeError):
        reg.part_pool.submit(print)


@pytest.mark.parametrize("prior", [1, 2], ids=["gaussian", "gaussian+flow"])
def test_a_vae_with_a_fitted_prior_serves_and_encodes_in_its_served_latent(tmp_path, prior):
    """prior=1 (and 2, with a flow on it): served rows are the module's generate (which goes
    through the prior's map), bit for bit; /encode's mu is in the served latent, so decoding it
    gives the reconstruction; and the default pass (TorchScript, channels-last) keeps the prior's
    map row-stable: every batch shape calibrates and a row's pixels do not depend on its batch."""
    vae = prior_vae(tmp_path, prior, seed=3)
    fresh, _ = load_model(tmp_path / "prior-vae.json", device=torch.device("cpu"))
    assert torch.equal(fresh.prior_loc, vae.prior_loc)  # the prior travels in the safetensors file
    plain = registry(tmp_path, torchscript=False, channels_last=False, device="cpu").get("prior-vae")
    z, y = rows(plain, 8, seed=8)
    with torch.inference_mode():
        assert np.array_equal(plain.generate_rows(z, y), to_uint8(fresh.eval().generate(z, y)).numpy())
        x = (fresh.generate(z, y) + 1) / 2
        stats = plain.encode_rows(x, y)
        mu_u, _ = fresh.encode(x, y)
        mu_z, _ = fresh.posterior(x, y)
        assert np.allclose(stats[:, 0], mu_u.numpy(), atol=1e-5)
        assert torch.allclose(fresh.generate(torch.from_numpy(stats[:, 0]), y), fresh.decode(mu_z, y) * 2 - 1, atol=1e-4)
    served = registry(tmp_path, device="cpu").get("prior-vae")
    z, y = rows(served, 16, seed=1)
    whole = served.generate_rows(z, y)
    assert np.array_equal(served.generate_rows(z[3:7], y[3:7]), whole[3:7])
