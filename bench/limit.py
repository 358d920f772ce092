"""The in-process limit: no HTTP, no event loop, no queue. Images per second of the server's own
forward path (Registry.from_settings -> ServedModel.generate_rows, padded to bucket shapes) and
of that plus PNG encoding (app.engine.imaging.png_bytes, one image at a time, in the same thread), at a
range of batch sizes. Each number is the median of `repeats` timed windows of `seconds` each."""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable
from pathlib import Path

import torch

from app.engine.imaging import png_bytes
from app.engine.registry import Registry
from app.engine.served import ServedModel, bucket_sizes
from app.server.settings import Settings

BATCH_SIZES = (1, 8, 32, 64, 128, 256)


def load(weights_dir: Path, model: str, device: str, torch_threads: int, max_rows: int = 256,
         channels_last: bool = True, server_max_rows: int | None = None) -> ServedModel:
    """The served model as latentserve builds it, with every power of two up to max_rows a bucket
    (min_batch_rows=1), so a batch of B runs as a pass of exactly B rows. Every field that matters
    is given here, so no LATENTSERVE_* variable of this environment changes it.

    ``server_buckets`` is what the server pads to: the shapes its warm-up calibration keeps with
    its own ``MAX_BATCH_ROWS`` (``server_max_rows``; the setting's default when None). On a CPU
    that is every power of two; on a GPU only the top one or few (docs/benchmarks.md)."""
    settings = Settings(weights_dir=weights_dir, models=[model], device=device, dtype="float32",
                        torch_threads=torch_threads, min_batch_rows=1, max_batch_rows=max_rows,
                        channels_last=channels_last)
    registry = Registry.from_settings(settings)
    served = registry.get(model)
    every_size = list(served.buckets)
    registry.warm_up()  # builds the TorchScript pass, as the server's warm-up does
    served.buckets = bucket_sizes(1, server_max_rows or Settings.model_fields["max_batch_rows"].default)
    served.server_buckets = served.calibrate()  # the shapes the server keeps, from its own largest
    served.calibrated_min_rows = served.server_buckets[0]  # what a lone request is padded to in the server
    served.buckets = sorted(set(every_size) | set(served.server_buckets))  # every batch size as an exact pass
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


def window(fn: Callable[[], object], seconds: float) -> tuple[int, float]:
    """One timed window: calls fn until `seconds` have passed; (calls, elapsed seconds)."""
    calls, t0 = 0, time.perf_counter()
    while True:
        fn()
        calls += 1
        elapsed = time.perf_counter() - t0
        if elapsed >= seconds:
            return calls, elapsed


def _rate(fn: Callable[[], None], images: int, seconds: float, repeats: int) -> tuple[float, list[float]]:
    """Median images/s over `repeats` windows; each window calls fn until `seconds` have passed."""
    fn()  # not timed
    rates = []
    for _ in range(repeats):
        calls, elapsed = window(fn, seconds)
        rates.append(images * calls / elapsed)
    return statistics.median(rates), rates


def measure(model: ServedModel, batch_sizes=BATCH_SIZES, seconds: float = 1.0, repeats: int = 3,
            png_level: int = 1, log: Callable[[str], None] = print) -> dict:
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
    return {"batch_sizes": rows, "seconds_per_repeat": seconds, "repeats": repeats,
            "png_compress_level": png_level, "torch_threads": model.threads or torch.get_num_threads(),
            "pass_parts": model.parts}


def single_image(model: ServedModel, baseline, seconds: float = 1.0, repeats: int = 3, png_level: int = 1,
                 log: Callable[[str], None] = print) -> dict:
    """The in-process terms of the c=1 comparison, in alternating windows so that all see the same
    machine: latentserve's path for one image (a pass padded to the server's smallest shape, then
    the PNG), and the plain FastAPI handler's own work for one image (``baseline``, a
    bench.baseline_fastapi.Baseline: seeded latent, eager pass, PNG), whose time is subtracted from
    that server's c=1 p50 to leave its HTTP overhead. ms per image, medians of ``repeats``, and the
    median of the windows' own differences (latentserve's path minus the handler): the c=1
    expectation is the plain server's p50 plus that difference."""
    padded = model.calibrated_min_rows
    z, y = _inputs(model, padded, torch.Generator().manual_seed(1))

    def lone_request() -> None:
        png_bytes(model.generate_rows(z, y)[0], 1, png_level)

    seed = iter(range(10**9))

    def baseline_request() -> None:
        baseline.sample_png(1, next(seed))

    lone_request(), baseline_request()  # not timed
    ls_ms, base_ms = [], []
    for _ in range(repeats):
        ls_ms.append(1e3 / _rate(lone_request, 1, seconds, 1)[0])
        base_ms.append(1e3 / _rate(baseline_request, 1, seconds, 1)[0])
    out = {"padded_rows": padded, "latentserve_ms": statistics.median(ls_ms), "baseline_handler_ms": statistics.median(base_ms),
           "median_difference_ms": statistics.median(a - b for a, b in zip(ls_ms, base_ms)),
           "runs_latentserve_ms": ls_ms, "runs_baseline_handler_ms": base_ms}
    log(f"  one image: latentserve's path (a pass of {padded} row(s) + PNG) {out['latentserve_ms']:.3f} ms, "
        f"the plain server's handler {out['baseline_handler_ms']:.3f} ms")
    return out


def forward_png_rate(model: ServedModel, batch: int, seconds: float, png_level: int = 1, seed: int = 0) -> float:
    """One timed window of forward + PNG at ``batch`` rows, padded to the server's shapes as the
    server pads: images/s. bench.run alternates these windows with the server's c=64 runs (the
    paired share of the limit)."""
    z, y = _inputs(model, batch, torch.Generator().manual_seed(seed))
    every_size, model.buckets = model.buckets, model.server_buckets
    try:
        rate, _ = _rate(_forward_png(model, z, y, png_level), batch, seconds, 1)
    finally:
        model.buckets = every_size
    return rate
