"""``LATENTSERVE_WORKERS`` > 1: several worker processes behind one port.

One process answers HTTP on one core: on a GPU that core, not the GPU, bounds it (~3,000
single-image requests/s on an H200, whose pass could make 330,000 images/s; docs/benchmarks.md,
GPU). So a GPU host runs several. uvicorn's supervisor binds the port once, spawns the workers
(each loads the models onto the device, warms up and batches its own share of the traffic),
restarts a worker that dies, replaces them one by one on SIGHUP, and on SIGTERM has every worker
drain as a single process would.

What this module adds to uvicorn's supervisor:
- the models and settings are checked first, on the CPU, in a short-lived process (the
  supervisor itself never imports torch), so a bad weights file is one line and exit status 1,
  not a traceback from every worker in turn;
- each worker runs the same server as a single process (readiness off at the first signal,
  the GIL switch interval, a clean exit status after a drain);
- a worker warms up before it takes connections (the port is shared: a request must never meet
  a worker still warming up, also after a restart), and the supervisor gives it the time to
  (uvicorn allows 5 s for a SIGHUP replacement); a worker whose load or warm-up fails stops them
  all (uvicorn's start-up failure status, then exit 1, as a single process exits) instead of
  being restarted in a loop;
- a SIGINT or SIGTERM during a SIGHUP rolling restart stops it and the service at once (uvicorn's
  would first finish the restart); a SIGTTIN, SIGTTOU or SIGHUP that comes with one is ignored;
- a worker whose event loop stops turning (blocked for HANG_S) stops answering the supervisor's
  pings, so it is killed and replaced (uvicorn's pings are answered by a thread of their own,
  whatever the loop does); a worker whose supervisor dies drains and exits (uvicorn's would live
  on, orphaned, holding the port); a worker told to stop that has not exited once its drain
  time is up is killed, so a stuck one cannot keep the supervisor from exiting (with status 1),
  and one still starting is killed after 2 s (it would never serve: a clean stop);
- metrics: every worker writes to a fresh ``PROMETHEUS_MULTIPROC_DIR``, so ``/metrics`` from any
  of them counts all of them; the gauges of workers that ended or died stop counting; the folder
  goes at exit, and folders left by a supervisor that was killed go at the next start (a live
  supervisor holds a lock on its folder).
"""

from __future__ import annotations

import logging
import multiprocessing
import os
import re
import shutil
import signal
import sys
import tempfile
import threading
import time
from pathlib import Path
from socket import socket
from threading import Event
from types import SimpleNamespace
from typing import Any

from prometheus_client import multiprocess as prom_multiprocess
from uvicorn.config import STARTUP_FAILURE, Config
from uvicorn.supervisors import multiprocess

from app.server.drain import stop_budget_s
from app.server.metrics_dir import make_metrics_dir, remove_stale_metrics_dirs
from app.server.serving import (
    DrainingServer,
    StartupError,
    build_app,
    prepare_process,
    uvicorn_config,
)
from app.server.settings import Settings

log = logging.getLogger("latentserve")

HANG_S = 10.0  # an event loop that has not ticked for this long is hung
START_S = 300.0  # longest a SIGHUP replacement may take to load and warm up
JOIN_MARGIN_S = 5.0  # past its drain budget (app.server.drain.stop_budget_s), a stopping worker is killed
STARTING_STOP_S = 2.0  # a worker still starting when told to stop is killed after this
STOP_SIGNALS = (signal.SIGINT, signal.SIGTERM)
LIVE_GAUGE_RE = re.compile(r"^gauge_live[a-z]+_(\d+)\.db$")

# in a worker: its app, built by uvicorn from worker_app
_app: Any = None


def worker_app() -> Any:
    """uvicorn's app factory, called in each worker: the registry loads in the app's lifespan."""
    global _app
    from app.server.factory import create_app
    from app.server.logs import configure_logging

    try:
        settings = Settings()
        configure_logging(settings.log_level, settings.log_format)
        app = create_app(settings, warm_before_serving=True)
    except Exception as e:  # noqa: BLE001 - e.g. the API keys file gone since the supervisor checked it
        # uvicorn would restart a worker whose factory raised, forever; its start-up failure
        # status stops them all, as a failed warm-up does
        log.error("latentserve: worker %s cannot build the app: %s", os.getpid(), e)
        sys.exit(STARTUP_FAILURE)
    _app = app
    return app


