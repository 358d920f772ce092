"""LATENTSERVE_WORKERS > 1: real worker processes behind one port (app.server.workers)."""

from __future__ import annotations

import concurrent.futures
import contextlib
import os
import re
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from app.server.factory import create_app
from app.server.settings import Settings
from bench.servers import children_map, is_worker, worker_pids
from tests.conftest import patch_workers, start_server, wait_ready

pytestmark = pytest.mark.e2e
GAN = "/v1/models/tiny-gan"


def metric(text: str, line: str) -> float:
    m = re.search(rf"^{re.escape(line)} (\S+)$", text, re.MULTILINE)
    assert m, f"{line} not in /metrics"
    return float(m.group(1))


def metrics_dir_of(worker: int) -> Path:
    """The folder where the workers write their metrics (each inherits it from the parent)."""
    environ = Path(f"/proc/{worker}/environ").read_bytes().split(b"\0")
    return Path(dict(v.split(b"=", 1) for v in environ if b"=" in v)[b"PROMETHEUS_MULTIPROC_DIR"].decode())


def wait_for(predicate, timeout: float = 60.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return
        time.sleep(0.1)
    raise AssertionError("timed out")


def scrape(base: str) -> str:
    return httpx.get(f"{base}/metrics", timeout=10).text


def workers_ready(base: str) -> float:
    return metric(scrape(base), "latentserve_workers_ready")


def slow_to_warm_up_once(marker: Path, folder: Path) -> str:
    """patch_workers: a worker started once ``marker`` exists takes 60 s to warm up (the first
    ones, started before, warm up at once)."""
    return patch_workers(folder, "import os, time\n"
                                 "warm_up = registry.Registry.warm_up\n"
                                 "def slow(self):\n"
                                 f"    if os.path.exists({str(marker)!r}):\n"
                                 "        time.sleep(60)\n"
                                 "    warm_up(self)\n"
                                 "registry.Registry.warm_up = slow")


@contextlib.contextmanager
def serving(weights: Path, **env: str) -> Iterator[tuple[subprocess.Popen, str]]:
    """A 2-worker server, both workers ready; nothing of it outlives the block."""
    proc, base = start_server(weights, LATENTSERVE_WORKERS="2", LATENTSERVE_MAX_WAIT_MS="0", **env)
    seen: set[int] = set()
    try:
        wait_ready(proc, base)
        wait_for(lambda: len(worker_pids(proc.pid)) == 2)
        # /readyz answers for the one worker that takes it; this gauge counts them all
        wait_for(lambda: workers_ready(base) == 2)
        seen.update(worker_pids(proc.pid))
        yield proc, base
    finally:
        seen.update(worker_pids(proc.pid))
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(30)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(10)
        for pid in seen:  # nothing may outlive the test, whatever it did
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass


@pytest.fixture
def workers(tiny_weights: Path) -> Iterator[tuple[subprocess.Popen, str]]:
    with serving(tiny_weights) as running:
        yield running


def post_many(base: str, count: int) -> list[int]:
    def one(i: int) -> int:
        with httpx.Client(base_url=base, timeout=30) as c:
            return c.post(f"{GAN}/samples", json={"seed": i, "labels": 1}).status_code

    with concurrent.futures.ThreadPoolExecutor(8) as pool:
        return list(pool.map(one, range(count)))


def test_workers_share_one_port_count_metrics_together_and_drain_on_sigterm(workers):
    proc, base = workers
    pids = worker_pids(proc.pid)
    metrics_dir = metrics_dir_of(pids[0])
    assert metrics_dir.is_dir() and metrics_dir_of(pids[1]) == metrics_dir
    assert post_many(base, 40) == [200] * 40
    # whichever worker answers /metrics, it counts the requests and rows of both (a request is
    # counted just after its answer is sent: wait for the last one)
    ok = 'latentserve_requests_total{method="POST",route="/v1/models/{model}/samples",status="200"}'
    wait_for(lambda: metric(scrape(base), ok) == 40, timeout=10)
    for _ in range(4):
        text = scrape(base)
        assert metric(text, ok) == 40
        assert metric(text, 'latentserve_batch_rows_sum{model="tiny-gan"}') == 40
        assert metric(text, "latentserve_ready") == 1
        assert metric(text, "latentserve_workers_ready") == 2
        assert metric(text, 'latentserve_queue_rows{model="tiny-gan"}') == 0
    # the supervisor never loads torch: it stays small for as long as the service runs
    rss_mib = int(re.search(r"VmRSS:\s+(\d+)", Path(f"/proc/{proc.pid}/status").read_text()).group(1)) / 1024
    assert rss_mib < 120, rss_mib
    proc.send_signal(signal.SIGTERM)
    assert proc.wait(30) == 0, proc.stdout.read()
    assert worker_pids(proc.pid) == [] and not any(Path(f"/proc/{pid}").exists() for pid in pids)
    assert not metrics_dir.exists()  # the metrics files go with the service


def test_a_dead_worker_is_replaced_and_the_others_keep_serving(workers):
    proc, base = workers
    first, second = worker_pids(proc.pid)
    metrics_dir = metrics_dir_of(second)
    assert f"gauge_livemax_{first}.db" in {p.name for p in metrics_dir.iterdir()}  # its readiness
    os.kill(first, signal.SIGKILL)
    assert post_many(base, 20) == [200] * 20  # the port is shared: the live worker takes them all
    wait_for(lambda: len(worker_pids(proc.pid)) == 2 and first not in worker_pids(proc.pid))
    assert second in worker_pids(proc.pid)
    replacement = next(pid for pid in worker_pids(proc.pid) if pid != second)
    assert metric(scrape(base), "latentserve_ready") == 1  # the other one is
    # the replacement warms up before it takes connections, and then counts as ready
    wait_for(lambda: workers_ready(base) == 2)
    assert (metrics_dir / f"gauge_livemax_{replacement}.db").exists()
    assert post_many(base, 20) == [200] * 20
    # the dead worker's live gauges (ready, queue) no longer count
    assert not [p for p in metrics_dir.iterdir() if p.name.startswith("gauge_live") and p.name.endswith(f"_{first}.db")]
    assert proc.poll() is None


def test_workers_exit_when_the_supervisor_is_killed(workers):
    proc, base = workers
    pids = worker_pids(proc.pid)
    metrics_dir = metrics_dir_of(pids[0])
    proc.kill()  # SIGKILL: no chance to stop its workers
    proc.wait(10)
    # orphaned, each worker sees its pipe to the supervisor close, drains and exits
    wait_for(lambda: not any(is_worker(pid) for pid in pids), timeout=30)
    with pytest.raises(httpx.TransportError):
        httpx.get(f"{base}/healthz", timeout=2)  # nobody holds the port any more
    assert metrics_dir.is_dir()  # left behind: the next start removes it (below)
    shutil.rmtree(metrics_dir)


def test_workers_refuse_bad_weights_in_one_line_before_starting_any(tmp_path: Path):
    proc, _ = start_server(tmp_path / "missing", LATENTSERVE_WORKERS="2")
    out, _ = proc.communicate(timeout=60)
    assert proc.returncode == 1
    assert "latentserve: cannot load models:" in out and "weights directory not found" in out
    assert "Traceback" not in out
    assert out.count("cannot load models") == 1  # checked once, not by every worker in turn


def test_workers_stop_when_a_worker_cannot_warm_up(tiny_weights: Path, tmp_path: Path):
    # the check loads the models but does not warm them up: only the workers meet this
    path = patch_workers(tmp_path, "def broken(self):\n"
                                   "    raise RuntimeError('injected warm-up failure')\n"
                                   "registry.Registry.warm_up = broken")
    proc, _ = start_server(tiny_weights, LATENTSERVE_WORKERS="2", PYTHONPATH=path)
    out, _ = proc.communicate(timeout=90)
    assert proc.returncode == 1, out
    assert "injected warm-up failure" in out
    assert "a worker failed to start (its log says why); all workers stopped" in out
    # each worker of the first two says why once: none was restarted to fail again
    assert 1 <= out.count("warm-up failed, the service will not become ready") <= 2, out


async def test_warm_before_serving_fails_start_up_when_warm_up_fails(tiny_weights: Path, monkeypatch):
    from app.engine.registry import Registry

    def broken_warm_up(self):
        raise RuntimeError("mat1 and mat2 must have the same dtype")

    monkeypatch.setattr(Registry, "warm_up", broken_warm_up)
    app = create_app(Settings(weights_dir=tiny_weights), warm_before_serving=True)
    with pytest.raises(RuntimeError, match="warm-up failed: RuntimeError"):
        async with app.router.lifespan_context(app):
            pass  # pragma: no cover - start-up must not succeed
    assert not app.state.lifecycle.ready


async def test_warm_before_serving_is_ready_when_start_up_ends(tiny_weights: Path):
    app = create_app(Settings(weights_dir=tiny_weights), warm_before_serving=True)
    async with app.router.lifespan_context(app):
        assert app.state.lifecycle.ready  # no wait: start-up ended only once the warm-up had
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://test") as c:
            assert (await c.get("/readyz")).status_code == 200


async def test_each_worker_runs_the_draining_server(tiny_weights: Path, monkeypatch):
    import app.server.workers as w
    from app.server.serving import DrainingServer, uvicorn_config

    settings = Settings(weights_dir=tiny_weights)
    process = w.WorkerProcess(uvicorn_config(settings, "app.server.workers:worker_app", factory=True, workers=2), [])
    try:
        assert isinstance(process.server, DrainingServer)
        app = create_app(settings)
        monkeypatch.setattr(w, "_app", app)
        app.state.metrics.set_ready(True)
        process.server.handle_exit(signal.SIGTERM, None)
        assert process.server.should_exit and app.state.lifecycle.stopping  # readiness off at the first signal
        # but what it still accepts before closing its listener, it serves (a sibling would have)
        assert not app.state.lifecycle.draining
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://test") as c:
            r = await c.get("/readyz")
            assert r.status_code == 503 and r.json()["status"] == "draining"
    finally:
        process.parent_conn.close()
        process.child_conn.close()


def test_the_sigterm_handler_takes_no_lock_that_the_code_it_interrupts_may_hold(tiny_weights: Path):
    import threading

    from app.server.serving import DrainingServer, uvicorn_config

    settings = Settings(weights_dir=tiny_weights)
    app = create_app(settings)
    server = DrainingServer(uvicorn_config(settings, app), lambda: app)
    app.state.metrics.set_ready(True)
    # Python runs the handler on the main thread, between two bytecodes of the event loop's work:
    # maybe inside a metric update, holding the lock of that value (with several workers,
    # prometheus-client's one lock for every value of the process). Taken again, it never frees.
    with app.state.metrics.ready._value._lock:
        handler = threading.Thread(target=server.handle_exit, args=(signal.SIGTERM, None), daemon=True)
        handler.start()
        handler.join(2)
        returned = not handler.is_alive()
    handler.join(2)
    assert returned, "the SIGTERM handler waited for a metric's lock"
    assert server.should_exit and app.state.lifecycle.stopping and app.state.lifecycle.draining
    # the readiness gauge goes to 0 at the start of shutdown(), on the event loop
    assert "latentserve_ready 1.0" in app.state.metrics.exposition().decode()


def test_the_supervisor_closes_its_listening_socket_when_it_stops_the_workers(tiny_weights: Path, tmp_path: Path,
                                                                              monkeypatch):
    import socket as socketlib

    import app.server.workers as w
    from app.server.serving import uvicorn_config

    monkeypatch.setattr(w.multiprocess.signal, "signal", lambda *a: None)  # keep pytest's handlers
    sock = socketlib.socket()
    sock.bind(("127.0.0.1", 0))
    sock.listen()
    config = uvicorn_config(Settings(weights_dir=tiny_weights), "app.server.workers:worker_app", factory=True, workers=2)
    supervisor = w.Supervisor(config, [sock], str(tmp_path))
    supervisor.terminate_all()  # (no workers started here)
    # the workers close theirs as they drain: with this one closed too, new clients are refused
    # at once instead of waiting in the backlog for the whole drain
    assert sock.fileno() == -1


def test_sighup_replaces_every_worker_even_one_slower_to_warm_up_than_uvicorn_waits(tiny_weights: Path, tmp_path: Path):
    # uvicorn gives a SIGHUP replacement 5 s to be ready, and a worker is ready only once warm
    path = patch_workers(tmp_path, "import time\n"
                                   "warm_up = registry.Registry.warm_up\n"
                                   "def slow(self):\n"
                                   "    time.sleep(6)\n"
                                   "    warm_up(self)\n"
                                   "registry.Registry.warm_up = slow")
    with serving(tiny_weights, PYTHONPATH=path) as (proc, base):
        old = set(worker_pids(proc.pid))
        metrics_dir = metrics_dir_of(min(old))
        proc.send_signal(signal.SIGHUP)
        statuses: list[int] = []
        deadline = time.monotonic() + 60
        while (set(worker_pids(proc.pid)) & old) and time.monotonic() < deadline:
            statuses += post_many(base, 8)  # served throughout, one worker at a time replaced
        assert not set(worker_pids(proc.pid)) & old, "the old workers were not all replaced"
        assert statuses and set(statuses) == {200}
        wait_for(lambda: len(worker_pids(proc.pid)) == 2 and workers_ready(base) == 2)
        live = {p.name for p in metrics_dir.iterdir() if p.name.startswith("gauge_live")}
        assert {n.rsplit("_", 1)[1] for n in live} == {f"{pid}.db" for pid in worker_pids(proc.pid)}
        assert proc.poll() is None


def test_a_worker_whose_event_loop_hangs_is_replaced(tiny_weights: Path, tmp_path: Path):
    # SIGUSR1 blocks a worker's event loop (Python runs signal handlers on the main thread),
    # while the thread that answers the supervisor's pings runs on
    path = patch_workers(tmp_path, "import signal, time\n"
                                   "signal.signal(signal.SIGUSR1, lambda *args: time.sleep(120))")
    with serving(tiny_weights, PYTHONPATH=path) as (proc, base):
        hung, other = worker_pids(proc.pid)
        os.kill(hung, signal.SIGUSR1)
        wait_for(lambda: hung not in worker_pids(proc.pid) and len(worker_pids(proc.pid)) == 2, timeout=60)
        assert other in worker_pids(proc.pid)
        wait_for(lambda: workers_ready(base) == 2)
        assert post_many(base, 20) == [200] * 20


def test_metrics_folders_of_killed_supervisors_are_removed(tmp_path: Path):
    import fcntl

    from app.server.metrics_dir import (
        METRICS_DIR_PREFIX,
        METRICS_LOCK,
        make_metrics_dir,
        remove_stale_metrics_dirs,
    )

    # a supervisor that runs holds the lock on its folder, in this process here; a pid would not
    # do: containers that share /tmp may each run theirs as PID 1
    live, lock = make_metrics_dir(tmp_path)
    try:
        assert Path(live).name.startswith(f"{METRICS_DIR_PREFIX}{os.getpid()}-")
        stale = tmp_path / f"{METRICS_DIR_PREFIX}{os.getpid()}-abc"  # the lock file of a killed one: free
        # no lock file: made by a version before the lock, kept while the pid in its name runs
        unlocked = tmp_path / f"{METRICS_DIR_PREFIX}{os.getppid()}-def"
        ended = subprocess.Popen(["true"])
        ended.wait()
        unlocked_stale = tmp_path / f"{METRICS_DIR_PREFIX}{ended.pid}-ghi"
        other = tmp_path / "something-else"
        for folder in (stale, unlocked, unlocked_stale, other):
            folder.mkdir()
            (folder / "counter_1.db").write_bytes(b"x")
        (stale / METRICS_LOCK).touch()
        remove_stale_metrics_dirs(tmp_path)
        assert not stale.exists() and not unlocked_stale.exists()
        assert Path(live).is_dir() and unlocked.is_dir() and other.is_dir()
        with open(Path(live) / METRICS_LOCK) as f, pytest.raises(BlockingIOError):
            fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)  # still held after the sweep
    finally:
        os.close(lock)
    remove_stale_metrics_dirs(tmp_path)  # its supervisor gone, the folder goes at the next start
    assert not Path(live).exists()


