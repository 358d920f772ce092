"""models.train: losses fall on learnable synthetic data, GAN steps run, checkpoints resume
exactly, max_steps is honoured, and the CLI works end to end on synthetic IDX files."""

import json

import numpy as np
import pytest
import torch
from PIL import Image

from models.card import load_model
from models.gan import GANConfig, Generator
from models.train import main, run
from models.trainer import TrainConfig
from tests.models.conftest import patterns, write_fashion

SMALL = {
    "classifier": dict(channels=4, features=16),
    "vae": dict(channels=4, hidden=32, latent_dim=4),
    "gan": dict(g_channels=16, d_channels=4, latent_dim=8, embed_dim=4),
}
BATCH = 32
N = 256  # 8 steps per epoch


def config(kind, run_dir, epochs=3, lr=3e-3, **kw):
    return TrainConfig(kind=kind, epochs=epochs, batch_size=BATCH, lr=lr, seed=0, run_dir=str(run_dir),
                       out=str(run_dir / "out"), sample_every=0, checkpoint_every=0, model=SMALL[kind], **kw)


def states(trainer):
    return {f"{m}.{k}": v.clone() for m, mod in trainer.modules().items() for k, v in mod.state_dict().items()}


# -- learning --

@pytest.mark.parametrize("kind, loss_of", [
    ("classifier", lambda h: h["loss"]),
    ("vae", lambda h: h["rec"] + h["kl"]),  # the negative ELBO
])
def test_loss_decreases(tmp_path, kind, loss_of):
    """Three epochs on class-dependent bands: the epoch-mean loss falls every epoch, by a clear margin."""
    x, y = patterns()
    trainer, log = run(config(kind, tmp_path), x, y, progress=False)
    history = log["history"]
    assert [h["epoch"] for h in history] == [1, 2, 3]
    assert log["steps"] == 3 * N // BATCH
    losses = [loss_of(h) for h in history]
    assert losses[0] > losses[1] > losses[2]
    assert losses[-1] < 0.8 * losses[0]
    assert not trainer.final_module().training  # left in eval mode


def test_classifier_learns_the_bands(tmp_path):
    """After training, the classifier labels held-out band images mostly correctly."""
    x, y = patterns()
    trainer, _ = run(config("classifier", tmp_path, epochs=3), x, y, progress=False)
    tx, ty = patterns(100, seed=1)
    with torch.no_grad():
        acc = (trainer.clf(tx * 2 - 1).argmax(1) == ty).float().mean().item()
    assert acc >= 0.8


def test_gan_steps_run_and_update_ema(tmp_path):
    """A few GAN steps give finite D and G losses, move G and its EMA, and write a sample grid."""
    x, y = patterns(64)
    cfg = config("gan", tmp_path, epochs=2, ema_decay=0.9)
    torch.manual_seed(0)
    initial = Generator(GANConfig(**SMALL["gan"])).state_dict()  # same seed -> Trainer's initial G
    trainer, log = run(cfg, x, y, progress=False)
    assert log["steps"] == 4
    for h in log["history"]:
        assert np.isfinite(h["d"]) and np.isfinite(h["g"])
    ema = trainer.ema.state_dict()
    assert any(not torch.equal(ema[k], initial[k]) for k in initial)
    g = trainer.g.state_dict()
    assert any(not torch.equal(ema[k], g[k]) for k in g)  # an average, not a copy of G
    assert not any(p.requires_grad for p in trainer.ema.parameters())
    assert trainer.final_module() is trainer.ema
    with Image.open(tmp_path / "samples_final.png") as img:  # 10 x 10 grid of 28 px tiles, pad 2, scale 2
        assert img.size == (2 * (10 * 30 + 2), 2 * (10 * 30 + 2)) and img.mode == "L"