class WorkerProcess(multiprocess.Process):
    served = False  # a ping has seen it started: it took connections

    @property
    def server(self) -> DrainingServer:  # type: ignore[override]
        if self._server is None:
            self._server = DrainingServer(self.config, lambda: _app, refuse_new_work=False)
        return self._server

    def pong(self) -> None:
        """Answer the supervisor's ping, unless the event loop is hung: then stay silent, and the
        supervisor kills this worker and starts another. Loading and warming up (before the loop
        ticks) and draining (after it stops) are not hangs."""
        self.child_conn.recv()
        server = self.server
        if server.started and not server.should_exit and time.monotonic() - server.last_tick > HANG_S:
            return
        self.child_conn.send(server.started)

    def always_pong(self) -> None:
        try:
            super().always_pong()
        except (EOFError, OSError):  # the supervisor is gone (killed, say by the OOM killer):
            self.server.should_exit = True  # drain and exit rather than serve on, orphaned, on its port

    def wait_until_ready(self, timeout: float, should_exit: Event | None = None) -> bool:
        return super().wait_until_ready(max(timeout, START_S), should_exit)

    def _healthcheck(self, timeout: float) -> bool | None:  # every ping of the supervisor's
        started = super()._healthcheck(timeout)
        if started:
            self.served = True
        return started

    def refresh_served(self) -> None:
        """Ask once more whether it has started: the supervisor's pings run in its main loop, and
        a SIGHUP restart or a SIGTERM is handled there too, so ``served`` can lag. One that took
        connections since the last ping must drain in full, not be killed as still starting."""
        if not self.served and self.process.is_alive():
            self.is_ready(timeout=1)

    def stop_timeout_s(self) -> float:
        """How long a worker told to stop may take before it is killed. One that has served
        drains its requests, then its batches. One still starting never serves once told to
        stop (uvicorn returns right after start-up), so killing it loses nothing."""
        if not self.served:
            return STARTING_STOP_S
        return stop_budget_s(self.config.timeout_graceful_shutdown or 0.0) + JOIN_MARGIN_S

    def join(self, deadline: float | None = None) -> None:
        """Wait for a worker told to stop until ``deadline`` (default: its stop timeout from
        now), then kill it: a stuck one would otherwise keep the supervisor from exiting, and a
        SIGHUP restart from going on, until the orchestrator's SIGKILL."""
        if deadline is None:
            deadline = time.monotonic() + self.stop_timeout_s()
        self.process.join(max(0.0, deadline - time.monotonic()))
        if self.process.exitcode is None:
            if self.served:
                log.error("worker %s did not exit %.0f s after it was told to stop: killed", self.pid,
                          self.stop_timeout_s())
            else:
                log.info("worker %s was still starting when told to stop: killed", self.pid)
            self.process.kill()
            self.process.join()

    @property
    def stopped_cleanly(self) -> bool:
        """Drained and exited 0, or stopped before it ever served (nothing to drain): killed by
        the SIGTERM before it could handle it, or killed while still starting."""
        # 128 + SIGTERM: app.__main__'s handler, which a spawned worker has until uvicorn's own when
        # the service runs as the `latentserve` script (the image's entrypoint; with `python -m app`,
        # spawn does not re-run a package's __main__ in its children)
        return self.exitcode == 0 or (not self.served and self.exitcode in (-signal.SIGTERM, -signal.SIGKILL,
                                                                            128 + signal.SIGTERM))

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

    def stop_requested(self) -> bool:
        """SIGINT or SIGTERM came, even if the main loop has not handled it yet (its handler
        only queues it, and a rolling restart runs inside that loop)."""
        return self.should_exit.is_set() or any(sig in STOP_SIGNALS for sig in self.signal_queue)

    # Once a stop is queued, a worker added (SIGTTIN) or replaced (SIGHUP) would be told to stop
    # right away; none is started, and none is taken away (SIGTTOU) but by the stop itself.
    def handle_hup(self) -> None:
        if not self.stop_requested():
            super().handle_hup()

    def handle_ttin(self) -> None:
        if not self.stop_requested():
            super().handle_ttin()

    def handle_ttou(self) -> None:
        if not self.stop_requested():
            if len(self.processes) > 1:
                self.processes[-1].refresh_served()  # the one uvicorn takes away
            super().handle_ttou()

    def restart_all(self) -> None:
        """uvicorn's rolling restart (SIGHUP), which also gives up at SIGINT or SIGTERM: each
        replacement may take START_S to warm up, and uvicorn's would finish them all first."""
        for idx, old_process in enumerate(self.processes):
            if self.stop_requested():
                return
            new_process = WorkerProcess(self.config, self.sockets)
            new_process.start()
            give_up = SimpleNamespace(is_set=self.stop_requested)  # polled as uvicorn polls its should_exit
            if not new_process.wait_until_ready(self.config.timeout_worker_healthcheck, give_up):
                new_process.kill()
                new_process.join()
                if not self.stop_requested():
                    log.error("worker %s was not ready in time; keeping worker %s and abandoning the restart",
                              new_process.pid, old_process.pid)
                return
            old_process.refresh_served()
            old_process.terminate()
            old_process.join()
            self.processes[idx] = new_process

    def terminate_all(self) -> None:
        for process in self.processes:
            process.refresh_served()
        super().terminate_all()
        # The workers stop accepting as they drain; the supervisor's own copy of the listening
        # socket would keep the port listening, so that new connections waited in its backlog
        # for the whole drain and were then reset. Closed, they are refused at once.
        for sock in self.sockets:
            sock.close()

    def join_all(self) -> None:
        told = time.monotonic()  # all were told to stop together: their timeouts run at once
        for process in self.processes:
            process.join(told + process.stop_timeout_s())

    def keep_subprocess_alive(self) -> None:
        super().keep_subprocess_alive()
        self.drop_dead_gauges()

    def drop_dead_gauges(self) -> None:
        """The live gauges (readiness, queue) of processes that are no longer workers, whether they
        died, were killed as hung, or were a SIGHUP replacement that never became ready."""
        current = {p.pid for p in self.processes}
        for name in os.listdir(self.metrics_dir):
            m = LIVE_GAUGE_RE.match(name)
            if m and int(m.group(1)) not in current:
                prom_multiprocess.mark_process_dead(int(m.group(1)), self.metrics_dir)


