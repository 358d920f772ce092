"""The in-process limit: no HTTP, no event loop, no queue. Images per second of the server's own
forward path (Registry.from_settings -> ServedModel.generate_rows, padded to bucket shapes) and
of that plus PNG encoding (app.imaging.png_bytes, one image at a time, in the same thread), at a
range of batch sizes. Each number is the median of `repeats` timed windows of `seconds` each."""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable
from pathlib import Path

import torch

from app.imaging import png_bytes
from app.registry import Registry, ServedModel
from app.settings import Settings

BATCH_SIZES = (1, 8, 32, 64, 128, 256)


def load(weights_dir: Path, model: str, device: str, torch_threads: int, max_rows: int = 256,
         channels_last: bool = True) -> ServedModel:
    """The served model as latentserve builds it, with every power of two up to max_rows a bucket
    (min_batch_rows=1), so a batch of B runs as a pass of exactly B rows. Every field that matters
    is given here, so no LATENTSERVE_* variable of this environment changes it."""
    settings = Settings(weights_dir=weights_dir, models=[model], device=device, dtype="float32",
                        torch_threads=torch_threads, min_batch_rows=1, max_batch_rows=max_rows,
                        channels_last=channels_last)
    registry = Registry.from_settings(settings)
    served = registry.get(model)
    every_size = list(served.buckets)
    registry.warm_up()  # calibrates: keeps the shapes whose rows match the largest, as the server does
    served.calibrated_min_rows = served.buckets[0]  # what a lone request is padded to in the server
    served.buckets = every_size  # measure every batch size as an exact pass
    return served


def _inputs(model: ServedModel, batch: int, g: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
    """Random latents and cycling labels for a pass of ``batch`` rows."""
    return torch.randn(batch, model.latent_dim, generator=g), torch.arange(batch) % len(model.classes)


def _forward_png(model: ServedModel, z: torch.Tensor, y: torch.Tensor, png_level: int) -> Callable[[], None]:
    """One pass of the server's forward path, then every image as a PNG, in this thread."""
    def forward_png() -> None:
        for p in model.generate_rows(z, y):
            png_bytes(p, 1, png_level)
    return forward_png


def _rate(fn: Callable[[], None], images: int, seconds: float, repeats: int) -> tuple[float, list[float]]:
    """Median images/s over `repeats` windows; each window calls fn until `seconds` have passed."""
    fn()  # not timed
    rates = []
    for _ in range(repeats):
        calls, t0 = 0, time.perf_counter()
        while True:
            fn()
            calls += 1
            elapsed = time.perf_counter() - t0
            if elapsed >= seconds:
                break
        rates.append(images * calls / elapsed)
    return statistics.median(rates), rates


def measure(model: ServedModel, batch_sizes=BATCH_SIZES, seconds: float = 1.0, repeats: int = 3,
            png_level: int = 1, server_min_rows: int = 8, log: Callable[[str], None] = print) -> dict:
    g = torch.Generator().manual_seed(0)
    rows = []
    for b in batch_sizes:
        z, y = _inputs(model, b, g)
        pixels = model.generate_rows(z, y)
        forward_png = _forward_png(model, z, y, png_level)

        def forward() -> None:
            model.generate_rows(z, y)

        def png_only() -> None:
            for p in pixels:
                png_bytes(p, 1, png_level)

        fwd, fwd_runs = _rate(forward, b, seconds, repeats)
        full, full_runs = _rate(forward_png, b, seconds, repeats)
        png, _ = _rate(png_only, b, min(seconds, 0.5), repeats)
        rows.append({"batch": b, "forward_img_per_s": fwd, "forward_png_img_per_s": full,
                     "forward_ms_per_pass": 1e3 * b / fwd, "forward_png_ms_per_pass": 1e3 * b / full,
                     "png_us_per_image": 1e6 / png, "runs_forward": fwd_runs, "runs_forward_png": full_runs})
        log(f"  limit batch {b:>3}: forward {fwd:9.1f} img/s   forward+png {full:9.1f} img/s")

    # What latentserve does for a lone one-image request: a pass padded to its smallest bucket.
    z1, y1 = _inputs(model, server_min_rows, g)

    def lone_request() -> None:
        png_bytes(model.generate_rows(z1, y1)[0], 1, png_level)

    lone, _ = _rate(lone_request, 1, seconds, repeats)
    single = {"padded_rows": server_min_rows, "forward_png_ms": 1e3 / lone}
    log(f"  limit 1 image padded to {server_min_rows} rows: {1e3 / lone:.3f} ms")
    return {"batch_sizes": rows, "single_padded": single, "seconds_per_repeat": seconds, "repeats": repeats,
            "png_compress_level": png_level, "torch_threads": torch.get_num_threads()}


def forward_png_rate(model: ServedModel, batch: int, seconds: float, png_level: int = 1, seed: int = 0) -> float:
    """One timed window of forward + PNG at ``batch`` rows (padded as the server pads): images/s.
    bench.run alternates these windows with the server's c=64 runs (the paired share of the limit)."""
    z, y = _inputs(model, batch, torch.Generator().manual_seed(seed))
    rate, _ = _rate(_forward_png(model, z, y, png_level), batch, seconds, 1)
    return rate
