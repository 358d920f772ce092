"""Benchmark latentserve against its limit and its alternatives, side by side, on the same weights:

1. the in-process limit (bench/limit.py): forward pass, and forward + PNG, per batch size;
2. latentserve (`python -m app`) with its default batching;
3. latentserve with batching off (MAX_BATCH_ROWS=1, MIN_BATCH_ROWS=1);
4. a plain FastAPI server (bench/baseline_fastapi.py), one forward pass per request;
5. LitServe (bench/litserve_server.py) with its own batching.

Every server runs alone (one at a time), one worker, the same torch threads, on 127.0.0.1, and
gets the same closed-loop loads from wrk (bench/loadgen.py). Writes everything to a JSON file and
a Markdown report (bench/report.py).

    nice -n 19 python -m bench.run                       # the full run (about 12 minutes)
    nice -n 19 python -m bench.run --quick               # a smoke test: 1 run of 2 s per cell
    python -m bench.run --weights-dir /tmp/w --model tiny-gan --loads c1,c64 --servers latentserve,litserve

Processes started here inherit this one's niceness: on a shared machine run it under nice.
"""

from __future__ import annotations

import argparse
import datetime as dt
import importlib.metadata
import json
import os
import platform
import shlex
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from bench import loadgen, report, servers
from bench.loadgen import LOADS, Load

REPO = servers.REPO
SERVER_NAMES = ("latentserve", "latentserve-nobatch", "baseline", "litserve")
SUMMED = ("non_2xx", "socket_errors", "requests")
FULL = {"duration": 10.0, "runs": 3, "warmup": 1.0, "limit_seconds": 1.0, "pairs": 5}
QUICK = {"duration": 2.0, "runs": 1, "warmup": 1.0, "limit_seconds": 0.2, "pairs": 1}


def parse_args(argv: list[str]) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m bench.run", description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--quick", action="store_true", help="smoke test: 1 run of ~2 s per cell, short limit windows")
    p.add_argument("--duration", type=float, help="seconds per measured wrk run (default 10; quick: 2; whole seconds)")
    p.add_argument("--runs", type=int, help="measured runs per cell, the median is reported (default 3; quick: 1)")
    p.add_argument("--warmup", type=float, help="seconds of uncounted load before each cell (default 1)")
    p.add_argument("--pairs", type=int, help="alternating (limit window, c=64 run) pairs for the side-by-side share "
                   "of the limit, the median is reported (default 5; quick: 1)")
    p.add_argument("--limit-seconds", type=float, help="seconds per timed window of the in-process limit (default 1; quick: 0.2)")
    p.add_argument("--weights-dir", type=Path, default=REPO / "weights", help="folder with <model>.json + .safetensors (default: weights/)")
    p.add_argument("--model", default="fashion-gan", help="model card name (default: fashion-gan)")
    p.add_argument("--device", default="auto", help="auto (CUDA when present, else CPU), cpu, cuda, ... for every server")
    p.add_argument("--torch-threads", type=int, default=0, help="intra-op threads for every server and the limit (default: torch's default here)")
    p.add_argument("--loads", default=",".join(ld.name for ld in LOADS),
                   help=f"comma list of loads (default: all of {', '.join(ld.name for ld in LOADS)})")
    p.add_argument("--servers", default=",".join(SERVER_NAMES), help=f"comma list (default: all of {', '.join(SERVER_NAMES)})")
    p.add_argument("--no-limit", action="store_true", help="skip the in-process limit")
    p.add_argument("--limit-batches", default="1,8,32,64,128,256",
                   help="batch sizes of the in-process limit (default 1,8,32,64,128,256; on a GPU add 1024)")
    p.add_argument("--max-batch-rows", type=int, default=0, help="LATENTSERVE_MAX_BATCH_ROWS for latentserve (default: its own)")
    p.add_argument("--channels-last", action=argparse.BooleanOptionalAction, default=True,
                   help="NHWC convolution weights on a CPU for every server and the limit (default: on, latentserve's default)")
    p.add_argument("--limit-omp-wait-policy", choices=("default", "passive"), default="default",
                   help="how the in-process limit's idle OpenMP threads wait: default (libgomp's: spin, then sleep; "
                   "the faster limit here) or passive (OMP_WAIT_POLICY=PASSIVE, as every server runs: "
                   "`python -m app` sets it)")
    p.add_argument("--wrk-threads", type=int, default=1, help="wrk threads (default 1: the client must not take the server's cores)")
    p.add_argument("--litserve-batch-timeout", type=float, default=0.005, help="LitServe batch_timeout in seconds (default 0.005)")
    p.add_argument("--litserve-max-batch-size", type=int, default=64, help="LitServe max_batch_size (default 64)")
    p.add_argument("--out-json", type=Path, default=REPO / "bench" / "results.json")
    p.add_argument("--out-md", type=Path, default=REPO / "docs" / "benchmarks.md")
    p.add_argument("--log-dir", type=Path, help="where server logs go (default: a new temporary folder)")
    args = p.parse_args(argv)
    defaults = QUICK if args.quick else FULL
    for key, value in defaults.items():
        if getattr(args, key) is None:
            setattr(args, key, value)
    by_name = {ld.name: ld for ld in LOADS}
    try:
        args.load_list = [by_name[name.strip()] for name in args.loads.split(",") if name.strip()]
    except KeyError as e:
        p.error(f"unknown load {e}; known: {', '.join(by_name)}")
    args.server_list = [s.strip() for s in args.servers.split(",") if s.strip()]
    unknown = set(args.server_list) - set(SERVER_NAMES)
    if unknown:
        p.error(f"unknown servers {sorted(unknown)}; known: {', '.join(SERVER_NAMES)}")
    if args.runs < 1 or args.duration < 1 or args.pairs < 1:
        p.error("--runs and --pairs must be >= 1 and --duration >= 1 (wrk runs whole seconds)")
    return args


