"""Replicas on one device: K latentserve processes (each with its own port, event loop and copy of
the model on the device) loaded at once by K wrk processes that split one total concurrency
evenly. Prints, per K, the total images/s and the worst replica's p99.

Why: on a GPU one process is bound by its event loop (one core at 100% at c=64), not by the
device, so a GPU host reaches the device's capacity with several replicas behind the gateway
(docs/benchmarks.md, GPU). ``python -m bench.replicas --device cuda --replicas 1,2,4,8``.

With ``--workers``, K is instead ``LATENTSERVE_WORKERS=K``: one server, K worker processes behind
one port, loaded by one wrk at the total concurrency (app/server/workers.py)."""

from __future__ import annotations

import argparse
import json
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from bench import loadgen, servers
from bench.loadgen import Load

REPO = Path(__file__).resolve().parent.parent


def gpu_memory_mib() -> dict[int, int]:
    """MiB of device memory per process id, from nvidia-smi (empty where there is none)."""
    if shutil.which("nvidia-smi") is None:
        return {}
    out = subprocess.run(["nvidia-smi", "--query-compute-apps=pid,used_memory", "--format=csv,noheader,nounits"],
                         capture_output=True, text=True, check=False).stdout
    return {int(p): int(m) for p, m in (line.split(",") for line in out.splitlines() if "," in line)}


def measure(k: int, args: argparse.Namespace, wrk: str, log_dir: Path) -> dict:
    common = servers.Common(weights_dir=args.weights_dir, model=args.model, device=args.device,
                            torch_threads=args.torch_threads, max_batch_rows=args.max_batch_rows)
    group = []
    for i in range(1 if args.workers else k):
        port = servers.free_port()
        spec = servers.latentserve(common, port, batching=True)
        spec.name = f"latentserve-{k}{'w' if args.workers else 'x'}-{i}"
        if args.workers:
            spec.env["LATENTSERVE_WORKERS"] = str(k)
        group.append(servers.Server(spec, port, log_dir))
    load = Load(f"c{args.concurrency // len(group)}", args.concurrency // len(group))
    try:
        for s in group:
            s.start()
        for s in group:
            s.wait_ready()
            if args.workers:  # /readyz answers for one worker; this gauge counts them
                wait_all_workers_ready(s, k)
        memory = gpu_memory_mib()
        with ThreadPoolExecutor(len(group)) as pool:
            def wave(seconds: float, seed: int) -> list[dict]:
                return list(pool.map(lambda i: loadgen.run_wrk(wrk, group[i].url, load, seconds, seed + i * 1_000_000),
                                     range(len(group))))
            wave(args.warmup, 0)  # not counted
            runs = []
            for r in range(args.runs):
                c0 = sum(s.cpu_seconds() for s in group)
                t0 = time.perf_counter()
                results = wave(args.duration, (r + 1) * 100_000_000)
                cpu = 100.0 * (sum(s.cpu_seconds() for s in group) - c0) / (time.perf_counter() - t0)
                runs.append({"img_per_s": sum(x["img_per_s"] for x in results),
                             "p50_ms": statistics.median(x["p50_ms"] for x in results),
                             "p99_ms": max(x["p99_ms"] for x in results),
                             "non_2xx": sum(x["non_2xx"] for x in results),
                             "socket_errors": sum(x["socket_errors"] for x in results),
                             "server_cpu_pct": cpu})
        # per serving process: the workers (not the supervisor) in --workers mode
        serving = [p for s in group for p in ((args.workers and servers.worker_pids(s.proc.pid)) or [s.proc.pid])]
        rss = [servers.rss_kb(p) / 1024 for p in serving]
    finally:
        for s in group:
            s.stop()
    med = {key: statistics.median(r[key] for r in runs) for key in ("img_per_s", "p50_ms", "p99_ms", "server_cpu_pct")}
    on_device = [memory[p] for p in serving if p in memory]
    row = {"replicas": k, "workers_mode": args.workers, "concurrency_each": load.concurrency, **med,
           "non_2xx": sum(r["non_2xx"] for r in runs), "socket_errors": sum(r["socket_errors"] for r in runs),
           "rss_mib_each": statistics.median(rss), "device_mib_each": statistics.median(on_device) if on_device else None,
           "runs": runs}
    what = f"1 server x {k} worker(s)" if args.workers else f"{k} replica(s)"
    print(f"  {what} x c={load.concurrency}: {med['img_per_s']:9.1f} img/s  p50 {med['p50_ms']:7.2f}  "
          f"worst p99 {med['p99_ms']:7.2f} ms  CPU {med['server_cpu_pct']:.0f}%  non-2xx {row['non_2xx']}  "
          f"RSS {row['rss_mib_each']:.0f} MiB each, device {row['device_mib_each']} MiB each", flush=True)
    return row


def wait_all_workers_ready(server: servers.Server, workers: int, timeout_s: float = 180.0) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        _, _, body = servers.http("GET", server.base + "/metrics")
        if f"\nlatentserve_workers_ready {workers}.0\n".encode() in body:
            return
        time.sleep(0.2)
    raise RuntimeError(f"{server.spec.name}: not every worker was ready after {timeout_s:.0f} s:\n{server.log_tail()}")


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m bench.replicas", description=__doc__.split("\n\n")[0])
    p.add_argument("--device", default="cuda")
    p.add_argument("--replicas", default="1,2,4,8")
    p.add_argument("--concurrency", type=int, default=256, help="total connections, split evenly (default 256)")
    p.add_argument("--duration", type=float, default=5.0)
    p.add_argument("--runs", type=int, default=3)
    p.add_argument("--warmup", type=float, default=1.0)
    p.add_argument("--torch-threads", type=int, default=2, help="per replica (default 2: the device does the work)")
    p.add_argument("--max-batch-rows", type=int, default=256)
    p.add_argument("--weights-dir", type=Path, default=REPO / "weights")
    p.add_argument("--model", default="fashion-gan")
    p.add_argument("--workers", action="store_true",
                   help="K worker processes of one server behind one port (LATENTSERVE_WORKERS=K), not K servers")
    p.add_argument("--out-json", type=Path, default=Path("replicas.json"))
    args = p.parse_args(argv)
    args.weights_dir = args.weights_dir.resolve()
    wrk = loadgen.find_wrk()
    log_dir = Path(tempfile.mkdtemp(prefix="latentserve-replicas-"))
    print(f"{'workers' if args.workers else 'replicas'} of {args.model} on {args.device}, total c={args.concurrency}, "
          f"single-image PNG requests; "
          f"logs in {log_dir}", flush=True)
    rows = []
    for k in (int(x) for x in args.replicas.split(",")):
        rows.append(measure(k, args, wrk, log_dir))
        args.out_json.write_text(json.dumps({"argv": sys.argv, "rows": rows}, indent=2) + "\n")
    bad = [r["replicas"] for r in rows if r["non_2xx"] or r["socket_errors"]]
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main())