def test_aux_classifier_head_learns_the_classes_of_real_images(tmp_path):
    """--aux-classifier: D's class head, trained on real images only, comes to name their classes
    (above 0.9 on 10 classes after 12 epochs), G's images come to be named as asked (its term
    falls), and without it D
    has no head at all (checkpoints of earlier runs still load). Class c is a band c + 1 rows
    thick: D pools its features over the image, so the band's thickness, not its row, tells."""
    y = torch.arange(256) % 10
    x = torch.rand(256, 1, 28, 28, generator=torch.Generator().manual_seed(0)) * 0.1
    for c in range(10):
        x[y == c, 0, 4:5 + c, :] = 0.9
    trainer, log = run(config("gan", tmp_path / "aux", epochs=12, aux_classifier=1.0), x, y, progress=False)
    first, last = log["history"][0], log["history"][-1]
    assert last["aux_d"] < 0.25 * first["aux_d"]
    assert 0 < last["aux_g"] < 0.75 * first["aux_g"]
    with torch.no_grad():
        _, classes = trainer.d.eval()(x * 2 - 1, y, with_classes=True)
    assert (classes.argmax(1) == y).float().mean() > 0.9
    plain, plain_log = run(config("gan", tmp_path / "plain", epochs=1), x, y, progress=False)
    assert plain.d.classes is None and "aux_d" not in plain_log["history"][0]


def test_kl_weight_below_one_keeps_more_in_the_latent(tmp_path):
    """--kl-weight: the same VAE run at beta 0.1 ends with twice the KL of beta 1 (the logs keep the
    unweighted terms), and beta 1 is the ELBO step itself, step for step."""
    x, y = patterns(256)
    _, elbo_log = run(config("vae", tmp_path / "elbo", epochs=3), x, y, progress=False)
    _, one_log = run(config("vae", tmp_path / "one", epochs=3, kl_weight=1.0), x, y, progress=False)
    _, beta_log = run(config("vae", tmp_path / "beta", epochs=3, kl_weight=0.1), x, y, progress=False)
    assert one_log["history"] == elbo_log["history"]
    elbo, beta = elbo_log["history"][-1], beta_log["history"][-1]
    assert beta["kl"] > 2 * elbo["kl"]


# -- resume --

@pytest.mark.parametrize("kind, stop", [("classifier", 5), ("vae", 11), ("gan", 3)])
def test_resume_matches_uninterrupted_run(tmp_path, kind, stop):
    """Stopping after `stop` steps (mid-epoch) and resuming ends with exactly the weights,
    optimiser-driven updates and RNG use of an uninterrupted run with the same seed."""
    x, y = patterns(128)  # 4 steps per epoch
    full, full_log = run(config(kind, tmp_path / "full", epochs=3), x, y, progress=False)

    cfg = config(kind, tmp_path / "split", epochs=3)
    _, part_log = run(cfg, x, y, progress=False, max_steps=stop)
    assert part_log["steps"] == stop
    ckpt = torch.load(tmp_path / "split" / "checkpoint.pt", weights_only=True)
    assert ckpt["global_step"] == stop and ckpt["epoch"] == stop // 4 and ckpt["pos"] == stop % 4

    resumed, log = run(cfg, x, y, progress=False, resume=True)
    assert log["steps"] == full_log["steps"] == 12
    want, got = states(full), states(resumed)
    assert want.keys() == got.keys()
    for k in want:
        assert torch.equal(want[k], got[k]), k


def test_resume_reads_the_checkpoint_onto_the_cpu(tmp_path, monkeypatch):
    """Mapped to the training device, a checkpoint put the random states there too, and
    Generator.set_state and torch.set_rng_state take CPU byte tensors only: on a GPU every
    --resume stopped with a TypeError before its first step."""
    x, y = patterns(64)
    cfg = config("vae", tmp_path, epochs=2)
    run(cfg, x, y, progress=False, max_steps=1)
    seen, real = [], torch.load

    def spy(*args, **kwargs):
        seen.append(kwargs.get("map_location"))
        return real(*args, **kwargs)

    monkeypatch.setattr(torch, "load", spy)
    _, log = run(cfg, x, y, progress=False, resume=True)
    assert seen == ["cpu"] and log["steps"] == 4


