"""``python -m app`` / ``latentserve``: validate settings, load every model (failing fast with one
line naming the file and the cause), then serve with uvicorn."""

from __future__ import annotations

import os
import signal
import sys

# OpenMP's default makes torch's idle worker threads spin after every parallel region, taking
# the cores the event loop and PNG encoders need between forward passes: passive waiting gave
# +26% requests/s at concurrency 64 on 2 cores (docs/benchmarks.md). Must be set before torch loads.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

from pydantic import ValidationError


def main() -> int:
    from app.settings import Settings, describe_errors

    try:
        settings = Settings()
    except ValidationError as e:
        print(describe_errors(e), file=sys.stderr)
        return 2
    from app.logs import configure_logging

    configure_logging(settings.log_level, settings.log_format)
    import uvicorn

    from app.main import create_app
    from app.registry import Registry
    from models.card import ModelLoadError

    try:
        registry = Registry.from_settings(settings)
    except ModelLoadError as e:
        print(f"latentserve: cannot load models: {e}", file=sys.stderr)
        return 1
    try:
        app = create_app(settings, registry)
    except ValueError as e:  # e.g. an unreadable API keys file
        print(f"latentserve: {e}", file=sys.stderr)
        return 2
    config = uvicorn.Config(app, host=settings.host, port=settings.port, log_level=settings.log_level,
                            access_log=False, lifespan="on", proxy_headers=False, server_header=False,
                            root_path=settings.root_path, timeout_graceful_shutdown=settings.drain_timeout_s,
                            log_config=None)

    class DrainingServer(uvicorn.Server):
        def handle_exit(self, sig: int, frame: object) -> None:
            app.state.draining = True  # readiness is 503 from the first moment of a shutdown
            app.state.metrics.ready.set(0)
            super().handle_exit(sig, frame)

    server = DrainingServer(config)
    # The event loop and the forward/PNG threads hand the GIL back and forth on every request;
    # a 0.5 ms switch interval (default 5 ms) lets a finished pass reach the loop sooner:
    # -1.5 ms p50 at c=1 and +10% requests/s at c=64 in side-by-side runs (docs/benchmarks.md).
    sys.setswitchinterval(0.0005)
    # uvicorn handles SIGTERM (graceful shutdown), then re-raises it to the handler it found when
    # it started; this no-op one lets a clean drain end with exit status 0, as orchestrators expect.
    signal.signal(signal.SIGTERM, lambda signum, frame: None)
    app.state.on_fatal = lambda: setattr(server, "should_exit", True)
    server.run()
    if app.state.fatal:
        print(f"latentserve: {app.state.fatal}", file=sys.stderr)
        return 1
    return 0 if server.started else 1


if __name__ == "__main__":
    raise SystemExit(main())
