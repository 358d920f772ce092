"""app.server.serving: OPEN_PORT_WHEN_READY opens a single process's port only after the warm-up,
so a gateway never meets a 503 from a replica still warming up (measured: bench.gateway)."""

from __future__ import annotations

import time

import httpx

from tests.conftest import patch_workers, start_server

SLOW = "load = registry.Registry.warm_up\ndef slow(self):\n    import time\n    time.sleep(1.5)\n    load(self)\nregistry.Registry.warm_up = slow\n"


def statuses_until_ready(proc, base: str, timeout: float = 60.0) -> list[object]:
    """Every answer of /readyz, polled from the start: a status, or "refused" while the port is closed."""
    seen: list[object] = []
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        assert proc.poll() is None, proc.stdout.read()
        try:
            status = httpx.get(f"{base}/readyz", timeout=2).status_code
        except httpx.TransportError:
            status = "refused"
        if not seen or seen[-1] != status:
            seen.append(status)
        if status == 200:
            return seen
        time.sleep(0.02)
    raise AssertionError(f"not ready: {seen}")


def test_the_port_opens_only_once_warm(tiny_weights, tmp_path):
    for setting, expected in (("true", ["refused", 200]), ("false", ["refused", 503, 200])):
        folder = tmp_path / setting
        folder.mkdir()
        proc, base = start_server(tiny_weights, LATENTSERVE_OPEN_PORT_WHEN_READY=setting, PYTHONPATH=patch_workers(folder, SLOW))
        try:
            assert statuses_until_ready(proc, base) == expected
        finally:
            proc.terminate()
            proc.wait(30)
