"""End to end: the real ``python -m app`` process under uvicorn, over TCP."""

from __future__ import annotations

import concurrent.futures
import io
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from PIL import Image

from bench.servers import child_pythonpath

ROOT = Path(__file__).resolve().parent.parent


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start_server(weights: Path, **env: str) -> tuple[subprocess.Popen, str]:
    port = free_port()
    environ = {**os.environ, "PYTHONPATH": child_pythonpath(), "LATENTSERVE_WEIGHTS_DIR": str(weights),
               "LATENTSERVE_PORT": str(port), "LATENTSERVE_HOST": "127.0.0.1", "LATENTSERVE_TORCH_THREADS": "1",
               # access logs at load would fill the unread stdout pipe and block the server
               "LATENTSERVE_LOG_LEVEL": "warning", **env}
    proc = subprocess.Popen([sys.executable, "-m", "app"], cwd=ROOT, env=environ,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    return proc, f"http://127.0.0.1:{port}"


def wait_ready(proc: subprocess.Popen, base: str, timeout: float = 60.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        assert proc.poll() is None, proc.stdout.read()
        try:
            if httpx.get(f"{base}/readyz", timeout=1).status_code == 200:
                return
        except httpx.TransportError:
            pass
        time.sleep(0.1)
    raise AssertionError("server did not become ready")


@pytest.fixture
def server(tiny_weights: Path) -> Iterator[tuple[subprocess.Popen, str]]:
    proc, base = start_server(tiny_weights)
    try:
        wait_ready(proc, base)
        yield proc, base
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(10)


@pytest.mark.e2e
def test_real_server_serves_batches_and_exits_cleanly_on_sigterm(server):
    proc, base = server
    with httpx.Client(base_url=base, timeout=30) as c:
        assert c.get("/healthz").json()["status"] == "ok"
        r = c.get("/v1/models/tiny-gan/samples.png", params={"seed": 3, "label": "Bag"})
        assert r.status_code == 200 and Image.open(io.BytesIO(r.content)).size == (28, 28)
        alone = r.content

    def one(i: int) -> bytes:
        with httpx.Client(base_url=base, timeout=30) as c:
            resp = c.post("/v1/models/tiny-gan/samples", json={"seed": 3 if i % 2 else 100 + i, "labels": 8})
            assert resp.status_code == 200
            return resp.content

    with concurrent.futures.ThreadPoolExecutor(16) as pool:
        results = list(pool.map(one, range(48)))
    assert all(results[i] == alone for i in range(1, 48, 2))
    with httpx.Client(base_url=base, timeout=30) as c:
        metrics = c.get("/metrics").text
    line = next(l for l in metrics.splitlines() if l.startswith('latentserve_batch_rows_sum{model="tiny-gan"}'))
    assert float(line.split()[-1]) >= 49
    # a single process has no workers to restart: SIGHUP's default action killed it mid-request
    proc.send_signal(signal.SIGHUP)
    with httpx.Client(base_url=base, timeout=30) as c:
        for _ in range(5):
            assert c.get("/readyz").status_code == 200
        assert c.get("/v1/models/tiny-gan/samples.png", params={"seed": 3, "label": "Bag"}).content == alone
    proc.send_signal(signal.SIGTERM)
    assert proc.wait(30) == 0
    assert "SIGHUP ignored" in proc.stdout.read()


@pytest.mark.e2e
def test_bad_weights_stop_startup_with_one_line(tmp_path: Path, tiny_weights: Path):
    for f in tiny_weights.iterdir():
        (tmp_path / f.name).write_bytes(f.read_bytes())
    blob = tmp_path / "tiny-gan.safetensors"
    blob.write_bytes(blob.read_bytes()[:-10] + b"0123456789")
    proc, _ = start_server(tmp_path)
    out, _ = proc.communicate(timeout=60)
    assert proc.returncode == 1
    lines = [l for l in out.strip().splitlines() if l]
    assert len(lines) == 1 and "tiny-gan.safetensors" in lines[0] and "sha256" in lines[0]