def test_resume_history_matches_uninterrupted_run(tmp_path):
    """The per-epoch history after an interrupted+resumed run is the uninterrupted run's:
    one entry per epoch, with the epoch's mean loss over all its steps."""
    x, y = patterns(128)
    _, full_log = run(config("classifier", tmp_path / "full", epochs=2), x, y, progress=False)
    cfg = config("classifier", tmp_path / "split", epochs=2)
    run(cfg, x, y, progress=False, max_steps=2)
    _, log = run(cfg, x, y, progress=False, resume=True)
    assert [h["epoch"] for h in log["history"]] == [1, 2]
    for got, want in zip(log["history"], full_log["history"]):
        assert got == pytest.approx(want, rel=1e-4)


def test_resume_without_checkpoint_starts_fresh(tmp_path):
    x, y = patterns(64)
    _, log = run(config("vae", tmp_path, epochs=1), x, y, progress=False, resume=True)
    assert log["steps"] == 2 and len(log["history"]) == 1


def test_checkpoint_every_writes_mid_epoch(tmp_path):
    """checkpoint_every=3 writes a checkpoint at step 3 (mid-epoch); its position is recorded."""
    x, y = patterns(128)
    cfg = config("vae", tmp_path, epochs=1)
    cfg.checkpoint_every = 3
    run(cfg, x, y, progress=False, max_steps=3)
    ckpt = torch.load(tmp_path / "checkpoint.pt", weights_only=True)
    assert (ckpt["epoch"], ckpt["pos"], ckpt["global_step"]) == (0, 3, 3)


def test_max_steps_at_epoch_boundary(tmp_path):
    """max_steps equal to a whole number of epochs stops there: no extra step into the next epoch."""
    x, y = patterns(128)  # 4 steps per epoch
    _, log = run(config("vae", tmp_path, epochs=3), x, y, progress=False, max_steps=4)
    assert log["steps"] == 4
    assert [h["epoch"] for h in log["history"]] == [1]
    ckpt = torch.load(tmp_path / "checkpoint.pt", weights_only=True)
    assert ckpt["global_step"] == 4


# -- CLI --

def test_help_mentions_resume(capsys):
    with pytest.raises(SystemExit) as e:
        main(["--help"])
    assert e.value.code == 0
    out = capsys.readouterr().out
    assert "--resume" in out and "--data-dir" in out


def train_cli(tmp_path, kind, *flags):
    """``python -m models.train KIND`` on synthetic IDX files (batch 32, no sample grids) with
    ``flags``; asserts it succeeded and returns the folder with the weights and card."""
    data = tmp_path / "data"
    data.mkdir()
    write_fashion(data)
    out = tmp_path / "weights"
    rc = main([kind, "--batch-size", "32", "--device", "cpu", "--data-dir", str(data), "--out", str(out),
               "--run-dir", str(tmp_path / "run"), "--sample-every", "0", *flags])
    assert rc == 0
    return out


@pytest.mark.parametrize("kind", ["classifier", "vae"])
def test_cli_trains_and_writes_card(tmp_path, kind):
    """`python -m models.train KIND` on synthetic files writes loadable weights and a card."""
    out = train_cli(tmp_path, kind, "--epochs", "1")
    name = f"fashion-{kind}"
    card = json.loads((out / f"{name}.json").read_text())
    assert card["kind"] == kind
    assert card["training"]["steps"] == 2 and card["training"]["epochs"] == 1
    if kind == "classifier":
        assert 0.0 <= card["metrics"]["test_accuracy"] <= 1.0
    module, _ = load_model(out / f"{name}.json")
    assert not module.training


# -- the quality-versus-time curve --

def test_the_curve_probes_the_final_module_on_its_clock_and_stops_it_while_probing(tmp_path):
    """Every probe_every_s of training and at the end; the module is in eval mode while probed and
    back in its mode afterwards; the probes' own time is not training time."""
    import time as clock

    x, y = patterns(128)
    cfg = config("vae", tmp_path, epochs=2)
    seen = []

    def probe(module):
        seen.append(module.training)
        clock.sleep(0.3)
        return float(len(seen))

    t = clock.perf_counter()
    trainer, log = run(cfg, x, y, progress=False, probe=probe, probe_every_s=1e-9)
    total = clock.perf_counter() - t
    curve = log["curve"]
    assert [p["value"] for p in curve] == [float(i + 1) for i in range(len(curve))] and len(curve) == log["steps"]
    assert [p["step"] for p in curve] == list(range(1, log["steps"] + 1))
    assert all(a["train_s"] <= b["train_s"] for a, b in zip(curve, curve[1:]))
    assert seen == [False] * len(seen) and trainer.final_module().training is False
    assert log["wall_time_s"] < total - 0.3 * len(seen) + 0.5  # the sleeps are not counted
    assert json.loads((tmp_path / "curve.json").read_text()) == curve


