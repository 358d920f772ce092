"""Train the GAN, the VAE or the evaluator classifier on Fashion-MNIST.

    python -m models.train gan --epochs 6
    python -m models.train vae --resume      # continue from runs/vae/checkpoint.pt

Checkpoints (``<run-dir>/checkpoint.pt``, written every ``--checkpoint-every`` steps and at each
epoch's end) hold the models, optimisers, RNG states and position in the epoch, so an
interrupted run resumes where it stopped. They are read back with ``weights_only=True``. The
final weights + card go to ``--out`` (default ``weights/``).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
import torch.nn as nn
from tqdm import tqdm

from models.card import save_model
from models.data import CLASS_NAMES, load_split, to_tensors
from models.flow import FLOW_HIDDEN, FLOW_LAYERS
from models.trainer import (
    DEFAULTS,
    ELBO_ENCODER_LR,
    ELBO_EPOCHS_AFTER_FLOW,
    NAMES,
    PRIOR_FLOW_BATCH,
    PRIOR_FLOW_LR,
    TrainConfig,
    Trainer,
    pick_device,
)


def run(cfg: TrainConfig, x: torch.Tensor, y: torch.Tensor, resume: bool = False,
        progress: bool = True, max_steps: int | None = None,
        probe: Callable[[nn.Module], float | dict[str, float]] | None = None, probe_every_s: float = 0.0,
        keep_best: bool = False) -> tuple[Trainer, dict[str, Any]]:
    """Train on x: (N, 1, 28, 28) float in [0, 1], y: (N,) int64. Returns the trainer and a log.

    With ``probe`` (e.g. models.evaluate.fid_probe), the final module (the GAN's EMA, the VAE) is
    measured every ``probe_every_s`` seconds of training and at the end: the quality-versus-time
    curve, in the log and in ``<run-dir>/curve.json``. A probe returns the curve's value (lower is
    better) or a dict with it under "value" and other numbers beside it. The clock stops while a
    probe runs, so the curve's times (and the card's wall time) are training time alone.

    ``keep_best`` (the GAN only): the final module ends as it was at the curve's lowest point, a
    snapshot kept in memory and in the checkpoint; the log's "selected" names that point."""
    if keep_best and (probe is None or cfg.kind != "gan"):
        raise ValueError("keep_best needs a probe and a GAN (a VAE's prior is fitted after its last step)")
    device = pick_device(cfg.device)
    if cfg.threads:
        torch.set_num_threads(cfg.threads)
    trainer = Trainer(cfg, device)
    run_dir = Path(cfg.run_dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    ckpt_path = run_dir / "checkpoint.pt"
    epoch, pos, global_step, elapsed = 0, 0, 0, 0.0
    history: list[dict[str, float]] = []
    curve: list[dict[str, float]] = []  # (training seconds, step, probe value)
    best: dict[str, Any] = {}  # keep_best: {"point": curve point, "state": the final module's state}
    sums: dict[str, float] = {}  # running loss sums of the current epoch
    steps_done = 0
    if resume and ckpt_path.exists():
        # to the CPU: load_state_dict moves the weights and optimiser states to the device, and
        # the random states must stay CPU tensors
        state = torch.load(ckpt_path, map_location="cpu", weights_only=True)
        trainer.load_state_dict(state["trainer"])
        epoch, pos, global_step, elapsed = state["epoch"], state["pos"], state["global_step"], state["elapsed"]
        history, curve, best = state["history"], state.get("curve", []), state.get("best", {})
        sums, steps_done = state.get("epoch_sums", {}), state.get("epoch_steps", 0)
        print(f"resumed from {ckpt_path}: epoch {epoch}, batch {pos}, step {global_step}", file=sys.stderr)

    def save_checkpoint() -> None:
        tmp = ckpt_path.with_suffix(".tmp")
        torch.save({"trainer": trainer.state_dict(), "epoch": epoch, "pos": pos, "global_step": global_step,
                    "elapsed": elapsed + time.perf_counter() - t0, "history": history, "curve": curve,
                    "best": best, "epoch_sums": sums, "epoch_steps": steps_done}, tmp)
        os.replace(tmp, ckpt_path)

    def measure() -> None:
        nonlocal t0
        started = time.perf_counter()
        module = trainer.final_module()
        was_training = module.training
        module.eval()
        value = probe(module)
        module.train(was_training)
        numbers = value if isinstance(value, dict) else {"value": value}
        curve.append({"train_s": round(elapsed + started - t0, 1), "step": global_step, **numbers})
        (run_dir / "curve.json").write_text(json.dumps(curve, indent=1) + "\n")
        if keep_best and (not best or numbers["value"] < best["point"]["value"]):
            best.update(point=curve[-1], state={k: v.detach().clone() for k, v in module.state_dict().items()})
        if progress:
            print(f"step {global_step}, {curve[-1]['train_s']:.0f} s: {numbers}", file=sys.stderr)
        t0 += time.perf_counter() - started  # the clock stops while the probe runs

    n = len(x)
    steps_per_epoch = n // cfg.batch_size
    t0 = time.perf_counter()
    next_probe = (curve[-1]["train_s"] if curve else 0.0) + probe_every_s
    trainer.set_train(True)
    while epoch < cfg.epochs:
        order = torch.randperm(n, generator=torch.Generator().manual_seed(cfg.seed * 10_000 + epoch))
        bar = tqdm(range(pos, steps_per_epoch), desc=f"{cfg.kind} epoch {epoch + 1}/{cfg.epochs}",
                   initial=pos, total=steps_per_epoch, disable=not progress, leave=False)
        stop = False
        for i in bar:
            idx = order[i * cfg.batch_size:(i + 1) * cfg.batch_size]
            logs = trainer.step(x[idx].to(device), y[idx].to(device))
            for k, v in logs.items():
                sums[k] = sums.get(k, 0.0) + v
            global_step, pos, steps_done = global_step + 1, i + 1, steps_done + 1
            if global_step % 20 == 0:
                bar.set_postfix({k: f"{v:.3f}" for k, v in logs.items()})
            if cfg.sample_every and global_step % cfg.sample_every == 0:
                trainer.sample_grid(run_dir / f"samples_{global_step:06d}.png")
            if cfg.checkpoint_every and global_step % cfg.checkpoint_every == 0:
                save_checkpoint()
            if probe is not None and probe_every_s and elapsed + time.perf_counter() - t0 >= next_probe:
                measure()
                next_probe += probe_every_s
            if max_steps is not None and global_step >= max_steps:
                stop = True
                break
        if pos >= steps_per_epoch:  # the epoch is complete
            history.append({"epoch": epoch + 1, **{k: round(v / max(1, steps_done), 5) for k, v in sums.items()}})
            if progress:
                print(f"epoch {epoch + 1}: " + ", ".join(f"{k}={v:.4f}" for k, v in history[-1].items() if k != "epoch"),
                      file=sys.stderr)
            epoch, pos, sums, steps_done = epoch + 1, 0, {}, 0
        save_checkpoint()
        if stop:
            break
    trainer.set_train(False)
    fits = trainer.finish(x, y, progress)
    if probe is not None and (not curve or curve[-1]["step"] != global_step):
        measure()
    if best:
        trainer.final_module().load_state_dict(best["state"])
    trainer.sample_grid(run_dir / "samples_final.png")
    log = {"steps": global_step, "wall_time_s": round(elapsed + time.perf_counter() - t0, 1), "history": history,
           **({"curve": curve} if probe is not None else {}), **({"selected": best["point"]} if best else {}),
           **fits}
    return trainer, log


@torch.no_grad()
def classifier_accuracy(clf: nn.Module, x: torch.Tensor, y: torch.Tensor, batch: int = 1000) -> float:
    clf.eval()
    correct = 0
    for i in range(0, len(x), batch):
        correct += (clf(x[i:i + batch] * 2.0 - 1.0).argmax(1) == y[i:i + batch]).sum().item()
    return correct / len(x)


def parse_model_sizes(items: list[str]) -> dict[str, int]:
    """["latent_dim=2", ...] -> {"latent_dim": 2}: every config size is an integer."""
    sizes: dict[str, int] = {}
    for item in items:
        key, sep, value = item.partition("=")
        if not sep or not key or not value.lstrip("-").isdigit():
            raise SystemExit(f"--model wants KEY=INT, got {item!r}")
        sizes[key] = int(value)
    return sizes


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m models.train", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("kind", choices=sorted(NAMES), help="what to train")
    p.add_argument("--epochs", type=int, help="passes over the 60k training images (default: per kind)")
    p.add_argument("--batch-size", type=int, help="images per step (default: per kind)")
    p.add_argument("--lr", type=float, help="Adam learning rate (GAN: G's; D uses twice this)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--device", default="auto", help="auto (CUDA when present), cpu, cuda, cuda:1 ...")
    p.add_argument("--out", default="weights", help="folder for <name>.safetensors + <name>.json")
    p.add_argument("--run-dir", default="", help="checkpoints and sample grids (default runs/<kind>)")
    p.add_argument("--data-dir", default=None, help="folder with the four Fashion-MNIST .gz IDX files")
    p.add_argument("--resume", action="store_true", help="continue from <run-dir>/checkpoint.pt")
    p.add_argument("--likelihood", choices=("bernoulli", "gaussian"), default="bernoulli",
                   help="VAE: the pixels' likelihood in training: Bernoulli (cross-entropy) or Gaussian with one "
                        "sigma set to its maximum-likelihood value each step")
    p.add_argument("--kl-weight", type=float, default=1.0, metavar="BETA",
                   help="VAE: train on reconstruction + BETA x KL (1, the default, is the ELBO; below 1 the "
                        "encoder keeps more detail at the cost of ELBO)")
    p.add_argument("--elbo-encoder", type=int, default=0, metavar="EPOCHS",
                   help="VAE: after the last step (and the prior's fit), fit a second encoder for EPOCHS epochs to the "
                        "Bernoulli ELBO the card reports, the decoder and prior frozen; samples and /encode keep the "
                        "first. For a Gaussian-likelihood VAE, whose encoder is a loose q on that measure; 0: none")
    p.add_argument("--prior-flow", type=int, default=0, metavar="EPOCHS",
                   help="VAE with --model prior=1: then put a normalising flow on the fitted Gaussian prior and fit it "
                        "for EPOCHS epochs to the ELBO encoder's posteriors (the card's model gets prior=2; samples "
                        f"come from it); the ELBO encoder then trains {ELBO_EPOCHS_AFTER_FLOW} more epoch against it. "
                        "0: none")
    p.add_argument("--ema-rampup", type=float, default=0.05,
                   help="GAN: the EMA's half-life is at most this share of the steps taken; 0 keeps the decay "
                        "(0.999) from the first step")
    p.add_argument("--aux-classifier", type=float, default=0.0, metavar="W",
                   help="GAN: add a class head to D (trained on real images) and W x its cross-entropy to both "
                        "losses (AC-GAN), pushing G toward class-true images; 0 (default) is off")
    p.add_argument("--threads", type=int, default=0, help="torch CPU threads (0: torch's default)")
    p.add_argument("--channels-last", action="store_true",
                   help="NHWC weights and batches (a GAN step is about 1.1x as fast on a 2-core CPU: "
                        "python -m bench.train_step); the same model, other floating-point rounding")
    p.add_argument("--checkpoint-every", type=int, default=500, help="steps between checkpoints")
    p.add_argument("--sample-every", type=int, default=1000, help="steps between sample grids")
    p.add_argument("--curve-every-s", type=float, default=0.0,
                   help="every this many seconds of training, FID of --curve-samples samples in the shipped "
                        "classifier's features (the quality-versus-time curve; <run-dir>/curve.json and the card)")
    p.add_argument("--curve-samples", type=int, default=2000)
    p.add_argument("--keep-best", action="store_true",
                   help="GAN: ship the EMA generator as it was at the curve's lowest FID, not at the last step")
    p.add_argument("--classifier", default="weights/fashion-classifier.json", help="the features of the curve's FID")
    p.add_argument("--version", default="1.0.0", help="the card's version (it is part of every ETag the service sends)")
    p.add_argument("--name", default="", help="model name for the card and files (default: fashion-<kind>)")
    p.add_argument("--model", action="append", default=[], metavar="KEY=INT",
                   help="architecture size for the model's config dataclass, e.g. --model latent_dim=2 (repeatable)")
    args = p.parse_args(argv)
    epochs, batch, lr = DEFAULTS[args.kind]
    cfg = TrainConfig(kind=args.kind, epochs=args.epochs or epochs, batch_size=args.batch_size or batch,
                      lr=args.lr or lr, seed=args.seed, device=str(pick_device(args.device)), out=args.out,
                      run_dir=args.run_dir, threads=args.threads, ema_rampup=args.ema_rampup, likelihood=args.likelihood,
                      channels_last=args.channels_last, aux_classifier=args.aux_classifier, kl_weight=args.kl_weight,
                      elbo_encoder=args.elbo_encoder, prior_flow=args.prior_flow,
                      checkpoint_every=args.checkpoint_every,
                      sample_every=args.sample_every, name=args.name, model=parse_model_sizes(args.model))
    if args.elbo_encoder and (args.kind != "vae" or args.elbo_encoder < 0):
        raise SystemExit("--elbo-encoder takes a VAE and a number of epochs >= 0")
    if args.prior_flow and (args.kind != "vae" or args.prior_flow < 0 or cfg.model.get("prior") != 1):
        raise SystemExit("--prior-flow takes a VAE with --model prior=1 (the flow goes on its fitted Gaussian) "
                         "and a number of epochs >= 0")
    if cfg.model.get("prior") == 2:  # the flow is made and fitted after training, never trained from the start
        raise SystemExit("--model prior=2 is what --prior-flow EPOCHS makes of --model prior=1 after training; "
                         "train with those")
    train = load_split("train", args.data_dir)
    x, y = to_tensors(train, (0.0, 1.0))
    probe = None
    if args.curve_every_s and args.kind != "classifier":
        from models.evaluate import fid_probe  # the classifier and test features: only for a curve

        probe = fid_probe(Path(args.classifier), args.data_dir, args.curve_samples, cfg.device)
    if args.keep_best and (probe is None or args.kind != "gan"):
        raise SystemExit("--keep-best selects a GAN snapshot on the curve: it needs gan and --curve-every-s")
    trainer, log = run(cfg, x, y, resume=args.resume, probe=probe, probe_every_s=args.curve_every_s,
                       keep_best=args.keep_best)
    module = trainer.final_module()
    metrics: dict[str, Any] = {}
    if args.kind == "classifier":
        tx, ty = to_tensors(load_split("test", args.data_dir), (0.0, 1.0))
        metrics["test_accuracy"] = round(classifier_accuracy(module, tx.to(cfg.device), ty.to(cfg.device)), 4)
        print(f"test accuracy: {metrics['test_accuracy']:.4f}", file=sys.stderr)
    training = {
        "data": "Fashion-MNIST train split (60,000 images), Debian dataset-fashion-mnist",
        "epochs": cfg.epochs, "batch_size": cfg.batch_size, "lr": cfg.lr, "seed": cfg.seed,
        "optimizer": "Adam(betas=(0.0, 0.9)), D lr = 2x G lr, hinge loss, EMA of G" if args.kind == "gan" else "Adam",
        "ema_decay": cfg.ema_decay if args.kind == "gan" else None,
        **({"ema_rampup": cfg.ema_rampup} if args.kind == "gan" else {}),
        **({"likelihood": cfg.likelihood, **({"prior": "per-class Gaussian fitted to the training images' "
                                                       "aggregate posterior" + (", then a class-conditional flow on it (models.flow)"
                                                       if cfg.prior_flow else "")} if cfg.model.get("prior") else {})}
           if args.kind == "vae" else {}),
        **({"prior_flow": {"epochs": cfg.prior_flow, "lr": PRIOR_FLOW_LR, "batch_size": PRIOR_FLOW_BATCH,
                           "layers": FLOW_LAYERS, "hidden": FLOW_HIDDEN, "history": log["prior_flow"],
                           "objective": "E_q[log p(z | y)] of the ELBO encoder's posteriors on the training images "
                                        "(the ELBO's prior term), the Gaussian, decoder and encoders fixed; Adam, "
                                        "one-cycle schedule"}}
           if cfg.prior_flow else {}),
        **({"channels_last": True} if cfg.channels_last else {}),
        **({"aux_classifier": cfg.aux_classifier} if cfg.aux_classifier else {}),
        **({"kl_weight": cfg.kl_weight} if cfg.kl_weight != 1.0 else {}),
        **({"elbo_encoder": {"epochs": cfg.elbo_encoder, "lr": ELBO_ENCODER_LR, "history": log["elbo_encoder"],
                             "objective": "the Bernoulli ELBO against the fitted prior, a copy of the encoder trained "
                                          "alone (decoder, prior and the served encoder frozen); the test ELBO is "
                                          "measured with it",
                             **({"epochs_after_flow": ELBO_EPOCHS_AFTER_FLOW} if cfg.prior_flow else {})}}
           if cfg.elbo_encoder else {}),
        "device": cfg.device, "cpu_threads": torch.get_num_threads(), "machine": platform.machine(),
        "torch": torch.__version__, "steps": log["steps"], "wall_time_s": log["wall_time_s"],
        "history": log["history"], **({"curve": {"measure": f"FID of {args.curve_samples} samples against the test set in the shipped "
                                  "classifier's features", "points": log["curve"]}} if "curve" in log else {}),
        **({"selected": {**log["selected"], "rule": "the EMA generator at the curve's lowest FID (--keep-best)"}}
           if "selected" in log else {}), "command": "python -m models.train " + " ".join(argv if argv is not None else sys.argv[1:]),
        "classes": list(CLASS_NAMES),
    }
    card = save_model(module, name=cfg.name, kind=args.kind, out_dir=cfg.out, version=args.version, training=training, metrics=metrics)
    print(f"wrote {card} ({log['wall_time_s']:.0f} s)", file=sys.stderr)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
