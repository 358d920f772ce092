"""The long reliability runs against a real server with the shipped models (GAN + VAE, CPU):

    python -m bench.reliability overload     # 4x the measured capacity for 60 s
    python -m bench.reliability disconnect   # bursts of clients that send n=64 and hang up
    python -m bench.reliability drain        # SIGTERM under load, several times
    python -m bench.reliability rolling      # SIGHUP rolling restarts of workers, pooled clients
    python -m bench.reliability soak         # 100,000 mixed requests: errors, RSS, fds, threads

Each prints its figures and writes them to bench/reliability-<run>.json; docs/reliability.md
quotes them. Load comes from wrk (bench/traffic.lua); the server's own /metrics and /proc tell
what it computed, queued and held.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections import Counter
from collections.abc import Callable
from pathlib import Path

from prometheus_client.parser import text_string_to_metric_families

from app.server.settings import Settings
from bench import rawhttp
from bench.hostile import small_png
from bench.loadgen import WRK_TIMEOUT, find_wrk
from bench.servers import (
    REPO,
    Server,
    free_port,
    http,
    latentserve_spec,
    worker_pids,
)

LUA = Path(__file__).resolve().parent / "traffic.lua"
GAN_SAMPLES = "/v1/models/fashion-gan/samples"
SAMPLES_ROUTE = "/v1/models/{model}/samples"  # the route label in the metrics


# -- the server and what /proc and /metrics say about it --

def start(settings: dict[str, str] | None = None) -> Server:
    port = free_port()
    server = Server(latentserve_spec(port, REPO / "weights", {"MODELS": "fashion-gan,fashion-vae", **(settings or {})}),
                    port, Path(tempfile.gettempdir()))
    server.start()
    server.wait_ready()
    return server


def proc_stats(pid: int) -> dict[str, float]:
    status = dict(line.split(":", 1) for line in Path(f"/proc/{pid}/status").read_text().splitlines() if ":" in line)
    return {"rss_mib": int(status["VmRSS"].split()[0]) / 1024, "peak_rss_mib": int(status["VmHWM"].split()[0]) / 1024,
            "threads": int(status["Threads"]), "fds": len(os.listdir(f"/proc/{pid}/fd"))}


def scrape(server: Server) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    _, _, body = http("GET", server.base + "/metrics")
    return {(s.name, tuple(sorted(s.labels.items()))): s.value
            for family in text_string_to_metric_families(body.decode()) for s in family.samples}


def value(metrics: dict, name: str, **labels: str) -> float:
    """Sum of the samples of ``name`` whose labels include ``labels``."""
    return sum(v for (n, ls), v in metrics.items() if n == name and labels.items() <= dict(ls).items())


def latency_buckets(before: dict, after: dict, route: str, status: str) -> dict[float, float]:
    """Cumulative counts per bucket bound (le) of requests to ``route`` answered with ``status``
    between two scrapes."""
    out: dict[float, float] = {}
    for (n, ls), v in after.items():
        labels = dict(ls)
        if n == "latentserve_request_duration_seconds_bucket" and labels.get("route") == route and labels.get("status") == status:
            out[float(labels["le"])] = v - before.get((n, ls), 0.0)
    return dict(sorted(out.items()))


def bucket_quantile(buckets: dict[float, float], q: float) -> float:
    """The upper bound of the bucket holding the q-quantile (what a histogram can say)."""
    total = max(buckets.values(), default=0.0)
    for le, count in buckets.items():
        if total and count >= q * total:
            return le
    return float("nan")


# -- wrk --

def wrk(server: Server, kind: str, connections: int, seconds: float, delay_ms: float = 0.0, seed: int = 0,
        threads: int = 1, png: Path | None = None) -> dict:
    cmd = [find_wrk(), f"-t{threads}", f"-c{connections}", f"-d{max(1, round(seconds))}s", f"--timeout={WRK_TIMEOUT}",
           "-s", str(LUA), server.base, "--", kind, str(delay_ms), str(seed), str(png or "")]
    t0 = time.perf_counter()
    proc = subprocess.run(cmd, capture_output=True, text=True, check=False)
    wall = time.perf_counter() - t0
    line = next((ln for ln in proc.stdout.splitlines() if ln.startswith("WRK_JSON ")), None)
    if proc.returncode != 0 or line is None:
        raise RuntimeError(f"wrk failed: {' '.join(cmd)}\n{proc.stdout[-2000:]}\n{proc.stderr[-2000:]}")
    raw = json.loads(line.removeprefix("WRK_JSON "))
    raw["wall_s"] = wall
    raw["duration_s"] = raw["duration_us"] / 1e6
    raw["statuses"] = {int(k): v for k, v in raw["statuses"].items()}
    raw["socket_errors"] = sum(raw["errors"][k] for k in ("connect", "read", "write", "timeout"))
    return raw


class Sampler:
    """Samples the server's /proc figures and queue gauge every ``every`` seconds in a thread."""

    def __init__(self, server: Server, every: float = 0.5):
        self.server, self.every = server, every
        self.samples: list[dict[str, float]] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        while not self._stop.is_set():
            stats = proc_stats(self.server.proc.pid)
            try:
                stats["queue_rows"] = value(scrape(self.server), "latentserve_queue_rows")
            except OSError:  # /metrics did not answer in time: no sample
                stats["queue_rows"] = -1.0
            self.samples.append(stats)
            self._stop.wait(self.every)

    def __enter__(self) -> Sampler:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(10)

    def max(self, key: str) -> float:
        return max((s[key] for s in self.samples), default=float("nan"))


