"""Graceful shutdown under load, with a real uvicorn process: after SIGTERM every request either
is refused before it is accepted (connection refused, or 503) or completes as a 200 with a full
PNG. None is cut off, and the process exits 0."""

from __future__ import annotations

import io
import signal
import threading
import time
from collections import Counter

import httpx
import pytest
from PIL import Image

from tests.test_e2e import start_server, wait_ready


@pytest.mark.e2e
def test_sigterm_under_steady_load_loses_no_accepted_request(tiny_weights):
    proc, base = start_server(tiny_weights, LATENTSERVE_DRAIN_TIMEOUT_S="20")
    outcomes: Counter[str] = Counter()
    bad: list[str] = []
    stop = threading.Event()
    lock = threading.Lock()

    def client(worker: int) -> None:
        i = 0
        while not stop.is_set():
            i += 1
            body = {"n": 8, "seed": worker * 100_000 + i}
            try:
                # a fresh connection per request: a refused connect is unambiguous
                r = httpx.post(f"{base}/v1/models/tiny-gan/samples", json=body, timeout=30,
                               headers={"Connection": "close"})
            except httpx.ConnectError:
                with lock:
                    outcomes["refused"] += 1
                time.sleep(0.01)
                continue
            except httpx.HTTPError as e:  # reset or cut off mid-response
                with lock:
                    outcomes["cut_off"] += 1
                    bad.append(repr(e))
                continue
            with lock:
                outcomes[str(r.status_code)] += 1
                if r.status_code == 200:
                    img = Image.open(io.BytesIO(r.content))
                    img.load()  # a truncated PNG raises here
                    if img.size != (8 * 30 + 2, 30 + 2):
                        bad.append(f"image size {img.size}")
                elif r.status_code != 503:
                    bad.append(f"status {r.status_code}: {r.text[:200]}")

    try:
        wait_ready(proc, base)
        threads = [threading.Thread(target=client, args=(w,), daemon=True) for w in range(8)]
        for t in threads:
            t.start()
        time.sleep(1.5)
        with lock:
            before = outcomes["200"]
        proc.send_signal(signal.SIGTERM)
        code = proc.wait(30)
        time.sleep(0.3)
        stop.set()
        for t in threads:
            t.join(30)
    finally:
        stop.set()
        if proc.poll() is None:
            proc.kill()
    assert code == 0
    assert before > 0 and outcomes["200"] >= before
    assert outcomes["cut_off"] == 0 and not bad, (outcomes, bad[:5])
    assert outcomes["refused"] > 0  # the load went on past the shutdown
