"""End to end: the real ``python -m app`` process under uvicorn, over TCP."""

from __future__ import annotations

import concurrent.futures
import io
import signal
import subprocess
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from PIL import Image

from tests.conftest import start_server, wait_ready


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