def check_models(settings: Settings) -> int:
    """Load the models once on the CPU and build the app: what would fail in every worker fails
    here, with one line. Returns an exit status, 0 when all is well."""
    from app.server.logs import configure_logging

    configure_logging(settings.log_level, settings.log_format)
    try:
        build_app(settings, load_on_cpu=True)
    except StartupError as e:
        print(f"latentserve: {e}", file=sys.stderr)
        return e.status
    return 0


def _check_models_and_exit(settings: Settings) -> None:  # pragma: no cover - runs in a child
    raise SystemExit(check_models(settings))


def run_workers(settings: Settings) -> int:
    # in a spawned child: the supervisor stays small (no torch) for as long as the service runs
    checker = multiprocessing.get_context("spawn").Process(target=_check_models_and_exit, args=(settings,))
    checker.start()
    try:
        checker.join()
    except SystemExit:  # SIGTERM while the models are checked (app.__main__): stop the check too
        checker.terminate()
        checker.join()
        raise
    if checker.exitcode:
        return checker.exitcode if checker.exitcode in (1, 2) else 1
    remove_stale_metrics_dirs(Path(tempfile.gettempdir()))
    metrics_dir, metrics_lock = make_metrics_dir(Path(tempfile.gettempdir()))
    os.environ["PROMETHEUS_MULTIPROC_DIR"] = metrics_dir  # inherited by every worker
    config = uvicorn_config(settings, "app.server.workers:worker_app", factory=True, workers=settings.workers)
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
        os.close(metrics_lock)
    codes = [p.exitcode for p in supervisor.processes]
    if STARTUP_FAILURE in codes:
        log.error("a worker failed to start (its log says why); all workers stopped")
        return 1
    return 0 if all(p.stopped_cleanly for p in supervisor.processes) else 1