def log(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


def _version(dist: str) -> str | None:
    try:
        return importlib.metadata.version(dist)
    except importlib.metadata.PackageNotFoundError:
        return None


def _cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "?"


def _git(*cmd: str) -> str | None:
    try:
        return subprocess.run(["git", *cmd], cwd=REPO, capture_output=True, text=True, timeout=10).stdout.strip() or None
    except OSError:
        return None


def machine_info(args: argparse.Namespace, argv: list[str], wrk: str, device: str) -> dict:
    import torch

    mem_kb = next((int(ln.split()[1]) for ln in Path("/proc/meminfo").read_text().splitlines()
                   if ln.startswith("MemTotal:")), 0)
    return {
        "date": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
        "command": "python -m bench.run" + ("" if not argv else " " + shlex.join(argv)),
        "cpu_model": _cpu_model(), "cpu_count": os.cpu_count(), "cpus_allowed": len(os.sched_getaffinity(0)),
        "memory_gib": round(mem_kb / 2**20, 1), "loadavg_start": Path("/proc/loadavg").read_text().split()[:3],
        "niceness": os.nice(0), "platform": platform.platform(), "python": platform.python_version(),
        "device": device, "cuda_device": torch.cuda.get_device_name(0) if device.startswith("cuda") else None,
        "torch": torch.__version__, "torch_threads": args.torch_threads, "channels_last": args.channels_last,
        "limit_omp_wait_policy": args.limit_omp_wait_policy,
        "packages": {d: _version(d) for d in ("fastapi", "uvicorn", "uvloop", "httptools", "litserve", "pillow", "numpy")},
        "wrk": loadgen.wrk_version(wrk), "wrk_threads": args.wrk_threads,
        "git_commit": _git("rev-parse", "--short", "HEAD"), "git_dirty": bool(_git("status", "--porcelain")),
        "weights_dir": str(args.weights_dir), "model": args.model,
        "quick": args.quick, "duration_s": args.duration, "runs": args.runs, "pairs": args.pairs, "warmup_s": args.warmup,
        "limit_seconds": args.limit_seconds,
    }


def _median_of_runs(runs: list[dict]) -> dict:
    """Each metric's median over the runs; error counts summed (a cell is valid only at 0)."""
    out: dict = {}
    for key, value in runs[0].items():
        values = [r[key] for r in runs if r.get(key) is not None]
        if key in SUMMED:
            out[key] = sum(values)
        elif isinstance(value, (int, float)) and not isinstance(value, bool) and values:
            out[key] = statistics.median(values)
    out["valid"] = out.get("non_2xx", 0) == 0 and out.get("socket_errors", 0) == 0
    return out


def wait_idle(server: servers.Server, max_s: float = 15.0) -> None:
    if not server.wait_idle(max_s):
        log(f"  {server.spec.name} still busy after {max_s:.0f} s; going on")


def measure_cell(server: servers.Server, load: Load, args: argparse.Namespace, wrk: str, seed_base: int) -> dict:
    wait_idle(server)
    loadgen.run_wrk(wrk, server.url, load, args.warmup, seed_base, args.wrk_threads)  # warm-up, not counted
    runs = []
    for i in range(args.runs):
        wait_idle(server)
        batches0, cpu0, (busy0, steal0) = server.batch_counters(), server.cpu_seconds(), servers.machine_cpu_seconds()
        t0 = time.perf_counter()
        r = loadgen.run_wrk(wrk, server.url, load, args.duration, seed_base + (i + 1) * 10_000_000, args.wrk_threads)
        wall, cpu1, (busy1, steal1) = time.perf_counter() - t0, server.cpu_seconds(), servers.machine_cpu_seconds()
        wait_idle(server)  # let abandoned requests finish before reading the batch counters
        batches1 = server.batch_counters()
        r["server_cpu_pct"] = 100.0 * (cpu1 - cpu0) / wall
        # what else ran meanwhile (anything on the machine, this harness included): a noisy run shows here
        # (not clamped: the kernel's per-process and machine-wide tick accounting differ by a few %)
        r["other_cpu_pct"] = 100.0 * (busy1 - busy0) / wall - r["server_cpu_pct"] - r["wrk_cpu_pct"]
        r["steal_cpu_pct"] = 100.0 * (steal1 - steal0) / wall
        if batches0 is not None and batches1 is not None:
            passes, rows = batches1[0] - batches0[0], batches1[1] - batches0[1]
            r["forward_passes"] = passes
            r["mean_batch_rows"] = rows / passes if passes else None
        elif server.spec.name == "baseline":
            r["mean_batch_rows"] = float(load.n)  # one pass per request, by construction
        runs.append(r)
    cell = {"load": {"concurrency": load.concurrency, "n": load.n}, "median": _median_of_runs(runs), "runs": runs}
    m = cell["median"]
    log(f"  {server.spec.name:>19} {load.name:>7}: {m['req_per_s']:8.1f} req/s {m['img_per_s']:8.1f} img/s "
        f"p50 {m['p50_ms']:7.2f} p99 {m['p99_ms']:7.2f} ms  batch {m.get('mean_batch_rows') or 0:5.1f}  "
        f"non-2xx {m['non_2xx']}  wrk {m['wrk_cpu_pct']:.0f}%  server {m['server_cpu_pct']:.0f}%")
    return cell


PAIRED_LOAD = next(ld for ld in LOADS if ld.name == "c64")


def paired_share(server: servers.Server, model, rows: float, args: argparse.Namespace, wrk: str) -> dict:
    """The share of the limit measured side by side: ``args.pairs`` pairs of (one in-process window of
    forward + PNG at the batch size the server formed at c=64, then one c=64 run of the server),
    alternating, so both halves of a pair see the same machine. On a shared machine the limit
    measured minutes earlier can be 20% off in either direction (docs/benchmarks.md)."""
    from bench import limit

    batch = max(1, round(rows))
    padded_to = next((b for b in model.server_buckets if b >= batch), batch)  # as the server pads it
    pairs = []
    for i in range(args.pairs):
        wait_idle(server)
        lim = limit.forward_png_rate(model, batch, args.duration, png_level=args.png_level, seed=i)
        wait_idle(server)
        r = loadgen.run_wrk(wrk, server.url, PAIRED_LOAD, args.duration, 900_000_000 + i * 10_000_000, args.wrk_threads)
        pairs.append({"limit_img_per_s": lim, "server_img_per_s": r["img_per_s"], "server_p99_ms": r["p99_ms"],
                      "requests": r["requests"], "non_2xx": r["non_2xx"], "socket_errors": r["socket_errors"],
                      "valid": r["non_2xx"] == 0 and r["socket_errors"] == 0, "pct": 100.0 * r["img_per_s"] / lim})
        log(f"  paired share {i + 1}: limit {lim:7.1f} img/s at batch {batch}, latentserve c64 {r['img_per_s']:7.1f} img/s "
            f"= {pairs[-1]['pct']:.1f}%" + ("" if pairs[-1]["valid"] else "  INVALID (errors): not counted"))
    return summarize_pairs(pairs) | {"load": PAIRED_LOAD.name, "batch": batch, "padded_to": padded_to,
                                     "mean_batch_rows": rows, "seconds": args.duration, "pairs": pairs}


def summarize_pairs(pairs: list[dict]) -> dict:
    """Medians over the pairs whose server run had no error answer (None where none had)."""
    valid = [p for p in pairs if p.get("valid", True)]

    def median(key: str) -> float | None:
        return statistics.median(p[key] for p in valid) if valid else None

    return {"median_pct": median("pct"), "median_limit_img_per_s": median("limit_img_per_s"),
            "median_server_img_per_s": median("server_img_per_s"), "valid_pairs": len(valid)}


def bench_server(spec: servers.ServerSpec, port: int, args: argparse.Namespace, wrk: str, log_dir: Path, index: int,
                 limit_model=None) -> dict:
    server = servers.Server(spec, port, log_dir)
    log(f"starting {spec.name}: {' '.join(spec.argv)} (port {port})")
    result: dict = {"title": spec.title, "settings": spec.settings, "notes": spec.notes, "cells": {}}
    try:
        server.start()
        result["ready_s"] = server.wait_ready()
        time.sleep(1.0)
        result["idle_cpu_pct"] = 100 * server.measure_idle_cpu()
        result["memory_idle"] = server.memory()
        for j, load in enumerate(args.load_list):
            result["cells"][load.name] = measure_cell(server, load, args, wrk, seed_base=(index * 7 + j) * 100_000_000 % 2**30)
        formed = result["cells"].get(PAIRED_LOAD.name, {}).get("median", {}).get("mean_batch_rows")
        if limit_model is not None and formed:
            result["paired_share"] = paired_share(server, limit_model, formed, args, wrk)
        wait_idle(server)
        result["memory_after"] = server.memory()
    finally:
        server.stop()
    result["log"] = str(server.log_path)
    return result


def set_limit_omp_wait_policy(policy: str) -> None:
    """OMP_WAIT_POLICY of this process, where the limit runs. libgomp reads it once, when torch
    loads, so this comes first. The servers get PASSIVE whatever this says (bench.servers). On 2
    vCPUs a limit whose idle threads spin ran ~6% faster than a passive one (docs/benchmarks.md),
    while the server ran as fast either way: the default compares with the faster limit."""
    if "torch" in sys.modules:
        raise RuntimeError("torch is loaded already: the OpenMP wait policy can no longer be set")
    if policy == "passive":
        os.environ["OMP_WAIT_POLICY"] = "PASSIVE"
    else:
        os.environ.pop("OMP_WAIT_POLICY", None)


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    args = parse_args(argv)
    wrk = loadgen.find_wrk()
    card = args.weights_dir / f"{args.model}.json"
    if not card.is_file():
        raise SystemExit(f"{card} not found: pass --weights-dir and --model (train the model first, or write "
                         f"tiny test models with tests.conftest.write_tiny_models and use --model tiny-gan)")
    set_limit_omp_wait_policy(args.limit_omp_wait_policy)
    import torch

    from app.engine.registry import resolve_device
    from bench.baseline_fastapi import Baseline

    args.weights_dir = args.weights_dir.resolve()
    args.torch_threads = args.torch_threads or torch.get_num_threads()
    device = str(resolve_device(args.device))
    results: dict = {"machine": machine_info(args, argv, wrk, device), "limit": None, "servers": {}}
    log_dir = args.log_dir or Path(tempfile.mkdtemp(prefix="latentserve-bench-"))
    log_dir.mkdir(parents=True, exist_ok=True)
    common = servers.Common(weights_dir=args.weights_dir, model=args.model, device=device, torch_threads=args.torch_threads,
                            max_batch_rows=args.max_batch_rows, channels_last=args.channels_last)
    args.png_level = common.png_level  # the limit encodes as the servers do
    log(f"benchmark of {args.model} on {device}, {args.torch_threads} torch threads; server logs in {log_dir}")

    model = None  # the limit's model, kept for the paired share of the limit
    if not args.no_limit:
        from bench import limit

        log("in-process limit")
        batches = tuple(int(b) for b in args.limit_batches.split(",") if b.strip())
        model = limit.load(args.weights_dir, args.model, device, args.torch_threads, max_rows=max(batches),
                           channels_last=args.channels_last, server_max_rows=args.max_batch_rows or None)
        results["limit"] = limit.measure(model, batch_sizes=batches, seconds=args.limit_seconds, repeats=args.runs,
                                         png_level=args.png_level, log=log)
        results["limit"]["server_buckets"] = model.server_buckets
        if "baseline" in args.server_list and "latentserve" in args.server_list:  # the c=1 comparison's terms
            baseline = Baseline(args.weights_dir, args.model, torch.device(device), args.png_level, args.channels_last)
            results["limit"]["single_image"] = limit.single_image(model, baseline, seconds=args.limit_seconds,
                                                                  repeats=args.runs, png_level=args.png_level, log=log)
            del baseline

    for i, name in enumerate(args.server_list):
        port = servers.free_port()
        spec = {"latentserve": lambda: servers.latentserve(common, port, batching=True),
                "latentserve-nobatch": lambda: servers.latentserve(common, port, batching=False),
                "baseline": lambda: servers.baseline(common, port),
                "litserve": lambda: servers.litserve(common, port, log_dir / "litserve-stats.txt",
                                                     args.litserve_max_batch_size, args.litserve_batch_timeout),
                }[name]()
        try:
            results["servers"][name] = bench_server(spec, port, args, wrk, log_dir, i,
                                                    limit_model=model if name == "latentserve" else None)
        except RuntimeError as e:  # a server that fails does not cost the other results
            log(f"{name} FAILED: {e}")
            results["servers"][name] = {"title": spec.title, "settings": spec.settings, "notes": spec.notes,
                                        "cells": {}, "error": str(e)[-2000:]}

    results["machine"]["loadavg_end"] = Path("/proc/loadavg").read_text().split()[:3]
    results["ratios"] = report.ratios(results)
    args.out_json.parent.mkdir(parents=True, exist_ok=True)
    args.out_json.write_text(json.dumps(results, indent=2) + "\n")
    args.out_md.parent.mkdir(parents=True, exist_ok=True)
    args.out_md.write_text(report.markdown(results))
    log(f"wrote {args.out_json} and {args.out_md}")
    print(report.servers_table(results))
    invalid = [f"{s}/{ld}" for s, r in results["servers"].items() for ld, c in r["cells"].items() if not c["median"]["valid"]]
    failed = [s for s, r in results["servers"].items() if r.get("error")]
    if invalid:
        log(f"INVALID cells (non-2xx or socket errors): {', '.join(invalid)}")
    if failed:
        log(f"FAILED servers: {', '.join(failed)} (see the JSON file for the error)")
    return 1 if invalid or failed else 0


if __name__ == "__main__":
    raise SystemExit(main())
