"""``python -m app`` / ``latentserve``: validate settings, load every model (failing fast with one
line naming the file and the cause), then serve with uvicorn."""

from __future__ import annotations

import logging
import os
import signal
import sys


def _stop_before_serving(signum: int, frame: object) -> None:
    signal.signal(signum, signal.SIG_IGN)  # once: a second SIGTERM would interrupt the exit itself
    raise SystemExit(128 + signum)  # 143: the status of a process that SIGTERM ended


# Until uvicorn installs its handlers, SIGTERM must stop the process as its default action would:
# as a container's PID 1 (the image's entrypoint, with no init) the kernel drops a signal that has
# no handler, so a pod deleted while its models load would load, serve and be SIGKILLed at the
# end of its grace period. Installed before anything slow is imported.
signal.signal(signal.SIGTERM, _stop_before_serving)

# OpenMP's default makes torch's idle worker threads spin after every parallel region, taking
# the cores the event loop and PNG encoders need between forward passes: passive waiting gave
# +26% requests/s at concurrency 64 on 2 cores with eager passes. With the TorchScript pass and
# split passes the server serves as much either way, and passive threads still leave the cores
# alone between passes. Must be set before torch loads.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

from pydantic import ValidationError


def main() -> int:
    # prometheus-client switches to its multiprocess mode when this is set, and would read the
    # files that earlier processes left there; WORKERS > 1 sets its own, fresh, for its workers
    inherited = [os.environ.pop(name, None) for name in ("PROMETHEUS_MULTIPROC_DIR", "prometheus_multiproc_dir")]
    inherited_metrics_dir = next((d for d in inherited if d), None)
    from app.server.settings import Settings, describe_errors

    try:
        settings = Settings()
    except ValidationError as e:
        print(describe_errors(e), file=sys.stderr)
        return 2
    from app.server.logs import configure_logging

    configure_logging(settings.log_level, settings.log_format)
    if inherited_metrics_dir:
        logging.getLogger("latentserve").warning(
            "PROMETHEUS_MULTIPROC_DIR=%s ignored: latentserve keeps its own metrics folder when it runs "
            "several workers (LATENTSERVE_WORKERS)", inherited_metrics_dir)
    if settings.workers > 1:
        from app.server.workers import run_workers

        return run_workers(settings)
    from app.server.serving import (
        DrainingServer,
        StartupError,
        build_app,
        ignore_hangup,
        prepare_process,
        uvicorn_config,
    )

    ignore_hangup()  # from here, while the models load too
    try:
        app = build_app(settings)
    except StartupError as e:
        print(f"latentserve: {e}", file=sys.stderr)
        return e.status
    server = DrainingServer(uvicorn_config(settings, app), lambda: app)
    prepare_process()
    app.state.lifecycle.on_fatal = lambda: setattr(server, "should_exit", True)
    server.run()
    if app.state.lifecycle.fatal:
        print(f"latentserve: {app.state.lifecycle.fatal}", file=sys.stderr)
        return 1
    return 0 if server.started else 1


if __name__ == "__main__":
    raise SystemExit(main())
