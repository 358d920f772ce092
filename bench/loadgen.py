"""Load generation with wrk: one closed-loop run against POST .../samples, numbers read from the
JSON line bench/samples.lua prints in done() (never from wrk's human summary), plus the CPU that
wrk itself used (from wait4's rusage), so a client that starves the server shows up."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

LUA_SCRIPT = Path(__file__).resolve().parent / "samples.lua"
WRK_TIMEOUT = "30s"  # the servers' request deadline; wrk's default (2 s) would count slow answers as timeouts


@dataclass(frozen=True)
class Load:
    """One row of the servers table: `concurrency` connections, each asking for `n` images per request."""
    name: str
    concurrency: int
    n: int = 1


LOADS = (Load("c1", 1), Load("c8", 8), Load("c64", 64), Load("c256", 256), Load("c16n16", 16, 16))


def find_wrk() -> str:
    wrk = shutil.which("wrk") or ("/usr/bin/wrk" if os.path.exists("/usr/bin/wrk") else None)
    if wrk is None:
        raise SystemExit("wrk not found on PATH: install it (apt-get install wrk)")
    return wrk


def wrk_version(wrk: str) -> str:
    out = subprocess.run([wrk, "-v"], capture_output=True, text=True).stdout + ""
    return out.splitlines()[0].strip() if out else "?"


def run_get(wrk: str, url: str, load: Load, seconds: float, headers: dict[str, str] | None = None) -> dict:
    """One wrk run of GET ``url`` (the same URL every time), numbers as run_wrk's."""
    return run_wrk(wrk, url, load, seconds, 0, headers=headers, body_template="GET")


def run_wrk(wrk: str, url: str, load: Load, seconds: float, seed_base: int, threads: int = 1,
            body_template: str | None = None, headers: dict[str, str] | None = None) -> dict:
    """One wrk run: POST {"n", "seed"}, or ``body_template`` % seed, or a GET when it is "GET"
    (bench/samples.lua), with extra request ``headers``. Returns requests, req/s, img/s, latency percentiles (ms), errors and wrk's
    CPU share (user + system seconds over wall seconds, in % of one core)."""
    threads = max(1, min(threads, load.concurrency))
    extra = [arg for k, v in (headers or {}).items() for arg in ("-H", f"{k}: {v}")]
    cmd = [wrk, f"-t{threads}", f"-c{load.concurrency}", f"-d{max(1, round(seconds))}s", *extra,
           f"--timeout={WRK_TIMEOUT}", "-s", str(LUA_SCRIPT), url, "--",
           str(load.n), str(seed_base), *([] if body_template is None else [body_template])]
    with tempfile.TemporaryFile("w+") as out, tempfile.TemporaryFile("w+") as err:
        t0 = time.perf_counter()
        proc = subprocess.Popen(cmd, stdout=out, stderr=err)
        _, status, usage = os.wait4(proc.pid, 0)  # wait4 for the child's own rusage
        wall = time.perf_counter() - t0
        proc.returncode = os.waitstatus_to_exitcode(status)
        out.seek(0)
        err.seek(0)
        stdout, stderr = out.read(), err.read()
    line = next((ln for ln in stdout.splitlines() if ln.startswith("WRK_JSON ")), None)
    if proc.returncode != 0 or line is None:
        raise RuntimeError(f"wrk failed (exit {proc.returncode}): {' '.join(cmd)}\n{stdout[-2000:]}\n{stderr[-2000:]}")
    raw = json.loads(line.removeprefix("WRK_JSON "))
    duration = raw["duration_us"] / 1e6
    errors = raw["errors"]
    ok = raw["requests"] - errors["status"]
    lat = raw["latency_us"]
    return {
        "requests": raw["requests"],
        "duration_s": duration,
        "req_per_s": raw["requests"] / duration,
        "img_per_s": ok * load.n / duration,  # images in successful answers only
        "p50_ms": lat["p50"] / 1e3, "p90_ms": lat["p90"] / 1e3, "p95_ms": lat["p95"] / 1e3,
        "p99_ms": lat["p99"] / 1e3, "p999_ms": lat["p999"] / 1e3,
        "mean_ms": lat["mean"] / 1e3, "max_ms": lat["max"] / 1e3,
        # wrk counts an answer as a status error when its status is >= 400; these POST routes never
        # redirect (3xx), so this is the number of non-2xx answers
        "non_2xx": errors["status"],
        "socket_errors": errors["connect"] + errors["read"] + errors["write"] + errors["timeout"],
        "errors": errors,
        "bytes": raw["bytes"],
        "wrk_cpu_pct": 100.0 * (usage.ru_utime + usage.ru_stime) / wall,
        "wrk_threads": threads,
    }