def test_channels_last_trains_the_same_model_in_nhwc(tmp_path):
    """The weights live in NHWC and the steps take the same path: after 4 GAN steps the weights
    agree with the NCHW run's to rounding, and the exported card's tensors are plain contiguous."""
    x, y = patterns(128)
    plain, _ = run(config("gan", tmp_path / "a", epochs=1), x, y, progress=False)
    nhwc, _ = run(config("gan", tmp_path / "b", epochs=1, channels_last=True), x, y, progress=False)
    conv = nhwc.g.up1.conv.weight
    assert conv.is_contiguous(memory_format=torch.channels_last) and not conv.is_contiguous()
    for k, v in plain.ema.state_dict().items():
        torch.testing.assert_close(nhwc.ema.state_dict()[k], v, rtol=1e-3, atol=1e-4)
    from models.card import save_model

    card = save_model(nhwc.ema, name="nhwc", kind="gan", out_dir=str(tmp_path / "out"), version="0", training={},
                      metrics={})
    module, _ = load_model(card)
    assert all(torch.equal(module.state_dict()[k], v) for k, v in nhwc.ema.state_dict().items())


def test_keep_best_ends_on_the_curves_lowest_point_and_names_it(tmp_path):
    """The probe's values dip at the third point: the shipped EMA is the one probed there, not the
    last one, and the curve keeps every point with the probe's other numbers."""
    x, y = patterns(96)
    cfg = config("gan", tmp_path, epochs=2)
    values, snapshots = iter([5.0, 4.0, 1.0, 3.0, 2.0, 6.0, 7.0, 8.0]), []

    def probe(module):
        snapshots.append({k: v.clone() for k, v in module.state_dict().items()})
        return {"value": next(values), "accuracy": 0.5}

    trainer, log = run(cfg, x, y, progress=False, probe=probe, probe_every_s=1e-9, keep_best=True)
    assert len(log["curve"]) == log["steps"] == 6 and all(p["accuracy"] == 0.5 for p in log["curve"])
    assert log["selected"] == log["curve"][2] and log["selected"]["value"] == 1.0
    final = trainer.final_module().state_dict()
    assert all(torch.equal(final[k], snapshots[2][k]) for k in final)
    assert not all(torch.equal(snapshots[2][k], snapshots[-1][k]) for k in final)  # it did move after


def test_cli_gan_with_a_curve_keep_best_and_channels_last(tmp_path):
    """The GAN's recipe flags end to end: the curve in the shipped classifier's features (FID and
    accuracy per point), the selected point named in the card, NHWC named in the card."""
    out = train_cli(tmp_path, "gan", "--epochs", "1", "--channels-last", "--keep-best", "--curve-every-s", "1e-9",
                    "--curve-samples", "20", *[f"--model={k}={v}" for k, v in SMALL["gan"].items()])
    training = json.loads((out / "fashion-gan.json").read_text())["training"]
    points = training["curve"]["points"]
    assert [p["step"] for p in points] == [1, 2] and all(0.0 <= p["accuracy"] <= 1.0 for p in points)
    best = min(points, key=lambda p: p["value"])
    assert training["selected"] == {**best, "rule": "the EMA generator at the curve's lowest FID (--keep-best)"}
    assert training["channels_last"] is True and "aux_classifier" not in training


