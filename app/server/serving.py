"""What every serving process shares, one process or several workers: the uvicorn settings, the
server that turns readiness off the moment a shutdown starts, and the process-wide tuning."""

from __future__ import annotations

import asyncio
import logging
import signal
import sys
import time
from collections.abc import Callable
from typing import Any

import uvicorn

from app.server.drain import ACCEPT_GRACE_S
from app.server.settings import Settings


class StartupError(Exception):
    """What stops the service before it serves: one line for stderr and an exit status."""

    def __init__(self, status: int, message: str):
        super().__init__(message)
        self.status = status


def build_app(settings: Settings, *, load_on_cpu: bool = False) -> Any:
    """The app with its models loaded. ``load_on_cpu``: only to check them, for a supervisor
    whose workers load them on the device (the configured device is still checked)."""
    from app.engine.registry import Registry, resolve_device
    from app.server.factory import create_app  # torch: not in a supervisor that only imports this module
    from models.card import ModelLoadError

    try:
        resolve_device(settings.device)  # creates no CUDA context
        load = settings.model_copy(update={"device": "cpu", "dtype": "float32"}) if load_on_cpu else settings
        registry = Registry.from_settings(load)
    except ModelLoadError as e:
        raise StartupError(1, f"cannot load models: {e}") from None
    try:
        # OPEN_PORT_WHEN_READY: the lifespan's start-up waits for the warm-up, and uvicorn binds the
        # port only after it, so a gateway never meets this replica warming up
        return create_app(settings, registry, warm_before_serving=settings.open_port_when_ready)
    except ValueError as e:  # e.g. an unreadable API keys file
        raise StartupError(2, str(e)) from None


def uvicorn_config(settings: Settings, app: Any, **extra: Any) -> uvicorn.Config:
    return uvicorn.Config(app, host=settings.host, port=settings.port, log_level=settings.log_level,
                          access_log=False, lifespan="on", proxy_headers=False, server_header=False,
                          root_path=settings.root_path, timeout_graceful_shutdown=settings.drain_timeout_s,
                          log_config=None, **extra)


class DrainingServer(uvicorn.Server):
    """Readiness is 503 from the first moment of a shutdown, before uvicorn stops accepting.

    A single process also refuses new work from then on (503 with ``Connection: close``: the
    gateway tries another replica). A worker that shares its port with others
    (``refuse_new_work=False``) serves what it still accepts in the moment before it closes its
    listener: a sibling would have served it, and a 503 there would show in a SIGHUP rolling
    restart or a worker's replacement."""

    def __init__(self, config: uvicorn.Config, get_app: Callable[[], Any], refuse_new_work: bool = True):
        super().__init__(config)
        self._get_app = get_app  # a worker's app exists only once uvicorn has called its factory
        self.refuse_new_work = refuse_new_work
        self.last_tick = time.monotonic()  # the event loop's heartbeat (app.server.workers watches it)

    async def startup(self, sockets: Any = None) -> None:
        await super().startup(sockets)
        self.last_tick = time.monotonic()  # loading and warming up were no hang

    async def on_tick(self, counter: int) -> bool:  # uvicorn calls it every 0.1 s from the event loop
        self.last_tick = time.monotonic()
        return await super().on_tick(counter)

    async def shutdown(self, sockets: Any = None) -> None:
        app = self._get_app()
        if app is not None:  # here, on the event loop, not in the signal handler (handle_exit)
            app.state.metrics.set_ready(False)
            app.state.lifecycle.stop_started = time.monotonic()  # the lifespan drains the batches with what is left
        # Stop accepting, then give the connections that may still send a request a moment to
        # send it: uvicorn closes a connection with no request in flight at once, and a client
        # that sent one just then sees a disconnect with no answer. That is a connection
        # accepted a moment ago, or one kept alive after an answer (pooled by a gateway or a
        # client library). A request read in time gets its answer (a 503 while a single process
        # drains), and every answer from now on says Connection: close (the app adds it once
        # ``stopping``); one whose head was sent before closes its connection after its body.
        for server in self.servers:
            server.close()
        for sock in sockets or []:
            sock.close()
        deadline = time.monotonic() + ACCEPT_GRACE_S
        while True:
            idle = False
            for connection in list(self.server_state.connections):
                cycle = getattr(connection, "cycle", None)
                if cycle is None or cycle.response_complete:
                    idle = True
                elif cycle.keep_alive:
                    connection.shutdown()  # closed after its answer
            if not idle or time.monotonic() >= deadline:
                break
            await asyncio.sleep(0.01)
        await super().shutdown(sockets)

    def handle_exit(self, sig: int, frame: object) -> None:
        # A signal handler runs on the main thread between two bytecodes of whatever it was
        # doing, the event loop's work included: it only sets flags. Taking a lock here (a
        # metric's: with several workers prometheus-client has one lock for every value of the
        # process) would wait forever if the loop was inside an update of that lock when the
        # signal came. The readiness gauge goes to 0 in shutdown(), within 0.1 s.
        app = self._get_app()
        if app is not None:
            app.state.lifecycle.stopping = True  # readiness: "draining"
            if self.refuse_new_work:
                app.state.lifecycle.draining = True
        super().handle_exit(sig, frame)


def _hangup(signum: int, frame: object) -> None:
    logging.getLogger("latentserve").warning(
        "SIGHUP ignored: one process has no workers to restart (LATENTSERVE_WORKERS > 1 restarts them "
        "one by one on SIGHUP); SIGTERM stops it")


def ignore_hangup() -> None:
    """A single process: SIGHUP's default action killed it mid-request, with no drain (`docker run
    --init` forwards it, as do systemd's reload and a closed terminal). Only a supervisor
    (app.server.workers) gives SIGHUP a meaning, a rolling restart."""
    signal.signal(signal.SIGHUP, _hangup)


def prepare_process() -> None:
    # The event loop and the forward/PNG threads hand the GIL back and forth on every request;
    # a 0.5 ms switch interval (default 5 ms) lets a finished pass reach the loop sooner:
    # -1.5 ms p50 at c=1 and +10% requests/s at c=64 in side-by-side runs (docs/benchmarks.md).
    sys.setswitchinterval(0.0005)
    # uvicorn handles SIGTERM (graceful shutdown), then re-raises it to the handler it found when
    # it started; this no-op one lets a clean drain end with exit status 0, as orchestrators expect.
    signal.signal(signal.SIGTERM, lambda signum, frame: None)