def capacity(server: Server, seconds: float = 10.0) -> float:
    """Single-image requests/s at concurrency 64, closed loop, after a 3 s warm-up."""
    wrk(server, "samples", 64, 3, seed=1)
    run = wrk(server, "samples", 64, seconds, seed=2)
    return run["statuses"].get(200, 0) / run["duration_s"]


# -- the runs --

def overload(args: argparse.Namespace) -> dict:
    server = start()
    try:
        cap = capacity(server)
        time.sleep(1.0)
        # the same 1 s run the recovery check makes, here from an idle server: what "full
        # throughput within 1 s" is compared with (a fresh wrk run has its own ramp-up)
        fresh = wrk(server, "samples", 64, 1, seed=6)
        fresh_rate = fresh["statuses"].get(200, 0) / fresh["duration_s"]
        time.sleep(1.0)
        target = args.factor * cap
        connections = args.connections
        # each connection waits ~delay_ms between answer and next request: mostly fast 429s, so
        # the offered rate is close to connections / delay (measured and reported, not assumed)
        delay_ms = args.delay_ms if args.delay_ms is not None else 1000.0 * connections / target
        if args.delay_ms is None:  # one calibration step: connections / rate = delay + mean latency
            probe = wrk(server, "samples", connections, 10, delay_ms=delay_ms, seed=5)
            delay_ms = max(1.0, 1000.0 * connections / target - probe["latency_us"]["mean"] / 1000.0)
        before = scrape(server)
        idle = proc_stats(server.proc.pid)
        with Sampler(server) as sampler:
            run = wrk(server, "samples", connections, args.seconds, delay_ms=delay_ms, seed=3)
        after = scrape(server)
        # straight after the load stops: one second of the capacity load, then the queue
        recovery = wrk(server, "samples", 64, 1, seed=4)
        time.sleep(0.5)
        queue_after = value(scrape(server), "latentserve_queue_rows")
        buckets = latency_buckets(before, after, SAMPLES_ROUTE, "200")
        end = proc_stats(server.proc.pid)
    finally:
        server.stop()
    offered = run["requests"] / run["duration_s"]
    statuses = run["statuses"]
    recovered = recovery["statuses"].get(200, 0) / recovery["duration_s"]
    return {
        "settings": "defaults (MAX_QUEUE_ROWS=2048, MAX_QUEUE_WAIT_S=2, REQUEST_TIMEOUT_S=30)",
        "delay_ms_per_connection": round(delay_ms, 1),
        "capacity_req_s": round(cap, 1), "target_req_s": round(target, 1), "offered_req_s": round(offered, 1),
        "offered_over_capacity": round(offered / cap, 2), "connections": connections, "seconds": args.seconds,
        "statuses": statuses, "non_200_429": sum(v for k, v in statuses.items() if k not in (200, 429)),
        "socket_errors": run["socket_errors"], "wrk_errors": run["errors"], "429_without_retry_after": run["no_retry_after"],
        "served_req_s": round(statuses.get(200, 0) / run["duration_s"], 1),
        "accepted_latency_s": {"p50_le": bucket_quantile(buckets, 0.5), "p99_le": bucket_quantile(buckets, 0.99),
                               "max_le": bucket_quantile(buckets, 1.0), "buckets": buckets},
        "rss_mib": {"idle": round(idle["rss_mib"], 1), "max_during": round(sampler.max("rss_mib"), 1),
                    "after": round(end["rss_mib"], 1)},
        "queue_rows_max": sampler.max("queue_rows"), "queue_rows_after": queue_after,
        "first_second_from_idle_req_s": round(fresh_rate, 1),
        "recovery_first_second_req_s": round(recovered, 1),
        "recovery_over_capacity": round(recovered / cap, 2),
        "recovery_over_first_second_from_idle": round(recovered / fresh_rate, 2),
        "rows": {o: value(after, "latentserve_rows_total", model="fashion-gan", outcome=o)
                 - value(before, "latentserve_rows_total", model="fashion-gan", outcome=o)
                 for o in ("computed", "rejected", "timed_out", "cancelled", "failed")},
    }