def test_cli_gan_with_the_aux_classifier_names_its_weight(tmp_path):
    out = train_cli(tmp_path, "gan", "--epochs", "1", "--aux-classifier", "0.5",
                    *[f"--model={k}={v}" for k, v in SMALL["gan"].items()])
    card = json.loads((out / "fashion-gan.json").read_text())
    assert card["training"]["aux_classifier"] == 0.5
    assert {"aux_d", "aux_g"} <= set(card["training"]["history"][0])
    module, _ = load_model(out / "fashion-gan.json")  # the shipped generator carries no head
    assert isinstance(module, Generator)


def test_cli_vae_names_its_kl_weight(tmp_path):
    out = train_cli(tmp_path, "vae", "--epochs", "1", "--kl-weight", "0.25",
                    *[f"--model={k}={v}" for k, v in SMALL["vae"].items()])
    assert json.loads((out / "fashion-vae.json").read_text())["training"]["kl_weight"] == 0.25


def test_keep_best_is_refused_without_a_probe_or_for_a_vae(tmp_path):
    x, y = patterns(32)
    with pytest.raises(ValueError, match="keep_best"):
        run(config("gan", tmp_path, epochs=1), x, y, progress=False, keep_best=True)
    with pytest.raises(ValueError, match="keep_best"):
        run(config("vae", tmp_path, epochs=1), x, y, progress=False, probe=lambda m: 1.0, probe_every_s=1.0,
            keep_best=True)


def test_without_a_probe_there_is_no_curve(tmp_path):
    x, y = patterns(64)
    _, log = run(config("vae", tmp_path, epochs=1), x, y, progress=False)
    assert "curve" not in log and not (tmp_path / "curve.json").exists()


def test_curves_are_drawn_from_curve_files(tmp_path):
    from models.curves import main as curves_main

    a, b = tmp_path / "a" / "curve.json", tmp_path / "b" / "curve.json"
    for path, values in ((a, [90.0, 60.0, 50.0]), (b, [80.0, 70.0])):
        path.parent.mkdir()
        path.write_text(json.dumps([{"train_s": 60.0 * (i + 1), "step": i, "value": v} for i, v in enumerate(values)]))
    out = tmp_path / "plot.png"
    assert curves_main([str(a), str(b), "--label", "first", "--out", str(out)]) == 0
    with Image.open(out) as img:
        assert img.size == (720, 420)
        colours = {c for _, c in img.convert("RGB").getcolors(100_000)}
    assert (31, 119, 180) in colours and (214, 39, 40) in colours  # both curves drawn


# -- the v2 recipes' paths: Gaussian likelihood, fitted prior, EMA ramp, version --

def test_cli_trains_a_gaussian_vae_with_a_fitted_prior(tmp_path):
    """--likelihood gaussian --model prior=1: the loss is the Gaussian NLL at the ML sigma (logged
    per epoch), the prior is fitted to the training posterior after the last step, the card says
    both and its version, and the loaded model decodes an encoded image to its reconstruction."""
    out = train_cli(tmp_path, "vae", "--epochs", "2", "--likelihood", "gaussian", "--version", "2.0.0",
                    *[f"--model={k}={v}" for k, v in SMALL["vae"].items()], "--model", "prior=1")
    card = json.loads((out / "fashion-vae.json").read_text())
    assert card["version"] == "2.0.0" and card["config"]["prior"] == 1
    assert card["training"]["likelihood"] == "gaussian" and "aggregate posterior" in card["training"]["prior"]
    assert [h["epoch"] for h in card["training"]["history"]] == [1, 2]
    assert all(0 < h["sigma"] < 1 for h in card["training"]["history"])
    vae, _ = load_model(out / "fashion-vae.json")
    x, y = patterns(64)
    with torch.no_grad():
        mu, _ = vae.posterior(x, y)
        for c in (0, 5):  # the fitted loc is the class's mean posterior mean
            assert torch.allclose(vae.prior_loc[c], mu[y == c].mean(0), atol=1e-4)
        mu_u, _ = vae.encode(x[:4], y[:4])
        assert torch.allclose(vae.generate(mu_u, y[:4]), vae.decode(mu[:4], y[:4]) * 2 - 1, atol=1e-5)