def test_sigterm_during_a_sighup_restart_stops_the_service_without_finishing_it(tiny_weights: Path, tmp_path: Path):
    # the first workers warm up at once; replacements, once the marker exists, take 60 s
    marker = tmp_path / "slow"
    path = slow_to_warm_up_once(marker, tmp_path)
    with serving(tiny_weights, PYTHONPATH=path) as (proc, _):
        marker.touch()
        proc.send_signal(signal.SIGHUP)
        time.sleep(1.0)  # the first replacement is warming up
        t0 = time.monotonic()
        proc.send_signal(signal.SIGTERM)
        try:
            code = proc.wait(20)  # uvicorn's restart would first wait for both replacements: 120 s
        except subprocess.TimeoutExpired:
            raise AssertionError("SIGTERM waited for the rolling restart") from None
        assert code == 0, proc.stdout.read()  # the old workers drained; the replacement was never one
        assert time.monotonic() - t0 < 15


@pytest.mark.parametrize("queued", [[signal.SIGTTIN], [signal.SIGTTIN, signal.SIGTERM], [signal.SIGHUP, signal.SIGINT],
                                    [signal.SIGTTOU, signal.SIGTERM]])
def test_no_worker_is_added_replaced_or_removed_once_a_stop_is_queued(tiny_weights: Path, tmp_path: Path,
                                                                    monkeypatch, queued):
    import socket as socketlib

    import app.server.workers as w
    from app.server.serving import uvicorn_config

    monkeypatch.setattr(w.multiprocess.signal, "signal", lambda *a: None)  # keep pytest's handlers
    handled: list[str] = []
    for name in ("hup", "ttin", "ttou"):
        monkeypatch.setattr(w.multiprocess.Multiprocess, f"handle_{name}", lambda self, n=name: handled.append(n))
    config = uvicorn_config(Settings(weights_dir=tiny_weights), "app.server.workers:worker_app", factory=True, workers=2)
    with socketlib.socket() as sock:
        supervisor = w.Supervisor(config, [sock], str(tmp_path))
        supervisor.signal_queue.extend(queued)  # as the signal handlers queue them
        supervisor.handle_signals()
    stopping = signal.SIGTERM in queued or signal.SIGINT in queued
    assert supervisor.should_exit.is_set() == stopping
    assert handled == ([] if stopping else ["ttin"])