def disconnect(args: argparse.Namespace) -> dict:
    server = start()
    n = 64  # the most images one request may ask for (MAX_IMAGES_PER_REQUEST)
    try:
        before = scrape(server)
        start_stats = proc_stats(server.proc.pid)
        body = lambda i: json.dumps({"n": n, "seed": 1000 * i}).encode()  # noqa: E731
        sent = 0
        for burst in range(args.bursts):
            # every client connects first, then all send at once and hang up after hang_up_s
            go = threading.Barrier(args.clients)
            socks = [socket.create_connection(("127.0.0.1", server.port), timeout=10) for _ in range(args.clients)]
            threads = [threading.Thread(target=rawhttp.hang_up_after,
                                        args=(s, GAN_SAMPLES, body(burst * args.clients + c), args.hang_up_s, go))
                       for c, s in enumerate(socks)]
            for t in threads:
                t.start()
            for t in threads:
                t.join(30)
            sent += args.clients
            time.sleep(args.pause_s)
        time.sleep(1.0)
        after = scrape(server)
        # the service still serves
        status, _, png = http("POST", server.base + GAN_SAMPLES, {"n": 4, "seed": 7})
        end_stats = proc_stats(server.proc.pid)
    finally:
        server.stop()
    rows = {o: value(after, "latentserve_rows_total", model="fashion-gan", outcome=o)
            - value(before, "latentserve_rows_total", model="fashion-gan", outcome=o)
            for o in ("computed", "rejected", "timed_out", "cancelled", "failed")}
    delivered = 0  # every client hung up before its answer
    return {
        "bursts": args.bursts, "clients_per_burst": args.clients, "rows_per_request": n, "hang_up_after_s": args.hang_up_s,
        "requests_sent": sent, "rows_asked": sent * n, "rows": rows, "rows_delivered": delivered,
        "rows_computed_per_burst": rows["computed"] / args.bursts,
        "one_batch_rows": Settings.model_fields["max_batch_rows"].default,  # the server runs the defaults
        "queue_rows_after": value(after, "latentserve_queue_rows"),
        "served_after": status == 200 and png.startswith(b"\x89PNG"),
        "fds": {"start": start_stats["fds"], "end": end_stats["fds"]},
        "threads": {"start": start_stats["threads"], "end": end_stats["threads"]},
        "rss_mib": {"start": round(start_stats["rss_mib"], 1), "end": round(end_stats["rss_mib"], 1)},
    }


def drain(args: argparse.Namespace) -> dict:
    cycles = []
    for cycle in range(args.cycles):
        server = start({"DRAIN_TIMEOUT_S": "25", "WORKERS": str(args.workers)})
        outcomes: Counter[str] = Counter()
        bad: list[str] = []
        stop, lock, termed = threading.Event(), threading.Lock(), threading.Event()

        def client(worker: int, server: Server = server, outcomes: Counter = outcomes, bad: list = bad,
                   stop: threading.Event = stop, lock: threading.Lock = lock, termed: threading.Event = termed) -> None:
            i = 0
            while not stop.is_set():
                i += 1
                kind, payload = rawhttp.post(server.port, GAN_SAMPLES, json.dumps({"n": 8, "seed": worker * 10**6 + i}).encode())
                with lock:
                    outcomes[kind] += 1
                    if kind == "200" and not payload.startswith(b"\x89PNG"):
                        bad.append("200 without a PNG")
                    elif kind in ("refused", "reset") and not termed.is_set():
                        bad.append(f"{kind} before SIGTERM")
                    elif kind not in ("200", "503", "refused", "reset"):
                        bad.append(f"{kind}: {payload[:200]!r}")
                if kind in ("refused", "reset"):
                    time.sleep(0.01)

        threads = [threading.Thread(target=client, args=(w,), daemon=True) for w in range(args.clients)]
        for t in threads:
            t.start()
        time.sleep(args.load_s)
        with lock:
            before = outcomes["200"]
        termed.set()
        t0 = time.monotonic()
        os.kill(server.proc.pid, signal.SIGTERM)
        code = server.proc.wait(60)
        exit_s = time.monotonic() - t0
        time.sleep(0.5)
        stop.set()
        for t in threads:
            t.join(60)
        server.stop()
        cycles.append({"cycle": cycle, "exit_status": code, "exit_after_sigterm_s": round(exit_s, 2),
                       "ok_before_sigterm": before, "outcomes": dict(outcomes), "problems": bad[:5],
                       "cut_off": outcomes["cut_off"]})
        print(json.dumps(cycles[-1]), flush=True)
    return {"clients": args.clients, "workers": args.workers, "load_s_before_sigterm": args.load_s, "cycles": cycles,
            "requests": sum(sum(c["outcomes"].values()) for c in cycles),
            "cut_off": sum(c["cut_off"] for c in cycles), "problems": sum(len(c["problems"]) for c in cycles),
            "all_exit_0": all(c["exit_status"] == 0 for c in cycles)}


