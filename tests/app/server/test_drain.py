"""Graceful shutdown under load, with a real uvicorn process: after SIGTERM every request either
is refused before it is accepted (connection refused, a 503, or a reset before any byte of a
response: a connection still in the kernel's accept backlog when the listener closes) or
completes as a 200 with a full PNG. None is cut off, and the process exits 0.

The client speaks HTTP over a raw socket so that "no response at all" and "a response cut off"
are told apart exactly."""

from __future__ import annotations

import contextlib
import io
import json
import re
import signal
import threading
import time
from collections import Counter
from urllib.parse import urlparse

import pytest
from PIL import Image

from bench import rawhttp
from tests.conftest import start_server, wait_ready


def post(port: int, body: bytes) -> tuple[str, bytes]:
    return rawhttp.post(port, "/v1/models/tiny-gan/samples", body)


@pytest.mark.e2e
def test_sigterm_under_steady_load_loses_no_accepted_request(tiny_weights):
    proc, base = start_server(tiny_weights, LATENTSERVE_DRAIN_TIMEOUT_S="20")
    port = urlparse(base).port
    outcomes: Counter[str] = Counter()
    bad: list[str] = []
    stop = threading.Event()
    lock = threading.Lock()
    sigterm_sent = threading.Event()

    def client(worker: int) -> None:
        i = 0
        while not stop.is_set():
            i += 1
            kind, payload = post(port, json.dumps({"n": 8, "seed": worker * 100_000 + i}).encode())
            with lock:
                outcomes[kind] += 1
                if kind == "200":
                    img = Image.open(io.BytesIO(payload))
                    img.load()  # a truncated PNG raises here
                    if img.size != (8 * 30 + 2, 30 + 2):
                        bad.append(f"image size {img.size}")
                elif kind in ("refused", "reset"):
                    if not sigterm_sent.is_set():
                        bad.append(f"{kind} before SIGTERM")
                    time.sleep(0.01)
                elif kind != "503":
                    bad.append(f"{kind}: {payload[:200]!r}")

    try:
        wait_ready(proc, base)
        threads = [threading.Thread(target=client, args=(w,), daemon=True) for w in range(8)]
        for t in threads:
            t.start()
        time.sleep(1.5)
        with lock:
            before = outcomes["200"]
        sigterm_sent.set()
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


async def test_once_a_shutdown_has_begun_every_answer_closes_its_connection(app_factory):
    async with app_factory() as (app, client):
        for method, path, body in (("GET", "/healthz", None), ("GET", "/metrics", None),
                                   ("POST", "/v1/models/tiny-gan/samples", {"seed": 1})):  # the fast path too
            r = await client.request(method, path, json=body)
            assert r.status_code == 200 and "connection" not in r.headers
        # a worker that stops still serves (a sibling would have), but no connection is kept
        # alive for a next request: a client would send it as the connection closes
        app.state.lifecycle.stopping = True
        for method, path, body in (("GET", "/healthz", None), ("GET", "/metrics", None),
                                   ("POST", "/v1/models/tiny-gan/samples", {"seed": 1})):
            r = await client.request(method, path, json=body)
            assert r.status_code == 200 and r.headers["connection"] == "close", (path, r.headers)
        app.state.lifecycle.draining = True  # one process draining: a 503 that says the same, once
        r = await client.post("/v1/models/tiny-gan/samples", json={"seed": 1})
        assert r.status_code == 503 and r.headers.get_list("connection") == ["close"]


def request_bytes(method: str, path: str, body: bytes = b"") -> bytes:
    head = f"{method} {path} HTTP/1.1\r\nHost: test\r\nContent-Type: application/json\r\nContent-Length: {len(body)}\r\n\r\n"
    return head.encode() + body


def read_answer(sock) -> tuple[bytes, bytes]:
    """One answer with a Content-Length: (head, body)."""
    data = b""
    while b"\r\n\r\n" not in data:
        chunk = sock.recv(65536)
        if not chunk:
            return data, b""
        data += chunk
    head, body = data.split(b"\r\n\r\n", 1)
    length = int(re.search(rb"content-length: (\d+)", head.lower()).group(1))
    while len(body) < length and (chunk := sock.recv(65536)):
        body += chunk
    return head.lower(), body


@pytest.mark.e2e
@pytest.mark.parametrize("idle", ["accepted", "kept alive"])
def test_connections_with_no_request_in_flight_at_sigterm_get_an_answer(tiny_weights, idle):
    """A connection accepted a moment before SIGTERM, or connections kept alive after an answer
    (a gateway's pool), send a request just after it: each gets an answer, not a disconnect
    without one."""
    import socket

    proc, base = start_server(tiny_weights)
    port = urlparse(base).port
    sample = request_bytes("POST", "/v1/models/tiny-gan/samples", json.dumps({"seed": 1}).encode())
    try:
        wait_ready(proc, base)
        with contextlib.ExitStack() as stack:
            socks = [stack.enter_context(socket.create_connection(("127.0.0.1", port), timeout=10))
                     for _ in range(1 if idle == "accepted" else 2)]
            if idle == "kept alive":
                for sock, first in zip(socks, (sample, request_bytes("GET", "/metrics"))):
                    sock.sendall(first)
                    head, _ = read_answer(sock)
                    assert head.startswith(b"http/1.1 200") and b"connection: close" not in head
            time.sleep(0.3)  # no request in flight on any of them
            proc.send_signal(signal.SIGTERM)
            time.sleep(0.3)  # the shutdown has begun
            socks[0].sendall(sample)
            head, _ = read_answer(socks[0])
            # the draining service says so, and closes (a gateway retries on another replica)
            assert head.startswith(b"http/1.1 503"), head
            assert b"connection: close" in head
            assert socks[0].recv(1) == b""
            if idle == "kept alive":
                socks[1].sendall(request_bytes("GET", "/metrics"))
                head, body = read_answer(socks[1])
                assert head.startswith(b"http/1.1 200"), head
                assert re.search(rb"^latentserve_ready 0\.0$", body, re.MULTILINE)  # set off in shutdown()
        assert proc.wait(30) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(10)
