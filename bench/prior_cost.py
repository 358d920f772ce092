"""What a VAE's prior costs a request: the server's own forward path (``generate_rows``) and its
encode path (``encode_rows``) for two weight folders side by side, in alternating windows so that
both see the same machine. Made for the flow prior (fashion-vae 2.2.0: the Gaussian's affine map
plus 8 coupling layers, and /encode's Jacobian through them) against the Gaussian alone (2.1.0).

    python -m bench.prior_cost --a runs/vae-v21/out --b weights      # model fashion-vae in both

Prints ms per pass, medians of ``--pairs`` alternating windows, and b / a per cell. Idle OpenMP
threads wait passively, as in ``python -m app``: with two models' part threads in one process,
spinning ones starve the other model's pass (a 2 ms pass took 70 ms)."""

from __future__ import annotations

import argparse
import os
import statistics
from collections.abc import Callable
from pathlib import Path

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")  # read once, when torch loads

import torch  # noqa: E402

from bench.limit import load, window  # noqa: E402


def _ms_per_call(fn: Callable[[], object], seconds: float) -> float:
    calls, elapsed = window(fn, seconds)
    return 1e3 * elapsed / calls


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m bench.prior_cost", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--a", type=Path, required=True, help="the first weights folder (the baseline)")
    p.add_argument("--b", type=Path, required=True, help="the second weights folder")
    p.add_argument("--model", default="fashion-vae")
    p.add_argument("--generate-batches", default="1,32,256")
    p.add_argument("--encode-batches", default="1,32")
    p.add_argument("--seconds", type=float, default=0.5)
    p.add_argument("--pairs", type=int, default=5)
    p.add_argument("--threads", type=int, default=2)
    args = p.parse_args(argv)
    torch.set_num_threads(args.threads)
    models = {k: load(d, args.model, "cpu", args.threads) for k, d in (("a", args.a), ("b", args.b))}
    print(f"a: {args.a} {models['a'].version}   b: {args.b} {models['b'].version}   "
          f"{args.threads} threads, {args.pairs} pairs of {args.seconds} s windows")
    g = torch.Generator().manual_seed(0)
    cells = []
    for b in [int(v) for v in args.generate_batches.split(",")]:
        z, y = torch.randn(b, models["a"].latent_dim, generator=g), torch.arange(b) % 10
        cells.append((f"generate_rows, batch {b:>3}", {k: (lambda m=m, z=z, y=y: m.generate_rows(z, y)) for k, m in models.items()}))
    for b in [int(v) for v in args.encode_batches.split(",")]:
        x, y = torch.rand(b, 1, 28, 28, generator=g), torch.arange(b) % 10
        cells.append((f"encode_rows,   batch {b:>3}", {k: (lambda m=m, x=x, y=y: m.encode_rows(x, y)) for k, m in models.items()}))
    for name, fns in cells:
        for fn in fns.values():
            fn()  # not timed
        times: dict[str, list[float]] = {"a": [], "b": []}
        for i in range(args.pairs):
            for k in ("a", "b") if i % 2 == 0 else ("b", "a"):
                times[k].append(_ms_per_call(fns[k], args.seconds))
        ma, mb = statistics.median(times["a"]), statistics.median(times["b"])
        print(f"{name}: a {ma:8.2f} ms   b {mb:8.2f} ms   b/a {mb / ma:5.2f}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