def soak(args: argparse.Namespace) -> dict:
    server = start()
    png = Path(tempfile.gettempdir()) / "latentserve-soak.png"
    png.write_bytes(small_png())
    chunks, statuses, total, socket_errors = [], Counter(), 0, 0
    try:
        wrk(server, "mixed", args.connections, 5, seed=0, png=png)  # warm-up, not counted
        time.sleep(2.0)  # let the server close the warm-up's connections before counting fds
        baseline = proc_stats(server.proc.pid)
        t0 = time.monotonic()
        i = 0
        while total < args.requests:
            i += 1
            run = wrk(server, "mixed", args.connections, args.chunk_s, seed=i * 10**6, png=png)
            total += run["requests"]
            statuses.update(run["statuses"])
            socket_errors += run["socket_errors"]
            stats = proc_stats(server.proc.pid)
            chunks.append({"requests": total, "req_s": round(run["requests"] / run["duration_s"], 1),
                           **{k: round(v, 1) for k, v in stats.items()}})
            print(json.dumps(chunks[-1]), flush=True)
        elapsed = time.monotonic() - t0
        time.sleep(2.0)
        end = proc_stats(server.proc.pid)
        metrics = scrape(server)
    finally:
        server.stop()
    return {
        "requests": total, "seconds": round(elapsed, 1), "connections": args.connections,
        "statuses": dict(statuses), "errors": sum(v for k, v in statuses.items() if k != 200) + socket_errors,
        "socket_errors": socket_errors,
        "mix": "8 kinds in turn: GAN sample PNG, VAE samples JSON+latents (n=4), GET samples.png grid (n=4), VAE decode, "
               "GAN interpolate GIF (4 frames), VAE encode (PNG upload), GET /v1/models, GET /readyz",
        "baseline_after_warmup": {k: round(v, 1) for k, v in baseline.items()},
        "end": {k: round(v, 1) for k, v in end.items()},
        "rss_growth_mib": round(end["rss_mib"] - baseline["rss_mib"], 1),
        "rss_growth_after_first_chunk_mib": round(end["rss_mib"] - chunks[0]["rss_mib"], 1),
        "fd_growth": end["fds"] - baseline["fds"], "thread_growth": end["threads"] - baseline["threads"],
        "median_req_s": statistics.median(c["req_s"] for c in chunks),
        "rows_computed": {m: value(metrics, "latentserve_rows_total", model=m, outcome="computed")
                          for m in ("fashion-gan", "fashion-vae")},
        "chunks": chunks,
    }


