"""GAN projection on Fashion-MNIST test images: time per projection and reconstruction MSE, with
the service's own module and settings (``/project``'s defaults: 200 steps from 4 seeds).

    python -m bench.projection                      # 100 test images, fashion-gan
    python -m bench.projection --images 20 --steps 500

MSE is per pixel in the images' [-1, 1] range, as ``/project`` reports it. ``start`` is the best
of the starting latents (what a random seed gives), ``projected`` the answer. Needs the data set
(apt-get install dataset-fashion-mnist)."""

from __future__ import annotations

import argparse
import statistics
import time

import torch

from app.engine.registry import Registry
from app.server.settings import Settings
from models.data import load_split, to_tensors
from models.latents import seeded_latents
from models.projection import project


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m bench.projection", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", default="fashion-gan")
    p.add_argument("--images", type=int, default=100)
    p.add_argument("--steps", type=int, default=200)
    p.add_argument("--starts", type=int, default=4)
    p.add_argument("--data-dir", default=None)
    args = p.parse_args(argv)
    registry = Registry.from_settings(Settings(models=[args.model]))
    model = registry.get(args.model)
    x, y = to_tensors(load_split("test", args.data_dir), (0.0, 1.0))
    # every 100th test image: all classes, a fixed set
    idx = torch.arange(0, len(x), max(1, len(x) // args.images))[:args.images]
    times, starts, finals = [], [], []
    for n, i in enumerate(idx.tolist()):
        target = x[i] * 2.0 - 1.0
        z0, _ = seeded_latents(0, args.starts, model.latent_dim, len(model.classes), labels=False)
        t0 = time.perf_counter()
        found = project(model.module, target, int(y[i]), z0, args.steps)
        times.append(time.perf_counter() - t0)
        starts.append(found.start_mse)
        finals.append(found.mse)
        if (n + 1) % 20 == 0:
            print(f"{n + 1} images: median {statistics.median(times) * 1000:.0f} ms, mean MSE {statistics.mean(finals):.4f}",
                  flush=True)
    print(f"{args.model}, {len(idx)} test images, {args.steps} steps from {args.starts} seeds, "
          f"torch threads {torch.get_num_threads()}:")
    print(f"  time per projection: median {statistics.median(times) * 1000:.0f} ms, "
          f"p90 {sorted(times)[int(0.9 * len(times))] * 1000:.0f} ms")
    print(f"  MSE: start (best seed) mean {statistics.mean(starts):.4f}, projected mean {statistics.mean(finals):.4f} "
          f"(median {statistics.median(finals):.4f}); lower in {sum(f < s for f, s in zip(finals, starts))} of {len(idx)}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