def test_sigttin_with_sigterm_still_stops_cleanly(workers):
    proc, _ = workers
    # whichever the supervisor handles first, no worker ends killed by the SIGTERM meant for it
    proc.send_signal(signal.SIGTTIN)
    proc.send_signal(signal.SIGTERM)
    assert proc.wait(30) == 0, proc.stdout.read()


def test_a_worker_still_starting_when_told_to_stop_is_killed_and_the_stop_is_clean(tiny_weights: Path, tmp_path: Path):
    # workers started once the marker exists take 60 s to warm up
    marker = tmp_path / "slow"
    path = slow_to_warm_up_once(marker, tmp_path)
    with serving(tiny_weights, PYTHONPATH=path) as (proc, _):
        marker.touch()
        proc.send_signal(signal.SIGTTIN)  # a third worker, warming up
        wait_for(lambda: len(worker_pids(proc.pid)) == 3)
        time.sleep(2.0)
        t0 = time.monotonic()
        proc.send_signal(signal.SIGTERM)
        try:
            code = proc.wait(30)  # it would serve nothing: killed 2 s after, not waited for (60 s)
        except subprocess.TimeoutExpired:
            raise AssertionError("the supervisor waited for a worker still warming up") from None
        out = proc.stdout.read()
        assert code == 0, out  # the two that served drained; the third had nothing to drain
        assert time.monotonic() - t0 < 15
        assert "did not exit" not in out


