"""The servers under test as subprocesses: how each is started, waiting until it serves, reading
its /metrics (latentserve) or stats file (LitServe), its memory and CPU from /proc, and stopping
it with its whole process group (LitServe runs several processes)."""

from __future__ import annotations

import json
import os
import re
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO

REPO = Path(__file__).resolve().parent.parent
CLK_TCK = os.sysconf("SC_CLK_TCK")
PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


@dataclass(frozen=True)
class Common:
    """What every server gets: the same weights, model, device, torch threads and PNG level."""
    weights_dir: Path
    model: str
    device: str
    torch_threads: int
    png_level: int = 1
    max_queue_rows: int = 4096
    max_batch_rows: int = 0  # latentserve's MAX_BATCH_ROWS; 0 = its default
    channels_last: bool = True  # NHWC convolution weights on a CPU, for every server (latentserve's default)


@dataclass
class ServerSpec:
    name: str
    title: str
    argv: list[str]
    env: dict[str, str]
    ready_path: str | None  # GET until 200; None: POST a sample until 200
    sample_path: str
    metrics: str | None = None  # "prometheus" (latentserve /metrics) or "stats-file" (bench/litserve_server.py)
    stats_file: Path | None = None
    notes: str = ""
    settings: dict[str, str] = field(default_factory=dict)  # what is shown in the report
    cwd: Path | None = None  # where it starts (default: this repository; bench.ab: another revision's tree)


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def child_pythonpath(tree: Path = REPO) -> str:
    """PYTHONPATH for a child process: the repository (or another revision's tree) first, then the
    caller's own entries (wheels carried to a bare machine live there)."""
    return os.pathsep.join([str(tree), *filter(None, [os.environ.get("PYTHONPATH")])])


