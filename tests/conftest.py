"""Shared fixtures: tiny randomly initialised models saved as real cards, and an app with its
lifespan run, reached through httpx's ASGI transport."""

from __future__ import annotations

import asyncio
import contextlib
import os
import socket
import subprocess
import sys
import threading
import time
from collections.abc import AsyncIterator, Callable
from pathlib import Path

import httpx
import hypothesis
import pytest
import torch

from app.server.factory import create_app
from app.server.settings import Settings
from bench.servers import child_pythonpath
from models.card import save_model
from models.gan import GANConfig, Generator
from models.vae import VAE, VAEConfig

GAN_LATENT, VAE_LATENT = 8, 4
ROOT = Path(__file__).resolve().parent.parent

# Property tests run derandomized by default: the same cases every run, so a red CI is a change,
# not a dice roll. HYPOTHESIS_PROFILE=explore draws new cases each run (and remembers failures).
hypothesis.settings.register_profile("deterministic", derandomize=True, database=None)
hypothesis.settings.register_profile("explore", derandomize=False)
hypothesis.settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "deterministic"))


def write_tiny_models(folder: Path) -> Path:
    torch.manual_seed(0)
    save_model(Generator(GANConfig(g_channels=16, latent_dim=GAN_LATENT, embed_dim=4)), name="tiny-gan", kind="gan", out_dir=folder)
    save_model(VAE(VAEConfig(latent_dim=VAE_LATENT, channels=8, hidden=32)), name="tiny-vae", kind="vae", out_dir=folder)
    return folder


@pytest.fixture(scope="session")
def tiny_weights(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_tiny_models(tmp_path_factory.mktemp("weights"))


@contextlib.asynccontextmanager
async def running_app(settings: Settings, wait_ready: bool = True) -> AsyncIterator[tuple[object, httpx.AsyncClient]]:
    app = create_app(settings)
    async with app.router.lifespan_context(app):
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://test") as client:
            if wait_ready:
                deadline = asyncio.get_running_loop().time() + 60
                while not app.state.lifecycle.ready and not app.state.lifecycle.fatal and asyncio.get_running_loop().time() < deadline:
                    await asyncio.sleep(0.01)
                assert app.state.lifecycle.ready, app.state.lifecycle.fatal
            yield app, client


@pytest.fixture
def app_factory(tiny_weights: Path) -> Callable[..., contextlib.AbstractAsyncContextManager]:
    def make(wait_ready: bool = True, **overrides: object):
        # no top-up wait and no time bound on the queue (it depends on measured speed): tests
        # that need either set it
        settings = Settings(weights_dir=tiny_weights, **{"max_wait_ms": 0, "max_queue_wait_s": 0, **overrides})
        return running_app(settings, wait_ready)
    return make


@pytest.fixture
async def client(app_factory) -> AsyncIterator[httpx.AsyncClient]:
    async with app_factory() as (_, c):
        yield c


@pytest.fixture
async def app_client(app_factory):
    async with app_factory() as pair:
        yield pair


@pytest.fixture
def warm_up_gate(monkeypatch: pytest.MonkeyPatch) -> threading.Event:
    """Registry.warm_up waits (up to 10 s) until the returned event is set."""
    from app.engine.registry import Registry

    gate = threading.Event()
    original = Registry.warm_up

    def slow_warm_up(self):
        gate.wait(10)
        original(self)

    monkeypatch.setattr(Registry, "warm_up", slow_warm_up)
    return gate


def count_fast_path_calls(monkeypatch: pytest.MonkeyPatch, core: str) -> list[int]:
    """One entry per request that app.edge.fastpath served with ``core`` (``sample``,
    ``edit_image``, ``generate_images``): the fast path looks its cores up at each call."""
    from app.edge import fastpath

    calls: list[int] = []
    original = getattr(fastpath, core)

    async def counting(*args, **kwargs):
        calls.append(1)
        return await original(*args, **kwargs)

    monkeypatch.setattr(fastpath, core, counting)
    return calls


@pytest.fixture
def fast_path_calls(monkeypatch: pytest.MonkeyPatch) -> list[int]:
    """One entry per request that app.edge.fastpath served as a sample."""
    return count_fast_path_calls(monkeypatch, "sample")


# ---- a real `python -m app` process over TCP ----

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


def patch_workers(folder: Path, patch: str) -> str:
    """A PYTHONPATH whose sitecustomize runs ``patch`` (Python, with ``registry`` the module) in
    each process once it imports app.engine.registry: the workers (the supervisor never imports it).
    Lazy, so that no process imports torch any sooner than it would."""
    (folder / "sitecustomize.py").write_text(
        "import importlib.abc, importlib.util, sys\n"
        "class Hook(importlib.abc.MetaPathFinder):\n"
        "    def find_spec(self, name, path, target=None):\n"
        "        if name != 'app.engine.registry':\n"
        "            return None\n"
        "        sys.meta_path.remove(self)\n"
        "        spec = importlib.util.find_spec(name)\n"
        "        run = spec.loader.exec_module\n"
        "        def exec_module(registry):\n"
        "            run(registry)\n"
        + "".join(f"            {line}\n" for line in patch.splitlines()) +
        "        spec.loader.exec_module = exec_module\n"
        "        return spec\n"
        "sys.meta_path.insert(0, Hook())\n")
    return f"{folder}{os.pathsep}{child_pythonpath()}"