def test_a_worker_stuck_at_shutdown_is_killed_once_its_drain_time_is_up(tiny_weights: Path, tmp_path: Path):
    # SIGUSR1 blocks a worker's main thread for 120 s, so its SIGTERM handler cannot run
    path = patch_workers(tmp_path, "import signal, time\n"
                                   "signal.signal(signal.SIGUSR1, lambda *args: time.sleep(120))")
    with serving(tiny_weights, PYTHONPATH=path, LATENTSERVE_DRAIN_TIMEOUT_S="1") as (proc, _):
        stuck, _other = worker_pids(proc.pid)
        os.kill(stuck, signal.SIGUSR1)
        time.sleep(0.5)
        t0 = time.monotonic()
        proc.send_signal(signal.SIGTERM)
        try:
            code = proc.wait(40)  # killed 1 + 1 + 1 + 5 s after SIGTERM (stop_budget_s + JOIN_MARGIN_S), not after 120 s
        except subprocess.TimeoutExpired:
            raise AssertionError("the supervisor waited for the stuck worker") from None
        out = proc.stdout.read()
        assert code == 1, out  # a worker had to be killed: not a clean stop
        assert f"worker {stuck} did not exit 8 s after it was told to stop: killed" in out
        assert 7 < time.monotonic() - t0 < 25
        assert not is_worker(stuck)