def _base_env() -> dict[str, str]:
    """This environment without LATENTSERVE_* and BENCH_* (a stray one would change what is measured)."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("LATENTSERVE_") and not k.startswith("BENCH_")}
    env["PYTHONPATH"] = child_pythonpath()
    env["PYTHONUNBUFFERED"] = "1"
    # every server's idle OpenMP threads sleep, as latentserve's do (app/__main__.py), whatever
    # the limit in this process uses (bench.run --limit-omp-wait-policy)
    env["OMP_WAIT_POLICY"] = "PASSIVE"
    return env


def latentserve_spec(port: int, weights_dir: Path, settings: dict[str, str], name: str = "latentserve",
                     title: str = "latentserve", notes: str = "") -> ServerSpec:
    """``python -m app`` on 127.0.0.1:port with LATENTSERVE_<key> for each of ``settings``
    (MODELS first in the list is the one sampled by wait_ready); access logs off."""
    full = {"PORT": str(port), "HOST": "127.0.0.1", "WEIGHTS_DIR": str(weights_dir), "LOG_LEVEL": "warning", **settings}
    env = {**_base_env(), **{f"LATENTSERVE_{k}": v for k, v in full.items()}}
    shown = {f"LATENTSERVE_{k}": v for k, v in settings.items() if k not in ("LOG_LEVEL",)}
    model = settings.get("MODELS", "fashion-gan").split(",")[0]
    return ServerSpec(name=name, title=title, argv=[sys.executable, "-m", "app"], env=env, ready_path="/readyz",
                      sample_path=f"/v1/models/{model}/samples", metrics="prometheus", settings=shown, notes=notes)


def latentserve(common: Common, port: int, batching: bool) -> ServerSpec:
    # throughput and latency are measured, not load shedding: the queue bounds are set out of reach
    settings = {"MODELS": common.model, "DEVICE": common.device, "TORCH_THREADS": str(common.torch_threads),
                "MAX_QUEUE_ROWS": str(common.max_queue_rows), "MAX_QUEUE_WAIT_S": "0",
                "CHANNELS_LAST": str(common.channels_last).lower(),
                "PNG_COMPRESS_LEVEL": str(common.png_level)}
    if not batching:
        settings.update(MAX_BATCH_ROWS="1", MIN_BATCH_ROWS="1")
    elif common.max_batch_rows:
        settings.update(MAX_BATCH_ROWS=str(common.max_batch_rows))
    return latentserve_spec(
        port, common.weights_dir, settings,
        name="latentserve" if batching else "latentserve-nobatch",
        title="latentserve" if batching else "latentserve, batching off",
        notes="defaults otherwise (MAX_BATCH_ROWS=32, MIN_BATCH_ROWS=1 raised by the warm-up calibration, MAX_WAIT_MS=2, PNG_THREADS=2, TORCHSCRIPT=true: the pass as one TorchScript graph, CHANNELS_LAST=true: NHWC convolutions on a CPU, SPLIT_PASSES=true: on a CPU, a pass of 2+ rows as one part per torch thread, one thread each)" if batching
        else "every request row runs in its own forward pass of 1 row")


def _layout_note(common: Common) -> str:
    return "; NHWC convolution weights on a CPU, as latentserve's" if common.channels_last else ""


def _bench_env(common: Common, port: int) -> dict[str, str]:
    return {**_base_env(), "BENCH_PORT": str(port), "BENCH_WEIGHTS_DIR": str(common.weights_dir),
            "BENCH_MODEL": common.model, "BENCH_DEVICE": common.device,
            "BENCH_TORCH_THREADS": str(common.torch_threads), "BENCH_PNG_LEVEL": str(common.png_level),
            "BENCH_CHANNELS_LAST": "1" if common.channels_last else "0"}


def baseline(common: Common, port: int) -> ServerSpec:
    argv = [sys.executable, "-m", "uvicorn", "bench.baseline_fastapi:app", "--host", "127.0.0.1", "--port", str(port),
            "--workers", "1", "--log-level", "warning", "--no-access-log"]
    return ServerSpec(name="baseline", title="plain FastAPI (no batching)", argv=argv, env=_bench_env(common, port),
                      ready_path=None, sample_path=f"/v1/models/{common.model}/samples",
                      notes="sync endpoint in FastAPI's threadpool, one forward pass per request" + _layout_note(common))


def litserve(common: Common, port: int, stats_file: Path, max_batch_size: int = 64, batch_timeout: float = 0.005) -> ServerSpec:
    tmp = stats_file.parent / "litserve-tmp"  # its multiprocessing Manager leaves pymp-* folders behind when killed
    tmp.mkdir(parents=True, exist_ok=True)
    env = {**_bench_env(common, port), "BENCH_STATS_FILE": str(stats_file), "TMPDIR": str(tmp),
           "BENCH_MAX_BATCH_SIZE": str(max_batch_size), "BENCH_BATCH_TIMEOUT": str(batch_timeout)}
    return ServerSpec(name="litserve", title="LitServe", argv=[sys.executable, "-m", "bench.litserve_server"], env=env,
                      ready_path="/health", sample_path=f"/v1/models/{common.model}/samples", metrics="stats-file",
                      stats_file=stats_file,
                      settings={"max_batch_size": str(max_batch_size), "batch_timeout": str(batch_timeout)},
                      notes="1 inference worker + 1 API server process; batches count requests, not rows" + _layout_note(common))


# -- /proc --
def children_map() -> dict[int, list[int]]:
    kids: dict[int, list[int]] = {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            stat = Path(f"/proc/{entry}/stat").read_text()
        except OSError:
            continue
        ppid = int(stat.rsplit(")", 1)[1].split()[1])
        kids.setdefault(ppid, []).append(int(entry))
    return kids


def process_tree(pid: int) -> list[int]:
    kids, tree, todo = children_map(), [], [pid]
    while todo:
        p = todo.pop()
        tree.append(p)
        todo.extend(kids.get(p, []))
    return tree


def is_worker(pid: int) -> bool:
    """A live worker process of ``LATENTSERVE_WORKERS`` (multiprocessing's spawn; an exited one,
    even unreaped, has no command line)."""
    try:
        return b"spawn_main" in Path(f"/proc/{pid}/cmdline").read_bytes()
    except OSError:
        return False


def worker_pids(parent: int) -> list[int]:
    """The worker processes of a latentserve supervisor (not multiprocessing's resource tracker,
    also its child)."""
    return sorted(pid for pid in children_map().get(parent, []) if is_worker(pid))


def proc_kb(pid: int, file: str, field: str) -> int:
    """The KiB figure of ``field`` (e.g. "VmRSS:") in /proc/<pid>/<file>; 0 if the process is gone."""
    try:
        for line in Path(f"/proc/{pid}/{file}").read_text().splitlines():
            if line.startswith(field):
                return int(line.split()[1])
    except OSError:
        pass
    return 0


def rss_kb(pid: int) -> int:
    return proc_kb(pid, "status", "VmRSS:")


def pss_kb(pid: int) -> int:
    """Proportional set size in KiB: pages shared between processes (torch's libraries in
    LitServe's several processes) count once, split between them, where VmRSS counts them in each."""
    return proc_kb(pid, "smaps_rollup", "Pss:")


def machine_cpu_seconds() -> tuple[float, float]:
    """(busy, steal) CPU seconds of the whole machine so far, all CPUs, from /proc/stat: busy is
    user + nice + system + irq + softirq (guest time is inside user), steal is what the hypervisor
    gave to other guests."""
    fields = [int(x) for x in Path("/proc/stat").read_text().splitlines()[0].split()[1:]]
    user, nice, system, _idle, _iowait, irq, softirq, steal = (fields + [0] * 8)[:8]
    return (user + nice + system + irq + softirq) / CLK_TCK, steal / CLK_TCK


def cpu_seconds(pids: list[int]) -> float:
    total = 0
    for pid in pids:
        try:
            fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        total += int(fields[11]) + int(fields[12])  # utime, stime (fields 14 and 15 of stat)
    return total / CLK_TCK


# -- HTTP --
def http(method: str, url: str, body: dict | None = None, timeout: float = 10.0) -> tuple[int, dict[str, str], bytes]:
    data = None if body is None else json.dumps(body).encode()
    req = urllib.request.Request(url, data=data, method=method,
                                 headers={"Content-Type": "application/json"} if data else {})
    try:
        with urllib.request.urlopen(req, timeout=timeout) as r:
            return r.status, {k.lower(): v for k, v in r.headers.items()}, r.read()
    except urllib.error.HTTPError as e:
        return e.code, {k.lower(): v for k, v in e.headers.items()}, e.read()


class Server:
    """A running server subprocess, in its own process group."""

    def __init__(self, spec: ServerSpec, port: int, log_dir: Path):
        self.spec = spec
        self.port = port
        self.base = f"http://127.0.0.1:{port}"
        self.log_path = log_dir / f"{spec.name}.log"
        self.proc: subprocess.Popen | None = None
        self.idle_cores = 0.0  # CPU use while idle, measured after start-up
        self._log: IO[bytes] | None = None

    @property
    def url(self) -> str:
        return self.base + self.spec.sample_path

    def start(self) -> None:
        self._log = open(self.log_path, "wb")
        # children inherit this process's niceness (run the harness under `nice -n 19` on a shared box)
        self.proc = subprocess.Popen(self.spec.argv, cwd=self.spec.cwd or REPO, env=self.spec.env, stdout=self._log,
                                     stderr=subprocess.STDOUT, start_new_session=True)

    def log_tail(self, chars: int = 3000) -> str:
        try:
            return self.log_path.read_text(errors="replace")[-chars:]
        except OSError:
            return ""

    def wait_ready(self, timeout_s: float = 180.0) -> float:
        """Poll the readiness path until 200, then check that one sample comes back as a PNG.
        Returns the seconds it took to become ready."""
        t0 = time.monotonic()
        while True:
            if self.proc.poll() is not None:
                raise RuntimeError(f"{self.spec.name} exited with {self.proc.returncode} while starting:\n{self.log_tail()}")
            try:
                if self.spec.ready_path is None:
                    status, _, _ = http("POST", self.url, {"n": 1, "seed": 0}, timeout=5.0)
                else:
                    status, _, _ = http("GET", self.base + self.spec.ready_path, timeout=2.0)
                if status == 200:
                    break
            except (OSError, urllib.error.URLError):
                pass
            if time.monotonic() - t0 > timeout_s:
                raise RuntimeError(f"{self.spec.name} not ready after {timeout_s:.0f} s:\n{self.log_tail()}")
            time.sleep(0.1)
        ready_s = time.monotonic() - t0
        for n in (1, 16):
            status, headers, body = http("POST", self.url, {"n": n, "seed": 1}, timeout=30.0)
            if status != 200 or headers.get("content-type") != "image/png" or not body.startswith(PNG_SIGNATURE):
                raise RuntimeError(f"{self.spec.name}: a sample request (n={n}) gave {status} "
                                   f"{headers.get('content-type')}: {body[:300]!r}")
        return ready_s

    def pids(self) -> list[int]:
        return process_tree(self.proc.pid)

    def memory(self) -> dict[str, int]:
        """VmRSS in KiB of the started process and of its whole process tree, and the tree's PSS."""
        pids = self.pids()
        return {"main_kb": rss_kb(self.proc.pid), "tree_kb": sum(rss_kb(p) for p in pids),
                "tree_pss_kb": sum(pss_kb(p) for p in pids), "processes": len(pids)}

    def cpu_seconds(self) -> float:
        return cpu_seconds(self.pids())

    def measure_idle_cpu(self, seconds: float = 1.0) -> float:
        """CPU the server's processes use while nobody asks anything, in cores (LitServe polls);
        kept as the baseline of wait_idle."""
        c0 = self.cpu_seconds()
        time.sleep(seconds)
        self.idle_cores = (self.cpu_seconds() - c0) / seconds
        return self.idle_cores

    def wait_idle(self, max_s: float = 15.0) -> bool:
        """Until the server's processes use less than 0.15 cores above their idle use over 0.2 s:
        requests a previous run left behind (wrk drops its connections at the end; a threadpool
        keeps working) must not count in the next one. False if still busy after ``max_s``."""
        threshold = 0.2 * (self.idle_cores + 0.15)
        deadline = time.monotonic() + max_s
        while time.monotonic() < deadline:
            c0 = self.cpu_seconds()
            time.sleep(0.2)
            if self.cpu_seconds() - c0 < threshold:
                return True
        return False

    def batch_counters(self) -> tuple[float, float] | None:
        """(forward passes, rows) so far, or None where the server does not tell."""
        if self.spec.metrics == "prometheus":
            _, _, body = http("GET", self.base + "/metrics")
            return parse_batch_rows(body.decode(), self.spec.env.get("LATENTSERVE_MODELS", ""))
        if self.spec.metrics == "stats-file":
            try:
                batches, rows, _requests = self.spec.stats_file.read_text().split()
                return float(batches), float(rows)
            except (OSError, ValueError):
                return 0.0, 0.0
        return None

    def stop(self, timeout_s: float = 20.0) -> None:
        if self.proc is None:
            return
        if self.proc.poll() is None:
            try:
                os.killpg(self.proc.pid, signal.SIGTERM)
            except ProcessLookupError:
                pass
            try:
                self.proc.wait(timeout_s)
            except subprocess.TimeoutExpired:
                pass
        try:  # whatever of the group is left (LitServe's workers, a hung drain)
            os.killpg(self.proc.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        if self.proc.poll() is None:
            self.proc.wait(5)
        if self._log:
            self._log.close()


def parse_batch_rows(text: str, model: str) -> tuple[float, float]:
    """(count, sum) of latentserve_batch_rows{model=...} from Prometheus text."""
    values = {}
    for suffix in ("count", "sum"):
        m = re.search(rf'^latentserve_batch_rows_{suffix}\{{model="{re.escape(model)}"\}} (\S+)$', text, re.MULTILINE)
        values[suffix] = float(m.group(1)) if m else 0.0
    return values["count"], values["sum"]