def rolling(args: argparse.Namespace) -> dict:
    """SIGHUP rolling restarts of a WORKERS server while clients keep connections alive between
    requests, as a gateway's or a client library's pool does: a connection that a stopping worker
    closes just as its client sends the next request loses that request (a disconnect with no
    answer), and a POST is not retried by clients."""
    import httpx

    server = start({"WORKERS": str(max(2, args.workers))})
    outcomes: Counter[str] = Counter()
    stop, lock = threading.Event(), threading.Lock()

    def client(worker: int) -> None:
        with httpx.Client(base_url=server.base, timeout=30) as c:  # one pooled connection
            i = 0
            while not stop.is_set():
                i += 1
                try:
                    r = c.post(GAN_SAMPLES, json={"seed": worker * 10**6 + i})
                    kind = str(r.status_code) if r.status_code != 200 or r.content.startswith(b"\x89PNG") else "200 without a PNG"
                except httpx.HTTPError as e:
                    kind = type(e).__name__
                with lock:
                    outcomes[kind] += 1

    threads = [threading.Thread(target=client, args=(w,), daemon=True) for w in range(args.clients)]
    cycles = []
    try:
        for t in threads:
            t.start()
        time.sleep(2.0)
        for cycle in range(args.cycles):
            with lock:
                before = Counter(outcomes)
            old = set(worker_pids(server.proc.pid))
            t0 = time.monotonic()
            os.kill(server.proc.pid, signal.SIGHUP)
            while set(worker_pids(server.proc.pid)) & old and time.monotonic() - t0 < 300:
                time.sleep(0.1)
            replaced_s = time.monotonic() - t0
            time.sleep(2.0)
            with lock:
                during = dict(Counter(outcomes) - before)
            cycles.append({"cycle": cycle, "all_replaced": not set(worker_pids(server.proc.pid)) & old,
                           "replaced_after_s": round(replaced_s, 2), "outcomes": during,
                           "lost": sum(n for k, n in during.items() if k != "200")})
            print(json.dumps(cycles[-1]), flush=True)
    finally:
        stop.set()
        for t in threads:
            t.join(60)
        os.kill(server.proc.pid, signal.SIGTERM)
        code = server.proc.wait(60)
        server.stop()
    return {"clients": args.clients, "workers": max(2, args.workers), "cycles": cycles, "exit_status": code,
            "requests": sum(sum(c["outcomes"].values()) for c in cycles), "lost": sum(c["lost"] for c in cycles),
            "all_replaced": all(c["all_replaced"] for c in cycles)}


RUNS: dict[str, Callable[[argparse.Namespace], dict]] = {"overload": overload, "disconnect": disconnect, "drain": drain,
                                                         "rolling": rolling, "soak": soak}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m bench.reliability", description=__doc__.split("\n\n")[0])
    ap.add_argument("run", choices=sorted(RUNS))
    ap.add_argument("--seconds", type=float, default=60.0, help="overload: seconds of overload")
    ap.add_argument("--factor", type=float, default=4.0, help="overload: offered load over the measured capacity")
    ap.add_argument("--connections", type=int, default=None, help="overload: 2048; soak: 16")
    ap.add_argument("--delay-ms", type=float, default=None, help="overload: mean pause per connection (default: connections / target rate)")
    ap.add_argument("--bursts", type=int, default=20, help="disconnect: bursts of clients")
    ap.add_argument("--clients", type=int, default=None, help="disconnect: clients per burst (100); drain: load clients (32); rolling: pooled clients (8)")
    ap.add_argument("--hang-up-s", type=float, default=0.02, help="disconnect: seconds before a client hangs up")
    ap.add_argument("--pause-s", type=float, default=0.5, help="disconnect: pause between bursts")
    ap.add_argument("--cycles", type=int, default=5, help="drain: start, load, SIGTERM cycles; rolling: SIGHUPs")
    ap.add_argument("--load-s", type=float, default=10.0, help="drain: seconds of load before each SIGTERM")
    ap.add_argument("--workers", type=int, default=1, help="drain: LATENTSERVE_WORKERS of the server (default 1); rolling: at least 2")
    ap.add_argument("--requests", type=int, default=100_000, help="soak: requests in all")
    ap.add_argument("--chunk-s", type=float, default=30.0, help="soak: seconds per wrk run between samples")
    ap.add_argument("--out", type=Path, default=None)
    args = ap.parse_args(argv)
    args.connections = args.connections or (2048 if args.run == "overload" else 16)
    args.clients = args.clients or {"disconnect": 100, "rolling": 8}.get(args.run, 32)
    t0 = time.time()
    result = RUNS[args.run](args)
    report = {"run": args.run, "command": "python -m bench.reliability " + " ".join(argv if argv is not None else sys.argv[1:]),
              "date": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(t0)), "wall_s": round(time.time() - t0, 1),
              "cpus": os.cpu_count(), **result}
    name = f"{args.run}-workers" if args.run == "drain" and args.workers > 1 else args.run  # not over the 1-process run
    out = args.out or REPO / "bench" / f"reliability-{name}.json"
    out.write_text(json.dumps(report, indent=2, default=str) + "\n")
    print(json.dumps({k: v for k, v in report.items() if k not in ("chunks", "cycles")}, indent=2, default=str))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