def test_a_restart_asks_a_worker_once_more_before_stopping_it(monkeypatch):
    """The supervisor's pings run in its main loop, and so does a SIGHUP restart: a worker that
    became ready since the last ping looked 'still starting', and was killed 2 s after its
    SIGTERM with the requests it had accepted. restart_all asks it first, as terminate_all does."""
    from threading import Event
    from types import SimpleNamespace

    from app.server import workers

    calls: list[str] = []

    class Old:
        pid = 1

        def refresh_served(self):
            calls.append("refresh")

        def terminate(self):
            calls.append("terminate")

        def join(self):
            calls.append("join")

    class New:
        pid = 2

        def __init__(self, config, sockets):
            pass

        def start(self):
            calls.append("start new")

        def wait_until_ready(self, timeout, should_exit):
            return True

    monkeypatch.setattr(workers, "WorkerProcess", New)
    supervisor = object.__new__(workers.Supervisor)
    old = Old()
    supervisor.processes = [old]
    supervisor.config = SimpleNamespace(timeout_worker_healthcheck=5)
    supervisor.sockets = []
    supervisor.should_exit = Event()
    supervisor.signal_queue = []
    supervisor.restart_all()
    assert calls == ["start new", "refresh", "terminate", "join"]
    assert isinstance(supervisor.processes[0], New)


