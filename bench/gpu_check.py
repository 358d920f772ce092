"""Correctness and speed checks of the served models on an accelerator, run by bench/gpu.sh
before the benchmark (a CUDA machine is lent rarely, so one call does everything):

1. the registry as the service builds it (``Registry.from_settings`` + ``warm_up``): which batch
   shapes the calibration keeps, whether the TorchScript pass is kept, how long warm-up takes;
2. batch invariance as served: rows asked for alone or in batches of odd sizes and offsets are
   bitwise equal to the same rows of one full pass;
3. the device's pixels against the CPU's (same latents): largest difference in grey levels and the
   share of pixels that differ; the VAE's encoder means likewise;
4. the forward path's speed (``generate_rows``: latents to the device, pass, uint8 pixels back) at
   256 and 1024 rows in float32, float16 and bfloat16, with each half type's grey-level distance
   from float32.

``python -m bench.gpu_check --device cuda --out gpu-check.json`` prints a short table and writes
the figures as JSON. Exits 1 when a correctness check fails."""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path

import torch

from app.engine.registry import Registry
from app.engine.served import ServedModel
from app.server.settings import Settings

REPO = Path(__file__).resolve().parent.parent


def build(weights_dir: Path, device: str, max_rows: int, models: list[str] | None = None,
          dtype: str = "float32") -> tuple[Registry, float]:
    settings = Settings(weights_dir=weights_dir, device=device, dtype=dtype, models=models or [],
                        min_batch_rows=1, max_batch_rows=max_rows)
    registry = Registry.from_settings(settings)
    t0 = time.perf_counter()
    registry.warm_up()
    return registry, time.perf_counter() - t0


