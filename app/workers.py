"""``LATENTSERVE_WORKERS`` > 1: several worker processes behind one port.

One process answers HTTP on one core: on a GPU that core, not the GPU, bounds it (~3,000
single-image requests/s on an H200, whose pass could make 330,000 images/s; docs/benchmarks.md,
GPU). So a GPU host runs several. uvicorn's supervisor binds the port once, spawns the workers
(each loads the models onto the device, warms up and batches its own share of the traffic),
restarts a worker that dies, and on SIGTERM has every worker drain as a single process would.

What this module adds to uvicorn's supervisor:
- the parent checks the models and settings first (on the CPU), so a bad weights file is one
  line and exit status 1, not a traceback from every worker in turn;
- each worker runs the same server as a single process (readiness off at the first signal,
  the GIL switch interval, a clean exit status after a drain), and drains and exits when the
  supervisor dies (uvicorn's workers would otherwise live on, orphaned, holding the port);
- a worker warms up before it takes connections (the port is shared: a request must never meet
  a worker still warming up, also after a restart), and a worker whose load or warm-up fails
  stops them all (uvicorn's start-up failure status) instead of being restarted forever;
- metrics: every worker writes to one ``PROMETHEUS_MULTIPROC_DIR`` (a fresh temporary folder),
  so ``/metrics`` from any worker counts all of them; a worker that ends, or dies, is marked
  dead so that its gauges stop counting.
"""

from __future__ import annotations

import gc
import logging
import os
import shutil
import sys
import tempfile
import threading
from socket import socket
from typing import Any

from prometheus_client import multiprocess as prom_multiprocess
from uvicorn.config import STARTUP_FAILURE, Config
from uvicorn.supervisors import multiprocess

from app.serving import DrainingServer, prepare_process, uvicorn_config
from app.settings import Settings

log = logging.getLogger("latentserve")

# in a worker: its app, built by uvicorn from worker_app
_app: Any = None


def worker_app() -> Any:
    """uvicorn's app factory, called in each worker: the registry loads in the app's lifespan."""
    global _app
    from app.logs import configure_logging
    from app.main import create_app

    settings = Settings()
    configure_logging(settings.log_level, settings.log_format)
    app = create_app(settings, warm_before_serving=True)
    _app = app
    return app


class WorkerProcess(multiprocess.Process):
    @property
    def server(self) -> DrainingServer:  # type: ignore[override]
        if self._server is None:
            self._server = DrainingServer(self.config, lambda: _app)
        return self._server

    def always_pong(self) -> None:
        try:
            super().always_pong()
        except (EOFError, OSError):  # the supervisor is gone (killed, say by the OOM killer):
            self.server.should_exit = True  # drain and exit rather than serve on, orphaned, on its port

    def target(self, sockets: list[socket] | None = None) -> None:  # pragma: no cover - runs in a worker
        prepare_process()
        # this process's copy of the supervisor's end of the pipe: closed, the supervisor's death
        # closes the pipe, and always_pong hears of it
        self.parent_conn.close()
        threading.Thread(target=self.always_pong, daemon=True).start()
        try:
            # a failed load or warm-up fails start-up: uvicorn then exits with its start-up
            # failure status, and the supervisor stops every worker instead of restarting this one
            self.server.run(sockets)
        finally:
            prom_multiprocess.mark_process_dead(os.getpid())


class Supervisor(multiprocess.Multiprocess):
    def __init__(self, config: Config, sockets: list[socket], metrics_dir: str):
        super().__init__(config, sockets)
        self.metrics_dir = metrics_dir

    def terminate_all(self) -> None:
        super().terminate_all()
        # The workers stop accepting as they drain; the supervisor's own copy of the listening
        # socket would keep the port listening, so that new connections waited in its backlog
        # for the whole drain and were then reset. Closed, they are refused at once.
        for sock in self.sockets:
            sock.close()

    def keep_subprocess_alive(self) -> None:
        before = {p.pid for p in self.processes}
        super().keep_subprocess_alive()
        for pid in before - {p.pid for p in self.processes}:
            if pid is not None:  # died without a word: its live gauges must not count any more
                prom_multiprocess.mark_process_dead(pid, self.metrics_dir)


def check_models(settings: Settings) -> int:
    """Load the models once on the CPU and build the app: what would fail in every worker fails
    here, with one line. Returns an exit status, 0 when all is well."""
    from app.main import create_app
    from app.registry import Registry, resolve_device
    from models.card import ModelLoadError

    try:
        resolve_device(settings.device)  # no CUDA context in the parent: the workers are spawned
        registry = Registry.from_settings(settings.model_copy(update={"device": "cpu", "dtype": "float32"}))
    except ModelLoadError as e:
        print(f"latentserve: cannot load models: {e}", file=sys.stderr)
        return 1
    try:
        create_app(settings, registry)
    except ValueError as e:  # e.g. an unreadable API keys file
        print(f"latentserve: {e}", file=sys.stderr)
        return 2
    del registry
    gc.collect()
    return 0


def run_workers(settings: Settings) -> int:
    status = check_models(settings)
    if status:
        return status
    metrics_dir = tempfile.mkdtemp(prefix="latentserve-metrics-")
    os.environ["PROMETHEUS_MULTIPROC_DIR"] = metrics_dir  # inherited by every worker
    config = uvicorn_config(settings, "app.workers:worker_app", factory=True, workers=settings.workers)
    # uvicorn's supervisor makes every worker (first start, restarts, SIGHUP, SIGTTIN) from this name
    multiprocess.Process = WorkerProcess  # type: ignore[misc]
    sock = config.bind_socket()
    supervisor = Supervisor(config, [sock], metrics_dir)
    log.info("starting %d workers on %s:%d", settings.workers, settings.host, settings.port)
    try:
        supervisor.run()
    finally:
        sock.close()
        shutil.rmtree(metrics_dir, ignore_errors=True)
    codes = [p.exitcode for p in supervisor.processes]
    if STARTUP_FAILURE in codes:
        print("latentserve: a worker failed to start (its log says why); all workers stopped", file=sys.stderr)
        return 1
    return 0 if all(code == 0 for code in codes) else 1