def test_gan_ema_follows_g_closely_early_with_the_ramp(tmp_path):
    """With the ramp (default) the EMA after 4 steps is far nearer G than with a fixed 0.999,
    which still holds over 99% of the random start; the step count survives a checkpoint."""
    x, y = patterns(128)

    def distance(rampup):
        trainer, _ = run(config("gan", tmp_path / str(rampup), epochs=1, ema_rampup=rampup), x, y, progress=False)
        g, ema = trainer.g.state_dict(), trainer.ema.state_dict()
        assert trainer.steps == 4
        return sum((ema[k] - g[k]).pow(2).sum().item() for k in g)

    assert distance(0.05) < 0.01 * distance(0.0)
    ckpt = torch.load(tmp_path / "0.05" / "checkpoint.pt", weights_only=True)
    assert ckpt["trainer"]["steps"] == 4


def test_elbo_encoder_is_a_fitted_copy_and_the_served_model_stays_as_it_is(tmp_path):
    """elbo_encoder: after a Gaussian-likelihood run with a fitted prior, a copy of the encoder trains
    alone on the Bernoulli ELBO. Every tensor of the model that samples and encodes (encoder, decoder,
    prior) ends byte-equal to the same run without it, the copy has moved, and the Bernoulli ELBO of
    the training images (one seeded z, q from the copy) rises; one log row per epoch."""
    from models.evaluate import vae_test_metrics

    x, y = patterns(256)
    kw = dict(epochs=2, likelihood="gaussian", model={**SMALL["vae"], "prior": 1})
    plain, plain_log = run(TrainConfig(**{**config("vae", tmp_path / "plain").__dict__, **kw}), x, y, progress=False)
    fitted, fitted_log = run(TrainConfig(**{**config("vae", tmp_path / "fit").__dict__, **kw, "elbo_encoder": 3}),
                             x, y, progress=False)
    before, after = plain.vae.state_dict(), fitted.vae.state_dict()
    assert set(after) - set(before) == {f"elbo_{k}" for k in before if k.startswith("encoder.")}
    assert all(torch.equal(before[k], after[k]) for k in before)
    assert any(not torch.equal(after[k], after[f"elbo_{k}"]) for k in before if k.startswith("encoder."))
    assert fitted.vae.cfg.elbo_encoder == 1 and plain.vae.cfg.elbo_encoder == 0
    assert [h["epoch"] for h in fitted_log["elbo_encoder"]] == [1, 2, 3] and "elbo_encoder" not in plain_log
    assert all(p.requires_grad for p in fitted.vae.parameters()) and not fitted.vae.training
    with torch.no_grad():
        elbo_plain = vae_test_metrics(plain.vae, x, y, seed=0)
        elbo_fitted = vae_test_metrics(fitted.vae, x, y, seed=0)
    assert elbo_fitted["test_elbo_nats"] > elbo_plain["test_elbo_nats"] + 1.0
    assert elbo_fitted["test_reconstruction_mse"] == elbo_plain["test_reconstruction_mse"]  # the served encoder's


def test_cli_vae_elbo_encoder_is_in_the_card_loads_and_is_refused_for_a_gan(tmp_path):
    out = train_cli(tmp_path, "vae", "--epochs", "1", "--likelihood", "gaussian", "--elbo-encoder", "2",
                    *[f"--model={k}={v}" for k, v in SMALL["vae"].items()], "--model", "prior=1")
    card = json.loads((out / "fashion-vae.json").read_text())
    fit = card["training"]["elbo_encoder"]
    assert fit["epochs"] == 2 and [h["epoch"] for h in fit["history"]] == [1, 2] and "alone" in fit["objective"]
    assert card["config"]["elbo_encoder"] == 1
    vae, _ = load_model(out / "fashion-vae.json")
    assert vae.cfg.elbo_encoder == 1 and vae.elbo_encoder is not vae.encoder
    for kind, n in (("gan", "1"), ("vae", "-1")):
        with pytest.raises(SystemExit, match="--elbo-encoder"):
            main([kind, "--elbo-encoder", n])