def test_refresh_served_pings_only_a_live_worker_not_yet_seen_serving():
    from types import SimpleNamespace

    from app.server.workers import WorkerProcess

    pings: list[float] = []

    class Pipe:  # the supervisor's end of the worker's pipe: the worker answers "started"
        def send(self, message):
            assert message == b"ping"

        def poll(self, timeout):
            pings.append(timeout)
            return True

        def recv(self):
            return True

    worker = object.__new__(WorkerProcess)
    worker.process = SimpleNamespace(is_alive=lambda: True)
    worker.parent_conn = Pipe()
    assert not worker.served
    worker.refresh_served()
    assert pings == [1] and worker.served
    worker.refresh_served()  # seen serving: not asked again
    assert pings == [1]
    dead = object.__new__(WorkerProcess)
    dead.process = SimpleNamespace(is_alive=lambda: False)
    dead.parent_conn = Pipe()
    dead.refresh_served()  # gone: nothing to ask
    assert pings == [1] and not dead.served


def test_a_worker_whose_app_cannot_be_built_stops_them_all(tiny_weights: Path, tmp_path: Path):
    """The API keys file is read by every worker's app: gone after start-up, each replacement
    raised in uvicorn's app factory, was restarted forever, and the supervisor exited 0."""
    keys = tmp_path / "keys"
    keys.write_text("s3cret\n")
    proc, base = start_server(tiny_weights, LATENTSERVE_WORKERS="2", LATENTSERVE_API_KEYS_FILE=str(keys))
    try:
        wait_ready(proc, base)
        # both workers have built their apps (read the keys file), not merely started: on a loaded
        # machine the second could still be reading it when the file goes, and fail on its own
        wait_for(lambda: len(worker_pids(proc.pid)) == 2 and workers_ready(base) == 2)
        keys.unlink()
        os.kill(worker_pids(proc.pid)[0], signal.SIGKILL)  # its replacement cannot read the keys
        try:
            code = proc.wait(60)
        except subprocess.TimeoutExpired:
            raise AssertionError("the supervisor kept restarting a worker that cannot start") from None
        out = proc.stdout.read()
        assert code == 1, out
        assert "cannot build the app" in out and "a worker failed to start" in out
        assert out.count("cannot build the app") == 1, out  # not restarted to fail again
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(10)