def inputs(model: ServedModel, rows: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return torch.randn(rows, model.latent_dim, generator=g), torch.randint(0, len(model.classes), (rows,), generator=g)


def batch_invariance(model: ServedModel, rows: int) -> dict:
    """Rows served in slices of many sizes and offsets against the same rows in one pass of ``rows``."""
    z, y = inputs(model, rows, seed=1)
    full = model.generate_rows(z, y)
    slices = [(0, 1), (5, 1), (rows - 1, 1), (0, 3), (7, 17), (0, 64), (31, 100), (rows - 200, 200)]
    mismatched = [f"{start}+{n}" for start, n in slices if 0 <= start and start + n <= rows
                  and not (model.generate_rows(z[start:start + n], y[start:start + n]) == full[start:start + n]).all()]
    return {"rows": rows, "slices": len(slices), "mismatched": mismatched}


def grey_diff(a, b) -> dict:
    d = (torch.from_numpy(a).to(torch.int16) - torch.from_numpy(b).to(torch.int16)).abs()
    return {"max_grey_levels": int(d.max()), "share_differing": float((d > 0).float().mean())}


def time_rows(model: ServedModel, rows: int, repeats: int) -> dict:
    """Median ms of generate_rows at ``rows`` (its .cpu() waits for the device)."""
    z, y = inputs(model, rows, seed=2)
    for _ in range(3):
        model.generate_rows(z, y)
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        model.generate_rows(z, y)
        times.append(time.perf_counter() - t0)
    ms = 1e3 * statistics.median(times)
    return {"rows": rows, "ms_per_pass": ms, "img_per_s": rows / ms * 1e3}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m bench.gpu_check", description=__doc__.split("\n\n")[0])
    p.add_argument("--device", default="cuda")
    p.add_argument("--weights-dir", type=Path, default=REPO / "weights")
    p.add_argument("--max-rows", type=int, default=256, help="largest batch shape of the served registry (default 256)")
    p.add_argument("--speed-rows", default="256,1024")
    p.add_argument("--repeats", type=int, default=30)
    p.add_argument("--out", type=Path, default=Path("gpu-check.json"))
    args = p.parse_args(argv)
    report: dict = {"torch": torch.__version__, "device": args.device}
    if args.device.startswith("cuda"):
        props = torch.cuda.get_device_properties(torch.device(args.device))
        report["device_name"] = props.name
        report["capability"] = f"{props.major}.{props.minor}"
    failures: list[str] = []

    def save() -> None:  # after every section, so a run cut short still leaves what it measured
        args.out.write_text(json.dumps({**report, "failures": failures}, indent=2) + "\n")

    registry, warm_s = build(args.weights_dir, args.device, args.max_rows)
    report["served"] = {name: {"kind": m.kind, "buckets": m.buckets, "torchscript": m.graph is not None,
                               "layout": m.layout} for name, m in registry.models.items()}
    report["warm_up_s"] = warm_s
    save()
    print(f"warm-up on {args.device}: {warm_s:.1f} s")
    for name, m in registry.models.items():
        print(f"  {name}: shapes {m.buckets}, TorchScript {'kept' if m.graph is not None else 'not kept'}, {m.layout}")

    gan = registry.get("fashion-gan")
    inv = batch_invariance(gan, args.max_rows)
    report["batch_invariance"] = inv
    print(f"batch invariance: {inv['slices'] - len(inv['mismatched'])}/{inv['slices']} slices equal to one "
          f"{inv['rows']}-row pass {inv['mismatched'] or ''}")
    if inv["mismatched"]:
        failures.append(f"batch invariance: {inv['mismatched']}")
    save()

    n = min(64, args.max_rows)
    cpu, _ = build(args.weights_dir, "cpu", n, models=["fashion-gan", "fashion-vae"])
    z, y = inputs(gan, n, seed=3)
    report["vs_cpu_gan"] = grey_diff(gan.generate_rows(z, y), cpu.get("fashion-gan").generate_rows(z, y))
    vae, vae_cpu = registry.get("fashion-vae"), cpu.get("fashion-vae")
    x = torch.rand(n, *vae.image_shape, generator=torch.Generator().manual_seed(4))
    yv = torch.arange(n) % len(vae.classes)
    mu_dev, mu_cpu = vae.encode_rows(x, yv)[:, 0], vae_cpu.encode_rows(x, yv)[:, 0]
    report["vs_cpu_vae_mu_max_abs"] = float(abs(mu_dev - mu_cpu).max())
    zv, yv2 = inputs(vae, n, seed=5)
    report["vs_cpu_vae_decode"] = grey_diff(vae.generate_rows(zv, yv2), vae_cpu.generate_rows(zv, yv2))
    print(f"vs CPU: GAN pixels {report['vs_cpu_gan']}, VAE decode {report['vs_cpu_vae_decode']}, "
          f"VAE mu max |diff| {report['vs_cpu_vae_mu_max_abs']:.2e}")
    if report["vs_cpu_gan"]["max_grey_levels"] > 2 or report["vs_cpu_vae_decode"]["max_grey_levels"] > 2:
        failures.append("device pixels more than 2 grey levels from the CPU's")
    del cpu
    save()

    speed_rows = [int(r) for r in args.speed_rows.split(",")]
    report["speed"] = {}
    ref = None
    for dtype in ("float32", "float16", "bfloat16"):
        reg, _ = build(args.weights_dir, args.device, max(speed_rows), models=["fashion-gan"], dtype=dtype)
        m = reg.get("fashion-gan")
        rows = [time_rows(m, r, args.repeats) for r in speed_rows]
        zq, yq = inputs(m, min(256, max(speed_rows)), seed=6)
        pixels = m.generate_rows(zq, yq)
        ref = pixels if dtype == "float32" else ref
        entry = {"rows": rows, "buckets": m.buckets, "torchscript": m.graph is not None,
                 "vs_float32": grey_diff(pixels, ref)}
        report["speed"][dtype] = entry
        print(f"  {dtype:>8}: " + ", ".join(f"{r['rows']} rows {r['ms_per_pass']:.2f} ms = {r['img_per_s']:,.0f} img/s"
                                            for r in rows) + f"; vs float32 {entry['vs_float32']}")
        del reg, m
        save()

    save()
    print("FAILED: " + "; ".join(failures) if failures else "all checks passed")
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