def test_prior_flow_is_fitted_to_the_elbo_encoders_posteriors_and_raises_their_log_prior(tmp_path):
    """prior_flow: after the ELBO encoder's epochs, a flow on the fitted Gaussian (the model becomes
    prior=2) is fitted to the ELBO encoder's posteriors, then the ELBO encoder trains one more epoch
    against it. The decoder, the Gaussian and the served encoder end byte-equal to the same run
    without the flow; E_q[log p(z | y)] of the ELBO encoder's posteriors rises over the Gaussian's,
    and so does the ELBO (the same seeded z and q)."""
    from models.evaluate import vae_test_metrics

    x, y = patterns(256)
    kw = dict(epochs=2, likelihood="gaussian", model={**SMALL["vae"], "prior": 1}, elbo_encoder=2)
    plain, _ = run(TrainConfig(**{**config("vae", tmp_path / "plain").__dict__, **kw}), x, y, progress=False)
    flowed, log = run(TrainConfig(**{**config("vae", tmp_path / "flow").__dict__, **kw, "prior_flow": 4}),
                      x, y, progress=False)
    before, after = plain.vae.state_dict(), flowed.vae.state_dict()
    assert {k.split(".")[0] for k in set(after) - set(before)} == {"prior_flow"}
    assert all(torch.equal(before[k], after[k]) for k in before if not k.startswith("elbo_encoder."))
    assert flowed.vae.cfg.prior == 2 and plain.vae.cfg.prior == 1
    assert [h["epoch"] for h in log["prior_flow"]] == [1, 2, 3, 4]
    assert [h["epoch"] for h in log["elbo_encoder"]] == [1, 2, 3]  # 2 against the Gaussian, 1 against the flow
    assert all(p.requires_grad for p in flowed.vae.parameters()) and not flowed.vae.training
    with torch.no_grad():
        mu, logvar = plain.vae.elbo_posterior(x, y)
        z = mu + torch.randn(mu.shape, generator=torch.Generator().manual_seed(0)) * (0.5 * logvar).exp()
        gaussian_log_prior = plain.vae.log_prior(z, y).mean().item()
        flowed.vae.elbo_encoder.load_state_dict(plain.vae.elbo_encoder.state_dict())  # the same q for both
        assert flowed.vae.log_prior(z, y).mean().item() > gaussian_log_prior + 0.1
        assert (vae_test_metrics(flowed.vae, x, y, seed=0)["test_elbo_nats"]
                > vae_test_metrics(plain.vae, x, y, seed=0)["test_elbo_nats"])


def test_cli_prior_flow_is_in_the_card_loads_and_is_refused_without_the_gaussian(tmp_path):
    out = train_cli(tmp_path, "vae", "--epochs", "1", "--likelihood", "gaussian", "--elbo-encoder", "1",
                    "--prior-flow", "2", *[f"--model={k}={v}" for k, v in SMALL["vae"].items()], "--model", "prior=1")
    card = json.loads((out / "fashion-vae.json").read_text())
    assert card["config"]["prior"] == 2 and "flow" in card["training"]["prior"]
    fit = card["training"]["prior_flow"]
    assert fit["epochs"] == 2 and [h["epoch"] for h in fit["history"]] == [1, 2] and fit["layers"] == 8
    fit = card["training"]["elbo_encoder"]
    assert fit["epochs"] == 1 and fit["epochs_after_flow"] == 1 and [h["epoch"] for h in fit["history"]] == [1, 2]
    vae, _ = load_model(out / "fashion-vae.json")
    x, y = patterns(8)
    with torch.no_grad():
        mu_u, _ = vae.encode(x, y)
        assert torch.allclose(vae.generate(mu_u, y), vae.decode(vae.posterior(x, y)[0], y) * 2 - 1, atol=1e-4)
    for args in (["gan", "--prior-flow", "1"], ["vae", "--prior-flow", "1"], ["vae", "--prior-flow", "1", "--model", "prior=2"],
                 ["vae", "--prior-flow", "-1", "--model", "prior=1"]):
        with pytest.raises(SystemExit, match="--prior-flow"):
            main(args)
    with pytest.raises(SystemExit, match="prior=2 is what --prior-flow"):
        main(["vae", "--model", "prior=2"])