@pytest.mark.parametrize("workers_n, script", [("1", False), ("2", False), ("2", True)],
                         ids=["python -m app", "python -m app, 2 workers", "latentserve script, 2 workers"])
def test_sigterm_while_the_models_load_stops_the_process(tiny_weights: Path, tmp_path: Path, workers_n: str, script: bool):
    """Until uvicorn installs its handlers SIGTERM had its default action, which the kernel does
    not apply to a container's PID 1: a pod deleted while loading went on to serve until its
    SIGKILL. A handler from the first lines of app.__main__ stops it with 143, as that action
    would (which here, outside PID 1, ended the process by the signal itself: returncode -15).
    With workers, the models are checked in a child first: it stops too. The image runs the
    ``latentserve`` script, whose spawned children get the handler as well."""
    marker = tmp_path / "loading"
    path = patch_workers(tmp_path, "import time\n"
                                   "load = registry.Registry.from_settings.__func__\n"
                                   "def slow(cls, *args, **kwargs):\n"
                                   f"    open({str(marker)!r}, 'w').close()\n"
                                   "    time.sleep(60)\n"
                                   "    return load(cls, *args, **kwargs)\n"
                                   "registry.Registry.from_settings = classmethod(slow)")
    if script:
        env = {**os.environ, "PYTHONPATH": path, "LATENTSERVE_WEIGHTS_DIR": str(tiny_weights), "LATENTSERVE_PORT": "0",
               "LATENTSERVE_HOST": "127.0.0.1", "LATENTSERVE_TORCH_THREADS": "1", "LATENTSERVE_LOG_LEVEL": "warning",
               "LATENTSERVE_WORKERS": workers_n}
        proc = subprocess.Popen([str(Path(sys.executable).parent / "latentserve")], env=env,
                                stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    else:
        proc, _ = start_server(tiny_weights, LATENTSERVE_WORKERS=workers_n, PYTHONPATH=path)
    try:
        wait_for(marker.exists)
        checking = [pid for pid in children_map().get(proc.pid, []) if is_worker(pid)]  # the model check's child
        assert len(checking) == (1 if workers_n == "2" else 0)
        proc.send_signal(signal.SIGTERM)
        try:
            code = proc.wait(20)
        except subprocess.TimeoutExpired:
            raise AssertionError("SIGTERM while loading did not stop the process") from None
        out = proc.stdout.read()
        assert code == 128 + signal.SIGTERM, out
        assert "Exception ignored" not in out, out
        wait_for(lambda: not any(is_worker(pid) for pid in checking), timeout=10)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(10)
