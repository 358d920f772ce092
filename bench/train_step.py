"""Where a GAN training step's time goes on this machine.

    python -m bench.train_step                 # the shipped recipe's step (batch 64), 2 threads
    python -m bench.train_step --steps 60 --threads 2

Prints (1) steps per second of ``models.trainer.Trainer`` steps on random images, for the shipped
recipe and for the levers the curve could try (channels-last memory, batch 128), medians of
``--repeats`` timed runs measured side by side; (2) a torch.profiler table of one timed run,
self CPU time by operator and by phase (G forward, D forward, backward passes, optimiser steps,
EMA), so the share of the 3x3 convolutions at 28x28 and of the spectral-norm power iterations
can be read off. Random images cost the same as Fashion-MNIST ones: no data set needed.
"""

from __future__ import annotations

import argparse
import statistics
import time
from collections import defaultdict

import torch

from models.trainer import DEFAULTS, TrainConfig, Trainer


def trainer(batch: int, channels_last: bool) -> tuple[Trainer, torch.Tensor, torch.Tensor]:
    _, _, lr = DEFAULTS["gan"]
    t = Trainer(TrainConfig(kind="gan", epochs=1, batch_size=batch, lr=lr, seed=0, device="cpu",
                            run_dir="/tmp/bench-train-step"), torch.device("cpu"))
    x = torch.rand(batch, 1, 28, 28)
    if channels_last:
        for module in (t.g, t.d, t.ema):
            module.to(memory_format=torch.channels_last)
        x = x.contiguous(memory_format=torch.channels_last)
    return t, x, torch.arange(batch) % 10


def steps_per_s(t: Trainer, x: torch.Tensor, y: torch.Tensor, steps: int) -> float:
    t.set_train(True)
    for _ in range(5):  # warm-up: oneDNN picks its kernels on the first calls
        t.step(x, y)
    start = time.perf_counter()
    for _ in range(steps):
        t.step(x, y)
    return steps / (time.perf_counter() - start)


PHASES = ("G forward", "D forward", "D backward", "G backward", "optimisers", "EMA")  # Trainer._step_gan's


def profile(steps: int) -> None:
    """One profiled run of the shipped step, by the phases ``Trainer._step_gan`` names."""
    from torch.profiler import ProfilerActivity
    from torch.profiler import profile as torch_profile

    t, x, y = trainer(DEFAULTS["gan"][1], channels_last=False)
    t.set_train(True)
    for _ in range(5):
        t.step(x, y)
    with torch_profile(activities=[ProfilerActivity.CPU]) as prof:
        for _ in range(steps):
            t.step(x, y)
    events = prof.key_averages()
    total = sum(e.self_cpu_time_total for e in events)
    phases: dict[str, float] = defaultdict(float)
    for e in events:
        if e.key in PHASES:
            phases[e.key] += e.cpu_time_total
    print(f"\nprofiled {steps} steps: {total / 1e3 / steps:.1f} ms of self CPU time per step")
    print("phase (inclusive CPU time per step):")
    for phase, us in sorted(phases.items(), key=lambda kv: -kv[1]):
        print(f"  {phase:<12} {us / 1e3 / steps:7.2f} ms  {100 * us / total:5.1f}%")
    print("operators (self CPU time per step, top 14):")
    for e in sorted(events, key=lambda e: -e.self_cpu_time_total)[:14]:
        if e.key in PHASES:
            continue
        print(f"  {e.key:<40} {e.self_cpu_time_total / 1e3 / steps:7.2f} ms  {100 * e.self_cpu_time_total / total:5.1f}%"
              f"  ({e.count // steps} calls)")
    sn = sum(e.self_cpu_time_total for e in events if e.key in ("aten::mv", "aten::dot", "aten::linalg_vector_norm",
                                                                 "aten::div", "aten::clamp_min", "aten::norm"))
    print(f"spectral-norm power iteration ops (mv, dot, norm, div, clamp_min): {100 * sn / total:.1f}% "
          "(an upper bound: div and norm are also used elsewhere)")


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m bench.train_step", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--steps", type=int, default=40, help="timed steps per run")
    p.add_argument("--repeats", type=int, default=3, help="runs per variant, interleaved; the median is printed")
    p.add_argument("--threads", type=int, default=2)
    args = p.parse_args(argv)
    torch.set_num_threads(args.threads)
    variants = {"shipped (batch 64)": (64, False), "channels-last (batch 64)": (64, True),
                "batch 128": (128, False)}
    runs: dict[str, list[float]] = defaultdict(list)
    for _ in range(args.repeats):  # interleaved, so drift in the machine's speed hits every variant alike
        for name, (batch, cl) in variants.items():
            runs[name].append(steps_per_s(*trainer(batch, cl), args.steps))
    base = statistics.median(runs["shipped (batch 64)"])
    print(f"torch {torch.__version__}, {args.threads} threads, {args.steps} steps x {args.repeats} runs")
    for name, (batch, _) in variants.items():
        med = statistics.median(runs[name])
        print(f"{name:<26} {med:6.2f} steps/s  {med * batch:7.0f} images/s  ({med * batch / (base * 64):.2f}x images/s)")
    profile(args.steps)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
